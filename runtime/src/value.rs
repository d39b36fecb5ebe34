//! Object values: bytes plus the format that says how to read them.
//!
//! Task functions see [`Value`]s: JSON documents or raw bytes. On the wire a
//! value is an `ObjectValue` (format + bytes); an error object carries an
//! encoded `TaskError`, so that reading it yields the failure of the task that
//! should have produced it.

use bytes::Bytes;
use prost::Message;
use shoal_proto::v1 as pb;

use crate::error::{ErrorKind, TaskError};

/// Values at or below this size travel inline with task specs and results;
/// larger ones stay in an object store and are passed by reference.
pub const INLINE_LIMIT: usize = 100 * 1024;

/// A task argument or result.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A JSON document.
    Json(serde_json::Value),
    /// Uninterpreted bytes.
    Bytes(Bytes),
}

impl Value {
    /// The JSON document, or `None` for raw bytes.
    pub fn as_json(&self) -> Option<&serde_json::Value> {
        match self {
            Value::Json(v) => Some(v),
            Value::Bytes(_) => None,
        }
    }

    /// The value as JSON, describing raw bytes as `{"bytes": LEN}` when they
    /// are not UTF-8 text.
    pub fn to_json_lossy(&self) -> serde_json::Value {
        match self {
            Value::Json(v) => v.clone(),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => serde_json::Value::String(s.to_string()),
                Err(_) => serde_json::json!({ "bytes": b.len() }),
            },
        }
    }

    /// Encodes the value for the wire.
    pub fn encode(&self) -> pb::ObjectValue {
        match self {
            Value::Json(v) => pb::ObjectValue {
                format: pb::Format::Json as i32,
                // Serialising a `serde_json::Value` cannot fail.
                data: Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
                nested_refs: Vec::new(),
            },
            Value::Bytes(b) => {
                pb::ObjectValue { format: pb::Format::Raw as i32, data: b.clone(), nested_refs: Vec::new() }
            }
        }
    }

    /// Decodes a wire value; an error object becomes `Err` with its task error.
    #[allow(clippy::result_large_err)] // the task error is the point of the call
    pub fn decode(v: &pb::ObjectValue) -> Result<Value, TaskError> {
        match pb::Format::try_from(v.format) {
            Ok(pb::Format::Json) => serde_json::from_slice(&v.data)
                .map(Value::Json)
                .map_err(|e| TaskError::new(ErrorKind::CorruptObject, format!("object is not valid JSON: {e}"))),
            Ok(pb::Format::Raw) => Ok(Value::Bytes(v.data.clone())),
            Ok(pb::Format::Error) => Err(decode_error(v)),
            Ok(pb::Format::Pickle5) => Err(TaskError::new(
                ErrorKind::UnsupportedFormat,
                "the object is a pickled Python value: read it from Python (`shoal.get`)",
            )),
            Ok(pb::Format::Msgpack) | Err(_) => Err(TaskError::new(
                ErrorKind::UnsupportedFormat,
                format!("object format {} is not supported", v.format),
            )),
        }
    }

    /// Size of the encoded value in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Json(v) => serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0),
            Value::Bytes(b) => b.len(),
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(v)
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Self {
        Value::Bytes(b)
    }
}

/// Encodes a task error as an error object.
pub fn error_value(err: &TaskError) -> pb::ObjectValue {
    let msg: pb::TaskError = err.into();
    pb::ObjectValue {
        format: pb::Format::Error as i32,
        data: Bytes::from(msg.encode_to_vec()),
        nested_refs: Vec::new(),
    }
}

/// Reads the task error out of an error object.
pub fn decode_error(v: &pb::ObjectValue) -> TaskError {
    match pb::TaskError::decode(v.data.clone()) {
        Ok(e) => TaskError::from(&e),
        Err(e) => TaskError::new(ErrorKind::CorruptObject, format!("error object does not decode: {e}")),
    }
}

/// Whether the wire value is an error object.
pub fn is_error(v: &pb::ObjectValue) -> bool {
    v.format == pb::Format::Error as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_errors_decode_as_errors() {
        let j = Value::Json(serde_json::json!({"a": [1, 2]}));
        assert_eq!(Value::decode(&j.encode()).unwrap(), j);
        let b = Value::Bytes(Bytes::from_static(b"\x00\xff"));
        assert_eq!(Value::decode(&b.encode()).unwrap(), b);
        let e = TaskError::new(ErrorKind::TaskFailed, "boom");
        let got = Value::decode(&error_value(&e)).unwrap_err();
        assert_eq!(got.kind, ErrorKind::TaskFailed);
        assert_eq!(got.message, "boom");
        let corrupt = pb::ObjectValue { format: 0, data: Bytes::from_static(b"{nope"), ..Default::default() };
        assert_eq!(Value::decode(&corrupt).unwrap_err().kind, ErrorKind::CorruptObject);
    }
}
