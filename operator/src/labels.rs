//! Names, labels and annotations the operator puts on what it creates.
//!
//! Invariant: every object the operator creates carries [`CLUSTER`] and [`ROLE`]; raylet
//! pods also carry [`GROUP`]. The pod watch selects on [`CLUSTER`], and the reconciler
//! maps pods back to their cluster and group through these labels alone (plus the owner
//! reference, which guards against adopting a deleted cluster's leftovers).

use std::collections::BTreeMap;

/// Label: the owning TaskCluster's name.
pub const CLUSTER: &str = "shoal.dev/cluster";
/// Label: the worker group of a raylet pod (also a node label the raylet advertises).
pub const GROUP: &str = "shoal.dev/group";
/// Label: `head` or `raylet`.
pub const ROLE: &str = "shoal.dev/role";
/// Node label the raylet reports with its pod name (from `SHOAL_NODE_NAME`).
pub const NODE_POD: &str = "shoal.dev/pod";
/// Annotation: hash of the pod template a pod was built from (see [`crate::build`]).
pub const TEMPLATE_HASH: &str = "shoal.dev/template-hash";

/// Role label value of the head pod.
pub const ROLE_HEAD: &str = "head";
/// Role label value of raylet pods.
pub const ROLE_RAYLET: &str = "raylet";

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "shoal-operator";

/// Name of the head pod and of its Service.
pub fn head_name(cluster: &str) -> String {
    format!("{cluster}-head")
}

/// In-cluster DNS name of the head Service.
pub fn head_service_host(cluster: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc", head_name(cluster))
}

/// Labels of every object of a cluster with the given role (and group, for raylets).
pub fn object_labels(cluster: &str, role: &str, group: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "shoal".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.to_string()),
        ("app.kubernetes.io/component".to_string(), role.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), FIELD_MANAGER.to_string()),
        (CLUSTER.to_string(), cluster.to_string()),
        (ROLE.to_string(), role.to_string()),
    ]);
    if let Some(group) = group {
        labels.insert(GROUP.to_string(), group.to_string());
    }
    labels
}

/// The selector of the head pod (what the head Service routes to).
pub fn head_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CLUSTER.to_string(), cluster.to_string()), (ROLE.to_string(), ROLE_HEAD.to_string())])
}
