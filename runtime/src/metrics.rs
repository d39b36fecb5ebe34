//! Prometheus metrics of shoal's components, served at `/metrics`.
//!
//! Each component owns its metrics and their registry: [`HeadMetrics`] for
//! the GCS and head (tasks and jobs by state, nodes, the state API's
//! history, REST traffic, submit-to-start latency) and [`RayletMetrics`] for
//! a raylet (scheduler queue, workers, object store, transfers, execution
//! time). [`HeadMetrics::new`] and [`RayletMetrics::new`] build a fresh
//! registry each, so two components in one process (or two tests) never see
//! each other's values, and each serves its own registry
//! ([`crate::http::health_and_metrics`]). Counters and histograms are
//! observed where things happen; gauges and the counters the runtime already
//! keeps are refreshed from snapshots just before each scrape (see
//! [`crate::http::Refresh`]).
//!
//! Naming follows Prometheus conventions: `shoal_` prefix, base units
//! (`_seconds`, `_bytes`), counters end in `_total`. Labels are bounded:
//! states, directions, routes, resource names, and function descriptors
//! capped at [`MAX_FUNCTION_LABELS`] distinct values per component (later
//! ones are counted as `other`). Task and object ids never become labels.
//!
//! This module depends on the state API's vocabulary
//! ([`crate::gcs::task_events`]), never the other way round.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use shoal_proto::v1 as pb;

use crate::gcs::task_events::{state_name, StoreSummary, ALL_STATES};

/// Most distinct `function` label values; the rest are reported as `other`.
pub const MAX_FUNCTION_LABELS: usize = 200;

/// Buckets of latency histograms, in seconds.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// A registry in the Prometheus text format.
pub fn render_registry(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Builds metric families into one registry.
struct Families<'a>(&'a Registry);

impl Families<'_> {
    fn reg<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        if let Err(e) = self.0.register(Box::new(c.clone())) {
            tracing::warn!(error = %e, "registering a metric failed");
        }
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.reg(IntCounter::with_opts(Opts::new(name, help)).unwrap_or_else(|_| unreachable_metric(name)))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.reg(IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name)))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.reg(IntGauge::with_opts(Opts::new(name, help)).unwrap_or_else(|_| unreachable_metric(name)))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.reg(IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name)))
    }

    fn histogram(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec());
        self.reg(Histogram::with_opts(opts).unwrap_or_else(|_| unreachable_metric(name)))
    }

    fn histogram_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec());
        self.reg(HistogramVec::new(opts, labels).unwrap_or_else(|_| unreachable_metric(name)))
    }
}

/// Metric definitions are constants of this module; a bad one is a bug
/// caught by the unit test below, never by input.
fn unreachable_metric(name: &str) -> ! {
    panic!("metric {name} is malformed")
}

/// `function` label values of one component, bounded in cardinality.
#[derive(Default)]
struct FunctionLabels(Mutex<HashSet<String>>);

impl FunctionLabels {
    fn label(&self, function: &str) -> String {
        if function.is_empty() {
            return "unknown".to_string();
        }
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(function) {
            return function.to_string();
        }
        if seen.len() < MAX_FUNCTION_LABELS {
            seen.insert(function.to_string());
            return function.to_string();
        }
        "other".to_string()
    }
}

