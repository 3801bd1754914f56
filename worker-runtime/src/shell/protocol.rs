//! Storm's multilang wire format: JSON messages, each followed by a line `end`.
//!
//! This module is pure: it frames and parses what a subprocess writes, and builds
//! what Squall writes to it. Every way a subprocess can write garbage (not JSON, a
//! message that never ends, a field of the wrong type) is an error value here, never
//! a panic, and a message is bounded in size before it is parsed.

use std::io::BufRead;

use serde_json::{Map, Value as Json, json};
use squall_api::TaskId;

use crate::tuple::{SmolStr, Value, Values};

/// The largest message a subprocess may send (Storm has no limit; an unbounded
/// message from a broken subprocess would exhaust the worker's memory).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Why a subprocess's output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the subprocess closed its stdout")]
    Eof,
    #[error("reading the subprocess's stdout: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("not a JSON message: {0}")]
    NotJson(String),
    #[error("a malformed '{command}' message: {reason}")]
    Malformed { command: String, reason: String },
}

/// Read one message: lines up to a line that is exactly `end`.
pub fn read_message(r: &mut impl BufRead) -> Result<Json, ReadError> {
    let mut msg: Vec<u8> = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    loop {
        line.clear();
        let budget = (MAX_MESSAGE_BYTES - msg.len()) as u64 + 5;
        let n = std::io::Read::take(&mut *r, budget).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        if line.last() != Some(&b'\n') {
            // The budget ran out mid-line, or the stream ended mid-line.
            return Err(if n as u64 >= budget {
                ReadError::TooLong
            } else {
                ReadError::Eof
            });
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body == b"end" {
            break;
        }
        msg.extend_from_slice(&line);
        if msg.len() > MAX_MESSAGE_BYTES {
            return Err(ReadError::TooLong);
        }
    }
    serde_json::from_slice(&msg).map_err(|e| {
        let shown = String::from_utf8_lossy(&msg[..msg.len().min(120)]).into_owned();
        ReadError::NotJson(format!("{e} (got {shown:?})"))
    })
}

/// Frame a message for the subprocess.
pub fn frame(msg: &Json) -> Vec<u8> {
    let mut out = serde_json::to_vec(msg).unwrap_or_else(|_| b"null".to_vec());
    out.extend_from_slice(b"\nend\n");
    out
}

/// What a subprocess asks of Squall (Storm's `ShellMsg`).
#[derive(Debug, Clone, PartialEq)]
pub enum ShellMsg {
    Emit(Emit),
    Ack {
        id: Json,
    },
    Fail {
        id: Json,
    },
    /// A heartbeat reply, or the end of a spout's `next`/`ack`/`fail`.
    Sync,
    Log {
        msg: String,
        level: u8,
    },
    Error {
        msg: String,
    },
    /// Storm's `metrics` command: `params` for the component's metric `name`.
    Metrics {
        name: String,
        params: Json,
    },
    /// A message with an unknown command (logged and ignored, as Storm does).
    Unknown(String),
    /// Storm's handshake reply `{"pid": ...}`.
    Pid(u32),
    /// Task ids, which only Squall sends; a subprocess that echoes them is broken.
    TaskIds,
}

/// An `emit` command.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub stream: Option<String>,
    /// The tuple's values.
    pub values: Values,
    /// Bolts: ids of the input tuples to anchor to.
    pub anchors: Vec<Json>,
    /// Spouts: the message id (any JSON value, as in Storm).
    pub id: Option<Json>,
    /// An emit to one task of a DIRECT subscription.
    pub task: Option<TaskId>,
    /// Whether the subprocess waits for the target task ids (Storm's default: yes).
    pub need_task_ids: bool,
}

impl Emit {
    /// Whether the subprocess now waits for a reply with the target task ids:
    /// unless it said `need_task_ids: false`, or emitted to one task directly.
    pub fn waits_for_task_ids(&self) -> bool {
        self.need_task_ids && self.task.is_none()
    }
}

fn malformed(command: &str, reason: impl Into<String>) -> ReadError {
    ReadError::Malformed {
        command: command.to_string(),
        reason: reason.into(),
    }
}

