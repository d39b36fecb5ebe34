//! Builders: pure functions from a [`ValidCluster`] to the Kubernetes objects it needs.
//!
//! Nothing here talks to the API server, reads the clock or draws random numbers, so the
//! same cluster always builds byte-identical objects. That property is what makes the
//! template hash ([`TEMPLATE_HASH`]) meaningful: a pod whose annotation differs from the
//! hash of what would be built now is out of date and is replaced by the rollout.
//!
//! A user's pod template is the *base* of each pod: the operator fills in the containers
//! it owns (`head`, `raylet`, the init containers, and the command of `worker`), adds its
//! labels, volumes and env, and leaves every other field (node selectors, tolerations,
//! affinity, sidecars, security context, ...) as the user wrote it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::labels::{self, TEMPLATE_HASH};
use crate::quantity::Amount;
use crate::validate::{HeadState, ValidCluster, ValidGroup, WORKER_CONTAINER};

/// GCS gRPC port.
pub const GCS_PORT: i32 = 6379;
/// Head REST API, metrics and health port.
pub const HEAD_HTTP_PORT: i32 = 8265;
/// Raylet gRPC port.
pub const RAYLET_PORT: i32 = 6380;
/// Raylet metrics and health port.
pub const RAYLET_METRICS_PORT: i32 = 8080;

/// Path of the shoal binary in the shoal image.
pub const SHOAL_BIN: &str = "/usr/local/bin/shoal";
/// Where the worker container finds the shoal binary (an emptyDir filled by an init container).
pub const SHARED_BIN_DIR: &str = "/shoal-bin";
/// Directory of the raylet's Unix socket, shared with the worker container.
pub const SOCKET_DIR: &str = "/var/run/shoal";
/// The raylet's Unix socket for external workers.
pub const RAYLET_SOCKET: &str = "/var/run/shoal/raylet.sock";
/// Where the cluster token Secret is mounted, in every container that runs shoal.
pub const TOKEN_DIR: &str = "/var/run/shoal/token";
/// The cluster token file (`--token-file`, `SHOAL_TOKEN_FILE`).
pub const TOKEN_FILE: &str = "/var/run/shoal/token/token";
/// Where raylets spill objects.
pub const SPILL_DIR: &str = "/var/lib/shoal/spill";
/// Where the head keeps its job table, job logs and KV store.
pub const STATE_DIR: &str = "/var/lib/shoal/state";
/// uid, gid and fsGroup of shoal pods unless their template sets a pod securityContext
/// (the distroless image's `nonroot` user).
pub const DEFAULT_UID: i64 = 65532;
/// Seconds the GCS-wait init container waits before failing (and being retried by the kubelet).
pub const GCS_WAIT_TIMEOUT_SECS: u32 = 300;

/// Memory of the raylet container when tasks run in a separate worker container: the
/// object store plus this much for the raylet itself.
const RAYLET_OVERHEAD_BYTES: u64 = 256 * 1024 * 1024;

