//! The operator with real workers: pods run `squall-examples worker` and
//! `squall-supervisor` in containers on the shared real node.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use squall_api::{Phase, Topology, TopologyStatus};

use common::*;
use squall_testenv::{Rewrite, TestCluster};

/// Wait until a topology's status satisfies `ok`; a timeout fails with the operator's log.
async fn wait_status(
    topos: &Api<Topology>,
    name: &str,
    what: &str,
    secs: u64,
    op: &Operator,
    ok: impl Fn(&TopologyStatus) -> bool,
) -> TopologyStatus {
    let ok = &ok;
    wait_for(what, Duration::from_secs(secs), || async move {
        get(topos, name).await.filter(|s| ok(s))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()))
}

/// Wait up to 90 s until `name` is Running with all `workers` ready and
/// trees acked.
async fn running_and_acking(
    topos: &Api<Topology>,
    name: &str,
    workers: u32,
    op: &Operator,
) -> TopologyStatus {
    let what = format!("Running {workers}/{workers} with acked > 0");
    wait_status(topos, name, &what, 90, op, |s| {
        s.phase == Some(Phase::Running)
            && s.workers.ready == workers
            && s.stats.as_ref().is_some_and(|x| x.acked_total > 0)
    })
    .await
}

fn status(t: &Topology) -> TopologyStatus {
    t.status.clone().unwrap_or_default()
}

