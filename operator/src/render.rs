//! `shoal operator render`: every object the operator would create for the TaskClusters
//! in a file, as YAML, without an API server.
//!
//! The objects come from the same builders the reconciler calls ([`crate::build`]), so
//! what is rendered is what a reconcile applies: the token Secret (with a freshly drawn
//! token, as the operator would draw one), the NetworkPolicy, the head Service, the
//! head's state claim, the head pod and each group's raylet pods. Only what the API
//! server would assign differs: pod names end in `-0`, `-1`, ... instead of a random
//! suffix, and a cluster without a uid gets a placeholder one in its owner references.
//! Tests feed the output to Kubernetes' own JSON schemas (`kubernetes-validate`).

use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::build;
use crate::crd::TaskCluster;
use crate::validate;

/// The uid put in owner references when the rendered cluster has none.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Renders every object for every TaskCluster in `yaml` (one or more documents; other
/// kinds are skipped). The namespace defaults to `default`. Errors name the document and
/// list every problem the operator would report in the cluster's status.
pub fn render(yaml: &str, operator_namespace: Option<&str>) -> Result<String, String> {
    let mut out = String::new();
    let mut clusters = 0;
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("TaskCluster") {
            continue;
        }
        let mut tc: TaskCluster =
            serde_yaml_ng::from_value(value).map_err(|e| format!("document {}: not a TaskCluster: {e}", i + 1))?;
        if tc.metadata.namespace.is_none() {
            tc.metadata.namespace = Some("default".to_string());
        }
        if tc.metadata.uid.is_none() {
            tc.metadata.uid = Some(PLACEHOLDER_UID.to_string());
        }
        let valid = validate::validate(&tc)
            .map_err(|problems| format!("TaskCluster {}: {}", tc.name_any(), problems.join("; ")))?;
        let owner =
            crate::reconcile::owner_ref(&tc).ok_or_else(|| format!("TaskCluster {}: no name", tc.name_any()))?;
        if valid.head.token.create {
            let token = crate::reconcile::new_token().map_err(|e| format!("drawing a token: {e}"))?;
            push(&mut out, &build::token_secret(&valid, &owner, &token))?;
        }
        push(&mut out, &build::network_policy(&valid, &owner, operator_namespace))?;
        push(&mut out, &Some(build::head_service(&valid, &owner)))?;
        push(&mut out, &build::head_state_claim(&valid, &owner))?;
        if !valid.suspend {
            push(&mut out, &Some(build::head_pod(&valid, &owner)))?;
            for g in &valid.groups {
                for n in 0..g.replicas.max(0) {
                    let name = format!("{}-{}-{n}", valid.name, g.name);
                    push(&mut out, &Some(build::raylet_pod(&valid, g, &name, &owner)))?;
                }
            }
        }
        clusters += 1;
    }
    if clusters == 0 {
        return Err("no TaskCluster in the input".to_string());
    }
    Ok(out)
}

/// Appends one object as a YAML document, with its apiVersion and kind.
fn push<K: Resource<DynamicType = ()> + Serialize>(out: &mut String, object: &Option<K>) -> Result<(), String> {
    let Some(object) = object else { return Ok(()) };
    let mut value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    out.push_str("---\n");
    out.push_str(&serde_yaml_ng::to_string(&value).map_err(|e| e.to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_renders_every_object_the_operator_creates() {
        let yaml = include_str!("../../manifests/examples/cluster.yaml");
        let out = render(yaml, Some("shoal-system")).expect("renders");
        let kinds: Vec<String> = serde_yaml_ng::Deserializer::from_str(&out)
            .map(|d| serde_yaml_ng::Value::deserialize(d).expect("yaml")["kind"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(kinds[..4], ["Secret", "NetworkPolicy", "Service", "Pod"]);
        assert!(kinds[4..].iter().all(|k| k == "Pod"), "{kinds:?}");
        assert!(out.contains("name: demo-cpu-0"), "{out}");
        assert!(out.contains(PLACEHOLDER_UID));

        let err = render("kind: ConfigMap\napiVersion: v1\n", None).expect_err("no cluster");
        assert!(err.contains("no TaskCluster"), "{err}");
        let bad = yaml.replacen("  image: ghcr.io/shoal-dev/shoal:0.1.0", "  image: \"\"", 1);
        let err = render(&bad, None).expect_err("invalid");
        assert!(err.contains("spec.image must not be empty"), "{err}");
    }
}
