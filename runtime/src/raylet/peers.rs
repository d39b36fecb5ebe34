//! Connections to other raylets, and an outbox per peer that batches what
//! this raylet sends it: tasks to execute, results for tasks it owns, and
//! objects to free.
//!
//! One sender task per peer drains its outbox: whatever accumulated while the
//! previous call was in flight goes out as one call of each kind, so a burst
//! of thousands of tasks costs a handful of RPCs.
//!
//! Bounds: the outbox holds at most [`OUTBOX_BOUND`] messages. When a
//! stalled peer fills it, a task to execute there fails over to another
//! node (the owner retries it), a cancel or a free is dropped and counted
//! (a cancelled task's results are ignored by its owner anyway; a copy not
//! freed is at worst held until that peer restarts). Results are never
//! dropped: they wait in their own queue, which holds at most one result
//! per attempt this node ran for that owner, and are retried until the
//! owner acknowledges them or is declared dead — an owner that cannot be
//! reached for a while is either back soon or declared dead by the GCS,
//! and then its tasks fail with `OwnerDied` where their results are read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::net::Channel;
use shoal_proto::v1 as pb;
use shoal_proto::v1::raylet_client::RayletClient;
use tokio::sync::{mpsc, Notify};

use crate::ids::{NodeId, TaskId};
use crate::raylet::Inner;

/// Most items of one kind sent in one call.
const BATCH: usize = 4096;
/// Most messages (other than results) queued for one peer.
pub(crate) const OUTBOX_BOUND: usize = 65_536;
/// Longest pause between two tries of delivering results.
const MAX_RESULT_BACKOFF: Duration = Duration::from_secs(2);

/// Something to send to a peer raylet.
pub(crate) enum PeerMsg {
    Execute(pb::TaskSpec),
    Result(pb::TaskResult),
    Free(crate::ids::ObjectId),
    Cancel(pb::CancelTaskRequest),
    /// This raylet no longer borrows the peer's object.
    Unborrow(crate::ids::ObjectId),
}

/// Results waiting for one owner.
#[derive(Default)]
struct ResultQueue {
    items: Mutex<Vec<pb::TaskResult>>,
    ready: Notify,
}

struct Peer {
    tx: mpsc::Sender<PeerMsg>,
    results: Arc<ResultQueue>,
    client: RayletClient<Channel>,
}

/// Clients and outboxes of peer raylets, by address.
pub(crate) struct Peers {
    map: Mutex<HashMap<String, Peer>>,
    me: Weak<Inner>,
    /// Frees, cancels and borrow releases dropped because a peer's outbox
    /// was full (a dropped release keeps the object at its owner until this
    /// raylet dies).
    pub dropped: AtomicU64,
}

/// What the owner of undelivered results looks like from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnerState {
    /// Alive in the cluster view.
    Alive,
    /// Declared dead, or unknown to the view.
    Gone,
}

/// How long to wait before the next try at delivering results, or `None`
/// to give them up (their owner is gone, and with it everyone who could
/// read them).
pub(crate) fn result_retry(owner: OwnerState, tries: u32) -> Option<Duration> {
    match owner {
        OwnerState::Gone => None,
        OwnerState::Alive => {
            Some((Duration::from_millis(100) * 2u32.saturating_pow(tries.min(8))).min(MAX_RESULT_BACKOFF))
        }
    }
}

impl Peers {
    pub(crate) fn new(me: Weak<Inner>) -> Self {
        Peers { map: Mutex::new(HashMap::new()), me, dropped: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure<'a>(&self, map: &'a mut HashMap<String, Peer>, addr: &str) -> Option<&'a Peer> {
        if !map.contains_key(addr) {
            let token = self.me.upgrade().and_then(|i| i.config.token.clone());
            let channel = crate::net::connect_lazy(addr, token.as_ref()).ok()?;
            let client = crate::net::raylet_client(channel);
            let (tx, rx) = mpsc::channel(OUTBOX_BOUND);
            let results = Arc::new(ResultQueue::default());
            tokio::spawn(run_outbox(addr.to_string(), client.clone(), rx, self.me.clone()));
            tokio::spawn(run_results(addr.to_string(), client.clone(), results.clone(), self.me.clone()));
            map.insert(addr.to_string(), Peer { tx, results, client });
        }
        map.get(addr)
    }

