//! The global control service: node membership and health, the cluster
//! resource view, the job table and a small key-value store.
//!
//! The GCS is never on the per-task path. Raylets register once, then keep a
//! bidirectional heartbeat stream open: load reports flow in, and deltas of
//! the cluster view (joined nodes, dead nodes, changed loads) flow out to
//! every raylet on a fixed tick. A node whose stream breaks, or that stays
//! silent past the health timeout, is declared dead and the death is
//! broadcast. A dead node never comes back under the same id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub mod job_logs;
pub mod task_events;

use crate::ids::NodeId;
use crate::metrics::HeadMetrics;
use crate::net::now_ms;

/// Settings of the GCS.
#[derive(Clone, Debug)]
pub struct GcsConfig {
    /// A raylet silent for this long is declared dead.
    pub health_timeout: Duration,
    /// How often view deltas are broadcast.
    pub broadcast_interval: Duration,
    /// Most tasks remembered by the state API.
    pub task_history: usize,
}

impl Default for GcsConfig {
    fn default() -> Self {
        GcsConfig {
            health_timeout: Duration::from_secs(3),
            broadcast_interval: Duration::from_millis(50),
            task_history: task_events::DEFAULT_CAPACITY,
        }
    }
}

/// Bound of each raylet's outgoing update queue. A raylet that falls this far
/// behind is disconnected; it re-registers and gets a full view.
const UPDATE_QUEUE: usize = 256;

struct NodeEntry {
    info: pb::NodeInfo,
    load: Option<pb::NodeLoad>,
    last_seen: Instant,
}

#[derive(Default)]
struct Pending {
    joined: Vec<pb::NodeInfo>,
    dead: Vec<pb::NodeInfo>,
    loads: HashSet<NodeId>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<NodeId, NodeEntry>,
    version: u64,
    pending: Pending,
    subscribers: Vec<(NodeId, mpsc::Sender<Result<pb::ClusterViewUpdate, Status>>)>,
    jobs: BTreeMap<u32, pb::JobInfo>,
    next_job: u32,
    kv: BTreeMap<String, bytes::Bytes>,
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
    metrics: Arc<HeadMetrics>,
}

impl Gcs {
    /// A GCS with an empty cluster, recording into the process's head
    /// metrics (the ones the head's `/metrics` serves today). Call
    /// [`Gcs::spawn_background`] once to start broadcasting and health
    /// checks.
    pub fn new(config: GcsConfig) -> Self {
        Gcs::with_metrics(config, crate::metrics::head_shared())
    }

    /// A GCS recording into its own metrics (a test, or a head that serves
    /// `metrics.registry()` itself).
    pub fn with_metrics(config: GcsConfig, metrics: Arc<HeadMetrics>) -> Self {
        Gcs {
            state: Arc::new(Mutex::new(State { next_job: 1, ..Default::default() })),
            task_events: Arc::new(Mutex::new(task_events::TaskEventStore::new(config.task_history))),
            job_logs: Arc::new(job_logs::JobLogs::default()),
            metrics,
            config,
        }
    }

