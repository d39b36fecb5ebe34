//! The task manager: a submitted task's life at its owner — waiting for its
//! arguments, placement, sending it to a node (this one or a peer), its
//! result, retries with back-off, and cancellation.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_proto::v1 as pb;

use crate::error::{ErrorKind, TaskError};
use crate::ids::{NodeId, ObjectId, TaskId};
use crate::raylet::effects::Effect;
use crate::raylet::owner::{
    describe_function, oid, strategy_of, ArgHold, ObjState, OwnedObject, OwnedTask, Owner, TaskState, MAX_RETURNS,
};
use crate::raylet::peers::PeerMsg;
use crate::raylet::scheduler::{self, Placement};
use crate::resources::ResourceSet;
use crate::value::{decode_error, error_value};

/// How the error of a task whose argument failed begins.
const ARG_FAILED: &str = "argument ";

/// Where a task's arguments stand, found without copying its spec.
enum ArgsCheck {
    /// Every argument is ready: bytes of stored arguments by node.
    Ready(Vec<(NodeId, u64)>),
    /// An argument is not ready after all (its producer is being retried).
    Wait(ObjectId),
    /// The task cannot run.
    Fail(TaskError),
}

impl Owner {
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
            let declared = spec.num_returns;
            let invalid_returns = declared == 0 || declared > MAX_RETURNS;
            let num_returns = declared.clamp(1, MAX_RETURNS);
            spec.num_returns = num_returns;
            spec.owner_address = self.address.clone();
            spec.attempt = 0;
            spec.spillback_count = 0;
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
                    ErrorKind::InvalidTask,
                    format!("num_returns must be between 1 and {MAX_RETURNS}, got {declared}"),
                ));
            }
            if spec.function.as_ref().and_then(|f| f.kind.as_ref()).is_none() {
                problem = Some(TaskError::new(ErrorKind::InvalidTask, "the task names no function"));
            }
            if let Err(e) = strategy_of(&spec.strategy) {
                problem = Some(TaskError::new(ErrorKind::InvalidTask, e));
            }
            if let Some((k, v)) = spec.resources.as_ref().and_then(|r| r.amounts.iter().find(|(_, v)| **v < 0)) {
                problem = Some(TaskError::new(ErrorKind::InvalidTask, format!("resource `{k}` is negative ({v})")));
            }
            let mut pending = 0;
            for arg in &spec.args {
                let Some(pb::arg::Kind::ObjectRef(r)) = &arg.kind else { continue };
                let Some(id) = oid(&r.object_id) else {
                    problem = Some(TaskError::new(ErrorKind::InvalidTask, "an argument's object id is malformed"));
                    continue;
                };
                if self.is_foreign(&r.owner_address) {
                    // Owned by another raylet: this task borrows it.
                    self.borrow_entry(id, &r.owner_address);
                }
                match self.objects.get_mut(&id) {
                    None => {
                        problem = Some(TaskError::new(
                            ErrorKind::ObjectLost,
                            format!("argument {id} is not known to its owner {}: it was freed", self.address),
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
            // References inside by-value arguments: held, not waited for.
            let nested: Vec<pb::ObjectRef> = spec
                .args
                .iter()
                .filter_map(|a| match &a.kind {
                    Some(pb::arg::Kind::Value(v)) => Some(v.nested_refs.iter()),
                    _ => None,
                })
                .flatten()
                .cloned()
                .collect();
            for r in &nested {
                let Some(id) = oid(&r.object_id) else { continue };
                if self.is_foreign(&r.owner_address) {
                    self.borrow_entry(id, &r.owner_address);
                }
                if let Some(o) = self.objects.get_mut(&id) {
                    o.task_refs += 1;
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
                    reserved: None,
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

    pub(crate) fn on_dep_ready(&mut self, task_id: TaskId) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        if t.state != TaskState::PendingArgs {
            return;
        }
        t.pending_deps = t.pending_deps.saturating_sub(1);
        if t.pending_deps == 0 {
            self.schedule(task_id);
        }
    }

    /// Checks a task's by-reference arguments, rebuilding lost ones.
    fn check_args(&mut self, task_id: TaskId) -> ArgsCheck {
        let Some(t) = self.tasks.get(&task_id) else { return ArgsCheck::Fail(TaskError::default()) };
        let ids = Self::arg_ids(&t.spec);
        let mut locality: Vec<(NodeId, u64)> = Vec::new();
        for id in ids {
            if self.objects.get(&id).is_some_and(|o| o.state == ObjState::Lineage) {
                if let Err(e) = self.reconstruct(id) {
                    return ArgsCheck::Fail(e);
                }
            }
            let Some(o) = self.objects.get(&id) else {
                return ArgsCheck::Fail(TaskError::new(
                    ErrorKind::ObjectLost,
                    format!("argument {id} was freed before the task could run"),
                ));
            };
            match o.state {
                ObjState::Pending | ObjState::Lineage => return ArgsCheck::Wait(id),
                ObjState::Failed => {
                    let mut e = o
                        .inline
                        .as_ref()
                        .map(decode_error)
                        .unwrap_or_else(|| TaskError::new(ErrorKind::ObjectLost, ""));
                    // The error keeps naming the task that failed first; down a
                    // chain of dependents it is said once, not once per link
                    // (a 20,000-task chain would carry a message of megabytes).
                    if !e.message.starts_with(ARG_FAILED) {
                        e.message = format!("{ARG_FAILED}{id} failed: {}", e.message);
                    }
                    return ArgsCheck::Fail(e);
                }
                ObjState::Ready if o.inline.is_none() => {
                    for n in &o.locations {
                        match locality.iter_mut().find(|(id, _)| id == n) {
                            Some(e) => e.1 += o.size,
                            None => locality.push((*n, o.size)),
                        }
                    }
                }
                ObjState::Ready => {}
            }
        }
        ArgsCheck::Ready(locality)
    }

    /// The spec to send: ready arguments as inline values or as references
    /// with their current locations.
    fn spec_to_send(&self, spec: &pb::TaskSpec) -> (pb::TaskSpec, Vec<ObjectId>) {
        let mut spec = spec.clone();
        let mut stored = Vec::new();
        for arg in spec.args.iter_mut() {
            let Some(pb::arg::Kind::ObjectRef(r)) = &arg.kind else { continue };
            let Some(id) = oid(&r.object_id) else { continue };
            let Some(o) = self.objects.get(&id) else { continue };
            if let Some(v) = &o.inline {
                arg.kind = Some(pb::arg::Kind::Value(v.clone()));
            } else {
                let locations: Vec<pb::Location> = o.locations.iter().filter_map(|n| self.location_of(*n)).collect();
                arg.kind = Some(pb::arg::Kind::ObjectRef(pb::RefArg {
                    object_id: r.object_id.clone(),
                    owner_address: self.owner_of(o),
                    locations,
                    size: o.size,
                }));
                stored.push(id);
            }
        }
        (spec, stored)
    }

    /// Places a task whose arguments are all ready, and sends it on. The
    /// spec is copied only once a node is found.
    pub(crate) fn schedule(&mut self, task_id: TaskId) {
        let Some(t) = self.tasks.get(&task_id) else { return };
        if t.state.terminal() {
            return;
        }
        let locality = match self.check_args(task_id) {
            ArgsCheck::Ready(l) => l,
            ArgsCheck::Wait(id) => {
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.state = TaskState::PendingArgs;
                    t.pending_deps += 1;
                }
                if let Some(o) = self.objects.get_mut(&id) {
                    o.dependents.push(task_id);
                }
                return;
            }
            ArgsCheck::Fail(e) => {
                self.fail_task(task_id, e);
                return;
            }
        };
        let Some(t) = self.tasks.get(&task_id) else { return };
        if t.state.terminal() {
            return;
        }
        let strategy = strategy_of(&t.spec.strategy).unwrap_or_default();
        let resources = ResourceSet::from(t.spec.resources.as_ref());
        let attempt = t.spec.attempt;
        let req =
            scheduler::Request { resources: &resources, strategy: &strategy, locality: &locality, avoid: t.avoid };
        let placement = scheduler::place(&self.view, self.node_id, &req, &mut self.spread_cursor);
        match placement {
            Placement::Node(node) => {
                self.infeasible.remove(&task_id);
                let Some(t) = self.tasks.get(&task_id) else { return };
                let (spec, stored) = self.spec_to_send(&t.spec);
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.state = TaskState::Scheduled;
                    t.node = Some(node);
                }
                self.events.emit(task_id, pb::TaskState::TaskScheduled, attempt, Some(node), None, None);
                if node == self.node_id {
                    self.local.push(spec);
                    return;
                }
                let Some(addr) = self.view.address(&node).map(str::to_string) else { return };
                self.view.reserve(node, &resources);
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.reserved = Some(node);
                }
                for id in stored {
                    if let Some(o) = self.objects.get_mut(&id) {
                        if !o.copies.contains(&node) {
                            o.copies.push(node);
                        }
                    }
                }
                self.send_peer(&addr, PeerMsg::Execute(spec));
            }
            Placement::Infeasible(reason) => {
                let now = Instant::now();
                let since = *self.infeasible.entry(task_id).or_insert(now);
                if since == now {
                    tracing::warn!(task = %task_id, %reason, "task is infeasible for now");
                    self.events.emit(task_id, pb::TaskState::TaskPendingNode, attempt, None, None, None);
                }
                if now.duration_since(since) >= self.config.infeasible_timeout {
                    self.infeasible.remove(&task_id);
                    self.fail_task(task_id, TaskError::new(ErrorKind::Infeasible, reason));
                } else if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.state = TaskState::PendingNode;
                }
            }
        }
    }

    /// Tries infeasible tasks again: the cluster's membership changed.
    pub(crate) fn retry_infeasible(&mut self) {
        let ids: Vec<TaskId> = self.infeasible.keys().copied().collect();
        for id in ids {
            self.schedule(id);
        }
    }

    /// Fails the infeasible tasks past the infeasible timeout (nothing else:
    /// placement only changes when membership does).
    pub(crate) fn expire_infeasible(&mut self) {
        let timeout = self.config.infeasible_timeout;
        let expired: Vec<TaskId> =
            self.infeasible.iter().filter(|(_, since)| since.elapsed() >= timeout).map(|(id, _)| *id).collect();
        for id in expired {
            // Placing it once more gives the reason, and fails it.
            self.schedule(id);
        }
    }

    /// Gives back the resources a task's placement subtracted from a node's view.
    fn unreserve(&mut self, task_id: TaskId) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        let Some(node) = t.reserved.take() else { return };
        let res = ResourceSet::from(t.spec.resources.as_ref());
        self.view.release(node, &res);
    }

    /// Marks a task failed for good and stores `err` as each return's value.
    pub(crate) fn fail_task(&mut self, task_id: TaskId, err: TaskError) {
        self.finish_failed(task_id, err, TaskState::Failed);
    }

    fn finish_failed(&mut self, task_id: TaskId, mut err: TaskError, state: TaskState) {
        self.unreserve(task_id);
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
        let (attempt, node, n) = (t.spec.attempt, t.node, t.spec.num_returns);
        self.events.emit(task_id, ev, attempt, node, None, Some(&err));
        let value = error_value(&err);
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

    /// Takes the result of an attempt of a task this raylet owns.
    pub(crate) fn apply_result(&mut self, r: pb::TaskResult) {
        let Ok(task_id) = TaskId::from_slice(&r.task_id) else { return };
        let node = NodeId::from_slice(&r.node_id).ok();
        let stale = match self.tasks.get(&task_id) {
            None => true,
            Some(t) => t.state.terminal() || r.attempt != t.spec.attempt,
        };
        if stale {
            // Nobody will read what this attempt stored: free it where it is,
            // unless the current attempt's copy has the same id on that node.
            for ret in r.returns.iter().filter(|ret| ret.inline_value.is_none()) {
                let Some(id) = oid(&ret.object_id) else { continue };
                let current = self.tasks.get(&task_id).is_some_and(|t| !t.state.terminal() && t.node == node)
                    || node.is_some_and(|n| self.objects.get(&id).is_some_and(|o| o.locations.contains(&n)));
                if current {
                    continue;
                }
                if node == Some(self.node_id) || r.node_address == self.address {
                    self.out.push(Effect::Delete(id));
                } else {
                    self.send_peer(&r.node_address, PeerMsg::Free(id));
                }
            }
            return;
        }
        self.unreserve(task_id);
        if let Some(err) = r.error.as_ref() {
            let mut err = TaskError::from(err);
            if err.node_id.is_empty() {
                err.node_id = node.map(|n| n.to_string()).unwrap_or_default();
            }
            self.retry_or_fail(task_id, err, r.system_failure, node);
            return;
        }
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        t.state = TaskState::Finished;
        t.node = node;
        self.events.emit(task_id, pb::TaskState::TaskFinished, r.attempt, node, None, None);
        let n = t.spec.num_returns;
        for (i, ret) in r.returns.into_iter().enumerate() {
            let Some(id) = oid(&ret.object_id) else { continue };
            if id.task_id() != task_id || i as u32 >= n {
                continue;
            }
            let nested = match &ret.inline_value {
                Some(v) => &v.nested_refs,
                None => &ret.nested_refs,
            };
            let contained = self.hold_refs(nested);
            let Some(o) = self.objects.get_mut(&id) else {
                self.release_holds(contained);
                continue;
            };
            let before = std::mem::replace(&mut o.contained, contained);
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
            self.release_holds(before);
            self.wake(id);
        }
        self.args_to_lineage(task_id);
        for i in 0..n {
            self.maybe_free(task_id.return_id(i));
        }
        self.maybe_drop_task(task_id);
    }

    fn retry_or_fail(&mut self, task_id: TaskId, err: TaskError, system: bool, node: Option<NodeId>) {
        self.unreserve(task_id);
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        let retriable = system || t.spec.retry_exceptions;
        let max = t.spec.max_retries;
        if retriable && (max < 0 || t.retries_used < max as u32) {
            t.retries_used += 1;
            t.spec.attempt += 1;
            t.spec.spillback_count = 0;
            t.avoid = node;
            t.state = TaskState::PendingNode;
            self.stats.retries += 1;
            let attempt = t.spec.attempt;
            // Back off a little: the failure may be a node whose death the
            // GCS has not announced yet.
            let delay = Duration::from_millis((50u64 << t.retries_used.min(5)).min(1000));
            self.events.emit(task_id, pb::TaskState::TaskPendingNode, attempt, None, None, Some(&err));
            tracing::info!(task = %task_id, attempt, reason = %err.message, "retrying task");
            self.out.push(Effect::RetryLater { task: task_id, attempt, delay });
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

    /// The back-off of a retry is over.
    pub(crate) fn schedule_retry(&mut self, task_id: TaskId, attempt: u32) {
        if self.tasks.get(&task_id).is_some_and(|t| t.state == TaskState::PendingNode && t.spec.attempt == attempt) {
            self.schedule(task_id);
        }
    }

    /// A raylet would not queue a task this raylet sent it (spillback).
    pub(crate) fn on_spillback(&mut self, from: NodeId, s: pb::Spillback) {
        let Ok(task_id) = TaskId::from_slice(&s.task_id) else { return };
        let Some(t) = self.tasks.get(&task_id) else { return };
        if t.state != TaskState::Scheduled || t.spec.attempt != s.attempt {
            return;
        }
        self.unreserve(task_id);
        self.stats.spilled_back += 1;
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        t.spec.spillback_count += 1;
        t.avoid = Some(from);
        t.state = TaskState::PendingNode;
        tracing::debug!(task = %task_id, node = %from, reason = %s.reason, "task sent back (spillback)");
        self.schedule(task_id);
    }

    /// Sending tasks to a raylet failed: retry them elsewhere.
    pub(crate) fn on_dispatch_failed(&mut self, node: Option<NodeId>, tasks: Vec<(TaskId, u32)>, reason: &str) {
        for (id, attempt) in tasks {
            let Some(t) = self.tasks.get(&id) else { continue };
            if t.state != TaskState::Scheduled || t.spec.attempt != attempt {
                continue;
            }
            let err =
                TaskError::new(ErrorKind::NodeUnreachable, format!("could not send the task to its node: {reason}"));
            self.retry_or_fail(id, err, true, node);
        }
    }

    /// A node died: retry what ran there and forget its copies.
    pub(crate) fn on_node_dead(&mut self, node: NodeId) {
        let on_node: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Scheduled && t.node == Some(node))
            .map(|(id, _)| *id)
            .collect();
        for id in on_node {
            let err = TaskError::new(ErrorKind::NodeDied, format!("node {node} died while the task was there"));
            self.retry_or_fail(id, err, true, Some(node));
        }
        // Borrowed entries are rebuilt by their owners (borrows_on_node_dead).
        let lost: Vec<ObjectId> =
            self.objects.iter_mut().filter_map(|(id, o)| o.forget_copy_on(node).then_some(*id)).collect();
        for id in lost {
            let still = self.objects.get(&id).is_some_and(|o| o.state == ObjState::Ready && o.locations.is_empty());
            if !still {
                continue;
            }
            self.rebuild_or_fail(id, &format!("every copy was on node {node}, which died"));
        }
        let addr = self.view.last_address(&node).map(str::to_string);
        self.borrows_on_node_dead(node, addr.as_deref());
        if let Some(addr) = addr {
            self.out.push(Effect::ForgetPeer(addr));
        }
        self.retry_infeasible();
    }

    /// The copy of `id` on this node turned out damaged (a spill file that
    /// did not read back intact) and was dropped: when it was the last copy,
    /// the object is rebuilt from lineage, or fails saying why.
    pub(crate) fn local_copy_lost(&mut self, id: ObjectId, why: &str) {
        let me = self.node_id;
        if self.objects.get_mut(&id).is_some_and(|o| o.forget_copy_on(me)) {
            self.rebuild_or_fail(id, why);
        }
    }

    /// Every copy of `id` is lost (`context` says how): re-runs its task, or
    /// fails the object with an error that says why it cannot be rebuilt.
    fn rebuild_or_fail(&mut self, id: ObjectId, context: &str) {
        if let Err(mut err) = self.reconstruct(id) {
            err.message = format!("{context}: {}", err.message);
            if let Some(o) = self.objects.get_mut(&id) {
                o.state = ObjState::Failed;
                let v = error_value(&err);
                o.size = v.data.len() as u64;
                o.inline = Some(v);
            }
            self.wake(id);
        }
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

    pub(crate) fn cancel_task(&mut self, task_id: TaskId, force: bool, recursive: bool) {
        let Some(t) = self.tasks.get(&task_id) else { return };
        if t.state.terminal() {
            return;
        }
        let (state, node, attempt) = (t.state, t.node, t.spec.attempt);
        if state == TaskState::Scheduled {
            if let Some(node) = node {
                if node == self.node_id {
                    self.cancel_local.push(((task_id, attempt), force, recursive));
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
            ErrorKind::Cancelled,
            if force { "the task was cancelled (forced)" } else { "the task was cancelled" },
        );
        self.finish_failed(task_id, err, TaskState::Cancelled);
    }
}
