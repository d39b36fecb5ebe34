//! Reconciler scenarios against a mocked API server: each asserts the exact sequence of
//! calls, and the bodies that matter.

use http::Method;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use serde_json::json;

use crate::build;
use crate::crd::{TaskCluster, TaskClusterStatus};
use crate::fixtures::{
    self, call, harness, live, Call, Harness, Made, Reply, EVENTS, NETPOL, PODS, SECRET, SECRETS, SERVICE, STATUS,
    TOKEN,
};
use crate::validate::validate;

fn owner(tc: &TaskCluster) -> OwnerReference {
    OwnerReference { block_owner_deletion: Some(true), ..tc.controller_owner_ref(&()).expect("owner") }
}

/// Every pod the cluster wants, running and ready, named `demo-<group>-<i>`.
fn settled_pods(tc: &TaskCluster) -> Vec<Pod> {
    let valid = validate(tc).expect("valid");
    let mut pods = vec![live(build::head_pod(&valid, &owner(tc)), true, 100)];
    for g in &valid.groups {
        for i in 0..g.replicas {
            pods.push(live(
                build::raylet_pod(&valid, g, &format!("demo-{}-{i}", g.name), &owner(tc)),
                true,
                100 - i64::from(i),
            ));
        }
    }
    pods
}

fn pod_path(name: &str) -> String {
    format!("{PODS}/{name}")
}

fn event(reason_and_note: &Made) -> (String, String, String) {
    let b = &reason_and_note.body;
    (
        b["type"].as_str().unwrap_or_default().to_string(),
        b["reason"].as_str().unwrap_or_default().to_string(),
        b["note"].as_str().unwrap_or_default().to_string(),
    )
}

fn status_of(made: &Made) -> TaskClusterStatus {
    assert_eq!(made.path, STATUS);
    assert!(made.query.contains("fieldManager=shoal-operator") && made.query.contains("force=true"), "{}", made.query);
    assert_eq!(made.body["apiVersion"], "shoal.dev/v1alpha1");
    assert_eq!(made.body["kind"], "TaskCluster");
    serde_json::from_value(made.body["status"].clone()).expect("status parses")
}

fn condition(status: &TaskClusterStatus, type_: &str) -> (String, String) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
    (c.status.clone(), c.reason.clone())
}

/// Runs the reconcile and returns the calls; the cluster's status is updated to what was
/// written, as the watch would deliver it.
async fn run(h: &mut Harness, tc: &mut TaskCluster, calls: Vec<Call>) -> (bool, Vec<Made>) {
    let (result, made) = h.reconcile(tc, calls).await;
    if let Err(e) = &result {
        eprintln!("reconcile failed: {e}");
    }
    if let Some(last) = made.iter().rev().find(|m| m.path == STATUS) {
        tc.status = Some(status_of(last));
    }
    (result.is_ok(), made)
}

fn apply_calls(pods: &[&str]) -> Vec<Call> {
    pods.iter().flat_map(|p| [call(Method::PATCH, &pod_path(p)), call(Method::POST, EVENTS)]).collect()
}

/// Creating the fixture cluster's pods after what precedes them: the head,
/// 2 cpu and 1 gpu raylets (each with an Event), then the status.
fn create_calls() -> Vec<Call> {
    let mut calls = apply_calls(&["demo-head"]);
    for group in ["cpu", "cpu", "gpu"] {
        calls.extend(apply_calls(&[&format!("demo-{group}-*")]));
    }
    calls.push(call(Method::PATCH, STATUS));
    calls
}

fn with(mut calls: Vec<Call>, first: Vec<Call>, last: Vec<Call>) -> Vec<Call> {
    let mut all = first;
    all.append(&mut calls);
    all.extend(last);
    all
}