/// The head Service: GCS, REST/metrics and the user's extra ports, routed to the head pod.
pub fn head_service(cluster: &ValidCluster, owner: &OwnerReference) -> Service {
    let mut ports = vec![service_port("gcs", GCS_PORT), service_port("http", HEAD_HTTP_PORT)];
    ports.extend(cluster.head.ports.iter().map(|p| service_port(&p.name, p.port)));
    Service {
        metadata: ObjectMeta {
            name: Some(labels::head_name(&cluster.name)),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(labels::object_labels(&cluster.name, labels::ROLE_HEAD, None)),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(cluster.head.service_type.as_str().to_string()),
            selector: Some(labels::head_selector(&cluster.name)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The head pod, named `<cluster>-head`, with its template hash.
pub fn head_pod(cluster: &ValidCluster, owner: &OwnerReference) -> Pod {
    let mut template = head_template(cluster);
    let hash = template_hash(&template);
    finish(&mut template, labels::head_name(&cluster.name), cluster, owner, hash);
    template
}

/// Hash of the head pod the cluster wants now.
pub fn head_hash(cluster: &ValidCluster) -> String {
    template_hash(&head_template(cluster))
}

/// A raylet pod of `group` with the given name, with its template hash.
pub fn raylet_pod(cluster: &ValidCluster, group: &ValidGroup, name: &str, owner: &OwnerReference) -> Pod {
    let mut template = raylet_template(cluster, group);
    let hash = template_hash(&template);
    finish(&mut template, name.to_string(), cluster, owner, hash);
    template
}

/// Hash of the raylet pods `group` wants now.
pub fn raylet_hash(cluster: &ValidCluster, group: &ValidGroup) -> String {
    template_hash(&raylet_template(cluster, group))
}

/// `SHOAL_GCS_ADDRESS` of the cluster's raylets.
pub fn gcs_address(cluster: &ValidCluster) -> String {
    format!("{}:{GCS_PORT}", labels::head_service_host(&cluster.name, &cluster.namespace))
}

fn head_template(cluster: &ValidCluster) -> Pod {
    let mut pod =
        base_pod(&cluster.head.template, labels::object_labels(&cluster.name, labels::ROLE_HEAD, None), HEAD_HTTP_PORT);
    let mut args = strings(&[
        "head",
        "--host",
        "0.0.0.0",
        "--gcs-port",
        &GCS_PORT.to_string(),
        "--port",
        &HEAD_HTTP_PORT.to_string(),
    ]);
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    args.extend(strings(&["--token-file", TOKEN_FILE]));
    push_volume(spec, token_volume(cluster));
    let mut mounts = vec![mount("shoal-token", TOKEN_DIR, true)];
    // The head's own raylet: it owns every job the head runs and runs entrypoint
    // drivers, so losing a raylet pod never fails a job. Other raylets reach it at the
    // pod's IP, as they reach each other.
    args.extend(strings(&[
        "--num-cpus",
        &Amount(cluster.head.num_cpus).to_string(),
        "--node-ip",
        "$(POD_IP)",
        "--raylet-port",
        &RAYLET_PORT.to_string(),
        "--raylet-metrics-port",
        &RAYLET_METRICS_PORT.to_string(),
        "--state-dir",
        STATE_DIR,
    ]));
    push_volume(spec, spill_volume(cluster));
    mounts.push(mount("shoal-spill", SPILL_DIR, false));
    push_volume(spec, head_state_volume(cluster));
    mounts.push(mount("shoal-state", STATE_DIR, false));
    let mut ports = vec![
        container_port("gcs", GCS_PORT),
        container_port("http", HEAD_HTTP_PORT),
        container_port("raylet", RAYLET_PORT),
        container_port("metrics", RAYLET_METRICS_PORT),
    ];
    ports.extend(cluster.head.ports.iter().map(|p| container_port(&p.name, p.port)));
    let head = upsert_container(spec, "head");
    shoal_container(head, cluster, args, cluster.head.resources.clone());
    head.ports = Some(ports);
    extend(&mut head.env, node_env());
    head.readiness_probe.get_or_insert_with(|| probe("/readyz", HEAD_HTTP_PORT, 5));
    head.liveness_probe.get_or_insert_with(|| probe("/healthz", HEAD_HTTP_PORT, 10));
    extend(&mut head.volume_mounts, mounts);
    pod
}

/// The cluster token Secret as a volume holding one file, `token`.
fn token_volume(cluster: &ValidCluster) -> Volume {
    let secret = &cluster.head.token.secret;
    Volume {
        name: "shoal-token".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![KeyToPath { key: secret.key.clone(), path: "token".to_string(), mode: None }]),
            // Readable by whatever uid the pod's containers run as (a worker image may
            // use any); the volume is visible only inside this pod.
            default_mode: Some(0o444),
            optional: None,
        }),
        ..Volume::default()
    }
}

/// The token Secret the operator creates when the spec names none, holding `token`
/// (made by the caller: builders draw no random numbers). Owned by the TaskCluster.
pub fn token_secret(cluster: &ValidCluster, owner: &OwnerReference, token: &str) -> Option<Secret> {
    if !cluster.head.token.create {
        return None;
    }
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(cluster.head.token.secret.name.clone()),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(labels::object_labels(&cluster.name, labels::ROLE_HEAD, None)),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        string_data: Some(BTreeMap::from([(cluster.head.token.secret.key.clone(), token.to_string())])),
        ..Secret::default()
    })
}

/// The cluster's NetworkPolicy: the cluster's own pods reach every port of each other
/// (GCS, raylets, object transfers); the HTTP ports (REST API, metrics, the head's extra
/// ports) are reachable from the cluster's namespace, the operator's and those the spec
/// allows. `None` when the spec turns it off.
pub fn network_policy(
    cluster: &ValidCluster,
    owner: &OwnerReference,
    operator_namespace: Option<&str>,
) -> Option<NetworkPolicy> {
    let policy = cluster.network_policy.as_ref()?;
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(labels::CLUSTER.to_string(), cluster.name.clone())])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let http_from = match &policy.http_from {
        None => {
            NetworkPolicyPeer { namespace_selector: Some(LabelSelector::default()), ..NetworkPolicyPeer::default() }
        }
        Some(extra) => {
            let mut namespaces: std::collections::BTreeSet<String> = extra.clone();
            namespaces.insert(cluster.namespace.clone());
            if let Some(ns) = operator_namespace.filter(|ns| !ns.is_empty()) {
                namespaces.insert(ns.to_string());
            }
            NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".to_string(),
                        operator: "In".to_string(),
                        values: Some(namespaces.into_iter().collect()),
                    }]),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }
        }
    };
    let mut http_ports = vec![HEAD_HTTP_PORT, RAYLET_METRICS_PORT];
    http_ports.extend(cluster.head.ports.iter().map(|p| p.port));
    let http_ports = http_ports
        .into_iter()
        .map(|port| NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_string()),
            end_port: None,
        })
        .collect();
    Some(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(cluster.name.clone()),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(labels::object_labels(&cluster.name, labels::ROLE_HEAD, None)),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(labels::CLUSTER.to_string(), cluster.name.clone())])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: Some(vec![own_pods]), ports: None },
                NetworkPolicyIngressRule { from: Some(vec![http_from]), ports: Some(http_ports) },
            ]),
            egress: None,
        }),
    })
}

