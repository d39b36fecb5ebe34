//! What the raylet's state machine asks the world to do.
//!
//! The owner and the executor never block, spawn or send while they hold
//! the core lock: each call records [`Effect`]s, and the coordinator
//! ([`CoreGuard`](super::CoreGuard)) carries them out after the lock is
//! released — sends on channels at once, process starts, process-tree kills
//! and store reads that may touch disk on the blocking pool.
//!
//! Lock order, where two locks meet: the core lock, then the object store's
//! or the peers' (never the other way). Effects run with no lock held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::error::{ErrorKind, TaskError};
use crate::ids::{ObjectId, TaskId, WorkerId};
use crate::raylet::executor::worker_pool::{Attempt, WorkerKind};
use crate::raylet::owner::borrows::{self, PendingBorrow};
use crate::raylet::peers::{self, OwnerState, PeerMsg};
use crate::raylet::Inner;

/// One thing to do once the lock is released.
pub(crate) enum Effect {
    /// Queue a message for a peer raylet.
    Peer { addr: String, msg: PeerMsg },
    /// Drop the connection to a dead peer.
    ForgetPeer(String),
    /// Drop this node's copy of an object.
    Delete(ObjectId),
    /// Pull an argument of a local attempt into the store.
    Pull { attempt: Attempt, object: ObjectId, locations: Vec<pb::Location>, size: u64 },
    /// Start a worker process of a kind.
    SpawnWorker(WorkerId, WorkerKind),
    /// Kill a worker's process tree (a forced cancel).
    KillTree(u32),
    /// Send an attempt to a worker, reading its stored arguments first.
    Dispatch(Dispatch),
    /// Schedule a retried task again after a back-off.
    RetryLater { task: TaskId, attempt: u32, delay: Duration },
    /// Ask the owner of a borrowed object for its state (after a pause),
    /// until it is no longer pending.
    ResolveBorrowed { owner: String, id: ObjectId, after: Duration },
}

/// An attempt on its way to a worker.
pub(crate) struct Dispatch {
    pub worker: WorkerId,
    pub attempt: Attempt,
    pub tx: mpsc::UnboundedSender<pb::ToWorker>,
    pub task: pb::ExecuteTask,
    /// Arguments to read from the store: position in `task.args`, object.
    pub stored: Vec<(usize, ObjectId)>,
}

/// Carries out `effects` with no lock held.
pub(crate) fn run(inner: &Arc<Inner>, effects: Vec<Effect>) {
    let rt = tokio::runtime::Handle::try_current().ok();
    let mut deletes = Vec::new();
    for e in effects {
        match e {
            Effect::Peer { addr, msg } => {
                if let Err(task) = inner.peers.send(&addr, msg) {
                    // The peer's outbox is full (or its address is bad): fail over.
                    let mut core = inner.core();
                    let node = core.owner.view.nodes().find(|n| n.address == addr).map(|n| n.id);
                    if let Ok(id) = TaskId::from_slice(&task.task_id) {
                        core.on_dispatch_failed(node, vec![(id, task.attempt)], "the node's outbox is full");
                    }
                }
            }
            Effect::ForgetPeer(addr) => inner.peers.forget(&addr),
            Effect::Delete(id) => deletes.push(id),
            Effect::Pull { attempt, object, locations, size } => {
                let Some(rt) = &rt else { continue };
                let inner = inner.clone();
                rt.spawn(async move {
                    let res = inner.metrics.timed_transfer(inner.objects.pull_object(object, &locations, size)).await;
                    inner.core().arg_pulled(attempt, object, res);
                });
            }
            Effect::SpawnWorker(id, kind) => {
                if !inner.spawner.spawn(id, kind) {
                    inner.core().worker_spawn_failed(id);
                }
            }
            Effect::KillTree(pid) => match &rt {
                Some(rt) => drop(rt.spawn_blocking(move || crate::process::kill_tree(pid))),
                None => crate::process::kill_tree(pid),
            },
            Effect::Dispatch(d) if d.stored.is_empty() => send_to_worker(inner, d),
            Effect::Dispatch(d) => {
                let inner = inner.clone();
                let read = move || {
                    let mut d = d;
                    for (pos, id) in std::mem::take(&mut d.stored) {
                        // May read a spilled object back from disk.
                        let (why, damaged) = match inner.store.get(&id) {
                            Ok(Some(v)) => {
                                d.task.args[pos] = v;
                                continue;
                            }
                            Ok(None) => (format!("argument {id} was evicted before the task started"), false),
                            Err(e) => (format!("argument {id}: {e}"), true),
                        };
                        let mut core = inner.core();
                        if damaged {
                            core.local_copy_lost(id, &why);
                        }
                        core.dispatch_failed(d.worker, d.attempt, TaskError::new(ErrorKind::ObjectLost, why));
                        return;
                    }
                    send_to_worker(&inner, d);
                };
                match &rt {
                    Some(rt) => drop(rt.spawn_blocking(read)),
                    None => read(),
                }
            }
            Effect::ResolveBorrowed { owner, id, after } => {
                let Some(rt) = &rt else { continue };
                rt.spawn(resolve_borrowed(inner.clone(), owner, id, after));
            }
            Effect::RetryLater { task, attempt, delay } => {
                let Some(rt) = &rt else { continue };
                let inner = inner.clone();
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    inner.core().schedule_retry(task, attempt);
                });
            }
        }
    }
    if !deletes.is_empty() {
        let inner = inner.clone();
        // Deleting a spilled object may remove its spill file.
        let delete = move || {
            for id in deletes {
                inner.store.delete(&id);
            }
        };
        match &rt {
            Some(rt) => drop(rt.spawn_blocking(delete)),
            None => delete(),
        }
    }
}

