//! End-to-end behaviour of the runtime core, against real `shoal` processes:
//! a head and raylets on 127.0.0.1, workers started by the raylets.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use shoal::{Client, NodeId, ResourceSet, Strategy, Task, Value};

async fn whereami(c: &Client, task: Task) -> String {
    let r = c.submit(task).await.unwrap();
    let v: serde_json::Value = c.get(&r).await.unwrap();
    v["node"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_pipeline_trains_and_evaluates_on_three_raylets() {
    let cluster = common::cluster(3, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pipeline.yaml")).unwrap();
    let spec = shoal::job::parse(&text).unwrap();
    let plan = shoal::job::plan(&spec, &shoal::worker::builtins::is_standard_builtin).unwrap();
    let out = shoal::driver::run_plan(&c, &plan).await.unwrap();
    assert_eq!(out.len(), 1, "only `evaluate` is a sink: {out:?}");
    let eval = &out["evaluate"];
    assert!(eval["mse"].as_f64().unwrap() < 1e-9, "{eval}");
    assert_eq!(eval["n"].as_u64().unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_result_crosses_nodes_through_the_object_manager() {
    let cluster = common::cluster(3, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let size: u64 = 5 << 20;
    let data = common::bytes_checked_across(&c, common::node(&cluster, 1), common::node(&cluster, 2), size).await;
    let expected = common::pattern(size);
    let stats = shoal::node_stats(&cluster.raylets[2].address).await.unwrap();
    assert!(stats.pulled_bytes >= size, "node B pulled {} bytes", stats.pulled_bytes);
    assert!(stats.pulled_objects >= 1);
    let src = shoal::node_stats(&cluster.raylets[1].address).await.unwrap();
    assert!(src.served_bytes >= size, "node A served {} bytes", src.served_bytes);
    // And the driver can read it too, intact.
    match c.get_value(&data).await.unwrap() {
        Value::Bytes(b) => assert_eq!(&b[..], &expected[..]),
        v => panic!("expected bytes, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cpu_task_never_lands_on_a_one_cpu_raylet() {
    let cluster =
        common::cluster_with(vec![vec!["--num-cpus", "1"], vec!["--num-cpus", "2"], vec!["--num-cpus", "2"]]).await;
    let small = cluster.raylets[0].node_id.clone();
    // Submit through the 1-CPU raylet itself: it must send the tasks away.
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let mut refs = Vec::new();
    for _ in 0..12 {
        refs.push(c.submit(Task::builtin("whereami").cpus(2.0)).await.unwrap());
    }
    for r in &refs {
        let v: serde_json::Value = c.get(r).await.unwrap();
        assert_ne!(v["node"].as_str().unwrap(), small, "a 2-CPU task ran on the 1-CPU node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infeasible_task_is_reported_not_hung() {
    let cluster = common::cluster(2, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let r = c.submit(Task::builtin("noop").cpus(64.0)).await.unwrap();
    let err = c.get_timeout(&r, Some(Duration::from_secs(20))).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("Infeasible"), "{text}");
    assert!(text.contains("cpu: 64"), "{text}");
    // A custom resource nobody has is infeasible too, and the cluster still works.
    let r = c.submit(Task::builtin("noop").resources(ResourceSet::new().with("tpu", 1.0))).await.unwrap();
    assert!(c.get_value(&r).await.unwrap_err().to_string().contains("Infeasible"));
    let ok = c.submit(Task::builtin("identity").arg(7)).await.unwrap();
    assert_eq!(c.get::<i64>(&ok).await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_puts_three_tasks_on_three_nodes() {
    let cluster = common::cluster(3, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let mut refs = Vec::new();
    for _ in 0..3 {
        refs.push(c.submit(Task::builtin("whereami").strategy(Strategy::Spread)).await.unwrap());
    }
    let mut nodes = HashSet::new();
    for r in &refs {
        let v: serde_json::Value = c.get(r).await.unwrap();
        nodes.insert(v["node"].as_str().unwrap().to_string());
    }
    assert_eq!(nodes.len(), 3, "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_runs_where_its_fifty_mib_argument_lives() {
    let cluster = common::cluster(3, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let b: NodeId = cluster.raylets[1].node_id.parse().unwrap();
    let data = c
        .submit(Task::builtin("bytes").arg(50u64 << 20).strategy(Strategy::NodeAffinity { node: b, soft: false }))
        .await
        .unwrap();
    c.wait(std::slice::from_ref(&data), 1, None).await.unwrap();
    for _ in 0..3 {
        let node = whereami(&c, Task::builtin("whereami").arg(&data)).await;
        assert_eq!(node, b.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_affinity_picks_its_node_over_the_default_and_falls_back_when_it_is_full() {
    let cluster = common::cluster(3, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let (owner, third) = (common::node(&cluster, 0), common::node(&cluster, 2));
    // On this idle cluster the default policy packs onto the owner's node...
    assert_eq!(whereami(&c, Task::builtin("whereami")).await, owner.to_string());
    // ...so landing on the third node is the affinity's doing.
    let soft = Strategy::NodeAffinity { node: third, soft: true };
    assert_eq!(whereami(&c, Task::builtin("whereami").strategy(soft.clone())).await, third.to_string());

    // Fill the third node; once the cluster sees it full, a soft-affine
    // task runs elsewhere at once instead of queueing there.
    let marks = common::Marks::new();
    let hard = Strategy::NodeAffinity { node: third, soft: false };
    let mut fillers = Vec::new();
    for i in 0..2u64 {
        fillers.push(c.submit(marks.task(i, 60.0).strategy(hard.clone())).await.unwrap());
    }
    common::wait_for("both fillers run on the third node", Duration::from_secs(20), || async {
        marks.ran(0) && marks.ran(1)
    })
    .await;
    let api = shoal::rest::client::RestClient::new(&cluster.http_address, None).unwrap();
    common::wait_for("the cluster view shows the third node without a free CPU", Duration::from_secs(10), || async {
        let nodes = api.nodes().await.unwrap().nodes;
        nodes.iter().any(|n| {
            // A resource with nothing free may be left out of the map.
            n.node_id == third.to_string() && n.resources_available.get("cpu").copied().unwrap_or(0.0) == 0.0
        })
    })
    .await;
    let placed = tokio::time::timeout(Duration::from_secs(20), whereami(&c, Task::builtin("whereami").strategy(soft)))
        .await
        .expect("a soft-affine task does not wait for its busy node");
    assert_ne!(placed, third.to_string(), "the soft-affine task ran on its full node");
    drop(fillers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmarks_cross_node_pull_moves_its_bytes_between_two_nodes() {
    let cluster = common::cluster(2, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let pull = shoal::bench::cross_node_pull(&c, &cluster.raylets[1], &cluster.raylets[0]).await.unwrap();
    assert_eq!(pull["bytes"], 100u64 << 20, "{pull}");
    assert_eq!(pull["from_node"], cluster.raylets[1].node_id, "{pull}");
    assert_eq!(pull["to_node"], cluster.raylets[0].node_id, "{pull}");
    assert!(pull["gb_per_s"].as_f64().is_some_and(|r| r > 0.0), "{pull}");
    // The same node at both ends cannot measure a pull, and says so.
    let same = shoal::bench::cross_node_pull(&c, &cluster.raylets[0], &cluster.raylets[0]).await.unwrap();
    assert!(same["unavailable"].as_str().is_some_and(|r| r.contains("same node")), "{same}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_task_fan_out_fan_in_sums_right() {
    let cluster = common::cluster(3, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let mut parts = Vec::with_capacity(10_000);
    for i in 0..10_000i64 {
        parts.push(c.submit(Task::builtin("identity").arg(i)).await.unwrap());
    }
    let total = c.submit(Task::builtin("sum").args(parts.iter())).await.unwrap();
    drop(parts);
    assert_eq!(c.get::<i64>(&total).await.unwrap(), (0..10_000i64).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_stores_are_empty_once_references_are_dropped() {
    let cluster = common::cluster(3, 2.0).await;
    {
        let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
        let mut refs = Vec::new();
        for i in 0..3 {
            let node: NodeId = cluster.raylets[i].node_id.parse().unwrap();
            // Large results stay in the store of the node that made them.
            refs.push(
                c.submit(Task::builtin("bytes").arg(1u64 << 20).strategy(Strategy::NodeAffinity { node, soft: false }))
                    .await
                    .unwrap(),
            );
        }
        // Consumers elsewhere pull secondary copies.
        let other: NodeId = cluster.raylets[2].node_id.parse().unwrap();
        let sizes = c
            .submit(Task::builtin("len").arg(&refs[0]).strategy(Strategy::NodeAffinity { node: other, soft: false }))
            .await
            .unwrap();
        assert_eq!(c.get::<u64>(&sizes).await.unwrap(), 1 << 20);
        let put = c.put_value(Value::Bytes(bytes::Bytes::from(vec![1u8; 300_000]))).await.unwrap();
        for r in &refs {
            c.get_value(r).await.unwrap();
        }
        c.get_value(&put).await.unwrap();
        let used: u64 = {
            let mut u = 0;
            for r in &cluster.raylets {
                u += shoal::node_stats(&r.address).await.unwrap().object_store_used;
            }
            u
        };
        assert!(used >= 3 << 20, "objects should be stored, {used} bytes used");
        drop(refs);
        drop(put);
        drop(sizes);
        // Explicitly dropping the refs is enough: the client stays connected.
        let raylets = cluster.raylets.clone();
        let empty = common::eventually(Duration::from_secs(10), || {
            let raylets = raylets.clone();
            async move {
                for r in &raylets {
                    let s = shoal::node_stats(&r.address).await.unwrap();
                    if s.object_count != 0 || s.object_store_used != 0 || s.owned_objects != 0 {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        assert!(empty, "every store and owner table must be empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tasks_read_stdin_and_report_stderr_on_failure() {
    let cluster = common::cluster(1, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let raw = c.submit(Task::exec(["python3", "-c", "print(42)"])).await.unwrap();
    let doubled = c
        .submit(Task::exec(["python3", "-c", "import json,sys; a=json.load(sys.stdin); print(a[0]*2)"]).arg(&raw))
        .await
        .unwrap();
    assert_eq!(c.get::<i64>(&doubled).await.unwrap(), 84);
    let text = c.submit(Task::exec(["sh", "-c", "echo hello"]).output_text(true)).await.unwrap();
    assert_eq!(c.get::<String>(&text).await.unwrap(), "hello");
    let bad = c
        .submit(Task::exec(["sh", "-c", "echo something broke >&2; exit 3"]).name("breaker").max_retries(2))
        .await
        .unwrap();
    let err = c.get_value(&bad).await.unwrap_err().to_string();
    assert!(err.contains("breaker"), "{err}");
    assert!(err.contains("status 3"), "{err}");
    assert!(err.contains("something broke"), "{err}");
    assert!(err.contains("attempt 0"), "a failing command is not retried by default: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_task_function_node_and_attempt() {
    let cluster = common::cluster(2, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let r = c.submit(Task::builtin("fail").arg("bad input").name("validate")).await.unwrap();
    let err = c.get_value(&r).await.unwrap_err();
    let shoal::Error::Task(e) = &err else { panic!("{err}") };
    assert_eq!(e.task_name, "validate");
    assert_eq!(e.function, "builtin:fail");
    assert!(!e.node_id.is_empty());
    assert!(e.message.contains("bad input"));
    // A dependent of a failed task fails with the cause.
    let dep = c.submit(Task::builtin("identity").arg(&r).name("after")).await.unwrap();
    let err = c.get_value(&dep).await.unwrap_err().to_string();
    assert!(err.contains("bad input"), "{err}");
    // An unknown builtin is a clear error, and the cluster stays healthy.
    let r = c.submit(Task::builtin("no_such_function")).await.unwrap();
    assert!(c.get_value(&r).await.unwrap_err().to_string().contains("no builtin named"));
    let ok = c.submit(Task::builtin("add").arg(2).arg(3)).await.unwrap();
    assert_eq!(c.get::<i64>(&ok).await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_wait_and_multiple_returns() {
    let cluster = common::cluster(2, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let p = c.put(&serde_json::json!({"k": [1, 2, 3]})).await.unwrap();
    let got: serde_json::Value = c.get(&p).await.unwrap();
    assert_eq!(got["k"][2], 3);
    let slow = c.submit(Task::builtin("sleep").arg(2.0)).await.unwrap();
    let fast = c.submit(Task::builtin("identity").arg(1)).await.unwrap();
    let (ready, not_ready) =
        c.wait(&[slow.clone(), fast.clone(), p.clone()], 2, Some(Duration::from_secs(10))).await.unwrap();
    assert_eq!(ready.iter().map(|r| r.id()).collect::<Vec<_>>(), vec![fast.id(), p.id()], "ready refs in input order");
    assert_eq!(not_ready[0].id(), slow.id());
    let t = c.get_timeout(&slow, Some(Duration::from_millis(50))).await;
    assert!(matches!(t, Err(shoal::Error::Timeout(..))), "{t:?}");
    let parts =
        c.submit_returns(Task::exec(["python3", "-c", "print('[1, \"two\", 3]')"]).num_returns(3)).await.unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(c.get::<String>(&parts[1]).await.unwrap(), "two");
    let second = c.submit(Task::builtin("identity").arg(&parts[2])).await.unwrap();
    assert_eq!(c.get::<i64>(&second).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_submit_and_get_nested_tasks() {
    // One CPU per node: the nested tasks can only run because the parent
    // lends its CPU while it waits.
    let cluster = common::cluster(1, 1.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let r = c.submit(Task::builtin("spawn_sum").arg(20)).await.unwrap();
    assert_eq!(c.get::<i64>(&r).await.unwrap(), (0..20).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_get_given_up_by_dropping_the_call_takes_the_lent_cpu_back() {
    // Two CPUs: the parent takes one, its nested sleep the other once the
    // parent lends its own while it waits in `get`.
    let cluster = common::cluster(1, 2.0).await;
    let addr = cluster.raylets[0].address.clone();
    let c = Client::connect(&addr).await.unwrap();
    let free_cpus = |s: shoal_proto::v1::NodeStatsReply| {
        s.available.and_then(|a| a.amounts.get(shoal::resources::CPU).copied()).unwrap_or(0) as f64 / 10_000.0
    };
    // Waits 2 s in the nested `get`, drops it, then works on for 3 s.
    let r = c.submit(Task::builtin("abandoned_get").arg(2.0).arg(3.0)).await.unwrap();
    let lent = || async {
        let s = common::stats(&addr).await;
        s.running_tasks == 2 && free_cpus(s) == 1.0
    };
    common::wait_for("the parent lends its CPU while its nested get waits", Duration::from_secs(10), lent).await;
    let taken_back = || async {
        let s = common::stats(&addr).await;
        s.running_tasks == 2 && free_cpus(s) == 0.0
    };
    common::wait_for("the parent takes its CPU back once the get is dropped", Duration::from_secs(10), taken_back)
        .await;
    c.get_value(&r).await.unwrap();
    common::wait_for("the node is idle with both CPUs free", Duration::from_secs(10), || async {
        let s = common::stats(&addr).await;
        s.running_tasks == 0 && free_cpus(s) == 2.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_its_task_retried() {
    let cluster = common::cluster(1, 1.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    // The task kills its own worker on the first attempt.
    let r = c.submit(Task::builtin("crash_once")).await.unwrap();
    assert_eq!(c.get::<u32>(&r).await.unwrap(), 1, "the second attempt succeeds");
    let r = c.submit(Task::builtin("crash_once").max_retries(0)).await.unwrap();
    let err = c.get_value(&r).await.unwrap_err().to_string();
    assert!(err.contains("WorkerDied"), "{err}");
    let ok = c.submit(Task::builtin("identity").arg(5)).await.unwrap();
    assert_eq!(c.get::<i64>(&ok).await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_moves_in_parallel_ranges_intact() {
    let cluster = common::cluster(2, 2.0).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    // Not a multiple of the range or chunk size, so the last range is short.
    let size: u64 = (40 << 20) + 12_345;
    common::bytes_checked_across(&c, common::node(&cluster, 0), common::node(&cluster, 1), size).await;
    let stats = shoal::node_stats(&cluster.raylets[1].address).await.unwrap();
    assert_eq!(stats.pulled_bytes, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_tasks_see_their_own_devices_in_cuda_visible_devices() {
    let cluster = common::cluster_with(vec![vec!["--num-cpus", "4", "--num-gpus", "2"]]).await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let show = |gpus: f64| {
        Task::exec(["sh", "-c", "sleep 0.3; echo \"[$CUDA_VISIBLE_DEVICES]\""])
            .output_text(true)
            .resources(ResourceSet::new().with("cpu", 1.0).with("gpu", gpus))
    };
    // Two one-GPU tasks at once get different devices.
    let a = c.submit(show(1.0)).await.unwrap();
    let b = c.submit(show(1.0)).await.unwrap();
    let mut got = vec![c.get::<String>(&a).await.unwrap(), c.get::<String>(&b).await.unwrap()];
    got.sort();
    assert_eq!(got, vec!["[0]", "[1]"]);
    let both = c.submit(show(2.0)).await.unwrap();
    assert_eq!(c.get::<String>(&both).await.unwrap(), "[0,1]");
    let none = c.submit(show(0.0)).await.unwrap();
    assert_eq!(c.get::<String>(&none).await.unwrap(), "[]");
}

/// A worker someone else started (a pod's worker container, `--worker-mode
/// external`) gets what a worker the raylet starts finds in its environment:
/// the raylet's address for nested tasks, the GCS's and the node id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_worker_gets_the_environment_of_its_raylet() {
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let cluster = common::cluster_with(vec![vec!["--worker-mode", "external", "--num-cpus", "2"]]).await;
    let socket = cluster.session_dir.join("raylet-0.sock");
    let _workers: Vec<KillOnDrop> = (0..2)
        .map(|_| {
            let child = std::process::Command::new(common::binary())
                .arg("worker")
                .arg("--raylet-socket")
                .arg(&socket)
                .env_remove(shoal::raylet::ENV_ADDRESS)
                .env_remove("SHOAL_GCS_ADDRESS")
                .env_remove("SHOAL_NODE_ID")
                .env_remove(shoal::auth::ENV_TOKEN)
                .env(shoal::auth::ENV_TOKEN_FILE, cluster.session_dir.join("token"))
                .stdin(std::process::Stdio::null())
                .spawn()
                .unwrap();
            KillOnDrop(child)
        })
        .collect();
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let node = common::node(&cluster, 0);
    let there = Strategy::NodeAffinity { node, soft: false };
    let ran_on =
        tokio::time::timeout(Duration::from_secs(30), whereami(&c, Task::builtin("whereami").strategy(there.clone())))
            .await
            .expect("the external workers run tasks");
    assert_eq!(ran_on, node.to_string(), "SHOAL_NODE_ID is the raylet's");
    // Nested tasks need SHOAL_ADDRESS: before the welcome they failed with
    // "SHOAL_ADDRESS is not set: not running under a raylet".
    let r = c.submit(Task::builtin("spawn_sum").arg(5u64).strategy(there)).await.unwrap();
    let sum: u64 = tokio::time::timeout(Duration::from_secs(30), c.get(&r)).await.expect("no hang").unwrap();
    assert_eq!(sum, 10);
}
