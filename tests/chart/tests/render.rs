//! The chart without a cluster: `helm lint`, and what `helm template` renders
//! for the default values and the variants a user sets. Also the CRD copy and
//! the Dockerfiles, which must agree with what the chart expects.

#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use squall_chart_tests::{
    self as chart, CLUSTER_SCOPED_KINDS, ETCD_TLS_DIR, Manifest, RELEASE, external_etcd_tls_values,
    test_cluster_values,
};

fn render(namespace: &str, values: &[&str]) -> Manifest {
    let text = chart::template(RELEASE, namespace, values, &[]).unwrap();
    Manifest::parse(&text).unwrap()
}

/// Every monitoring object on, created whether or not the cluster serves their API.
const MONITORING_FORCED: &str = "\
metrics:
  serviceMonitor: {enabled: true, force: true}
  podMonitor: {enabled: true, force: true, interval: 15s, labels: {release: prom}}
grafana:
  dashboard: {enabled: true}
";

/// What `--api-versions` tells helm the cluster serves: prometheus-operator's kinds.
const MONITORING_API: [&str; 2] = [
    "--api-versions=monitoring.coreos.com/v1/PodMonitor",
    "--api-versions=monitoring.coreos.com/v1/ServiceMonitor",
];

const EXTERNAL: &str =
    "etcd:\n  external:\n    endpoints: [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n";

fn args(m: &Manifest) -> Vec<String> {
    m.operator_args().unwrap()
}

fn env_field_ref<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
}

#[test]
fn lint_is_clean_for_every_variant() {
    let tls = external_etcd_tls_values(&["https://etcd.example:2379"], "etcd-client");
    let variants: [&[&str]; 6] = [
        &[],
        &[EXTERNAL],
        &[&tls],
        &["operator:\n  replicas: 3\n  watchNamespace: topologies\n"],
        &["metrics:\n  serviceMonitor:\n    enabled: true\n"],
        &[MONITORING_FORCED],
    ];
    for values in variants {
        let report = chart::lint(values).unwrap_or_else(|e| panic!("{values:?}: {e}"));
        assert!(
            !report.contains("[WARNING]") && !report.contains("[ERROR]"),
            "helm lint {values:?}:\n{report}"
        );
        assert!(report.contains("0 chart(s) failed"), "{report}");
    }
}

#[test]
fn chart_crd_is_byte_identical_to_the_generated_one() {
    let root = chart::workspace_root();
    let generated = std::fs::read(root.join("crds/topology.yaml")).unwrap();
    let in_chart = std::fs::read(root.join("charts/squall/crds/topology.yaml")).unwrap();
    assert!(
        generated == in_chart,
        "charts/squall/crds/topology.yaml differs from crds/topology.yaml: run `make crds`"
    );
}