/// The names the seeded random source gives the first raylet pods of the `demo` cluster.
fn created_names(made: &[Made]) -> Vec<String> {
    made.iter()
        .filter(|m| m.path.starts_with(PODS) && m.body["kind"] == "Pod")
        .map(|m| m.path.rsplit('/').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_head_state_claim_is_applied_before_the_head_pod_that_mounts_it() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    tc.spec.head.state = Some(crate::crd::HeadStateSpec {
        size: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into())),
        ..Default::default()
    });
    let valid = validate(&tc).expect("valid");
    let claim_path = "/api/v1/namespaces/default/persistentvolumeclaims/demo-head-state";
    let calls = with(create_calls(), vec![call(Method::PATCH, SERVICE), call(Method::PATCH, claim_path)], vec![]);
    let (ok, made) = run(&mut h, &mut tc, calls).await;
    assert!(ok);
    assert!(made[1].query.contains("fieldManager=shoal-operator"), "{}", made[1].query);
    let claim = build::head_state_claim(&valid, &owner(&tc)).expect("a claim");
    assert_eq!(made[1].body, serde_json::to_value(claim).expect("json"));
    assert_eq!(made[1].body["spec"]["resources"]["requests"]["storage"], "2147483648");
    assert_eq!(
        made[2].body["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| v["persistentVolumeClaim"]["claimName"] == "demo-head-state")
            .count(),
        1
    );
}

#[tokio::test]
async fn create_from_scratch_applies_service_head_raylets_then_status() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    let valid = validate(&tc).expect("valid");

    // Service, head, 2 cpu + 1 gpu raylets (each with an Event), status.
    let calls = with(create_calls(), vec![call(Method::PATCH, SERVICE)], vec![]);
    let (ok, made) = run(&mut h, &mut tc, calls).await;
    assert!(ok);
    let service = &made[0];
    assert!(service.query.contains("fieldManager=shoal-operator") && service.query.contains("force=true"));
    assert_eq!(service.body, serde_json::to_value(build::head_service(&valid, &owner(&tc))).expect("json"));
    assert_eq!(made[1].body, serde_json::to_value(build::head_pod(&valid, &owner(&tc))).expect("json"));
    assert_eq!(event(&made[2]), ("Normal".into(), "Created".into(), "created head pod demo-head".into()));
    let names = created_names(&made);
    assert_eq!(names.len(), 4);
    assert_eq!(
        made[3].body,
        serde_json::to_value(build::raylet_pod(&valid, &valid.groups[0], &names[1], &owner(&tc))).expect("json")
    );
    assert_eq!(
        made[7].body,
        serde_json::to_value(build::raylet_pod(&valid, &valid.groups[1], &names[3], &owner(&tc))).expect("json")
    );
    assert_eq!(made[7].body["metadata"]["labels"]["shoal.dev/group"], "gpu");
    let status = tc.status.clone().expect("status written");
    assert_eq!(status.phase, Some(crate::crd::Phase::Pending));
    assert_eq!((status.desired_workers, status.ready_workers), (3, 0));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.cpus.as_deref(), Some("8"));
    assert_eq!(status.endpoints["gcs"], "demo-head.default.svc:6379");
    assert_eq!(condition(&status, "HeadReady"), ("False".into(), "PodNotReady".into()));
    assert_eq!(condition(&status, "ReplicaFailure"), ("False".into(), "NoFailure".into()));

    // The cache has not caught up: expectations stop a second round of creates, and the
    // unchanged status is not rewritten.
    let (ok, _) = run(&mut h, &mut tc, vec![call(Method::PATCH, SERVICE)]).await;
    assert!(ok);
}

