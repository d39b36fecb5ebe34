//! Validation: the permissive [`TaskCluster`] spec becomes a typed, checked [`ValidCluster`].
//!
//! This is the first step of every reconcile and the only place that reads the raw spec;
//! the builders read [`ValidCluster`] alone, so they never see an unchecked value. Every
//! problem is reported at once (not the first one only), and the checks mirror the CRD's
//! CEL rules and schema constraints so an object the API server accepted before a rule
//! existed, or under an older CRD, is still caught here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use kube::ResourceExt;

use crate::crd::{
    ExtraPort, ImagePullPolicy, PodTemplate, SecretKeyRef, ServiceType, SpillVolume, TaskCluster, MAX_CLUSTER_NAME_LEN,
    MAX_GROUP_NAME_LEN, MAX_REPLICAS, MAX_WORKER_GROUPS,
};
use crate::quantity::{self, Amount};

/// Name of the user's container in a worker group's template that runs `shoal worker`.
pub const WORKER_CONTAINER: &str = "worker";

/// Kubernetes resource names that map to shoal's built-in resources or are not node
/// resources at all; every other resource name becomes a custom resource.
const NOT_CUSTOM: &[&str] = &["cpu", "memory", "ephemeral-storage", "storage", GPU_RESOURCE];

/// The Kubernetes resource name of GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Share of a node's memory given to the object store when the spec does not say.
const DEFAULT_OBJECT_STORE_SHARE: f64 = 0.3;

/// A cluster whose spec passed validation, in the shape the builders need.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCluster {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The shoal image.
    pub image: String,
    /// Pull policy of the shoal image, if set.
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// The head.
    pub head: ValidHead,
    /// Worker groups, in spec order.
    pub groups: Vec<ValidGroup>,
    /// The object store's spill volume.
    pub spill_volume: SpillVolume,
    /// `spec.suspend`.
    pub suspend: bool,
    /// The cluster's NetworkPolicy; `None` when `spec.networkPolicy.enabled` is false.
    pub network_policy: Option<ValidNetworkPolicy>,
}

/// Where the cluster token lives.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterToken {
    /// The Secret and key.
    pub secret: SecretKeyRef,
    /// True when the spec names none: the operator creates `<cluster>-token`.
    pub create: bool,
}

/// Name of the token Secret the operator creates for a cluster.
pub fn token_secret_name(cluster: &str) -> String {
    format!("{cluster}-token")
}

/// The cluster's NetworkPolicy, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidNetworkPolicy {
    /// Namespaces (besides the cluster's and the operator's) whose pods may reach the
    /// HTTP ports; `None`: every namespace.
    pub http_from: Option<BTreeSet<String>>,
}

/// The head part of a [`ValidCluster`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidHead {
    /// Resources of the head container.
    pub resources: Option<ResourceRequirements>,
    /// Type of the head Service.
    pub service_type: ServiceType,
    /// Extra ports.
    pub ports: Vec<ExtraPort>,
    /// The user's overrides, typed.
    pub template: PodTemplateSpec,
    /// The Secret holding the cluster token, and whether the operator creates it.
    pub token: ClusterToken,
    /// CPUs the head's raylet offers to tasks.
    pub num_cpus: f64,
    /// Where the head keeps its state.
    pub state: HeadState,
}

/// The head's state volume, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum HeadState {
    /// An emptyDir: survives a container restart, not a new pod.
    #[default]
    EmptyDir,
    /// An existing claim.
    Claim(String),
    /// A claim the operator creates: its size in bytes and storage class.
    Create {
        /// Bytes requested.
        size: u64,
        /// Storage class, if not the default.
        storage_class: Option<String>,
    },
}

/// One worker group of a [`ValidCluster`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGroup {
    /// Group name.
    pub name: String,
    /// Pods wanted.
    pub replicas: i32,
    /// Resources of the container that runs tasks.
    pub resources: Option<ResourceRequirements>,
    /// What the raylet advertises.
    pub node: NodeResources,
    /// Node labels (the group's own plus `shoal.dev/group`).
    pub labels: BTreeMap<String, String>,
    /// The user's template, typed.
    pub template: PodTemplateSpec,
    /// Whether the template has a `worker` container (external worker mode).
    pub external_workers: bool,
}

/// The resources one raylet advertises, already formatted for its flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeResources {
    /// `--num-cpus`.
    pub cpus: Option<f64>,
    /// `--num-gpus`.
    pub gpus: f64,
    /// `--memory` in bytes.
    pub memory: Option<u64>,
    /// `--object-store-memory` in bytes.
    pub object_store_memory: Option<u64>,
    /// `--resources` (name → amount).
    pub custom: BTreeMap<String, f64>,
}

