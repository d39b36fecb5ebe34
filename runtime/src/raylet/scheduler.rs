//! Placement: which node should run a task.
//!
//! Pure functions over the cluster view, so the policy is tested without any
//! process. The order of decisions:
//! 1. feasibility: a node whose *total* resources (and labels) can ever fit
//!    the task; none means the task is infeasible, with a reason;
//! 2. the strategy: hard node affinity names the only candidate; soft
//!    affinity prefers its node while it has room; `spread` goes round-robin
//!    over the feasible nodes, skipping those without room while any has it;
//! 3. locality: among nodes with room, the one holding the most bytes of the
//!    task's arguments wins;
//! 4. hybrid pack-then-spread (Ray's default): the local node, then the others
//!    in id order, take the task while their utilisation after placing it
//!    stays at or below 50 %; above that, the least utilised node with room;
//!    when no node has room, the least loaded feasible node queues it.

use crate::ids::NodeId;
use crate::raylet::cluster_view::{ClusterView, NodeView};
use crate::resources::ResourceSet;
pub use crate::strategy::Strategy;

/// Utilisation up to which the hybrid policy packs tasks onto a node.
pub const PACK_THRESHOLD: f64 = 0.5;

/// The scheduler's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Run it there.
    Node(NodeId),
    /// No node can ever run it; the reason says why.
    Infeasible(String),
}

/// What the scheduler needs to know about one task.
pub struct Request<'a> {
    /// Resources the task holds while it runs.
    pub resources: &'a ResourceSet,
    /// Its strategy.
    pub strategy: &'a Strategy,
    /// Bytes of its by-reference arguments held on each node.
    pub locality: &'a [(NodeId, u64)],
    /// A node to avoid (it spilled the task back, or its last attempt died
    /// there), unless it is the only choice.
    pub avoid: Option<NodeId>,
}

fn labels_match(n: &NodeView, strategy: &Strategy) -> bool {
    match strategy {
        Strategy::Labels(sel) => sel.iter().all(|(k, v)| n.labels.get(k) == Some(v)),
        _ => true,
    }
}

fn utilisation(n: &NodeView, req: &ResourceSet) -> f64 {
    ResourceSet::utilisation_after(&n.total, &n.available, req)
}

/// Places one task. `spread_cursor` carries the round-robin position of
/// `spread` between calls.
pub fn place(view: &ClusterView, local: NodeId, req: &Request<'_>, spread_cursor: &mut usize) -> Placement {
    let res = req.resources;
    if let Strategy::NodeAffinity { node, soft: false } = req.strategy {
        return match view.get(node) {
            None => Placement::Infeasible(format!("node affinity: node {node} is not in the cluster")),
            Some(n) if !n.alive => Placement::Infeasible(format!("node affinity: node {node} is dead")),
            Some(n) if !n.total.contains(res) => Placement::Infeasible(format!(
                "node affinity: node {node} has {} in total, the task needs {res}",
                n.total
            )),
            Some(_) => Placement::Node(*node),
        };
    }
    let feasible: Vec<&NodeView> =
        view.nodes().filter(|n| n.alive && n.total.contains(res) && labels_match(n, req.strategy)).collect();
    if feasible.is_empty() {
        return Placement::Infeasible(infeasible_reason(view, req));
    }
    // Nodes to consider first: everything but the avoided node, unless that
    // leaves nothing.
    let preferred: Vec<&NodeView> = {
        let v: Vec<&NodeView> = feasible.iter().copied().filter(|n| Some(n.id) != req.avoid).collect();
        if v.is_empty() {
            feasible.clone()
        } else {
            v
        }
    };
    let has_room = |n: &&NodeView| n.available.contains(res);

    match req.strategy {
        Strategy::NodeAffinity { node, soft: true } => {
            if let Some(n) = preferred.iter().find(|n| n.id == *node) {
                if has_room(n) {
                    return Placement::Node(n.id);
                }
            }
        }
        Strategy::Spread => {
            // Round-robin over the feasible nodes in id order, as Ray's
            // SPREAD does: starting after the last pick, the first node with
            // room; when none has room, the next one in turn (it queues the
            // task). The cursor moves past the pick either way, so a burst
            // of tasks lands evenly however stale the view of free
            // resources is, and the owner's own node is not favoured.
            let n = preferred.len();
            let start = *spread_cursor % n;
            let offset = (0..n).find(|k| has_room(&preferred[(start + k) % n])).unwrap_or(0);
            let index = (start + offset) % n;
            *spread_cursor = index + 1;
            return Placement::Node(preferred[index].id);
        }
        _ => {}
    }

    // Locality: the node with the most argument bytes, if it has room.
    if let Some((node, _)) = req
        .locality
        .iter()
        .filter(|(_, b)| *b > 0)
        .filter(|(id, _)| preferred.iter().any(|n| n.id == *id && has_room(n)))
        .max_by_key(|(_, b)| *b)
    {
        return Placement::Node(*node);
    }

    // Hybrid: local first, then the rest in id order, while below the threshold.
    let ordered = preferred.iter().filter(|n| n.id == local).chain(preferred.iter().filter(|n| n.id != local));
    let mut best: Option<(&NodeView, f64)> = None;
    for n in ordered {
        if !has_room(n) {
            continue;
        }
        let u = utilisation(n, res);
        if u <= PACK_THRESHOLD {
            return Placement::Node(n.id);
        }
        if best.is_none_or(|(_, bu)| u < bu) {
            best = Some((n, u));
        }
    }
    if let Some((n, _)) = best {
        return Placement::Node(n.id);
    }
    // Nobody has room now: queue where the queue is shortest relative to size.
    let pick = preferred
        .iter()
        .min_by(|a, b| {
            let la = (a.queued as f64 + 1.0) / (a.total.get(crate::resources::CPU).max(1.0));
            let lb = (b.queued as f64 + 1.0) / (b.total.get(crate::resources::CPU).max(1.0));
            la.total_cmp(&lb).then((a.id != local).cmp(&(b.id != local)))
        })
        .map(|n| n.id);
    match pick {
        Some(id) => Placement::Node(id),
        None => Placement::Infeasible(infeasible_reason(view, req)),
    }
}