#[tokio::test]
async fn scale_up_creates_the_missing_raylet_and_reports_the_new_generation() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    let pods = settled_pods(&tc);
    h.cache_pods(&pods);
    // Settle the status first: nothing but the Service apply and one status write.
    let (ok, made) = run(&mut h, &mut tc, vec![call(Method::PATCH, SERVICE), call(Method::PATCH, STATUS)]).await;
    assert!(ok);
    let settled = status_of(&made[1]);
    assert_eq!(settled.phase, Some(crate::crd::Phase::Running));
    assert_eq!(condition(&settled, "WorkersReady"), ("True".into(), "AllReady".into()));
    // Nothing changed: no status write at all.
    let (ok, _) = run(&mut h, &mut tc, vec![call(Method::PATCH, SERVICE)]).await;
    assert!(ok);

    tc.spec.worker_groups[0].replicas = 3;
    tc.metadata.generation = Some(2);
    let (ok, made) = h
        .reconcile(
            &tc,
            vec![
                call(Method::PATCH, SERVICE),
                call(Method::PATCH, &pod_path("demo-cpu-*")),
                call(Method::POST, EVENTS),
                call(Method::PATCH, STATUS),
            ],
        )
        .await;
    let _ = ok.expect("reconcile ok");
    let valid = validate(&tc).expect("valid");
    let name = &created_names(&made)[0];
    assert_eq!(
        made[1].body,
        serde_json::to_value(build::raylet_pod(&valid, &valid.groups[0], name, &owner(&tc))).expect("json")
    );
    let status = status_of(&made[3]);
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!((status.desired_workers, status.ready_workers), (4, 3));
    assert_eq!(status.phase, Some(crate::crd::Phase::Updating));
    let ready = status.conditions.iter().find(|c| c.type_ == "HeadReady").expect("cond");
    let before = settled.conditions.iter().find(|c| c.type_ == "HeadReady").expect("cond");
    assert_eq!(ready.last_transition_time, before.last_transition_time, "unchanged condition keeps its time");
    assert_eq!(ready.observed_generation, Some(2));
}

