//! Status: what the cluster's `status` should say, from what the reconcile saw and did.
//!
//! Pure. Conditions follow the standard `metav1.Condition` shape; a condition's
//! `lastTransitionTime` changes only when its `status` does (reason and message may be
//! refreshed in between), so the status is stable across reconciles and is only written
//! when something actually changed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::build;
use crate::crd::{Phase, TaskClusterStatus, WorkerGroupStatus};
use crate::labels;
use crate::plan::{Desired, PodView};
use crate::quantity::Amount;
use crate::validate::ValidCluster;

/// Condition: the head pod is ready.
pub const HEAD_READY: &str = "HeadReady";
/// Condition: every desired raylet pod is ready.
pub const WORKERS_READY: &str = "WorkersReady";
/// Condition: every desired pod exists at the current template, and no extra pod does.
pub const PROVISIONED: &str = "Provisioned";
/// Condition: the last create or delete failed.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// Condition: the cluster is suspended and its pods are gone.
pub const SUSPENDED: &str = "Suspended";

/// A create, delete or apply that failed during this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `FailedCreate`, `FailedDelete` or `FailedApply`.
    pub reason: &'static str,
    /// What failed and why.
    pub message: String,
}

/// What a reconcile observed.
pub struct Observation<'a> {
    /// `metadata.generation` of the cluster.
    pub generation: Option<i64>,
    /// The validated cluster and its desired state, or the validation problems.
    pub cluster: Result<(&'a ValidCluster, &'a Desired), &'a [String]>,
    /// Pods after expectations (see [`crate::expectations`]) and after this reconcile's actions.
    pub pods: &'a [PodView],
    /// A failure of this reconcile.
    pub failure: Option<&'a Failure>,
    /// The time to stamp on changed conditions.
    pub now: Timestamp,
}

/// Computes the new status, keeping transition times of unchanged conditions from `old`.
pub fn compute(old: Option<&TaskClusterStatus>, obs: &Observation<'_>) -> TaskClusterStatus {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(old_conditions, type_, ok, reason, message, obs.generation, obs.now)
    };
    let failure = match obs.failure {
        Some(f) => cond(REPLICA_FAILURE, true, f.reason, f.message.clone()),
        None => cond(REPLICA_FAILURE, false, "NoFailure", "the last reconcile made every change it planned".into()),
    };

    let (cluster, desired) = match obs.cluster {
        Err(problems) => {
            let message = problems.join("; ");
            return TaskClusterStatus {
                phase: Some(Phase::Failed),
                conditions: vec![
                    cond(HEAD_READY, false, "InvalidSpec", message.clone()),
                    cond(WORKERS_READY, false, "InvalidSpec", message.clone()),
                    cond(PROVISIONED, false, "InvalidSpec", message),
                    failure,
                    cond(SUSPENDED, false, "InvalidSpec", "the spec is invalid".into()),
                ],
                observed_generation: obs.generation,
                ..TaskClusterStatus::default()
            };
        }
        Ok(pair) => pair,
    };

    let live = |p: &&PodView| !p.terminating && !p.finished;
    let head = obs.pods.iter().filter(live).find(|p| p.group.is_none());
    let head_ready = head.is_some_and(|h| h.ready);
    let head_current = head.is_some_and(|h| h.hash.as_deref() == Some(desired.head_hash.as_str()));

    let mut groups = Vec::new();
    let mut waiting = Vec::new();
    let mut provisioned = head_current;
    let mut cpus = 0.0;
    let mut cpus_known = false;
    for (group, valid) in desired.groups.iter().zip(&cluster.groups) {
        let pods: Vec<&PodView> =
            obs.pods.iter().filter(live).filter(|p| p.group.as_deref() == Some(group.name.as_str())).collect();
        let updated = pods.iter().filter(|p| p.hash.as_deref() == Some(group.hash.as_str())).count();
        let ready = pods.iter().filter(|p| p.ready).count();
        let status = WorkerGroupStatus {
            name: group.name.clone(),
            desired: group.replicas as i32,
            current: pods.len() as i32,
            ready: ready as i32,
            updated: updated as i32,
        };
        if ready < group.replicas || pods.len() != group.replicas {
            waiting.push(format!("{}: {ready}/{} ready", group.name, group.replicas));
        }
        provisioned &= updated == group.replicas && pods.len() == group.replicas;
        if let Some(c) = valid.node.cpus {
            cpus += c * group.replicas as f64;
            cpus_known = true;
        }
        groups.push(status);
    }
    let workers_ready = waiting.is_empty();

    let conditions = if desired.suspend {
        // Terminating pods still exist (and may still run tasks) until the cache drops them.
        let gone = obs.pods.is_empty();
        vec![
            cond(HEAD_READY, false, "Suspended", "the cluster is suspended".into()),
            cond(WORKERS_READY, false, "Suspended", "the cluster is suspended".into()),
            cond(PROVISIONED, false, "Suspended", "the cluster is suspended".into()),
            failure,
            if gone {
                cond(SUSPENDED, true, "Suspended", "every pod is removed".into())
            } else {
                cond(SUSPENDED, false, "Suspending", "pods are being removed".into())
            },
        ]
    } else {
        vec![
            match head {
                Some(h) if h.ready => cond(HEAD_READY, true, "PodReady", format!("head pod {} is ready", h.name)),
                Some(h) => cond(HEAD_READY, false, "PodNotReady", format!("head pod {} is not ready", h.name)),
                None => cond(HEAD_READY, false, "PodMissing", "the head pod is being created".into()),
            },
            if workers_ready {
                cond(WORKERS_READY, true, "AllReady", "every desired raylet pod is ready".into())
            } else {
                cond(WORKERS_READY, false, "Waiting", waiting.join(", "))
            },
            if provisioned {
                cond(PROVISIONED, true, "UpToDate", "every desired pod exists at the current template".into())
            } else {
                cond(PROVISIONED, false, "Reconciling", "pods are being created, replaced or removed".into())
            },
            failure,
            cond(SUSPENDED, false, "NotSuspended", "the cluster is not suspended".into()),
        ]
    };

    let phase = if desired.suspend {
        Phase::Suspended
    } else if !head_ready {
        Phase::Pending
    } else if workers_ready && provisioned {
        Phase::Running
    } else {
        Phase::Updating
    };
    let host = labels::head_service_host(&cluster.name, &cluster.namespace);
    TaskClusterStatus {
        phase: Some(phase),
        conditions,
        observed_generation: obs.generation,
        ready_workers: groups.iter().map(|g| g.ready).sum(),
        desired_workers: groups.iter().map(|g| g.desired).sum(),
        cpus: cpus_known.then(|| Amount(cpus).to_string()),
        worker_groups: groups,
        endpoints: BTreeMap::from([
            ("gcs".to_string(), format!("{host}:{}", build::GCS_PORT)),
            ("rest".to_string(), format!("http://{host}:{}", build::HEAD_HTTP_PORT)),
        ]),
        head_service: Some(host),
    }
}

