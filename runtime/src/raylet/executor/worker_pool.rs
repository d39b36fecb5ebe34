//! The worker pool: the worker processes of this node, which of them are
//! idle, starting, leased or blocked.
//!
//! A worker is leased to one resource shape at a time; its lease holds a
//! [`Grant`] from the ledger and the attempts sent to it, in order. A worker
//! that calls `get` from inside a task is *blocked*: blocks are counted (a
//! worker may have several `get`s in flight from different threads), and the
//! lease's CPUs are lent out from the first block to the last unblock.
//!
//! The pool keeps no process handles: starting and killing processes are
//! effects the coordinator carries out off the lock.

use std::collections::{HashMap, VecDeque};

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::ids::{TaskId, WorkerId};
use crate::raylet::executor::ledger::Grant;
use crate::resources::ResourceSet;

/// The kind of process a task runs in. Today every task runs in a native
/// `shoal worker` (builtins, and the programs of `exec` tasks, which it
/// starts); the pool keeps idle and starting workers by kind so that other
/// kinds (a Python interpreter) get workers of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum WorkerKind {
    /// `shoal worker`: builtins and `exec` tasks.
    Native,
    /// A Python interpreter running `shoal._worker`: Python functions.
    Python,
}

impl WorkerKind {
    /// The kind of worker that runs `f`.
    pub(crate) fn of(f: &Option<pb::FunctionDescriptor>) -> WorkerKind {
        match f.as_ref().and_then(|f| f.kind.as_ref()) {
            Some(pb::function_descriptor::Kind::Builtin(_) | pb::function_descriptor::Kind::Exec(_)) | None => {
                WorkerKind::Native
            }
            Some(pb::function_descriptor::Kind::Python(_)) => WorkerKind::Python,
        }
    }
}

/// Consecutive worker start failures after which queued tasks fail.
pub(crate) const MAX_START_FAILURES: u32 = 5;

/// One attempt of one task: the key of everything the executor tracks,
/// because two attempts of a task may meet on one node.
pub(crate) type Attempt = (TaskId, u32);

/// What a leased worker holds.
#[derive(Debug)]
pub(crate) struct Lease {
    pub class: ResourceSet,
    pub grant: Grant,
    /// Attempts sent to the worker and not yet done, oldest first.
    pub in_flight: VecDeque<Attempt>,
}

pub(crate) struct WorkerSlot {
    pub kind: WorkerKind,
    pub pid: u32,
    pub tx: Option<mpsc::UnboundedSender<pb::ToWorker>>,
    pub lease: Option<Lease>,
    /// `get` calls of this worker now waiting.
    pub blocks: u32,
}

impl WorkerSlot {
    pub(crate) fn blocked(&self) -> bool {
        self.blocks > 0
    }
}

/// The node's workers.
#[derive(Default)]
pub(crate) struct WorkerPool {
    pub workers: HashMap<WorkerId, WorkerSlot>,
    /// Connected workers without a lease, by kind.
    idle: HashMap<WorkerKind, Vec<WorkerId>>,
    /// Workers started and not yet connected, by kind.
    starting: HashMap<WorkerKind, usize>,
    pub start_failures: u32,
    /// Workers started since the raylet began.
    pub started_total: u64,
}

impl WorkerPool {
    /// Workers counted against the node's limit: blocked workers are not.
    pub(crate) fn live(&self) -> usize {
        self.workers.values().filter(|w| !w.blocked()).count()
    }

    /// Workers of `kind` started and not yet connected.
    pub(crate) fn starting_of(&self, kind: WorkerKind) -> usize {
        self.starting.get(&kind).copied().unwrap_or(0)
    }

    /// Connected workers without a lease.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// An idle worker of `kind`, taken out of the idle list.
    pub(crate) fn take_idle(&mut self, kind: WorkerKind) -> Option<WorkerId> {
        self.idle.get_mut(&kind)?.pop()
    }

    /// Makes a connected worker idle again.
    pub(crate) fn put_idle(&mut self, id: WorkerId) {
        let Some(slot) = self.workers.get(&id) else { return };
        if slot.tx.is_none() {
            return;
        }
        let list = self.idle.entry(slot.kind).or_default();
        if !list.contains(&id) {
            list.push(id);
        }
    }

    fn not_starting(&mut self, kind: WorkerKind) {
        if let Some(n) = self.starting.get_mut(&kind) {
            *n = n.saturating_sub(1);
        }
    }

    /// Records a worker of `kind` about to be started.
    pub(crate) fn starting(&mut self, id: WorkerId, kind: WorkerKind) {
        *self.starting.entry(kind).or_insert(0) += 1;
        self.started_total += 1;
        self.workers.insert(id, WorkerSlot { kind, pid: 0, tx: None, lease: None, blocks: 0 });
    }

