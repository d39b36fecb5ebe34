//! The reconciler: validate → build → server-side apply → status, for one TaskCluster.
//!
//! Each step but the API calls is a pure function in its own module ([`crate::validate`],
//! [`crate::build`], [`crate::plan`], [`crate::status`]); this module only reads the pod
//! cache, makes the calls in a fixed order (the token Secret when the operator owns it,
//! the NetworkPolicy, the head Service, the head's state claim, then the planned pod
//! creates and deletes, then the status), records expectations and Events, and stops at the first
//! failed call so a failing API (quota, webhook) is not hammered. A failure is written to
//! the `ReplicaFailure` condition and an Event, and the error makes the controller retry
//! with backoff; the next successful pass clears the condition.
//!
//! Every object is written with server-side apply under one field manager
//! ([`FIELD_MANAGER`]); pods are only ever applied when absent, since a pod's spec cannot
//! change: an outdated pod is deleted and a new one created.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::build;
use crate::crd::TaskCluster;
use crate::error::Error;
use crate::expectations::Expectations;
use crate::head::NodeSource;
use crate::labels::{self, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::plan::{self, DeleteReason, Desired, DesiredGroup, PodAction, PodView};
use crate::status::{self, Failure, Observation};
use crate::validate::{self, ValidCluster};

/// How often a settled cluster is reconciled even without events (a safety net for lost
/// watch events and for head-side changes such as idleness).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// How long the controller waits before retrying a failed reconcile.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Characters of the random pod-name suffix (no vowels: no accidental words; as Kubernetes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Everything a reconcile needs besides the cluster.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Cache of every shoal pod (label `shoal.dev/cluster` present).
    pub pods: Store<Pod>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Unobserved creates and deletes.
    pub expectations: Expectations,
    /// Where idle nodes are learnt.
    pub nodes: Arc<dyn NodeSource>,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Port of the heads' REST API.
    pub head_port: u16,
    /// The operator's namespace, let through each cluster's NetworkPolicy to the REST API.
    pub operator_namespace: Option<String>,
    names: Mutex<fastrand::Rng>,
    clock: fn() -> Timestamp,
}

impl Context {
    /// A context with random pod names and the real clock.
    pub fn new(
        client: Client,
        pods: Store<Pod>,
        recorder: Recorder,
        nodes: Arc<dyn NodeSource>,
        metrics: Arc<Metrics>,
        head_port: u16,
    ) -> Self {
        Self::with_determinism(client, pods, recorder, nodes, metrics, head_port, fastrand::Rng::new(), Timestamp::now)
    }

    /// A context with a given random source for pod names and a given clock (for tests).
    #[allow(clippy::too_many_arguments)]
    pub fn with_determinism(
        client: Client,
        pods: Store<Pod>,
        recorder: Recorder,
        nodes: Arc<dyn NodeSource>,
        metrics: Arc<Metrics>,
        head_port: u16,
        rng: fastrand::Rng,
        clock: fn() -> Timestamp,
    ) -> Self {
        Self {
            client,
            pods,
            recorder,
            expectations: Expectations::default(),
            nodes,
            metrics,
            head_port,
            operator_namespace: None,
            names: Mutex::new(rng),
            clock,
        }
    }

    /// Names the operator's namespace (empty: unknown, as outside a cluster).
    pub fn with_operator_namespace(mut self, namespace: &str) -> Self {
        self.operator_namespace = (!namespace.is_empty()).then(|| namespace.to_string());
        self
    }

    fn pod_name(&self, cluster: &str, group: &str, taken: &[PodView]) -> String {
        let mut rng = self.names.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let suffix: String =
                (0..5).map(|_| char::from(SUFFIX_ALPHABET[rng.usize(..SUFFIX_ALPHABET.len())])).collect();
            let name = format!("{cluster}-{group}-{suffix}");
            if !taken.iter().any(|p| p.name == name) {
                return name;
            }
        }
    }
}

/// Reconciles one TaskCluster (the controller's reconcile function).
pub async fn reconcile(cluster: Arc<TaskCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_cluster(&cluster, &ctx).await;
    ctx.metrics.record(started, &result);
    result
}

