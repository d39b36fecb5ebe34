//! Borrowed references: objects that live past the raylet that owns them
//! being their only holder (ARCHITECTURE, "Borrowed references").
//!
//! Both sides live here, because every raylet is both:
//!
//! - **As owner**, an object counts the raylets that borrow it, as adds minus
//!   removes per borrower (counts, not a set, so that an add and a remove
//!   that cross on the wire still cancel out). A borrowed object is never
//!   freed; a borrower that dies lets go of everything it borrowed.
//! - **As borrower**, an object owned elsewhere that this raylet's sessions
//!   or tasks hold gets an entry in the owner's table marked
//!   [`Borrowed`]. The entry counts the local holds exactly as an owned
//!   object's do (session references, tasks taking it as an argument, their
//!   lineage), so the task manager and the reference counter treat it like
//!   any other object: tasks wait on it, `get`s find it. What differs is
//!   where its state comes from (its owner's answer to `GetObjectStatus`)
//!   and what freeing it means (telling the owner, never deleting a copy:
//!   the copy here may be the owner's primary).
//!
//! The protocol's one ordering rule: a borrow is registered at the owner,
//! and the owner has answered, before the session message that took it
//! counts as applied. Whoever handed the reference over still holds it
//! until then (a worker's client flushes its session before its task
//! reports done), so the owner never frees an object a borrower is about
//! to register.

use std::time::Duration;

use bytes::Bytes;
use shoal_proto::v1 as pb;
use tokio::sync::watch;

use crate::error::{ErrorKind, TaskError};
use crate::ids::{NodeId, ObjectId};
use crate::raylet::effects::Effect;
use crate::raylet::owner::{oid, ObjState, OwnedObject, Owner};
use crate::raylet::peers::PeerMsg;
use crate::value::error_value;

/// How long to wait before asking a borrowed object's owner again when its
/// answer named no copy this raylet can reach.
const RESOLVE_AGAIN: Duration = Duration::from_millis(200);

/// Where a borrow stands with the object's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Registration {
    /// Sent, not answered yet.
    Registering,
    /// The owner counts this raylet as a borrower.
    Registered,
    /// The owner refused it or could not be reached: the entry is failed and
    /// nothing is to be released at the owner.
    Refused,
}

/// The borrower's side of an object owned by another raylet.
pub(crate) struct Borrowed {
    /// The owner's address.
    pub owner: String,
    pub registration: Registration,
    /// Turns `true` once the registration is settled, either way.
    pub settled: watch::Sender<bool>,
}

/// A borrow taken by a session message that must be settled at the owner
/// before the message counts as applied.
pub(crate) struct PendingBorrow {
    pub owner: String,
    pub id: ObjectId,
    /// This message took the first hold: it registers the borrow. Otherwise
    /// an earlier message is registering it, and this one waits for that.
    pub first: bool,
    pub settled: watch::Receiver<bool>,
}

impl Owner {
    /// Whether a reference naming `owner` is owned by another raylet.
    pub(crate) fn is_foreign(&self, owner: &str) -> bool {
        !owner.is_empty() && owner != self.address
    }

    /// Makes sure `id`, owned by the raylet at `owner`, has an entry here, so
    /// that the caller can count a hold on it. A new entry is pending until
    /// its owner answers; a borrow not yet settled is recorded in
    /// [`Owner::pending_borrows`] for the message being applied.
    pub(crate) fn borrow_entry(&mut self, id: ObjectId, owner: &str) {
        match self.objects.get(&id) {
            Some(o) => {
                if let Some(b) = &o.borrowed {
                    if b.registration == Registration::Registering {
                        self.pending_borrows.push(PendingBorrow {
                            owner: b.owner.clone(),
                            id,
                            first: false,
                            settled: b.settled.subscribe(),
                        });
                    }
                }
            }
            None => {
                let (settled, rx) = watch::channel(false);
                let mut o = OwnedObject::pending();
                o.borrowed = Some(Box::new(Borrowed {
                    owner: owner.to_string(),
                    registration: Registration::Registering,
                    settled,
                }));
                self.objects.insert(id, o);
                self.borrowed += 1;
                self.pending_borrows.push(PendingBorrow { owner: owner.to_string(), id, first: true, settled: rx });
            }
        }
    }

