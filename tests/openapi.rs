//! The REST API keeps the contract its OpenAPI document states: schemathesis
//! (PyPI) reads the document a real head serves, generates requests from it
//! as a client generator would — valid ones, which must be accepted, and
//! invalid ones, which must be refused with a 4xx — and checks every answer
//! against the document (status, content type, body schema, never a 5xx).
//!
//! schemathesis lives in the repository's `.venv`, which this test makes
//! (`python3 -m venv`, then pip from PyPI) when it is missing, or wherever
//! `SHOAL_SCHEMATHESIS` points. When it cannot be installed this test fails:
//! a contract test that skips itself proves nothing.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use shoal::local_cluster::{ClusterOptions, LocalCluster};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
/// Test cases per operation and phase: enough to meet every parameter's
/// bounds, few enough to finish in about a minute on two cores.
const MAX_EXAMPLES: &str = "40";
/// The whole run's limit.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The schemathesis versions this test is written for.
const SCHEMATHESIS: &str = "schemathesis>=4.32,<5";

/// Where schemathesis is: `SHOAL_SCHEMATHESIS`, or the repository's `.venv`,
/// made and filled when it lacks it.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    common::venv("bin/schemathesis", &[SCHEMATHESIS]).join("bin/schemathesis")
}

/// What schemathesis may not check from the document alone. A task graph's
/// cross-task rules (unique ids, references to tasks of the job without
/// cycles, one spelling per resource) cannot be written in JSON Schema, so a
/// generated graph that breaks them is refused with 422 and every problem,
/// as the document says; that answer is accepted for `submitJob` only.
const CONFIG: &str = r#"
[[operations]]
include-operation-id = "submitJob"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "422"]
"#;

#[tokio::test]
async fn every_generated_request_gets_an_answer_the_openapi_document_allows() {
    let tool = schemathesis();
    // A head without raylets: submitted jobs wait for a node and never run
    // generated commands on this machine.
    let cluster = LocalCluster::start(ClusterOptions::new(BIN, 0)).await.expect("head starts");
    let dir = std::env::temp_dir().join(format!("shoal-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let seed = std::env::var("SHOAL_SCHEMATHESIS_SEED").unwrap_or_else(|_| "16".into());
    let url = format!("{}/openapi.json", cluster.http_address.trim_end_matches('/'));
    let url = if url.contains("://") { url } else { format!("http://{url}") };
    let mut cmd = tokio::process::Command::new(&tool);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .args(["run", &url, "--checks", "all"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", cluster.token.as_ref().expect("a token").expose()))
        .args(["--mode", "all", "--phases", "examples,coverage,fuzzing"])
        // One worker: hypothesis reads lambda sources with `ast.parse`, which
        // CPython 3.11 can fail when two threads parse at once.
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed, "--workers", "1", "--request-timeout", "20"])
        .args(["--report-dir"])
        .arg(dir.join("report"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .expect("schemathesis finishes in time")
        .expect("schemathesis runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "schemathesis found failures (seed {seed}):\n{text}");
    // The run must have exercised the API, not stopped at the document.
    assert!(text.contains("passed"), "{text}");
    drop(cluster);
}
