//! The raylet: one per node. It owns the tasks its drivers and workers
//! submit, schedules tasks onto its workers, keeps the node's object store
//! and moves objects to and from other raylets.
//!
//! ```text
//!   client ──Session/Get/Put──▶ service ──▶ core (owner · local scheduler · worker pool)
//!                                   │           │ ▲                 │
//!                     peers ◀───────┘   outbox ◀┘ │ TaskDone        ▼ ExecuteTask
//!                 (ExecuteTasks, ReportResults,   └──────── workers (unix socket)
//!                  FreeObjects, PullObject)  object_manager ◀──▶ object_store
//! ```

pub(crate) mod cluster_view;
pub(crate) mod core;
pub(crate) mod effects;
pub(crate) mod events;
pub(crate) mod executor;
pub(crate) mod object_manager;
pub mod object_store;
pub(crate) mod owner;
pub(crate) mod peers;
pub mod scheduler;
pub(crate) mod service;
pub(crate) mod stats;
pub(crate) mod workers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::net::Channel;
use shoal_proto::v1 as pb;
use shoal_proto::v1::gcs_client::GcsClient;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::ids::NodeId;
use crate::resources::ResourceSet;

pub use workers::{ENV_ADDRESS, ENV_SOCKET, ENV_WORKER_ID};

/// Interface a raylet listens on by default: every interface, so that other
/// pods reach it (local clusters pass 127.0.0.1).
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// The raylet's default gRPC port.
pub const DEFAULT_PORT: u16 = 6380;
/// The default port of a raylet's /metrics, /healthz and /readyz.
pub const DEFAULT_METRICS_PORT: u16 = 8080;

/// The interpreter that runs Python tasks unless told otherwise.
pub const DEFAULT_PYTHON: &str = "python3";

/// The command line of a Python worker run by `python`.
pub fn python_worker_command(python: &str) -> Vec<String> {
    vec![python.to_string(), "-m".to_string(), "shoal._worker".to_string()]
}

/// The object store's default budget: 30 % of the memory the node offers
/// to tasks, and at least 64 MiB.
pub fn default_object_store_memory(memory_bytes: u64) -> u64 {
    (memory_bytes / 10 * 3).max(64 << 20)
}

/// Settings of one raylet. Each has a default in [`RayletConfig::new`]
/// (the CLI's flags take theirs from the same constants).
#[derive(Clone, Debug)]
pub struct RayletConfig {
    /// GCS address, `host:port`.
    pub gcs_address: String,
    /// Interface to listen on.
    pub host: String,
    /// gRPC port (0 picks a free one).
    pub port: u16,
    /// Address other nodes reach this one at (defaults to `host`, or
    /// 127.0.0.1 when `host` is a wildcard).
    pub node_ip: Option<String>,
    /// Port of the metrics and health HTTP server (0 picks a free one).
    pub metrics_port: u16,
    /// Resources this node offers.
    pub resources: ResourceSet,
    /// Labels for label-selector scheduling.
    pub labels: HashMap<String, String>,
    /// Object store budget in bytes.
    pub object_store_memory: u64,
    /// Command line that starts a native worker (builtins and `exec`):
    /// `shoal worker` by default.
    pub native_worker: Vec<String>,
    /// Command line that starts a Python worker: `python3 -m shoal._worker`
    /// by default ([`python_worker_command`]).
    pub python_worker: Vec<String>,
    /// Unix socket workers connect to.
    pub worker_socket: PathBuf,
    /// Whether workers are started by someone else (an external worker
    /// container) rather than by this raylet.
    pub external_workers: bool,
    /// Most workers running tasks at once (not counting workers blocked in a
    /// nested `get`).
    pub max_workers: usize,
    /// Workers started ahead of demand.
    pub prestart_workers: usize,
    /// Tasks queued on one leased worker when every resource is taken.
    pub pipeline_depth: usize,
    /// How long a task may stay infeasible before it fails.
    pub infeasible_timeout: Duration,
    /// How often load is reported to the GCS.
    pub heartbeat_interval: Duration,
    /// Chunk size of object transfers.
    pub transfer_chunk_bytes: usize,
    /// Bound on bytes of object transfers in progress.
    pub max_transfer_bytes_in_flight: u64,
    /// Where to write `{"grpc": .., "http": .., "node_id": ..}` once serving.
    pub ready_file: Option<PathBuf>,
    /// Directory for spilled objects (`None` turns spilling off).
    pub spill_dir: Option<PathBuf>,
    /// Finished tasks whose specs are kept to rebuild lost objects; beyond
    /// it the oldest lineage is dropped and its objects cannot be rebuilt.
    pub max_lineage_tasks: usize,
    /// The cluster's token: required of every gRPC call and worker, and
    /// presented to the GCS and peers (`None`: authentication is off).
    pub token: Option<crate::auth::Token>,
}

