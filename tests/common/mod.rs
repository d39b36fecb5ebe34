//! Helpers shared by the end-to-end tests: local clusters of real `shoal`
//! processes on 127.0.0.1.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use shoal::local_cluster::{ClusterOptions, LocalCluster};

/// The `shoal` binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// Options for `n` raylets with `cpus` CPUs and a `store` budget each
/// (e.g. "256Mi"), for tests that set more before starting.
pub fn options(n: usize, cpus: f64, store: &str) -> ClusterOptions {
    let mut o = ClusterOptions::new(binary(), n);
    o.cpus_per_node = Some(cpus);
    o.raylet_args = vec!["--object-store-memory".into(), store.into()];
    o
}

/// A cluster of `n` raylets with `cpus` CPUs each.
pub async fn cluster(n: usize, cpus: f64) -> LocalCluster {
    let mut o = ClusterOptions::new(binary(), n);
    o.cpus_per_node = Some(cpus);
    o.raylet_args = vec!["--object-store-memory".into(), "512Mi".into()];
    LocalCluster::start(o).await.expect("cluster starts")
}

/// A cluster whose raylet `i` gets `per_node[i]` as extra flags.
pub async fn cluster_with(per_node: Vec<Vec<&str>>) -> LocalCluster {
    let mut o = ClusterOptions::new(binary(), per_node.len());
    o.node_args = per_node.into_iter().map(|a| a.into_iter().map(String::from).collect()).collect();
    o.raylet_args = vec!["--object-store-memory".into(), "512Mi".into()];
    LocalCluster::start(o).await.expect("cluster starts")
}

