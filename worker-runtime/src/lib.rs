//! `squall-runtime`: the Squall engine.
//!
//! A topology binary registers its spouts and bolts in a [`Registry`] and hands
//! control to [`cli::main`], which gives it local mode and (with the distributed
//! runtime) worker mode. Executors are threads with bounded, batched queues;
//! reliability is Storm's XOR acking.

pub mod acker;
pub mod cli;
pub mod cluster;
pub mod collector;
pub mod component;
pub mod executor;
pub mod grouping;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod layout;
pub mod local;
pub mod metrics;
pub mod net;
pub mod shell;
pub mod transfer;
pub mod tuple;
pub mod ui;
pub mod worker;

pub use collector::{BoltCollector, EmitError, SpoutCollector};
pub use component::{Bolt, ComponentError, Outputs, Registry, Spout, TopologyContext};
pub use squall_api::{Config, TaskId};
pub use tuple::{Tuple, Value, Values};
