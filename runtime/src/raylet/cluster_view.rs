//! A raylet's view of the cluster: every alive node's address, total and
//! available resources, labels and queue, kept current from the GCS.
//!
//! The GCS sends two kinds of update on the heartbeat stream: deltas (nodes
//! that joined, nodes that died, loads that changed) and full views, which
//! *replace* this one. A full view comes first on every heartbeat stream and
//! again whenever the raylet fell behind on deltas, so whatever was missed
//! (a death while the GCS was away, deltas dropped for a slow reader) is
//! corrected by the next full view. The registration reply is merged, never
//! replacing: a GCS that just restarted knows only the nodes that have
//! registered again so far.
//!
//! Invariants: the view holds alive nodes only (and the local node, which
//! the raylet keeps itself). A node that dies is removed as the update that
//! says so is applied, and its id is returned exactly once, so the owner
//! learns each death once and the view never grows with dead nodes.
//!
//! Loads reported through the GCS lag by up to a broadcast tick. To keep a
//! burst of placements from piling onto one node that still looks free, the
//! owner subtracts what it sends to a node from that node's view
//! ([`ClusterView::reserve`]) and gives it back when the task returns, is
//! spilled back or fails ([`ClusterView::release`]); the node's next report
//! replaces the figure either way.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Whether the node is alive. Dead nodes are removed from the view, so
    /// this is true for every entry; kept for the scheduler's filters.
    pub alive: bool,
}

/// All alive nodes, ordered by id so that placement is deterministic.
#[derive(Default, Debug)]
pub struct ClusterView {
    nodes: BTreeMap<NodeId, NodeView>,
    /// Addresses of the latest nodes removed as dead, newest last (at most
    /// [`DEPARTED`]): their owner still needs them to drop its connections.
    departed: std::collections::VecDeque<(NodeId, String)>,
}

/// Dead nodes whose addresses are remembered after they leave the view.
const DEPARTED: usize = 1024;

fn is_alive(info: &pb::NodeInfo) -> bool {
    info.state == pb::NodeState::NodeAlive as i32
}

impl ClusterView {
    /// Adds or refreshes an alive node; keeps its available figure.
    fn upsert_alive(&mut self, id: NodeId, info: &pb::NodeInfo) {
        let total = ResourceSet::from(info.total.as_ref());
        let entry = self.nodes.entry(id).or_insert_with(|| NodeView {
            id,
            address: info.address.clone(),
            available: total.clone(),
            total: total.clone(),
            labels: info.labels.clone(),
            queued: 0,
            alive: true,
        });
        entry.address.clone_from(&info.address);
        entry.total = total;
        entry.labels.clone_from(&info.labels);
        entry.alive = true;
    }

    /// Removes a node; returns its id if it was in the view (alive).
    fn remove(&mut self, id: NodeId) -> Option<NodeId> {
        let n = self.nodes.remove(&id)?;
        if self.departed.len() >= DEPARTED {
            self.departed.pop_front();
        }
        self.departed.push_back((n.id, n.address.clone()));
        n.alive.then_some(n.id)
    }

