//! `KafkaBolt`: tuples to a topic, acked once the broker has them (Storm's
//! `KafkaBolt` with `FieldNameBasedTupleToKafkaMapper`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::config::{LogContext, client_config, required_str};
use crate::collector::BoltCollector;
use crate::component::{Bolt, ComponentError, TopologyContext};
use crate::tuple::{Tuple, Value};

/// How long [`Bolt::idle`] waits for the broker before handing control back.
const IDLE_BUDGET: Duration = Duration::from_millis(10);
/// How long one tuple may wait for room in librdkafka's queue before it fails.
const QUEUE_FULL_BUDGET: Duration = Duration::from_secs(5);

/// Writes field `keyField` (default `key`; absent = no key) and field
/// `valueField` (default `message`) of each input tuple to `topic`. A tuple is
/// acked once the broker acknowledged the write (librdkafka's delivery report,
/// `acks=all` by default) and failed when the write failed or timed out, so that
/// its spout replays it. It holds input tuples meanwhile and settles them as
/// delivery reports come in, during `execute` and when its input runs dry
/// ([`Bolt::idle`]).
///
/// Strings and bytes are written as they are, numbers and booleans as their
/// text, null as no key or an empty (tombstone) value.
///
/// # Config
///
/// `bootstrapServers` and `topic` (required), `keyField`, `valueField`,
/// `messageTimeoutMs` (30000: librdkafka's `message.timeout.ms`, after which an
/// undelivered write fails), `kafkaProperties` (librdkafka properties, laid over
/// the rest).
pub struct KafkaBolt {
    component: String,
    task: u32,
    topic: String,
    key_field: String,
    value_field: String,
    producer: BaseProducer<BoltContext>,
    /// Input tuples written and waiting for their delivery report, by write id.
    held: HashMap<usize, Tuple>,
    next_id: usize,
    reported_errors: u64,
}

/// Delivery reports arrive here during `poll`, on the bolt's own thread.
struct BoltContext {
    log: LogContext,
    reports: Mutex<Vec<(usize, Option<KafkaError>)>>,
}

impl ClientContext for BoltContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ProducerContext for BoltContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        let outcome = result.as_ref().err().map(|(e, _)| e.clone());
        if let Ok(mut r) = self.reports.lock() {
            r.push((id, outcome));
        }
    }
}

impl KafkaBolt {
    /// Build a task's bolt from its config.
    ///
    /// # Errors
    ///
    /// A [`ComponentError`] naming the component for a missing `bootstrapServers`
    /// or `topic`, or a librdkafka property it refuses. An unreachable broker is
    /// no error here: writes fail (and their tuples replay) until it is back.
    pub fn new(ctx: &TopologyContext) -> Result<Self, ComponentError> {
        let topic = required_str(ctx, "topic")?;
        let timeout = ctx.config_u64("messageTimeoutMs", 30_000)?.to_string();
        let cc = client_config(
            ctx,
            &[
                ("message.timeout.ms", &timeout),
                ("acks", "all"),
                ("queue.buffering.max.messages", "100000"),
            ],
        )?;
        let producer = cc
            .create_with_context(BoltContext {
                log: LogContext {
                    component: ctx.component_id.clone(),
                    task: ctx.task_id,
                },
                reports: Mutex::new(Vec::new()),
            })
            .map_err(|e| {
                ComponentError::new(format!("{}: kafka producer: {e}", ctx.component_id))
            })?;
        Ok(KafkaBolt {
            component: ctx.component_id.clone(),
            task: ctx.task_id,
            topic,
            key_field: ctx.config_str("keyField", "key")?,
            value_field: ctx.config_str("valueField", "message")?,
            producer,
            held: HashMap::new(),
            next_id: 0,
            reported_errors: 0,
        })
    }

    /// Ack or fail every held tuple whose delivery report came in.
    fn settle(&mut self, out: &mut BoltCollector<'_>) {
        let reports = match self.producer.context().reports.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        for (id, outcome) in reports {
            let Some(tuple) = self.held.remove(&id) else {
                continue;
            };
            match outcome {
                None => out.ack(&tuple),
                Some(error) => {
                    self.note_error(
                        &format!("kafka write to '{}' failed: {error}", self.topic),
                        out,
                    );
                    out.fail(&tuple);
                }
            }
        }
    }

    /// Report an error through the collector, the first and then every 2^n-th time.
    fn note_error(&mut self, msg: &str, out: &mut BoltCollector<'_>) {
        self.reported_errors += 1;
        if self.reported_errors.is_power_of_two() {
            out.report_error(&format!("{msg} (errors so far: {})", self.reported_errors));
        }
    }
}

/// A tuple value as record bytes: `None` for null.
fn as_bytes(v: &Value) -> Option<Cow<'_, [u8]>> {
    match v {
        Value::Null => None,
        Value::Str(s) => Some(Cow::Borrowed(s.as_bytes())),
        Value::Bytes(b) => Some(Cow::Borrowed(b)),
        other => Some(Cow::Owned(other.to_string().into_bytes())),
    }
}

impl Bolt for KafkaBolt {
    fn execute(&mut self, input: Tuple, out: &mut BoltCollector<'_>) {
        if input.is_tick() {
            self.producer.poll(Duration::ZERO);
            self.settle(out);
            return;
        }
        let Some(value) = input.get_by_field(&self.value_field) else {
            let msg = format!(
                "input from '{}' has no field '{}' (set valueField)",
                input.source_component(),
                self.value_field
            );
            self.note_error(&msg, out);
            out.fail(&input);
            return;
        };
        let key = input.get_by_field(&self.key_field).and_then(as_bytes);
        let payload = as_bytes(value);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let started = Instant::now();
        let sent = loop {
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.topic, id);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            if let Some(p) = payload.as_deref() {
                record = record.payload(p);
            }
            match self.producer.send(record).map_err(|(e, _)| e) {
                Ok(()) => break Ok(()),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if started.elapsed() < QUEUE_FULL_BUDGET =>
                {
                    // librdkafka's queue is full: serve delivery reports, then try again.
                    self.producer.poll(Duration::from_millis(10));
                    self.settle(out);
                }
                Err(e) => break Err(e),
            }
        };
        match sent {
            Ok(()) => {
                self.held.insert(id, input);
            }
            Err(error) => {
                self.note_error(
                    &format!("kafka write to '{}' failed: {error}", self.topic),
                    out,
                );
                out.fail(&input);
            }
        }
        self.producer.poll(Duration::ZERO);
        self.settle(out);
    }

    fn idle(&mut self, out: &mut BoltCollector<'_>) {
        let deadline = Instant::now() + IDLE_BUDGET;
        while !self.held.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.producer.poll(deadline - now);
            self.settle(out);
        }
    }

    fn cleanup(&mut self) {
        if !self.held.is_empty() {
            tracing::info!(component = %self.component, task = self.task, held = self.held.len(), "kafka bolt stops with writes in flight; their tuples time out and replay");
        }
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
