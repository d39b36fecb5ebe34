//! The coordinator of a raylet's state machine: the [`Owner`] and the
//! [`Executor`] behind one mutex, and the plumbing between them.
//!
//! Each call into the core runs owner and executor logic on plain data;
//! work that crosses between them (an attempt placed on this node, a result
//! for a task this node owns, a local cancel) is settled inside the lock by
//! [`Core::settle`]; everything else they ask for is an [`Effect`] that the
//! [`CoreGuard`](super::CoreGuard) carries out once the lock is released.
//! Methods never block or await.

use std::sync::Arc;

use bytes::Bytes;
use shoal_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::error::TaskError;
use crate::ids::{NodeId, ObjectId, TaskId, WorkerId};
use crate::metrics::RayletMetrics;
use crate::raylet::effects::Effect;
use crate::raylet::events::TaskEvents;
use crate::raylet::executor::worker_pool::Attempt;
use crate::raylet::executor::{Done, Executor};
use crate::raylet::object_manager::PullError;
use crate::raylet::object_store::ObjectStore;
use crate::raylet::owner::reference_counter::PutError;
use crate::raylet::owner::{Lookup, Owner};
use crate::raylet::peers::PeerMsg;
use crate::raylet::RayletConfig;

pub(crate) struct Core {
    pub node_id: NodeId,
    pub address: String,
    pub owner: Owner,
    pub exec: Executor,
    pub(crate) store: Arc<ObjectStore>,
}

impl Core {
    pub(crate) fn new(
        node_id: NodeId,
        address: String,
        config: Arc<RayletConfig>,
        store: Arc<ObjectStore>,
        metrics: Arc<RayletMetrics>,
    ) -> Self {
        let mut core = Core {
            node_id,
            owner: Owner::new(node_id, address.clone(), config.clone(), TaskEvents::new(metrics.clone())),
            exec: Executor::new(node_id, address.clone(), config, store.clone(), metrics),
            address,
            store,
        };
        core.sync_view();
        core
    }

    /// Gives the owner's placement this node's exact state. Called whenever
    /// the executor may have changed, before the owner places again: at the
    /// start of the core and in every settle, which runs before each lock
    /// release, so every call into the owner sees the node as it is.
    fn sync_view(&mut self) {
        let e = &self.exec;
        let queued = e.local.queued() as u32;
        let labels = &self.owner.config.labels;
        self.owner.view.set_local(self.node_id, &self.address, e.ledger.total(), e.ledger.available(), queued, labels);
    }

    /// Moves work between owner and executor until neither has any left.
    pub(crate) fn settle(&mut self) {
        loop {
            self.sync_view();
            let local = std::mem::take(&mut self.owner.local);
            let cancels = std::mem::take(&mut self.owner.cancel_local);
            let results = std::mem::take(&mut self.exec.results);
            let children = std::mem::take(&mut self.exec.cancel_children);
            if local.is_empty() && cancels.is_empty() && results.is_empty() && children.is_empty() {
                return;
            }
            for spec in local {
                self.exec.enqueue(spec, &mut self.owner.events);
            }
            for (attempt, force, recursive) in cancels {
                self.exec.cancel(attempt, force, recursive);
            }
            for (w, force) in children {
                self.owner.cancel_submitted_by(w, force);
            }
            // The executor changed above; results may place retried tasks.
            self.sync_view();
            for (owner, r) in results {
                if owner == self.address {
                    let attempt = TaskId::from_slice(&r.task_id).ok().map(|t| (t, r.attempt));
                    self.owner.apply_result(r);
                    if let Some((t, a)) = attempt {
                        self.owner.release_lent(t, a);
                    }
                } else {
                    self.owner.out.push(Effect::Peer { addr: owner, msg: PeerMsg::Result(r) });
                }
            }
        }
    }

