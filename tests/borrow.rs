//! Borrowed references across raylets (ARCHITECTURE §3): a reference
//! handed to a client of another raylet keeps its object alive at the
//! owner, feeds tasks on any node, and is released when its borrower lets
//! go or dies; a dead owner fails its borrowers with `OwnerDied`.

mod common;

use std::time::Duration;

use shoal::{Client, ErrorKind, Strategy, Task, Value};

const SIZE: usize = 3 << 20;

fn on(node: shoal::NodeId) -> Strategy {
    Strategy::NodeAffinity { node, soft: false }
}

async fn checksum_on(c: &Client, r: &shoal::ObjectRef, node: shoal::NodeId) -> serde_json::Value {
    let sum = c.submit(Task::builtin("checksum").arg(r).strategy(on(node))).await.unwrap();
    c.get(&sum).await.unwrap()
}

fn expected_checksum() -> serde_json::Value {
    let data = common::pattern(SIZE as u64);
    serde_json::json!({ "len": SIZE, "crc32": format!("{:08x}", crc32fast::hash(&data)) })
}

fn error_kind(v: Result<Value, shoal::Error>) -> ErrorKind {
    match v {
        Err(shoal::Error::Task(e)) => e.kind,
        other => panic!("expected a task error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_handed_to_another_raylets_client_keeps_its_object_and_feeds_tasks_on_any_node() {
    let cluster = common::cluster(2, 2.0).await;
    let (a, b) = (&cluster.raylets[0].address, &cluster.raylets[1].address);
    let (node_a, node_b) = (common::node(&cluster, 0), common::node(&cluster, 1));
    let owner = Client::connect(a).await.unwrap();
    let borrower = Client::connect(b).await.unwrap();

    let x = owner.put_value(Value::Bytes(common::pattern(SIZE as u64).into())).await.unwrap();
    let borrowed = borrower.borrow(x.id(), x.owner()).await.unwrap();
    assert_eq!(common::stats(a).await.lent_objects, 1, "the owner counts the borrow once it returns");
    assert_eq!(common::stats(b).await.borrowed_objects, 1);

    // The owner's own holder lets go: the object stays for the borrower.
    drop(x);
    owner.flush().await.unwrap();
    assert_eq!(common::stats(a).await.owned_objects, 1, "a borrowed object is not freed");
    match borrower.get_value(&borrowed).await.unwrap() {
        Value::Bytes(v) => assert!(v[..] == common::pattern(SIZE as u64)[..], "the value reads back intact"),
        other => panic!("expected bytes, got {other:?}"),
    }
    // Tasks owned by the borrower's raylet take it as an argument, wherever they run.
    assert_eq!(checksum_on(&borrower, &borrowed, node_b).await, expected_checksum());
    assert_eq!(checksum_on(&borrower, &borrowed, node_a).await, expected_checksum());

    // The last borrower lets go: the owner frees it, and nothing is left.
    drop(borrowed);
    borrower.flush().await.unwrap();
    common::wait_for("the owner frees the object once its borrower lets go", Duration::from_secs(10), || async {
        let (sa, sb) = (common::stats(a).await, common::stats(b).await);
        sa.owned_objects == 0 && sa.lent_objects == 0 && sa.object_count == 0 && sb.borrowed_objects == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_of_another_raylet_waits_for_a_borrowed_argument_still_being_computed() {
    let cluster = common::cluster(2, 2.0).await;
    let (a, b) = (&cluster.raylets[0].address, &cluster.raylets[1].address);
    let node_a = common::node(&cluster, 0);
    let owner = Client::connect(a).await.unwrap();
    let borrower = Client::connect(b).await.unwrap();

    // A result that takes a while, made on the owner's node.
    let data = owner.submit(Task::builtin("bytes").arg(SIZE as u64).strategy(on(node_a))).await.unwrap();
    let slow = owner.submit(Task::builtin("delay").arg(&data).arg(0.5).strategy(on(node_a))).await.unwrap();
    // Submissions are pipelined: a reference handed out of band is only
    // known to its owner once the client that made it has flushed.
    owner.flush().await.unwrap();
    let borrowed = borrower.borrow(slow.id(), slow.owner()).await.unwrap();
    drop(slow);
    drop(data);
    let sum = borrower.submit(Task::builtin("checksum").arg(&borrowed)).await.unwrap();
    drop(borrowed);
    // The task holds the borrow until it is done, then lets go.
    assert_eq!(borrower.get::<serde_json::Value>(&sum).await.unwrap(), expected_checksum());
    common::wait_for("both raylets hold nothing once the task is done", Duration::from_secs(10), || async {
        let (sa, sb) = (common::stats(a).await, common::stats(b).await);
        sa.lent_objects == 0 && sb.borrowed_objects == 0 && sa.object_count == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_borrower_lets_go_and_a_dead_owner_fails_its_borrowers() {
    let mut cluster = common::cluster(3, 2.0).await;
    let a = cluster.raylets[0].address.clone();
    let (b, c) = (cluster.raylets[1].address.clone(), cluster.raylets[2].address.clone());
    let owner = Client::connect(&a).await.unwrap();

    // A borrower killed with SIGKILL: the owner drops its borrows and frees.
    {
        let borrower = Client::connect(&b).await.unwrap();
        let x = owner.put_value(Value::Bytes(common::pattern(SIZE as u64).into())).await.unwrap();
        let _held = borrower.borrow(x.id(), x.owner()).await.unwrap();
        drop(x);
        owner.flush().await.unwrap();
        assert_eq!(common::stats(&a).await.lent_objects, 1);
        cluster.kill_raylet(1);
        common::wait_for("the owner frees what a dead borrower held", Duration::from_secs(15), || async {
            let s = common::stats(&a).await;
            s.lent_objects == 0 && s.owned_objects == 0 && s.object_count == 0
        })
        .await;
    }

    // The owner killed: what its borrower holds reads as `OwnerDied`, and a
    // task given it fails saying so instead of hanging.
    let borrower = Client::connect(&c).await.unwrap();
    let y =
        owner.submit(Task::builtin("bytes").arg(SIZE as u64).strategy(on(common::node(&cluster, 0)))).await.unwrap();
    owner.get_value(&y).await.unwrap();
    let held = borrower.borrow(y.id(), y.owner()).await.unwrap();
    cluster.kill_raylet(0);
    common::wait_for("the borrower hears that the owner died", Duration::from_secs(15), || async {
        common::stats(&c).await.known_nodes <= 2
    })
    .await;
    assert_eq!(error_kind(borrower.get_value(&held).await), ErrorKind::OwnerDied);
    let sum = borrower.submit(Task::builtin("checksum").arg(&held)).await.unwrap();
    let got = borrower.get_timeout(&sum, Some(Duration::from_secs(20))).await;
    assert_eq!(error_kind(got), ErrorKind::OwnerDied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowing_an_object_its_owner_already_freed_fails_clearly() {
    let cluster = common::cluster(2, 1.0).await;
    let (a, b) = (&cluster.raylets[0].address, &cluster.raylets[1].address);
    let owner = Client::connect(a).await.unwrap();
    let borrower = Client::connect(b).await.unwrap();
    let x = owner.put_value(Value::Bytes(common::pattern(SIZE as u64).into())).await.unwrap();
    let (id, addr) = (x.id(), x.owner().to_string());
    drop(x);
    owner.flush().await.unwrap();
    common::wait_for("the owner frees the object", Duration::from_secs(10), || async {
        common::stats(a).await.owned_objects == 0
    })
    .await;
    let late = borrower.borrow(id, &addr).await.unwrap();
    let sum = borrower.submit(Task::builtin("checksum").arg(&late)).await.unwrap();
    let e = match borrower.get_value(&sum).await {
        Err(shoal::Error::Task(e)) => e,
        other => panic!("expected a task error, got {other:?}"),
    };
    assert_eq!(e.kind, ErrorKind::ObjectLost);
    assert!(e.message.contains("freed by its owner"), "{}", e.message);
    drop(late);
    common::wait_for("the borrower forgets it", Duration::from_secs(10), || async {
        common::stats(b).await.borrowed_objects == 0
    })
    .await;
}
