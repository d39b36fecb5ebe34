//! Where a task may run: the placement preference a task carries from the
//! client (or a job spec) to its owner's scheduler.

use shoal_proto::v1 as pb;

use crate::ids::NodeId;

/// A task's placement preference.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Hybrid pack-then-spread with locality.
    #[default]
    Default,
    /// One task per node, round-robin.
    Spread,
    /// A given node: `soft` falls back to the default policy when that node
    /// cannot take the task now; hard fails when it never can.
    NodeAffinity {
        /// The node.
        node: NodeId,
        /// Whether another node may be used.
        soft: bool,
    },
    /// Only nodes carrying all these labels.
    Labels(Vec<(String, String)>),
}

/// Reads a strategy off the wire.
pub(crate) fn strategy_of(s: &Option<pb::SchedulingStrategy>) -> Result<Strategy, String> {
    use pb::scheduling_strategy::Kind;
    match s.as_ref().and_then(|s| s.kind.as_ref()) {
        None => Ok(Strategy::Default),
        Some(Kind::Spread(true)) => Ok(Strategy::Spread),
        Some(Kind::Spread(false)) => Ok(Strategy::Default),
        Some(Kind::NodeAffinity(a)) => NodeId::from_slice(&a.node_id)
            .map(|node| Strategy::NodeAffinity { node, soft: a.soft })
            .map_err(|e| format!("node affinity: {e}")),
        Some(Kind::Labels(l)) => {
            let mut v: Vec<(String, String)> = l.match_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort();
            Ok(Strategy::Labels(v))
        }
    }
}
