//! Helpers shared by the end-to-end tests: local clusters of real `shoal`
//! processes on 127.0.0.1.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use shoal::local_cluster::{ClusterOptions, LocalCluster};

/// The `shoal` binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// A cluster of `n` raylets with `cpus` CPUs each.
pub async fn cluster(n: usize, cpus: f64) -> LocalCluster {
    let mut o = ClusterOptions::new(binary(), n);
    o.cpus_per_node = Some(cpus);
    o.raylet_args = vec!["--object-store-memory".into(), "512Mi".into()];
    LocalCluster::start(o).await.expect("cluster starts")
}

/// A cluster whose raylet `i` gets `per_node[i]` as extra flags.
pub async fn cluster_with(per_node: Vec<Vec<&str>>) -> LocalCluster {
    let mut o = ClusterOptions::new(binary(), per_node.len());
    o.node_args = per_node.into_iter().map(|a| a.into_iter().map(String::from).collect()).collect();
    o.raylet_args = vec!["--object-store-memory".into(), "512Mi".into()];
    LocalCluster::start(o).await.expect("cluster starts")
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The results of `get_many` as integers, failing the test on any error.
pub fn as_u64s(values: Vec<Result<shoal::Value, shoal::Error>>) -> Vec<u64> {
    values
        .into_iter()
        .map(|v| match v.expect("every task succeeds") {
            shoal::Value::Json(j) => j.as_u64().expect("an integer result"),
            other => panic!("expected an integer, got {other:?}"),
        })
        .collect()
}

/// The bytes `builtin:bytes` makes: byte i is (i * 31 + 7) % 251.
pub fn pattern(size: u64) -> Vec<u8> {
    (0..size).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// The node id of raylet `i`.
pub fn node(cluster: &LocalCluster, i: usize) -> shoal::NodeId {
    cluster.raylets[i].node_id.parse().expect("raylets report hex node ids")
}

/// Hex form of a node id as the GCS reports it.
pub fn node_hex(id: &[u8]) -> String {
    shoal::NodeId::from_slice(id).map(|n| n.to_string()).unwrap_or_default()
}

/// Makes `size` bytes on `from`, checksums them on `to` (so they cross
/// through the object manager) and checks length and CRC against the
/// pattern computed here. Returns the data's reference.
pub async fn bytes_checked_across(
    c: &shoal::Client,
    from: shoal::NodeId,
    to: shoal::NodeId,
    size: u64,
) -> shoal::ObjectRef {
    use shoal::{Strategy, Task};
    let data = c
        .submit(Task::builtin("bytes").arg(size).strategy(Strategy::NodeAffinity { node: from, soft: false }))
        .await
        .unwrap();
    let sum = c
        .submit(Task::builtin("checksum").arg(&data).strategy(Strategy::NodeAffinity { node: to, soft: false }))
        .await
        .unwrap();
    let got: serde_json::Value = c.get(&sum).await.unwrap();
    assert_eq!(got["len"], size);
    assert_eq!(got["crc32"], format!("{:08x}", crc32fast::hash(&pattern(size))));
    data
}
