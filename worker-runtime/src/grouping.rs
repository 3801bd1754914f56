//! Stream groupings: which target tasks get a tuple (DESIGN §4).
//!
//! A [`Grouper`] belongs to one emitting executor and one subscription, so its
//! state (round-robin cursor, partial-key load estimates) needs no locking.

use smallvec::SmallVec;
use squall_api::{GroupingType, TaskId};

use crate::tuple::{Value, mix};

/// Target tasks for one tuple; almost always one.
pub type Targets = SmallVec<[TaskId; 4]>;

const SEED_A: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_B: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The stable hash of the selected fields of a tuple.
pub fn fields_hash(values: &[Value], key: &[usize], seed: u64) -> u64 {
    key.iter().fold(seed, |h, &i| {
        values.get(i).unwrap_or(&Value::Null).stable_hash(h)
    })
}

/// Chooses target tasks for one subscription.
#[derive(Debug, Clone)]
pub struct Grouper {
    kind: GroupingType,
    /// The subscribing component's tasks, sorted.
    tasks: Vec<TaskId>,
    /// Those of `tasks` in the emitter's own worker (for LOCAL_OR_SHUFFLE).
    local: Vec<TaskId>,
    /// Indexes of the grouping fields in the emitted stream.
    key: Vec<usize>,
    cursor: usize,
    /// Tuples sent to each task so far (PARTIAL_KEY's load estimate).
    load: Vec<u64>,
}

impl Grouper {
    /// `start` spreads emitters over different starting points of the round-robin.
    pub fn new(
        kind: GroupingType,
        mut tasks: Vec<TaskId>,
        local: Vec<TaskId>,
        key: Vec<usize>,
        start: u64,
    ) -> Self {
        tasks.sort_unstable();
        let n = tasks.len().max(1);
        let load = vec![0; tasks.len()];
        Grouper {
            kind,
            tasks,
            local,
            key,
            cursor: (start % n as u64) as usize,
            load,
        }
    }

    pub fn kind(&self) -> GroupingType {
        self.kind
    }

    pub fn tasks(&self) -> &[TaskId] {
        &self.tasks
    }

    /// Append the target tasks for `values` to `out`. DIRECT subscriptions get
    /// nothing here: they only receive `emit_direct`.
    pub fn choose(&mut self, values: &[Value], out: &mut Targets) {
        if self.tasks.is_empty() {
            return;
        }
        match self.kind {
            GroupingType::Shuffle | GroupingType::None => out.push(self.next_round_robin()),
            GroupingType::LocalOrShuffle => {
                if self.local.is_empty() {
                    out.push(self.next_round_robin());
                } else {
                    self.cursor = (self.cursor + 1) % self.local.len();
                    out.push(self.local[self.cursor]);
                }
            }
            GroupingType::Fields => {
                let h = fields_hash(values, &self.key, SEED_A);
                out.push(self.tasks[(h % self.tasks.len() as u64) as usize]);
            }
            GroupingType::PartialKey => {
                let n = self.tasks.len() as u64;
                let a = (fields_hash(values, &self.key, SEED_A) % n) as usize;
                let b = (mix(fields_hash(values, &self.key, SEED_B), SEED_A) % n) as usize;
                let pick = if self.load[b] < self.load[a] { b } else { a };
                self.load[pick] += 1;
                out.push(self.tasks[pick]);
            }
            GroupingType::All => out.extend_from_slice(&self.tasks),
            GroupingType::Global => out.push(self.tasks[0]),
            GroupingType::Direct => {}
        }
    }

