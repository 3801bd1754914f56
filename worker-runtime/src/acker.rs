//! Storm's XOR acker, as a pure state machine (DESIGN §4).
//!
//! Each tuple tree is tracked by one 64-bit value per root: the XOR of every edge
//! id that was created and every edge id that was acked. Each edge appears twice
//! (once when its tuple is emitted, once when it is acked), so the value returns
//! to 0 exactly when every tuple in the tree has been acked. Messages may arrive
//! in any order (an ack can overtake the spout's `init`), so a tree completes only
//! once the spout task is known.
//!
//! Entries live in a two-bucket rotating map: a tree that neither completes nor
//! fails within one to two timeouts is dropped here (its spout times it out on its
//! own), which bounds memory however many acks are lost.

use crate::idmap::{Id, IdMap};

use squall_api::TaskId;

/// What the acker tells a spout task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckerOutcome {
    /// The tree rooted at `root` completed: send `ack` to the spout task.
    Complete { root: u64, spout_task: TaskId },
    /// The tree failed: send `fail` to the spout task.
    Failed { root: u64, spout_task: TaskId },
    /// A bolt asked for more time: the spout resets the tree's timeout.
    Reset { root: u64, spout_task: TaskId },
}

/// One open tree: 12 bytes, so a map slot with its root is 20 (memory per
/// open tree is measured by `cargo bench -p squall-examples --bench
/// open_trees`). The spout task and the failed flag share a word.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Entry {
    val: u64,
    /// The spout task ([`NO_TASK`] until the spout's init arrives), with
    /// [`FAILED`] set once a bolt failed a tuple of the tree.
    task: u32,
}

/// No spout task yet (task ids are far below it: plans are bounded).
const NO_TASK: u32 = 0x7fff_ffff;
/// The flag bit of [`Entry::task`].
const FAILED: u32 = 0x8000_0000;

impl Default for Entry {
    fn default() -> Self {
        Entry {
            val: 0,
            task: NO_TASK,
        }
    }
}

impl Entry {
    fn spout_task(&self) -> Option<TaskId> {
        let task = self.task & !FAILED;
        (task != NO_TASK).then_some(task)
    }

    fn failed(&self) -> bool {
        self.task & FAILED != 0
    }

    fn set_spout_task(&mut self, task: TaskId) {
        debug_assert!(task < NO_TASK);
        self.task = (self.task & FAILED) | (task & !FAILED);
    }
}

/// The state of one acker task.
#[derive(Debug, Default)]
pub struct AckerState {
    current: IdMap<Entry>,
    previous: IdMap<Entry>,
}

impl AckerState {
    pub fn new() -> Self {
        AckerState::default()
    }