impl NodeResources {
    /// Worker processes an external worker container keeps: one per whole CPU, at least one.
    pub fn worker_processes(&self) -> u32 {
        self.cpus.map_or(1, |c| c.ceil().max(1.0) as u32)
    }

    /// `--resources` value: `name=amount` pairs joined by commas, sorted by name.
    pub fn custom_flag(&self) -> String {
        self.custom.iter().map(|(name, amount)| format!("{name}={}", Amount(*amount))).collect::<Vec<_>>().join(",")
    }
}

/// Checks a cluster and returns its typed form, or every problem found.
pub fn validate(cluster: &TaskCluster) -> Result<ValidCluster, Vec<String>> {
    let mut problems = Vec::new();
    let name = cluster.name_any();
    check_name(&mut problems, "TaskCluster name", &name, MAX_CLUSTER_NAME_LEN);
    let namespace = cluster.namespace().unwrap_or_default();
    if namespace.is_empty() {
        problems.push("the TaskCluster has no namespace".to_string());
    }
    let spec = &cluster.spec;
    if spec.image.trim().is_empty() {
        problems.push("spec.image must not be empty".to_string());
    }

    let head_template = parse_template(&mut problems, "spec.head.template", spec.head.template.as_ref());
    let mut port_names = BTreeSet::new();
    for port in &spec.head.ports {
        check_name(&mut problems, "spec.head.ports[].name", &port.name, 15);
        if !(1..=65535).contains(&port.port) {
            problems.push(format!("spec.head.ports {}: port {} is not in 1..65535", port.name, port.port));
        }
        if ["gcs", "http", "raylet", "metrics"].contains(&port.name.as_str()) || !port_names.insert(port.name.clone()) {
            problems.push(format!("spec.head.ports: port name {:?} is used twice or reserved", port.name));
        }
    }

    let num_cpus = spec.head.num_cpus.unwrap_or(0.0);
    if !(num_cpus.is_finite() && (0.0..=1024.0).contains(&num_cpus)) {
        problems.push(format!("spec.head.numCpus {num_cpus} is not in 0..1024"));
    }
    let head_state = match &spec.head.state {
        None => HeadState::EmptyDir,
        Some(st) => match (&st.claim_name, &st.size) {
            (Some(claim), None) if !claim.trim().is_empty() => HeadState::Claim(claim.clone()),
            (None, Some(size)) => match quantity::parse_bytes(&size.0) {
                Ok(bytes) if bytes > 0 => {
                    HeadState::Create { size: bytes, storage_class: st.storage_class_name.clone() }
                }
                Ok(_) => {
                    problems.push("spec.head.state.size must be more than 0".to_string());
                    HeadState::EmptyDir
                }
                Err(e) => {
                    problems.push(format!("spec.head.state.size: {e}"));
                    HeadState::EmptyDir
                }
            },
            _ => {
                problems.push(
                    "spec.head.state: give either claimName (an existing claim) or size (a claim the operator creates)"
                        .to_string(),
                );
                HeadState::EmptyDir
            }
        },
    };

    let token = match &spec.head.token_secret {
        Some(secret) => {
            if secret.name.trim().is_empty() || secret.key.trim().is_empty() {
                problems.push("spec.head.tokenSecret needs a name and a key".to_string());
            }
            ClusterToken { secret: secret.clone(), create: false }
        }
        None => ClusterToken {
            secret: SecretKeyRef { name: token_secret_name(&name), key: "token".to_string() },
            create: true,
        },
    };
    let network_policy = spec.network_policy.enabled.then(|| {
        let from = &spec.network_policy.http_from_namespaces;
        if from.iter().any(|n| n == "*") {
            return ValidNetworkPolicy { http_from: None };
        }
        for ns in from {
            // A namespace name is a DNS-1123 label: it may start with a digit.
            let ok = !ns.is_empty()
                && ns.len() <= 63
                && ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !ns.starts_with('-')
                && !ns.ends_with('-');
            if !ok {
                problems.push(format!(
                    "spec.networkPolicy.httpFromNamespaces: {ns:?} is not a namespace name (or \"*\" for every namespace)"
                ));
            }
        }
        ValidNetworkPolicy { http_from: Some(from.iter().cloned().collect()) }
    });

    if spec.worker_groups.len() > MAX_WORKER_GROUPS {
        problems.push(format!("spec.workerGroups: at most {MAX_WORKER_GROUPS} groups"));
    }
    let object_store_memory = match &spec.object_store.memory {
        Some(q) => match quantity::parse_bytes(&q.0) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                problems.push(format!("spec.objectStore.memory: {e}"));
                None
            }
        },
        None => None,
    };

    let mut seen = BTreeSet::new();
    let mut groups = Vec::new();
    for group in &spec.worker_groups {
        let at = format!("spec.workerGroups[{}]", group.name);
        check_name(&mut problems, &format!("{at}.name"), &group.name, MAX_GROUP_NAME_LEN);
        if !seen.insert(group.name.clone()) {
            problems.push(format!("{at}: worker group names must be unique"));
        }
        let max = group.max_replicas.unwrap_or(MAX_REPLICAS);
        for (field, value) in [("replicas", group.replicas), ("minReplicas", group.min_replicas), ("maxReplicas", max)]
        {
            if !(0..=MAX_REPLICAS).contains(&value) {
                problems.push(format!("{at}.{field}: {value} is not in 0..{MAX_REPLICAS}"));
            }
        }
        if group.min_replicas > group.replicas {
            problems.push(format!("{at}: minReplicas must be at most replicas"));
        }
        if group.replicas > max {
            problems.push(format!("{at}: replicas must be at most maxReplicas"));
        }
        let template = parse_template(&mut problems, &format!("{at}.template"), group.template.as_ref());
        let worker = template.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == WORKER_CONTAINER));
        if let Some(worker) = worker {
            if worker.image.as_deref().unwrap_or("").is_empty() {
                problems.push(format!("{at}.template: the worker container needs an image"));
            }
        }
        let external_workers = worker.is_some();
        let node =
            node_resources(&mut problems, &at, group.resources.as_ref(), &group.custom_resources, object_store_memory);
        let mut labels = group.labels.clone();
        labels.insert(crate::labels::GROUP.to_string(), group.name.clone());
        groups.push(ValidGroup {
            name: group.name.clone(),
            replicas: group.replicas,
            resources: group.resources.clone(),
            node,
            labels,
            template,
            external_workers,
        });
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ValidCluster {
        name,
        namespace,
        image: spec.image.clone(),
        image_pull_policy: spec.image_pull_policy,
        head: ValidHead {
            resources: spec.head.resources.clone(),
            service_type: spec.head.service_type,
            ports: spec.head.ports.clone(),
            template: head_template,
            token,
            num_cpus,
            state: head_state,
        },
        groups,
        spill_volume: spec.object_store.spill_volume.clone().unwrap_or_default(),
        suspend: spec.suspend,
        network_policy,
    })
}

