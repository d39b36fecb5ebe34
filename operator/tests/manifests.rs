//! The committed YAML stays in step with the code:
//! - `crds/taskcluster.yaml` and the chart's copy are exactly `shoal crd`'s output;
//! - `manifests/install.yaml` is exactly the chart rendered with its default values
//!   (release `shoal`, namespace `shoal-system`), after a Namespace and the CRD;
//! - every document parses into the typed object its kind claims;
//! - the example cluster passes both the Rust validation and the CRD's CEL rules.
//!
//! After changing the CRD types or the chart, regenerate with
//! `SHOAL_UPDATE_MANIFESTS=1 cargo test -p shoal-operator --test manifests`.

mod helm;

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::Deserialize;
use shoal_operator::{crd_yaml, TaskCluster};

const RELEASE: &str = "shoal";
const NAMESPACE: &str = "shoal-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/shoal")
}

/// Compares a committed file with what it must be, or rewrites it when asked to.
fn check_file(relative: &str, expected: &str) {
    let path = repo().join(relative);
    if std::env::var_os("SHOAL_UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, expected).unwrap_or_else(|e| panic!("writing {relative}: {e}"));
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{relative} is out of date; regenerate with `SHOAL_UPDATE_MANIFESTS=1 cargo test -p shoal-operator --test manifests`"
    );
}

fn install_yaml() -> String {
    let release = helm::Release { name: RELEASE.into(), namespace: NAMESPACE.into() };
    let rendered = helm::render_chart(&chart(), &release, "{}").expect("chart renders");
    let crd = crd_yaml();
    let crd_doc = crd.split_once("---\n").map(|(_, d)| d).unwrap_or(&crd);
    format!(
        "# shoal: the TaskCluster CRD and the operator, as `helm install shoal charts/shoal -n {NAMESPACE}`\n\
         # would install them. Generated from the chart by operator/tests/manifests.rs; do not edit.\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n\
         ---\n# Source: shoal/crds/taskcluster.yaml\n{crd_doc}{rendered}"
    )
}

#[test]
fn committed_crds_match_the_rust_types() {
    check_file("crds/taskcluster.yaml", &crd_yaml());
    check_file("charts/shoal/crds/taskcluster.yaml", &crd_yaml());
}

#[test]
fn install_yaml_is_the_chart_rendered_with_default_values() {
    check_file("manifests/install.yaml", &install_yaml());
}

fn typed<T: serde::de::DeserializeOwned>(origin: &str, value: serde_yaml_ng::Value) -> T {
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    serde_yaml_ng::from_value(value).unwrap_or_else(|e| panic!("{origin}: {kind} does not parse: {e}"))
}

/// Parses every document of `text` into the type its kind names.
fn parse_documents(origin: &str, text: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}"));
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_else(|| panic!("{origin}: a document has no kind")).to_string();
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(origin, value)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(origin, value)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(origin, value)),
            "ClusterRole" => drop(typed::<ClusterRole>(origin, value)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(origin, value)),
            "Role" => drop(typed::<Role>(origin, value)),
            "RoleBinding" => drop(typed::<RoleBinding>(origin, value)),
            "Deployment" => drop(typed::<Deployment>(origin, value)),
            "Service" => drop(typed::<Service>(origin, value)),
            "ConfigMap" => drop(typed::<ConfigMap>(origin, value)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(origin, value)),
            "TaskCluster" => {
                let mut tc: TaskCluster = typed(origin, value);
                tc.metadata.namespace.get_or_insert_with(|| "default".into());
                if let Err(problems) = shoal_operator::validate::validate(&tc) {
                    panic!("{origin}: TaskCluster is invalid: {problems:?}");
                }
            }
            // prometheus-operator kinds have no k8s-openapi type; check what identifies them.
            "ServiceMonitor" | "PodMonitor" => {
                assert_eq!(api_version, "monitoring.coreos.com/v1", "{origin}: {kind}");
                assert!(value["spec"].is_mapping(), "{origin}: {kind} has no spec");
            }
            other => panic!("{origin}: unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    kinds
}

#[test]
fn every_committed_document_parses_into_its_type() {
    for file in [
        "crds/taskcluster.yaml",
        "charts/shoal/crds/taskcluster.yaml",
        "manifests/install.yaml",
        "manifests/examples/cluster.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!parse_documents(file, &text).is_empty(), "{file} has no document");
    }
    let install = std::fs::read_to_string(repo().join("manifests/install.yaml")).expect("install.yaml");
    let kinds = parse_documents("install.yaml", &install);
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "install.yaml lacks a {kind}");
    }
    // The dashboard placeholder (or the real dashboard) is valid JSON.
    let dashboard = std::fs::read_to_string(chart().join("dashboards/shoal.json")).expect("dashboard");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("dashboard is JSON");
}

