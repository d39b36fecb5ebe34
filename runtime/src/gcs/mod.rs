//! The global control service: node membership and health, the cluster
//! resource view, the job table and a small key-value store.
//!
//! The GCS is never on the per-task path. Raylets register once, then keep a
//! bidirectional heartbeat stream open: load reports flow in, and updates of
//! the cluster view flow out to every raylet on a fixed tick. A node whose
//! stream breaks, or that stays silent past the health timeout, is declared
//! dead and the death is broadcast. A dead node never comes back under the
//! same id (while the GCS remembers it: see [`MAX_DEAD_NODES`]).
//!
//! Updates are deltas (joined, dead, changed loads) or full views that
//! replace the raylet's view. Each subscriber's queue is bounded
//! ([`UPDATE_QUEUE`]); a raylet that falls behind is not disconnected (that
//! would end its heartbeat stream and get a healthy node declared dead):
//! further deltas are dropped for it and, once its queue has room, it is sent
//! one full view, which makes its view exactly the GCS's again. Every new
//! heartbeat stream starts the same way, with a full view, so a raylet that
//! re-registers learns of every death it missed.
//!
//! A GCS that restarted (a recreated head pod) knows no node until raylets
//! register again. For [`GcsConfig::recovery_window`] after its start it
//! sends deltas only and holds back full views, which would otherwise tell
//! raylets that nodes not yet registered again are dead; at the end of the
//! window every subscriber gets a full view, and a node that died while the
//! GCS was away disappears from every raylet's view.
//!
//! What must survive a restart of the head (the next job id, job logs, the
//! key-value store, and the REST job table) lives in the state store
//! ([`state`]); everything else here is rebuilt as raylets register again.
//!
//! Times on the wire are milliseconds since the Unix epoch (`u64`, fields
//! ending in `_at_ms`, from [`crate::net::now_ms`]); timeouts are measured
//! with [`Instant`], which never jumps.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub mod job_logs;
pub mod state;
pub mod task_events;

use crate::ids::NodeId;
use crate::metrics::HeadMetrics;
use crate::net::now_ms;

/// Settings of the GCS.
#[derive(Clone, Debug)]
pub struct GcsConfig {
    /// A raylet silent for this long is declared dead.
    pub health_timeout: Duration,
    /// How often view updates are broadcast.
    pub broadcast_interval: Duration,
    /// Most tasks remembered by the state API.
    pub task_history: usize,
    /// Most bytes the state API's task records may hold.
    pub task_history_bytes: usize,
    /// How long after its start the GCS holds back full views while raylets
    /// of an earlier GCS register again; `None` means twice the health
    /// timeout (a raylet re-registers within a second of the GCS coming
    /// back, and one silent for longer than the health timeout would have
    /// been declared dead anyway).
    pub recovery_window: Option<Duration>,
}

impl Default for GcsConfig {
    fn default() -> Self {
        GcsConfig {
            health_timeout: Duration::from_secs(3),
            broadcast_interval: Duration::from_millis(50),
            task_history: task_events::DEFAULT_CAPACITY,
            task_history_bytes: task_events::DEFAULT_BYTE_CAPACITY,
            recovery_window: None,
        }
    }
}

impl GcsConfig {
    /// The recovery window in effect.
    pub fn recovery_window(&self) -> Duration {
        self.recovery_window.unwrap_or(self.health_timeout * 2)
    }
}

/// Job ids are reserved in the state store this many at a time; a restart
/// skips the rest of the block it was in (ids stay unique and increasing,
/// not dense).
pub const JOB_ID_BLOCK: u32 = 64;

/// Bound of each raylet's outgoing update queue. A raylet that falls this far
/// behind has its further deltas dropped and gets one full view when its
/// queue has room again.
pub const UPDATE_QUEUE: usize = 256;

/// Most dead nodes remembered, the latest deaths kept. A dead node is kept so
/// that it is refused (`FAILED_PRECONDITION`) if it comes back, and so the
/// state API can show why it died; 1,000 entries are a few hundred KiB. A
/// node that comes back after this many later deaths is no longer
/// recognised and registers as if the GCS had restarted.
pub const MAX_DEAD_NODES: usize = 1_000;

/// Most finished jobs the GCS's job table (`ListJobs`) remembers, the latest
/// kept, so that the table stays bounded however many sessions have ended.
/// The REST job table is the durable record of jobs (see [`state`]).
pub const MAX_FINISHED_JOBS: usize = 1_000;

struct NodeEntry {
    info: pb::NodeInfo,
    load: Option<pb::NodeLoad>,
    last_seen: Instant,
}