async fn get(api: &Api<Topology>, name: &str) -> Option<TopologyStatus> {
    api.get(name).await.ok().map(|t| status(&t))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_runs_recovers_and_obeys_activation() {
    let cluster = env("run-wc").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let op = Operator::start(&cluster, "/squall-running");
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);

    // A finite word count: 2 spout tasks × 1500 sentences, 3 workers.
    let manifest =
        std::fs::read_to_string(repo().join("examples/word-count/topology.yaml")).unwrap();
    let manifest = manifest
        .rewrite("config: {rate: 2000}", "config: {rate: 500, limit: 1500}")
        .rewrite("messageTimeoutSeconds: 30", "messageTimeoutSeconds: 5");
    let applied = Instant::now();
    apply_ok(&cluster, &manifest);

    // Running with every worker ready, and trees acked.
    let st = running_and_acking(&topos, "word-count", 3, &op).await;
    eprintln!(
        "kubectl apply → Running with trees acked: {:?}",
        applied.elapsed()
    );
    assert_eq!(st.workers.summary, "3/3");
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    // Those acks crossed workers over mutual TLS, with the topology's own CA.
    let out = cluster
        .kubectl()
        .args(["-n", ns, "get", "secret", "word-count-transport-tls", "-o"])
        .arg("jsonpath={.data}")
        .output()
        .unwrap();
    let data = String::from_utf8_lossy(&out.stdout);
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(data.contains(key), "{key} in the transport Secret: {data}");
    }
    let out = cluster
        .kubectl()
        .args(["-n", ns, "logs", "word-count-worker-0", "-c", "worker"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("tuple transport: mutual TLS"), "{log}");

    // Kill the worker process of slot 2 (it holds no spout task), and again
    // once the kubelet restarted it: a crash-looping worker, which the kubelet
    // holds in back-off (a real kubelet restarts a single crash within about
    // a second, before the status could show it). Degraded, then Running.
    let killed_at = Instant::now();
    let restarts = |c: &TestCluster| {
        let out = c
            .kubectl()
            .args(["-n", ns, "get", "pod", "word-count-worker-2", "-o"])
            .arg(r#"jsonpath={.status.containerStatuses[?(@.name=="worker")].restartCount}"#)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    cluster
        .kill_container(ns, "word-count-worker-2", "worker")
        .unwrap();
    wait_for(
        "the kubelet restarted the worker",
        Duration::from_secs(60),
        || {
            let n = restarts(&cluster);
            let running = cluster
                .container_pid(ns, "word-count-worker-2", "worker")
                .is_ok();
            async move { (n >= 1 && running).then_some(()) }
        },
    )
    .await
    .unwrap();
    // Killed again at once: now the kubelet backs off before the restart.
    cluster
        .kill_container(ns, "word-count-worker-2", "worker")
        .unwrap();
    // During the back-off the supervisor reports the worker crashed: the
    // topology is Degraded (a crash is not a spec that cannot run: not Failed).
    let saw_degraded = std::sync::atomic::AtomicBool::new(false);
    let saw_failed = std::sync::atomic::AtomicBool::new(false);
    wait_for(
        "the kubelet restarted the worker again",
        Duration::from_secs(60),
        || {
            let n = restarts(&cluster);
            let t = topos.clone();
            let (degraded, failed) = (&saw_degraded, &saw_failed);
            async move {
                let phase = get(&t, "word-count").await.and_then(|s| s.phase);
                if phase == Some(Phase::Degraded) {
                    degraded.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if phase == Some(Phase::Failed) {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                (n >= 2).then_some(())
            }
        },
    )
    .await
    .unwrap();
    let saw_degraded = saw_degraded.into_inner();
    eprintln!("Degraded observed during the back-off: {saw_degraded}");
    assert!(
        saw_degraded && !saw_failed.into_inner(),
        "a crash-looping worker must show Degraded, never Failed\n{}",
        op.log()
    );
    wait_event(&cluster.client(), ns, "WorkerCrashed", 30, |m| {
        m.starts_with("slot 2:")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    wait_status(&topos, "word-count", "Running again", 60, &op, |s| {
        s.phase == Some(Phase::Running) && s.workers.ready == 3
    })
    .await;
    eprintln!("killed worker → Running again: {:?}", killed_at.elapsed());

    // Every root is acked in the end: replays cover what the dead worker held.
    let done = wait_status(
        &topos,
        "word-count",
        "all 3000 roots acked",
        120,
        &op,
        |s| s.stats.as_ref().is_some_and(|x| x.acked_total >= 3000),
    )
    .await;
    let stats = done.stats.unwrap();
    assert_eq!(stats.acked_total, 3000, "no root acked twice: {stats:?}");
    assert!(stats.emitted_total >= 3000);

    // Deactivate: once drained, acked stops rising. (Use a fresh endless topology.)
    let endless =
        std::fs::read_to_string(repo().join("examples/exclamation/topology.yaml")).unwrap();
    apply_ok(&cluster, &endless);
    let acked_now = |t: Api<Topology>| async move {
        get(&t, "exclamation")
            .await
            .and_then(|s| s.stats)
            .map(|s| s.acked_total)
            .unwrap_or(0)
    };
    wait_status(&topos, "exclamation", "exclamation acking", 90, &op, |s| {
        s.phase == Some(Phase::Running) && s.stats.as_ref().is_some_and(|x| x.acked_total > 0)
    })
    .await;
    let patch = serde_json::json!({"spec": {"active": false}});
    topos
        .patch(
            "exclamation",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    wait_status(&topos, "exclamation", "Inactive", 30, &op, |s| {
        s.phase == Some(Phase::Inactive)
    })
    .await;
    // Drained: every worker reports no open tree.
    let store = squall_coord::TopologyStore::new(
        etcd_connect(cluster.etcd_url()).await,
        "/squall-running",
        ns,
        "exclamation",
    );
    let oldest_publish = |s: &std::collections::BTreeMap<u32, squall_api::records::WorkerStats>| {
        s.values().map(|w| w.timestamp_ms).min().unwrap_or(0)
    };
    let drained = wait_for("open trees drained", Duration::from_secs(30), || async {
        let s = store.stats().await.ok()?;
        (!s.is_empty() && s.values().all(|w| w.pending == 0)).then(|| oldest_publish(&s))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    // An acked total is sampled only from a status that the operator wrote
    // from records every worker published after `after_ms`, so that two
    // equal samples mean acks stopped, not that the status stopped updating.
    let sample = |after_ms: u64| {
        let (store, op, topos) = (&store, &op, topos.clone());
        async move {
            let published = wait_for(
                "every worker publishes again",
                Duration::from_secs(30),
                || async {
                    let s = store.stats().await.ok()?;
                    (!s.is_empty() && oldest_publish(&s) > after_ms).then(|| oldest_publish(&s))
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
            a_fresh_pass(op, "exclamation", 30).await;
            (acked_now(topos).await, published)
        }
    };
    let (a1, at) = sample(drained).await;
    let (a2, _) = sample(at).await;
    assert_eq!(a1, a2, "acked must not rise while deactivated");
    let patch = serde_json::json!({"spec": {"active": true}});
    topos
        .patch(
            "exclamation",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    wait_for(
        "acked rising after reactivation",
        Duration::from_secs(30),
        || {
            let t = topos.clone();
            async move { (acked_now(t).await > a2).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_component_ends_in_a_condition_and_an_event() {
    let cluster = env("run-unknown").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let op = Operator::start(&cluster, "/squall-unknown");
    let manifest = "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {name: typo}\nspec:\n  image: squall-examples:0.1.0\n  spouts: [{id: s, component: RandomSentenceSpout}]\n  bolts: [{id: b, component: SplitSentance}]\n  streams: [{from: s, to: b, grouping: {type: SHUFFLE}}]\n";
    apply_ok(&cluster, manifest);
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);
    let st = wait_status(
        &topos,
        "typo",
        "Failed with the worker's error",
        90,
        &op,
        |s| s.phase == Some(Phase::Failed),
    )
    .await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("spec.bolts[0].component")
            && ready.message.contains("SplitSentance"),
        "{}",
        ready.message
    );
    wait_event(&cluster.client(), ns, "WorkerError", 30, |m| {
        m.contains("SplitSentance")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bolt_error_shows_in_its_component_status_and_the_web_ui() {
    let cluster = env("run-error").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let op = Operator::start(&cluster, "/squall-error");
    let manifest = "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {name: erring}\nspec:\n  image: squall-examples:0.1.0\n  workers: 1\n  spouts: [{id: s, component: RandomSentenceSpout, config: {rate: 50}}]\n  bolts: [{id: flaky, component: Flaky, config: {error_every: 20}}]\n  streams: [{from: s, to: flaky, grouping: {type: SHUFFLE}}]\n";
    apply_ok(&cluster, manifest);
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);
    let st = wait_status(
        &topos,
        "erring",
        "the bolt's error in .status.components",
        90,
        &op,
        |s| {
            s.components
                .iter()
                .any(|c| c.id == "flaky" && c.last_error.is_some())
        },
    )
    .await;
    let flaky = st.components.iter().find(|c| c.id == "flaky").unwrap();
    let e = flaky.last_error.as_ref().unwrap();
    assert!(
        e.message.contains("Flaky reports an error at tuple"),
        "{e:?}"
    );
    assert!(e.count >= 1 && e.time.is_some(), "{e:?}");
    assert_eq!(e.component, "flaky");
    // The spout reports none: the error is the bolt's, not the topology's.
    let spout = st.components.iter().find(|c| c.id == "s").unwrap();
    assert!(spout.last_error.is_none(), "{spout:?}");

    // The web UI shows it in the component table (it refreshes every pass,
    // and the page polls every 2 s: look again a few times).
    let url = format!("http://{}/#/{ns}/erring", op.ui_addr());
    let mut dom = String::new();
    for _ in 0..5 {
        dom =
            tokio::task::block_in_place(|| squall_testenv::browser::dump_dom(&url, 4000)).unwrap();
        if squall_testenv::browser::row(&dom, "component-row", "flaky")
            .is_some_and(|r| r.contains("Flaky reports an error at tuple"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(squall_testenv::browser::body_state(&dom), "ready", "{dom}");
    assert_eq!(
        squall_testenv::browser::tagged(&dom, "component-row").len(),
        2,
        "{dom}"
    );
    let row = squall_testenv::browser::row(&dom, "component-row", "flaky").unwrap_or_default();
    assert!(
        row.contains("data-testid=\"last-error\"")
            && row.contains("Flaky reports an error at tuple"),
        "the bolt's row lacks its error:\n{dom}\napi/topologies: {:?}\n{}",
        squall_testenv::http_get(op.ui_addr(), "/api/topologies").map(|r| r.1),
        op.log()
    );

    // Prometheus' own parser and linter accept the operator's and a worker
    // pod's /metrics (the worker's through kubectl port-forward).
    let (_, operator_metrics) = squall_testenv::http_get(op.http_addr(), "/metrics").unwrap();
    assert!(
        operator_metrics.contains("squall_operator_reconcile_duration_seconds_bucket"),
        "{operator_metrics}"
    );
    squall_testenv::promcheck(&operator_metrics).unwrap();
    let forward = cluster
        .port_forward(ns, "pod/erring-worker-0", 8080)
        .unwrap();
    let (_, worker_metrics) =
        squall_testenv::http_get(&format!("127.0.0.1:{}", forward.local_port), "/metrics").unwrap();
    assert!(
        worker_metrics.contains("squall_execute_latency_seconds_bucket{")
            && worker_metrics.contains("component=\"flaky\""),
        "{worker_metrics}"
    );
    squall_testenv::promcheck(&worker_metrics).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_heartbeat_lapses_is_replaced() {
    let cluster = env("run-heartbeat").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let op = Operator::start(&cluster, "/squall-heartbeat");
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);
    let manifest = std::fs::read_to_string(repo().join("examples/exclamation/topology.yaml"))
        .unwrap()
        .rewrite("workers: 2", "workers: 2\n  killWaitSeconds: 1")
        // Slow enough that a restarted spout needs several status passes to catch up.
        .rewrite("config: {rate: 1000}", "config: {rate: 200}");
    apply_ok(&cluster, &manifest);
    wait_status(&topos, "exclamation", "Running 2/2", 90, &op, |s| {
        s.phase == Some(Phase::Running) && s.workers.ready == 2
    })
    .await;
    // A worker holding a spout task crashes and restarts from zero: the status
    // totals must not go backwards (the operator banks the dead process's counts).
    let acked = |t: Api<Topology>| async move {
        get(&t, "exclamation")
            .await
            .and_then(|s| s.stats)
            .map(|s| s.acked_total)
            .unwrap_or(0)
    };
    wait_for("some acks", Duration::from_secs(30), || {
        let t = topos.clone();
        async move { (acked(t).await > 2000).then_some(()) }
    })
    .await
    .unwrap();
    let before = acked(topos.clone()).await;
    cluster
        .kill_container(ns, "exclamation-worker-0", "worker")
        .unwrap();
    let mut lowest = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        lowest = lowest.min(acked(topos.clone()).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        lowest >= before,
        "acked total went back from {before} to {lowest} after a worker restart"
    );
    assert!(
        acked(topos.clone()).await > before,
        "acks continue after the restart"
    );

    let pods_api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client(), ns);
    let uid = pods_api
        .get("exclamation-worker-1")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();

    // Freeze the supervisor: the worker's pod still looks ready, but its lease
    // (the heartbeat) lapses. The operator must replace the pod.
    cluster
        .signal_container(
            ns,
            "exclamation-worker-1",
            "supervisor",
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
    let frozen = Instant::now();
    wait_for(
        "the hung worker's pod replaced",
        Duration::from_secs(60),
        || {
            let p = pods_api.clone();
            let uid = uid.clone();
            async move {
                let pod = p.get_opt("exclamation-worker-1").await.ok()??;
                (pod.metadata.uid.as_deref() != Some(uid.as_str())).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    eprintln!("heartbeat lapse → pod replaced: {:?}", frozen.elapsed());
    wait_status(&topos, "exclamation", "Running 2/2 again", 90, &op, |s| {
        s.phase == Some(Phase::Running) && s.workers.ready == 2
    })
    .await;
    let events: Api<Event> = Api::namespaced(cluster.client(), ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("WorkerLost")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("stopped heartbeating"))),
        "a WorkerLost event says why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_rides_out_a_brief_etcd_outage() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let cluster = env("run-outage").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    // Topology state in an etcd of its own, so stopping it leaves the API server up.
    let etcd = cluster.etcd_in_node().await.unwrap();
    let op = Operator::start_with_etcd(
        &cluster,
        etcd.client_url(),
        etcd.inner_url(),
        "/squall-outage",
    );
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);
    let manifest = std::fs::read_to_string(repo().join("examples/exclamation/topology.yaml"))
        .unwrap()
        .rewrite("workers: 2", "workers: 2\n  killWaitSeconds: 2");
    apply_ok(&cluster, &manifest);
    wait_status(&topos, "exclamation", "Running 2/2", 90, &op, |s| {
        s.phase == Some(Phase::Running)
    })
    .await;

    // etcd freezes, then the user deletes the topology.
    let pid = Pid::from_raw(etcd.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let out = kubectl(
        &cluster,
        &["delete", "topology", "exclamation", "--wait=false"],
    );
    assert!(out.status.success());
    // The operator has tried to clean up against the frozen etcd, twice.
    wait_for(
        "cleanup to wait for etcd twice",
        Duration::from_secs(60),
        || async { (op.log().matches("cleanup waits for etcd").count() >= 2).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    let still = topos.get_opt("exclamation").await.unwrap();
    assert!(
        still.is_some(),
        "the finalizer holds while etcd cannot be cleaned"
    );
    kill(pid, Signal::SIGCONT).unwrap();

    // etcd is back: the deletion completes, with pods and keys gone.
    wait_for("topology gone", Duration::from_secs(90), || {
        let t = topos.clone();
        async move { t.get_opt("exclamation").await.ok()?.is_none().then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    assert!(pods(&cluster.client(), ns, "exclamation").await.is_empty());
    let client = etcd_connect(etcd.client_url()).await;
    let left = etcd_keys(&client, "/squall-outage/").await;
    assert!(left.is_empty(), "etcd keys left: {left:?}");
}

/// A rebalance survives its operator and its etcd restarting in the middle:
/// the operator is killed after it deactivated the spouts and before it
/// reassigned, and a new one finishes the move; then etcd restarts during the
/// next rebalance, and the same operator finishes that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_completes_across_operator_and_etcd_restarts() {
    let cluster = env("run-midreb").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let mut etcd = cluster.etcd_in_node().await.unwrap();
    let prefix = "/squall-midreb";
    let start_op = |etcd: &squall_testenv::Etcd| {
        Operator::start_with_etcd(&cluster, etcd.client_url(), etcd.inner_url(), prefix)
    };
    let mut op = start_op(&etcd);
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);
    let keys = squall_api::records::TopologyKeys::new(prefix, ns, "slow");
    let version = |url: String| {
        let k = keys.assignment();
        async move {
            let c = etcd_connect(&url).await;
            etcd_get::<squall_api::records::Assignment>(&c, &k)
                .await
                .map(|a| (a.version, a.plan.workers))
        }
    };
    // A bolt at 40 tuples/s behind 200 open trees: a drain takes about 5 s,
    // the window in which the restarts happen.
    let manifest = "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {name: slow}\nspec:\n  image: squall-examples:0.1.0\n  workers: 2\n  messageTimeoutSeconds: 10\n  maxSpoutPending: 200\n  spouts: [{id: s, component: RandomSentenceSpout, config: {rate: 200}}]\n  bolts: [{id: slow, component: Flaky, parallelism: 2, config: {sleep_ms: 50}}]\n  streams: [{from: s, to: slow, grouping: {type: SHUFFLE}}]\n";
    apply_ok(&cluster, manifest);
    running_and_acking(&topos, "slow", 2, &op).await;

    let control = |url: String| {
        let k = keys.control();
        async move {
            let c = etcd_connect(&url).await;
            etcd_get::<squall_api::records::Control>(&c, &k)
                .await
                .unwrap()
        }
    };
    let acked = |s: &TopologyStatus| s.stats.as_ref().map_or(0, |x| x.acked_total);
    let mut phases = Vec::new();
    for (workers, restart) in [(3u32, "operator"), (2, "etcd")] {
        let out = kubectl(
            &cluster,
            &["scale", "topology/slow", &format!("--replicas={workers}")],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let to = format!("to {workers} workers");
        wait_event(&cluster.client(), ns, "Rebalancing", 30, |m| {
            m.ends_with(&to)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
        // Deactivated, not yet reassigned: the middle of the rebalance.
        let (before, _) = version(etcd.client_url().to_string()).await.unwrap();
        let acked_before = get(&topos, "slow").await.map_or(0, |s| acked(&s));
        // The drain is in the control record, where a new operator finds it.
        let draining = control(etcd.client_url().to_string()).await;
        let progress = draining
            .rebalance
            .clone()
            .unwrap_or_else(|| panic!("no rebalance progress in {draining:?}\n{}", op.log()));
        assert_eq!(progress.from_version, before, "{draining:?}");
        assert!(!draining.active, "{draining:?}");
        if restart == "operator" {
            drop(op);
            op = start_op(&etcd);
        } else {
            etcd.restart().await.unwrap();
        }
        let moved = wait_for(
            &format!("the rebalance to {workers} workers completes after the {restart} restarted"),
            Duration::from_secs(90),
            || {
                let v = version(etcd.client_url().to_string());
                async move { v.await.filter(|&(_, w)| w == workers) }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
        assert_eq!(moved.0, before + 1, "one new plan version: {moved:?}");
        let st = wait_status(
            &topos,
            "slow",
            &format!("Running {workers}/{workers}, acking again"),
            120,
            &op,
            |s| {
                s.phase == Some(Phase::Running)
                    && s.workers.ready == workers
                    && acked(s) > acked_before
            },
        )
        .await;
        // A removed slot's pod may still be terminating (its grace period)
        // when the status already counts the new plan's workers.
        wait_for("one pod per slot", Duration::from_secs(60), || {
            let c = cluster.client();
            async move { (pods(&c, ns, "slow").await.len() == workers as usize).then_some(()) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
        // Resumed, not started over: the spouts were deactivated once for this
        // move, and the finished move leaves no progress behind.
        let after = control(etcd.client_url().to_string()).await;
        assert_eq!(after.rebalance, None, "{after:?}");
        assert_eq!(after.rebalance_epoch, draining.rebalance_epoch, "{after:?}");
        assert!(after.active, "{after:?}");
        phases.push((restart, before, moved.0, acked(&st)));
    }
    eprintln!(
        "rebalances across restarts (what restarted, version before, after, acked): {phases:?}"
    );
}

/// A new image rolls every worker pod of a topology under load, and fails or
/// replays no tree: the spouts go off, open trees drain, the pods are
/// replaced all at once, and the spouts come back when the new pods are
/// ready. The pause in acks is read from the workers' own stats records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_roll_under_load_fails_and_replays_no_tree() {
    let cluster = env("run-roll").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let prefix = "/squall-roll";
    let op = Operator::start(&cluster, prefix);
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);

    // Word count as the example has it but slower: endless, 2 × 1,000 sentences/s
    // offered, fields grouping across 3 workers, the default 30 s timeout.
    let manifest =
        std::fs::read_to_string(repo().join("examples/word-count/topology.yaml")).unwrap();
    let manifest = manifest.rewrite("config: {rate: 2000}", "config: {rate: 1000}");
    let (_, spec) = squall_api::TopologySpec::from_manifest(&manifest).unwrap();
    assert_eq!(spec.message_timeout_seconds, 30);
    let spouts: Vec<String> = spec.spouts.iter().map(|s| s.id.clone()).collect();
    apply_ok(&cluster, &manifest);
    running_and_acking(&topos, "word-count", 3, &op).await;

    // Acks as the workers publish them, banked across their restarts.
    let store = squall_coord::TopologyStore::new(
        etcd_connect(cluster.etcd_url()).await,
        prefix,
        ns,
        "word-count",
    );
    let mut ledger = squall_api::ledger::StatsLedger::default();
    let sample = async |ledger: &mut squall_api::ledger::StatsLedger| {
        if let Ok(stats) = store.stats().await {
            ledger.observe_all(&stats);
        }
        let c = ledger.components();
        let sum = |f: fn(&squall_api::records::ComponentStats) -> u64| {
            spouts.iter().filter_map(|id| c.get(id)).map(f).sum::<u64>()
        };
        (sum(|c| c.acked), sum(|c| c.failed), sum(|c| c.replayed))
    };
    // Under load first: acks rising for a few seconds.
    let start = sample(&mut ledger).await.0;
    let t = Instant::now();
    while sample(&mut ledger).await.0 < start + 4000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "acks do not rise: {:?}\n{}",
            sample(&mut ledger).await,
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old_pods: Vec<String> = pods(&cluster.client(), ns, "word-count")
        .await
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    assert_eq!(old_pods.len(), 3);

    // Roll to the next image tag.
    let patched = Instant::now();
    let patch = serde_json::json!({"spec": {"image": "squall-examples:0.1.1"}});
    topos
        .patch("word-count", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    // Watch acks and pods until every pod is new and acks rise past where
    // they stood when the new pods were all ready.
    let (mut last_acked, mut last_rise) = (sample(&mut ledger).await.0, Instant::now());
    let mut longest_pause = Duration::ZERO;
    let mut saw_rolling = false;
    let mut ready_at: Option<(Instant, u64)> = None;
    loop {
        assert!(
            patched.elapsed() < Duration::from_secs(180),
            "the roll did not finish: ready={ready_at:?}\n{}",
            op.log()
        );
        let (acked, _, _) = sample(&mut ledger).await;
        if acked > last_acked {
            longest_pause = longest_pause.max(last_rise.elapsed());
            (last_acked, last_rise) = (acked, Instant::now());
        }
        let st = get(&topos, "word-count").await.unwrap_or_default();
        saw_rolling |= st.phase == Some(Phase::Rolling);
        if ready_at.is_none() && st.phase == Some(Phase::Running) && st.workers.ready == 3 {
            let ps = pods(&cluster.client(), ns, "word-count").await;
            let all_new = ps.len() == 3
                && ps.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && !old_pods.contains(p.metadata.uid.as_ref().unwrap())
                        && p.spec.as_ref().unwrap().containers[0].image.as_deref()
                            == Some("squall-examples:0.1.1")
                });
            if all_new {
                ready_at = Some((Instant::now(), acked));
            }
        }
        if let Some((at, acked_then)) = ready_at
            && acked > acked_then + 4000
            && at.elapsed() > Duration::from_secs(5)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ready, _) = ready_at.unwrap();
    assert!(saw_rolling, "the status showed the roll\n{}", op.log());
    wait_event(&cluster.client(), ns, "Rolling", 10, |m| {
        m.contains("new template")
    })
    .await
    .unwrap();
    let mut off = String::new();
    wait_event(&cluster.client(), ns, "Rolled", 10, |m| {
        m.contains("every worker pod runs the new template")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    let events: Api<Event> = Api::namespaced(cluster.client(), ns);
    for e in events.list(&ListParams::default()).await.unwrap().items {
        if e.reason.as_deref() == Some("Rolled") {
            off = e.message.unwrap_or_default();
        }
    }
    let (acked, failed, replayed) = sample(&mut ledger).await;
    let st = get(&topos, "word-count").await.unwrap().stats.unwrap();
    eprintln!(
        "image roll under load: patch → all new pods Running {:?}; longest pause in acks {:?} \
         (stats published about every second); operator: {off}; acked {acked} failed {failed} \
         replayed {replayed}; status failed_total {} replayed_total {}",
        ready - patched,
        longest_pause,
        st.failed_total,
        st.replayed_total
    );
    assert_eq!((failed, replayed), (0, 0), "no tree failed or replayed");
    assert_eq!((st.failed_total, st.replayed_total), (0, 0), "{st:?}");
    let plan = store.assignment().await.unwrap().unwrap();
    assert_eq!(plan.version, 1, "an image is not a new plan");
}

/// Transport certificates are renewed each rotation period by a roll of the
/// pods onto a new Secret, and no tree fails or replays for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_certificates_are_renewed_by_a_roll_under_load() {
    let cluster = env("run-rotate").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let op = Operator::start_with_args(
        &cluster,
        "/squall-rotate",
        &["--transport-tls-rotation-seconds", "45"],
    );
    let topos: Api<Topology> = Api::namespaced(cluster.client(), ns);
    let manifest =
        std::fs::read_to_string(repo().join("examples/word-count/topology.yaml")).unwrap();
    apply_ok(
        &cluster,
        &manifest.rewrite("config: {rate: 2000}", "config: {rate: 1000}"),
    );
    let secret_of = |p: &k8s_openapi::api::core::v1::Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == "transport-tls"))
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone())
            .unwrap_or_default()
    };
    let first = running_and_acking(&topos, "word-count", 3, &op).await;
    let ps = pods(&cluster.client(), ns, "word-count").await;
    assert!(
        ps.iter()
            .all(|p| secret_of(p) == "word-count-transport-tls"),
        "the first period's Secret"
    );
    let acked_before = first.stats.unwrap().acked_total;

    // 45 s after the creation: the next period's Secret, and a roll onto it.
    wait_event(&cluster.client(), ns, "Rolled", 120, |m| {
        m.contains("every worker pod runs the new template")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
    let ps = pods(&cluster.client(), ns, "word-count").await;
    let live: Vec<_> = ps
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), 3);
    assert!(
        live.iter()
            .all(|p| secret_of(p) == "word-count-transport-tls-1"),
        "{:?}",
        live.iter().map(|p| secret_of(p)).collect::<Vec<_>>()
    );
    let out = kubectl(
        &cluster,
        &["get", "secret", "word-count-transport-tls-1", "-o", "name"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(
        &kubectl(&cluster, &["logs", "word-count-worker-0", "-c", "worker"]).stdout,
    )
    .to_string();
    assert!(log.contains("tuple transport: mutual TLS"), "{log}");
    let after = wait_status(
        &topos,
        "word-count",
        "Running 3/3 on the new certificates, acking more",
        90,
        &op,
        |s| {
            s.phase == Some(Phase::Running)
                && s.workers.ready == 3
                && s.stats
                    .as_ref()
                    .is_some_and(|x| x.acked_total > acked_before + 2000)
        },
    )
    .await;
    let stats = after.stats.unwrap();
    eprintln!("certificate rotation under load: {stats:?}");
    assert_eq!(
        (stats.failed_total, stats.replayed_total),
        (0, 0),
        "{stats:?}"
    );
}
