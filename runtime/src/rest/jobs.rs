//! The job manager: runs the jobs submitted over REST and remembers them.
//!
//! A job is registered in one step under the table lock (submission-id check,
//! GCS job id, stored record), so a request either creates a whole job or
//! none, and a job the API acknowledged is on disk. Then a runner task takes
//! it through `PENDING → RUNNING → SUCCEEDED | FAILED | STOPPED`: it
//! connects a [`Client`] under the job's id to the job's owner, and either
//! submits the task graph with [`driver::submit_plan`] and waits for the
//! sink tasks, or submits one `builtin:entrypoint` driver task that runs the
//! user's command. Terminal states never change: whoever reaches one first
//! (the runner, or a stop) wins, and later transitions are ignored.
//!
//! Memory: every job's record (spec summary, results, frozen task counts)
//! lives in the head's state store ([`crate::gcs::state`]); in memory the
//! manager keeps a small index (each job's state, for listings and counts)
//! and, for a job that is not over or whose result objects it still holds,
//! what running it needs ([`Live`]). A job's task counts come from the task
//! history while it runs and for [`COUNTS_SETTLE`] after it ends (task
//! events lag behind results); then they are frozen into its record, since
//! the history forgets old tasks.
//!
//! Restart: a head that starts on a state directory shows every job it had.
//! A job that was pending or running is failed at start (its runner died
//! with the old head), and its log says so. Result objects of finished jobs
//! were owned by the old head's raylet: asking for one answers
//! `object_gone`.
//!
//! Ownership (ARCHITECTURE §3): the owner is the head's own raylet
//! ([`Owner`]), so losing a worker node never fails a job. It owns a task
//! graph's tasks and an entrypoint's driver task, which is placed on the
//! head too (soft node affinity) unless it asks for resources the head
//! lacks; the tasks a driver submits are owned by the raylet of the node it
//! runs on. A head started without a raylet falls back to the least-loaded
//! alive worker node, whose loss then fails the job. Results larger than
//! [`INLINE_RESULT_LIMIT`] or not JSON stay in the cluster, referenced by
//! the job manager until the job is deleted or the head ends.
//!
//! Store writes are short transactions made inline (a job write waits for
//! one flush to disk); the REST handlers run submit, stop and delete on the
//! blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proto::v1 as pb;
use tokio::sync::watch;

use super::error::ApiError;
use super::types::{EntrypointJob, Job, JobKind, JobResult, JobState, TaskCounts};
use crate::client::{Client, ConnectOptions, ObjectRef, Task};
use crate::gcs::state::{JobRow, StateError, StateStore};
use crate::gcs::task_events::STATES;
use crate::gcs::Gcs;
use crate::ids::{JobId, NodeId, ObjectId};
use crate::job::JobPlan;
use crate::net::now_ms;
use crate::resources::ResourceSet;
use crate::value::Value;

/// Results up to this size (encoded JSON) are shown inline in the job.
pub const INLINE_RESULT_LIMIT: usize = 64 * 1024;
/// How long a job waits for an alive raylet before failing.
pub const NODE_WAIT: Duration = Duration::from_secs(30);
/// How often the node of an entrypoint's driver is looked up until known
/// (the pace at which raylets ship task events).
const DRIVER_NODE_POLL: Duration = Duration::from_millis(100);
/// How long after its job ended the driver's node is still looked for
/// (task events lag behind the result).
const DRIVER_NODE_GRACE: Duration = Duration::from_secs(2);
/// How long after its end a job's task counts still follow the task
/// history before they are frozen into its record (longer than the lag of
/// task events, and than [`DRIVER_NODE_GRACE`]).
pub const COUNTS_SETTLE: Duration = Duration::from_secs(3);
/// Environment variable naming the job of an entrypoint driver.
pub const ENV_JOB_ID: &str = "SHOAL_JOB_ID";
/// The message of a job that was pending or running when the head died.
pub const RESTARTED_MESSAGE: &str = "the head restarted while the job ran; its runner was lost";

/// The raylet owning the jobs' tasks: the head's own.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Its gRPC address.
    pub address: String,
    /// Its node.
    pub node_id: NodeId,
}

