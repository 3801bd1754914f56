//! Tuples and their values.
//!
//! Inside a process a tuple is moved, never serialized: values are a small inline
//! vector of [`Value`]s whose strings are inline up to 23 bytes, so a word-count
//! tuple costs no heap allocation. The field schema of a tuple is interned once per
//! process (see [`Fields::intern`]) so a tuple carries a plain `&'static` reference
//! instead of a reference count that every core would contend on.

#![warn(missing_docs)]

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use smallvec::SmallVec;
pub use smol_str::SmolStr;
use squall_api::TaskId;

/// One value in a tuple.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value (JSON `null`, Storm's `null`).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer (Java's `long`).
    Int(i64),
    /// A floating-point number (Java's `double`).
    Float(f64),
    /// Inline up to 23 bytes, shared beyond.
    Str(SmolStr),
    /// Raw bytes (a Kafka record that is not UTF-8), shared: a clone copies no bytes.
    Bytes(std::sync::Arc<[u8]>),
    /// A JSON array or object, as its compact text: a list or map that a multilang
    /// component emitted, carried whole to the next component.
    Json(std::sync::Arc<str>),
}

impl Value {
    /// The string, if this is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is a [`Value::Int`].
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The number, if this is a [`Value::Float`] or a [`Value::Int`] (converted).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    /// The boolean, if this is a [`Value::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A hash that is the same in every process and on every platform, so that a
    /// fields grouping sends a key to the same task wherever it is emitted.
    pub fn stable_hash(&self, h: u64) -> u64 {
        let (tag, bytes): (u8, &[u8]) = match self {
            Value::Null => (0, &[]),
            Value::Bool(b) => (1, if *b { &[1] } else { &[0] }),
            Value::Int(i) => return mix(mix(h, 2), *i as u64),
            Value::Float(f) => return mix(mix(h, 3), f.to_bits()),
            Value::Str(s) => (4, s.as_bytes()),
            Value::Bytes(b) => (5, b),
            Value::Json(j) => (6, j.as_bytes()),
        };
        hash_bytes(mix(h, u64::from(tag)), bytes)
    }
}

/// `bytes` folded into the hash `h`, eight at a time: fast, and the same in
/// every process and on every platform (fields grouping relies on it). Not
/// for keys an attacker chooses.
pub fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    mix(h, u64::from_le_bytes(w) ^ ((bytes.len() as u64) << 56))
}

/// A [`std::hash::Hasher`] on [`hash_bytes`], for a component's own maps
/// keyed by words or ids from tuples (`HashMap<SmolStr, u64,
/// BuildHasherDefault<KeyHasher>>`): several times cheaper than the
/// standard library's SipHash on short keys, like Java's `String.hashCode`
/// that a Storm bolt's `HashMap` uses. Not for keys an attacker chooses.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.0 = mix(self.0, u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = mix(self.0, n);
    }
}

/// One round of a multiply-xorshift mixer (wyhash-style); stable by construction.
#[inline]
pub(crate) fn mix(h: u64, v: u64) -> u64 {
    let m = u128::from(h ^ v ^ 0x2d35_8dcc_aa6c_78a5).wrapping_mul(0x8bb8_4b93_962e_acc9);
    ((m >> 64) as u64) ^ (m as u64)
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(SmolStr::new(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(SmolStr::from(s))
    }
}
impl From<SmolStr> for Value {
    fn from(s: SmolStr) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<u64> for Value {
    fn from(i: u64) -> Self {
        Value::Int(i as i64)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<usize> for Value {
    fn from(i: usize) -> Self {
        Value::Int(i as i64)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(b.into())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Value::Json(j) => f.write_str(j),
        }
    }
}

/// The values of a tuple; up to two live inline.
pub type Values = SmallVec<[Value; 2]>;

/// Build [`Values`] from a list of things that convert into [`Value`].
#[macro_export]
macro_rules! values {
    ($($v:expr),* $(,)?) => {{
        let mut v = $crate::tuple::Values::new();
        $( v.push($crate::tuple::Value::from($v)); )*
        v
    }};
}

/// The declared fields of one stream of one component. Interned: one per process.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Fields {
    /// The id of the component that declares the stream.
    pub component: String,
    /// The stream's name (`default` unless named).
    pub stream: String,
    /// The field names, in the order of a tuple's values.
    pub names: Vec<String>,
}

impl Fields {
    /// The process-wide instance for this declaration. Declarations are few and fixed
    /// by the binary, so interning them leaks a bounded amount once.
    pub fn intern(component: &str, stream: &str, names: &[String]) -> &'static Fields {
        type Table = HashMap<(String, String, Vec<String>), &'static Fields>;
        static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
        let key = (component.to_string(), stream.to_string(), names.to_vec());
        let mut table = TABLE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        table.entry(key).or_insert_with(|| {
            Box::leak(Box::new(Fields {
                component: component.to_string(),
                stream: stream.to_string(),
                names: names.to_vec(),
            }))
        })
    }

    /// The position of the field `name` in a tuple's values.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The schema of system tick tuples.
    pub fn tick() -> &'static Fields {
        static TICK: OnceLock<&'static Fields> = OnceLock::new();
        TICK.get_or_init(|| Fields::intern(SYSTEM_COMPONENT, TICK_STREAM, &[]))
    }
}

