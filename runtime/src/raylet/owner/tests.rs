//! The owner on plain data: no runtime, no sockets; what it asks for is
//! read from its effects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;

use super::*;
use crate::ids::JobId;
use crate::raylet::effects::Effect;
use crate::resources::{ResourceSet, CPU};

const PEER: &str = "10.0.0.2:1";

fn events() -> TaskEvents {
    TaskEvents::new(Arc::new(crate::metrics::RayletMetrics::new()))
}

fn config() -> Arc<RayletConfig> {
    let mut c = RayletConfig::new("127.0.0.1:1", ResourceSet::new());
    c.infeasible_timeout = Duration::from_millis(0);
    Arc::new(c)
}

/// An owner on a node with no CPUs, beside a peer with two.
fn owner_beside_a_peer() -> (Owner, NodeId) {
    let me = NodeId([1; 8]);
    let peer = NodeId([2; 8]);
    let mut o = Owner::new(me, "10.0.0.1:1".into(), config(), events());
    let two = ResourceSet::new().with(CPU, 2.0);
    let info = pb::NodeInfo {
        node_id: peer.to_bytes(),
        address: PEER.into(),
        total: Some((&two).into()),
        state: pb::NodeState::NodeAlive as i32,
        ..Default::default()
    };
    o.view.apply_snapshot(&[info], &[], me);
    o.view.set_local(me, "10.0.0.1:1", &ResourceSet::new(), &ResourceSet::new(), 0, &HashMap::new());
    (o, peer)
}

fn spec(task: TaskId, cpus: f64, max_retries: i32) -> pb::TaskSpec {
    pb::TaskSpec {
        task_id: task.to_bytes(),
        name: format!("t{task}"),
        function: Some(pb::FunctionDescriptor { kind: Some(pb::function_descriptor::Kind::Builtin("add".into())) }),
        num_returns: 1,
        resources: Some((&ResourceSet::new().with(CPU, cpus)).into()),
        max_retries,
        ..Default::default()
    }
}

fn peer_cpus(o: &Owner, peer: NodeId) -> f64 {
    o.view.get(&peer).map(|n| n.available.get(CPU)).unwrap_or(-1.0)
}

fn executes(o: &mut Owner) -> Vec<pb::TaskSpec> {
    std::mem::take(&mut o.out)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Peer { msg: PeerMsg::Execute(t), .. } => Some(t),
            _ => None,
        })
        .collect()
}

