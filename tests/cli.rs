//! The `shoal` command line, run as a user would run it.

use std::io::Write;
use std::process::Command;

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

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; count it as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Starts `shoal up`, waits until it is serving, and returns it with every
/// process below it (head, raylets, workers).
fn start_up() -> (std::process::Child, Vec<u32>) {
    use std::io::{BufRead, BufReader};
    let mut child = shoal()
        .args(["up", "--nodes", "2", "--cpus-per-node", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("raylet 1:"), "{seen}");
    // Keep draining stdout so `shoal up` never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    // Let the raylets start their workers.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let procs = shoal::process::descendants(child.id());
    assert!(procs.len() >= 5, "head, two raylets and their workers: {procs:?}");
    (child, procs)
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
    let (mut up, procs) = start_up();
    // SAFETY: kill(2) on a child this test started.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    let status = up.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(all_gone(&procs), "orphans left: {:?}", procs.iter().filter(|p| alive(**p)).collect::<Vec<_>>());
}

#[test]
fn no_process_outlives_a_killed_up() {
    let (mut up, procs) = start_up();
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(all_gone(&procs), "orphans left: {:?}", procs.iter().filter(|p| alive(**p)).collect::<Vec<_>>());
}
