//! The operator's parts: the reconciler splits into [`decide`] (pure: what
//! one pass observed in, actions out; [`status`] computes phase, conditions
//! and figures) and [`controller`] (reads, calls `decide`, performs the
//! actions; a deletion's passes are decided by [`kill`]). `main.rs` wires them to the API server,
//! etcd and the admin endpoints.

pub mod controller;
pub mod decide;
pub mod kill;
pub mod pods;
pub mod status;
pub mod telemetry;
pub mod views;
