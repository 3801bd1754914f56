//! Shell components: spouts and bolts run as subprocesses that speak Storm's
//! multilang protocol, so components written for Storm with `storm.py`, `storm.js`,
//! `storm.rb`, pystorm or streamparse run unchanged.
//!
//! A manifest names them with `shell: {command, dir}` and declares their `outputs`;
//! every topology binary runs them, in local mode, across processes and in worker pods.

mod bolt;
mod colocate;
mod process;
pub mod protocol;
mod spout;

use serde_json::Value as Json;

use crate::layout::Layout;

pub(crate) use bolt::{ShellBoltExecutor, ShellBoltSetup};
pub(crate) use spout::ShellSpout;

/// Storm's `task->component` map for the handshake: every task of the plan.
pub(crate) fn task_to_component(layout: &Layout) -> Json {
    let mut m = serde_json::Map::new();
    for c in &layout.plan.components {
        for t in c.first_task..c.first_task + c.task_count {
            m.insert(t.to_string(), Json::String(c.id.clone()));
        }
    }
    Json::Object(m)
}

/// The streams a component declares, for the handshake's context.
pub(crate) fn streams(layout: &Layout, component: usize) -> Vec<String> {
    layout.streams[component]
        .iter()
        .map(|s| s.fields.stream.clone())
        .collect()
}
