//! A raylet's view of the cluster: every node's address, total and available
//! resources, labels and liveness, kept current from the GCS's deltas.
//!
//! Loads reported through the GCS lag by up to a broadcast tick. To keep a
//! burst of placements from piling onto one node that still looks free, the
//! owner subtracts what it sends to a node from that node's view until the
//! node's next report replaces it.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::v1 as pb;

use crate::ids::NodeId;
use crate::resources::ResourceSet;

/// One node as this raylet sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// Raylet gRPC address.
    pub address: String,
    /// Everything the node has.
    pub total: ResourceSet,
    /// What is free now (as last reported, minus what was sent since).
    pub available: ResourceSet,
    /// Node labels.
    pub labels: HashMap<String, String>,
    /// Tasks queued there.
    pub queued: u32,
    /// Whether the node is alive.
    pub alive: bool,
}

/// All nodes, ordered by id so that placement is deterministic.
#[derive(Default, Debug)]
pub struct ClusterView {
    nodes: BTreeMap<NodeId, NodeView>,
}

impl ClusterView {
    fn upsert_info(&mut self, info: &pb::NodeInfo) {
        let Ok(id) = NodeId::from_slice(&info.node_id) else { return };
        let alive = info.state == pb::NodeState::NodeAlive as i32;
        let total = ResourceSet::from(info.total.as_ref());
        let entry = self.nodes.entry(id).or_insert_with(|| NodeView {
            id,
            address: info.address.clone(),
            available: total.clone(),
            total: total.clone(),
            labels: info.labels.clone(),
            queued: 0,
            alive,
        });
        entry.address = info.address.clone();
        entry.total = total;
        entry.labels = info.labels.clone();
        entry.alive = alive;
    }

    fn apply_load(&mut self, load: &pb::NodeLoad, local: NodeId) {
        let Ok(id) = NodeId::from_slice(&load.node_id) else { return };
        if id == local {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.available = ResourceSet::from(load.available.as_ref());
            n.queued = load.queued_tasks;
        }
    }

    /// Takes the full view given at registration.
    pub fn apply_snapshot(&mut self, nodes: &[pb::NodeInfo], loads: &[pb::NodeLoad], local: NodeId) {
        for n in nodes {
            self.upsert_info(n);
        }
        for l in loads {
            self.apply_load(l, local);
        }
    }

    /// Applies a delta; returns the nodes that died in it.
    pub fn apply_update(&mut self, u: &pb::ClusterViewUpdate, local: NodeId) -> Vec<NodeId> {
        for n in &u.joined {
            self.upsert_info(n);
        }
        let mut dead = Vec::new();
        for n in &u.dead {
            self.upsert_info(n);
            if let Ok(id) = NodeId::from_slice(&n.node_id) {
                dead.push(id);
            }
        }
        for l in &u.loads {
            self.apply_load(l, local);
        }
        dead
    }

    /// Sets the local node's entry from the raylet's exact state.
    pub fn set_local(
        &mut self,
        id: NodeId,
        address: &str,
        total: &ResourceSet,
        available: &ResourceSet,
        queued: u32,
        labels: &HashMap<String, String>,
    ) {
        let n = self.nodes.entry(id).or_insert_with(|| NodeView {
            id,
            address: address.to_string(),
            total: total.clone(),
            available: available.clone(),
            labels: labels.clone(),
            queued,
            alive: true,
        });
        n.available.clone_from(available);
        n.queued = queued;
    }

    /// Records that `req` was just sent to `id`.
    pub fn reserve(&mut self, id: NodeId, req: &ResourceSet) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.available.subtract(req);
            n.queued += 1;
        }
    }

    /// Records that a task sent to `id` finished, until its next report says more.
    pub fn release(&mut self, id: NodeId, req: &ResourceSet) {
        if let Some(n) = self.nodes.get_mut(&id) {
            let total = n.total.clone();
            n.available.add_capped(req, &total);
            n.queued = n.queued.saturating_sub(1);
        }
    }

    /// A node's entry.
    pub fn get(&self, id: &NodeId) -> Option<&NodeView> {
        self.nodes.get(id)
    }

    /// Every node, alive or dead, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.values()
    }

    /// Number of alive nodes.
    pub fn alive_count(&self) -> usize {
        self.nodes.values().filter(|n| n.alive).count()
    }

    /// Whether `id` is known and alive.
    pub fn is_alive(&self, id: &NodeId) -> bool {
        self.nodes.get(id).is_some_and(|n| n.alive)
    }

    /// Address of a node.
    pub fn address(&self, id: &NodeId) -> Option<&str> {
        self.nodes.get(id).map(|n| n.address.as_str())
    }
}