/// The emptyDir raylets (the head's too) spill objects to.
fn spill_volume(cluster: &ValidCluster) -> Volume {
    Volume {
        name: "shoal-spill".to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: cluster.spill_volume.medium.clone(),
            size_limit: cluster.spill_volume.size_limit.clone(),
        }),
        ..Volume::default()
    }
}

/// What every container running a raylet (the head's too) is told about its pod.
fn node_env() -> Vec<EnvVar> {
    vec![
        field_env("POD_IP", "status.podIP"),
        field_env("SHOAL_NODE_NAME", "metadata.name"),
        env("SHOAL_SPILL_DIR", SPILL_DIR),
    ]
}

/// Name of the claim the operator creates for the head's state.
pub fn head_state_claim_name(cluster: &str) -> String {
    format!("{}-state", labels::head_name(cluster))
}

fn head_state_volume(cluster: &ValidCluster) -> Volume {
    let claim = |name: String| Volume {
        name: "shoal-state".to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: name, read_only: None }),
        ..Volume::default()
    };
    match &cluster.head.state {
        HeadState::EmptyDir => empty_dir("shoal-state"),
        HeadState::Claim(name) => claim(name.clone()),
        HeadState::Create { .. } => claim(head_state_claim_name(&cluster.name)),
    }
}

/// The claim holding the head's state, when the cluster asks the operator to create one.
/// Owned by the TaskCluster: deleting the cluster deletes its state.
pub fn head_state_claim(cluster: &ValidCluster, owner: &OwnerReference) -> Option<PersistentVolumeClaim> {
    let HeadState::Create { size, storage_class } = &cluster.head.state else { return None };
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(head_state_claim_name(&cluster.name)),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(labels::object_labels(&cluster.name, labels::ROLE_HEAD, None)),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size.to_string()))])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

