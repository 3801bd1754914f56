//! The compact encoding of envelope batches on the wire.
//!
//! A payload is a run of envelopes, with no count in front (its length bounds
//! it). Integers are LEB128 varints, ids are 8 little-endian bytes. A tuple names
//! its schema by (component index, stream index) in the plan, not by strings, so a
//! word-count tuple costs about 20 bytes.
//!
//! ```text
//! envelope = task:varint tag:u8 body
//! tag 0 tuple      = component:varint stream:varint source_task:varint
//!                    n_anchors:varint (root:u64 edge:u64)* n_values:varint value*
//! tag 1 ack_init   = root:u64 val:u64 spout_task:varint
//! tag 2 ack        = root:u64 val:u64
//! tag 3..=7        = root:u64   (fail, reset, spout_ack, spout_fail, spout_reset)
//!   (tags 1-4 are a `Msg::Acker`, 5-7 a `Msg::Spout`)
//! value = 0 null | 1 false | 2 true | 3 int:zigzag varint | 4 float:u64
//!       | 5 str: len:varint utf8 | 6 bytes: len:varint bytes
//!       | 7 json: len:varint utf8 (a JSON document, as multilang components emit)
//! ```
//!
//! Decoding never trusts the input: every length is checked against what is
//! left, and any violation is a [`CodecError`], never a panic.

use squall_api::TaskId;

use crate::layout::Layout;
use crate::transfer::{AckerMsg, Batch, Envelope, Msg, SpoutMsg};
use crate::tuple::{Anchors, Fields, SmolStr, Tuple, Value, Values};

/// A payload that cannot be decoded (or a tuple that cannot be encoded).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("payload ends inside an envelope (at byte {0})")]
    Truncated(usize),
    #[error("unknown envelope tag {0}")]
    BadTag(u8),
    #[error("unknown value tag {0}")]
    BadValueTag(u8),
    #[error("varint longer than 10 bytes")]
    BadVarint,
    #[error("no stream {stream} of component {component} in this topology")]
    UnknownStream { component: u64, stream: u64 },
    #[error("string is not UTF-8")]
    BadUtf8,
    #[error("{what} count {count} is over the limit {limit}")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("task id {0} out of range")]
    BadTask(u64),
}

/// Tuples per tuple value list and anchors per tuple that a decoder accepts.
const MAX_VALUES: u64 = 1 << 16;
const MAX_ANCHORS: u64 = 1 << 12;

/// The tuple schemas of one topology, by index, for both directions.
pub struct Schema {
    /// `fields[component][stream]`.
    fields: Vec<Vec<&'static Fields>>,
    /// (schema address, component, stream) for encoding.
    by_ptr: Vec<(usize, u32, u32)>,
}

impl Schema {
    pub fn new(layout: &Layout) -> Schema {
        let fields: Vec<Vec<&'static Fields>> = layout
            .streams
            .iter()
            .map(|s| s.iter().map(|r| r.fields).collect())
            .collect();
        let mut by_ptr = Vec::new();
        for (ci, streams) in fields.iter().enumerate() {
            for (si, f) in streams.iter().enumerate() {
                by_ptr.push((
                    std::ptr::from_ref::<Fields>(f) as usize,
                    ci as u32,
                    si as u32,
                ));
            }
        }
        Schema { fields, by_ptr }
    }

    #[inline]
    fn index_of(&self, f: &'static Fields) -> Option<(u32, u32)> {
        let p = std::ptr::from_ref::<Fields>(f) as usize;
        self.by_ptr
            .iter()
            .find(|(q, _, _)| *q == p)
            .map(|&(_, c, s)| (c, s))
    }
}

