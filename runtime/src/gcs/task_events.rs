//! The task-event sink behind the state API: the latest state of each task
//! as raylets report its transitions, with a bounded history.

use std::collections::{HashMap, VecDeque};

use shoal_proto::v1 as pb;

use crate::ids::TaskId;

/// Default number of tasks remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// One task as the state API shows it.
#[derive(Clone, Debug, Default)]
pub struct TaskRecord {
    /// Job.
    pub job_id: u32,
    /// Name.
    pub name: String,
    /// Function descriptor.
    pub function: String,
    /// Latest state.
    pub state: i32,
    /// Latest attempt.
    pub attempt: u32,
    /// Latest node.
    pub node_id: Vec<u8>,
    /// Every event, in arrival order.
    pub events: Vec<pb::TaskEvent>,
}

/// Latest state per task, oldest evicted first beyond the capacity.
pub struct TaskEventStore {
    tasks: HashMap<TaskId, TaskRecord>,
    order: VecDeque<TaskId>,
    capacity: usize,
    /// Events raylets reported dropping.
    pub dropped: u64,
    /// Tasks evicted to stay within the capacity.
    pub evicted: u64,
}

impl TaskEventStore {
    /// An empty store remembering at most `capacity` tasks.
    pub fn new(capacity: usize) -> Self {
        TaskEventStore {
            tasks: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
            evicted: 0,
        }
    }

    /// Merges a batch of events.
    pub fn record(&mut self, batch: pb::ReportTaskEventsRequest) {
        self.dropped += batch.dropped;
        for e in batch.events {
            let Ok(id) = TaskId::from_slice(&e.task_id) else { continue };
            let rec = match self.tasks.get_mut(&id) {
                Some(r) => r,
                None => {
                    while self.tasks.len() >= self.capacity {
                        let Some(old) = self.order.pop_front() else { break };
                        if self.tasks.remove(&old).is_some() {
                            self.evicted += 1;
                        }
                    }
                    self.order.push_back(id);
                    self.tasks.entry(id).or_default()
                }
            };
            if !e.name.is_empty() {
                rec.name = e.name.clone();
            }
            if !e.function.is_empty() {
                rec.function = e.function.clone();
            }
            rec.job_id = e.job_id;
            if e.attempt >= rec.attempt {
                rec.attempt = e.attempt;
                // A late RUNNING from the executor must not undo FINISHED from the owner.
                let terminal = matches!(
                    pb::TaskState::try_from(rec.state),
                    Ok(pb::TaskState::TaskFinished | pb::TaskState::TaskFailed | pb::TaskState::TaskCancelled)
                );
                if !terminal || e.attempt > rec.attempt || rec.events.is_empty() {
                    rec.state = e.state;
                }
                if !e.node_id.is_empty() {
                    rec.node_id = e.node_id.to_vec();
                }
            }
            rec.events.push(e);
        }
    }

    /// A task's record.
    pub fn get(&self, id: &TaskId) -> Option<&TaskRecord> {
        self.tasks.get(id)
    }

    /// Number of tasks remembered.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is remembered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
