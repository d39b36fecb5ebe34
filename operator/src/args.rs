//! The flags of `shoal operator`, each with its environment variable and default.

use clap::{Args, Subcommand};

/// Flags of `shoal operator`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct OperatorArgs {
    /// Namespace whose TaskClusters are reconciled; all namespaces when empty.
    #[arg(long = "watch-namespace", env = "SHOAL_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,

    /// Port of the operator's /metrics, /healthz and /readyz.
    #[arg(long, env = "SHOAL_OPERATOR_METRICS_PORT", default_value_t = 8081)]
    pub metrics_port: u16,

    /// Elect one active replica through a coordination.k8s.io Lease.
    #[arg(long, env = "SHOAL_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "SHOAL_LEASE_NAME", default_value = "shoal-operator")]
    pub lease_name: String,

    /// Namespace of the leader-election Lease; the client's default namespace when empty.
    #[arg(long, env = "SHOAL_LEASE_NAMESPACE", default_value = "")]
    pub lease_namespace: String,

    /// Seconds a lease stays valid without renewal.
    #[arg(long, env = "SHOAL_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// This replica's identity (Lease holder and Event reporter); the pod name in-cluster.
    #[arg(long, env = "SHOAL_OPERATOR_POD_NAME", default_value = "")]
    pub pod_name: String,

    /// The operator's own namespace (in-cluster, from the downward API): each cluster's
    /// NetworkPolicy lets it reach the heads' REST API.
    #[arg(long, env = "SHOAL_OPERATOR_NAMESPACE", default_value = "")]
    pub operator_namespace: String,

    /// Port of each cluster's head REST API (asked for idle nodes on scale-down).
    #[arg(long, env = "SHOAL_HEAD_PORT", default_value_t = 8265)]
    pub head_port: u16,

    /// TaskClusters reconciled at the same time.
    #[arg(long, env = "SHOAL_OPERATOR_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
}

/// `shoal operator [render FILE]`: run the operator, or print what it would create.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OperatorCommand {
    /// What to do instead of running the operator.
    #[command(subcommand)]
    pub action: Option<OperatorAction>,
    /// The operator's flags.
    #[command(flatten)]
    pub args: OperatorArgs,
}

/// Subcommands of `shoal operator`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum OperatorAction {
    /// Print, as YAML, every object the operator would create for the TaskClusters in
    /// FILE (`-` for stdin): token Secret, NetworkPolicy, Service, state claim and pods.
    /// No API server is needed; each Secret holds a freshly drawn token.
    Render {
        /// A YAML file with one or more TaskClusters.
        file: std::path::PathBuf,
        /// The operator's namespace, let through the NetworkPolicies to the REST API.
        #[arg(long, default_value = "")]
        operator_namespace: String,
    },
}