/// Whether a message goes on the control lane (to an acker or a spout) rather than the data lane.
#[inline]
pub fn is_control(msg: &Msg) -> bool {
    !matches!(msg, Msg::Tuple(_))
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Append one envelope; returns `false` (and writes nothing) for a tuple whose schema the topology lacks.
pub fn encode_envelope(schema: &Schema, env: &Envelope, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    put_varint(out, u64::from(env.task));
    match &env.msg {
        Msg::Tuple(t) => {
            let Some((c, s)) = schema.index_of(t.fields) else {
                out.truncate(start);
                return false;
            };
            out.push(0);
            put_varint(out, u64::from(c));
            put_varint(out, u64::from(s));
            put_varint(out, u64::from(t.source_task));
            put_varint(out, t.anchors.len() as u64);
            for &(root, edge) in &t.anchors {
                put_u64(out, root);
                put_u64(out, edge);
            }
            put_varint(out, t.values.len() as u64);
            for v in &t.values {
                encode_value(v, out);
            }
        }
        Msg::Acker(AckerMsg::Init {
            root,
            val,
            spout_task,
        }) => {
            out.push(1);
            put_u64(out, *root);
            put_u64(out, *val);
            put_varint(out, u64::from(*spout_task));
        }
        Msg::Acker(AckerMsg::Ack { root, val }) => {
            out.push(2);
            put_u64(out, *root);
            put_u64(out, *val);
        }
        Msg::Acker(AckerMsg::Fail { root }) => root_only(out, 3, *root),
        Msg::Acker(AckerMsg::Reset { root }) => root_only(out, 4, *root),
        Msg::Spout(SpoutMsg::Ack { root }) => root_only(out, 5, *root),
        Msg::Spout(SpoutMsg::Fail { root }) => root_only(out, 6, *root),
        Msg::Spout(SpoutMsg::Reset { root }) => root_only(out, 7, *root),
    }
    true
}

#[inline]
fn root_only(out: &mut Vec<u8>, tag: u8, root: u64) {
    out.push(tag);
    put_u64(out, root);
}

fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(false) => out.push(1),
        Value::Bool(true) => out.push(2),
        Value::Int(i) => {
            out.push(3);
            put_varint(out, ((*i << 1) ^ (*i >> 63)) as u64);
        }
        Value::Float(f) => {
            out.push(4);
            put_u64(out, f.to_bits());
        }
        Value::Str(s) => {
            out.push(5);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(6);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Json(j) => {
            out.push(7);
            put_varint(out, j.len() as u64);
            out.extend_from_slice(j.as_bytes());
        }
    }
}

