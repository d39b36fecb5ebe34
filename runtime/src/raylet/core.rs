//! The raylet's state machine: the owner's tables, the local scheduler and
//! the worker pool, behind one mutex.
//!
//! Owner side: every task submitted through this raylet is recorded with its
//! spec (lineage) until all its return objects are freed; every owned object
//! has a reference count (session references plus pending tasks that take it
//! as an argument), its inline value or its locations, and the waiters and
//! dependent tasks to wake when it becomes ready.
//!
//! Executor side: a task granted to this node waits for its arguments
//! (pulled by the object manager), then for resources, then for a worker. A
//! worker lease holds the task's resources for as long as tasks of the same
//! resource shape keep it busy; when every resource is taken, further tasks of
//! a leased shape are pipelined onto the lease (bounded depth) so the worker
//! never idles between tasks.
//!
//! Invariants: `available` = `total` − resources of leases whose worker is
//! not blocked in `get`; an object is removed only when its reference count
//! is zero and it is no longer pending; methods never block or await (they
//! send on channels and spawn tasks instead).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use shoal_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::error::TaskError;
use crate::ids::{NodeId, ObjectId, TaskId, WorkerId};
use crate::net::now_ms;
use crate::raylet::cluster_view::ClusterView;
use crate::raylet::events::TaskEvents;
use crate::raylet::object_store::ObjectStore;
use crate::raylet::peers::PeerMsg;
use crate::raylet::scheduler::{self, Placement, Strategy};
use crate::raylet::{Inner, RayletConfig};
use crate::resources::ResourceSet;
use crate::value::{decode_error, error_value, INLINE_LIMIT};

/// Most return values one task may declare.
pub const MAX_RETURNS: u32 = 1024;
/// Times a task may be spilled back before a feasible node must queue it.
const MAX_SPILLS: u32 = 4;
/// Consecutive worker start failures after which queued tasks fail.
const MAX_START_FAILURES: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    PendingArgs,
    PendingNode,
    Scheduled,
    Finished,
    Failed,
    Cancelled,
}

impl TaskState {
    fn terminal(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed | TaskState::Cancelled)
    }
}

struct OwnedTask {
    spec: pb::TaskSpec,
    state: TaskState,
    retries_used: u32,
    pending_deps: u32,
    node: Option<NodeId>,
    avoid: Option<NodeId>,
    live_returns: u32,
    /// What the task's by-reference arguments are held by.
    arg_hold: ArgHold,
    /// The spec's arguments were dropped to bound lineage memory: its
    /// objects can no longer be rebuilt.
    lineage_evicted: bool,
}

/// How a task holds its by-reference arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArgHold {
    /// It needs their values (pending, running, or being rebuilt).
    Task,
    /// It finished; it keeps them only to be re-run if its results are lost.
    Lineage,
    /// Released.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjState {
    Pending,
    Ready,
    Failed,
    /// The value was freed (nobody reads it), but a retained downstream
    /// task may need it rebuilt from its lineage.
    Lineage,
}

struct OwnedObject {
    state: ObjState,
    inline: Option<pb::ObjectValue>,
    size: u64,
    locations: Vec<NodeId>,
    copies: Vec<NodeId>,
    refs: u32,
    task_refs: u32,
    /// Finished tasks whose lineage names this object as an argument.
    lineage_refs: u32,
    dependents: Vec<TaskId>,
    waiters: Vec<mpsc::Sender<ObjectId>>,
}

impl OwnedObject {
    fn pending() -> Self {
        OwnedObject {
            state: ObjState::Pending,
            inline: None,
            size: 0,
            locations: Vec::new(),
            copies: Vec::new(),
            refs: 0,
            task_refs: 0,
            lineage_refs: 0,
            dependents: Vec::new(),
            waiters: Vec::new(),
        }
    }
}

/// What the owner knows of an object right now.
pub(crate) enum Lookup {
    Pending,
    /// Ready inline, or failed (an error value).
    Inline(pb::ObjectValue),
    Stored {
        size: u64,
        locations: Vec<pb::Location>,
    },
    Unknown,
}

pub(crate) struct Session {
    pub worker_id: Option<WorkerId>,
    seq: watch::Sender<u64>,
    refs: HashMap<ObjectId, u32>,
    /// Tasks this session submitted that may still be running (for
    /// recursive cancellation, and to cancel when the session ends); pruned
    /// of finished ones as it grows.
    submitted: Vec<TaskId>,
    /// Length at which `submitted` is next pruned.
    prune_at: usize,
}

struct LocalTask {
    spec: pb::TaskSpec,
    task_id: TaskId,
    resources: ResourceSet,
    missing: u32,
}

struct Running {
    worker: WorkerId,
    owner_address: String,
    attempt: u32,
    name: String,
    function: String,
    num_returns: u32,
    start_ms: u64,
}

struct Lease {
    class: ResourceSet,
    in_flight: VecDeque<TaskId>,
    /// GPU ids lent to the lease's tasks.
    gpu_ids: Vec<u32>,
    /// Whether the ids are the lease's alone (whole GPUs) rather than shared
    /// (a fraction of one GPU).
    gpus_exclusive: bool,
}

struct WorkerSlot {
    pid: u32,
    tx: Option<mpsc::UnboundedSender<pb::ToWorker>>,
    lease: Option<Lease>,
    blocked: bool,
}

/// Counters for stats and metrics.
#[derive(Default, Clone, Copy)]
pub(crate) struct CoreStats {
    pub tasks_executed: u64,
    pub spilled_back: u64,
    pub tasks_submitted: u64,
    pub tasks_failed: u64,
    pub retries: u64,
    pub workers_started: u64,
    pub reconstructions: u64,
}

pub(crate) struct Core {
    pub node_id: NodeId,
    pub address: String,
    pub labels: HashMap<String, String>,
    config: Arc<RayletConfig>,
    me: Weak<Inner>,
    store: Arc<ObjectStore>,

    tasks: HashMap<TaskId, OwnedTask>,
    objects: HashMap<ObjectId, OwnedObject>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    infeasible: HashMap<TaskId, Instant>,
    /// Finished tasks kept for lineage, oldest first.
    lineage: VecDeque<TaskId>,

    pub view: ClusterView,
    spread_cursor: usize,

    pub total: ResourceSet,
    pub available: ResourceSet,
    waiting_args: HashMap<TaskId, LocalTask>,
    ready: BTreeMap<ResourceSet, VecDeque<LocalTask>>,
    ready_len: usize,
    running: HashMap<TaskId, Running>,
    workers: HashMap<WorkerId, WorkerSlot>,
    idle: Vec<WorkerId>,
    starting: usize,
    start_failures: u32,
    /// GPU ids not lent to any lease, lowest first.
    gpus_free: Vec<u32>,
    pub stats: CoreStats,
    pub events: TaskEvents,
}

fn oid(b: &[u8]) -> Option<ObjectId> {
    ObjectId::from_slice(b).ok()
}

fn describe_function(f: &Option<pb::FunctionDescriptor>) -> String {
    match f.as_ref().and_then(|f| f.kind.as_ref()) {
        Some(pb::function_descriptor::Kind::Builtin(n)) => format!("builtin:{n}"),
        Some(pb::function_descriptor::Kind::Exec(e)) => {
            format!("exec:{}", e.argv.first().map(String::as_str).unwrap_or("?"))
        }
        None => "<none>".to_string(),
    }
}

/// Converts a wire strategy to the scheduler's.
pub(crate) fn strategy_of(s: &Option<pb::SchedulingStrategy>) -> Result<Strategy, String> {
    use pb::scheduling_strategy::Kind;
    match s.as_ref().and_then(|s| s.kind.as_ref()) {
        None => Ok(Strategy::Default),
        Some(Kind::Spread(true)) => Ok(Strategy::Spread),
        Some(Kind::Spread(false)) => Ok(Strategy::Default),
        Some(Kind::NodeAffinity(a)) => NodeId::from_slice(&a.node_id)
            .map(|node| Strategy::NodeAffinity { node, soft: a.soft })
            .map_err(|e| format!("node affinity: {e}")),
        Some(Kind::Labels(l)) => {
            let mut v: Vec<(String, String)> = l.match_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort();
            Ok(Strategy::Labels(v))
        }
    }
}