impl RayletConfig {
    /// Defaults for a raylet that joins the GCS at `gcs_address`, offering
    /// `resources`.
    pub fn new(gcs_address: impl Into<String>, resources: ResourceSet) -> Self {
        let cpus = resources.get(crate::resources::CPU).ceil().max(1.0) as usize;
        // Nodes that name no memory resource get the store a 2 GiB budget would.
        let memory_bytes = match resources.units(crate::resources::MEMORY) / crate::resources::UNIT {
            m if m > 0 => m as u64,
            _ => (2u64 << 30) / 3 * 10,
        };
        RayletConfig {
            gcs_address: gcs_address.into(),
            host: DEFAULT_HOST.into(),
            port: DEFAULT_PORT,
            node_ip: None,
            metrics_port: DEFAULT_METRICS_PORT,
            resources,
            labels: HashMap::new(),
            object_store_memory: default_object_store_memory(memory_bytes),
            native_worker: vec![
                std::env::current_exe().unwrap_or_else(|_| PathBuf::from("shoal")).display().to_string(),
                "worker".to_string(),
            ],
            python_worker: python_worker_command(DEFAULT_PYTHON),
            worker_socket: std::env::temp_dir().join(format!("shoal-raylet-{}.sock", std::process::id())),
            external_workers: false,
            max_workers: cpus,
            prestart_workers: 1,
            pipeline_depth: 1,
            infeasible_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(100),
            transfer_chunk_bytes: 8 << 20,
            max_transfer_bytes_in_flight: 512 << 20,
            ready_file: None,
            max_lineage_tasks: 100_000,
            spill_dir: Some(std::env::temp_dir().join(format!("shoal-spill-{}", std::process::id()))),
            token: None,
        }
    }
}

/// Shared state of a running raylet.
pub(crate) struct Inner {
    pub node_id: NodeId,
    pub address: String,
    pub config: Arc<RayletConfig>,
    core: Mutex<core::Core>,
    pub store: Arc<object_store::ObjectStore>,
    pub objects: object_manager::ObjectManager,
    pub peers: Arc<peers::Peers>,
    pub gcs: GcsClient<Channel>,
    /// The metrics/health HTTP address, once serving.
    pub http_address: std::sync::OnceLock<String>,
    /// Starts worker processes from one long-lived thread.
    pub spawner: workers::Spawner,
    /// This raylet's own metrics.
    pub metrics: Arc<crate::metrics::RayletMetrics>,
}

impl Inner {
    /// Locks the core. What the call asks for (sends, process starts,
    /// store reads) is carried out when the guard drops, after the lock is
    /// released.
    pub(crate) fn core(self: &Arc<Self>) -> CoreGuard<'_> {
        CoreGuard { guard: Some(self.core.lock().unwrap_or_else(|p| p.into_inner())), inner: self }
    }

    /// The core if nobody holds it now.
    pub(crate) fn try_core(self: &Arc<Self>) -> Option<CoreGuard<'_>> {
        let guard = match self.core.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(CoreGuard { guard: Some(guard), inner: self })
    }
}