#[test]
fn default_values_bundle_etcd_and_point_the_operator_at_it() {
    let m = render("default", &[]);
    let sts = m.get("StatefulSet", "squall-etcd").unwrap();
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(sts["spec"]["serviceName"], "squall-etcd-headless");
    let pvc = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(pvc["metadata"]["name"], "data");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "8Gi");
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Delete"
    );
    let etcd = &sts["spec"]["template"]["spec"]["containers"][0];
    assert!(etcd["image"].as_str().unwrap().contains("etcd:v3.6"));
    assert_eq!(etcd["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(etcd["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(etcd["securityContext"]["readOnlyRootFilesystem"], true);
    let headless = m.get("Service", "squall-etcd-headless").unwrap();
    assert_eq!(headless["spec"]["clusterIP"], "None");
    m.get("Service", "squall-etcd").unwrap();

    assert_eq!(
        m.operator_flag("--etcd").unwrap().as_deref(),
        Some("http://squall-etcd.default.svc:2379")
    );
    assert_eq!(
        m.operator_flag("--etcd-prefix").unwrap().as_deref(),
        Some("/squall")
    );
    assert_eq!(
        m.operator_flag("--supervisor-image").unwrap().as_deref(),
        Some("ghcr.io/squall-dev/squall-supervisor:0.1.0")
    );
    assert_eq!(
        m.operator_flag("--http-addr").unwrap().as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        m.operator_flag("--log-format").unwrap().as_deref(),
        Some("text")
    );
    let a = args(&m);
    assert!(!a.contains(&"--leader-elect".to_string()), "{a:?}");
    assert!(!a.iter().any(|x| x.starts_with("--etcd-ca-file")), "{a:?}");
    assert!(!a.iter().any(|x| x.starts_with("--namespace")), "{a:?}");
}

#[test]
fn operator_pod_is_hardened_probed_and_knows_its_name() {
    let m = render("default", &[]);
    let d = m.operator_deployment().unwrap();
    assert_eq!(d["metadata"]["name"], "squall-operator");
    assert_eq!(d["spec"]["replicas"], 1);
    // One replica without leader election: never two Nimbuses during an upgrade.
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "squall-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = m.operator_container().unwrap();
    assert_eq!(c["image"], "ghcr.io/squall-dev/squall-operator:0.1.0");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(env_field_ref(c, "POD_NAME"), Some("metadata.name"));
    assert_eq!(env_field_ref(c, "POD_IP"), Some("status.podIP"));
    let rust_log = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "RUST_LOG")
        .unwrap();
    assert_eq!(rust_log["value"], "info");

    let svc = m.get("Service", "squall-operator-metrics").unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(m.of_kind("ServiceMonitor").count(), 0);
    assert_eq!(m.of_kind("PodMonitor").count(), 0);
    assert_eq!(m.of_kind("ConfigMap").count(), 0);
}

#[test]
fn the_web_ui_is_on_a_named_port_of_its_own_and_can_be_switched_off() {
    let m = render("default", &[]);
    assert_eq!(
        m.operator_flag("--ui-addr").unwrap().as_deref(),
        Some("0.0.0.0:8081")
    );
    let c = m.operator_container().unwrap();
    let ports: Vec<(&str, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("http", 8080), ("ui", 8081)]);
    let off = render("default", &["operator:\n  ui:\n    enabled: false\n"]);
    assert_eq!(off.operator_flag("--ui-addr").unwrap(), None);
    assert_eq!(
        off.operator_container().unwrap()["ports"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn more_than_one_replica_turns_leader_election_on() {
    let m = render("default", &["operator:\n  replicas: 2\n"]);
    let d = m.operator_deployment().unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    assert!(d["spec"]["strategy"].is_null(), "{}", d["spec"]["strategy"]);
    assert!(args(&m).contains(&"--leader-elect".to_string()));

    let m = render(
        "default",
        &[
            "operator:\n  leaderElection:\n    enabled: true\n    leaseSeconds: 7\n  heartbeatGraceSeconds: 9\n",
        ],
    );
    let a = args(&m);
    assert!(a.contains(&"--leader-elect".to_string()), "{a:?}");
    assert!(a.contains(&"--leader-lease-seconds=7".to_string()), "{a:?}");
    assert!(
        a.contains(&"--heartbeat-grace-seconds=9".to_string()),
        "{a:?}"
    );
}

#[test]
fn transport_certificate_rotation_is_set_only_when_given_zero_included() {
    let flag = |m: &Manifest| {
        args(m)
            .into_iter()
            .filter(|a| a.starts_with("--transport-tls-rotation-seconds"))
            .collect::<Vec<_>>()
    };
    assert!(
        flag(&render("default", &[])).is_empty(),
        "the operator's default"
    );
    for (value, expect) in [("0", "=0"), ("2592000", "=2592000")] {
        let m = render(
            "default",
            &[&format!(
                "operator:\n  transportTlsRotationSeconds: {value}\n"
            )],
        );
        assert_eq!(
            flag(&m),
            [format!("--transport-tls-rotation-seconds{expect}")]
        );
    }
}

#[test]
fn rbac_is_least_privilege() {
    let m = render("default", &[]);
    let role = m.get("ClusterRole", "squall-operator").unwrap();
    let rules = role["rules"].as_array().unwrap();
    let verbs = |group: &str, resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| {
                r["apiGroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == group)
                    && r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == resource)
            })
            .flat_map(|r| r["verbs"].as_array().unwrap().iter())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        verbs("squall.dev", "topologies"),
        ["get", "list", "watch", "patch", "update"]
    );
    assert_eq!(
        verbs("squall.dev", "topologies/status"),
        ["get", "patch", "update"]
    );
    assert_eq!(verbs("squall.dev", "topologies/finalizers"), ["update"]);
    assert_eq!(
        verbs("", "pods"),
        ["get", "list", "watch", "create", "delete"]
    );
    assert_eq!(verbs("", "events"), ["create", "patch"]);
    assert_eq!(verbs("events.k8s.io", "events"), ["create", "patch"]);
    // Secrets: create the transport TLS Secret, and never read one.
    assert_eq!(verbs("", "secrets"), ["create"]);
    // Nothing else: no wildcards, no leases (leader election is in etcd).
    let text = serde_json::to_string(rules).unwrap();
    for banned in ["\"*\"", "leases", "configmaps", "deletecollection"] {
        assert!(!text.contains(banned), "{banned} in {text}");
    }
    let binding = m.get("ClusterRoleBinding", "squall-operator").unwrap();
    assert_eq!(binding["roleRef"]["name"], "squall-operator");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "squall-operator", "namespace": "default"}])
    );
    assert_eq!(m.of_kind("Role").count(), 0);
}

