//! `Bolt::idle`: a bolt that holds its input (as the KafkaBolt holds tuples
//! until the broker acknowledges them) settles it when its input runs dry,
//! with no tick and no further input.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use squall_api::TopologySpec;
use squall_runtime::local::{self, LocalOptions};
use squall_runtime::{
    Bolt, BoltCollector, Outputs, Registry, Spout, SpoutCollector, Tuple, values,
};

/// Emits 0..limit, tracked; never replays.
struct Numbers {
    next: u64,
    limit: u64,
    open: u64,
}

impl Spout for Numbers {
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>) {
        if self.next < self.limit {
            out.emit(values![self.next], Some(self.next));
            self.next += 1;
            self.open += 1;
        }
    }
    fn ack(&mut self, _: u64) {
        self.open -= 1;
    }
    fn fail(&mut self, _: u64) {
        self.open -= 1;
    }
    fn is_done(&self) -> bool {
        self.next >= self.limit && self.open == 0
    }
}

/// Acks nothing in `execute`; acks everything it holds in `idle`.
struct Holder {
    held: Vec<Tuple>,
    idle_acks: Arc<AtomicU64>,
}

impl Bolt for Holder {
    fn execute(&mut self, input: Tuple, _out: &mut BoltCollector<'_>) {
        self.held.push(input);
    }
    fn idle(&mut self, out: &mut BoltCollector<'_>) {
        for t in self.held.drain(..) {
            out.ack(&t);
            self.idle_acks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_bolt_that_holds_its_input_acks_it_when_idle() {
    let idle_acks = Arc::new(AtomicU64::new(0));
    let mut r = Registry::empty();
    r.spout("Numbers", Outputs::fields(&["n"]), |_| {
        Ok(Numbers {
            next: 0,
            limit: 3000,
            open: 0,
        })
    });
    let acks = idle_acks.clone();
    r.bolt("Holder", Outputs::none(), move |_| {
        Ok(Holder {
            held: Vec::new(),
            idle_acks: acks.clone(),
        })
    });
    // A long timeout and a pending bound below the total: the run finishes only
    // if held tuples are acked while no new input arrives.
    let (_, spec) = TopologySpec::from_manifest(
        "messageTimeoutSeconds: 120\nmaxSpoutPending: 100\n\
         spouts: [{id: s, component: Numbers, parallelism: 2}]\n\
         bolts: [{id: h, component: Holder, parallelism: 2}]\n\
         streams: [{from: s, to: h, grouping: {type: SHUFFLE}}]",
    )
    .unwrap();
    let opts = LocalOptions {
        report_every: None,
        interrupt: Some(Arc::new(AtomicBool::new(false))),
        ..Default::default()
    };
    let s = local::run(&r, "idle", spec, &opts).unwrap();
    assert_eq!(s.stopped_by, "limit", "{s:?}");
    assert_eq!(s.acked, 6000, "{s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(
        idle_acks.load(Ordering::Relaxed),
        6000,
        "every ack came from idle"
    );
}

/// The built-in Kafka components are in every registry that `Registry::new`
/// makes, and not in an empty one.
#[cfg(feature = "kafka")]
#[test]
fn registry_new_has_the_kafka_components() {
    let full = Registry::new().catalog();
    let spout = full.get("KafkaSpout").expect("KafkaSpout is built in");
    assert_eq!(
        spout.outputs["default"],
        ["topic", "partition", "offset", "key", "value"]
    );
    assert!(full.get("KafkaBolt").is_some());
    assert!(Registry::empty().catalog().get("KafkaSpout").is_none());
}
