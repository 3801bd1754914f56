//! Configuration shared by the Kafka components, and librdkafka's logs into `tracing`.

use std::str::FromStr;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

use crate::component::{ComponentError, TopologyContext};

/// Where a [`super::KafkaSpout`] starts reading a partition (storm-kafka-client's
/// `FirstPollOffsetStrategy`).
///
/// A commit "by this topology" is one whose metadata names this topology: a worker
/// that restarts always resumes from such a commit. Squall names a deployment by
/// the topology's name, so a topology deleted and applied again under the same
/// name resumes too (Storm would start over with `EARLIEST`/`LATEST`: its
/// topology ids carry a submit time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstOffset {
    /// The partition's first offset, whatever another topology committed.
    Earliest,
    /// The partition's end, whatever another topology committed.
    Latest,
    /// The group's committed offset, else the first offset (Storm's default).
    UncommittedEarliest,
    /// The group's committed offset, else the end.
    UncommittedLatest,
}

impl FromStr for FirstOffset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EARLIEST" => Ok(FirstOffset::Earliest),
            "LATEST" => Ok(FirstOffset::Latest),
            "UNCOMMITTED_EARLIEST" => Ok(FirstOffset::UncommittedEarliest),
            "UNCOMMITTED_LATEST" => Ok(FirstOffset::UncommittedLatest),
            other => Err(format!(
                "unknown firstOffset '{other}' (expected EARLIEST, LATEST, UNCOMMITTED_EARLIEST or UNCOMMITTED_LATEST)"
            )),
        }
    }
}

/// An error naming the component, as every start error does.
pub(crate) fn config_error(ctx: &TopologyContext, msg: impl std::fmt::Display) -> ComponentError {
    ComponentError::new(format!("{}: {msg}", ctx.component_id))
}

/// A string config value that must be present and non-empty.
pub(crate) fn required_str(ctx: &TopologyContext, key: &str) -> Result<String, ComponentError> {
    let v = ctx.config_str(key, "")?;
    if v.trim().is_empty() {
        return Err(config_error(ctx, format!("config '{key}' is required")));
    }
    Ok(v)
}

/// The librdkafka client config: `bootstrapServers`, the component's own
/// `settings`, then every entry of the free-form `kafkaProperties` map
/// (librdkafka's property names, e.g. `socket.timeout.ms`), which win.
pub(crate) fn client_config(
    ctx: &TopologyContext,
    settings: &[(&str, &str)],
) -> Result<ClientConfig, ComponentError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", required_str(ctx, "bootstrapServers")?)
        .set(
            "client.id",
            format!("squall-{}-{}", ctx.topology, ctx.component_id),
        )
        // Reconnect to a broker that is down at most every 10 s, not in a tight loop.
        .set("reconnect.backoff.max.ms", "10000");
    for (k, v) in settings {
        cc.set(*k, *v);
    }
    match ctx.config.get("kafkaProperties") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => v.to_string(),
                    other => {
                        return Err(config_error(
                            ctx,
                            format!(
                                "config 'kafkaProperties.{k}' must be a string, number or bool, got {other}"
                            ),
                        ));
                    }
                };
                cc.set(k, v);
            }
        }
        Some(v) => {
            return Err(config_error(
                ctx,
                format!("config 'kafkaProperties' must be a map, got {v}"),
            ));
        }
    }
    Ok(cc)
}

/// A duration in milliseconds from config.
pub(crate) fn config_ms(
    ctx: &TopologyContext,
    key: &str,
    default: u64,
) -> Result<std::time::Duration, ComponentError> {
    Ok(std::time::Duration::from_millis(
        ctx.config_u64(key, default)?,
    ))
}

/// librdkafka's logs and errors, into `tracing`, tagged with the component.
pub(crate) struct LogContext {
    pub(crate) component: String,
    pub(crate) task: u32,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let (c, t) = (&self.component, self.task);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(component = %c, task = t, facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(component = %c, task = t, facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(component = %c, task = t, facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(component = %c, task = t, facility = fac, "kafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(component = %self.component, task = self.task, %error, "kafka client error: {reason}");
    }
}