fn raylet_template(cluster: &ValidCluster, group: &ValidGroup) -> Pod {
    let mut pod = base_pod(
        &group.template,
        labels::object_labels(&cluster.name, labels::ROLE_RAYLET, Some(&group.name)),
        RAYLET_METRICS_PORT,
    );
    let node = &group.node;
    let mut args = strings(&[
        "raylet",
        "--gcs",
        "$(SHOAL_GCS_ADDRESS)",
        "--host",
        "0.0.0.0",
        "--node-ip",
        "$(POD_IP)",
        "--port",
        &RAYLET_PORT.to_string(),
        "--metrics-port",
        &RAYLET_METRICS_PORT.to_string(),
        "--token-file",
        TOKEN_FILE,
    ]);
    if let Some(cpus) = node.cpus {
        args.extend(strings(&["--num-cpus", &Amount(cpus).to_string()]));
    }
    args.extend(strings(&["--num-gpus", &Amount(node.gpus).to_string()]));
    if let Some(memory) = node.memory {
        args.extend(strings(&["--memory", &memory.to_string()]));
    }
    if let Some(memory) = node.object_store_memory {
        args.extend(strings(&["--object-store-memory", &memory.to_string()]));
    }
    if !node.custom.is_empty() {
        args.extend(strings(&["--resources", &node.custom_flag()]));
    }
    let node_labels: Vec<String> = group.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    args.extend(strings(&["--labels", &node_labels.join(",")]));
    if group.external_workers {
        args.extend(strings(&["--worker-mode", "external", "--worker-socket", RAYLET_SOCKET]));
    }

    let gcs_env = env("SHOAL_GCS_ADDRESS", &gcs_address(cluster));
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    push_volume(spec, spill_volume(cluster));
    push_volume(spec, token_volume(cluster));
    let mut raylet_mounts = vec![mount("shoal-spill", SPILL_DIR, false), mount("shoal-token", TOKEN_DIR, true)];

    // Init: wait until the GCS accepts connections, so raylets never crash-loop while the
    // head starts (and rejoin a recreated head through the same Service name).
    let mut init = Vec::new();
    let mut wait = Container {
        name: "wait-for-gcs".to_string(),
        command: Some(vec![SHOAL_BIN.to_string()]),
        args: Some(strings(&["wait-for", "$(SHOAL_GCS_ADDRESS)", "--timeout", &GCS_WAIT_TIMEOUT_SECS.to_string()])),
        env: Some(vec![gcs_env.clone()]),
        ..Container::default()
    };
    image_of(&mut wait, cluster);
    init.push(wait);

    let raylet_resources = if group.external_workers {
        push_volume(spec, empty_dir("shoal-bin"));
        push_volume(spec, empty_dir("shoal-socket"));
        raylet_mounts.push(mount("shoal-socket", SOCKET_DIR, false));
        let mut install = Container {
            name: "install-shoal".to_string(),
            // The image holds a single static `cp` next to shoal for exactly this copy.
            command: Some(strings(&["cp", SHOAL_BIN, &format!("{SHARED_BIN_DIR}/shoal")])),
            volume_mounts: Some(vec![mount("shoal-bin", SHARED_BIN_DIR, false)]),
            ..Container::default()
        };
        image_of(&mut install, cluster);
        init.push(install);
        let worker = upsert_container(spec, WORKER_CONTAINER);
        worker.command = Some(strings(&[
            &format!("{SHARED_BIN_DIR}/shoal"),
            "worker",
            "--raylet-socket",
            RAYLET_SOCKET,
            "--num-workers",
            &node.worker_processes().to_string(),
        ]));
        worker.args = None;
        worker.security_context.get_or_insert_with(restricted_container_context);
        if worker.resources.is_none() {
            worker.resources = group.resources.clone();
        }
        // The worker presents the token in its hello on the raylet's socket.
        extend(&mut worker.env, vec![env("SHOAL_TOKEN_FILE", TOKEN_FILE)]);
        extend(
            &mut worker.volume_mounts,
            vec![
                mount("shoal-bin", SHARED_BIN_DIR, true),
                mount("shoal-socket", SOCKET_DIR, false),
                mount("shoal-token", TOKEN_DIR, true),
            ],
        );
        // The raylet itself needs little CPU; its memory is the object store plus overhead.
        let memory = node.object_store_memory.unwrap_or(0) + RAYLET_OVERHEAD_BYTES;
        Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".to_string())),
                ("memory".to_string(), Quantity(memory.to_string())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity(memory.to_string()))])),
            ..ResourceRequirements::default()
        })
    } else {
        group.resources.clone()
    };
    let mut user_init = spec.init_containers.take().unwrap_or_default();
    init.append(&mut user_init);
    spec.init_containers = Some(init);

    let raylet = upsert_container(spec, "raylet");
    shoal_container(raylet, cluster, args, raylet_resources);
    raylet.ports = Some(vec![container_port("raylet", RAYLET_PORT), container_port("metrics", RAYLET_METRICS_PORT)]);
    extend(&mut raylet.env, std::iter::once(gcs_env).chain(node_env()).collect());
    raylet.readiness_probe.get_or_insert_with(|| probe("/readyz", RAYLET_METRICS_PORT, 5));
    raylet.liveness_probe.get_or_insert_with(|| probe("/healthz", RAYLET_METRICS_PORT, 10));
    extend(&mut raylet.volume_mounts, raylet_mounts);
    pod
}

/// Starts a pod from the user's template, adds the operator's labels and the scrape
/// annotations, and defaults the pod-level security context to non-root.
fn base_pod(
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    own_labels: BTreeMap<String, String>,
    metrics_port: i32,
) -> Pod {
    let mut metadata = template.metadata.clone().unwrap_or_default();
    let mut pod_labels = metadata.labels.take().unwrap_or_default();
    pod_labels.extend(own_labels);
    metadata.labels = Some(pod_labels);
    let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", metrics_port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        annotations.entry(k.to_string()).or_insert(v);
    }
    let mut spec = template.spec.clone().unwrap_or_default();
    // A numeric uid, so images whose default user is root (most Python images) still
    // start under runAsNonRoot; fsGroup makes the shared volumes usable by it.
    spec.security_context.get_or_insert_with(|| PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(DEFAULT_UID),
        run_as_group: Some(DEFAULT_UID),
        fs_group: Some(DEFAULT_UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None }),
        ..PodSecurityContext::default()
    });
    // No shoal pod calls the API server.
    spec.automount_service_account_token.get_or_insert(false);
    Pod { metadata, spec: Some(spec), status: None }
}

/// Sets what every container running the shoal image has.
fn shoal_container(
    c: &mut Container,
    cluster: &ValidCluster,
    args: Vec<String>,
    resources: Option<ResourceRequirements>,
) {
    image_of(c, cluster);
    c.command = Some(vec![SHOAL_BIN.to_string()]);
    c.args = Some(args);
    if c.resources.is_none() {
        c.resources = resources;
    }
}

