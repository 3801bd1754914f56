//! Worker pods: one per slot, a `worker` container running the user's image and a
//! generic `supervisor` sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use squall_api::Topology;
use squall_api::invocation::{
    self, POD_IP_ENV, POD_NAME_ENV, POD_NAMESPACE_ENV, WorkerFlags, WorkerInvocation,
};
use squall_api::records::TopologyRef;

mod volumes;

use volumes::PodVolumes;
pub use volumes::{
    ETCD_TLS_DIR, TRANSPORT_TLS_DIR, transport_tls_epoch, transport_tls_secret,
    transport_tls_validity,
};

/// Label holding the topology name (also the scale selector).
pub const TOPOLOGY_LABEL: &str = "squall.dev/topology";
/// Label holding the slot number.
pub const SLOT_LABEL: &str = "squall.dev/slot";
/// Annotation with a hash of the pod's spec as the operator built it: a pod
/// whose hash differs from what the operator would build now (image, worker
/// settings, supervisor image, flags) is rolled.
pub const TEMPLATE_ANNOTATION: &str = "squall.dev/pod-template";
/// The worker's tuple transport port (Storm's first `supervisor.slots.ports`).
pub const TRANSPORT_PORT: i32 = invocation::TRANSPORT_PORT as i32;
/// The worker's health and metrics port.
pub const WORKER_HTTP_PORT: i32 = invocation::WORKER_HTTP_PORT as i32;
/// The worker's channel to its supervisor.
pub const AGENT_PORT: i32 = invocation::AGENT_PORT as i32;

/// What the operator puts in every worker pod besides the topology itself.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// The supervisor sidecar image.
    pub supervisor_image: String,
    /// etcd endpoints handed to workers and supervisors.
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    pub etcd_prefix: String,
    pub image_pull_policy: Option<String>,
    /// A Secret with `ca.crt`, `tls.crt` and `tls.key` for reaching etcd over TLS.
    pub etcd_tls_secret: Option<String>,
    /// How often each topology's transport certificates are renewed (which
    /// rolls its pods); `None`: never.
    pub transport_tls_rotation: Option<std::time::Duration>,
}

/// The pod name of a slot; deterministic, so a restarted operator can never create a duplicate.
pub fn pod_name(topology: &str, slot: u32) -> String {
    format!("{topology}-worker-{slot}")
}

/// The selector of a topology's worker pods.
pub fn selector(topology: &str) -> String {
    format!("{TOPOLOGY_LABEL}={topology}")
}

