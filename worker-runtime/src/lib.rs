//! `squall-runtime`: the Squall engine.
//!
//! A topology binary registers its spouts and bolts in a [`Registry`] and hands
//! control to [`cli::main`], which gives it local mode and (with the distributed
//! runtime) worker mode. Executors are threads with bounded, batched queues;
//! reliability is Storm's XOR acking.
//!
//! What a component author uses: the [`Spout`] and [`Bolt`] traits (their
//! documentation says which thread calls each method, whether it may block,
//! and what a panic does), the collectors they emit through
//! ([`SpoutCollector`], [`BoltCollector`]), [`Tuple`] and [`Value`], the
//! [`Registry`], and [`cli::main`] (or [`local::run`] to run a manifest from
//! code, as below).
//!
//! # Examples
//!
//! A spout that emits three numbers, each tracked by a message id, and a bolt
//! that adds them up and acks each one, run in this process as Storm's
//! `LocalCluster` would. The run ends by itself once the spout is done and
//! every tuple tree completed.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicI64, Ordering};
//!
//! use squall_runtime::local::{self, LocalOptions};
//! use squall_runtime::{
//!     Bolt, BoltCollector, Outputs, Registry, Spout, SpoutCollector, TopologySpec, Tuple, values,
//! };
//!
//! /// Emits 1, 2, 3, then is done once all three are acked.
//! struct Numbers {
//!     next: i64,
//!     acked: usize,
//! }
//!
//! impl Spout for Numbers {
//!     fn next_tuple(&mut self, out: &mut SpoutCollector<'_>) {
//!         if self.next <= 3 {
//!             out.emit(values![self.next], Some(self.next as u64));
//!             self.next += 1;
//!         }
//!     }
//!     fn ack(&mut self, _msg_id: u64) {
//!         self.acked += 1;
//!     }
//!     fn is_done(&self) -> bool {
//!         self.acked == 3
//!     }
//! }
//!
//! /// Adds up the numbers it sees.
//! struct Sum(Arc<AtomicI64>);
//!
//! impl Bolt for Sum {
//!     fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
//!         if let Some(n) = input.get_by_field("n").and_then(|v| v.as_i64()) {
//!             self.0.fetch_add(n, Ordering::Relaxed);
//!         }
//!         out.ack(&input);
//!     }
//! }
//!
//! let total = Arc::new(AtomicI64::new(0));
//! let mut registry = Registry::new();
//! registry.spout("Numbers", Outputs::fields(&["n"]), |_ctx| {
//!     Ok(Numbers { next: 1, acked: 0 })
//! });
//! let sum = total.clone();
//! registry.bolt("Sum", Outputs::none(), move |_ctx| Ok(Sum(sum.clone())));
//!
//! // The same manifest works with `kubectl apply` (with `apiVersion`, `kind`,
//! // `metadata` and an `image`) and with `my-topology local`.
//! let (_, spec) = TopologySpec::from_manifest(
//!     "spouts: [{id: numbers, component: Numbers}]\n\
//!      bolts: [{id: sum, component: Sum}]\n\
//!      streams: [{from: numbers, to: sum, grouping: {type: SHUFFLE}}]",
//! )?;
//! let options = LocalOptions {
//!     report_every: None, // no live table
//!     ..LocalOptions::default()
//! };
//! let summary = local::run(&registry, "sum", spec, &options)?;
//!
//! assert_eq!(summary.stopped_by, "limit"); // the spout was done
//! assert_eq!(summary.acked, 3);
//! assert_eq!(total.load(Ordering::Relaxed), 6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[doc(hidden)] // engine internals: the acker state machine
pub mod acker;
pub mod cli;
#[doc(hidden)] // worker mode, the supervisor and the launcher: run through `cli`
pub mod cluster;
pub mod collector;
pub mod component;
#[doc(hidden)]
pub mod control;
#[doc(hidden)] // engine internals; `Crash` is re-exported below
pub mod executor;
pub(crate) mod grouping;
pub(crate) mod idmap;
#[cfg(feature = "kafka")]
pub mod kafka;
#[doc(hidden)] // engine internals, public for the engine's integration tests
pub mod layout;
pub mod local;
pub mod metrics;
#[doc(hidden)] // the gRPC transport between workers, public for the distributed tests
pub mod net;
pub mod report;
pub(crate) mod shell;
#[doc(hidden)] // public for the open-tree memory benchmark
pub mod spout_trees;
#[doc(hidden)] // engine internals; `TransferConfig` is re-exported below
pub mod transfer;
pub mod tuple;
pub(crate) mod ui;
#[doc(hidden)] // engine internals, public for the engine's integration tests
pub mod worker;

pub use collector::{BoltCollector, EmitError, SpoutCollector};
pub use component::{Bolt, ComponentError, Outputs, Registry, Spout, TopologyContext};
pub use executor::Crash;
pub use squall_api::{Config, TaskId, TopologySpec};
pub use transfer::TransferConfig;
pub use tuple::{Tuple, Value, Values};