    /// The process of a worker being started is running as `pid`.
    pub(crate) fn spawned(&mut self, id: WorkerId, pid: u32) {
        if let Some(s) = self.workers.get_mut(&id) {
            if s.pid == 0 {
                s.pid = pid;
            }
        }
    }

    /// Starting a worker failed before it ran.
    pub(crate) fn spawn_failed(&mut self, id: WorkerId) {
        if let Some(kind) = self.workers.get(&id).filter(|s| s.tx.is_none()).map(|s| s.kind) {
            self.workers.remove(&id);
            self.not_starting(kind);
            self.start_failures += 1;
        }
    }

    /// A worker connected (one this raylet started, or an external one,
    /// which is native).
    pub(crate) fn connected(&mut self, id: WorkerId, pid: u32, tx: mpsc::UnboundedSender<pb::ToWorker>) {
        match self.workers.get_mut(&id) {
            Some(slot) => {
                let was_starting = slot.tx.is_none();
                let kind = slot.kind;
                slot.tx = Some(tx);
                slot.pid = pid;
                if was_starting {
                    self.not_starting(kind);
                }
            }
            None => {
                let slot = WorkerSlot { kind: WorkerKind::Native, pid, tx: Some(tx), lease: None, blocks: 0 };
                self.workers.insert(id, slot);
            }
        }
        self.start_failures = 0;
        self.put_idle(id);
    }

    /// Removes a worker that exited; returns its slot.
    pub(crate) fn exited(&mut self, id: WorkerId) -> Option<WorkerSlot> {
        let slot = self.workers.remove(&id)?;
        if let Some(list) = self.idle.get_mut(&slot.kind) {
            list.retain(|w| *w != id);
        }
        if slot.tx.is_none() {
            self.not_starting(slot.kind);
            self.start_failures += 1;
        }
        Some(slot)
    }

    /// Counts one more waiting `get`; returns the lease's class when this
    /// is the worker's first block (its CPUs are to be lent out).
    pub(crate) fn block(&mut self, id: WorkerId) -> Option<Option<ResourceSet>> {
        let slot = self.workers.get_mut(&id)?;
        slot.blocks += 1;
        (slot.blocks == 1).then(|| slot.lease.as_ref().map(|l| l.class.clone()))
    }

    /// Counts one `get` done; returns the lease's class when it was the
    /// last (the CPUs are to be taken back).
    pub(crate) fn unblock(&mut self, id: WorkerId) -> Option<Option<ResourceSet>> {
        let slot = self.workers.get_mut(&id)?;
        if slot.blocks == 0 {
            return None;
        }
        slot.blocks -= 1;
        (slot.blocks == 0).then(|| slot.lease.as_ref().map(|l| l.class.clone()))
    }

    /// A connected, unblocked worker already leased to `class` with room
    /// for one more attempt (fewest in flight first).
    pub(crate) fn pipeline_candidate(&self, kind: WorkerKind, class: &ResourceSet, depth: usize) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, s)| s.kind == kind && !s.blocked() && s.tx.is_some())
            .filter_map(|(id, s)| s.lease.as_ref().filter(|l| &l.class == class).map(|l| (*id, l.in_flight.len())))
            .filter(|(_, n)| *n < depth)
            .min_by_key(|(n_id, n)| (*n, *n_id))
            .map(|(id, _)| id)
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.workers.values().map(|w| w.pid).filter(|p| *p > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_counted_and_only_the_first_and_last_move_resources() {
        let mut p = WorkerPool::default();
        let w = WorkerId::random();
        let (tx, _rx) = mpsc::unbounded_channel();
        p.connected(w, 7, tx);
        let class = ResourceSet::new().with(crate::resources::CPU, 1.0);
        p.workers.get_mut(&w).unwrap().lease =
            Some(Lease { class: class.clone(), grant: Grant::default(), in_flight: VecDeque::new() });
        assert_eq!(p.block(w), Some(Some(class.clone())));
        assert_eq!(p.block(w), None, "a second get does not lend again");
        assert_eq!(p.unblock(w), None, "one get is still waiting");
        assert_eq!(p.unblock(w), Some(Some(class)));
        assert_eq!(p.unblock(w), None, "an unmatched unblock changes nothing");
        assert_eq!(p.live(), 1);
    }

    #[test]
    fn a_worker_that_dies_before_connecting_counts_as_a_start_failure() {
        let mut p = WorkerPool::default();
        let w = WorkerId::random();
        p.starting(w, WorkerKind::Native);
        assert_eq!(p.starting_of(WorkerKind::Native), 1);
        assert!(p.exited(w).is_some());
        assert_eq!((p.starting_of(WorkerKind::Native), p.start_failures), (0, 1));
        let w2 = WorkerId::random();
        p.starting(w2, WorkerKind::Native);
        p.spawn_failed(w2);
        assert_eq!((p.starting_of(WorkerKind::Native), p.start_failures, p.workers.len()), (0, 2, 0));
        assert_eq!(p.take_idle(WorkerKind::Native), None);
    }
}