#[test]
fn watching_one_namespace_uses_a_role_there() {
    let m = render(
        "squall-system",
        &["operator:\n  watchNamespace: topologies\n"],
    );
    assert_eq!(m.of_kind("ClusterRole").count(), 0);
    assert_eq!(m.of_kind("ClusterRoleBinding").count(), 0);
    let role = m.get("Role", "squall-operator").unwrap();
    assert_eq!(role["metadata"]["namespace"], "topologies");
    let rb = m.get("RoleBinding", "squall-operator").unwrap();
    assert_eq!(rb["metadata"]["namespace"], "topologies");
    assert_eq!(rb["subjects"][0]["namespace"], "squall-system");
    assert_eq!(
        m.operator_flag("--namespace").unwrap().as_deref(),
        Some("topologies")
    );
}

#[test]
fn no_namespace_is_hard_coded() {
    let text = chart::template(RELEASE, "foo", &[], &[]).unwrap();
    let m = Manifest::parse(&text).unwrap();
    assert!(!m.objects.is_empty());
    for o in &m.objects {
        let kind = o["kind"].as_str().unwrap();
        if CLUSTER_SCOPED_KINDS.contains(&kind) {
            assert!(
                o["metadata"]["namespace"].is_null(),
                "{kind} has a namespace"
            );
        } else {
            assert_eq!(
                o["metadata"]["namespace"], "foo",
                "{kind}/{} is not in the release namespace",
                o["metadata"]["name"]
            );
        }
    }
    // Also inside strings: service DNS names, binding subjects.
    assert!(!text.contains("default"), "'default' appears in:\n{text}");
    assert!(text.contains("squall-etcd.foo.svc:2379"));
    assert!(text.contains("squall-etcd-headless.foo.svc:2380"));
}

#[test]
fn external_etcd_renders_no_etcd_of_its_own() {
    let m = render("default", &[EXTERNAL]);
    assert_eq!(m.of_kind("StatefulSet").count(), 0);
    assert!(
        !m.kinds_and_names().iter().any(|n| n.contains("etcd")),
        "{:?}",
        m.kinds_and_names()
    );
    assert_eq!(
        m.operator_flag("--etcd").unwrap().as_deref(),
        Some("http://10.0.0.1:2379,http://10.0.0.2:2379")
    );
    let a = args(&m);
    assert!(!a.iter().any(|x| x.contains("tls")), "{a:?}");
    let vols = &m.operator_deployment().unwrap()["spec"]["template"]["spec"]["volumes"];
    assert!(!vols.to_string().contains("etcd-tls"), "{vols}");
}

