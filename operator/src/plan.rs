//! Planning: which pods to create and delete, from the desired cluster and the pods seen.
//!
//! Pure and deterministic: the same inputs always give the same actions in the same order
//! (head first, then groups in spec order). The rules:
//! - suspend deletes every pod;
//! - a missing head is created; a head that finished or runs an outdated template is
//!   deleted, and recreated once its deletion is observed (its name is fixed);
//! - raylets of removed groups and raylets that finished are deleted;
//! - a template change rolls out group by group: a group's outdated pods are deleted only
//!   when every earlier group is fully updated and ready, and replacements are created in
//!   the same pass;
//! - scale-down deletes, in order: outdated, not yet running, not ready, idle (as the head
//!   reports), then busy pods; the youngest first within each class.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::labels;

/// What the planner needs to know about one existing (or expected) pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Pod UID (absent for pods only expected to exist).
    pub uid: Option<String>,
    /// The worker group, or `None` for the head.
    pub group: Option<String>,
    /// The template hash annotation.
    pub hash: Option<String>,
    /// The Ready condition is true.
    pub ready: bool,
    /// Phase `Running` (scheduled and started).
    pub running: bool,
    /// Being deleted (deletionTimestamp set, or a deletion the operator is waiting for).
    pub terminating: bool,
    /// Phase `Succeeded` or `Failed`: it will never run again.
    pub finished: bool,
    /// Creation time, for youngest-first.
    pub created: Option<Timestamp>,
}

impl PodView {
    /// Reads a pod; `None` when it is neither a head nor a raylet of shoal.
    pub fn from_pod(pod: &Pod) -> Option<PodView> {
        let labels = pod.metadata.labels.as_ref()?;
        let group = match labels.get(labels::ROLE).map(String::as_str) {
            Some(labels::ROLE_HEAD) => None,
            Some(labels::ROLE_RAYLET) => Some(labels.get(labels::GROUP)?.clone()),
            _ => return None,
        };
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Some(PodView {
            name: pod.metadata.name.clone()?,
            uid: pod.metadata.uid.clone(),
            group,
            hash: pod.metadata.annotations.as_ref().and_then(|a| a.get(labels::TEMPLATE_HASH).cloned()),
            ready,
            running: phase == "Running",
            terminating: pod.metadata.deletion_timestamp.is_some(),
            finished: phase == "Succeeded" || phase == "Failed",
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        })
    }

    /// A pod just created and not yet seen in the cache.
    pub fn expected(name: &str, group: Option<&str>, hash: &str) -> PodView {
        PodView {
            name: name.to_string(),
            uid: None,
            group: group.map(str::to_string),
            hash: Some(hash.to_string()),
            ready: false,
            running: false,
            terminating: false,
            finished: false,
            created: None,
        }
    }

    fn live(&self) -> bool {
        !self.terminating && !self.finished
    }
}

/// The cluster as the planner sees it: template hashes and replica counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// `spec.suspend`.
    pub suspend: bool,
    /// Hash of the head pod wanted now.
    pub head_hash: String,
    /// Worker groups in spec order.
    pub groups: Vec<DesiredGroup>,
}

/// One worker group of [`Desired`].
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredGroup {
    /// Group name.
    pub name: String,
    /// Pods wanted.
    pub replicas: usize,
    /// Hash of the raylet pods wanted now.
    pub hash: String,
}

/// Why a pod is deleted (shows in Events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// `spec.suspend` is set.
    Suspended,
    /// Its template is out of date.
    Outdated,
    /// The group has more pods than `replicas`.
    ScaleDown,
    /// It exited and will not run again.
    Finished,
    /// Its worker group is no longer in the spec.
    GroupRemoved,
}

