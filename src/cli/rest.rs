//! User commands over the head's REST API (`submit`, `jobs`, `job`, `logs`,
//! `stop`, `get`, `status`) and the hidden `driver` command that entrypoint
//! jobs use to run a job spec through the raylet they run on.
//!
//! The API address comes from `--address`, else `SHOAL_API`, else
//! `SHOAL_ADDRESS` when it is an `http://` URL (inside workers
//! `SHOAL_ADDRESS` names the raylet's gRPC address instead, so it is used
//! only when it is a URL), else the cluster `shoal up` recorded
//! ([`shoal::discovery`]), else `http://127.0.0.1:8265` if a head answers
//! there; with none of them the command says how to start a cluster.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use shoal::rest::client::RestClient;
use shoal::rest::types::{Job, JobResult, JobState};

use shoal::resources::human_bytes;

use super::OutputFormat;

/// Where the API is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The head's REST API, e.g. http://127.0.0.1:8265 (env SHOAL_API; SHOAL_ADDRESS if it is an http URL).
    #[arg(long, env = "SHOAL_API")]
    pub address: Option<String>,
    /// The cluster token (default: the recorded local cluster's, for its address).
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the cluster token.
    #[arg(long, env = "SHOAL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// How to print results (`table` is the human format).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<RestClient> {
        let from_env = std::env::var("SHOAL_ADDRESS").ok().filter(|a| a.starts_with("http://"));
        let addr = match self.address.clone().or(from_env) {
            Some(a) => a,
            None => match shoal::discovery::find() {
                Some(rec) => rec.api,
                None => {
                    let (host, port) = ("127.0.0.1", shoal::local_cluster::WELL_KNOWN_PORTS.1);
                    let answers = std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                        Duration::from_millis(500),
                    )
                    .is_ok();
                    if !answers {
                        anyhow::bail!(
                            "no shoal cluster found (none recorded in {}, nothing on {host}:{port}): {}",
                            shoal::discovery::record_path().display(),
                            shoal::discovery::HOW_TO_START
                        );
                    }
                    format!("http://{host}:{port}")
                }
            },
        };
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(shoal::auth::Token::new(t).context("--token / SHOAL_TOKEN")?),
            (None, Some(f)) => Some(shoal::auth::Token::from_file(f)?),
            (None, None) => shoal::auth::for_address(&addr)?,
        };
        Ok(RestClient::new(&addr, token.map(|t| t.expose().to_string()))?)
    }

    fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// Flags of `shoal submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// Job file: a job spec or an entrypoint job (YAML, or JSON when it ends in .json).
    pub file: PathBuf,
    /// Wait for the job to end, showing progress; print its results.
    #[arg(long)]
    pub wait: bool,
    /// Stream the job's log while waiting (implies --wait).
    #[arg(long)]
    pub follow: bool,
    /// Make the submission idempotent with this id.
    #[arg(long)]
    pub submission_id: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Flags of commands that take a job id.
