//! shoal: a Kubernetes-native distributed task runtime.
//!
//! This crate re-exports the runtime library so that programs can write
//! `shoal::Client::connect(addr)`.

pub use shoal_runtime::*;
