//! Classic Storm example components, registered under portable names.
//!
//! | name | kind | outputs | config |
//! |---|---|---|---|
//! | `RandomSentenceSpout` | spout | `sentence` | `rate` (roots/s per task, 0 = flat out), `limit` (roots per task, 0 = endless) |
//! | `TestWordSpout` | spout | `word` | `rate`, `limit` |
//! | `SplitSentence` | bolt | `word` | splits field `value` (a `KafkaSpout` record) when the input has one, else field 0 |
//! | `WordCount` | bolt | `word`, `count` | |
//! | `ExclamationBolt` | bolt | `word` | |
//! | `RollingCount` | bolt | `obj`, `count` | `window_seconds` (default 9); needs `tickFrequencySeconds` |
//! | `TopN` | bolt | `rankings` | `n` (default 10); needs `tickFrequencySeconds` |
//! | `Flaky` | bolt | `value` (pass-through of field `value` when the input has one, else field 0) | `fail_ratio`, `drop_ratio`, `sleep_ms`, `panic_after` + `panic_marker` (+ `panic_slot`), `error_every` |
//!
//! The binary also has the engine's built-in `KafkaSpout` and `KafkaBolt`
//! (see `squall_runtime::kafka` and docs/kafka.md).

pub mod bench;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use squall_runtime::tuple::{KeyHasher, SmolStr};
use squall_runtime::{
    Bolt, BoltCollector, ComponentError, Outputs, Registry, Spout, SpoutCollector, TopologyContext,
    Tuple, Value, values,
};

/// Storm's sentences.
pub const SENTENCES: [&str; 5] = [
    "the cow jumped over the moon",
    "an apple a day keeps the doctor away",
    "four score and seven years ago",
    "snow white and the seven dwarfs",
    "i am at two with nature",
];

/// Storm's TestWordSpout words.
pub const WORDS: [&str; 5] = ["nathan", "mike", "jackson", "golda", "bertels"];

/// Every example component.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.spout(
        "RandomSentenceSpout",
        Outputs::fields(&["sentence"]),
        // Static strings: a clone copies a pointer instead of counting a
        // reference that the spout's and split's cores would both write.
        |ctx| ReplayingSpout::new(ctx, SENTENCES.map(SmolStr::new_static).to_vec()),
    )
    .spout("TestWordSpout", Outputs::fields(&["word"]), |ctx| {
        ReplayingSpout::new(ctx, WORDS.map(SmolStr::new_static).to_vec())
    })
    .bolt("SplitSentence", Outputs::fields(&["word"]), |_| {
        Ok(SplitSentence)
    })
    .bolt("WordCount", Outputs::fields(&["word", "count"]), |_| {
        Ok(WordCount::default())
    })
    .bolt("ExclamationBolt", Outputs::fields(&["word"]), |_| {
        Ok(ExclamationBolt)
    })
    .bolt(
        "RollingCount",
        Outputs::fields(&["obj", "count"]),
        RollingCount::new,
    )
    .bolt("TopN", Outputs::fields(&["rankings"]), TopN::new)
    .bolt("Flaky", Outputs::fields(&["value"]), Flaky::new);
    r
}

/// A tiny deterministic generator for example randomness (xorshift64).
#[derive(Debug, Clone)]
pub struct Rand(u64);

