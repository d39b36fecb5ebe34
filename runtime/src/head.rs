//! The head process: the GCS plus the HTTP endpoint serving the REST API
//! (job manager, state API), `/metrics`, `/healthz` and `/readyz`.

use std::path::PathBuf;

use crate::error::Error;
use crate::gcs::{Gcs, GcsConfig};

/// Settings of the head.
#[derive(Clone, Debug)]
pub struct HeadConfig {
    /// Interface to listen on.
    pub host: String,
    /// GCS gRPC port (0 picks one).
    pub gcs_port: u16,
    /// HTTP port (0 picks one).
    pub http_port: u16,
    /// GCS settings.
    pub gcs: GcsConfig,
    /// Where to write `{"grpc": .., "http": ..}` once serving.
    pub ready_file: Option<PathBuf>,
    /// REST API settings (token, body limit).
    pub rest: crate::rest::RestConfig,
    /// Where jobs, logs and the key-value store are kept across restarts
    /// (`None`: in memory, lost with the process).
    pub state_dir: Option<PathBuf>,
}

/// A running head.
pub struct Head {
    /// GCS address.
    pub gcs_address: String,
    /// HTTP address.
    pub http_address: String,
    /// The GCS state.
    pub gcs: Gcs,
}

/// Starts the GCS (and the HTTP endpoint when `http_port` is given).
pub async fn start(cfg: HeadConfig, with_http: bool) -> Result<Head, Error> {
    let (listener, bound) = crate::net::bind(&cfg.host, cfg.gcs_port).await?;
    let ip = crate::net::advertise_ip(&cfg.host);
    let store = crate::gcs::state::open_store(cfg.state_dir.clone()).await?;
    let gcs = Gcs::open(cfg.gcs.clone(), store)?;
    gcs.spawn_background();
    let svc = crate::gcs::service(gcs.clone());
    tokio::spawn(async move {
        if let Err(e) = crate::net::server().add_service(svc).serve_with_incoming(crate::net::incoming(listener)).await
        {
            tracing::error!(error = %e, "GCS server stopped");
        }
    });
    let gcs_address = format!("{ip}:{}", bound.port());
    let http_address = if with_http {
        let app = crate::rest::router(gcs.clone(), cfg.rest.clone())?;
        crate::http::serve(&cfg.host, cfg.http_port, &ip, app).await?
    } else {
        String::new()
    };
    tracing::info!(gcs = %gcs_address, http = %http_address, "head started");
    if let Some(path) = &cfg.ready_file {
        crate::process::write_ready_file(path, &serde_json::json!({ "grpc": gcs_address, "http": http_address }))?;
    }
    Ok(Head { gcs_address, http_address, gcs })
}
