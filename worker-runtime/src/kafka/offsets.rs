//! The pure bookkeeping of a Kafka spout: which offset of a partition may be
//! committed (Storm's `OffsetManager`) and when a failed record is tried again
//! (Storm's `KafkaSpoutRetryExponentialBackoff`). No I/O, unit-tested.

use std::collections::BTreeSet;
use std::time::Duration;

/// The offsets of one partition that this task fetched and has not seen acked.
///
/// Kafka commits a position: committing `c` says every record before `c` is done.
/// So the commit point is the lowest offset still open (emitted and not acked, or
/// waiting for a retry); with none open, the position after the last fetched
/// record. Offsets that were never fetched (compacted away, transaction markers)
/// do not hold the commit back.
#[derive(Debug, Clone, Default)]
pub struct PartitionOffsets {
    open: BTreeSet<i64>,
    /// One past the highest offset fetched; `None` before the first record.
    fetched_to: Option<i64>,
    /// The offset last committed (or found committed at start).
    committed: Option<i64>,
}

impl PartitionOffsets {
    /// A partition whose group commit (if any) stands at `committed`.
    pub fn new(committed: Option<i64>) -> Self {
        PartitionOffsets {
            committed,
            ..Default::default()
        }
    }

    /// A record was fetched (and is about to be emitted).
    pub fn fetched(&mut self, offset: i64) {
        self.open.insert(offset);
        self.fetched_to = Some(self.fetched_to.map_or(offset + 1, |f| f.max(offset + 1)));
    }

    /// A record is done: acked, or given up after its last retry.
    pub fn done(&mut self, offset: i64) {
        self.open.remove(&offset);
    }

    /// Records fetched and not yet done.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// The offset to commit now, if it moved past the last commit.
    pub fn to_commit(&self) -> Option<i64> {
        let point = self.open.first().copied().or(self.fetched_to)?;
        match self.committed {
            Some(c) if c >= point => None,
            _ => Some(point),
        }
    }

    /// The broker accepted a commit of `offset`.
    pub fn committed(&mut self, offset: i64) {
        self.committed = Some(self.committed.map_or(offset, |c| c.max(offset)));
    }

    /// The last commit known to this task.
    pub fn last_committed(&self) -> Option<i64> {
        self.committed
    }
}

/// Storm's `KafkaSpoutRetryExponentialBackoff`: the first retry after
/// `initial_delay`, the n-th after `delay_period * 2^(n-1)`, never more than
/// `max_delay`, and at most `max_retries` retries (then the record is given up and
/// counted as done, as Storm acks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// The wait before the first retry.
    pub initial_delay: Duration,
    /// The base of the doubling waits from the second retry on.
    pub delay_period: Duration,
    /// The longest wait before any retry.
    pub max_delay: Duration,
    /// Retries before the record is given up.
    pub max_retries: u32,
}

impl Default for RetryBackoff {
    /// Storm's defaults: 0 ms, then 2 ms doubling, at most 10 s, retries without end.
    fn default() -> Self {
        RetryBackoff {
            initial_delay: Duration::ZERO,
            delay_period: Duration::from_millis(2),
            max_delay: Duration::from_secs(10),
            max_retries: u32::MAX,
        }
    }
}

impl RetryBackoff {
    /// The wait before retry number `fails` (1 = the first retry), or `None` when
    /// the record has used up its retries.
    pub fn delay(&self, fails: u32) -> Option<Duration> {
        if fails == 0 || fails > self.max_retries {
            return None;
        }
        let d = if fails == 1 {
            self.initial_delay
        } else {
            let factor = 1u32.checked_shl(fails - 1).unwrap_or(u32::MAX);
            self.delay_period.saturating_mul(factor)
        };
        Some(d.min(self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_waits_for_every_earlier_offset() {
        let mut p = PartitionOffsets::new(None);
        assert_eq!(p.to_commit(), None, "nothing fetched, nothing to commit");
        for o in 10..15 {
            p.fetched(o);
        }
        p.done(11);
        p.done(12);
        assert_eq!(p.to_commit(), Some(10), "10 is open: nothing past it");
        p.done(10);
        assert_eq!(p.to_commit(), Some(13));
        p.committed(13);
        assert_eq!(p.to_commit(), None, "already committed");
        p.done(14);
        assert_eq!(p.to_commit(), None, "13 still open: the commit stays at 13");
        p.done(13);
        assert_eq!(
            p.to_commit(),
            Some(15),
            "all done: one past the last fetched"
        );
        assert_eq!(p.open(), 0);
    }

    #[test]
    fn gaps_in_the_log_do_not_hold_the_commit() {
        let mut p = PartitionOffsets::new(Some(0));
        p.fetched(5); // 0..5 compacted away
        p.fetched(9);
        p.done(5);
        assert_eq!(p.to_commit(), Some(9));
        p.done(9);
        assert_eq!(p.to_commit(), Some(10));
    }

    #[test]
    fn an_older_commit_never_moves_it_back() {
        let mut p = PartitionOffsets::new(Some(100));
        p.fetched(100);
        assert_eq!(p.to_commit(), None);
        p.done(100);
        assert_eq!(p.to_commit(), Some(101));
        p.committed(101);
        p.committed(50);
        assert_eq!(p.last_committed(), Some(101));
    }

    #[test]
    fn backoff_is_storms() {
        let b = RetryBackoff {
            initial_delay: Duration::from_millis(100),
            delay_period: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
            max_retries: 8,
        };
        assert_eq!(b.delay(0), None);
        assert_eq!(b.delay(1), Some(Duration::from_millis(100)));
        assert_eq!(b.delay(2), Some(Duration::from_millis(20)));
        assert_eq!(b.delay(3), Some(Duration::from_millis(40)));
        assert_eq!(b.delay(6), Some(Duration::from_millis(320)));
        assert_eq!(b.delay(7), Some(Duration::from_millis(500)), "capped");
        assert_eq!(b.delay(8), Some(Duration::from_millis(500)));
        assert_eq!(b.delay(9), None, "retries used up");
        let d = RetryBackoff::default();
        assert_eq!(d.delay(40), Some(Duration::from_secs(10)), "no overflow");
        assert_eq!(d.delay(u32::MAX), Some(Duration::from_secs(10)));
    }
}
