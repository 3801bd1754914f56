//! Shell components in local mode, with Storm's own multilang libraries: `storm.py`,
//! `storm.js` and `storm.rb` unpacked unmodified from Storm's jars on Maven Central,
//! and pystorm and streamparse from PyPI (all fetched by `make testenv` into its
//! cache; Ruby is a Debian package it installs).
//!
//! Every run checks delivery end to end from the spout's side: the storm.py spout
//! writes each id it is told was acked to a ledger file, and every id must be there
//! exactly once.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use squall_runtime::local::Summary;
use squall_testenv::{Rewrite, TempDir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scratch folder with the example scripts and a manifest written into it.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new(label: &str, manifest: &str) -> Scratch {
        let dir = TempDir::new(label).unwrap();
        for f in std::fs::read_dir(repo().join("examples/multilang")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join("topology.yaml"), manifest).unwrap();
        Scratch { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `squall-examples` in the scratch folder, with Storm's libraries on the
    /// interpreters' paths (as the squall image sets them).
    fn command(&self) -> Command {
        let ml = squall_testenv::multilang_dir().expect("multilang libraries (make testenv)");
        let mut c = Command::new(env!("CARGO_BIN_EXE_squall-examples"));
        c.current_dir(self.path())
            .env(
                "PYTHONPATH",
                format!(
                    "{}:{}:{}",
                    ml.display(),
                    ml.join("python").display(),
                    ml.join("streamparse").display()
                ),
            )
            .env("NODE_PATH", &ml)
            .env("RUBYLIB", &ml)
            .env("NO_COLOR", "1");
        c
    }

    /// Run the manifest in local mode; the summary and the worker's log.
    fn run(&self, duration: &str, extra: &[&str]) -> (Summary, String) {
        let out = self
            .command()
            .args(["local", "topology.yaml", "--duration", duration, "--json"])
            .args(["--report-interval", "0s"])
            .args(extra)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "local mode failed: {log}");
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        let summary: Summary = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("no JSON summary ({e}): {text}\n{log}"));
        summary.check_totals().unwrap();
        (summary, log)
    }

    /// Every id 0..limit acked exactly once, per spout task (ids are per task).
    fn assert_exactly_once(&self, limit: u32, tasks: u32) {
        let acks = squall_testenv::spout_ledger(self.path()).unwrap();
        let twice: Vec<_> = acks.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "ids acked more than once: {twice:?}");
        let missing: Vec<_> = (0..limit)
            .map(|n| format!("s-{n}"))
            .filter(|id| !acks.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "ids never acked: {} of them, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let total: u32 = acks.values().sum();
        assert_eq!(total, limit * tasks, "{acks:?}");
    }
}

const LIMIT: u32 = 1500;

fn word_count(spout_cfg: &str, split: &str, extra_bolt: &str) -> String {
    format!(
        "apiVersion: squall.dev/v1alpha1
kind: Topology
metadata: {{name: ml}}
spec:
  messageTimeoutSeconds: 3
  maxSpoutPending: 200
  spouts:
    - id: sentences
      shell: {{command: [python3, sentence_spout.py]}}
      outputs: {{default: [sentence]}}
      config: {{limit: {LIMIT}, ledger: ledger{spout_cfg}}}
  bolts:
    - id: split
      shell: {{command: {split}, timeoutSeconds: 3}}
      outputs: {{default: [word]}}
      parallelism: 2
    - {{id: flaky, component: Flaky, parallelism: 2, config: {{fail_ratio: 0.05, drop_ratio: 0.01}}}}
    - id: count
      shell: {{command: [node, wordcount.js]}}
      outputs: {{default: [word, count]}}
      parallelism: 2
{extra_bolt}
  streams:
    - {{from: sentences, to: split, grouping: {{type: SHUFFLE}}}}
    - {{from: split, to: flaky, grouping: {{type: SHUFFLE}}}}
    - {{from: flaky, to: count, grouping: {{type: FIELDS, fields: [value]}}}}
"
    )
}

