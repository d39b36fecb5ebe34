//! The head as a user meets it: `shoal up` on the well-known ports, found
//! by the CLI with no address given; the head's raylet owning jobs; spread
//! placement from a head without CPUs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

fn shoal(home: &Path) -> Command {
    let mut c = Command::new(common::binary());
    // Only the record under `home` may tell the CLI where the cluster is.
    c.env("SHOAL_HOME", home).env_remove("SHOAL_API").env_remove("SHOAL_ADDRESS").env_remove("XDG_RUNTIME_DIR");
    c
}

fn temp_home(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-head-test-{tag}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running `shoal up` and what it printed before "Press Ctrl-C".
struct Up {
    child: Child,
    banner: String,
}

impl Up {
    fn start(home: &Path) -> Up {
        let (child, banner) = common::start_up(shoal(home));
        Up { child, banner }
    }

    fn api(&self) -> String {
        common::rest_api_of(&self.banner)
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on the `shoal up` this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn shoal_up_is_found_without_an_address_and_a_second_up_takes_free_ports() {
    let (home_a, home_b, empty) = (temp_home("a"), temp_home("b"), temp_home("none"));
    let first = Up::start(&home_a);
    let on_well_known = first.api() == "http://127.0.0.1:8265";
    // The first cluster takes 8265 unless something else on this machine holds it.
    assert!(on_well_known || first.banner.contains("note:"), "{}", first.banner);
    assert!(home_a.join("cluster.json").exists(), "the cluster is recorded");

    // `shoal submit`, `shoal jobs` and `shoal status` with no address given.
    let (ok, out, err) =
        run(shoal(&home_a).args(["submit", "--wait"]).arg(format!("{}/examples/fan.yaml", env!("CARGO_MANIFEST_DIR"))));
    assert!(ok, "{out}{err}");
    assert!(out.contains("total: 30"), "{out}");
    let (ok, out, err) = run(shoal(&home_a).arg("jobs"));
    assert!(ok && out.contains("SUCCEEDED") && out.contains("fan"), "{out}{err}");
    let (ok, out, err) = run(shoal(&home_a).arg("status"));
    assert!(ok, "{err}");
    assert!(out.contains(&first.api()), "{out}");
    assert!(out.contains("GiB") || out.contains("MiB"), "sizes in human units: {out}");
    assert!(!out.contains(" bytes"), "{out}");
    assert!(out.contains(" head ") && out.matches(" worker ").count() == 2, "the head's raylet is a node: {out}");

    // A second cluster on the same machine: other ports, and it says so.
    let second = Up::start(&home_b);
    assert_ne!(second.api(), first.api());
    if on_well_known {
        assert!(second.banner.contains("note:") && second.banner.contains("in use"), "{}", second.banner);
    }
    let (ok, out, err) = run(shoal(&home_b).args(["status", "--output", "json"]));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cluster"]["jobs"]["SUCCEEDED"], 0, "the second cluster's record names the second cluster: {out}");
    second.stop();
    assert!(!home_b.join("cluster.json").exists(), "a stopped cluster removes its record");
    first.stop();

    // With no cluster at all, the CLI says how to start one.
    let (ok, out, err) = run(shoal(&empty).arg("jobs"));
    if std::net::TcpStream::connect("127.0.0.1:8265").is_err() {
        assert!(!ok, "{out}");
        assert!(err.contains("no shoal cluster found") && err.contains("shoal up"), "{err}");
    }
    for d in [home_a, home_b, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn thirty_spread_tasks_land_evenly_on_three_nodes_from_a_head_without_cpus() {
    let dir = temp_home("spread");
    let tasks: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({"id": format!("t{i}"), "function": "builtin:whereami", "args": [i], "strategy": "spread"}))
        .collect();
    let file = dir.join("spread.json");
    std::fs::write(&file, serde_json::json!({"name": "spread", "tasks": tasks}).to_string()).unwrap();
    let (ok, out, err) = run(shoal(&dir).args(["run", "--nodes", "3", "-o", "json"]).arg(&file));
    assert!(ok, "{err}");
    let results: std::collections::BTreeMap<String, serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut per_node = std::collections::BTreeMap::<String, u32>::new();
    for v in results.values() {
        *per_node.entry(v["node"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "three worker nodes, none of it on the head: {per_node:?}");
    for (node, n) in &per_node {
        assert!((8..=12).contains(n), "node {node} ran {n} of 30: {per_node:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heads_raylet_owns_jobs_and_runs_drivers_unless_they_need_cpus() {
    use shoal::rest::client::RestClient;
    let cluster = shoal::local_cluster::LocalCluster::start(common::options(2, 1.0, "256Mi")).await.unwrap();
    let head = cluster.head_raylet.clone().expect("the head runs a raylet");
    assert_eq!(cluster.driver_address(), head.address);
    let nodes = cluster.nodes().await.unwrap();
    let me = nodes.iter().find(|n| common::node_hex(&n.node_id) == head.node_id).expect("registered");
    assert_eq!(me.labels.get("shoal.dev/head").map(String::as_str), Some("true"));
    let total = shoal::ResourceSet::from(me.total.as_ref());
    assert_eq!(total.get("cpu"), 0.0, "no CPUs for tasks by default: {total}");

    let api = RestClient::new(&cluster.http_address, None).unwrap();
    // The driver's node is known from its task events, which lag a little.
    let driver_on = |id: String, nodes: Vec<String>| {
        let api = api.clone();
        common::eventually(Duration::from_secs(5), move || {
            let (api, id, nodes) = (api.clone(), id.clone(), nodes.clone());
            async move { api.job(&id).await.unwrap().driver_node_id.is_some_and(|n| nodes.contains(&n)) }
        })
    };
    let on_head = serde_json::json!({"entrypoint": "echo on-the-head"});
    let id = api.submit("application/json", on_head.to_string()).await.unwrap().id;
    let job = common::wait_terminal(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state, shoal::rest::types::JobState::Succeeded, "{}", job.message);
    assert!(driver_on(id.clone(), vec![head.node_id.clone()]).await, "on the head: {:?}", api.job(&id).await);
    // A driver asking for a CPU runs on a worker node.
    let needs_cpu = serde_json::json!({"entrypoint": "echo elsewhere", "resources": {"cpu": 1}});
    let id = api.submit("application/json", needs_cpu.to_string()).await.unwrap().id;
    let job = common::wait_terminal(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state, shoal::rest::types::JobState::Succeeded, "{}", job.message);
    let workers: Vec<String> = cluster.raylets.iter().map(|r| r.node_id.clone()).collect();
    assert!(driver_on(id.clone(), workers).await, "on a worker: {:?}", api.job(&id).await);
}
