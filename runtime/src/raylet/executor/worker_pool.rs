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
    /// Connected workers without a lease.
    pub idle: Vec<WorkerId>,
    /// Workers started and not yet connected.
    pub starting: usize,
    pub start_failures: u32,
    /// Workers started since the raylet began.
    pub started_total: u64,
}

impl WorkerPool {
    /// Workers counted against the node's limit: blocked workers are not.
    pub(crate) fn live(&self) -> usize {
        self.workers.values().filter(|w| !w.blocked()).count()
    }

    /// Records a worker about to be started.
    pub(crate) fn starting(&mut self, id: WorkerId) {
        self.starting += 1;
        self.started_total += 1;
        self.workers.insert(id, WorkerSlot { pid: 0, tx: None, lease: None, blocks: 0 });
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
        if self.workers.get(&id).is_some_and(|s| s.tx.is_none()) {
            self.workers.remove(&id);
            self.starting = self.starting.saturating_sub(1);
            self.start_failures += 1;
        }
    }

    /// A worker connected (one this raylet started, or an external one).
    pub(crate) fn connected(&mut self, id: WorkerId, pid: u32, tx: mpsc::UnboundedSender<pb::ToWorker>) {
        match self.workers.get_mut(&id) {
            Some(slot) => {
                if slot.tx.is_none() {
                    self.starting = self.starting.saturating_sub(1);
                }
                slot.tx = Some(tx);
                slot.pid = pid;
            }
            None => {
                self.workers.insert(id, WorkerSlot { pid, tx: Some(tx), lease: None, blocks: 0 });
            }
        }
        self.start_failures = 0;
        if !self.idle.contains(&id) {
            self.idle.push(id);
        }
    }

    /// Removes a worker that exited; returns its slot.
    pub(crate) fn exited(&mut self, id: WorkerId) -> Option<WorkerSlot> {
        let slot = self.workers.remove(&id)?;
        self.idle.retain(|w| *w != id);
        if slot.tx.is_none() {
            self.starting = self.starting.saturating_sub(1);
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
    pub(crate) fn pipeline_candidate(&self, class: &ResourceSet, depth: usize) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, s)| !s.blocked() && s.tx.is_some())
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
        p.starting(w);
        assert_eq!(p.starting, 1);
        assert!(p.exited(w).is_some());
        assert_eq!((p.starting, p.start_failures), (0, 1));
        let w2 = WorkerId::random();
        p.starting(w2);
        p.spawn_failed(w2);
        assert_eq!((p.starting, p.start_failures, p.workers.len()), (0, 2, 0));
    }
}
