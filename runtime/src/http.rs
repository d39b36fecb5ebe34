//! The HTTP side of every process: `/healthz`, `/readyz` and `/metrics`,
//! plus, on the head, the REST API router merged in.
//!
//! `/metrics` first runs the component's [`Refresh`] hook, which brings
//! gauges up to date from a snapshot of the component's state, then renders
//! the component's own registry ([`health_and_metrics`]). Health and metrics
//! routes never need a token.

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

/// Health routes, and `/metrics` serving `registry` (a component's own, e.g.
/// [`crate::metrics::RayletMetrics::registry`]), with `refresh` run before
/// each scrape.
pub fn health_and_metrics(registry: prometheus::Registry, refresh: Option<Refresh>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let refresh = refresh.clone();
            let registry = registry.clone();
            async move {
                if let Some(r) = refresh {
                    r();
                }
                let body = crate::metrics::render_registry(&registry);
                ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RayletMetrics;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn scrape(addr: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("send");
        let mut body = String::new();
        conn.read_to_string(&mut body).await.expect("read");
        body
    }

    #[tokio::test]
    async fn each_component_serves_its_own_registry() {
        let (a, b) = (Arc::new(RayletMetrics::new()), RayletMetrics::new());
        let refreshed = a.clone();
        let refresh: Refresh = Arc::new(move || refreshed.tasks_executed.inc_by(3));
        let a_addr = serve("127.0.0.1", 0, "127.0.0.1", health_and_metrics(a.registry().clone(), Some(refresh)))
            .await
            .expect("serve a");
        let b_addr =
            serve("127.0.0.1", 0, "127.0.0.1", health_and_metrics(b.registry().clone(), None)).await.expect("serve b");
        let (from_a, from_b) = (scrape(&a_addr).await, scrape(&b_addr).await);
        assert!(from_a.contains("shoal_tasks_executed_total 3"), "{from_a}");
        assert!(from_b.contains("shoal_tasks_executed_total 0"), "{from_b}");
    }
}
