//! Engine behaviour with purpose-built components: ticks, activation, direct
//! emits, all/global groupings, component errors.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use squall_api::{PhysicalPlan, TopologySpec};
use squall_runtime::layout::Layout;
use squall_runtime::local::{self, LocalOptions};
use squall_runtime::metrics::MetricsHub;
use squall_runtime::net::codec::{self, Schema};
use squall_runtime::transfer::{AckerMsg, Dest, Envelope, Msg, SpoutMsg, TransferConfig};
use squall_runtime::worker::{StartError, Worker};
use squall_runtime::{
    Bolt, BoltCollector, ComponentError, Outputs, Registry, Spout, SpoutCollector, TopologyContext,
    Tuple, values,
};

/// Emits 0, 1, 2, … tracked, up to `limit`; records activation calls.
struct Counter {
    next: u64,
    limit: u64,
    log: Arc<Mutex<Vec<String>>>,
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
    fn activate(&mut self) {
        self.log.lock().unwrap().push("activate".into());
    }
    fn deactivate(&mut self) {
        self.log.lock().unwrap().push("deactivate".into());
    }
    fn is_done(&self) -> bool {
        self.next >= self.limit
    }
}

/// Records (task, value or "tick") of everything it executes, and acks.
struct Recorder {
    task: u32,
    seen: Arc<Mutex<Vec<(u32, String)>>>,
}

impl Bolt for Recorder {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        let v = if input.is_tick() {
            "tick".to_string()
        } else {
            input.get(0).map(|v| v.to_string()).unwrap_or_default()
        };
        self.seen.lock().unwrap().push((self.task, v));
        out.ack(&input);
    }
}

/// Sends every tuple directly to the task given by `value % 3` of the `direct` subscribers.
struct Director {
    targets: Vec<u32>,
}

impl Bolt for Director {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        let n = input.get(0).and_then(|v| v.as_i64()).unwrap_or(0) as usize;
        let task = self.targets[n % self.targets.len()];
        out.emit_direct(task, "direct", &[&input], values![n])
            .expect("declared direct stream");
        // An undeclared stream is an error value, not a panic.
        assert!(out.emit_stream("nope", &[&input], values![1]).is_err());
        out.ack(&input);
    }
}

/// A bolt whose `prepare` panics.
struct PanicsInPrepare;

impl Bolt for PanicsInPrepare {
    fn prepare(&mut self, _: &TopologyContext) -> Result<(), ComponentError> {
        panic!("prepare blew up")
    }

