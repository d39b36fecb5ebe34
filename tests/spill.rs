//! A raylet that spills gigabytes to disk keeps its heartbeats: spill files
//! are written with no lock held that the heartbeat, the scheduler or the
//! RPC handlers need, so the GCS never takes a busy node for a dead one.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal::local_cluster::LocalCluster;
use shoal::{Client, Task, Value};

const GIB: usize = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_gib_spill_on_a_loaded_raylet_keeps_its_heartbeats() {
    let mut o = common::options(1, 2.0, "1Gi");
    // Short enough that a heartbeat held up by a spill gets the node declared dead.
    o.head_args = vec!["--health-timeout-ms".into(), "1500".into()];
    // One node to watch: the worker raylet alone.
    o.no_head_raylet = true;
    let cluster = Arc::new(LocalCluster::start(o).await.expect("cluster starts"));
    let first = cluster.nodes().await.unwrap();
    assert_eq!(first.len(), 1);
    let node = first[0].node_id.clone();

    // Watch the node's liveness at the GCS for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (cluster, stop, node) = (cluster.clone(), stop.clone(), node.clone());
        tokio::spawn(async move {
            let mut problems = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match cluster.nodes().await {
                    Ok(nodes) => {
                        let alive: Vec<_> =
                            nodes.iter().filter(|n| n.state == shoal_proto::v1::NodeState::NodeAlive as i32).collect();
                        if alive.len() != 1 || alive[0].node_id != node {
                            problems.push(format!(
                                "{} alive node(s), first id {:?}",
                                alive.len(),
                                alive.first().map(|n| &n.node_id)
                            ));
                        }
                    }
                    Err(e) => problems.push(format!("the GCS did not answer: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            problems
        })
    };

    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    // Load: tasks keep the scheduler and the workers busy meanwhile.
    let mut load = Vec::new();
    for i in 0..40u64 {
        load.push(c.submit(Task::builtin("delay").arg(i).arg(0.1)).await.unwrap());
    }
    // Three objects of the whole budget each: the second and third puts each
    // spill more than a gigabyte in one batch.
    let data = bytes::Bytes::from(common::pattern(GIB as u64));
    let mut puts = Vec::new();
    for _ in 0..3 {
        puts.push(c.put_value(Value::Bytes(data.clone())).await.expect("put"));
    }
    let done = common::as_u64s(c.get_many(&load, None).await.unwrap());
    assert_eq!(done, (0..40).collect::<Vec<_>>(), "every task finished, each once");

    let stats = shoal::node_stats(&cluster.raylets[0].address).await.unwrap();
    assert!(stats.spilled_total_bytes >= 2 * GIB as u64, "spilled only {} bytes", stats.spilled_total_bytes);
    // The first object was spilled; it reads back intact.
    match c.get_value(&puts[0]).await.unwrap() {
        Value::Bytes(b) => {
            assert_eq!(b.len(), GIB);
            assert_eq!(crc32fast::hash(&b), crc32fast::hash(&data), "the spilled object read back differs");
        }
        other => panic!("expected bytes, got {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    let problems = watcher.await.unwrap();
    assert!(problems.is_empty(), "the node was not seen alive throughout: {problems:?}");
}
