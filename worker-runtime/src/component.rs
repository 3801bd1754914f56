//! The component API: spouts, bolts, their context, and the registry a topology
//! binary fills with its components.
//!
//! The crate documentation has a whole topology as an example.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use squall_api::{ComponentCatalog, ComponentDecl, ComponentKind, Config, TaskId};

use crate::collector::{BoltCollector, SpoutCollector};
use crate::tuple::Tuple;

/// A component could not start (usually bad configuration).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ComponentError(pub String);

impl ComponentError {
    /// An error with this message; the worker adds the component and task.
    pub fn new(msg: impl Into<String>) -> Self {
        ComponentError(msg.into())
    }
}

/// What a task knows about where it runs. Handed to `open` / `prepare` and to factories.
#[derive(Debug, Clone)]
pub struct TopologyContext {
    /// The topology's name (the manifest's `metadata.name`).
    pub topology: String,
    /// The id of this spout or bolt in the manifest.
    pub component_id: String,
    /// This task's id, unique in the topology (Storm's task id).
    pub task_id: TaskId,
    /// 0-based index of this task among its component's tasks.
    pub task_index: u32,
    /// Number of tasks of this component.
    pub component_tasks: u32,
    /// The worker slot that runs this task.
    pub slot: u32,
    /// The topology's `config` with the component's `config` laid over it.
    pub config: Arc<Config>,
}

impl TopologyContext {
    /// A config value as an unsigned integer; `default` when absent, an error when malformed.
    pub fn config_u64(&self, key: &str, default: u64) -> Result<u64, ComponentError> {
        match self.config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                ComponentError(format!(
                    "{}: config '{key}' must be a non-negative integer, got {v}",
                    self.component_id
                ))
            }),
        }
    }

    /// A config value as a float; `default` when absent, an error when malformed.
    pub fn config_f64(&self, key: &str, default: f64) -> Result<f64, ComponentError> {
        match self.config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                ComponentError(format!(
                    "{}: config '{key}' must be a number, got {v}",
                    self.component_id
                ))
            }),
        }
    }

    /// A config value as a string; `default` when absent, an error when malformed.
    pub fn config_str(&self, key: &str, default: &str) -> Result<String, ComponentError> {
        match self.config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default.to_string()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(ComponentError(format!(
                "{}: config '{key}' must be a string, got {v}",
                self.component_id
            ))),
        }
    }
}

