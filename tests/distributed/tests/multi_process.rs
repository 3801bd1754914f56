//! Word count over several worker processes, coordinated through a real etcd.
//!
//! Needs etcd from `make testenv` (`SQUALL_TESTENV_BIN` or the default cache).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use squall_coord::{self as coord, TopologyStore};
use squall_testenv::Rewrite as _;

/// The runs start six or more processes each: one at a time on a small machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wait until `f` holds, or panic with `what`.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn store(rt: &tokio::runtime::Runtime, etcd: &str, name: &str) -> TopologyStore {
    let c = rt
        .block_on(coord::connect(etcd, &Default::default()))
        .expect("connect to etcd");
    TopologyStore::new(c, squall_api::records::DEFAULT_PREFIX, "default", name)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Wait until every slot of the run has registered a running worker.
fn wait_running(rt: &tokio::runtime::Runtime, s: &TopologyStore, workers: u32) {
    eventually(
        "every worker registered and running",
        Duration::from_secs(30),
        || {
            rt.block_on(s.workers()).is_ok_and(|w| {
                (0..workers).all(|i| {
                    w.get(&i)
                        .is_some_and(|r| r.state == squall_api::records::WorkerState::Running)
                })
            })
        },
    );
}

/// Wait until some worker's stats show acked trees: the run is under way.
fn wait_acking(rt: &tokio::runtime::Runtime, s: &TopologyStore) {
    eventually("acks flowing", Duration::from_secs(20), || {
        rt.block_on(s.stats()).is_ok_and(|st| {
            st.values()
                .any(|w| w.components.values().any(|c| c.acked > 0))
        })
    });
}

#[test]
fn word_count_over_three_processes_acks_every_root() {
    let _serial = serial();
    let dir = Scratch::new("wc3");
    let etcd = Etcd::start(&dir.0);
    let ui = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let launch = Launch::start(
        &etcd.url,
        &word_count("wc3", 3, 2000, 20_000),
        &dir.0,
        &["--ui", &ui],
    );
    // `--ui` shows the three processes, on the plan, with traffic on both edges.
    eventually(
        "the web UI shows 3 workers and traffic",
        Duration::from_secs(60),
        || {
            let Ok((200, body)) = squall_testenv::http_get(&ui, "/api/topologies") else {
                return false;
            };
            let Ok(snap) = serde_json::from_str::<squall_api::view::UiSnapshot>(&body) else {
                return false;
            };
            let t = &snap.topologies[0];
            let ok = snap.mode == "local"
                && t.workers.len() == 3
                && t.workers
                    .iter()
                    .all(|w| w.state == "running" && w.plan_version == Some(1))
                && t.edges.len() == 2
                && t.edges.iter().all(|e| e.tuples_per_second > 0.0)
                && t.components.iter().any(|c| c.acked_per_second > 0.0);
            if !ok {
                eprintln!("ui not there yet: {body}");
            }
            ok
        },
    );
    let s = launch.wait(Duration::from_secs(120));
    assert_all_acked(&s, 40_000);
    // The trees really crossed processes: every component ran.
    for c in ["sentences", "split", "count", "__acker"] {
        assert!(
            s["components"][c]["executed"].as_u64().unwrap_or(0) > 0 || c == "sentences",
            "{c} did nothing: {s}"
        );
    }
}

/// `kill -9` of a worker that runs no spout task (a spout's in-memory state dies
/// with its process, as in Storm); the launcher restarts it as Kubernetes would.
#[test]
fn kill_9_of_a_worker_loses_nothing() {
    let _serial = serial();
    let dir = Scratch::new("kill");
    let etcd = Etcd::start(&dir.0);
    let rt = rt();
    let launch = Launch::start(
        &etcd.url,
        &word_count("wckill", 3, 4000, 30_000),
        &dir.0,
        &[],
    );
    let s = store(&rt, &etcd.url, "wckill");
    wait_running(&rt, &s, 3);
    wait_acking(&rt, &s);
    let victim = launch.worker_pid(2);
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill -9 the worker of slot 2");
    eventually(
        "the launcher to restart slot 2",
        Duration::from_secs(20),
        || launch.stderr().contains("slot 2: worker exited"),
    );
    let summary = launch.wait(Duration::from_secs(180));
    assert_all_acked(&summary, 60_000);
    assert!(
        u(&summary, "replayed") > 0,
        "trees cut by the kill must be replayed: {summary}"
    );
}