fn infeasible_reason(view: &ClusterView, req: &Request<'_>) -> String {
    let alive: Vec<&NodeView> = view.nodes().filter(|n| n.alive).collect();
    if alive.is_empty() {
        return "no alive node in the cluster".to_string();
    }
    if let Strategy::Labels(sel) = req.strategy {
        let matching = alive.iter().filter(|n| labels_match(n, req.strategy)).count();
        if matching == 0 {
            let want: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return format!("no alive node has the labels {}", want.join(","));
        }
    }
    let largest: Vec<String> = alive.iter().take(4).map(|n| n.total.to_string()).collect();
    format!(
        "the task needs {} but no node can ever fit it (nodes have {}{})",
        req.resources,
        largest.join(", "),
        if alive.len() > 4 { ", ..." } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::v1 as pb;
    use std::collections::BTreeMap;

    fn node(i: u8, cpus: f64, free: f64, labels: &[(&str, &str)]) -> (pb::NodeInfo, pb::NodeLoad) {
        let id = NodeId([i; 8]);
        let total = ResourceSet::new().with("cpu", cpus);
        let avail = ResourceSet::new().with("cpu", free);
        (
            pb::NodeInfo {
                node_id: id.to_bytes(),
                address: format!("n{i}"),
                total: Some((&total).into()),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            },
            pb::NodeLoad { node_id: id.to_bytes(), available: Some((&avail).into()), ..Default::default() },
        )
    }

    fn view(nodes: &[(pb::NodeInfo, pb::NodeLoad)]) -> ClusterView {
        let mut v = ClusterView::default();
        let infos: Vec<_> = nodes.iter().map(|n| n.0.clone()).collect();
        let loads: Vec<_> = nodes.iter().map(|n| n.1.clone()).collect();
        v.apply_snapshot(&infos, &loads, NodeId([0; 8]));
        v
    }

    fn req<'a>(res: &'a ResourceSet, strategy: &'a Strategy, locality: &'a [(NodeId, u64)]) -> Request<'a> {
        Request { resources: res, strategy, locality, avoid: None }
    }

    #[test]
    fn a_task_never_lands_where_it_cannot_fit() {
        let v = view(&[node(1, 1.0, 1.0, &[]), node(2, 4.0, 4.0, &[])]);
        let two = ResourceSet::new().with("cpu", 2.0);
        let mut c = 0;
        for _ in 0..10 {
            assert_eq!(
                place(&v, NodeId([1; 8]), &req(&two, &Strategy::Default, &[]), &mut c),
                Placement::Node(NodeId([2; 8]))
            );
        }
        let big = ResourceSet::new().with("cpu", 64.0);
        match place(&v, NodeId([1; 8]), &req(&big, &Strategy::Default, &[]), &mut c) {
            Placement::Infeasible(r) => assert!(r.contains("cpu: 64"), "{r}"),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn hybrid_packs_locally_below_half_then_spreads() {
        let v = view(&[node(1, 4.0, 4.0, &[]), node(2, 4.0, 4.0, &[])]);
        let one = ResourceSet::new().with("cpu", 1.0);
        let mut c = 0;
        assert_eq!(
            place(&v, NodeId([2; 8]), &req(&one, &Strategy::Default, &[]), &mut c),
            Placement::Node(NodeId([2; 8]))
        );
        let v = view(&[node(1, 4.0, 4.0, &[]), node(2, 4.0, 2.0, &[])]);
        assert_eq!(
            place(&v, NodeId([2; 8]), &req(&one, &Strategy::Default, &[]), &mut c),
            Placement::Node(NodeId([1; 8]))
        );
    }

    #[test]
    fn spread_visits_every_node_and_locality_wins() {
        let v = view(&[node(1, 4.0, 4.0, &[]), node(2, 4.0, 4.0, &[]), node(3, 4.0, 4.0, &[])]);
        let one = ResourceSet::new().with("cpu", 1.0);
        let mut c = 0;
        let mut seen: Vec<NodeId> = (0..3)
            .map(|_| match place(&v, NodeId([1; 8]), &req(&one, &Strategy::Spread, &[]), &mut c) {
                Placement::Node(n) => n,
                p => panic!("{p:?}"),
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3);
        let loc = [(NodeId([3; 8]), 50 << 20), (NodeId([2; 8]), 10)];
        assert_eq!(
            place(&v, NodeId([1; 8]), &req(&one, &Strategy::Default, &loc), &mut c),
            Placement::Node(NodeId([3; 8]))
        );
    }

    /// A view of a CPU-less owner (node 0, as the head is) and three nodes of `cpus` CPUs.
    fn owner_without_cpus(cpus: f64) -> ClusterView {
        let mut nodes = vec![node(0, 0.0, 0.0, &[])];
        nodes.extend((1..=3).map(|i| node(i, cpus, cpus, &[])));
        view(&nodes)
    }

    /// Places `n` one-CPU tasks from node 0, reserving each in the view as
    /// the owner does on a send; adds them to `counts` by node.
    fn place_burst(v: &mut ClusterView, strategy: &Strategy, n: usize, counts: &mut BTreeMap<NodeId, u32>) {
        let one = ResourceSet::new().with("cpu", 1.0);
        let mut c = 0;
        for _ in 0..n {
            match place(v, NodeId([0; 8]), &req(&one, strategy, &[]), &mut c) {
                Placement::Node(node) => {
                    v.reserve(node, &one);
                    *counts.entry(node).or_insert(0) += 1;
                }
                p => panic!("{p:?}"),
            }
        }
    }

    #[test]
    fn spread_round_robins_evenly_even_when_every_node_looks_full() {
        // The owner has no CPUs, as the head does: every placement is remote.
        let mut v = owner_without_cpus(2.0);
        let mut counts = BTreeMap::new();
        place_burst(&mut v, &Strategy::Spread, 30, &mut counts);
        assert!(!counts.contains_key(&NodeId([0; 8])), "the CPU-less owner is not feasible: {counts:?}");
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![10, 10, 10], "{counts:?}");
        // A node without room is skipped while another has room.
        let one = ResourceSet::new().with("cpu", 1.0);
        let v = view(&[node(1, 2.0, 0.0, &[]), node(2, 2.0, 2.0, &[]), node(3, 2.0, 0.0, &[])]);
        let mut c = 0;
        for _ in 0..3 {
            assert_eq!(
                place(&v, NodeId([1; 8]), &req(&one, &Strategy::Spread, &[]), &mut c),
                Placement::Node(NodeId([2; 8]))
            );
        }
    }

    #[test]
    fn hybrid_spreads_a_burst_from_an_owner_without_cpus() {
        let mut v = owner_without_cpus(4.0);
        let mut counts = BTreeMap::new();
        place_burst(&mut v, &Strategy::Default, 12, &mut counts);
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![4, 4, 4], "{counts:?}");
        // Beyond every node's room, the queue is shortest relative to size.
        place_burst(&mut v, &Strategy::Default, 6, &mut counts);
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![6, 6, 6], "{counts:?}");
    }

    #[test]
    fn affinity_hard_and_soft_and_labels() {
        let v = view(&[node(1, 2.0, 0.0, &[("zone", "a")]), node(2, 2.0, 2.0, &[("zone", "b")])]);
        let one = ResourceSet::new().with("cpu", 1.0);
        let mut c = 0;
        let hard = Strategy::NodeAffinity { node: NodeId([1; 8]), soft: false };
        assert_eq!(place(&v, NodeId([2; 8]), &req(&one, &hard, &[]), &mut c), Placement::Node(NodeId([1; 8])));
        let soft = Strategy::NodeAffinity { node: NodeId([1; 8]), soft: true };
        assert_eq!(place(&v, NodeId([2; 8]), &req(&one, &soft, &[]), &mut c), Placement::Node(NodeId([2; 8])));
        let gone = Strategy::NodeAffinity { node: NodeId([9; 8]), soft: false };
        assert!(matches!(place(&v, NodeId([2; 8]), &req(&one, &gone, &[]), &mut c), Placement::Infeasible(_)));
        let lab = Strategy::Labels(vec![("zone".into(), "a".into())]);
        assert_eq!(place(&v, NodeId([2; 8]), &req(&one, &lab, &[]), &mut c), Placement::Node(NodeId([1; 8])));
        let none = Strategy::Labels(vec![("zone".into(), "z".into())]);
        match place(&v, NodeId([2; 8]), &req(&one, &none, &[]), &mut c) {
            Placement::Infeasible(r) => assert!(r.contains("zone=z")),
            p => panic!("{p:?}"),
        }
    }
}
