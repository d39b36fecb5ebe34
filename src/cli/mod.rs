//! Command-line interface: one subcommand per process role and user action.

pub mod cluster;
pub mod machine;
pub mod rest;
pub mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// shoal: a Kubernetes-native distributed task runtime.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, long_about = None)]
pub struct Cli {
    /// Log format of server processes.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SHOAL_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Result output format of user commands.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// Human-readable (also `table`).
    #[value(alias = "table")]
    Text,
    /// JSON on stdout.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the global control service alone.
    Gcs(cluster::GcsArgs),
    /// Run the head: GCS plus the HTTP API.
    Head(Box<cluster::HeadArgs>),
    /// Run a raylet (one per node).
    Raylet(Box<cluster::RayletArgs>),
    /// Run a worker process (started by a raylet, or by a worker container).
    Worker(worker::WorkerArgs),
    /// Start a local cluster (a head and N raylets) and keep it up until Ctrl-C.
    Up(cluster::UpArgs),
    /// Run a job spec on a fresh local cluster and print the results.
    Run(cluster::RunArgs),
    /// Measure the runtime on a local cluster and print JSON figures.
    Bench(cluster::BenchArgs),
    /// Wait until a TCP address accepts connections (init containers).
    WaitFor(cluster::WaitForArgs),
    /// Run the Kubernetes operator that reconciles TaskCluster resources.
    Operator(shoal_operator::OperatorCommand),
    /// Print the TaskCluster CustomResourceDefinition as YAML.
    Crd,
    /// Submit a job to a cluster's REST API.
    Submit(rest::SubmitArgs),
    /// List jobs.
    Jobs(rest::JobsArgs),
    /// Show one job.
    Job(rest::JobIdArgs),
    /// Print (or follow) a job's log.
    Logs(rest::LogsArgs),
    /// Stop a job.
    Stop(rest::JobIdArgs),
    /// Download a result object.
    Get(rest::GetArgs),
    /// Show the cluster's nodes, resources, queues and jobs.
    Status(rest::StatusArgs),
    /// Print the recorded local cluster's token (for curl, or for a machine
    /// that is to reach this cluster: `shoal token > token; --token-file token`).
    Token,
    /// Run a job spec through the raylet at SHOAL_ADDRESS (entrypoint drivers).
    #[command(hide = true)]
    Driver(rest::DriverArgs),
}

/// Installs the tracing subscriber.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let server = matches!(
        cli.command,
        Command::Gcs(_) | Command::Head(_) | Command::Raylet(_) | Command::Worker(_) | Command::Operator(_)
    );
    let default = if server { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs an async subcommand.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Gcs(a) => cluster::gcs(a).await,
        Command::Head(a) => cluster::head(*a).await,
        Command::Raylet(a) => cluster::raylet(*a).await,
        Command::Up(a) => cluster::up(a).await,
        Command::Run(a) => cluster::run(a).await,
        Command::Bench(a) => cluster::bench(a).await,
        Command::WaitFor(a) => cluster::wait_for(a).await,
        Command::Operator(shoal_operator::OperatorCommand { action: None, args }) => {
            shoal_operator::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator(shoal_operator::OperatorCommand {
            action: Some(shoal_operator::OperatorAction::Render { file, operator_namespace }),
            ..
        }) => {
            use anyhow::Context as _;
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let ns = (!operator_namespace.is_empty()).then_some(operator_namespace.as_str());
            match shoal_operator::render::render(&yaml, ns) {
                Ok(out) => {
                    print!("{out}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        Command::Crd => {
            print!("{}", shoal_operator::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(a) => rest::submit(a).await,
        Command::Jobs(a) => rest::jobs(a).await,
        Command::Job(a) => rest::job(a).await,
        Command::Logs(a) => rest::logs(a).await,
        Command::Stop(a) => rest::stop(a).await,
        Command::Get(a) => rest::get(a).await,
        Command::Status(a) => rest::status(a).await,
        Command::Token => cluster::token(),
        Command::Driver(a) => rest::driver(a).await,
        Command::Worker(_) => unreachable!("handled before the runtime starts"),
    }
}

/// The path of this executable, for starting children.
pub fn self_binary() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("shoal"))
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
