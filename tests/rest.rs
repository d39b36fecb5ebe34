//! The head's REST API end to end: real `shoal` processes, requests over
//! HTTP through the REST client the CLI uses.

mod common;

use std::time::{Duration, Instant};

use shoal::local_cluster::{ClusterOptions, LocalCluster};
use shoal::rest::client::{Method, RawResponse, RestClient};
use shoal::rest::types::JobState;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

struct Api {
    cluster: LocalCluster,
    client: RestClient,
}

async fn api_with(nodes: usize, head_args: &[&str], token: Option<&str>) -> Api {
    let mut o = ClusterOptions::new(BIN, nodes);
    o.token = token.map(|t| shoal::auth::Token::new(t).unwrap());
    o.cpus_per_node = Some(2.0);
    o.raylet_args = vec!["--object-store-memory".into(), "256Mi".into()];
    o.head_args = head_args.iter().map(|s| s.to_string()).collect();
    let cluster = LocalCluster::start(o).await.expect("cluster starts");
    let client = RestClient::new(&cluster.http_address, token.map(String::from)).expect("client");
    Api { cluster, client }
}

async fn api(nodes: usize) -> Api {
    api_with(nodes, &[], None).await
}

fn json_body(v: serde_json::Value) -> Option<(&'static str, bytes::Bytes)> {
    Some(("application/json", bytes::Bytes::from(v.to_string())))
}

fn error_code(r: &RawResponse) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("error body is JSON");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {v}");
    v["error"].as_str().expect("error code").to_string()
}

async fn post_raw(c: &RestClient, content_type: &str, body: &str) -> RawResponse {
    c.raw(Method::POST, "/api/v1/jobs", Some((content_type, bytes::Bytes::from(body.to_string()))))
        .await
        .expect("request")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))).expect("example")
}

