//! Errors of the runtime, and the one vocabulary of error kinds.
//!
//! [`ErrorKind`] names what went wrong in one word that every component
//! agrees on: a task error carries it, a gRPC status carries it (as the
//! [`KIND_METADATA`] entry next to the kind's [`tonic::Code`]), and a REST
//! error carries it (as the kind's HTTP status and the `kind` field of the
//! body). So a kind survives every hop: a raylet that fails a task with
//! `ObjectStoreFull` is read as `ObjectStoreFull` by the client, by the head
//! and by a REST user alike.
//!
//! [`TaskError`] is the failure of one task as every component reports it:
//! its kind, message, and which task, function, node and attempt.
//! [`Error`](enum@Error) is what the client and the processes return; every
//! variant has a [`kind`](Error::kind), and [`status`] / [`kind_of`] are the
//! one way to put an error on the gRPC wire and read it back.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_proto::v1 as pb;
use thiserror::Error;
use tonic::Code;

/// The gRPC metadata entry that carries an error's [`ErrorKind`] (its wire
/// name). A status without it was made by the transport, not sent by a
/// shoal process.
pub const KIND_METADATA: &str = "shoal-error-kind";

macro_rules! error_kinds {
    ($($(#[$doc:meta])* $name:ident => $code:ident, $http:literal;)*) => {
        /// What went wrong, in one word shared by task errors, gRPC statuses
        /// and REST errors. The wire name (`as_str`) is the variant's name and
        /// is stable: `TaskError.kind` in the protobuf carries it as a string,
        /// and a name this build does not know reads as [`ErrorKind::Internal`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum ErrorKind {
            $($(#[$doc])* $name,)*
        }

        impl ErrorKind {
            /// Every kind.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$name,)*];

            /// The stable wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$name => stringify!($name),)*
                }
            }

            /// The gRPC code a status of this kind carries.
            pub fn grpc_code(self) -> Code {
                match self {
                    $(ErrorKind::$name => Code::$code,)*
                }
            }

            /// The HTTP status a REST answer of this kind carries.
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorKind::$name => $http,)*
                }
            }
        }
    };
}

error_kinds! {
    // What a task's function did.
    /// The task's function returned an error or panicked.
    TaskFailed => Aborted, 424;
    /// An `exec` task's command could not start, exited non-zero, or wrote
    /// output that is not its result.
    ExecFailed => Aborted, 424;
    /// The worker running the task died (after every retry).
    WorkerDied => Aborted, 424;
    /// The node running the task died (after every retry).
    NodeDied => Aborted, 424;
    /// The task could not be sent to its node (after every retry).
    NodeUnreachable => Unavailable, 503;
    /// The raylet could not start a worker for the task.
    WorkerStartFailed => Unavailable, 503;
    /// The task was cancelled; it never produces a value.
    Cancelled => Cancelled, 410;
    // What the task asked for.
    /// No node has, or will ever have, the resources or labels the task needs.
    Infeasible => FailedPrecondition, 422;
    /// The task names a function its worker does not have.
    UnknownFunction => InvalidArgument, 422;
    /// The task spec is not valid (no function, bad resources, bad ids...).
    InvalidTask => InvalidArgument, 422;
    // What happened to an object.
    /// Every copy of the object is lost and it cannot be rebuilt.
    ObjectLost => DataLoss, 410;
    /// The owner of the object died, and the object with it.
    OwnerDied => DataLoss, 410;
    /// The object store has no room for the object, even after spilling.
    ObjectStoreFull => ResourceExhausted, 507;
    /// A transfer of the object arrived damaged: a checksum mismatch, a
    /// stream that ended early, chunks out of order.
    TransferCorrupt => DataLoss, 502;
    /// A stored object does not decode (not the JSON or error it claims).
    CorruptObject => DataLoss, 500;
    /// The object is in a format this build does not read.
    UnsupportedFormat => Unimplemented, 501;
    // What happened to a request.
    /// The request is malformed or names something in a malformed way.
    InvalidRequest => InvalidArgument, 400;
    /// The request needs a valid credential.
    Unauthenticated => Unauthenticated, 401;
    /// What the request names does not exist.
    NotFound => NotFound, 404;
    /// The request conflicts with the current state of what it names.
    Conflict => FailedPrecondition, 409;
    /// The request ran out of time.
    Timeout => DeadlineExceeded, 504;
    /// The service cannot serve the request now (no raylet, the GCS is
    /// unreachable, a session ended).
    Unavailable => Unavailable, 503;
    /// A bug or an unexpected failure, and every kind this build does not
    /// know (from a newer peer).
    #[default]
    Internal => Internal, 500;
}

impl ErrorKind {
    /// Reads a wire name; a name this build does not know is [`ErrorKind::Internal`]
    /// (the message that comes with it is kept by the caller).
    pub fn parse(name: &str) -> ErrorKind {
        ErrorKind::ALL.iter().copied().find(|k| k.as_str() == name).unwrap_or(ErrorKind::Internal)
    }

