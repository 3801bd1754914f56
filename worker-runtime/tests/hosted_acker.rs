//! A spout's executor hosts an acker executor of its worker
//! (`executor::acker`): no thread of its own, and trees still complete.
//! A file of its own, so that the threads this process runs are this test's.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use squall_api::{PhysicalPlan, TopologySpec};
use squall_runtime::layout::Layout;
use squall_runtime::metrics::MetricsHub;
use squall_runtime::transfer::TransferConfig;
use squall_runtime::worker::Worker;
use squall_runtime::{
    Bolt, BoltCollector, Outputs, Registry, Spout, SpoutCollector, Tuple, values,
};

/// Emits 0, 1, 2, … tracked, up to `limit`; counts acks.
struct Counter {
    next: u64,
    limit: u64,
    acked: Arc<AtomicU64>,
}

impl Spout for Counter {
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>) {
        if self.next < self.limit {
            out.emit(values![self.next], Some(self.next));
            self.next += 1;
        }
    }
    fn ack(&mut self, _: u64) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }
}

/// Emits each input twice, anchored, and acks it: trees of three tuples.
struct Doubler;

impl Bolt for Doubler {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        for _ in 0..2 {
            out.emit(&[&input], values![1]);
        }
        out.ack(&input);
    }
}

/// Acks what it gets.
struct Sink;

impl Bolt for Sink {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        out.ack(&input);
    }
}

/// Names of this process's threads.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn spout_executors_host_ackers_and_their_trees_complete() {
    const PER_TASK: u64 = 5_000;
    let acked = Arc::new(AtomicU64::new(0));
    let mut r = Registry::new();
    let a = acked.clone();
    r.spout("Counter", Outputs::fields(&["n"]), move |_| {
        Ok(Counter {
            next: 0,
            limit: PER_TASK,
            acked: a.clone(),
        })
    });
    r.bolt("Doubler", Outputs::fields(&["one"]), |_| Ok(Doubler));
    r.bolt("Sink", Outputs::fields(&[]), |_| Ok(Sink));
    // Two spout executors and three ackers in one worker: two ackers are
    // hosted, the third keeps a thread; trees span two hops, s -> d -> e.
    // (Not d -> d: bolts block on a full queue, so a cycle can deadlock
    // when the spouts fill the queues first, as this test once did in CI.)
    let spec = TopologySpec::from_manifest(
        "ackers: 3\n\
         spouts: [{id: s, component: Counter, parallelism: 2}]\n\
         bolts: [{id: d, component: Doubler, parallelism: 2}, {id: e, component: Sink, parallelism: 1}]\n\
         streams: [{from: s, to: d, grouping: {type: SHUFFLE}}, {from: d, to: e, grouping: {type: SHUFFLE}}]",
    )
    .unwrap()
    .1;
    let plan = PhysicalPlan::compute(&spec);
    let layout = Arc::new(Layout::new("t", spec, plan, &r.catalog()).unwrap());
    let w = Worker::start(
        layout,
        &r,
        &[0],
        None,
        TransferConfig::default(),
        MetricsHub::new(),
    )
    .unwrap();

    // A new thread names itself once it runs: wait for the bolts' two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads().iter().filter(|n| n.starts_with("d-")).count() < 2 {
        assert!(Instant::now() < deadline, "threads: {:?}", threads());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let names = threads();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("s-")).count(),
        2,
        "two spout executors: {names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.starts_with("__acker")).count(),
        1,
        "two of the three acker executors are hosted by the spouts: {names:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < 2 * PER_TASK {
        assert!(
            Instant::now() < deadline,
            "only {} of {} trees acked",
            acked.load(Ordering::Relaxed),
            2 * PER_TASK
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Published at least once a second.
    std::thread::sleep(Duration::from_millis(1_200));
    let m = w.metrics.collect();
    let ackers = &m["__acker"];
    assert_eq!(ackers.executors, 3);
    assert_eq!(
        ackers.metrics.acked,
        2 * PER_TASK,
        "the ackers completed every tree"
    );
    assert_eq!(ackers.metrics.failed, 0);
    // An init, and an ack from each of the tree's three tuples.
    assert_eq!(ackers.metrics.executed, 4 * 2 * PER_TASK);
    assert_eq!(m["s"].metrics.acked, 2 * PER_TASK);
    assert_eq!(m["d"].metrics.executed, 2 * PER_TASK);
    assert_eq!(m["e"].metrics.executed, 2 * 2 * PER_TASK);
    assert_eq!(w.shutdown(), 0, "no tree is left open");
}