#[test]
fn external_etcd_with_tls_mounts_the_client_certificates() {
    let tls = external_etcd_tls_values(&["https://etcd.example:2379"], "etcd-client");
    let m = render("default", &[&tls]);
    assert_eq!(m.of_kind("StatefulSet").count(), 0);
    assert_eq!(
        m.operator_flag("--etcd").unwrap().as_deref(),
        Some("https://etcd.example:2379")
    );
    for (flag, file) in [
        ("--etcd-ca-file", "ca.crt"),
        ("--etcd-cert-file", "tls.crt"),
        ("--etcd-key-file", "tls.key"),
    ] {
        assert_eq!(
            m.operator_flag(flag).unwrap(),
            Some(format!("{ETCD_TLS_DIR}/{file}"))
        );
    }
    assert_eq!(
        m.operator_flag("--etcd-tls-secret").unwrap().as_deref(),
        Some("etcd-client")
    );
    let c = m.operator_container().unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "etcd-tls")
        .unwrap();
    assert_eq!(mount["mountPath"], ETCD_TLS_DIR);
    assert_eq!(mount["readOnly"], true);
    let vol = m.operator_deployment().unwrap()["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "etcd-tls")
        .unwrap()
        .clone();
    assert_eq!(vol["secret"]["secretName"], "etcd-client");
    let keys: Vec<&str> = vol["secret"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
}

#[test]
fn values_for_images_logs_service_account_and_metrics() {
    let values = "\
operator:
  image: {repository: registry.example/squall/squall-operator, tag: \"1.2.3\", pullPolicy: Always}
  log: {level: debug, format: json}
  nodeSelector: {disktype: ssd}
  tolerations: [{key: dedicated, operator: Equal, value: squall, effect: NoSchedule}]
  podAnnotations: {example.com/team: streams}
supervisor:
  image: {repository: registry.example/squall/squall-supervisor, tag: \"1.2.3\", pullPolicy: Never}
serviceAccount: {create: false, name: existing-sa}
metrics:
  serviceMonitor: {enabled: true, interval: 15s}
";
    let text = chart::template(RELEASE, "default", &[values], &MONITORING_API).unwrap();
    let m = Manifest::parse(&text).unwrap();
    let c = m.operator_container().unwrap();
    assert_eq!(c["image"], "registry.example/squall/squall-operator:1.2.3");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        m.operator_flag("--supervisor-image").unwrap().as_deref(),
        Some("registry.example/squall/squall-supervisor:1.2.3")
    );
    assert_eq!(
        m.operator_flag("--image-pull-policy").unwrap().as_deref(),
        Some("Never")
    );
    assert_eq!(
        m.operator_flag("--log-format").unwrap().as_deref(),
        Some("json")
    );
    let pod = &m.operator_deployment().unwrap()["spec"]["template"];
    assert_eq!(pod["spec"]["nodeSelector"]["disktype"], "ssd");
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/team"],
        "streams"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "existing-sa");
    assert_eq!(m.of_kind("ServiceAccount").count(), 0);
    let binding = m.get("ClusterRoleBinding", "squall-operator").unwrap();
    assert_eq!(binding["subjects"][0]["name"], "existing-sa");
    let sm = m.get("ServiceMonitor", "squall-operator").unwrap();
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
}

/// The worker pods as operator/src/pods.rs labels them, and the worker
/// container's port name for `/metrics`.
const WORKER_POD_LABELS: [(&str, &str); 3] = [
    ("app.kubernetes.io/name", "squall-worker"),
    ("app.kubernetes.io/component", "worker"),
    ("app.kubernetes.io/managed-by", "squall-operator"),
];
const WORKER_METRICS_PORT: &str = "metrics";

#[test]
fn pod_monitor_selects_worker_pods_when_enabled_and_served() {
    let enabled = "metrics:\n  podMonitor: {enabled: true, scrapeTimeout: 10s}\n";
    let text = chart::template(RELEASE, "default", &[enabled], &MONITORING_API).unwrap();
    let m = Manifest::parse(&text).unwrap();
    let pm = m.get("PodMonitor", "squall-workers").unwrap();
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], "default");
    let selector = pm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    assert_eq!(selector.len(), WORKER_POD_LABELS.len(), "{selector:?}");
    for (k, v) in WORKER_POD_LABELS {
        assert_eq!(selector[k], v, "{selector:?}");
    }
    // Topologies live in any namespace.
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], WORKER_METRICS_PORT);
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["interval"], "30s");
    assert_eq!(ep["scrapeTimeout"], "10s");
    // The operator's ServiceMonitor stays off by default.
    assert_eq!(m.of_kind("ServiceMonitor").count(), 0);

    // One watched namespace: only there.
    let text = chart::template(
        RELEASE,
        "default",
        &[enabled, "operator:\n  watchNamespace: streams\n"],
        &MONITORING_API,
    )
    .unwrap();
    let m = Manifest::parse(&text).unwrap();
    let pm = m.get("PodMonitor", "squall-workers").unwrap();
    assert_eq!(
        pm["spec"]["namespaceSelector"],
        serde_json::json!({"matchNames": ["streams"]})
    );

    // Disabled: absent, even where the API is served.
    let text = chart::template(RELEASE, "default", &[], &MONITORING_API).unwrap();
    assert_eq!(
        Manifest::parse(&text)
            .unwrap()
            .of_kind("PodMonitor")
            .count(),
        0
    );
}