    fn execute(&mut self, _: Tuple, _: &mut BoltCollector<'_>) {}
}

struct Shared {
    log: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<(u32, String)>>>,
    acked: Arc<AtomicU64>,
}

fn registry(limit: u64) -> (Registry, Shared) {
    let shared = Shared {
        log: Arc::default(),
        seen: Arc::default(),
        acked: Arc::default(),
    };
    let mut r = Registry::new();
    let (log, acked) = (shared.log.clone(), shared.acked.clone());
    r.spout("Counter", Outputs::fields(&["n"]), move |_| {
        Ok(Counter {
            next: 0,
            limit,
            log: log.clone(),
            acked: acked.clone(),
        })
    });
    let seen = shared.seen.clone();
    r.bolt("Recorder", Outputs::none(), move |ctx: &TopologyContext| {
        Ok(Recorder {
            task: ctx.task_id,
            seen: seen.clone(),
        })
    });
    r.bolt(
        "Director",
        Outputs::fields(&["n"]).stream("direct", &["n"]),
        |_| Ok(Director { targets: vec![] }),
    );
    r.bolt("PanicsInPrepare", Outputs::none(), |_| Ok(PanicsInPrepare));
    r.spout(
        "PanicsInFactory",
        Outputs::fields(&["n"]),
        |_| -> Result<Counter, ComponentError> { panic!("factory blew up") },
    );
    r.bolt("NeedsConfig", Outputs::none(), |ctx: &TopologyContext| {
        ctx.config_u64("size", 1)?;
        Ok(Recorder {
            task: 0,
            seen: Arc::default(),
        })
    });
    (r, shared)
}

fn spec(yaml: &str) -> TopologySpec {
    TopologySpec::from_manifest(yaml)
        .expect("test manifest parses")
        .1
}

fn start(r: &Registry, spec: TopologySpec) -> Worker {
    let plan = PhysicalPlan::compute(&spec);
    let layout = Arc::new(Layout::new("t", spec, plan.clone(), &r.catalog()).expect("valid"));
    let slots: Vec<u32> = (0..plan.workers).collect();
    Worker::start(
        layout,
        r,
        &slots,
        None,
        TransferConfig::default(),
        MetricsHub::new(),
    )
    .expect("starts")
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ticks_reach_every_task_of_a_component() {
    let (r, shared) = registry(0);
    let w = start(
        &r,
        spec(
            "spouts: [{id: s, component: Counter}]\n\
             bolts: [{id: r, component: Recorder, parallelism: 1, tasks: 2, tickFrequencySeconds: 1}]\n\
             streams: [{from: s, to: r, grouping: {type: SHUFFLE}}]",
        ),
    );
    wait_for("two ticks per task", Duration::from_secs(10), || {
        let seen = shared.seen.lock().unwrap();
        [2, 3].iter().all(|t| {
            seen.iter()
                .filter(|(task, v)| task == t && v == "tick")
                .count()
                >= 2
        })
    });
    w.shutdown();
}

#[test]
fn deactivated_spouts_are_not_polled_until_activated() {
    let (r, shared) = registry(1_000_000);
    let w = start(
        &r,
        spec(
            "active: false\nspouts: [{id: s, component: Counter}]\n\
             bolts: [{id: r, component: Recorder}]\n\
             streams: [{from: s, to: r, grouping: {type: SHUFFLE}}]",
        ),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        shared.seen.lock().unwrap().is_empty(),
        "an inactive topology emits nothing"
    );
    w.set_active(true);
    wait_for("tuples after activation", Duration::from_secs(5), || {
        !shared.seen.lock().unwrap().is_empty()
    });
    w.set_active(false);
    wait_for("deactivate() call", Duration::from_secs(5), || {
        shared.log.lock().unwrap().len() >= 2
    });
    // Once deactivated and drained, the count stops moving.
    wait_for("drain", Duration::from_secs(5), || w.pending() == 0);
    let before = shared.seen.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        shared.seen.lock().unwrap().len(),
        before,
        "no tuples while deactivated"
    );
    assert_eq!(
        *shared.log.lock().unwrap(),
        vec!["activate".to_string(), "deactivate".to_string()]
    );
    w.shutdown();
}

#[test]
fn all_and_global_groupings_in_a_running_topology() {
    let (r, shared) = registry(50);
    let w = start(
        &r,
        spec(
            "spouts: [{id: s, component: Counter}]\n\
             bolts:\n\
               - {id: every, component: Recorder, parallelism: 3}\n\
               - {id: one, component: Recorder, parallelism: 3}\n\
             streams:\n\
               - {from: s, to: every, grouping: {type: ALL}}\n\
               - {from: s, to: one, grouping: {type: GLOBAL}}",
        ),
    );
    wait_for("all 50 trees acked", Duration::from_secs(10), || {
        shared.acked.load(Ordering::Relaxed) == 50
    });
    let seen = shared.seen.lock().unwrap().clone();
    // Tasks: s=1, every=2..4, one=5..7.
    for t in 2..=4 {
        assert_eq!(
            seen.iter().filter(|(task, _)| *task == t).count(),
            50,
            "ALL: task {t} sees every tuple"
        );
    }
    assert_eq!(
        seen.iter().filter(|(task, _)| *task == 5).count(),
        50,
        "GLOBAL: the lowest task gets everything"
    );
    assert!(seen.iter().all(|(task, _)| *task != 6 && *task != 7));
    w.shutdown();
}

#[test]
fn direct_emits_reach_the_chosen_task() {
    let (mut r, shared) = registry(30);
    r.bolt(
        "Director",
        Outputs::fields(&["n"]).stream("direct", &["n"]),
        |_| {
            Ok(Director {
                targets: vec![3, 4, 5],
            })
        },
    );
    let w = start(
        &r,
        spec(
            "spouts: [{id: s, component: Counter}]\n\
             bolts:\n\
               - {id: d, component: Director}\n\
               - {id: r, component: Recorder, parallelism: 3}\n\
             streams:\n\
               - {from: s, to: d, grouping: {type: SHUFFLE}}\n\
               - {from: d, to: r, stream: direct, grouping: {type: DIRECT}}",
        ),
    );
    wait_for("all 30 trees acked", Duration::from_secs(10), || {
        shared.acked.load(Ordering::Relaxed) == 30
    });
    let seen = shared.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 30);
    for (task, v) in seen {
        let n: u32 = v.parse().unwrap();
        assert_eq!(task, 3 + n % 3, "value {n} went to the task the bolt chose");
    }
    w.shutdown();
}

