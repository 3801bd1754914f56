//! `squall-api`: the contract shared by the operator and the engine.
//!
//! It holds the `Topology` resource, graph validation, the physical plan and the
//! etcd records, and does no I/O: both sides link it, and they meet only through it.
//! Pure rules that both sides apply live here too: the next assignment version
//! ([`records::Assignment::following`]), run totals across worker restarts
//! ([`ledger::StatsLedger`]) and the worker pod's command line
//! ([`invocation::WorkerInvocation`]).

pub mod catalog;
pub mod invocation;
pub mod ledger;
pub mod plan;
pub mod records;
pub mod sizing;
pub mod topology;
pub mod validate;
pub mod view;

pub use catalog::{ComponentCatalog, ComponentDecl};
pub use plan::{ACKER_ID, PhysicalPlan, PlannedComponent, PlannedExecutor, PlannedKind, TaskId};
pub use topology::{
    ComponentKind, ComponentSpec, Config, DEFAULT_STREAM, Grouping, GroupingType, Phase, ShellSpec,
    StreamSpec, Topology, TopologySpec, TopologyStatus,
};
pub use validate::{FieldError, ValidationErrors, validate};

/// The CRD as it is checked in at `crds/topology.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&Topology::crd())
}