/// Moves a counter up to a total the runtime keeps itself.
fn catch_up(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

// ---------------------------------------------------------------------------
// Raylet
// ---------------------------------------------------------------------------

/// Metrics of a raylet, with their own registry.
pub struct RayletMetrics {
    registry: Registry,
    functions: FunctionLabels,
    /// Tasks waiting on this node for arguments, resources or a worker.
    pub queued_tasks: IntGauge,
    /// Tasks no node can ever fit, waiting to fail.
    pub infeasible_tasks: IntGauge,
    /// Tasks running on this node's workers.
    pub running_tasks: IntGauge,
    /// Workers by state (`idle`, `busy`).
    pub workers: IntGaugeVec,
    /// Worker processes started.
    pub workers_started: IntCounter,
    /// Tasks this raylet owns (lineage kept) and objects it owns.
    pub owned_tasks: IntGauge,
    /// Objects this raylet owns.
    pub owned_objects: IntGauge,
    /// Object store bytes in use.
    pub store_used: IntGauge,
    /// Object store budget.
    pub store_capacity: IntGauge,
    /// Bytes of primary copies spilled to disk.
    pub store_spilled: IntGauge,
    /// Objects held by the store.
    pub store_objects: IntGauge,
    /// Objects held by the store that are pinned primary copies.
    pub store_pinned_objects: IntGauge,
    /// Secondary copies evicted.
    pub store_evicted_objects: IntCounter,
    /// Object transfer bytes by direction (`in` pulled, `out` served).
    pub transfer_bytes: IntCounterVec,
    /// Object transfers by direction.
    pub transfers: IntCounterVec,
    /// Time to pull one object from another node.
    pub transfer_seconds: Histogram,
    /// Tasks submitted to this raylet as owner.
    pub tasks_submitted: IntCounter,
    /// Tasks executed on this node.
    pub tasks_executed: IntCounter,
    /// Tasks failed (owner side).
    pub tasks_failed: IntCounter,
    /// Task retries after system failures.
    pub task_retries: IntCounter,
    /// Objects rebuilt from lineage.
    pub object_reconstructions: IntCounter,
    /// Objects spilled to disk now.
    pub store_spilled_objects: IntGauge,
    /// Bytes spilled to disk, ever.
    pub store_spilled_total: IntCounter,
    /// Bytes restored from disk, ever.
    pub store_restored_total: IntCounter,
    /// Tasks this node sent back to be placed elsewhere.
    pub tasks_spilled_back: IntCounter,
    /// Task state transitions recorded here, by new state.
    pub task_transitions: IntCounterVec,
    /// Execution time of tasks on this node, by function.
    pub task_execution_seconds: HistogramVec,
}

/// What a raylet knows at scrape time.
#[derive(Clone, Debug, Default)]
pub struct RayletSnapshot {
    /// The node's statistics.
    pub stats: pb::NodeStatsReply,
    /// Tasks submitted to it as owner.
    pub tasks_submitted: u64,
    /// Tasks failed, owner side.
    pub tasks_failed: u64,
    /// Retries.
    pub retries: u64,
    /// Workers started.
    pub workers_started: u64,
    /// Pinned objects in the store.
    pub pinned_objects: u64,
    /// Evictions from the store.
    pub evicted_objects: u64,
    /// Objects pulled from and served to peers.
    pub pulled_objects: u64,
    /// Objects served to peers.
    pub served_objects: u64,
}

impl Default for RayletMetrics {
    fn default() -> Self {
        RayletMetrics::new()
    }
}

impl RayletMetrics {
    /// A raylet's metrics in a registry of their own.
    pub fn new() -> Self {
        RayletMetrics::with_registry(Registry::new())
    }

    fn with_registry(registry: Registry) -> Self {
        let f = Families(&registry);
        let m = RayletMetrics {
            queued_tasks: f.gauge(
                "shoal_scheduler_queued_tasks",
                "Tasks queued on this node for arguments, resources or a worker.",
            ),
            infeasible_tasks: f.gauge(
                "shoal_scheduler_infeasible_tasks",
                "Tasks owned here that no node can ever fit (reported as demand).",
            ),
            running_tasks: f.gauge("shoal_running_tasks", "Tasks running on this node's workers."),
            workers: f.gauge_vec("shoal_workers", "Worker processes of this node by state.", &["state"]),
            workers_started: f.counter("shoal_workers_started_total", "Worker processes started."),
            owned_tasks: f.gauge("shoal_owned_tasks", "Tasks whose lineage this raylet keeps as owner."),
            owned_objects: f.gauge("shoal_owned_objects", "Objects this raylet owns."),
            store_used: f.gauge("shoal_object_store_used_bytes", "Bytes held by the object store in memory."),
            store_capacity: f.gauge("shoal_object_store_capacity_bytes", "The object store's memory budget."),
            store_spilled: f.gauge("shoal_object_store_spilled_bytes", "Bytes of primary copies spilled to disk."),
            store_objects: f.gauge("shoal_object_store_objects", "Objects held by the object store."),
            store_pinned_objects: f
                .gauge("shoal_object_store_pinned_objects", "Primary copies pinned in the object store."),
            store_evicted_objects: f
                .counter("shoal_object_store_evicted_objects_total", "Secondary copies evicted from the object store."),
            transfer_bytes: f.counter_vec(
                "shoal_object_transfer_bytes_total",
                "Object bytes moved between nodes (in: pulled here, out: served to peers).",
                &["direction"],
            ),
            transfers: f.counter_vec(
                "shoal_object_transfers_total",
                "Objects moved between nodes (in: pulled here, out: served to peers).",
                &["direction"],
            ),
            transfer_seconds: f
                .histogram("shoal_object_transfer_duration_seconds", "Time to pull one object from another node."),
            tasks_submitted: f.counter("shoal_tasks_submitted_total", "Tasks submitted to this raylet as owner."),
            tasks_executed: f.counter("shoal_tasks_executed_total", "Tasks executed on this node."),
            tasks_failed: f.counter("shoal_tasks_failed_total", "Tasks owned here that failed for good."),
            task_retries: f.counter("shoal_task_retries_total", "Task attempts retried after a system failure."),
            object_reconstructions: f.counter(
                "shoal_object_reconstructions_total",
                "Lost objects rebuilt by re-running their creating task.",
            ),
            store_spilled_objects: f.gauge("shoal_object_store_spilled_objects", "Primary copies spilled to disk now."),
            store_spilled_total: f
                .counter("shoal_object_store_spilled_bytes_total", "Bytes of primary copies ever spilled to disk."),
            store_restored_total: f
                .counter("shoal_object_store_restored_bytes_total", "Bytes ever restored from disk into memory."),
            tasks_spilled_back: f
                .counter("shoal_tasks_spilled_back_total", "Tasks this node handed back to be placed elsewhere."),
            task_transitions: f.counter_vec(
                "shoal_task_state_transitions_total",
                "Task state transitions recorded by this raylet, by the state entered.",
                &["state"],
            ),
            task_execution_seconds: f.histogram_vec(
                "shoal_task_execution_seconds",
                "Time tasks spent running on a worker, by function.",
                &["function"],
            ),
            registry,
            functions: FunctionLabels::default(),
        };
        for d in ["in", "out"] {
            m.transfer_bytes.with_label_values(&[d]);
            m.transfers.with_label_values(&[d]);
        }
        for s in ALL_STATES {
            m.task_transitions.with_label_values(&[state_name(s)]);
        }
        m
    }

    /// The registry holding these metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// These metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        render_registry(&self.registry)
    }

    /// Records a task state transition.
    pub fn observe_transition(&self, state: pb::TaskState) {
        self.task_transitions.with_label_values(&[state_name(state)]).inc();
    }

    /// Records a task's execution time (times in ms since the epoch).
    pub fn observe_execution(&self, function: &str, start_ms: u64, end_ms: u64) {
        let secs = end_ms.saturating_sub(start_ms) as f64 / 1000.0;
        self.task_execution_seconds.with_label_values(&[&self.functions.label(function)]).observe(secs);
    }

    /// Awaits an object pull and records how long it took.
    pub async fn timed_transfer<T>(&self, pull: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = pull.await;
        self.transfer_seconds.observe(started.elapsed().as_secs_f64());
        out
    }

    /// Brings gauges and runtime-kept counters up to a snapshot.
    pub fn refresh(&self, s: &RayletSnapshot) {
        let st = &s.stats;
        self.queued_tasks.set(st.queued_tasks as i64);
        self.infeasible_tasks.set(st.infeasible_tasks as i64);
        self.running_tasks.set(st.running_tasks as i64);
        self.workers.with_label_values(&["idle"]).set(st.idle_workers as i64);
        self.workers.with_label_values(&["busy"]).set(st.workers.saturating_sub(st.idle_workers) as i64);
        self.owned_tasks.set(st.owned_tasks as i64);
        self.owned_objects.set(st.owned_objects as i64);
        self.store_used.set(st.object_store_used as i64);
        self.store_capacity.set(st.object_store_capacity as i64);
        self.store_objects.set(st.object_count as i64);
        self.store_pinned_objects.set(s.pinned_objects as i64);
        self.store_spilled.set(st.spilled_bytes as i64);
        self.store_spilled_objects.set(st.spilled_objects as i64);
        catch_up(&self.store_spilled_total, st.spilled_total_bytes);
        catch_up(&self.store_restored_total, st.restored_total_bytes);
        catch_up(&self.object_reconstructions, st.reconstructions);
        catch_up(&self.store_evicted_objects, s.evicted_objects);
        catch_up(&self.transfer_bytes.with_label_values(&["in"]), st.pulled_bytes);
        catch_up(&self.transfer_bytes.with_label_values(&["out"]), st.served_bytes);
        catch_up(&self.transfers.with_label_values(&["in"]), s.pulled_objects);
        catch_up(&self.transfers.with_label_values(&["out"]), s.served_objects);
        catch_up(&self.tasks_submitted, s.tasks_submitted);
        catch_up(&self.tasks_executed, st.tasks_executed);
        catch_up(&self.tasks_failed, s.tasks_failed);
        catch_up(&self.task_retries, s.retries);
        catch_up(&self.workers_started, s.workers_started);
        catch_up(&self.tasks_spilled_back, st.spilled_back);
    }
}

