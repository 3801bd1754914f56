//! The chart against a real control plane (kube-apiserver, controller manager,
//! etcd from squall-testenv): the rendered output passes server-side dry-run
//! for every etcd variant, and a real `helm install` grants the operator's
//! ServiceAccount exactly what it needs, and `helm uninstall` takes it all
//! away again but the CRD.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::time::Duration;

use squall_chart_tests::{
    self as chart, ControlPlane, RELEASE, external_etcd_tls_values, external_etcd_values,
};

/// The objects kubectl reported as accepted by a server-side dry-run.
fn accepted(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .collect()
}

fn dry_run_ok(cp: &ControlPlane, what: &str, manifests: &str) -> Vec<String> {
    let out = chart::dry_run_server(cp, manifests).unwrap_or_else(|e| panic!("{what}: {e}"));
    let objects = chart::Manifest::parse(manifests).unwrap().objects.len();
    let ok = accepted(&out);
    assert_eq!(
        ok.len(),
        objects,
        "{what}: not every object accepted:\n{out}"
    );
    ok.into_iter().map(str::to_owned).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn server_dry_run_accepts_the_rendered_chart() {
    let cp = ControlPlane::start().await.unwrap();

    // Exactly what the issue and docs/helm.md show:
    //   helm template charts/squall | kubectl apply --dry-run=server -f -
    let mut cmd = chart::helm().unwrap();
    cmd.arg("template").arg(chart::chart_dir());
    let default = chart::run(cmd, None).unwrap();
    let ok = dry_run_ok(&cp, "default values", &default);
    for expected in [
        "statefulset.apps/release-name-squall-etcd",
        "deployment.apps/release-name-squall-operator",
        "clusterrole.rbac.authorization.k8s.io/release-name-squall-operator",
        "serviceaccount/release-name-squall-operator",
    ] {
        assert!(
            ok.iter().any(|l| l.starts_with(expected)),
            "{expected} not accepted: {ok:?}"
        );
    }

    // With the CRD, as helm install would send it, and then a Topology
    // against the installed CRD.
    let with_crds = chart::template(RELEASE, "default", &[], &["--include-crds"]).unwrap();
    let ok = dry_run_ok(&cp, "default values with CRDs", &with_crds);
    assert!(
        ok.iter()
            .any(|l| l.contains("customresourcedefinition") && l.contains("topologies.squall.dev")),
        "{ok:?}"
    );
    chart::apply_crd(&cp).unwrap();
    let example =
        std::fs::read_to_string(chart::workspace_root().join("examples/word-count/topology.yaml"))
            .unwrap();
    dry_run_ok(&cp, "word-count example", &example);

    // External etcd, with and without TLS, in another namespace; and a
    // leader-elected operator watching one namespace.
    cp.create_namespace("squall-system").await.unwrap();
    cp.create_namespace("topologies").await.unwrap();
    let external = external_etcd_values(&["http://127.0.0.1:2379"]);
    let tls = external_etcd_tls_values(
        &["https://etcd-0.example:2379", "https://etcd-1.example:2379"],
        "etcd-client",
    );
    let ha = "operator:\n  replicas: 2\n  watchNamespace: topologies\n";
    let variants: [(&str, Vec<&str>); 3] = [
        ("external etcd", vec![&external]),
        ("external etcd with TLS", vec![&tls]),
        (
            "external etcd, 2 replicas, one namespace",
            vec![&external, ha],
        ),
    ];
    for (what, values) in variants {
        let text = chart::template(RELEASE, "squall-system", &values, &[]).unwrap();
        let m = chart::Manifest::parse(&text).unwrap();
        assert_eq!(m.of_kind("StatefulSet").count(), 0, "{what}");
        let ok = dry_run_ok(&cp, what, &text);
        assert!(
            ok.iter()
                .any(|l| l.starts_with("deployment.apps/squall-operator")),
            "{what}: {ok:?}"
        );
    }
}

/// `kubectl auth can-i VERB RESOURCE [-n NS] --as=<the operator's SA>`.
fn can_i(cp: &ControlPlane, sa: &str, args: &[&str]) -> bool {
    let out = cp
        .kubectl()
        .args(["auth", "can-i"])
        .args(args)
        .arg(format!("--as={sa}"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl auth can-i {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// What is left of a release: namespaced objects in `namespace` and
/// cluster-scoped ones, by the chart's instance label.
fn leftovers(cp: &ControlPlane, release: &str, namespace: &str) -> Vec<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut left = Vec::new();
    for (kinds, ns) in [
        (
            "deployments,replicasets,statefulsets,pods,services,serviceaccounts,\
             persistentvolumeclaims,roles,rolebindings,configmaps,secrets",
            Some(namespace),
        ),
        ("clusterroles,clusterrolebindings", None),
    ] {
        let mut cmd = cp.kubectl();
        cmd.args(["get", kinds, "-l", &selector, "-o", "name"]);
        match ns {
            Some(ns) => cmd.arg(format!("--namespace={ns}")),
            None => &mut cmd,
        };
        let out = chart::run(cmd, None).unwrap();
        left.extend(out.lines().map(str::to_owned));
    }
    left
}

async fn wait_nothing_left(cp: &ControlPlane, release: &str, namespace: &str) {
    let what = format!("release {release} in {namespace} removed");
    let result = squall_testenv::wait_until(&what, Duration::from_secs(60), || async {
        leftovers(cp, release, namespace).is_empty().then_some(())
    })
    .await;
    if let Err(e) = result {
        panic!("{e}: still there: {:?}", leftovers(cp, release, namespace));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn helm_install_grants_least_privilege_and_uninstall_cleans_up() {
    let cp = ControlPlane::start().await.unwrap();

    // 1. Default values: bundled etcd, a ClusterRole. helm installs the CRD
    //    from the chart's crds/ itself.
    let ns = "squall-system";
    let out = chart::install(&cp, RELEASE, ns, &[], &[]).unwrap();
    let notes = out
        .split("NOTES:")
        .nth(1)
        .expect("NOTES in helm install output");
    for expected in [
        "kubectl -n squall-system rollout status deployment/squall-operator",
        "kubectl -n squall-system rollout status statefulset/squall-etcd",
        "http://squall-etcd.squall-system.svc:2379",
        "examples/word-count/topology.yaml",
        "kubectl get topology",
        "kubectl scale topology",
        "kubectl get pods -l squall.dev/topology=word-count",
        "docs/helm.md",
    ] {
        assert!(
            notes.contains(expected),
            "{expected:?} not in NOTES:\n{notes}"
        );
    }
    let mut cmd = cp.kubectl();
    cmd.args(["get", "crd", "topologies.squall.dev", "-o", "name"]);
    chart::run(cmd, None).unwrap();
    let installed = leftovers(&cp, RELEASE, ns);
    for expected in [
        "deployment.apps/squall-operator",
        "statefulset.apps/squall-etcd",
        "service/squall-etcd",
        "service/squall-etcd-headless",
        "service/squall-operator-metrics",
        "serviceaccount/squall-operator",
        "clusterrole.rbac.authorization.k8s.io/squall-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/squall-operator",
    ] {
        assert!(
            installed.iter().any(|o| o == expected),
            "{expected} not installed: {installed:?}"
        );
    }

    let sa = "system:serviceaccount:squall-system:squall-operator";
    for allowed in [
        &["list", "topologies.squall.dev", "--all-namespaces"][..],
        &["watch", "topologies.squall.dev", "-n", "anywhere"],
        &["patch", "topologies.squall.dev", "-n", "anywhere"],
        &[
            "patch",
            "topologies.squall.dev",
            "--subresource=status",
            "-n",
            "x",
        ],
        &[
            "update",
            "topologies.squall.dev",
            "--subresource=finalizers",
            "-n",
            "x",
        ],
        &["create", "pods", "-n", "anywhere"],
        &["delete", "pods", "-n", "anywhere"],
        &["watch", "pods", "--all-namespaces"],
        &["create", "events", "-n", "anywhere"],
        &["patch", "events.events.k8s.io", "-n", "anywhere"],
    ] {
        assert!(can_i(&cp, sa, allowed), "operator may not {allowed:?}");
    }
    for denied in [
        &["get", "secrets", "-n", "squall-system"][..],
        &["delete", "topologies.squall.dev", "-n", "x"],
        &["create", "topologies.squall.dev", "-n", "x"],
        &[
            "create",
            "leases.coordination.k8s.io",
            "-n",
            "squall-system",
        ],
        &["create", "deployments.apps", "-n", "x"],
        &["update", "pods", "-n", "x"],
        &["create", "customresourcedefinitions.apiextensions.k8s.io"],
    ] {
        assert!(!can_i(&cp, sa, denied), "operator may {denied:?}");
    }

    // helm uninstall leaves nothing of ours but the CRD (the etcd PVC goes
    // with its StatefulSet).
    chart::uninstall(&cp, RELEASE, ns).unwrap();
    wait_nothing_left(&cp, RELEASE, ns).await;
    let mut cmd = cp.kubectl();
    cmd.args(["get", "crd", "topologies.squall.dev", "-o", "name"]);
    chart::run(cmd, None).unwrap();

    // 2. One watched namespace: a Role there, nothing elsewhere.
    cp.create_namespace("team-a").await.unwrap();
    let values = external_etcd_values(&["http://127.0.0.1:2379"]);
    let one_ns = "operator:\n  watchNamespace: team-a\n";
    chart::install(&cp, "streams", "streams-system", &[&values, one_ns], &[]).unwrap();
    let sa = "system:serviceaccount:streams-system:streams-squall-operator";
    assert!(can_i(&cp, sa, &["create", "pods", "-n", "team-a"]));
    assert!(can_i(
        &cp,
        sa,
        &[
            "update",
            "topologies.squall.dev",
            "--subresource=finalizers",
            "-n",
            "team-a"
        ]
    ));
    assert!(!can_i(&cp, sa, &["create", "pods", "-n", "default"]));
    assert!(!can_i(
        &cp,
        sa,
        &["list", "topologies.squall.dev", "--all-namespaces"]
    ));
    // What the uninstall must remove is there: "nothing left" below is no
    // query that never matched.
    let installed = leftovers(&cp, "streams", "team-a");
    assert!(
        installed
            .iter()
            .any(|o| o.starts_with("role.rbac.authorization.k8s.io/")),
        "the Role in team-a: {installed:?}"
    );
    let installed = leftovers(&cp, "streams", "streams-system");
    assert!(
        installed.iter().any(|o| o.starts_with("deployment.apps/")),
        "the operator in streams-system: {installed:?}"
    );
    chart::uninstall(&cp, "streams", "streams-system").unwrap();
    wait_nothing_left(&cp, "streams", "team-a").await;
    wait_nothing_left(&cp, "streams", "streams-system").await;
}
