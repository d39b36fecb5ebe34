//! The `shoal` command line, run as a user would run it.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use shoal::rest::client::RestClient;
use shoal::rest::types::JobState;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn run_prints_every_sink_result_as_json() {
    let out = shoal().args(["run", &example("pipeline.yaml"), "--nodes", "3", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["evaluate"]);
    assert!(v["evaluate"]["mse"].as_f64().unwrap() < 1e-9);
}

#[test]
fn run_executes_commands_and_text_output() {
    let out = shoal().args(["run", &example("exec.yaml"), "--nodes", "2", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shout"], "the answer is 84");
}

#[test]
fn a_failing_job_exits_non_zero_with_the_task_error() {
    let mut f = tempfile();
    writeln!(
        f.1,
        "name: broken\ntasks:\n  - id: ok\n    function: builtin:identity\n    args: [1]\n  - id: boom\n    function: builtin:fail\n    args: [{{ref: ok}}, \"disk on fire\"]"
    )
    .unwrap();
    let out = shoal().args(["run", f.0.to_str().unwrap(), "--nodes", "1"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("boom"), "{err}");
    assert!(err.contains("builtin:fail"), "{err}");
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    let p = std::env::temp_dir().join(format!("shoal-test-{}-{}.yaml", std::process::id(), fastrand_u32()));
    let f = std::fs::File::create(&p).unwrap();
    (p, f)
}

fn fastrand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos()
}

/// Each malformed spec is refused before any process starts, naming the task.
#[test]
fn malformed_job_specs_are_rejected_with_their_message() {
    let cases: &[(&str, &str)] = &[
        ("tasks:\n  - {id: a, function: 'builtin:noop'}\n  - {id: a, function: 'builtin:noop'}", "`a`"),
        ("tasks:\n  - {id: a, function: 'builtin:identity', args: [{ref: nope}]}", "nope"),
        (
            "tasks:\n  - {id: a, function: 'builtin:identity', args: [{ref: b}]}\n  - {id: b, function: 'builtin:identity', args: [{ref: a}]}",
            "cycle",
        ),
        ("tasks:\n  - {id: a, function: 'builtin:frobnicate'}", "frobnicate"),
        ("tasks:\n  - {id: a, function: 'builtin:noop', resources: {cpu: -1}}", "negative"),
        ("tasks:\n  - {id: a, function: 'builtin:noop', resources: {cpu: lots}}", "lots"),
        ("tasks: [", "line"),
    ];
    for (spec, needle) in cases {
        let mut f = tempfile();
        f.1.write_all(spec.as_bytes()).unwrap();
        let started = std::time::Instant::now();
        let out = shoal().args(["run", f.0.to_str().unwrap(), "--nodes", "1"]).output().unwrap();
        assert!(!out.status.success(), "accepted: {spec}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "spec {spec:?}: message {err:?} lacks {needle:?}");
        assert!(started.elapsed().as_secs() < 5, "rejection must not start a cluster");
        let _ = std::fs::remove_file(&f.0);
    }
}

#[test]
fn raylet_reports_every_bad_flag_at_once() {
    let out = shoal()
        .args(["raylet", "--gcs", "127.0.0.1:1", "--resources", "x", "--labels", "=v", "--memory", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resources") && err.contains("--labels") && err.contains("--memory"), "{err}");
}

/// A zombie still has a /proc entry; it counts as gone.
fn alive(pid: u32) -> bool {
    shoal::process::is_running(pid)
}

/// A running `shoal up`: the process, every process below it once it is
/// serving (head, raylets, workers), and its REST API address.
struct Up {
    child: std::process::Child,
    procs: Vec<u32>,
    api: String,
    token: Option<String>,
    home: std::path::PathBuf,
}

/// Starts `shoal up` and waits until it is serving and every raylet has
/// started its workers.
fn start_up() -> Up {
    // Its cluster record goes to a directory of its own.
    let home = std::env::temp_dir().join(format!("shoal-cli-home-{}", fastrand::u64(..)));
    let mut cmd = shoal();
    cmd.env("SHOAL_HOME", &home);
    let (child, banner) = common::start_up(cmd);
    let api = common::rest_api_of(&banner).trim_start_matches("http://").to_string();
    let root = child.id();
    common::wait_for_blocking("head, two raylets and their workers run", Duration::from_secs(20), || {
        shoal::process::descendants(root).len() >= 5
    });
    let procs = shoal::process::descendants(root);
    // The record `shoal up` wrote holds the generated token.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("cluster.json")).unwrap()).unwrap();
    let token = record["token"].as_str().map(String::from);
    assert!(token.as_ref().is_some_and(|t| t.len() == 64), "shoal up generated and recorded a token");
    Up { child, procs, api, token, home }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A number no other test's `sleep` uses: its argument marks the job's
/// processes in `/proc`.
fn unique_sleep() -> String {
    format!("1000.{}{:09}", std::process::id(), fastrand_u32() % 1_000_000_000)
}

/// Submits an entrypoint job to `api` and waits until a process with
/// `marker` in its arguments runs; returns the job id.
fn submit_entrypoint(rt: &tokio::runtime::Runtime, api: &RestClient, command: &str, marker: &str) -> String {
    let body = serde_json::json!({ "entrypoint": command });
    let id = rt.block_on(api.submit("application/json", body.to_string())).unwrap().id;
    common::wait_for_blocking("the entrypoint's command runs", Duration::from_secs(30), || {
        !common::processes_with_arg(marker).is_empty()
    });
    id
}
fn all_gone(procs: &[u32]) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if procs.iter().all(|p| !alive(*p)) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn up_stops_every_process_on_sigterm() {
    let mut up = start_up();
    let procs = up.procs.clone();
    // The CLI finds the generated token by itself; `shoal token` prints it; a wrong one is refused.
    let jobs = shoal().env("SHOAL_HOME", &up.home).env_remove("SHOAL_TOKEN").arg("jobs").output().unwrap();
    assert!(jobs.status.success(), "{}", String::from_utf8_lossy(&jobs.stderr));
    let printed = shoal().env("SHOAL_HOME", &up.home).arg("token").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), up.token.as_deref().unwrap());
    let wrong = shoal().env("SHOAL_HOME", &up.home).args(["jobs", "--token", "wrong"]).output().unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("401") && err.contains("shoal token"), "{err}");
    // SAFETY: kill(2) on a child this test started.
    unsafe {
        libc::kill(up.child.id() as i32, libc::SIGTERM);
    }
    let status = up.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(all_gone(&procs), "orphans left: {:?}", procs.iter().filter(|p| alive(**p)).collect::<Vec<_>>());
}

#[test]
fn no_process_outlives_a_killed_up() {
    let mut up = start_up();
    let procs = up.procs.clone();
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    assert!(all_gone(&procs), "orphans left: {:?}", procs.iter().filter(|p| alive(**p)).collect::<Vec<_>>());
}

#[test]
fn no_process_of_an_entrypoint_job_outlives_a_killed_up() {
    let mut up = start_up();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = RestClient::new(&up.api, up.token.clone()).unwrap();
    // Two commands: the shell forks the sleep instead of exec'ing it, so
    // the sleep is a grandchild of the worker.
    let marker = unique_sleep();
    submit_entrypoint(&rt, &api, &format!("sleep {marker}; echo after"), &marker);
    common::wait_for_blocking("the shell and its forked sleep run", Duration::from_secs(10), || {
        common::processes_with_arg(&marker).len() >= 2
    });
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    common::wait_for_blocking("every process of the job is gone", Duration::from_secs(10), || {
        common::processes_with_arg(&marker).is_empty()
    });
    assert!(all_gone(&up.procs), "orphans left: {:?}", up.procs.iter().filter(|p| alive(**p)).collect::<Vec<_>>());
}

#[test]
fn an_entrypoint_job_ends_with_its_command_and_takes_its_background_processes_along() {
    let up = start_up();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = RestClient::new(&up.api, up.token.clone()).unwrap();
    // The background sleep keeps the job's output pipes open: the job must
    // end when the shell does, not when the sleep would.
    let marker = unique_sleep();
    let body = serde_json::json!({ "entrypoint": format!("sleep {marker} & echo started $!") });
    let id = rt.block_on(api.submit("application/json", body.to_string())).unwrap().id;
    common::wait_for_blocking("the job ends", Duration::from_secs(30), || {
        rt.block_on(api.job(&id)).unwrap().state.is_terminal()
    });
    assert_eq!(rt.block_on(api.job(&id)).unwrap().state, JobState::Succeeded);
    let log = String::from_utf8_lossy(&rt.block_on(api.logs(&id)).unwrap()).to_string();
    let sleep: u32 = log
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("the job printed its background pid: {log:?}"));
    common::wait_for_blocking("the background sleep is gone", Duration::from_secs(10), || {
        !alive(sleep) && common::processes_with_arg(&marker).is_empty()
    });
}
