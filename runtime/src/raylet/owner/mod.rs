//! The owner side of a raylet: every task submitted through this raylet and
//! every object those tasks return or its clients put.
//!
//! - the task manager ([`task_manager`]): submission, placement, retries,
//!   results, cancellation;
//! - the reference counter ([`reference_counter`]): session references,
//!   references held by pending tasks and by lineage, freeing at zero, and
//!   the `get`/`wait` callers and dependent tasks waiting on each object;
//! - lineage reconstruction ([`reconstruction`]): re-running the task that
//!   made an object whose every copy is lost;
//! - borrowed references ([`borrows`]): other raylets holding objects owned
//!   here, and objects owned elsewhere that this raylet's sessions and tasks
//!   hold.
//!
//! Every task is recorded with its spec (lineage) until all its return
//! objects are freed. Invariant: an object is removed only when nothing
//! refers to it and it is no longer pending.
//!
//! Plain data: the owner never sends or spawns; it records [`Effect`]s and
//! local work (attempts placed on this node, local cancels) for the
//! coordinator.

pub(crate) mod borrows;
pub(crate) mod reconstruction;
pub(crate) mod reference_counter;
pub(crate) mod task_manager;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use shoal_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::ids::{NodeId, ObjectId, TaskId, WorkerId};
use crate::raylet::cluster_view::ClusterView;
use crate::raylet::effects::Effect;
use crate::raylet::events::TaskEvents;
use crate::raylet::executor::worker_pool::Attempt;
use crate::raylet::peers::PeerMsg;
use crate::raylet::RayletConfig;
pub(crate) use crate::strategy::strategy_of;
use borrows::{Borrowed, PendingBorrow};

pub use crate::ids::MAX_RETURNS;

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
    pub(crate) fn terminal(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed | TaskState::Cancelled)
    }
}

pub(crate) struct OwnedTask {
    pub spec: pb::TaskSpec,
    pub state: TaskState,
    pub retries_used: u32,
    pub pending_deps: u32,
    pub node: Option<NodeId>,
    pub avoid: Option<NodeId>,
    /// The node whose view this task's resources are subtracted from
    /// until it answers (see [`ClusterView::reserve`]).
    pub reserved: Option<NodeId>,
    pub live_returns: u32,
    /// What the task's by-reference arguments are held by.
    pub arg_hold: ArgHold,
    /// The spec's arguments were dropped to bound lineage memory: its
    /// objects can no longer be rebuilt.
    pub lineage_evicted: bool,
}

/// How a task holds its by-reference arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgHold {
    /// It needs their values (pending, running, or being rebuilt).
    Task,
    /// It finished; it keeps them only to be re-run if its results are lost.
    Lineage,
    /// Released.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjState {
    Pending,
    Ready,
    Failed,
    /// The value was freed (nobody reads it), but a retained downstream
    /// task may need it rebuilt from its lineage.
    Lineage,
}

pub(crate) struct OwnedObject {
    pub state: ObjState,
    pub inline: Option<pb::ObjectValue>,
    pub size: u64,
    pub locations: Vec<NodeId>,
    pub copies: Vec<NodeId>,
    pub refs: u32,
    pub task_refs: u32,
    /// Finished tasks whose lineage names this object as an argument.
    pub lineage_refs: u32,
    pub dependents: Vec<TaskId>,
    /// `get`/`wait` calls waiting for this object, one entry per call.
    pub waiters: Vec<mpsc::Sender<ObjectId>>,
    /// As owner: the raylets that borrow this object, each with its count
    /// of adds minus removes. A borrowed object is never freed.
    pub borrowers: Vec<(NodeId, i64)>,
    /// The objects whose references this object's value holds (each with a
    /// hold of its own, released when this value is freed).
    pub contained: Vec<ObjectId>,
    /// As borrower: set when the object is owned by another raylet and
    /// this entry only stands for it here (the holds of this raylet's
    /// sessions and tasks, and what its owner said of it).
    pub borrowed: Option<Box<Borrowed>>,
}

impl OwnedObject {
    pub(crate) fn pending() -> Self {
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
            borrowers: Vec::new(),
            borrowed: None,
            contained: Vec::new(),
        }
    }

    /// Forgets the copy on `node` (which died, or whose copy was found
    /// damaged). True when that was the last copy of a ready stored object:
    /// it is lost, to be rebuilt or failed. A borrowed entry is left alone:
    /// its owner keeps its copies and rebuilds it.
    pub(crate) fn forget_copy_on(&mut self, node: NodeId) -> bool {
        if self.borrowed.is_some() {
            return false;
        }
        self.copies.retain(|n| *n != node);
        let had = self.locations.len();
        self.locations.retain(|n| *n != node);
        self.state == ObjState::Ready && self.inline.is_none() && had > 0 && self.locations.is_empty()
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
    pub seq: watch::Sender<u64>,
    pub refs: HashMap<ObjectId, u32>,
    /// Tasks this session submitted that may still be running (for
    /// recursive cancellation, and to cancel when the session ends); pruned
    /// of finished ones as it grows.
    pub submitted: Vec<TaskId>,
    /// Length at which `submitted` is next pruned.
    pub prune_at: usize,
}

