//! The HTTP side of every process: `/healthz`, `/readyz` and `/metrics`.

use axum::routing::get;
use axum::Router;

use crate::error::Error;

/// Serves health and metrics on `host:port`; returns the address to reach it at.
pub async fn serve_health(host: &str, port: u16, advertise_ip: &str) -> Result<String, Error> {
    let (listener, bound) = crate::net::bind(host, port).await?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route("/metrics", get(|| async { String::new() }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(format!("{advertise_ip}:{}", bound.port()))
}
