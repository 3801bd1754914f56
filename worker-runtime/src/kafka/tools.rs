//! Blocking helpers around a broker, for tests, the benchmark and operators'
//! scripts: create a topic, load records, read a topic back, and compare a
//! group's committed offsets with the topic's end offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A broker request that did not succeed.
#[derive(Debug, thiserror::Error)]
#[error("kafka {what}: {detail}")]
pub struct ToolError {
    what: &'static str,
    detail: String,
}

fn err(what: &'static str, e: impl std::fmt::Display) -> ToolError {
    ToolError {
        what,
        detail: e.to_string(),
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn config(bootstrap: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap);
    cc
}

/// Create `topic` with `partitions` partitions (replication 1); an existing
/// topic is fine.
///
/// # Errors
///
/// When the broker cannot be reached or refuses.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), ToolError> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap)
        .create()
        .map_err(|e| err("admin client", e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| err("runtime", e))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .map_err(|e| err("create topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(err("create topic", format!("{t}: {code}"))),
        }
    }
    Ok(())
}

/// Write `(key, value)` records to `topic` and wait until the broker has them all.
///
/// # Errors
///
/// When a write fails or the broker does not acknowledge them all within a minute.
pub fn produce<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    bootstrap: &str,
    topic: &str,
    records: impl IntoIterator<Item = (Option<K>, V)>,
) -> Result<usize, ToolError> {
    let producer: BaseProducer = config(bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(|e| err("producer", e))?;
    let mut n = 0;
    for (k, v) in records {
        loop {
            let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(v.as_ref());
            if let Some(k) = k.as_ref() {
                r = r.key(k.as_ref());
            }
            match producer.send(r).map_err(|(e, _)| e) {
                Ok(()) => break,
                Err(rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err(e) => return Err(err("produce", e)),
            }
        }
        n += 1;
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| err("flush", e))?;
    Ok(n)
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its key, if it has one.
    pub key: Option<Vec<u8>>,
    /// Its value, if it has one (a tombstone has none).
    pub value: Option<Vec<u8>>,
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, ToolError> {
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| err("metadata", e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| err("metadata", format!("no topic {topic}")))?;
    if let Some(e) = t.error() {
        return Err(err(
            "metadata",
            format!("{topic}: {}", RDKafkaErrorCode::from(e)),
        ));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// The end offset (high watermark) of each partition of `topic`.
///
/// # Errors
///
/// When the broker cannot be reached or the topic does not exist.
pub fn end_offsets(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ToolError> {
    let consumer: BaseConsumer = config(bootstrap).create().map_err(|e| err("consumer", e))?;
    let mut out = BTreeMap::new();
    for p in partitions_of(&consumer, topic)? {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .map_err(|e| err("watermarks", e))?;
        out.insert(p, high);
    }
    Ok(out)
}

/// The offsets `group` committed for each partition of `topic` (`None`: no commit).
///
/// # Errors
///
/// When the broker cannot be reached or the topic does not exist.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, Option<i64>>, ToolError> {
    let consumer: BaseConsumer = config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| err("consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions_of(&consumer, topic)? {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| err("committed offsets", e))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), o)
        })
        .collect())
}

/// Every record of `topic` up to its end offsets as they are when called.
///
/// # Errors
///
/// When the broker cannot be reached, or the records are not all read within `timeout`.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, ToolError> {
    let ends = end_offsets(bootstrap, topic)?;
    // librdkafka wants a group even for assigned partitions; this one never commits.
    let consumer: BaseConsumer = config(bootstrap)
        .set(
            "group.id",
            format!("squall-read-all-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| err("consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, &end) in &ends {
        if end > 0 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| err("assign", e))?;
            remaining.insert(p, end);
        }
    }
    consumer.assign(&tpl).map_err(|e| err("assign", e))?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(err(
                "read",
                format!("{} records read, partitions left: {remaining:?}", out.len()),
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => return Err(err("read", e)),
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                if remaining.get(&p).is_some_and(|&end| o < end) {
                    out.push(ReadRecord {
                        partition: p,
                        offset: o,
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                    });
                }
                if remaining.get(&p).is_some_and(|&end| o + 1 >= end) {
                    remaining.remove(&p);
                }
            }
        }
    }
    Ok(out)
}
