//! The task-event store behind the state API: the latest state of each task
//! as raylets report its transitions, indexed for filtered, paginated reads.
//!
//! Every task gets a sequence number when its first event arrives; listings
//! run in that order and a cursor is the sequence number to resume after, so
//! pages stay stable while new tasks arrive. Secondary indexes (job, state,
//! node, function) are ordered sets of sequence numbers: a filtered page
//! walks the smallest matching index from the cursor and checks the other
//! filters on each candidate, with a bounded scan per page
//! ([`MAX_SCAN_PER_PAGE`]) so one request never walks a million records.
//!
//! Invariants: every remembered task is in `order` and in exactly one state
//! index, its job index and (when known) its node and function indexes; the
//! per-job and global state counts equal the index sizes; at most `capacity`
//! tasks are remembered, and when one must go, the oldest task in a terminal
//! state goes first (the oldest of all only when none has finished). The
//! same eviction keeps the records' bytes within a byte capacity
//! ([`DEFAULT_BYTE_CAPACITY`]): each record is accounted by what it holds on
//! the heap (its strings, its error, its events as protobuf sizes) plus a
//! fixed share for the record itself and its index entries
//! ([`RECORD_OVERHEAD_BYTES`]), kept up to date on every event. The number
//! evicted, the events raylets dropped and the capacities are reported.
//!
//! The store is plain data: it records no metrics itself, it returns what
//! happened ([`StartLatency`]) for its caller to record, so that metrics
//! depend on this module and never the other way round.

use std::collections::{BTreeSet, HashMap};

use shoal_proto::v1 as pb;

use crate::ids::{NodeId, TaskId};

/// Default number of tasks remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Default bytes the remembered tasks may hold.
pub const DEFAULT_BYTE_CAPACITY: usize = 64 << 20;
/// Bytes accounted to every record besides what it holds: the record, its
/// key in the task map and its entries in the order and the five indexes
/// (B-tree and hash-map entries with their share of node overhead).
pub const RECORD_OVERHEAD_BYTES: usize = std::mem::size_of::<TaskRecord>() + 320;
/// Most events kept per task (the first ones and the latest are kept).
pub const MAX_EVENTS_PER_TASK: usize = 32;
/// Most records one page may examine before it returns with a cursor.
pub const MAX_SCAN_PER_PAGE: usize = 200_000;
/// Number of task states (`pb::TaskState` values 0..STATES).
pub const STATES: usize = 7;

/// Every task state, in `pb::TaskState` order.
pub const ALL_STATES: [pb::TaskState; STATES] = [
    pb::TaskState::TaskPendingArgs,
    pb::TaskState::TaskPendingNode,
    pb::TaskState::TaskScheduled,
    pb::TaskState::TaskRunning,
    pb::TaskState::TaskFinished,
    pb::TaskState::TaskFailed,
    pb::TaskState::TaskCancelled,
];

/// The state's name as the REST API and metrics spell it (`PENDING_ARGS`, ...).
pub fn state_name(s: pb::TaskState) -> &'static str {
    match s {
        pb::TaskState::TaskPendingArgs => "PENDING_ARGS",
        pb::TaskState::TaskPendingNode => "PENDING_NODE",
        pb::TaskState::TaskScheduled => "SCHEDULED",
        pb::TaskState::TaskRunning => "RUNNING",
        pb::TaskState::TaskFinished => "FINISHED",
        pb::TaskState::TaskFailed => "FAILED",
        pb::TaskState::TaskCancelled => "CANCELLED",
    }
}

/// Parses a state name as [`state_name`] prints it.
pub fn parse_state(s: &str) -> Option<pb::TaskState> {
    ALL_STATES.into_iter().find(|st| state_name(*st).eq_ignore_ascii_case(s))
}

/// Whether a state is final.
pub fn is_terminal(s: pb::TaskState) -> bool {
    matches!(s, pb::TaskState::TaskFinished | pb::TaskState::TaskFailed | pb::TaskState::TaskCancelled)
}

fn state_of(v: i32) -> pb::TaskState {
    pb::TaskState::try_from(v).unwrap_or(pb::TaskState::TaskPendingArgs)
}