/// A message that reaches the wrong kind of executor (here decoded from a
/// peer's bytes and handed to the worker's queues, as the transport does) is
/// dropped, counted, and the first at each executor is reported as its
/// component's error: nothing drops them silently.
#[test]
fn messages_at_the_wrong_kind_of_executor_are_counted_and_reported() {
    let (r, shared) = registry(0);
    let w = start(
        &r,
        spec(
            "spouts: [{id: s, component: Counter}]\n\
             bolts: [{id: r, component: Recorder}]\n\
             streams: [{from: s, to: r, grouping: {type: SHUFFLE}}]",
        ),
    );
    let component = |id: &str| {
        let plan = &w.layout.plan;
        let i = plan.components.iter().position(|c| c.id == id).unwrap();
        (i, plan.components[i].tasks().next().unwrap())
    };
    let ((s, spout), (_, bolt)) = (component("s"), component("r"));
    let acker = w.layout.acker_tasks[0];
    let schema = Schema::new(&w.layout);
    let mut bytes = Vec::new();
    let control = [
        Envelope {
            task: spout,
            msg: Msg::Acker(AckerMsg::Ack { root: 1, val: 2 }),
        },
        Envelope {
            task: bolt,
            msg: Msg::Spout(SpoutMsg::Ack { root: 1 }),
        },
    ];
    assert_eq!(codec::encode(&schema, &control, &mut bytes), 0);
    // Two tuples of s's default stream for the acker (tag 0: component,
    // stream 0, source task, no anchors, one value: the int 7).
    for _ in 0..2 {
        bytes.extend([acker as u8, 0, s as u8, 0, spout as u8, 0, 1, 3, 14]);
    }
    let batch = codec::decode(&schema, &bytes).unwrap();
    assert_eq!(batch.len(), 4);
    let inbound = w.inbound();
    for env in batch {
        let Dest::Local(q) = inbound.dest[env.task as usize] else {
            panic!("task {} runs here", env.task)
        };
        inbound.queues[q].send(vec![env]).unwrap();
    }
    wait_for(
        "the misrouted messages counted",
        Duration::from_secs(5),
        || {
            let m = w.metrics.collect();
            [("s", 1), ("r", 1), ("__acker", 2)]
                .iter()
                .all(|&(c, n)| m[c].metrics.misrouted == n)
        },
    );
    let m = w.metrics.collect();
    for c in ["s", "r", "__acker"] {
        assert_eq!(m[c].metrics.errors, 1, "{c}: the first is reported, once");
        let error = m[c].metrics.last_error.as_ref().unwrap();
        assert!(error.message.contains("misrouted"), "{c}: {error:?}");
    }
    assert!(
        shared.seen.lock().unwrap().is_empty(),
        "the bolt executed nothing"
    );
    w.shutdown();
}

/// Start `s` as one worker, which must fail; its error.
fn start_error(r: &Registry, s: TopologySpec) -> StartError {
    let plan = PhysicalPlan::compute(&s);
    let layout = Arc::new(Layout::new("t", s, plan, &r.catalog()).unwrap());
    Worker::start(
        layout,
        r,
        &[0],
        None,
        TransferConfig::default(),
        MetricsHub::new(),
    )
    .err()
    .expect("the start must fail")
}

#[test]
fn a_component_that_rejects_its_config_fails_the_start_cleanly() {
    let (r, _) = registry(0);
    let s = spec(
        "spouts: [{id: s, component: Counter}]\n\
         bolts: [{id: b, component: NeedsConfig, config: {size: oops}}]\n\
         streams: [{from: s, to: b, grouping: {type: SHUFFLE}}]",
    );
    let err = start_error(&r, s);
    assert!(matches!(err, StartError::Component { .. }), "{err}");
    assert!(err.to_string().contains("size"), "{err}");
}