/// How long one `GetObjectStatus` call to a borrowed object's owner waits
/// for it to be ready before asking again.
const RESOLVE_WAIT_MS: u64 = 10_000;
/// Pause before asking an owner again after a failed call.
const RESOLVE_RETRY: Duration = Duration::from_millis(200);

/// Follows a borrowed object at its owner until it is ready or failed, or
/// no longer borrowed here. A failed call is retried while the GCS counts the
/// owner alive; a dead owner fails the object with `OwnerDied`.
async fn resolve_borrowed(inner: Arc<Inner>, owner: String, id: ObjectId, after: Duration) {
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    loop {
        if !inner.core().owner.is_borrowing(id) {
            return;
        }
        let Some(mut client) = inner.peers.client(&owner) else {
            let e = borrows::owner_unreachable(id, &owner, "its address is invalid");
            inner.core().owner.borrow_resolved(id, Err(e));
            return;
        };
        let req =
            pb::GetObjectStatusRequest { object_ids: vec![id.to_bytes()], wait_for: 1, timeout_ms: RESOLVE_WAIT_MS };
        match client.get_object_status(req).await {
            Ok(r) => {
                let st = r.into_inner().statuses.into_iter().next().unwrap_or_default();
                if st.kind == pb::ObjectStatusKind::ObjectPending as i32 {
                    continue;
                }
                inner.core().owner.borrow_resolved(id, Ok(st));
                return;
            }
            Err(s) => {
                if peers::owner_state(&inner, &owner) == OwnerState::Gone {
                    let e = borrows::owner_unreachable(id, &owner, s.message());
                    inner.core().owner.borrow_resolved(id, Err(e));
                    return;
                }
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    }
}

/// Settles the borrows a session message took before the message counts
/// as applied: registers new ones at their owners (one call per owner) and
/// waits for those another message is registering.
pub(crate) async fn settle_borrows(inner: &Arc<Inner>, borrows: Vec<PendingBorrow>) {
    let mut by_owner: HashMap<String, Vec<ObjectId>> = HashMap::new();
    let mut waits = Vec::new();
    for b in borrows {
        if b.first {
            by_owner.entry(b.owner).or_default().push(b.id);
        } else {
            waits.push(b.settled);
        }
    }
    let borrower = inner.node_id.to_string();
    for (owner, ids) in by_owner {
        let result = match inner.peers.client(&owner) {
            None => Err("its address is invalid".to_string()),
            Some(mut c) => {
                let refs = pb::RefUpdate { add: ids.iter().map(|id| id.to_bytes()).collect(), ..Default::default() };
                let req = pb::UpdateBorrowsRequest { borrower: borrower.clone(), refs: Some(refs) };
                c.update_borrows(req).await.map(|r| r.into_inner().unknown).map_err(|s| s.message().to_string())
            }
        };
        let mut core = inner.core();
        for id in ids {
            let r = match &result {
                Ok(unknown) if unknown.iter().any(|b| b[..] == id.to_bytes()[..]) => {
                    Err(borrows::unknown_at_owner(id, &owner))
                }
                Ok(_) => Ok(()),
                Err(why) => Err(borrows::owner_unreachable(id, &owner, why)),
            };
            core.owner.borrow_registered(id, &owner, r);
        }
    }
    for mut rx in waits {
        let _ = rx.wait_for(|settled| *settled).await;
    }
}

fn send_to_worker(inner: &Arc<Inner>, d: Dispatch) {
    let msg = pb::ToWorker { kind: Some(pb::to_worker::Kind::Execute(d.task)) };
    if d.tx.send(msg).is_err() {
        inner.core().on_worker_exit(d.worker, "its connection closed");
    }
}
