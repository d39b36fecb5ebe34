//! A raylet cut off the network (its own network namespace, joined to the
//! host by a veth pair) for longer than the health timeout, then healed:
//! its tasks are retried elsewhere, no result is lost or duplicated, and it
//! comes back as a new node.
//!
//! Needs root and `ip` (iproute2); `.ci/run` provides both.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal::local_cluster::{ClusterOptions, LocalCluster};
use shoal::{Client, Strategy};

struct Netns {
    name: String,
    host_if: String,
    /// The namespace's address.
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("`ip` (iproute2) is installed");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    /// A namespace at 10.213.N.2 reachable from the host at 10.213.N.1.
    fn new(n: u32) -> Netns {
        let name = format!("shoal-part-{n}");
        let host_if = format!("shp{n}h");
        let ns_if = format!("shp{n}n");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("10.213.{n}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("10.213.{n}.2/24"), "dev", &ns_if]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        Netns { name, host_if, ns_ip: format!("10.213.{n}.2") }
    }

    /// Starts a raylet of `cluster` inside the namespace at 10.213.N.2 with
    /// `cpus` CPUs, its files under the session's `dir`; returns it and its ready file.
    fn start_raylet(&self, cluster: &LocalCluster, dir: &str, cpus: u32) -> (KillOnDrop, std::path::PathBuf) {
        let dir = cluster.session_dir.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("raylet.log")).unwrap();
        let ready = dir.join("ready");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, common::binary(), "raylet", "--gcs", &cluster.gcs_address])
            .args(["--host", &self.ns_ip, "--port", "0", "--metrics-port", "0", "--num-cpus", &cpus.to_string()])
            .arg("--worker-socket")
            .arg(dir.join("raylet.sock"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--spill-dir")
            .arg(dir.join("spill"))
            .args(cluster.auth_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        (KillOnDrop(child), ready)
    }

    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_raylet_is_declared_dead_and_rejoins_as_a_new_node() {
    let n = std::process::id() % 200 + 20;
    let net = Netns::new(n);
    let host_ip = format!("10.213.{n}.1");
    let mut o = ClusterOptions::new(common::binary(), 2);
    o.host = host_ip.clone();
    o.cpus_per_node = Some(1.0);
    o.head_args = vec!["--health-timeout-ms".into(), "1500".into()];
    // The counts below are of worker raylets.
    o.no_head_raylet = true;
    let cluster = LocalCluster::start(o).await.expect("cluster starts");

    // The third raylet lives in the namespace.
    let (_guard, ready) = net.start_raylet(&cluster, "ns-raylet", 2);
    let alive = |nodes: &[shoal_proto::v1::NodeInfo]| nodes.iter().filter(|n| n.state == 0).count();
    assert!(
        common::eventually(Duration::from_secs(20), || async { alive(&cluster.nodes().await.unwrap()) == 3 }).await,
        "the namespaced raylet joins"
    );
    let first: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let old_id = first["node_id"].as_str().unwrap().to_string();
    let ns_address = first["grpc"].as_str().unwrap().to_string();
    shoal::auth::remember(std::slice::from_ref(&ns_address), cluster.token.as_ref().expect("the cluster has a token"));
    // Every raylet sees the new node before work is spread over it.
    let mut addresses: Vec<String> = cluster.raylets.iter().map(|r| r.address.clone()).collect();
    addresses.push(ns_address.clone());
    common::wait_for("every raylet knows three nodes", Duration::from_secs(20), || async {
        for a in &addresses {
            if common::stats(a).await.known_nodes < 3 {
                return false;
            }
        }
        true
    })
    .await;

    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let marks = common::Marks::new();
    let mut refs = Vec::new();
    for i in 0..40u64 {
        refs.push(c.submit(marks.task(i, 0.2).strategy(Strategy::Spread)).await.unwrap());
    }
    // Cut the node while it runs some of them, and heal it only once the
    // GCS has declared it dead.
    common::wait_for("the namespaced raylet runs a task", Duration::from_secs(20), || async {
        common::stats(&ns_address).await.running_tasks > 0
    })
    .await;
    net.cut();
    common::wait_for("the GCS declares the cut node dead", Duration::from_secs(20), || async {
        cluster.nodes().await.unwrap().iter().any(|n| common::node_hex(&n.node_id) == old_id && n.state == 1)
    })
    .await;
    net.heal();

    let values =
        tokio::time::timeout(Duration::from_secs(60), c.get_many(&refs, None)).await.expect("no hang").unwrap();
    let kept = common::assert_each_mark_once(&marks, values, 40);
    assert!(kept.iter().any(|a| *a > 0), "the cut node's tasks were run again elsewhere: {kept:?}");

    // The old node is dead; the raylet came back under a new id.
    let rejoined = common::eventually(Duration::from_secs(30), || async {
        let nodes = cluster.nodes().await.unwrap();
        let old_dead = nodes.iter().any(|n| common::node_hex(&n.node_id) == old_id && n.state == 1);
        old_dead && alive(&nodes) == 3
    })
    .await;
    assert!(rejoined, "nodes: {:?}", cluster.nodes().await.unwrap());
    let stats = shoal::node_stats(&cluster.raylets[0].address).await.unwrap();
    assert!(stats.task_retries > 0, "tasks on the lost node were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_reaches_an_owner_that_could_not_be_reached_while_its_task_ran() {
    // Its own subnet: the tests of this file run at the same time.
    let n = (std::process::id() + 100) % 200 + 20;
    let net = Netns::new(n);
    let host_ip = format!("10.213.{n}.1");
    let mut o = ClusterOptions::new(common::binary(), 1);
    o.host = host_ip.clone();
    o.cpus_per_node = Some(1.0);
    // Long enough that the owner is not declared dead while it cannot be reached.
    o.head_args = vec!["--health-timeout-ms".into(), "15000".into()];
    o.no_head_raylet = true;
    let cluster = LocalCluster::start(o).await.expect("cluster starts");

    // The owner lives in the namespace, with no CPUs: its task runs on the host's raylet.
    let (_owner, ready) = net.start_raylet(&cluster, "owner", 0);
    common::wait_for("the owner raylet is ready", Duration::from_secs(20), || async { ready.exists() }).await;
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let owner = info["grpc"].as_str().unwrap().to_string();
    shoal::auth::remember(std::slice::from_ref(&owner), cluster.token.as_ref().expect("the cluster has a token"));
    common::wait_for("the owner knows both nodes", Duration::from_secs(20), || async {
        common::stats(&owner).await.known_nodes >= 2
    })
    .await;

    let c = Client::connect(&owner).await.unwrap();
    let executor = cluster.raylets[0].address.clone();
    let there = Strategy::NodeAffinity { node: common::node(&cluster, 0), soft: false };
    let r = c.submit(shoal::Task::builtin("delay").arg(7u64).arg(1.0).strategy(there)).await.unwrap();
    common::wait_for("the task runs on the host", Duration::from_secs(20), || async {
        shoal::node_stats(&executor).await.is_ok_and(|s| s.running_tasks == 1)
    })
    .await;
    // From the host the owner is now unreachable: every send to it fails at
    // once (no route), so the executor's result delivery fails and retries.
    let route = format!("{}/32", net.ns_ip);
    ip(&["route", "add", "unreachable", &route]);
    struct Route(String);
    impl Drop for Route {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["route", "del", "unreachable", &self.0]).output();
        }
    }
    let route = Route(route);
    let executor_log = cluster.session_dir.join("logs/raylet-0.log");
    common::wait_for("the executor fails to report the result", Duration::from_secs(20), || async {
        std::fs::read_to_string(&executor_log).unwrap_or_default().contains("reporting results failed; retrying")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(route);
    let v: u64 = tokio::time::timeout(Duration::from_secs(30), c.get(&r))
        .await
        .expect("the result never reached its owner")
        .expect("the task succeeds");
    assert_eq!(v, 7);
    assert_eq!(common::stats(&owner).await.task_retries, 0, "the result was delivered, not recomputed");
}