#[test]
fn monitors_need_their_api_or_force_so_a_missing_crd_never_breaks_install() {
    let both = "metrics:\n  podMonitor: {enabled: true}\n  serviceMonitor: {enabled: true}\n";
    // Enabled, but the cluster has no prometheus-operator CRDs: nothing to fail on.
    let m = render("default", &[both]);
    assert_eq!(m.of_kind("PodMonitor").count(), 0);
    assert_eq!(m.of_kind("ServiceMonitor").count(), 0);
    // Only the PodMonitor's kind served: only it.
    let text = chart::template(RELEASE, "default", &[both], &MONITORING_API[..1]).unwrap();
    let m = Manifest::parse(&text).unwrap();
    assert_eq!(m.of_kind("PodMonitor").count(), 1);
    assert_eq!(m.of_kind("ServiceMonitor").count(), 0);
    // force: created without asking the cluster.
    let m = render("default", &[MONITORING_FORCED]);
    let pm = m.get("PodMonitor", "squall-workers").unwrap();
    assert_eq!(pm["metadata"]["labels"]["release"], "prom");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["interval"], "15s");
    m.get("ServiceMonitor", "squall-operator").unwrap();
}

#[test]
fn grafana_dashboard_configmap_holds_the_dashboard() {
    assert_eq!(render("default", &[]).of_kind("ConfigMap").count(), 0);
    let m = render(
        "default",
        &["grafana:\n  dashboard: {enabled: true, annotations: {grafana_folder: Streams}}\n"],
    );
    let cm = m.get("ConfigMap", "squall-dashboard").unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Streams");
    assert_eq!(cm["metadata"]["namespace"], "default");
    let shipped = std::fs::read_to_string(
        chart::workspace_root().join("charts/squall/dashboards/squall.json"),
    )
    .unwrap();
    let text = cm["data"]["squall.json"].as_str().unwrap();
    assert_eq!(text.trim_end(), shipped.trim_end());
    let dashboard: Value = serde_json::from_str(text).unwrap();
    assert_eq!(dashboard["uid"], "squall");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    for wanted in [
        "rate(squall_acked_total{",
        "rate(squall_failed_total{",
        "histogram_quantile(0.99, sum by (le, topology, component) (rate(squall_complete_latency_seconds_bucket{",
        "histogram_quantile(0.99, sum by (le, topology, component) (rate(squall_execute_latency_seconds_bucket{",
        "squall_capacity{",
        "histogram_quantile(0.99, sum by (le) (rate(squall_operator_reconcile_duration_seconds_bucket[",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(wanted)),
            "no panel queries {wanted}: {exprs:#?}"
        );
    }
    // Elsewhere than the release's namespace, e.g. Grafana's own.
    let m = render(
        "default",
        &["grafana:\n  dashboard: {enabled: true, namespace: monitoring}\n"],
    );
    assert_eq!(
        m.get("ConfigMap", "squall-dashboard").unwrap()["metadata"]["namespace"],
        "monitoring"
    );
}