    /// The metrics this GCS records into.
    pub fn metrics(&self) -> &Arc<HeadMetrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving with the data as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the broadcast tick and the health checker.
    pub fn spawn_background(&self) {
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
            .filter(|(_, e)| {
                e.info.state == pb::NodeState::NodeAlive as i32 && now.duration_since(e.last_seen) > timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            mark_dead(&mut st, id, format!("no heartbeat for {timeout:?}"));
        }
    }

    fn broadcast(&self) {
        let mut st = self.lock();
        if st.pending.joined.is_empty() && st.pending.dead.is_empty() && st.pending.loads.is_empty() {
            return;
        }
        st.version += 1;
        let pending = std::mem::take(&mut st.pending);
        let loads = pending.loads.iter().filter_map(|id| st.nodes.get(id).and_then(|e| e.load.clone())).collect();
        let update = pb::ClusterViewUpdate {
            version: st.version,
            joined: pending.joined,
            dead: pending.dead,
            loads,
            full: false,
        };
        st.subscribers.retain(|(node, tx)| match tx.try_send(Ok(update.clone())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%node, "raylet fell behind on cluster view updates; disconnecting it");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Alive and dead nodes with their last loads.
    pub fn nodes(&self) -> (Vec<pb::NodeInfo>, Vec<pb::NodeLoad>) {
        let st = self.lock();
        let mut nodes: Vec<_> = st.nodes.values().map(|e| e.info.clone()).collect();
        nodes.sort_by_key(|n| n.start_time_ms);
        let loads = st.nodes.values().filter_map(|e| e.load.clone()).collect();
        (nodes, loads)
    }

    /// Number of alive nodes.
    pub fn alive_nodes(&self) -> usize {
        self.lock().nodes.values().filter(|e| e.info.state == pb::NodeState::NodeAlive as i32).count()
    }

    /// Adds a job to the job table (the RPC and the head's job manager).
    pub fn register_job_local(&self, name: String, driver_address: String) -> Result<u32, Status> {
        let mut st = self.lock();
        let job_id = st.next_job;
        st.next_job = st.next_job.checked_add(1).ok_or_else(|| Status::resource_exhausted("job ids exhausted"))?;
        st.jobs.insert(
            job_id,
            pb::JobInfo {
                job_id,
                name,
                state: pb::JobState::JobRunning as i32,
                start_time_ms: now_ms(),
                end_time_ms: 0,
                driver_address,
            },
        );
        Ok(job_id)
    }

    /// Marks a job finished in the job table (no-op for unknown jobs).
    pub fn finish_job_local(&self, job_id: u32) {
        let mut st = self.lock();
        if let Some(job) = st.jobs.get_mut(&job_id) {
            if job.state != pb::JobState::JobFinished as i32 {
                job.state = pb::JobState::JobFinished as i32;
                job.end_time_ms = now_ms();
            }
        }
    }

    /// The job table.
    pub fn jobs(&self) -> Vec<pb::JobInfo> {
        self.lock().jobs.values().cloned().collect()
    }
}

fn mark_dead(st: &mut State, id: NodeId, reason: String) {
    if let Some(e) = st.nodes.get_mut(&id) {
        if e.info.state == pb::NodeState::NodeDead as i32 {
            return;
        }
        tracing::warn!(node = %id, %reason, "node declared dead");
        e.info.state = pb::NodeState::NodeDead as i32;
        e.info.death_reason = reason;
        let info = e.info.clone();
        st.pending.dead.push(info);
        st.pending.loads.remove(&id);
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
            if e.info.state == pb::NodeState::NodeDead as i32 {
                return Err(Status::failed_precondition(format!(
                    "node {id} was declared dead ({}); restart it as a new node",
                    e.info.death_reason
                )));
            }
        }
        info.state = pb::NodeState::NodeAlive as i32;
        if info.start_time_ms == 0 {
            info.start_time_ms = now_ms();
        }
        tracing::info!(node = %id, address = %info.address, "node registered");
        st.nodes.insert(id, NodeEntry { info: info.clone(), load: None, last_seen: Instant::now() });
        st.pending.joined.push(info);
        let nodes = st.nodes.values().map(|e| e.info.clone()).collect();
        let loads = st.nodes.values().filter_map(|e| e.load.clone()).collect();
        Ok(Response::new(pb::RegisterNodeReply { nodes, loads, version: st.version }))
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
        let (tx, rx) = mpsc::channel(UPDATE_QUEUE);
        {
            let mut st = self.lock();
            match st.nodes.get_mut(&id) {
                Some(e) if e.info.state == pb::NodeState::NodeAlive as i32 => {
                    e.last_seen = Instant::now();
                    if let Some(load) = first.load {
                        e.load = Some(load);
                        st.pending.loads.insert(id);
                    }
                }
                Some(_) => return Err(Status::failed_precondition(format!("node {id} was declared dead"))),
                // A GCS that restarted does not know the node yet: it registers again.
                None => return Err(Status::not_found(format!("node {id} is not registered"))),
            }
            st.subscribers.push((id, tx));
        }
        let gcs = self.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(hb)) => {
                        let mut st = gcs.lock();
                        let Some(e) = st.nodes.get_mut(&id) else { break "unknown node".to_string() };
                        if e.info.state != pb::NodeState::NodeAlive as i32 {
                            break "declared dead".to_string();
                        }
                        e.last_seen = Instant::now();
                        if let Some(load) = hb.load {
                            e.load = Some(load);
                            st.pending.loads.insert(id);
                        }
                    }
                    Ok(None) => break "heartbeat stream closed".to_string(),
                    Err(e) => break format!("heartbeat stream broke: {}", e.message()),
                }
            };
            let mut st = gcs.lock();
            mark_dead(&mut st, id, reason);
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
        let mut st = self.lock();
        let job = st.jobs.get_mut(&id).ok_or_else(|| Status::not_found(format!("job {id} not found")))?;
        if job.state != pb::JobState::JobFinished as i32 {
            job.state = pb::JobState::JobFinished as i32;
            job.end_time_ms = now_ms();
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
        let mut st = self.lock();
        let exists = st.kv.contains_key(&req.key);
        if exists && !req.overwrite {
            return Ok(Response::new(pb::KvPutReply { added: false }));
        }
        st.kv.insert(req.key, req.value);
        Ok(Response::new(pb::KvPutReply { added: !exists }))
    }

    async fn kv_get(&self, req: Request<pb::KvGetRequest>) -> Result<Response<pb::KvGetReply>, Status> {
        let st = self.lock();
        Ok(Response::new(match st.kv.get(&req.get_ref().key) {
            Some(v) => pb::KvGetReply { found: true, value: v.clone() },
            None => pb::KvGetReply { found: false, value: Default::default() },
        }))
    }

    async fn kv_del(&self, req: Request<pb::KvDelRequest>) -> Result<Response<pb::KvDelReply>, Status> {
        let deleted = self.lock().kv.remove(&req.get_ref().key).is_some();
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
        let prefix = &req.get_ref().prefix;
        let st = self.lock();
        let keys = st
            .kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(prefix.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        Ok(Response::new(pb::KvListReply { keys }))
    }
}

/// The gRPC server for `gcs`, with shoal's message limits.
pub fn service(gcs: Gcs) -> pb::gcs_server::GcsServer<Gcs> {
    pb::gcs_server::GcsServer::new(gcs)
        .max_decoding_message_size(crate::net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::gcs_server::Gcs as _;

    fn gcs() -> Gcs {
        Gcs::with_metrics(GcsConfig::default(), Arc::new(HeadMetrics::new()))
    }

    #[tokio::test]
    async fn task_starts_are_timed_in_this_gcs_metrics_only() {
        let (a, b) = (gcs(), gcs());
        let t = crate::ids::TaskId::random(crate::ids::JobId(1));
        let ev = |state: pb::TaskState, time_ms| pb::TaskEvent {
            task_id: t.to_bytes(),
            job_id: 1,
            function: "builtin:noop".into(),
            state: state as i32,
            time_ms,
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
