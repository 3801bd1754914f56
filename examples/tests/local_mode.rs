//! The examples in local mode, end to end: delivery guarantees, backpressure,
//! invalid manifests, the CLI's summary and the metrics endpoint.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use squall_api::TopologySpec;
use squall_runtime::local::{self, LocalOptions, Summary};
use squall_runtime::{Outputs, Spout, SpoutCollector, values};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest(rel: &str) -> (String, TopologySpec) {
    let text = std::fs::read_to_string(repo().join(rel)).expect("example manifest exists");
    let (name, spec) = TopologySpec::from_manifest(&text).expect("example manifest parses");
    (name.unwrap_or_default(), spec)
}

fn quiet() -> LocalOptions {
    LocalOptions {
        report_every: None,
        interrupt: Some(Arc::new(AtomicBool::new(false))),
        ..Default::default()
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_squall-examples"))
}

/// A spout of ids 0..limit that asserts no id is ever acked twice.
struct Ledger {
    next: u64,
    limit: u64,
    replay: Vec<u64>,
    open: HashSet<u64>,
    acked: Arc<Mutex<HashSet<u64>>>,
    double_acks: Arc<AtomicU64>,
}

impl Spout for Ledger {
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>) {
        let id = match self.replay.pop() {
            Some(id) => id,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return,
        };
        self.open.insert(id);
        out.emit(
            values![squall_examples::SENTENCES[id as usize % 5]],
            Some(id),
        );
    }
    fn ack(&mut self, id: u64) {
        self.open.remove(&id);
        if !self.acked.lock().unwrap().insert(id) {
            self.double_acks.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn fail(&mut self, id: u64) {
        self.replay.push(id);
    }
    fn is_done(&self) -> bool {
        self.next >= self.limit && self.replay.is_empty() && self.open.is_empty()
    }
}

#[test]
fn word_count_acks_and_fails_nothing() {
    let (name, spec) = manifest("examples/word-count/topology.yaml");
    let opts = LocalOptions {
        duration: Some(Duration::from_secs(2)),
        ..quiet()
    };
    let s = local::run(&squall_examples::registry(), &name, spec, &opts).unwrap();
    s.check_totals().unwrap();
    assert!(s.acked > 0, "{s:?}");
    assert_eq!(s.failed, 0);
    assert_eq!(s.open_at_end, 0);
    assert_eq!(s.stopped_by, "duration");
    let count = &s.components["count"];
    let split = &s.components["split"];
    assert_eq!(
        count.executed, split.emitted,
        "every word reached a counter"
    );
    assert!(
        s.complete_latency_ms.p50 > 0.0 && s.complete_latency_ms.p99 >= s.complete_latency_ms.p50
    );
}

#[test]
fn flaky_path_still_acks_every_root_exactly_once() {
    let (name, mut spec) = manifest("examples/word-count-flaky/topology.yaml");
    // Swap the sentence spout for a ledger that checks for double acks.
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let double = Arc::new(AtomicU64::new(0));
    let mut registry = squall_examples::registry();
    let (a, d) = (acked.clone(), double.clone());
    registry.spout("Ledger", Outputs::fields(&["sentence"]), move |ctx| {
        // Each spout task gets its own id range.
        let base = u64::from(ctx.task_index) * 1_000_000;
        Ok(Ledger {
            next: base,
            limit: base + 3000,
            replay: vec![],
            open: HashSet::new(),
            acked: a.clone(),
            double_acks: d.clone(),
        })
    });
    spec.spouts[0].component = Some("Ledger".into());
    let s = local::run(&registry, &name, spec, &quiet()).unwrap();
    s.check_totals().unwrap();
    assert_eq!(s.stopped_by, "limit");
    assert_eq!(s.acked, 6000, "every root of both spout tasks acked: {s:?}");
    assert_eq!(acked.lock().unwrap().len(), 6000);
    assert_eq!(double.load(Ordering::Relaxed), 0, "no id acked twice");
    assert!(
        s.failed > 0 && s.replayed > 0,
        "Flaky made failures that were replayed: {s:?}"
    );
    assert_eq!(
        s.emitted,
        s.acked + s.replayed,
        "each emit is a first try or a counted replay"
    );
    assert!(s.components["flaky"].failed > 0);
}

#[test]
fn the_shipped_flaky_manifest_acks_every_root() {
    let (name, spec) = manifest("examples/word-count-flaky/topology.yaml");
    let roots = 2 * 5000;
    let s = local::run(&squall_examples::registry(), &name, spec, &quiet()).unwrap();
    s.check_totals().unwrap();
    assert_eq!(s.stopped_by, "limit");
    assert_eq!(s.acked, roots, "{s:?}");
    assert_eq!(s.emitted, roots + s.replayed);
    assert!(s.replayed > 0);
}

#[test]
fn at_most_once_never_replays() {
    let (name, mut spec) = manifest("examples/word-count-flaky/topology.yaml");
    spec.ackers = Some(0);
    let s = local::run(&squall_examples::registry(), &name, spec, &quiet()).unwrap();
    s.check_totals().unwrap();
    assert_eq!(s.stopped_by, "limit");
    assert_eq!(s.replayed, 0, "{s:?}");
    assert_eq!(
        s.failed, 0,
        "without ackers the spout never hears of failures"
    );
    assert_eq!(s.acked, 10_000, "acked at once on emit");
    // Flaky really did fail and drop tuples: fewer sentences reached split.
    assert!(
        s.components["split"].executed < 10_000,
        "{:?}",
        s.components["split"]
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The end of a run does not wait for a slow bolt to work through its full
/// queue (8,192 tuples at 100 ms each is 14 minutes): after the drain, what is
/// left is dropped (its trees have failed, or count as open).
#[test]
fn a_run_ends_without_draining_a_slow_bolts_queue() {
    let dir = tempdir();
    let path = dir.join("slow.yaml");
    std::fs::write(
        &path,
        "spouts: [{id: s, component: RandomSentenceSpout, config: {rate: 0}}]\n\
         maxSpoutPending: 100000\nmessageTimeoutSeconds: 1\n\
         bolts: [{id: slow, component: Flaky, config: {sleep_ms: 100}}]\n\
         streams: [{from: s, to: slow, grouping: {type: SHUFFLE}}]\n",
    )
    .unwrap();
    let mut child = bin()
        .args([
            "local",
            path.to_str().unwrap(),
            "--duration",
            "1s",
            "--json",
        ])
        .args(["--report-interval", "0s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the run did not end a minute after its 1 s duration");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let s = last_json(&out.stdout);
    // The trees timed out (1 s) while the bolt held them, and the run ended
    // without it working through them.
    let executed = s.components["slow"].executed;
    assert!(executed > 0, "the bolt ran: {s:?}");
    assert!(
        s.failed > 1000 && executed < s.failed / 10,
        "the bolt held many more tuples than it executed: {s:?}"
    );
}

#[test]
fn a_slow_bolt_holds_back_a_fast_spout_with_bounded_memory() {
    // A flat-out spout, no pending limit to speak of, and a bolt that sleeps 1 ms per tuple.
    let dir = tempdir();
    let path = dir.join("slow.yaml");
    std::fs::write(
        &path,
        "spouts: [{id: s, component: RandomSentenceSpout, config: {rate: 0}}]\n\
         maxSpoutPending: 10000000\nmessageTimeoutSeconds: 600\n\
         bolts: [{id: slow, component: Flaky, config: {sleep_ms: 1}}, {id: split, component: SplitSentence}]\n\
         streams: [{from: s, to: slow, grouping: {type: SHUFFLE}}, {from: slow, to: split, grouping: {type: SHUFFLE}}]\n",
    )
    .unwrap();
    let child = bin()
        .args([
            "local",
            path.to_str().unwrap(),
            "--duration",
            "4s",
            "--json",
            "--report-interval",
            "0s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3800) {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let s = last_json(&out.stdout);
    // Unbounded, a flat-out spout would emit millions of sentences in 4 s. The
    // bolt executes about 1000/s; only the bounded queues may hold more.
    assert!(
        s.emitted < 60_000,
        "spout ran ahead of a slow bolt: emitted {}",
        s.emitted
    );
    assert!(
        s.components["slow"].executed > 500,
        "{:?}",
        s.components["slow"]
    );
    // A bound on a figure that was never read would hold vacuously.
    assert!(peak > 0, "the child's peak RSS was never read");
    assert!(
        peak < 150 * 1024,
        "peak RSS {peak} KiB: memory is not bounded"
    );
}

fn last_json(stdout: &[u8]) -> Summary {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().expect("some output");
    let s: Summary = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not the JSON summary ({e}): {last}"));
    s.check_totals().unwrap();
    s
}

fn tempdir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "squall-ex-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn cli_json_summary_is_the_last_line() {
    let out = bin()
        .args([
            "local",
            "examples/word-count/topology.yaml",
            "--duration",
            "2s",
            "--json",
            "--report-interval",
            "1s",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "acked",
        "failed",
        "emitted",
        "duration_s",
        "acked_per_s",
        "complete_latency_ms",
        "components",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {last}");
    }
    for key in ["p50", "p99", "max"] {
        assert!(v["complete_latency_ms"].get(key).is_some());
    }
    assert!(v["acked"].as_u64().unwrap() > 0);
    assert_eq!(v["failed"].as_u64(), Some(0));
    // The live table went to stderr, so stdout is the summary alone.
    assert_eq!(text.lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("component"));
}

#[test]
fn every_example_manifest_validates() {
    for ex in [
        "word-count",
        "exclamation",
        "rolling-top-words",
        "throughput-vs-latency",
        "word-count-flaky",
        "kafka-word-count",
    ] {
        let out = bin()
            .args(["validate", &format!("examples/{ex}/topology.yaml")])
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ex}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn invalid_manifests_exit_nonzero_naming_the_field() {
    let base = "spouts: [{id: s, component: RandomSentenceSpout}]\n";
    let cases: [(&str, String); 8] = [
        (
            "spec.bolts[0].component",
            format!("{base}bolts: [{{id: b, component: NoSuchBolt}}]"),
        ),
        (
            "spec.streams[1].grouping.fields[0]",
            format!(
                "{base}bolts: [{{id: a, component: SplitSentence}}, {{id: b, component: WordCount}}]\n\
                 streams: [{{from: s, to: a, grouping: {{type: SHUFFLE}}}}, {{from: a, to: b, grouping: {{type: FIELDS, fields: [colour]}}}}]"
            ),
        ),
        (
            "spec.bolts[1].id",
            format!(
                "{base}bolts: [{{id: b, component: SplitSentence}}, {{id: b, component: WordCount}}]"
            ),
        ),
        (
            "spec.bolts[0].parallelism",
            format!("{base}bolts: [{{id: b, component: SplitSentence, parallelism: 4, tasks: 2}}]"),
        ),
        ("spec.spouts", "spouts: []\n".to_string()),
        (
            "spec.streams[0].from",
            format!(
                "{base}bolts: [{{id: b, component: SplitSentence}}]\nstreams: [{{from: ghost, to: b, grouping: {{type: SHUFFLE}}}}]"
            ),
        ),
        (
            "spec.streams[0].stream",
            format!(
                "{base}bolts: [{{id: b, component: SplitSentence}}]\nstreams: [{{from: s, to: b, stream: other, grouping: {{type: SHUFFLE}}}}]"
            ),
        ),
        (
            "spec.bolts[0].parallelism",
            format!("{base}bolts: [{{id: b, component: SplitSentence, parallelism: 0}}]"),
        ),
    ];
    let dir = tempdir();
    for (i, (field, yaml)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = bin()
            .args(["local", path.to_str().unwrap(), "--duration", "1s"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} ({field}) should fail");
        assert!(
            err.contains(field),
            "case {i}: stderr should name {field}: {err}"
        );
    }
    // Broken YAML and a missing file are errors too, not panics.
    let path = dir.join("broken.yaml");
    std::fs::write(&path, "spouts: [").unwrap();
    let out = bin()
        .args(["local", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .args(["local", "/nonexistent/topology.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The values of the series of `family` whose labels start with `labels`.
fn series<'a>(text: &'a str, family: &str, labels: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?.strip_prefix('{')?;
            let (ls, v) = rest.rsplit_once("} ")?;
            ls.starts_with(labels).then(|| (ls, v.parse().unwrap()))
        })
        .collect()
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = bin()
        .args([
            "local",
            "examples/word-count/topology.yaml",
            "--duration",
            "4s",
            "--report-interval",
            "0s",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let spout = "topology=\"word-count\",component=\"sentences\",task=";
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut body = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1500));
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            body.clear();
            s.read_to_string(&mut body).unwrap();
            if !series(&body, "squall_complete_latency_seconds_count", spout).is_empty() {
                break;
            }
        }
    }
    let _ = child.wait();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let text = body.split_once("\r\n\r\n").unwrap().1;
    // Prometheus' own parser and linter accept it.
    squall_testenv::promcheck(text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    // Per executor: the two spout executors run one task each, the count
    // bolt's three executors two tasks each (Storm's `first-last`).
    let acked = series(text, "squall_acked_total", spout);
    assert_eq!(acked.len(), 2, "{text}");
    assert!(acked.iter().map(|(_, v)| v).sum::<f64>() > 0.0, "{text}");
    let count = series(
        text,
        "squall_executed_total",
        "topology=\"word-count\",component=\"count\",task=",
    );
    assert_eq!(count.len(), 3, "{text}");
    assert!(
        count.iter().all(|(l, _)| {
            let task = l.rsplit_once("task=\"").unwrap().1.trim_end_matches('"');
            let (first, last) = task.split_once('-').unwrap();
            last.parse::<u32>().unwrap() == first.parse::<u32>().unwrap() + 1
        }),
        "{count:?}"
    );
    // Complete latency is a histogram: cumulative buckets, +Inf = _count.
    assert!(
        text.contains("# TYPE squall_complete_latency_seconds histogram\n"),
        "{text}"
    );
    for (labels, n) in series(text, "squall_complete_latency_seconds_count", spout) {
        let buckets: Vec<f64> = series(text, "squall_complete_latency_seconds_bucket", labels)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(buckets.len(), 18, "{labels}: {text}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(buckets.last(), Some(&n));
        assert!(n > 0.0);
    }
}

/// A worker's `/metrics` (labelled `topology` and `slot`, as worker mode
/// serves it) from real executor metrics passes Prometheus' parser and promlint.
#[test]
fn worker_metrics_text_passes_promcheck() {
    use squall_api::PlannedKind;
    use squall_runtime::metrics::MetricsHub;

    let hub = MetricsHub::new();
    let spout = hub.register("sentences", PlannedKind::Spout, 1..2);
    let split = hub.register("split", PlannedKind::Bolt, 2..5);
    let acker = hub.register("__acker", PlannedKind::Acker, 5..6);
    {
        let mut m = spout.lock().unwrap();
        m.emitted = 100;
        m.roots = 100;
        m.acked = 97;
        m.failed = 3;
        for us in [150, 900, 4_000, 75_000, 3_000_000] {
            m.record_complete(us * 1000);
        }
    }
    {
        let mut m = split.lock().unwrap();
        for us in [20, 300, 12_000] {
            m.record_execute(us * 1000);
            m.record_process(us * 1000 + 5_000);
        }
    }
    acker.lock().unwrap().record_execute(1_000);
    let text = hub.render_prometheus(&[("topology", "streams/word-count"), ("slot", "2")]);
    squall_testenv::promcheck(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(text.contains(
        "squall_execute_latency_seconds_bucket{topology=\"streams/word-count\",slot=\"2\",component=\"split\",task=\"2-4\",le=\"0.0005\"} 2\n"
    ), "{text}");
    assert!(text.contains(
        "squall_complete_latency_seconds_count{topology=\"streams/word-count\",slot=\"2\",component=\"sentences\",task=\"1\"} 5\n"
    ), "{text}");
}

#[test]
fn a_panicking_bolt_ends_local_mode_nonzero_naming_it() {
    let dir = tempdir();
    let marker = dir.join("panicked");
    let path = dir.join("panic.yaml");
    std::fs::write(
        &path,
        format!(
            "spouts: [{{id: words, component: TestWordSpout}}]\n\
             bolts: [{{id: flaky, component: Flaky, config: {{panic_after: 100, panic_marker: '{}'}}}}]\n\
             streams: [{{from: words, to: flaky, grouping: {{type: SHUFFLE}}}}]\n",
            marker.display()
        ),
    )
    .unwrap();
    // Without the panic this would run for a minute.
    let out = bin()
        .args(["local", path.to_str().unwrap(), "--duration", "60s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(marker.exists(), "Flaky never reached its panic: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for words in [
        "component 'flaky' (task 2) panicked",
        "Flaky panics after 100 tuples",
    ] {
        assert!(line.contains(words), "{words:?} not in {line:?}\n{err}");
    }
}