#[tokio::test]
async fn scale_down_removes_idle_pods_first() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    tc.spec.worker_groups[0].replicas = 4;
    h.cache_pods(&settled_pods(&tc));
    tc.spec.worker_groups[0].replicas = 2;
    // demo-cpu-0 is the oldest and demo-cpu-3 the youngest; the head says 0 and 1 are idle.
    *h.idle.0.lock().expect("lock") = ["demo-cpu-0".to_string(), "demo-cpu-1".to_string()].into();
    let (ok, made) = run(
        &mut h,
        &mut tc,
        vec![
            call(Method::PATCH, SERVICE),
            call(Method::DELETE, &pod_path("demo-cpu-1")),
            call(Method::POST, EVENTS),
            call(Method::DELETE, &pod_path("demo-cpu-0")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, STATUS),
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(made[1].body["preconditions"], json!({"uid": "uid-demo-cpu-1"}));
    assert_eq!(h.idle.1.lock().expect("lock").as_deref(), Some(TOKEN), "the head is asked with the cluster token");
    assert_eq!(
        event(&made[2]),
        ("Normal".into(), "Deleted".into(), "deleted pod demo-cpu-1: the group has more pods than replicas".into())
    );
    let status = tc.status.clone().expect("status");
    assert_eq!(status.worker_groups[0].current, 2);
}

#[tokio::test]
async fn template_change_replaces_the_head_and_rolls_groups_one_at_a_time() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    let old = settled_pods(&tc);
    h.cache_pods(&old);
    tc.spec.image = "ghcr.io/shoal-dev/shoal:0.2.0".into();
    tc.metadata.generation = Some(2);
    let (ok, made) = run(
        &mut h,
        &mut tc,
        vec![
            call(Method::PATCH, SERVICE),
            call(Method::DELETE, &pod_path("demo-head")),
            call(Method::POST, EVENTS),
            call(Method::DELETE, &pod_path("demo-cpu-0")),
            call(Method::POST, EVENTS),
            call(Method::DELETE, &pod_path("demo-cpu-1")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, &pod_path("demo-cpu-*")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, &pod_path("demo-cpu-*")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, STATUS),
        ],
    )
    .await;
    assert!(ok);
    assert!(event(&made[2]).2.contains("its pod template is out of date"));
    assert_eq!(made[7].body["spec"]["containers"][0]["image"], "ghcr.io/shoal-dev/shoal:0.2.0");
    assert_eq!(tc.status.as_ref().and_then(|s| s.phase), Some(crate::crd::Phase::Pending));

    // The deletions show up in the cache (the gpu group still waits for cpu to be ready):
    // the head is recreated at the new template.
    h.uncache_pods(&old[..3]);
    let valid = validate(&tc).expect("valid");
    let new_cpu: Vec<Pod> = created_names(&made)
        .iter()
        .map(|n| live(build::raylet_pod(&valid, &valid.groups[0], n, &owner(&tc)), false, 1))
        .collect();
    h.cache_pods(&new_cpu);
    let (ok, made) = run(
        &mut h,
        &mut tc,
        vec![
            call(Method::PATCH, SERVICE),
            call(Method::PATCH, &pod_path("demo-head")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, STATUS),
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(made[1].body, serde_json::to_value(build::head_pod(&valid, &owner(&tc))).expect("json"));

    // cpu is updated and ready: now gpu rolls.
    let new_cpu: Vec<Pod> = new_cpu.into_iter().map(|p| live(p, true, 1)).collect();
    h.cache_pods(&new_cpu);
    h.cache_pods(&[live(build::head_pod(&valid, &owner(&tc)), true, 1)]);
    let (ok, _) = run(
        &mut h,
        &mut tc,
        vec![
            call(Method::PATCH, SERVICE),
            call(Method::DELETE, &pod_path("demo-gpu-0")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, &pod_path("demo-gpu-*")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, STATUS),
        ],
    )
    .await;
    assert!(ok);
}

#[tokio::test]
async fn deleted_head_pod_is_recreated() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    let pods = settled_pods(&tc);
    h.cache_pods(&pods[1..]);
    let (ok, made) = run(
        &mut h,
        &mut tc,
        with(apply_calls(&["demo-head"]), vec![call(Method::PATCH, SERVICE)], vec![call(Method::PATCH, STATUS)]),
    )
    .await;
    assert!(ok);
    let valid = validate(&tc).expect("valid");
    assert_eq!(made[1].body, serde_json::to_value(build::head_pod(&valid, &owner(&tc))).expect("json"));
    let status = tc.status.clone().expect("status");
    assert_eq!(condition(&status, "HeadReady"), ("False".into(), "PodNotReady".into()));
    assert_eq!(status.phase, Some(crate::crd::Phase::Pending));
}

#[tokio::test]
async fn suspend_removes_every_pod_and_resume_recreates_them() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    let pods = settled_pods(&tc);
    h.cache_pods(&pods);
    tc.spec.suspend = true;
    let mut calls = vec![call(Method::PATCH, SERVICE)];
    for p in ["demo-cpu-0", "demo-cpu-1", "demo-gpu-0", "demo-head"] {
        calls.push(call(Method::DELETE, &pod_path(p)));
        calls.push(call(Method::POST, EVENTS));
    }
    calls.push(call(Method::PATCH, STATUS));
    let (ok, _) = run(&mut h, &mut tc, calls).await;
    assert!(ok);
    let status = tc.status.clone().expect("status");
    assert_eq!(status.phase, Some(crate::crd::Phase::Suspended));
    assert_eq!(condition(&status, "Suspended"), ("False".into(), "Suspending".into()));

    // The pods are gone from the cache: Suspended becomes true, nothing else is called.
    h.uncache_pods(&pods);
    let (ok, _) = run(&mut h, &mut tc, vec![call(Method::PATCH, SERVICE), call(Method::PATCH, STATUS)]).await;
    assert!(ok);
    assert_eq!(condition(tc.status.as_ref().expect("status"), "Suspended"), ("True".into(), "Suspended".into()));

    // Resume.
    tc.spec.suspend = false;
    let (ok, made) = run(
        &mut h,
        &mut tc,
        vec![
            call(Method::PATCH, SERVICE),
            call(Method::PATCH, &pod_path("demo-head")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, &pod_path("demo-cpu-*")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, &pod_path("demo-cpu-*")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, &pod_path("demo-gpu-*")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, STATUS),
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(created_names(&made).len(), 4);
    assert_eq!(condition(tc.status.as_ref().expect("status"), "Suspended"), ("False".into(), "NotSuspended".into()));
}

#[tokio::test]
async fn api_error_sets_replica_failure_and_an_event_then_recovers() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    let pods = settled_pods(&tc);
    h.cache_pods(&pods);
    let (ok, _) = run(&mut h, &mut tc, vec![call(Method::PATCH, SERVICE), call(Method::PATCH, STATUS)]).await;
    assert!(ok);
    tc.spec.worker_groups[0].replicas = 3;
    let forbidden = Call {
        method: Method::PATCH,
        path: pod_path("demo-cpu-*"),
        reply: Reply::Fail(403, "pods is forbidden: exceeded quota"),
    };
    let (ok, made) = run(
        &mut h,
        &mut tc,
        vec![call(Method::PATCH, SERVICE), forbidden, call(Method::POST, EVENTS), call(Method::PATCH, STATUS)],
    )
    .await;
    assert!(!ok, "a failed create fails the reconcile so the controller retries");
    let (type_, reason, note) = event(&made[2]);
    assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "FailedCreate"));
    assert!(note.contains("exceeded quota"), "{note}");
    let status = tc.status.clone().expect("status");
    assert_eq!(condition(&status, "ReplicaFailure"), ("True".into(), "FailedCreate".into()));

    // The retry succeeds and clears the condition (a fresh name: the failed one was not
    // recorded as expected).
    let (ok, _) = run(
        &mut h,
        &mut tc,
        vec![
            call(Method::PATCH, SERVICE),
            call(Method::PATCH, &pod_path("demo-cpu-*")),
            call(Method::POST, EVENTS),
            call(Method::PATCH, STATUS),
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(condition(tc.status.as_ref().expect("status"), "ReplicaFailure"), ("False".into(), "NoFailure".into()));
}

#[tokio::test]
async fn invalid_spec_is_reported_once_without_touching_pods() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    tc.spec.worker_groups[0].min_replicas = 9;
    // An invalid cluster gets no Secret and no policy: nothing but its status is touched.
    h.opening = vec![];
    let (ok, made) = run(&mut h, &mut tc, vec![call(Method::POST, EVENTS), call(Method::PATCH, STATUS)]).await;
    assert!(ok);
    assert_eq!(event(&made[0]).1, "InvalidSpec");
    let status = tc.status.clone().expect("status");
    assert_eq!(status.phase, Some(crate::crd::Phase::Failed));
    assert!(status.conditions.iter().any(|c| c.message.contains("minReplicas")));
    // Reported once: the same invalid spec makes no further calls.
    let (ok, _) = run(&mut h, &mut tc, vec![]).await;
    assert!(ok);
}