impl Core {
    pub(crate) fn new(
        node_id: NodeId,
        address: String,
        config: Arc<RayletConfig>,
        me: Weak<Inner>,
        store: Arc<ObjectStore>,
    ) -> Self {
        let total = config.resources.clone();
        let gpus = (total.units(crate::resources::GPU) / crate::resources::UNIT).max(0) as u32;
        let labels = config.labels.clone();
        Core {
            node_id,
            address,
            labels,
            available: total.clone(),
            total,
            config,
            me,
            store,
            tasks: HashMap::new(),
            objects: HashMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            infeasible: HashMap::new(),
            lineage: VecDeque::new(),
            view: ClusterView::default(),
            spread_cursor: 0,
            waiting_args: HashMap::new(),
            ready: BTreeMap::new(),
            ready_len: 0,
            running: HashMap::new(),
            workers: HashMap::new(),
            idle: Vec::new(),
            starting: 0,
            start_failures: 0,
            gpus_free: (0..gpus).collect(),
            stats: CoreStats::default(),
            events: TaskEvents::default(),
        }
    }

    fn inner(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }

    fn send_peer(&self, addr: &str, msg: PeerMsg) {
        if let Some(inner) = self.inner() {
            inner.peers.send(addr, msg);
        }
    }

    // ------------------------------------------------------------------
    // Sessions and references
    // ------------------------------------------------------------------

    pub(crate) fn open_session(&mut self, worker_id: Option<WorkerId>) -> (u64, watch::Receiver<u64>) {
        let id = self.next_session;
        self.next_session += 1;
        let (tx, rx) = watch::channel(0);
        self.sessions
            .insert(id, Session { worker_id, seq: tx, refs: HashMap::new(), submitted: Vec::new(), prune_at: 1024 });
        (id, rx)
    }

    pub(crate) fn session_seq(&self, session: u64) -> Option<watch::Receiver<u64>> {
        self.sessions.get(&session).map(|s| s.seq.subscribe())
    }

    pub(crate) fn session_worker(&self, session: u64) -> Option<WorkerId> {
        self.sessions.get(&session).and_then(|s| s.worker_id)
    }

    pub(crate) fn mark_applied(&mut self, session: u64, seq: u64) {
        if let Some(s) = self.sessions.get(&session) {
            s.seq.send_replace(seq);
        }
    }

    /// Ends a session: its tasks that have not finished are cancelled (a
    /// driver's work dies with it, as a job's does) and its references are
    /// released.
    pub(crate) fn close_session(&mut self, session: u64) {
        let Some(s) = self.sessions.remove(&session) else { return };
        let unfinished: Vec<TaskId> =
            s.submitted.iter().copied().filter(|t| self.tasks.get(t).is_some_and(|t| !t.state.terminal())).collect();
        if !unfinished.is_empty() {
            tracing::info!(session, tasks = unfinished.len(), "session closed; cancelling its unfinished tasks");
        }
        for t in unfinished {
            self.cancel_task(t, true, true);
        }
        for (id, n) in s.refs {
            if let Some(o) = self.objects.get_mut(&id) {
                o.refs = o.refs.saturating_sub(n);
            }
            self.maybe_free(id);
        }
    }

    pub(crate) fn update_refs(&mut self, session: u64, add: &[Bytes], remove: &[Bytes]) {
        for b in add {
            let Some(id) = oid(b) else { continue };
            if let Some(o) = self.objects.get_mut(&id) {
                o.refs += 1;
                if let Some(s) = self.sessions.get_mut(&session) {
                    *s.refs.entry(id).or_insert(0) += 1;
                }
            }
        }
        for b in remove {
            let Some(id) = oid(b) else { continue };
            let Some(s) = self.sessions.get_mut(&session) else { continue };
            let Some(n) = s.refs.get_mut(&id) else { continue };
            *n -= 1;
            if *n == 0 {
                s.refs.remove(&id);
            }
            if let Some(o) = self.objects.get_mut(&id) {
                o.refs = o.refs.saturating_sub(1);
            }
            self.maybe_free(id);
        }
    }

