//! The local task manager's queues: attempts granted to this node waiting
//! for their arguments, attempts ready to run (by resource shape, oldest
//! first) and attempts running on a worker.
//!
//! Everything is keyed by [`Attempt`] (task id and attempt number): a retry
//! of a task can reach this node while its earlier attempt still runs here,
//! and the two must never be mistaken for each other.

use std::collections::{BTreeMap, HashMap, VecDeque};

use shoal_proto::v1 as pb;

use crate::ids::{TaskId, WorkerId};
use crate::raylet::executor::worker_pool::{Attempt, WorkerKind};
use crate::resources::ResourceSet;

/// What an attempt needs to run: a worker of a kind and a lease of a
/// resource shape. Ready attempts queue by it.
pub(crate) type Shape = (WorkerKind, ResourceSet);

/// An attempt granted to this node.
pub(crate) struct LocalTask {
    pub spec: pb::TaskSpec,
    pub task_id: TaskId,
    pub kind: WorkerKind,
    pub resources: ResourceSet,
    /// Arguments not yet in the local store.
    pub missing: u32,
}

impl LocalTask {
    pub(crate) fn attempt(&self) -> Attempt {
        (self.task_id, self.spec.attempt)
    }
}

/// An attempt running on a worker.
pub(crate) struct Running {
    pub worker: WorkerId,
    pub owner_address: String,
    pub name: String,
    pub function: String,
    pub num_returns: u32,
    pub start_ms: u64,
}

/// The queues.
#[derive(Default)]
pub(crate) struct LocalTasks {
    pub waiting_args: HashMap<Attempt, LocalTask>,
    ready: BTreeMap<Shape, VecDeque<LocalTask>>,
    ready_len: usize,
    pub running: HashMap<Attempt, Running>,
}

impl LocalTasks {
    /// Attempts queued (waiting for arguments or for resources).
    pub(crate) fn queued(&self) -> usize {
        self.waiting_args.len() + self.ready_len
    }

    pub(crate) fn ready_len(&self) -> usize {
        self.ready_len
    }

    /// The shapes with ready attempts.
    pub(crate) fn ready_classes(&self) -> Vec<Shape> {
        self.ready.keys().cloned().collect()
    }

    /// Attempts ready in `class`.
    pub(crate) fn ready_in(&self, class: &Shape) -> usize {
        self.ready.get(class).map_or(0, VecDeque::len)
    }

    /// Whether `class` is the only shape with ready attempts.
    pub(crate) fn only_class_ready(&self, class: &Shape) -> bool {
        self.ready.len() == 1 && self.ready.contains_key(class)
    }

    pub(crate) fn push_ready(&mut self, t: LocalTask) {
        self.ready_len += 1;
        self.ready.entry((t.kind, t.resources.clone())).or_default().push_back(t);
    }

    pub(crate) fn pop_ready(&mut self, class: &Shape) -> Option<LocalTask> {
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

    /// Takes every ready attempt out.
    pub(crate) fn drain_ready(&mut self) -> Vec<LocalTask> {
        self.ready_len = 0;
        std::mem::take(&mut self.ready).into_values().flatten().collect()
    }

    /// Drops a queued attempt; returns whether it was queued.
    pub(crate) fn remove_queued(&mut self, a: Attempt) -> bool {
        if self.waiting_args.remove(&a).is_some() {
            return true;
        }
        let mut removed = false;
        for q in self.ready.values_mut() {
            let before = q.len();
            q.retain(|t| t.attempt() != a);
            removed |= q.len() != before;
        }
        if removed {
            self.ready.retain(|_, q| !q.is_empty());
            self.ready_len = self.ready.values().map(VecDeque::len).sum();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;

    fn task(id: TaskId, attempt: u32, cpus: f64) -> LocalTask {
        LocalTask {
            spec: pb::TaskSpec { task_id: id.to_bytes(), attempt, ..Default::default() },
            task_id: id,
            kind: WorkerKind::Native,
            resources: ResourceSet::new().with(crate::resources::CPU, cpus),
            missing: 0,
        }
    }

    #[test]
    fn ready_attempts_queue_by_shape_oldest_first_and_attempts_stay_apart() {
        let t = TaskId::random(JobId(1));
        let mut q = LocalTasks::default();
        q.push_ready(task(t, 0, 1.0));
        q.push_ready(task(t, 1, 1.0));
        q.push_ready(task(TaskId::random(JobId(1)), 0, 2.0));
        assert_eq!((q.queued(), q.ready_classes().len()), (3, 2));
        assert!(q.remove_queued((t, 1)), "the retry is removed, not the first attempt");
        let one = (WorkerKind::Native, ResourceSet::new().with(crate::resources::CPU, 1.0));
        assert_eq!(q.pop_ready(&one).map(|t| t.spec.attempt), Some(0));
        assert!(q.pop_ready(&one).is_none());
        assert_eq!(q.ready_len(), 1);
        assert_eq!(q.drain_ready().len(), 1);
        assert_eq!(q.queued(), 0);
    }
}
