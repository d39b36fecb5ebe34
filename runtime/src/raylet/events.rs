//! Task events: every state transition of the tasks this raylet owns or
//! runs, buffered and sent to the GCS in batches for the state API.
//!
//! Off the hot path: recording an event is a push onto a bounded buffer; a
//! background task ships the buffer every [`FLUSH_INTERVAL`]. When the GCS is
//! slow or away, events beyond [`MAX_BUFFERED`] are dropped and counted, and
//! the count is reported, so the state API can say its history is partial.
//! Each transition is also counted in the raylet's metrics.

use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_proto::v1 as pb;

use crate::error::TaskError;
use crate::ids::{NodeId, TaskId};
use crate::metrics::RayletMetrics;
use crate::net::now_ms;
use crate::raylet::Inner;

/// How often buffered events go to the GCS.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Most events held while waiting to be sent.
pub const MAX_BUFFERED: usize = 200_000;

/// The buffer of events not yet sent.
pub(crate) struct TaskEvents {
    buf: Vec<pb::TaskEvent>,
    dropped: u64,
    metrics: Arc<RayletMetrics>,
}

impl TaskEvents {
    /// A buffer counting transitions in `metrics` (its raylet's own).
    pub(crate) fn new(metrics: Arc<RayletMetrics>) -> Self {
        TaskEvents { buf: Vec::new(), dropped: 0, metrics }
    }

    /// Records one transition.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn emit(
        &mut self,
        task_id: TaskId,
        state: pb::TaskState,
        attempt: u32,
        node: Option<NodeId>,
        first: Option<(&str, &str, NodeId)>,
        error: Option<&TaskError>,
    ) {
        self.metrics.observe_transition(state);
        if self.buf.len() >= MAX_BUFFERED {
            self.dropped += 1;
            return;
        }
        let (name, function, owner) = match first {
            Some((n, f, o)) => (n.to_string(), f.to_string(), o.to_bytes()),
            None => Default::default(),
        };
        self.buf.push(pb::TaskEvent {
            task_id: task_id.to_bytes(),
            job_id: task_id.job().0,
            name,
            function,
            state: state as i32,
            attempt,
            node_id: node.map(|n| n.to_bytes()).unwrap_or_default(),
            at_ms: now_ms(),
            error: error.map(Into::into),
            owner_node_id: owner,
        });
    }

    fn take(&mut self) -> Option<pb::ReportTaskEventsRequest> {
        if self.buf.is_empty() && self.dropped == 0 {
            return None;
        }
        let events = std::mem::take(&mut self.buf);
        let dropped = std::mem::take(&mut self.dropped);
        Some(pb::ReportTaskEventsRequest { events, dropped })
    }
}

/// Ships buffered events to the GCS until the raylet stops.
pub(crate) async fn run_reporter(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(i) = inner.upgrade() else { return };
        let batch = i.core().owner.events.take();
        let Some(batch) = batch else { continue };
        let mut gcs = i.gcs.clone();
        drop(i);
        if let Err(s) = gcs.report_task_events(batch).await {
            tracing::debug!(error = %s.message(), "reporting task events failed; they are dropped");
        }
    }
}