/// Garbage on a worker's tuple port; a plaintext gRPC client, and one with a
/// certificate from another topology's CA, both refused by the mutual TLS; and
/// a client with the run's own certificate whose batch is malformed: each
/// closes that connection only; the worker lives on and the run completes.
#[test]
fn garbage_on_the_tuple_port_closes_the_stream_not_the_worker() {
    let _serial = serial();
    use squall_runtime::net::proto::transfer_client::TransferClient;
    use squall_runtime::net::proto::{Batch, Frame, Hello, Lane, frame};

    let dir = Scratch::new("garbage");
    let etcd = Etcd::start(&dir.0);
    let rt = rt();
    let launch = Launch::start(
        &etcd.url,
        &word_count("wcgarbage", 3, 3000, 15_000),
        &dir.0,
        &[],
    );
    let s = store(&rt, &etcd.url, "wcgarbage");
    wait_running(&rt, &s, 3);
    let workers = rt.block_on(s.workers()).unwrap();
    let endpoint = workers[&1].endpoint.clone();
    let pid = launch.worker_pid(1);
    assert!(
        kill(Pid::from_raw(pid), None).is_ok(),
        "slot 1's worker runs before the garbage"
    );

    // Raw bytes that are not HTTP/2.
    let mut sock = std::net::TcpStream::connect(&endpoint).unwrap();
    let _ = sock.write_all(&[0xde; 4096]);
    drop(sock);

    // One attempt to open a stream with `tls` (None: plaintext): the error,
    // if the worker refused it.
    let hello = || Frame {
        kind: Some(frame::Kind::Hello(Hello {
            topology: "default/wcgarbage".into(),
            from_slot: 0,
            to_slot: 1,
            plan_version: 1,
        })),
    };
    let try_open = |tls: Option<tonic::transport::ClientTlsConfig>| {
        rt.block_on(async {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut ep =
                tonic::transport::Endpoint::from_shared(format!("{scheme}://{endpoint}")).unwrap();
            if let Some(tls) = tls {
                ep = ep.tls_config(tls).unwrap();
            }
            let channel = match ep.connect().await {
                Ok(c) => c,
                Err(e) => return Err(format!("connect: {e:?}")),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(hello()).await.unwrap();
            let opened = tokio::time::timeout(
                Duration::from_secs(10),
                TransferClient::new(channel).open(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await
            .expect("an answer within 10 s");
            match opened {
                Ok(_) => Ok(()),
                Err(status) => Err(format!("open: {status:?}")),
            }
        })
    };
    let run_tls = dir.0.join("logs/transport-tls");
    let foreign = dir.0.join("foreign-tls");
    squall_coord::tls::TopologyPki::generate("default/another")
        .unwrap()
        .write_to(&foreign)
        .unwrap();
    let tls =
        |d: &std::path::Path| Some(squall_runtime::net::TransportTls::load(d).unwrap().client());
    assert!(
        try_open(None).is_err(),
        "a plaintext client must be refused"
    );
    let refused = try_open(tls(&foreign));
    assert!(
        refused.is_err(),
        "a certificate from another topology's CA must be refused"
    );
    // The control: the same client code with the run's certificate gets in.
    try_open(tls(&run_tls)).expect("the run's own certificate is accepted");

    // A real gRPC stream, with the run's certificate, whose batch does not decode.
    let status = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{endpoint}"))
            .unwrap()
            .tls_config(tls(&run_tls).unwrap())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = TransferClient::new(channel);
        let frames = vec![
            Frame {
                kind: Some(frame::Kind::Hello(Hello {
                    topology: "default/wcgarbage".into(),
                    from_slot: 0,
                    to_slot: 1,
                    plan_version: 1,
                })),
            },
            Frame {
                kind: Some(frame::Kind::Batch(Batch {
                    lane: Lane::Data as i32,
                    payload: bytes::Bytes::from_static(&[1, 0, 99, 99, 99]),
                })),
            },
        ];
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for f in frames {
            tx.send(f).await.unwrap();
        }
        let mut credits = client
            .open(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, credits.message()).await {
                Ok(Ok(Some(_credit))) => continue,
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => return Some(status),
                Err(_) => panic!("the worker did not close the malformed stream within 10s"),
            }
        }
    });
    let status = status.expect("a malformed batch must end the stream with an error status");
    assert!(
        status.message().contains("malformed"),
        "unexpected status: {status:?}"
    );

    let summary = launch.wait(Duration::from_secs(120));
    assert_all_acked(&summary, 30_000);
    assert_eq!(launch_restarts(&dir), 0, "no worker may have died");
    assert!(
        kill(Pid::from_raw(pid), None).is_err(),
        "the worker ends with the run"
    );
}

fn launch_restarts(dir: &Scratch) -> usize {
    let path = dir.0.join("logs/worker-1.log");
    let log = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the worker's log {}: {e}", path.display()));
    // Zero restarts must mean one start seen, not a log that says nothing.
    let starts = log.matches("worker starting").count();
    assert!(starts > 0, "no worker start in {}:\n{log}", path.display());
    starts - 1
}