/// A successful result of attempt 0 of `task` on `node`, inline.
fn inline_result(task: TaskId, node: NodeId, value: pb::ObjectValue) -> pb::TaskResult {
    pb::TaskResult {
        task_id: task.to_bytes(),
        node_id: node.to_bytes(),
        node_address: PEER.into(),
        returns: vec![pb::ReturnObject {
            object_id: task.return_id(0).to_bytes(),
            inline_value: Some(value),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn failure(task: TaskId, attempt: u32, node: NodeId) -> pb::TaskResult {
    pb::TaskResult {
        task_id: task.to_bytes(),
        attempt,
        node_id: node.to_bytes(),
        node_address: PEER.into(),
        error: Some((&crate::error::TaskError::new(crate::error::ErrorKind::TaskFailed, "boom")).into()),
        ..Default::default()
    }
}

#[test]
fn a_placement_reserves_the_peer_until_it_answers_on_every_path() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);

    // Failure with no retries left.
    let a = TaskId::random(JobId(1));
    o.submit(session, vec![spec(a, 1.0, 0)]);
    assert_eq!(executes(&mut o).len(), 1);
    assert_eq!(peer_cpus(&o, peer), 1.0, "reserved while it runs");
    o.apply_result(failure(a, 0, peer));
    assert_eq!(peer_cpus(&o, peer), 2.0, "released when it failed");

    // Spillback, then rescheduled on the same peer: one reservation, not two.
    let b = TaskId::random(JobId(1));
    o.submit(session, vec![spec(b, 1.0, 0)]);
    executes(&mut o);
    o.on_spillback(peer, pb::Spillback { task_id: b.to_bytes(), attempt: 0, reason: "busy".into() });
    let resent = executes(&mut o);
    assert_eq!(resent.len(), 1, "the only feasible node gets it again");
    assert_eq!(peer_cpus(&o, peer), 1.0);

    // Cancelled while there.
    o.cancel(&[b.return_id(0).to_bytes()], false, false);
    assert_eq!(peer_cpus(&o, peer), 2.0, "released when cancelled");

    // Sending failed.
    let c = TaskId::random(JobId(1));
    o.submit(session, vec![spec(c, 1.0, 0)]);
    executes(&mut o);
    o.on_dispatch_failed(Some(peer), vec![(c, 0)], "connection refused");
    assert_eq!(peer_cpus(&o, peer), 2.0, "released when it could not be sent");
}

#[test]
fn a_retry_is_an_effect_with_a_back_off_not_a_spawned_task() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let t = TaskId::random(JobId(1));
    let mut s = spec(t, 1.0, 2);
    s.retry_exceptions = true;
    o.submit(session, vec![s]);
    executes(&mut o);
    o.apply_result(failure(t, 0, peer));
    let retry = o.out.iter().find_map(|e| match e {
        Effect::RetryLater { task, attempt, delay } => Some((*task, *attempt, *delay)),
        _ => None,
    });
    let (task, attempt, delay) = retry.expect("a retry is scheduled");
    assert_eq!((task, attempt), (t, 1));
    assert!(delay > Duration::ZERO);
    o.out.clear();
    o.schedule_retry(t, 1);
    assert_eq!(executes(&mut o).iter().map(|s| s.attempt).collect::<Vec<_>>(), [1]);
}

#[test]
fn waiters_of_a_call_are_removed_when_it_ends() {
    let (mut o, _) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let t = TaskId::random(JobId(1));
    o.submit(session, vec![spec(t, 1.0, 0)]);
    let id = t.return_id(0);
    let (tx, _rx) = mpsc::channel(4);
    for _ in 0..100 {
        assert!(matches!(o.lookup(id, Some(&tx)), Lookup::Pending));
    }
    assert_eq!(o.objects[&id].waiters.len(), 1, "one call, one waiter");
    o.unwatch(&[id], &tx);
    assert!(o.objects[&id].waiters.is_empty());

    // Calls that ended without unwatching (their receiver is gone) are pruned.
    for _ in 0..100 {
        let (tx, rx) = mpsc::channel(1);
        o.lookup(id, Some(&tx));
        drop(rx);
    }
    let (tx, _rx) = mpsc::channel(1);
    o.lookup(id, Some(&tx));
    assert_eq!(o.objects[&id].waiters.len(), 1);
}

#[test]
fn an_infeasible_task_fails_with_its_reason_and_is_only_replaced_on_membership_change() {
    let (mut o, _) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let t = TaskId::random(JobId(1));
    o.submit(session, vec![spec(t, 64.0, 0)]);
    assert!(executes(&mut o).is_empty());
    o.expire_infeasible();
    let value = match o.lookup(t.return_id(0), None) {
        Lookup::Inline(v) => v,
        _ => panic!("the task must have failed"),
    };
    let e = crate::value::decode_error(&value);
    assert_eq!(e.kind, crate::error::ErrorKind::Infeasible);
    assert!(e.message.contains("cpu"), "{}", e.message);
}

#[test]
fn a_task_placed_here_goes_to_the_local_queue() {
    let me = NodeId([1; 8]);
    let mut o = Owner::new(me, "10.0.0.1:1".into(), config(), events());
    let one = ResourceSet::new().with(CPU, 1.0);
    o.view.set_local(me, "10.0.0.1:1", &one, &one, 0, &HashMap::new());
    let (session, _) = o.open_session(None);
    let t = TaskId::random(JobId(1));
    o.submit(session, vec![spec(t, 1.0, 0)]);
    assert_eq!(o.local.len(), 1);
    assert_eq!(o.local[0].owner_address, "10.0.0.1:1");
    assert!(executes(&mut o).is_empty());
}

#[test]
fn freeing_the_last_reference_deletes_everywhere_and_drops_the_task() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let t = TaskId::random(JobId(1));
    o.submit(session, vec![spec(t, 1.0, 0)]);
    executes(&mut o);
    let id = t.return_id(0);
    o.apply_result(pb::TaskResult {
        task_id: t.to_bytes(),
        node_id: peer.to_bytes(),
        node_address: PEER.into(),
        returns: vec![pb::ReturnObject { object_id: id.to_bytes(), stored_size: 1 << 20, ..Default::default() }],
        ..Default::default()
    });
    assert!(matches!(o.lookup(id, None), Lookup::Stored { .. }));
    o.update_refs(session, &[], &[id.to_bytes()], &[]);
    assert!(o.objects.is_empty() && o.tasks.is_empty());
    let freed_at_peer =
        o.out.iter().any(|e| matches!(e, Effect::Peer { addr, msg: PeerMsg::Free(x) } if addr == PEER && *x == id));
    assert!(freed_at_peer);
}