// ---------------------------------------------------------------------------
// Head
// ---------------------------------------------------------------------------

/// Metrics of the head (the GCS and the REST API), with their own registry.
pub struct HeadMetrics {
    registry: Registry,
    functions: FunctionLabels,
    /// Tasks in the state API's history by state.
    pub tasks: IntGaugeVec,
    /// Tasks remembered by the state API.
    pub task_history: IntGauge,
    /// Most tasks the state API remembers.
    pub task_history_capacity: IntGauge,
    /// Tasks forgotten to stay within the capacity.
    pub task_history_evicted: IntCounter,
    /// Bytes the state API's history holds.
    pub task_history_bytes: IntGauge,
    /// Most bytes the state API's history holds.
    pub task_history_capacity_bytes: IntGauge,
    /// Task events raylets dropped before sending.
    pub task_events_dropped: IntCounter,
    /// Submission to first start, by function.
    pub submit_to_start_seconds: HistogramVec,
    /// Jobs by state.
    pub jobs: IntGaugeVec,
    /// Nodes by state.
    pub nodes: IntGaugeVec,
    /// Resource totals of alive nodes, by resource.
    pub resources: IntGaugeVec,
    /// Resources available on alive nodes, by resource.
    pub resources_available: IntGaugeVec,
    /// REST requests by route, method and status.
    pub http_requests: IntCounterVec,
    /// REST request latency by route and method.
    pub http_seconds: HistogramVec,
}