/// What a job runs, validated.
#[derive(Clone, Debug)]
pub enum Work {
    /// A planned task graph.
    TaskGraph(JobPlan),
    /// A driver command.
    Entrypoint {
        /// The request.
        job: EntrypointJob,
        /// Its resources, parsed.
        resources: ResourceSet,
    },
}

/// A validated submission.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The job's name.
    pub name: String,
    /// What to run.
    pub work: Work,
    /// Client-chosen idempotency key.
    pub submission_id: Option<String>,
    /// Hash of the request's canonical form ([`fingerprint`]), to tell a
    /// repeat from a different body.
    pub fingerprint: String,
}

/// A stable 128-bit hash (FNV-1a) of a request's canonical form, in hex.
/// Stable across builds and restarts (a stored fingerprint must match the
/// same body after an upgrade), which `std`'s hashers do not promise; it
/// tells an honest repeat from a different body, it is no defence against
/// a client colliding with its own submissions.
pub fn fingerprint(canonical: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let h = canonical.bytes().fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    format!("{h:032x}")
}

/// A job as stored: what the API shows plus what the manager needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobRecord {
    job: Job,
    fingerprint: String,
    /// Size of a task graph (the total its counts show).
    plan_tasks: Option<u64>,
}

impl JobRecord {
    fn objects(&self) -> Vec<String> {
        self.job.results.iter().filter_map(|r| r.object_id.clone()).collect()
    }
}

/// What the manager holds in memory for a job that is not over, or whose
/// counts are still settling, or whose result objects it holds.
struct Live {
    /// The record, mirrored on disk; `None` once the job is over and its
    /// counts are frozen (then the store has it).
    record: Option<JobRecord>,
    stop: watch::Sender<bool>,
    /// Keeps the session (and so `held`) alive.
    client: Option<Client>,
    held: Vec<ObjectRef>,
}

#[derive(Default)]
struct Table {
    /// Every job's state: the small index listings and counts read.
    states: BTreeMap<u32, JobState>,
    live: HashMap<u32, Live>,
    /// Result objects held, by job.
    objects: HashMap<ObjectId, u32>,
}

/// The head's job manager. Cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    gcs: Gcs,
    owner: Option<Owner>,
    token: Option<crate::auth::Token>,
    store: Arc<StateStore>,
    table: Arc<Mutex<Table>>,
    changed: Arc<watch::Sender<u64>>,
}

fn job_hex(id: u32) -> String {
    JobId(id).to_string()
}