/// etcd goes away mid-run and comes back: tuples keep flowing (they do not pass
/// through etcd), the heartbeats resume, and the run completes.
#[test]
fn etcd_restart_mid_run_is_survived() {
    let _serial = serial();
    let dir = Scratch::new("etcd-restart");
    let mut etcd = Etcd::start(&dir.0);
    let rt = rt();
    let launch = Launch::start(
        &etcd.url,
        &word_count("wcetcd", 3, 3000, 30_000),
        &dir.0,
        &[],
    );
    let s = store(&rt, &etcd.url, "wcetcd");
    wait_running(&rt, &s, 3);
    let before = rt
        .block_on(s.stats())
        .unwrap()
        .values()
        .map(|w| w.components.get("count").map_or(0, |c| c.executed))
        .sum::<u64>();
    etcd.kill();
    std::thread::sleep(Duration::from_secs(2));
    etcd.restart();
    let s = Arc::new(store(&rt, &etcd.url, "wcetcd"));
    // Heartbeats resumed: every worker is still registered under a live lease (TTL 5 s).
    std::thread::sleep(Duration::from_secs(6));
    wait_running(&rt, &s, 3);
    let after = rt
        .block_on(s.stats())
        .unwrap()
        .values()
        .map(|w| w.components.get("count").map_or(0, |c| c.executed))
        .sum::<u64>();
    assert!(
        after > before,
        "workers must keep processing across the etcd restart ({before} → {after})"
    );
    let summary = launch.wait(Duration::from_secs(120));
    assert_all_acked(&summary, 60_000);
}

