//! Errors of the runtime.
//!
//! [`TaskError`] is the failure of one task as every component reports it: its
//! kind, message, and which task, function, node and attempt. [`Error`](enum@Error) is what
//! the client and the processes return; it maps to gRPC status codes so that
//! an error keeps its meaning across the wire.

use std::fmt;

use shoal_proto::v1 as pb;
use thiserror::Error;

/// Why a task or its result failed, with where and when.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskError {
    /// Machine-readable kind: `TaskFailed`, `ExecFailed`, `WorkerDied`,
    /// `Infeasible`, `ObjectLost`, `OwnerDied`, `UnknownFunction`, ...
    pub kind: String,
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
}

impl TaskError {
    /// An error of `kind` with `message` and no task context yet.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
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
            kind: e.kind.clone(),
            message: e.message.clone(),
            task_id: e.task_id.clone(),
            task_name: e.task_name.clone(),
            function: e.function.clone(),
            node_id: e.node_id.clone(),
            attempt: e.attempt,
            stderr_tail: e.stderr_tail.clone(),
        }
    }
}

impl From<&pb::TaskError> for TaskError {
    fn from(e: &pb::TaskError) -> Self {
        TaskError {
            kind: e.kind.clone(),
            message: e.message.clone(),
            task_id: e.task_id.clone(),
            task_name: e.task_name.clone(),
            function: e.function.clone(),
            node_id: e.node_id.clone(),
            attempt: e.attempt,
            stderr_tail: e.stderr_tail.clone(),
        }
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
}

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
