//! The `TaskCluster` custom resource (`shoal.dev/v1alpha1`, short name `tc`).
//!
//! These Rust types are the single source of the CRD: `crds/taskcluster.yaml`, the chart's
//! copy and `shoal crd` are all generated from them by [`crd_yaml`], and a test fails when
//! the committed files drift.
//!
//! The spec is deliberately *permissive* where users paste Kubernetes objects: pod
//! templates are stored as raw JSON ([`PodTemplate`]) with `x-kubernetes-preserve-unknown-fields`
//! rather than the full embedded `PodTemplateSpec` schema. This keeps the CRD small (a fully
//! expanded pod schema, twice, pushes a CRD past the 256 KiB limit of client-side
//! `kubectl apply`), and a malformed template cannot break the operator's watch of every
//! other cluster: [`crate::validate`] turns the permissive spec into a typed, checked
//! [`crate::validate::ValidCluster`] and reports what is wrong in the status.
//!
//! Validation is declared twice on purpose: as CEL rules and schema constraints here, which
//! the API server enforces on write, and in Rust in [`crate::validate`], which the operator
//! enforces on read (CRD/operator version skew, objects written before a rule existed). A
//! test evaluates the CEL rules client-side to prove both agree.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every shoal resource and the prefix of every shoal label.
pub const GROUP: &str = "shoal.dev";

/// Longest allowed `TaskCluster` name: pod names are `<cluster>-<group>-<5 chars>` and must
/// stay within the 63-character hostname limit.
pub const MAX_CLUSTER_NAME_LEN: usize = 40;

/// Longest allowed worker group name (see [`MAX_CLUSTER_NAME_LEN`]).
pub const MAX_GROUP_NAME_LEN: usize = 16;

/// Most worker groups one cluster may declare (bounds the cost of the CEL uniqueness rule).
pub const MAX_WORKER_GROUPS: usize = 16;

/// Highest `replicas` / `maxReplicas` a worker group may ask for.
pub const MAX_REPLICAS: i32 = 1000;

/// The pattern of cluster and group names: a DNS-1035 label (they become Service and pod
/// names).
pub const NAME_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// A distributed task cluster: one head (GCS + REST API) and groups of raylet pods.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shoal.dev",
    version = "v1alpha1",
    kind = "TaskCluster",
    namespaced,
    status = "TaskClusterStatus",
    shortname = "tc",
    category = "shoal",
    doc = "A shoal task cluster: a head (GCS and REST API) and groups of raylet pods.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyWorkers", description = "Raylet pods that are ready"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredWorkers", description = "Raylet pods the spec asks for"),
    printcolumn(name = "CPUs", type_ = "string", json_path = ".status.cpus", description = "CPUs the desired raylets advertise"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40").message("a TaskCluster name is at most 40 characters"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("a TaskCluster name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter)")
)]
#[x_kube(validation = Rule::new("self.workerGroups.all(g, self.workerGroups.exists_one(h, h.name == g.name))").message("worker group names must be unique"))]
#[serde(rename_all = "camelCase")]
pub struct TaskClusterSpec {
    /// The shoal image used by the head, the raylets and the worker-binary init container.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pull policy for the shoal image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// The head pod: GCS, REST API and job manager.
    #[serde(default)]
    pub head: HeadSpec,
    /// Groups of raylet pods; each pod is one shoal node.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub worker_groups: Vec<WorkerGroupSpec>,
    /// The object store of every raylet.
    #[serde(default)]
    pub object_store: ObjectStoreSpec,
    /// When true, every pod is removed (the Service and the resource stay); setting it
    /// back to false recreates them.
    #[serde(default)]
    pub suspend: bool,
    /// Who may reach the cluster's pods. By default a NetworkPolicy lets only the
    /// cluster's own pods reach the GCS, raylet and object ports, and the HTTP ports
    /// (REST API, metrics) only from the cluster's and the operator's namespaces.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

/// The NetworkPolicy the operator gives a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the policy (default true). Turn it off only where another policy, or a
    /// network with no NetworkPolicy support, already decides who reaches the pods.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// More namespaces whose pods may reach the HTTP ports (REST API, `/metrics`) and
    /// the head's extra ports, e.g. where Prometheus or the drivers run; `"*"` means
    /// every namespace. The cluster's own namespace and the operator's always may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub http_from_namespaces: Vec<String>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true, http_from_namespaces: Vec::new() }
    }
}

fn default_true() -> bool {
    true
}

/// Image pull policy of the shoal containers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node does not have the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// The head pod and its Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadSpec {
    /// Resources of the head container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Type of the head Service.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Extra ports to open on the head container and its Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<ExtraPort>,
    /// Overrides merged into the head pod (metadata labels/annotations, nodeSelector,
    /// tolerations, affinity, serviceAccountName, extra volumes and containers...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate>,
    /// The Secret holding the cluster token every component requires of its callers
    /// (REST, GCS and raylet RPCs, worker sockets). Absent: the operator creates
    /// `<cluster>-token` (key `token`) with a random token, owned by the TaskCluster,
    /// and never changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// CPUs the head's own raylet offers to tasks (like Ray's head `num-cpus`). The head's
    /// raylet owns every job the head runs and runs entrypoint drivers, which need none;
    /// the default 0 keeps tasks off the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1024.0))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "double(self) >= 0.0 && double(self) <= 1024.0",
        "message": "numCpus is in 0..1024"
    }]))]
    pub num_cpus: Option<f64>,
    /// Where the head keeps its job table, job logs and KV store. Absent: an emptyDir,
    /// which survives a restart of the head container but not a new head pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<HeadStateSpec>,
}