/// What the controller does after a failed reconcile.
pub fn error_policy(cluster: Arc<TaskCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(cluster = %cluster.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(RETRY_INTERVAL)
}

/// The desired state the planner compares pods with.
pub fn desired(cluster: &ValidCluster) -> Desired {
    Desired {
        suspend: cluster.suspend,
        head_hash: build::head_hash(cluster),
        groups: cluster
            .groups
            .iter()
            .map(|g| DesiredGroup {
                name: g.name.clone(),
                replicas: g.replicas.max(0) as usize,
                hash: build::raylet_hash(cluster, g),
            })
            .collect(),
    }
}

async fn reconcile_cluster(tc: &TaskCluster, ctx: &Context) -> Result<Action, Error> {
    let name = tc.name_any();
    let (Some(namespace), Some(uid), Some(owner)) = (tc.namespace(), tc.uid(), owner_ref(tc)) else {
        return Err(Error::IncompleteObject(name));
    };
    let key = (namespace.clone(), name.clone());
    if tc.metadata.deletion_timestamp.is_some() {
        // Pods and the Service go with the cluster through their owner references.
        ctx.expectations.forget(&key);
        return Ok(Action::await_change());
    }
    let events = Events { recorder: &ctx.recorder, regarding: tc.object_ref(&()) };
    let cached: Vec<PodView> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| p.labels().get(labels::CLUSTER) == Some(&name))
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
        .filter_map(|p| PodView::from_pod(p))
        .collect();
    // The cache is unordered; sorting keeps plans (and so the calls made) deterministic.
    let mut cached = cached;
    cached.sort_by(|a, b| a.name.cmp(&b.name));
    let mut pods = ctx.expectations.adjust(&key, cached);
    let now = (ctx.clock)();

    let valid = match validate::validate(tc) {
        Ok(valid) => valid,
        Err(problems) => {
            let obs = Observation {
                generation: tc.metadata.generation,
                cluster: Err(&problems),
                pods: &pods,
                failure: None,
                now,
            };
            let new = status::compute(tc.status.as_ref(), &obs);
            if tc.status.as_ref() != Some(&new) {
                events.warn("InvalidSpec", "Validate", problems.join("; "), None).await;
                patch_status(ctx, tc, &namespace, &new).await?;
            }
            return Ok(Action::await_change());
        }
    };
    let desired = desired(&valid);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut failure = None;

    // The token Secret first: every pod mounts it. Then the NetworkPolicy, before
    // anything it guards can be reached.
    let mut token = None;
    if valid.head.token.create {
        match ensure_token_secret(ctx, &valid, &owner, &events).await {
            Ok(t) => token = t,
            Err(f) => failure = Some(f),
        }
    }

    // The NetworkPolicy, or its removal when the spec turns it off.
    if failure.is_none() {
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        let result = match build::network_policy(&valid, &owner, ctx.operator_namespace.as_deref()) {
            Some(policy) => policies.patch(&name, &apply, &Patch::Apply(&policy)).await.map(|_| ()),
            None => match policies.delete(&name, &DeleteParams::default()).await {
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                other => other.map(|_| ()),
            },
        };
        if let Err(e) = result {
            let message = format!("applying NetworkPolicy {name}: {e}");
            events.warn("FailedApply", "Apply", message.clone(), None).await;
            failure = Some(Failure { reason: "FailedApply", message });
        }
    }

    // The Service stays while suspended, so the cluster's address never changes.
    if failure.is_none() {
        let service = build::head_service(&valid, &owner);
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Err(e) = services.patch(&labels::head_name(&name), &apply, &Patch::Apply(&service)).await {
            let message = format!("applying Service {}: {e}", labels::head_name(&name));
            events.warn("FailedApply", "Apply", message.clone(), None).await;
            failure = Some(Failure { reason: "FailedApply", message });
        }
    }

    // The head's state claim, when the operator creates it: before the head pod that mounts it.
    if let (None, Some(claim)) = (&failure, build::head_state_claim(&valid, &owner)) {
        let claim_name = build::head_state_claim_name(&name);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Err(e) = claims.patch(&claim_name, &apply, &Patch::Apply(&claim)).await {
            let message = format!("applying PersistentVolumeClaim {claim_name}: {e}");
            events.warn("FailedApply", "Apply", message.clone(), None).await;
            failure = Some(Failure { reason: "FailedApply", message });
        }
    }

    if failure.is_none() {
        let idle =
            if plan::wants_idle_nodes(&desired, &pods) { idle_pods(ctx, &valid, token).await } else { BTreeSet::new() };
        for action in plan::plan(&desired, &pods, &idle) {
            match action {
                PodAction::CreateHead => {
                    let pod = build::head_pod(&valid, &owner);
                    let pod_name = labels::head_name(&name);
                    let result = pods_api.patch(&pod_name, &apply, &Patch::Apply(&pod)).await;
                    if let Err(f) =
                        created(ctx, &events, &key, &mut pods, result, &pod_name, None, &desired.head_hash).await
                    {
                        failure = Some(f);
                        break;
                    }
                }
                PodAction::CreateRaylet { group } => {
                    let Some(g) = valid.groups.iter().find(|g| g.name == group) else {
                        continue;
                    };
                    let pod_name = ctx.pod_name(&name, &group, &pods);
                    let pod = build::raylet_pod(&valid, g, &pod_name, &owner);
                    let hash = build::raylet_hash(&valid, g);
                    let result = pods_api.patch(&pod_name, &apply, &Patch::Apply(&pod)).await;
                    if let Err(f) = created(ctx, &events, &key, &mut pods, result, &pod_name, Some(&group), &hash).await
                    {
                        failure = Some(f);
                        break;
                    }
                }
                PodAction::Delete { name: pod_name, uid, reason } => {
                    if let Err(f) = delete(ctx, &events, &key, &pods_api, &mut pods, &pod_name, uid, reason).await {
                        failure = Some(f);
                        break;
                    }
                }
            }
        }
    }

    let obs = Observation {
        generation: tc.metadata.generation,
        cluster: Ok((&valid, &desired)),
        pods: &pods,
        failure: failure.as_ref(),
        now,
    };
    let new = status::compute(tc.status.as_ref(), &obs);
    if tc.status.as_ref() != Some(&new) {
        patch_status(ctx, tc, &namespace, &new).await?;
    }
    match failure {
        Some(f) => Err(Error::Replica { cluster: format!("{namespace}/{name}"), message: f.message }),
        None => Ok(Action::requeue(RESYNC_INTERVAL)),
    }
}