    /// Queues `msg` for the raylet at `addr`. A task that cannot be queued
    /// is returned (the caller fails it over).
    pub(crate) fn send(&self, addr: &str, msg: PeerMsg) -> Result<(), Box<pb::TaskSpec>> {
        let mut map = self.lock();
        let Some(p) = self.ensure(&mut map, addr) else {
            return match msg {
                PeerMsg::Execute(t) => Err(Box::new(t)),
                _ => Ok(()),
            };
        };
        if let PeerMsg::Result(r) = msg {
            p.results.items.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            p.results.ready.notify_one();
            return Ok(());
        }
        match p.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => match m {
                PeerMsg::Execute(t) => Err(Box::new(t)),
                _ => {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        tracing::warn!(peer = %addr, dropped = n + 1, "outbox full: dropping frees, cancels and borrow releases");
                    }
                    Ok(())
                }
            },
        }
    }

    /// A client of the raylet at `addr`.
    pub(crate) fn client(&self, addr: &str) -> Option<RayletClient<Channel>> {
        let mut map = self.lock();
        self.ensure(&mut map, addr).map(|p| p.client.clone())
    }

    /// Drops the connection to a dead peer.
    pub(crate) fn forget(&self, addr: &str) {
        self.lock().remove(addr);
    }
}

/// Whether the GCS counts the raylet at `addr` alive.
pub(crate) fn owner_state(inner: &Arc<Inner>, addr: &str) -> OwnerState {
    let alive = inner.core().owner.view.nodes().any(|n| n.address == addr && n.alive);
    if alive {
        OwnerState::Alive
    } else {
        OwnerState::Gone
    }
}