    /// The kind of a status made by the transport rather than sent by a shoal
    /// process (no [`KIND_METADATA`]). tonic reports a refused connection as
    /// `Unavailable` and a connection that broke mid-call as `Unknown` or
    /// `Cancelled`: all three mean the peer could not be reached.
    fn of_bare_code(code: Code) -> ErrorKind {
        match code {
            Code::Unavailable | Code::Unknown | Code::Cancelled => ErrorKind::NodeUnreachable,
            Code::DeadlineExceeded => ErrorKind::Timeout,
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidRequest,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => ErrorKind::Conflict,
            Code::ResourceExhausted => ErrorKind::ObjectStoreFull,
            Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Unauthenticated,
            Code::Unimplemented => ErrorKind::UnsupportedFormat,
            Code::DataLoss => ErrorKind::ObjectLost,
            Code::Ok | Code::Internal => ErrorKind::Internal,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gRPC status of `kind`: its code, `message`, and the kind by name in
/// [`KIND_METADATA`], so that [`kind_of`] reads back exactly `kind`.
pub fn status(kind: ErrorKind, message: impl Into<String>) -> tonic::Status {
    let mut s = tonic::Status::new(kind.grpc_code(), message);
    s.metadata_mut().insert(KIND_METADATA, tonic::metadata::MetadataValue::from_static(kind.as_str()));
    s
}

/// The kind of a gRPC status: the one its sender named, or for a status
/// the transport made (the peer was not reached), the kind its code implies.
pub fn kind_of(s: &tonic::Status) -> ErrorKind {
    match s.metadata().get(KIND_METADATA).and_then(|v| v.to_str().ok()) {
        Some(name) => ErrorKind::parse(name),
        None => ErrorKind::of_bare_code(s.code()),
    }
}

/// Why a task or its result failed, with where and when.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Human-readable reason.
    pub message: String,
    /// Task id in hex.
    pub task_id: String,
    /// Task name (job spec id or function).
    pub task_name: String,
    /// Function descriptor.
    pub function: String,
    /// Node id in hex where the last attempt ran.
    pub node_id: String,
    /// Attempt number, starting at 0.
    pub attempt: u32,
    /// The last lines the task wrote to stderr.
    pub stderr_tail: String,
    /// The exception the function raised, serialized by its language's
    /// runtime (pickled, for Python); empty for builtins and commands.
    pub cause: bytes::Bytes,
    /// The function's traceback as its language prints it.
    pub traceback: String,
}

impl TaskError {
    /// An error of `kind` with `message` and no task context yet.
    pub fn new(kind: impl Into<ErrorKind>, message: impl Into<String>) -> Self {
        TaskError { kind: kind.into(), message: message.into(), ..Default::default() }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.task_name.is_empty() || !self.task_id.is_empty() {
            write!(f, " in task `{}`", if self.task_name.is_empty() { &self.task_id } else { &self.task_name })?;
            if !self.task_id.is_empty() && !self.task_name.is_empty() {
                write!(f, " ({})", self.task_id)?;
            }
        }
        if !self.function.is_empty() {
            write!(f, " running {}", self.function)?;
        }
        if !self.node_id.is_empty() {
            write!(f, " on node {}", self.node_id)?;
        }
        if !self.task_id.is_empty() {
            write!(f, ", attempt {}", self.attempt)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.stderr_tail.is_empty() {
            write!(f, "\n--- stderr (tail) ---\n{}", self.stderr_tail.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}

impl From<&TaskError> for pb::TaskError {
    fn from(e: &TaskError) -> Self {
        pb::TaskError {
            kind: e.kind.as_str().to_string(),
            message: e.message.clone(),
            task_id: e.task_id.clone(),
            task_name: e.task_name.clone(),
            function: e.function.clone(),
            node_id: e.node_id.clone(),
            attempt: e.attempt,
            stderr_tail: e.stderr_tail.clone(),
            cause: e.cause.clone(),
            traceback: e.traceback.clone(),
        }
    }
}

impl From<&pb::TaskError> for TaskError {
    fn from(e: &pb::TaskError) -> Self {
        TaskError {
            kind: ErrorKind::parse(&e.kind),
            message: e.message.clone(),
            task_id: e.task_id.clone(),
            task_name: e.task_name.clone(),
            function: e.function.clone(),
            node_id: e.node_id.clone(),
            attempt: e.attempt,
            stderr_tail: e.stderr_tail.clone(),
            cause: e.cause.clone(),
            traceback: e.traceback.clone(),
        }
    }
}

impl From<&TaskError> for tonic::Status {
    fn from(e: &TaskError) -> Self {
        status(e.kind, e.to_string())
    }
}

/// Errors returned by the client and the runtime's processes.
#[derive(Debug, Error)]
pub enum Error {
    /// The task that should produce the object failed (boxed: errors carry
    /// a lot of context and must not bloat every `Result`).
    #[error(transparent)]
    Task(Box<TaskError>),
    /// `get` or `wait` ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
    /// A peer could not be reached or answered with an error.
    #[error("{context}: {status}")]
    Rpc {
        /// What was being done.
        context: String,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// Could not connect.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// The request was invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A value could not be converted to or from the requested type.
    #[error("value conversion: {0}")]
    Codec(String),
    /// The session with the raylet ended.
    #[error("session closed: {0}")]
    SessionClosed(String),
    /// The head's state store could not be opened or used.
    #[error(transparent)]
    State(#[from] crate::gcs::state::StateError),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<TaskError> for Error {
    fn from(e: TaskError) -> Self {
        Error::Task(Box::new(e))
    }
}

impl Error {
    /// Wraps a gRPC status with what was being done.
    pub fn rpc(context: impl Into<String>, status: tonic::Status) -> Self {
        Error::Rpc { context: context.into(), status: Box::new(status) }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// What went wrong, in the shared vocabulary.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Task(e) => e.kind,
            Error::Timeout(..) => ErrorKind::Timeout,
            Error::Rpc { status, .. } => kind_of(status),
            Error::Connect { .. } => ErrorKind::NodeUnreachable,
            Error::Invalid(_) => ErrorKind::InvalidRequest,
            // A value of another type than the caller asked for.
            Error::Codec(_) => ErrorKind::InvalidRequest,
            Error::SessionClosed(_) => ErrorKind::Unavailable,
            Error::Io { .. } => ErrorKind::Internal,
            Error::State(_) => ErrorKind::Internal,
        }
    }
}

impl From<&Error> for tonic::Status {
    fn from(e: &Error) -> Self {
        status(e.kind(), e.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::from(&e)
    }
}

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_wire_name() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), *k);
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
        }
        assert!(ErrorKind::ALL.len() >= 20);
    }

    #[test]
    fn an_unknown_kind_from_a_newer_peer_reads_as_internal_keeping_its_message() {
        let wire =
            pb::TaskError { kind: "QuantumDecoherence".into(), message: "it happened".into(), ..Default::default() };
        let e = TaskError::from(&wire);
        assert_eq!(e.kind, ErrorKind::Internal);
        assert_eq!(e.message, "it happened");
    }

    #[test]
    fn a_task_error_keeps_its_kind_through_protobuf() {
        for k in ErrorKind::ALL {
            let e = TaskError { kind: *k, message: "m".into(), attempt: 2, ..Default::default() };
            assert_eq!(TaskError::from(&pb::TaskError::from(&e)), e);
        }
    }

    #[test]
    fn a_status_carries_its_kind_even_where_codes_collide() {
        // Several kinds share a gRPC code; the metadata tells them apart.
        for k in ErrorKind::ALL {
            let s = status(*k, "why");
            assert_eq!(s.code(), k.grpc_code());
            assert_eq!(kind_of(&s), *k, "{k}");
            assert_eq!(s.message(), "why");
        }
        let e = Error::from(TaskError::new(ErrorKind::ObjectStoreFull, "no room"));
        let s = tonic::Status::from(&e);
        assert_eq!(kind_of(&s), ErrorKind::ObjectStoreFull);
        assert_eq!(Error::rpc("put", s).kind(), ErrorKind::ObjectStoreFull);
    }

    #[test]
    fn a_status_the_transport_made_reads_as_an_unreachable_peer() {
        for code in [Code::Unavailable, Code::Unknown, Code::Cancelled] {
            assert_eq!(kind_of(&tonic::Status::new(code, "connection reset")), ErrorKind::NodeUnreachable);
        }
        // A cancelled task answered by a raylet is not an unreachable peer.
        assert_eq!(kind_of(&status(ErrorKind::Cancelled, "cancelled")), ErrorKind::Cancelled);
        assert_eq!(kind_of(&status(ErrorKind::Internal, "bug")), ErrorKind::Internal);
    }

    #[test]
    fn every_client_error_has_a_kind() {
        let d = std::time::Duration::from_secs(1);
        assert_eq!(Error::Timeout(d, "x".into()).kind(), ErrorKind::Timeout);
        assert_eq!(Error::Invalid("x".into()).kind(), ErrorKind::InvalidRequest);
        assert_eq!(Error::SessionClosed("x".into()).kind(), ErrorKind::Unavailable);
        assert_eq!(Error::Connect { addr: "a".into(), reason: "r".into() }.kind(), ErrorKind::NodeUnreachable);
        assert_eq!(Error::io("x", std::io::Error::other("disk")).kind(), ErrorKind::Internal);
    }

    #[test]
    fn kinds_map_to_errors_in_http_and_grpc() {
        for k in ErrorKind::ALL {
            assert!((400..600).contains(&k.http_status()), "{k}");
            assert_ne!(k.grpc_code(), Code::Ok, "{k}");
        }
        // Bad input is the caller's fault, never the server's.
        for k in [ErrorKind::InvalidRequest, ErrorKind::InvalidTask, ErrorKind::NotFound, ErrorKind::Conflict] {
            assert!((400..500).contains(&k.http_status()), "{k}");
        }
    }

    #[test]
    fn wire_names_parse_back_and_unknown_ones_read_as_internal() {
        assert_eq!(ErrorKind::parse("WorkerDied"), ErrorKind::WorkerDied);
        assert_eq!(ErrorKind::parse("not a kind"), ErrorKind::Internal);
    }
}
