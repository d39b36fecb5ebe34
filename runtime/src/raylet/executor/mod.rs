//! The executor side of a raylet: attempts granted to this node wait for
//! their arguments (pulled by the object manager), then for resources, then
//! for a worker, and run.
//!
//! A worker lease holds the task's resources for as long as attempts of the
//! same resource shape keep it busy; when every resource is taken, further
//! attempts of a leased shape are pipelined onto the lease (bounded depth)
//! so the worker never idles between tasks.
//!
//! Plain data: the executor records [`Effect`]s (spawn, kill, pull,
//! dispatch) and results for owners, which the coordinator carries out and
//! delivers after the lock is released.

pub(crate) mod ledger;
pub(crate) mod local_tasks;
pub(crate) mod worker_pool;

use std::collections::VecDeque;
use std::sync::Arc;

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::error::{ErrorKind, TaskError};
use crate::ids::{NodeId, ObjectId, TaskId, WorkerId};
use crate::metrics::RayletMetrics;
use crate::net::now_ms;
use crate::raylet::cluster_view::ClusterView;
use crate::raylet::effects::{Dispatch, Effect};
use crate::raylet::events::TaskEvents;
use crate::raylet::object_manager::PullError;
use crate::raylet::object_store::ObjectStore;
use crate::raylet::owner::{describe_function, oid, strategy_of};
use crate::raylet::scheduler::Strategy;
use crate::raylet::RayletConfig;
use crate::resources::ResourceSet;
use crate::value::INLINE_LIMIT;

use ledger::ResourceLedger;
use local_tasks::{LocalTask, LocalTasks, Running};
use worker_pool::{Attempt, Lease, WorkerKind, WorkerPool, MAX_START_FAILURES};

/// Times a task may be sent back (spillback) before a feasible node must queue it.
pub(crate) const MAX_SPILLBACKS: u32 = 4;

/// A return value as the worker sent it, after large values went into the store.
pub(crate) enum Return {
    Inline(pb::ObjectValue),
    /// Put in the store as a primary copy: its size, and the references
    /// inside it.
    Stored(u64, Vec<pb::ObjectRef>),
}

/// A worker's answer for one attempt, with its large values already stored
/// (which may spill: done off the lock by [`store_returns`]).
pub(crate) struct Done {
    pub attempt: Attempt,
    pub error: Option<TaskError>,
    pub stderr_tail: String,
    pub returns: Vec<Return>,
}

/// Puts a finished attempt's large return values into the store as primary
/// copies. Blocking (the store may spill to disk): run it off async threads.
pub(crate) fn store_returns(store: &ObjectStore, done: pb::TaskDone) -> Option<Done> {
    let task_id = TaskId::from_slice(&done.task_id).ok()?;
    let attempt = (task_id, done.attempt);
    let mut d = Done {
        attempt,
        error: done.error.as_ref().map(TaskError::from),
        stderr_tail: done.stderr_tail,
        returns: Vec::with_capacity(done.returns.len()),
    };
    if d.error.is_some() {
        return Some(d);
    }
    for (i, v) in done.returns.into_iter().enumerate() {
        if v.data.len() <= INLINE_LIMIT {
            d.returns.push(Return::Inline(v));
            continue;
        }
        let id = task_id.return_id(i as u32);
        let size = v.data.len() as u64;
        let nested = v.nested_refs.clone();
        match store.put(id, v, true) {
            Ok(()) => d.returns.push(Return::Stored(size, nested)),
            Err(e) => {
                for (j, r) in d.returns.iter().enumerate() {
                    if matches!(r, Return::Stored(..)) {
                        store.delete(&task_id.return_id(j as u32));
                    }
                }
                d.returns.clear();
                d.error = Some(TaskError::new(ErrorKind::ObjectStoreFull, e.to_string()));
                break;
            }
        }
    }
    Some(d)
}

/// Counters of the executor.
#[derive(Default, Clone, Copy)]
pub(crate) struct ExecutorStats {
    pub tasks_executed: u64,
}

/// The executor: local queues, worker pool and resource ledger.
pub(crate) struct Executor {
    node_id: NodeId,
    address: String,
    config: Arc<RayletConfig>,
    store: Arc<ObjectStore>,
    metrics: Arc<RayletMetrics>,
    pub ledger: ResourceLedger,
    pub pool: WorkerPool,
    pub local: LocalTasks,
    pub stats: ExecutorStats,
    /// Effects for the coordinator.
    pub out: Vec<Effect>,
    /// Results for their owners: the owner's address and the result.
    pub results: Vec<(String, pb::TaskResult)>,
    /// Workers whose submitted tasks are to be cancelled (recursive cancel), and whether forced.
    pub cancel_children: Vec<(WorkerId, bool)>,
}

