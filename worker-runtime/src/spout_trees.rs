//! The spout's side of acking: the open tuple trees of one spout task, the
//! mirror of [`crate::acker`]. A pure state machine (time comes in as
//! nanoseconds), so the executor only decides what to tell the spout.
//!
//! Timeouts are kept as Storm's spout keeps them, in rotating buckets, but
//! finer: open trees sit in [`PERIODS`]` + 1` buckets by when they were
//! tracked (or last reset), and the buckets rotate every timeout /
//! [`PERIODS`]. When a bucket falls off the end, its trees have been open
//! for at least the timeout and at most a period more (Storm's two buckets
//! allow up to twice the timeout), and they expire, oldest first. A tree
//! costs no deadline: a slot is its root, its message id and its start
//! time, 20 bytes, and a completion is one lookup in the newest bucket
//! (trees complete in milliseconds, and a period is seconds).
//!
//! The start time is kept in 32 bits of ticks, wrapping: a tick is the
//! shortest power-of-two nanoseconds whose 2^32 span four timeouts (32 ns
//! for the default 30 s, 131 µs for the longest, a day). A tree's age (its
//! complete latency) is right while it is open for less than the span, and
//! trees are expired after a timeout and a quarter.

use std::collections::VecDeque;

use crate::idmap::{Id, IdMap};

/// An open tuple tree, as the spout hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenTree {
    /// The spout's message id, given back in `ack`/`fail`.
    pub(crate) msg_id: u64,
    /// When the tree started (for complete latency), to a tick.
    pub(crate) start_ns: u64,
}

/// A tree in its bucket: 12 bytes, 20 with the root.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Slot {
    msg_id: u64,
    start: u32,
}

/// How many periods a timeout spans: trees expire between the timeout and
/// a quarter more.
pub(crate) const PERIODS: u64 = 4;

/// The longest a tree stays open, with a message timeout of `timeout_ns`,
/// before it expires (given that [`SpoutTrees::expire`] is called often).
pub(crate) fn longest_open_ns(timeout_ns: u64) -> u64 {
    timeout_ns.saturating_add(timeout_ns / PERIODS)
}

/// The tick a slot keeps time in: `1 << shift` nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Tick {
    shift: u32,
}

impl Tick {
    /// The finest tick whose 32-bit span is at least four timeouts.
    fn for_timeout(timeout_ns: u64) -> Self {
        let span = timeout_ns.saturating_mul(4).max(1);
        let bits = 64 - (span - 1).leading_zeros();
        Tick {
            shift: bits.saturating_sub(32),
        }
    }

    /// `ns` in ticks, wrapping.
    fn of(self, ns: u64) -> u32 {
        (ns >> self.shift) as u32
    }

    /// Ticks since `start`, at `now_ns` (larger is older). A `now_ns` read
    /// before the tree was tracked (an executor reads the clock once per
    /// batch) gives 0, not an age that wrapped.
    fn age(self, start: u32, now_ns: u64) -> u32 {
        let age = self.of(now_ns).wrapping_sub(start);
        if age > u32::MAX / 4 * 3 { 0 } else { age }
    }

    fn open_tree(self, slot: Slot, now_ns: u64) -> OpenTree {
        let age = u64::from(self.age(slot.start, now_ns)) << self.shift;
        OpenTree {
            msg_id: slot.msg_id,
            start_ns: now_ns.saturating_sub(age),
        }
    }
}

/// The open trees of one spout task.
#[derive(Debug)]
pub struct SpoutTrees {
    /// Open trees by when they were tracked, newest bucket first.
    buckets: VecDeque<IdMap<Slot>>,
    period_ns: u64,
    tick: Tick,
    /// When the buckets rotate next; 0 before the first time is seen.
    next_rotation_ns: u64,
    /// Trees whose bucket fell off, oldest first, for [`SpoutTrees::expire`].
    expired: VecDeque<Slot>,
}

impl SpoutTrees {
    /// The trees of a topology whose message timeout is `timeout_ns`.
    pub fn new(timeout_ns: u64) -> Self {
        SpoutTrees {
            buckets: VecDeque::from([IdMap::default()]),
            period_ns: (timeout_ns / PERIODS).max(1),
            tick: Tick::for_timeout(timeout_ns),
            next_rotation_ns: 0,
            expired: VecDeque::new(),
        }
    }