impl Default for HeadMetrics {
    fn default() -> Self {
        HeadMetrics::new()
    }
}

impl HeadMetrics {
    /// The head's metrics in a registry of their own.
    pub fn new() -> Self {
        HeadMetrics::with_registry(Registry::new())
    }

    fn with_registry(registry: Registry) -> Self {
        let f = Families(&registry);
        HeadMetrics {
            tasks: f.gauge_vec("shoal_tasks", "Tasks in the state API's history by state.", &["state"]),
            task_history: f.gauge("shoal_task_history_tasks", "Tasks the state API remembers."),
            task_history_capacity: f.gauge(
                "shoal_task_history_capacity_tasks",
                "Most tasks the state API remembers (oldest finished are evicted first).",
            ),
            task_history_evicted: f
                .counter("shoal_task_history_evicted_total", "Tasks the state API forgot to stay within its capacity."),
            task_history_bytes: f.gauge("shoal_task_history_bytes", "Bytes the state API's task history holds."),
            task_history_capacity_bytes: f.gauge(
                "shoal_task_history_capacity_bytes",
                "Most bytes the state API's task history holds (oldest finished are evicted first).",
            ),
            task_events_dropped: f.counter(
                "shoal_task_events_dropped_total",
                "Task events raylets dropped because their buffer was full.",
            ),
            submit_to_start_seconds: f.histogram_vec(
                "shoal_task_submit_to_start_seconds",
                "Time from a task's submission to the start of its first run, by function.",
                &["function"],
            ),
            jobs: f.gauge_vec("shoal_jobs", "Jobs known to the head's job manager by state.", &["state"]),
            nodes: f.gauge_vec("shoal_nodes", "Raylets known to the GCS by state.", &["state"]),
            resources: f.gauge_vec(
                "shoal_cluster_resources",
                "Resources of alive nodes (CPU and GPU in units, memory in bytes).",
                &["resource"],
            ),
            resources_available: f.gauge_vec(
                "shoal_cluster_resources_available",
                "Resources available now on alive nodes (CPU and GPU in units, memory in bytes).",
                &["resource"],
            ),
            http_requests: f.counter_vec(
                "shoal_http_requests_total",
                "REST API requests by route template, method and status code.",
                &["route", "method", "status"],
            ),
            http_seconds: f.histogram_vec(
                "shoal_http_request_duration_seconds",
                "REST API request latency by route template and method.",
                &["route", "method"],
            ),
            registry,
            functions: FunctionLabels::default(),
        }
    }