#[test]
fn chart_with_every_option_renders_valid_objects() {
    let release = helm::Release { name: "shoal".into(), namespace: "ops".into() };
    let all = "serviceMonitor: {enabled: true}\npodMonitor: {enabled: true}\ndashboard: {enabled: true}\n\
               exampleCluster: {enabled: true}\nwatchNamespace: team-a\n\
               leaderElection: {enabled: false}\n";
    let rendered = helm::render_chart(&chart(), &release, all).expect("renders");
    let kinds = parse_documents("chart (all options)", &rendered);
    for kind in ["ServiceMonitor", "PodMonitor", "ConfigMap", "TaskCluster", "Role", "RoleBinding"] {
        assert!(kinds.iter().any(|k| k == kind), "missing {kind} in {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k == "ClusterRole"), "a namespaced install needs no ClusterRole");
    // Leader election off: only the watch-namespace Role, no Lease Role.
    assert_eq!(kinds.iter().filter(|k| *k == "Role").count(), 1);
    assert!(rendered.contains("namespace: team-a"));
}

#[test]
fn rbac_grants_only_what_the_operator_uses() {
    let install = std::fs::read_to_string(repo().join("manifests/install.yaml")).expect("install.yaml");
    let role: ClusterRole = serde_yaml_ng::Deserializer::from_str(&install)
        .filter_map(|d| serde_yaml_ng::Value::deserialize(d).ok())
        .find(|v| v["kind"] == "ClusterRole")
        .map(|v| serde_yaml_ng::from_value(v).expect("ClusterRole"))
        .expect("a ClusterRole");
    let mut grants: Vec<String> = Vec::new();
    for rule in role.rules.unwrap_or_default() {
        for resource in rule.resources.unwrap_or_default() {
            assert!(!rule.verbs.iter().any(|v| v == "*"), "no wildcard verbs");
            grants.push(format!("{resource}:{}", rule.verbs.join(",")));
        }
    }
    assert_eq!(
        grants,
        [
            "taskclusters:get,list,watch",
            "taskclusters/status:get,patch",
            "taskclusters/finalizers:update",
            "pods:get,list,watch,create,patch,delete",
            "services:get,create,patch",
            "persistentvolumeclaims:get,create,patch",
            "secrets:get,create",
            "networkpolicies:get,create,patch,delete",
            "events:create,patch",
        ]
    );
}

/// The schema the API server validates TaskClusters with (CEL rules included).
fn crd_schema() -> serde_json::Value {
    let crd = TaskCluster::crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema");
    serde_json::to_value(schema).expect("json")
}

fn cel_accepts(tc: &serde_json::Value) -> Result<(), String> {
    kube::core::cel::Validator::new().validate(&crd_schema(), tc, None).map_err(|e| format!("{e:?}"))
}

#[test]
fn example_cluster_passes_the_cel_rules_and_the_rust_validation() {
    let text = std::fs::read_to_string(repo().join("manifests/examples/cluster.yaml")).expect("example");
    let value: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    cel_accepts(&value).expect("CEL rules accept the example");
    parse_documents("example", &text);
}

/// A change to a TaskCluster's JSON.
type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn cel_rules_and_rust_validation_reject_the_same_specs() {
    let text = std::fs::read_to_string(repo().join("manifests/examples/cluster.yaml")).expect("example");
    let base: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let cases: Vec<(&str, Mutation)> = vec![
        ("minReplicas > replicas", Box::new(|v| v["spec"]["workerGroups"][0]["minReplicas"] = 5.into())),
        ("replicas > maxReplicas", Box::new(|v| v["spec"]["workerGroups"][0]["maxReplicas"] = 1.into())),
        ("duplicate group names", Box::new(|v| v["spec"]["workerGroups"][1]["name"] = "cpu".into())),
        ("cluster name too long", Box::new(|v| v["metadata"]["name"] = "a".repeat(41).into())),
        ("cluster name not a DNS-1035 label", Box::new(|v| v["metadata"]["name"] = "1demo".into())),
        (
            "head state with both a claim and a size",
            Box::new(|v| v["spec"]["head"]["state"] = serde_json::json!({"claimName": "x", "size": "1Gi"})),
        ),
        ("head state with neither", Box::new(|v| v["spec"]["head"]["state"] = serde_json::json!({}))),
        ("negative head CPUs", Box::new(|v| v["spec"]["head"]["numCpus"] = serde_json::json!(-1))),
    ];
    for (what, mutate) in cases {
        let mut v = base.clone();
        mutate(&mut v);
        assert!(cel_accepts(&v).is_err(), "CEL should reject: {what}");
        let mut tc: TaskCluster = serde_json::from_value(v).expect("still parses");
        tc.metadata.namespace = Some("default".into());
        assert!(shoal_operator::validate::validate(&tc).is_err(), "Rust validation should reject: {what}");
    }
}
