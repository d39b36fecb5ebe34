//! Asking a cluster's head which nodes are idle, over its REST API (`GET /api/v1/nodes`).
//!
//! Used only on scale-down, to remove idle raylets first. Behind the [`NodeSource`] trait so
//! the reconciler's tests run without a head. Failures are not fatal to a reconcile: the
//! planner then orders victims without idle information.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::labels::NODE_POD;

/// How long one request to a head may take.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body read from a head (a node list of thousands of nodes fits).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A failed request to a head.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The URL could not be built.
    #[error("bad head URL {url}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        source: http::Error,
    },
    /// Connecting, sending or reading failed.
    #[error("request to {url} failed: {message}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The head answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body was not the node list.
    #[error("{url} returned an unexpected body: {source}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// A boxed future returned by [`NodeSource`] (object-safe async).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the reconciler learns which pods' nodes are idle.
pub trait NodeSource: Send + Sync {
    /// Names of the pods whose node is alive and idle, from the head at `base_url`
    /// (e.g. `http://demo-head.default.svc:8265`), with an optional bearer token.
    fn idle_pods<'a>(
        &'a self,
        base_url: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BTreeSet<String>, HeadError>>;
}

/// The node list of `GET /api/v1/nodes` (fields the operator does not use are ignored).
#[derive(Debug, Deserialize)]
pub struct NodeList {
    /// Every node the GCS knows.
    pub nodes: Vec<NodeInfo>,
}

/// One node of [`NodeList`].
#[derive(Debug, Deserialize)]
pub struct NodeInfo {
    /// `ALIVE` or `DEAD`.
    pub state: String,
    /// Node labels; `shoal.dev/pod` names the pod.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// No task is running or queued on the node.
    #[serde(default)]
    pub idle: bool,
}

impl NodeList {
    /// Pod names of alive, idle nodes.
    pub fn idle_pods(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|n| n.state == "ALIVE" && n.idle)
            .filter_map(|n| n.labels.get(NODE_POD).cloned())
            .collect()
    }
}

/// [`NodeSource`] over plain HTTP/1.
pub struct RestNodeSource {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Default for RestNodeSource {
    fn default() -> Self {
        Self { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl NodeSource for RestNodeSource {
    fn idle_pods<'a>(
        &'a self,
        base_url: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BTreeSet<String>, HeadError>> {
        Box::pin(async move {
            let url = format!("{base_url}/api/v1/nodes");
            let mut request = http::Request::get(&url).header("accept", "application/json");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {}", token.trim()));
            }
            let request = request.body(Empty::new()).map_err(|source| HeadError::Url { url: url.clone(), source })?;
            let failed = |message: String| HeadError::Request { url: url.clone(), message };
            let response = tokio::time::timeout(HEAD_TIMEOUT, self.client.request(request))
                .await
                .map_err(|_| failed("timed out".into()))?
                .map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                return Err(HeadError::Status { url: url.clone(), status: status.as_u16() });
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES);
            let bytes = tokio::time::timeout(HEAD_TIMEOUT, body.collect())
                .await
                .map_err(|_| failed("timed out reading the body".into()))?
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            let list: NodeList =
                serde_json::from_slice(&bytes).map_err(|source| HeadError::Body { url: url.clone(), source })?;
            Ok(list.idle_pods())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_alive_idle_nodes_with_a_pod_label_count() {
        let list: NodeList = serde_json::from_value(serde_json::json!({"nodes": [
            {"node_id": "a1", "state": "ALIVE", "address": "10.0.0.1:6380", "idle": true, "labels": {"shoal.dev/pod": "demo-cpu-aaaaa"}},
            {"node_id": "a2", "state": "ALIVE", "idle": false, "labels": {"shoal.dev/pod": "demo-cpu-bbbbb"}},
            {"node_id": "a3", "state": "DEAD", "idle": true, "labels": {"shoal.dev/pod": "demo-cpu-ccccc"}},
            {"node_id": "a4", "state": "ALIVE", "idle": true, "labels": {}}
        ]}))
        .expect("parses");
        assert_eq!(list.idle_pods(), BTreeSet::from(["demo-cpu-aaaaa".to_string()]));
    }
}