// ----------------------------------------------------------------------
// Borrowed references
// ----------------------------------------------------------------------

/// An owner holding a 1 MiB `put` object of `session` in its own store.
fn owner_with_a_put(o: &mut Owner, session: u64) -> ObjectId {
    let id = TaskId::random(JobId(1)).put_id(0);
    o.put(session, id, 1 << 20, None, &[]).unwrap();
    id
}

fn deletes(o: &Owner, id: ObjectId) -> bool {
    o.out.iter().any(|e| matches!(e, Effect::Delete(x) if *x == id))
}

#[test]
fn a_borrowed_object_outlives_its_holders_until_every_borrower_lets_go_crossed_updates_included() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let id = owner_with_a_put(&mut o, session);
    assert!(o.update_borrows(peer, &[id.to_bytes()], &[]).is_empty(), "a known object is borrowed");
    assert_eq!(o.lent, 1);
    o.update_refs(session, &[], &[id.to_bytes()], &[]);
    assert!(o.objects.contains_key(&id) && !deletes(&o, id), "a borrowed object is never freed");

    // The borrower let go and borrowed again, and its new (acknowledged)
    // add overtook the release of the old borrow (queued in its outbox):
    // counted, the release does not end the new borrow.
    o.update_borrows(peer, &[id.to_bytes()], &[]);
    o.update_borrows(peer, &[], &[id.to_bytes()]);
    assert!(o.objects.contains_key(&id) && !deletes(&o, id), "the newer borrow keeps the object");
    o.update_borrows(peer, &[], &[id.to_bytes()]);
    assert!(!o.objects.contains_key(&id) && deletes(&o, id), "freed once adds and removes cancel out");
    assert_eq!(o.lent, 0);

    // An object this owner no longer has is refused, not counted.
    let unknown = o.update_borrows(peer, &[id.to_bytes()], &[]);
    assert_eq!(unknown, vec![id.to_bytes()]);
}

#[test]
fn a_dead_borrower_lets_go_of_everything_it_borrowed() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let id = owner_with_a_put(&mut o, session);
    o.update_borrows(peer, &[id.to_bytes(), id.to_bytes()], &[]);
    o.update_refs(session, &[], &[id.to_bytes()], &[]);
    assert!(o.objects.contains_key(&id));
    o.on_node_dead(peer);
    assert!(!o.objects.contains_key(&id) && deletes(&o, id));
    assert_eq!(o.lent, 0);
}

fn ref_arg(id: ObjectId, owner: &str) -> pb::Arg {
    pb::Arg {
        kind: Some(pb::arg::Kind::ObjectRef(pb::RefArg {
            object_id: id.to_bytes(),
            owner_address: owner.into(),
            ..Default::default()
        })),
    }
}

fn foreign_arg(id: ObjectId) -> pb::Arg {
    ref_arg(id, PEER)
}

fn task_with_foreign_arg(o: &mut Owner, session: u64, id: ObjectId) -> TaskId {
    let t = TaskId::random(JobId(2));
    let mut s = spec(t, 1.0, 0);
    s.args.push(foreign_arg(id));
    o.submit(session, vec![s]);
    t
}

fn failed_with(o: &mut Owner, t: TaskId) -> crate::error::TaskError {
    match o.lookup(t.return_id(0), None) {
        Lookup::Inline(v) if crate::value::is_error(&v) => crate::value::decode_error(&v),
        _ => panic!("task {t} should have failed"),
    }
}

