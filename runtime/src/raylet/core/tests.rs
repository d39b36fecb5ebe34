//! The coordinator on plain data: owner and executor together on one node,
//! workers as channels, effects read instead of carried out.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;

use super::*;
use crate::ids::JobId;
use crate::raylet::effects::Effect;
use crate::raylet::executor::{Done, Return};
use crate::resources::{ResourceSet, CPU, GPU};

fn core_with(resources: ResourceSet) -> Core {
    let me = NodeId([1; 8]);
    let mut c = RayletConfig::new("127.0.0.1:1", resources);
    c.max_workers = 8;
    let mut core = Core::new(
        me,
        "10.0.0.1:1".into(),
        Arc::new(c),
        Arc::new(ObjectStore::new(1 << 20)),
        Arc::new(crate::metrics::RayletMetrics::new()),
    );
    core.settle();
    core
}

fn spec(task: TaskId, res: ResourceSet) -> pb::TaskSpec {
    pb::TaskSpec {
        task_id: task.to_bytes(),
        name: format!("t{task}"),
        function: Some(pb::FunctionDescriptor { kind: Some(pb::function_descriptor::Kind::Builtin("add".into())) }),
        num_returns: 1,
        resources: Some((&res).into()),
        ..Default::default()
    }
}

/// Connects `n` workers; returns their ids and receivers.
fn workers(core: &mut Core, n: usize) -> Vec<(WorkerId, mpsc::UnboundedReceiver<pb::ToWorker>)> {
    (0..n)
        .map(|i| {
            let (tx, rx) = mpsc::unbounded_channel();
            let id = WorkerId::random();
            core.on_worker_connected(id, 100 + i as u32, tx);
            (id, rx)
        })
        .collect()
}

fn dispatched(core: &mut Core) -> Vec<(WorkerId, pb::ExecuteTask)> {
    core.take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Dispatch(d) => Some((d.worker, d.task)),
            _ => None,
        })
        .collect()
}

fn done(task: TaskId, attempt: u32) -> Done {
    Done {
        attempt: (task, attempt),
        error: None,
        stderr_tail: String::new(),
        returns: vec![Return::Inline(pb::ObjectValue::default())],
    }
}

#[test]
fn a_fraction_and_two_whole_gpus_get_devices_of_their_own() {
    let mut core = core_with(ResourceSet::new().with(CPU, 4.0).with(GPU, 2.0));
    workers(&mut core, 3);
    core.take_effects();
    let (session, _) = core.open_session(None);
    let half = TaskId::random(JobId(1));
    let one = TaskId::random(JobId(1));
    let two = TaskId::random(JobId(1));
    core.submit(
        session,
        vec![
            spec(half, ResourceSet::new().with(GPU, 0.5)),
            spec(one, ResourceSet::new().with(GPU, 1.0)),
            spec(two, ResourceSet::new().with(GPU, 1.0)),
        ],
    );
    let sent = dispatched(&mut core);
    let ids: HashMap<Vec<u8>, Vec<u32>> = sent.iter().map(|(_, t)| (t.task_id.to_vec(), t.gpu_ids.clone())).collect();
    assert_eq!(sent.len(), 2, "the second whole-GPU task must wait: {ids:?}");
    let half_ids = &ids[&half.to_bytes().to_vec()];
    let other: Vec<&Vec<u32>> = ids.iter().filter(|(k, _)| **k != half.to_bytes().to_vec()).map(|(_, v)| v).collect();
    assert_eq!(half_ids.len(), 1);
    assert_eq!(other[0].len(), 1);
    assert_ne!(half_ids, other[0], "a whole GPU is never the shared one");

    // The half finishes: its device is whole again and the waiting task gets it.
    let (w, _) = sent.iter().find(|(_, t)| t.task_id == half.to_bytes()).unwrap();
    core.on_task_done(*w, done(half, 0));
    let next = dispatched(&mut core);
    assert_eq!(next.len(), 1);
    assert_eq!(&next[0].1.gpu_ids, half_ids);
}

#[test]
fn two_attempts_of_one_task_on_a_node_keep_apart() {
    let mut core = core_with(ResourceSet::new().with(CPU, 2.0));
    workers(&mut core, 2);
    core.take_effects();
    let t = TaskId::random(JobId(1));
    // A remote owner sends attempt 0, then (believing it lost) attempt 1.
    let mut s0 = spec(t, ResourceSet::new().with(CPU, 1.0));
    s0.owner_address = "10.0.0.9:1".into();
    let mut s1 = s0.clone();
    s1.attempt = 1;
    core.enqueue_local(s0);
    core.enqueue_local(s1);
    let sent = dispatched(&mut core);
    assert_eq!(sent.len(), 2);
    assert_eq!(core.exec.ledger.available().get(CPU), 0.0);
    let w1 = sent.iter().find(|(_, x)| x.attempt == 1).unwrap().0;
    let w0 = sent.iter().find(|(_, x)| x.attempt == 0).unwrap().0;
    core.on_task_done(w1, done(t, 1));
    assert_eq!(core.exec.ledger.available().get(CPU), 1.0, "attempt 1's lease is released, attempt 0 still runs");
    assert!(core.exec.local.running.contains_key(&(t, 0)));
    core.on_task_done(w0, done(t, 0));
    assert_eq!(core.exec.ledger.available().get(CPU), 2.0, "no lease leaks");
    let results: Vec<u32> = core
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Peer { msg: crate::raylet::peers::PeerMsg::Result(r), .. } => Some(r.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(results, [1, 0], "each attempt answers for itself");
}

#[test]
fn a_blocked_worker_lends_its_cpus_once_and_gets_them_back_on_every_path() {
    let mut core = core_with(ResourceSet::new().with(CPU, 1.0));
    let ws = workers(&mut core, 1);
    let w = ws[0].0;
    let (session, _) = core.open_session(None);
    let t = TaskId::random(JobId(1));
    core.submit(session, vec![spec(t, ResourceSet::new().with(CPU, 1.0))]);
    assert_eq!(dispatched(&mut core).len(), 1);
    assert_eq!(core.exec.ledger.available().get(CPU), 0.0);
    core.worker_blocked(w);
    core.worker_blocked(w);
    assert_eq!(core.exec.ledger.available().get(CPU), 1.0, "lent once for two gets");
    core.worker_unblocked(w);
    assert_eq!(core.exec.ledger.available().get(CPU), 1.0, "one get still waits");
    // The worker dies while blocked: nothing is counted twice.
    core.on_worker_exit(w, "was killed");
    assert_eq!(core.exec.ledger.available().get(CPU), 1.0);
    assert_eq!(core.exec.ledger.available(), core.exec.ledger.total());
}

#[test]
fn starting_workers_and_killing_them_are_effects() {
    let mut core = core_with(ResourceSet::new().with(CPU, 2.0));
    core.prestart(2);
    let spawns = core.take_effects().into_iter().filter(|e| matches!(e, Effect::SpawnWorker(..))).count();
    assert_eq!(spawns, 2);
    let ws = workers(&mut core, 1);
    let (session, _) = core.open_session(None);
    let t = TaskId::random(JobId(1));
    core.submit(session, vec![spec(t, ResourceSet::new().with(CPU, 1.0))]);
    core.take_effects();
    core.cancel(&[t.return_id(0).to_bytes()], true, false);
    let kills: Vec<u32> = core
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::KillTree(pid) => Some(pid),
            _ => None,
        })
        .collect();
    assert_eq!(kills, [100], "the forced cancel kills worker {:?}'s tree", ws[0].0);
}