impl NodeEntry {
    fn is_alive(&self) -> bool {
        self.info.state == pb::NodeState::NodeAlive as i32
    }
}

#[derive(Default)]
struct Pending {
    joined: Vec<pb::NodeInfo>,
    dead: Vec<pb::NodeInfo>,
    loads: HashSet<NodeId>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.dead.is_empty() && self.loads.is_empty()
    }
}

type UpdateSender = mpsc::Sender<Result<pb::ClusterViewUpdate, Status>>;

/// One raylet's heartbeat stream, seen from the sending side.
struct Subscriber {
    node: NodeId,
    tx: UpdateSender,
    /// The subscriber must get a full view before any further delta: it is
    /// new, or its queue was full and a delta was dropped.
    owes_full: bool,
}

struct State {
    nodes: HashMap<NodeId, NodeEntry>,
    /// Dead nodes, oldest death first, for [`MAX_DEAD_NODES`].
    dead_order: VecDeque<NodeId>,
    version: u64,
    pending: Pending,
    subscribers: Vec<Subscriber>,
    jobs: BTreeMap<u32, pb::JobInfo>,
    /// Finished jobs, oldest first, for [`MAX_FINISHED_JOBS`].
    finished_jobs: VecDeque<u32>,
    next_job: u32,
    /// Job ids below this are reserved in the state store: a restarted head
    /// starts here, so no id is ever handed out twice (see [`JOB_ID_BLOCK`]).
    reserved_jobs: u32,
    /// Until then full views are held back (see the module docs).
    recovering_until: Instant,
}

impl State {
    /// Every alive node and its load, as one update that replaces a view.
    fn full_view(&self) -> pb::ClusterViewUpdate {
        let alive = || self.nodes.values().filter(|e| e.is_alive());
        pb::ClusterViewUpdate {
            version: self.version,
            joined: alive().map(|e| e.info.clone()).collect(),
            dead: Vec::new(),
            loads: alive().filter_map(|e| e.load.clone()).collect(),
            full: true,
        }
    }

    fn mark_dead(&mut self, id: NodeId, reason: String) {
        let Some(e) = self.nodes.get_mut(&id) else { return };
        if !e.is_alive() {
            return;
        }
        tracing::warn!(node = %id, %reason, "node declared dead");
        e.info.state = pb::NodeState::NodeDead as i32;
        e.info.death_reason = reason;
        e.load = None;
        let info = e.info.clone();
        self.pending.dead.push(info);
        self.pending.loads.remove(&id);
        self.dead_order.push_back(id);
        while self.dead_order.len() > MAX_DEAD_NODES {
            let Some(old) = self.dead_order.pop_front() else { break };
            if self.nodes.get(&old).is_some_and(|e| !e.is_alive()) {
                self.nodes.remove(&old);
            }
        }
    }
}

/// The GCS service. Cheap to clone.
#[derive(Clone)]
pub struct Gcs {
    state: Arc<Mutex<State>>,
    config: GcsConfig,
    /// Task events for the state API.
    pub task_events: Arc<Mutex<task_events::TaskEventStore>>,
    /// Entrypoint drivers' logs, for the REST API.
    pub job_logs: Arc<job_logs::JobLogs>,
    store: Arc<state::StateStore>,
    metrics: Arc<HeadMetrics>,
}

impl Gcs {
    /// A GCS with an empty cluster, recording into the process's head
    /// metrics (the ones the head's `/metrics` serves today). Call
    /// [`Gcs::spawn_background`] once to start broadcasting and health
    /// checks.
    pub fn new(config: GcsConfig) -> Self {
        Gcs::with_metrics(config, Arc::new(HeadMetrics::new()))
    }

    /// A GCS recording into its own metrics (a test, or a head that serves
    /// `metrics.registry()` itself), its state in memory.
    pub fn with_metrics(config: GcsConfig, metrics: Arc<HeadMetrics>) -> Self {
        // Only an allocation failure makes an in-memory store fail to open.
        let store = state::StateStore::in_memory().expect("an in-memory state store opens");
        let next_job = 1;
        Gcs::build(config, metrics, Arc::new(store), next_job)
    }

    /// A GCS over `store` (the head's state directory, or memory), going on
    /// from the job ids it handed out before.
    pub fn open(config: GcsConfig, store: Arc<state::StateStore>) -> Result<Self, state::StateError> {
        let next_job = store.next_job_id()?;
        Ok(Gcs::build(config, Arc::new(HeadMetrics::new()), store, next_job))
    }

