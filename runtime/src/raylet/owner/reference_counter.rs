//! The reference counter: who holds each owned object, and what happens
//! when nobody does.
//!
//! An object is held by session references (drivers and workers holding an
//! `ObjectRef`), by pending tasks that take it as an argument, and — once
//! those tasks finished — by their lineage, so that a lost downstream result
//! can be rebuilt. At zero the object is freed everywhere it has copies, and
//! freeing a task's last return releases the task's own arguments in turn.
//!
//! It also keeps each pending object's waiters: the `get`/`wait` calls to
//! notify when it becomes ready (one entry per call, removed when the call
//! ends) and the dependent tasks to schedule.

use bytes::Bytes;
use shoal_proto::v1 as pb;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::ids::{ObjectId, TaskId};
use crate::raylet::effects::Effect;
use crate::raylet::owner::{oid, ArgHold, Lookup, ObjState, OwnedObject, Owner};
use crate::raylet::peers::PeerMsg;
use crate::value::error_value;

/// Why a `put` was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum PutError {
    #[error("session {0} is not open")]
    SessionClosed(u64),
    #[error("object {0} already exists")]
    Exists(ObjectId),
}

impl Owner {
    /// Applies a session's reference changes: `add` and `remove` name
    /// objects by id (owned here, or borrowed through `borrow` before);
    /// `borrow` takes holds on objects owned by other raylets.
    pub(crate) fn update_refs(&mut self, session: u64, add: &[Bytes], remove: &[Bytes], borrow: &[pb::ObjectRef]) {
        let borrowed = borrow.iter().filter_map(|r| {
            let id = oid(&r.object_id)?;
            if self.is_foreign(&r.owner_address) {
                self.borrow_entry(id, &r.owner_address);
            }
            Some(id)
        });
        let borrowed: Vec<ObjectId> = borrowed.collect();
        for id in add.iter().filter_map(|b| oid(b)).chain(borrowed) {
            if let Some(o) = self.objects.get_mut(&id) {
                o.refs += 1;
                if let Some(s) = self.sessions.get_mut(&session) {
                    *s.refs.entry(id).or_insert(0) += 1;
                }
            }
        }
        for b in remove {
            let Some(id) = oid(b) else { continue };
            let Some(s) = self.sessions.get_mut(&session) else { continue };
            let Some(n) = s.refs.get_mut(&id) else { continue };
            *n -= 1;
            if *n == 0 {
                s.refs.remove(&id);
            }
            if let Some(o) = self.objects.get_mut(&id) {
                o.refs = o.refs.saturating_sub(1);
            }
            self.maybe_free(id);
        }
    }

    /// Whether a `put` of `id` by `session` would be accepted.
    pub(crate) fn check_put(&self, session: u64, id: ObjectId) -> Result<(), PutError> {
        if !self.sessions.contains_key(&session) {
            return Err(PutError::SessionClosed(session));
        }
        if self.objects.contains_key(&id) {
            return Err(PutError::Exists(id));
        }
        Ok(())
    }

