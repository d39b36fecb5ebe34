//! The HTTP side of every process: `/healthz`, `/readyz` and `/metrics`,
//! plus, on the head, the REST API router merged in.
//!
//! `/metrics` first runs the process's [`Refresh`] hook, which brings gauges
//! up to date from a snapshot of the process's state, then renders the
//! registry of [`crate::metrics`]. Health and metrics routes never need a
//! token.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::error::Error;

/// Updates gauges just before a scrape. Must be quick and must not block.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// The media type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Health and metrics routes, with `refresh` run before each scrape.
pub fn health_routes(refresh: Option<Refresh>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let refresh = refresh.clone();
            async move {
                if let Some(r) = refresh {
                    r();
                }
                ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], crate::metrics::render()).into_response()
            }
        }),
    )
}

/// Serves `app` on `host:port`; returns the address to reach it at.
pub async fn serve(host: &str, port: u16, advertise_ip: &str, app: Router) -> Result<String, Error> {
    let (listener, bound) = crate::net::bind(host, port).await?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(format!("{advertise_ip}:{}", bound.port()))
}

/// Serves health and metrics on `host:port`; returns the address to reach it at.
pub async fn serve_health(host: &str, port: u16, advertise_ip: &str) -> Result<String, Error> {
    serve(host, port, advertise_ip, health_routes(None)).await
}
