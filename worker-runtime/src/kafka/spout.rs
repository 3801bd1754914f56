//! `KafkaSpout`: records of a topic as tuples, at least once (storm-kafka-client's
//! `KafkaSpout` with manual partition assignment).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use smol_str::SmolStr;

use super::config::{
    FirstOffset, LogContext, client_config, config_error, config_ms, required_str,
};
use super::offsets::{PartitionOffsets, RetryBackoff};
use crate::collector::SpoutCollector;
use crate::component::{ComponentError, Spout, TopologyContext};
use crate::tuple::{Value, Values};

/// How long a metadata or committed-offsets request may hold up `next_tuple`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `close` waits for its last commit.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// The longest wait between tries to reach the broker for the partitions.
const MAX_ASSIGN_BACKOFF: Duration = Duration::from_secs(30);

/// Reads a topic's partitions `p` with `p % tasks == task_index` (manual
/// assignment: stable across restarts, no group rebalances), emits each record as
/// `[topic, partition, offset, key, value]` with a message id, and commits to the
/// group coordinator, every `offsetCommitPeriodMs`, the offset below which every
/// fetched record of the partition is acked. A failed record is emitted again after
/// an exponential backoff ([`RetryBackoff`]); the records it holds in memory (in
/// flight or waiting for a retry) are bounded by `maxUncommittedOffsets`.
///
/// Key and value are strings when they are UTF-8, bytes otherwise, null when absent.
///
/// # Config
///
/// `bootstrapServers` and `topic` (required), `groupId` (default: the topology
/// name), `firstOffset` ([`FirstOffset`], default `UNCOMMITTED_EARLIEST`),
/// `offsetCommitPeriodMs` (1000), `maxUncommittedOffsets` (10000),
/// `partitionRefreshPeriodMs` (10000), `retryInitialDelayMs` (0),
/// `retryDelayPeriodMs` (2), `retryMaxDelayMs` (10000), `maxRetries` (unbounded),
/// `kafkaProperties` (librdkafka properties, laid over the rest).
pub struct KafkaSpout {
    component: String,
    task: u32,
    task_index: u32,
    tasks: u32,
    topic: String,
    topic_value: Value,
    first: FirstOffset,
    commit_metadata: String,
    topology: String,
    /// `None` once closed: the consumer is dropped on a thread of its own (see `close`).
    consumer: Option<BaseConsumer<SpoutContext>>,
    partitions: BTreeMap<i32, PartitionOffsets>,
    /// By message id: records emitted and not acked, or waiting for a retry.
    records: HashMap<u64, Record>,
    /// (due, message id), earliest first.
    retries: BTreeSet<(Instant, u64)>,
    next_id: u64,
    max_records: usize,
    backoff: RetryBackoff,
    commit_period: Duration,
    next_commit: Instant,
    refresh_period: Duration,
    next_assign: Instant,
    assign_backoff: Duration,
    poll_errors: u64,
}

struct Record {
    partition: i32,
    offset: i64,
    fails: u32,
    values: Values,
}

/// librdkafka callbacks of the spout's consumer. Commit results land here during
/// `poll` (on the spout's own thread) and are applied right after.
struct SpoutContext {
    log: LogContext,
    committed: Mutex<Vec<(i32, i64)>>,
}

impl ClientContext for SpoutContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ConsumerContext for SpoutContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                if let Ok(mut c) = self.committed.lock() {
                    for e in offsets.elements() {
                        if let (Ok(()), Offset::Offset(o)) = (e.error(), e.offset()) {
                            c.push((e.partition(), o));
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(
                component = %self.log.component,
                task = self.log.task,
                %error,
                "kafka offset commit failed; it is tried again"
            ),
        }
    }
}

