//! Metrics end to end: a real Prometheus (Debian's `prometheus` package)
//! scrapes the head and every raylet of a live local cluster; each
//! process's exposition passes `promtool check metrics`; and every PromQL
//! expression of the Grafana dashboard returns at least one series.
//!
//! Without the binaries the test is skipped locally and fails when `CI` is set.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal::local_cluster::{ClusterOptions, LocalCluster};
use shoal::rest::client::{Method, RestClient};
use shoal::rest::types::JobState;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(bin)).find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn dashboard_exprs() -> Vec<String> {
    let path = format!("{}/charts/shoal/dashboards/shoal.json", env!("CARGO_MANIFEST_DIR"));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push(e.to_string());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&doc, &mut out);
    out
}

#[tokio::test]
async fn prometheus_scrapes_every_process_and_every_dashboard_query_has_series() {
    let (Some(prometheus), Some(promtool)) = (which("prometheus"), which("promtool")) else {
        assert!(std::env::var_os("CI").is_none(), "prometheus and promtool must be installed in CI");
        eprintln!("skipped: prometheus/promtool not installed (apt-get install -y prometheus)");
        return;
    };
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "the dashboard has only {} queries", exprs.len());

    let mut o = ClusterOptions::new(env!("CARGO_BIN_EXE_shoal"), 2);
    o.cpus_per_node = Some(2.0);
    o.raylet_args = vec!["--object-store-memory".into(), "256Mi".into()];
    let cluster = LocalCluster::start(o).await.expect("cluster starts");
    let api = RestClient::new(&cluster.http_address, None).unwrap();
    let mut targets = vec![cluster.http_address.clone()];
    // The head's raylet too: it owns the jobs, so owner-side series come from it.
    targets.extend(cluster.all_raylets().map(|r| r.http_address.clone()));

    // Work for every family: a pipeline, a large object, a failure.
    let pipeline = std::fs::read_to_string(format!("{}/examples/pipeline.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let big = serde_json::json!({"tasks": [
        {"id": "blob", "function": "builtin:bytes", "args": [400000]},
        {"id": "sum", "function": "builtin:checksum", "args": [{"ref": "blob"}], "strategy": "spread"},
        {"id": "sum2", "function": "builtin:checksum", "args": [{"ref": "blob"}], "strategy": "spread"}
    ]});
    let failing = serde_json::json!({"tasks": [{"id": "boom", "function": "builtin:fail", "args": ["on purpose"]}]});
    let mut ids = vec![api.submit("application/yaml", pipeline.clone()).await.unwrap().id];
    ids.push(api.submit("application/json", big.to_string()).await.unwrap().id);
    ids.push(api.submit("application/json", failing.to_string()).await.unwrap().id);
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !api.job(id).await.unwrap().state.is_terminal() {
            assert!(Instant::now() < deadline, "job {id} did not end");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(api.job(&ids[0]).await.unwrap().state, JobState::Succeeded);

    // Each exposition is valid and lint-clean.
    for t in &targets {
        let scrape = RestClient::new(t, None).unwrap().raw(Method::GET, "/metrics", None).await.unwrap();
        assert_eq!(scrape.status, 200, "{t}");
        assert!(String::from_utf8_lossy(&scrape.body).contains("shoal_"), "{t} exposes no shoal_ metric");
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&scrape.body).unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && report.trim().is_empty(), "promtool on {t}:\n{report}");
    }

    // A real Prometheus scraping every process once a second.
    let dir = std::env::temp_dir().join(format!("shoal-prom-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: [{}]\n",
        targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prom = KillOnDrop(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts"),
    );
    let prom = RestClient::new(&format!("127.0.0.1:{port}"), None).unwrap();
    let query = |q: String| {
        let prom = prom.clone();
        async move {
            let r = prom.raw(Method::GET, &format!("/api/v1/query?query={}", urlencode(&q)), None).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query("up == 1".into()).await.unwrap_or_default();
        if up.len() == targets.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus does not see every target up ({up:?}):\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Keep traffic flowing while rates build up over a few scrapes: every
    // query is retried until it has series.
    let again = api.submit("application/yaml", pipeline).await.unwrap().id;
    let _ = api.cluster().await;
    let mut empty: Vec<String> = exprs.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !empty.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for e in empty {
            if query(e.clone()).await.is_none_or(|r| r.is_empty()) {
                still.push(e);
            }
        }
        empty = still;
        if !empty.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert!(empty.is_empty(), "dashboard queries without series:\n  {}", empty.join("\n  "));
    let _ = api.job(&again).await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
}