/// The owner reference every object of the cluster carries: controller, and
/// blocking the owner's deletion until it is gone.
pub(crate) fn owner_ref(tc: &TaskCluster) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let owner = tc.controller_owner_ref(&())?;
    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference { block_owner_deletion: Some(true), ..owner })
}

/// Records the outcome of a pod create.
#[allow(clippy::too_many_arguments)]
async fn created(
    ctx: &Context,
    events: &Events<'_>,
    key: &(String, String),
    pods: &mut Vec<PodView>,
    result: Result<Pod, kube::Error>,
    pod_name: &str,
    group: Option<&str>,
    hash: &str,
) -> Result<(), Failure> {
    let what = match group {
        None => "head pod".to_string(),
        Some(g) => format!("raylet pod of group {g}"),
    };
    match result {
        Ok(_) => {
            ctx.metrics.pod_actions.with_label_values(&["create", "ok"]).inc();
            ctx.expectations.expect_create(key, pod_name, group, hash);
            pods.push(PodView::expected(pod_name, group, hash));
            events.normal("Created", "Create", format!("created {what} {pod_name}"), Some(pod_name)).await;
            Ok(())
        }
        Err(e) => {
            ctx.metrics.pod_actions.with_label_values(&["create", "error"]).inc();
            let message = format!("creating {what} {pod_name}: {e}");
            events.warn("FailedCreate", "Create", message.clone(), Some(pod_name)).await;
            Err(Failure { reason: "FailedCreate", message })
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn delete(
    ctx: &Context,
    events: &Events<'_>,
    key: &(String, String),
    api: &Api<Pod>,
    pods: &mut [PodView],
    pod_name: &str,
    uid: Option<String>,
    reason: DeleteReason,
) -> Result<(), Failure> {
    let params = DeleteParams {
        // Never delete a newer pod that reuses the name (the head's is fixed).
        preconditions: uid.clone().map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(pod_name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => {
            ctx.metrics.pod_actions.with_label_values(&["delete", "error"]).inc();
            let message = format!("deleting pod {pod_name}: {e}");
            events.warn("FailedDelete", "Delete", message.clone(), Some(pod_name)).await;
            return Err(Failure { reason: "FailedDelete", message });
        }
    }
    ctx.metrics.pod_actions.with_label_values(&["delete", "ok"]).inc();
    ctx.expectations.expect_delete(key, pod_name, uid.as_deref());
    for pod in pods.iter_mut().filter(|p| p.name == pod_name) {
        pod.terminating = true;
    }
    events.normal("Deleted", "Delete", format!("deleted pod {pod_name}: {}", reason.as_str()), Some(pod_name)).await;
    Ok(())
}

/// Makes sure the token Secret the operator owns exists, creating it with a new random
/// token when absent; never rewrites an existing one (pods and clients hold its value).
/// Returns the token when the Secret holds one. Its value goes into no log, Event or status.
async fn ensure_token_secret(
    ctx: &Context,
    cluster: &ValidCluster,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    events: &Events<'_>,
) -> Result<Option<String>, Failure> {
    let secret_ref = &cluster.head.token.secret;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &cluster.namespace);
    let failed = |what: &str, e: &dyn std::fmt::Display| Failure {
        reason: "FailedApply",
        message: format!("{what} the token Secret {}: {e}", secret_ref.name),
    };
    match secrets.get(&secret_ref.name).await {
        Ok(secret) => return Ok(secret_value(&secret, &secret_ref.key)),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => {
            let f = failed("reading", &e);
            events.warn(f.reason, "Apply", f.message.clone(), None).await;
            return Err(f);
        }
    }
    let token = new_token().map_err(|e| failed("generating a token for", &e))?;
    let Some(secret) = build::token_secret(cluster, owner, &token) else { return Ok(None) };
    match secrets
        .create(&PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PostParams::default() }, &secret)
        .await
    {
        Ok(_) => {
            events
                .normal("Created", "Create", format!("created the cluster token Secret {}", secret_ref.name), None)
                .await;
            Ok(Some(token))
        }
        // Made meanwhile (another replica, a user): theirs stands; read it next time.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(e) => {
            let f = failed("creating", &e);
            events.warn(f.reason, "Create", f.message.clone(), None).await;
            Err(f)
        }
    }
}

/// The value under `key` of a Secret, from `data` (or `stringData`, as a create's reply
/// may carry it).
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret.data.as_ref().and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok());
    from_data
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).cloned())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A new cluster token: 32 random bytes from the kernel, as 64 hex digits (the format
/// `shoal head` generates).
pub(crate) fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Pods whose node the head reports idle; empty (with a log line) when the head cannot say.
async fn idle_pods(ctx: &Context, cluster: &ValidCluster, known_token: Option<String>) -> BTreeSet<String> {
    let mut token = known_token;
    if token.is_none() {
        let secret_ref = &cluster.head.token.secret;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &cluster.namespace);
        match secrets.get(&secret_ref.name).await {
            Ok(secret) => token = secret_value(&secret, &secret_ref.key),
            Err(e) => {
                tracing::warn!(secret = %secret_ref.name, error = %e, "cannot read the cluster token")
            }
        }
    }
    let base = format!("http://{}:{}", labels::head_service_host(&cluster.name, &cluster.namespace), ctx.head_port);
    match ctx.nodes.idle_pods(&base, token.as_deref()).await {
        Ok(idle) => idle,
        Err(e) => {
            tracing::warn!(cluster = %cluster.name, error = %e, "head did not report idle nodes; scaling down without them");
            BTreeSet::new()
        }
    }
}

