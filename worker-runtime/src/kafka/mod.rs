//! Built-in Kafka components: [`KafkaSpout`] and [`KafkaBolt`] (DESIGN §10).
//!
//! Every [`Registry`] built with [`Registry::new`] holds them, so every topology
//! binary can read from and write to Kafka with no code of its own:
//!
//! ```yaml
//! spouts:
//!   - id: events
//!     component: KafkaSpout
//!     config: {bootstrapServers: "kafka:9092", topic: input, groupId: my-group, firstOffset: EARLIEST}
//! bolts:
//!   - id: sink
//!     component: KafkaBolt
//!     config: {bootstrapServers: "kafka:9092", topic: output}   # keyField "key", valueField "message"
//! ```
//!
//! The client is librdkafka 2.12 (through `rdkafka`, whose build script compiles
//! the bundled C source with the machine's cc; no TLS, SASL, curl or compression
//! libraries). The pure-Rust clients lack what the spout needs: `rskafka` has no
//! consumer groups or offset commits, and the older `kafka` crate speaks protocol
//! versions that Kafka 4 removed (KIP-896). librdkafka negotiates versions with
//! `ApiVersions` and commits for manually assigned partitions. The price is its
//! C build (about 90 s of one core); the module sits behind the `kafka` cargo
//! feature (on by default), so a binary that does not want it can turn it off.
//!
//! See `docs/kafka.md` for the configuration keys and their Storm equivalents.

mod bolt;
mod config;
mod offsets;
mod spout;
pub mod tools;

pub use bolt::KafkaBolt;
pub use config::FirstOffset;
pub use offsets::{PartitionOffsets, RetryBackoff};
pub use spout::KafkaSpout;

use crate::component::{Outputs, Registry};

/// The fields of a [`KafkaSpout`] tuple: Storm's `DefaultRecordTranslator` fields.
pub const SPOUT_FIELDS: [&str; 5] = ["topic", "partition", "offset", "key", "value"];

/// Register `KafkaSpout` and `KafkaBolt` in `registry`.
pub fn register(registry: &mut Registry) {
    registry
        .spout(
            "KafkaSpout",
            Outputs::fields(&SPOUT_FIELDS),
            KafkaSpout::new,
        )
        .bolt("KafkaBolt", Outputs::none(), KafkaBolt::new);
}
