//! The built-in KafkaSpout and KafkaBolt against a real Kafka broker (Apache
//! Kafka 4, KRaft, provisioned by tests/testenv/provision.sh), in local mode.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use squall_api::TopologySpec;
use squall_runtime::kafka::tools;
use squall_runtime::local::{self, LocalError, LocalOptions, Summary};
use squall_testenv::{Kafka, Rewrite};

const RECORDS: usize = 20_000;

fn spec(yaml: &str) -> (String, TopologySpec) {
    let (name, spec) = TopologySpec::from_manifest(yaml).unwrap();
    (name.unwrap_or_default(), spec)
}

fn quiet(interrupt: Arc<AtomicBool>) -> LocalOptions {
    LocalOptions {
        report_every: None,
        interrupt: Some(interrupt),
        ..Default::default()
    }
}

/// Polls `f` every 200 ms until it holds, for at most `timeout`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `group` committed, for every partition of `topic`, its end offset.
fn caught_up(bootstrap: &str, group: &str, topic: &str) -> Option<BTreeMap<i32, i64>> {
    let ends = tools::end_offsets(bootstrap, topic).ok()?;
    let committed = tools::committed_offsets(bootstrap, group, topic).ok()?;
    ends.iter()
        .all(|(p, end)| committed.get(p).copied().flatten() == Some(*end))
        .then_some(ends)
}