    fn build(config: GcsConfig, metrics: Arc<HeadMetrics>, store: Arc<state::StateStore>, next_job: u32) -> Self {
        let state = State {
            nodes: HashMap::new(),
            dead_order: VecDeque::new(),
            version: 0,
            pending: Pending::default(),
            subscribers: Vec::new(),
            jobs: BTreeMap::new(),
            finished_jobs: VecDeque::new(),
            next_job,
            reserved_jobs: next_job,
            recovering_until: Instant::now() + config.recovery_window(),
        };
        Gcs {
            state: Arc::new(Mutex::new(state)),
            task_events: Arc::new(Mutex::new(task_events::TaskEventStore::with_byte_capacity(
                config.task_history,
                config.task_history_bytes,
            ))),
            job_logs: Arc::new(job_logs::JobLogs::new(store.clone())),
            store,
            metrics,
            config,
        }
    }

    /// The store holding what survives a restart.
    pub fn store(&self) -> &Arc<state::StateStore> {
        &self.store
    }

    /// The metrics this GCS records into.
    pub fn metrics(&self) -> &Arc<HeadMetrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving with the data as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the broadcast tick, the health checker and the log flusher.
    pub fn spawn_background(&self) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state::LOG_FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "flushing job logs failed"),
                    Err(e) => tracing::warn!(error = %e, "the log flusher failed"),
                }
            }
        });
        let gcs = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(gcs.config.broadcast_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                gcs.check_health();
                gcs.broadcast();
            }
        });
    }

    fn check_health(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        let timeout = self.config.health_timeout;
        let expired: Vec<NodeId> = st
            .nodes
            .iter()
            .filter(|(_, e)| e.is_alive() && now.duration_since(e.last_seen) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            st.mark_dead(id, format!("no heartbeat for {timeout:?}"));
        }
    }

    /// Sends the pending delta to every subscriber, and a full view to each
    /// one that owes it and has room. Never blocks and never drops a
    /// subscriber that is merely slow; only a closed stream is forgotten.
    fn broadcast(&self) {
        let mut st = self.lock();
        let recovering = Instant::now() < st.recovering_until;
        let resync = !recovering && st.subscribers.iter().any(|s| s.owes_full);
        if st.pending.is_empty() && !resync {
            return;
        }
        let delta = if st.pending.is_empty() {
            None
        } else {
            st.version += 1;
            let pending = std::mem::take(&mut st.pending);
            let loads = pending.loads.iter().filter_map(|id| st.nodes.get(id).and_then(|e| e.load.clone())).collect();
            Some(pb::ClusterViewUpdate {
                version: st.version,
                joined: pending.joined,
                dead: pending.dead,
                loads,
                full: false,
            })
        };
        let full = resync.then(|| st.full_view());
        st.subscribers.retain_mut(|sub| {
            let (update, is_full) = match (&full, &delta) {
                (Some(f), _) if sub.owes_full => (f, true),
                (_, Some(d)) => (d, false),
                _ => return true,
            };
            match sub.tx.try_send(Ok(update.clone())) {
                Ok(()) => {
                    if is_full {
                        sub.owes_full = false;
                    }
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !sub.owes_full {
                        tracing::warn!(node = %sub.node, "raylet fell behind on cluster view updates; it will get a full view");
                        sub.owes_full = true;
                    }
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Opens the update stream of a node that is alive, recording the load
    /// of its first heartbeat. The stream's first update is a full view.
    fn subscribe(
        &self,
        id: NodeId,
        load: Option<pb::NodeLoad>,
    ) -> Result<mpsc::Receiver<Result<pb::ClusterViewUpdate, Status>>, Status> {
        let (tx, rx) = mpsc::channel(UPDATE_QUEUE);
        let mut st = self.lock();
        match st.nodes.get_mut(&id) {
            Some(e) if e.is_alive() => {
                e.last_seen = Instant::now();
                if let Some(load) = load {
                    e.load = Some(load);
                    st.pending.loads.insert(id);
                }
            }
            Some(_) => return Err(Status::failed_precondition(format!("node {id} was declared dead"))),
            // A GCS that restarted does not know the node yet: it registers again.
            None => return Err(Status::not_found(format!("node {id} is not registered"))),
        }
        st.subscribers.push(Subscriber { node: id, tx, owes_full: true });
        Ok(rx)
    }

    /// Records a heartbeat; `Err` names why the node's stream must end.
    fn on_heartbeat(&self, id: NodeId, load: Option<pb::NodeLoad>) -> Result<(), String> {
        let mut st = self.lock();
        let Some(e) = st.nodes.get_mut(&id) else { return Err("unknown node".to_string()) };
        if !e.is_alive() {
            return Err("declared dead".to_string());
        }
        e.last_seen = Instant::now();
        if let Some(load) = load {
            e.load = Some(load);
            st.pending.loads.insert(id);
        }
        Ok(())
    }

    /// Declares a node dead (its stream ended, or it was silent too long).
    fn mark_dead(&self, id: NodeId, reason: String) {
        self.lock().mark_dead(id, reason);
    }

    /// Alive nodes and the most recent dead ones ([`MAX_DEAD_NODES`]), with
    /// the loads of the alive ones.
    pub fn nodes(&self) -> (Vec<pb::NodeInfo>, Vec<pb::NodeLoad>) {
        let st = self.lock();
        let mut nodes: Vec<_> = st.nodes.values().map(|e| e.info.clone()).collect();
        nodes.sort_by_key(|n| n.started_at_ms);
        let loads = st.nodes.values().filter_map(|e| e.load.clone()).collect();
        (nodes, loads)
    }

    /// Number of alive nodes.
    pub fn alive_nodes(&self) -> usize {
        self.lock().nodes.values().filter(|e| e.is_alive()).count()
    }

    /// Adds a job to the job table (the RPC and the head's job manager). The
    /// next id is on disk before the id is handed out, so no id is handed
    /// out twice, across restarts too.
    pub fn register_job_local(&self, name: String, driver_address: String) -> Result<u32, Status> {
        let mut st = self.lock();
        let job_id = st.next_job;
        let next = job_id.checked_add(1).ok_or_else(|| Status::resource_exhausted("job ids exhausted"))?;
        if job_id >= st.reserved_jobs {
            // One durable write per block of ids, not per session: this
            // runs under the GCS lock, which heartbeats need too.
            let until = next.saturating_add(JOB_ID_BLOCK - 1);
            self.store.set_next_job_id(until).map_err(|e| Status::unavailable(e.to_string()))?;
            st.reserved_jobs = until;
        }
        st.next_job = next;
        st.jobs.insert(
            job_id,
            pb::JobInfo {
                job_id,
                name,
                state: pb::JobState::JobRunning as i32,
                started_at_ms: now_ms(),
                ended_at_ms: 0,
                driver_address,
            },
        );
        Ok(job_id)
    }

    /// Marks a job finished in the job table; `false` for an unknown job.
    pub fn finish_job_local(&self, job_id: u32) -> bool {
        let mut st = self.lock();
        let Some(job) = st.jobs.get_mut(&job_id) else { return false };
        if job.state != pb::JobState::JobSucceeded as i32 {
            job.state = pb::JobState::JobSucceeded as i32;
            job.ended_at_ms = now_ms();
            st.finished_jobs.push_back(job_id);
            while st.finished_jobs.len() > MAX_FINISHED_JOBS {
                let Some(old) = st.finished_jobs.pop_front() else { break };
                st.jobs.remove(&old);
            }
        }
        true
    }

    /// The job table.
    pub fn jobs(&self) -> Vec<pb::JobInfo> {
        self.lock().jobs.values().cloned().collect()
    }
}

fn node_id(b: &[u8]) -> Result<NodeId, Status> {
    NodeId::from_slice(b).map_err(|e| Status::invalid_argument(e.to_string()))
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterViewUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gcs_server::Gcs for Gcs {
    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeReply>, Status> {
        let mut info = req.into_inner().node.ok_or_else(|| Status::invalid_argument("node missing"))?;
        let id = node_id(&info.node_id)?;
        if info.address.is_empty() {
            return Err(Status::invalid_argument("node address missing"));
        }
        let mut st = self.lock();
        if let Some(e) = st.nodes.get(&id) {
            if !e.is_alive() {
                return Err(Status::failed_precondition(format!(
                    "node {id} was declared dead ({}); restart it as a new node",
                    e.info.death_reason
                )));
            }
        }
        info.state = pb::NodeState::NodeAlive as i32;
        if info.started_at_ms == 0 {
            info.started_at_ms = now_ms();
        }
        tracing::info!(node = %id, address = %info.address, "node registered");
        st.nodes.insert(id, NodeEntry { info: info.clone(), load: None, last_seen: Instant::now() });
        st.pending.joined.push(info);
        // Alive nodes only: dead ones are of no use to a raylet that is
        // joining, and the full view on its heartbeat stream settles the rest.
        let view = st.full_view();
        Ok(Response::new(pb::RegisterNodeReply { nodes: view.joined, loads: view.loads, version: view.version }))
    }

    type HeartbeatStream = UpdateStream;

    async fn heartbeat(
        &self,
        req: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("heartbeat stream closed before its first message"))?;
        let id = node_id(&first.node_id)?;
        let rx = self.subscribe(id, first.load)?;
        let gcs = self.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(hb)) => {
                        if let Err(reason) = gcs.on_heartbeat(id, hb.load) {
                            break reason;
                        }
                    }
                    Ok(None) => break "heartbeat stream closed".to_string(),
                    Err(e) => break format!("heartbeat stream broke: {}", e.message()),
                }
            };
            gcs.mark_dead(id, reason);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_nodes(&self, _req: Request<pb::GetNodesRequest>) -> Result<Response<pb::GetNodesReply>, Status> {
        let (nodes, loads) = self.nodes();
        Ok(Response::new(pb::GetNodesReply { nodes, loads }))
    }

    async fn register_job(
        &self,
        req: Request<pb::RegisterJobRequest>,
    ) -> Result<Response<pb::RegisterJobReply>, Status> {
        let req = req.into_inner();
        let job_id = self.register_job_local(req.name, req.driver_address)?;
        Ok(Response::new(pb::RegisterJobReply { job_id }))
    }

    async fn finish_job(&self, req: Request<pb::FinishJobRequest>) -> Result<Response<pb::FinishJobReply>, Status> {
        let id = req.into_inner().job_id;
        if !self.finish_job_local(id) {
            return Err(Status::not_found(format!("job {id} not found")));
        }
        Ok(Response::new(pb::FinishJobReply {}))
    }

    async fn list_jobs(&self, _req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsReply>, Status> {
        Ok(Response::new(pb::ListJobsReply { jobs: self.jobs() }))
    }

    async fn kv_put(&self, req: Request<pb::KvPutRequest>) -> Result<Response<pb::KvPutReply>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("empty key"));
        }
        let store = self.store.clone();
        let added = tokio::task::spawn_blocking(move || store.kv_put(&req.key, &req.value, req.overwrite))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::KvPutReply { added }))
    }

    async fn kv_get(&self, req: Request<pb::KvGetRequest>) -> Result<Response<pb::KvGetReply>, Status> {
        let value = self.store.kv_get(&req.get_ref().key).map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(match value {
            Some(v) => pb::KvGetReply { found: true, value: v.into() },
            None => pb::KvGetReply { found: false, value: Default::default() },
        }))
    }

    async fn kv_del(&self, req: Request<pb::KvDelRequest>) -> Result<Response<pb::KvDelReply>, Status> {
        let store = self.store.clone();
        let key = req.into_inner().key;
        let deleted = tokio::task::spawn_blocking(move || store.kv_del(&key))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::KvDelReply { deleted }))
    }

    async fn report_task_events(
        &self,
        req: Request<pb::ReportTaskEventsRequest>,
    ) -> Result<Response<pb::ReportTaskEventsReply>, Status> {
        let batch = req.into_inner();
        let started = self.task_events.lock().unwrap_or_else(|p| p.into_inner()).record(batch);
        for s in started {
            self.metrics.observe_submit_to_start(&s.function, s.seconds);
        }
        Ok(Response::new(pb::ReportTaskEventsReply {}))
    }

    async fn append_job_log(
        &self,
        req: Request<pb::AppendJobLogRequest>,
    ) -> Result<Response<pb::AppendJobLogReply>, Status> {
        let req = req.into_inner();
        let stop = self.job_logs.append(req.job_id, &req.data);
        Ok(Response::new(pb::AppendJobLogReply { stop }))
    }

    async fn kv_list(&self, req: Request<pb::KvListRequest>) -> Result<Response<pb::KvListReply>, Status> {
        let keys = self.store.kv_list(&req.get_ref().prefix).map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::KvListReply { keys }))
    }
}