/// Counters of the owner.
#[derive(Default, Clone, Copy)]
pub(crate) struct OwnerStats {
    pub tasks_submitted: u64,
    pub tasks_failed: u64,
    pub retries: u64,
    pub reconstructions: u64,
    /// Tasks a node sent back (spillback).
    pub spilled_back: u64,
}

/// The owner's tables.
pub(crate) struct Owner {
    pub node_id: NodeId,
    pub address: String,
    pub config: Arc<RayletConfig>,
    pub tasks: HashMap<TaskId, OwnedTask>,
    pub objects: HashMap<ObjectId, OwnedObject>,
    pub sessions: HashMap<u64, Session>,
    next_session: u64,
    /// Tasks no node can take, since when.
    pub infeasible: HashMap<TaskId, Instant>,
    /// Finished tasks kept for lineage, oldest first.
    pub lineage: VecDeque<TaskId>,
    pub view: ClusterView,
    pub spread_cursor: usize,
    pub stats: OwnerStats,
    pub events: TaskEvents,
    /// Effects for the coordinator.
    pub out: Vec<Effect>,
    /// Attempts placed on this node, for the executor.
    pub local: Vec<pb::TaskSpec>,
    /// Attempts on this node to cancel: attempt, force, recursive.
    pub cancel_local: Vec<(Attempt, bool, bool)>,
    /// Borrows taken by the message being applied that their owners have
    /// not acknowledged yet (see [`borrows`]).
    pub pending_borrows: Vec<PendingBorrow>,
    /// Dependent tasks whose argument became ready (or failed), to be
    /// looked at by [`Owner::wake`]'s loop, and whether that loop runs.
    pub woken: VecDeque<TaskId>,
    pub waking: bool,
    /// Objects owned here that other raylets borrow.
    pub lent: u64,
    /// References returned inside results, held for their attempt until
    /// the result reached its owner (see [`borrows`]).
    pub lent_for_results: HashMap<(TaskId, u32), Vec<ObjectId>>,
    /// Objects owned elsewhere that this raylet borrows.
    pub borrowed: u64,
}

pub(crate) fn oid(b: &[u8]) -> Option<ObjectId> {
    ObjectId::from_slice(b).ok()
}

pub(crate) fn describe_function(f: &Option<pb::FunctionDescriptor>) -> String {
    match f.as_ref().and_then(|f| f.kind.as_ref()) {
        Some(pb::function_descriptor::Kind::Builtin(n)) => format!("builtin:{n}"),
        Some(pb::function_descriptor::Kind::Exec(e)) => {
            format!("exec:{}", e.argv.first().map(String::as_str).unwrap_or("?"))
        }
        Some(pb::function_descriptor::Kind::Python(p)) => format!("python:{}", p.name),
        None => "<none>".to_string(),
    }
}

impl Owner {
    pub(crate) fn new(node_id: NodeId, address: String, config: Arc<RayletConfig>, events: TaskEvents) -> Self {
        Owner {
            node_id,
            address,
            config,
            tasks: HashMap::new(),
            objects: HashMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            infeasible: HashMap::new(),
            lineage: VecDeque::new(),
            view: ClusterView::default(),
            spread_cursor: 0,
            stats: OwnerStats::default(),
            events,
            out: Vec::new(),
            local: Vec::new(),
            cancel_local: Vec::new(),
            pending_borrows: Vec::new(),
            woken: VecDeque::new(),
            waking: false,
            lent: 0,
            lent_for_results: HashMap::new(),
            borrowed: 0,
        }
    }

    pub(crate) fn send_peer(&mut self, addr: &str, msg: PeerMsg) {
        self.out.push(Effect::Peer { addr: addr.to_string(), msg });
    }

    pub(crate) fn location_of(&self, node: NodeId) -> Option<pb::Location> {
        let address = if node == self.node_id { self.address.clone() } else { self.view.address(&node)?.to_string() };
        Some(pb::Location { node_id: node.to_bytes(), address })
    }

    // ------------------------------------------------------------------
    // Sessions
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

    /// Cancels what the sessions of worker `w` submitted (a recursive
    /// cancel of the task running there).
    pub(crate) fn cancel_submitted_by(&mut self, w: WorkerId, force: bool) {
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
}

#[cfg(test)]
mod tests;