#[tokio::test]
async fn a_missing_token_secret_is_created_once_and_its_value_is_in_no_event_or_status() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    h.opening = vec![
        Call { method: Method::GET, path: SECRET.into(), reply: Reply::Fail(404, "secrets \"demo-token\" not found") },
        call(Method::POST, SECRETS),
        call(Method::POST, EVENTS),
        call(Method::PATCH, NETPOL),
    ];
    let (ok, made) = run(&mut h, &mut tc, with(create_calls(), vec![call(Method::PATCH, SERVICE)], vec![])).await;
    assert!(ok);
    let created = &h.opened[1];
    assert!(created.query.contains("fieldManager=shoal-operator"), "{}", created.query);
    assert_eq!(created.body["metadata"]["name"], "demo-token");
    assert_eq!(created.body["metadata"]["ownerReferences"][0]["uid"], tc.metadata.uid.clone().expect("uid"));
    let token = created.body["stringData"]["token"].as_str().expect("a token").to_string();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_eq!(event(&h.opened[2]).1, "Created");

    // Every pod mounts the Secret and every shoal process reads the token from it.
    for pod in made.iter().filter(|m| m.body["kind"] == "Pod") {
        let volumes = pod.body["spec"]["volumes"].as_array().expect("volumes");
        assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "demo-token"), "{}", pod.path);
        for c in pod.body["spec"]["containers"].as_array().expect("containers") {
            let args = c["args"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" "));
            let env = c["env"].as_array().cloned().unwrap_or_default();
            let reads_token = args.is_some_and(|a| a.contains("--token-file /var/run/shoal/token/token"))
                || env.iter().any(|e| e["name"] == "SHOAL_TOKEN_FILE");
            assert!(reads_token, "container {} of {} gets the token", c["name"], pod.path);
        }
    }
    // The value itself appears in no call but the Secret's create.
    for m in h.opened.iter().chain(&made).filter(|m| m.path != SECRETS) {
        assert!(!m.body.to_string().contains(&token), "the token leaked into {}", m.path);
    }

    // Once it exists it is read, never rewritten.
    h.opening = fixtures::opening_calls();
    let (ok, _) = run(&mut h, &mut tc, vec![call(Method::PATCH, SERVICE)]).await;
    assert!(ok);
}

