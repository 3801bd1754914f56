//! The spout's side of acking: the open tuple trees of one spout task, the
//! mirror of [`crate::acker`]. A pure state machine (time comes in as
//! nanoseconds), so the executor only decides what to tell the spout.
//!
//! Each open tree has a deadline; deadlines are kept in the order they are
//! set in a queue, so expiring is a look at its front. That order is the
//! deadline order because every deadline is "now plus the topology's message
//! timeout" (a caller must keep it so). A completed, failed or reset
//! tree leaves its old deadline in the queue as a stale entry, skipped when
//! it reaches the front. The queue is compacted whenever stale entries
//! outnumber live ones (with some slack), so memory follows the open trees,
//! not the emit rate times the message timeout (at 100k roots/s and a 30 s
//! timeout, stale entries alone used to hold 48 MB).
//!
//! A tree does not store its deadline, so that a map slot is 24 bytes (root,
//! message id, start): a tree that was never reset has exactly one queue
//! entry, which is its deadline, and the few trees that were reset keep
//! their current deadline in a side map. This relies on roots being unique
//! over the structure's life, as the engine's random 64-bit roots are: a
//! root tracked again would take the stale entry of its first life as its
//! own, and could expire early, which replays it (nothing is lost).

use std::collections::VecDeque;

use crate::idmap::IdMap;

/// An open tuple tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenTree {
    /// The spout's message id, given back in `ack`/`fail`.
    pub(crate) msg_id: u64,
    /// When the tree started (for complete latency).
    pub(crate) start_ns: u64,
}

/// Stale deadline entries tolerated before a compaction, beyond twice the open trees.
const SLACK: usize = 1024;

/// The open trees of one spout task.
#[derive(Debug, Default)]
pub struct SpoutTrees {
    open: IdMap<OpenTree>,
    /// (deadline, root) in the order deadlines were set; may hold stale entries.
    deadlines: VecDeque<(u64, u64)>,
    /// The current deadline of each open tree that was reset.
    reset: IdMap<u64>,
}

impl SpoutTrees {
    /// Open trees.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// A tree rooted at `root` started at `start_ns`; it expires at `deadline_ns`.
    pub fn track(&mut self, root: u64, msg_id: u64, start_ns: u64, deadline_ns: u64) {
        self.open.insert(root, OpenTree { msg_id, start_ns });
        self.push_deadline(deadline_ns, root);
    }

    /// The acker says the tree completed: it is no longer open.
    pub(crate) fn complete(&mut self, root: u64) -> Option<OpenTree> {
        self.close(root)
    }

    /// The acker says the tree failed: it is no longer open.
    pub(crate) fn fail(&mut self, root: u64) -> Option<OpenTree> {
        self.close(root)
    }

    fn close(&mut self, root: u64) -> Option<OpenTree> {
        let t = self.open.remove(&root)?;
        if !self.reset.is_empty() {
            self.reset.remove(&root);
        }
        Some(t)
    }

    /// A bolt asked for more time: the tree now expires at `deadline_ns`.
    /// `false` when the tree is not open.
    pub(crate) fn reset(&mut self, root: u64, deadline_ns: u64) -> bool {
        if !self.open.contains_key(&root) {
            return false;
        }
        self.reset.insert(root, deadline_ns);
        self.push_deadline(deadline_ns, root);
        true
    }

    /// Whether `deadline` is the open tree `root`'s current one.
    fn is_current(open: &IdMap<OpenTree>, reset: &IdMap<u64>, root: u64, deadline: u64) -> bool {
        open.contains_key(&root) && reset.get(&root).is_none_or(|&d| d == deadline)
    }

    /// The next tree whose deadline is at or before `now_ns`, removed; `None`
    /// when none is due. Trees expire in the order their deadlines were set.
    pub(crate) fn expire(&mut self, now_ns: u64) -> Option<OpenTree> {
        while let Some(&(deadline, root)) = self.deadlines.front() {
            if deadline > now_ns {
                return None;
            }
            self.deadlines.pop_front();
            // Only the tree's current deadline counts; older ones are stale.
            if Self::is_current(&self.open, &self.reset, root, deadline) {
                return self.close(root);
            }
        }
        None
    }

    /// Remove every open tree, oldest start first (so a spout that replays
    /// failures replays them in order).
    pub(crate) fn drain_in_order(&mut self) -> Vec<OpenTree> {
        let mut open: Vec<_> = self.open.drain().map(|(_, t)| t).collect();
        open.sort_by_key(|t| t.start_ns);
        self.deadlines.clear();
        self.reset.clear();
        open
    }