/// The locked core; carries out its effects once unlocked.
pub(crate) struct CoreGuard<'a> {
    guard: Option<MutexGuard<'a, core::Core>>,
    inner: &'a Arc<Inner>,
}

impl std::ops::Deref for CoreGuard<'_> {
    type Target = core::Core;
    fn deref(&self) -> &core::Core {
        self.guard.as_deref().expect("the guard is held until drop")
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut core::Core {
        self.guard.as_deref_mut().expect("the guard is held until drop")
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else { return };
        let effects = guard.take_effects();
        drop(guard);
        if !effects.is_empty() {
            effects::run(self.inner, effects);
        }
    }
}

/// A running raylet.
pub struct Raylet {
    inner: Arc<Inner>,
    /// The gRPC address other processes use.
    pub address: String,
    /// The metrics/health HTTP address.
    pub http_address: String,
}

fn gcs_client(channel: Channel) -> GcsClient<Channel> {
    GcsClient::new(channel)
        .max_decoding_message_size(crate::net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES)
}

/// Connects to the GCS, presenting `token`, retrying for up to `patience`.
pub async fn connect_gcs(
    addr: &str,
    token: Option<&crate::auth::Token>,
    patience: Duration,
) -> Result<GcsClient<Channel>, Error> {
    let start = std::time::Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        match crate::net::connect(addr, token).await {
            Ok(ch) => return Ok(gcs_client(ch)),
            Err(e) if start.elapsed() >= patience => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl Raylet {
    /// Binds, registers with the GCS and starts serving.
    pub async fn start(config: RayletConfig) -> Result<Raylet, Error> {
        let config = Arc::new(config);
        let (listener, bound) = crate::net::bind(&config.host, config.port).await?;
        let ip = config.node_ip.clone().unwrap_or_else(|| crate::net::advertise_ip(&config.host));
        let address = format!("{ip}:{}", bound.port());
        let node_id = NodeId::random();

        let _ = std::fs::remove_file(&config.worker_socket);
        if let Some(dir) = config.worker_socket.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let unix = tokio::net::UnixListener::bind(&config.worker_socket)
            .map_err(|e| Error::io(format!("cannot listen on {}", config.worker_socket.display()), e))?;
        // Workers this raylet starts run as its user: only that user may connect. External
        // workers (a pod's worker container) may run as any uid, so any may connect; the
        // socket's directory is then the pod's own volume, and the hello's token is what
        // admits a worker either way.
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = if config.external_workers { 0o666 } else { 0o600 };
            let _ = std::fs::set_permissions(&config.worker_socket, std::fs::Permissions::from_mode(mode));
        }

        let gcs = connect_gcs(&config.gcs_address, config.token.as_ref(), Duration::from_secs(30)).await?;
        let store = Arc::new(match &config.spill_dir {
            Some(dir) => {
                // Files left by an earlier raylet with this directory are stale.
                let _ = std::fs::remove_dir_all(dir);
                object_store::ObjectStore::with_spill_dir(config.object_store_memory, dir.clone())
            }
            None => object_store::ObjectStore::new(config.object_store_memory),
        });
        let metrics = Arc::new(crate::metrics::RayletMetrics::new());
        let inner = Arc::new_cyclic(|me| {
            let peers = Arc::new(peers::Peers::new(me.clone()));
            Inner {
                node_id,
                address: address.clone(),
                config: config.clone(),
                core: Mutex::new(core::Core::new(
                    node_id,
                    address.clone(),
                    config.clone(),
                    store.clone(),
                    metrics.clone(),
                )),
                metrics: metrics.clone(),
                spawner: workers::Spawner::start(me.clone()),
                objects: object_manager::ObjectManager::new(
                    store.clone(),
                    peers.clone(),
                    config.transfer_chunk_bytes,
                    config.max_transfer_bytes_in_flight,
                ),
                store,
                peers,
                gcs,
                http_address: std::sync::OnceLock::new(),
            }
        });

        let svc = service::RayletService { inner: inner.clone() };
        let server = pb::raylet_server::RayletServer::new(svc)
            .max_decoding_message_size(crate::net::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES);
        let token = config.token.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::net::server(token.as_ref())
                .add_service(server)
                .serve_with_incoming(crate::net::incoming(listener))
                .await
            {
                tracing::error!(error = %e, "raylet gRPC server stopped");
            }
        });
        tokio::spawn(workers::serve(inner.clone(), unix));

        let http_address = crate::http::serve(
            &config.host,
            config.metrics_port,
            &ip,
            crate::http::health_and_metrics(
                inner.metrics.registry().clone(),
                Some(metrics_refresh(Arc::downgrade(&inner))),
            ),
        )
        .await?;
        let _ = inner.http_address.set(http_address.clone());

        register(&inner).await?;
        tokio::spawn(heartbeat_loop(inner.clone()));
        tokio::spawn(events::run_reporter(Arc::downgrade(&inner)));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.core().expire_infeasible();
            }
        });
        inner.core().prestart(config.prestart_workers);

        tracing::info!(node = %node_id, %address, http = %http_address, resources = %config.resources, "raylet started");
        if let Some(path) = &config.ready_file {
            let body = serde_json::json!({ "grpc": address, "http": http_address, "node_id": node_id.to_string() });
            crate::process::write_ready_file(path, &body)?;
        }
        Ok(Raylet { inner, address, http_address })
    }

    /// This raylet's node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The process ids of this raylet's workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner.core().worker_pids()
    }

    /// Stops every worker process (the raylet is about to exit).
    pub fn shutdown(&self) {
        release_local_resources(&self.inner);
    }
}