async fn patch_status(
    ctx: &Context,
    tc: &TaskCluster,
    namespace: &str,
    status: &crate::crd::TaskClusterStatus,
) -> Result<(), Error> {
    let api: Api<TaskCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let body = json!({
        "apiVersion": TaskCluster::api_version(&()),
        "kind": TaskCluster::kind(&()),
        "status": status,
    });
    api.patch_status(&tc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| Error::Kube {
            action: format!("writing the status of {namespace}/{}", tc.name_any()),
            source,
        })
}

/// Publishes Events about one cluster; a failure to publish is logged, never fatal.
struct Events<'a> {
    recorder: &'a Recorder,
    regarding: ObjectReference,
}

impl Events<'_> {
    async fn normal(&self, reason: &str, action: &str, note: String, pod: Option<&str>) {
        self.publish(EventType::Normal, reason, action, note, pod).await
    }

    async fn warn(&self, reason: &str, action: &str, note: String, pod: Option<&str>) {
        self.publish(EventType::Warning, reason, action, note, pod).await
    }

    /// The pod, when there is one, is the Event's related object: it shows in `kubectl
    /// describe`, and it keeps Events about different pods from folding into one series.
    async fn publish(&self, type_: EventType, reason: &str, action: &str, note: String, pod: Option<&str>) {
        let secondary = pod.map(|name| ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Pod".to_string()),
            name: Some(name.to_string()),
            namespace: self.regarding.namespace.clone(),
            ..ObjectReference::default()
        });
        let event =
            Event { type_, reason: reason.to_string(), note: Some(note), action: action.to_string(), secondary };
        if let Err(e) = self.recorder.publish(&event, &self.regarding).await {
            tracing::warn!(reason, error = %e, "publishing an Event failed");
        }
    }
}

#[cfg(test)]
mod tests;
