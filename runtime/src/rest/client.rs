//! A small client of the REST API (plain HTTP/1 over hyper), used by the
//! `shoal` user commands and the end-to-end tests. Error answers come back
//! as [`RestError::Api`] with the server's code and message.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use super::types::*;

/// Largest response body read into memory.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Time allowed for one request that does not stream.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The base URL is not usable.
    #[error("bad API address `{0}`: use http://HOST:PORT")]
    Address(String),
    /// Connecting, sending or reading failed.
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error.
    #[error("{status} {}: {}{}", .body.error, .body.message, problems(&.body.problems))]
    Api {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
    /// The answer was not what the API documents.
    #[error("{url}: unexpected answer: {message}")]
    Decode {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

fn problems(p: &[String]) -> String {
    if p.is_empty() {
        String::new()
    } else {
        format!("\n  - {}", p.join("\n  - "))
    }
}

/// A raw answer.
#[derive(Debug)]
pub struct RawResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// A client of one head. Cheap to clone.
#[derive(Clone)]
pub struct RestClient {
    base: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl RestClient {
    /// A client of the head at `base` (`http://HOST:PORT` or `HOST:PORT`)
    /// presenting `token`; `None` presents the token known for that address
    /// (see `crate::auth::for_address`), if any.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, RestError> {
        let mut c = RestClient::anonymous(base)?;
        c.token = token
            .filter(|t| !t.trim().is_empty())
            .or_else(|| crate::auth::for_address(&c.base).ok().flatten().map(|t| t.expose().to_string()));
        Ok(c)
    }

    /// A client presenting no token at all (for probes of open routes, and tests).
    pub fn anonymous(base: &str) -> Result<Self, RestError> {
        let base = base.trim().trim_end_matches('/');
        let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(RestError::Address(base));
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(RestClient { base, token: None, http })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<hyper::Response<Incoming>, RestError> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder().method(method).uri(&url).header("accept", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {}", t.trim()));
        }
        let req = match body {
            Some((ct, b)) => req.header("content-type", ct).body(Full::new(b)),
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|e| RestError::Address(format!("{url}: {e}")))?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| RestError::Transport { url: url.clone(), message: "timed out".into() })?
            .map_err(|e| RestError::Transport { url, message: describe(&e) })
    }

    /// Sends a request and reads the whole answer, whatever its status.
    pub async fn raw(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<RawResponse, RestError> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect(),
        )
        .await
        .map_err(|_| RestError::Transport { url: url.clone(), message: "timed out reading the body".into() })?
        .map_err(|e| RestError::Transport { url, message: e.to_string() })?
        .to_bytes();
        Ok(RawResponse { status, headers, body })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<T, RestError> {
        let url = format!("{}{path}", self.base);
        let r = self.raw(method, path, body).await?;
        check(&url, &r)?;
        serde_json::from_slice(&r.body).map_err(|e| RestError::Decode { url, message: e.to_string() })
    }

    /// Submits a job body (JSON or YAML, by `content_type`).
    pub async fn submit(&self, content_type: &str, body: impl Into<Bytes>) -> Result<SubmitJobResponse, RestError> {
        self.call(http::Method::POST, "/api/v1/jobs", Some((content_type, body.into()))).await
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Job, RestError> {
        self.call(http::Method::GET, &format!("/api/v1/jobs/{id}"), None).await
    }

    /// Every job (following pages), optionally in one state.
    pub async fn jobs(&self, state: Option<&str>) -> Result<Vec<Job>, RestError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/api/v1/jobs?limit=1000".to_string();
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page: JobList = self.call(http::Method::GET, &path, None).await?;
            out.extend(page.jobs);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Stops a job.
    pub async fn stop(&self, id: &str) -> Result<JobAction, RestError> {
        self.call(http::Method::POST, &format!("/api/v1/jobs/{id}/stop"), None).await
    }

    /// Deletes a terminal job.
    pub async fn delete(&self, id: &str) -> Result<JobAction, RestError> {
        self.call(http::Method::DELETE, &format!("/api/v1/jobs/{id}"), None).await
    }

    /// A job's log as held now.
    pub async fn logs(&self, id: &str) -> Result<Bytes, RestError> {
        let path = format!("/api/v1/jobs/{id}/logs");
        let url = format!("{}{path}", self.base);
        let r = self.raw(http::Method::GET, &path, None).await?;
        check(&url, &r)?;
        Ok(r.body)
    }

    /// Streams a job's log until the job ends, calling `on_chunk` for each piece.
    pub async fn follow_logs(&self, id: &str, mut on_chunk: impl FnMut(&[u8])) -> Result<(), RestError> {
        let path = format!("/api/v1/jobs/{id}/logs?follow=true");
        let url = format!("{}{path}", self.base);
        let resp = self.send(http::Method::GET, &path, None).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status >= 400 {
            let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            return check(&url, &RawResponse { status, headers: Default::default(), body: bytes });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| RestError::Transport { url: url.clone(), message: e.to_string() })?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data);
            }
        }
        Ok(())
    }

    /// A result object: its content type and bytes.
    pub async fn object(&self, id: &str) -> Result<(String, Bytes), RestError> {
        let path = format!("/api/v1/objects/{id}");
        let url = format!("{}{path}", self.base);
        let r = self.raw(http::Method::GET, &path, None).await?;
        check(&url, &r)?;
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        Ok((ct, r.body))
    }

    /// A page of tasks; `query` is the query string without `?`.
    pub async fn tasks(&self, query: &str) -> Result<TaskList, RestError> {
        self.call(http::Method::GET, &format!("/api/v1/tasks?{query}"), None).await
    }

    /// One task.
    pub async fn task(&self, id: &str) -> Result<TaskView, RestError> {
        self.call(http::Method::GET, &format!("/api/v1/tasks/{id}"), None).await
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<NodeList, RestError> {
        self.call(http::Method::GET, "/api/v1/nodes", None).await
    }

    /// The cluster summary.
    pub async fn cluster(&self) -> Result<ClusterSummary, RestError> {
        self.call(http::Method::GET, "/api/v1/cluster", None).await
    }
}

fn check(url: &str, r: &RawResponse) -> Result<(), RestError> {
    if r.status < 400 {
        return Ok(());
    }
    let body = serde_json::from_slice::<ErrorBody>(&r.body).unwrap_or_else(|_| ErrorBody {
        error: "http_error".into(),
        kind: crate::error::ErrorKind::Internal,
        message: format!("{url}: {}", String::from_utf8_lossy(&r.body)),
        problems: Vec::new(),
    });
    Err(RestError::Api { status: r.status, body })
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// HTTP methods, for [`RestClient::raw`].
pub use http::Method;
