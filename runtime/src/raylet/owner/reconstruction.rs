//! Lineage reconstruction: when every copy of an object is lost, its owner
//! re-runs the task that made it, first rebuilding that task's own lost
//! arguments, recursively, within each task's retry budget.

use shoal_proto::v1 as pb;

use crate::error::{ErrorKind, TaskError};
use crate::ids::ObjectId;
use crate::raylet::owner::{ArgHold, ObjState, Owner, TaskState};

impl Owner {
    /// Re-runs the task that created `id` because every copy of it was lost,
    /// rebuilding its own lost arguments first (lineage reconstruction).
    #[allow(clippy::result_large_err)] // internal; the error becomes an object's value
    pub(crate) fn reconstruct(&mut self, id: ObjectId) -> Result<(), TaskError> {
        if id.is_put() {
            return Err(TaskError::new(
                ErrorKind::ObjectLost,
                format!("object {id} was made by `put` and every copy is lost; it cannot be rebuilt"),
            ));
        }
        let creator = id.task_id();
        let Some(t) = self.tasks.get_mut(&creator) else {
            return Err(TaskError::new(
                ErrorKind::ObjectLost,
                format!("object {id} is lost and the task that made it is no longer known"),
            ));
        };
        if t.lineage_evicted {
            return Err(TaskError::new(ErrorKind::ObjectLost,
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
            return Err(TaskError::new(
                ErrorKind::ObjectLost,
                format!("object {id} is lost and its task did not succeed"),
            ));
        }
        let max = t.spec.max_retries;
        if max >= 0 && t.retries_used >= max as u32 {
            return Err(TaskError::new(
                ErrorKind::ObjectLost,
                format!("object {id} is lost and its task `{}` has used all {max} retries", t.spec.name),
            ));
        }
        t.retries_used += 1;
        t.spec.attempt += 1;
        t.spec.spillback_count = 0;
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
                        ErrorKind::ObjectLost,
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
}