#[tokio::test]
async fn a_task_graph_job_succeeds_with_its_sink_results_and_task_states() {
    let a = api(2).await;
    let r = post_raw(&a.client, "application/yaml", &example("pipeline.yaml")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(r.headers["location"], format!("/api/v1/jobs/{id}").as_str());
    let job = common::wait_terminal(&a.client, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state, JobState::Succeeded, "{}", job.message);
    assert_eq!(job.results.len(), 1);
    assert_eq!(job.results[0].task, "evaluate");
    assert!(job.results[0].value.as_ref().unwrap()["mse"].as_f64().unwrap() < 1e-9);
    assert!(job.started_at_ms.is_some() && job.ended_at_ms.is_some());
    // Task events reach the head every 100 ms.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks = a.client.tasks(&format!("job={id}&state=FINISHED")).await.unwrap().tasks;
        if tasks.len() == 8 && a.client.job(&id).await.unwrap().tasks.finished == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tasks.len(), 8);
    let job = a.client.job(&id).await.unwrap();
    assert_eq!((job.tasks.total, job.tasks.finished, job.tasks.failed), (8, 8, 0));
    let train = tasks.iter().find(|t| t.name == "train").expect("train task");
    // The owner (the head's raylet) reports the end; the executor's RUNNING
    // event may come in its next batch.
    let mut one = a.client.task(&train.task_id).await.unwrap();
    for _ in 0..100 {
        if one.started_at_ms.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        one = a.client.task(&train.task_id).await.unwrap();
    }
    assert_eq!(one.function, "builtin:train_linear");
    assert!(one.node_id.is_some() && one.started_at_ms.is_some() && one.ended_at_ms.is_some(), "{one:?}");
    assert!(one.events.iter().any(|e| e.state == "RUNNING"));
    let by_fn = a.client.tasks("function=builtin:load_shard").await.unwrap();
    assert_eq!(by_fn.tasks.len(), 3);
    let logs = String::from_utf8(a.client.logs(&id).await.unwrap().to_vec()).unwrap();
    assert!(logs.contains("job succeeded"), "{logs}");
    let listed = a.client.jobs(Some("SUCCEEDED")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(a.client.jobs(Some("RUNNING")).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_task_fails_the_job_with_the_task_error() {
    let a = api(1).await;
    let spec = serde_json::json!({"name": "broken", "tasks": [
        {"id": "ok", "function": "builtin:identity", "args": [1]},
        {"id": "boom", "function": "builtin:fail", "args": ["disk on fire"]}
    ]});
    let id = a.client.submit("application/json", spec.to_string()).await.unwrap().id;
    let job = common::wait_terminal(&a.client, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.message.contains("boom") && job.message.contains("disk on fire"), "{}", job.message);
}

#[tokio::test]
async fn a_large_result_is_an_object_to_download_until_the_job_is_deleted() {
    let a = api(1).await;
    let spec = serde_json::json!({"tasks": [{"id": "blob", "function": "builtin:bytes", "args": [300000]}]});
    let id = a.client.submit("application/json", spec.to_string()).await.unwrap().id;
    let job = common::wait_terminal(&a.client, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state, JobState::Succeeded, "{}", job.message);
    let oid = job.results[0].object_id.clone().expect("an object id, not an inline value");
    let (ct, bytes) = a.client.object(&oid).await.unwrap();
    assert_eq!(ct, "application/octet-stream");
    assert_eq!(bytes.len(), 300000);
    assert_eq!(bytes[1], 38, "byte i of builtin:bytes is (i * 31 + 7) % 251");
    a.client.delete(&id).await.unwrap();
    let gone = a.client.raw(Method::GET, &format!("/api/v1/objects/{oid}"), None).await.unwrap();
    assert_eq!((gone.status, error_code(&gone).as_str()), (404, "not_found"));
    let gone = a.client.raw(Method::GET, &format!("/api/v1/jobs/{id}"), None).await.unwrap();
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn an_entrypoint_job_runs_a_driver_that_submits_tasks_and_its_log_follows_live() {
    let a = api(2).await;
    let spec = std::env::temp_dir().join(format!("shoal-rest-driver-{}.yaml", std::process::id()));
    std::fs::write(&spec, example("pipeline.yaml")).unwrap();
    let cmd =
        format!("echo \"driver up $GREETING\"; sleep 2; {BIN} driver {}; echo finished-at-the-end >&2", spec.display());
    let body = serde_json::json!({"entrypoint": cmd, "env": {"GREETING": "hello"}, "resources": {"cpu": 0}});
    let id = a.client.submit("application/json", body.to_string()).await.unwrap().id;
    // Follow from the start: the first line must arrive while the job still runs.
    let mut log = Vec::new();
    let mut first_line_state = None;
    let c = a.client.clone();
    let follow = a.client.follow_logs(&id, |chunk| {
        log.extend_from_slice(chunk);
        if first_line_state.is_none() && String::from_utf8_lossy(&log).contains("driver up hello") {
            first_line_state = Some(Instant::now());
        }
    });
    tokio::time::timeout(Duration::from_secs(90), follow).await.expect("follow ends with the job").unwrap();
    let job = c.job(&id).await.unwrap();
    let log = String::from_utf8_lossy(&log).to_string();
    assert_eq!(job.state, JobState::Succeeded, "{}\n{log}", job.message);
    let first = first_line_state.expect("the driver's first line was streamed");
    let ended_ms = job.ended_at_ms.unwrap() as i128;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i128;
    let first_ms = now_ms - first.elapsed().as_millis() as i128;
    assert!(first_ms + 1000 < ended_ms, "the first line came {} ms before the end", ended_ms - first_ms);
    assert!(log.contains("\"mse\""), "{log}");
    assert!(log.contains("finished-at-the-end"), "{log}");
    // The driver's own tasks belong to the job.
    let mut names = Vec::new();
    for _ in 0..100 {
        names = c.tasks(&format!("job={id}")).await.unwrap().tasks.into_iter().map(|t| t.name).collect::<Vec<_>>();
        if names.len() >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(names.contains(&"entrypoint".to_string()) && names.contains(&"evaluate".to_string()), "{names:?}");
    let _ = std::fs::remove_file(spec);
}

#[tokio::test]
async fn an_entrypoint_job_reports_the_node_whose_raylet_owns_its_drivers_tasks() {
    // The job manager submits through the node with the most free CPU (node
    // 0); the driver can only run on node 1, so its tasks are owned there.
    let mut o = ClusterOptions::new(BIN, 2);
    o.node_args = vec![
        vec!["--num-cpus".into(), "4".into()],
        vec!["--num-cpus".into(), "2".into(), "--resources".into(), "driver=1".into()],
    ];
    o.raylet_args = vec!["--object-store-memory".into(), "256Mi".into()];
    let cluster = LocalCluster::start(o).await.expect("cluster starts");
    let client = RestClient::new(&cluster.http_address, None).unwrap();
    let driver_node = cluster.raylets[1].node_id.clone();
    let spec = std::env::temp_dir().join(format!("shoal-rest-owner-{}.yaml", std::process::id()));
    std::fs::write(&spec, example("fan.yaml")).unwrap();
    let body =
        serde_json::json!({"entrypoint": format!("{BIN} driver {}", spec.display()), "resources": {"driver": 1}});
    let id = client.submit("application/json", body.to_string()).await.unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(90);
    let job = loop {
        let job = client.job(&id).await.unwrap();
        if job.state.is_terminal() || Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = String::from_utf8_lossy(&client.logs(&id).await.unwrap()).to_string();
    let tasks = client.tasks(&format!("job={id}")).await.unwrap().tasks;
    assert_eq!(job.state, JobState::Succeeded, "{}\n{log}\n{tasks:?}", job.message);
    // The node and the tasks are learnt from task events, which trail the
    // job's end a little.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (job, tasks) = loop {
        let job = client.job(&id).await.unwrap();
        let tasks = client.tasks(&format!("job={id}")).await.unwrap().tasks;
        let all_owned = tasks.iter().filter(|t| t.owner_node_id.is_some()).count() == 6;
        if (job.driver_node_id.is_some() && all_owned) || Instant::now() > deadline {
            break (job, tasks);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job.driver_node_id.as_deref(), Some(driver_node.as_str()), "the driver ran on node 1");
    let driven: Vec<_> = tasks.iter().filter(|t| t.name != "entrypoint").collect();
    assert_eq!(driven.len(), 5, "{tasks:?}");
    for t in driven {
        assert_eq!(t.owner_node_id.as_deref(), job.driver_node_id.as_deref(), "task {} is owned elsewhere", t.name);
    }
    let _ = std::fs::remove_file(spec);
}

#[tokio::test]
async fn a_failing_entrypoint_fails_the_job_with_its_output() {
    let a = api(1).await;
    let body = serde_json::json!({"entrypoint": "echo about to fail; exit 3"});
    let id = a.client.submit("application/json", body.to_string()).await.unwrap().id;
    let job = common::wait_terminal(&a.client, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.message.contains("exit code 3") && job.message.contains("about to fail"), "{}", job.message);
}

#[tokio::test]
async fn stop_ends_a_running_entrypoint_and_terminal_states_never_change() {
    let a = api(1).await;
    let marker = format!("shoal-stop-marker-{}", std::process::id());
    let body = serde_json::json!({"entrypoint": format!("echo running; sleep 60; echo {marker}")});
    let id = a.client.submit("application/json", body.to_string()).await.unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&a.client.logs(&id).await.unwrap()).contains("running") {
        assert!(Instant::now() < deadline, "the driver never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = a.client.stop(&id).await.unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
    // The driver task ends (its command is killed) within the grace period.
    let mut driver_done = false;
    for _ in 0..200 {
        let t = a.client.tasks(&format!("job={id}")).await.unwrap().tasks;
        // Stopped by the driver's own stop signal (FAILED) or cancelled with
        // the job's session (CANCELLED): either way it ended.
        if t.iter().any(|t| t.name == "entrypoint" && (t.state == "FAILED" || t.state == "CANCELLED")) {
            driver_done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(driver_done, "the driver task did not end after the stop");
    let job = a.client.job(&id).await.unwrap();
    assert_eq!(job.state, JobState::Stopped);
    assert!(!String::from_utf8_lossy(&a.client.logs(&id).await.unwrap()).contains(&marker));
    // Stopping again is harmless; a terminal job can be deleted.
    assert_eq!(a.client.stop(&id).await.unwrap().state, JobState::Stopped);
    a.client.delete(&id).await.unwrap();
}

#[tokio::test]
async fn stop_ends_a_running_task_graph_and_a_finished_job_cannot_be_stopped() {
    let a = api(1).await;
    let spec = serde_json::json!({"tasks": [
        {"id": "slow", "function": "builtin:sleep", "args": [30]},
        {"id": "after", "function": "builtin:identity", "args": [{"ref": "slow"}]}
    ]});
    let id = a.client.submit("application/json", spec.to_string()).await.unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.client.job(&id).await.unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    assert_eq!(a.client.stop(&id).await.unwrap().state, JobState::Stopped);
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = a.client.job(&id).await.unwrap();
    assert_eq!(job.state, JobState::Stopped);
    assert!(job.results.is_empty());
    // The running task is cancelled and the pending one never starts.
    let mut states = Vec::new();
    for _ in 0..100 {
        let tasks = a.client.tasks(&format!("job={id}")).await.unwrap().tasks;
        states = tasks.iter().map(|t| (t.name.clone(), t.state.clone(), t.started_at_ms.is_some())).collect::<Vec<_>>();
        if states.iter().any(|(n, s, _)| n == "slow" && s == "CANCELLED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(states.iter().any(|(n, s, _)| n == "slow" && s == "CANCELLED"), "{states:?}");
    assert!(!states.iter().any(|(n, _, started)| n == "after" && *started), "{states:?}");

    let quick = serde_json::json!({"tasks": [{"id": "one", "function": "builtin:identity", "args": [1]}]});
    let done = a.client.submit("application/json", quick.to_string()).await.unwrap().id;
    assert_eq!(common::wait_terminal(&a.client, &done, Duration::from_secs(30)).await.state, JobState::Succeeded);
    let r = a.client.raw(Method::POST, &format!("/api/v1/jobs/{done}/stop"), None).await.unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (409, "job_terminal"));
}

#[tokio::test]
async fn task_listing_paginates_across_more_than_ten_thousand_tasks() {
    let a = api(2).await;
    const N: usize = 10_500;
    let tasks: Vec<serde_json::Value> = (0..N)
        .map(|i| serde_json::json!({"id": format!("t{i}"), "function": "builtin:noop", "resources": {}}))
        .collect();
    let id = a.client.submit("application/json", serde_json::json!({"name": "wide", "tasks": tasks}).to_string()).await;
    let id = id.unwrap().id;
    let job = common::wait_terminal(&a.client, &id, Duration::from_secs(300)).await;
    assert_eq!(job.state, JobState::Succeeded, "{}", job.message);
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.client.job(&id).await.unwrap().tasks.finished < N as u64 {
        assert!(Instant::now() < deadline, "task events missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = format!("job={id}&state=FINISHED&limit=1000");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let started = Instant::now();
        let page = a.client.tasks(&q).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(page.tasks.len() <= 1000);
        pages += 1;
        for t in &page.tasks {
            assert!(seen.insert(t.task_id.clone()), "task {} listed twice", t.task_id);
            assert_eq!(t.job_id, id);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), N);
    assert!(pages >= 11);
    let page = a.client.tasks("limit=5").await.unwrap();
    assert_eq!(page.tasks.len(), 5);
    assert!(page.history.tasks >= N as u64 && page.history.capacity >= page.history.tasks);
    // Bounded in bytes too: what the tasks hold is counted against the default bound.
    assert_eq!(page.history.byte_capacity, shoal::gcs::task_events::DEFAULT_BYTE_CAPACITY as u64);
    assert!(page.history.bytes > 0 && page.history.bytes <= page.history.byte_capacity, "{:?}", page.history);
}

#[tokio::test]
async fn the_task_history_cap_is_reported_and_evicts_finished_tasks_first() {
    let a = api_with(1, &["--task-history", "50"], None).await;
    // A running task and one pending on it must outlive the finished ones.
    let holder = serde_json::json!({"tasks": [
        {"id": "running", "function": "builtin:sleep", "args": [60]},
        {"id": "pending", "function": "builtin:identity", "args": [{"ref": "running"}]},
    ]});
    let held = a.client.submit("application/json", holder.to_string()).await.unwrap().id;
    let state_of = |page: &shoal::rest::types::TaskList, name: &str| {
        page.tasks.iter().find(|t| t.name == name).map(|t| t.state.clone())
    };
    let running = common::eventually(Duration::from_secs(30), || async {
        let page = a.client.tasks("limit=1000").await.unwrap();
        state_of(&page, "running").as_deref() == Some("RUNNING")
    })
    .await;
    assert!(running, "the long task never started");
    // Four jobs of twenty: finished tasks are there to evict while each runs.
    for j in 0..4 {
        let tasks: Vec<serde_json::Value> = (0..20)
            .map(|i| serde_json::json!({"id": format!("t{j}-{i}"), "function": "builtin:noop", "resources": {}}))
            .collect();
        let spec = serde_json::json!({"tasks": tasks}).to_string();
        let id = a.client.submit("application/json", spec).await.unwrap().id;
        common::wait_terminal(&a.client, &id, Duration::from_secs(60)).await;
    }
    // The GCS takes task events in batches: wait for the last ones.
    let evicted = common::eventually(Duration::from_secs(10), || async {
        a.client.tasks("limit=1000").await.unwrap().history.evicted >= 32
    })
    .await;
    let page = a.client.tasks("limit=1000").await.unwrap();
    assert!(evicted, "only {} tasks evicted", page.history.evicted);
    assert_eq!(page.history.capacity, 50);
    assert_eq!(page.tasks.len(), 50);
    assert_eq!(state_of(&page, "running").as_deref(), Some("RUNNING"), "a running task was evicted");
    assert_eq!(state_of(&page, "pending").as_deref(), Some("PENDING_ARGS"), "a pending task was evicted");
    a.client.stop(&held).await.unwrap();
}

#[tokio::test]
async fn with_a_token_every_api_route_needs_it_but_health_and_metrics_stay_open() {
    let a = api_with(1, &[], Some("s3cret-token")).await;
    let anon = RestClient::anonymous(&a.cluster.http_address).unwrap();
    let wrong = RestClient::new(&a.cluster.http_address, Some("s3cret-tokeN".into())).unwrap();
    for path in ["/api/v1/jobs", "/api/v1/nodes", "/api/v1/cluster", "/api/v1/tasks", "/api/v1/jobs/00000001"] {
        for c in [&anon, &wrong] {
            let r = c.raw(Method::GET, path, None).await.unwrap();
            assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"), "{path}");
        }
    }
    let r = anon.raw(Method::POST, "/api/v1/jobs", json_body(serde_json::json!({"tasks": []}))).await.unwrap();
    assert_eq!(r.status, 401);
    for path in ["/metrics", "/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(anon.raw(Method::GET, path, None).await.unwrap().status, 200, "{path}");
    }
    // The head's raylet and the worker.
    assert_eq!(a.client.nodes().await.unwrap().nodes.len(), 2);
    let spec = serde_json::json!({"tasks": [{"id": "x", "function": "builtin:add", "args": [40, 2]}]});
    let id = a.client.submit("application/json", spec.to_string()).await.unwrap().id;
    let job = common::wait_terminal(&a.client, &id, Duration::from_secs(60)).await;
    assert_eq!(job.results[0].value, Some(serde_json::json!(42)));
}

#[tokio::test]
async fn a_cluster_has_a_token_by_default_and_is_open_only_when_auth_is_turned_off() {
    let a = api(0).await;
    assert!(a.cluster.token.is_some(), "a generated token");
    let anon = RestClient::anonymous(&a.cluster.http_address).unwrap();
    assert_eq!(anon.raw(Method::GET, "/api/v1/jobs", None).await.unwrap().status, 401);
    // The client of this process finds the generated token by address.
    assert_eq!(a.client.raw(Method::GET, "/api/v1/jobs", None).await.unwrap().status, 200);

    let mut o = ClusterOptions::new(BIN, 0);
    o.insecure_no_auth = true;
    let open = LocalCluster::start(o).await.expect("cluster starts");
    assert!(open.token.is_none());
    let anon = RestClient::anonymous(&open.http_address).unwrap();
    assert_eq!(anon.raw(Method::GET, "/api/v1/jobs", None).await.unwrap().status, 200);
    let head_log = std::fs::read_to_string(open.session_dir.join("logs/head.log")).unwrap();
    assert!(head_log.contains("AUTHENTICATION IS OFF"), "the head says so loudly:\n{head_log}");
}

#[tokio::test]
async fn a_repeated_submission_id_returns_the_same_job_and_a_different_body_conflicts() {
    let a = api(1).await;
    let body = serde_json::json!({"submission_id": "nightly-42", "tasks": [{"id": "x", "function": "builtin:identity", "args": [7]}]});
    let first = post_raw(&a.client, "application/json", &body.to_string()).await;
    assert_eq!(first.status, 201);
    let again = post_raw(&a.client, "application/json", &body.to_string()).await;
    assert_eq!(again.status, 200);
    let id = |r: &RawResponse| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"].clone();
    assert_eq!(id(&first), id(&again));
    let other = serde_json::json!({"submission_id": "nightly-42", "tasks": [{"id": "x", "function": "builtin:identity", "args": [8]}]});
    let r = post_raw(&a.client, "application/json", &other.to_string()).await;
    assert_eq!((r.status, error_code(&r).as_str()), (409, "submission_conflict"));
    // The same id in YAML (as a top-level line) names the same job too.
    let yaml = "submission_id: nightly-42\ntasks:\n  - id: x\n    function: builtin:identity\n    args: [7]\n";
    let r = post_raw(&a.client, "application/yaml", yaml).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(a.client.jobs(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn deleting_a_running_job_is_a_conflict() {
    let a = api(1).await;
    let spec = serde_json::json!({"tasks": [{"id": "slow", "function": "builtin:sleep", "args": [20]}]});
    let id = a.client.submit("application/json", spec.to_string()).await.unwrap().id;
    let r = a.client.raw(Method::DELETE, &format!("/api/v1/jobs/{id}"), None).await.unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (409, "job_not_terminal"));
    a.client.stop(&id).await.unwrap();
    assert_eq!(a.client.delete(&id).await.unwrap().state, JobState::Stopped);
}

// ---------------------------------------------------------------------------
// Malformed input: one case each, against a head without raylets.

async fn rejected(content_type: &str, body: &str, status: u16, code: &str) -> serde_json::Value {
    let a = api(0).await;
    let r = post_raw(&a.client, content_type, body).await;
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), code);
    assert!(a.client.jobs(None).await.unwrap().is_empty(), "a rejected request registered a job");
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn malformed_json_is_400_malformed_body() {
    rejected("application/json", "{\"tasks\": [", 400, "malformed_body").await;
}

#[tokio::test]
async fn malformed_yaml_is_400_malformed_body() {
    rejected("application/yaml", "tasks: [\n  - id: a\n  bad", 400, "malformed_body").await;
}

#[tokio::test]
async fn an_empty_body_is_400_malformed_body() {
    rejected("application/json", "   ", 400, "malformed_body").await;
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_422() {
    rejected("application/json", "[1, 2, 3]", 422, "invalid_job_spec").await;
}

#[tokio::test]
async fn an_unknown_field_is_422_naming_the_task() {
    let body = r#"{"tasks": [{"id": "a", "function": "builtin:noop", "colour": "red"}]}"#;
    let v = rejected("application/json", body, 422, "invalid_job_spec").await;
    assert!(v.to_string().contains("colour"), "{v}");
}

#[tokio::test]
async fn yaml_means_what_the_same_json_means_or_is_422() {
    // YAML's reader would take these as the text `false`, `null`, `1`.
    for (body, what) in [
        ("tasks:\n  - id: false\n    function: builtin:noop\n", "`id` must be a string"),
        ("tasks:\n  - id: a\n    function: builtin:noop\n    cwd: 1\n", "`cwd` must be a string"),
        ("tasks:\n  - id: a\n    exec: [echo, null]\n", "every item of `exec` must be a string"),
        ("name: null\ntasks:\n  - id: a\n    function: builtin:noop\n", "`name` must be a string"),
    ] {
        let v = rejected("application/yaml", body, 422, "invalid_job_spec").await;
        assert!(v.to_string().contains(what), "{body}: {v}");
    }
    let body = r#"{"tasks": [{"id": "a", "function": "builtin:identity", "args": [{"value": 1, "unit": "kg"}]}]}"#;
    let v = rejected("application/json", body, 422, "invalid_job_spec").await;
    assert!(v.to_string().contains("has `value` and also `unit`"), "{v}");
    let body = r#"{"entrypoint": "true", "resources": {"cpu": 10000000000001}}"#;
    rejected("application/json", body, 422, "invalid_job_spec").await;
}

#[tokio::test]
async fn a_reference_to_an_unknown_task_is_422_naming_it() {
    let body = r#"{"tasks": [{"id": "a", "function": "builtin:identity", "args": [{"ref": "ghost"}]}]}"#;
    let v = rejected("application/json", body, 422, "invalid_job_spec").await;
    assert!(v["problems"].to_string().contains("ghost"), "{v}");
}

#[tokio::test]
async fn an_unknown_builtin_is_422() {
    let body = "tasks:\n  - id: a\n    function: builtin:does_not_exist\n";
    rejected("application/yaml", body, 422, "invalid_job_spec").await;
}

#[tokio::test]
async fn a_job_without_tasks_is_422() {
    rejected("application/json", r#"{"name": "empty", "tasks": []}"#, 422, "invalid_job_spec").await;
}

#[tokio::test]
async fn an_entrypoint_with_bad_resources_is_422() {
    let body = r#"{"entrypoint": "true", "resources": {"cpu": "lots"}}"#;
    rejected("application/json", body, 422, "invalid_job_spec").await;
}

#[tokio::test]
async fn an_entrypoint_with_an_unknown_field_is_422() {
    rejected("application/json", r#"{"entrypoint": "true", "cwd": "/"}"#, 422, "invalid_job_spec").await;
}

#[tokio::test]
async fn an_invalid_submission_id_is_422() {
    let body = r#"{"submission_id": "has spaces", "tasks": [{"id": "a", "function": "builtin:noop"}]}"#;
    rejected("application/json", body, 422, "invalid_job_spec").await;
}

#[tokio::test]
async fn an_unsupported_content_type_is_415() {
    rejected("application/xml", "<job/>", 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let a = api_with(0, &["--max-body-bytes", "1024"], None).await;
    let big = format!(r#"{{"name": "{}", "tasks": []}}"#, "x".repeat(4096));
    let r = post_raw(&a.client, "application/json", &big).await;
    assert_eq!((r.status, error_code(&r).as_str()), (413, "payload_too_large"));
    assert!(a.client.jobs(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_job_is_404() {
    let a = api(0).await;
    for (method, path) in [
        (Method::GET, "/api/v1/jobs/0000abcd"),
        (Method::GET, "/api/v1/jobs/not-a-job"),
        (Method::GET, "/api/v1/jobs/0000abcd/logs"),
        (Method::POST, "/api/v1/jobs/0000abcd/stop"),
        (Method::DELETE, "/api/v1/jobs/0000abcd"),
        (Method::GET, "/api/v1/tasks/0000000100000000000000aa"),
        (Method::GET, "/api/v1/objects/0000000100000000000000aa00000000"),
    ] {
        let r = a.client.raw(method.clone(), path, None).await.unwrap();
        assert_eq!((r.status, error_code(&r).as_str()), (404, "not_found"), "{method} {path}");
    }
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404_and_a_wrong_method_a_json_405() {
    let a = api(0).await;
    let r = a.client.raw(Method::GET, "/api/v2/everything", None).await.unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (404, "not_found"));
    let r = a.client.raw(Method::PUT, "/api/v1/jobs", None).await.unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (405, "method_not_allowed"));
}

#[tokio::test]
async fn bad_query_parameters_are_400() {
    let a = api(0).await;
    for path in [
        "/api/v1/tasks?limit=0",
        "/api/v1/tasks?limit=many",
        "/api/v1/tasks?state=SLEEPING",
        "/api/v1/tasks?job=xyz",
        "/api/v1/tasks?node=12",
        "/api/v1/tasks?cursor=not-hex",
        "/api/v1/tasks?colour=red",
        "/api/v1/jobs?state=DONE",
        "/api/v1/jobs?limit=100000",
        "/api/v1/tasks/zz",
        "/api/v1/objects/zz",
    ] {
        let r = a.client.raw(Method::GET, path, None).await.unwrap();
        assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_parameter"), "{path}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let a = api(0).await;
    let r = a.client.raw(Method::GET, "/openapi.json", None).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/api/v1/jobs", "post"),
        ("/api/v1/jobs", "get"),
        ("/api/v1/jobs/{id}", "get"),
        ("/api/v1/jobs/{id}", "delete"),
        ("/api/v1/jobs/{id}/logs", "get"),
        ("/api/v1/jobs/{id}/stop", "post"),
        ("/api/v1/objects/{id}", "get"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks/{id}", "get"),
        ("/api/v1/nodes", "get"),
        ("/api/v1/cluster", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    assert!(doc["components"]["schemas"]["Job"].is_object());
}
