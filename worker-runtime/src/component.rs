//! The component API: spouts, bolts, their context, and the registry a topology
//! binary fills with its components.

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
    pub fn new(msg: impl Into<String>) -> Self {
        ComponentError(msg.into())
    }
}

/// What a task knows about where it runs. Handed to `open` / `prepare` and to factories.
#[derive(Debug, Clone)]
pub struct TopologyContext {
    pub topology: String,
    /// The id of this spout or bolt in the manifest.
    pub component_id: String,
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

/// A source of tuples (Storm's `ISpout`). One instance per task, driven by one thread.
pub trait Spout: Send {
    fn open(&mut self, _ctx: &TopologyContext) -> Result<(), ComponentError> {
        Ok(())
    }
    /// Emit zero or more tuples. Called in a loop while the topology is active and
    /// `maxSpoutPending` allows; must not block for long.
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>);
    /// The tuple tree rooted at `msg_id` completed.
    fn ack(&mut self, _msg_id: u64) {}
    /// The tuple tree rooted at `msg_id` failed or timed out; replay it if you want it delivered.
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
    fn activate(&mut self) {}
    fn deactivate(&mut self) {}
    fn close(&mut self) {}
    /// A finite spout returns `true` once it will emit nothing more (replays included);
    /// local mode ends by itself when every spout is done and no tree is open.
    fn is_done(&self) -> bool {
        false
    }
}

/// A tuple processor (Storm's `IRichBolt`). One instance per task.
pub trait Bolt: Send {
    fn prepare(&mut self, _ctx: &TopologyContext) -> Result<(), ComponentError> {
        Ok(())
    }
    /// Process one tuple. Every input must eventually be acked or failed through `out`.
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>);
    /// Called when the executor finds the bolt's input queue empty, before it waits
    /// for more. A bolt that holds input tuples until an asynchronous result comes
    /// (the built-in `KafkaBolt` waits for the broker's acknowledgement) acks or
    /// fails them here, so they need neither more input nor a tick to settle. It
    /// may block briefly (milliseconds): input waits meanwhile.
    fn idle(&mut self, _out: &mut BoltCollector<'_>) {}
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