/// A panic in a factory or in `prepare` fails the start with the component
/// and task named, as a returned error, instead of unwinding the process.
#[test]
fn a_component_that_panics_while_starting_fails_the_start_naming_it() {
    let (r, _) = registry(0);
    for (yaml, component, message) in [
        (
            "spouts: [{id: s, component: Counter}]\n\
             bolts: [{id: b, component: PanicsInPrepare, parallelism: 2}]\n\
             streams: [{from: s, to: b, grouping: {type: SHUFFLE}}]",
            "b",
            "panicked: prepare blew up",
        ),
        (
            "spouts: [{id: p, component: PanicsInFactory}]\n\
             bolts: [{id: b, component: Recorder}]\n\
             streams: [{from: p, to: b, grouping: {type: SHUFFLE}}]",
            "p",
            "panicked: factory blew up",
        ),
    ] {
        let err = start_error(&r, spec(yaml));
        match &err {
            StartError::Component {
                component: c,
                error,
                ..
            } => {
                assert_eq!(c, component, "{err}");
                assert!(error.0.contains(message), "{err}");
            }
            other => panic!("expected a component error, got {other}"),
        }
    }
}

#[test]
fn local_run_ends_by_itself_when_finite_spouts_are_done() {
    let (r, shared) = registry(200);
    let interrupt = Arc::new(AtomicBool::new(false));
    let opts = LocalOptions {
        report_every: None,
        interrupt: Some(interrupt),
        ..Default::default()
    };
    let summary = local::run(
        &r,
        "t",
        spec(
            "spouts: [{id: s, component: Counter, parallelism: 2}]\n\
             bolts: [{id: r, component: Recorder, parallelism: 2}]\n\
             streams: [{from: s, to: r, grouping: {type: FIELDS, fields: [n]}}]",
        ),
        &opts,
    )
    .unwrap();
    assert_eq!(summary.stopped_by, "limit");
    assert_eq!(summary.acked, 400);
    assert_eq!(summary.emitted, 400);
    assert_eq!(summary.failed, 0);
    assert_eq!(shared.acked.load(Ordering::Relaxed), 400);
    let by_component: BTreeMap<_, _> = summary
        .components
        .iter()
        .map(|(k, v)| (k.clone(), v.executed))
        .collect();
    assert_eq!(by_component.get("r"), Some(&400));
    // Fields grouping: each value went to exactly one task, the same for both spout tasks' copies.
    let seen = shared.seen.lock().unwrap();
    let mut task_of: BTreeMap<String, u32> = BTreeMap::new();
    for (task, v) in seen.iter() {
        assert_eq!(
            *task_of.entry(v.clone()).or_insert(*task),
            *task,
            "value {v} split over tasks"
        );
    }
}

/// A spout task carried into the next plan version keeps its instance (and its
/// in-memory state) while its component and config stay the same; a changed
/// config reaches it: it is opened anew, with the new config.
#[test]
fn a_carried_spout_task_is_opened_anew_when_its_config_changes() {
    let (mut r, _shared) = registry(0);
    let made: Arc<Mutex<Vec<String>>> = Arc::default();
    let m = made.clone();
    r.spout(
        "Tagged",
        Outputs::fields(&["n"]),
        move |ctx: &TopologyContext| {
            let tag = ctx.config.get("tag").map(|v| v.to_string());
            m.lock().unwrap().push(tag.unwrap_or_default());
            Ok(Counter {
                next: 0,
                limit: 0,
                log: Arc::default(),
                acked: Arc::default(),
            })
        },
    );
    let manifest = |tag: &str| {
        spec(&format!(
            "spouts: [{{id: s, component: Tagged, config: {{tag: {tag}}}}}]\n\
             bolts: [{{id: r, component: Recorder}}]\n\
             streams: [{{from: s, to: r, grouping: {{type: SHUFFLE}}}}]"
        ))
    };
    let carry = |spec: TopologySpec, parked| {
        let plan = PhysicalPlan::compute(&spec);
        let layout = Arc::new(Layout::new("t", spec, plan.clone(), &r.catalog()).expect("valid"));
        let slots: Vec<u32> = (0..plan.workers).collect();
        Worker::start_carrying(
            layout,
            &r,
            &slots,
            None,
            TransferConfig::default(),
            MetricsHub::new(),
            parked,
        )
        .expect("starts")
    };
    let w = start(&r, manifest("a"));
    let parked = w.shutdown_keeping_spouts();
    assert_eq!(parked.len(), 1, "the spout task is parked");
    let w = carry(manifest("a"), parked);
    assert_eq!(*made.lock().unwrap(), ["\"a\""], "same config: carried");
    let parked = w.shutdown_keeping_spouts();
    assert_eq!(parked.len(), 1);
    let w = carry(manifest("b"), parked);
    assert_eq!(
        *made.lock().unwrap(),
        ["\"a\"", "\"b\""],
        "a new config: opened anew with it"
    );
    w.shutdown();
}
