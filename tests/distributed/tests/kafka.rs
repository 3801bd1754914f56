//! KafkaSpout → Flaky → KafkaBolt over two worker processes and a real etcd,
//! against a real Kafka broker, with `kill -9` of a worker that runs a
//! KafkaSpout task mid-run: nothing is lost (the replacement resumes from the
//! group's commit), and the duplicates are counted.
//!
//! Needs etcd and the Kafka broker from `make testenv`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use squall_api::{PhysicalPlan, TopologySpec};
use squall_runtime::kafka::tools;
use squall_testenv::Kafka;

const RECORDS: usize = 20_000;

fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn committed_total(b: &str, group: &str, topic: &str) -> i64 {
    tools::committed_offsets(b, group, topic)
        .map(|c| c.values().map(|o| o.unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn caught_up(b: &str, group: &str, topic: &str) -> bool {
    let (Ok(ends), Ok(committed)) = (
        tools::end_offsets(b, topic),
        tools::committed_offsets(b, group, topic),
    ) else {
        return false;
    };
    ends.iter()
        .all(|(p, end)| committed.get(p).copied().flatten() == Some(*end))
}

#[test]
fn kill_9_of_a_kafka_spout_worker_loses_no_record() {
    let dir = Scratch::new("kafka-kill");
    let kafka = Kafka::start().unwrap();
    let b = kafka.bootstrap_servers().to_string();
    tools::create_topic(&b, "input", 4).unwrap();
    tools::create_topic(&b, "output", 4).unwrap();
    tools::produce(
        &b,
        "input",
        (0..RECORDS).map(|i| (None::<String>, format!("r{i}"))),
    )
    .unwrap();

    // Flaky sleeps 1 ms a tuple, so the run lasts seconds and the kill lands mid-run.
    let manifest = format!(
        "apiVersion: squall.dev/v1alpha1
kind: Topology
metadata:
  name: kafka-kill
spec:
  image: squall-examples:test
  workers: 2
  messageTimeoutSeconds: 5
  maxSpoutPending: 500
  spouts:
    - {{id: events, component: KafkaSpout, parallelism: 2, config: {{bootstrapServers: \"{b}\", topic: input, groupId: kill-group, firstOffset: EARLIEST, offsetCommitPeriodMs: 200}}}}
  bolts:
    - {{id: flaky, component: Flaky, parallelism: 2, config: {{fail_ratio: 0.02, drop_ratio: 0.005, sleep_ms: 1}}}}
    - {{id: sink, component: KafkaBolt, parallelism: 2, config: {{bootstrapServers: \"{b}\", topic: output, valueField: value}}}}
  streams:
    - {{from: events, to: flaky, grouping: {{type: SHUFFLE}}}}
    - {{from: flaky, to: sink, grouping: {{type: SHUFFLE}}}}
"
    );
    // The slot whose worker runs a KafkaSpout task, from the same plan the workers compute.
    let (_, spec) = TopologySpec::from_manifest(&manifest).unwrap();
    let plan = PhysicalPlan::compute(&spec);
    let spout_slot = plan
        .executors
        .iter()
        .find(|e| plan.components[e.component].id == "events")
        .map(|e| e.slot)
        .unwrap();

    let etcd = Etcd::start(&dir.0);
    let launch = Launch::start(&etcd.url, &manifest, &dir.0, &[]);
    // Mid-run: some offsets committed, most records still to come.
    eventually("the spouts' first commits", Duration::from_secs(90), || {
        committed_total(&b, "kill-group", "input") > 1000
    });
    let at_kill = committed_total(&b, "kill-group", "input");
    assert!(
        at_kill < RECORDS as i64,
        "the kill must land mid-run: {at_kill} of {RECORDS} already committed"
    );
    let victim = launch.worker_pid(spout_slot);
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill -9 the spout's worker");
    eventually(
        "the launcher to restart the killed worker",
        Duration::from_secs(30),
        || {
            launch
                .stderr()
                .contains(&format!("slot {spout_slot}: worker exited"))
        },
    );
    let waiting = Instant::now();
    let mut told = false;
    eventually(
        "the group's commits reach the input's end offsets",
        Duration::from_secs(240),
        || {
            let done = caught_up(&b, "kill-group", "input");
            if !done && !told && waiting.elapsed() > Duration::from_secs(235) {
                // Near the deadline: say where each partition stands.
                told = true;
                eprintln!(
                    "end offsets {:?}, committed {:?}",
                    tools::end_offsets(&b, "input"),
                    tools::committed_offsets(&b, "kill-group", "input")
                );
            }
            done
        },
    );
    // Stop the launcher as a user would (Ctrl-C); it prints its summary.
    kill(Pid::from_raw(launch.child.id() as i32), Signal::SIGTERM).unwrap();
    let summary = launch.wait(Duration::from_secs(60));

    let out = tools::read_all(&b, "output", Duration::from_secs(60)).unwrap();
    let seen: HashSet<&[u8]> = out.iter().filter_map(|r| r.value.as_deref()).collect();
    let missing: Vec<usize> = (0..RECORDS)
        .filter(|i| !seen.contains(format!("r{i}").as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let mut per_value: BTreeMap<&[u8], u32> = BTreeMap::new();
    for r in &out {
        if let Some(v) = r.value.as_deref() {
            *per_value.entry(v).or_default() += 1;
        }
    }
    let dups = out.len() - RECORDS;
    eprintln!(
        "kafka kill -9 of slot {spout_slot} at {at_kill} committed offsets: {RECORDS} records, \
         {} written, {dups} duplicates ({} records written more than once); summary: {summary}",
        out.len(),
        per_value.values().filter(|&&n| n > 1).count()
    );
    assert!(
        u(&summary, "failed") > 0,
        "Flaky's failures (and the kill's timeouts) reached the spouts: {summary}"
    );
}