#[derive(clap::Args, Debug)]
pub struct JobIdArgs {
    /// The job id.
    pub id: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Flags of `shoal logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The job id.
    pub id: String,
    /// Keep streaming until the job ends.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Flags of `shoal jobs`.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    /// Only jobs in this state (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).
    #[arg(long)]
    pub state: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Flags of `shoal get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The object id (from a job's results).
    pub object_id: String,
    /// Write the bytes to this file instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Flags of `shoal status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

fn print_json(v: serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn fmt_time(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) => {
            let secs = ms / 1000;
            format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
        }
    }
}

fn result_line(r: &JobResult) -> String {
    let name = if r.index > 0 { format!("{}[{}]", r.task, r.index) } else { r.task.clone() };
    match (&r.value, &r.object_id) {
        (Some(v), _) => format!("{name}: {v}"),
        (None, Some(o)) => format!("{name}: object {o} ({}; `shoal get {o}`)", human_bytes(r.size_bytes)),
        _ => format!("{name}: -"),
    }
}

fn print_job(job: &Job) {
    println!("job {}  {}  {}", job.id, job.name, job.state.as_str());
    if let Some(e) = &job.entrypoint {
        println!("  entrypoint: {e}");
    }
    println!("  message:    {}", job.message);
    println!(
        "  times:      created {}  started {}  ended {}",
        fmt_time(Some(job.created_at_ms)),
        fmt_time(job.started_at_ms),
        fmt_time(job.ended_at_ms)
    );
    let t = &job.tasks;
    println!(
        "  tasks:      {} total, {} finished, {} failed, {} running, {} pending",
        t.total,
        t.finished,
        t.failed,
        t.running,
        t.total.saturating_sub(t.done() + t.running)
    );
    for r in &job.results {
        println!("  {}", result_line(r));
    }
}

fn progress_line(job: &Job) -> String {
    let t = &job.tasks;
    let total = t.total.max(1);
    let done = t.done().min(total);
    let width = 30usize;
    let filled = (done as usize * width) / total as usize;
    format!(
        "[{}{}] {done}/{} done, {} failed, {} running  {}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        t.total,
        t.failed,
        t.running,
        job.state.as_str()
    )
}

/// Polls the job until it ends, drawing progress on stderr.
async fn wait_for(client: &RestClient, id: &str, quiet: bool) -> anyhow::Result<Job> {
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let job = client.job(id).await?;
        if !quiet {
            let line = progress_line(&job);
            if line != last {
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
                last = line;
            }
        }
        if job.state.is_terminal() {
            if tty && !quiet {
                eprintln!();
            }
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `shoal submit`.
pub async fn submit(a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = a.api.client()?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let is_json = a.file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let content_type = if is_json { "application/json" } else { "application/yaml" };
    let mut path_query = String::new();
    let body = match &a.submission_id {
        Some(sid) if is_json => {
            let mut v: serde_json::Value = serde_json::from_str(&text).context("the file is not JSON")?;
            if let Some(o) = v.as_object_mut() {
                o.insert("submission_id".into(), serde_json::Value::String(sid.clone()));
            }
            v.to_string()
        }
        Some(sid) => {
            path_query = format!("submission_id: {}\n", serde_json::Value::String(sid.clone()));
            text
        }
        None => text,
    };
    let body = if path_query.is_empty() { body } else { format!("{path_query}{body}") };
    let created = client.submit(content_type, body).await?;
    let id = created.id;
    if !(a.wait || a.follow) {
        if a.api.json() {
            print_json(serde_json::json!({ "id": id, "existing": created.existing }))?;
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let follower = a.follow.then(|| {
        let c = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let _ = c
                .follow_logs(&id, |chunk| {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(chunk);
                    let _ = out.flush();
                })
                .await;
        })
    });
    let job = wait_for(&client, &id, a.follow || a.api.json()).await?;
    if let Some(f) = follower {
        let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
    }
    if a.api.json() {
        print_json(serde_json::to_value(&job)?)?;
    } else {
        if job.state != JobState::Succeeded {
            eprintln!("job {} {}: {}", job.id, job.state.as_str(), job.message);
        }
        for r in &job.results {
            println!("{}", result_line(r));
        }
    }
    Ok(if job.state == JobState::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `shoal jobs`.
pub async fn jobs(a: JobsArgs) -> anyhow::Result<ExitCode> {
    let jobs = a.api.client()?.jobs(a.state.as_deref()).await?;
    if a.api.json() {
        print_json(serde_json::to_value(&jobs)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<10} {:<11} {:<10} {:>7} {:>7} {:>7}  NAME", "ID", "KIND", "STATE", "TASKS", "DONE", "FAILED");
    for j in &jobs {
        let kind = match j.kind {
            shoal::rest::types::JobKind::TaskGraph => "task-graph",
            shoal::rest::types::JobKind::Entrypoint => "entrypoint",
        };
        println!(
            "{:<10} {:<11} {:<10} {:>7} {:>7} {:>7}  {}",
            j.id,
            kind,
            j.state.as_str(),
            j.tasks.total,
            j.tasks.done(),
            j.tasks.failed,
            j.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `shoal job ID`.
pub async fn job(a: JobIdArgs) -> anyhow::Result<ExitCode> {
    let job = a.api.client()?.job(&a.id).await?;
    if a.api.json() {
        print_json(serde_json::to_value(&job)?)?;
    } else {
        print_job(&job);
    }
    Ok(ExitCode::SUCCESS)
}

/// `shoal logs ID`.
pub async fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = a.api.client()?;
    if a.follow {
        client
            .follow_logs(&a.id, |chunk| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(chunk);
                let _ = out.flush();
            })
            .await?;
    } else {
        std::io::stdout().write_all(&client.logs(&a.id).await?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `shoal stop ID`.
pub async fn stop(a: JobIdArgs) -> anyhow::Result<ExitCode> {
    let r = a.api.client()?.stop(&a.id).await?;
    if a.api.json() {
        print_json(serde_json::to_value(&r)?)?;
    } else {
        println!("job {} {}", r.id, r.state.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

/// `shoal get OBJECT_ID`.
pub async fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let (_ct, bytes) = a.api.client()?.object(&a.object_id).await?;
    match &a.output_file {
        Some(f) => std::fs::write(f, &bytes).with_context(|| format!("writing {}", f.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            if std::io::stdout().is_terminal() {
                writeln!(out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `shoal status`.
pub async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = a.api.client()?;
    let cluster = client.cluster().await?;
    let nodes = client.nodes().await?;
    if a.api.json() {
        print_json(serde_json::json!({ "cluster": cluster, "nodes": nodes.nodes }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("cluster at {}", client.base());
    println!("  nodes:   {} alive, {} dead", cluster.alive_nodes, cluster.dead_nodes);
    let res = |m: &std::collections::BTreeMap<String, f64>| {
        m.iter()
            .map(|(k, v)| match k.as_str() {
                shoal::resources::MEMORY | "object_store_memory" => format!("{k}={}", human_bytes(*v as u64)),
                _ => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("  total:   {}", res(&cluster.resources_total));
    println!("  free:    {}", res(&cluster.resources_available));
    println!("  queued:  {} tasks", cluster.queued_tasks);
    println!(
        "  objects: {} of {}",
        human_bytes(cluster.object_store_used_bytes),
        human_bytes(cluster.object_store_capacity_bytes)
    );
    let jobs: Vec<String> = cluster.jobs.iter().filter(|(_, n)| **n > 0).map(|(s, n)| format!("{s}={n}")).collect();
    println!("  jobs:    {}", if jobs.is_empty() { "none".into() } else { jobs.join(" ") });
    let h = &cluster.history;
    println!(
        "  tasks:   {} remembered of {}, {} of {} (evicted {})",
        h.tasks,
        h.capacity,
        human_bytes(h.bytes),
        human_bytes(h.byte_capacity),
        h.evicted
    );
    println!();
    println!(
        "{:<18} {:<6} {:<6} {:<22} {:>6} {:>5} {:>21}",
        "NODE", "ROLE", "STATE", "ADDRESS", "QUEUED", "IDLE", "OBJECTS"
    );
    for n in &nodes.nodes {
        let role = if n.labels.get(shoal::head::HEAD_LABEL).is_some_and(|v| v == "true") { "head" } else { "worker" };
        let objects =
            format!("{} / {}", human_bytes(n.object_store_used_bytes), human_bytes(n.object_store_capacity_bytes));
        println!(
            "{:<18} {:<6} {:<6} {:<22} {:>6} {:>5} {:>21}",
            n.node_id, role, n.state, n.address, n.queued_tasks, n.idle, objects
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of the hidden `shoal driver`.
#[derive(clap::Args, Debug)]
pub struct DriverArgs {
    /// The job spec to run.
    pub file: PathBuf,
    /// The raylet to submit through (set by the raylet for entrypoint jobs).
    #[arg(long, env = "SHOAL_ADDRESS")]
    pub address: String,
    /// The job the tasks belong to (set for entrypoint jobs).
    #[arg(long, env = "SHOAL_JOB_ID")]
    pub job_id: Option<String>,
}

/// `shoal driver FILE`: runs a job spec through a raylet as a driver
/// (inside an entrypoint job), printing progress and results.
pub async fn driver(a: DriverArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let spec = shoal::job::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let plan = shoal::job::plan(&spec, &shoal::worker::builtins::is_standard_builtin)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let job_id = match &a.job_id {
        Some(j) => Some(j.parse::<shoal::JobId>().map_err(|e| anyhow::anyhow!("SHOAL_JOB_ID: {e}"))?),
        None => None,
    };
    let opts = shoal::ConnectOptions { name: plan.name.clone(), job_id, ..Default::default() };
    let client = shoal::Client::connect_with(&a.address, opts).await?;
    println!("driver: submitting {} tasks of `{}`", plan.tasks.len(), plan.name);
    let results = shoal::driver::run_plan(&client, &plan).await?;
    println!("driver: results {}", serde_json::to_string(&results)?);
    Ok(ExitCode::SUCCESS)
}
