//! The physical plan: tasks → executors → worker slots, like Storm's even scheduler.
//!
//! Task ids are dense, start at 1 (as in Storm), and are laid out component by
//! component in the order spouts, bolts, then the system acker. A component's task
//! count never changes across a rebalance, so fields groupings keep sending a key
//! to the same task; only executors and slots move. The plan is a pure function of
//! the spec, so the operator and any worker compute the same one.

use serde::{Deserialize, Serialize};

use crate::topology::{ComponentKind, TopologySpec};

/// Task ids are global within a topology.
pub type TaskId = u32;

/// The component id of the system acker tasks.
pub const ACKER_ID: &str = "__acker";

/// What a planned component is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PlannedKind {
    Spout,
    Bolt,
    Acker,
}

impl From<ComponentKind> for PlannedKind {
    fn from(k: ComponentKind) -> Self {
        match k {
            ComponentKind::Spout => PlannedKind::Spout,
            ComponentKind::Bolt => PlannedKind::Bolt,
        }
    }
}

/// A component's contiguous block of task ids.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PlannedComponent {
    pub id: String,
    pub kind: PlannedKind,
    pub first_task: TaskId,
    pub task_count: u32,
}

impl PlannedComponent {
    pub fn tasks(&self) -> std::ops::Range<TaskId> {
        self.first_task..self.first_task + self.task_count
    }
}

/// One executor (a thread): a contiguous run of one component's tasks, placed in a slot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PlannedExecutor {
    /// Index of the component in [`PhysicalPlan::components`].
    pub component: usize,
    pub first_task: TaskId,
    pub task_count: u32,
    /// The worker slot (0-based) that runs it.
    pub slot: u32,
}

impl PlannedExecutor {
    pub fn tasks(&self) -> std::ops::Range<TaskId> {
        self.first_task..self.first_task + self.task_count
    }
}

/// The whole placement of a topology.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PhysicalPlan {
    pub workers: u32,
    pub components: Vec<PlannedComponent>,
    pub executors: Vec<PlannedExecutor>,
}

impl PhysicalPlan {
    /// Plan a (validated) spec. Deterministic: the same spec gives the same plan.
    pub fn compute(spec: &TopologySpec) -> PhysicalPlan {
        let workers = spec.workers.max(1);
        let mut components = Vec::new();
        let mut parallelism = Vec::new();
        let mut next_task: TaskId = 1;
        for (kind, c) in spec.components() {
            let task_count = c.task_count().max(1);
            components.push(PlannedComponent {
                id: c.id.clone(),
                kind: kind.into(),
                first_task: next_task,
                task_count,
            });
            parallelism.push(c.parallelism.clamp(1, task_count));
            next_task += task_count;
        }
        let ackers = spec.acker_count();
        if ackers > 0 {
            components.push(PlannedComponent {
                id: ACKER_ID.to_string(),
                kind: PlannedKind::Acker,
                first_task: next_task,
                task_count: ackers,
            });
            parallelism.push(ackers);
        }

        // Split each component's tasks over its executors as evenly as possible
        // (the first `tasks % executors` executors get one more), then deal the
        // executors round-robin over the slots, continuing where the previous
        // component stopped so that slots stay balanced overall.
        let mut executors = Vec::new();
        let mut slot = 0u32;
        for (ci, (comp, &n)) in components.iter().zip(&parallelism).enumerate() {
            let base = comp.task_count / n;
            let extra = comp.task_count % n;
            let mut first = comp.first_task;
            for e in 0..n {
                let count = base + u32::from(e < extra);
                executors.push(PlannedExecutor {
                    component: ci,
                    first_task: first,
                    task_count: count,
                    slot,
                });
                first += count;
                slot = (slot + 1) % workers;
            }
        }
        PhysicalPlan {
            workers,
            components,
            executors,
        }
    }

    /// The component that owns a task.
    pub fn component_of(&self, task: TaskId) -> Option<&PlannedComponent> {
        self.components.iter().find(|c| c.tasks().contains(&task))
    }

    /// The component with this id.
    pub fn component(&self, id: &str) -> Option<&PlannedComponent> {
        self.components.iter().find(|c| c.id == id)
    }

    /// The executors placed in one slot.
    pub fn executors_in(&self, slot: u32) -> impl Iterator<Item = &PlannedExecutor> {
        self.executors.iter().filter(move |e| e.slot == slot)
    }

    /// The slot that runs a task.
    pub fn slot_of(&self, task: TaskId) -> Option<u32> {
        self.executors
            .iter()
            .find(|e| e.tasks().contains(&task))
            .map(|e| e.slot)
    }

    /// Total number of tasks, acker tasks included.
    pub fn task_count(&self) -> u32 {
        self.components.iter().map(|c| c.task_count).sum()
    }

    /// The acker tasks (empty when acking is off).
    pub fn acker_tasks(&self) -> std::ops::Range<TaskId> {
        self.component(ACKER_ID)
            .map(PlannedComponent::tasks)
            .unwrap_or(0..0)
    }
}