impl DeleteReason {
    /// Human-readable reason.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Suspended => "the cluster is suspended",
            DeleteReason::Outdated => "its pod template is out of date",
            DeleteReason::ScaleDown => "the group has more pods than replicas",
            DeleteReason::Finished => "it has exited",
            DeleteReason::GroupRemoved => "its worker group was removed",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum PodAction {
    /// Create the head pod.
    CreateHead,
    /// Create one raylet pod in the group.
    CreateRaylet {
        /// Worker group.
        group: String,
    },
    /// Delete a pod (head or raylet).
    Delete {
        /// Pod name.
        name: String,
        /// Pod UID, used as a delete precondition.
        uid: Option<String>,
        /// Why.
        reason: DeleteReason,
    },
}

/// Whether some group has more live pods than it wants, so the planner would like the
/// head's idle-node list (asking the head costs a network call, made only then).
pub fn wants_idle_nodes(desired: &Desired, pods: &[PodView]) -> bool {
    !desired.suspend
        && desired.groups.iter().any(|g| {
            pods.iter().filter(|p| p.live() && p.group.as_deref() == Some(g.name.as_str())).count() > g.replicas
        })
}

/// Plans the creates and deletes that move `pods` towards `desired`. `idle` holds the
/// names of pods whose node the head reports idle.
pub fn plan(desired: &Desired, pods: &[PodView], idle: &BTreeSet<String>) -> Vec<PodAction> {
    let mut actions = Vec::new();
    if desired.suspend {
        for pod in pods.iter().filter(|p| !p.terminating) {
            actions.push(delete(pod, DeleteReason::Suspended));
        }
        return actions;
    }

    // Head.
    let heads: Vec<&PodView> = pods.iter().filter(|p| p.group.is_none()).collect();
    match heads.iter().find(|p| !p.terminating) {
        None if heads.is_empty() => actions.push(PodAction::CreateHead),
        None => {} // the old head is still terminating; its name is reused
        Some(head) if head.finished => actions.push(delete(head, DeleteReason::Finished)),
        Some(head) if head.hash.as_deref() != Some(desired.head_hash.as_str()) => {
            actions.push(delete(head, DeleteReason::Outdated))
        }
        Some(_) => {}
    }

    // Raylets of groups that no longer exist, and raylets that exited.
    let known: BTreeSet<&str> = desired.groups.iter().map(|g| g.name.as_str()).collect();
    for pod in pods.iter().filter(|p| !p.terminating) {
        match &pod.group {
            Some(g) if !known.contains(g.as_str()) => actions.push(delete(pod, DeleteReason::GroupRemoved)),
            Some(_) if pod.finished => actions.push(delete(pod, DeleteReason::Finished)),
            _ => {}
        }
    }

    let mut by_group: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.live()) {
        if let Some(g) = &pod.group {
            by_group.entry(g.as_str()).or_default().push(pod);
        }
    }
    let mut earlier_groups_settled = true;
    for group in &desired.groups {
        let live = by_group.get(group.name.as_str()).cloned().unwrap_or_default();
        let outdated = |p: &&PodView| p.hash.as_deref() != Some(group.hash.as_str());
        let has_outdated = live.iter().any(outdated);
        let mut keep: Vec<&PodView> = live.clone();
        if has_outdated && earlier_groups_settled {
            for pod in live.iter().filter(|p| outdated(p)) {
                actions.push(delete(pod, DeleteReason::Outdated));
            }
            keep.retain(|p| !outdated(p));
        }
        if has_outdated || live.iter().any(|p| !p.ready) {
            earlier_groups_settled = false;
        }
        if keep.len() < group.replicas {
            for _ in keep.len()..group.replicas {
                actions.push(PodAction::CreateRaylet { group: group.name.clone() });
            }
        } else if keep.len() > group.replicas {
            // Lower class = deleted first; within a class the youngest goes first.
            keep.sort_by_key(|p| {
                let class = if outdated(p) {
                    0
                } else if !p.running {
                    1
                } else if !p.ready {
                    2
                } else if idle.contains(&p.name) {
                    3
                } else {
                    4
                };
                (class, Reverse(p.created), Reverse(p.name.clone()))
            });
            for pod in &keep[..keep.len() - group.replicas] {
                actions.push(delete(pod, DeleteReason::ScaleDown));
            }
        }
    }
    actions
}