    /// The address of a node, in the view or lately removed from it as dead.
    pub fn last_address(&self, id: &NodeId) -> Option<&str> {
        self.address(id).or_else(|| self.departed.iter().rev().find(|(n, _)| n == id).map(|(_, a)| a.as_str()))
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

    /// Merges the nodes and loads given at registration: adds and refreshes
    /// alive nodes, removes none. A freshly restarted GCS answers with only
    /// the nodes that registered again so far, so absence proves nothing
    /// here; the full view that opens the heartbeat stream settles it.
    pub fn merge(&mut self, nodes: &[pb::NodeInfo], loads: &[pb::NodeLoad], local: NodeId) {
        for n in nodes.iter().filter(|n| is_alive(n)) {
            if let Ok(id) = NodeId::from_slice(&n.node_id) {
                self.upsert_alive(id, n);
            }
        }
        for l in loads {
            self.apply_load(l, local);
        }
    }

    /// Replaces the view with a full one: alive nodes in `nodes` are kept or
    /// added, every other node (absent, or dead in `nodes`) is removed.
    /// Returns the nodes that were alive here and are not any more, so that
    /// the owner gives up on them. The local node is treated like any other:
    /// if it is missing, the GCS no longer counts it alive and the caller
    /// must rejoin.
    pub fn apply_snapshot(&mut self, nodes: &[pb::NodeInfo], loads: &[pb::NodeLoad], local: NodeId) -> Vec<NodeId> {
        let alive: HashMap<NodeId, &pb::NodeInfo> = nodes
            .iter()
            .filter(|n| is_alive(n))
            .filter_map(|n| NodeId::from_slice(&n.node_id).ok().map(|id| (id, n)))
            .collect();
        let gone: Vec<NodeId> = self.nodes.keys().filter(|id| !alive.contains_key(id)).copied().collect();
        let dead = gone.into_iter().filter_map(|id| self.remove(id)).collect();
        for (id, info) in alive {
            self.upsert_alive(id, info);
        }
        for l in loads {
            self.apply_load(l, local);
        }
        dead
    }

    /// Applies an update from the GCS (a delta, or a full view when
    /// `u.full`); returns the nodes that were alive here and died in it,
    /// each once.
    pub fn apply_update(&mut self, u: &pb::ClusterViewUpdate, local: NodeId) -> Vec<NodeId> {
        if u.full {
            return self.apply_snapshot(&u.joined, &u.loads, local);
        }
        let died: HashSet<NodeId> = u.dead.iter().filter_map(|n| NodeId::from_slice(&n.node_id).ok()).collect();
        for n in u.joined.iter().filter(|n| is_alive(n)) {
            match NodeId::from_slice(&n.node_id) {
                // Joined and died within one delta: never worth adding.
                Ok(id) if !died.contains(&id) => self.upsert_alive(id, n),
                _ => {}
            }
        }
        let mut dead = Vec::new();
        for n in &u.dead {
            let Ok(id) = NodeId::from_slice(&n.node_id) else { continue };
            // A node the GCS resent (or that joined and died unseen) is
            // reported only if this view still had it.
            if let Some(id) = self.remove(id) {
                dead.push(id);
            } else if id == local {
                // The local entry may be absent before the first report; its
                // death must still reach the caller, which rejoins.
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

    /// Gives back a reservation taken by [`ClusterView::reserve`]: the task
    /// sent to `id` finished, was spilled back or failed. Capped at the
    /// node's total; the node's next load report replaces the figure.
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

    /// Every node in the view, in id order.
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

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: NodeId = NodeId([9; 8]);

    fn info(i: u8, alive: bool) -> pb::NodeInfo {
        let state = if alive { pb::NodeState::NodeAlive } else { pb::NodeState::NodeDead };
        pb::NodeInfo {
            node_id: NodeId([i; 8]).to_bytes(),
            address: format!("n{i}:6380"),
            total: Some((&ResourceSet::new().with("cpu", 4.0)).into()),
            state: state as i32,
            ..Default::default()
        }
    }

    fn load(i: u8, cpu: f64, queued: u32) -> pb::NodeLoad {
        pb::NodeLoad {
            node_id: NodeId([i; 8]).to_bytes(),
            available: Some((&ResourceSet::new().with("cpu", cpu)).into()),
            queued_tasks: queued,
            ..Default::default()
        }
    }

    fn ids(v: &ClusterView) -> Vec<NodeId> {
        v.nodes().map(|n| n.id).collect()
    }

    #[test]
    fn a_snapshot_replaces_the_view_and_reports_each_node_that_died_meanwhile() {
        let mut v = ClusterView::default();
        v.merge(&[info(1, true), info(2, true), info(3, true)], &[], LOCAL);
        // After a GCS restart: node 2 died while it was away (absent), node 3
        // is listed dead, node 4 is new.
        let dead = v.apply_snapshot(&[info(1, true), info(3, false), info(4, true)], &[load(4, 1.0, 2)], LOCAL);
        let mut dead_sorted = dead.clone();
        dead_sorted.sort();
        assert_eq!(dead_sorted, vec![NodeId([2; 8]), NodeId([3; 8])]);
        assert_eq!(ids(&v), vec![NodeId([1; 8]), NodeId([4; 8])]);
        assert!(!v.is_alive(&NodeId([2; 8])));
        assert_eq!(v.get(&NodeId([4; 8])).map(|n| (n.available.get("cpu"), n.queued)), Some((1.0, 2)));
        // The same snapshot again reports nothing: each death is told once.
        assert!(v.apply_snapshot(&[info(1, true), info(4, true)], &[], LOCAL).is_empty());
    }

    #[test]
    fn a_snapshot_without_the_local_node_reports_it_so_the_raylet_rejoins() {
        let mut v = ClusterView::default();
        let cpu = ResourceSet::new().with("cpu", 1.0);
        v.set_local(LOCAL, "me:6380", &cpu, &cpu, 0, &HashMap::new());
        let update = pb::ClusterViewUpdate { full: true, joined: vec![info(1, true)], ..Default::default() };
        assert_eq!(v.apply_update(&update, LOCAL), vec![LOCAL]);
    }

    #[test]
    fn the_registration_reply_is_merged_not_replacing() {
        let mut v = ClusterView::default();
        v.merge(&[info(1, true), info(2, true)], &[], LOCAL);
        // A GCS that just restarted knows only node 1 so far.
        v.merge(&[info(1, true), info(5, false)], &[], LOCAL);
        assert_eq!(ids(&v), vec![NodeId([1; 8]), NodeId([2; 8])]);
    }

    #[test]
    fn dead_nodes_are_pruned_as_their_death_is_applied_and_reported_once() {
        let mut v = ClusterView::default();
        let joined = pb::ClusterViewUpdate { joined: vec![info(1, true), info(2, true)], ..Default::default() };
        assert!(v.apply_update(&joined, LOCAL).is_empty());
        let died = pb::ClusterViewUpdate { dead: vec![info(2, false)], ..Default::default() };
        assert_eq!(v.apply_update(&died, LOCAL), vec![NodeId([2; 8])]);
        assert_eq!(ids(&v), vec![NodeId([1; 8])]);
        assert_eq!(v.address(&NodeId([2; 8])), None);
        // A repeated death (a full view raced a delta) is not reported again,
        // and a node that joined and died within one delta is never added.
        let again = pb::ClusterViewUpdate {
            joined: vec![info(3, true)],
            dead: vec![info(2, false), info(3, false)],
            ..Default::default()
        };
        assert_eq!(v.apply_update(&again, LOCAL), Vec::<NodeId>::new());
        assert_eq!(ids(&v), vec![NodeId([1; 8])]);
        // A load for a pruned node does not bring it back.
        let late = pb::ClusterViewUpdate { loads: vec![load(2, 4.0, 0)], ..Default::default() };
        v.apply_update(&late, LOCAL);
        assert_eq!(ids(&v), vec![NodeId([1; 8])]);
    }

    #[test]
    fn release_gives_back_a_reservation_and_a_later_report_still_wins() {
        let mut v = ClusterView::default();
        let n = NodeId([1; 8]);
        v.merge(&[info(1, true)], &[load(1, 4.0, 0)], LOCAL);
        let two = ResourceSet::new().with("cpu", 2.0);
        v.reserve(n, &two);
        assert_eq!(v.get(&n).map(|n| (n.available.get("cpu"), n.queued)), Some((2.0, 1)));
        // Spilled back, or failed: the reservation comes back.
        v.release(n, &two);
        assert_eq!(v.get(&n).map(|n| (n.available.get("cpu"), n.queued)), Some((4.0, 0)));
        // Never above the node's total, never a negative queue.
        v.release(n, &two);
        assert_eq!(v.get(&n).map(|n| (n.available.get("cpu"), n.queued)), Some((4.0, 0)));
        // The node's own report replaces whatever the owner estimated.
        v.reserve(n, &two);
        let report = pb::ClusterViewUpdate { loads: vec![load(1, 3.0, 5)], ..Default::default() };
        v.apply_update(&report, LOCAL);
        v.release(n, &ResourceSet::new().with("cpu", 0.5));
        assert_eq!(v.get(&n).map(|n| (n.available.get("cpu"), n.queued)), Some((3.5, 4)));
        let report = pb::ClusterViewUpdate { loads: vec![load(1, 1.0, 0)], ..Default::default() };
        v.apply_update(&report, LOCAL);
        assert_eq!(v.get(&n).map(|n| (n.available.get("cpu"), n.queued)), Some((1.0, 0)));
    }
}