    /// Open trees (both buckets).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entry(&mut self, root: u64) -> &mut Entry {
        self.revive(root);
        self.current.entry(Id(root)).or_default()
    }

    /// A tree untouched since the last rotation is touched: back to the current bucket.
    #[inline]
    fn revive(&mut self, root: u64) {
        if !self.previous.is_empty()
            && let Some(e) = self.previous.remove(&Id(root))
        {
            self.current.insert(Id(root), e);
        }
    }

    /// Change the tree `root` by `change`, and settle it: one lookup in the
    /// current bucket (this is every ack's path).
    #[inline]
    fn update(&mut self, root: u64, change: impl FnOnce(&mut Entry)) -> Option<AckerOutcome> {
        self.revive(root);
        match self.current.entry(Id(root)) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                change(o.get_mut());
                let outcome = Self::verdict(root, o.get())?;
                o.remove();
                Some(outcome)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut e = Entry::default();
                change(&mut e);
                match Self::verdict(root, &e) {
                    Some(outcome) => Some(outcome),
                    None => {
                        v.insert(e);
                        None
                    }
                }
            }
        }
    }

    /// What the spout must hear about a tree in state `e`, if it is settled.
    #[inline]
    fn verdict(root: u64, e: &Entry) -> Option<AckerOutcome> {
        let spout_task = e.spout_task()?;
        if e.failed() {
            Some(AckerOutcome::Failed { root, spout_task })
        } else if { e.val } == 0 {
            Some(AckerOutcome::Complete { root, spout_task })
        } else {
            None
        }
    }

    /// The spout emitted a tree: `val` is the XOR of the edge ids it sent.
    pub fn init(&mut self, root: u64, val: u64, spout_task: TaskId) -> Option<AckerOutcome> {
        self.update(root, |e| {
            e.val ^= val;
            e.set_spout_task(spout_task);
        })
    }

    /// A bolt acked a tuple: `val` is its edge id XOR the edges it created.
    pub fn ack(&mut self, root: u64, val: u64) -> Option<AckerOutcome> {
        self.update(root, |e| e.val ^= val)
    }

    /// A bolt failed a tuple of the tree.
    pub fn fail(&mut self, root: u64) -> Option<AckerOutcome> {
        self.update(root, |e| e.task |= FAILED)
    }

    /// A bolt asked to reset the tree's timeout.
    pub fn reset(&mut self, root: u64) -> Option<AckerOutcome> {
        let e = self.entry(root);
        e.spout_task()
            .map(|spout_task| AckerOutcome::Reset { root, spout_task })
    }

    /// Called once per message timeout: trees untouched for a whole period are dropped.
    /// Returns how many were dropped.
    pub fn rotate(&mut self) -> usize {
        let dropped = self.previous.len();
        self.previous = std::mem::take(&mut self.current);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_entry_is_12_bytes_and_its_slot_20() {
        assert_eq!(std::mem::size_of::<Entry>(), 12);
        assert_eq!(std::mem::size_of::<(Id, Entry)>(), 20);
    }

    #[test]
    fn the_failed_flag_and_the_spout_task_share_a_word() {
        let mut e = Entry::default();
        assert_eq!(e.spout_task(), None);
        e.task |= FAILED;
        assert!(e.failed() && e.spout_task().is_none());
        e.set_spout_task(65_535);
        assert!(e.failed());
        assert_eq!(e.spout_task(), Some(65_535));
    }

    /// A random tree: node i > 0 hangs under a parent < i; each node is one tuple
    /// with a random edge id. Returns the messages as the runtime would send them.
    fn tree_messages(parents: &[usize], edges: &[u64]) -> (u64, Vec<(bool, u64)>) {
        // The root tuple (node 0) is emitted by the spout: init carries its edge.
        let init = edges[0];
        // Each node's ack carries its edge XOR its children's edges.
        let mut acks: Vec<u64> = edges.to_vec();
        for (child, &parent) in parents.iter().enumerate() {
            acks[parent] ^= edges[child + 1];
        }
        (init, acks.into_iter().map(|v| (false, v)).collect())
    }

    proptest! {
        #[test]
        fn a_tree_completes_exactly_once_after_its_last_ack(
            parents_seed in proptest::collection::vec(any::<u32>(), 0..30),
            edges_seed in any::<u64>(),
            order_seed in any::<u64>(),
            init_at in any::<u32>(),
        ) {
            let n = parents_seed.len() + 1;
            let parents: Vec<usize> = parents_seed.iter().enumerate().map(|(i, s)| *s as usize % (i + 1)).collect();
            let mut x = edges_seed | 1;
            let edges: Vec<u64> = (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x | 1 }).collect();
            let (init, acks) = tree_messages(&parents, &edges);

            // Shuffle the acks and put the init anywhere among them.
            let mut order: Vec<usize> = (0..acks.len()).collect();
            let mut s = order_seed | 1;
            for i in (1..order.len()).rev() { s ^= s << 13; s ^= s >> 7; s ^= s << 17; order.swap(i, (s % (i as u64 + 1)) as usize); }
            let init_pos = init_at as usize % (acks.len() + 1);

            let mut acker = AckerState::new();
            let mut outcomes = Vec::new();
            let mut delivered = 0;
            for step in 0..=acks.len() {
                if step == init_pos {
                    outcomes.extend(acker.init(42, init, 7));
                }
                if step < acks.len() {
                    outcomes.extend(acker.ack(42, acks[order[step]].1));
                    delivered += 1;
                    if outcomes.is_empty() {
                        prop_assert!(delivered < acks.len() || step < init_pos, "no completion before the last ack");
                    }
                }
            }
            prop_assert_eq!(outcomes, vec![AckerOutcome::Complete { root: 42, spout_task: 7 }]);
            prop_assert!(acker.is_empty());
        }

        #[test]
        fn a_fail_reaches_the_spout_exactly_once(acks_before in 0usize..5, fails in 1usize..4) {
            let mut acker = AckerState::new();
            let mut outcomes = Vec::new();
            outcomes.extend(acker.init(1, 0xABCD, 3));
            for i in 0..acks_before { outcomes.extend(acker.ack(1, i as u64 + 1)); }
            for _ in 0..fails { outcomes.extend(acker.fail(1)); }
            // Late acks after the fail must not produce anything more that matters.
            outcomes.extend(acker.ack(1, 0xABCD));
            let fails_seen = outcomes.iter().filter(|o| matches!(o, AckerOutcome::Failed { .. })).count();
            prop_assert_eq!(fails_seen, 1);
            let completed = outcomes.iter().any(|o| matches!(o, AckerOutcome::Complete { .. }));
            prop_assert!(!completed, "a failed tree never completes");
        }
    }

    #[test]
    fn fail_before_init_fails_on_init() {
        let mut a = AckerState::new();
        assert_eq!(a.fail(9), None);
        assert_eq!(
            a.init(9, 5, 2),
            Some(AckerOutcome::Failed {
                root: 9,
                spout_task: 2
            })
        );
    }

    #[test]
    fn untouched_trees_are_dropped_after_two_rotations() {
        let mut a = AckerState::new();
        a.init(1, 5, 2);
        assert_eq!(a.rotate(), 0);
        assert_eq!(a.len(), 1);
        assert_eq!(a.rotate(), 1);
        assert!(a.is_empty());
        // A touched tree moves back to the current bucket and survives.
        a.init(2, 5, 2);
        a.rotate();
        a.ack(2, 1);
        a.rotate();
        assert_eq!(a.len(), 1);
    }
}