impl Rand {
    pub fn new(seed: u64) -> Self {
        Rand(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A spout that emits random items from a list at a rate, tracks each with a
/// message id, and replays a failed id with the same item (at-least-once).
///
/// With a `rate`, each root has a scheduled time and its complete latency counts
/// from that schedule, as in Storm's loadgen: a spout that falls behind shows it
/// as latency instead of hiding it (no coordinated omission).
pub struct ReplayingSpout {
    items: Vec<SmolStr>,
    rand: Rand,
    /// Nanoseconds between roots (0 = as fast as possible).
    interval_ns: u64,
    next_at_ns: u64,
    limit: u64,
    /// New roots emitted so far (message ids are 0..emitted).
    emitted: u64,
    in_flight: FastMap<u64, u32>,
    replay: VecDeque<u64>,
}

/// The examples' maps: keyed by words and ids from tuples, so hashed with
/// the runtime's [`KeyHasher`] rather than SipHash (as Storm's Java bolts
/// hash with `String.hashCode`).
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

impl ReplayingSpout {
    fn new(ctx: &TopologyContext, items: Vec<SmolStr>) -> Result<Self, ComponentError> {
        let rate = ctx.config_f64("rate", 0.0)?;
        if rate < 0.0 {
            return Err(ComponentError::new(format!(
                "{}: config 'rate' must be >= 0",
                ctx.component_id
            )));
        }
        let limit = ctx.config_u64("limit", 0)?;
        Ok(ReplayingSpout {
            items,
            rand: Rand::new(u64::from(ctx.task_id) * 7 + 1),
            interval_ns: if rate > 0.0 { (1e9 / rate) as u64 } else { 0 },
            next_at_ns: 0,
            limit,
            emitted: 0,
            in_flight: FastMap::default(),
            replay: VecDeque::new(),
        })
    }

    fn send(&mut self, out: &mut SpoutCollector<'_>, id: u64, item: u32, scheduled: Option<u64>) {
        let v = values![self.items[item as usize].clone()];
        self.in_flight.insert(id, item);
        match scheduled {
            Some(at) => out.emit_scheduled(v, id, at),
            None => out.emit(v, Some(id)),
        };
    }
}

impl Spout for ReplayingSpout {
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>) {
        // Replays first, at once: they are already late.
        if let Some(id) = self.replay.pop_front() {
            if let Some(&item) = self.in_flight.get(&id) {
                self.send(out, id, item, None);
            }
            return;
        }
        if self.limit > 0 && self.emitted >= self.limit {
            return;
        }
        let scheduled = if self.interval_ns > 0 {
            let now = squall_runtime::metrics::now_ns();
            if self.next_at_ns == 0 {
                self.next_at_ns = now;
            }
            if now < self.next_at_ns {
                return;
            }
            let at = self.next_at_ns;
            self.next_at_ns += self.interval_ns;
            Some(at)
        } else {
            None
        };
        let id = self.emitted;
        self.emitted += 1;
        let item = (self.rand.next_u64() % self.items.len() as u64) as u32;
        self.send(out, id, item, scheduled);
    }

    fn ack(&mut self, msg_id: u64) {
        self.in_flight.remove(&msg_id);
    }

    fn fail(&mut self, msg_id: u64) {
        if self.in_flight.contains_key(&msg_id) {
            self.replay.push_back(msg_id);
        }
    }

    fn is_done(&self) -> bool {
        self.limit > 0
            && self.emitted >= self.limit
            && self.replay.is_empty()
            && self.in_flight.is_empty()
    }
}

/// The field a pass-through bolt reads: `value` (a Kafka record's payload, or
/// Flaky's output) when the input declares it, else the first field.
fn payload(input: &Tuple) -> Option<&Value> {
    input.get_by_field("value").or_else(|| input.get(0))
}

/// Splits a sentence (field `value` or field 0, see [`payload`]) into words,
/// anchored to the sentence.
pub struct SplitSentence;

impl Bolt for SplitSentence {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        if let Some(sentence) = payload(&input).and_then(Value::as_str) {
            for word in sentence.split_whitespace() {
                out.emit(&[&input], values![word]);
            }
        }
        out.ack(&input);
    }
}

/// Counts words (field 0) and emits the running count.
#[derive(Default)]
pub struct WordCount {
    counts: FastMap<SmolStr, u64>,
}

impl Bolt for WordCount {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        if let Some(Value::Str(word)) = input.get(0) {
            let n = match self.counts.get_mut(word) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None => {
                    self.counts.insert(word.clone(), 1);
                    1
                }
            };
            out.emit(&[&input], values![word.clone(), n]);
        }
        out.ack(&input);
    }
}

/// Appends "!!!" to field 0.
pub struct ExclamationBolt;

impl Bolt for ExclamationBolt {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        let word = input.get(0).map(ToString::to_string).unwrap_or_default();
        out.emit(&[&input], values![format!("{word}!!!")]);
        out.ack(&input);
    }
}

/// Counts objects (field 0) over a sliding window of `window_seconds`, emitting
/// every object's windowed count on each tick (Storm's RollingCountBolt).
pub struct RollingCount {
    /// One slot of counts per tick; the window is their sum.
    slots: VecDeque<HashMap<SmolStr, u64>>,
    window_slots: usize,
}

impl RollingCount {
    fn new(ctx: &TopologyContext) -> Result<Self, ComponentError> {
        let window = ctx.config_u64("window_seconds", 9)?.max(1);
        let tick = ctx.config_u64("emit_seconds", 3)?.max(1);
        let window_slots = window.div_ceil(tick) as usize;
        Ok(RollingCount {
            slots: VecDeque::from([HashMap::new()]),
            window_slots,
        })
    }
}

impl Bolt for RollingCount {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        if input.is_tick() {
            let mut totals: HashMap<&SmolStr, u64> = HashMap::new();
            for slot in &self.slots {
                for (k, v) in slot {
                    *totals.entry(k).or_default() += v;
                }
            }
            let mut rows: Vec<(SmolStr, u64)> =
                totals.into_iter().map(|(k, v)| (k.clone(), v)).collect();
            rows.sort();
            for (obj, count) in rows {
                out.emit(&[], values![obj, count]);
            }
            self.slots.push_back(HashMap::new());
            while self.slots.len() > self.window_slots {
                self.slots.pop_front();
            }
            return;
        }
        if let Some(Value::Str(obj)) = input.get(0)
            && let Some(slot) = self.slots.back_mut()
        {
            *slot.entry(obj.clone()).or_default() += 1;
        }
        out.ack(&input);
    }
}