/// The head's state volume: an existing PersistentVolumeClaim, or one the operator
/// creates (owned by the TaskCluster, so deleting the cluster deletes its state).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.claimName) != has(self.size)",
    "message": "give either claimName (an existing claim) or size (a claim the operator creates)"
}]))]
pub struct HeadStateSpec {
    /// An existing PersistentVolumeClaim in the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Size of a claim `<cluster>-head-state` the operator creates (ReadWriteOnce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Storage class of the created claim (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Type of the head Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only (default).
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// An extra port on the head container and Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraPort {
    /// Port name (an IANA service name: at most 15 characters).
    #[schemars(length(min = 1, max = 15), regex(pattern = "^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_token_key")]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_string()
}

/// A group of identical raylet pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.replicas").message("minReplicas must be at most replicas"))]
#[x_kube(validation = Rule::new("!has(self.maxReplicas) || self.replicas <= self.maxReplicas").message("replicas must be at most maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroupSpec {
    /// Group name, unique in the cluster; pods are named `<cluster>-<group>-<suffix>`.
    #[schemars(length(min = 1, max = 16), regex(pattern = "^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Number of raylet pods wanted.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Lower bound on `replicas` (for autoscalers).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Upper bound on `replicas` (for autoscalers); unbounded up to 1000 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_replicas: Option<i32>,
    /// Resources of the container that runs tasks (the `worker` container when the
    /// template has one, else the raylet container). Limits (or requests) become the
    /// node's advertised resources: `cpu`, `memory`, `nvidia.com/gpu`, and any extended
    /// resource as a custom resource of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra logical resources the node advertises (name → amount, fractions allowed),
    /// not backed by a Kubernetes resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_resources: BTreeMap<String, f64>,
    /// Node labels tasks can select with label selectors and affinity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Pod template merged into each raylet pod. A container named `worker` is the user's
    /// worker image: it runs `shoal worker` (binary shared through an emptyDir) against the
    /// raylet over a Unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate>,
}

fn default_replicas() -> i32 {
    1
}

/// The object store of every raylet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSpec {
    /// Memory for objects; default 30% of the node's memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Where primary copies spill when memory is full; an emptyDir when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_volume: Option<SpillVolume>,
}

/// The volume raylets spill objects to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpillVolume {
    /// Size limit of the emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
    /// emptyDir medium: "" (node disk) or "Memory".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
}

/// A raw `PodTemplateSpec` (metadata + spec), checked by the operator rather than by the
/// API server's schema (see the module docs for why).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(transparent)]
pub struct PodTemplate(pub serde_json::Value);

impl JsonSchema for PodTemplate {
    fn schema_name() -> Cow<'static, str> {
        "PodTemplate".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kubernetes PodTemplateSpec (metadata and spec); checked by the operator.",
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// What the operator last observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskClusterStatus {
    /// Coarse state, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// HeadReady, WorkersReady, Provisioned, ReplicaFailure, Suspended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Raylet pods that are ready, over all groups.
    #[serde(default)]
    pub ready_workers: i32,
    /// Raylet pods the spec asks for, over all groups.
    #[serde(default)]
    pub desired_workers: i32,
    /// CPUs the desired raylets advertise, over all groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Per worker group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_groups: Vec<WorkerGroupStatus>,
    /// The head Service's in-cluster DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_service: Option<String>,
    /// Named in-cluster endpoints: `gcs` (host:port) and `rest` (URL).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
}

/// Status of one worker group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroupStatus {
    /// Group name.
    pub name: String,
    /// Pods the spec asks for.
    pub desired: i32,
    /// Pods that exist and are not being deleted.
    pub current: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Pods running the current template.
    pub updated: i32,
}

/// Coarse state of a cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Pods are being created or are not ready yet.
    Pending,
    /// The head and every desired raylet are ready at the current template.
    Running,
    /// Pods are being replaced after a template change, or scaled.
    Updating,
    /// `spec.suspend` is set.
    Suspended,
    /// The spec is invalid; see the Provisioned condition.
    Failed,
}

/// The CRD as a YAML document (what `shoal crd` prints and `crds/taskcluster.yaml` holds).
pub fn crd_yaml() -> String {
    let crd = TaskCluster::crd();
    // Serialising a CRD built by kube-derive cannot fail: it is plain data with string keys.
    let yaml = serde_yaml_ng::to_string(&crd).expect("a generated CRD serialises to YAML");
    format!("# Generated by `shoal crd` from operator/src/crd.rs; do not edit.\n---\n{yaml}")
}