/// The shoal image and pull policy, unless the user's template names its own, and a
/// restrictive container security context unless the template sets one.
fn image_of(c: &mut Container, cluster: &ValidCluster) {
    if c.image.as_deref().unwrap_or("").is_empty() {
        c.image = Some(cluster.image.clone());
    }
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = cluster.image_pull_policy.map(|p| p.as_str().to_string());
    }
    c.security_context.get_or_insert_with(restricted_container_context);
}

/// The container security context of the restricted Pod Security profile.
fn restricted_container_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
        ..SecurityContext::default()
    }
}

/// Sets name, namespace, owner and hash on a built template.
fn finish(pod: &mut Pod, name: String, cluster: &ValidCluster, owner: &OwnerReference, hash: String) {
    pod.metadata.name = Some(name);
    pod.metadata.namespace = Some(cluster.namespace.clone());
    pod.metadata.owner_references = Some(vec![owner.clone()]);
    pod.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(TEMPLATE_HASH.to_string(), hash);
}

/// FNV-1a (64-bit) of the pod's JSON: stable across Rust releases and operator restarts,
/// unlike `std`'s hasher, so an operator upgrade alone never triggers a rollout.
pub fn template_hash(pod: &Pod) -> String {
    let bytes = serde_json::to_vec(pod).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn upsert_container<'a>(spec: &'a mut PodSpec, name: &str) -> &'a mut Container {
    let index = match spec.containers.iter().position(|c| c.name == name) {
        Some(i) => i,
        None => {
            // The operator's containers go first so `kubectl logs` picks them by default.
            spec.containers.insert(0, Container { name: name.to_string(), ..Container::default() });
            0
        }
    };
    &mut spec.containers[index]
}

fn push_volume(spec: &mut PodSpec, volume: Volume) {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == volume.name) {
        volumes.push(volume);
    }
}

/// Appends items whose name the list does not have yet (the user's entries win).
fn extend<T: Named>(list: &mut Option<Vec<T>>, items: Vec<T>) {
    let list = list.get_or_insert_with(Vec::new);
    for item in items {
        if !list.iter().any(|x| x.key() == item.key()) {
            list.push(item);
        }
    }
}