fn delete(pod: &PodView, reason: DeleteReason) -> PodAction {
    PodAction::Delete { name: pod.name.clone(), uid: pod.uid.clone(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(groups: &[(&str, usize, &str)]) -> Desired {
        Desired {
            suspend: false,
            head_hash: "h".to_string(),
            groups: groups
                .iter()
                .map(|(name, replicas, hash)| DesiredGroup {
                    name: name.to_string(),
                    replicas: *replicas,
                    hash: hash.to_string(),
                })
                .collect(),
        }
    }

    fn head() -> PodView {
        pod("demo-head", None, "h", 0)
    }

    fn pod(name: &str, group: Option<&str>, hash: &str, age: i64) -> PodView {
        PodView {
            name: name.to_string(),
            uid: Some(format!("uid-{name}")),
            group: group.map(str::to_string),
            hash: Some(hash.to_string()),
            ready: true,
            running: true,
            terminating: false,
            finished: false,
            created: Some(Timestamp::from_second(1_000_000 - age).expect("valid time")),
        }
    }

    fn deleted(actions: &[PodAction]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                PodAction::Delete { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn empty_cluster_creates_head_and_every_replica() {
        let actions = plan(&desired(&[("cpu", 2, "a"), ("gpu", 1, "b")]), &[], &BTreeSet::new());
        assert_eq!(
            actions,
            vec![
                PodAction::CreateHead,
                PodAction::CreateRaylet { group: "cpu".into() },
                PodAction::CreateRaylet { group: "cpu".into() },
                PodAction::CreateRaylet { group: "gpu".into() },
            ]
        );
    }

    #[test]
    fn settled_cluster_needs_nothing() {
        let pods = vec![head(), pod("cpu-1", Some("cpu"), "a", 5)];
        assert!(plan(&desired(&[("cpu", 1, "a")]), &pods, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn scale_down_removes_idle_pods_before_busy_ones_youngest_first() {
        let pods = vec![
            head(),
            pod("busy-young", Some("cpu"), "a", 1),
            pod("idle-old", Some("cpu"), "a", 50),
            pod("idle-young", Some("cpu"), "a", 2),
            pod("busy-old", Some("cpu"), "a", 60),
        ];
        let idle = BTreeSet::from(["idle-old".to_string(), "idle-young".to_string()]);
        let d = desired(&[("cpu", 1, "a")]);
        assert!(wants_idle_nodes(&d, &pods));
        assert_eq!(deleted(&plan(&d, &pods, &idle)), vec!["idle-young", "idle-old", "busy-young"]);
    }

    #[test]
    fn scale_down_prefers_pods_that_are_not_running_or_ready() {
        let mut pending = pod("pending", Some("cpu"), "a", 1);
        pending.running = false;
        pending.ready = false;
        let mut unready = pod("unready", Some("cpu"), "a", 1);
        unready.ready = false;
        let pods = vec![head(), pod("idle", Some("cpu"), "a", 3), unready, pending];
        let idle = BTreeSet::from(["idle".to_string()]);
        assert_eq!(deleted(&plan(&desired(&[("cpu", 1, "a")]), &pods, &idle)), vec!["pending", "unready"]);
    }

    #[test]
    fn template_change_rolls_out_one_group_at_a_time() {
        let pods = vec![head(), pod("cpu-1", Some("cpu"), "old", 5), pod("gpu-1", Some("gpu"), "old", 5)];
        let d = desired(&[("cpu", 1, "new"), ("gpu", 1, "new")]);
        let actions = plan(&d, &pods, &BTreeSet::new());
        assert_eq!(
            actions,
            vec![
                PodAction::Delete {
                    name: "cpu-1".into(),
                    uid: Some("uid-cpu-1".into()),
                    reason: DeleteReason::Outdated
                },
                PodAction::CreateRaylet { group: "cpu".into() },
            ]
        );
        // Once cpu is updated and ready, gpu rolls.
        let pods = vec![head(), pod("cpu-2", Some("cpu"), "new", 1), pod("gpu-1", Some("gpu"), "old", 5)];
        assert_eq!(deleted(&plan(&d, &pods, &BTreeSet::new())), vec!["gpu-1"]);
    }

    #[test]
    fn outdated_or_missing_head_is_replaced_after_the_old_one_is_gone() {
        let d = desired(&[]);
        let mut old = head();
        old.hash = Some("stale".into());
        assert_eq!(deleted(&plan(&d, &[old.clone()], &BTreeSet::new())), vec!["demo-head"]);
        old.terminating = true;
        assert!(plan(&d, &[old], &BTreeSet::new()).is_empty());
        assert_eq!(plan(&d, &[], &BTreeSet::new()), vec![PodAction::CreateHead]);
    }

    #[test]
    fn suspend_deletes_every_pod_and_skips_terminating_ones() {
        let mut d = desired(&[("cpu", 2, "a")]);
        d.suspend = true;
        let mut gone = pod("cpu-2", Some("cpu"), "a", 1);
        gone.terminating = true;
        let pods = vec![head(), pod("cpu-1", Some("cpu"), "a", 1), gone];
        assert_eq!(deleted(&plan(&d, &pods, &BTreeSet::new())), vec!["demo-head", "cpu-1"]);
        assert!(!wants_idle_nodes(&d, &pods));
    }

    #[test]
    fn finished_pods_and_removed_groups_are_cleaned_up_and_replaced() {
        let mut dead = pod("cpu-1", Some("cpu"), "a", 1);
        dead.finished = true;
        let pods = vec![head(), dead, pod("old-1", Some("old"), "a", 1)];
        let actions = plan(&desired(&[("cpu", 1, "a")]), &pods, &BTreeSet::new());
        assert_eq!(deleted(&actions), vec!["cpu-1", "old-1"]);
        assert!(actions.contains(&PodAction::CreateRaylet { group: "cpu".into() }));
    }
}