/// Encode a whole batch; returns how many envelopes were left out (unknown schemas).
pub fn encode(schema: &Schema, batch: &[Envelope], out: &mut Vec<u8>) -> usize {
    batch
        .iter()
        .filter(|e| !encode_envelope(schema, e, out))
        .count()
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(CodecError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::BadVarint)
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(CodecError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn task(&mut self) -> Result<TaskId, CodecError> {
        let v = self.varint()?;
        TaskId::try_from(v).map_err(|_| CodecError::BadTask(v))
    }

    fn count(&mut self, what: &'static str, limit: u64) -> Result<usize, CodecError> {
        let n = self.varint()?;
        // Every item takes at least one byte, so a count above what is left is a lie.
        let left = (self.buf.len() - self.pos) as u64;
        if n > limit || n > left {
            return Err(CodecError::TooMany {
                what,
                count: n,
                limit: limit.min(left),
            });
        }
        Ok(n as usize)
    }
}

/// Decode a payload into envelopes.
pub fn decode(schema: &Schema, buf: &[u8]) -> Result<Batch, CodecError> {
    let mut r = Reader { buf, pos: 0 };
    let mut batch = Vec::new();
    while r.pos < buf.len() {
        let task = r.task()?;
        let msg = match r.byte()? {
            0 => {
                let c = r.varint()?;
                let s = r.varint()?;
                let fields = usize::try_from(c)
                    .ok()
                    .and_then(|c| schema.fields.get(c))
                    .and_then(|streams| usize::try_from(s).ok().and_then(|s| streams.get(s)))
                    .copied()
                    .ok_or(CodecError::UnknownStream {
                        component: c,
                        stream: s,
                    })?;
                let source = r.task()?;
                let na = r.count("anchor", MAX_ANCHORS)?;
                let mut anchors = Anchors::with_capacity(na);
                for _ in 0..na {
                    anchors.push((r.u64()?, r.u64()?));
                }
                let nv = r.count("value", MAX_VALUES)?;
                let mut values = Values::with_capacity(nv);
                for _ in 0..nv {
                    values.push(decode_value(&mut r)?);
                }
                Msg::Tuple(Tuple::new(values, fields, source, anchors))
            }
            1 => Msg::Acker(AckerMsg::Init {
                root: r.u64()?,
                val: r.u64()?,
                spout_task: r.task()?,
            }),
            2 => Msg::Acker(AckerMsg::Ack {
                root: r.u64()?,
                val: r.u64()?,
            }),
            3 => Msg::Acker(AckerMsg::Fail { root: r.u64()? }),
            4 => Msg::Acker(AckerMsg::Reset { root: r.u64()? }),
            5 => Msg::Spout(SpoutMsg::Ack { root: r.u64()? }),
            6 => Msg::Spout(SpoutMsg::Fail { root: r.u64()? }),
            7 => Msg::Spout(SpoutMsg::Reset { root: r.u64()? }),
            t => return Err(CodecError::BadTag(t)),
        };
        batch.push(Envelope { task, msg });
    }
    Ok(batch)
}

fn decode_value(r: &mut Reader<'_>) -> Result<Value, CodecError> {
    Ok(match r.byte()? {
        0 => Value::Null,
        1 => Value::Bool(false),
        2 => Value::Bool(true),
        3 => {
            let z = r.varint()?;
            Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
        }
        4 => Value::Float(f64::from_bits(r.u64()?)),
        5 => {
            let n = r.varint()?;
            let n = usize::try_from(n).map_err(|_| CodecError::Truncated(r.pos))?;
            let b = r.take(n)?;
            Value::Str(SmolStr::new(
                std::str::from_utf8(b).map_err(|_| CodecError::BadUtf8)?,
            ))
        }
        6 => {
            let n = r.varint()?;
            let n = usize::try_from(n).map_err(|_| CodecError::Truncated(r.pos))?;
            Value::Bytes(r.take(n)?.into())
        }
        7 => {
            let n = r.varint()?;
            let n = usize::try_from(n).map_err(|_| CodecError::Truncated(r.pos))?;
            let b = r.take(n)?;
            Value::Json(
                std::str::from_utf8(b)
                    .map_err(|_| CodecError::BadUtf8)?
                    .into(),
            )
        }
        t => return Err(CodecError::BadValueTag(t)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::Fields;

    fn schema() -> (Schema, &'static Fields) {
        let f = Fields::intern(
            "codec-test",
            "default",
            &["word".to_string(), "n".to_string()],
        );
        let s = Schema {
            fields: vec![vec![], vec![f]],
            by_ptr: vec![(std::ptr::from_ref::<Fields>(f) as usize, 1, 0)],
        };
        (s, f)
    }

    fn sample(f: &'static Fields) -> Batch {
        let mut values = Values::new();
        values.push(Value::from("hello"));
        values.push(Value::Int(-42));
        values.push(Value::Float(1.5));
        values.push(Value::Null);
        values.push(Value::Bool(true));
        values.push(Value::Bytes(vec![1u8, 2, 3].into()));
        values.push(Value::Json(r#"[1,{"a":2}]"#.into()));
        values.push(Value::from("a string longer than twenty-three bytes"));
        let mut anchors = Anchors::new();
        anchors.push((u64::MAX, 7));
        vec![
            Envelope {
                task: 3,
                msg: Msg::Tuple(Tuple::new(values, f, 9, anchors)),
            },
            Envelope {
                task: 300,
                msg: Msg::Acker(AckerMsg::Init {
                    root: 1,
                    val: u64::MAX,
                    spout_task: 2,
                }),
            },
            Envelope {
                task: 1,
                msg: Msg::Acker(AckerMsg::Ack { root: 5, val: 6 }),
            },
            Envelope {
                task: 1,
                msg: Msg::Acker(AckerMsg::Fail { root: 5 }),
            },
            Envelope {
                task: 1,
                msg: Msg::Acker(AckerMsg::Reset { root: 5 }),
            },
            Envelope {
                task: 1,
                msg: Msg::Spout(SpoutMsg::Ack { root: 5 }),
            },
            Envelope {
                task: 1,
                msg: Msg::Spout(SpoutMsg::Fail { root: 5 }),
            },
            Envelope {
                task: 1,
                msg: Msg::Spout(SpoutMsg::Reset { root: 5 }),
            },
        ]
    }

    fn show(b: &Batch) -> String {
        b.iter()
            .map(|e| {
                let m = match &e.msg {
                    Msg::Tuple(t) => format!("{t:?} {:?}", t.anchors),
                    Msg::Acker(m) => format!("acker {m:?}"),
                    Msg::Spout(m) => format!("spout {m:?}"),
                };
                format!("{}:{m}", e.task)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn round_trip() {
        let (s, f) = schema();
        let batch = sample(f);
        let mut buf = Vec::new();
        assert_eq!(encode(&s, &batch, &mut buf), 0);
        let back = decode(&s, &buf).unwrap();
        assert_eq!(show(&back), show(&batch));
        assert!(std::ptr::eq(
            match &back[0].msg {
                Msg::Tuple(t) => t.fields,
                _ => unreachable!(),
            },
            f
        ));
    }

    /// The bytes of every acker's and spout's message, as the module's
    /// grammar gives them: what peers of other builds decode.
    #[test]
    fn control_messages_have_their_documented_bytes() {
        let (s, _) = schema();
        let root = 0x0102_0304_0506_0708_u64.to_le_bytes();
        let val = 9u64.to_le_bytes();
        let cases: [(Msg, Vec<u8>); 7] = [
            (
                Msg::Acker(AckerMsg::Init {
                    root: 0x0102_0304_0506_0708,
                    val: 9,
                    spout_task: 300,
                }),
                [&[1][..], &root, &val, &[0xac, 0x02]].concat(),
            ),
            (
                Msg::Acker(AckerMsg::Ack {
                    root: 0x0102_0304_0506_0708,
                    val: 9,
                }),
                [&[2][..], &root, &val].concat(),
            ),
            (
                Msg::Acker(AckerMsg::Fail {
                    root: 0x0102_0304_0506_0708,
                }),
                [&[3][..], &root].concat(),
            ),
            (
                Msg::Acker(AckerMsg::Reset {
                    root: 0x0102_0304_0506_0708,
                }),
                [&[4][..], &root].concat(),
            ),
            (
                Msg::Spout(SpoutMsg::Ack {
                    root: 0x0102_0304_0506_0708,
                }),
                [&[5][..], &root].concat(),
            ),
            (
                Msg::Spout(SpoutMsg::Fail {
                    root: 0x0102_0304_0506_0708,
                }),
                [&[6][..], &root].concat(),
            ),
            (
                Msg::Spout(SpoutMsg::Reset {
                    root: 0x0102_0304_0506_0708,
                }),
                [&[7][..], &root].concat(),
            ),
        ];
        for (msg, body) in cases {
            let mut buf = Vec::new();
            assert!(encode_envelope(&s, &Envelope { task: 1, msg }, &mut buf));
            assert_eq!(buf, [&[1][..], &body].concat());
        }
    }

    #[test]
    fn unknown_schema_is_left_out() {
        let (s, _) = schema();
        let other = Fields::intern("codec-test", "other", &[]);
        let batch = vec![Envelope {
            task: 1,
            msg: Msg::Tuple(Tuple::new(Values::new(), other, 1, Anchors::new())),
        }];
        let mut buf = Vec::new();
        assert_eq!(encode(&s, &batch, &mut buf), 1);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let (s, f) = schema();
        let mut buf = Vec::new();
        encode(&s, &sample(f), &mut buf);
        for cut in 0..buf.len() {
            // A cut on an envelope boundary decodes to fewer envelopes; anywhere else it must fail.
            let _ = decode(&s, &buf[..cut]);
        }
        assert!(decode(&s, &buf[..buf.len() - 1]).is_err());
        assert_eq!(decode(&s, &[1, 99]).err(), Some(CodecError::BadTag(99)));
        assert!(matches!(
            decode(&s, &[1, 0, 7, 0]),
            Err(CodecError::UnknownStream { .. })
        ));
        // A huge value count must not allocate its claimed size.
        assert!(decode(&s, &[1, 0, 1, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let (s, _) = schema();
            let _ = decode(&s, &bytes);
        }
    }
}