/// Interpret a message a subprocess sent.
pub fn parse(msg: Json) -> Result<ShellMsg, ReadError> {
    let mut obj = match msg {
        Json::Object(o) => o,
        Json::Array(_) => return Ok(ShellMsg::TaskIds),
        other => return Err(ReadError::NotJson(format!("not an object: {other}"))),
    };
    let Some(command) = obj.get("command") else {
        return match obj.get("pid").and_then(Json::as_u64) {
            Some(pid) => Ok(ShellMsg::Pid(u32::try_from(pid).unwrap_or(u32::MAX))),
            None => Err(malformed("?", "no 'command'")),
        };
    };
    let command = command
        .as_str()
        .ok_or_else(|| malformed("?", "'command' is not a string"))?
        .to_string();
    let text = |obj: &mut Map<String, Json>, key: &str| match obj.remove(key) {
        Some(Json::String(s)) => s,
        Some(Json::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    Ok(match command.as_str() {
        "emit" => ShellMsg::Emit(parse_emit(&command, &mut obj)?),
        "ack" | "fail" => {
            let id = obj
                .remove("id")
                .ok_or_else(|| malformed(&command, "no 'id'"))?;
            if command == "ack" {
                ShellMsg::Ack { id }
            } else {
                ShellMsg::Fail { id }
            }
        }
        "sync" => ShellMsg::Sync,
        "log" => {
            let level = obj.get("level").and_then(Json::as_u64).unwrap_or(2).min(4) as u8;
            ShellMsg::Log {
                msg: text(&mut obj, "msg"),
                level,
            }
        }
        "error" => ShellMsg::Error {
            msg: text(&mut obj, "msg"),
        },
        "metrics" => ShellMsg::Metrics {
            name: text(&mut obj, "name"),
            params: obj.remove("params").unwrap_or(Json::Null),
        },
        _ => ShellMsg::Unknown(command),
    })
}

fn parse_emit(command: &str, obj: &mut Map<String, Json>) -> Result<Emit, ReadError> {
    let values = match obj.remove("tuple") {
        Some(Json::Array(vs)) => vs.into_iter().map(from_json).collect(),
        Some(other) => {
            return Err(malformed(
                command,
                format!("'tuple' is not a list: {other}"),
            ));
        }
        None => return Err(malformed(command, "no 'tuple'")),
    };
    let stream = match obj.remove("stream") {
        Some(Json::String(s)) => Some(s),
        Some(Json::Null) | None => None,
        Some(other) => {
            return Err(malformed(
                command,
                format!("'stream' is not a string: {other}"),
            ));
        }
    };
    let anchors = match obj.remove("anchors") {
        Some(Json::Array(a)) => a,
        Some(Json::Null) | None => Vec::new(),
        Some(one) => vec![one],
    };
    let task = match obj.remove("task") {
        Some(Json::Null) | None => None,
        Some(t) => Some(
            t.as_u64()
                .and_then(|t| TaskId::try_from(t).ok())
                .ok_or_else(|| malformed(command, format!("'task' is not a task id: {t}")))?,
        ),
    };
    let id = obj.remove("id").filter(|v| !v.is_null());
    let need_task_ids = obj
        .get("need_task_ids")
        .and_then(Json::as_bool)
        .unwrap_or(true);
    Ok(Emit {
        stream,
        values,
        anchors,
        id,
        task,
        need_task_ids,
    })
}

/// A JSON value from a subprocess as a tuple value. Lists and maps travel as their
/// JSON text ([`Value::Json`]) and reach the next multilang component as they were.
pub fn from_json(v: Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(SmolStr::from(s)),
        other => Value::Json(other.to_string().into()),
    }
}

/// A tuple value as JSON for a subprocess. Bytes become a string when they are
/// UTF-8 (Kafka payloads usually are), else a list of byte values.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Str(s) => Json::String(s.to_string()),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Json::String(s.to_string()),
            Err(_) => Json::Array(b.iter().map(|x| json!(x)).collect()),
        },
        Value::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| Json::String(j.to_string())),
    }
}

