//! Test fixtures: the example cluster and pods in known states.
#![allow(missing_docs)]

use crate::crd::TaskCluster;
use crate::plan::{Desired, PodView};
use crate::validate::{validate, ValidCluster};

/// The example cluster of `manifests/examples/cluster.yaml`, as the API server would
/// return it (namespace, uid, generation set).
pub(crate) fn cluster() -> TaskCluster {
    let mut tc: TaskCluster =
        serde_yaml_ng::from_str(include_str!("../../manifests/examples/cluster.yaml")).expect("example parses");
    tc.metadata.namespace = Some("default".to_string());
    tc.metadata.uid = Some("tc-uid".to_string());
    tc.metadata.generation = Some(1);
    tc.metadata.resource_version = Some("1".to_string());
    tc
}

pub(crate) fn valid_and_desired() -> (ValidCluster, Desired) {
    let valid = validate(&cluster()).expect("valid");
    let desired = crate::reconcile::desired(&valid);
    (valid, desired)
}

/// Every desired pod, running, ready and up to date.
pub(crate) fn running_pods(valid: &ValidCluster, desired: &Desired) -> Vec<PodView> {
    let mut pods = vec![ready(PodView::expected(&crate::labels::head_name(&valid.name), None, &desired.head_hash))];
    for g in &desired.groups {
        for i in 0..g.replicas {
            pods.push(ready(PodView::expected(&format!("{}-{}-{i}", valid.name, g.name), Some(&g.name), &g.hash)));
        }
    }
    pods
}

fn ready(mut p: PodView) -> PodView {
    p.uid = Some(format!("uid-{}", p.name));
    p.ready = true;
    p.running = true;
    p
}

// ---------------------------------------------------------------------------------------
// A mocked API server (kube-rs's tower-test pattern): the test lists the calls it expects,
// in order, with the reply to each; the verifier asserts method and path, records the
// body, and replies. A missing call times the verifier out; an extra call leaves the
// reconcile waiting for a reply, which times the reconcile out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};

use crate::head::{BoxFuture, HeadError, NodeSource};
use crate::metrics::Metrics;
use crate::reconcile::Context;

pub(crate) type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The reply the mocked API server gives to one call.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// 200 with the request body echoed (what apply and create return, near enough).
    Echo,
    /// An error status with a Kubernetes `Status` body.
    Fail(u16, &'static str),
    /// 200 with this body.
    Json(Value),
}

/// One expected call.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) reply: Reply,
}

pub(crate) fn call(method: Method, path: &str) -> Call {
    Call { method, path: path.to_string(), reply: Reply::Echo }
}

/// A call that was made: method, path, query and JSON body.
#[derive(Clone, Debug)]
pub(crate) struct Made {
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) body: Value,
}

pub(crate) const PODS: &str = "/api/v1/namespaces/default/pods";
pub(crate) const SERVICE: &str = "/api/v1/namespaces/default/services/demo-head";
pub(crate) const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
pub(crate) const SECRETS: &str = "/api/v1/namespaces/default/secrets";
pub(crate) const SECRET: &str = "/api/v1/namespaces/default/secrets/demo-token";
pub(crate) const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo";
/// The token the fixture cluster's Secret holds.
pub(crate) const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub(crate) const STATUS: &str = "/apis/shoal.dev/v1alpha1/namespaces/default/taskclusters/demo/status";

pub(crate) fn now() -> Timestamp {
    Timestamp::from_second(1_700_000_000).expect("valid time")
}

/// A head that reports a fixed set of idle pods.
/// The second field is the token it was last asked with.
pub(crate) struct FakeHead(pub(crate) Mutex<BTreeSet<String>>, pub(crate) Mutex<Option<String>>);

impl NodeSource for FakeHead {
    fn idle_pods<'a>(
        &'a self,
        base_url: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BTreeSet<String>, HeadError>> {
        assert_eq!(base_url, "http://demo-head.default.svc:8265");
        *self.1.lock().expect("lock") = token.map(str::to_string);
        let idle = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(idle) })
    }
}

/// A test context over a mocked API server, with a pod cache the test fills.
pub(crate) struct Harness {
    pub(crate) ctx: Arc<Context>,
    pub(crate) handle: ApiHandle,
    pub(crate) cache: Writer<Pod>,
    pub(crate) idle: Arc<FakeHead>,
    /// The calls every reconcile of the fixture cluster opens with (the token Secret,
    /// the NetworkPolicy), checked in order before the test's own calls and kept in
    /// [`Harness::opened`] rather than in the calls a reconcile returns.
    pub(crate) opening: Vec<Call>,
    /// The opening calls the last reconcile made.
    pub(crate) opened: Vec<Made>,
}

