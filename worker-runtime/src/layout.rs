//! The resolved topology: the plan joined with the binary's declarations.
//!
//! Built once per plan version and shared read-only by every executor. What it
//! knows of the binary's components is their [`ComponentCatalog`] (kinds and
//! declared output fields), not the registry, so this module depends on
//! neither the component API nor the collectors that use it.

use std::sync::Arc;

use squall_api::{
    ComponentCatalog, Config, GroupingType, PhysicalPlan, PlannedKind, TaskId, TopologySpec,
    ValidationErrors, validate,
};

use crate::grouping::Grouper;
use crate::tuple::Fields;

/// A subscription to one output stream.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Index of the subscribing component in the plan.
    pub component: usize,
    pub kind: GroupingType,
    /// Indexes of the grouping fields in the stream's fields.
    pub key: Vec<usize>,
}

/// One declared output stream of a component and who consumes it.
#[derive(Debug)]
pub struct StreamRoute {
    pub fields: &'static Fields,
    pub subscriptions: Vec<Subscription>,
}

/// Everything an executor needs to know about the topology.
pub struct Layout {
    pub topology: String,
    pub spec: TopologySpec,
    pub plan: PhysicalPlan,
    pub acking: bool,
    pub acker_tasks: Vec<TaskId>,
    pub timeout_ns: u64,
    pub max_pending: usize,
    /// By component index: declared output streams.
    pub streams: Vec<Vec<StreamRoute>>,
    /// By component index: the registered component name (empty for the acker and
    /// for shell components).
    pub implementations: Vec<String>,
    /// By component index: the multilang subprocess of a shell component.
    pub shells: Vec<Option<squall_api::ShellSpec>>,
    /// By component index: the merged configuration.
    pub configs: Vec<Arc<Config>>,
    /// By component index: tick interval.
    pub tick_ns: Vec<Option<u64>>,
    /// By task id: its slot (`u32::MAX` for id 0, which no task has).
    pub task_slot: Vec<u32>,
    /// By task id: its component's index (`u32::MAX` for id 0).
    pub task_component: Vec<u32>,
    /// By component index: the component's id, shared with every executor's
    /// metrics (they count executed tuples by source component).
    pub component_ids: Arc<[String]>,
}

/// Why a topology cannot be laid out.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl Layout {
    /// Validate `spec` against the components the binary declares
    /// ([`Registry::catalog`](crate::component::Registry::catalog)) and
    /// resolve `plan`.
    pub fn new(
        topology: &str,
        spec: TopologySpec,
        plan: PhysicalPlan,
        catalog: &ComponentCatalog,
    ) -> Result<Layout, LayoutError> {
        validate(&spec, Some(catalog))?;

        let n = plan.components.len();
        let mut implementations = vec![String::new(); n];
        let mut shells = vec![None; n];
        let mut configs: Vec<Arc<Config>> = (0..n).map(|_| Arc::default()).collect();
        let mut tick_ns = vec![None; n];
        let mut streams: Vec<Vec<StreamRoute>> = (0..n).map(|_| Vec::new()).collect();
        for (ci, pc) in plan.components.iter().enumerate() {
            let Some((_, cs)) = spec.component(&pc.id) else {
                continue;
            };
            implementations[ci] = cs.component.clone().unwrap_or_default();
            shells[ci] = cs.shell.clone();
            let mut cfg = spec.config.clone();
            cfg.extend(cs.config.iter().map(|(k, v)| (k.clone(), v.clone())));
            configs[ci] = Arc::new(cfg);
            tick_ns[ci] = cs
                .tick_frequency_seconds
                .map(|s| u64::from(s) * 1_000_000_000);
            let Some(outputs) = squall_api::validate::declared_outputs(cs, Some(catalog)) else {
                continue;
            };
            for (stream, names) in outputs {
                let fields = Fields::intern(&pc.id, stream, names);
                let subscriptions = spec
                    .streams
                    .iter()
                    .filter(|s| s.from == pc.id && &s.stream == stream)
                    .filter_map(|s| {
                        let component = plan.components.iter().position(|c| c.id == s.to)?;
                        let key = s
                            .grouping
                            .fields
                            .iter()
                            .filter_map(|f| fields.index_of(f))
                            .collect();
                        Some(Subscription {
                            component,
                            kind: s.grouping.kind,
                            key,
                        })
                    })
                    .collect();
                streams[ci].push(StreamRoute {
                    fields,
                    subscriptions,
                });
            }
        }

        let mut task_slot = vec![u32::MAX; plan.task_count() as usize + 1];
        let mut task_component = vec![u32::MAX; plan.task_count() as usize + 1];
        for e in &plan.executors {
            for t in e.tasks() {
                task_slot[t as usize] = e.slot;
                task_component[t as usize] = e.component as u32;
            }
        }
        let component_ids: Arc<[String]> = plan.components.iter().map(|c| c.id.clone()).collect();
        let acker_tasks: Vec<TaskId> = plan.acker_tasks().collect();
        Ok(Layout {
            topology: topology.to_string(),
            acking: !acker_tasks.is_empty(),
            acker_tasks,
            timeout_ns: u64::from(spec.message_timeout_seconds) * 1_000_000_000,
            max_pending: spec.max_spout_pending as usize,
            streams,
            implementations,
            shells,
            configs,
            tick_ns,
            task_slot,
            task_component,
            component_ids,
            spec,
            plan,
        })
    }

    pub fn kind(&self, component: usize) -> PlannedKind {
        self.plan.components[component].kind
    }

    pub fn component_id(&self, component: usize) -> &str {
        &self.plan.components[component].id
    }

    /// Groupers for an executor of `component` in `slot`: by stream, by subscription.
    pub fn groupers(&self, component: usize, slot: u32, seed: u64) -> Vec<Vec<Grouper>> {
        self.streams[component]
            .iter()
            .map(|route| {
                route
                    .subscriptions
                    .iter()
                    .enumerate()
                    .map(|(i, sub)| {
                        let tasks: Vec<TaskId> =
                            self.plan.components[sub.component].tasks().collect();
                        let local = tasks
                            .iter()
                            .copied()
                            .filter(|&t| self.task_slot[t as usize] == slot)
                            .collect();
                        Grouper::new(
                            sub.kind,
                            tasks,
                            local,
                            sub.key.clone(),
                            seed.wrapping_add(i as u64),
                        )
                    })
                    .collect()
            })
            .collect()
    }
}