/// One task as the state API shows it.
#[derive(Clone, Debug, Default)]
pub struct TaskRecord {
    /// The task.
    pub task_id: TaskId,
    /// Position in arrival order (the cursor space).
    pub seq: u64,
    /// Job.
    pub job_id: u32,
    /// Name.
    pub name: String,
    /// Function descriptor (`builtin:NAME` or `exec:PROGRAM`).
    pub function: String,
    /// Latest state.
    pub state: i32,
    /// Latest attempt.
    pub attempt: u32,
    /// Latest node.
    pub node_id: Option<NodeId>,
    /// The owner's node.
    pub owner_node_id: Option<NodeId>,
    /// Time of the first event (submission), ms since the epoch.
    pub created_ms: u64,
    /// Time the latest attempt started running.
    pub start_ms: u64,
    /// Time the task reached a terminal state.
    pub end_ms: u64,
    /// The latest error.
    pub error: Option<pb::TaskError>,
    /// Events in arrival order (bounded by [`MAX_EVENTS_PER_TASK`]).
    pub events: Vec<pb::TaskEvent>,
    /// Events left out of `events`.
    pub events_dropped: u32,
    /// Whether the latest start's latency was reported (it is once both the
    /// owner's submission and the executor's RUNNING are in, whichever
    /// arrives last: they come from different raylets).
    start_reported: bool,
}

impl TaskRecord {
    /// The latest state.
    pub fn state(&self) -> pb::TaskState {
        state_of(self.state)
    }
}

/// Filters of a task listing; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only this job.
    pub job_id: Option<u32>,
    /// Only this state.
    pub state: Option<pb::TaskState>,
    /// Only tasks last placed on this node.
    pub node_id: Option<NodeId>,
    /// Only this function descriptor.
    pub function: Option<String>,
}

impl TaskFilter {
    fn matches(&self, r: &TaskRecord) -> bool {
        self.job_id.is_none_or(|j| r.job_id == j)
            && self.state.is_none_or(|s| r.state() == s)
            && self.node_id.is_none_or(|n| r.node_id == Some(n))
            && self.function.as_deref().is_none_or(|f| r.function == f)
    }
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct TaskPage {
    /// Matching tasks, in arrival order.
    pub tasks: Vec<TaskRecord>,
    /// Resume after this sequence number for the next page; `None` at the end.
    pub next_cursor: Option<u64>,
    /// Records the page examined (at most [`MAX_SCAN_PER_PAGE`]).
    pub scanned: usize,
}

/// What the store holds, for the API and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreSummary {
    /// Tasks remembered.
    pub tasks: usize,
    /// Most tasks remembered.
    pub capacity: usize,
    /// Tasks forgotten to stay within the capacities.
    pub evicted: u64,
    /// Bytes the remembered tasks hold (as accounted, see the module docs).
    pub bytes: usize,
    /// Most bytes the remembered tasks may hold.
    pub byte_capacity: usize,
    /// Events raylets reported dropping.
    pub dropped: u64,
    /// Tasks remembered, by state (`pb::TaskState` order).
    pub by_state: [u64; STATES],
}

/// A task's first start, reported by [`TaskEventStore::record`]: the time
/// from its submission to the start of its first run.
#[derive(Clone, Debug, PartialEq)]
pub struct StartLatency {
    /// The task's function descriptor.
    pub function: String,
    /// Seconds from submission to start.
    pub seconds: f64,
}

/// Latest state per task, indexed; oldest finished evicted first.
pub struct TaskEventStore {
    tasks: HashMap<TaskId, TaskRecord>,
    order: BTreeSet<(u64, TaskId)>,
    by_job: HashMap<u32, BTreeSet<u64>>,
    by_state: [BTreeSet<u64>; STATES],
    by_node: HashMap<NodeId, BTreeSet<u64>>,
    by_function: HashMap<String, BTreeSet<u64>>,
    seq_to_task: HashMap<u64, TaskId>,
    job_counts: HashMap<u32, [u64; STATES]>,
    next_seq: u64,
    capacity: usize,
    byte_capacity: usize,
    bytes: usize,
    dropped: u64,
    evicted: u64,
}

fn event_bytes(e: &pb::TaskEvent) -> usize {
    use prost::Message;
    std::mem::size_of::<pb::TaskEvent>() + e.encoded_len()
}