#[test]
fn a_task_with_an_argument_owned_elsewhere_borrows_it_waits_for_it_and_lets_go_when_done() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let x = TaskId::random(JobId(1)).return_id(0);
    let t = task_with_foreign_arg(&mut o, session, x);

    // The message that took the borrow waits for its registration.
    let pending = o.take_pending_borrows();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].first && pending[0].owner == PEER && pending[0].id == x);
    assert_eq!(o.borrowed, 1);
    assert!(executes(&mut o).is_empty(), "the task waits for its argument");
    o.borrow_registered(x, PEER, Ok(()));
    assert!(*pending[0].settled.borrow(), "the registration is settled");
    assert!(o.out.iter().any(|e| matches!(e, Effect::ResolveBorrowed { id, .. } if *id == x)));

    // Its owner says it is ready in the peer's store: the task goes there
    // with the real owner and the copy's location.
    let location = pb::Location { node_id: peer.to_bytes(), address: PEER.into() };
    let st = pb::ObjectStatus {
        kind: pb::ObjectStatusKind::ObjectReady as i32,
        locations: vec![location],
        size: 3 << 20,
        ..Default::default()
    };
    o.borrow_resolved(x, Ok(st));
    let sent = executes(&mut o);
    assert_eq!(sent.len(), 1);
    let Some(pb::arg::Kind::ObjectRef(r)) = &sent[0].args[0].kind else { panic!("a by-reference argument") };
    assert_eq!(r.owner_address, PEER);
    assert_eq!(r.locations.len(), 1);
    assert_eq!(r.size, 3 << 20);

    // Done: the borrow ends at the owner, and nothing of it is deleted here
    // (the copy on this node, if any, may be the owner's primary).
    o.apply_result(inline_result(t, peer, crate::value::Value::Json(1.into()).encode()));
    assert!(!o.objects.contains_key(&x));
    assert_eq!(o.borrowed, 0);
    let unborrowed = o
        .out
        .iter()
        .any(|e| matches!(e, Effect::Peer { addr, msg: PeerMsg::Unborrow(id) } if addr == PEER && *id == x));
    assert!(unborrowed, "the owner hears that the borrow ended");
    assert!(!deletes(&o, x));
}

#[test]
fn a_foreign_argument_that_cannot_be_borrowed_fails_its_task_saying_why() {
    // Freed at its owner before the borrow arrived.
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let x = TaskId::random(JobId(1)).return_id(0);
    let t = task_with_foreign_arg(&mut o, session, x);
    o.borrow_registered(x, PEER, Err(borrows::unknown_at_owner(x, PEER)));
    let e = failed_with(&mut o, t);
    assert_eq!(e.kind, crate::error::ErrorKind::ObjectLost);
    assert!(e.message.contains("freed by its owner"), "{}", e.message);

    // Its owner dies while the task waits for it.
    let y = TaskId::random(JobId(1)).return_id(0);
    let t = task_with_foreign_arg(&mut o, session, y);
    o.borrow_registered(y, PEER, Ok(()));
    o.on_node_dead(peer);
    let e = failed_with(&mut o, t);
    assert_eq!(e.kind, crate::error::ErrorKind::OwnerDied);
    assert!(e.message.contains(PEER), "{}", e.message);
}

#[test]
fn a_borrow_whose_holds_end_before_its_owner_answers_is_undone_at_the_owner() {
    let (mut o, _) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let x = TaskId::random(JobId(1)).return_id(0);
    let wire = pb::ObjectRef { object_id: x.to_bytes(), owner_address: PEER.into() };
    o.update_refs(session, &[], &[], &[wire]);
    assert_eq!(o.take_pending_borrows().len(), 1);
    o.update_refs(session, &[], &[x.to_bytes()], &[]);
    assert!(!o.objects.contains_key(&x), "no hold is left");
    assert!(!o.out.iter().any(|e| matches!(e, Effect::Peer { msg: PeerMsg::Unborrow(_), .. })));
    o.borrow_registered(x, PEER, Ok(()));
    let undone = o.out.iter().any(|e| matches!(e, Effect::Peer { msg: PeerMsg::Unborrow(id), .. } if *id == x));
    assert!(undone, "a registration that arrives after the last hold is released at once");
}

#[test]
fn a_second_hold_on_a_borrow_still_registering_waits_for_it() {
    let (mut o, _) = owner_beside_a_peer();
    let (s1, _) = o.open_session(None);
    let (s2, _) = o.open_session(None);
    let x = TaskId::random(JobId(1)).return_id(0);
    let wire = pb::ObjectRef { object_id: x.to_bytes(), owner_address: PEER.into() };
    o.update_refs(s1, &[], &[], std::slice::from_ref(&wire));
    let first = o.take_pending_borrows();
    o.update_refs(s2, &[], &[], &[wire]);
    let second = o.take_pending_borrows();
    assert!(first[0].first && !second[0].first);
    assert!(!*second[0].settled.borrow());
    o.borrow_registered(x, PEER, Ok(()));
    assert!(*second[0].settled.borrow());
    // Both sessions hold it; one closing keeps the borrow.
    o.close_session(s1);
    assert!(o.objects.contains_key(&x));
    o.close_session(s2);
    assert!(!o.objects.contains_key(&x));
}

// ----------------------------------------------------------------------
// References inside values
// ----------------------------------------------------------------------

