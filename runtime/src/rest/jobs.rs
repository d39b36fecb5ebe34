//! The job manager: runs the jobs submitted over REST and remembers them.
//!
//! A job is registered in one step under the table lock (submission-id check,
//! GCS job id, table entry), so a request either creates a whole job or none.
//! Then a runner task takes it through `PENDING → RUNNING → SUCCEEDED |
//! FAILED | STOPPED`: it connects a [`Client`] under the job's id to the
//! job's owner, and either submits the task graph with
//! [`driver::submit_plan`] and waits for the sink tasks, or submits one
//! `builtin:entrypoint` driver task that runs the user's command. Terminal
//! states never change: whoever reaches one first (the runner, or a stop)
//! wins, and later transitions are ignored.
//!
//! Ownership (ARCHITECTURE §3): the owner is the head's own raylet
//! ([`Owner`]), so losing a worker node never fails a job. It owns a task
//! graph's tasks and an entrypoint's driver task, which is placed on the
//! head too (soft node affinity) unless it asks for resources the head
//! lacks; the tasks a driver submits are owned by the raylet of the node it
//! runs on. A head started without a raylet falls back to the least-loaded
//! alive worker node, whose loss then fails the job. Results larger than
//! [`INLINE_RESULT_LIMIT`] or not JSON stay in the cluster, referenced by
//! the job manager until the job is deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::sync::watch;

use super::error::ApiError;
use super::types::{EntrypointJob, Job, JobKind, JobResult, JobState, TaskCounts};
use crate::client::{Client, ConnectOptions, ObjectRef, Task};
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
/// Environment variable naming the job of an entrypoint driver.
pub const ENV_JOB_ID: &str = "SHOAL_JOB_ID";

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
    /// Canonical form of the request, to tell a repeat from a different body.
    pub fingerprint: String,
}

struct Entry {
    job: Job,
    job_id: u32,
    fingerprint: String,
    plan_tasks: Option<u64>,
    stop: watch::Sender<bool>,
    /// Keeps the session (and so `held`) alive.
    client: Option<Client>,
    held: Vec<ObjectRef>,
}

#[derive(Default)]
struct Table {
    jobs: BTreeMap<u32, Entry>,
    by_submission: HashMap<String, u32>,
    objects: HashMap<ObjectId, u32>,
}

/// The head's job manager. Cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    gcs: Gcs,
    owner: Option<Owner>,
    table: Arc<Mutex<Table>>,
    changed: Arc<watch::Sender<u64>>,
}

fn job_hex(id: u32) -> String {
    JobId(id).to_string()
}

impl JobManager {
    /// A manager over the head's GCS.
    pub fn new(gcs: Gcs) -> Self {
        JobManager { gcs, owner: None, table: Arc::default(), changed: Arc::new(watch::channel(0).0) }
    }

