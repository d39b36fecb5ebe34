//! What the operator would apply, checked against Kubernetes' own JSON schemas:
//! `shoal operator render` prints every object for a TaskCluster (token Secret,
//! NetworkPolicy, Service, state claim, pods) and `kubernetes-validate --strict`
//! (PyPI; installed into the repository's `.venv` when missing) checks each one
//! against the schemas of the oldest Kubernetes release the operator supports.

mod common;

use std::process::Command;

const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.33.1";
/// The Kubernetes release the operator's API types are built for (`k8s-openapi` v1_33).
const KUBERNETES_VERSION: &str = "1.33.0";

fn render(input: &str) -> String {
    let dir = tempdir();
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, input).unwrap();
    let out = Command::new(common::binary())
        .args(["operator", "render", "--operator-namespace", "shoal-system"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "render failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-render-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Runs kubernetes-validate on `yaml`; returns (passed, output).
fn validate(yaml: &str) -> (bool, String) {
    let venv = common::venv("bin/kubernetes-validate", &[KUBERNETES_VALIDATE]);
    let dir = tempdir();
    let file = dir.join("objects.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines().filter_map(|l| l.strip_prefix("kind: ")).map(str::to_string).collect()
}

#[test]
fn every_object_the_operator_creates_passes_the_kubernetes_schemas() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/examples/cluster.yaml"))
        .expect("the example cluster");
    // The example, and a second cluster using what the example does not: a named token
    // Secret, a state claim the operator creates, an open HTTP port, extra head ports.
    let second =
        "---\napiVersion: shoal.dev/v1alpha1\nkind: TaskCluster\nmetadata:\n  name: other\n  namespace: team-a\n\
                  spec:\n  image: ghcr.io/shoal-dev/shoal:0.1.0\n  head:\n    tokenSecret: {name: mine, key: t}\n    \
                  state: {size: 2Gi}\n    ports: [{name: dash, port: 9000}]\n  networkPolicy:\n    \
                  httpFromNamespaces: [\"monitoring\"]\n  workerGroups:\n    - name: cpu\n      replicas: 1\n";
    let rendered = render(&format!("{example}{second}"));
    let (ok, report) = validate(&rendered);
    assert!(ok, "rendered objects fail the Kubernetes schemas:\n{report}\n{rendered}");
    let kinds = kinds(&rendered);
    for kind in ["Secret", "NetworkPolicy", "Service", "PersistentVolumeClaim", "Pod"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| *k == "Secret").count(), 1, "a named Secret is not created");
    assert_eq!(kinds.iter().filter(|k| *k == "NetworkPolicy").count(), 2, "each cluster has its policy");
    // The generated token appears in its Secret only.
    let token = rendered
        .lines()
        .skip_while(|l| !l.starts_with("stringData:"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("token: "))
        .expect("the Secret's token")
        .to_string();
    assert_eq!(token.len(), 64);
    assert_eq!(rendered.matches(&token).count(), 1);

    // The check itself can fail: a pod port out of range is refused.
    let broken = rendered.replacen("containerPort: 6379", "containerPort: \"gcs\"", 1);
    let (ok, report) = validate(&broken);
    assert!(!ok, "a malformed object passes the schemas: {report}");
}

#[test]
fn render_says_what_is_wrong_with_a_bad_cluster() {
    let dir = tempdir();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: shoal.dev/v1alpha1\nkind: TaskCluster\nmetadata: {name: x}\nspec:\n  image: img\n  \
         networkPolicy: {httpFromNamespaces: [\"Bad_Name\"]}\n",
    )
    .unwrap();
    let out = Command::new(common::binary()).args(["operator", "render"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TaskCluster x") && err.contains("\"Bad_Name\" is not a namespace name"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