/// Keeps the top `n` objects by count; on each tick emits the ranking as JSON
/// (Storm's IntermediateRankingsBolt / TotalRankingsBolt: use it twice).
pub struct TopN {
    n: usize,
    counts: HashMap<SmolStr, u64>,
}

impl TopN {
    fn new(ctx: &TopologyContext) -> Result<Self, ComponentError> {
        Ok(TopN {
            n: ctx.config_u64("n", 10)?.max(1) as usize,
            counts: HashMap::new(),
        })
    }

    /// The current ranking, highest first.
    pub fn ranking(&self) -> Vec<(SmolStr, u64)> {
        let mut rows: Vec<(SmolStr, u64)> =
            self.counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(self.n);
        rows
    }
}

impl Bolt for TopN {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        if input.is_tick() {
            let ranking = self.ranking();
            let json = serde_json::to_string(
                &ranking
                    .iter()
                    .map(|(k, v)| (k.as_str(), *v))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default();
            out.emit(&[], values![json]);
            self.counts
                .retain(|k, _| ranking.iter().any(|(r, _)| r == k));
            return;
        }
        match (input.get(0), input.get(1)) {
            // An (obj, count) update from a RollingCount or WordCount.
            (Some(Value::Str(obj)), Some(Value::Int(count))) => {
                self.counts.insert(obj.clone(), *count as u64);
            }
            // A ranking from an upstream TopN: merge it.
            (Some(Value::Str(json)), None) => {
                if let Ok(rows) = serde_json::from_str::<Vec<(String, u64)>>(json) {
                    for (k, v) in rows {
                        self.counts.insert(SmolStr::from(k), v);
                    }
                }
            }
            _ => {}
        }
        out.ack(&input);
    }
}

/// A pass-through bolt for fault injection: fails a share of tuples, drops a share
/// (never acks them, so their trees time out), and can sleep to act slow. It
/// passes on one value, as it declares one field (`value`): the input's field
/// `value` when it has one (a `KafkaSpout` record's payload), else its first.
pub struct Flaky {
    fail_ratio: f64,
    drop_ratio: f64,
    sleep: std::time::Duration,
    rand: Rand,
    /// Panic at this input tuple, once: only while `panic_marker` (a file) does
    /// not exist; it is created first, so a restarted worker does not panic again.
    /// With `panic_slot`, only the tasks in that worker slot panic.
    panic_after: Option<(u64, std::path::PathBuf)>,
    /// Report an error (Storm's `reportError`) at every this many input
    /// tuples, and go on; 0: never.
    error_every: u64,
    seen: u64,
}

impl Flaky {
    fn new(ctx: &TopologyContext) -> Result<Self, ComponentError> {
        let ratio = |key| {
            let r = ctx.config_f64(key, 0.0)?;
            if (0.0..=1.0).contains(&r) {
                Ok(r)
            } else {
                Err(ComponentError::new(format!(
                    "{}: config '{key}' must be within 0..1, got {r}",
                    ctx.component_id
                )))
            }
        };
        let panic_after = ctx.config_u64("panic_after", 0)?;
        let marker = ctx.config_str("panic_marker", "")?;
        // Without `panic_slot`, every slot may panic.
        let here = u64::from(ctx.slot);
        let in_slot = ctx.config_u64("panic_slot", here)? == here;
        Ok(Flaky {
            fail_ratio: ratio("fail_ratio")?,
            drop_ratio: ratio("drop_ratio")?,
            sleep: std::time::Duration::from_millis(ctx.config_u64("sleep_ms", 0)?),
            rand: Rand::new(u64::from(ctx.task_id) * 31 + 5),
            panic_after: match (panic_after, marker.is_empty()) {
                (0, _) => None,
                (_, true) => {
                    return Err(ComponentError::new(format!(
                        "{}: config 'panic_after' needs 'panic_marker', a file that says the panic happened",
                        ctx.component_id
                    )));
                }
                (n, false) => in_slot.then(|| (n, std::path::PathBuf::from(marker))),
            },
            error_every: ctx.config_u64("error_every", 0)?,
            seen: 0,
        })
    }
}

impl Bolt for Flaky {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        self.seen += 1;
        if let Some((n, marker)) = &self.panic_after
            && self.seen >= *n
            && std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker)
                .is_ok()
        {
            panic!("Flaky panics after {n} tuples, as configured");
        }
        if self.error_every > 0 && self.seen.is_multiple_of(self.error_every) {
            out.report_error(&format!(
                "Flaky reports an error at tuple {}, as configured",
                self.seen
            ));
        }
        let dice = self.rand.unit();
        if dice < self.fail_ratio {
            out.fail(&input);
        } else if dice < self.fail_ratio + self.drop_ratio {
            // Dropped: never acked, the tree times out at its spout.
        } else {
            let value = payload(&input).cloned().unwrap_or(Value::Null);
            out.emit(&[&input], values![value]);
            out.ack(&input);
        }
    }
}
