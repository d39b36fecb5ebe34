//! Jobs survive the loss of any worker node: the head's raylet owns what the
//! head runs, so SIGKILL of any other raylet, at a random moment, costs
//! retries only. Each test kills every worker raylet of a 3-raylet cluster
//! in turn (a fresh raylet replaces each, as Kubernetes replaces a pod) and
//! checks that every job succeeds with every result exactly once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use shoal::local_cluster::LocalCluster;
use shoal::rest::client::RestClient;
use shoal::rest::types::JobState;

/// Tasks per job: half-second tasks, spread, as a user's long job would be.
const TASKS: u64 = 36;
const TASK_SECONDS: f64 = 0.4;

/// A job spec of `TASKS` spread sinks `delay(i, TASK_SECONDS)`, retried on node loss.
fn spec(name: &str) -> serde_json::Value {
    let tasks: Vec<serde_json::Value> = (0..TASKS)
        .map(|i| {
            serde_json::json!({
                "id": format!("t{i}"),
                "function": "builtin:delay",
                "args": [i, TASK_SECONDS],
                "strategy": "spread",
                "max_retries": -1,
            })
        })
        .collect();
    serde_json::json!({ "name": name, "tasks": tasks })
}

/// Checks that `results` (task id → value) holds each task's own value exactly once.
fn assert_each_result_once(results: &BTreeMap<String, serde_json::Value>, what: &str) {
    assert_eq!(results.len() as u64, TASKS, "{what}: {results:?}");
    for i in 0..TASKS {
        assert_eq!(results.get(&format!("t{i}")), Some(&serde_json::json!(i)), "{what}: task t{i}");
    }
}

async fn cluster() -> LocalCluster {
    let mut o = common::options(3, 2.0, "256Mi");
    o.start_timeout = Duration::from_secs(60);
    LocalCluster::start(o).await.expect("cluster starts")
}

/// A random moment while a job of a few seconds runs.
fn random_moment() -> Duration {
    Duration::from_millis(300 + fastrand::u64(..1500))
}

/// Kills worker raylet `victim` (an index into `raylets`) after a random
/// moment, then starts a replacement so the next job has three again.
async fn kill_then_replace(cluster: &mut LocalCluster, victim: usize) {
    tokio::time::sleep(random_moment()).await;
    cluster.kill_raylet(victim);
    cluster.add_raylet().await.expect("a replacement raylet joins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_task_graphs_survive_each_worker_raylet_killed_in_turn() {
    let mut cluster = cluster().await;
    let api = RestClient::new(&cluster.http_address, None).unwrap();
    for victim in 0..3 {
        let body = spec(&format!("graph-{victim}")).to_string();
        let id = api.submit("application/json", body).await.expect("submitted").id;
        kill_then_replace(&mut cluster, victim).await;
        let job = common::wait_terminal(&api, &id, Duration::from_secs(120)).await;
        assert_eq!(job.state, JobState::Succeeded, "job {id} with raylet {victim} killed: {}", job.message);
        let head = cluster.head_raylet.as_ref().unwrap();
        assert_eq!(job.driver_node_id.as_deref(), Some(head.node_id.as_str()), "the head owns the job");
        let results =
            job.results.iter().map(|r| (r.task.clone(), r.value.clone().expect("inline"))).collect::<BTreeMap<_, _>>();
        assert_eq!(job.results.len() as u64, TASKS, "one result per task: {:?}", job.results);
        assert_each_result_once(&results, &format!("REST job with raylet {victim} killed"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_drivers_survive_each_worker_raylet_killed_in_turn() {
    let mut cluster = cluster().await;
    let api = RestClient::new(&cluster.http_address, None).unwrap();
    let dir = cluster.session_dir.join("chaos-specs");
    std::fs::create_dir_all(&dir).unwrap();
    for victim in 0..3 {
        // The driver runs the job spec through the Rust client, connected
        // to the raylet of the node it runs on: the head's.
        let file = dir.join(format!("job-{victim}.json"));
        std::fs::write(&file, spec(&format!("driven-{victim}")).to_string()).unwrap();
        let body = serde_json::json!({
            "entrypoint": format!("{} driver {}", common::binary(), file.display()),
        });
        let id = api.submit("application/json", body.to_string()).await.expect("submitted").id;
        kill_then_replace(&mut cluster, victim).await;
        let job = common::wait_terminal(&api, &id, Duration::from_secs(120)).await;
        let log = String::from_utf8_lossy(&api.logs(&id).await.unwrap()).to_string();
        assert_eq!(job.state, JobState::Succeeded, "job {id} with raylet {victim} killed: {}\n{log}", job.message);
        let head = cluster.head_raylet.as_ref().unwrap();
        assert_eq!(job.driver_node_id.as_deref(), Some(head.node_id.as_str()), "the driver ran on the head");
        let line = log.lines().find_map(|l| l.strip_prefix("driver: results ")).unwrap_or_else(|| panic!("{log}"));
        let results: BTreeMap<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        assert_each_result_once(&results, &format!("entrypoint job with raylet {victim} killed"));
    }
}

/// The raylets `shoal run` (process `pid`) started, in start order.
fn raylets_of(pid: u32) -> Vec<u32> {
    let mut raylets: Vec<u32> = shoal::process::children_of(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|b| *b == 0).nth(1) == Some(b"raylet".as_slice()))
                .unwrap_or(false)
        })
        .collect();
    raylets.sort();
    raylets
}

#[test]
fn shoal_run_survives_each_worker_raylet_killed_in_turn() {
    let dir = std::env::temp_dir().join(format!("shoal-chaos-run-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("job.json");
    std::fs::write(&file, spec("run").to_string()).unwrap();
    for victim in 0..3 {
        let child = std::process::Command::new(common::binary())
            .args(["run", "--nodes", "3", "--cpus-per-node", "2", "-o", "json"])
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        common::wait_for_blocking("shoal run starts its raylets", Duration::from_secs(30), || {
            raylets_of(pid).len() == 3
        });
        std::thread::sleep(random_moment());
        let raylet = raylets_of(pid)[victim];
        // SAFETY: kill(2) on a process this test's `shoal run` started.
        unsafe {
            libc::kill(raylet as i32, libc::SIGKILL);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "shoal run with raylet {victim} killed failed: {stderr}");
        let results: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        assert_each_result_once(&results, &format!("shoal run with raylet {victim} killed"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_tasks_whose_owner_died_are_submitted_again_by_their_retried_parent() {
    let mut cluster = cluster().await;
    // A driver on the head: the parents are owned there, their nested
    // tasks by the raylet each parent runs on.
    let c = shoal::Client::connect(cluster.driver_address()).await.unwrap();
    let n = 1500u64;
    let mut parents = Vec::new();
    for _ in 0..12 {
        let t = shoal::Task::builtin("spawn_sum").arg(n).strategy(shoal::Strategy::Spread).max_retries(-1);
        parents.push(c.submit(t).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(..600))).await;
    let victim = fastrand::usize(..3);
    cluster.kill_raylet(victim);
    let values = tokio::time::timeout(Duration::from_secs(120), c.get_many(&parents, None)).await.expect("no hang");
    let sums = common::as_u64s(values.expect("get_many"));
    assert_eq!(sums, vec![(0..n).sum::<u64>(); 12], "raylet {victim} killed");
    let head = cluster.head_raylet.clone().unwrap();
    let stats = shoal::node_stats(&head.address).await.unwrap();
    assert!(stats.task_retries > 0, "the parents on the killed raylet were retried: {stats:?}");
}