/// Delivers results to the owner at `addr` until it acknowledges them or
/// is gone.
async fn run_results(addr: String, mut client: RayletClient<Channel>, q: Arc<ResultQueue>, me: Weak<Inner>) {
    loop {
        q.ready.notified().await;
        let mut tries = 0;
        loop {
            let batch: Vec<pb::TaskResult> = {
                let mut items = q.items.lock().unwrap_or_else(|e| e.into_inner());
                let n = items.len().min(BATCH);
                items.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            match client.report_results(pb::ReportResultsRequest { results: batch.clone() }).await {
                Ok(_) => {
                    tries = 0;
                    release_lent(&me, &batch);
                }
                Err(status) => {
                    let Some(inner) = me.upgrade() else { return };
                    match result_retry(owner_state(&inner, &addr), tries) {
                        Some(pause) => {
                            tracing::warn!(owner = %addr, tries, error = %status.message(), "reporting results failed; retrying");
                            drop(inner);
                            // Put them back in front, in order.
                            {
                                let mut items = q.items.lock().unwrap_or_else(|e| e.into_inner());
                                let rest = std::mem::replace(&mut *items, batch);
                                items.extend(rest);
                            }
                            tries += 1;
                            tokio::time::sleep(pause).await;
                        }
                        None => {
                            tracing::warn!(owner = %addr, results = batch.len(), "the owner is gone; dropping its results");
                            // Results of a gone owner: nobody can read them; drop the rest too.
                            let rest = std::mem::take(&mut *q.items.lock().unwrap_or_else(|e| e.into_inner()));
                            release_lent(&me, &batch);
                            release_lent(&me, &rest);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The owner holds what these results returned (or is gone): this raylet
/// lets go of the references it held for them.
fn release_lent(me: &Weak<Inner>, results: &[pb::TaskResult]) {
    let Some(inner) = me.upgrade() else { return };
    let mut core = inner.core();
    if core.owner.lent_for_results.is_empty() {
        return;
    }
    for r in results {
        if let Ok(t) = TaskId::from_slice(&r.task_id) {
            core.owner.release_lent(t, r.attempt);
        }
    }
}

async fn run_outbox(addr: String, mut client: RayletClient<Channel>, mut rx: mpsc::Receiver<PeerMsg>, me: Weak<Inner>) {
    let mut execute = Vec::new();
    let mut frees = Vec::new();
    let mut cancels = Vec::new();
    let mut unborrows = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                PeerMsg::Execute(t) => execute.push(t),
                // Results go through their own queue; never here.
                PeerMsg::Result(_) => {}
                PeerMsg::Free(id) => frees.push(id.to_bytes()),
                PeerMsg::Cancel(c) => cancels.push(c),
                PeerMsg::Unborrow(id) => unborrows.push(id.to_bytes()),
            }
            if execute.len() + frees.len() + unborrows.len() >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !execute.is_empty() {
            let tasks = std::mem::take(&mut execute);
            let ids: Vec<(TaskId, u32)> =
                tasks.iter().filter_map(|t| TaskId::from_slice(&t.task_id).ok().map(|id| (id, t.attempt))).collect();
            let Some(inner) = me.upgrade() else { return };
            let owner_node_id = inner.node_id.to_bytes();
            drop(inner);
            let reply = client.execute_tasks(pb::ExecuteTasksRequest { owner_node_id, tasks }).await;
            let Some(inner) = me.upgrade() else { return };
            let mut core = inner.core();
            let node = core.owner.view.nodes().find(|n| n.address == addr).map(|n| n.id);
            match reply {
                Ok(r) => {
                    let from = node.unwrap_or(NodeId([0; 8]));
                    for s in r.into_inner().spilled {
                        core.on_spillback(from, s);
                    }
                }
                Err(status) => {
                    tracing::warn!(peer = %addr, error = %status.message(), "sending tasks failed");
                    core.on_dispatch_failed(node, ids, status.message());
                }
            }
        }
        for c in cancels.drain(..) {
            if let Err(status) = client.cancel_task(c).await {
                tracing::debug!(peer = %addr, error = %status.message(), "cancelling a task failed");
            }
        }
        if !unborrows.is_empty() {
            let Some(inner) = me.upgrade() else { return };
            let borrower = inner.node_id.to_string();
            drop(inner);
            let refs = pb::RefUpdate { remove: std::mem::take(&mut unborrows), ..Default::default() };
            if let Err(status) = client.update_borrows(pb::UpdateBorrowsRequest { borrower, refs: Some(refs) }).await {
                tracing::debug!(peer = %addr, error = %status.message(), "releasing borrowed objects failed");
            }
        }
        if !frees.is_empty() {
            let object_ids = std::mem::take(&mut frees);
            if let Err(status) = client.free_objects(pb::FreeObjectsRequest { object_ids }).await {
                tracing::debug!(peer = %addr, error = %status.message(), "freeing objects failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_retried_with_growing_pauses_while_their_owner_lives() {
        let pauses: Vec<Duration> = (0..12).map(|t| result_retry(OwnerState::Alive, t).unwrap()).collect();
        assert_eq!(pauses[0], Duration::from_millis(100));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), MAX_RESULT_BACKOFF);
    }

    #[test]
    fn results_of_a_gone_owner_are_given_up() {
        assert_eq!(result_retry(OwnerState::Gone, 0), None);
    }

    #[tokio::test]
    async fn a_stalled_peer_fills_a_bounded_outbox_and_tasks_fail_over_instead() {
        // A peer that accepts connections and never answers: every call to it hangs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = std::thread::spawn(move || {
            let conns: Vec<_> = listener.incoming().take(4).filter_map(Result::ok).collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(conns);
        });
        let peers = Peers::new(Weak::new());
        // The sender takes up to one batch and hangs on it; the rest queue
        // up to the bound, then frees are dropped and counted.
        let mut sent = 0usize;
        while peers.dropped.load(Ordering::Relaxed) == 0 {
            assert!(peers.send(&addr, PeerMsg::Free(crate::ids::ObjectId::default())).is_ok());
            sent += 1;
            assert!(sent <= OUTBOX_BOUND + 2 * BATCH, "the outbox grew past its bound: {sent} queued");
            if sent.is_multiple_of(1024) {
                tokio::task::yield_now().await;
            }
        }
        assert!(sent >= OUTBOX_BOUND, "only {sent} queued before dropping");
        // A task for that peer is handed back to be placed elsewhere.
        let task = pb::TaskSpec { name: "t".into(), ..Default::default() };
        let back = peers.send(&addr, PeerMsg::Execute(task)).expect_err("a full outbox refuses a task");
        assert_eq!(back.name, "t");
        // Results never go through the bounded outbox: they are queued for retries.
        assert!(peers.send(&addr, PeerMsg::Result(pb::TaskResult::default())).is_ok());
        drop(peers);
        drop(held);
    }
}