    /// The borrows the last applied message took, to settle before it counts.
    pub(crate) fn take_pending_borrows(&mut self) -> Vec<PendingBorrow> {
        std::mem::take(&mut self.pending_borrows)
    }

    /// The owner answered (or could not be asked) whether it counts this
    /// raylet as a borrower of `id`.
    pub(crate) fn borrow_registered(&mut self, id: ObjectId, owner: &str, result: Result<(), TaskError>) {
        let Some(b) = self.objects.get_mut(&id).and_then(|o| o.borrowed.as_mut()) else {
            // Every local hold ended while the registration was on its way:
            // undo it at the owner.
            if result.is_ok() {
                self.send_peer(owner, PeerMsg::Unborrow(id));
            }
            return;
        };
        b.settled.send_replace(true);
        match result {
            Ok(()) => {
                b.registration = Registration::Registered;
                self.out.push(Effect::ResolveBorrowed { owner: owner.to_string(), id, after: Duration::ZERO });
            }
            Err(e) => {
                b.registration = Registration::Refused;
                self.fail_borrowed(id, e);
            }
        }
    }

    /// Whether `id` is still borrowed here (its resolver stops otherwise).
    pub(crate) fn is_borrowing(&self, id: ObjectId) -> bool {
        self.objects.get(&id).is_some_and(|o| o.borrowed.is_some() && o.state == ObjState::Pending)
    }

    /// What the owner of a borrowed object said of it.
    pub(crate) fn borrow_resolved(&mut self, id: ObjectId, status: Result<pb::ObjectStatus, TaskError>) {
        let st = match status {
            Ok(st) => st,
            Err(e) => return self.fail_borrowed(id, e),
        };
        let owner = match self.objects.get(&id).and_then(|o| o.borrowed.as_ref()) {
            Some(b) => b.owner.clone(),
            None => return,
        };
        match pb::ObjectStatusKind::try_from(st.kind) {
            Ok(pb::ObjectStatusKind::ObjectReady) | Ok(pb::ObjectStatusKind::ObjectFailed) => {
                let failed = st.kind == pb::ObjectStatusKind::ObjectFailed as i32;
                let nodes: Vec<NodeId> = st
                    .locations
                    .iter()
                    .filter_map(|l| NodeId::from_slice(&l.node_id).ok())
                    .filter(|n| *n == self.node_id || self.view.is_alive(n))
                    .collect();
                if st.inline_value.is_none() && nodes.is_empty() {
                    // Its copies are on nodes this raylet does not know alive:
                    // the owner is about to rebuild it. Ask again shortly.
                    self.out.push(Effect::ResolveBorrowed { owner, id, after: RESOLVE_AGAIN });
                    return;
                }
                let Some(o) = self.objects.get_mut(&id) else { return };
                o.state = if failed { ObjState::Failed } else { ObjState::Ready };
                o.size = st.size;
                o.inline = st.inline_value;
                o.locations = nodes;
                self.wake(id);
            }
            Ok(pb::ObjectStatusKind::ObjectPending) => {
                self.out.push(Effect::ResolveBorrowed { owner, id, after: Duration::ZERO });
            }
            _ => self.fail_borrowed(
                id,
                TaskError::new(ErrorKind::ObjectLost, format!("object {id} is no longer known to its owner {owner}")),
            ),
        }
    }

