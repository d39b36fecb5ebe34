//! shoal's runtime: a distributed task runtime in the spirit of Ray's task
//! system.
//!
//! - [`gcs`]: the global control service (membership, resource view, jobs, KV);
//! - [`raylet`]: per node, the owner of submitted tasks, the local scheduler,
//!   worker pool, object store and object manager;
//! - [`worker`]: the process that runs tasks (builtins and `exec` commands);
//! - [`client`]: the Rust client (`connect`, `submit`, `get`, `put`, `wait`);
//! - [`job`]: the job-spec format and its validation; [`driver`] runs one;
//! - [`local_cluster`]: a head and N raylets as local processes;
//!   [`discovery`] finds the one `shoal up` started;
//! - [`rest`]: the head's REST API and job manager; [`metrics`]: the
//!   Prometheus metrics every process serves.

#![warn(missing_docs, rust_2018_idioms)]

pub mod auth;
pub mod bench;
pub mod client;
pub mod discovery;
pub mod driver;
pub mod error;
pub mod frame;
pub mod gcs;
pub mod head;
pub mod http;
pub mod ids;
pub mod job;
pub mod local_cluster;
pub mod metrics;
pub mod net;
pub mod process;
pub mod raylet;
pub mod resources;
pub mod rest;
pub mod strategy;
pub mod value;
pub mod worker;

pub use client::{node_stats, Client, ConnectOptions, ObjectRef, Task, TaskArg};
pub use error::{Error, ErrorKind, TaskError};
pub use ids::{JobId, NodeId, ObjectId, TaskId, WorkerId};
pub use resources::ResourceSet;
pub use strategy::Strategy;
pub use value::Value;