/// What a record holds, as accounted against the byte capacity.
fn record_bytes(r: &TaskRecord) -> usize {
    use prost::Message;
    RECORD_OVERHEAD_BYTES
        + r.name.capacity()
        + r.function.capacity()
        + r.error.as_ref().map_or(0, |e| std::mem::size_of::<pb::TaskError>() + e.encoded_len())
        + (r.events.capacity() - r.events.len()) * std::mem::size_of::<pb::TaskEvent>()
        + r.events.iter().map(event_bytes).sum::<usize>()
        // The function's index is keyed by its own copy of the name.
        + r.function.len()
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<u64>>, key: &K, seq: u64) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&seq);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl TaskEventStore {
    /// An empty store remembering at most `capacity` tasks in at most
    /// [`DEFAULT_BYTE_CAPACITY`] bytes.
    pub fn new(capacity: usize) -> Self {
        Self::with_byte_capacity(capacity, DEFAULT_BYTE_CAPACITY)
    }

    /// An empty store remembering at most `capacity` tasks in at most
    /// `byte_capacity` bytes (the newest task is always kept).
    pub fn with_byte_capacity(capacity: usize, byte_capacity: usize) -> Self {
        TaskEventStore {
            tasks: HashMap::new(),
            order: BTreeSet::new(),
            by_job: HashMap::new(),
            by_state: Default::default(),
            by_node: HashMap::new(),
            by_function: HashMap::new(),
            seq_to_task: HashMap::new(),
            job_counts: HashMap::new(),
            next_seq: 1,
            capacity: capacity.max(1),
            byte_capacity,
            bytes: 0,
            dropped: 0,
            evicted: 0,
        }
    }

    /// Merges a batch of events; returns the submit-to-start latency of
    /// every start in it whose submission is known.
    pub fn record(&mut self, batch: pb::ReportTaskEventsRequest) -> Vec<StartLatency> {
        self.dropped += batch.dropped;
        let mut started = Vec::new();
        for e in batch.events {
            let Ok(id) = TaskId::from_slice(&e.task_id) else { continue };
            if let Some(s) = self.apply(id, e) {
                started.push(s);
            }
            while self.bytes > self.byte_capacity && self.tasks.len() > 1 {
                if !self.evict_one(Some(id)) {
                    break;
                }
            }
        }
        started
    }

    fn insert_new(&mut self, id: TaskId, e: &pb::TaskEvent) {
        while self.tasks.len() >= self.capacity {
            if !self.evict_one(None) {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let state = state_of(e.state);
        let rec = TaskRecord {
            task_id: id,
            seq,
            job_id: id.job().0,
            state: state as i32,
            created_ms: e.at_ms,
            ..Default::default()
        };
        self.order.insert((seq, id));
        self.seq_to_task.insert(seq, id);
        self.by_job.entry(rec.job_id).or_default().insert(seq);
        self.by_state[state as usize].insert(seq);
        self.job_counts.entry(rec.job_id).or_default()[state as usize] += 1;
        self.bytes += record_bytes(&rec);
        self.tasks.insert(id, rec);
    }

    /// Forgets the oldest terminal task, or the oldest task when none is
    /// terminal; never `keep` (the task an event just updated).
    fn evict_one(&mut self, keep: Option<TaskId>) -> bool {
        let kept = keep.and_then(|k| self.tasks.get(&k)).map(|r| r.seq);
        let oldest_terminal = [pb::TaskState::TaskFinished, pb::TaskState::TaskFailed, pb::TaskState::TaskCancelled]
            .iter()
            .filter_map(|s| self.by_state[*s as usize].iter().find(|seq| Some(**seq) != kept).copied())
            .min();
        let victim = match oldest_terminal {
            Some(seq) => self.seq_to_task.get(&seq).copied(),
            None => self.order.iter().find(|(seq, _)| Some(*seq) != kept).map(|(_, id)| *id),
        };
        let Some(victim) = victim else { return false };
        self.remove(&victim);
        self.evicted += 1;
        true
    }

    fn remove(&mut self, id: &TaskId) {
        let Some(rec) = self.tasks.remove(id) else { return };
        self.bytes = self.bytes.saturating_sub(record_bytes(&rec));
        self.order.remove(&(rec.seq, *id));
        self.seq_to_task.remove(&rec.seq);
        remove_from(&mut self.by_job, &rec.job_id, rec.seq);
        self.by_state[rec.state() as usize].remove(&rec.seq);
        if let Some(n) = rec.node_id {
            remove_from(&mut self.by_node, &n, rec.seq);
        }
        if !rec.function.is_empty() {
            remove_from(&mut self.by_function, &rec.function, rec.seq);
        }
        if let Some(c) = self.job_counts.get_mut(&rec.job_id) {
            c[rec.state() as usize] = c[rec.state() as usize].saturating_sub(1);
            if c.iter().all(|n| *n == 0) {
                self.job_counts.remove(&rec.job_id);
            }
        }
    }

    fn apply(&mut self, id: TaskId, e: pb::TaskEvent) -> Option<StartLatency> {
        if !self.tasks.contains_key(&id) {
            self.insert_new(id, &e);
        }
        let mut started = None;
        let rec = self.tasks.get_mut(&id)?;
        let bytes_before = record_bytes(rec);
        let seq = rec.seq;
        if !e.function.is_empty() && rec.function != e.function {
            if !rec.function.is_empty() {
                remove_from(&mut self.by_function, &rec.function, seq);
            }
            rec.function = e.function.clone();
            self.by_function.entry(rec.function.clone()).or_default().insert(seq);
        }
        if !e.name.is_empty() {
            rec.name = e.name.clone();
        }
        if !e.owner_node_id.is_empty() {
            rec.owner_node_id = NodeId::from_slice(&e.owner_node_id).ok();
        }
        if e.at_ms > 0 && (rec.created_ms == 0 || e.at_ms < rec.created_ms) {
            rec.created_ms = e.at_ms;
        }
        let new_state = state_of(e.state);
        let old_state = rec.state();
        if e.attempt >= rec.attempt {
            // Within one attempt a task only moves forward (PENDING_ARGS →
            // PENDING_NODE → SCHEDULED → RUNNING → a terminal state), and
            // its first terminal state stays: the owner's and the executor's
            // events arrive in either order (a late SCHEDULED from the owner
            // must not undo the executor's RUNNING, a late RUNNING must not
            // undo a FINISHED). A new attempt starts over.
            let advance =
                e.attempt > rec.attempt || (!is_terminal(old_state) && (new_state as i32) > (old_state as i32));
            rec.attempt = e.attempt;
            if advance && new_state != old_state {
                self.by_state[old_state as usize].remove(&seq);
                self.by_state[new_state as usize].insert(seq);
                if let Some(c) = self.job_counts.get_mut(&rec.job_id) {
                    c[old_state as usize] = c[old_state as usize].saturating_sub(1);
                    c[new_state as usize] += 1;
                }
                rec.state = new_state as i32;
            }
            // Timings are kept even from a late RUNNING that does not change the state.
            if new_state == pb::TaskState::TaskRunning && (advance || rec.start_ms == 0) {
                rec.start_ms = e.at_ms;
            }
            if advance {
                match new_state {
                    pb::TaskState::TaskRunning => {
                        rec.end_ms = 0;
                        rec.start_reported = false;
                    }
                    s if is_terminal(s) => rec.end_ms = e.at_ms,
                    _ => {}
                }
            }
            if let Some(err) = &e.error {
                rec.error = Some(err.clone());
            }
            if !e.node_id.is_empty() {
                let node = NodeId::from_slice(&e.node_id).ok();
                if node != rec.node_id {
                    if let Some(old) = rec.node_id {
                        remove_from(&mut self.by_node, &old, seq);
                    }
                    if let Some(n) = node {
                        self.by_node.entry(n).or_default().insert(seq);
                    }
                    rec.node_id = node;
                }
            }
        }
        // The submit-to-start latency, once the owner's submission event
        // (it names the function) and the start are both in.
        if !rec.start_reported && rec.start_ms > 0 && !rec.function.is_empty() && rec.created_ms > 0 {
            rec.start_reported = true;
            let seconds = rec.start_ms.saturating_sub(rec.created_ms) as f64 / 1000.0;
            started = Some(StartLatency { function: rec.function.clone(), seconds });
        }
        if rec.events.len() < MAX_EVENTS_PER_TASK {
            rec.events.push(e);
        } else {
            // Keep the first half and slide the latest through the second.
            rec.events.remove(MAX_EVENTS_PER_TASK / 2);
            rec.events.push(e);
            rec.events_dropped += 1;
        }
        self.bytes = (self.bytes + record_bytes(rec)).saturating_sub(bytes_before);
        started
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

    /// Counts of a job's remembered tasks by state (`pb::TaskState` order).
    pub fn job_counts(&self, job_id: u32) -> [u64; STATES] {
        self.job_counts.get(&job_id).copied().unwrap_or_default()
    }

    /// Sizes and counters.
    pub fn summary(&self) -> StoreSummary {
        let mut by_state = [0u64; STATES];
        for (i, s) in self.by_state.iter().enumerate() {
            by_state[i] = s.len() as u64;
        }
        StoreSummary {
            tasks: self.tasks.len(),
            capacity: self.capacity,
            evicted: self.evicted,
            bytes: self.bytes,
            byte_capacity: self.byte_capacity,
            dropped: self.dropped,
            by_state,
        }
    }

    /// Up to `limit` tasks matching `filter` that arrived after `after`
    /// (a cursor from an earlier page; 0 for the first page).
    pub fn list(&self, filter: &TaskFilter, after: u64, limit: usize) -> TaskPage {
        let limit = limit.max(1);
        // The smallest index that covers the filter; the full order otherwise.
        let mut candidates: Vec<&BTreeSet<u64>> = Vec::new();
        let empty = BTreeSet::new();
        if let Some(j) = filter.job_id {
            candidates.push(self.by_job.get(&j).unwrap_or(&empty));
        }
        if let Some(s) = filter.state {
            candidates.push(&self.by_state[s as usize]);
        }
        if let Some(n) = filter.node_id {
            candidates.push(self.by_node.get(&n).unwrap_or(&empty));
        }
        if let Some(f) = &filter.function {
            candidates.push(self.by_function.get(f).unwrap_or(&empty));
        }
        let start = std::ops::Bound::Excluded(after);
        let seqs: Box<dyn Iterator<Item = u64> + '_> = match candidates.into_iter().min_by_key(|s| s.len()) {
            Some(index) => Box::new(index.range((start, std::ops::Bound::Unbounded)).copied()),
            None => Box::new(self.order.range((after.saturating_add(1), TaskId::default())..).map(|(seq, _)| *seq)),
        };
        let mut page = TaskPage::default();
        let mut last = after;
        for (scanned, seq) in seqs.enumerate() {
            if page.tasks.len() >= limit || scanned >= MAX_SCAN_PER_PAGE {
                page.next_cursor = Some(last);
                return page;
            }
            page.scanned = scanned + 1;
            last = seq;
            let Some(rec) = self.seq_to_task.get(&seq).and_then(|id| self.tasks.get(id)) else { continue };
            if filter.matches(rec) {
                page.tasks.push(rec.clone());
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;

    fn ev(id: TaskId, state: pb::TaskState, attempt: u32, t: u64) -> pb::TaskEvent {
        pb::TaskEvent {
            task_id: id.to_bytes(),
            job_id: id.job().0,
            function: "builtin:noop".into(),
            state: state as i32,
            attempt,
            at_ms: t,
            ..Default::default()
        }
    }

    fn batch(events: Vec<pb::TaskEvent>) -> pb::ReportTaskEventsRequest {
        pb::ReportTaskEventsRequest { events, dropped: 0 }
    }

    #[test]
    fn a_late_running_event_does_not_undo_finished() {
        let mut s = TaskEventStore::new(10);
        let t = TaskId::random(JobId(1));
        s.record(batch(vec![
            ev(t, pb::TaskState::TaskPendingArgs, 0, 1),
            ev(t, pb::TaskState::TaskFinished, 0, 3),
            ev(t, pb::TaskState::TaskRunning, 0, 2),
        ]));
        assert_eq!(s.get(&t).unwrap().state(), pb::TaskState::TaskFinished);
        assert_eq!(s.job_counts(1)[pb::TaskState::TaskFinished as usize], 1);
        assert_eq!(s.summary().by_state.iter().sum::<u64>(), 1);
    }

    #[test]
    fn an_attempt_only_moves_forward_and_a_new_attempt_starts_over() {
        let mut s = TaskEventStore::new(10);
        let t = TaskId::random(JobId(1));
        // The executor's RUNNING arrives before the owner's SCHEDULED.
        s.record(batch(vec![
            ev(t, pb::TaskState::TaskPendingNode, 0, 1),
            ev(t, pb::TaskState::TaskRunning, 0, 3),
            ev(t, pb::TaskState::TaskScheduled, 0, 2),
        ]));
        assert_eq!(s.get(&t).unwrap().state(), pb::TaskState::TaskRunning);
        assert_eq!(s.job_counts(1)[pb::TaskState::TaskRunning as usize], 1);
        // A retry is a new attempt: it may go back to pending.
        s.record(batch(vec![ev(t, pb::TaskState::TaskPendingNode, 1, 4)]));
        assert_eq!(s.get(&t).unwrap().state(), pb::TaskState::TaskPendingNode);
        assert_eq!(s.get(&t).unwrap().attempt, 1);
        // A late event of the old attempt changes nothing.
        s.record(batch(vec![ev(t, pb::TaskState::TaskFailed, 0, 5)]));
        assert_eq!(s.get(&t).unwrap().state(), pb::TaskState::TaskPendingNode);
        // The first terminal state of an attempt stays.
        s.record(batch(vec![ev(t, pb::TaskState::TaskFinished, 1, 6), ev(t, pb::TaskState::TaskCancelled, 1, 7)]));
        assert_eq!(s.get(&t).unwrap().state(), pb::TaskState::TaskFinished);
        assert_eq!(s.summary().by_state.iter().sum::<u64>(), 1);
    }

    #[test]
    fn a_start_reported_before_its_submission_still_gives_its_latency_once() {
        let mut s = TaskEventStore::new(10);
        let t = TaskId::random(JobId(1));
        // The executor's batch (no function) comes before the owner's.
        let mut running = ev(t, pb::TaskState::TaskRunning, 0, 3_000);
        running.function.clear();
        assert!(s.record(batch(vec![running])).is_empty(), "not without the function");
        let started = s.record(batch(vec![ev(t, pb::TaskState::TaskPendingArgs, 0, 1_000)]));
        assert_eq!(started, vec![StartLatency { function: "builtin:noop".into(), seconds: 2.0 }]);
        let again = s.record(batch(vec![ev(t, pb::TaskState::TaskFinished, 0, 4_000)]));
        assert!(again.is_empty(), "reported once");
    }

    #[test]
    fn a_start_reports_its_latency_from_submission() {
        let mut s = TaskEventStore::new(10);
        let t = TaskId::random(JobId(1));
        let started = s.record(batch(vec![
            ev(t, pb::TaskState::TaskPendingArgs, 0, 1_000),
            ev(t, pb::TaskState::TaskRunning, 0, 3_500),
        ]));
        assert_eq!(started, vec![StartLatency { function: "builtin:noop".into(), seconds: 2.5 }]);
        // A late RUNNING after the end is not a start.
        let late = s.record(batch(vec![
            ev(t, pb::TaskState::TaskFinished, 0, 4_000),
            ev(t, pb::TaskState::TaskRunning, 0, 3_600),
        ]));
        assert!(late.is_empty());
    }

    #[test]
    fn oldest_finished_tasks_are_evicted_before_older_running_ones() {
        let mut s = TaskEventStore::new(3);
        let running = TaskId::random(JobId(1));
        let done_a = TaskId::random(JobId(1));
        let done_b = TaskId::random(JobId(1));
        s.record(batch(vec![
            ev(running, pb::TaskState::TaskRunning, 0, 1),
            ev(done_a, pb::TaskState::TaskFinished, 0, 2),
            ev(done_b, pb::TaskState::TaskFinished, 0, 3),
        ]));
        let newer = TaskId::random(JobId(2));
        s.record(batch(vec![ev(newer, pb::TaskState::TaskPendingArgs, 0, 4)]));
        assert!(s.get(&running).is_some());
        assert!(s.get(&done_a).is_none());
        assert!(s.get(&done_b).is_some());
        assert_eq!(s.summary().evicted, 1);
        assert_eq!(s.len(), 3);
        assert_eq!(s.job_counts(1).iter().sum::<u64>(), 2);
    }

    #[test]
    fn the_byte_capacity_evicts_the_oldest_finished_tasks_and_accounts_every_byte() {
        let one = {
            let mut s = TaskEventStore::new(10);
            let t = TaskId::random(JobId(1));
            s.record(batch(vec![ev(t, pb::TaskState::TaskFinished, 0, 1)]));
            s.summary().bytes
        };
        assert!(one >= RECORD_OVERHEAD_BYTES + "builtin:noop".len() * 2, "{one}");
        // Room for about three such tasks, whatever the count capacity.
        let mut s = TaskEventStore::with_byte_capacity(1_000, one * 3 + one / 2);
        let running = TaskId::random(JobId(1));
        s.record(batch(vec![ev(running, pb::TaskState::TaskRunning, 0, 1)]));
        let done: Vec<TaskId> = (0..5).map(|_| TaskId::random(JobId(1))).collect();
        for (i, t) in done.iter().enumerate() {
            s.record(batch(vec![ev(*t, pb::TaskState::TaskFinished, 0, 2 + i as u64)]));
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(&running).is_some(), "an older running task outlives finished ones");
        assert!(s.get(&done[4]).is_some() && s.get(&done[3]).is_some());
        assert!(s.get(&done[0]).is_none());
        assert_eq!(s.summary().evicted, 3);
        assert!(s.summary().bytes <= one * 3 + one / 2);
        // A long error and many events count too; forgetting gives them back.
        let big = TaskId::random(JobId(2));
        let mut e = ev(big, pb::TaskState::TaskFailed, 0, 10);
        e.error = Some(pb::TaskError { message: "x".repeat(one * 2), ..Default::default() });
        s.record(batch(vec![e]));
        assert!(s.get(&big).is_some(), "the newest task is kept");
        let total: usize = s.tasks.values().map(record_bytes).sum();
        assert_eq!(s.summary().bytes, total, "the running sum equals the records' sizes");
    }

    #[test]
    fn pages_of_a_filtered_listing_cover_every_match_once() {
        let mut s = TaskEventStore::new(100_000);
        let mut events = Vec::new();
        for i in 0..25_000u64 {
            let job = JobId(1 + (i % 5) as u32);
            let t = TaskId::random(job);
            let st = if i % 2 == 0 { pb::TaskState::TaskFinished } else { pb::TaskState::TaskRunning };
            events.push(ev(t, st, 0, i));
        }
        s.record(batch(events));
        let filter = TaskFilter { job_id: Some(3), state: Some(pb::TaskState::TaskFinished), ..Default::default() };
        let mut cursor = 0;
        let mut seen = std::collections::HashSet::new();
        loop {
            let page = s.list(&filter, cursor, 700);
            for t in &page.tasks {
                assert_eq!(t.job_id, 3);
                assert_eq!(t.state(), pb::TaskState::TaskFinished);
                assert!(seen.insert(t.task_id));
            }
            match page.next_cursor {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(seen.len(), 2500);
    }

    #[test]
    fn a_page_deep_into_a_million_tasks_examines_only_that_page() {
        let mut s = TaskEventStore::with_byte_capacity(1_000_000, usize::MAX);
        let events: Vec<_> = (0..1_000_000u64)
            .map(|i| ev(TaskId::random(JobId(1 + (i / 1000) as u32)), pb::TaskState::TaskFinished, 0, i))
            .collect();
        s.record(batch(events));
        // Through the job index, and through the arrival order from a cursor:
        // never a walk from the start.
        let page = s.list(&TaskFilter { job_id: Some(999), ..Default::default() }, 0, 100);
        assert_eq!(page.tasks.len(), 100);
        assert!(page.tasks.iter().all(|t| t.job_id == 999));
        assert!(page.scanned <= 100, "examined {}", page.scanned);
        let page = s.list(&TaskFilter::default(), 999_000, 100);
        assert_eq!(page.tasks.len(), 100);
        assert!(page.scanned <= 100, "examined {}", page.scanned);
    }
}