    /// Fails a borrowed object here: its holders read `e`.
    fn fail_borrowed(&mut self, id: ObjectId, e: TaskError) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        let v = error_value(&e);
        o.state = ObjState::Failed;
        o.size = v.data.len() as u64;
        o.inline = Some(v);
        o.locations.clear();
        self.wake(id);
    }

    /// The last local hold on a borrowed object ended: forget it, and let
    /// the owner know when it counted this raylet.
    pub(crate) fn end_borrow(&mut self, id: ObjectId) {
        let Some(o) = self.objects.remove(&id) else { return };
        self.borrowed = self.borrowed.saturating_sub(1);
        let Some(b) = o.borrowed else { return };
        if b.registration == Registration::Registered {
            self.send_peer(&b.owner, PeerMsg::Unborrow(id));
        }
    }

    /// As owner: `borrower` starts holding `add` and stops holding `remove`.
    /// Returns the ids of `add` that are not (or no longer) known here.
    pub(crate) fn update_borrows(&mut self, borrower: NodeId, add: &[Bytes], remove: &[Bytes]) -> Vec<Bytes> {
        let mut unknown = Vec::new();
        for b in add {
            let known = oid(b).filter(|id| self.objects.get(id).is_some_and(|o| o.borrowed.is_none()));
            match known {
                Some(id) => self.count_borrow(id, borrower, 1),
                None => unknown.push(b.clone()),
            }
        }
        for b in remove {
            if let Some(id) = oid(b) {
                self.count_borrow(id, borrower, -1);
            }
        }
        unknown
    }

    fn count_borrow(&mut self, id: ObjectId, borrower: NodeId, delta: i64) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        let was_lent = !o.borrowers.is_empty();
        match o.borrowers.iter_mut().position(|(n, _)| *n == borrower) {
            Some(i) => {
                o.borrowers[i].1 += delta;
                if o.borrowers[i].1 == 0 {
                    o.borrowers.swap_remove(i);
                }
            }
            None => o.borrowers.push((borrower, delta)),
        }
        let lent = !o.borrowers.is_empty();
        self.note_lent(was_lent, lent);
        if !lent {
            self.maybe_free(id);
        }
    }

    fn note_lent(&mut self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => self.lent += 1,
            (true, false) => self.lent = self.lent.saturating_sub(1),
            _ => {}
        }
    }

    /// A node died. As owner: it borrows nothing any more. As borrower:
    /// objects it owned fail with `OwnerDied`, and objects whose only
    /// copies were there are asked for again (their owner rebuilds them).
    pub(crate) fn borrows_on_node_dead(&mut self, node: NodeId, address: Option<&str>) {
        let mut release = Vec::new();
        let mut owner_died = Vec::new();
        let mut ask_again = Vec::new();
        for (id, o) in self.objects.iter_mut() {
            if let Some(i) = o.borrowers.iter().position(|(n, _)| *n == node) {
                o.borrowers.swap_remove(i);
                if o.borrowers.is_empty() {
                    release.push(*id);
                }
            }
            let Some(b) = o.borrowed.as_mut() else { continue };
            if Some(b.owner.as_str()) == address {
                // Nothing to release at a dead owner.
                b.registration = Registration::Refused;
                b.settled.send_replace(true);
                owner_died.push(*id);
            } else if o.state == ObjState::Ready && o.locations.contains(&node) {
                o.locations.retain(|n| *n != node);
                if o.inline.is_none() && o.locations.is_empty() {
                    o.state = ObjState::Pending;
                    ask_again.push((b.owner.clone(), *id));
                }
            }
        }
        for id in release {
            self.lent = self.lent.saturating_sub(1);
            self.maybe_free(id);
        }
        for id in owner_died {
            let e =
                TaskError::new(ErrorKind::OwnerDied, format!("object {id}: its owner {} died", address.unwrap_or("?")));
            self.fail_borrowed(id, e);
        }
        for (owner, id) in ask_again {
            self.out.push(Effect::ResolveBorrowed { owner, id, after: RESOLVE_AGAIN });
        }
    }

    /// The owner's address of a borrowed object, or this raylet's own.
    pub(crate) fn owner_of(&self, o: &OwnedObject) -> String {
        o.borrowed.as_ref().map(|b| b.owner.clone()).unwrap_or_else(|| self.address.clone())
    }
}

/// The error a borrow gets when its owner cannot be asked.
pub(crate) fn owner_unreachable(id: ObjectId, owner: &str, why: &str) -> TaskError {
    TaskError::new(ErrorKind::OwnerDied, format!("object {id}: its owner {owner} is unreachable: {why}"))
}

/// The error a borrow gets when its owner no longer has the object.
pub(crate) fn unknown_at_owner(id: ObjectId, owner: &str) -> TaskError {
    TaskError::new(
        ErrorKind::ObjectLost,
        format!("object {id} was freed by its owner {owner} before this raylet could borrow it"),
    )
}
