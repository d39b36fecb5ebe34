//! `shoal bench`: the runtime's performance figures on a local cluster.
//!
//! Every figure is measured end to end through the public client against
//! real processes: a head and raylets started as children, workers started by
//! the raylets. The report is JSON, with the target of each figure beside it.
//! A figure that cannot measure what its name says (too few nodes, a pull
//! that moved nothing) is `{"unavailable": reason}` instead of a number.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::client::{Client, Task};
use crate::error::Error;
use crate::local_cluster::{ClusterOptions, LocalCluster};
use crate::strategy::Strategy;
use crate::value::Value;
use crate::NodeId;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn noop_batch(c: &Client, n: usize) -> Result<Duration, Error> {
    let t = Instant::now();
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        refs.push(c.submit(Task::builtin("noop")).await?);
    }
    for r in c.get_many(&refs, None).await? {
        r?;
    }
    Ok(t.elapsed())
}

/// Size of the object the cross-node pull figure moves.
const PULL_BYTES: u64 = 100 << 20;

/// A figure that could not be measured, with the reason in its place.
fn unavailable(reason: impl std::fmt::Display) -> serde_json::Value {
    json!({ "unavailable": reason.to_string() })
}

/// Makes [`PULL_BYTES`] on `producer` and reads them on `consumer`, both
/// pinned by hard affinity, and reports the consumer's own count and timing
/// of the bytes it pulled. A pull that did not move the whole object (the
/// consumer found it locally, or fetched only part) is reported as
/// unavailable with what moved, never as a rate.
pub async fn cross_node_pull(
    c: &Client,
    producer: &crate::local_cluster::LocalRaylet,
    consumer: &crate::local_cluster::LocalRaylet,
) -> Result<serde_json::Value, Error> {
    let node = |r: &crate::local_cluster::LocalRaylet| -> Result<NodeId, Error> {
        r.node_id
            .parse()
            .map_err(|e| Error::Invalid(format!("raylet {} reports node id {}: {e}", r.address, r.node_id)))
    };
    let (from, to) = (node(producer)?, node(consumer)?);
    if from == to {
        return Ok(unavailable(format!("producer and consumer are the same node {from}")));
    }
    let data = c
        .submit(Task::builtin("bytes").arg(PULL_BYTES).strategy(Strategy::NodeAffinity { node: from, soft: false }))
        .await?;
    c.wait(std::slice::from_ref(&data), 1, None).await?;
    let before = crate::client::node_stats(&consumer.address).await?;
    let probe =
        c.submit(Task::builtin("noop").arg(&data).strategy(Strategy::NodeAffinity { node: to, soft: false })).await?;
    c.get_value(&probe).await?;
    // The consumer's raylet counts and times its pulls itself.
    let after = crate::client::node_stats(&consumer.address).await?;
    let moved = after.pulled_bytes.saturating_sub(before.pulled_bytes);
    let micros = after.pull_micros.saturating_sub(before.pull_micros);
    if moved != PULL_BYTES || micros == 0 {
        return Ok(unavailable(format!(
            "node {to} pulled {moved} of {PULL_BYTES} bytes from node {from} in {micros} us, so no rate can be given"
        )));
    }
    let took = Duration::from_micros(micros);
    Ok(json!({
        "bytes": moved,
        "from_node": from.to_string(),
        "to_node": to.to_string(),
        "seconds": took.as_secs_f64(),
        "gb_per_s": (moved as f64 / took.as_secs_f64() / 1e9 * 100.0).round() / 100.0,
        "target_gb_per_s": 1.0,
    }))
}

/// Jobs, tasks per job and argument bytes per task of [`head_rss_after_jobs`].
pub const HEAD_RSS_JOBS: (usize, usize, usize) = (100, 100, 10 * 1024);