    fn next_round_robin(&mut self) -> TaskId {
        self.cursor += 1;
        if self.cursor >= self.tasks.len() {
            self.cursor = 0;
        }
        self.tasks[self.cursor]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn word(w: &str) -> Vec<Value> {
        vec![Value::from(w), Value::Int(1)]
    }

    proptest! {
        #[test]
        fn fields_grouping_is_a_function_of_the_key(words in proptest::collection::vec("[a-z]{1,12}", 1..50), n in 1u32..16, start in any::<u64>()) {
            let tasks: Vec<TaskId> = (10..10 + n).collect();
            let mut g1 = Grouper::new(GroupingType::Fields, tasks.clone(), vec![], vec![0], start);
            let mut g2 = Grouper::new(GroupingType::Fields, tasks.iter().rev().copied().collect(), vec![], vec![0], start ^ 7);
            for w in &words {
                let (mut a, mut b) = (Targets::new(), Targets::new());
                g1.choose(&word(w), &mut a);
                g2.choose(&word(w), &mut b);
                prop_assert_eq!(a.len(), 1);
                prop_assert_eq!(&a, &b, "same key, same task, whatever the emitter");
                prop_assert!(tasks.contains(&a[0]));
            }
        }

        #[test]
        fn shuffle_is_even(n in 1u32..12, rounds in 1usize..20, start in any::<u64>()) {
            let tasks: Vec<TaskId> = (1..=n).collect();
            let mut g = Grouper::new(GroupingType::Shuffle, tasks, vec![], vec![], start);
            let mut count = vec![0usize; n as usize + 1];
            for _ in 0..rounds * n as usize {
                let mut t = Targets::new();
                g.choose(&[], &mut t);
                prop_assert_eq!(t.len(), 1);
                count[t[0] as usize] += 1;
            }
            prop_assert!(count[1..].iter().all(|&c| c == rounds), "{:?}", count);
        }

        #[test]
        fn partial_key_uses_one_of_two_tasks_per_key_and_balances(n in 2u32..10, keys in proptest::collection::vec("[a-z]{1,6}", 1..8)) {
            let tasks: Vec<TaskId> = (1..=n).collect();
            let mut g = Grouper::new(GroupingType::PartialKey, tasks, vec![], vec![0], 0);
            let mut seen: std::collections::HashMap<String, std::collections::BTreeSet<TaskId>> = Default::default();
            for _ in 0..50 {
                for k in &keys {
                    let mut t = Targets::new();
                    g.choose(&word(k), &mut t);
                    prop_assert_eq!(t.len(), 1);
                    seen.entry(k.clone()).or_default().insert(t[0]);
                }
            }
            prop_assert!(seen.values().all(|s| s.len() <= 2), "a key goes to at most two tasks");
        }
    }

    #[test]
    fn all_global_direct_and_local_or_shuffle() {
        let tasks = vec![7, 3, 5];
        let mut all = Grouper::new(GroupingType::All, tasks.clone(), vec![], vec![], 0);
        let mut t = Targets::new();
        all.choose(&[], &mut t);
        assert_eq!(t.as_slice(), &[3, 5, 7]);

        let mut global = Grouper::new(GroupingType::Global, tasks.clone(), vec![], vec![], 9);
        for _ in 0..5 {
            let mut t = Targets::new();
            global.choose(&[], &mut t);
            assert_eq!(t.as_slice(), &[3], "global always picks the lowest task");
        }

        let mut direct = Grouper::new(GroupingType::Direct, tasks.clone(), vec![], vec![], 0);
        let mut t = Targets::new();
        direct.choose(&[], &mut t);
        assert!(t.is_empty(), "direct subscribers only get emit_direct");

        let mut local = Grouper::new(
            GroupingType::LocalOrShuffle,
            tasks.clone(),
            vec![5],
            vec![],
            0,
        );
        for _ in 0..5 {
            let mut t = Targets::new();
            local.choose(&[], &mut t);
            assert_eq!(t.as_slice(), &[5], "a local task is preferred");
        }
        let mut remote_only = Grouper::new(GroupingType::LocalOrShuffle, tasks, vec![], vec![], 0);
        let mut hit = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let mut t = Targets::new();
            remote_only.choose(&[], &mut t);
            hit.insert(t[0]);
        }
        assert_eq!(hit.len(), 3, "with no local task it shuffles over all");
    }
}