/// Largest message a caller may send the GCS (job specs, key-value
/// entries, batches of task events and log chunks).
pub const MAX_REQUEST_MESSAGE_BYTES: usize = 64 << 20;

/// The gRPC server for `gcs`, with shoal's message limits.
pub fn service(gcs: Gcs) -> pb::gcs_server::GcsServer<Gcs> {
    // The GCS carries records, never object values.
    pb::gcs_server::GcsServer::new(gcs)
        .max_decoding_message_size(MAX_REQUEST_MESSAGE_BYTES)
        .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raylet::cluster_view::ClusterView;
    use crate::resources::ResourceSet;
    use pb::gcs_server::Gcs as _;

    type Updates = mpsc::Receiver<Result<pb::ClusterViewUpdate, Status>>;

    /// A GCS past its recovery window, with no background tick: tests drive
    /// `check_health` and `broadcast` themselves.
    fn gcs() -> Gcs {
        let config = GcsConfig {
            health_timeout: Duration::from_millis(200),
            broadcast_interval: Duration::from_millis(10),
            recovery_window: Some(Duration::ZERO),
            ..Default::default()
        };
        Gcs::with_metrics(config, Arc::new(HeadMetrics::new()))
    }

    fn id(i: u16) -> NodeId {
        let [hi, lo] = i.to_be_bytes();
        NodeId([hi, lo, 0, 0, 0, 0, 0, 1])
    }

    fn info(i: u16) -> pb::NodeInfo {
        pb::NodeInfo {
            node_id: id(i).to_bytes(),
            address: format!("10.0.0.{i}:6380"),
            total: Some((&ResourceSet::new().with("cpu", 4.0)).into()),
            ..Default::default()
        }
    }

    fn load(i: u16, cpu: f64) -> pb::NodeLoad {
        pb::NodeLoad {
            node_id: id(i).to_bytes(),
            available: Some((&ResourceSet::new().with("cpu", cpu)).into()),
            ..Default::default()
        }
    }

    async fn register(gcs: &Gcs, i: u16) -> Result<pb::RegisterNodeReply, Status> {
        gcs.register_node(Request::new(pb::RegisterNodeRequest { node: Some(info(i)) })).await.map(|r| r.into_inner())
    }

    /// Applies everything queued for a subscriber, as its raylet would;
    /// returns the deaths the view reported.
    fn drain_into(rx: &mut Updates, view: &mut ClusterView, local: NodeId) -> Vec<NodeId> {
        let mut dead = Vec::new();
        while let Ok(u) = rx.try_recv() {
            dead.extend(view.apply_update(&u.expect("an update, not an error"), local));
        }
        dead
    }

    fn alive_ids(view: &ClusterView) -> Vec<NodeId> {
        view.nodes().filter(|n| n.alive).map(|n| n.id).collect()
    }

    fn cpu_of(view: &ClusterView, i: u16) -> Option<f64> {
        view.get(&id(i)).map(|n| n.available.get("cpu"))
    }

    fn state_of(gcs: &Gcs, i: u16) -> Option<(i32, String)> {
        gcs.lock().nodes.get(&id(i)).map(|e| (e.info.state, e.info.death_reason.clone()))
    }

    const DEAD: i32 = pb::NodeState::NodeDead as i32;

    #[tokio::test]
    async fn joins_deaths_and_loads_reach_every_subscriber() {
        let gcs = gcs();
        register(&gcs, 1).await.expect("register 1");
        register(&gcs, 2).await.expect("register 2");
        let mut subs =
            [(id(1), gcs.subscribe(id(1), None).expect("sub 1")), (id(2), gcs.subscribe(id(2), None).expect("sub 2"))];
        let mut views = [ClusterView::default(), ClusterView::default()];
        gcs.broadcast();
        register(&gcs, 3).await.expect("register 3");
        gcs.on_heartbeat(id(2), Some(load(2, 1.5))).expect("heartbeat 2");
        gcs.on_heartbeat(id(3), Some(load(3, 3.0))).expect("heartbeat 3");
        gcs.broadcast();
        for ((me, rx), view) in subs.iter_mut().zip(views.iter_mut()) {
            assert!(drain_into(rx, view, *me).is_empty());
            assert_eq!(alive_ids(view), vec![id(1), id(2), id(3)]);
            assert_eq!(cpu_of(view, 3), Some(3.0));
        }
        assert_eq!(cpu_of(&views[0], 2), Some(1.5), "node 1 sees node 2's load");
        gcs.mark_dead(id(3), "test".into());
        gcs.broadcast();
        for ((me, rx), view) in subs.iter_mut().zip(views.iter_mut()) {
            assert_eq!(drain_into(rx, view, *me), vec![id(3)], "every subscriber hears of the death once");
            assert_eq!(alive_ids(view), vec![id(1), id(2)]);
        }
    }

    #[tokio::test]
    async fn a_node_silent_past_the_health_timeout_is_declared_dead_and_refused() {
        let gcs = gcs();
        register(&gcs, 1).await.expect("register 1");
        register(&gcs, 2).await.expect("register 2");
        let mut rx = gcs.subscribe(id(2), None).expect("sub 2");
        let mut view = ClusterView::default();
        gcs.broadcast();
        // Node 1 was last heard from longer ago than the health timeout;
        // node 2 just now.
        {
            let mut st = gcs.lock();
            let long_ago = Instant::now().checked_sub(Duration::from_secs(1)).expect("a past instant");
            st.nodes.get_mut(&id(1)).expect("node 1").last_seen = long_ago;
        }
        gcs.on_heartbeat(id(2), None).expect("heartbeat 2");
        gcs.check_health();
        let (state, reason) = state_of(&gcs, 1).expect("node 1 remembered");
        assert_eq!(state, DEAD);
        assert!(reason.contains("no heartbeat"), "{reason}");
        assert_ne!(state_of(&gcs, 2).map(|s| s.0), Some(DEAD));
        gcs.broadcast();
        assert_eq!(drain_into(&mut rx, &mut view, id(2)), vec![id(1)]);
        // A dead node stays dead: its heartbeats end its stream, and it must
        // come back as a new node.
        assert_eq!(gcs.on_heartbeat(id(1), None), Err("declared dead".to_string()));
        assert_eq!(register(&gcs, 1).await.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::FailedPrecondition));
        assert_eq!(gcs.subscribe(id(1), None).map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::FailedPrecondition));
    }

    #[tokio::test]
    async fn a_broken_heartbeat_stream_gets_the_node_declared_dead_everywhere() {
        // A health timeout far beyond the test, so only the stream can tell.
        let config = GcsConfig {
            health_timeout: Duration::from_secs(60),
            broadcast_interval: Duration::from_millis(10),
            recovery_window: Some(Duration::ZERO),
            ..Default::default()
        };
        let gcs = Gcs::with_metrics(config, Arc::new(HeadMetrics::new()));
        gcs.spawn_background();
        let (listener, bound) = crate::net::bind("127.0.0.1", 0).await.expect("bind");
        let svc = service(gcs.clone());
        tokio::spawn(crate::net::server(None).add_service(svc).serve_with_incoming(crate::net::incoming(listener)));
        let client =
            crate::raylet::connect_gcs(&bound.to_string(), None, Duration::from_secs(5)).await.expect("connect");
        let open = |i: u16| {
            let mut client = client.clone();
            async move {
                client.register_node(pb::RegisterNodeRequest { node: Some(info(i)) }).await.expect("register");
                let (tx, rx) = mpsc::channel(4);
                tx.send(pb::HeartbeatRequest { node_id: id(i).to_bytes(), load: None }).await.expect("first beat");
                let stream = client
                    .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .expect("heartbeat stream")
                    .into_inner();
                (tx, stream)
            }
        };
        let (tx1, _stream1) = open(1).await;
        let (_tx2, mut stream2) = open(2).await;
        let mut view = ClusterView::default();
        let first = stream2.message().await.expect("stream 2 healthy").expect("a first update");
        assert!(first.full, "a heartbeat stream opens with a full view");
        view.apply_update(&first, id(2));
        assert_eq!(alive_ids(&view), vec![id(1), id(2)]);
        // Node 1's side of the stream ends (its raylet went away).
        drop(tx1);
        let heard = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let u = stream2.message().await.expect("stream 2 healthy").expect("stream 2 open");
                if view.apply_update(&u, id(2)).contains(&id(1)) {
                    return;
                }
            }
        })
        .await;
        assert!(heard.is_ok(), "node 2 never heard that node 1 died");
        let (state, reason) = state_of(&gcs, 1).expect("node 1 remembered");
        assert_eq!(state, DEAD);
        assert!(reason.contains("heartbeat stream"), "{reason}");
        assert_eq!(alive_ids(&view), vec![id(2)]);
    }

    #[tokio::test]
    async fn a_subscriber_that_stops_reading_is_resynced_not_dropped() {
        let gcs = gcs();
        for i in 1..=3 {
            register(&gcs, i).await.expect("register");
        }
        let mut slow = gcs.subscribe(id(1), None).expect("subscribe");
        let mut view = ClusterView::default();
        gcs.broadcast();
        // Many more deltas than the queue holds while node 1 reads nothing;
        // node 3 dies and node 4 joins in the middle of it.
        for n in 0..UPDATE_QUEUE * 2 {
            if n == UPDATE_QUEUE + 10 {
                gcs.mark_dead(id(3), "test".into());
                register(&gcs, 4).await.expect("register 4");
            }
            gcs.on_heartbeat(id(2), Some(load(2, (n % 4) as f64))).expect("heartbeat 2");
            gcs.broadcast();
        }
        gcs.on_heartbeat(id(2), Some(load(2, 2.5))).expect("heartbeat 2");
        gcs.broadcast();
        assert_ne!(state_of(&gcs, 1).map(|s| s.0), Some(DEAD), "a slow reader is not a dead node");
        assert_eq!(gcs.lock().subscribers.len(), 1, "the slow subscriber is still registered");
        // It reads what is queued (stale deltas, node 3 still alive in them) ...
        let dead = drain_into(&mut slow, &mut view, id(1));
        assert!(dead.is_empty());
        assert!(view.is_alive(&id(3)), "the queued deltas predate node 3's death");
        // ... and, once it has room, gets one full view that sets it right.
        gcs.broadcast();
        let u = slow.try_recv().expect("a full view once there is room").expect("an update");
        assert!(u.full);
        assert_eq!(view.apply_update(&u, id(1)), vec![id(3)], "node 3's dropped death arrives with the full view");
        assert_eq!(alive_ids(&view), vec![id(1), id(2), id(4)]);
        assert_eq!(cpu_of(&view, 2), Some(2.5));
        // Deltas follow as usual afterwards.
        gcs.on_heartbeat(id(2), Some(load(2, 0.5))).expect("heartbeat 2");
        gcs.broadcast();
        let u = slow.try_recv().expect("a delta").expect("an update");
        assert!(!u.full);
        view.apply_update(&u, id(1));
        assert_eq!(cpu_of(&view, 2), Some(0.5));
    }

    #[tokio::test]
    async fn after_a_restart_full_views_wait_for_the_recovery_window_then_drop_nodes_that_died_meanwhile() {
        let config = GcsConfig { recovery_window: Some(Duration::from_secs(3600)), ..Default::default() };
        let gcs = Gcs::with_metrics(config, Arc::new(HeadMetrics::new()));
        // Node 1's view from before the restart: nodes 1, 2 and 3. Node 3
        // died while the GCS was away.
        let mut view = ClusterView::default();
        view.merge(&[info(1), info(2), info(3)], &[], id(1));
        let reply = register(&gcs, 1).await.expect("register 1");
        assert_eq!(reply.nodes.len(), 1, "the new GCS knows only node 1 so far");
        view.merge(&reply.nodes, &reply.loads, id(1));
        let mut rx = gcs.subscribe(id(1), None).expect("subscribe");
        register(&gcs, 2).await.expect("register 2");
        gcs.broadcast();
        // Within the window: deltas only, nothing removed.
        assert!(drain_into(&mut rx, &mut view, id(1)).is_empty());
        assert_eq!(alive_ids(&view), vec![id(1), id(2), id(3)]);
        // The window ends: the full view tells node 1 that node 3 is gone.
        gcs.lock().recovering_until = Instant::now();
        gcs.broadcast();
        assert_eq!(drain_into(&mut rx, &mut view, id(1)), vec![id(3)]);
        assert_eq!(alive_ids(&view), vec![id(1), id(2)]);
    }

    #[tokio::test]
    async fn only_the_latest_dead_nodes_are_kept_and_registration_lists_alive_ones() {
        let gcs = gcs();
        let total = (MAX_DEAD_NODES + 5) as u16;
        register(&gcs, 0).await.expect("register the survivor");
        for i in 1..=total {
            register(&gcs, i).await.expect("register");
            gcs.mark_dead(id(i), "test".into());
        }
        let (nodes, _) = gcs.nodes();
        assert_eq!(nodes.len(), MAX_DEAD_NODES + 1);
        assert!(state_of(&gcs, 5).is_none(), "the oldest deaths are forgotten");
        assert_eq!(state_of(&gcs, 6).map(|s| s.0), Some(DEAD));
        assert_eq!(register(&gcs, total).await.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::FailedPrecondition));
        let reply = register(&gcs, total + 1).await.expect("register a newcomer");
        let listed: Vec<_> = reply.nodes.iter().map(|n| NodeId::from_slice(&n.node_id).expect("id")).collect();
        assert_eq!(listed.len(), 2, "only alive nodes: {listed:?}");
        assert!(listed.contains(&id(0)) && listed.contains(&id(total + 1)));
    }

    #[tokio::test]
    async fn task_starts_are_timed_in_this_gcs_metrics_only() {
        let (a, b) = (gcs(), gcs());
        let t = crate::ids::TaskId::random(crate::ids::JobId(1));
        let ev = |state: pb::TaskState, at_ms| pb::TaskEvent {
            task_id: t.to_bytes(),
            job_id: 1,
            function: "builtin:noop".into(),
            state: state as i32,
            at_ms,
            ..Default::default()
        };
        let batch = pb::ReportTaskEventsRequest {
            events: vec![ev(pb::TaskState::TaskPendingArgs, 1_000), ev(pb::TaskState::TaskRunning, 1_200)],
            dropped: 0,
        };
        a.report_task_events(Request::new(batch)).await.expect("report");
        let count =
            |g: &Gcs| g.metrics().submit_to_start_seconds.with_label_values(&["builtin:noop"]).get_sample_count();
        assert_eq!((count(&a), count(&b)), (1, 0));
    }
}