    /// Stores a `put` value owned by this raylet.
    pub(crate) fn put(&mut self, session: u64, id: ObjectId, value: pb::ObjectValue) -> Result<(), String> {
        if !self.sessions.contains_key(&session) {
            return Err(format!("session {session} is not open"));
        }
        if self.objects.contains_key(&id) {
            return Err(format!("object {id} already exists"));
        }
        let mut obj = OwnedObject::pending();
        obj.state = ObjState::Ready;
        obj.size = value.data.len() as u64;
        if value.data.len() <= INLINE_LIMIT {
            obj.inline = Some(value);
        } else {
            self.store.put(id, value, true).map_err(|e| e.to_string())?;
            obj.locations.push(self.node_id);
        }
        obj.refs = 1;
        self.objects.insert(id, obj);
        if let Some(s) = self.sessions.get_mut(&session) {
            *s.refs.entry(id).or_insert(0) += 1;
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Owner: submission, dependencies, placement
    // ------------------------------------------------------------------

    /// Records and starts scheduling tasks submitted by `session`. Problems
    /// with a task fail that task (its returns carry the error); the strings
    /// returned are for the session's log.
    pub(crate) fn submit(&mut self, session: u64, specs: Vec<pb::TaskSpec>) -> Vec<String> {
        let mut problems = Vec::new();
        for mut spec in specs {
            let Ok(task_id) = TaskId::from_slice(&spec.task_id) else {
                problems.push(format!("task id of {} bytes is invalid", spec.task_id.len()));
                continue;
            };
            if self.tasks.contains_key(&task_id) {
                problems.push(format!("task {task_id} was already submitted"));
                continue;
            }
            let invalid_returns = spec.num_returns == 0 || spec.num_returns > MAX_RETURNS;
            let num_returns = spec.num_returns.clamp(1, MAX_RETURNS);
            spec.num_returns = num_returns;
            spec.owner_address = self.address.clone();
            spec.attempt = 0;
            spec.spill_count = 0;
            self.stats.tasks_submitted += 1;
            for i in 0..num_returns {
                let id = task_id.return_id(i);
                let mut o = OwnedObject::pending();
                o.refs = 1;
                self.objects.insert(id, o);
                if let Some(s) = self.sessions.get_mut(&session) {
                    *s.refs.entry(id).or_insert(0) += 1;
                }
            }
            let mut problem: Option<TaskError> = None;
            if invalid_returns {
                problem = Some(TaskError::new(
                    "InvalidTask",
                    format!("num_returns must be between 1 and {MAX_RETURNS}, got {}", spec.num_returns),
                ));
            }
            if spec.function.as_ref().and_then(|f| f.kind.as_ref()).is_none() {
                problem = Some(TaskError::new("InvalidTask", "the task names no function"));
            }
            if let Err(e) = strategy_of(&spec.strategy) {
                problem = Some(TaskError::new("InvalidTask", e));
            }
            if let Some((k, v)) = spec.resources.as_ref().and_then(|r| r.amounts.iter().find(|(_, v)| **v < 0)) {
                problem = Some(TaskError::new("InvalidTask", format!("resource `{k}` is negative ({v})")));
            }
            let mut pending = 0;
            for arg in &spec.args {
                let Some(pb::arg::Kind::ObjectRef(r)) = &arg.kind else { continue };
                let Some(id) = oid(&r.object_id) else {
                    problem = Some(TaskError::new("InvalidTask", "an argument's object id is malformed"));
                    continue;
                };
                match self.objects.get_mut(&id) {
                    None => {
                        problem = Some(TaskError::new(
                            "ObjectLost",
                            format!(
                                "argument {id} is not known to its owner {}: it was freed, or belongs to another owner",
                                self.address
                            ),
                        ))
                    }
                    Some(o) => {
                        o.task_refs += 1;
                        if o.state == ObjState::Pending {
                            o.dependents.push(task_id);
                            pending += 1;
                        }
                    }
                }
            }
            if let Some(s) = self.sessions.get_mut(&session) {
                s.submitted.push(task_id);
                if s.submitted.len() >= s.prune_at {
                    let tasks = &self.tasks;
                    s.submitted.retain(|t| tasks.get(t).is_some_and(|t| !t.state.terminal()));
                    s.prune_at = (s.submitted.len() * 2).max(1024);
                }
            }
            let function = describe_function(&spec.function);
            self.events.emit(
                task_id,
                pb::TaskState::TaskPendingArgs,
                0,
                None,
                Some((&spec.name, &function, self.node_id)),
                None,
            );
            self.tasks.insert(
                task_id,
                OwnedTask {
                    spec,
                    state: TaskState::PendingArgs,
                    retries_used: 0,
                    pending_deps: pending,
                    node: None,
                    avoid: None,
                    live_returns: num_returns,
                    arg_hold: ArgHold::Task,
                    lineage_evicted: false,
                },
            );
            if let Some(e) = problem {
                self.fail_task(task_id, e);
            } else if pending == 0 {
                self.schedule(task_id);
            }
        }
        problems
    }

    fn on_dep_ready(&mut self, task_id: TaskId) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        if t.state != TaskState::PendingArgs {
            return;
        }
        t.pending_deps = t.pending_deps.saturating_sub(1);
        if t.pending_deps == 0 {
            self.schedule(task_id);
        }
    }

    fn sync_local_view(&mut self) {
        let queued = (self.waiting_args.len() + self.ready_len) as u32;
        self.view.set_local(self.node_id, &self.address, &self.total, &self.available, queued, &self.labels);
    }

    fn location_of(&self, node: NodeId) -> Option<pb::Location> {
        let address = if node == self.node_id { self.address.clone() } else { self.view.address(&node)?.to_string() };
        Some(pb::Location { node_id: node.to_bytes(), address })
    }

    /// Places a task whose arguments are all ready, and sends it on.
    fn schedule(&mut self, task_id: TaskId) {
        let Some(t) = self.tasks.get(&task_id) else { return };
        if t.state.terminal() {
            return;
        }
        let mut spec = t.spec.clone();
        let avoid = t.avoid;
        let mut locality: Vec<(NodeId, u64)> = Vec::new();
        let mut ref_args: Vec<ObjectId> = Vec::new();
        for arg in spec.args.iter_mut() {
            let Some(pb::arg::Kind::ObjectRef(r)) = &arg.kind else { continue };
            let Some(id) = oid(&r.object_id) else { continue };
            let Some(o) = self.objects.get(&id) else {
                let e = TaskError::new("ObjectLost", format!("argument {id} was freed before the task could run"));
                self.fail_task(task_id, e);
                return;
            };
            let state = o.state;
            if state == ObjState::Lineage {
                if let Err(e) = self.reconstruct(id) {
                    self.fail_task(task_id, e);
                    return;
                }
            }
            let Some(o) = self.objects.get(&id) else { return };
            match o.state {
                ObjState::Pending | ObjState::Lineage => {
                    // Not ready after all (its producer is being retried): wait again.
                    if let Some(t) = self.tasks.get_mut(&task_id) {
                        t.state = TaskState::PendingArgs;
                        t.pending_deps += 1;
                    }
                    if let Some(o) = self.objects.get_mut(&id) {
                        o.dependents.push(task_id);
                    }
                    return;
                }
                ObjState::Failed => {
                    let mut e = o.inline.as_ref().map(decode_error).unwrap_or_else(|| TaskError::new("ObjectLost", ""));
                    e.message = format!("argument {id} failed: {}", e.message);
                    self.fail_task(task_id, e);
                    return;
                }
                ObjState::Ready => {
                    if let Some(v) = &o.inline {
                        arg.kind = Some(pb::arg::Kind::Value(v.clone()));
                    } else {
                        let locations: Vec<pb::Location> =
                            o.locations.iter().filter_map(|n| self.location_of(*n)).collect();
                        for n in &o.locations {
                            match locality.iter_mut().find(|(id, _)| id == n) {
                                Some(e) => e.1 += o.size,
                                None => locality.push((*n, o.size)),
                            }
                        }
                        arg.kind = Some(pb::arg::Kind::ObjectRef(pb::RefArg {
                            object_id: r.object_id.clone(),
                            owner_address: self.address.clone(),
                            locations,
                            size: o.size,
                        }));
                        ref_args.push(id);
                    }
                }
            }
        }
        let strategy = strategy_of(&spec.strategy).unwrap_or_default();
        let resources = ResourceSet::from(spec.resources.as_ref());
        self.sync_local_view();
        let req = scheduler::Request { resources: &resources, strategy: &strategy, locality: &locality, avoid };
        let placement = scheduler::place(&self.view, self.node_id, &req, &mut self.spread_cursor);
        match placement {
            Placement::Node(node) => {
                self.infeasible.remove(&task_id);
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.state = TaskState::Scheduled;
                    t.node = Some(node);
                    self.events.emit(task_id, pb::TaskState::TaskScheduled, t.spec.attempt, Some(node), None, None);
                }
                if node == self.node_id {
                    self.enqueue_local(spec);
                } else {
                    let Some(addr) = self.view.address(&node).map(str::to_string) else { return };
                    self.view.reserve(node, &resources);
                    for id in ref_args {
                        if let Some(o) = self.objects.get_mut(&id) {
                            if !o.copies.contains(&node) {
                                o.copies.push(node);
                            }
                        }
                    }
                    self.send_peer(&addr, PeerMsg::Execute(spec));
                }
            }
            Placement::Infeasible(reason) => {
                let now = Instant::now();
                let since = *self.infeasible.entry(task_id).or_insert(now);
                if since == now {
                    tracing::warn!(task = %task_id, %reason, "task is infeasible for now");
                    self.events.emit(task_id, pb::TaskState::TaskPendingNode, spec.attempt, None, None, None);
                }
                if now.duration_since(since) >= self.config.infeasible_timeout {
                    self.infeasible.remove(&task_id);
                    self.fail_task(task_id, TaskError::new("Infeasible", reason));
                } else if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.state = TaskState::PendingNode;
                }
            }
        }
    }

    /// Tries infeasible tasks again (the view may have changed) and fails the
    /// ones past the infeasible timeout.
    pub(crate) fn retry_infeasible(&mut self) {
        let ids: Vec<TaskId> = self.infeasible.keys().copied().collect();
        for id in ids {
            self.schedule(id);
        }
    }

    /// Marks a task failed for good and stores `err` as each return's value.
    fn fail_task(&mut self, task_id: TaskId, err: TaskError) {
        self.finish_failed(task_id, err, TaskState::Failed);
    }

    fn finish_failed(&mut self, task_id: TaskId, mut err: TaskError, state: TaskState) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        if t.state.terminal() {
            return;
        }
        t.state = state;
        self.stats.tasks_failed += 1;
        if err.task_id.is_empty() {
            err.task_id = task_id.to_string();
        }
        if err.task_name.is_empty() {
            err.task_name = t.spec.name.clone();
        }
        if err.function.is_empty() {
            err.function = describe_function(&t.spec.function);
        }
        if err.node_id.is_empty() {
            if let Some(n) = t.node {
                err.node_id = n.to_string();
            }
        }
        err.attempt = t.spec.attempt;
        let ev = if state == TaskState::Cancelled { pb::TaskState::TaskCancelled } else { pb::TaskState::TaskFailed };
        self.events.emit(task_id, ev, t.spec.attempt, t.node, None, Some(&err));
        let value = error_value(&err);
        let n = t.spec.num_returns;
        self.infeasible.remove(&task_id);
        for i in 0..n {
            let id = task_id.return_id(i);
            if let Some(o) = self.objects.get_mut(&id) {
                o.state = ObjState::Failed;
                o.inline = Some(value.clone());
                o.size = value.data.len() as u64;
            }
            self.wake(id);
        }
        self.release_args(task_id);
        for i in 0..n {
            self.maybe_free(task_id.return_id(i));
        }
        self.maybe_drop_task(task_id);
    }

    fn wake(&mut self, id: ObjectId) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        for w in o.waiters.drain(..) {
            let _ = w.try_send(id);
        }
        let deps = std::mem::take(&mut o.dependents);
        for d in deps {
            self.on_dep_ready(d);
        }
    }

    fn arg_ids(spec: &pb::TaskSpec) -> Vec<ObjectId> {
        spec.args
            .iter()
            .filter_map(|a| match &a.kind {
                Some(pb::arg::Kind::ObjectRef(r)) => oid(&r.object_id),
                _ => None,
            })
            .collect()
    }

    /// Drops whatever hold a task has on its arguments.
    fn release_args(&mut self, task_id: TaskId) {
        let mut work = Vec::new();
        self.release_args_into(task_id, &mut work);
        self.free_all(work);
    }

    fn release_args_into(&mut self, task_id: TaskId, work: &mut Vec<ObjectId>) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        let hold = std::mem::replace(&mut t.arg_hold, ArgHold::None);
        if hold == ArgHold::None {
            return;
        }
        for id in Self::arg_ids(&t.spec) {
            if let Some(o) = self.objects.get_mut(&id) {
                match hold {
                    ArgHold::Task => o.task_refs = o.task_refs.saturating_sub(1),
                    ArgHold::Lineage => o.lineage_refs = o.lineage_refs.saturating_sub(1),
                    ArgHold::None => {}
                }
            }
            work.push(id);
        }
    }

    /// A task finished: it no longer needs its arguments' values, only
    /// their lineage in case its own results are lost.
    fn args_to_lineage(&mut self, task_id: TaskId) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        if t.arg_hold != ArgHold::Task {
            return;
        }
        t.arg_hold = ArgHold::Lineage;
        let ids = Self::arg_ids(&t.spec);
        for id in &ids {
            if let Some(o) = self.objects.get_mut(id) {
                o.task_refs = o.task_refs.saturating_sub(1);
                o.lineage_refs += 1;
            }
        }
        self.lineage.push_back(task_id);
        self.free_all(ids);
        self.bound_lineage();
    }

    /// Evicts the oldest lineage beyond the configured bound.
    fn bound_lineage(&mut self) {
        let mut work = Vec::new();
        while self.lineage.len() > self.config.max_lineage_tasks {
            let Some(old) = self.lineage.pop_front() else { break };
            let Some(t) = self.tasks.get(&old) else { continue };
            if t.arg_hold != ArgHold::Lineage {
                continue;
            }
            self.release_args_into(old, &mut work);
            if let Some(t) = self.tasks.get_mut(&old) {
                t.lineage_evicted = true;
                t.spec.args.clear();
            }
        }
        self.free_all(work);
    }

    /// Frees an object everywhere once nothing refers to it any more.
    fn maybe_free(&mut self, id: ObjectId) {
        self.free_all(vec![id]);
    }

    /// Frees objects iteratively: dropping a task releases its arguments,
    /// which may free them and drop their own creators, and so on.
    fn free_all(&mut self, mut work: Vec<ObjectId>) {
        while let Some(id) = work.pop() {
            self.free_one(id, &mut work);
        }
    }

    fn free_one(&mut self, id: ObjectId, work: &mut Vec<ObjectId>) {
        let Some(o) = self.objects.get(&id) else { return };
        if o.refs > 0 || o.task_refs > 0 || o.state == ObjState::Pending {
            return;
        }
        let creator = id.task_id();
        let rebuildable = !id.is_put() && self.tasks.get(&creator).is_some_and(|t| !t.lineage_evicted);
        let keep_lineage = o.lineage_refs > 0 && rebuildable && matches!(o.state, ObjState::Ready | ObjState::Lineage);
        if o.state == ObjState::Lineage && keep_lineage {
            return;
        }
        let Some(o) = self.objects.get_mut(&id) else { return };
        let mut nodes = std::mem::take(&mut o.locations);
        for c in std::mem::take(&mut o.copies) {
            if !nodes.contains(&c) {
                nodes.push(c);
            }
        }
        if keep_lineage {
            o.state = ObjState::Lineage;
            o.inline = None;
        } else {
            self.objects.remove(&id);
        }
        for n in nodes {
            if n == self.node_id {
                continue;
            }
            if let Some(addr) = self.view.address(&n).map(str::to_string) {
                if self.view.is_alive(&n) {
                    self.send_peer(&addr, PeerMsg::Free(id));
                }
            }
        }
        // The primary here, or a secondary copy a `get` pulled here.
        self.store.delete(&id);
        if keep_lineage || id.is_put() {
            return;
        }
        if let Some(t) = self.tasks.get_mut(&creator) {
            t.live_returns = t.live_returns.saturating_sub(1);
            if t.state.terminal() && t.live_returns == 0 {
                self.release_args_into(creator, work);
                self.tasks.remove(&creator);
            }
        }
    }

    fn maybe_drop_task(&mut self, task_id: TaskId) {
        if let Some(t) = self.tasks.get(&task_id) {
            if t.state.terminal() && t.live_returns == 0 {
                let mut work = Vec::new();
                self.release_args_into(task_id, &mut work);
                self.tasks.remove(&task_id);
                self.free_all(work);
            }
        }
    }

    /// Re-runs the task that created `id` because every copy of it was lost,
    /// rebuilding its own lost arguments first (lineage reconstruction).
    #[allow(clippy::result_large_err)] // internal; the error becomes an object's value
    fn reconstruct(&mut self, id: ObjectId) -> Result<(), TaskError> {
        if id.is_put() {
            return Err(TaskError::new(
                "ObjectLost",
                format!("object {id} was made by `put` and every copy is lost; it cannot be rebuilt"),
            ));
        }
        let creator = id.task_id();
        let Some(t) = self.tasks.get_mut(&creator) else {
            return Err(TaskError::new(
                "ObjectLost",
                format!("object {id} is lost and the task that made it is no longer known"),
            ));
        };
        if t.lineage_evicted {
            return Err(TaskError::new(
                "ObjectLost",
                format!(
                    "object {id} is lost and its lineage was evicted to bound memory (raise --max-lineage-tasks to keep more)"
                ),
            ));
        }
        if !t.state.terminal() {
            // Already being (re)computed.
            return Ok(());
        }
        if t.state != TaskState::Finished {
            return Err(TaskError::new("ObjectLost", format!("object {id} is lost and its task did not succeed")));
        }
        let max = t.spec.max_retries;
        if max >= 0 && t.retries_used >= max as u32 {
            return Err(TaskError::new(
                "ObjectLost",
                format!("object {id} is lost and its task `{}` has used all {max} retries", t.spec.name),
            ));
        }
        t.retries_used += 1;
        t.spec.attempt += 1;
        t.spec.spill_count = 0;
        t.state = TaskState::PendingArgs;
        t.node = None;
        t.avoid = None;
        let attempt = t.spec.attempt;
        let num_returns = t.spec.num_returns;
        let hold = std::mem::replace(&mut t.arg_hold, ArgHold::Task);
        let args = Self::arg_ids(&t.spec);
        self.stats.reconstructions += 1;
        tracing::info!(task = %creator, object = %id, attempt, "rebuilding a lost object from its lineage");
        self.events.emit(creator, pb::TaskState::TaskPendingArgs, attempt, None, None, None);
        for i in 0..num_returns {
            if let Some(o) = self.objects.get_mut(&creator.return_id(i)) {
                o.state = ObjState::Pending;
                o.inline = None;
                o.locations.clear();
            }
        }
        let mut pending = 0;
        let mut failure: Option<TaskError> = None;
        for a in args {
            let state = match self.objects.get_mut(&a) {
                Some(o) => {
                    if hold == ArgHold::Lineage {
                        o.lineage_refs = o.lineage_refs.saturating_sub(1);
                    }
                    o.task_refs += 1;
                    o.state
                }
                None => {
                    failure = Some(TaskError::new(
                        "ObjectLost",
                        format!(
                            "argument {a} of the rebuilt task was freed and its lineage evicted \
                             (raise --max-lineage-tasks to keep more)"
                        ),
                    ));
                    continue;
                }
            };
            let lost = match state {
                ObjState::Lineage => true,
                ObjState::Ready => self.objects.get(&a).is_some_and(|o| o.inline.is_none() && o.locations.is_empty()),
                _ => false,
            };
            if lost {
                if let Err(e) = self.reconstruct(a) {
                    failure = Some(e);
                    continue;
                }
            }
            if let Some(o) = self.objects.get_mut(&a) {
                if o.state == ObjState::Pending {
                    o.dependents.push(creator);
                    pending += 1;
                }
            }
        }
        if let Some(t) = self.tasks.get_mut(&creator) {
            t.pending_deps = pending;
        }
        if let Some(e) = failure {
            self.fail_task(creator, e);
            return Ok(());
        }
        if pending == 0 {
            self.schedule(creator);
        }
        Ok(())
    }

    /// Takes the result of an attempt of a task this raylet owns.
    pub(crate) fn apply_result(&mut self, r: pb::TaskResult) {
        let Ok(task_id) = TaskId::from_slice(&r.task_id) else { return };
        let node = NodeId::from_slice(&r.node_id).ok();
        let stale = match self.tasks.get(&task_id) {
            None => true,
            Some(t) => t.state.terminal() || r.attempt != t.spec.attempt,
        };
        if stale {
            // Nobody will read what this attempt stored: free it where it is.
            for ret in r.returns.iter().filter(|ret| ret.inline_value.is_none()) {
                let Some(id) = oid(&ret.object_id) else { continue };
                if node == Some(self.node_id) || r.node_address == self.address {
                    self.store.delete(&id);
                } else {
                    self.send_peer(&r.node_address, PeerMsg::Free(id));
                }
            }
            return;
        }
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        if let Some(err) = r.error.as_ref() {
            let mut err = TaskError::from(err);
            if err.node_id.is_empty() {
                err.node_id = node.map(|n| n.to_string()).unwrap_or_default();
            }
            self.retry_or_fail(task_id, err, r.system_failure, node);
            return;
        }
        t.state = TaskState::Finished;
        t.node = node;
        self.events.emit(task_id, pb::TaskState::TaskFinished, r.attempt, node, None, None);
        let n = t.spec.num_returns;
        if let Some(node) = node.filter(|n| *n != self.node_id) {
            let res = ResourceSet::from(t.spec.resources.as_ref());
            self.view.release(node, &res);
        }
        for (i, ret) in r.returns.into_iter().enumerate() {
            let Some(id) = oid(&ret.object_id) else { continue };
            if id.task_id() != task_id || i as u32 >= n {
                continue;
            }
            let Some(o) = self.objects.get_mut(&id) else { continue };
            o.state = ObjState::Ready;
            match ret.inline_value {
                Some(v) => {
                    o.size = v.data.len() as u64;
                    o.inline = Some(v);
                }
                None => {
                    o.size = ret.stored_size;
                    if let Some(node) = node {
                        if !o.locations.contains(&node) {
                            o.locations.push(node);
                        }
                    }
                }
            }
            self.wake(id);
        }
        self.args_to_lineage(task_id);
        for i in 0..n {
            self.maybe_free(task_id.return_id(i));
        }
        self.maybe_drop_task(task_id);
    }

    fn retry_or_fail(&mut self, task_id: TaskId, err: TaskError, system: bool, node: Option<NodeId>) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        let retriable = system || t.spec.retry_exceptions;
        let max = t.spec.max_retries;
        if retriable && (max < 0 || t.retries_used < max as u32) {
            t.retries_used += 1;
            t.spec.attempt += 1;
            t.spec.spill_count = 0;
            t.avoid = node;
            t.state = TaskState::PendingNode;
            self.stats.retries += 1;
            self.events.emit(task_id, pb::TaskState::TaskPendingNode, t.spec.attempt, None, None, Some(&err));
            tracing::info!(task = %task_id, attempt = t.spec.attempt, reason = %err.message, "retrying task");
            // Back off a little: the failure may be a node whose death the
            // GCS has not announced yet.
            let delay = std::time::Duration::from_millis((50u64 << t.retries_used.min(5)).min(1000));
            let attempt = t.spec.attempt;
            match self.inner() {
                Some(inner) if tokio::runtime::Handle::try_current().is_ok() => {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        inner.core().schedule_retry(task_id, attempt);
                    });
                }
                _ => self.schedule(task_id),
            }
        } else {
            let mut err = err;
            if retriable && t.retries_used > 0 {
                err.message = format!("{} (after {} retries)", err.message, t.retries_used);
            }
            if let Some(n) = node {
                t.node = Some(n);
            }
            self.fail_task(task_id, err);
        }
    }

    fn schedule_retry(&mut self, task_id: TaskId, attempt: u32) {
        if self.tasks.get(&task_id).is_some_and(|t| t.state == TaskState::PendingNode && t.spec.attempt == attempt) {
            self.schedule(task_id);
        }
    }

    /// A raylet would not queue a task this raylet sent it.
    pub(crate) fn on_spillback(&mut self, from: NodeId, s: pb::Spillback) {
        let Ok(task_id) = TaskId::from_slice(&s.task_id) else { return };
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        if t.state != TaskState::Scheduled || t.spec.attempt != s.attempt {
            return;
        }
        t.spec.spill_count += 1;
        t.avoid = Some(from);
        t.state = TaskState::PendingNode;
        tracing::debug!(task = %task_id, node = %from, reason = %s.reason, "task spilled back");
        self.schedule(task_id);
    }

    /// Sending tasks to a raylet failed: retry them elsewhere.
    pub(crate) fn on_dispatch_failed(&mut self, node: Option<NodeId>, tasks: Vec<(TaskId, u32)>, reason: &str) {
        for (id, attempt) in tasks {
            let Some(t) = self.tasks.get(&id) else { continue };
            if t.state != TaskState::Scheduled || t.spec.attempt != attempt {
                continue;
            }
            let err = TaskError::new("NodeUnreachable", format!("could not send the task to its node: {reason}"));
            self.retry_or_fail(id, err, true, node);
        }
    }

    /// A node died: retry what ran there and forget its copies.
    pub(crate) fn on_node_dead(&mut self, node: NodeId) {
        let on_node: Vec<(TaskId, u32)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Scheduled && t.node == Some(node))
            .map(|(id, t)| (*id, t.spec.attempt))
            .collect();
        for (id, _) in on_node {
            let err = TaskError::new("NodeDied", format!("node {node} died while the task was there"));
            self.retry_or_fail(id, err, true, Some(node));
        }
        let lost: Vec<ObjectId> = self
            .objects
            .iter_mut()
            .filter_map(|(id, o)| {
                o.copies.retain(|n| *n != node);
                let had = o.locations.len();
                o.locations.retain(|n| *n != node);
                (o.state == ObjState::Ready && o.inline.is_none() && had > 0 && o.locations.is_empty()).then_some(*id)
            })
            .collect();
        for id in lost {
            let still = self.objects.get(&id).is_some_and(|o| o.state == ObjState::Ready && o.locations.is_empty());
            if !still {
                continue;
            }
            if let Err(mut err) = self.reconstruct(id) {
                err.message = format!("every copy was on node {node}, which died: {}", err.message);
                if let Some(o) = self.objects.get_mut(&id) {
                    o.state = ObjState::Failed;
                    let v = error_value(&err);
                    o.size = v.data.len() as u64;
                    o.inline = Some(v);
                }
                self.wake(id);
            }
        }
        if let Some(addr) = self.view.address(&node).map(str::to_string) {
            if let Some(inner) = self.inner() {
                inner.peers.forget(&addr);
            }
        }
        self.retry_infeasible();
    }

    /// What the owner knows of `id`; registers `waiter` when it is pending.
    pub(crate) fn lookup(&mut self, id: ObjectId, waiter: Option<&mpsc::Sender<ObjectId>>) -> Lookup {
        let Some(o) = self.objects.get_mut(&id) else { return Lookup::Unknown };
        match o.state {
            ObjState::Pending => {
                if let Some(w) = waiter {
                    o.waiters.push(w.clone());
                }
                Lookup::Pending
            }
            ObjState::Failed => Lookup::Inline(o.inline.clone().unwrap_or_default()),
            ObjState::Lineage => {
                if let Err(e) = self.reconstruct(id) {
                    return Lookup::Inline(error_value(&e));
                }
                if let (Some(o), Some(w)) = (self.objects.get_mut(&id), waiter) {
                    o.waiters.push(w.clone());
                }
                Lookup::Pending
            }
            ObjState::Ready => match &o.inline {
                Some(v) => Lookup::Inline(v.clone()),
                None => {
                    let size = o.size;
                    let nodes = o.locations.clone();
                    let locations = nodes.into_iter().filter_map(|n| self.location_of(n)).collect();
                    Lookup::Stored { size, locations }
                }
            },
        }
    }

    /// Records that a copy of an owned object now lives here (a `get` pulled it).
    pub(crate) fn add_copy_here(&mut self, id: ObjectId) {
        let me = self.node_id;
        if let Some(o) = self.objects.get_mut(&id) {
            if !o.copies.contains(&me) {
                o.copies.push(me);
            }
        }
    }

    // ------------------------------------------------------------------
    // Executor: local queue, resources, workers
    // ------------------------------------------------------------------

    /// Whether this raylet should send a task it was given back to its owner.
    pub(crate) fn should_spill(&self, spec: &pb::TaskSpec) -> Option<String> {
        let res = ResourceSet::from(spec.resources.as_ref());
        if !self.total.contains(&res) {
            return Some(format!("node {} has {} in total, the task needs {res}", self.node_id, self.total));
        }
        if spec.spill_count >= MAX_SPILLS || self.available.contains(&res) {
            return None;
        }
        if matches!(strategy_of(&spec.strategy), Ok(Strategy::NodeAffinity { soft: false, .. })) {
            return None;
        }
        let elsewhere = self.view.nodes().any(|n| n.alive && n.id != self.node_id && n.available.contains(&res));
        elsewhere.then(|| format!("node {} is busy and another node has room", self.node_id))
    }

    /// Queues a task granted to this node.
    pub(crate) fn enqueue_local(&mut self, spec: pb::TaskSpec) {
        let Ok(task_id) = TaskId::from_slice(&spec.task_id) else { return };
        let resources = ResourceSet::from(spec.resources.as_ref());
        let mut missing = 0;
        for arg in &spec.args {
            let Some(pb::arg::Kind::ObjectRef(r)) = &arg.kind else { continue };
            let Some(id) = oid(&r.object_id) else { continue };
            if self.store.contains(&id) {
                continue;
            }
            missing += 1;
            if let Some(inner) = self.inner() {
                let locations = r.locations.clone();
                let size = r.size;
                let attempt = spec.attempt;
                tokio::spawn(async move {
                    let res = crate::metrics::timed_transfer(inner.objects.pull(id, &locations, size)).await;
                    inner.core().arg_pulled(task_id, attempt, id, res);
                });
            }
        }
        let t = LocalTask { spec, task_id, resources, missing };
        if missing == 0 {
            self.push_ready(t);
            self.try_dispatch();
        } else {
            self.waiting_args.insert(task_id, t);
        }
    }

    fn push_ready(&mut self, t: LocalTask) {
        self.ready_len += 1;
        self.ready.entry(t.resources.clone()).or_default().push_back(t);
    }

    fn pop_ready(&mut self, class: &ResourceSet) -> Option<LocalTask> {
        let q = self.ready.get_mut(class)?;
        let t = q.pop_front();
        if q.is_empty() {
            self.ready.remove(class);
        }
        if t.is_some() {
            self.ready_len -= 1;
        }
        t
    }

    fn arg_pulled(&mut self, task_id: TaskId, attempt: u32, id: ObjectId, res: Result<(), String>) {
        let Some(t) = self.waiting_args.get_mut(&task_id) else { return };
        if t.spec.attempt != attempt {
            return;
        }
        match res {
            Ok(()) => {
                t.missing = t.missing.saturating_sub(1);
                if t.missing == 0 {
                    if let Some(t) = self.waiting_args.remove(&task_id) {
                        self.push_ready(t);
                        self.try_dispatch();
                    }
                }
            }
            Err(reason) => {
                if let Some(t) = self.waiting_args.remove(&task_id) {
                    let err = TaskError::new("ObjectLost", format!("could not fetch argument {id}: {reason}"));
                    self.report_local_failure(&t.spec, err, true);
                }
            }
        }
    }

    fn report_local_failure(&mut self, spec: &pb::TaskSpec, mut err: TaskError, system: bool) {
        err.node_id = self.node_id.to_string();
        err.attempt = spec.attempt;
        if err.task_name.is_empty() {
            err.task_name = spec.name.clone();
        }
        if err.function.is_empty() {
            err.function = describe_function(&spec.function);
        }
        let r = pb::TaskResult {
            task_id: spec.task_id.clone(),
            attempt: spec.attempt,
            node_id: self.node_id.to_bytes(),
            node_address: self.address.clone(),
            returns: Vec::new(),
            error: Some((&err).into()),
            system_failure: system,
            start_time_ms: 0,
            end_time_ms: now_ms(),
        };
        self.deliver(&spec.owner_address.clone(), r);
    }

    fn deliver(&mut self, owner: &str, r: pb::TaskResult) {
        if owner == self.address {
            self.apply_result(r);
        } else {
            self.send_peer(owner, PeerMsg::Result(r));
        }
    }

    fn can_start_worker(&self) -> bool {
        if self.config.external_workers {
            return false;
        }
        let live = self.workers.values().filter(|w| !w.blocked).count();
        live < self.config.max_workers && self.start_failures < MAX_START_FAILURES
    }

    /// Starts tasks that have their arguments, resources and a worker.
    pub(crate) fn try_dispatch(&mut self) {
        if self.ready_len == 0 {
            return;
        }
        let classes: Vec<ResourceSet> = self.ready.keys().cloned().collect();
        for class in classes {
            while let Some(q) = self.ready.get(&class) {
                let queued = q.len();
                if self.available.contains(&class) {
                    if let Some(w) = self.idle.pop() {
                        let Some(t) = self.pop_ready(&class) else {
                            self.idle.push(w);
                            break;
                        };
                        self.available.subtract(&class);
                        let (gpu_ids, gpus_exclusive) = self.take_gpus(&class);
                        if let Some(slot) = self.workers.get_mut(&w) {
                            slot.lease = Some(Lease {
                                class: class.clone(),
                                in_flight: VecDeque::new(),
                                gpu_ids,
                                gpus_exclusive,
                            });
                        }
                        self.run_on(w, t);
                        continue;
                    }
                    if self.can_start_worker() {
                        // A new lease is possible: wait for a worker rather
                        // than queueing behind a busy one.
                        if self.starting < queued {
                            self.start_worker();
                        }
                        break;
                    }
                }
                // Every resource is taken (or workers are starting): keep
                // leased workers of this shape fed.
                let depth = self.config.pipeline_depth;
                let candidate = self
                    .workers
                    .iter()
                    .filter(|(_, s)| !s.blocked && s.tx.is_some())
                    .filter_map(|(id, s)| {
                        s.lease.as_ref().filter(|l| l.class == class).map(|l| (*id, l.in_flight.len()))
                    })
                    .filter(|(_, n)| *n < depth)
                    .min_by_key(|(_, n)| *n);
                match candidate {
                    Some((w, _)) => {
                        let Some(t) = self.pop_ready(&class) else { break };
                        self.run_on(w, t);
                    }
                    None => break,
                }
            }
        }
        if self.ready_len > 0 && self.start_failures >= MAX_START_FAILURES {
            self.fail_ready_tasks("workers fail to start on this node; see the raylet log");
        }
    }

    fn fail_ready_tasks(&mut self, reason: &str) {
        let all: Vec<LocalTask> = std::mem::take(&mut self.ready).into_values().flatten().collect();
        self.ready_len = 0;
        for t in all {
            self.report_local_failure(&t.spec, TaskError::new("WorkerStartFailed", reason), false);
        }
    }

    /// Sends a task to a leased worker.
    fn run_on(&mut self, w: WorkerId, t: LocalTask) {
        let mut args = Vec::with_capacity(t.spec.args.len());
        for a in &t.spec.args {
            match &a.kind {
                Some(pb::arg::Kind::Value(v)) => args.push(v.clone()),
                Some(pb::arg::Kind::ObjectRef(r)) => {
                    let v = oid(&r.object_id).and_then(|id| self.store.get(&id));
                    match v {
                        Some(v) => args.push(v),
                        None => {
                            let err = TaskError::new("ObjectLost", "an argument was evicted before the task started");
                            self.report_local_failure(&t.spec, err, true);
                            self.release_if_done(w);
                            return;
                        }
                    }
                }
                None => args.push(pb::ObjectValue::default()),
            }
        }
        let spec = t.spec;
        self.events.emit(t.task_id, pb::TaskState::TaskRunning, spec.attempt, Some(self.node_id), None, None);
        let msg = pb::ToWorker {
            kind: Some(pb::to_worker::Kind::Execute(pb::ExecuteTask {
                task_id: spec.task_id.clone(),
                job_id: spec.job_id,
                name: spec.name.clone(),
                function: spec.function.clone(),
                args,
                num_returns: spec.num_returns,
                attempt: spec.attempt,
                gpu_ids: self
                    .workers
                    .get(&w)
                    .and_then(|s| s.lease.as_ref())
                    .map(|l| l.gpu_ids.clone())
                    .unwrap_or_default(),
            })),
        };
        let Some(slot) = self.workers.get_mut(&w) else { return };
        let sent = slot.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok());
        if let Some(l) = slot.lease.as_mut() {
            l.in_flight.push_back(t.task_id);
        }
        self.running.insert(
            t.task_id,
            Running {
                worker: w,
                owner_address: spec.owner_address,
                attempt: spec.attempt,
                name: spec.name,
                function: describe_function(&spec.function),
                num_returns: spec.num_returns,
                start_ms: now_ms(),
            },
        );
        if !sent {
            self.on_worker_exit(w, "its connection closed");
        }
    }

    /// GPU ids for a new lease of `class`: whole GPUs are taken from the
    /// free list; a fraction of a GPU shares the lowest id.
    fn take_gpus(&mut self, class: &ResourceSet) -> (Vec<u32>, bool) {
        let units = class.units(crate::resources::GPU);
        if units <= 0 {
            return (Vec::new(), false);
        }
        if units % crate::resources::UNIT != 0 && units < crate::resources::UNIT {
            return (vec![self.gpus_free.first().copied().unwrap_or(0)], false);
        }
        let whole = (units + crate::resources::UNIT - 1) / crate::resources::UNIT;
        let n = (whole as usize).min(self.gpus_free.len());
        (self.gpus_free.drain(..n).collect(), true)
    }

    fn return_gpus(&mut self, l: &Lease) {
        if l.gpus_exclusive {
            self.gpus_free.extend(l.gpu_ids.iter().copied());
            self.gpus_free.sort_unstable();
        }
    }

    fn release_if_done(&mut self, w: WorkerId) {
        let Some(slot) = self.workers.get_mut(&w) else { return };
        if slot.lease.as_ref().is_some_and(|l| l.in_flight.is_empty()) {
            if let Some(l) = slot.lease.take() {
                if !slot.blocked {
                    self.available.add(&l.class);
                }
                self.return_gpus(&l);
            }
            self.idle.push(w);
        }
    }

    fn start_worker(&mut self) {
        let Some(inner) = self.inner() else { return };
        let id = WorkerId::random();
        self.starting += 1;
        self.stats.workers_started += 1;
        self.workers.insert(id, WorkerSlot { pid: 0, tx: None, lease: None, blocked: false });
        match crate::raylet::workers::spawn(&inner, id) {
            Ok(pid) => {
                if let Some(s) = self.workers.get_mut(&id) {
                    s.pid = pid;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker process");
                self.workers.remove(&id);
                self.starting -= 1;
                self.start_failures += 1;
            }
        }
    }

    /// Starts `n` workers ahead of demand.
    pub(crate) fn prestart(&mut self, n: usize) {
        for _ in 0..n {
            if self.can_start_worker() {
                self.start_worker();
            }
        }
    }

    /// A worker process connected and said hello.
    pub(crate) fn on_worker_connected(&mut self, id: WorkerId, pid: u32, tx: mpsc::UnboundedSender<pb::ToWorker>) {
        match self.workers.get_mut(&id) {
            Some(slot) => {
                if slot.tx.is_none() {
                    self.starting = self.starting.saturating_sub(1);
                }
                slot.tx = Some(tx);
                slot.pid = pid;
            }
            None => {
                // A worker we did not start (an external worker container).
                self.workers.insert(id, WorkerSlot { pid, tx: Some(tx), lease: None, blocked: false });
            }
        }
        self.start_failures = 0;
        self.idle.push(id);
        self.try_dispatch();
    }

    /// A worker's process exited or its connection closed.
    pub(crate) fn on_worker_exit(&mut self, id: WorkerId, reason: &str) {
        let Some(slot) = self.workers.remove(&id) else { return };
        self.idle.retain(|w| *w != id);
        if slot.tx.is_none() {
            self.starting = self.starting.saturating_sub(1);
            self.start_failures += 1;
            tracing::warn!(worker = %id, %reason, "worker exited before connecting");
        }
        if let Some(l) = slot.lease {
            if !slot.blocked {
                self.available.add(&l.class);
            }
            self.return_gpus(&l);
            for task_id in l.in_flight {
                let Some(run) = self.running.remove(&task_id) else { continue };
                let err = TaskError {
                    kind: "WorkerDied".into(),
                    message: format!("worker {id} (pid {}) {reason} while running the task", slot.pid),
                    task_id: task_id.to_string(),
                    task_name: run.name.clone(),
                    function: run.function.clone(),
                    node_id: self.node_id.to_string(),
                    attempt: run.attempt,
                    stderr_tail: String::new(),
                };
                let r = pb::TaskResult {
                    task_id: task_id.to_bytes(),
                    attempt: run.attempt,
                    node_id: self.node_id.to_bytes(),
                    node_address: self.address.clone(),
                    returns: Vec::new(),
                    error: Some((&err).into()),
                    system_failure: true,
                    start_time_ms: run.start_ms,
                    end_time_ms: now_ms(),
                };
                self.deliver(&run.owner_address, r);
            }
        }
        self.try_dispatch();
    }

    /// A worker finished a task.
    pub(crate) fn on_task_done(&mut self, w: WorkerId, done: pb::TaskDone) {
        let Ok(task_id) = TaskId::from_slice(&done.task_id) else { return };
        let Some(run) = self.running.remove(&task_id) else { return };
        self.stats.tasks_executed += 1;
        crate::metrics::observe_execution(&run.function, run.start_ms, now_ms());
        let mut result = pb::TaskResult {
            task_id: done.task_id.clone(),
            attempt: run.attempt,
            node_id: self.node_id.to_bytes(),
            node_address: self.address.clone(),
            returns: Vec::new(),
            error: None,
            system_failure: false,
            start_time_ms: run.start_ms,
            end_time_ms: now_ms(),
        };
        let context = |mut e: TaskError| {
            e.task_id = task_id.to_string();
            e.task_name = run.name.clone();
            e.function = run.function.clone();
            e.node_id = self.node_id.to_string();
            e.attempt = run.attempt;
            e
        };
        if let Some(e) = done.error.as_ref() {
            let mut e = context(TaskError::from(e));
            if e.stderr_tail.is_empty() {
                e.stderr_tail = done.stderr_tail.clone();
            }
            result.error = Some((&e).into());
        } else if done.returns.len() != run.num_returns as usize {
            let e = context(TaskError::new(
                "TaskFailed",
                format!(
                    "the function returned {} values but the task declares {}",
                    done.returns.len(),
                    run.num_returns
                ),
            ));
            result.error = Some((&e).into());
        } else {
            let mut stored: Vec<ObjectId> = Vec::new();
            for (i, v) in done.returns.into_iter().enumerate() {
                let id = task_id.return_id(i as u32);
                if v.data.len() <= INLINE_LIMIT {
                    result.returns.push(pb::ReturnObject {
                        object_id: id.to_bytes(),
                        inline_value: Some(v),
                        stored_size: 0,
                    });
                    continue;
                }
                let size = v.data.len() as u64;
                match self.store.put(id, v, true) {
                    Ok(()) => {
                        stored.push(id);
                        result.returns.push(pb::ReturnObject {
                            object_id: id.to_bytes(),
                            inline_value: None,
                            stored_size: size,
                        });
                    }
                    Err(e) => {
                        for s in &stored {
                            self.store.delete(s);
                        }
                        result.returns.clear();
                        result.error = Some((&context(TaskError::new("ObjectStoreFull", e.to_string()))).into());
                        break;
                    }
                }
            }
        }
        self.deliver(&run.owner_address, result);
        // Keep the lease busy with the next task of its shape while no other
        // shape is waiting; otherwise give the resources back.
        let Some(slot) = self.workers.get_mut(&w) else { return };
        let mut refill = None;
        if let Some(l) = slot.lease.as_mut() {
            l.in_flight.retain(|t| *t != task_id);
            if l.in_flight.is_empty() && !slot.blocked && self.ready.len() == 1 && self.ready.contains_key(&l.class) {
                refill = Some(l.class.clone());
            }
        }
        if let Some(class) = refill {
            if let Some(t) = self.pop_ready(&class) {
                self.run_on(w, t);
                return;
            }
        }
        self.release_if_done(w);
        self.try_dispatch();
    }

    /// Cancels the tasks that create `ids` (objects this raylet owns).
    pub(crate) fn cancel(&mut self, ids: &[Bytes], force: bool, recursive: bool) {
        let mut tasks: Vec<TaskId> =
            ids.iter().filter_map(|b| oid(b)).filter(|o| !o.is_put()).map(|o| o.task_id()).collect();
        tasks.sort();
        tasks.dedup();
        for t in tasks {
            self.cancel_task(t, force, recursive);
        }
    }

    fn cancel_task(&mut self, task_id: TaskId, force: bool, recursive: bool) {
        let Some(t) = self.tasks.get(&task_id) else { return };
        if t.state.terminal() {
            return;
        }
        let (state, node, attempt) = (t.state, t.node, t.spec.attempt);
        if state == TaskState::Scheduled {
            if let Some(node) = node {
                if node == self.node_id {
                    self.cancel_local(task_id, attempt, force, recursive);
                } else if let Some(addr) = self.view.address(&node).map(str::to_string) {
                    self.send_peer(
                        &addr,
                        PeerMsg::Cancel(pb::CancelTaskRequest {
                            task_id: task_id.to_bytes(),
                            attempt,
                            force,
                            recursive,
                        }),
                    );
                }
            }
        }
        let err = TaskError::new(
            "Cancelled",
            if force { "the task was cancelled (forced)" } else { "the task was cancelled" },
        );
        self.finish_failed(task_id, err, TaskState::Cancelled);
    }

    /// Stops a task this node was given: drops it from the queues, or kills
    /// its worker when forced. Results of a cancelled task are ignored by its owner.
    pub(crate) fn cancel_local(&mut self, task_id: TaskId, attempt: u32, force: bool, recursive: bool) {
        if self.waiting_args.get(&task_id).is_some_and(|t| t.spec.attempt == attempt) {
            self.waiting_args.remove(&task_id);
        }
        let mut removed = false;
        for q in self.ready.values_mut() {
            let before = q.len();
            q.retain(|t| !(t.task_id == task_id && t.spec.attempt == attempt));
            removed |= q.len() != before;
        }
        if removed {
            self.ready.retain(|_, q| !q.is_empty());
            self.ready_len = self.ready.values().map(VecDeque::len).sum();
        }
        let worker = self.running.get(&task_id).filter(|r| r.attempt == attempt).map(|r| r.worker);
        if let Some(w) = worker {
            if recursive {
                let children: Vec<TaskId> = self
                    .sessions
                    .values()
                    .filter(|s| s.worker_id == Some(w))
                    .flat_map(|s| s.submitted.iter().copied())
                    .collect();
                for c in children {
                    self.cancel_task(c, force, true);
                }
            }
            if force {
                // The worker and whatever its task started (commands and their children).
                if let Some(pid) = self.workers.get(&w).map(|s| s.pid).filter(|p| *p > 0) {
                    crate::process::kill_tree(pid);
                }
            }
        }
    }

    /// A worker's nested `get` started blocking: lend its resources out.
    pub(crate) fn worker_blocked(&mut self, w: WorkerId) {
        let Some(slot) = self.workers.get_mut(&w) else { return };
        if slot.blocked {
            return;
        }
        slot.blocked = true;
        if let Some(l) = slot.lease.as_ref() {
            self.available.add(&l.class);
        }
        self.try_dispatch();
    }

    /// A worker's nested `get` returned: take its resources back.
    pub(crate) fn worker_unblocked(&mut self, w: WorkerId) {
        let Some(slot) = self.workers.get_mut(&w) else { return };
        if !slot.blocked {
            return;
        }
        slot.blocked = false;
        if let Some(l) = slot.lease.as_ref() {
            self.available.subtract(&l.class);
        }
    }

    /// This node's load for the GCS.
    pub(crate) fn load(&self) -> pb::NodeLoad {
        let s = self.store.stats();
        pb::NodeLoad {
            node_id: self.node_id.to_bytes(),
            available: Some((&self.available).into()),
            queued_tasks: (self.waiting_args.len() + self.ready_len) as u32,
            object_store_used: s.used,
            object_store_capacity: s.capacity,
        }
    }

    pub(crate) fn node_stats(&self) -> pb::NodeStatsReply {
        let s = self.store.stats();
        pb::NodeStatsReply {
            node_id: self.node_id.to_bytes(),
            total: Some((&self.total).into()),
            available: Some((&self.available).into()),
            queued_tasks: (self.waiting_args.len() + self.ready_len) as u32,
            running_tasks: self.running.len() as u32,
            workers: self.workers.len() as u32,
            idle_workers: self.idle.len() as u32,
            object_store_used: s.used,
            object_store_capacity: s.capacity,
            object_count: s.count,
            pulled_bytes: 0,
            pulled_objects: 0,
            served_bytes: 0,
            tasks_executed: self.stats.tasks_executed,
            owned_objects: self.objects.len() as u64,
            owned_tasks: self.tasks.len() as u64,
            known_nodes: self.view.alive_count() as u32,
            spilled_back: self.stats.spilled_back,
            spilled_bytes: s.spilled_bytes,
            spilled_objects: s.spilled_objects,
            spilled_total_bytes: s.spilled_total,
            restored_total_bytes: s.restored_total,
            evicted_objects: s.evicted,
            task_retries: self.stats.retries,
            reconstructions: self.stats.reconstructions,
            pull_micros: 0,
            infeasible_tasks: self.infeasible.len() as u32,
        }
    }

    /// Kills every worker (shutdown).
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.workers.values().map(|w| w.pid).filter(|p| *p > 0).collect()
    }
}
