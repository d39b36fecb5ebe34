//! Expectations: creates and deletes the operator made but its pod cache has not shown yet.
//!
//! The reconciler reads pods from a watch-fed cache that lags the API server. Without
//! this, a reconcile that runs right after a create would not see the new pod and create
//! another one (or delete a pod twice). So every create and delete is recorded here, and
//! before planning, the cached pods are *adjusted*: a pod expected to exist is added as a
//! not-yet-running pod, a pod expected to be gone is marked terminating. An expectation is
//! dropped as soon as the cache agrees, or after [`EXPECTATION_TTL`] (a watch event can be
//! lost, e.g. across a watch restart; the TTL bounds how long the operator stays blind).
//!
//! The lock is a plain mutex, never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::plan::PodView;

/// How long an unobserved create or delete is trusted.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(300);

/// Pending creates and deletes per cluster (namespace, name).
#[derive(Debug, Default)]
pub struct Expectations {
    clusters: Mutex<HashMap<(String, String), Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Pod name → (group, template hash, when).
    creates: BTreeMap<String, (Option<String>, String, Instant)>,
    /// Pod name → (uid, when).
    deletes: BTreeMap<String, (Option<String>, Instant)>,
}

impl Expectations {
    /// Records a create of `name` (group `None` for the head) that the cache has not shown.
    pub fn expect_create(&self, cluster: &(String, String), name: &str, group: Option<&str>, hash: &str) {
        let mut clusters = self.lock();
        let pending = clusters.entry(cluster.clone()).or_default();
        pending.creates.insert(name.to_string(), (group.map(str::to_string), hash.to_string(), Instant::now()));
    }

    /// Records a delete of the pod `name` with `uid`.
    pub fn expect_delete(&self, cluster: &(String, String), name: &str, uid: Option<&str>) {
        let mut clusters = self.lock();
        let pending = clusters.entry(cluster.clone()).or_default();
        pending.deletes.insert(name.to_string(), (uid.map(str::to_string), Instant::now()));
    }

    /// Forgets everything about a cluster (it was deleted).
    pub fn forget(&self, cluster: &(String, String)) {
        self.lock().remove(cluster);
    }

    /// The cached pods as they will be once the pending creates and deletes show up.
    pub fn adjust(&self, cluster: &(String, String), mut pods: Vec<PodView>) -> Vec<PodView> {
        let mut clusters = self.lock();
        let Some(pending) = clusters.get_mut(cluster) else {
            return pods;
        };
        let now = Instant::now();
        pending.creates.retain(|name, (_, _, at)| {
            now.duration_since(*at) < EXPECTATION_TTL && !pods.iter().any(|p| &p.name == name)
        });
        pending.deletes.retain(|name, (uid, at)| {
            now.duration_since(*at) < EXPECTATION_TTL
                && pods.iter().any(|p| &p.name == name && p.uid == *uid && !p.terminating)
        });
        for pod in pods.iter_mut() {
            if pending.deletes.contains_key(&pod.name) {
                pod.terminating = true;
            }
        }
        for (name, (group, hash, _)) in &pending.creates {
            pods.push(PodView::expected(name, group.as_deref(), hash));
        }
        if pending.creates.is_empty() && pending.deletes.is_empty() {
            clusters.remove(cluster);
        }
        pods
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Pending>> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters (each operation is one insert or retain), so a poisoned lock is reused.
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (String, String) {
        ("default".to_string(), "demo".to_string())
    }

    fn seen(name: &str, uid: &str) -> PodView {
        PodView {
            name: name.to_string(),
            uid: Some(uid.to_string()),
            group: Some("cpu".to_string()),
            hash: Some("a".to_string()),
            ready: true,
            running: true,
            terminating: false,
            finished: false,
            created: None,
        }
    }

    #[test]
    fn unobserved_create_counts_as_a_pod_until_the_cache_shows_it() {
        let e = Expectations::default();
        e.expect_create(&key(), "demo-cpu-x", Some("cpu"), "a");
        let adjusted = e.adjust(&key(), vec![]);
        assert_eq!(adjusted.len(), 1);
        assert!(!adjusted[0].running);
        // The cache catches up: the real pod replaces the placeholder, and the
        // expectation is gone.
        let adjusted = e.adjust(&key(), vec![seen("demo-cpu-x", "u1")]);
        assert_eq!(adjusted, vec![seen("demo-cpu-x", "u1")]);
        assert!(e.lock().is_empty());
    }

    #[test]
    fn unobserved_delete_marks_the_pod_terminating_until_it_disappears() {
        let e = Expectations::default();
        e.expect_delete(&key(), "demo-cpu-x", Some("u1"));
        let adjusted = e.adjust(&key(), vec![seen("demo-cpu-x", "u1")]);
        assert!(adjusted[0].terminating);
        assert!(e.adjust(&key(), vec![]).is_empty());
        assert!(e.lock().is_empty());
        // A new pod reusing the name (another uid) is not hidden.
        e.expect_delete(&key(), "demo-head", Some("u1"));
        let adjusted = e.adjust(&key(), vec![seen("demo-head", "u2")]);
        assert!(!adjusted[0].terminating);
    }
}