/// The opening calls of a reconcile when the cluster's token Secret exists.
pub(crate) fn opening_calls() -> Vec<Call> {
    // ByteString serializes as base64, as the API server sends `data`.
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("demo-token".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("token".to_string(), k8s_openapi::ByteString(TOKEN.as_bytes().to_vec()))])),
        ..Default::default()
    };
    let secret = serde_json::to_value(secret).expect("json");
    vec![
        Call { method: Method::GET, path: SECRET.to_string(), reply: Reply::Json(secret) },
        call(Method::PATCH, NETPOL),
    ]
}

pub(crate) fn harness() -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, cache) = reflector::store();
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "shoal-operator".into(), instance: Some("test".into()) });
    let idle = Arc::new(FakeHead(Mutex::new(BTreeSet::new()), Mutex::new(None)));
    let ctx = Context::with_determinism(
        client,
        store,
        recorder,
        idle.clone(),
        Arc::new(Metrics::new().expect("metrics")),
        8265,
        fastrand::Rng::with_seed(7),
        now,
    );
    Harness { ctx: Arc::new(ctx), handle, cache, idle, opening: opening_calls(), opened: Vec::new() }
}

impl Harness {
    /// Puts pods in the cache as the watch would.
    pub(crate) fn cache_pods(&mut self, pods: &[Pod]) {
        for pod in pods {
            self.cache.apply_watcher_event(&watcher::Event::Apply(pod.clone()));
        }
    }

    /// Removes pods from the cache.
    pub(crate) fn uncache_pods(&mut self, pods: &[Pod]) {
        for pod in pods {
            self.cache.apply_watcher_event(&watcher::Event::Delete(pod.clone()));
        }
    }

    /// Runs one reconcile against the expected calls; returns its result and the calls made.
    pub(crate) async fn reconcile(
        &mut self,
        tc: &crate::crd::TaskCluster,
        calls: Vec<Call>,
    ) -> (Result<kube::runtime::controller::Action, crate::Error>, Vec<Made>) {
        let handle = &mut self.handle;
        let opening = self.opening.len();
        let calls: Vec<Call> = self.opening.iter().cloned().chain(calls).collect();
        let verifier = async move {
            let mut made = Vec::new();
            for expected in calls {
                let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                    .await
                    .unwrap_or_else(|_| panic!("no call came; expected {expected:?}; made so far {made:#?}"))
                    .expect("client alive");
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or("").to_string();
                // A path ending in `*` matches any path with that prefix (random pod names).
                let path_ok = match expected.path.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => path == expected.path,
                };
                assert!(
                    request.method() == expected.method && path_ok,
                    "unexpected call {} {path}; expected {expected:?}; made so far {made:#?}",
                    request.method()
                );
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body: Value =
                    if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("json body") };
                let response = match expected.reply {
                    Reply::Echo => {
                        let mut reply = body.clone();
                        if path.ends_with("/status") {
                            // The API server returns the whole object with the new status.
                            reply = serde_json::to_value(cluster()).expect("json");
                            reply["status"] = body["status"].clone();
                        }
                        if expected.method == Method::DELETE {
                            reply = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": path.rsplit('/').next()}});
                        }
                        Response::builder()
                            .status(200)
                            .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                            .expect("response")
                    }
                    Reply::Json(ref reply) => Response::builder()
                        .status(200)
                        .body(Body::from(serde_json::to_vec(reply).expect("json")))
                        .expect("response"),
                    Reply::Fail(code, message) => {
                        let status = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                            "message": message, "reason": "Forbidden", "code": code});
                        Response::builder()
                            .status(code)
                            .body(Body::from(serde_json::to_vec(&status).expect("json")))
                            .expect("response")
                    }
                };
                send.send_response(response);
                made.push(Made { path, query, body });
            }
            made
        };
        let run = tokio::time::timeout(
            Duration::from_secs(5),
            crate::reconcile::reconcile(Arc::new(tc.clone()), self.ctx.clone()),
        );
        let (result, mut made) = tokio::join!(run, verifier);
        let rest = made.split_off(opening.min(made.len()));
        self.opened = made;
        let made = rest;
        (result.expect("the reconcile made a call nobody expected (it waited for a reply)"), made)
    }
}

/// A pod as the API server would hold it once running: uid, phase, Ready condition.
pub(crate) fn live(mut pod: Pod, ready: bool, age_seconds: i64) -> Pod {
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.metadata.uid = Some(format!("uid-{name}"));
    pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_700_000_000 - age_seconds).expect("valid time"),
    ));
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}