    /// Open trees.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.is_empty())
    }

    /// A tree rooted at `root` started at `start_ns` (at or before `now_ns`).
    pub fn track(&mut self, root: u64, msg_id: u64, start_ns: u64, now_ns: u64) {
        self.rotate(now_ns);
        let slot = Slot {
            msg_id,
            start: self.tick.of(start_ns.min(now_ns)),
        };
        self.buckets[0].insert(Id(root), slot);
    }

    /// The acker says the tree completed: it is no longer open.
    pub(crate) fn complete(&mut self, root: u64, now_ns: u64) -> Option<OpenTree> {
        let tick = self.tick;
        self.take(root).map(|s| tick.open_tree(s, now_ns))
    }

    /// The acker says the tree failed: it is no longer open.
    pub(crate) fn fail(&mut self, root: u64, now_ns: u64) -> Option<OpenTree> {
        self.complete(root, now_ns)
    }

    fn take(&mut self, root: u64) -> Option<Slot> {
        self.buckets.iter_mut().find_map(|b| {
            if b.is_empty() {
                None
            } else {
                b.remove(&Id(root))
            }
        })
    }

    /// A bolt asked for more time: the tree's timeout starts again at
    /// `now_ns`. `false` when the tree is not open.
    pub(crate) fn reset(&mut self, root: u64, now_ns: u64) -> bool {
        self.rotate(now_ns);
        if self.buckets[0].contains_key(&Id(root)) {
            return true;
        }
        match self.take(root) {
            Some(slot) => {
                self.buckets[0].insert(Id(root), slot);
                true
            }
            None => false,
        }
    }

    /// The next tree whose timeout has passed at `now_ns`, removed; `None`
    /// when none is due. Trees expire oldest first.
    pub(crate) fn expire(&mut self, now_ns: u64) -> Option<OpenTree> {
        self.rotate(now_ns);
        let tick = self.tick;
        self.expired.pop_front().map(|s| tick.open_tree(s, now_ns))
    }

    /// Rotate the buckets for every period that ended by `now_ns`. A tree
    /// tracked before the rotation due at `r` falls off at the
    /// `PERIODS + 1`-th rotation after, which is not before `r` plus
    /// `PERIODS` periods, the timeout: rotations happen at or after their
    /// time, and their times are a period apart (or further, after idling).
    fn rotate(&mut self, now_ns: u64) {
        if now_ns < self.next_rotation_ns {
            return;
        }
        if self.next_rotation_ns == 0 {
            self.next_rotation_ns = now_ns.saturating_add(self.period_ns);
            return;
        }
        let mut turns = 0;
        while now_ns >= self.next_rotation_ns && turns <= PERIODS {
            self.rotate_once(now_ns);
            self.next_rotation_ns += self.period_ns;
            turns += 1;
        }
        if now_ns >= self.next_rotation_ns {
            // Idle for longer than the timeout: every bucket has fallen off.
            self.next_rotation_ns = now_ns.saturating_add(self.period_ns);
        }
    }

    fn rotate_once(&mut self, now_ns: u64) {
        if self.buckets.len() as u64 > PERIODS
            && let Some(oldest) = self.buckets.pop_back()
        {
            let mut due: Vec<Slot> = oldest.into_values().collect();
            let tick = self.tick;
            due.sort_unstable_by_key(|s| std::cmp::Reverse(tick.age(s.start, now_ns)));
            self.expired.extend(due);
        }
        self.buckets.push_front(IdMap::default());
    }

    /// Remove every open tree, and every expired one not yet taken, oldest
    /// start first (so a spout that replays failures replays them in order).
    pub(crate) fn drain_in_order(&mut self, now_ns: u64) -> Vec<OpenTree> {
        let mut all: Vec<Slot> = self.expired.drain(..).collect();
        for b in &mut self.buckets {
            all.extend(b.drain().map(|(_, s)| s));
        }
        let tick = self.tick;
        all.sort_unstable_by_key(|s| std::cmp::Reverse(tick.age(s.start, now_ns)));
        all.into_iter().map(|s| tick.open_tree(s, now_ns)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TIMEOUT: u64 = 4_000_000;
    const PERIOD: u64 = TIMEOUT / PERIODS;

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

    /// A returned start is the tracked one, to a tick (1 ns for this timeout).
    fn near(got: u64, start: u64) -> bool {
        got.abs_diff(start) < 1 << Tick::for_timeout(TIMEOUT).shift
    }

    proptest! {
        /// Against a plain model (root -> (msg id, start, last track or
        /// reset)): every operation gives the same answer; a tree expires
        /// only once the timeout has passed since it was tracked or last
        /// reset, and no later than a period after that.
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(op(), 0..400)) {
            let mut t = SpoutTrees::new(TIMEOUT);
            let mut model: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
            let mut now = 1_000_000u64;
            let mut next_msg = 0u64;
            for op in ops {
                match op {
                    Op::Track => {
                        next_msg += 1;
                        let root = next_msg;
                        t.track(root, next_msg, now, now);
                        model.insert(root, (next_msg, now, now));
                    }
                    Op::Complete(r) | Op::Fail(r) => {
                        let root = u64::from(r) % (next_msg + 1) + 1;
                        let got = t.complete(root, now);
                        let want = model.remove(&root);
                        prop_assert_eq!(got.map(|o| o.msg_id), want.map(|m| m.0));
                        if let (Some(g), Some(w)) = (got, want) {
                            prop_assert!(near(g.start_ns, w.1), "start {} for {}", g.start_ns, w.1);
                        }
                    }
                    Op::Reset(r) => {
                        let root = u64::from(r) % (next_msg + 1) + 1;
                        prop_assert_eq!(t.reset(root, now), model.contains_key(&root));
                        if let Some(m) = model.get_mut(&root) { m.2 = now; }
                    }
                    Op::Advance(dt) => {
                        now += u64::from(dt % 700) * 4_000;
                        while let Some(o) = t.expire(now) {
                            let m = model.remove(&o.msg_id);
                            prop_assert!(m.is_some(), "expired {} is not open", o.msg_id);
                            let (_, start, last) = m.unwrap_or_default();
                            prop_assert!(now >= last + TIMEOUT, "expired {} early", now - last);
                            prop_assert!(near(o.start_ns, start));
                        }
                        for (root, (_, _, last)) in &model {
                            prop_assert!(now < last + TIMEOUT + PERIOD, "{root} is overdue by {}", now - last);
                        }
                    }
                    Op::Drain => {
                        let got: Vec<u64> = t.drain_in_order(now).iter().map(|o| o.start_ns).collect();
                        let mut sorted = got.clone();
                        sorted.sort_unstable();
                        prop_assert_eq!(&got, &sorted, "drained oldest first");
                        prop_assert_eq!(got.len(), model.len());
                        model.clear();
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert!(t.buckets.len() as u64 <= PERIODS + 1);
            }
        }
    }

    #[test]
    fn completed_trees_leave_nothing_behind() {
        let mut t = SpoutTrees::new(30_000_000_000);
        for root in 1..=100_000u64 {
            t.track(root, root, root * 1000, root * 1000);
            assert!(t.complete(root, root * 1000 + 500).is_some());
        }
        assert!(t.is_empty());
        assert!(t.expired.is_empty());
    }

    #[test]
    fn a_slot_is_root_message_id_and_start_in_20_bytes() {
        assert_eq!(std::mem::size_of::<(Id, Slot)>(), 20);
    }

    #[test]
    fn trees_expire_oldest_first_between_the_timeout_and_a_period_more() {
        let mut t = SpoutTrees::new(TIMEOUT);
        let t0 = 10_000_000;
        // A start may be earlier than the track (a multilang spout's emit).
        t.track(1, 10, t0 - 2_000, t0);
        t.track(2, 20, t0 - 3_000, t0 + 100_000);
        t.track(3, 30, t0 - 1_000, t0 + 200_000);
        assert_eq!(t.expire(t0 + TIMEOUT), None, "not before the timeout");
        assert_eq!(t.len(), 3);
        let due: Vec<u64> = std::iter::from_fn(|| t.expire(t0 + TIMEOUT + PERIOD + 1))
            .map(|o| o.msg_id)
            .collect();
        assert_eq!(due, vec![20, 10, 30], "oldest start first");
        assert!(t.is_empty());
    }

    #[test]
    fn a_reset_moves_the_timeout() {
        let mut t = SpoutTrees::new(TIMEOUT);
        t.track(7, 70, 0, 1);
        assert!(t.reset(7, 3 * PERIOD));
        assert_eq!(
            t.expire(TIMEOUT + PERIOD + 1),
            None,
            "the reset restarted it"
        );
        assert_eq!(
            t.expire(3 * PERIOD + TIMEOUT + PERIOD).map(|o| o.msg_id),
            Some(70)
        );
        assert!(!t.reset(7, 9 * PERIOD), "an expired tree is not open");
    }

    #[test]
    fn an_idle_spout_expires_everything_at_once() {
        let mut t = SpoutTrees::new(TIMEOUT);
        for root in 1..=10u64 {
            t.track(root, root, 5, 5);
        }
        let due = std::iter::from_fn(|| t.expire(1_000 * TIMEOUT)).count();
        assert_eq!(due, 10);
        // And the buckets rotate on schedule after the gap.
        t.track(11, 11, 1_000 * TIMEOUT, 1_000 * TIMEOUT);
        assert_eq!(t.expire(1_001 * TIMEOUT), None);
        assert_eq!(
            t.expire(1_001 * TIMEOUT + 2 * PERIOD).map(|o| o.msg_id),
            Some(11)
        );
    }

    #[test]
    fn a_clock_read_before_the_track_gives_age_zero() {
        let mut t = SpoutTrees::new(TIMEOUT);
        t.track(1, 1, 50_000, 50_000);
        assert_eq!(t.complete(1, 49_000).map(|o| o.start_ns), Some(49_000));
    }

    #[test]
    fn the_start_survives_the_tick_counter_wrapping() {
        for timeout_s in [1u64, 30, 86_400] {
            let timeout = timeout_s * 1_000_000_000;
            let tick = Tick::for_timeout(timeout);
            let span = 1u64 << (32 + tick.shift);
            assert!(span >= 4 * timeout && span / 2 < 4 * timeout.max(1 << 31));
            let mut t = SpoutTrees::new(timeout);
            // A tree that starts just before the counter wraps, and is open for
            // a timeout: its start comes back to a tick.
            let start = span - 5_000;
            t.track(1, 1, start, start);
            let got = t.complete(1, start + timeout).map(|o| o.start_ns);
            assert!(
                got.is_some_and(|g| g.abs_diff(start) < 1 << tick.shift),
                "{got:?} for {start}, timeout {timeout_s} s"
            );
        }
        assert_eq!(Tick::for_timeout(30_000_000_000).shift, 5);
    }
}
