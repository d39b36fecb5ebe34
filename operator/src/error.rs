//! The operator's error type.

/// Everything that can stop a reconcile or the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A create, delete or apply of a cluster's object failed (also in its status).
    #[error("{cluster}: {message}")]
    Replica {
        /// `namespace/name` of the cluster.
        cluster: String,
        /// What failed.
        message: String,
    },
    /// The object lacks a field every stored object has (namespace, uid).
    #[error("TaskCluster {0} lacks metadata.namespace or metadata.uid")]
    IncompleteObject(String),
    /// Leader election failed.
    #[error("leader election failed: {0}")]
    LeaderElection(#[from] kube_lease_manager::LeaseManagerError),
    /// Leadership was lost; the process stops so that one leader at most acts.
    #[error("lost the leader lease {0}")]
    LostLease(String),
    /// The metrics/health server could not start.
    #[error("metrics server on port {port}: {source}")]
    MetricsServer {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// A short label for the error, used in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Replica { .. } => "replica",
            Error::IncompleteObject(_) => "incomplete_object",
            Error::LeaderElection(_) => "leader_election",
            Error::LostLease(_) => "lost_lease",
            Error::MetricsServer { .. } => "metrics_server",
            Error::Metrics(_) => "metrics",
        }
    }
}