/// Kills this raylet's workers and removes its socket and spill files.
fn release_local_resources(inner: &Arc<Inner>) {
    let pids = inner.core().worker_pids();
    for pid in pids {
        crate::process::kill_tree(pid);
    }
    let _ = std::fs::remove_file(&inner.config.worker_socket);
    inner.store.remove_spill_files();
    if let Some(dir) = &inner.config.spill_dir {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Brings the raylet's gauges and counters up to date before each scrape.
fn metrics_refresh(inner: std::sync::Weak<Inner>) -> crate::http::Refresh {
    use std::sync::atomic::Ordering::Relaxed;
    Arc::new(move || {
        let Some(inner) = inner.upgrade() else { return };
        let (mut stats, core_stats) = {
            let core = inner.core();
            (core.node_stats(), (core.owner.stats, core.exec.pool.started_total))
        };
        let t = &inner.objects.stats;
        stats.pulled_bytes = t.pulled_bytes.load(Relaxed);
        stats.served_bytes = t.served_bytes.load(Relaxed);
        let store = inner.store.stats();
        inner.metrics.refresh(&crate::metrics::RayletSnapshot {
            stats,
            tasks_submitted: core_stats.0.tasks_submitted,
            tasks_failed: core_stats.0.tasks_failed,
            retries: core_stats.0.retries,
            workers_started: core_stats.1,
            pinned_objects: store.pinned,
            evicted_objects: store.evicted_objects,
            pulled_objects: t.pulled_objects.load(Relaxed),
            served_objects: t.served_objects.load(Relaxed),
        });
    })
}

async fn register(inner: &Arc<Inner>) -> Result<(), Error> {
    let info = {
        let core = inner.core();
        pb::NodeInfo {
            node_id: inner.node_id.to_bytes(),
            address: inner.address.clone(),
            metrics_address: inner.http_address.get().cloned().unwrap_or_default(),
            total: Some(core.exec.ledger.total().into()),
            labels: inner.config.labels.clone(),
            state: pb::NodeState::NodeAlive as i32,
            hostname: hostname(),
            started_at_ms: crate::net::now_ms(),
            death_reason: String::new(),
        }
    };
    let mut gcs = inner.gcs.clone();
    let reply = gcs
        .register_node(pb::RegisterNodeRequest { node: Some(info) })
        .await
        .map_err(|s| Error::rpc("registering with the GCS", s))?
        .into_inner();
    let mut core = inner.core();
    let me = inner.node_id;
    // Merged, not replacing: a restarted GCS lists only the nodes that have
    // registered again. The full view opening the heartbeat stream replaces
    // the view and reports the nodes that died meanwhile (see below).
    core.owner.view.merge(&reply.nodes, &reply.loads, me);
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// This node was declared dead (a partition outlasted the health timeout):
/// everything it owned has been given up by the cluster. Start over as a new
/// node by re-executing this raylet with the same arguments, which keeps the
/// process id (so a supervisor still tracks it) and gets a fresh node id.
fn rejoin(inner: &Arc<Inner>) -> ! {
    use std::os::unix::process::CommandExt;
    tracing::warn!(node = %inner.node_id, "rejoining the cluster as a new node");
    release_local_resources(inner);
    let mut args = std::env::args_os();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("shoal"));
    let _ = args.next();
    let err = std::process::Command::new(exe).args(args).exec();
    tracing::error!(error = %err, "cannot re-execute the raylet; exiting");
    std::process::exit(3);
}

async fn heartbeat_loop(inner: Arc<Inner>) {
    let interval = inner.config.heartbeat_interval;
    loop {
        let (tx, rx) = mpsc::channel::<pb::HeartbeatRequest>(16);
        let first = pb::HeartbeatRequest { node_id: inner.node_id.to_bytes(), load: Some(inner.core().load()) };
        let _ = tx.send(first).await;
        let mut gcs = inner.gcs.clone();
        let stream = gcs.heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        let mut updates = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::error!(error = %s.message(), "the GCS declared this node dead");
                rejoin(&inner);
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                // The GCS restarted and lost its node table: register again
                // under the same id, keeping this node's tasks and objects.
                tracing::warn!("the GCS does not know this node (it restarted?); registering again");
                if let Err(e) = register(&inner).await {
                    tracing::warn!(error = %e, "registering again failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                continue;
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "heartbeat to the GCS failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let sender_inner = Arc::downgrade(&inner);
        let sender = tokio::spawn(async move {
            let mut last: Option<pb::NodeLoad> = None;
            let mut since = std::time::Instant::now();
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(inner) = sender_inner.upgrade() else { return };
                // Never wait for the core: a busy core sends the last load
                // (the heartbeat itself is what keeps the node alive).
                let load = match inner.try_core() {
                    Some(core) => core.load(),
                    None => match &last {
                        Some(l) => l.clone(),
                        None => continue,
                    },
                };
                let changed = last.as_ref() != Some(&load);
                if changed || since.elapsed() >= Duration::from_secs(1) {
                    let hb =
                        pb::HeartbeatRequest { node_id: inner.node_id.to_bytes(), load: changed.then(|| load.clone()) };
                    if tx.send(hb).await.is_err() {
                        return;
                    }
                    last = Some(load);
                    since = std::time::Instant::now();
                }
            }
        });
        // Deltas, and full views (`u.full`: the first update of the stream,
        // and after this raylet fell behind) that replace the view; either way
        // `dead` lists each node that was alive here and is not any more.
        while let Ok(Some(u)) = updates.message().await {
            let mut core = inner.core();
            let me = inner.node_id;
            let dead = core.owner.view.apply_update(&u, me);
            if dead.contains(&me) {
                tracing::error!("the GCS declared this node dead");
                drop(core);
                rejoin(&inner);
            }
            for d in dead {
                core.on_node_dead(d);
            }
            if !u.joined.is_empty() {
                core.retry_infeasible();
            }
        }
        sender.abort();
        tracing::warn!("lost the heartbeat stream to the GCS; re-registering");
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = register(&inner).await {
            if let Error::Rpc { status, .. } = &e {
                if status.code() == tonic::Code::FailedPrecondition {
                    tracing::error!(error = %e, "the GCS refused this node");
                    rejoin(&inner);
                }
            }
            tracing::warn!(error = %e, "re-registering failed");
        }
    }
}
