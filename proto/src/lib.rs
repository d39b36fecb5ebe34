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

/// One gRPC method of a shoal service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// The HTTP/2 path, `/shoal.v1.Service/Method`.
    pub path: &'static str,
    /// Whether the client sends a stream.
    pub client_streaming: bool,
    /// Whether the server answers with a stream.
    pub server_streaming: bool,
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));