    /// Jobs are owned by this raylet (`None`: by the least-loaded worker node).
    pub fn with_owner(mut self, owner: Option<Owner>) -> Self {
        self.owner = owner;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The GCS the manager runs jobs through.
    pub fn gcs(&self) -> &Gcs {
        &self.gcs
    }

    /// Registers and starts a job; returns its id and whether it already existed.
    pub fn submit(&self, sub: Submission) -> Result<(String, bool), ApiError> {
        let (id, stop_rx) = {
            let mut t = self.lock();
            if let Some(sid) = &sub.submission_id {
                if let Some(existing) = t.by_submission.get(sid).and_then(|id| t.jobs.get(id)) {
                    if existing.fingerprint == sub.fingerprint {
                        return Ok((existing.job.id.clone(), true));
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
            if let Some(sid) = &sub.submission_id {
                t.by_submission.insert(sid.clone(), job_id);
            }
            t.jobs.insert(
                job_id,
                Entry {
                    job,
                    job_id,
                    fingerprint: sub.fingerprint.clone(),
                    plan_tasks,
                    stop,
                    client: None,
                    held: Vec::new(),
                },
            );
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

    /// Moves a job to `state` unless it is already terminal; returns whether it moved.
    fn transition(&self, job_id: u32, state: JobState, message: String) -> bool {
        let dropped = {
            let mut t = self.lock();
            let Some(e) = t.jobs.get_mut(&job_id) else { return false };
            if e.job.state.is_terminal() {
                return false;
            }
            e.job.state = state;
            e.job.message = message;
            let now = now_ms();
            if state == JobState::Running {
                e.job.started_at_ms = Some(now);
            }
            if state.is_terminal() {
                e.job.ended_at_ms = Some(now);
                let _ = e.stop.send(true);
                // Without results to serve, the session is no longer needed.
                if e.held.is_empty() {
                    e.client.take()
                } else {
                    None
                }
            } else {
                None
            }
        };
        drop(dropped);
        if state.is_terminal() {
            self.gcs.finish_job_local(job_id);
        }
        self.notify();
        true
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
                self.transition(job_id, JobState::Failed, e.message);
                return;
            }
        };
        {
            let mut t = self.lock();
            let Some(e) = t.jobs.get_mut(&job_id) else { return };
            if e.job.state.is_terminal() {
                return;
            }
            e.client = Some(client.clone());
            // A task graph's tasks are owned by the raylet the job's client
            // talks to. An entrypoint's driver runs wherever its task was
            // placed and owns its own tasks through that node's raylet: its
            // node is known once the task runs (see `watch_driver_node`).
            if matches!(sub.work, Work::TaskGraph(_)) {
                e.job.driver_node_id = Some(client.node_id().to_string());
            }
        }
        self.log(job_id, &format!("job {} running through node {}", job_hex(job_id), client.node_id()));
        self.transition(job_id, JobState::Running, "running".into());
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
                    let Some(e) = t.jobs.get_mut(&job_id) else { return };
                    if e.job.state.is_terminal() {
                        return;
                    }
                    e.job.results = results;
                    e.held = held;
                    for id in held_ids {
                        t.objects.insert(id, job_id);
                    }
                }
                self.log(job_id, "job succeeded");
                self.transition(job_id, JobState::Succeeded, "succeeded".into());
            }
            Some(Err(message)) => {
                self.log(job_id, &format!("job failed: {message}"));
                self.transition(job_id, JobState::Failed, message);
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
                let opts = ConnectOptions { name: name.to_string(), job_id: Some(JobId(job_id)), worker_id: None };
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

    /// Records as the job's `driver_node_id` the node the driver task of an
    /// entrypoint job runs on, from the task events the raylets report.
    /// Events arrive in batches every [`DRIVER_NODE_POLL`] or so and the store
    /// has no notification, so this looks at that pace; it gives up
    /// [`DRIVER_NODE_GRACE`] after the job ended without the task having run.
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
                if let Some(e) = t.jobs.get_mut(&job_id) {
                    e.job.driver_node_id = Some(node.to_string());
                }
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
        let state = self.lock().jobs.get(&job_id).map(|e| e.job.state);
        match state {
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
        let client = self.lock().jobs.get_mut(&job_id).and_then(|e| e.client.take());
        drop(client);
        Ok(self.lock().jobs.get(&job_id).map(|e| e.job.state).unwrap_or(JobState::Stopped))
    }

    /// Forgets a terminal job and releases its results.
    pub fn delete(&self, id: &str) -> Result<JobState, ApiError> {
        let job_id = self.resolve(id)?;
        let removed = {
            let mut t = self.lock();
            let state = t.jobs.get(&job_id).map(|e| e.job.state).ok_or_else(|| ApiError::not_found("job", id))?;
            if !state.is_terminal() {
                return Err(ApiError::conflict(
                    "job_not_terminal",
                    format!("job {id} is {}; stop it before deleting it", state.as_str()),
                ));
            }
            let e = t.jobs.remove(&job_id);
            if let Some(e) = &e {
                if let Some(sid) = &e.job.submission_id {
                    t.by_submission.remove(sid);
                }
                for r in &e.held {
                    t.objects.remove(&r.id());
                }
            }
            e
        };
        self.gcs.job_logs.remove(job_id);
        self.notify();
        let state = removed.as_ref().map(|e| e.job.state).unwrap_or(JobState::Stopped);
        drop(removed);
        Ok(state)
    }

    fn resolve(&self, id: &str) -> Result<u32, ApiError> {
        id.parse::<JobId>().map(|j| j.0).map_err(|_| ApiError::not_found("job", id))
    }

    fn view(&self, e: &Entry) -> Job {
        let mut job = e.job.clone();
        let counts = self.gcs.task_events.lock().unwrap_or_else(|p| p.into_inner()).job_counts(e.job_id);
        job.tasks = counts_view(counts, e.plan_tasks);
        job
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Job, ApiError> {
        let job_id = self.resolve(id)?;
        let t = self.lock();
        t.jobs.get(&job_id).map(|e| self.view(e)).ok_or_else(|| ApiError::not_found("job", id))
    }

    /// A job's state, if it exists.
    pub fn state(&self, job_id: u32) -> Option<JobState> {
        self.lock().jobs.get(&job_id).map(|e| e.job.state)
    }

    /// Jobs after `after` (a job id), optionally in one state.
    pub fn list(&self, state: Option<JobState>, after: u32, limit: usize) -> (Vec<Job>, Option<u32>) {
        let t = self.lock();
        let mut out = Vec::new();
        let mut last = after;
        let mut next = None;
        for (id, e) in t.jobs.range(after.saturating_add(1)..) {
            if state.is_some_and(|s| e.job.state != s) {
                continue;
            }
            if out.len() >= limit {
                // The cursor is the last id returned.
                next = Some(last);
                break;
            }
            out.push(self.view(e));
            last = *id;
        }
        (out, next)
    }

    /// Jobs by state.
    pub fn counts(&self) -> BTreeMap<JobState, u64> {
        let t = self.lock();
        let mut m: BTreeMap<JobState, u64> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
        for e in t.jobs.values() {
            *m.entry(e.job.state).or_default() += 1;
        }
        m
    }

    /// The value of a result object the manager holds.
    pub async fn object(&self, id: &str) -> Result<Value, ApiError> {
        let oid: ObjectId =
            id.parse().map_err(|_| ApiError::invalid_parameter(format!("`{id}` is not an object id")))?;
        let (client, r) = {
            let t = self.lock();
            let job =
                t.objects.get(&oid).and_then(|j| t.jobs.get(j)).ok_or_else(|| ApiError::not_found("object", id))?;
            let r = job.held.iter().find(|r| r.id() == oid).cloned();
            match (job.client.clone(), r) {
                (Some(c), Some(r)) => (c, r),
                _ => return Err(ApiError::not_found("object", id)),
            }
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