#[tokio::test]
async fn a_named_token_secret_is_used_as_it_is_and_never_created() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    tc.spec.head.token_secret = Some(crate::crd::SecretKeyRef { name: "mine".into(), key: "t".into() });
    h.opening = vec![call(Method::PATCH, NETPOL)];
    let (ok, made) = run(&mut h, &mut tc, with(create_calls(), vec![call(Method::PATCH, SERVICE)], vec![])).await;
    assert!(ok);
    let head = &made[1].body;
    let volume =
        head["spec"]["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == "shoal-token").cloned();
    assert_eq!(volume.expect("the token volume")["secret"]["secretName"], "mine");
}

#[tokio::test]
async fn a_failing_secret_read_stops_the_reconcile_before_any_pod() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    h.opening = vec![
        Call { method: Method::GET, path: SECRET.into(), reply: Reply::Fail(403, "secrets is forbidden") },
        call(Method::POST, EVENTS),
        call(Method::PATCH, STATUS),
    ];
    let (ok, _) = run(&mut h, &mut tc, vec![]).await;
    assert!(!ok);
    let status = status_of(&h.opened[2]);
    let failure = status.conditions.iter().find(|c| c.type_ == "ReplicaFailure").expect("condition");
    assert_eq!(failure.status, "True");
    assert!(failure.message.contains("reading the token Secret demo-token"), "{}", failure.message);
}

#[tokio::test]
async fn the_network_policy_is_applied_by_default_and_removed_when_turned_off() {
    let mut h = harness();
    let mut tc = fixtures::cluster();
    let (ok, _) = run(&mut h, &mut tc, with(create_calls(), vec![call(Method::PATCH, SERVICE)], vec![])).await;
    assert!(ok);
    let policy = &h.opened[1];
    assert!(policy.query.contains("fieldManager=shoal-operator") && policy.query.contains("force=true"));
    let valid = validate(&tc).expect("valid");
    assert_eq!(policy.body, serde_json::to_value(build::network_policy(&valid, &owner(&tc), None)).expect("json"));

    tc.spec.network_policy.enabled = false;
    tc.metadata.generation = Some(2);
    let mut opening = fixtures::opening_calls();
    opening[1].method = Method::DELETE;
    opening[1].reply = Reply::Fail(404, "not found");
    h.opening = opening;
    let (ok, _) = run(&mut h, &mut tc, vec![call(Method::PATCH, SERVICE), call(Method::PATCH, STATUS)]).await;
    assert!(ok, "an absent policy is already removed");
}