fn state_code(s: JobState) -> u8 {
    JobState::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn store_error(e: StateError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

fn encode(record: &JobRecord) -> Vec<u8> {
    // A record is plain data: encoding it cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

fn decode(store: &StateStore, id: u32, bytes: &[u8]) -> Result<JobRecord, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Storage {
        where_: store.location(),
        what: format!("reading job {}", job_hex(id)),
        detail: format!("the record does not decode: {e}"),
    })
}

impl JobManager {
    /// A manager over the head's GCS, with the jobs its store holds: a job
    /// that was pending or running when the head stopped is failed now.
    pub fn open(gcs: Gcs) -> Result<Self, StateError> {
        let store = gcs.store().clone();
        let mut table = Table::default();
        for (id, code) in store.job_states()? {
            let state = JobState::ALL.get(code as usize).copied().ok_or_else(|| StateError::Corrupt {
                path: store.location().into(),
                detail: format!("job {} has state code {code}, which no state has", job_hex(id)),
            })?;
            if state.is_terminal() {
                table.states.insert(id, state);
                continue;
            }
            let Some(bytes) = store.job(id)? else { continue };
            let mut record = decode(&store, id, &bytes)?;
            let was = record.job.state;
            record.job.state = JobState::Failed;
            record.job.message = format!("{RESTARTED_MESSAGE} (it was {})", was.as_str());
            record.job.ended_at_ms = Some(now_ms());
            store.append_log(
                id,
                format!("[shoal] the head restarted while this job was {}; the job failed\n", was.as_str()).as_bytes(),
            )?;
            store.put_job(&JobRow {
                id,
                state: state_code(JobState::Failed),
                record: &encode(&record),
                submission_id: record.job.submission_id.as_deref(),
                objects: &[],
            })?;
            // A driver of the old head's that still writes is told to end.
            gcs.job_logs.mark_stopped(id);
            tracing::warn!(job = %job_hex(id), was = was.as_str(), "job failed: the head restarted while it ran");
            table.states.insert(id, JobState::Failed);
        }
        if !table.states.is_empty() {
            tracing::info!(jobs = table.states.len(), "jobs restored from the state store");
        }
        Ok(JobManager {
            gcs,
            owner: None,
            token: None,
            store,
            table: Arc::new(Mutex::new(table)),
            changed: Arc::new(watch::channel(0).0),
        })
    }

    /// Jobs are owned by this raylet (`None`: by the least-loaded worker node).
    pub fn with_owner(mut self, owner: Option<Owner>) -> Self {
        self.owner = owner;
        self
    }

    /// The cluster's token, presented to the raylets jobs run on.
    pub fn with_token(mut self, token: Option<crate::auth::Token>) -> Self {
        self.token = token;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The GCS the manager runs jobs through.
    pub fn gcs(&self) -> &Gcs {
        &self.gcs
    }

    fn save(&self, record: &JobRecord) -> Result<(), StateError> {
        let id = record.job.id.parse::<JobId>().map(|j| j.0).unwrap_or_default();
        self.store.put_job(&JobRow {
            id,
            state: state_code(record.job.state),
            record: &encode(record),
            submission_id: record.job.submission_id.as_deref(),
            objects: &record.objects(),
        })
    }

    /// A job's record: the live one, else the stored one.
    fn record(&self, t: &Table, job_id: u32) -> Result<Option<JobRecord>, StateError> {
        if let Some(r) = t.live.get(&job_id).and_then(|l| l.record.as_ref()) {
            return Ok(Some(r.clone()));
        }
        match self.store.job(job_id)? {
            Some(bytes) => decode(&self.store, job_id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Changes a job's record and writes it; `f` says whether it changed
    /// anything. A failed write is logged: the runner has no one to tell.
    fn update(&self, t: &mut Table, job_id: u32, f: impl FnOnce(&mut JobRecord) -> bool) -> bool {
        let mut stored = None;
        if t.live.get(&job_id).is_none_or(|l| l.record.is_none()) {
            match self.record(t, job_id) {
                Ok(Some(r)) => stored = Some(r),
                Ok(None) => return false,
                Err(e) => {
                    tracing::error!(job = %job_hex(job_id), error = %e, "reading a job failed");
                    return false;
                }
            }
        }
        let live = t.live.get_mut(&job_id).and_then(|l| l.record.as_mut());
        let Some(record) = stored.as_mut().or(live) else { return false };
        if !f(record) {
            return false;
        }
        let state = record.job.state;
        let record = record.clone();
        if let Err(e) = self.save(&record) {
            tracing::error!(job = %job_hex(job_id), error = %e, "writing a job failed");
        }
        t.states.insert(job_id, state);
        true
    }

    /// Registers and starts a job; returns its id and whether it already existed.
    pub fn submit(&self, sub: Submission) -> Result<(String, bool), ApiError> {
        let (id, stop_rx) = {
            let mut t = self.lock();
            if let Some(sid) = &sub.submission_id {
                let existing = match self.store.submission(sid).map_err(store_error)? {
                    Some(id) => self.record(&t, id).map_err(store_error)?,
                    None => None,
                };
                if let Some(existing) = existing {
                    if existing.fingerprint == sub.fingerprint {
                        return Ok((existing.job.id, true));
                    }
                    return Err(ApiError::conflict(
                        "submission_conflict",
                        format!(
                            "submission id `{sid}` was already used for job {} with a different body",
                            existing.job.id
                        ),
                    ));
                }
            }
            let job_id = self
                .gcs
                .register_job_local(sub.name.clone(), "head job manager".into())
                .map_err(|s| ApiError::unavailable(s.message().to_string()))?;
            let (kind, entrypoint, plan_tasks) = match &sub.work {
                Work::TaskGraph(p) => (JobKind::TaskGraph, None, Some(p.tasks.len() as u64)),
                Work::Entrypoint { job, .. } => (JobKind::Entrypoint, Some(job.entrypoint.clone()), None),
            };
            let (stop, stop_rx) = watch::channel(false);
            let job = Job {
                id: job_hex(job_id),
                submission_id: sub.submission_id.clone(),
                name: sub.name.clone(),
                kind,
                state: JobState::Pending,
                message: "waiting for a raylet".into(),
                entrypoint,
                created_at_ms: now_ms(),
                started_at_ms: None,
                ended_at_ms: None,
                driver_node_id: None,
                tasks: TaskCounts { total: plan_tasks.unwrap_or(0), ..Default::default() },
                results: Vec::new(),
            };
            let record = JobRecord { job, fingerprint: sub.fingerprint.clone(), plan_tasks };
            self.save(&record).map_err(store_error)?;
            t.states.insert(job_id, JobState::Pending);
            t.live.insert(job_id, Live { record: Some(record), stop, client: None, held: Vec::new() });
            (job_id, stop_rx)
        };
        self.notify();
        let me = self.clone();
        tokio::spawn(async move { me.run(id, sub, stop_rx).await });
        Ok((job_hex(id), false))
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
        self.gcs.job_logs.wake();
    }

    /// A receiver that changes whenever a job changes state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn log(&self, job_id: u32, line: &str) {
        self.gcs.job_logs.append(job_id, format!("[shoal] {line}\n").as_bytes());
    }

    fn task_counts(&self, job_id: u32, plan_tasks: Option<u64>) -> TaskCounts {
        let counts = self.gcs.task_events.lock().unwrap_or_else(|p| p.into_inner()).job_counts(job_id);
        counts_view(counts, plan_tasks)
    }

    /// Moves a job to `state` unless it is already terminal; returns whether it moved.
    /// [`JobManager::transition`] from async code: the store write waits
    /// for a flush to disk, so it runs on the blocking pool.
    async fn transition_off_thread(&self, job_id: u32, state: JobState, message: String) -> bool {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.transition(job_id, state, message)).await.unwrap_or(false)
    }

    fn transition(&self, job_id: u32, state: JobState, message: String) -> bool {
        let now = now_ms();
        let counts = self.lock().live.get(&job_id).and_then(|l| l.record.as_ref()).map(|r| r.plan_tasks);
        let counts = state.is_terminal().then(|| self.task_counts(job_id, counts.flatten()));
        let dropped = {
            let mut t = self.lock();
            let moved = self.update(&mut t, job_id, |r| {
                if r.job.state.is_terminal() {
                    return false;
                }
                r.job.state = state;
                r.job.message = message;
                if state == JobState::Running {
                    r.job.started_at_ms = Some(now);
                }
                if let Some(c) = counts {
                    r.job.ended_at_ms = Some(now);
                    r.job.tasks = c;
                }
                true
            });
            if !moved {
                return false;
            }
            match t.live.get_mut(&job_id) {
                Some(l) if state.is_terminal() => {
                    let _ = l.stop.send(true);
                    // Without results to serve, the session is no longer needed.
                    if l.held.is_empty() {
                        l.client.take()
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        drop(dropped);
        if state.is_terminal() {
            self.gcs.finish_job_local(job_id);
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(COUNTS_SETTLE).await;
                me.settle(job_id);
            });
        }
        self.notify();
        true
    }

    /// Freezes an ended job's task counts into its record and lets go of
    /// what memory held of it.
    fn settle(&self, job_id: u32) {
        let plan_tasks = {
            let t = self.lock();
            let Some(Some(r)) = t.live.get(&job_id).map(|l| l.record.as_ref()) else { return };
            r.plan_tasks
        };
        let counts = self.task_counts(job_id, plan_tasks);
        let mut t = self.lock();
        self.update(&mut t, job_id, |r| {
            r.job.tasks = counts;
            true
        });
        if let Some(l) = t.live.get_mut(&job_id) {
            l.record = None;
            if l.held.is_empty() {
                t.live.remove(&job_id);
            }
        }
    }

    async fn run(&self, job_id: u32, sub: Submission, mut stop: watch::Receiver<bool>) {
        let name = sub.name.clone();
        let client = tokio::select! {
            c = self.connect(job_id, &name) => c,
            _ = stop.wait_for(|s| *s) => return,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                self.log(job_id, &format!("job failed: {e}"));
                self.transition_off_thread(job_id, JobState::Failed, e.message).await;
                return;
            }
        };
        {
            let mut t = self.lock();
            let Some(l) = t.live.get_mut(&job_id) else { return };
            if l.record.as_ref().is_none_or(|r| r.job.state.is_terminal()) {
                return;
            }
            l.client = Some(client.clone());
            // A task graph's tasks are owned by the raylet the job's client
            // talks to. An entrypoint's driver runs wherever its task was
            // placed and owns its own tasks through that node's raylet: its
            // node is known once the task runs (see `watch_driver_node`).
            if matches!(sub.work, Work::TaskGraph(_)) {
                if let Some(r) = l.record.as_mut() {
                    r.job.driver_node_id = Some(client.node_id().to_string());
                }
            }
        }
        self.log(job_id, &format!("job {} running through node {}", job_hex(job_id), client.node_id()));
        self.transition_off_thread(job_id, JobState::Running, "running".into()).await;
        let outcome = match sub.work {
            Work::TaskGraph(plan) => self.run_graph(job_id, &client, &plan, &mut stop).await,
            Work::Entrypoint { job, resources } => {
                self.run_entrypoint(job_id, &client, &job, resources, &mut stop).await
            }
        };
        match outcome {
            Some(Ok((results, held))) => {
                let held_ids: Vec<ObjectId> = held.iter().map(ObjectRef::id).collect();
                {
                    let mut t = self.lock();
                    let Some(l) = t.live.get_mut(&job_id) else { return };
                    let Some(r) = l.record.as_mut() else { return };
                    if r.job.state.is_terminal() {
                        return;
                    }
                    // Written with the terminal state by the transition.
                    r.job.results = results;
                    l.held = held;
                    for id in held_ids {
                        t.objects.insert(id, job_id);
                    }
                }
                self.log(job_id, "job succeeded");
                self.transition_off_thread(job_id, JobState::Succeeded, "succeeded".into()).await;
            }
            Some(Err(message)) => {
                self.log(job_id, &format!("job failed: {message}"));
                self.transition_off_thread(job_id, JobState::Failed, message).await;
            }
            None => {}
        }
    }

    /// Connects to the owner (or, without one, the least-loaded alive
    /// raylet), waiting up to [`NODE_WAIT`] for it.
    async fn connect(&self, job_id: u32, name: &str) -> Result<Client, ApiError> {
        let deadline = tokio::time::Instant::now() + NODE_WAIT;
        loop {
            let addr = match &self.owner {
                Some(o) => Some(o.address.clone()),
                None => self.pick_raylet(),
            };
            if let Some(addr) = addr {
                let opts = ConnectOptions {
                    name: name.to_string(),
                    job_id: Some(JobId(job_id)),
                    worker_id: None,
                    token: self.token.clone(),
                };
                match Client::connect_with(&addr, opts).await {
                    Ok(c) => return Ok(c),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(ApiError::unavailable(format!("cannot reach raylet {addr}: {e}")))
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "connecting to a raylet failed; retrying"),
                }
            } else if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable(format!("no alive raylet within {NODE_WAIT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn pick_raylet(&self) -> Option<String> {
        let (nodes, loads) = self.gcs.nodes();
        let load_of = |id: &[u8]| loads.iter().find(|l| l.node_id == id);
        nodes
            .iter()
            .filter(|n| n.state == pb::NodeState::NodeAlive as i32)
            .min_by_key(|n| {
                let l = load_of(&n.node_id);
                let queued = l.map(|l| l.queued_tasks).unwrap_or(0);
                let free_cpu = l
                    .and_then(|l| l.available.as_ref())
                    .and_then(|a| a.amounts.get(crate::resources::CPU).copied())
                    .unwrap_or(0);
                (queued, -free_cpu)
            })
            .map(|n| n.address.clone())
    }

    /// Submits the graph and waits for its sinks; `None` when stopped.
    async fn run_graph(
        &self,
        job_id: u32,
        client: &Client,
        plan: &JobPlan,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<(Vec<JobResult>, Vec<ObjectRef>), String>> {
        // A stop during submission drops the submission (no further tasks
        // are submitted); the tasks already submitted are released with the
        // session, which the stop closes.
        let refs = tokio::select! {
            r = crate::driver::submit_plan(client, plan) => r,
            _ = stop.wait_for(|s| *s) => return None,
        };
        let refs = match refs {
            Ok(r) => r,
            Err(e) => return Some(Err(format!("submitting the tasks failed: {e}"))),
        };
        self.log(job_id, &format!("submitted {} tasks", plan.tasks.len()));
        let mut sinks: Vec<(String, u32, ObjectRef)> = Vec::new();
        for (t, r) in plan.tasks.iter().zip(&refs) {
            if t.is_sink {
                for (i, r) in r.iter().enumerate() {
                    sinks.push((t.id.clone(), i as u32, r.clone()));
                }
            }
        }
        // One reference per task, to cancel them all on a stop.
        let per_task: Vec<ObjectRef> = refs.iter().filter_map(|r| r.first().cloned()).collect();
        drop(refs);
        let all: Vec<ObjectRef> = sinks.iter().map(|s| s.2.clone()).collect();
        let values = tokio::select! {
            v = client.get_many(&all, None) => Some(v),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(values) = values else {
            // Stopped: pending tasks never start; running ones are killed.
            for r in &per_task {
                if let Err(e) = client.cancel(r, true, true).await {
                    tracing::warn!(job = %job_hex(job_id), error = %e, "cancelling a stopped job's task failed");
                    break;
                }
            }
            return None;
        };
        let values = match values {
            Ok(v) => v,
            Err(e) => return Some(Err(format!("waiting for the results failed: {e}"))),
        };
        let mut results = Vec::new();
        let mut held = Vec::new();
        for ((task, index, r), v) in sinks.into_iter().zip(values) {
            let v = match v {
                Ok(v) => v,
                Err(crate::Error::Task(e)) => {
                    return Some(Err(format!("task `{task}` failed: {} ({}: {})", e.message, e.kind, e.function)))
                }
                Err(e) => return Some(Err(format!("task `{task}`: {e}"))),
            };
            let size = v.encoded_len() as u64;
            match v {
                Value::Json(j) if size as usize <= INLINE_RESULT_LIMIT => {
                    results.push(JobResult { task, index, value: Some(j), object_id: None, size_bytes: size })
                }
                _ => {
                    results.push(JobResult {
                        task,
                        index,
                        value: None,
                        object_id: Some(r.id().to_string()),
                        size_bytes: size,
                    });
                    held.push(r);
                }
            }
        }
        Some(Ok((results, held)))
    }

    /// Runs the driver task; `None` when stopped.
    async fn run_entrypoint(
        &self,
        job_id: u32,
        client: &Client,
        job: &EntrypointJob,
        resources: ResourceSet,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<(Vec<JobResult>, Vec<ObjectRef>), String>> {
        let env = serde_json::to_value(&job.env).unwrap_or_default();
        let task = Task::builtin(crate::worker::builtins::ENTRYPOINT_BUILTIN)
            .name("entrypoint")
            .arg(job.entrypoint.as_str())
            .arg(env)
            .resources(resources)
            .max_retries(0);
        // On the head, unless the driver asks for what the head lacks.
        let task = match &self.owner {
            Some(o) => task.strategy(crate::strategy::Strategy::NodeAffinity { node: o.node_id, soft: true }),
            None => task,
        };
        let r = match client.submit(task).await {
            Ok(r) => r,
            Err(e) => return Some(Err(format!("submitting the driver failed: {e}"))),
        };
        let me = self.clone();
        let driver_task = r.id().task_id();
        tokio::spawn(async move { me.watch_driver_node(job_id, driver_task).await });
        let v = tokio::select! {
            v = client.get_value(&r) => v,
            _ = stop.wait_for(|s| *s) => return None,
        };
        Some(match v {
            Ok(_) => Ok((Vec::new(), Vec::new())),
            Err(crate::Error::Task(e)) => Err(e.message),
            Err(e) => Err(e.to_string()),
        })
    }

    async fn watch_driver_node(&self, job_id: u32, driver_task: crate::ids::TaskId) {
        let mut ended_at = None;
        loop {
            // The node of its RUNNING event: the record's latest state and
            // node may be the owner's placement, which can arrive later.
            let node = {
                let events = self.gcs.task_events.lock().unwrap_or_else(|p| p.into_inner());
                events.get(&driver_task).and_then(|t| {
                    t.events
                        .iter()
                        .rev()
                        .find(|e| e.state == pb::TaskState::TaskRunning as i32)
                        .and_then(|e| NodeId::from_slice(&e.node_id).ok())
                })
            };
            if let Some(node) = node {
                let mut t = self.lock();
                self.update(&mut t, job_id, |r| {
                    r.job.driver_node_id = Some(node.to_string());
                    true
                });
                drop(t);
                self.notify();
                return;
            }
            match self.state(job_id) {
                None => return,
                Some(s) if s.is_terminal() => {
                    let since = *ended_at.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > DRIVER_NODE_GRACE {
                        return;
                    }
                }
                Some(_) => {}
            }
            tokio::time::sleep(DRIVER_NODE_POLL).await;
        }
    }

    /// Stops a job: no further submissions, the driver is told to end, the
    /// job's references are released. Stopping a stopped job is a no-op.
    pub fn stop(&self, id: &str) -> Result<JobState, ApiError> {
        let job_id = self.resolve(id)?;
        match self.state(job_id) {
            None => return Err(ApiError::not_found("job", id)),
            Some(JobState::Stopped) => return Ok(JobState::Stopped),
            Some(s) if s.is_terminal() => {
                return Err(ApiError::conflict("job_terminal", format!("job {id} already ended ({})", s.as_str())))
            }
            Some(_) => {}
        }
        self.gcs.job_logs.mark_stopped(job_id);
        self.log(job_id, "job stopped by a user");
        self.transition(job_id, JobState::Stopped, "stopped by a user".into());
        // Release the session: queued submissions end and references drop.
        let client = self.lock().live.get_mut(&job_id).and_then(|l| l.client.take());
        drop(client);
        Ok(self.state(job_id).unwrap_or(JobState::Stopped))
    }

    /// Forgets a terminal job (its record and its log, on disk too) and
    /// releases its results.
    pub fn delete(&self, id: &str) -> Result<JobState, ApiError> {
        let job_id = self.resolve(id)?;
        let removed = {
            let mut t = self.lock();
            let state = t.states.get(&job_id).copied().ok_or_else(|| ApiError::not_found("job", id))?;
            if !state.is_terminal() {
                return Err(ApiError::conflict(
                    "job_not_terminal",
                    format!("job {id} is {}; stop it before deleting it", state.as_str()),
                ));
            }
            let record = self.record(&t, job_id).map_err(store_error)?;
            let (sid, objects) = record.map(|r| (r.job.submission_id.clone(), r.objects())).unwrap_or_default();
            self.store.delete_job(job_id, sid.as_deref(), &objects).map_err(store_error)?;
            t.states.remove(&job_id);
            let live = t.live.remove(&job_id);
            if let Some(l) = &live {
                for r in &l.held {
                    t.objects.remove(&r.id());
                }
            }
            (state, live)
        };
        self.gcs.job_logs.remove(job_id);
        self.notify();
        let (state, live) = removed;
        drop(live);
        Ok(state)
    }

    fn resolve(&self, id: &str) -> Result<u32, ApiError> {
        id.parse::<JobId>().map(|j| j.0).map_err(|_| ApiError::not_found("job", id))
    }

    /// The job as the API shows it: a job whose counts are not frozen yet
    /// shows the task history's.
    fn view(&self, t: &Table, job_id: u32) -> Result<Option<Job>, ApiError> {
        if let Some(r) = t.live.get(&job_id).and_then(|l| l.record.as_ref()) {
            let mut job = r.job.clone();
            job.tasks = self.task_counts(job_id, r.plan_tasks);
            return Ok(Some(job));
        }
        Ok(self.record(t, job_id).map_err(store_error)?.map(|r| r.job))
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Job, ApiError> {
        let job_id = self.resolve(id)?;
        let t = self.lock();
        self.view(&t, job_id)?.ok_or_else(|| ApiError::not_found("job", id))
    }

    /// A job's state, if it exists.
    pub fn state(&self, job_id: u32) -> Option<JobState> {
        self.lock().states.get(&job_id).copied()
    }

    /// Jobs after `after` (a job id), optionally in one state.
    pub fn list(&self, state: Option<JobState>, after: u32, limit: usize) -> Result<(Vec<Job>, Option<u32>), ApiError> {
        let t = self.lock();
        let mut out = Vec::new();
        let mut last = after;
        let mut next = None;
        for (id, s) in t.states.range(after.saturating_add(1)..) {
            if state.is_some_and(|want| *s != want) {
                continue;
            }
            if out.len() >= limit {
                // The cursor is the last id returned.
                next = Some(last);
                break;
            }
            if let Some(job) = self.view(&t, *id)? {
                out.push(job);
            }
            last = *id;
        }
        Ok((out, next))
    }

    /// Jobs by state.
    pub fn counts(&self) -> BTreeMap<JobState, u64> {
        let t = self.lock();
        let mut m: BTreeMap<JobState, u64> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
        for s in t.states.values() {
            *m.entry(*s).or_default() += 1;
        }
        m
    }

    /// The value of a result object the manager holds.
    pub async fn object(&self, id: &str) -> Result<Value, ApiError> {
        let oid: ObjectId =
            id.parse().map_err(|_| ApiError::invalid_parameter(format!("`{id}` is not an object id")))?;
        let held = {
            let t = self.lock();
            t.objects.get(&oid).and_then(|j| t.live.get(j)).and_then(|l| {
                let r = l.held.iter().find(|r| r.id() == oid).cloned();
                l.client.clone().zip(r)
            })
        };
        let Some((client, r)) = held else {
            // A result of a job that ended before the head restarted: the
            // sessions that owned it died with the old head.
            return match self.store.object_job(&oid.to_string()).map_err(store_error)? {
                Some(job) => Err(ApiError::object_gone(id, &job_hex(job))),
                None => Err(ApiError::not_found("object", id)),
            };
        };
        client.get_value(&r).await.map_err(|e| ApiError::object(id, &e))
    }
}

fn counts_view(c: [u64; STATES], plan_tasks: Option<u64>) -> TaskCounts {
    use pb::TaskState as S;
    let seen: u64 = c.iter().sum();
    TaskCounts {
        total: plan_tasks.unwrap_or(seen).max(seen),
        pending_args: c[S::TaskPendingArgs as usize],
        pending_node: c[S::TaskPendingNode as usize],
        scheduled: c[S::TaskScheduled as usize],
        running: c[S::TaskRunning as usize],
        finished: c[S::TaskFinished as usize],
        failed: c[S::TaskFailed as usize],
        cancelled: c[S::TaskCancelled as usize],
    }
}

/// Node ids print as hex in the API.
pub(crate) fn node_hex(b: &[u8]) -> Option<String> {
    NodeId::from_slice(b).ok().map(|n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_and_tells_bodies_apart() {
        assert_eq!(fingerprint(""), "6c62272e07bb014262b821756295c58d");
        assert_eq!(fingerprint("{\"a\":1}"), fingerprint("{\"a\":1}"));
        assert_ne!(fingerprint("{\"a\":1}"), fingerprint("{\"a\":2}"));
        assert_eq!(fingerprint("x").len(), 32);
    }
}