/// A tuple for a shell bolt (Storm's `BoltMsg`).
pub fn tuple_message(id: &str, comp: &str, stream: &str, task: i64, values: &[Value]) -> Json {
    json!({
        "id": id,
        "comp": comp,
        "stream": stream,
        "task": task,
        "tuple": values.iter().map(to_json).collect::<Vec<_>>(),
    })
}

/// A command for a shell spout: `next`, `activate`, `deactivate`, or `ack`/`fail` with an id.
pub fn spout_command(command: &str, id: Option<&Json>) -> Json {
    match id {
        Some(id) => json!({"command": command, "id": id}),
        None => json!({"command": command}),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(bytes: &[u8]) -> Result<Json, ReadError> {
        read_message(&mut std::io::BufReader::new(bytes))
    }

    #[test]
    fn frames_round_trip_with_newlines_inside() {
        let msg = json!({"command": "log", "msg": "two\nlines"});
        let framed = frame(&msg);
        assert_eq!(read(&framed).unwrap(), msg);
        // storm.py prints the JSON and `end` on lines of their own.
        assert_eq!(
            read(b"{\"command\":\"sync\"}\nend\n").unwrap(),
            json!({"command": "sync"})
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(read(b"hello\nend\n"), Err(ReadError::NotJson(_))));
        assert!(matches!(read(b"{\"command\":"), Err(ReadError::Eof)));
        assert!(matches!(read(b""), Err(ReadError::Eof)));
        assert!(matches!(
            parse(json!({"command": "emit", "tuple": 5})),
            Err(ReadError::Malformed { .. })
        ));
        assert!(matches!(
            parse(json!({"command": "emit", "tuple": [], "task": "x"})),
            Err(ReadError::Malformed { .. })
        ));
        assert!(matches!(parse(json!("sync")), Err(ReadError::NotJson(_))));
    }

    #[test]
    fn an_endless_message_is_cut_off() {
        let long = vec![b'x'; MAX_MESSAGE_BYTES + 10];
        assert!(matches!(read(&long), Err(ReadError::TooLong)));
        let mut lines = Vec::new();
        while lines.len() <= MAX_MESSAGE_BYTES {
            lines.extend_from_slice(b"[1,2,3,4,5,6,7,8]\n");
        }
        assert!(matches!(read(&lines), Err(ReadError::TooLong)));
    }

    #[test]
    fn emits_parse_as_storm_sends_them() {
        let m = parse(json!({"command": "emit", "anchors": ["7"], "tuple": ["a", 1, 2.5, [1], {"k": null}], "stream": "s"})).unwrap();
        let ShellMsg::Emit(e) = m else { panic!() };
        assert_eq!(e.stream.as_deref(), Some("s"));
        assert_eq!(e.anchors, vec![json!("7")]);
        assert!(e.need_task_ids);
        assert_eq!(e.values[0], Value::from("a"));
        assert_eq!(e.values[1], Value::Int(1));
        assert_eq!(e.values[2], Value::Float(2.5));
        assert_eq!(to_json(&e.values[3]), json!([1]));
        assert_eq!(to_json(&e.values[4]), json!({"k": null}));
        let ShellMsg::Emit(e) = parse(
            json!({"command": "emit", "id": "m-1", "tuple": [], "need_task_ids": false, "task": 4}),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.id, Some(json!("m-1")));
        assert_eq!(e.task, Some(4));
        assert!(!e.need_task_ids);
        assert_eq!(parse(json!({"pid": 42})).unwrap(), ShellMsg::Pid(42));
        assert_eq!(
            parse(json!({"command": "log", "msg": "hi", "level": 9})).unwrap(),
            ShellMsg::Log {
                msg: "hi".into(),
                level: 4
            }
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut r = std::io::BufReader::new(&bytes[..]);
            for _ in 0..8 {
                match read_message(&mut r) {
                    Ok(j) => { let _ = parse(j); }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn random_json_never_panics(s in "[\\[\\]{}\":,a-z0-9 ]{0,64}") {
            if let Ok(j) = serde_json::from_str::<Json>(&s) {
                let _ = parse(j);
            }
        }
    }
}
