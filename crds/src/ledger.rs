//! Run totals across worker restarts: the one rule both the operator (for
//! `.status`) and the local multi-process launcher (for its tables) apply.
//!
//! A worker's counters live in its process, so a restarted worker reports from
//! zero again. Each [`WorkerStats`] carries the `incarnation` of the process
//! that counted it; when a slot's incarnation changes, the previous process's
//! last figures are final and are banked, so totals never go backwards.
//!
//! Two writers can publish one slot's stats for a while (an old pod that is
//! still terminating next to its replacement), so a late snapshot of the
//! previous incarnation updates that incarnation's figures instead of counting
//! as yet another restart.

use std::collections::BTreeMap;

use crate::records::{ComponentStats, WorkerStats};

/// Totals per slot over every worker process the slot has had.
///
/// # Examples
///
/// ```
/// # use squall_api::ledger::StatsLedger;
/// # use squall_api::records::{ComponentStats, WorkerStats};
/// let snap = |incarnation, timestamp_ms, acked| WorkerStats {
///     incarnation,
///     timestamp_ms,
///     components: [("s".to_string(), ComponentStats { acked, ..Default::default() })].into(),
///     ..Default::default()
/// };
/// let mut ledger = StatsLedger::default();
/// ledger.observe(&snap(7, 1_000, 40));
/// ledger.observe(&snap(9, 2_000, 5)); // the worker restarted
/// assert_eq!(ledger.components()["s"].acked, 45);
/// ```
#[derive(Clone, Debug, Default)]
pub struct StatsLedger {
    slots: BTreeMap<u32, SlotLedger>,
}

#[derive(Clone, Debug, Default)]
struct SlotLedger {
    /// Totals of every finished process of the slot but the most recent one.
    banked: BTreeMap<String, ComponentStats>,
    /// The latest snapshot of the most recently finished process.
    previous: Option<WorkerStats>,
    /// The latest snapshot of the current process.
    current: Option<WorkerStats>,
}

/// Whether `later` was counted by the same process as `earlier`.
fn same_process(earlier: &WorkerStats, later: &WorkerStats) -> bool {
    if earlier.incarnation != 0 || later.incarnation != 0 {
        return earlier.incarnation == later.incarnation;
    }
    // Neither says which process it is: a counter that went down means a
    // restart, unless the snapshot is simply older (a stale read).
    later.timestamp_ms < earlier.timestamp_ms
        || earlier.components.iter().all(|(id, e)| {
            later.components.get(id).is_some_and(|l| {
                l.emitted >= e.emitted
                    && l.acked >= e.acked
                    && l.failed >= e.failed
                    && l.executed >= e.executed
                    && l.roots >= e.roots
            })
        })
}

/// `slot` keeps the newer of two snapshots of one process.
fn keep_newer(slot: &mut Option<WorkerStats>, s: &WorkerStats) {
    if slot
        .as_ref()
        .is_none_or(|c| c.timestamp_ms <= s.timestamp_ms)
    {
        *slot = Some(s.clone());
    }
}

impl StatsLedger {
    /// Take in every snapshot read from etcd (slot → stats).
    pub fn observe_all(&mut self, stats: &BTreeMap<u32, WorkerStats>) {
        for s in stats.values() {
            self.observe(s);
        }
    }

    /// Take in one snapshot, as read from etcd.
    pub fn observe(&mut self, s: &WorkerStats) {
        let l = self.slots.entry(s.slot).or_default();
        match &l.current {
            Some(c) if same_process(c, s) => keep_newer(&mut l.current, s),
            Some(_)
                if s.incarnation != 0
                    && l.previous
                        .as_ref()
                        .is_some_and(|p| p.incarnation == s.incarnation) =>
            {
                // Published late by the process before the current one.
                keep_newer(&mut l.previous, s);
            }
            Some(_) => {
                // A new process: the one before the current one is final.
                if let Some(p) = l.previous.take() {
                    ComponentStats::add_all(&mut l.banked, &p.components);
                }
                l.previous = l.current.replace(s.clone());
            }
            None => l.current = Some(s.clone()),
        }
    }

