//! The durable head end to end: a head killed with SIGKILL and started again
//! on the same state directory shows every job it had, fails the ones it was
//! running, keeps handing out new job ids, and refuses a state file it cannot
//! read without touching it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal::local_cluster::{ClusterOptions, LocalCluster};
use shoal::rest::client::{Method, RestClient};
use shoal::rest::types::{Job, JobState};

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d =
            std::env::temp_dir().join(format!("shoal-durable-{tag}-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&d).expect("a temporary directory");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The token of the heads these tests start themselves.
const HEAD_TOKEN: &str = "durable-head-test-token";

/// A head started by the test (no raylets), killed on drop.
struct Head {
    child: Child,
    client: RestClient,
}

impl Head {
    /// Starts `shoal head --state-dir dir` and waits until it serves. It
    /// runs no raylet of its own, so a job submitted to it waits (PENDING).
    async fn start(state_dir: &Path, log: &Path) -> Head {
        let ready = log.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let out = std::fs::File::create(log).expect("head log");
        let child = Command::new(common::binary())
            .args(["head", "--host", "127.0.0.1", "--gcs-port", "0", "--port", "0", "--no-raylet", "--state-dir"])
            .arg(state_dir)
            .arg("--ready-file")
            .arg(&ready)
            .env(shoal::auth::ENV_TOKEN, HEAD_TOKEN)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("the head starts");
        let mut head = Head { child, client: RestClient::new("127.0.0.1:1", None).expect("client") };
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = loop {
            if let Some(addr) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["http"].as_str().map(String::from))
            {
                break addr;
            }
            if let Ok(Some(status)) = head.child.try_wait() {
                panic!("the head exited with {status}: {}", shoal::local_cluster::log_tail(log));
            }
            assert!(Instant::now() < deadline, "the head is not ready: {}", shoal::local_cluster::log_tail(log));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        head.client = RestClient::new(&http, Some(HEAD_TOKEN.into())).expect("client");
        head
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills a head and waits until it is gone: until then it still holds the
/// state file, and a new head on the same directory is refused.
fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a head this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    common::wait_for_blocking("the killed head exits", Duration::from_secs(10), || !shoal::process::is_running(pid));
}

async fn logs(c: &RestClient, id: &str) -> String {
    String::from_utf8_lossy(&c.logs(id).await.expect("logs")).into_owned()
}

async fn submit(c: &RestClient, body: serde_json::Value) -> String {
    c.submit("application/json", body.to_string()).await.expect("submit").id
}

fn id_number(id: &str) -> u32 {
    u32::from_str_radix(id, 16).expect("job ids are hex")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_killed_and_restarted_on_its_state_dir_keeps_every_job_and_fails_the_ones_it_ran() {
    let state = TempDir::new("restart");
    let logs_dir = TempDir::new("restart-logs");
    let mut o = ClusterOptions::new(common::binary(), 1);
    o.cpus_per_node = Some(2.0);
    o.raylet_args = vec!["--object-store-memory".into(), "256Mi".into()];
    o.head_args = vec!["--state-dir".into(), state.0.display().to_string()];
    let cluster = LocalCluster::start(o).await.expect("cluster starts");
    let c = RestClient::new(&cluster.http_address, None).expect("client");

    // Succeeded: a task graph with an inline and an object result, submitted with an id.
    let graph = serde_json::json!({"submission_id": "keep-me", "name": "kept", "tasks": [
        {"id": "small", "function": "builtin:identity", "args": [42]},
        {"id": "blob", "function": "builtin:bytes", "args": [300000]}
    ]});
    let ok = submit(&c, graph.clone()).await;
    // Succeeded with logs: an entrypoint.
    let echo = submit(&c, serde_json::json!({"entrypoint": "echo hello-from-the-driver"})).await;
    // Failed.
    let failed = submit(
        &c,
        serde_json::json!({"tasks": [{"id": "boom", "function": "builtin:fail", "args": ["disk on fire"]}]}),
    )
    .await;
    // Stopped.
    let stopped = submit(&c, serde_json::json!({"entrypoint": "echo waiting; sleep 60"})).await;
    // Running when the head dies.
    let running = submit(&c, serde_json::json!({"entrypoint": "echo started; sleep 60"})).await;

    let ok_job = common::wait_terminal(&c, &ok, Duration::from_secs(60)).await;
    assert_eq!(ok_job.state, JobState::Succeeded, "{}", ok_job.message);
    let object_id = ok_job.results.iter().find(|r| r.task == "blob").and_then(|r| r.object_id.clone()).expect("object");
    let inline = ok_job.results.iter().find(|r| r.task == "small").and_then(|r| r.value.clone());
    assert_eq!(inline, Some(serde_json::json!(42)));
    assert_eq!(common::wait_terminal(&c, &echo, Duration::from_secs(60)).await.state, JobState::Succeeded);
    assert_eq!(common::wait_terminal(&c, &failed, Duration::from_secs(60)).await.state, JobState::Failed);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, line) in [(&stopped, "waiting"), (&running, "started")] {
        while !logs(&c, id).await.contains(line) {
            assert!(Instant::now() < deadline, "the driver of {id} never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(c.stop(&stopped).await.expect("stop").state, JobState::Stopped);
    assert_eq!(c.job(&running).await.expect("job").state, JobState::Running);
    // The graph's counts reach the head with the task events, then freeze.
    common::wait_for_job(&c, &ok, "counted its tasks", Duration::from_secs(10), |j| j.tasks.finished == 2).await;
    tokio::time::sleep(shoal::rest::jobs::COUNTS_SETTLE + Duration::from_millis(500)).await;
    let before: Vec<Job> = c.jobs(None).await.expect("list");
    assert_eq!(before.len(), 5);

    sigkill(cluster.head_pid);
    // Phase 2: a new head on the same state directory, no raylet.
    let mut head = Head::start(&state.0, &logs_dir.0.join("head-2.log")).await;
    let h = &head.client;
    let after = h.jobs(None).await.expect("list");
    assert_eq!(
        after.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        before.iter().map(|j| j.id.clone()).collect::<Vec<_>>()
    );
    let ok_after = h.job(&ok).await.expect("the succeeded job");
    assert_eq!(ok_after.state, JobState::Succeeded);
    assert_eq!(ok_after.results, ok_job.results, "inline results and object ids survive");
    assert_eq!(ok_after.tasks.finished, 2, "task counts were frozen into the record: {:?}", ok_after.tasks);
    assert_eq!(ok_after.submission_id.as_deref(), Some("keep-me"));
    assert!(logs(h, &echo).await.contains("hello-from-the-driver"), "{}", logs(h, &echo).await);
    let failed_after = h.job(&failed).await.expect("failed job");
    assert_eq!(failed_after.state, JobState::Failed);
    assert!(failed_after.message.contains("disk on fire"), "{}", failed_after.message);
    assert_eq!(h.job(&stopped).await.expect("stopped job").state, JobState::Stopped);
    let was_running = h.job(&running).await.expect("running job");
    assert_eq!(was_running.state, JobState::Failed);
    assert!(
        was_running.message.contains("head restarted") && was_running.message.contains("RUNNING"),
        "{}",
        was_running.message
    );
    assert!(was_running.ended_at_ms.is_some());
    let log = logs(h, &running).await;
    assert!(log.contains("started") && log.contains("[shoal] the head restarted"), "{log}");
    // The object's owner died with the old head: a clear 410, not a 404.
    let gone = h.raw(Method::GET, &format!("/api/v1/objects/{object_id}"), None).await.expect("request");
    let body: serde_json::Value = serde_json::from_slice(&gone.body).expect("JSON error");
    assert_eq!((gone.status, body["error"].as_str()), (410, Some("object_gone")), "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("restarted"), "{body}");
    // Stop and delete work on restored jobs; a deleted job's log goes too.
    assert_eq!(h.stop(&stopped).await.expect("stop a stopped job").state, JobState::Stopped);
    let stop_failed = h.raw(Method::POST, &format!("/api/v1/jobs/{running}/stop"), None).await.expect("request");
    assert_eq!(stop_failed.status, 409);
    h.delete(&failed).await.expect("delete");
    assert_eq!(h.raw(Method::GET, &format!("/api/v1/jobs/{failed}"), None).await.expect("request").status, 404);
    // A job submitted now waits for a raylet (PENDING) when the head dies.
    let pending = submit(h, serde_json::json!({"entrypoint": "true"})).await;
    assert!(id_number(&pending) > before.iter().map(|j| id_number(&j.id)).max().unwrap_or(0), "ids keep increasing");
    assert_eq!(h.job(&pending).await.expect("job").state, JobState::Pending);
    sigkill(head.child.id());
    head.kill();

    // Phase 3: the pending job failed, the deleted one stays deleted, ids go on.
    let head = Head::start(&state.0, &logs_dir.0.join("head-3.log")).await;
    let h = &head.client;
    let was_pending = h.job(&pending).await.expect("pending job");
    assert_eq!(was_pending.state, JobState::Failed);
    assert!(
        was_pending.message.contains("head restarted") && was_pending.message.contains("PENDING"),
        "{}",
        was_pending.message
    );
    assert_eq!(h.raw(Method::GET, &format!("/api/v1/jobs/{failed}"), None).await.expect("request").status, 404);
    assert_eq!(h.jobs(None).await.expect("list").len(), 5);
    // Submission ids stay idempotent: the same body is the same job, another body conflicts.
    let again = h.submit("application/json", graph.to_string()).await.expect("resubmit");
    assert_eq!((again.id.as_str(), again.existing), (ok.as_str(), true));
    let mut other = graph.clone();
    other["name"] = serde_json::json!("another body");
    let conflict = h
        .raw(Method::POST, "/api/v1/jobs", Some(("application/json", bytes::Bytes::from(other.to_string()))))
        .await
        .expect("request");
    assert_eq!(conflict.status, 409);
    let newest = submit(h, serde_json::json!({"entrypoint": "true"})).await;
    assert!(id_number(&newest) > id_number(&pending), "{newest} after {pending}");
    drop(cluster);
}

#[tokio::test]
async fn an_unreadable_state_dir_stops_the_head_with_a_clear_error_and_leaves_it_untouched() {
    let dir = TempDir::new("corrupt");
    let file = dir.0.join(shoal::gcs::state::STATE_FILE);
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&file, &garbage).expect("write garbage");
    // A file where the directory should be.
    let not_a_dir = dir.0.join("plain-file");
    std::fs::write(&not_a_dir, b"not a directory").expect("write");
    for (state_dir, expect) in [(dir.0.clone(), "corrupt"), (not_a_dir.clone(), "cannot use the state directory")] {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(common::binary())
                .args(["head", "--host", "127.0.0.1", "--gcs-port", "0", "--port", "0", "--no-raylet", "--state-dir"])
                .arg(&state_dir)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("the head exits by itself")
        .expect("the head runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the head started on {}: {stderr}", state_dir.display());
        assert!(stderr.contains(expect) && stderr.contains(&state_dir.display().to_string()), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(std::fs::read(&file).expect("read"), garbage, "the state file is untouched");
    assert_eq!(std::fs::read(&not_a_dir).expect("read"), b"not a directory");
}