    /// Settles, then hands over what is to be done off the lock.
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        self.settle();
        let mut out = std::mem::take(&mut self.owner.out);
        out.append(&mut self.exec.out);
        out
    }

    // Sessions and references (owner).

    pub(crate) fn open_session(&mut self, worker_id: Option<WorkerId>) -> (u64, watch::Receiver<u64>) {
        self.owner.open_session(worker_id)
    }

    pub(crate) fn session_seq(&self, session: u64) -> Option<watch::Receiver<u64>> {
        self.owner.session_seq(session)
    }

    pub(crate) fn session_worker(&self, session: u64) -> Option<WorkerId> {
        self.owner.session_worker(session)
    }

    pub(crate) fn mark_applied(&mut self, session: u64, seq: u64) {
        self.owner.mark_applied(session, seq)
    }

    pub(crate) fn close_session(&mut self, session: u64) {
        self.owner.close_session(session)
    }

    pub(crate) fn update_refs(&mut self, session: u64, add: &[Bytes], remove: &[Bytes], borrow: &[pb::ObjectRef]) {
        self.owner.update_refs(session, add, remove, borrow)
    }

    pub(crate) fn check_put(&self, session: u64, id: ObjectId) -> Result<(), PutError> {
        self.owner.check_put(session, id)
    }

    pub(crate) fn put(
        &mut self,
        session: u64,
        id: ObjectId,
        size: u64,
        inline: Option<pb::ObjectValue>,
        nested: &[pb::ObjectRef],
    ) -> Result<(), PutError> {
        self.owner.put(session, id, size, inline, nested)
    }

    pub(crate) fn lookup(&mut self, id: ObjectId, waiter: Option<&mpsc::Sender<ObjectId>>) -> Lookup {
        self.owner.lookup(id, waiter)
    }

    pub(crate) fn unwatch(&mut self, ids: &[ObjectId], waiter: &mpsc::Sender<ObjectId>) {
        self.owner.unwatch(ids, waiter)
    }

    pub(crate) fn add_copy_here(&mut self, id: ObjectId) {
        self.owner.add_copy_here(id)
    }

    pub(crate) fn local_copy_lost(&mut self, id: ObjectId, why: &str) {
        self.owner.local_copy_lost(id, why)
    }

    // Tasks (owner).

    pub(crate) fn submit(&mut self, session: u64, specs: Vec<pb::TaskSpec>) -> Vec<String> {
        self.owner.submit(session, specs)
    }

    pub(crate) fn cancel(&mut self, ids: &[Bytes], force: bool, recursive: bool) {
        self.owner.cancel(ids, force, recursive)
    }

    pub(crate) fn apply_result(&mut self, r: pb::TaskResult) {
        self.owner.apply_result(r)
    }

    pub(crate) fn on_spillback(&mut self, from: NodeId, s: pb::Spillback) {
        self.owner.on_spillback(from, s)
    }

    pub(crate) fn on_dispatch_failed(&mut self, node: Option<NodeId>, tasks: Vec<(TaskId, u32)>, reason: &str) {
        self.owner.on_dispatch_failed(node, tasks, reason)
    }

    pub(crate) fn on_node_dead(&mut self, node: NodeId) {
        self.owner.on_node_dead(node)
    }

    pub(crate) fn retry_infeasible(&mut self) {
        self.owner.retry_infeasible()
    }

    pub(crate) fn expire_infeasible(&mut self) {
        self.owner.expire_infeasible()
    }

    pub(crate) fn schedule_retry(&mut self, task: TaskId, attempt: u32) {
        self.owner.schedule_retry(task, attempt)
    }

    // Attempts on this node (executor).

    pub(crate) fn should_spillback(&self, spec: &pb::TaskSpec) -> Option<String> {
        self.exec.should_spillback(spec, &self.owner.view)
    }

    pub(crate) fn enqueue_local(&mut self, spec: pb::TaskSpec) {
        self.exec.enqueue(spec, &mut self.owner.events)
    }

    pub(crate) fn cancel_local(&mut self, task_id: TaskId, attempt: u32, force: bool, recursive: bool) {
        self.exec.cancel((task_id, attempt), force, recursive)
    }

    pub(crate) fn arg_pulled(&mut self, attempt: Attempt, id: ObjectId, res: Result<(), PullError>) {
        self.exec.arg_pulled(attempt, id, res, &mut self.owner.events)
    }

    pub(crate) fn dispatch_failed(&mut self, w: WorkerId, attempt: Attempt, err: TaskError) {
        self.exec.dispatch_failed(w, attempt, err, &mut self.owner.events)
    }

    pub(crate) fn prestart(&mut self, n: usize) {
        self.exec.prestart(n)
    }

    pub(crate) fn worker_spawned(&mut self, id: WorkerId, pid: u32) {
        self.exec.worker_spawned(id, pid)
    }

    pub(crate) fn worker_spawn_failed(&mut self, id: WorkerId) {
        self.exec.worker_spawn_failed(id, &mut self.owner.events)
    }

    pub(crate) fn on_worker_connected(&mut self, id: WorkerId, pid: u32, tx: mpsc::UnboundedSender<pb::ToWorker>) {
        self.exec.on_worker_connected(id, pid, tx, &mut self.owner.events)
    }

    pub(crate) fn on_worker_exit(&mut self, id: WorkerId, reason: &str) {
        self.exec.on_worker_exit(id, reason, &mut self.owner.events)
    }

    pub(crate) fn on_task_done(&mut self, w: WorkerId, done: Done) {
        self.exec.on_task_done(w, done, &mut self.owner.events)
    }

    pub(crate) fn worker_blocked(&mut self, w: WorkerId) {
        self.exec.worker_blocked(w, &mut self.owner.events)
    }

    pub(crate) fn worker_unblocked(&mut self, w: WorkerId) {
        self.exec.worker_unblocked(w)
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.exec.pool.pids()
    }
}

#[cfg(test)]
mod tests;
