//! The hub where executors publish their metrics, and its merge by component.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use squall_api::{PlannedKind, TaskId};

use super::{ExecMetrics, lock};

/// Where an executor publishes its metrics.
pub type MetricsSlot = Arc<Mutex<ExecMetrics>>;

/// Metrics of one component, merged over its executors.
#[derive(Clone)]
pub struct ComponentMetrics {
    /// Spout, bolt or acker.
    pub kind: PlannedKind,
    /// How many executors were merged.
    pub executors: usize,
    /// Their metrics, merged.
    pub metrics: ExecMetrics,
}

/// One executor's slot, with what `/metrics` labels it by.
pub(super) struct Registered {
    pub(super) component: String,
    pub(super) kind: PlannedKind,
    pub(super) tasks: Range<TaskId>,
    pub(super) slot: MetricsSlot,
}

/// All executors' published metrics in one process.
#[derive(Clone, Default)]
pub struct MetricsHub {
    pub(super) slots: Arc<Mutex<Vec<Registered>>>,
}

impl MetricsHub {
    /// A hub with no executor yet.
    pub fn new() -> Self {
        MetricsHub::default()
    }

    /// A slot for a new executor of `component` that runs `tasks`.
    pub fn register(
        &self,
        component: &str,
        kind: PlannedKind,
        tasks: Range<TaskId>,
    ) -> MetricsSlot {
        let slot: MetricsSlot = Arc::default();
        lock(&self.slots).push(Registered {
            component: component.to_string(),
            kind,
            tasks,
            slot: slot.clone(),
        });
        slot
    }

    /// The latest published metrics, merged by component.
    pub fn collect(&self) -> BTreeMap<String, ComponentMetrics> {
        let slots = lock(&self.slots);
        let mut out: BTreeMap<String, ComponentMetrics> = BTreeMap::new();
        for r in slots.iter() {
            let m = lock(&r.slot);
            match out.get_mut(&r.component) {
                Some(c) => {
                    c.metrics.merge(&m);
                    c.executors += 1;
                }
                None => {
                    out.insert(
                        r.component.clone(),
                        ComponentMetrics {
                            kind: r.kind,
                            executors: 1,
                            metrics: m.clone(),
                        },
                    );
                }
            }
        }
        out
    }
}
