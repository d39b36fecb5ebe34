//! The one place that builds what a raylet reports about itself: its load
//! for the GCS's heartbeats and its full stats for `NodeStats`, metrics and
//! the state API.

use shoal_proto::v1 as pb;

use crate::raylet::core::Core;

impl Core {
    /// This node's load for the GCS.
    pub(crate) fn load(&self) -> pb::NodeLoad {
        let s = self.store.stats();
        pb::NodeLoad {
            node_id: self.node_id.to_bytes(),
            available: Some(self.exec.ledger.available().into()),
            queued_tasks: self.exec.local.queued() as u32,
            object_store_used: s.used,
            object_store_capacity: s.capacity,
        }
    }

    /// Everything this node counts (transfer figures are filled in by the
    /// caller from the object manager).
    pub(crate) fn node_stats(&self) -> pb::NodeStatsReply {
        let s = self.store.stats();
        let (o, e) = (&self.owner, &self.exec);
        pb::NodeStatsReply {
            node_id: self.node_id.to_bytes(),
            total: Some(e.ledger.total().into()),
            available: Some(e.ledger.available().into()),
            queued_tasks: e.local.queued() as u32,
            running_tasks: e.local.running.len() as u32,
            workers: e.pool.workers.len() as u32,
            idle_workers: e.pool.idle_count() as u32,
            object_store_used: s.used,
            object_store_capacity: s.capacity,
            object_count: s.count,
            pulled_bytes: 0,
            pulled_objects: 0,
            served_bytes: 0,
            tasks_executed: e.stats.tasks_executed,
            owned_objects: (o.objects.len() as u64).saturating_sub(o.borrowed),
            owned_tasks: o.tasks.len() as u64,
            known_nodes: o.view.alive_count() as u32,
            spilled_back: o.stats.spilled_back,
            spilled_bytes: s.spilled_bytes,
            spilled_objects: s.spilled_objects,
            spilled_total_bytes: s.spilled_total,
            restored_total_bytes: s.restored_total,
            evicted_objects: s.evicted_objects,
            task_retries: o.stats.retries,
            reconstructions: o.stats.reconstructions,
            pull_micros: 0,
            infeasible_tasks: o.infeasible.len() as u32,
            lent_objects: o.lent,
            borrowed_objects: o.borrowed,
        }
    }
}