/// A condition of `type_`, keeping the old transition time while the status is unchanged.
fn condition(
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid time")
    }

    fn get<'a>(s: &'a TaskClusterStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).expect("condition present")
    }

    #[test]
    fn transition_time_is_kept_while_a_condition_does_not_change() {
        let (valid, desired) = fixtures::valid_and_desired();
        let pods = fixtures::running_pods(&valid, &desired);
        let obs = |now, pods: &[PodView]| {
            compute(
                None,
                &Observation { generation: Some(3), cluster: Ok((&valid, &desired)), pods, failure: None, now },
            )
        };
        let first = obs(at(100), &pods);
        assert_eq!(first.phase, Some(Phase::Running));
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(get(&first, HEAD_READY).status, "True");
        let again = compute(
            Some(&first),
            &Observation {
                generation: Some(3),
                cluster: Ok((&valid, &desired)),
                pods: &pods,
                failure: None,
                now: at(200),
            },
        );
        assert_eq!(again, first, "nothing changed, so nothing is rewritten");

        let failure = Failure { reason: "FailedCreate", message: "quota".into() };
        let failed = compute(
            Some(&first),
            &Observation {
                generation: Some(3),
                cluster: Ok((&valid, &desired)),
                pods: &pods,
                failure: Some(&failure),
                now: at(300),
            },
        );
        assert_eq!(get(&failed, REPLICA_FAILURE).status, "True");
        assert_eq!(get(&failed, REPLICA_FAILURE).last_transition_time, Time(at(300)));
        assert_eq!(get(&failed, HEAD_READY).last_transition_time, Time(at(100)));
    }

    #[test]
    fn invalid_spec_fails_with_the_problems_in_the_message() {
        let problems = vec!["spec.image must not be empty".to_string()];
        let s = compute(
            None,
            &Observation { generation: Some(1), cluster: Err(&problems), pods: &[], failure: None, now: at(1) },
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert!(get(&s, PROVISIONED).message.contains("spec.image"));
    }
}