/// `rebalance --workers N` through the CLI.
fn rebalance(etcd: &str, topology: &str, workers: u32) {
    let out = std::process::Command::new(BIN)
        .args([
            "rebalance",
            "--topology",
            topology,
            "--workers",
            &workers.to_string(),
            "--etcd",
            etcd,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rebalance failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rebalance` from 2 to 3 workers mid-run: the launcher starts the third pair,
/// every worker applies the new plan, and every root is acked exactly once.
///
/// Task ids never change across a rebalance, and the planner deals executors
/// round-robin starting with the spouts at slot 0: the two spout tasks run in
/// slots 0 and 1 under both plans, so they stay in their processes and keep
/// their instances (and the spouts' in-memory state: how far they got towards
/// `limit`, and which ids are in flight). Trees cut off by the switch are failed
/// back to them and replayed. (A spout task that moves to another process starts
/// afresh there, as in Storm; see docs/distributed.md.)
#[test]
fn rebalance_from_two_to_three_workers_loses_nothing() {
    let _serial = serial();
    let dir = Scratch::new("rebalance");
    let etcd = Etcd::start(&dir.0);
    let rt = rt();
    let launch = Launch::start(
        &etcd.url,
        &word_count("wcrebal", 2, 3000, 30_000),
        &dir.0,
        &[],
    );
    let s = store(&rt, &etcd.url, "wcrebal");
    wait_running(&rt, &s, 2);
    wait_acking(&rt, &s);
    let before = rt.block_on(s.stats()).unwrap();
    assert!(
        before.values().all(|w| !w.spouts_done),
        "the rebalance must happen mid-run: {before:?}"
    );
    rebalance(&etcd.url, "default/wcrebal", 3);
    eventually(
        "three workers on plan version 2",
        Duration::from_secs(30),
        || {
            rt.block_on(s.workers())
                .is_ok_and(|w| (0..3).all(|i| w.get(&i).is_some_and(|r| r.applied_version == 2)))
        },
    );
    let summary = launch.wait(Duration::from_secs(180));
    eprintln!("summary: {summary}");
    assert_all_acked(&summary, 60_000);
    // The spout tasks stayed in their slots: both were carried over, none started afresh.
    for slot in [0, 1] {
        let log = std::fs::read_to_string(dir.0.join(format!("logs/worker-{slot}.log"))).unwrap();
        assert_eq!(
            log.matches("spout task carried over").count(),
            1,
            "slot {slot}'s spout task must be carried into plan version 2:\n{log}"
        );
    }
    // The new slot runs bolts and ackers; its work is in the totals.
    let split = &summary["components"]["split"];
    assert!(split["executed"].as_u64().unwrap() >= 60_000, "{summary}");
}

/// `rebalance` from 3 to 2 workers mid-run: the pair of the removed slot drains
/// and is stopped, and nothing is lost. Slot 2 runs no spout task under either
/// plan, so no spout moves; what slot 2 counted before it stopped stays in the totals.
#[test]
fn rebalance_from_three_to_two_workers_stops_the_removed_slot() {
    let _serial = serial();
    let dir = Scratch::new("shrink");
    let etcd = Etcd::start(&dir.0);
    let rt = rt();
    let launch = Launch::start(
        &etcd.url,
        &word_count("wcshrink", 3, 3000, 30_000),
        &dir.0,
        &[],
    );
    let s = store(&rt, &etcd.url, "wcshrink");
    wait_running(&rt, &s, 3);
    wait_acking(&rt, &s);
    let slot2 = launch.worker_pid(2);
    assert!(
        kill(Pid::from_raw(slot2), None).is_ok(),
        "slot 2's worker runs before the rebalance"
    );
    rebalance(&etcd.url, "default/wcshrink", 2);
    eventually(
        "the worker of the removed slot 2 to be stopped",
        Duration::from_secs(40),
        || launch.stderr().contains("slot 2: stopped"),
    );
    assert!(
        kill(Pid::from_raw(slot2), None).is_err(),
        "slot 2's worker must be gone"
    );
    assert!(
        !launch.stderr().contains("slot 2: worker exited"),
        "a removed slot is not restarted:\n{}",
        launch.stderr()
    );
    let summary = launch.wait(Duration::from_secs(180));
    assert_all_acked(&summary, 60_000);
}

/// A bolt that panics in slot 2 (which runs no spout task): that worker exits
/// non-zero naming the component and the panic, the launcher restarts it as the
/// kubelet would, and every root is still acked exactly once.
#[test]
fn a_panicking_bolt_restarts_its_worker_and_loses_nothing() {
    let _serial = serial();
    let dir = Scratch::new("panic");
    let etcd = Etcd::start(&dir.0);
    let marker = dir.0.join("panicked");
    let manifest = format!(
        "apiVersion: squall.dev/v1alpha1
kind: Topology
metadata:
  name: wcpanic
spec:
  image: squall-examples:test
  workers: 3
  messageTimeoutSeconds: 3
  maxSpoutPending: 500
  spouts:
    - {{id: sentences, component: RandomSentenceSpout, parallelism: 2, config: {{rate: 1000, limit: 10000}}}}
  bolts:
    - {{id: split, component: SplitSentence, parallelism: 3}}
    - {{id: flaky, component: Flaky, parallelism: 3, config: {{panic_after: 10000, panic_slot: 2, panic_marker: '{}'}}}}
  streams:
    - {{from: sentences, to: split, grouping: {{type: SHUFFLE}}}}
    - {{from: split, to: flaky, grouping: {{type: SHUFFLE}}}}
",
        marker.display()
    );
    let launch = Launch::start(&etcd.url, &manifest, &dir.0, &[]);
    eventually(
        "the launcher to restart slot 2 after the panic",
        Duration::from_secs(60),
        || launch.stderr().contains("slot 2: worker exited"),
    );
    assert!(marker.exists(), "slot 2 exited without Flaky's panic");
    let log = std::fs::read_to_string(dir.0.join("logs/worker-2.log")).unwrap();
    assert!(
        log.contains("component 'flaky'")
            && log.contains("panicked: Flaky panics after 10000 tuples"),
        "the worker's log should name the component and the panic:\n{log}"
    );
    let summary = launch.wait(Duration::from_secs(180));
    assert_all_acked(&summary, 20_000);
}

/// `kill -9` of a worker with Storm's default 30 s message timeout: the other
/// workers see their links to it break and fail their open trees back to the
/// spouts at once, instead of waiting out the timeout; every root is acked.
/// (How fast the rate recovers is measured by `make bench`, not here.)
#[test]
fn a_killed_workers_trees_replay_without_waiting_for_the_timeout() {
    let _serial = serial();
    let dir = Scratch::new("kill30");
    let etcd = Etcd::start(&dir.0);
    let rt = rt();
    let manifest =
        word_count("wckill30", 3, 4000, 30_000).rewrite("  messageTimeoutSeconds: 3\n", "");
    let launch = Launch::start(&etcd.url, &manifest, &dir.0, &[]);
    let s = store(&rt, &etcd.url, "wckill30");
    wait_running(&rt, &s, 3);
    wait_acking(&rt, &s);
    let victim = launch.worker_pid(2);
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill -9 the worker of slot 2");
    let logs = launch.logs.clone();
    let summary = launch.wait(Duration::from_secs(180));
    // The limit is per spout task, and there are two.
    assert_all_acked(&summary, 60_000);
    assert!(
        u(&summary, "replayed") > 0,
        "trees cut by the kill must be replayed: {summary}"
    );
    // The spouts' workers failed their trees when the link broke, not at the timeout.
    let failed_at_loss: Vec<u64> = (0..2)
        .flat_map(|slot| {
            let log = std::fs::read_to_string(logs.join(format!("worker-{slot}.log")))
                .unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("a peer worker was lost"))
                .filter_map(|l| {
                    l.split("trees=")
                        .nth(1)?
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .collect::<Vec<u64>>()
        })
        .collect();
    assert!(
        failed_at_loss.iter().sum::<u64>() > 0,
        "the spouts must fail their open trees when the peer is lost: {failed_at_loss:?}: {summary}"
    );
}