    /// The registry holding these metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// These metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        render_registry(&self.registry)
    }

    /// Records the wait from a task's submission to its start (from task events).
    pub fn observe_submit_to_start(&self, function: &str, secs: f64) {
        self.submit_to_start_seconds.with_label_values(&[&self.functions.label(function)]).observe(secs);
    }

    /// Sets the task gauges from the state API's summary.
    pub fn refresh_tasks(&self, s: &StoreSummary) {
        for st in ALL_STATES {
            self.tasks.with_label_values(&[state_name(st)]).set(s.by_state[st as usize] as i64);
        }
        self.task_history.set(s.tasks as i64);
        self.task_history_capacity.set(s.capacity as i64);
        self.task_history_bytes.set(s.bytes as i64);
        self.task_history_capacity_bytes.set(s.byte_capacity as i64);
        catch_up(&self.task_history_evicted, s.evicted);
        catch_up(&self.task_events_dropped, s.dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_registers_and_renders() {
        let raylet = RayletMetrics::new();
        let head = HeadMetrics::new();
        raylet.refresh(&RayletSnapshot::default());
        head.refresh_tasks(&Default::default());
        raylet.observe_execution("builtin:noop", 1, 2);
        head.observe_submit_to_start("builtin:noop", 0.5);
        let (r, h) = (raylet.render(), head.render());
        for name in ["shoal_scheduler_queued_tasks", "shoal_task_execution_seconds", "shoal_object_transfers_total"] {
            assert!(r.contains(name), "{name} missing from the raylet's metrics");
            assert!(!h.contains(name), "{name} leaked into the head's metrics");
        }
        for name in ["shoal_tasks{state=\"RUNNING\"}", "shoal_task_submit_to_start_seconds"] {
            assert!(h.contains(name), "{name} missing from the head's metrics");
        }
    }

    #[test]
    fn two_raylets_in_one_process_keep_their_own_metrics() {
        let a = RayletMetrics::new();
        let b = RayletMetrics::new();
        let stats = pb::NodeStatsReply { tasks_executed: 5, ..Default::default() };
        a.refresh(&RayletSnapshot { stats, ..Default::default() });
        a.observe_transition(pb::TaskState::TaskRunning);
        assert!(a.render().contains("shoal_tasks_executed_total 5"), "{}", a.render());
        assert!(b.render().contains("shoal_tasks_executed_total 0"), "{}", b.render());
        assert_eq!(a.task_transitions.with_label_values(&["RUNNING"]).get(), 1);
        assert_eq!(b.task_transitions.with_label_values(&["RUNNING"]).get(), 0);
    }

    #[test]
    fn function_labels_are_capped_per_component() {
        let m = HeadMetrics::new();
        for i in 0..MAX_FUNCTION_LABELS + 10 {
            m.observe_submit_to_start(&format!("exec:prog{i}"), 0.1);
        }
        m.observe_submit_to_start("exec:never-seen-before", 0.1);
        assert_eq!(m.submit_to_start_seconds.with_label_values(&["other"]).get_sample_count(), 11);
        // Another component still has room for its own functions.
        let fresh = HeadMetrics::new();
        fresh.observe_submit_to_start("exec:never-seen-before", 0.1);
        assert_eq!(fresh.submit_to_start_seconds.with_label_values(&["exec:never-seen-before"]).get_sample_count(), 1);
    }
}