/// Each input record's value `r<i>` appears in `output` at least once; returns
/// the number of duplicates.
fn assert_all_delivered(bootstrap: &str, output: &str, n: usize) -> usize {
    let out = tools::read_all(bootstrap, output, Duration::from_secs(60)).unwrap();
    let seen: HashSet<Vec<u8>> = out.iter().filter_map(|r| r.value.clone()).collect();
    let missing: Vec<usize> = (0..n)
        .filter(|i| !seen.contains(format!("r{i}").as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {n} records never reached '{output}', e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(seen.len(), n, "nothing but the input reached the output");
    out.len() - n
}

/// 20,000 records through KafkaSpout → Flaky (fails 5%, drops 1%) → KafkaBolt:
/// every record reaches the output topic at least once, and the group's
/// committed offsets reach the input's end offsets.
#[test]
fn records_go_through_a_flaky_path_at_least_once() {
    let kafka = Kafka::start().unwrap();
    let b = kafka.bootstrap_servers().to_string();
    tools::create_topic(&b, "input", 4).unwrap();
    tools::create_topic(&b, "output", 4).unwrap();
    let n = tools::produce(
        &b,
        "input",
        (0..RECORDS).map(|i| (Some(format!("k{i}")), format!("r{i}"))),
    )
    .unwrap();
    assert_eq!(n, RECORDS);
    assert_eq!(
        tools::end_offsets(&b, "input")
            .unwrap()
            .values()
            .sum::<i64>(),
        RECORDS as i64
    );

    let (name, spec) = spec(&format!(
        r#"
apiVersion: squall.dev/v1alpha1
kind: Topology
metadata: {{name: kafka-flaky}}
spec:
  image: squall-examples:0.1.0
  messageTimeoutSeconds: 2
  maxSpoutPending: 500
  spouts:
    - id: events
      component: KafkaSpout
      parallelism: 2
      config: {{bootstrapServers: "{b}", topic: input, groupId: flaky-group, firstOffset: EARLIEST, offsetCommitPeriodMs: 200}}
  bolts:
    - {{id: flaky, component: Flaky, parallelism: 2, config: {{fail_ratio: 0.05, drop_ratio: 0.01}}}}
    - {{id: sink, component: KafkaBolt, parallelism: 2, config: {{bootstrapServers: "{b}", topic: output, valueField: value}}}}
  streams:
    - {{from: events, to: flaky, grouping: {{type: SHUFFLE}}}}
    - {{from: flaky, to: sink, grouping: {{type: SHUFFLE}}}}
"#
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let opts = quiet(stop.clone());
        std::thread::spawn(move || local::run(&squall_examples::registry(), &name, spec, &opts))
    };
    wait_for(
        "the group's commits reach the input's end offsets",
        Duration::from_secs(180),
        || run.is_finished() || caught_up(&b, "flaky-group", "input").is_some(),
    );
    stop.store(true, Ordering::Relaxed);
    let s: Summary = run.join().unwrap().unwrap();
    assert!(caught_up(&b, "flaky-group", "input").is_some(), "{s:?}");

    let dups = assert_all_delivered(&b, "output", RECORDS);
    eprintln!(
        "kafka flaky path: {RECORDS} records, {} acked, {} failed, {} replayed, {dups} duplicates in the output",
        s.acked, s.failed, s.replayed
    );
    assert!(
        s.failed > 0 && s.replayed > 0,
        "Flaky made failures that the spout replayed: {s:?}"
    );
    assert!(s.acked >= RECORDS as u64, "{s:?}");
    assert!(s.components["sink"].acked >= RECORDS as u64, "{s:?}");
}

/// Config errors stop the start and name the component; nothing panics.
#[test]
fn bad_config_is_a_start_error_naming_the_component() {
    for (config, expect) in [
        (
            r#"{bootstrapServers: "127.0.0.1:9"}"#,
            "config 'topic' is required",
        ),
        (r#"{topic: t}"#, "config 'bootstrapServers' is required"),
        (
            r#"{bootstrapServers: "127.0.0.1:9", topic: t, firstOffset: OLDEST}"#,
            "unknown firstOffset 'OLDEST'",
        ),
        (
            r#"{bootstrapServers: "127.0.0.1:9", topic: t, kafkaProperties: {no.such.property: 1}}"#,
            "no.such.property",
        ),
    ] {
        let (name, spec) = spec(&format!(
            "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {{name: bad}}\nspec:\n  image: x\n  \
             spouts: [{{id: events, component: KafkaSpout, config: {config}}}]\n  \
             bolts: [{{id: sink, component: KafkaBolt, config: {{bootstrapServers: \"127.0.0.1:9\", topic: out}}}}]\n  \
             streams: [{{from: events, to: sink, grouping: {{type: SHUFFLE}}}}]\n"
        ));
        let err = local::run(
            &squall_examples::registry(),
            &name,
            spec,
            &quiet(Arc::default()),
        )
        .unwrap_err();
        assert!(matches!(err, LocalError::Start(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("events") && msg.contains(expect),
            "{config}: {msg}"
        );
    }
}

/// A broker that is not there: the topology runs (and keeps trying) without a
/// panic, and emits nothing.
#[test]
fn a_broker_that_is_down_is_retried_not_a_crash() {
    let (name, spec) = spec(
        "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {name: down}\nspec:\n  image: x\n  \
         spouts: [{id: events, component: KafkaSpout, config: {bootstrapServers: \"127.0.0.1:9\", topic: t}}]\n  \
         bolts: [{id: sink, component: KafkaBolt, config: {bootstrapServers: \"127.0.0.1:9\", topic: out, valueField: value}}]\n  \
         streams: [{from: events, to: sink, grouping: {type: SHUFFLE}}]\n",
    );
    let opts = LocalOptions {
        duration: Some(Duration::from_secs(3)),
        ..quiet(Arc::default())
    };
    let s = local::run(&squall_examples::registry(), &name, spec, &opts).unwrap();
    s.check_totals().unwrap();
    assert_eq!(s.stopped_by, "duration", "it ran its course: {s:?}");
    assert!(s.components.contains_key("events"), "{s:?}");
    assert_eq!(s.emitted, 0, "{s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
}

/// The shipped kafka-word-count manifest, pointed at a real broker: sentences
/// in, the final count of every word out.
#[test]
fn the_kafka_word_count_example_counts_every_word() {
    let kafka = Kafka::start().unwrap();
    let b = kafka.bootstrap_servers().to_string();
    tools::create_topic(&b, "sentences", 4).unwrap();
    let sentences = 500;
    tools::produce(
        &b,
        "sentences",
        (0..sentences).map(|i| (None::<&str>, squall_examples::SENTENCES[i % 5])),
    )
    .unwrap();
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for i in 0..sentences {
        for w in squall_examples::SENTENCES[i % 5].split_whitespace() {
            *expected.entry(w).or_default() += 1;
        }
    }

    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka-word-count/topology.yaml"),
    )
    .unwrap()
    .rewrite("kafka:9092", &b);
    let (name, spec) = spec(&text);
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let opts = quiet(stop.clone());
        std::thread::spawn(move || local::run(&squall_examples::registry(), &name, spec, &opts))
    };
    wait_for(
        "the group's commits reach the end of 'sentences'",
        Duration::from_secs(120),
        || run.is_finished() || caught_up(&b, "kafka-word-count", "sentences").is_some(),
    );
    stop.store(true, Ordering::Relaxed);
    let s = run.join().unwrap().unwrap();
    assert_eq!(s.acked, sentences as u64, "{s:?}");

    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for r in tools::read_all(&b, "word-counts", Duration::from_secs(60)).unwrap() {
        let word = String::from_utf8(r.key.unwrap()).unwrap();
        let n: u64 = String::from_utf8(r.value.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let c = counted.entry(word).or_default();
        *c = (*c).max(n);
    }
    let expected: BTreeMap<String, u64> = expected
        .into_iter()
        .map(|(w, n)| (w.to_string(), n))
        .collect();
    assert_eq!(counted, expected, "no failures: every count exact");
}

/// The broker dies mid-run (SIGKILL): the spout and bolt log and keep trying,
/// nothing panics, and the run still stops when asked.
#[test]
fn a_broker_that_dies_mid_run_is_no_crash() {
    let kafka = Kafka::start().unwrap();
    let b = kafka.bootstrap_servers().to_string();
    tools::create_topic(&b, "in", 2).unwrap();
    tools::produce(&b, "in", (0..2000).map(|i| (None::<&str>, format!("r{i}")))).unwrap();
    let (name, spec) = spec(&format!(
        "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {{name: dies}}\nspec:\n  image: x\n  \
         messageTimeoutSeconds: 2\n  \
         spouts: [{{id: events, component: KafkaSpout, config: {{bootstrapServers: \"{b}\", topic: in, groupId: dies, offsetCommitPeriodMs: 100}}}}]\n  \
         bolts: [{{id: sink, component: KafkaBolt, config: {{bootstrapServers: \"{b}\", topic: out, valueField: value, messageTimeoutMs: 1000}}}}]\n  \
         streams: [{{from: events, to: sink, grouping: {{type: SHUFFLE}}}}]\n"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let opts = quiet(stop.clone());
        std::thread::spawn(move || local::run(&squall_examples::registry(), &name, spec, &opts))
    };
    wait_for("the first commit", Duration::from_secs(60), || {
        tools::committed_offsets(&b, "dies", "in")
            .is_ok_and(|c| c.values().any(|o| o.is_some_and(|o| o > 0)))
    });
    let status = std::process::Command::new("kill")
        .args(["-s", "KILL", &kafka.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("the broker to be gone", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{}", kafka.pid())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", kafka.pid()))
                .is_ok_and(|s| s.contains(") Z "))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !run.is_finished(),
        "the topology keeps running without its broker"
    );
    let t = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let s = run.join().expect("no panic").unwrap();
    eprintln!(
        "broker killed mid-run: stopped in {:.1}s; {s:?}",
        t.elapsed().as_secs_f64()
    );
    assert!(s.acked > 0, "{s:?}");
}