impl Executor {
    pub(crate) fn new(
        node_id: NodeId,
        address: String,
        config: Arc<RayletConfig>,
        store: Arc<ObjectStore>,
        metrics: Arc<RayletMetrics>,
    ) -> Self {
        Executor {
            metrics,
            node_id,
            address,
            ledger: ResourceLedger::new(config.resources.clone()),
            config,
            store,
            pool: WorkerPool::default(),
            local: LocalTasks::default(),
            stats: ExecutorStats::default(),
            out: Vec::new(),
            results: Vec::new(),
            cancel_children: Vec::new(),
        }
    }

    /// Whether a task sent here should go back to its owner (spillback),
    /// and why.
    pub(crate) fn should_spillback(&self, spec: &pb::TaskSpec, view: &ClusterView) -> Option<String> {
        let res = ResourceSet::from(spec.resources.as_ref());
        if !self.ledger.feasible(&res) {
            return Some(format!("node {} has {} in total, the task needs {res}", self.node_id, self.ledger.total()));
        }
        if spec.spillback_count >= MAX_SPILLBACKS || self.ledger.fits(&res) {
            return None;
        }
        if matches!(strategy_of(&spec.strategy), Ok(Strategy::NodeAffinity { soft: false, .. })) {
            return None;
        }
        let elsewhere = view.nodes().any(|n| n.alive && n.id != self.node_id && n.available.contains(&res));
        elsewhere.then(|| format!("node {} is busy and another node has room", self.node_id))
    }

    /// Queues an attempt granted to this node.
    pub(crate) fn enqueue(&mut self, spec: pb::TaskSpec, events: &mut TaskEvents) {
        let Ok(task_id) = TaskId::from_slice(&spec.task_id) else { return };
        let resources = ResourceSet::from(spec.resources.as_ref());
        let attempt = (task_id, spec.attempt);
        if self.local.running.contains_key(&attempt) || self.local.waiting_args.contains_key(&attempt) {
            // The owner sent the same attempt twice (a retried RPC): once is enough.
            return;
        }
        let mut missing = 0;
        for arg in &spec.args {
            let Some(pb::arg::Kind::ObjectRef(r)) = &arg.kind else { continue };
            let Some(id) = oid(&r.object_id) else { continue };
            if self.store.contains(&id) {
                continue;
            }
            missing += 1;
            self.out.push(Effect::Pull { attempt, object: id, locations: r.locations.clone(), size: r.size });
        }
        let kind = WorkerKind::of(&spec.function);
        let t = LocalTask { spec, task_id, kind, resources, missing };
        if missing == 0 {
            self.local.push_ready(t);
            self.try_dispatch(events);
        } else {
            self.local.waiting_args.insert(attempt, t);
        }
    }

    /// An argument pull ended.
    pub(crate) fn arg_pulled(
        &mut self,
        attempt: Attempt,
        id: ObjectId,
        res: Result<(), PullError>,
        events: &mut TaskEvents,
    ) {
        let Some(t) = self.local.waiting_args.get_mut(&attempt) else { return };
        match res {
            Ok(()) => {
                t.missing = t.missing.saturating_sub(1);
                if t.missing == 0 {
                    if let Some(t) = self.local.waiting_args.remove(&attempt) {
                        self.local.push_ready(t);
                        self.try_dispatch(events);
                    }
                }
            }
            Err(e) => {
                if let Some(t) = self.local.waiting_args.remove(&attempt) {
                    // Retried (elsewhere, if this node is the trouble), with the pull's own kind.
                    let err = TaskError::new(e.kind(), format!("could not fetch argument {id}: {e}"));
                    self.report_failure(&t.spec, err, true);
                }
            }
        }
    }

