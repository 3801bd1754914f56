//! The README is a test: every command block a user is told to type
//! (```sh) is run here as typed, from the repository root, or named with
//! what runs it. A block this file does not know fails the test, and so does
//! a known block that left the README: the two cannot drift apart.
//!
//! Placeholders a user fills in from what `make dev-cluster` printed
//! (`<path>`, `<etcd url>`, `<etcd url from pods>`) are filled in from the
//! shared real cluster. This binary runs alone (cargo runs test binaries one
//! after another): the README installs a cluster-wide operator.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use squall_chart_tests as chart;
use squall_testenv::{Rewrite, TestCluster, wait_until};

/// How each command block is proven.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Proof {
    MakeRun,
    /// `.ci/run` runs it; checked below.
    MakeTest,
    /// `make test` depends on `images`, and the dev-cluster test runs
    /// `make dev-cluster` itself (tests/testenv/tests/dev_cluster.rs).
    ImagesAndDevCluster,
    HelmJourney,
    OperatorOutside,
    OperatorOutsideApply,
    Processes,
    LocalUi,
    PortForwardUi,
}

const BLOCKS: &[(&str, Proof)] = &[
    ("make run\n", Proof::MakeRun),
    ("make test\n", Proof::MakeTest),
    (
        "make images\nmake dev-cluster\n",
        Proof::ImagesAndDevCluster,
    ),
    ("export KUBECONFIG=<path>\nhelm install", Proof::HelmJourney),
    (
        "export KUBECONFIG=<path> SQUALL_ETCD_ENDPOINTS",
        Proof::OperatorOutside,
    ),
    ("kubectl apply -n dev -f", Proof::OperatorOutsideApply),
    (
        "cargo run --release -p squall-examples -- local --processes",
        Proof::Processes,
    ),
    (
        "cargo run --release -p squall-examples -- local examples/word-count/topology.yaml --duration 60s --ui",
        Proof::LocalUi,
    ),
    (
        "kubectl -n squall-system port-forward deployment/squall-operator 8081",
        Proof::PortForwardUi,
    ),
];

fn show(line: &str) {
    let _ = writeln!(std::io::stderr(), "readme: {line}");
}