    /// Per slot: the current process's state (applied version, pending, spouts
    /// done, timestamp) with counters totalled over every process of the slot.
    pub fn totals(&self) -> BTreeMap<u32, WorkerStats> {
        self.slots
            .iter()
            .filter_map(|(slot, l)| {
                let cur = l.current.as_ref()?;
                let mut components = l.banked.clone();
                if let Some(p) = &l.previous {
                    ComponentStats::add_all(&mut components, &p.components);
                }
                ComponentStats::add_all(&mut components, &cur.components);
                Some((
                    *slot,
                    WorkerStats {
                        components,
                        ..cur.clone()
                    },
                ))
            })
            .collect()
    }

    /// Totals per component, summed over every slot the ledger has seen
    /// (including slots that a rebalance removed: what they counted stays counted).
    pub fn components(&self) -> BTreeMap<String, ComponentStats> {
        let mut out = BTreeMap::new();
        for w in self.totals().values() {
            ComponentStats::add_all(&mut out, &w.components);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn snap(slot: u32, incarnation: u64, ts: u64, acked: u64, executed: u64) -> WorkerStats {
        let c = ComponentStats {
            acked,
            executed,
            ..ComponentStats::default()
        };
        WorkerStats {
            slot,
            incarnation,
            timestamp_ms: ts,
            components: BTreeMap::from([("c".to_string(), c)]),
            ..WorkerStats::default()
        }
    }

    fn totals(l: &StatsLedger, slot: u32) -> (u64, u64) {
        let c = &l.totals()[&slot].components["c"];
        (c.acked, c.executed)
    }

    #[test]
    fn a_new_incarnation_banks_what_the_previous_process_counted() {
        let mut l = StatsLedger::default();
        l.observe_all(&BTreeMap::from([
            (0, snap(0, 11, 1000, 10, 100)),
            (1, snap(1, 21, 1000, 5, 50)),
        ]));
        l.observe(&snap(0, 11, 2000, 20, 200));
        assert_eq!(totals(&l, 0), (20, 200));
        // The old record is read again before the new process publishes: counted once.
        l.observe(&snap(0, 11, 2000, 20, 200));
        assert_eq!(totals(&l, 0), (20, 200));
        // Slot 0's worker restarts.
        l.observe(&snap(0, 12, 3000, 1, 30));
        assert_eq!(totals(&l, 0), (21, 230));
        // A late snapshot of the dead process replaces its last figures.
        l.observe(&snap(0, 11, 2400, 22, 220));
        assert_eq!(totals(&l, 0), (23, 250));
        // A second restart banks the first process's figures for good.
        l.observe(&snap(0, 12, 4000, 3, 40));
        l.observe(&snap(0, 13, 5000, 2, 2));
        assert_eq!(totals(&l, 0), (27, 262));
        // Other slots are untouched, and the sum covers every slot.
        assert_eq!(totals(&l, 1), (5, 50));
        assert_eq!(l.components()["c"].acked, 32);
    }

    #[test]
    fn a_stale_snapshot_of_the_current_process_is_ignored() {
        let mut l = StatsLedger::default();
        l.observe(&snap(0, 5, 2000, 20, 200));
        l.observe(&snap(0, 5, 1000, 10, 100));
        assert_eq!(totals(&l, 0), (20, 200));
    }

    #[test]
    fn two_writers_of_one_slot_do_not_bank_over_and_over() {
        // An old pod still terminating and its replacement both publish stats/<slot>.
        let mut l = StatsLedger::default();
        l.observe(&snap(0, 1, 1000, 10, 10));
        for ts in [2000, 3000, 4000] {
            l.observe(&snap(0, 2, ts, ts / 1000, 0));
            l.observe(&snap(0, 1, ts, 10, 10));
        }
        assert_eq!(totals(&l, 0), (14, 10));
    }

    #[test]
    fn without_incarnations_a_counter_that_goes_down_means_a_restart() {
        let mut l = StatsLedger::default();
        l.observe(&snap(0, 0, 1000, 10, 100));
        l.observe(&snap(0, 0, 2000, 12, 120));
        l.observe(&snap(0, 0, 1500, 11, 110)); // stale, not a restart
        assert_eq!(totals(&l, 0), (12, 120));
        l.observe(&snap(0, 0, 3000, 1, 5));
        assert_eq!(totals(&l, 0), (13, 125));
    }

    #[test]
    fn totals_keep_the_current_process_state() {
        let mut l = StatsLedger::default();
        let mut s = snap(3, 1, 1000, 1, 1);
        s.applied_version = 4;
        s.pending = 9;
        l.observe(&s);
        let t = &l.totals()[&3];
        assert_eq!((t.applied_version, t.pending, t.slot), (4, 9, 3));
    }
}