/// A source of tuples (Storm's `ISpout`). One instance per task.
///
/// # Threads
///
/// The registry's factory builds one instance per task, and [`Spout::open`]
/// prepares it, on the thread that starts the worker: the thread that called
/// [`local::run`](crate::local::run) (in `my-topology local`, the main
/// thread), or a worker process's main thread when its assignment arrives.
/// Tasks start one after another, before any executor thread runs. Every other
/// method is called on the task's executor thread, the only thread that
/// touches the instance from then on (hence `Send`, not `Sync`). An executor
/// may run several tasks of one component; it calls them in turn, so a call
/// that blocks holds up the executor's other tasks too.
///
/// # Panics
///
/// A panic on the executor thread is caught there and ends the worker, loudly:
/// the worker records the component, its tasks and the panic message, and
/// stops every executor. Local mode then returns
/// [`LocalError::Crashed`](crate::local::LocalError::Crashed) (the CLI exits
/// non-zero); a worker process reports the state `crashed` with that message
/// and exits non-zero, so its pod restarts it; the tuple trees it held fail
/// at their spouts, which may replay them. The panicking executor's
/// components get no [`Spout::close`]; the other executors close theirs as
/// they stop.
///
/// A panic in the factory or in [`Spout::open`] is caught on the thread that
/// starts the worker and treated as a returned [`ComponentError`] (message
/// `panicked: …`): the worker does not start, with an error that names the
/// component and task. Returning the error says more than a panic does.
pub trait Spout: Send {
    /// Prepare this task (connect, read its config) before it emits.
    ///
    /// Called once per task on the thread that starts the worker, before the
    /// executor threads start (see [Threads](Spout#threads)). It may block,
    /// but the whole worker waits for it. An error stops the worker from
    /// starting and names the component and task; so does a panic (see
    /// [Panics](Spout#panics)).
    fn open(&mut self, _ctx: &TopologyContext) -> Result<(), ComponentError> {
        Ok(())
    }
    /// Emit zero or more tuples.
    ///
    /// Called on the executor thread in a loop while the topology is active,
    /// the worker's outbound queues are not congested, and the task has fewer
    /// than `maxSpoutPending` open trees. It must not block for long: acks,
    /// fails, timeouts and the executor's other tasks wait meanwhile. With
    /// nothing to emit, return at once: when none of its tasks emitted, the
    /// executor waits up to a millisecond (less when an ack arrives) before it
    /// asks again.
    /// A panic ends the worker (see [Panics](Spout#panics)).
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>);
    /// The tuple tree rooted at `msg_id` completed.
    ///
    /// Called on the executor thread, through [`Spout::ack_emitting`]. It may
    /// block briefly; the executor emits and handles nothing else meanwhile.
    /// A panic ends the worker (see [Panics](Spout#panics)).
    fn ack(&mut self, _msg_id: u64) {}
    /// The tuple tree rooted at `msg_id` failed or timed out; replay it if you
    /// want it delivered.
    ///
    /// Called on the executor thread, through [`Spout::fail_emitting`], and
    /// directly for each open tree when a rebalance parks the spout to carry it
    /// into the next plan. It may block briefly, as [`Spout::ack`]. A panic
    /// ends the worker (see [Panics](Spout#panics)).
    fn fail(&mut self, _msg_id: u64) {}
    /// [`Spout::ack`] with the collector, for a spout that emits from its ack handler
    /// (as Storm spouts may). The executor thread calls this one; the default calls `ack`.
    fn ack_emitting(&mut self, msg_id: u64, _out: &mut SpoutCollector<'_>) {
        self.ack(msg_id)
    }
    /// [`Spout::fail`] with the collector, for a spout that replays from its fail
    /// handler. The executor thread calls this one; the default calls `fail`.
    fn fail_emitting(&mut self, msg_id: u64, _out: &mut SpoutCollector<'_>) {
        self.fail(msg_id)
    }
    /// The topology was activated (Storm's `activate`): `next_tuple` calls
    /// follow.
    ///
    /// Called on the executor thread when it sees the worker's active flag
    /// turn on: when the topology starts active (in a cluster, once the
    /// worker's links to its peers are up) and whenever it is activated again.
    /// It may block briefly. A panic ends the worker (see
    /// [Panics](Spout#panics)).
    fn activate(&mut self) {}
    /// The topology was deactivated (`spec.active: false`): no `next_tuple`
    /// calls follow until [`Spout::activate`], but acks and fails of open trees
    /// still arrive.
    ///
    /// Called on the executor thread when it sees the active flag turn off. A
    /// worker that stops (a kill, a rebalance, the end of a local run) turns
    /// the flag off first, but it may stop before the executor sees it, so do
    /// not rely on this call before [`Spout::close`]. It may block briefly. A
    /// panic ends the worker (see [Panics](Spout#panics)).
    fn deactivate(&mut self) {}
    /// The task is being torn down: release what [`Spout::open`] acquired.
    ///
    /// Called once on the executor thread when the worker stops, or, for a
    /// spout parked by a rebalance whose task left this worker, on the thread
    /// that applies the next plan. It is not called after a panic in
    /// this executor, nor when the process is killed, so do not rely on it for
    /// durability. It may block, but the worker's shutdown waits for it.
    fn close(&mut self) {}
    /// A finite spout returns `true` once it will emit nothing more (replays included);
    /// local mode ends by itself when every spout is done and no tree is open.
    ///
    /// Called on the executor thread after every turn of its loop, so it must
    /// be cheap and must not block.
    fn is_done(&self) -> bool {
        false
    }
}

/// A tuple processor (Storm's `IRichBolt`). One instance per task.
///
/// # Threads
///
/// As for a [`Spout`]: the factory and [`Bolt::prepare`] run on the thread
/// that starts the worker, one task after another; [`Bolt::execute`],
/// [`Bolt::idle`] and [`Bolt::cleanup`] run on the task's executor thread,
/// which may run several tasks of the component in turn. Tick tuples
/// (`tickFrequencySeconds`) arrive through `execute` on the same thread.
///
/// # Blocking
///
/// While `execute` blocks, the executor reads no input. Its bounded input
/// queue fills, which slows the upstream components and, in the end, the
/// spouts (backpressure). Tuples that wait past `messageTimeoutSeconds` fail at
/// their spouts and replay.
///
/// # Panics
///
/// A panic in `execute`, `idle` or `cleanup` is caught on the executor thread
/// and ends the worker, naming the component, its tasks and the message; see
/// [Spout's Panics](Spout#panics), which applies here word for word (the
/// panicking executor's bolts get no `cleanup`). A panic in the factory or in
/// `prepare` fails the start as a returned [`ComponentError`] would.
pub trait Bolt: Send {
    /// Prepare this task before it executes tuples.
    ///
    /// Called once per task on the thread that starts the worker, before the
    /// executor threads start. It may block, but the whole worker waits for it.
    /// An error stops the worker from starting and names the component and
    /// task; so does a panic (see [Panics](Bolt#panics)).
    fn prepare(&mut self, _ctx: &TopologyContext) -> Result<(), ComponentError> {
        Ok(())
    }
    /// Process one tuple. Every input must eventually be acked or failed through `out`.
    ///
    /// Called on the executor thread for each input tuple and each tick tuple
    /// ([`Tuple::is_tick`]). It may block, at the price described in
    /// [Blocking](Bolt#blocking). A panic ends the worker (see
    /// [Panics](Bolt#panics)).
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>);
    /// Called when the executor finds the bolt's input queue empty, before it waits
    /// for more. A bolt that holds input tuples until an asynchronous result comes
    /// (the built-in `KafkaBolt` waits for the broker's acknowledgement) acks or
    /// fails them here, so they need neither more input nor a tick to settle. It
    /// may block briefly (milliseconds): input waits meanwhile.
    ///
    /// Called on the executor thread, also when no input comes at all (at
    /// least every 20 ms). A panic ends the worker (see [Panics](Bolt#panics)).
    fn idle(&mut self, _out: &mut BoltCollector<'_>) {}
    /// The task is being torn down: release what [`Bolt::prepare`] acquired.
    ///
    /// Called once on the executor thread when the worker stops. Input still
    /// queued is not executed first; its trees fail at their spouts and replay.
    /// It is not called after a panic in this executor, nor when the process
    /// is killed. It may block, but the worker's shutdown waits for it.
    fn cleanup(&mut self) {}
}