trait Named {
    fn key(&self) -> &str;
}
impl Named for EnvVar {
    fn key(&self) -> &str {
        &self.name
    }
}
impl Named for VolumeMount {
    fn key(&self) -> &str {
        &self.mount_path
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.to_string()), value_from: None }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.to_string(), api_version: None }),
            ..EnvVarSource::default()
        }),
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.to_string(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

fn probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "shoal.dev/v1alpha1".into(),
            kind: "TaskCluster".into(),
            name: "demo".into(),
            uid: "tc-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
        pod.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == name)).expect("container")
    }

    #[test]
    fn the_head_pod_runs_the_heads_raylet_and_keeps_its_state_on_a_volume() {
        let (valid, _) = fixtures::valid_and_desired();
        let pod = head_pod(&valid, &owner());
        let head = container(&pod, "head");
        let args = head.args.clone().unwrap_or_default().join(" ");
        assert!(
            args.ends_with(
                "--num-cpus 0 --node-ip $(POD_IP) --raylet-port 6380 --raylet-metrics-port 8080 \
                 --state-dir /var/lib/shoal/state"
            ),
            "{args}"
        );
        let ports: Vec<i32> = head.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(&ports[..4], [6379, 8265, 6380, 8080]);
        let env: Vec<&str> = head.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert!(env.contains(&"POD_IP") && env.contains(&"SHOAL_SPILL_DIR"), "{env:?}");
        let volume = |pod: &Pod| {
            pod.spec
                .as_ref()
                .and_then(|s| s.volumes.clone())
                .unwrap_or_default()
                .into_iter()
                .find(|v| v.name == "shoal-state")
        };
        assert!(volume(&pod).and_then(|v| v.empty_dir).is_some(), "an emptyDir by default");
        let mounts: Vec<&str> = head.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert!(mounts.contains(&STATE_DIR) && mounts.contains(&SPILL_DIR), "{mounts:?}");
        assert!(head_state_claim(&valid, &owner()).is_none(), "no claim unless asked for");

        let mut asked = valid.clone();
        asked.head.num_cpus = 2.0;
        asked.head.state = HeadState::Create { size: 1 << 30, storage_class: Some("fast".into()) };
        let pod = head_pod(&asked, &owner());
        let args = container(&pod, "head").args.clone().unwrap_or_default().join(" ");
        assert!(args.contains("--num-cpus 2 "), "{args}");
        let claim = volume(&pod).and_then(|v| v.persistent_volume_claim).expect("a claim");
        assert_eq!(claim.claim_name, "demo-head-state");
        let pvc = head_state_claim(&asked, &owner()).expect("the claim the operator creates");
        assert_eq!(pvc.metadata.name.as_deref(), Some("demo-head-state"));
        assert_eq!(pvc.metadata.owner_references, Some(vec![owner()]));
        let spec = pvc.spec.expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.resources.and_then(|r| r.requests).expect("requests")["storage"].0, "1073741824");
        asked.head.state = HeadState::Claim("mine".into());
        let claim = volume(&head_pod(&asked, &owner())).and_then(|v| v.persistent_volume_claim).expect("a claim");
        assert_eq!(claim.claim_name, "mine");
        assert!(head_state_claim(&asked, &owner()).is_none(), "an existing claim is not created");
    }

    #[test]
    fn raylet_flags_come_from_the_group_resources() {
        let (valid, _) = fixtures::valid_and_desired();
        let pod = raylet_pod(&valid, &valid.groups[0], "demo-cpu-abcde", &owner());
        let raylet = container(&pod, "raylet");
        assert_eq!(
            raylet.args.clone().unwrap_or_default().join(" "),
            "raylet --gcs $(SHOAL_GCS_ADDRESS) --host 0.0.0.0 --node-ip $(POD_IP) --port 6380 --metrics-port 8080 \
             --token-file /var/run/shoal/token/token --num-cpus 2 --num-gpus 0 --memory 4294967296 --object-store-memory 1073741824 \
             --labels shoal.dev/group=cpu,tier=general"
        );
        let env: Vec<&str> = raylet.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["SHOAL_GCS_ADDRESS", "POD_IP", "SHOAL_NODE_NAME", "SHOAL_SPILL_DIR"]);
        assert_eq!(raylet.env.as_ref().expect("env")[0].value.as_deref(), Some("demo-head.default.svc:6379"));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["shoal.dev/cluster"], "demo");
        assert_eq!(labels["shoal.dev/group"], "cpu");
        assert_eq!(labels["shoal.dev/role"], "raylet");
        assert_eq!(pod.metadata.owner_references, Some(vec![owner()]));
        let init = pod.spec.as_ref().and_then(|s| s.init_containers.clone()).unwrap_or_default();
        assert_eq!(init[0].args.clone().unwrap_or_default().join(" "), "wait-for $(SHOAL_GCS_ADDRESS) --timeout 300");
        assert_eq!(
            raylet.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.as_deref()),
            Some("/readyz")
        );
    }

    #[test]
    fn worker_container_gets_the_shared_binary_and_the_raylet_socket() {
        let (valid, _) = fixtures::valid_and_desired();
        let pod = raylet_pod(&valid, &valid.groups[1], "demo-gpu-abcde", &owner());
        let raylet_args = container(&pod, "raylet").args.clone().unwrap_or_default().join(" ");
        assert!(raylet_args.contains("--num-cpus 4 --num-gpus 1 --memory 17179869184 --object-store-memory 1073741824 --resources accel=1,example.com/fpga=2"), "{raylet_args}");
        assert!(
            raylet_args.ends_with("--worker-mode external --worker-socket /var/run/shoal/raylet.sock"),
            "{raylet_args}"
        );
        let worker = container(&pod, "worker");
        assert_eq!(worker.image.as_deref(), Some("python:3.12-slim"));
        assert_eq!(
            worker.command.clone().unwrap_or_default().join(" "),
            "/shoal-bin/shoal worker --raylet-socket /var/run/shoal/raylet.sock --num-workers 4"
        );
        assert_eq!(worker.resources, valid.groups[1].resources);
        let init: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(init, ["wait-for-gcs", "install-shoal"]);
        // The user's tolerations survive.
        assert!(pod.spec.as_ref().and_then(|s| s.tolerations.as_ref()).is_some());
    }

    #[test]
    fn head_pod_and_service_expose_gcs_and_http() {
        let (mut valid, _) = fixtures::valid_and_desired();
        valid.head.token = crate::validate::ClusterToken {
            secret: crate::crd::SecretKeyRef { name: "tok".into(), key: "token".into() },
            create: false,
        };
        let pod = head_pod(&valid, &owner());
        let head = container(&pod, "head");
        assert_eq!(
            head.args.clone().unwrap_or_default().join(" "),
            "head --host 0.0.0.0 --gcs-port 6379 --port 8265 --token-file /var/run/shoal/token/token \
             --num-cpus 0 --node-ip $(POD_IP) --raylet-port 6380 --raylet-metrics-port 8080 \
             --state-dir /var/lib/shoal/state"
        );
        assert_eq!(pod.metadata.name.as_deref(), Some("demo-head"));
        let svc = head_service(&valid, &owner());
        let ports: Vec<i32> = svc.spec.and_then(|s| s.ports).unwrap_or_default().iter().map(|p| p.port).collect();
        assert_eq!(ports, [6379, 8265]);
    }

    #[test]
    fn building_is_deterministic_and_the_hash_follows_the_spec() {
        let (valid, _) = fixtures::valid_and_desired();
        assert_eq!(raylet_hash(&valid, &valid.groups[0]), raylet_hash(&valid, &valid.groups[0]));
        assert_ne!(raylet_hash(&valid, &valid.groups[0]), raylet_hash(&valid, &valid.groups[1]));
        let mut changed = valid.clone();
        changed.image = "other:1".into();
        assert_ne!(head_hash(&valid), head_hash(&changed));
        assert_ne!(raylet_hash(&valid, &valid.groups[0]), raylet_hash(&changed, &changed.groups[0]));
        // The pod name is not part of the hash: every pod of a group shares it.
        let a = raylet_pod(&valid, &valid.groups[0], "a", &owner());
        let b = raylet_pod(&valid, &valid.groups[0], "b", &owner());
        assert_eq!(a.metadata.annotations, b.metadata.annotations);
    }

    #[test]
    fn every_container_running_shoal_reads_the_token_from_the_mounted_secret() {
        let (valid, _) = fixtures::valid_and_desired();
        assert!(valid.head.token.create, "no tokenSecret: the operator makes one");
        let head = head_pod(&valid, &owner());
        let cpu = raylet_pod(&valid, &valid.groups[0], "demo-cpu-abcde", &owner());
        let gpu = raylet_pod(&valid, &valid.groups[1], "demo-gpu-abcde", &owner());
        for (pod, containers) in [(&head, &["head"][..]), (&cpu, &["raylet"][..]), (&gpu, &["raylet", "worker"][..])] {
            let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
            let secret =
                volumes.iter().find(|v| v.name == "shoal-token").and_then(|v| v.secret.clone()).expect("volume");
            assert_eq!(secret.secret_name.as_deref(), Some("demo-token"));
            for name in containers {
                let c = container(pod, name);
                let mounted =
                    c.volume_mounts.iter().flatten().any(|m| m.mount_path == TOKEN_DIR && m.read_only == Some(true));
                assert!(mounted, "{name} mounts the token read-only");
                let args = c.args.clone().unwrap_or_default().join(" ");
                let env = c
                    .env
                    .iter()
                    .flatten()
                    .any(|e| e.name == "SHOAL_TOKEN_FILE" && e.value.as_deref() == Some(TOKEN_FILE));
                assert!(args.contains("--token-file /var/run/shoal/token/token") || env, "{name}: {args}");
            }
        }
        let secret = token_secret(&valid, &owner(), "t0k").expect("a Secret to create");
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-token"));
        assert_eq!(secret.metadata.owner_references, Some(vec![owner()]));
        assert_eq!(secret.string_data.expect("data")["token"], "t0k");
        let mut named = valid.clone();
        named.head.token = crate::validate::ClusterToken {
            secret: crate::crd::SecretKeyRef { name: "mine".into(), key: "k".into() },
            create: false,
        };
        assert!(token_secret(&named, &owner(), "t0k").is_none(), "a named Secret is the user's");
    }

    #[test]
    fn the_network_policy_admits_only_the_clusters_pods_to_its_ports_and_chosen_namespaces_to_http() {
        let (mut valid, _) = fixtures::valid_and_desired();
        let policy = network_policy(&valid, &owner(), Some("shoal-system")).expect("on by default");
        assert_eq!(policy.metadata.owner_references, Some(vec![owner()]));
        let spec = policy.spec.expect("spec");
        let selector = spec.pod_selector.and_then(|s| s.match_labels).expect("selector");
        assert_eq!(selector["shoal.dev/cluster"], "demo");
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = spec.ingress.expect("rules");
        assert_eq!(rules.len(), 2);
        // Rule 1: the cluster's own pods, every port.
        assert!(rules[0].ports.is_none());
        let own = rules[0].from.clone().expect("from");
        assert_eq!(own.len(), 1);
        assert!(own[0].namespace_selector.is_none(), "same namespace only");
        assert_eq!(
            own[0].pod_selector.clone().and_then(|s| s.match_labels).expect("labels")["shoal.dev/cluster"],
            "demo"
        );
        // Rule 2: HTTP ports, from the cluster's and the operator's namespaces.
        let ports: Vec<IntOrString> = rules[1].ports.iter().flatten().filter_map(|p| p.port.clone()).collect();
        assert_eq!(ports, [IntOrString::Int(8265), IntOrString::Int(8080)]);
        let from = rules[1].from.clone().expect("from");
        let names = |from: &[NetworkPolicyPeer]| {
            from[0].namespace_selector.clone().and_then(|s| s.match_expressions).expect("expressions")[0]
                .values
                .clone()
                .unwrap_or_default()
        };
        assert_eq!(names(&from), ["default", "shoal-system"]);

        valid.network_policy = Some(crate::validate::ValidNetworkPolicy {
            http_from: Some(["monitoring".to_string()].into_iter().collect()),
        });
        let rules = network_policy(&valid, &owner(), None).and_then(|p| p.spec).and_then(|s| s.ingress).expect("rules");
        assert_eq!(names(&rules[1].from.clone().expect("from")), ["default", "monitoring"]);
        valid.network_policy = Some(crate::validate::ValidNetworkPolicy { http_from: None });
        let rules = network_policy(&valid, &owner(), None).and_then(|p| p.spec).and_then(|s| s.ingress).expect("rules");
        let any = rules[1].from.clone().expect("from")[0].namespace_selector.clone().expect("selector");
        assert_eq!(any, LabelSelector::default(), "\"*\": every namespace");
        valid.network_policy = None;
        assert!(network_policy(&valid, &owner(), None).is_none());
    }

    /// The rules of the restricted Pod Security profile (and the kubelet's runAsNonRoot
    /// check) that a pod's spec decides; returns every violation.
    fn restricted_violations(pod: &Pod) -> Vec<String> {
        let spec = pod.spec.as_ref().expect("spec");
        let pod_ctx = spec.security_context.clone().unwrap_or_default();
        let mut v = Vec::new();
        if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
            v.push("host namespaces".to_string());
        }
        if spec.automount_service_account_token != Some(false) {
            v.push("a service account token is mounted".to_string());
        }
        for vol in spec.volumes.iter().flatten() {
            let allowed = vol.empty_dir.is_some()
                || vol.secret.is_some()
                || vol.config_map.is_some()
                || vol.persistent_volume_claim.is_some()
                || vol.projected.is_some()
                || vol.downward_api.is_some();
            if !allowed {
                v.push(format!("volume {} has a restricted type", vol.name));
            }
        }
        let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
        for c in all {
            let ctx = c.security_context.clone().unwrap_or_default();
            let non_root = ctx.run_as_non_root.or(pod_ctx.run_as_non_root) == Some(true);
            // The kubelet refuses runAsNonRoot without a numeric non-zero uid when the
            // image's user is root (or a name): the uid must be set here.
            let uid = ctx.run_as_user.or(pod_ctx.run_as_user);
            if !non_root || uid.is_none() || uid == Some(0) {
                v.push(format!("{}: not a numeric non-root uid ({uid:?})", c.name));
            }
            if ctx.allow_privilege_escalation != Some(false) {
                v.push(format!("{}: allowPrivilegeEscalation is not false", c.name));
            }
            if ctx.privileged == Some(true) {
                v.push(format!("{}: privileged", c.name));
            }
            let caps = ctx.capabilities.unwrap_or_default();
            if !caps.drop.unwrap_or_default().iter().any(|d| d == "ALL") {
                v.push(format!("{}: capabilities do not drop ALL", c.name));
            }
            if caps.add.unwrap_or_default().iter().any(|a| a != "NET_BIND_SERVICE") {
                v.push(format!("{}: adds capabilities", c.name));
            }
            let seccomp = ctx.seccomp_profile.or(pod_ctx.seccomp_profile.clone()).map(|p| p.type_);
            if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
                v.push(format!("{}: no seccomp profile", c.name));
            }
            if c.ports.iter().flatten().any(|p| p.host_port.is_some()) {
                v.push(format!("{}: host ports", c.name));
            }
        }
        v
    }

    #[test]
    fn every_pod_meets_the_restricted_pod_security_profile_with_any_image() {
        let (valid, _) = fixtures::valid_and_desired();
        let pods = [
            head_pod(&valid, &owner()),
            raylet_pod(&valid, &valid.groups[0], "demo-cpu-abcde", &owner()),
            // The gpu group's worker container runs python:3.12-slim, whose user is root.
            raylet_pod(&valid, &valid.groups[1], "demo-gpu-abcde", &owner()),
        ];
        for pod in &pods {
            let v = restricted_violations(pod);
            assert!(v.is_empty(), "{:?}: {v:?}", pod.metadata.name);
            let ctx = pod.spec.as_ref().and_then(|s| s.security_context.clone()).expect("pod context");
            assert_eq!((ctx.run_as_user, ctx.run_as_group, ctx.fs_group), (Some(65532), Some(65532), Some(65532)));
        }
        // The check bites: a worker container whose template sets a context of its own
        // (here: root) keeps it, and is reported.
        let mut root = valid.clone();
        let worker = root.groups[1]
            .template
            .spec
            .as_mut()
            .and_then(|s| s.containers.iter_mut().find(|c| c.name == "worker"))
            .expect("worker");
        worker.security_context = Some(SecurityContext { run_as_user: Some(0), ..SecurityContext::default() });
        let pod = raylet_pod(&root, &root.groups[1], "demo-gpu-abcde", &owner());
        let v = restricted_violations(&pod);
        assert!(v.iter().any(|m| m.starts_with("worker: not a numeric non-root uid")), "{v:?}");
        assert!(v.iter().any(|m| m.starts_with("worker: allowPrivilegeEscalation")), "{v:?}");
    }
}