#[test]
fn storm_py_and_storm_js_word_count_with_flaky_acks_every_root_once() {
    let s = Scratch::new("ml-wc", &word_count("", "[node, splitsentence.js]", ""));
    let (sum, log) = s.run("25s", &[]);
    // The ledger is the spout's own view; the summary is Squall's.
    s.assert_exactly_once(LIMIT, 1);
    assert_eq!(sum.components["sentences"].acked, u64::from(LIMIT), "{log}");
    assert_eq!(sum.open_at_end, 0);
    // Flaky really failed trees, and the storm.py spout replayed them from its fail handler.
    assert!(sum.failed > 0, "Flaky failed nothing: {sum:?}");
    assert!(sum.replayed > 0, "no replays counted: {sum:?}");
    // The spout's own counters (storm.rpcMetrics) agree with Squall's.
    let own = &sum.components["sentences"].metrics;
    assert_eq!(own.get("acked"), Some(&u64::from(LIMIT)), "{own:?}");
    assert_eq!(own.get("replayed"), Some(&sum.replayed), "{own:?}");
    // A multilang spout's executor hosts no acker (its `next_tuple` waits on
    // the subprocess): the acker ran on a thread of its own, which is timed
    // (a hosted acker reports no busy time).
    let acker = &sum.components["__acker"];
    assert!(acker.acked > 0 && acker.capacity > 0.0, "{acker:?}");
    // Every component ran, so the words went through storm.js twice.
    for c in ["split", "flaky", "count"] {
        assert!(
            sum.components[c].executed > u64::from(LIMIT),
            "{c}: {:?}",
            sum.components[c]
        );
    }
}

#[test]
fn storm_py_storm_rb_pystorm_and_streamparse_bolts_run_unchanged() {
    for (label, split) in [
        ("ml-py", "[python3, splitsentence.py]"),
        ("ml-rb", "[ruby, splitsentence.rb]"),
        ("ml-pystorm", "[python3, split_pystorm.py]"),
        ("ml-streamparse", "[python3, split_streamparse.py]"),
    ] {
        let s = Scratch::new(label, &word_count("", split, ""));
        let (sum, log) = s.run("25s", &[]);
        s.assert_exactly_once(LIMIT, 1);
        // Each split task saw thousands of emits: windows enough for a verdict.
        assert!(
            sum.components["split"].emitted > u64::from(LIMIT) * 5,
            "{label}: {sum:?}\n{log}"
        );
        // storm.py and storm.rb wait for task ids after every emit, so the reader
        // pins itself and the subprocess to one CPU; pystorm (and streamparse,
        // built on it) do not wait, and both run free. (The
        // storm.js count bolt waits too, and is pinned in both runs.)
        let pinned = log.lines().any(|l| {
            l.contains("CPU affinity changed")
                && l.contains("component=split")
                && l.contains("colocate=true")
        });
        if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
            let waits = !matches!(label, "ml-pystorm" | "ml-streamparse");
            assert_eq!(pinned, waits, "{label}: {log}");
        }
    }
}

/// A bolt subprocess that breaks once (dies, hangs, or writes garbage) is killed and
/// restarted in place; the tuples it held fail back to the spout and are replayed.
#[test]
fn a_dead_a_hung_and_a_garbage_writing_subprocess_each_lose_nothing() {
    for mode in ["exit", "hang", "garbage"] {
        let sabotage = format!(
            "    - id: saboteur
      shell: {{command: [python3, sabotage.py], timeoutSeconds: 2}}
      outputs: {{default: [sentence]}}
      config: {{sabotage: {mode}, after: 200}}"
        );
        let manifest = word_count("", "[python3, splitsentence.py]", &sabotage)
            .rewrite(
                "{from: sentences, to: split,",
                "{from: sentences, to: saboteur, grouping: {type: SHUFFLE}}\n    - {from: saboteur, to: split,",
            );
        assert!(
            manifest.contains("to: saboteur"),
            "the manifest was not rewired"
        );
        let s = Scratch::new(&format!("ml-{mode}"), &manifest);
        let (sum, log) = s.run("30s", &[]);
        // It really broke, and was restarted.
        assert!(
            s.path().join(format!("sabotaged-{mode}-2")).exists()
                || std::fs::read_dir(s.path()).unwrap().any(|f| f
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("sabotaged-{mode}"))),
            "{mode}: the saboteur never struck"
        );
        assert!(
            log.contains("multilang bolt subprocess killed; restarting it"),
            "{mode}: no restart in the log:\n{log}"
        );
        s.assert_exactly_once(LIMIT, 1);
        assert_eq!(sum.open_at_end, 0, "{mode}");
        // The restart is a component error in the figures that feed status.
        let sab = &sum.components["saboteur"];
        assert!(sab.errors >= 1, "{mode}: no error counted: {sab:?}");
        let last = sab.last_error.as_ref().expect("a last error");
        assert!(
            last.message.contains("subprocess restarted") && last.time_ms > 0,
            "{mode}: {last:?}"
        );
    }
}

#[test]
fn a_shell_command_that_cannot_start_is_a_clear_error() {
    let s = Scratch::new("ml-bad", &word_count("", "[./no-such-script.py]", ""));
    let out = s
        .command()
        .args(["local", "topology.yaml", "--duration", "5s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("component 'split'")
            && err.contains("cannot start")
            && err.contains("no-such-script.py"),
        "the error names neither the component nor the command: {err}"
    );
    assert_eq!(err.matches("cannot start").count(), 1, "said twice: {err}");
}
