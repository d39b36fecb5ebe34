//! Identifiers of jobs, tasks, objects, nodes and workers.
//!
//! `JobId` < `TaskId` < `ObjectId`: a task id starts with its job id and an
//! object id is its creating task's id plus a return index, so re-running a
//! task recreates the same object ids. `put` objects carry the putting
//! session's task id with an index in a separate range (high bit set).
//! Node and worker ids are random. Every id prints as lowercase hex and parses
//! back.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A string or byte slice that is not a valid id.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid {kind} id `{input}`: expected {len} hex digits ({} bytes)", .len / 2)]
pub struct IdParseError {
    kind: &'static str,
    input: String,
    len: usize,
}

fn hex_encode(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn hex_decode<const N: usize>(kind: &'static str, s: &str) -> Result<[u8; N], IdParseError> {
    let err = || IdParseError { kind, input: s.chars().take(80).collect(), len: N * 2 };
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return Err(err());
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(err)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(err)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes, as carried in protobuf messages.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// Reads an id from protobuf bytes.
            pub fn from_slice(b: &[u8]) -> Result<Self, IdParseError> {
                let arr: [u8; $len] = b.try_into().map_err(|_| IdParseError {
                    kind: $kind,
                    input: format!("<{} bytes>", b.len()),
                    len: $len * 2,
                })?;
                Ok(Self(arr))
            }

            /// The id as an owned byte vector for protobuf messages.
            pub fn to_vec(&self) -> Vec<u8> {
                self.0.to_vec()
            }

            /// The id as `bytes::Bytes` for protobuf messages.
            pub fn to_bytes(&self) -> bytes::Bytes {
                bytes::Bytes::copy_from_slice(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                hex_encode(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                hex_encode(&self.0, f)?;
                write!(f, ")")
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                hex_decode::<$len>($kind, s).map(Self)
            }
        }
    };
}

byte_id!(
    /// A raylet, random at start. A raylet that restarts is a new node.
    NodeId, 8, "node"
);
byte_id!(
    /// A worker process, random at start.
    WorkerId, 8, "worker"
);
byte_id!(
    /// A task: its job id followed by 8 random bytes.
    TaskId, 12, "task"
);
byte_id!(
    /// An object: its creating task id followed by a big-endian u32 index.
    ObjectId, 16, "object"
);

/// A job: a number handed out by the GCS, starting at 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct JobId(pub u32);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl FromStr for JobId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex_decode::<4>("job", s).map(|b| JobId(u32::from_be_bytes(b)))
    }
}

/// Return indexes at or above this value name `put` objects.
pub const PUT_INDEX_BASE: u32 = 1 << 31;

impl NodeId {
    /// A fresh random node id.
    pub fn random() -> Self {
        Self(fastrand::u64(..).to_be_bytes())
    }
}

impl WorkerId {
    /// A fresh random worker id.
    pub fn random() -> Self {
        Self(fastrand::u64(..).to_be_bytes())
    }
}

/// Most return values one task may declare (its return ids are indexed 0..this).
pub const MAX_RETURNS: u32 = 1024;

impl TaskId {
    /// A fresh task id within `job`.
    pub fn random(job: JobId) -> Self {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&job.0.to_be_bytes());
        b[4..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        Self(b)
    }

    /// The job this task belongs to.
    pub fn job(&self) -> JobId {
        JobId(u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]))
    }

    /// The id of this task's return number `index` (0-based).
    pub fn return_id(&self, index: u32) -> ObjectId {
        ObjectId::new(*self, index)
    }

    /// The id of the `index`-th object put by this task or driver.
    pub fn put_id(&self, index: u32) -> ObjectId {
        ObjectId::new(*self, PUT_INDEX_BASE | index)
    }
}

impl ObjectId {
    /// The object `index` of `task`.
    pub fn new(task: TaskId, index: u32) -> Self {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&task.0);
        b[12..].copy_from_slice(&index.to_be_bytes());
        Self(b)
    }

    /// The task that creates (or put) this object.
    pub fn task_id(&self) -> TaskId {
        let mut b = [0u8; 12];
        b.copy_from_slice(&self.0[..12]);
        TaskId(b)
    }

    /// The raw index: a return index, or a put index with the high bit set.
    pub fn index(&self) -> u32 {
        u32::from_be_bytes([self.0[12], self.0[13], self.0[14], self.0[15]])
    }

    /// Whether the object was made by `put` (and so cannot be rebuilt).
    pub fn is_put(&self) -> bool {
        self.index() & PUT_INDEX_BASE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_hex_and_parse_back() {
        let job = JobId(7);
        let task = TaskId::random(job);
        assert_eq!(task.job(), job);
        let obj = task.return_id(3);
        assert_eq!(obj.task_id(), task);
        assert_eq!(obj.index(), 3);
        assert!(!obj.is_put());
        assert!(task.put_id(0).is_put());
        let s = obj.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<ObjectId>().unwrap(), obj);
        assert_eq!(job.to_string().parse::<JobId>().unwrap(), job);
        let n = NodeId::random();
        assert_eq!(n.to_string().parse::<NodeId>().unwrap(), n);
    }

    #[test]
    fn bad_ids_are_rejected_with_their_kind() {
        let e = "xyz".parse::<NodeId>().unwrap_err();
        assert!(e.to_string().contains("node"));
        assert!("zz".repeat(8).parse::<NodeId>().is_err());
        assert!(ObjectId::from_slice(&[1, 2, 3]).is_err());
    }
}