fn labels(topology: &str, slot: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "squall-worker".into()),
        ("app.kubernetes.io/instance".into(), topology.into()),
        ("app.kubernetes.io/component".into(), "worker".into()),
        ("app.kubernetes.io/part-of".into(), "squall".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "squall-operator".into(),
        ),
        (TOPOLOGY_LABEL.into(), topology.into()),
        (SLOT_LABEL.into(), slot.to_string()),
    ])
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(port: i32, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The pod for one slot of a topology, mounting the transport certificates
/// of rotation period `tls_epoch`.
pub fn worker_pod(topo: &Topology, slot: u32, settings: &PodSettings, tls_epoch: u64) -> Pod {
    let name = topo.name_any();
    let namespace = topo.namespace().unwrap_or_default();
    let spec = &topo.spec;
    let template = spec.worker.clone().unwrap_or_default();
    // Multilang subprocesses need a writable /tmp for their pidDir.
    let shells = spec.components().any(|(_, c)| c.shell.is_some());
    let PodVolumes {
        volumes: pod_volumes,
        worker_mounts,
        supervisor_mounts,
        etcd_tls,
    } = volumes::pod_volumes(
        &name,
        settings.etcd_tls_secret.as_deref(),
        tls_epoch,
        shells,
        &template,
    );
    let common_env = vec![
        field_env(POD_NAME_ENV, "metadata.name"),
        field_env(POD_NAMESPACE_ENV, "metadata.namespace"),
        field_env(POD_IP_ENV, "status.podIP"),
        value_env("SQUALL_SLOT", slot.to_string()),
    ];

    // The transport binds the pod IP (expanded by the kubelet from the env),
    // which it advertises to peers. HTTP (probes, /metrics) binds every
    // address of the pod's own network namespace, so that `kubectl
    // port-forward` (which dials the pod's loopback) reaches it too. The
    // supervisor channel stays inside the pod: loopback, which the containers
    // of one pod share and nothing outside it reaches.
    let pod_ip = format!("$({POD_IP_ENV})");
    let invocation = WorkerInvocation {
        topology: TopologyRef {
            namespace: namespace.clone(),
            name: name.clone(),
        },
        slot,
        etcd: settings.etcd_endpoints.join(","),
        prefix: settings.etcd_prefix.clone(),
        etcd_tls,
        agent_addr: format!("127.0.0.1:{AGENT_PORT}"),
        worker: WorkerFlags {
            listen: format!("{pod_ip}:{TRANSPORT_PORT}"),
            advertise: Some(pod_ip.clone()),
            http: Some(format!("0.0.0.0:{WORKER_HTTP_PORT}")),
            batch_size: None,
            tls_dir: Some(TRANSPORT_TLS_DIR.into()),
        },
        pod: Some(format!("$({POD_NAME_ENV})")),
    };
    let worker_args = invocation.worker_args();
    let mut worker_env = common_env.clone();
    worker_env.extend(template.env.iter().cloned());
    let pull = template
        .image_pull_policy
        .clone()
        .or_else(|| settings.image_pull_policy.clone());

    let worker = Container {
        name: "worker".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: pull.clone(),
        args: Some(worker_args),
        env: Some(worker_env),
        ports: Some(vec![
            ContainerPort {
                name: Some("transport".into()),
                container_port: TRANSPORT_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: WORKER_HTTP_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe(WORKER_HTTP_PORT, "/readyz", 2, 3)),
        liveness_probe: Some(http_probe(WORKER_HTTP_PORT, "/healthz", 5, 6)),
        resources: template.resources.clone(),
        volume_mounts: (!worker_mounts.is_empty()).then_some(worker_mounts),
        security_context: Some(container_security()),
        ..Default::default()
    };
    // The supervisor image's entrypoint is `squall-supervisor`: flags only.
    let sup_args = invocation.supervisor_args();
    let supervisor = Container {
        name: "supervisor".into(),
        image: Some(settings.supervisor_image.clone()),
        image_pull_policy: pull,
        args: Some(sup_args),
        env: Some(common_env),
        // The supervisor exits non-zero when it cannot do its job (etcd gone past
        // its deadline), and the kubelet restarts it; it needs no probe.
        volume_mounts: supervisor_mounts,
        security_context: Some(container_security()),
        ..Default::default()
    };

    let spec = PodSpec {
        containers: vec![worker, supervisor],
        restart_policy: Some("Always".into()),
        termination_grace_period_seconds: Some(i64::from(spec.kill_wait_seconds.min(60)) + 5),
        node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
        tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
        service_account_name: template.service_account_name.clone(),
        // Workers never call the API server: no token in the pod.
        automount_service_account_token: Some(false),
        security_context: Some(pod_security()),
        volumes: (!pod_volumes.is_empty()).then_some(pod_volumes),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name, slot)),
            namespace: Some(namespace),
            labels: Some(labels(&name, slot)),
            annotations: Some(BTreeMap::from([(
                TEMPLATE_ANNOTATION.to_string(),
                template_hash(&spec),
            )])),
            owner_references: topo.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// FNV-1a over the spec's JSON, in hex: stable across builds and releases of
/// the operator (unlike std's hasher), so an upgraded operator rolls only
/// pods whose spec it really changes.
fn template_hash(spec: &PodSpec) -> String {
    // The grace period follows `killWaitSeconds`, which is no reason to roll.
    let spec = PodSpec {
        termination_grace_period_seconds: None,
        ..spec.clone()
    };
    let json = serde_json::to_vec(&spec).unwrap_or_default();
    let hash = json.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Whether `pod` must be replaced by `wanted` (what the operator builds now
/// for its slot): their template hashes differ. A pod from an operator that
/// wrote no hash is compared by its images only, so an upgrade of the
/// operator does not roll every pod.
pub fn template_changed(pod: &Pod, wanted: &Pod) -> bool {
    let hash = |p: &Pod| p.annotations().get(TEMPLATE_ANNOTATION).cloned();
    match hash(pod) {
        Some(h) => Some(h) != hash(wanted),
        None => {
            let image = |p: &Pod, name: &str| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.containers.iter().find(|c| c.name == name))
                    .and_then(|c| c.image.clone())
            };
            ["worker", "supervisor"]
                .iter()
                .any(|c| image(pod, c) != image(wanted, c))
        }
    }
}

/// The user the worker images run as (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;

/// Pod-level settings of Pod Security Admission's `restricted` profile.
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(WORKER_UID),
        run_as_group: Some(WORKER_UID),
        fs_group: Some(WORKER_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container-level settings of the `restricted` profile, plus a read-only
/// root filesystem: workers and supervisors write nothing to disk.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The slot a worker pod serves, from its label.
pub fn slot_of(pod: &Pod) -> Option<u32> {
    pod.labels().get(SLOT_LABEL)?.parse().ok()
}

/// Whether the pod is running with every container ready.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod has ended for good (it will not run again by itself).
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        let (_, spec) = squall_api::TopologySpec::from_manifest(
            "image: img:1\nworkers: 2\nspouts: [{id: s, component: X}]\nworker: {nodeSelector: {disk: ssd}}\n",
        )
        .unwrap();
        let mut t = Topology::new("wc", spec);
        t.metadata.namespace = Some("ns".into());
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn settings(tls: Option<&str>) -> PodSettings {
        PodSettings {
            supervisor_image: "sup:1".into(),
            etcd_endpoints: vec!["https://a:2379".into(), "https://b:2379".into()],
            etcd_prefix: "/p".into(),
            image_pull_policy: None,
            etcd_tls_secret: tls.map(Into::into),
            transport_tls_rotation: None,
        }
    }

    #[test]
    fn a_worker_pod_carries_its_slot_owner_and_bindings() {
        let pod = worker_pod(&topo(), 1, &settings(None), 0);
        assert_eq!(pod.metadata.name.as_deref(), Some("wc-worker-1"));
        assert_eq!(slot_of(&pod), Some(1));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.name.as_str(), owner.controller), ("wc", Some(true)));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        let worker = &spec.containers[0];
        let args = worker.args.as_ref().unwrap().join(" ");
        assert!(
            args.starts_with(
                "worker --topology ns/wc --slot 1 --etcd https://a:2379,https://b:2379 --prefix /p"
            ),
            "{args}"
        );
        assert!(
            args.contains("--listen $(POD_IP):6700") && args.contains("--http 0.0.0.0:8080"),
            "{args}"
        );
        let sup = &spec.containers[1];
        assert_eq!(sup.image.as_deref(), Some("sup:1"));
        assert!(
            sup.args
                .as_ref()
                .unwrap()
                .join(" ")
                .contains("--agent-addr 127.0.0.1:7071")
        );
        // The one volume: the transport's mutual TLS, for the worker alone,
        // which the worker's flags name.
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1, "{volumes:?}");
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("wc-transport-tls")
        );
        let worker_mounts = spec.containers[0].volume_mounts.as_ref().unwrap();
        assert_eq!(worker_mounts[0].mount_path, TRANSPORT_TLS_DIR);
        assert!(
            args.contains(&format!("--tls-dir {TRANSPORT_TLS_DIR}")),
            "{args}"
        );
        assert!(sup.volume_mounts.is_none());
    }

    /// The chart's PodMonitor (charts/squall/templates/podmonitor.yaml) selects
    /// worker pods by these labels and scrapes the port named `metrics`.
    #[test]
    fn a_worker_pod_has_what_the_charts_pod_monitor_selects() {
        let pod = worker_pod(&topo(), 0, &settings(None), 0);
        let labels = pod.metadata.labels.clone().unwrap();
        for (k, v) in [
            ("app.kubernetes.io/name", "squall-worker"),
            ("app.kubernetes.io/component", "worker"),
            ("app.kubernetes.io/managed-by", "squall-operator"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{labels:?}");
        }
        let worker = &pod.spec.unwrap().containers[0];
        let port = worker
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .unwrap();
        assert_eq!(port.container_port, WORKER_HTTP_PORT);
    }

    /// Scripts from a ConfigMap reach the worker container (not the supervisor), and
    /// multilang subprocesses get a writable /tmp for their pidDir.
    #[test]
    fn template_volumes_and_a_tmp_for_shell_components_reach_the_worker() {
        let mut t = topo();
        t.spec.spouts[0].component = None;
        t.spec.spouts[0].shell = Some(
            serde_json::from_value(serde_json::json!({"command": ["python3", "x.py"]})).unwrap(),
        );
        let w = t.spec.worker.get_or_insert_with(Default::default);
        w.volumes = vec![
            serde_json::from_value(
                serde_json::json!({"name": "scripts", "configMap": {"name": "py"}}),
            )
            .unwrap(),
        ];
        w.volume_mounts = vec![
            serde_json::from_value(
                serde_json::json!({"name": "scripts", "mountPath": "/opt/topology"}),
            )
            .unwrap(),
        ];
        let spec = worker_pod(&t, 0, &settings(None), 0).spec.unwrap();
        let names: Vec<_> = spec
            .volumes
            .unwrap()
            .iter()
            .map(|v| v.name.clone())
            .collect();
        assert_eq!(names, ["transport-tls", "squall-tmp", "scripts"]);
        let mounts: Vec<_> = spec.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_path)
            .collect();
        assert_eq!(mounts, [TRANSPORT_TLS_DIR, "/tmp", "/opt/topology"]);
        assert!(spec.containers[1].volume_mounts.is_none());
    }

    #[test]
    fn a_worker_pod_fits_the_restricted_pod_security_profile() {
        let spec = worker_pod(&topo(), 0, &settings(None), 0).spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        let psc = spec.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
        }
    }

    #[test]
    fn a_pod_rolls_when_its_template_changes_and_only_then() {
        let pod = worker_pod(&topo(), 0, &settings(None), 0);
        assert!(!template_changed(
            &pod,
            &worker_pod(&topo(), 0, &settings(None), 0)
        ));
        let with = |edit: fn(&mut Topology)| {
            let mut t = topo();
            edit(&mut t);
            worker_pod(&t, 0, &settings(None), 0)
        };
        // The image, any worker setting, and the supervisor image roll it.
        assert!(template_changed(
            &pod,
            &with(|t| t.spec.image = "img:2".into())
        ));
        assert!(template_changed(
            &pod,
            &with(|t| {
                t.spec.worker.as_mut().unwrap().env.push(EnvVar {
                    name: "FOO".into(),
                    value: Some("bar".into()),
                    ..Default::default()
                })
            })
        ));
        let mut sup2 = settings(None);
        sup2.supervisor_image = "sup:2".into();
        assert!(template_changed(&pod, &worker_pod(&topo(), 0, &sup2, 0)));
        // What only the plan sees does not.
        assert!(!template_changed(
            &pod,
            &with(|t| t.spec.max_spout_pending = 7)
        ));
        assert!(!template_changed(&pod, &with(|t| t.spec.workers = 5)));
        assert!(!template_changed(
            &pod,
            &with(|t| t.spec.kill_wait_seconds = 9)
        ));
        // A pod an older operator made (no hash) is judged by its images.
        let mut old = pod.clone();
        old.metadata.annotations = None;
        assert!(!template_changed(
            &old,
            &with(|t| t.spec.max_spout_pending = 7)
        ));
        assert!(template_changed(
            &old,
            &with(|t| t.spec.image = "img:2".into())
        ));
    }

    #[test]
    fn an_etcd_tls_secret_is_mounted_and_named_in_flags_for_both_containers() {
        let pod = worker_pod(&topo(), 0, &settings(Some("etcd-client")), 0);
        let spec = pod.spec.unwrap();
        let vol = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(
            vol.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("etcd-client")
        );
        for c in &spec.containers {
            assert_eq!(
                c.volume_mounts.as_ref().unwrap()[0].mount_path,
                ETCD_TLS_DIR
            );
            let args = c.args.as_ref().unwrap().join(" ");
            assert!(
                args.contains(&format!("--etcd-ca-file {ETCD_TLS_DIR}/ca.crt"))
                    && args.contains(&format!("--etcd-cert-file {ETCD_TLS_DIR}/tls.crt"))
                    && args.contains(&format!("--etcd-key-file {ETCD_TLS_DIR}/tls.key")),
                "{args}"
            );
        }
    }
}
