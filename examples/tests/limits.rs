//! Manifests over the plan limits are refused before any plan is built: the
//! command exits non-zero, names the field, and stays small. Its own test binary,
//! so that `getrusage(RUSAGE_CHILDREN)` sees only the children started here.

use std::process::Command;
use std::time::Instant;

use nix::sys::resource::{UsageWho, getrusage};

/// Peak resident memory a refused manifest may use (the bound).
const MAX_RSS_KIB: i64 = 200 * 1024;

#[test]
fn oversized_manifests_exit_nonzero_naming_the_field_in_little_memory() {
    let dir = squall_testenv::TempDir::new("squall-limits").unwrap();
    let cases = [
        (
            "workers: 100000\nspouts: [{id: s, component: RandomSentenceSpout}]\n",
            vec![],
            "spec.workers",
        ),
        (
            "spouts: [{id: s, component: RandomSentenceSpout, tasks: 1000000}]\n",
            vec![],
            "spec.spouts[0].tasks",
        ),
        (
            "spouts: [{id: s, component: RandomSentenceSpout, parallelism: 4000, tasks: 60000}, \
             {id: t, component: RandomSentenceSpout, tasks: 60000}]\n",
            vec![],
            "spec: 120001 tasks",
        ),
        (
            "spouts: [{id: s, component: RandomSentenceSpout, parallelism: 2000}]\n",
            vec![],
            "spec.workers: 2001 executors",
        ),
        // `--workers` is checked as well, before etcd is contacted.
        (
            "spouts: [{id: s, component: RandomSentenceSpout}]\n",
            vec![
                "--processes",
                "--workers",
                "100000",
                "--etcd",
                "http://127.0.0.1:9",
            ],
            "spec.workers: 100000 is more than 1024",
        ),
    ];
    for (i, (yaml, extra, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("big{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_squall-examples"))
            .arg("local")
            .arg(&path)
            .args(extra)
            .args(["--duration", "1s"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        println!(
            "case {i}: exit {:?} after {:?}: {}",
            out.status.code(),
            t0.elapsed(),
            err.trim()
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "case {i} must be refused: {err}"
        );
        assert!(
            err.contains(expect),
            "case {i}: stderr should say {expect:?}: {err}"
        );
    }
    // The largest of the children above, as the kernel accounted it.
    let peak_kib = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss();
    println!("peak RSS of a refused manifest: {peak_kib} KiB");
    assert!(peak_kib > 0, "no child was accounted");
    assert!(
        peak_kib < MAX_RSS_KIB,
        "a refused manifest peaked at {peak_kib} KiB"
    );
}
