//! The head process: the GCS, the HTTP endpoint serving the REST API (job
//! manager, state API), `/metrics`, `/healthz` and `/readyz`, and the
//! head's own raylet.
//!
//! The head's raylet is a node like any other, labelled [`HEAD_LABEL`] and
//! offering no CPUs by default. It owns everything the head starts: the
//! tasks of REST task-graph jobs and the driver tasks of entrypoint jobs,
//! which run on it. Worker nodes can then come and go without failing a
//! job: an owner lost takes its tasks' results with it, an executor lost
//! only costs retries (ARCHITECTURE §3).

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
    /// The head's own raylet (its `gcs_address` is filled in here); `None`
    /// runs none, and jobs are then owned by a worker node's raylet.
    pub raylet: Option<crate::raylet::RayletConfig>,
    /// Where jobs, logs and the key-value store are kept across restarts
    /// (`None`: in memory, lost with the process).
    pub state_dir: Option<PathBuf>,
    /// The cluster's token, required by the GCS, the REST API and the
    /// head's raylet (`None`: authentication is off).
    pub token: Option<crate::auth::Token>,
}

/// The label marking the head's raylet.
pub const HEAD_LABEL: &str = "shoal.dev/head";

/// A running head.
pub struct Head {
    /// GCS address.
    pub gcs_address: String,
    /// HTTP address.
    pub http_address: String,
    /// The GCS state.
    pub gcs: Gcs,
    /// The head's raylet.
    pub raylet: Option<crate::raylet::Raylet>,
}

impl Head {
    /// Stops the head raylet's workers (the head is about to exit).
    pub fn shutdown(&self) {
        if let Some(r) = &self.raylet {
            r.shutdown();
        }
    }
}

/// Starts the GCS (and the HTTP endpoint when `http_port` is given).
pub async fn start(cfg: HeadConfig, with_http: bool) -> Result<Head, Error> {
    let (listener, bound) = crate::net::bind(&cfg.host, cfg.gcs_port).await?;
    let ip = crate::net::advertise_ip(&cfg.host);
    let store = crate::gcs::state::open_store(cfg.state_dir.clone()).await?;
    let gcs = Gcs::open(cfg.gcs.clone(), store)?;
    gcs.spawn_background();
    let svc = crate::gcs::service(gcs.clone());
    let token = cfg.token.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::net::server(token.as_ref())
            .add_service(svc)
            .serve_with_incoming(crate::net::incoming(listener))
            .await
        {
            tracing::error!(error = %e, "GCS server stopped");
        }
    });
    let gcs_address = format!("{ip}:{}", bound.port());
    let raylet = match cfg.raylet.clone() {
        Some(mut r) => {
            r.gcs_address = gcs_address.clone();
            r.token = cfg.token.clone();
            Some(crate::raylet::Raylet::start(r).await?)
        }
        None => None,
    };
    let mut rest = cfg.rest.clone();
    rest.token = cfg.token.clone();
    if let Some(r) = &raylet {
        rest.owner = Some(crate::rest::jobs::Owner { address: r.address.clone(), node_id: r.node_id() });
    }
    let http_address = if with_http {
        let app = crate::rest::router(gcs.clone(), rest)?;
        crate::http::serve(&cfg.host, cfg.http_port, &ip, app).await?
    } else {
        String::new()
    };
    tracing::info!(gcs = %gcs_address, http = %http_address, "head started");
    if let Some(path) = &cfg.ready_file {
        let mut body = serde_json::json!({ "grpc": gcs_address, "http": http_address });
        if let Some(r) = &raylet {
            body["raylet"] = serde_json::json!({
                "grpc": r.address, "http": r.http_address, "node_id": r.node_id().to_string(),
            });
        }
        crate::process::write_ready_file(path, &body)?;
    }
    Ok(Head { gcs_address, http_address, gcs, raylet })
}
