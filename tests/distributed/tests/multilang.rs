//! Storm multilang components across worker processes, coordinated through a real
//! etcd: the storm.py spout, storm.js bolts and Squall's Flaky bolt in between, over
//! three worker processes. Every id the spout emitted is acked to it exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use squall_testenv::Rewrite;

const LIMIT: u32 = 1500;

#[test]
fn storm_py_and_storm_js_over_three_processes_ack_every_root_once() {
    let dir = Scratch::new("ml3");
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/multilang");
    for f in std::fs::read_dir(&examples).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.0.join(f.file_name().unwrap())).unwrap();
    }
    // The example manifest, over three workers, with a ledger for the spout.
    let manifest = std::fs::read_to_string(examples.join("topology.yaml"))
        .unwrap()
        .rewrite("workers: 1", "workers: 3")
        .rewrite(
            "config: {limit: 2000}",
            &format!("config: {{limit: {LIMIT}, ledger: ledger}}"),
        );
    assert!(
        manifest.contains("workers: 3") && manifest.contains("ledger: ledger"),
        "the example manifest changed shape"
    );
    let ml = squall_testenv::multilang_dir().expect("multilang libraries (make testenv)");
    let etcd = Etcd::start(&dir.0);
    let launch = Launch::start_with_env(
        &etcd.url,
        &manifest,
        &dir.0,
        &["--duration", "30s"],
        &[
            ("PYTHONPATH", ml.display().to_string()),
            ("NODE_PATH", ml.display().to_string()),
            ("NO_COLOR", "1".to_string()),
        ],
    );
    let s = launch.wait(Duration::from_secs(120));
    let acks = squall_testenv::spout_ledger(&dir.0).unwrap();
    let twice: Vec<_> = acks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "acked more than once: {twice:?}\n{s}");
    let missing = (0..LIMIT)
        .filter(|n| !acks.contains_key(&format!("s-{n}")))
        .count();
    assert_eq!(missing, 0, "ids never acked to the spout: {s}");
    assert_eq!(
        s["components"]["sentences"]["acked"].as_u64(),
        Some(u64::from(LIMIT)),
        "{s}"
    );
    assert!(
        s["failed"].as_u64().unwrap_or(0) > 0,
        "Flaky failed nothing: {s}"
    );
    // The words crossed processes: every bolt ran.
    for c in ["split", "flaky", "count"] {
        assert!(
            s["components"][c]["executed"].as_u64().unwrap_or(0) > u64::from(LIMIT),
            "{c}: {s}"
        );
    }
}
