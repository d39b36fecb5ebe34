//! The shoal Kubernetes operator: the `TaskCluster` custom resource and its reconciler.
//!
//! A `TaskCluster` (`shoal.dev/v1alpha1`, short name `tc`) becomes one head pod (GCS and
//! REST API) behind a Service, and per worker group up to `replicas` raylet pods, all
//! owned by the cluster. The root binary exposes this crate as `shoal operator` ([`run`]
//! with [`OperatorArgs`]) and `shoal crd` ([`crd_yaml`]).
//!
//! # How a reconcile flows
//!
//! ```text
//!  TaskCluster ──► validate ──► build (pure) ──► plan (pure) ──► apply / delete ──► status
//!                  validate.rs   build.rs        plan.rs         reconcile.rs       status.rs
//!                                                   ▲
//!              pod cache (watch) ─► expectations ───┘  head REST (idle nodes, scale-down only)
//! ```
//!
//! - [`crd`]: the Rust types the CRD is generated from, with its CEL rules.
//! - [`validate`]: permissive spec → typed [`validate::ValidCluster`]; every problem at once.
//! - [`build`]: the head Service, head pod and raylet pods, as pure functions.
//! - [`plan`]: which pods to create and delete (scale, rollout, suspend, recreate).
//! - [`expectations`]: unobserved creates/deletes, so a stale cache never acts twice.
//! - [`status`]: phase, conditions and counts.
//! - [`reconcile`]: the only module that calls the API server during a reconcile.
//! - [`controller`]: watches, leader election, metrics server, shutdown.
//!
//! Everything but `reconcile` and `controller` is tested without any API server; the
//! reconciler is tested against a mocked one that asserts each call and body.
#![warn(missing_docs, rust_2018_idioms)]

pub mod args;
pub mod build;
pub mod controller;
pub mod crd;
pub mod error;
pub mod expectations;
pub mod head;
pub mod labels;
pub mod metrics;
pub mod plan;
pub mod quantity;
pub mod reconcile;
pub mod render;
pub mod status;
pub mod validate;

#[cfg(test)]
mod fixtures;

pub use args::{OperatorAction, OperatorArgs, OperatorCommand};
pub use controller::run;
pub use crd::{crd_yaml, TaskCluster, TaskClusterSpec, TaskClusterStatus};
pub use error::Error;