#[test]
fn schema_rejects_misspelt_values() {
    let err = chart::template(RELEASE, "default", &["etcd:\n  externl: {}\n"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("externl"), "{err}");
    let err = chart::template(
        RELEASE,
        "default",
        &["operator:\n  log: {format: xml}\n"],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("format"), "{err}");
}

#[test]
fn test_cluster_values_keep_the_bundled_etcd_and_the_default_images() {
    let values = test_cluster_values();
    let m = render("squall-system", &[&values]);
    // The real test node runs the bundled etcd, reached by its Service's DNS name.
    assert_eq!(m.of_kind("StatefulSet").count(), 1);
    assert_eq!(
        m.operator_flag("--etcd").unwrap().as_deref(),
        Some("http://squall-etcd.squall-system.svc:2379")
    );
    // The images `make images` builds and the node imports, under the chart's names.
    let c = m.operator_container().unwrap();
    assert_eq!(
        c["image"].as_str(),
        Some("ghcr.io/squall-dev/squall-operator:0.1.0")
    );
    assert_eq!(
        m.operator_flag("--supervisor-image").unwrap().as_deref(),
        Some("ghcr.io/squall-dev/squall-supervisor:0.1.0")
    );
    let watched = render(
        "squall-system",
        &[&values, &chart::watch_namespace_values("team-a")],
    );
    assert_eq!(
        watched.operator_flag("--namespace").unwrap().as_deref(),
        Some("team-a")
    );
}

/// The Dockerfiles build the binaries the chart and the operator run, as the
/// user the chart's security context names, with the expected entrypoints.
#[test]
fn dockerfiles_agree_with_the_chart() {
    let root = chart::workspace_root();
    for (file, package, binary) in [
        (
            "docker/operator.Dockerfile",
            "squall-operator",
            "squall-operator",
        ),
        (
            "docker/supervisor.Dockerfile",
            "squall-runtime",
            "squall-supervisor",
        ),
        (
            "docker/examples.Dockerfile",
            "squall-examples",
            "squall-examples",
        ),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains(&format!("-p {package} --bin {binary}")),
            "{file} does not build {package}/{binary}"
        );
        assert!(text.contains("--locked"), "{file}: build without --locked");
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{file}: entrypoint is not {binary}"
        );
        assert!(text.contains("USER 65532:65532"), "{file}: not uid 65532");
        // A source build stage and a prebuilt one (`make images`), the one
        // BINARIES names, and the runtime stage, which copies from it.
        assert_eq!(
            text.matches("\nFROM ").count(),
            4,
            "{file}: expected build, prebuilt, binaries and runtime stages"
        );
        for stage in [
            " AS build\n",
            "FROM scratch AS prebuilt\n",
            "FROM ${BINARIES} AS binaries\n",
        ] {
            assert!(text.contains(stage), "{file}: no `{}` stage", stage.trim());
        }
        assert!(
            text.contains("ARG BINARIES=build\n"),
            "{file}: not built from source by default"
        );
        assert!(
            text.contains(&format!(
                "COPY --from=binaries /out/{binary} /usr/local/bin/{binary}"
            )),
            "{file}: the runtime stage does not take {binary} from the binaries stage"
        );
    }
    // The bundled etcd's image runs the chart's command, as uid 65532.
    let etcd = std::fs::read_to_string(root.join("docker/etcd.Dockerfile")).unwrap();
    let statefulset =
        std::fs::read_to_string(root.join("charts/squall/templates/etcd-statefulset.yaml"))
            .unwrap();
    assert!(statefulset.contains("command: [\"/usr/local/bin/etcd\"]"));
    assert!(etcd.contains("COPY --from=binaries /out/etcd /out/etcdctl /usr/local/bin/"));
    assert!(etcd.contains("USER 65532:65532"));
    assert!(etcd.contains("--chown=65532:65532 /out/data /var/lib/etcd"));
    // Each package is a workspace member that has that binary.
    let members = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for dir in ["worker-runtime", "examples"] {
        assert!(
            members.contains(&format!("\"{dir}\"")),
            "{dir} not a member"
        );
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    assert!(
        !ignore
            .lines()
            .any(|l| l.trim() == ".cargo" || l.trim() == ".cargo/")
    );
}
