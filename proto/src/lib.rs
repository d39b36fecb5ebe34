//! shoal's wire protocol, generated from the `.proto` files in `proto/`.
//!
//! Every message and service lives in the `shoal.v1` package; this crate
//! re-exports it flat as [`v1`].

#![allow(missing_docs, clippy::all)]

/// Generated types and gRPC stubs of the `shoal.v1` package.
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub use v1::*;
