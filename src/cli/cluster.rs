//! Process roles (`gcs`, `head`, `raylet`) and the local-cluster commands
//! (`up`, `run`, `bench`).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use shoal::gcs::GcsConfig;
use shoal::head::HeadConfig;
use shoal::local_cluster::{ClusterOptions, LocalCluster};
use shoal::raylet::{Raylet, RayletConfig};
use shoal::resources::{self, ResourceSet};

use super::{machine, self_binary, shutdown_signal, OutputFormat};

/// How a server process authenticates its callers: flags `shoal head`,
/// `shoal gcs` and `shoal raylet` share.
#[derive(clap::Args, Debug)]
pub struct AuthArgs {
    /// File holding the cluster token (or set SHOAL_TOKEN). A head without
    /// one generates a token and records it for this machine's clients.
    #[arg(long, env = "SHOAL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Turn authentication off: anyone who can reach a port of the cluster
    /// can then run any command on it. For isolated experiments only.
    #[arg(long, env = "SHOAL_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// Where a process's token came from.
enum TokenSource {
    Given,
    Generated,
}

impl AuthArgs {
    /// The token: `--token-file`, else `SHOAL_TOKEN`, else the one recorded
    /// for `cluster` (a GCS address) on this machine, else a new one when
    /// `generate`; `None` only with `--insecure-no-auth`.
    fn resolve(
        &self,
        role: &str,
        cluster: Option<&str>,
        generate: bool,
    ) -> anyhow::Result<Option<(shoal::auth::Token, TokenSource)>> {
        if self.insecure_no_auth {
            tracing::warn!(
                "{role}: AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach this process's ports \
                 can run any command on the cluster and read every object"
            );
            return Ok(None);
        }
        if let Some(f) = &self.token_file {
            return Ok(Some((shoal::auth::Token::from_file(f)?, TokenSource::Given)));
        }
        if let Ok(t) = std::env::var(shoal::auth::ENV_TOKEN) {
            if !t.trim().is_empty() {
                return Ok(Some((shoal::auth::Token::new(&t).context("SHOAL_TOKEN")?, TokenSource::Given)));
            }
        }
        if let Some(addr) = cluster {
            if let Some(t) = shoal::auth::for_address(addr)? {
                return Ok(Some((t, TokenSource::Given)));
            }
        }
        if generate {
            return Ok(Some((shoal::auth::Token::generate()?, TokenSource::Generated)));
        }
        bail!(
            "{role} needs the cluster token: pass --token-file FILE or set SHOAL_TOKEN (the head records the token \
             it generated in {}), or run without authentication with --insecure-no-auth",
            shoal::discovery::record_path().display()
        )
    }
}

/// Records a head that generated its token, so that this machine's CLI,
/// clients and raylets find the cluster and its token.
fn record_generated(head: &shoal::head::Head, token: &shoal::auth::Token) -> anyhow::Result<()> {
    let raylets: Vec<String> = head.raylet.iter().map(|r| r.address.clone()).collect();
    let api = if head.http_address.is_empty() { String::new() } else { format!("http://{}", head.http_address) };
    let record = shoal::discovery::ClusterRecord {
        gcs: head.gcs_address.clone(),
        api,
        raylet: raylets.first().cloned().unwrap_or_default(),
        pid: std::process::id(),
        session_dir: String::new(),
        raylets,
        token: Some(token.expose().to_string()),
    };
    let path = shoal::discovery::write(&record)?;
    tracing::info!(
        record = %path.display(),
        "generated the cluster token; clients on this machine find it there, others take it with --token-file"
    );
    Ok(())
}

/// Flags of `shoal gcs`.
#[derive(clap::Args, Debug)]
pub struct GcsArgs {
    /// Interface to listen on.
    #[arg(long, default_value = "0.0.0.0", env = "SHOAL_HOST")]
    pub host: String,
    /// gRPC port (0 picks a free one).
    #[arg(long, default_value_t = 6379, env = "SHOAL_GCS_PORT")]
    pub port: u16,
    /// Milliseconds without a heartbeat after which a raylet is declared dead.
    #[arg(long, default_value_t = 3000, env = "SHOAL_HEALTH_TIMEOUT_MS")]
    pub health_timeout_ms: u64,
    /// Write the bound addresses as JSON here once serving.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Flags of `shoal head`.
#[derive(clap::Args, Debug)]
pub struct HeadArgs {
    /// Interface to listen on.
    #[arg(long, default_value = "0.0.0.0", env = "SHOAL_HOST")]
    pub host: String,
    /// GCS gRPC port (0 picks a free one).
    #[arg(long, default_value_t = 6379, env = "SHOAL_GCS_PORT")]
    pub gcs_port: u16,
    /// HTTP port of the REST API, metrics and health (0 picks a free one).
    #[arg(long, default_value_t = 8265, env = "SHOAL_HTTP_PORT")]
    pub port: u16,
    /// Milliseconds without a heartbeat after which a raylet is declared dead.
    #[arg(long, default_value_t = 3000, env = "SHOAL_HEALTH_TIMEOUT_MS")]
    pub health_timeout_ms: u64,
    /// Most tasks the state API remembers (oldest finished are forgotten first).
    #[arg(long, default_value_t = shoal::gcs::task_events::DEFAULT_CAPACITY, env = "SHOAL_TASK_HISTORY")]
    pub task_history: usize,
    /// Most bytes the state API's task records may hold (oldest finished are forgotten first).
    #[arg(long, default_value_t = shoal::gcs::task_events::DEFAULT_BYTE_CAPACITY, env = "SHOAL_TASK_HISTORY_BYTES")]
    pub task_history_bytes: usize,
    /// Directory of the head's durable state (jobs, logs, key-value store); without it, state is lost on restart.
    #[arg(long, env = "SHOAL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Largest REST request body in bytes (413 beyond).
    #[arg(long, default_value_t = shoal::rest::DEFAULT_MAX_BODY_BYTES, env = "SHOAL_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Write the bound addresses as JSON here once serving.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Run no raylet in the head: jobs are then owned by a worker node's
    /// raylet and fail if that node is lost.
    #[arg(long)]
    pub no_raylet: bool,
    /// CPUs the head's raylet offers to tasks (like Ray's head `--num-cpus`).
    /// Jobs' drivers and owners need none; 0 keeps tasks off the head.
    #[arg(long, default_value_t = 0.0, env = "SHOAL_HEAD_NUM_CPUS")]
    pub num_cpus: f64,
    /// gRPC port of the head's raylet (0 picks a free one).
    #[arg(long, default_value_t = shoal::raylet::DEFAULT_PORT, env = "SHOAL_RAYLET_PORT")]
    pub raylet_port: u16,
    /// Port of the head raylet's /metrics, /healthz and /readyz (0 picks a free one).
    #[arg(long, default_value_t = shoal::raylet::DEFAULT_METRICS_PORT, env = "SHOAL_METRICS_PORT")]
    pub raylet_metrics_port: u16,
    /// Address other nodes reach the head at (default: the host, or 127.0.0.1).
    #[arg(long, env = "SHOAL_NODE_IP")]
    pub node_ip: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Most workers the head's raylet runs at once by default: entrypoint
/// drivers, which hold no CPU, each take one.
pub const HEAD_MAX_WORKERS: usize = 16;

/// How a raylet gets its workers.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum WorkerMode {
    /// The raylet starts `shoal worker` processes itself.
    Local,
    /// Workers are started by someone else (a worker container) and connect to the socket.
    External,
}

/// What a node offers and how it keeps objects: the flags `shoal raylet`
/// and the head's own raylet (`shoal head`) share.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// GPUs offered.
    #[arg(long, default_value_t = 0.0, env = "SHOAL_NUM_GPUS")]
    pub num_gpus: f64,
    /// Memory offered to tasks, e.g. 8Gi (default: 70% of the machine's or container's).
    #[arg(long, env = "SHOAL_MEMORY")]
    pub memory: Option<String>,
    /// Custom resources, NAME=AMOUNT,...
    #[arg(long, default_value = "", env = "SHOAL_RESOURCES")]
    pub resources: String,
    /// Node labels, KEY=VALUE,...
    #[arg(long, default_value = "", env = "SHOAL_LABELS")]
    pub labels: String,
    /// Object store budget, e.g. 2Gi (default: 30% of memory).
    #[arg(long, env = "SHOAL_OBJECT_STORE_MEMORY")]
    pub object_store_memory: Option<String>,
    /// Unix socket workers connect to.
    #[arg(long, env = "SHOAL_WORKER_SOCKET")]
    pub worker_socket: Option<PathBuf>,
    /// Most workers running tasks at once (default: the CPU count; on the head, 16).
    #[arg(long, env = "SHOAL_MAX_WORKERS")]
    pub max_workers: Option<usize>,
    /// Tasks queued on a busy worker when every resource is taken.
    #[arg(long, default_value_t = 1, env = "SHOAL_PIPELINE_DEPTH")]
    pub pipeline_depth: usize,
    /// Milliseconds a task may stay infeasible before it fails.
    #[arg(long, default_value_t = 1000, env = "SHOAL_INFEASIBLE_TIMEOUT_MS")]
    pub infeasible_timeout_ms: u64,
    /// Directory for objects spilled from a full object store.
    #[arg(long, env = "SHOAL_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Turn spilling off: a full store then refuses new primary objects.
    #[arg(long)]
    pub no_spill: bool,
    /// Finished tasks kept to rebuild lost objects (lineage); older lineage is dropped.
    #[arg(long, default_value_t = 100_000, env = "SHOAL_MAX_LINEAGE_TASKS")]
    pub max_lineage_tasks: usize,
    /// The Python interpreter that runs Python tasks (`PYTHON -m shoal._worker`);
    /// it must have the `shoal` package installed.
    #[arg(long, default_value = shoal::raylet::DEFAULT_PYTHON, env = "SHOAL_PYTHON")]
    pub python: String,
}

/// Flags of `shoal raylet`.
#[derive(clap::Args, Debug)]
pub struct RayletArgs {
    /// GCS address, HOST:PORT.
    #[arg(long, env = "SHOAL_GCS_ADDRESS")]
    pub gcs: String,
    /// Interface to listen on.
    #[arg(long, default_value = shoal::raylet::DEFAULT_HOST, env = "SHOAL_HOST")]
    pub host: String,
    /// Address other nodes reach this raylet at (default: the host, or 127.0.0.1).
    #[arg(long, env = "SHOAL_NODE_IP")]
    pub node_ip: Option<String>,
    /// gRPC port for tasks and objects (0 picks a free one).
    #[arg(long, default_value_t = shoal::raylet::DEFAULT_PORT, env = "SHOAL_RAYLET_PORT")]
    pub port: u16,
    /// Port of /metrics, /healthz and /readyz (0 picks a free one).
    #[arg(long, default_value_t = shoal::raylet::DEFAULT_METRICS_PORT, env = "SHOAL_METRICS_PORT")]
    pub metrics_port: u16,
    /// CPUs offered (default: the machine's or the container's limit).
    #[arg(long, env = "SHOAL_NUM_CPUS")]
    pub num_cpus: Option<f64>,
    /// Who starts workers.
    #[arg(long, value_enum, default_value_t = WorkerMode::Local, env = "SHOAL_WORKER_MODE")]
    pub worker_mode: WorkerMode,
    /// Workers started ahead of demand.
    #[arg(long, default_value_t = 1, env = "SHOAL_PRESTART_WORKERS")]
    pub prestart_workers: usize,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Write the bound addresses as JSON here once serving.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

fn parse_labels(text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').with_context(|| format!("label `{item}` is not KEY=VALUE"))?;
        if k.trim().is_empty() {
            bail!("label `{item}` has an empty key");
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn bytes_flag(name: &str, text: &str) -> anyhow::Result<u64> {
    let units = resources::parse_quantity(name, text)?;
    Ok((units / resources::UNIT) as u64)
}

impl NodeArgs {
    /// Validates every flag and reports all problems at once. `cpus` is
    /// the node's CPU count, `max_workers` the default worker bound.
    fn to_config(&self, gcs: &str, cpus: f64, max_workers: usize) -> anyhow::Result<RayletConfig> {
        let mut problems = Vec::new();
        let mut res = match ResourceSet::parse_pairs(&self.resources) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("--resources: {e}"));
                ResourceSet::new()
            }
        };
        if !(cpus.is_finite() && cpus >= 0.0) {
            problems.push(format!("--num-cpus: {cpus} is not a non-negative number"));
        }
        if !(self.num_gpus.is_finite() && self.num_gpus >= 0.0) {
            problems.push(format!("--num-gpus: {} is not a non-negative number", self.num_gpus));
        }
        let machine_mem = machine::memory();
        let memory = match &self.memory {
            Some(m) => bytes_flag("memory", m).unwrap_or_else(|e| {
                problems.push(format!("--memory: {e}"));
                0
            }),
            None => machine_mem / 10 * 7,
        };
        let store = match &self.object_store_memory {
            Some(m) => bytes_flag("object_store_memory", m).unwrap_or_else(|e| {
                problems.push(format!("--object-store-memory: {e}"));
                0
            }),
            None => shoal::raylet::default_object_store_memory(memory),
        };
        let labels = parse_labels(&self.labels).unwrap_or_else(|e| {
            problems.push(format!("--labels: {e}"));
            HashMap::new()
        });
        if !problems.is_empty() {
            bail!("invalid raylet settings:\n  {}", problems.join("\n  "));
        }
        res = res.with(resources::CPU, cpus).with(resources::GPU, self.num_gpus);
        res.set_units(resources::MEMORY, memory as i64 * resources::UNIT);
        let mut labels = labels;
        if let Ok(pod) = std::env::var("SHOAL_NODE_NAME") {
            labels.entry("shoal.dev/pod".into()).or_insert(pod);
        }
        let mut cfg = RayletConfig::new(gcs.to_string(), res);
        cfg.labels = labels;
        cfg.object_store_memory = store;
        if let Some(s) = &self.worker_socket {
            cfg.worker_socket = s.clone();
        }
        cfg.max_workers = self.max_workers.unwrap_or(max_workers).max(1);
        cfg.pipeline_depth = self.pipeline_depth.max(1);
        cfg.infeasible_timeout = Duration::from_millis(self.infeasible_timeout_ms);
        cfg.max_lineage_tasks = self.max_lineage_tasks;
        cfg.python_worker = shoal::raylet::python_worker_command(&self.python);
        if self.no_spill {
            cfg.spill_dir = None;
        } else if let Some(d) = &self.spill_dir {
            cfg.spill_dir = Some(d.clone());
        }
        Ok(cfg)
    }
}

impl RayletArgs {
    /// Validates every flag and reports all problems at once.
    fn to_config(&self) -> anyhow::Result<RayletConfig> {
        let cpus = self.num_cpus.unwrap_or_else(machine::cpus);
        let mut cfg = self.node.to_config(&self.gcs, cpus, cpus.ceil().max(1.0) as usize)?;
        cfg.host = self.host.clone();
        cfg.port = self.port;
        cfg.node_ip = self.node_ip.clone();
        cfg.metrics_port = self.metrics_port;
        cfg.external_workers = self.worker_mode == WorkerMode::External;
        cfg.prestart_workers = if cfg.external_workers { 0 } else { self.prestart_workers };
        cfg.ready_file = self.ready_file.clone();
        cfg.token = self.auth.resolve("the raylet", Some(&self.gcs), false)?.map(|(t, _)| t);
        Ok(cfg)
    }
}

/// `shoal gcs`.
pub async fn gcs(a: GcsArgs) -> anyhow::Result<ExitCode> {
    let token = a.auth.resolve("the GCS", None, true)?;
    let cfg = HeadConfig {
        host: a.host,
        gcs_port: a.port,
        http_port: 0,
        gcs: GcsConfig { health_timeout: Duration::from_millis(a.health_timeout_ms), ..Default::default() },
        ready_file: a.ready_file,
        rest: Default::default(),
        raylet: None,
        state_dir: None,
        token: token.as_ref().map(|(t, _)| t.clone()),
    };
    let head = shoal::head::start(cfg, false).await?;
    if let Some((t, TokenSource::Generated)) = &token {
        record_generated(&head, t)?;
    }
    shutdown_signal().await;
    Ok(ExitCode::SUCCESS)
}

/// `shoal head`.
pub async fn head(a: HeadArgs) -> anyhow::Result<ExitCode> {
    let mut token = a.auth.resolve("the head", None, true)?;
    // A durable head keeps the token it generated, so that its raylets
    // and clients still hold the right one after a restart.
    if let (Some((t, TokenSource::Generated)), Some(dir)) = (&mut token, &a.state_dir) {
        let file = dir.join("token");
        let mut kept = || -> anyhow::Result<()> {
            if file.exists() {
                *t = shoal::auth::Token::from_file(&file)?;
            } else {
                std::fs::create_dir_all(dir)?;
                t.write_file(&file)?;
            }
            Ok(())
        };
        kept().map_err(|e| anyhow::anyhow!("cannot use the state directory {}: {e:#}", dir.display()))?;
    }
    let raylet = if a.no_raylet {
        None
    } else {
        // The GCS address is filled in once the GCS has bound its port.
        let mut r = a.node.to_config("", a.num_cpus, HEAD_MAX_WORKERS)?;
        r.host = a.host.clone();
        r.port = a.raylet_port;
        r.node_ip = a.node_ip.clone();
        r.metrics_port = a.raylet_metrics_port;
        r.prestart_workers = 0;
        r.labels.insert(shoal::head::HEAD_LABEL.into(), "true".into());
        Some(r)
    };
    let cfg = HeadConfig {
        host: a.host,
        gcs_port: a.gcs_port,
        http_port: a.port,
        gcs: GcsConfig {
            health_timeout: Duration::from_millis(a.health_timeout_ms),
            task_history: a.task_history,
            task_history_bytes: a.task_history_bytes,
            ..Default::default()
        },
        ready_file: a.ready_file,
        rest: shoal::rest::RestConfig { token: None, max_body_bytes: a.max_body_bytes, owner: None },
        raylet,
        state_dir: a.state_dir,
        token: token.as_ref().map(|(t, _)| t.clone()),
    };
    let head = shoal::head::start(cfg, true).await?;
    if let Some((t, TokenSource::Generated)) = &token {
        record_generated(&head, t)?;
    }
    shutdown_signal().await;
    head.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// `shoal raylet`.
pub async fn raylet(a: RayletArgs) -> anyhow::Result<ExitCode> {
    let cfg = a.to_config()?;
    let raylet = Raylet::start(cfg).await?;
    shutdown_signal().await;
    raylet.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Flags of `shoal up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of worker raylets (the head runs one more, which owns jobs).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// CPUs per raylet (default: the machine's).
    #[arg(long)]
    pub cpus_per_node: Option<f64>,
    /// CPUs of the head's raylet (0: it owns jobs and runs drivers, no tasks).
    #[arg(long, default_value_t = 0.0)]
    pub head_cpus: f64,
    /// REST API port (default 8265 when free, else a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// GCS port (default 6379 when free, else a free one).
    #[arg(long)]
    pub gcs_port: Option<u16>,
    /// Run without authentication (anyone who can reach a port can run any command).
    #[arg(long)]
    pub insecure_no_auth: bool,
}

fn options(nodes: usize, cpus: Option<f64>) -> anyhow::Result<ClusterOptions> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if nodes > 64 {
        bail!("--nodes {nodes} is more than a local cluster should run (64 at most)");
    }
    let mut o = ClusterOptions::new(self_binary(), nodes);
    o.cpus_per_node = cpus;
    Ok(o)
}

/// `shoal up`.
pub async fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut opts = options(a.nodes, a.cpus_per_node)?;
    if !(a.head_cpus.is_finite() && a.head_cpus >= 0.0) {
        bail!("--head-cpus: {} is not a non-negative number", a.head_cpus);
    }
    opts.head_cpus = a.head_cpus;
    opts.well_known_ports = a.port.is_none() && a.gcs_port.is_none();
    opts.insecure_no_auth = a.insecure_no_auth;
    if a.port.is_some() || a.gcs_port.is_some() {
        // Ports chosen by the user: taken as given, or the start fails.
        opts.head_args.extend(["--port".into(), a.port.unwrap_or(0).to_string()]);
        opts.head_args.extend(["--gcs-port".into(), a.gcs_port.unwrap_or(0).to_string()]);
    }
    let mut cluster = LocalCluster::start(opts).await?;
    let api = format!("http://{}", cluster.http_address);
    let record = shoal::discovery::ClusterRecord {
        gcs: cluster.gcs_address.clone(),
        api: api.clone(),
        raylet: cluster.driver_address().to_string(),
        pid: std::process::id(),
        session_dir: cluster.session_dir.display().to_string(),
        raylets: cluster.all_raylets().map(|r| r.address.clone()).collect(),
        token: cluster.token.as_ref().map(|t| t.expose().to_string()),
    };
    let record_path = shoal::discovery::write(&record)?;
    println!("shoal local cluster up in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    if let Some(note) = &cluster.port_note {
        println!("  note:      {note}");
    }
    println!("  GCS:       {}", cluster.gcs_address);
    println!("  REST API:  {api}  (jobs, state API, /metrics, /openapi.json)");
    if let Some(h) = &cluster.head_raylet {
        println!(
            "  head:      {}  node {}  metrics http://{}  (owns jobs; drivers connect here)",
            h.address, h.node_id, h.http_address
        );
    }
    for (i, r) in cluster.raylets.iter().enumerate() {
        println!("  raylet {i}:  {}  node {}  metrics http://{}", r.address, r.node_id, r.http_address);
    }
    println!("  logs:      {}", cluster.session_dir.join("logs").display());
    match &cluster.token {
        Some(_) => println!("  recorded:  {}  (addresses and the cluster token, mode 0600)", record_path.display()),
        None => {
            println!("  recorded:  {}", record_path.display());
            println!("  WARNING:   authentication is off (--insecure-no-auth): anyone who can reach these ports can run any command");
        }
    }
    println!();
    println!("In another terminal, `shoal submit JOB.yaml --wait`, `shoal jobs` and `shoal status` find this cluster.");
    println!("Rust clients connect with Client::connect(\"auto\") or SHOAL_ADDRESS={}.", cluster.driver_address());
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    shoal::discovery::remove_if_owned(std::process::id());
    // Whoever read the banner may be gone: a closed stdout is no reason to
    // leave the cluster running.
    let _ = writeln!(std::io::stdout(), "stopping...");
    cluster.stop();
    Ok(ExitCode::SUCCESS)
}

/// Flags of `shoal run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The job spec (YAML or JSON).
    pub file: PathBuf,
    /// Number of worker raylets (the head runs one more, which owns the job).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// CPUs per raylet (default: the machine's).
    #[arg(long)]
    pub cpus_per_node: Option<f64>,
    /// How to print the results.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `shoal run`.
pub async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let spec = shoal::job::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let plan = shoal::job::plan(&spec, &shoal::worker::builtins::is_standard_builtin)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let cluster = LocalCluster::start(options(a.nodes, a.cpus_per_node)?).await?;
    let opts = shoal::ConnectOptions { name: plan.name.clone(), ..Default::default() };
    // The head's raylet owns the job: losing any worker node costs retries only.
    let client = shoal::Client::connect_with(cluster.driver_address(), opts).await?;
    // A progress line on a terminal; nothing when stderr is a pipe or file.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = shoal::driver::run_plan_with_progress(&client, &plan, |done, total| {
        if tty {
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width).min(width);
            eprint!("\r\x1b[2K[{}{}] {done}/{total} tasks", "#".repeat(filled), "-".repeat(width - filled));
            if done == total {
                eprintln!();
            }
        }
    })
    .await;
    drop(client);
    drop(cluster);
    match outcome {
        Ok(results) => {
            match a.output {
                OutputFormat::Json => println!("{}", serde_json::to_string(&results)?),
                OutputFormat::Text => {
                    for (id, v) in &results {
                        println!("{id}: {v}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if tty {
                eprintln!();
            }
            eprintln!("job `{}` failed: {e}", plan.name);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Flags of `shoal bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Number of raylets.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// CPUs per raylet (default: the machine's).
    #[arg(long)]
    pub cpus_per_node: Option<f64>,
    /// Only measure the head's memory after 100 jobs (`head_rss_after_100_jobs_mib`).
    #[arg(long)]
    pub head_rss_only: bool,
}

/// `shoal bench`.
pub async fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let opts = options(a.nodes, a.cpus_per_node)?;
    let report =
        if a.head_rss_only { shoal::bench::run_head_rss(opts).await? } else { shoal::bench::run(opts).await? };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// `shoal token`: prints the token of the cluster recorded on this machine.
pub fn token() -> anyhow::Result<ExitCode> {
    let Some(rec) = shoal::discovery::find() else {
        bail!(
            "no running shoal cluster is recorded in {}: {}",
            shoal::discovery::record_path().display(),
            shoal::discovery::HOW_TO_START
        );
    };
    let Some(t) = rec.token else { bail!("the recorded cluster runs without authentication (--insecure-no-auth)") };
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// Flags of `shoal wait-for`.
#[derive(clap::Args, Debug)]
pub struct WaitForArgs {
    /// HOST:PORT to wait for.
    pub address: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// `shoal wait-for`.
pub async fn wait_for(a: WaitForArgs) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + Duration::from_secs(a.timeout);
    loop {
        if tokio::net::TcpStream::connect(&a.address).await.is_ok() {
            return Ok(ExitCode::SUCCESS);
        }
        if std::time::Instant::now() > deadline {
            bail!("{} did not accept connections within {}s", a.address, a.timeout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
