//! A recent window of a hub's figures next to its whole-life ones.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use squall_api::records::ComponentStats;

use super::{ComponentMetrics, MetricsHub};

/// Published figures cover the whole life *and* a recent window of at least
/// this long (and under twice it), so rates and p99 show how a topology does
/// now: a rebalance's slow trees fade out instead of ruling p99 for good.
pub const RECENT_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Samples a [`MetricsHub`] for its whole-life stats and a recent window's.
#[derive(Default)]
pub struct RecentWindow {
    baseline: Mutex<Option<(Instant, BTreeMap<String, ComponentMetrics>)>>,
}

impl RecentWindow {
    /// Whole-life stats per component, the recent window's, and that
    /// window's length in milliseconds (0, with no figures, on the first call).
    pub fn sample(
        &self,
        hub: &MetricsHub,
    ) -> (
        BTreeMap<String, ComponentStats>,
        BTreeMap<String, ComponentStats>,
        u64,
    ) {
        let now = hub.collect();
        let mut baseline = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        let (recent, window_ns) = match baseline.as_ref() {
            Some((at, base)) => {
                let window = at.elapsed().as_nanos() as u64;
                (crate::report::stats_of(&now, Some((base, window))), window)
            }
            None => (BTreeMap::new(), 0),
        };
        let total = crate::report::stats_of(&now, None);
        if baseline
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= RECENT_WINDOW)
        {
            *baseline = Some((Instant::now(), now));
        }
        (total, recent, window_ns / 1_000_000)
    }
}