/// The head's resident memory before and after running `HEAD_RSS_JOBS`
/// task-graph jobs one after another over REST (every task a `builtin:noop`
/// with a 10 KB string argument). A head that keeps finished jobs' specs,
/// results and logs on disk and bounds its task history stays flat.
pub async fn head_rss_after_jobs(cluster: &LocalCluster) -> Result<serde_json::Value, Error> {
    let (jobs, tasks, arg_bytes) = HEAD_RSS_JOBS;
    let rest = |e: crate::rest::client::RestError| Error::Invalid(format!("REST: {e}"));
    let c = crate::rest::client::RestClient::new(&cluster.http_address, None).map_err(rest)?;
    let mib = |b: u64| (b as f64 / 1048576.0 * 10.0).round() / 10.0;
    let before = crate::process::rss_bytes(cluster.head_pid);
    let arg = "x".repeat(arg_bytes);
    let t = Instant::now();
    for j in 0..jobs {
        let spec = json!({
            "name": format!("rss-{j}"),
            "tasks": (0..tasks).map(|i| json!({"id": format!("t{i}"), "function": "builtin:noop", "args": [arg]})).collect::<Vec<_>>(),
        });
        let id = c.submit("application/json", spec.to_string()).await.map_err(rest)?.id;
        loop {
            let job = c.job(&id).await.map_err(rest)?;
            if job.state.is_terminal() {
                if job.state != crate::rest::types::JobState::Succeeded {
                    return Err(Error::Invalid(format!("job {id} ended {}: {}", job.state.as_str(), job.message)));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = t.elapsed();
    // Task counts settle and the allocator returns what it can.
    tokio::time::sleep(crate::rest::jobs::COUNTS_SETTLE + Duration::from_secs(1)).await;
    let after = crate::process::rss_bytes(cluster.head_pid);
    Ok(json!({
        "value": mib(after),
        "before_jobs_mib": mib(before),
        "jobs": jobs,
        "tasks_per_job": tasks,
        "arg_bytes": arg_bytes,
        "jobs_s": took.as_secs_f64(),
    }))
}

/// Only [`head_rss_after_jobs`], on a fresh cluster started with `opts`.
pub async fn run_head_rss(opts: ClusterOptions) -> Result<serde_json::Value, Error> {
    let mut cluster = LocalCluster::start(opts).await?;
    let figure = head_rss_after_jobs(&cluster).await;
    cluster.stop();
    Ok(json!({ "head_rss_after_100_jobs_mib": figure? }))
}

/// Runs every benchmark on a fresh cluster started with `opts`.
pub async fn run(opts: ClusterOptions) -> Result<serde_json::Value, Error> {
    let nodes = opts.nodes;
    let t = Instant::now();
    let mut cluster = LocalCluster::start(opts).await?;
    let start_time = t.elapsed();
    let c = Client::connect(&cluster.raylets[0].address).await?;

    // Warm up: let every raylet start its workers.
    for _ in 0..3 {
        noop_batch(&c, 200).await?;
    }
    // Idle memory of the whole tree (head, raylets, their idle workers).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss = crate::process::tree_rss(&cluster.pids());

    // Sync round trip.
    let mut lat = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let r = c.submit(Task::builtin("noop")).await?;
        c.get_value(&r).await?;
        lat.push(t.elapsed());
    }
    lat.sort();

    // Async throughput from one client.
    let n_async = 50_000;
    let async_time = noop_batch(&c, n_async).await?;

    // 10k tasks submit + get.
    let ten_k = noop_batch(&c, 10_000).await?;

    // The same throughput from a driver on the head, whose raylet owns the
    // jobs the head runs and has no CPUs: every task is placed remotely.
    let n_head = 20_000;
    let head_async = match &cluster.head_raylet {
        Some(h) => {
            let hc = Client::connect(&h.address).await?;
            noop_batch(&hc, 2_000).await?;
            let took = noop_batch(&hc, n_head).await?;
            json!({ "value": (n_head as f64 / took.as_secs_f64()).round(), "target": 20000 })
        }
        None => unavailable("the head runs no raylet"),
    };

    // A chain of 1,000 dependent tasks.
    let t = Instant::now();
    let mut prev = c.submit(Task::builtin("identity").arg(0)).await?;
    for _ in 1..1000 {
        prev = c.submit(Task::builtin("identity").arg(&prev)).await?;
    }
    c.get_value(&prev).await?;
    let chain = t.elapsed();
    drop(prev);

    // Fan-in of 1,000 x 1 KiB results into one task.
    let t = Instant::now();
    let mut parts = Vec::with_capacity(1000);
    for _ in 0..1000 {
        parts.push(c.submit(Task::builtin("bytes").arg(1024)).await?);
    }
    let sink = c.submit(Task::builtin("noop").args(parts.iter())).await?;
    c.get_value(&sink).await?;
    let fan_in = t.elapsed();
    drop(parts);

    // Put / get of 100 MiB.
    let big = Bytes::from(vec![7u8; 100 << 20]);
    let t = Instant::now();
    let r = c.put_value(Value::Bytes(big.clone())).await?;
    let put = t.elapsed();
    let t = Instant::now();
    let v = c.get_value(&r).await?;
    let get = t.elapsed();
    if v != Value::Bytes(big) {
        return Err(Error::Invalid("100 MiB put/get came back different".into()));
    }
    drop(r);

    // Cross-node pull of 100 MiB: made on the last node, read on the first.
    let pull = if nodes >= 2 {
        cross_node_pull(&c, &cluster.raylets[nodes - 1], &cluster.raylets[0]).await?
    } else {
        unavailable("it needs two nodes or more (--nodes 2)")
    };
    drop(c);

    let head_rss = head_rss_after_jobs(&cluster).await?;

    let t = Instant::now();
    cluster.stop();
    let stop_time = t.elapsed();

    Ok(json!({
        "nodes": nodes,
        "sync_round_trip_ms": { "p50": ms(percentile(&lat, 0.5)), "p99": ms(percentile(&lat, 0.99)), "target_p50": 0.3 },
        "async_noop_tasks_per_s": { "value": (n_async as f64 / async_time.as_secs_f64()).round(), "target": 20000 },
        "head_owned_async_noop_tasks_per_s": head_async,
        "tasks_10k_submit_get_s": { "value": ten_k.as_secs_f64(), "target": 1.0 },
        "chain_1000_s": { "value": chain.as_secs_f64(), "target": 0.3 },
        "fan_in_1000x1KiB_s": { "value": fan_in.as_secs_f64(), "target": 0.1 },
        "put_100MiB_s": put.as_secs_f64(),
        "get_100MiB_s": get.as_secs_f64(),
        "cross_node_pull_100MiB": pull,
        "cluster_start_s": { "value": start_time.as_secs_f64(), "target": 0.5 },
        "cluster_stop_s": stop_time.as_secs_f64(),
        "idle_rss_mib": { "value": (rss as f64 / 1048576.0).round(), "target": 150 },
        "head_rss_after_100_jobs_mib": head_rss,
    }))
}