/// DNS-1035 label of at most `max` characters (the CRD's `NAME_PATTERN`).
fn check_name(problems: &mut Vec<String>, what: &str, name: &str, max: usize) {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let body_ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !body_ok || name.ends_with('-') {
        problems.push(format!(
            "{what} {name:?} must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter)"
        ));
    }
    if name.len() > max {
        problems.push(format!("{what} {name:?} is longer than {max} characters"));
    }
}

fn parse_template(problems: &mut Vec<String>, at: &str, raw: Option<&PodTemplate>) -> PodTemplateSpec {
    match raw {
        None => PodTemplateSpec::default(),
        Some(raw) => match serde_json::from_value(raw.0.clone()) {
            Ok(template) => template,
            Err(e) => {
                problems.push(format!("{at} is not a valid pod template: {e}"));
                PodTemplateSpec::default()
            }
        },
    }
}

/// Derives the raylet's advertised resources from container resources: limits win over
/// requests, since limits are what the container can actually use.
fn node_resources(
    problems: &mut Vec<String>,
    at: &str,
    resources: Option<&ResourceRequirements>,
    custom: &BTreeMap<String, f64>,
    object_store_memory: Option<u64>,
) -> NodeResources {
    let mut amounts = BTreeMap::new();
    if let Some(r) = resources {
        for source in [r.requests.as_ref(), r.limits.as_ref()].into_iter().flatten() {
            for (name, q) in source {
                amounts.insert(name.clone(), q.0.clone());
            }
        }
    }
    let mut node = NodeResources::default();
    for (name, text) in &amounts {
        match quantity::parse(text) {
            Err(e) => problems.push(format!("{at}.resources.{name}: {e}")),
            Ok(value) => match name.as_str() {
                "cpu" => node.cpus = Some(value),
                "memory" => node.memory = Some(value.ceil() as u64),
                GPU_RESOURCE => node.gpus = value,
                other if NOT_CUSTOM.contains(&other) || other.starts_with("hugepages-") => {}
                other => {
                    node.custom.insert(other.to_string(), value);
                }
            },
        }
    }
    for (name, amount) in custom {
        if name.is_empty() || name.contains([',', '=', ' ']) {
            problems.push(format!("{at}.customResources: {name:?} is not a valid resource name"));
        } else if !amount.is_finite() || *amount < 0.0 {
            problems.push(format!("{at}.customResources.{name}: {amount} must be a non-negative number"));
        } else if NOT_CUSTOM.contains(&name.as_str()) || node.custom.contains_key(name) {
            problems.push(format!("{at}.customResources.{name}: already set through resources"));
        } else {
            node.custom.insert(name.clone(), *amount);
        }
    }
    node.object_store_memory =
        object_store_memory.or_else(|| node.memory.map(|m| (m as f64 * DEFAULT_OBJECT_STORE_SHARE) as u64));
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn example_cluster_is_valid() {
        let valid = validate(&fixtures::cluster()).expect("fixture is valid");
        assert_eq!(valid.groups.len(), 2);
        let cpu = &valid.groups[0];
        assert_eq!(cpu.node.cpus, Some(2.0));
        assert_eq!(cpu.node.memory, Some(4 * 1024 * 1024 * 1024));
        assert_eq!(cpu.node.object_store_memory, Some(1024 * 1024 * 1024));
        assert!(!cpu.external_workers);
        let gpu = &valid.groups[1];
        assert_eq!(gpu.node.gpus, 1.0);
        assert!(gpu.external_workers);
        assert_eq!(gpu.node.custom_flag(), "accel=1,example.com/fpga=2");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut tc = fixtures::cluster();
        tc.spec.image = String::new();
        tc.spec.worker_groups[0].min_replicas = 5;
        tc.spec.worker_groups[1].name = tc.spec.worker_groups[0].name.clone();
        tc.spec.worker_groups[1].max_replicas = Some(0);
        let problems = validate(&tc).expect_err("invalid");
        let text = problems.join("\n");
        assert!(text.contains("spec.image"), "{text}");
        assert!(text.contains("minReplicas must be at most replicas"), "{text}");
        assert!(text.contains("unique"), "{text}");
        assert!(text.contains("replicas must be at most maxReplicas"), "{text}");
    }

    #[test]
    fn bad_names_templates_and_quantities_are_rejected() {
        let mut tc = fixtures::cluster();
        tc.metadata.name = Some("9-bad".to_string());
        tc.spec.worker_groups[0].name = "this-name-is-far-too-long".to_string();
        tc.spec.worker_groups[0].template =
            Some(PodTemplate(serde_json::json!({"spec": {"containers": "not a list"}})));
        tc.spec.object_store.memory = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("lots".into()));
        let text = validate(&tc).expect_err("invalid").join("\n");
        assert!(text.contains("TaskCluster name \"9-bad\""), "{text}");
        assert!(text.contains("longer than 16"), "{text}");
        assert!(text.contains("not a valid pod template"), "{text}");
        assert!(text.contains("spec.objectStore.memory"), "{text}");
    }

    #[test]
    fn the_token_secret_and_network_policy_default_to_the_operators() {
        let mut tc = fixtures::cluster();
        let valid = validate(&tc).expect("valid");
        assert_eq!(valid.head.token.secret.name, "demo-token");
        assert_eq!(valid.head.token.secret.key, "token");
        assert!(valid.head.token.create);
        assert_eq!(valid.network_policy, Some(ValidNetworkPolicy { http_from: Some(BTreeSet::new()) }));

        tc.spec.network_policy.http_from_namespaces = vec!["1st-team".into(), "*".into()];
        assert_eq!(validate(&tc).expect("valid").network_policy, Some(ValidNetworkPolicy { http_from: None }));
        tc.spec.network_policy.http_from_namespaces = vec!["Not_A_Namespace".into()];
        let text = validate(&tc).expect_err("invalid").join("\n");
        assert!(text.contains("\"Not_A_Namespace\" is not a namespace name"), "{text}");
        tc.spec.network_policy.enabled = false;
        tc.spec.head.token_secret = Some(SecretKeyRef { name: "mine".into(), key: String::new() });
        let text = validate(&tc).expect_err("invalid").join("\n");
        assert!(text.contains("tokenSecret needs a name and a key"), "{text}");
        tc.spec.head.token_secret = Some(SecretKeyRef { name: "mine".into(), key: "k".into() });
        let valid = validate(&tc).expect("valid");
        assert!(!valid.head.token.create && valid.network_policy.is_none());
    }
}
