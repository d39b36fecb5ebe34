//! Chaos tests: computations complete despite failures. Real processes,
//! real SIGKILLs; each test checks results and the runtime's counters.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal::local_cluster::{ClusterOptions, LocalCluster};
use shoal::{Client, NodeId, Strategy, Task, Value};

async fn cluster(nodes: usize, cpus: f64, store: &str) -> LocalCluster {
    LocalCluster::start(common::options(nodes, cpus, store)).await.expect("cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_survives_raylets_killed_every_few_seconds() {
    let mut cluster = cluster(5, 2.0, "256Mi").await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    // 2,000 tasks with objects of mixed sizes: inline (1 KiB) and multi-MiB.
    let size = |i: u64| if i.is_multiple_of(8) { 3u64 << 20 } else { 1024 };
    let mut stage3 = Vec::new();
    let mut expected_a = 0u64;
    for i in 0..500u64 {
        let data = c.submit(Task::builtin("bytes").arg(size(i)).max_retries(-1)).await.unwrap();
        let len = c.submit(Task::builtin("len").arg(&data).max_retries(-1)).await.unwrap();
        stage3.push(c.submit(Task::builtin("delay").arg(&len).arg(0.02).max_retries(-1)).await.unwrap());
        expected_a += size(i);
    }
    let mut groups = Vec::new();
    for chunk in stage3.chunks(10) {
        groups.push(c.submit(Task::builtin("sum").args(chunk.iter()).max_retries(-1)).await.unwrap());
    }
    let total_a = c.submit(Task::builtin("sum").args(groups.iter()).max_retries(-1)).await.unwrap();
    let mut fillers = Vec::new();
    for i in 0..449u64 {
        fillers.push(c.submit(Task::builtin("delay").arg(i).arg(0.02).max_retries(-1)).await.unwrap());
    }
    let total_b = c.submit(Task::builtin("sum").args(fillers.iter()).max_retries(-1)).await.unwrap();
    drop((stage3, groups, fillers));

    // Kill two of the four other raylets, a couple of seconds apart.
    let killer = {
        let mut victims = vec![1usize, 2, 3, 4];
        fastrand::shuffle(&mut victims);
        victims.truncate(2);
        victims
    };
    let pids: Vec<u32> = killer.iter().map(|i| cluster.raylets[*i].pid).collect();
    let kills = tokio::spawn(async move {
        for pid in pids {
            tokio::time::sleep(Duration::from_millis(700)).await;
            // SAFETY: kill(2) on a process this test started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    });
    let a: u64 = tokio::time::timeout(Duration::from_secs(120), c.get(&total_a)).await.expect("no hang").unwrap();
    let b: u64 = tokio::time::timeout(Duration::from_secs(120), c.get(&total_b)).await.expect("no hang").unwrap();
    kills.await.unwrap();
    assert_eq!(a, expected_a, "the result equals the fault-free run");
    assert_eq!(b, (0..449u64).sum::<u64>());
    for i in killer {
        cluster.kill_raylet(i);
    }
    let stats = shoal::node_stats(&cluster.raylets[0].address).await.unwrap();
    assert!(stats.task_retries + stats.reconstructions > 0, "killing raylets forced retries: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_never_lose_or_duplicate_a_result() {
    let cluster = cluster(2, 2.0, "256Mi").await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let marks = common::Marks::new();
    let mut refs = Vec::new();
    for i in 0..300u64 {
        refs.push(c.submit(marks.task(i, 0.03).max_retries(-1)).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let raylets: Vec<u32> = cluster.raylets.iter().map(|r| r.pid).collect();
        std::thread::spawn(move || {
            let mut killed = 0;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(150));
                let r = raylets[fastrand::usize(..raylets.len())];
                let workers = shoal::process::children_of(r);
                if let Some(w) = workers.get(fastrand::usize(..workers.len().max(1))) {
                    // SAFETY: kill(2) on a worker of a raylet this test started.
                    unsafe {
                        libc::kill(*w as i32, libc::SIGKILL);
                    }
                    killed += 1;
                }
            }
            killed
        })
    };
    let values =
        tokio::time::timeout(Duration::from_secs(120), c.get_many(&refs, None)).await.expect("no hang").unwrap();
    stop.store(true, Ordering::Relaxed);
    let killed = killer.join().unwrap();
    common::assert_each_mark_once(&marks, values, 300);
    let mut retries = 0;
    for r in &cluster.raylets {
        retries += shoal::node_stats(&r.address).await.unwrap().task_retries;
    }
    assert!(killed > 0 && retries > 0, "killed {killed} workers, {retries} retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_the_store_budget_spills_and_reads_back_intact() {
    let cluster = cluster(1, 2.0, "64Mi").await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let mut refs = Vec::new();
    for _ in 0..24 {
        refs.push(c.submit(Task::builtin("bytes").arg(8u64 << 20)).await.unwrap());
    }
    let sums: Vec<_> = {
        let mut v = Vec::new();
        for r in &refs {
            v.push(c.submit(Task::builtin("checksum").arg(r)).await.unwrap());
        }
        v
    };
    let expected = format!("{:08x}", crc32fast::hash(&common::pattern(8 << 20)));
    for s in &sums {
        let v: serde_json::Value = c.get(s).await.unwrap();
        assert_eq!(v["crc32"], expected);
    }
    for r in refs.iter().step_by(5) {
        match c.get_value(r).await.unwrap() {
            Value::Bytes(b) => assert_eq!(crc32fast::hash(&b), crc32fast::hash(&common::pattern(8 << 20))),
            other => panic!("{other:?}"),
        }
    }
    let stats = shoal::node_stats(&cluster.raylets[0].address).await.unwrap();
    assert!(stats.spilled_total_bytes >= 64 << 20, "spilled {} bytes", stats.spilled_total_bytes);
    assert!(stats.restored_total_bytes > 0);
    assert!(stats.object_store_used <= stats.object_store_capacity);
    drop(refs);
    drop(sums);
    let addr = cluster.raylets[0].address.clone();
    let empty = common::eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move {
            let s = shoal::node_stats(&addr).await.unwrap();
            s.object_count == 0 && s.spilled_bytes == 0
        }
    })
    .await;
    assert!(empty, "spilled objects are deleted once freed");
}

fn spill_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            spill_files(&p, out);
        } else if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("spill-")) {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_spill_files_are_found_on_restore_task_results_are_rebuilt_and_puts_fail_clearly() {
    let cluster = cluster(1, 2.0, "64Mi").await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let size = 8u64 << 20;
    // A put first (least recently used, so spilled), then twice the budget of task results.
    let put = c.put_value(Value::Bytes(common::pattern(size).into())).await.unwrap();
    let mut refs = Vec::new();
    for _ in 0..16 {
        refs.push(c.submit(Task::builtin("bytes").arg(size)).await.unwrap());
    }
    let (ready, _) = c.wait(&refs, refs.len(), Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(ready.len(), refs.len());
    let mut files = Vec::new();
    spill_files(&cluster.session_dir, &mut files);
    assert!(!files.is_empty(), "twice the budget spilled");
    // Damage every spill file: one byte flipped in each MiB.
    for f in &files {
        let mut data = std::fs::read(f).unwrap();
        for i in (0..data.len()).step_by(1 << 20) {
            data[i] ^= 0x5a;
        }
        std::fs::write(f, data).unwrap();
    }
    let expected = crc32fast::hash(&common::pattern(size));
    for r in &refs {
        match c.get_timeout(r, Some(Duration::from_secs(60))).await.unwrap() {
            Value::Bytes(b) => assert_eq!(crc32fast::hash(&b), expected, "a damaged copy was handed out"),
            other => panic!("expected bytes, got {other:?}"),
        }
    }
    let e = match c.get_timeout(&put, Some(Duration::from_secs(60))).await {
        Err(shoal::Error::Task(e)) => e,
        other => panic!("a put whose spilled copy is damaged cannot be rebuilt; got {other:?}"),
    };
    assert_eq!(e.kind, shoal::ErrorKind::ObjectLost);
    assert!(e.message.contains("checksum mismatch") && e.message.contains("spill file"), "{}", e.message);
    assert!(e.message.contains("made by `put`"), "{}", e.message);
    // The raylet is healthy: new work runs.
    let r = c.submit(Task::builtin("bytes").arg(1024u64)).await.unwrap();
    assert!(matches!(c.get_value(&r).await.unwrap(), Value::Bytes(b) if b.len() == 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_object_is_rebuilt_recursively_from_lineage() {
    let mut cluster = cluster(3, 2.0, "256Mi").await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let x: NodeId = cluster.raylets[1].node_id.parse().unwrap();
    let near_x = Strategy::NodeAffinity { node: x, soft: true };
    let a = c.submit(Task::builtin("bytes").arg(2u64 << 20).strategy(near_x.clone())).await.unwrap();
    let b = c.submit(Task::builtin("identity").arg(&a).strategy(near_x)).await.unwrap();
    c.wait(std::slice::from_ref(&b), 1, None).await.unwrap();
    // Only b is referenced now; a survives as lineage only, once its copy is freed.
    drop(a);
    let x_addr = cluster.raylets[1].address.clone();
    common::wait_for("x holds b alone", Duration::from_secs(10), || async {
        common::stats(&x_addr).await.object_count <= 1
    })
    .await;
    cluster.kill_raylet(1);
    let v = tokio::time::timeout(Duration::from_secs(60), c.get_value(&b)).await.expect("no hang").unwrap();
    match v {
        Value::Bytes(bytes) => assert_eq!(&bytes[..], &common::pattern(2 << 20)[..]),
        other => panic!("{other:?}"),
    }
    let stats = shoal::node_stats(&cluster.raylets[0].address).await.unwrap();
    assert!(stats.reconstructions >= 2, "b and then a were rebuilt: {}", stats.reconstructions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_objects_lost_with_their_node_fail_promptly() {
    let mut cluster = cluster(2, 1.0, "256Mi").await;
    let c = Client::connect(&cluster.raylets[1].address).await.unwrap();
    let p = c.put_value(Value::Bytes(bytes::Bytes::from(vec![9u8; 300_000]))).await.unwrap();
    assert!(c.get_value(&p).await.is_ok());
    cluster.kill_raylet(1);
    let started = Instant::now();
    let err = c.get_value(&p).await.unwrap_err().to_string();
    assert!(err.contains("ObjectLost"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_tasks_never_run_and_are_never_retried() {
    let cluster = cluster(1, 1.0, "256Mi").await;
    let addr = cluster.raylets[0].address.clone();
    let c = Client::connect(&addr).await.unwrap();
    let marks = common::Marks::new();
    let marks = &marks;
    let started = move |key: &'static str| move || async move { marks.ran(key) };
    // Occupy the only CPU, then queue a task and cancel it before it starts.
    let busy = c.submit(marks.task("busy", 1.0)).await.unwrap();
    common::wait_for("the busy task runs", Duration::from_secs(20), started("busy")).await;
    let queued = c.submit(marks.task("queued", 0.0)).await.unwrap();
    c.cancel(&queued, false, false).await.unwrap();
    let err = c.get_value(&queued).await.unwrap_err().to_string();
    assert!(err.contains("Cancelled"), "{err}");
    c.get_value(&busy).await.unwrap();
    // The CPU is free again: a task queued behind it would run now.
    let after = c.submit(Task::builtin("identity").arg(1)).await.unwrap();
    assert_eq!(c.get::<i64>(&after).await.unwrap(), 1);
    common::wait_for("the raylet is idle", Duration::from_secs(10), || common::idle(&addr)).await;
    assert!(!marks.ran("queued"), "the cancelled task ran: {:?}", marks.attempts("queued", "started"));

    // A running task, forced: its worker is killed and it is not retried.
    let long = c.submit(marks.task("long", 30.0).max_retries(5)).await.unwrap();
    common::wait_for("the long task runs", Duration::from_secs(20), started("long")).await;
    let t = Instant::now();
    c.cancel(&long, true, false).await.unwrap();
    let err = c.get_value(&long).await.unwrap_err().to_string();
    assert!(err.contains("Cancelled"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // Recursive: the parent holds the only CPU without waiting (so without
    // lending it), its nested task queues behind it. Cancelling the parent
    // (not forced: it keeps running) takes the queued child out, so it never
    // runs, not even once the parent is done and the CPU is free.
    let parent = c
        .submit(
            Task::builtin("submit_and_sleep").arg("mark").arg(serde_json::json!([marks.path(), "child", 0])).arg(2.0),
        )
        .await
        .unwrap();
    common::wait_for("the parent runs and its child is queued", Duration::from_secs(20), || async {
        let s = common::stats(&addr).await;
        s.running_tasks == 1 && s.queued_tasks == 1
    })
    .await;
    c.cancel(&parent, false, true).await.unwrap();
    assert!(c.get_value(&parent).await.unwrap_err().to_string().contains("Cancelled"));
    common::wait_for("the raylet is idle", Duration::from_secs(20), || common::idle(&addr)).await;
    let ok = c.submit(Task::builtin("identity").arg(3)).await.unwrap();
    assert_eq!(c.get::<i64>(&ok).await.unwrap(), 3);
    assert!(!marks.ran("child"), "the child of a recursively cancelled task ran");
    assert_eq!(marks.attempts("long", "started"), vec![0], "a cancelled task is never retried");
    assert_eq!(common::stats(&addr).await.task_retries, 0, "cancelled tasks are never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_evicted_lineage_is_a_clear_error() {
    let mut o = ClusterOptions::new(common::binary(), 2);
    o.cpus_per_node = Some(2.0);
    // The owner keeps the lineage of one finished task only.
    o.node_args = vec![vec!["--max-lineage-tasks".into(), "1".into()]];
    let mut cluster = LocalCluster::start(o).await.expect("cluster starts");
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let x: NodeId = cluster.raylets[1].node_id.parse().unwrap();
    let on_x = Strategy::NodeAffinity { node: x, soft: true };
    let a = c.submit(Task::builtin("bytes").arg(2u64 << 20).strategy(on_x.clone())).await.unwrap();
    let b = c.submit(Task::builtin("identity").arg(&a).strategy(on_x)).await.unwrap();
    c.wait(std::slice::from_ref(&b), 1, None).await.unwrap();
    // Later tasks push a's lineage out; then a itself is dropped.
    let later = c.submit(Task::builtin("identity").arg(1)).await.unwrap();
    c.get_value(&later).await.unwrap();
    drop(a);
    let x_addr = cluster.raylets[1].address.clone();
    common::wait_for("x holds b alone", Duration::from_secs(10), || async {
        common::stats(&x_addr).await.object_count <= 1
    })
    .await;
    cluster.kill_raylet(1);
    let err = tokio::time::timeout(Duration::from_secs(60), c.get_value(&b)).await.expect("no hang").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ObjectLost") && text.contains("lineage"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raylets_rejoin_a_restarted_head_and_keep_their_work() {
    let cluster = cluster(2, 1.0, "256Mi").await;
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let before = c.submit(Task::builtin("identity").arg(5)).await.unwrap();
    assert_eq!(c.get::<i64>(&before).await.unwrap(), 5);
    let port = cluster.gcs_address.rsplit_once(':').unwrap().1.to_string();
    // SAFETY: kill(2) on the head this test's cluster started.
    unsafe {
        libc::kill(cluster.head_pid as i32, libc::SIGKILL);
    }
    // The GCS is really gone before a new one takes its port.
    let gcs = cluster.gcs_address.clone();
    let gone = common::eventually(Duration::from_secs(5), || {
        let gcs = gcs.clone();
        async move { shoal::net::connect(&gcs, None).await.is_err() }
    })
    .await;
    assert!(gone, "the old head still answers");
    let port_number: u16 = port.parse().unwrap();
    common::wait_for("the old head's port is free", Duration::from_secs(10), || async move {
        std::net::TcpListener::bind(("127.0.0.1", port_number)).is_ok()
    })
    .await;
    let log = std::fs::File::create(cluster.session_dir.join("logs/head-2.log")).unwrap();
    let head = std::process::Command::new(common::binary())
        .args(["head", "--host", "127.0.0.1", "--gcs-port", &port, "--port", "0"])
        .args(["--raylet-port", "0", "--raylet-metrics-port", "0", "--worker-socket"])
        .arg(cluster.session_dir.join("head-2.sock"))
        .arg("--spill-dir")
        .arg(cluster.session_dir.join("head-2-spill"))
        .arg("--token-file")
        .arg(cluster.session_dir.join("token"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _head = Kill(head);
    let back = common::eventually(Duration::from_secs(20), || async {
        let Ok(nodes) = cluster.nodes().await else { return false };
        let alive: Vec<String> = nodes.iter().filter(|n| n.state == 0).map(|n| common::node_hex(&n.node_id)).collect();
        cluster.raylets.iter().all(|r| alive.contains(&r.node_id))
    })
    .await;
    assert!(back, "both raylets registered with the new head under their ids");
    let ids: Vec<String> = cluster.nodes().await.unwrap().iter().map(|n| common::node_hex(&n.node_id)).collect();
    for r in &cluster.raylets {
        assert!(ids.contains(&r.node_id), "{} kept its id", r.node_id);
    }
    // The old session and its objects survived; new sessions work too.
    assert_eq!(c.get::<i64>(&before).await.unwrap(), 5);
    let again = c.submit(Task::builtin("add").arg(&before).arg(1)).await.unwrap();
    assert_eq!(c.get::<i64>(&again).await.unwrap(), 6);
    let fresh = Client::connect(&cluster.raylets[1].address).await.unwrap();
    let r = fresh.submit(Task::builtin("identity").arg(9).strategy(Strategy::Spread)).await.unwrap();
    assert_eq!(fresh.get::<i64>(&r).await.unwrap(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drivers_unfinished_tasks_die_with_its_session() {
    let cluster = cluster(1, 1.0, "256Mi").await;
    {
        let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
        for _ in 0..4 {
            let _ = c.submit(Task::builtin("sleep").arg(30.0)).await.unwrap();
        }
        let addr = &cluster.raylets[0].address;
        common::wait_for("the raylet runs or queues all four tasks", Duration::from_secs(10), || async {
            let s = common::stats(addr).await;
            s.running_tasks + s.queued_tasks == 4
        })
        .await;
    }
    // The client is gone: nothing it started keeps running or waiting.
    let addr = cluster.raylets[0].address.clone();
    let idle = common::eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move {
            let s = shoal::node_stats(&addr).await.unwrap();
            s.running_tasks == 0 && s.queued_tasks == 0 && s.owned_tasks == 0
        }
    })
    .await;
    assert!(idle, "{:?}", shoal::node_stats(&addr).await.unwrap());
    let c = Client::connect(&addr).await.unwrap();
    let r = c.submit(Task::builtin("identity").arg(2)).await.unwrap();
    assert_eq!(c.get::<i64>(&r).await.unwrap(), 2);
}

/// The owner is alive but does not answer (stopped) when the result of its
/// task comes back: the result is delivered once the owner runs again, and
/// the task is not recomputed. (A stopped owner's connection still takes
/// the call; an owner that refuses connections is covered by the retry
/// policy's unit tests in `raylet::peers`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_reaches_an_owner_that_paused_while_its_task_ran() {
    let mut o = common::options(2, 1.0, "256Mi");
    // Long enough that the stopped owner is not declared dead meanwhile.
    o.head_args = vec!["--health-timeout-ms".into(), "8000".into()];
    let cluster = LocalCluster::start(o).await.expect("cluster starts");
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let there = Strategy::NodeAffinity { node: common::node(&cluster, 1), soft: false };
    let r = c.submit(Task::builtin("delay").arg(7u64).arg(1.0).strategy(there)).await.unwrap();
    let executor = cluster.raylets[1].address.clone();
    let started = common::eventually(Duration::from_secs(20), || {
        let executor = executor.clone();
        async move { shoal::node_stats(&executor).await.is_ok_and(|s| s.running_tasks == 1) }
    })
    .await;
    assert!(started, "the task never started on the other node");
    let owner = cluster.raylets[0].pid as i32;
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(owner, libc::SIGSTOP);
    }
    // The result comes back ~1 s in; the owner answers only 3 s in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SAFETY: as above.
    unsafe {
        libc::kill(owner, libc::SIGCONT);
    }
    let v: u64 = tokio::time::timeout(Duration::from_secs(20), c.get(&r))
        .await
        .expect("the result never reached its owner")
        .expect("the task succeeds");
    assert_eq!(v, 7);
    let retries = shoal::node_stats(&cluster.raylets[0].address).await.unwrap().task_retries;
    assert_eq!(retries, 0, "the result was delivered, not recomputed");
}
