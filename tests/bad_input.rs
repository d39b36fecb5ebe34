//! Garbage from peers and clients gets a clear error and leaves the cluster
//! healthy: corrupt frames on the worker socket, malformed ids and specs on
//! the raylet's gRPC API.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use shoal::{Client, Task};
use shoal_proto::v1 as pb;

async fn still_works(c: &Client) {
    let r = c.submit(Task::builtin("add").arg(40).arg(2)).await.unwrap();
    assert_eq!(c.get::<i64>(&r).await.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_frames_on_the_worker_socket_are_refused() {
    let cluster = common::cluster(1, 1.0).await;
    let socket = cluster.session_dir.join("raylet-0.sock");
    // A length far beyond any frame, a frame that does not decode, a task
    // result before any hello, and a hello with a malformed worker id.
    let bad: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        {
            let mut b = bytes::BytesMut::new();
            let done = pb::FromWorker { kind: Some(pb::from_worker::Kind::Done(pb::TaskDone::default())) };
            shoal::frame::encode_into(&done, &mut b);
            b.to_vec()
        },
        {
            let mut b = bytes::BytesMut::new();
            let hello = pb::FromWorker {
                kind: Some(pb::from_worker::Kind::Hello(pb::WorkerHello {
                    worker_id: bytes::Bytes::from_static(b"x"),
                    pid: 1,
                    token: cluster.token.as_ref().map(|t| t.expose().to_string()).unwrap_or_default(),
                })),
            };
            shoal::frame::encode_into(&hello, &mut b);
            b.to_vec()
        },
    ];
    for garbage in bad {
        let mut s = UnixStream::connect(&socket).unwrap();
        let _ = s.write_all(&garbage);
        drop(s);
    }
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    still_works(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_to_a_raylet_get_clear_errors() {
    let cluster = common::cluster(1, 1.0).await;
    let ch = shoal::net::connect(&cluster.raylets[0].address, cluster.token.as_ref()).await.unwrap();
    let mut raw = pb::raylet_client::RayletClient::new(ch);
    let bad_ref = pb::ObjectRef { object_id: bytes::Bytes::from_static(b"abc"), owner_address: String::new() };
    let e = raw
        .get_objects(pb::GetObjectsRequest { session_id: 0, after_seq: 0, refs: vec![bad_ref], timeout_ms: 10 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("object"), "{e}");
    let e = raw
        .get_objects(pb::GetObjectsRequest { session_id: 999, after_seq: 5, refs: vec![], timeout_ms: 10 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let e = raw
        .pull_object(pb::PullObjectRequest { object_id: bytes::Bytes::from(vec![0u8; 16]), offset: 0, length: 0 })
        .await;
    assert_eq!(e.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    let e =
        raw.cancel_task(pb::CancelTaskRequest { task_id: bytes::Bytes::from_static(b"?"), ..Default::default() }).await;
    assert_eq!(e.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));

    // A task with a malformed id, no function, zero returns, a negative
    // resource or an unknown argument fails alone, with a reason.
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    let r = c
        .submit(Task::builtin("identity").arg(1).resources(shoal::ResourceSet::new().with("cpu", -1.0)))
        .await
        .unwrap();
    assert!(c.get_value(&r).await.unwrap_err().to_string().contains("negative"));
    let ghost = c.add_ref(shoal::ObjectId([7; 16])).await.unwrap();
    let r = c.submit(Task::builtin("identity").arg(&ghost)).await.unwrap();
    let err = c.get_value(&r).await.unwrap_err().to_string();
    assert!(err.contains("ObjectLost") && err.contains("not known"), "{err}");
    still_works(&c).await;
}