impl KafkaSpout {
    /// Build a task's spout from its config.
    ///
    /// # Errors
    ///
    /// A [`ComponentError`] naming the component for a missing `bootstrapServers`
    /// or `topic`, an unknown `firstOffset`, a malformed number, or a librdkafka
    /// property it refuses. An unreachable broker is no error here: the spout
    /// logs it and keeps trying.
    pub fn new(ctx: &TopologyContext) -> Result<Self, ComponentError> {
        let topic = required_str(ctx, "topic")?;
        let first: FirstOffset = ctx
            .config_str("firstOffset", "UNCOMMITTED_EARLIEST")?
            .parse()
            .map_err(|e| config_error(ctx, e))?;
        let group = ctx.config_str("groupId", &ctx.topology)?;
        let max_retries = match ctx.config_u64("maxRetries", u64::from(u32::MAX))? {
            n if n > u64::from(u32::MAX) => u32::MAX,
            n => n as u32,
        };
        let backoff = RetryBackoff {
            initial_delay: config_ms(ctx, "retryInitialDelayMs", 0)?,
            delay_period: config_ms(ctx, "retryDelayPeriodMs", 2)?,
            max_delay: config_ms(ctx, "retryMaxDelayMs", 10_000)?,
            max_retries,
        };
        let max_records = ctx.config_u64("maxUncommittedOffsets", 10_000)?.max(1) as usize;
        let reset = match first {
            FirstOffset::Earliest | FirstOffset::UncommittedEarliest => "earliest",
            FirstOffset::Latest | FirstOffset::UncommittedLatest => "latest",
        };
        let cc = client_config(
            ctx,
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "false"),
                // A committed offset that retention removed: start where firstOffset says.
                ("auto.offset.reset", reset),
                // Bound what librdkafka prefetches per partition.
                ("queued.max.messages.kbytes", "16384"),
            ],
        )?;
        let context = SpoutContext {
            log: LogContext {
                component: ctx.component_id.clone(),
                task: ctx.task_id,
            },
            committed: Mutex::new(Vec::new()),
        };
        let consumer: BaseConsumer<SpoutContext> = cc
            .create_with_context(context)
            .map_err(|e| config_error(ctx, format!("kafka consumer: {e}")))?;
        let commit_metadata = serde_json::json!({
            "topologyId": ctx.topology,
            "taskId": ctx.task_id,
        })
        .to_string();
        let now = Instant::now();
        Ok(KafkaSpout {
            component: ctx.component_id.clone(),
            task: ctx.task_id,
            task_index: ctx.task_index,
            tasks: ctx.component_tasks.max(1),
            topic_value: Value::Str(SmolStr::new(&topic)),
            topic,
            first,
            commit_metadata,
            topology: ctx.topology.clone(),
            consumer: Some(consumer),
            partitions: BTreeMap::new(),
            records: HashMap::new(),
            retries: BTreeSet::new(),
            next_id: 0,
            max_records,
            backoff,
            commit_period: config_ms(ctx, "offsetCommitPeriodMs", 1000)?,
            next_commit: now,
            refresh_period: config_ms(ctx, "partitionRefreshPeriodMs", 10_000)?
                .max(Duration::from_millis(100)),
            next_assign: now,
            assign_backoff: Duration::from_millis(500),
            poll_errors: 0,
        })
    }

    /// Whether a committed offset's metadata says this topology committed it.
    fn committed_by_us(&self, metadata: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(metadata)
            .ok()
            .and_then(|v| v.get("topologyId")?.as_str().map(|t| t == self.topology))
            .unwrap_or(false)
    }

    /// Find this task's partitions (new ones too) and start reading them; on an
    /// error, log it and try again later with a growing pause.
    fn ensure_assigned(&mut self, now: Instant) {
        if now < self.next_assign {
            return;
        }
        match self.assign_new_partitions() {
            Ok(()) => {
                self.assign_backoff = Duration::from_millis(500);
                self.next_assign = now + self.refresh_period;
            }
            Err(error) => {
                tracing::warn!(
                    component = %self.component,
                    task = self.task,
                    topic = %self.topic,
                    retry_in = ?self.assign_backoff,
                    "kafka spout cannot read its partitions yet: {error}"
                );
                self.next_assign = now + self.assign_backoff;
                self.assign_backoff = (self.assign_backoff * 2).min(MAX_ASSIGN_BACKOFF);
            }
        }
    }

    fn assign_new_partitions(&mut self) -> Result<(), String> {
        let consumer = self.consumer.as_ref().ok_or("closed")?;
        let md = consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("metadata: {e}"))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| "the broker returned no metadata for the topic".to_string())?;
        if let Some(err) = t.error() {
            return Err(format!(
                "topic metadata: {}",
                rdkafka::types::RDKafkaErrorCode::from(err)
            ));
        }
        if t.partitions().is_empty() {
            return Err("the topic has no partitions (does it exist?)".into());
        }
        let mine: Vec<i32> = t
            .partitions()
            .iter()
            .map(|p| p.id())
            .filter(|&p| p >= 0 && (p as u32) % self.tasks == self.task_index)
            .filter(|p| !self.partitions.contains_key(p))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let mut ask = TopicPartitionList::new();
        for &p in &mine {
            ask.add_partition(&self.topic, p);
        }
        let committed = consumer
            .committed_offsets(ask, REQUEST_TIMEOUT)
            .map_err(|e| format!("committed offsets of group: {e}"))?;
        let mut start = TopicPartitionList::new();
        let mut fresh = Vec::new();
        for e in committed.elements() {
            let c = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            let resume = match (self.first, c) {
                (_, Some(o)) if self.committed_by_us(e.metadata()) => Some(o),
                (FirstOffset::UncommittedEarliest | FirstOffset::UncommittedLatest, Some(o)) => {
                    Some(o)
                }
                _ => None,
            };
            let from = match (resume, self.first) {
                (Some(o), _) => Offset::Offset(o),
                (None, FirstOffset::Earliest | FirstOffset::UncommittedEarliest) => {
                    Offset::Beginning
                }
                (None, FirstOffset::Latest | FirstOffset::UncommittedLatest) => Offset::End,
            };
            start
                .add_partition_offset(&self.topic, e.partition(), from)
                .map_err(|e| format!("start offset: {e}"))?;
            fresh.push((e.partition(), resume, from));
        }
        consumer
            .incremental_assign(&start)
            .map_err(|e| format!("assign: {e}"))?;
        for (p, resume, from) in fresh {
            tracing::info!(component = %self.component, task = self.task, topic = %self.topic, partition = p, from = ?from, "kafka spout reads partition");
            self.partitions.insert(p, PartitionOffsets::new(resume));
        }
        Ok(())
    }

    /// Commit (asynchronously: the result comes back through `poll`) what may
    /// be committed, if the period passed.
    fn commit(&mut self, now: Instant) {
        self.apply_commit_results();
        if now < self.next_commit {
            return;
        }
        self.next_commit = now + self.commit_period;
        let mut tpl = TopicPartitionList::new();
        for (&p, st) in &self.partitions {
            if let Some(o) = st.to_commit() {
                let mut e = tpl.add_partition(&self.topic, p);
                if e.set_offset(Offset::Offset(o)).is_ok() {
                    e.set_metadata(self.commit_metadata.as_str());
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(component = %self.component, task = self.task, %error, "kafka offset commit failed; it is tried again");
        }
    }

    fn apply_commit_results(&mut self) {
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        let done: Vec<(i32, i64)> = match consumer.context().committed.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(_) => return,
        };
        for (p, o) in done {
            if let Some(st) = self.partitions.get_mut(&p) {
                st.committed(o);
            }
        }
    }

    fn record_values(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Values {
        fn bytes(b: Option<&[u8]>) -> Value {
            match b {
                None => Value::Null,
                Some(b) => match std::str::from_utf8(b) {
                    Ok(s) => Value::Str(SmolStr::new(s)),
                    Err(_) => Value::Bytes(b.into()),
                },
            }
        }
        crate::values![
            self.topic_value.clone(),
            Value::Int(i64::from(m.partition())),
            Value::Int(m.offset()),
            bytes(m.key()),
            bytes(m.payload())
        ]
    }

    /// Emit a record that is due for a retry; `true` if one went out.
    fn emit_retry(&mut self, now: Instant, out: &mut SpoutCollector<'_>) -> bool {
        let Some(&(due, id)) = self.retries.first() else {
            return false;
        };
        if due > now {
            return false;
        }
        self.retries.pop_first();
        if let Some(r) = self.records.get(&id) {
            out.emit(r.values.clone(), Some(id));
        }
        true
    }

    fn poll_one(&mut self, out: &mut SpoutCollector<'_>) {
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        match consumer.poll(Duration::ZERO) {
            None => {}
            Some(Ok(m)) => {
                let partition = m.partition();
                let offset = m.offset();
                let values = self.record_values(&m);
                drop(m);
                let Some(st) = self.partitions.get_mut(&partition) else {
                    return; // not ours (cannot happen with manual assignment)
                };
                st.fetched(offset);
                let id = self.next_id;
                self.next_id += 1;
                self.records.insert(
                    id,
                    Record {
                        partition,
                        offset,
                        fails: 0,
                        values: values.clone(),
                    },
                );
                out.emit(values, Some(id));
            }
            Some(Err(error)) => {
                self.poll_errors += 1;
                if self.poll_errors.is_power_of_two() {
                    tracing::warn!(component = %self.component, task = self.task, %error, count = self.poll_errors, "kafka consumer error");
                }
            }
        }
    }

    fn done(&mut self, id: u64) {
        if let Some(r) = self.records.remove(&id)
            && let Some(st) = self.partitions.get_mut(&r.partition)
        {
            st.done(r.offset);
        }
    }
}

impl Spout for KafkaSpout {
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>) {
        let now = Instant::now();
        self.ensure_assigned(now);
        if !self.emit_retry(now, out) && self.records.len() < self.max_records {
            self.poll_one(out);
        }
        self.commit(now);
    }

    fn ack(&mut self, msg_id: u64) {
        self.done(msg_id);
    }

    fn fail(&mut self, msg_id: u64) {
        let Some(r) = self.records.get_mut(&msg_id) else {
            return;
        };
        r.fails = r.fails.saturating_add(1);
        match self.backoff.delay(r.fails) {
            Some(d) => {
                self.retries.insert((Instant::now() + d, msg_id));
            }
            None => {
                tracing::warn!(component = %self.component, task = self.task, partition = r.partition, offset = r.offset, fails = r.fails, "kafka record failed its last retry; it is given up");
                self.done(msg_id);
            }
        }
    }

    fn deactivate(&mut self) {
        // Not a synchronous commit: with the broker gone it would block the
        // executor (and the kill) until librdkafka gives up.
        self.next_commit = Instant::now();
        self.commit(Instant::now());
    }

    fn close(&mut self) {
        // A last commit, waited for at most CLOSE_WAIT: messages polled meanwhile
        // are dropped, which is safe here (they are not committed, so whoever
        // reads the partition next reads them again).
        let deadline = Instant::now() + CLOSE_WAIT;
        self.next_commit = Instant::now();
        self.commit(Instant::now());
        while Instant::now() < deadline && self.partitions.values().any(|p| p.to_commit().is_some())
        {
            if let Some(c) = self.consumer.as_ref() {
                let _ = c.poll(Duration::from_millis(100));
            }
            self.apply_commit_results();
        }
        // Dropping a consumer closes it, and librdkafka's close waits for the
        // group coordinator: with the broker down it would hold up the
        // worker's shutdown for good. Close it on a thread of its own.
        if let Some(c) = self.consumer.take() {
            let _ = std::thread::Builder::new()
                .name("kafka-consumer-close".into())
                .spawn(move || drop(c));
        }
    }
}
