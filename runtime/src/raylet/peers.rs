//! Connections to other raylets, and an outbox per peer that batches what
//! this raylet sends it: tasks to execute, results for tasks it owns, and
//! objects to free.
//!
//! One sender task per peer drains its outbox: whatever accumulated while the
//! previous call was in flight goes out as one call of each kind, so a burst
//! of thousands of tasks costs a handful of RPCs. The outbox channel is
//! unbounded in type; what it holds is bounded by the tasks and objects this
//! raylet owns, which the owner tables already hold.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use shoal_proto::v1 as pb;
use shoal_proto::v1::raylet_client::RayletClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::ids::{NodeId, TaskId};
use crate::raylet::Inner;

/// Most items of one kind sent in one call.
const BATCH: usize = 4096;

/// Something to send to a peer raylet.
pub(crate) enum PeerMsg {
    Execute(pb::TaskSpec),
    Result(pb::TaskResult),
    Free(crate::ids::ObjectId),
    Cancel(pb::CancelTaskRequest),
}

struct Peer {
    tx: mpsc::UnboundedSender<PeerMsg>,
    client: RayletClient<Channel>,
}

/// Clients and outboxes of peer raylets, by address.
pub(crate) struct Peers {
    map: Mutex<HashMap<String, Peer>>,
    me: Weak<Inner>,
}

/// A raylet client with shoal's message limits.
pub(crate) fn raylet_client(channel: Channel) -> RayletClient<Channel> {
    RayletClient::new(channel)
        .max_decoding_message_size(crate::net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES)
}

impl Peers {
    pub(crate) fn new(me: Weak<Inner>) -> Self {
        Peers { map: Mutex::new(HashMap::new()), me }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure<'a>(&self, map: &'a mut HashMap<String, Peer>, addr: &str) -> Option<&'a Peer> {
        if !map.contains_key(addr) {
            let channel = crate::net::connect_lazy(addr).ok()?;
            let client = raylet_client(channel);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_outbox(addr.to_string(), client.clone(), rx, self.me.clone()));
            map.insert(addr.to_string(), Peer { tx, client });
        }
        map.get(addr)
    }

    /// Queues `msg` for the raylet at `addr`.
    pub(crate) fn send(&self, addr: &str, msg: PeerMsg) {
        let mut map = self.lock();
        if let Some(p) = self.ensure(&mut map, addr) {
            let _ = p.tx.send(msg);
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

async fn run_outbox(
    addr: String,
    mut client: RayletClient<Channel>,
    mut rx: mpsc::UnboundedReceiver<PeerMsg>,
    me: Weak<Inner>,
) {
    let mut execute = Vec::new();
    let mut results = Vec::new();
    let mut frees = Vec::new();
    let mut cancels = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                PeerMsg::Execute(t) => execute.push(t),
                PeerMsg::Result(r) => results.push(r),
                PeerMsg::Free(id) => frees.push(id.to_bytes()),
                PeerMsg::Cancel(c) => cancels.push(c),
            }
            if execute.len() + results.len() + frees.len() >= BATCH {
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
            let node = inner.core().view.nodes().find(|n| n.address == addr).map(|n| n.id);
            match reply {
                Ok(r) => {
                    let spilled = r.into_inner().spilled;
                    if !spilled.is_empty() {
                        let from = node.unwrap_or(NodeId([0; 8]));
                        let mut core = inner.core();
                        core.stats.spilled_back += spilled.len() as u64;
                        for s in spilled {
                            core.on_spillback(from, s);
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(peer = %addr, error = %status.message(), "sending tasks failed");
                    inner.core().on_dispatch_failed(node, ids, status.message());
                }
            }
        }
        if !results.is_empty() {
            let batch = std::mem::take(&mut results);
            // The owner may be briefly unreachable; try a few times before
            // giving up (the owner then sees the node's death and retries).
            for attempt in 0..3 {
                match client.report_results(pb::ReportResultsRequest { results: batch.clone() }).await {
                    Ok(_) => break,
                    Err(status) => {
                        tracing::warn!(peer = %addr, attempt, error = %status.message(), "reporting results failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                    }
                }
            }
        }
        for c in cancels.drain(..) {
            if let Err(status) = client.cancel_task(c).await {
                tracing::debug!(peer = %addr, error = %status.message(), "cancelling a task failed");
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