/// The ```sh blocks of the README, in order.
fn sh_blocks() -> Vec<String> {
    let text = std::fs::read_to_string(chart::workspace_root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => out.extend(cur.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

fn block(proof: Proof) -> String {
    sh_blocks()
        .into_iter()
        .find(|b| BLOCKS.iter().any(|(p, k)| *k == proof && b.starts_with(p)))
        .unwrap_or_else(|| panic!("no README block for {proof:?}"))
}

fn proof_of(b: &str) -> Option<Proof> {
    BLOCKS
        .iter()
        .find(|(p, _)| b.starts_with(p))
        .map(|(_, k)| *k)
}

/// Fills the placeholders; a placeholder that is not there, or one left
/// over, fails.
fn fill(block: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = block.to_string();
    for (k, v) in pairs {
        s = s.rewrite(k, v);
    }
    for line in s.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let code = line.split(" #").next().unwrap_or(line);
        assert!(
            !(code.contains('<') && code.contains('>')),
            "an unfilled placeholder in: {line}"
        );
    }
    s
}

/// `bash -euo pipefail -c BLOCK` from the repository root, with the
/// provisioned tools (helm) on PATH, in its own process group.
fn bash(block: &str) -> Command {
    let mut c = Command::new("bash");
    let path = format!(
        "{}:{}",
        squall_testenv::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.args(["-euo", "pipefail", "-c", block])
        .current_dir(chart::workspace_root())
        .env("PATH", path)
        .env_remove("KUBECONFIG")
        .process_group(0);
    c
}

fn run_ok(block: &str) -> String {
    let out = bash(block).stdin(Stdio::null()).output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "`{block}` failed ({}):\n{o}\n{e}",
        out.status
    );
    format!("{o}{e}")
}

/// The local-mode summary line: (acked, failed).
fn summary(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("=== ") && l.contains("acked="))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let (acked, failed) = (field("acked="), field("failed="));
    assert_eq!(
        field("emitted="),
        acked + failed + field("open="),
        "every root is acked, failed or open: {line}"
    );
    (acked, failed)
}

#[test]
fn every_readme_command_block_has_a_proof() {
    let blocks = sh_blocks();
    assert!(blocks.len() >= BLOCKS.len(), "{blocks:#?}");
    for b in &blocks {
        assert!(
            proof_of(b).is_some(),
            "README has a command block that no test runs; add it to tests/chart/tests/readme.rs:\n{b}"
        );
    }
    for (prefix, proof) in BLOCKS {
        assert!(
            blocks.iter().any(|b| b.starts_with(prefix)),
            "{proof:?}: no README block starts with {prefix:?} any more"
        );
    }
    // `make test` is what CI runs, as typed, and nothing weaker.
    let ci = std::fs::read_to_string(chart::workspace_root().join(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "make test"), "{ci}");
    assert_eq!(block(Proof::MakeTest).trim(), "make test");
    // `make test` builds the images first; the dev-cluster test types `make dev-cluster`.
    let makefile = std::fs::read_to_string(chart::workspace_root().join("Makefile")).unwrap();
    assert!(
        makefile
            .lines()
            .any(|l| l.starts_with("test:") && l.split_whitespace().any(|w| w == "images")),
        "make test must depend on images:\n{makefile}"
    );
    let dev =
        std::fs::read_to_string(chart::workspace_root().join("tests/testenv/tests/dev_cluster.rs"))
            .unwrap();
    assert!(dev.contains(r#""make", "dev-cluster""#) || dev.contains("make dev-cluster"));
}

#[test]
fn make_run_ends_with_acked_trees_and_no_failure() {
    let out = run_ok(&block(Proof::MakeRun));
    let (acked, failed) = summary(&out);
    show(&format!("make run: acked={acked} failed={failed}"));
    assert!(acked > 0 && failed == 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_without_kubernetes() {
    let etcd = squall_testenv::Etcd::start().await.unwrap();
    let b = fill(
        &block(Proof::Processes),
        &[("<etcd url>", etcd.client_url())],
    );
    let out = tokio::task::spawn_blocking(move || run_ok(&b))
        .await
        .unwrap();
    let (acked, failed) = summary(&out);
    show(&format!("local --processes: acked={acked} failed={failed}"));
    assert!(acked > 0 && failed == 0, "{out}");
}

/// What headless Chromium renders of word count's page at `url`, once it
/// shows three components, traffic on both edges and `workers` worker rows;
/// the last DOM if it never does (the caller's assertions say what lacks).
async fn word_count_page(url: &str, workers: usize) -> String {
    use squall_testenv::browser;
    let mut dom = String::new();
    for _ in 0..15 {
        let u = url.to_string();
        dom = tokio::task::spawn_blocking(move || browser::dump_dom(&u, 4000))
            .await
            .unwrap()
            .unwrap_or_else(|e| e.to_string());
        let rates = browser::tagged(&dom, "edge")
            .iter()
            .filter_map(|e| e.get("data-rate")?.parse::<f64>().ok())
            .filter(|r| *r > 0.0)
            .count();
        if browser::body_state(&dom) == "ready"
            && browser::tagged(&dom, "node").len() == 3
            && rates == 2
            && browser::tagged(&dom, "worker-row").len() == workers
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    dom
}

/// The page as a user sees it: ready, three nodes, two edges with traffic.
fn assert_word_count_page(dom: &str, workers: usize) {
    use squall_testenv::browser;
    assert_eq!(browser::body_state(dom), "ready", "{dom}");
    let nodes: Vec<String> = browser::tagged(dom, "node")
        .into_iter()
        .filter_map(|mut n| n.remove("data-component"))
        .collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}\n{dom}");
    let rates: Vec<f64> = browser::tagged(dom, "edge")
        .iter()
        .filter_map(|e| e.get("data-rate")?.parse().ok())
        .collect();
    assert!(
        rates.len() == 2 && rates.iter().all(|r| *r > 0.0),
        "{rates:?}\n{dom}"
    );
    assert_eq!(browser::tagged(dom, "worker-row").len(), workers, "{dom}");
    show(&format!("web UI: nodes {nodes:?}, edge rates {rates:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_web_ui_as_typed() {
    let b = fill(&block(Proof::LocalUi), &[]);
    let run = Background::start(&b, "readme-local-ui");
    // The release build may take a while on a cold tree.
    wait_until(
        "the web UI of the local run",
        Duration::from_secs(900),
        || {
            let up = run.log().contains("web UI: http://127.0.0.1:8082/");
            async move { up.then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", run.log()));
    let dom = word_count_page("http://127.0.0.1:8082/#/local/word-count", 3).await;
    assert_word_count_page(&dom, 3);
    drop(run);
}

fn kubectl(cluster: &TestCluster, args: &[&str]) -> String {
    let mut cmd = cluster.kubectl();
    cmd.args(args);
    chart::run(cmd, None).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

async fn wait_running(cluster: &TestCluster, ns: &str, extra: &str) {
    let t0 = std::time::Instant::now();
    wait_until(
        "word-count Running 3/3 with trees acked",
        Duration::from_secs(180),
        || {
            let t: Value = serde_json::from_str(&kubectl(
                cluster,
                &["get", "topology", "word-count", "-n", ns, "-o", "json"],
            ))
            .unwrap_or_default();
            let s = &t["status"];
            let ok = s["phase"] == "Running"
                && s["workers"]["summary"] == "3/3"
                && s["stats"]["ackedTotal"].as_u64().unwrap_or(0) > 0;
            async move { ok.then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{extra}", cluster.dump(ns)));
    show(&format!(
        "word-count in {ns}: Running 3/3 with trees acked after {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
}

/// Kills a background block's whole process group on drop.
struct Background(Child, std::path::PathBuf);

impl Background {
    /// Run `block` in the background (it stays in the foreground for a user),
    /// its output in a temporary log named after `name`.
    fn start(block: &str, name: &str) -> Background {
        let log = std::env::temp_dir().join(format!("{name}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = bash(block)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Background(child, log)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let pg = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(500));
        let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_section_as_typed() {
    let cluster = TestCluster::shared().await.unwrap();
    let kubeconfig = cluster.kubeconfig_path().display().to_string();

    // The Helm journey, into the default namespace as a user would.
    let b = fill(&block(Proof::HelmJourney), &[("<path>", &kubeconfig)]);
    let out = run_ok(&b);
    assert!(
        out.contains("topology.squall.dev/word-count created"),
        "{out}"
    );
    wait_running(&cluster, "default", "").await;

    // The web UI through kubectl port-forward, as typed.
    let b = fill(&block(Proof::PortForwardUi), &[]);
    let b = format!("export KUBECONFIG={kubeconfig}\n{b}");
    let forward = Background::start(&b, "readme-port-forward");
    wait_until("kubectl port-forward", Duration::from_secs(60), || {
        let up = forward.log().contains("Forwarding from 127.0.0.1:8081");
        async move { up.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", forward.log()));
    let dom = word_count_page("http://localhost:8081/#/default/word-count", 3).await;
    assert_word_count_page(&dom, 3);
    drop(forward);

    kubectl(
        &cluster,
        &[
            "delete",
            "topology",
            "word-count",
            "-n",
            "default",
            "--timeout=120s",
        ],
    );
    let mut cmd = cluster.kubectl();
    cmd.args(["get", "pods", "-n", "default", "-o", "name"]);
    assert!(chart::run(cmd, None).unwrap().trim().is_empty());
    chart::uninstall(&cluster, "squall", "squall-system").unwrap();

    // The operator outside the cluster, typed in one terminal (it stays in
    // the foreground), then the topology from another.
    let a = fill(
        &block(Proof::OperatorOutside),
        &[
            ("<path>", &kubeconfig),
            ("<etcd url>", cluster.etcd_url()),
            ("<etcd url from pods>", cluster.etcd_url_from_pods()),
        ],
    );
    let operator = Background::start(&a, "readme-operator");
    let b = fill(&block(Proof::OperatorOutsideApply), &[]);
    let b = format!("export KUBECONFIG={kubeconfig}\n{b}");
    wait_until("the dev namespace", Duration::from_secs(120), || {
        let ok = Command::new("kubectl")
            .args(["--kubeconfig", &kubeconfig, "get", "namespace", "dev"])
            .output()
            .is_ok_and(|o| o.status.success());
        async move { ok.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log()));
    let out = run_ok(&b);
    assert!(out.contains("word-count"), "{out}");
    wait_running(&cluster, "dev", &operator.log()).await;
    kubectl(
        &cluster,
        &[
            "delete",
            "topology",
            "word-count",
            "-n",
            "dev",
            "--timeout=120s",
        ],
    );
    drop(operator);
    cluster.delete_namespace("dev");
}