    /// Records a `put` value owned by this raylet: `inline` when small,
    /// otherwise already in this node's store with `size` bytes. The value
    /// holds the references `nested` inside it until it is freed.
    pub(crate) fn put(
        &mut self,
        session: u64,
        id: ObjectId,
        size: u64,
        inline: Option<pb::ObjectValue>,
        nested: &[pb::ObjectRef],
    ) -> Result<(), PutError> {
        self.check_put(session, id)?;
        let contained = self.hold_refs(nested);
        let mut obj = OwnedObject::pending();
        obj.state = ObjState::Ready;
        obj.size = size;
        match inline {
            Some(v) => obj.inline = Some(v),
            None => obj.locations.push(self.node_id),
        }
        obj.refs = 1;
        obj.contained = contained;
        self.objects.insert(id, obj);
        if let Some(s) = self.sessions.get_mut(&session) {
            *s.refs.entry(id).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Takes a hold on each object `refs` name (borrowing those owned
    /// elsewhere); returns the ids held, for [`Owner::release_holds`].
    pub(crate) fn hold_refs(&mut self, refs: &[pb::ObjectRef]) -> Vec<ObjectId> {
        let mut held = Vec::with_capacity(refs.len());
        for r in refs {
            let Some(id) = oid(&r.object_id) else { continue };
            if self.is_foreign(&r.owner_address) {
                self.borrow_entry(id, &r.owner_address);
            }
            if let Some(o) = self.objects.get_mut(&id) {
                o.refs += 1;
                held.push(id);
            }
        }
        held
    }

    /// Ends holds taken by [`Owner::hold_refs`].
    pub(crate) fn release_holds(&mut self, ids: Vec<ObjectId>) {
        for id in &ids {
            if let Some(o) = self.objects.get_mut(id) {
                o.refs = o.refs.saturating_sub(1);
            }
        }
        self.free_all(ids);
    }

    /// A worker returns `refs` inside the results of `attempt`: they are
    /// held for it until the result reached its owner.
    pub(crate) fn lend(&mut self, task: TaskId, attempt: u32, refs: &[pb::ObjectRef]) {
        let held = self.hold_refs(refs);
        if !held.is_empty() {
            self.lent_for_results.entry((task, attempt)).or_default().extend(held);
        }
    }

    /// The result of `attempt` reached its owner (or never will): what it
    /// lent is released.
    pub(crate) fn release_lent(&mut self, task: TaskId, attempt: u32) {
        if let Some(ids) = self.lent_for_results.remove(&(task, attempt)) {
            self.release_holds(ids);
        }
    }

    /// Notifies the object's waiters and schedules its dependents.
    pub(crate) fn wake(&mut self, id: ObjectId) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        for w in o.waiters.drain(..) {
            let _ = w.try_send(id);
        }
        let deps = std::mem::take(&mut o.dependents);
        self.woken.extend(deps);
        // Iteratively, not recursively: a dependent that fails at once (its
        // argument failed) wakes its own dependents, and a failure at the
        // root of a chain of thousands of tasks must not overflow the stack.
        if self.waking {
            return;
        }
        self.waking = true;
        while let Some(d) = self.woken.pop_front() {
            self.on_dep_ready(d);
        }
        self.waking = false;
    }

    /// The task's by-reference arguments: what it waits for.
    pub(crate) fn arg_ids(spec: &pb::TaskSpec) -> Vec<ObjectId> {
        spec.args
            .iter()
            .filter_map(|a| match &a.kind {
                Some(pb::arg::Kind::ObjectRef(r)) => oid(&r.object_id),
                _ => None,
            })
            .collect()
    }

    /// What the task holds: its by-reference arguments and the references
    /// inside its by-value arguments (which it does not wait for).
    pub(crate) fn held_ids(spec: &pb::TaskSpec) -> Vec<ObjectId> {
        let mut ids = Self::arg_ids(spec);
        for a in &spec.args {
            if let Some(pb::arg::Kind::Value(v)) = &a.kind {
                ids.extend(v.nested_refs.iter().filter_map(|r| oid(&r.object_id)));
            }
        }
        ids
    }

    /// Drops whatever hold a task has on its arguments.
    pub(crate) fn release_args(&mut self, task_id: TaskId) {
        let mut work = Vec::new();
        self.release_args_into(task_id, &mut work);
        self.free_all(work);
    }

    pub(crate) fn release_args_into(&mut self, task_id: TaskId, work: &mut Vec<ObjectId>) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        let hold = std::mem::replace(&mut t.arg_hold, ArgHold::None);
        if hold == ArgHold::None {
            return;
        }
        for id in Self::held_ids(&t.spec) {
            if let Some(o) = self.objects.get_mut(&id) {
                match hold {
                    ArgHold::Task => o.task_refs = o.task_refs.saturating_sub(1),
                    ArgHold::Lineage => o.lineage_refs = o.lineage_refs.saturating_sub(1),
                    ArgHold::None => {}
                }
            }
            work.push(id);
        }
    }

    /// A task finished: it no longer needs its arguments' values, only
    /// their lineage in case its own results are lost.
    pub(crate) fn args_to_lineage(&mut self, task_id: TaskId) {
        let Some(t) = self.tasks.get_mut(&task_id) else { return };
        if t.arg_hold != ArgHold::Task {
            return;
        }
        t.arg_hold = ArgHold::Lineage;
        let ids = Self::held_ids(&t.spec);
        for id in &ids {
            if let Some(o) = self.objects.get_mut(id) {
                o.task_refs = o.task_refs.saturating_sub(1);
                o.lineage_refs += 1;
            }
        }
        self.lineage.push_back(task_id);
        self.free_all(ids);
        self.bound_lineage();
    }

    /// Evicts the oldest lineage beyond the configured bound.
    fn bound_lineage(&mut self) {
        let mut work = Vec::new();
        while self.lineage.len() > self.config.max_lineage_tasks {
            let Some(old) = self.lineage.pop_front() else { break };
            let Some(t) = self.tasks.get(&old) else { continue };
            if t.arg_hold != ArgHold::Lineage {
                continue;
            }
            self.release_args_into(old, &mut work);
            if let Some(t) = self.tasks.get_mut(&old) {
                t.lineage_evicted = true;
                t.spec.args.clear();
            }
        }
        self.free_all(work);
    }

    /// Frees an object everywhere once nothing refers to it any more.
    pub(crate) fn maybe_free(&mut self, id: ObjectId) {
        self.free_all(vec![id]);
    }

    /// Frees objects iteratively: dropping a task releases its arguments,
    /// which may free them and drop their own creators, and so on.
    pub(crate) fn free_all(&mut self, mut work: Vec<ObjectId>) {
        while let Some(id) = work.pop() {
            self.free_one(id, &mut work);
        }
    }

    fn free_one(&mut self, id: ObjectId, work: &mut Vec<ObjectId>) {
        let Some(o) = self.objects.get(&id) else { return };
        if o.refs > 0 || o.task_refs > 0 || !o.borrowers.is_empty() {
            return;
        }
        if o.borrowed.is_some() {
            // Owned elsewhere: nothing to delete here, even pending. Lineage
            // does not keep a borrow (it would pin the owner's value for as
            // long as this raylet remembers the task): a task rebuilt later
            // finds the argument gone and fails saying so.
            self.end_borrow(id);
            return;
        }
        if o.state == ObjState::Pending {
            return;
        }
        let creator = id.task_id();
        let rebuildable = !id.is_put() && self.tasks.get(&creator).is_some_and(|t| !t.lineage_evicted);
        let keep_lineage = o.lineage_refs > 0 && rebuildable && matches!(o.state, ObjState::Ready | ObjState::Lineage);
        if o.state == ObjState::Lineage && keep_lineage {
            return;
        }
        let Some(o) = self.objects.get_mut(&id) else { return };
        // The value goes: so do its holds on the references inside it.
        for c in std::mem::take(&mut o.contained) {
            work.push(c);
            if let Some(inner) = self.objects.get_mut(&c) {
                inner.refs = inner.refs.saturating_sub(1);
            }
        }
        let Some(o) = self.objects.get_mut(&id) else { return };
        let mut nodes = std::mem::take(&mut o.locations);
        for c in std::mem::take(&mut o.copies) {
            if !nodes.contains(&c) {
                nodes.push(c);
            }
        }
        if keep_lineage {
            o.state = ObjState::Lineage;
            o.inline = None;
        } else {
            self.objects.remove(&id);
        }
        for n in nodes {
            if n == self.node_id {
                continue;
            }
            if let Some(addr) = self.view.address(&n).map(str::to_string) {
                if self.view.is_alive(&n) {
                    self.send_peer(&addr, PeerMsg::Free(id));
                }
            }
        }
        // The primary here, or a secondary copy a `get` pulled here.
        self.out.push(Effect::Delete(id));
        if keep_lineage || id.is_put() {
            return;
        }
        if let Some(t) = self.tasks.get_mut(&creator) {
            t.live_returns = t.live_returns.saturating_sub(1);
            if t.state.terminal() && t.live_returns == 0 {
                self.release_args_into(creator, work);
                self.tasks.remove(&creator);
            }
        }
    }

    pub(crate) fn maybe_drop_task(&mut self, task_id: TaskId) {
        if let Some(t) = self.tasks.get(&task_id) {
            if t.state.terminal() && t.live_returns == 0 {
                let mut work = Vec::new();
                self.release_args_into(task_id, &mut work);
                self.tasks.remove(&task_id);
                self.free_all(work);
            }
        }
    }

    /// What the owner knows of `id`; registers `waiter` when it is pending
    /// (once per call: a call that looks again is not added twice).
    pub(crate) fn lookup(&mut self, id: ObjectId, waiter: Option<&mpsc::Sender<ObjectId>>) -> Lookup {
        let Some(o) = self.objects.get(&id) else { return Lookup::Unknown };
        match o.state {
            ObjState::Pending => {
                if let Some(w) = waiter {
                    self.watch(id, w);
                }
                Lookup::Pending
            }
            ObjState::Failed => Lookup::Inline(o.inline.clone().unwrap_or_default()),
            ObjState::Lineage => {
                if let Err(e) = self.reconstruct(id) {
                    return Lookup::Inline(error_value(&e));
                }
                if let Some(w) = waiter {
                    self.watch(id, w);
                }
                Lookup::Pending
            }
            ObjState::Ready => match &o.inline {
                Some(v) => Lookup::Inline(v.clone()),
                None => {
                    let size = o.size;
                    let nodes = o.locations.clone();
                    let locations = nodes.into_iter().filter_map(|n| self.location_of(n)).collect();
                    Lookup::Stored { size, locations }
                }
            },
        }
    }

    fn watch(&mut self, id: ObjectId, w: &mpsc::Sender<ObjectId>) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        // Calls that ended without being woken leave closed senders behind.
        o.waiters.retain(|x| !x.is_closed());
        if !o.waiters.iter().any(|x| x.same_channel(w)) {
            o.waiters.push(w.clone());
        }
    }

    /// A `get`/`wait` call ended: it waits for `ids` no more.
    pub(crate) fn unwatch(&mut self, ids: &[ObjectId], w: &mpsc::Sender<ObjectId>) {
        for id in ids {
            if let Some(o) = self.objects.get_mut(id) {
                o.waiters.retain(|x| !x.same_channel(w) && !x.is_closed());
            }
        }
    }

    /// Records that a copy of an owned object now lives here (a `get` pulled it).
    pub(crate) fn add_copy_here(&mut self, id: ObjectId) {
        let me = self.node_id;
        if let Some(o) = self.objects.get_mut(&id) {
            if !o.copies.contains(&me) {
                o.copies.push(me);
            }
        }
    }
}