/// Declared output streams of a component: stream → field names (Storm's `declareOutputFields`).
#[derive(Debug, Clone, Default)]
pub struct Outputs(pub(crate) BTreeMap<String, Vec<String>>);

impl Outputs {
    /// No outputs (a sink).
    pub fn none() -> Self {
        Outputs::default()
    }
    /// The `default` stream with these fields.
    pub fn fields(names: &[&str]) -> Self {
        Outputs::default().stream(squall_api::DEFAULT_STREAM, names)
    }
    /// Add a named stream.
    pub fn stream(mut self, stream: &str, names: &[&str]) -> Self {
        self.0.insert(
            stream.to_string(),
            names.iter().map(|s| s.to_string()).collect(),
        );
        self
    }
}

type SpoutFactory =
    dyn Fn(&TopologyContext) -> Result<Box<dyn Spout>, ComponentError> + Send + Sync;
type BoltFactory = dyn Fn(&TopologyContext) -> Result<Box<dyn Bolt>, ComponentError> + Send + Sync;

pub(crate) enum Factory {
    Spout(Box<SpoutFactory>),
    Bolt(Box<BoltFactory>),
}

pub(crate) struct Registered {
    pub(crate) outputs: Outputs,
    pub(crate) factory: Factory,
}

/// Every component a topology binary can run, by name.
pub struct Registry {
    pub(crate) components: BTreeMap<String, Registered>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry that holds the built-in components (`KafkaSpout` and
    /// `KafkaBolt` with the `kafka` feature), so that no topology binary can
    /// forget them. A component registered later under the same name replaces
    /// the built-in one.
    pub fn new() -> Self {
        #[allow(unused_mut)] // without the kafka feature there is nothing built in
        let mut r = Registry::empty();
        #[cfg(feature = "kafka")]
        crate::kafka::register(&mut r);
        r
    }

    /// A registry without the built-in components.
    pub fn empty() -> Self {
        Registry {
            components: BTreeMap::new(),
        }
    }

    /// Register a spout under `name`; `make` builds one instance per task.
    pub fn spout<S, F>(&mut self, name: &str, outputs: Outputs, make: F) -> &mut Self
    where
        S: Spout + 'static,
        F: Fn(&TopologyContext) -> Result<S, ComponentError> + Send + Sync + 'static,
    {
        let factory = Factory::Spout(Box::new(move |ctx| {
            Ok(Box::new(make(ctx)?) as Box<dyn Spout>)
        }));
        self.components
            .insert(name.to_string(), Registered { outputs, factory });
        self
    }

    /// Register a bolt under `name`; `make` builds one instance per task.
    pub fn bolt<B, F>(&mut self, name: &str, outputs: Outputs, make: F) -> &mut Self
    where
        B: Bolt + 'static,
        F: Fn(&TopologyContext) -> Result<B, ComponentError> + Send + Sync + 'static,
    {
        let factory = Factory::Bolt(Box::new(move |ctx| {
            Ok(Box::new(make(ctx)?) as Box<dyn Bolt>)
        }));
        self.components
            .insert(name.to_string(), Registered { outputs, factory });
        self
    }

    /// The declarations, for validating manifests.
    pub fn catalog(&self) -> ComponentCatalog {
        let components = self
            .components
            .iter()
            .map(|(name, r)| {
                let kind = match r.factory {
                    Factory::Spout(_) => ComponentKind::Spout,
                    Factory::Bolt(_) => ComponentKind::Bolt,
                };
                (
                    name.clone(),
                    ComponentDecl {
                        kind,
                        outputs: r.outputs.0.clone(),
                    },
                )
            })
            .collect();
        ComponentCatalog { components }
    }
}