    fn report_failure(&mut self, spec: &pb::TaskSpec, mut err: TaskError, system: bool) {
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
            started_at_ms: 0,
            ended_at_ms: now_ms(),
        };
        self.results.push((spec.owner_address.clone(), r));
    }

    fn can_start_worker(&self) -> bool {
        !self.config.external_workers
            && self.pool.live() < self.config.max_workers
            && self.pool.start_failures < MAX_START_FAILURES
    }

    /// Starts attempts that have their arguments, resources and a worker.
    pub(crate) fn try_dispatch(&mut self, events: &mut TaskEvents) {
        if self.local.ready_len() == 0 {
            return;
        }
        for shape in self.local.ready_classes() {
            let (kind, class) = (shape.0, &shape.1);
            loop {
                let queued = self.local.ready_in(&shape);
                if queued == 0 {
                    break;
                }
                if self.ledger.fits(class) {
                    if let Some(w) = self.pool.take_idle(kind) {
                        let Some(grant) = self.ledger.acquire(class) else {
                            self.pool.put_idle(w);
                            break;
                        };
                        let Some(t) = self.local.pop_ready(&shape) else {
                            self.ledger.release(class, &grant);
                            self.pool.put_idle(w);
                            break;
                        };
                        if let Some(slot) = self.pool.workers.get_mut(&w) {
                            slot.lease = Some(Lease { class: class.clone(), grant, in_flight: VecDeque::new() });
                        }
                        self.run_on(w, t, events);
                        continue;
                    }
                    if self.can_start_worker() {
                        // A new lease is possible: wait for a worker rather
                        // than queueing behind a busy one.
                        if self.pool.starting_of(kind) < queued {
                            self.start_worker(kind);
                        }
                        break;
                    }
                }
                // Every resource is taken (or workers are starting): keep
                // leased workers of this shape fed.
                match self.pool.pipeline_candidate(kind, class, self.config.pipeline_depth) {
                    Some(w) => {
                        let Some(t) = self.local.pop_ready(&shape) else { break };
                        self.run_on(w, t, events);
                    }
                    None => break,
                }
            }
        }
        if self.local.ready_len() > 0 && self.pool.start_failures >= MAX_START_FAILURES {
            for t in self.local.drain_ready() {
                let err = TaskError::new(
                    ErrorKind::WorkerStartFailed,
                    "workers fail to start on this node; see the raylet log",
                );
                self.report_failure(&t.spec, err, false);
            }
        }
    }

    /// Sends an attempt to a leased worker (through a [`Dispatch`] effect:
    /// stored arguments are read off the lock).
    fn run_on(&mut self, w: WorkerId, t: LocalTask, events: &mut TaskEvents) {
        let Some(slot) = self.pool.workers.get_mut(&w) else { return };
        let Some(tx) = slot.tx.clone() else { return };
        let mut args = Vec::with_capacity(t.spec.args.len());
        let mut stored = Vec::new();
        for (pos, a) in t.spec.args.iter().enumerate() {
            match &a.kind {
                Some(pb::arg::Kind::Value(v)) => args.push(v.clone()),
                Some(pb::arg::Kind::ObjectRef(r)) => {
                    if let Some(id) = oid(&r.object_id) {
                        stored.push((pos, id));
                    }
                    args.push(pb::ObjectValue::default());
                }
                None => args.push(pb::ObjectValue::default()),
            }
        }
        let attempt = t.attempt();
        let spec = t.spec;
        events.emit(t.task_id, pb::TaskState::TaskRunning, spec.attempt, Some(self.node_id), None, None);
        let gpu_ids = slot.lease.as_ref().map(|l| l.grant.gpu_ids()).unwrap_or_default();
        if let Some(l) = slot.lease.as_mut() {
            l.in_flight.push_back(attempt);
        }
        let task = pb::ExecuteTask {
            task_id: spec.task_id.clone(),
            job_id: spec.job_id,
            name: spec.name.clone(),
            function: spec.function.clone(),
            args,
            num_returns: spec.num_returns,
            attempt: spec.attempt,
            gpu_ids,
        };
        self.local.running.insert(
            attempt,
            Running {
                worker: w,
                owner_address: spec.owner_address,
                name: spec.name,
                function: describe_function(&spec.function),
                num_returns: spec.num_returns,
                start_ms: now_ms(),
            },
        );
        self.out.push(Effect::Dispatch(Dispatch { worker: w, attempt, tx, task, stored }));
    }

    /// A dispatch could not read an argument: the attempt fails (the owner
    /// retries or rebuilds).
    pub(crate) fn dispatch_failed(&mut self, w: WorkerId, attempt: Attempt, err: TaskError, events: &mut TaskEvents) {
        let Some(run) = self.local.running.remove(&attempt) else { return };
        let mut e = err;
        e.task_id = attempt.0.to_string();
        e.task_name = run.name.clone();
        e.function = run.function.clone();
        let spec = pb::TaskSpec {
            task_id: attempt.0.to_bytes(),
            attempt: attempt.1,
            name: run.name,
            owner_address: run.owner_address,
            ..Default::default()
        };
        self.report_failure(&spec, e, true);
        if let Some(l) = self.pool.workers.get_mut(&w).and_then(|s| s.lease.as_mut()) {
            l.in_flight.retain(|a| *a != attempt);
        }
        self.release_if_done(w);
        self.try_dispatch(events);
    }

    fn release_if_done(&mut self, w: WorkerId) {
        let Some(slot) = self.pool.workers.get_mut(&w) else { return };
        if slot.lease.as_ref().is_some_and(|l| l.in_flight.is_empty()) {
            if let Some(l) = slot.lease.take() {
                if slot.blocked() {
                    // Its CPUs were lent out; the lease gives back the rest.
                    self.ledger.reclaim(&l.class);
                }
                self.ledger.release(&l.class, &l.grant);
            }
            self.pool.put_idle(w);
        }
    }

    fn start_worker(&mut self, kind: WorkerKind) {
        let id = WorkerId::random();
        self.pool.starting(id, kind);
        self.out.push(Effect::SpawnWorker(id, kind));
    }

    /// Starts `n` workers ahead of demand.
    pub(crate) fn prestart(&mut self, n: usize) {
        for _ in 0..n {
            if self.can_start_worker() {
                self.start_worker(WorkerKind::Native);
            }
        }
    }

    pub(crate) fn worker_spawned(&mut self, id: WorkerId, pid: u32) {
        self.pool.spawned(id, pid);
    }

    pub(crate) fn worker_spawn_failed(&mut self, id: WorkerId, events: &mut TaskEvents) {
        self.pool.spawn_failed(id);
        self.try_dispatch(events);
    }

    /// A worker process connected and said hello.
    pub(crate) fn on_worker_connected(
        &mut self,
        id: WorkerId,
        pid: u32,
        tx: mpsc::UnboundedSender<pb::ToWorker>,
        events: &mut TaskEvents,
    ) {
        self.pool.connected(id, pid, tx);
        self.try_dispatch(events);
    }

    /// A worker's process exited or its connection closed: its attempts fail
    /// as system failures (their owners retry them).
    pub(crate) fn on_worker_exit(&mut self, id: WorkerId, reason: &str, events: &mut TaskEvents) {
        let Some(slot) = self.pool.exited(id) else { return };
        if slot.tx.is_none() {
            tracing::warn!(worker = %id, %reason, "worker exited before connecting");
        }
        if let Some(l) = slot.lease {
            if slot.blocks > 0 {
                self.ledger.reclaim(&l.class);
            }
            self.ledger.release(&l.class, &l.grant);
            for attempt in l.in_flight {
                let Some(run) = self.local.running.remove(&attempt) else { continue };
                let err = TaskError {
                    kind: ErrorKind::WorkerDied,
                    message: format!("worker {id} (pid {}) {reason} while running the task", slot.pid),
                    task_id: attempt.0.to_string(),
                    task_name: run.name.clone(),
                    function: run.function.clone(),
                    node_id: self.node_id.to_string(),
                    attempt: attempt.1,
                    ..Default::default()
                };
                let r = pb::TaskResult {
                    task_id: attempt.0.to_bytes(),
                    attempt: attempt.1,
                    node_id: self.node_id.to_bytes(),
                    node_address: self.address.clone(),
                    returns: Vec::new(),
                    error: Some((&err).into()),
                    system_failure: true,
                    started_at_ms: run.start_ms,
                    ended_at_ms: now_ms(),
                };
                self.results.push((run.owner_address, r));
            }
        }
        self.try_dispatch(events);
    }

    /// A worker finished an attempt (its large values already stored).
    pub(crate) fn on_task_done(&mut self, w: WorkerId, done: Done, events: &mut TaskEvents) {
        let (task_id, attempt_no) = done.attempt;
        let Some(run) = self.local.running.remove(&done.attempt) else {
            // Not running here (cancelled, or its worker was declared dead):
            // nobody will read what it stored — unless another attempt of the
            // task is here, whose returns have the same ids.
            let sibling = self.local.running.keys().any(|(t, _)| *t == task_id);
            for (i, r) in done.returns.iter().enumerate().filter(|_| !sibling) {
                if matches!(r, Return::Stored(..)) {
                    self.out.push(Effect::Delete(task_id.return_id(i as u32)));
                }
            }
            return;
        };
        self.stats.tasks_executed += 1;
        self.metrics.observe_execution(&run.function, run.start_ms, now_ms());
        let mut result = pb::TaskResult {
            task_id: task_id.to_bytes(),
            attempt: attempt_no,
            node_id: self.node_id.to_bytes(),
            node_address: self.address.clone(),
            returns: Vec::new(),
            error: None,
            system_failure: false,
            started_at_ms: run.start_ms,
            ended_at_ms: now_ms(),
        };
        let context = |mut e: TaskError| {
            e.task_id = task_id.to_string();
            e.task_name = run.name.clone();
            e.function = run.function.clone();
            e.node_id = self.node_id.to_string();
            e.attempt = attempt_no;
            e
        };
        if let Some(e) = done.error {
            let mut e = context(e);
            if e.stderr_tail.is_empty() {
                e.stderr_tail = done.stderr_tail.clone();
            }
            result.error = Some((&e).into());
        } else if done.returns.len() != run.num_returns as usize {
            for (i, r) in done.returns.iter().enumerate() {
                if matches!(r, Return::Stored(..)) {
                    self.out.push(Effect::Delete(task_id.return_id(i as u32)));
                }
            }
            let e = context(TaskError::new(
                ErrorKind::TaskFailed,
                format!(
                    "the function returned {} values but the task declares {}",
                    done.returns.len(),
                    run.num_returns
                ),
            ));
            result.error = Some((&e).into());
        } else {
            for (i, r) in done.returns.into_iter().enumerate() {
                let id = task_id.return_id(i as u32).to_bytes();
                result.returns.push(match r {
                    Return::Inline(v) => pb::ReturnObject {
                        object_id: id,
                        inline_value: Some(v),
                        stored_size: 0,
                        nested_refs: Vec::new(),
                    },
                    Return::Stored(size, nested_refs) => {
                        pb::ReturnObject { object_id: id, inline_value: None, stored_size: size, nested_refs }
                    }
                });
            }
        }
        self.results.push((run.owner_address.clone(), result));
        // Keep the lease busy with the next attempt of its shape while no
        // other shape is waiting; otherwise give the resources back.
        let Some(slot) = self.pool.workers.get_mut(&w) else { return };
        let mut refill = None;
        let kind = slot.kind;
        if let Some(l) = slot.lease.as_mut() {
            l.in_flight.retain(|a| *a != done.attempt);
            let shape = (kind, l.class.clone());
            if l.in_flight.is_empty() && slot.blocks == 0 && self.local.only_class_ready(&shape) {
                refill = Some(shape);
            }
        }
        if let Some(class) = refill {
            if let Some(t) = self.local.pop_ready(&class) {
                self.run_on(w, t, events);
                return;
            }
        }
        self.release_if_done(w);
        self.try_dispatch(events);
    }

    /// Stops an attempt this node was given: drops it from the queues, or
    /// kills its worker when forced. Results of a cancelled task are ignored
    /// by its owner.
    pub(crate) fn cancel(&mut self, attempt: Attempt, force: bool, recursive: bool) {
        self.local.remove_queued(attempt);
        let Some(w) = self.local.running.get(&attempt).map(|r| r.worker) else { return };
        if recursive {
            self.cancel_children.push((w, force));
        }
        if force {
            // The worker and whatever its task started (commands and their children).
            if let Some(pid) = self.pool.workers.get(&w).map(|s| s.pid).filter(|p| *p > 0) {
                self.out.push(Effect::KillTree(pid));
            }
        } else if let Some(tx) = self.pool.workers.get(&w).and_then(|s| s.tx.as_ref()) {
            // Interrupted where the worker can (Python); the owner has
            // already failed the task as cancelled, whatever it answers.
            let interrupt = pb::InterruptTask { task_id: attempt.0.to_bytes(), attempt: attempt.1 };
            let _ = tx.send(pb::ToWorker { kind: Some(pb::to_worker::Kind::Interrupt(interrupt)) });
        }
    }

    /// A worker's nested `get` must wait: lend its CPUs out (first block only).
    pub(crate) fn worker_blocked(&mut self, w: WorkerId, events: &mut TaskEvents) {
        if let Some(Some(class)) = self.pool.block(w) {
            self.ledger.lend(&class);
            self.try_dispatch(events);
        }
    }

    /// A worker's nested `get` ended: take its CPUs back (last unblock only).
    pub(crate) fn worker_unblocked(&mut self, w: WorkerId) {
        if let Some(Some(class)) = self.pool.unblock(w) {
            self.ledger.reclaim(&class);
        }
    }
}