    fn push_deadline(&mut self, deadline_ns: u64, root: u64) {
        if self.deadlines.len() >= 2 * self.open.len() + SLACK {
            let (open, reset) = (&self.open, &self.reset);
            self.deadlines
                .retain(|&(d, r)| Self::is_current(open, reset, r, d));
        }
        self.deadlines.push_back((deadline_ns, root));
    }

    /// Deadline entries held, stale ones included (for tests).
    #[cfg(test)]
    fn deadline_entries(&self) -> usize {
        self.deadlines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Track,
        Complete(u8),
        Fail(u8),
        Reset(u8),
        Advance(u16),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Track),
            3 => any::<u8>().prop_map(Op::Complete),
            1 => any::<u8>().prop_map(Op::Fail),
            1 => any::<u8>().prop_map(Op::Reset),
            2 => any::<u16>().prop_map(Op::Advance),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        /// Against a plain model (root -> (msg id, start, deadline)): every
        /// operation gives the same answer, expiry gives exactly the trees
        /// whose deadline passed (every deadline is now + the timeout), and
        /// the deadline queue stays bounded by the open trees.
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(op(), 0..400)) {
            const TIMEOUT: u64 = 1_000;
            let mut t = SpoutTrees::default();
            let mut model: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
            let mut now = 0u64;
            let mut next_msg = 0u64;
            for op in ops {
                match op {
                    Op::Track => {
                        // Roots are unique over the structure's life, as the
                        // engine's random ones are (see the module docs).
                        let root = next_msg + 1;
                        next_msg += 1;
                        t.track(root, next_msg, now, now + TIMEOUT);
                        model.insert(root, (next_msg, now, now + TIMEOUT));
                    }
                    Op::Complete(r) | Op::Fail(r) => {
                        let root = u64::from(r) % (next_msg + 1) + 1;
                        let got = t.complete(root).map(|o| o.msg_id);
                        prop_assert_eq!(got, model.remove(&root).map(|m| m.0));
                    }
                    Op::Reset(r) => {
                        let root = u64::from(r) % (next_msg + 1) + 1;
                        let d = now + TIMEOUT;
                        prop_assert_eq!(t.reset(root, d), model.contains_key(&root));
                        if let Some(m) = model.get_mut(&root) { m.2 = d; }
                    }
                    Op::Advance(dt) => {
                        now += u64::from(dt % 700);
                        let mut expired = Vec::new();
                        while let Some(o) = t.expire(now) { expired.push(o.msg_id); }
                        let mut due: Vec<u64> = model.iter().filter(|(_, m)| m.2 <= now).map(|(_, m)| m.0).collect();
                        model.retain(|_, m| m.2 > now);
                        expired.sort_unstable();
                        due.sort_unstable();
                        prop_assert_eq!(expired, due);
                    }
                    Op::Drain => {
                        let got: Vec<u64> = t.drain_in_order().iter().map(|o| o.start_ns).collect();
                        let mut sorted = got.clone();
                        sorted.sort_unstable();
                        prop_assert_eq!(&got, &sorted, "drained oldest first");
                        prop_assert_eq!(got.len(), model.len());
                        model.clear();
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert!(t.deadline_entries() <= 2 * t.len() + SLACK + 1);
            }
        }
    }

    #[test]
    fn completed_trees_do_not_pile_up_deadlines() {
        let mut t = SpoutTrees::default();
        // A million trees, each completed at once, with a long timeout: the
        // queue must not keep a million stale deadlines.
        for root in 1..=1_000_000u64 {
            t.track(root, root, root, root + 30_000_000_000);
            assert!(t.complete(root).is_some());
        }
        assert!(t.is_empty());
        assert!(
            t.deadline_entries() <= SLACK + 1,
            "{} deadline entries for no open tree",
            t.deadline_entries()
        );
    }

    #[test]
    fn a_slot_is_root_message_id_and_start() {
        assert_eq!(std::mem::size_of::<(u64, OpenTree)>(), 24);
    }

    #[test]
    fn a_root_tracked_again_may_expire_early_but_is_not_lost() {
        let mut t = SpoutTrees::default();
        t.track(7, 70, 0, 100);
        assert!(t.complete(7).is_some());
        t.track(7, 71, 50, 150);
        // The first life's deadline is taken for the second's: early, not lost.
        assert_eq!(t.expire(100).map(|o| o.msg_id), Some(71));
        assert_eq!(t.expire(150), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_reset_moves_the_deadline() {
        let mut t = SpoutTrees::default();
        t.track(7, 70, 0, 100);
        assert!(t.reset(7, 500));
        assert_eq!(t.expire(100), None, "the old deadline is stale");
        assert_eq!(t.expire(500).map(|o| o.msg_id), Some(70));
        assert!(!t.reset(7, 900), "an expired tree is not open");
    }
}