/// The repository's Python virtual environment (`.venv`), made with
/// `python3 -m venv` when missing, with `requirements` installed from PyPI
/// unless `marker` (a file in it, such as `bin/schemathesis`) is already
/// there. Panics with pip's output when it cannot be set up: a test that
/// needs Python tools and skips itself without them proves nothing.
pub fn venv(marker: &str, requirements: &[&str]) -> std::path::PathBuf {
    let venv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv");
    if venv.join(marker).exists() {
        return venv;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    };
    if !venv.join("bin/python").is_file() {
        run(std::process::Command::new("python3").arg("-m").arg("venv").arg(&venv));
    }
    run(std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(requirements));
    assert!(venv.join(marker).exists(), "{marker} is not in {} after installing it", venv.display());
    venv
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The results of `get_many` as integers, failing the test on any error.
pub fn as_u64s(values: Vec<Result<shoal::Value, shoal::Error>>) -> Vec<u64> {
    values
        .into_iter()
        .map(|v| match v.expect("every task succeeds") {
            shoal::Value::Json(j) => j.as_u64().expect("an integer result"),
            other => panic!("expected an integer, got {other:?}"),
        })
        .collect()
}

/// The bytes `builtin:bytes` makes: byte i is (i * 31 + 7) % 251.
pub fn pattern(size: u64) -> Vec<u8> {
    (0..size).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// The node id of raylet `i`.
pub fn node(cluster: &LocalCluster, i: usize) -> shoal::NodeId {
    cluster.raylets[i].node_id.parse().expect("raylets report hex node ids")
}

/// Hex form of a node id as the GCS reports it.
pub fn node_hex(id: &[u8]) -> String {
    shoal::NodeId::from_slice(id).map(|n| n.to_string()).unwrap_or_default()
}

/// Makes `size` bytes on `from`, checksums them on `to` (so they cross
/// through the object manager) and checks length and CRC against the
/// pattern computed here. Returns the data's reference.
pub async fn bytes_checked_across(
    c: &shoal::Client,
    from: shoal::NodeId,
    to: shoal::NodeId,
    size: u64,
) -> shoal::ObjectRef {
    use shoal::{Strategy, Task};
    let data = c
        .submit(Task::builtin("bytes").arg(size).strategy(Strategy::NodeAffinity { node: from, soft: false }))
        .await
        .unwrap();
    let sum = c
        .submit(Task::builtin("checksum").arg(&data).strategy(Strategy::NodeAffinity { node: to, soft: false }))
        .await
        .unwrap();
    let got: serde_json::Value = c.get(&sum).await.unwrap();
    assert_eq!(got["len"], size);
    assert_eq!(got["crc32"], format!("{:08x}", crc32fast::hash(&pattern(size))));
    data
}

/// Waits until `f` holds, polling; panics naming `what` once `timeout`
/// passes, so a test that hangs says what it was waiting for.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(eventually(timeout, f).await, "gave up after {timeout:?} waiting until {what}");
}

/// [`wait_for`] for tests without a runtime.
pub fn wait_for_blocking(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "gave up after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The raylet at `address`'s counters.
pub async fn stats(address: &str) -> shoal_proto::v1::NodeStatsReply {
    shoal::node_stats(address).await.expect("the raylet answers NodeStats")
}

/// Whether the raylet at `address` has no task running or queued.
pub async fn idle(address: &str) -> bool {
    let s = stats(address).await;
    s.running_tasks == 0 && s.queued_tasks == 0
}

/// A fresh directory where `builtin:mark` tasks leave a file when an
/// attempt starts and when it finishes; removed on drop.
pub struct Marks(std::path::PathBuf);

impl Marks {
    pub fn new() -> Marks {
        let dir = std::env::temp_dir().join(format!("shoal-marks-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Marks(dir)
    }

    /// `mark(dir, key, seconds)`: returns `{key, attempt, pid}`.
    pub fn task(&self, key: impl Into<serde_json::Value>, seconds: f64) -> shoal::Task {
        shoal::Task::builtin("mark").arg(self.path()).arg(key.into()).arg(seconds)
    }

    /// The directory, as the task's argument.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary directory")
    }

    /// The attempts of `key` that started (`stage` "started") or finished ("done"), sorted.
    pub fn attempts(&self, key: impl std::fmt::Display, stage: &str) -> Vec<u32> {
        let prefix = format!("{key}.");
        let suffix = format!(".{stage}");
        let mut out: Vec<u32> = std::fs::read_dir(&self.0)
            .expect("the marks directory")
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix(&prefix)?.strip_suffix(&suffix)?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether any attempt of `key` started.
    pub fn ran(&self, key: impl std::fmt::Display) -> bool {
        !self.attempts(key, "started").is_empty()
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes (not zombies) with an argument containing `marker`.
pub fn processes_with_arg(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            shoal::process::is_running(*pid)
                && cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(marker))
        })
        .collect()
}

/// Checks the results of `mark` tasks keyed `0..n`: every key comes back
/// exactly once, each from an attempt that ran to its end, and no attempt
/// of a task started after the one whose result was kept (a task is never
/// run again once it has a result). Returns the attempts kept, by key.
pub fn assert_each_mark_once(marks: &Marks, values: Vec<Result<shoal::Value, shoal::Error>>, n: u64) -> Vec<u32> {
    let mut kept: Vec<(u64, u32)> = values
        .into_iter()
        .map(|v| match v.expect("every task succeeds") {
            shoal::Value::Json(j) => (
                j["key"].as_u64().unwrap_or_else(|| panic!("a mark result with a key: {j}")),
                j["attempt"].as_u64().and_then(|a| u32::try_from(a).ok()).unwrap_or_else(|| panic!("an attempt: {j}")),
            ),
            other => panic!("expected a mark result, got {other:?}"),
        })
        .collect();
    kept.sort_unstable();
    let keys: Vec<u64> = kept.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, (0..n).collect::<Vec<_>>(), "each task's result exactly once");
    for (key, attempt) in &kept {
        assert!(
            marks.attempts(key, "done").contains(attempt),
            "task {key}: its result came from attempt {attempt}, which never finished"
        );
        let started = marks.attempts(key, "started");
        assert_eq!(
            started.last(),
            Some(attempt),
            "task {key} ran again after attempt {attempt} gave its result: {started:?}"
        );
    }
    kept.into_iter().map(|(_, a)| a).collect()
}

/// Polls job `id` over REST until `f` holds, failing the test (naming
/// `what`) after `timeout`.
pub async fn wait_for_job(
    c: &shoal::rest::client::RestClient,
    id: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&shoal::rest::types::Job) -> bool,
) -> shoal::rest::types::Job {
    let deadline = Instant::now() + timeout;
    loop {
        let job = c.job(id).await.expect("job");
        if f(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never {what} in {timeout:?}: {:?} {}", job.state, job.message);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls job `id` until it reaches a terminal state.
pub async fn wait_terminal(
    c: &shoal::rest::client::RestClient,
    id: &str,
    timeout: Duration,
) -> shoal::rest::types::Job {
    wait_for_job(c, id, "ended", timeout, |j| j.state.is_terminal()).await
}

/// Starts `cmd` (the `shoal` binary, its environment set) as `shoal up
/// --nodes 2 --cpus-per-node 1` and waits for its banner, up to "Press
/// Ctrl-C"; stdout is drained from then on so `shoal up` never blocks on a
/// full pipe. Returns the process and the banner.
pub fn start_up(mut cmd: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .args(["up", "--nodes", "2", "--cpus-per-node", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("shoal up starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.expect("a line of the banner");
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(banner.contains("raylet 1:"), "shoal up did not start:\n{banner}");
    std::thread::spawn(move || for _ in lines {});
    (child, banner)
}

/// The REST API URL a `shoal up` banner names (`http://host:port`).
pub fn rest_api_of(banner: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("REST API:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no REST API address in {banner}"))
        .to_string()
}
