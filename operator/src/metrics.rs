//! The operator's own Prometheus metrics and its `/metrics`, `/healthz`, `/readyz` server.
//!
//! Metric names start with `shoal_operator_`. The registry is private to the operator (not
//! the process-global default), so tests can build as many as they like.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::error::Error;

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile errors by kind.
    pub errors: IntCounterVec,
    /// Reconcile durations.
    pub duration: Histogram,
    /// Pod creates and deletes by action and result.
    pub pod_actions: IntCounterVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("shoal_operator_reconciles_total", "TaskCluster reconciles, by result"),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("shoal_operator_reconcile_errors_total", "Failed TaskCluster reconciles, by error kind"),
            &["kind"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new("shoal_operator_reconcile_duration_seconds", "Time one TaskCluster reconcile takes")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let pod_actions = IntCounterVec::new(
            Opts::new("shoal_operator_pod_actions_total", "Pods created and deleted, by action and result"),
            &["action", "result"],
        )?;
        let leader = IntGauge::new("shoal_operator_leader", "1 while this operator replica holds the leader lease")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(pod_actions.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self { registry, reconciles, errors, duration, pod_actions, leader })
    }

    /// Records one finished reconcile.
    pub fn record<T>(&self, started: Instant, result: &Result<T, Error>) {
        self.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => self.reconciles.with_label_values(&["ok"]).inc(),
            Err(e) => {
                self.reconciles.with_label_values(&["error"]).inc();
                self.errors.with_label_values(&[e.kind()]).inc();
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot exist here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The `/metrics`, `/healthz` and `/readyz` routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok").into_response() }))
        .route("/readyz", get(|| async { (StatusCode::OK, "ok").into_response() }))
}

/// Serves [`router`] on `0.0.0.0:port` until `shutdown` resolves.
pub async fn serve(
    metrics: Arc<Metrics>,
    port: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::MetricsServer { port, source })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::MetricsServer { port, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_results_show_up_in_the_text_format() {
        let m = Metrics::new().expect("metrics register");
        m.record::<()>(Instant::now(), &Ok(()));
        m.record::<()>(Instant::now(), &Err(Error::IncompleteObject("x".into())));
        let text = m.render();
        assert!(text.contains("shoal_operator_reconciles_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("shoal_operator_reconcile_errors_total{kind=\"incomplete_object\"} 1"), "{text}");
        assert!(text.contains("shoal_operator_reconcile_duration_seconds_count 2"), "{text}");
    }
}