/// Source component of system tuples such as ticks (as in Storm).
pub const SYSTEM_COMPONENT: &str = "__system";
/// Stream of tick tuples (as in Storm).
pub const TICK_STREAM: &str = "__tick";

/// Acking identity of a tuple: for each tuple-tree root it belongs to, its edge id.
pub type Anchors = SmallVec<[(u64, u64); 1]>;

/// A tuple as a bolt sees it.
///
/// A bolt owns the tuples it is given and must `ack` or `fail` each of them
/// (possibly later, as windowing bolts do). Emitting anchored to a tuple records
/// the new edge in the tuple, which is why the ack value is a `Cell`.
pub struct Tuple {
    pub(crate) values: Values,
    pub(crate) fields: &'static Fields,
    pub(crate) source_task: TaskId,
    /// Root → this tuple's edge id. Empty when unanchored or acking is off.
    pub(crate) anchors: Anchors,
    /// XOR of the edge ids of tuples emitted anchored to this one.
    pub(crate) ack_val: Cell<u64>,
    /// When execution started, for process latency (ns on the runtime clock).
    pub(crate) started_ns: Cell<u64>,
}

impl Tuple {
    pub(crate) fn new(
        values: Values,
        fields: &'static Fields,
        source_task: TaskId,
        anchors: Anchors,
    ) -> Tuple {
        Tuple {
            values,
            fields,
            source_task,
            anchors,
            ack_val: Cell::new(0),
            started_ns: Cell::new(0),
        }
    }

    pub(crate) fn tick() -> Tuple {
        Tuple::new(Values::new(), Fields::tick(), 0, Anchors::new())
    }

    /// The value at `index`.
    pub fn get(&self, index: usize) -> Option<&Value> {
        self.values.get(index)
    }

    /// The value of the named field.
    pub fn get_by_field(&self, name: &str) -> Option<&Value> {
        self.fields.index_of(name).and_then(|i| self.values.get(i))
    }

    /// The string at `index`, if it is one.
    pub fn str(&self, index: usize) -> Option<&str> {
        self.get(index).and_then(Value::as_str)
    }

    /// All values, in the order of [`Tuple::fields`].
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The field names of the stream this tuple came on.
    pub fn fields(&self) -> &[String] {
        &self.fields.names
    }

    /// The id of the component that emitted this tuple (`__system` for ticks).
    pub fn source_component(&self) -> &str {
        &self.fields.component
    }

    /// The stream this tuple came on (`__tick` for ticks).
    pub fn source_stream(&self) -> &str {
        &self.fields.stream
    }

    /// The task that emitted this tuple (0 for ticks).
    pub fn source_task(&self) -> TaskId {
        self.source_task
    }

    /// Whether this is a system tick tuple (see `tickFrequencySeconds`).
    pub fn is_tick(&self) -> bool {
        std::ptr::eq(self.fields, Fields::tick())
    }

    /// Take the values out (the tuple stays ackable).
    pub fn take_values(&mut self) -> Values {
        std::mem::take(&mut self.values)
    }
}

impl fmt::Debug for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tuple")
            .field("source", &self.fields.component)
            .field("stream", &self.fields.stream)
            .field("task", &self.source_task)
            .field("values", &self.values)
            .finish()
    }
}