fn wire(o: &Owner, id: ObjectId) -> pb::ObjectRef {
    pb::ObjectRef { object_id: id.to_bytes(), owner_address: o.address.clone() }
}

fn value_with(refs: Vec<pb::ObjectRef>) -> pb::ObjectValue {
    pb::ObjectValue { format: pb::Format::Pickle5 as i32, data: bytes::Bytes::from_static(b"v"), nested_refs: refs }
}

#[test]
fn a_stored_value_holds_the_references_inside_it_until_it_is_freed() {
    let (mut o, _) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let inner = owner_with_a_put(&mut o, session);
    let outer = TaskId::random(JobId(1)).put_id(1);
    let v = value_with(vec![wire(&o, inner)]);
    o.put(session, outer, 1, Some(v.clone()), &v.nested_refs).unwrap();
    o.update_refs(session, &[], &[inner.to_bytes()], &[]);
    assert!(o.objects.contains_key(&inner), "the outer value holds it");
    o.update_refs(session, &[], &[outer.to_bytes()], &[]);
    assert!(!o.objects.contains_key(&outer) && !o.objects.contains_key(&inner), "both go together");
}

#[test]
fn a_task_holds_the_references_inside_its_arguments_without_waiting_for_them() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    // A pending result, referred to inside a by-value argument.
    let producer = TaskId::random(JobId(1));
    o.submit(session, vec![spec(producer, 1.0, 0)]);
    let pending = producer.return_id(0);
    let t = TaskId::random(JobId(1));
    let mut s = spec(t, 1.0, 0);
    s.args.push(pb::Arg { kind: Some(pb::arg::Kind::Value(value_with(vec![wire(&o, pending)]))) });
    o.submit(session, vec![s]);
    let sent = executes(&mut o);
    assert!(sent.iter().any(|s| s.task_id == t.to_bytes()), "a nested reference is not a dependency");
    o.update_refs(session, &[], &[pending.to_bytes()], &[]);
    assert!(o.objects.contains_key(&pending), "the task holds it");
    o.apply_result(inline_result(t, peer, crate::value::Value::Json(1.into()).encode()));
    o.update_refs(session, &[], &[t.return_id(0).to_bytes()], &[]);
    o.cancel(&[pending.to_bytes()], false, false);
    assert!(!o.objects.contains_key(&pending), "released with the task");
}

#[test]
fn references_lent_for_a_result_live_until_the_result_is_delivered_then_belong_to_it() {
    let (mut o, peer) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let t = TaskId::random(JobId(1));
    o.submit(session, vec![spec(t, 1.0, 0)]);
    executes(&mut o);
    // The worker's own put, returned inside the task's result.
    let (worker_session, _) = o.open_session(None);
    let made = owner_with_a_put(&mut o, worker_session);
    o.lend(t, 0, &[wire(&o, made)]);
    o.close_session(worker_session);
    assert!(o.objects.contains_key(&made), "lent: the worker's session is gone, the object is not");
    let result = value_with(vec![wire(&o, made)]);
    o.apply_result(inline_result(t, peer, result));
    o.release_lent(t, 0);
    assert!(o.objects.contains_key(&made), "the result holds it now");
    o.update_refs(session, &[], &[t.return_id(0).to_bytes()], &[]);
    assert!(!o.objects.contains_key(&made), "freed with the result");
    assert!(o.lent_for_results.is_empty());
}

#[test]
fn a_failure_at_the_root_of_a_chain_of_twenty_thousand_tasks_fails_them_all_without_recursing() {
    let (mut o, _) = owner_beside_a_peer();
    let (session, _) = o.open_session(None);
    let root = TaskId::random(JobId(1));
    o.submit(session, vec![spec(root, 1.0, 0)]);
    let mut prev = root;
    let mut specs = Vec::new();
    for _ in 0..20_000 {
        let t = TaskId::random(JobId(1));
        let mut s = spec(t, 1.0, 0);
        s.args.push(ref_arg(prev.return_id(0), &o.address));
        specs.push(s);
        prev = t;
    }
    o.submit(session, specs);
    o.cancel(&[root.return_id(0).to_bytes()], false, false);
    let e = failed_with(&mut o, prev);
    assert_eq!(e.kind, crate::error::ErrorKind::Cancelled, "{e}");
    assert_eq!(e.task_id, root.to_string(), "the error names the task that failed first");
    assert!(e.message.len() < 200, "the message does not grow down the chain: {} bytes", e.message.len());
}
