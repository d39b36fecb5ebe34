//! Secure by default: every gRPC method of every component, every REST
//! route under `/api` and the worker socket refuse a caller without the
//! cluster's token, or with a wrong one, and do nothing for it; the token
//! appears in no answer, metric or log; corrupt messages from a caller with
//! the token get errors and leave the cluster healthy.
//!
//! The gRPC table is the generated list of every method (`METHODS`), and
//! the REST table is the served OpenAPI document, so a method or route added
//! later is checked without this file changing.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use shoal::rest::client::{Method, RestClient};
use shoal::{Client, Task};
use shoal_proto::v1 as pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// Sends and receives message bytes as they are, so any method can be
/// called with anything.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Calls `path` at `addr` with `body`, presenting `authorization` (a whole
/// header value) when given. `None`: no answer within a few seconds.
async fn call(addr: &str, path: &'static str, body: Bytes, authorization: Option<&str>) -> Option<tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut req = tonic::Request::new(body);
    if let Some(a) = authorization {
        req.metadata_mut().insert("authorization", a.parse().unwrap());
    }
    let answer = tokio::time::timeout(Duration::from_secs(3), async {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        grpc.unary(req, PathAndQuery::from_static(path), Raw).await
    })
    .await
    .ok()?;
    Some(match answer {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    })
}

/// The component serving `path`.
fn target<'a>(cluster: &'a shoal::local_cluster::LocalCluster, path: &str) -> &'a str {
    if path.starts_with("/shoal.v1.Gcs/") {
        &cluster.gcs_address
    } else {
        assert!(path.starts_with("/shoal.v1.Raylet/"), "{path} belongs to no component this test knows");
        &cluster.raylets[0].address
    }
}

async fn still_works(c: &Client) {
    let r = c.submit(Task::builtin("add").arg(40).arg(2)).await.unwrap();
    assert_eq!(c.get::<i64>(&r).await.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_method_refuses_a_caller_without_the_token_and_does_nothing_for_it() {
    let cluster = common::cluster(1, 1.0).await;
    let token = cluster.token.clone().expect("a cluster has a token by default");
    let right = format!("Bearer {}", token.expose());
    let wrong = format!("Bearer {}x", &token.expose()[..token.expose().len() - 1]);
    assert!(!shoal_proto::METHODS.is_empty());
    for m in shoal_proto::METHODS {
        let addr = target(&cluster, m.path);
        for (who, auth) in
            [("no token", None), ("a wrong token", Some(wrong.as_str())), ("not bearer", Some("Basic x"))]
        {
            let s = call(addr, m.path, Bytes::new(), auth).await.unwrap_or_else(|| panic!("{} hung", m.path));
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{} with {who}: {s:?}", m.path);
            assert!(s.message().contains("token") && !s.message().contains(token.expose()), "{}: {s:?}", m.path);
        }
        // The right token gets past the check (whatever the method then
        // makes of an empty message).
        if let Some(s) = call(addr, m.path, Bytes::new(), Some(&right)).await {
            assert_ne!(s.code(), tonic::Code::Unauthenticated, "{} refuses the right token: {s:?}", m.path);
        }
    }

    // Real requests without the token change nothing: no node registered,
    // no key written, no task run.
    let fake = pb::RegisterNodeRequest {
        node: Some(pb::NodeInfo {
            node_id: Bytes::from(vec![7u8; 16]),
            address: "127.0.0.1:9".into(),
            ..Default::default()
        }),
    };
    let put = pb::KvPutRequest { key: "intruder".into(), value: Bytes::from_static(b"x"), overwrite: true };
    for (path, body) in [
        ("/shoal.v1.Gcs/RegisterNode", prost::Message::encode_to_vec(&fake)),
        ("/shoal.v1.Gcs/KvPut", prost::Message::encode_to_vec(&put)),
    ] {
        let s = call(&cluster.gcs_address, path, Bytes::from(body), None).await.unwrap();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
    }
    let nodes = cluster.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.address != "127.0.0.1:9"), "a node was registered without the token");
    let c = Client::connect(&cluster.raylets[0].address).await.expect("this process's client finds the token");
    assert_eq!(c.kv_get("intruder").await.unwrap(), None, "a key was written without the token");
    still_works(&c).await;

    // The token is in no metric and no log line of any process.
    let mut scrapes = vec![cluster.http_address.clone()];
    scrapes.extend(cluster.all_raylets().map(|r| r.http_address.clone()));
    for http in scrapes {
        let r = RestClient::anonymous(&http).unwrap().raw(Method::GET, "/metrics", None).await.unwrap();
        assert_eq!(r.status, 200, "/metrics of {http} stays open");
        assert!(!String::from_utf8_lossy(&r.body).contains(token.expose()), "the token is in {http}/metrics");
    }
    for entry in std::fs::read_dir(cluster.session_dir.join("logs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!text.contains(token.expose()), "the token is in {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_messages_with_the_token_get_errors_and_leave_the_cluster_healthy() {
    let cluster = common::cluster(1, 1.0).await;
    let right = format!("Bearer {}", cluster.token.as_ref().unwrap().expose());
    let pids = cluster.pids();
    for m in shoal_proto::METHODS {
        let addr = target(&cluster, m.path);
        for _ in 0..4 {
            // An invalid wire type in the first tag, or a field longer
            // than the message, then random bytes: never a valid message.
            let mut body: Vec<u8> =
                if fastrand::bool() { vec![0x0e | (fastrand::u8(1..16) << 3)] } else { vec![0x0a, 0xff, 0x7f] };
            body.extend((0..fastrand::usize(0..512)).map(|_| fastrand::u8(..)));
            if let Some(s) = call(addr, m.path, Bytes::from(body), Some(&right)).await {
                assert_ne!(s.code(), tonic::Code::Ok, "{} accepted a corrupt message", m.path);
                assert_ne!(s.code(), tonic::Code::Unauthenticated, "{}", m.path);
            }
        }
    }
    // A control request larger than its method's limit is refused before
    // the server buffers it; a value-carrying one of the same size is not.
    let big = Bytes::from(vec![0u8; (16 << 20) + 1]);
    let s = call(&cluster.raylets[0].address, "/shoal.v1.Raylet/NodeStats", big.clone(), Some(&right)).await.unwrap();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("NodeStats"), "{s:?}");
    let s = call(&cluster.raylets[0].address, "/shoal.v1.Raylet/Put", big, Some(&right)).await.unwrap();
    assert_ne!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    for p in pids {
        assert!(shoal::process::is_running(p), "process {p} died of a corrupt message");
    }
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    still_works(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_refuses_a_caller_without_the_token() {
    let cluster = common::cluster(0, 1.0).await;
    let token = cluster.token.clone().unwrap();
    let anon = RestClient::anonymous(&cluster.http_address).unwrap();
    let wrong = RestClient::new(&cluster.http_address, Some("not-the-token".into())).unwrap();
    let doc = anon.raw(Method::GET, "/openapi.json", None).await.unwrap();
    assert_eq!(doc.status, 200, "the OpenAPI document stays open");
    let doc: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path.split('/').map(|s| if s.starts_with('{') { "00000001" } else { s }).collect::<Vec<_>>();
        let concrete = concrete.join("/");
        for method in ops.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let body = Some(("application/json", Bytes::from_static(b"{\"tasks\": []}")));
            for c in [&anon, &wrong] {
                let r = c.raw(method.clone(), &concrete, body.clone()).await.unwrap();
                if path.starts_with("/api") {
                    assert_eq!(r.status, 401, "{method} {path} without the token");
                    assert!(!String::from_utf8_lossy(&r.body).contains(token.expose()));
                    checked += 1;
                } else {
                    assert_ne!(r.status, 401, "{method} {path} is meant to be open");
                }
            }
        }
    }
    assert!(checked >= 16, "only {checked} route checks: is the OpenAPI document complete?");
    // No job was made by any of it.
    let jobs = RestClient::new(&cluster.http_address, None).unwrap().jobs(None).await.unwrap();
    assert!(jobs.is_empty(), "a job was submitted without the token: {jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_socket_takes_only_workers_with_the_token() {
    let cluster = common::cluster(1, 1.0).await;
    let socket = cluster.session_dir.join("raylet-0.sock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is the user's alone");
    let hello = |token: &str| {
        let mut b = bytes::BytesMut::new();
        let msg = pb::FromWorker {
            kind: Some(pb::from_worker::Kind::Hello(pb::WorkerHello {
                worker_id: shoal::ids::WorkerId::random().to_bytes(),
                pid: std::process::id(),
                token: token.to_string(),
            })),
        };
        shoal::frame::encode_into(&msg, &mut b);
        b.to_vec()
    };
    // Whether the raylet keeps a connection that said `frame` open.
    let kept_open = |frame: Vec<u8>| {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(&frame).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    };
    assert!(!kept_open(hello("")), "a worker without the token was taken");
    assert!(!kept_open(hello("wrong")), "a worker with a wrong token was taken");
    assert!(kept_open(hello(cluster.token.as_ref().unwrap().expose())), "a worker with the token was refused");
    let c = Client::connect(&cluster.raylets[0].address).await.unwrap();
    still_works(&c).await;
}

#[test]
fn a_raylet_without_the_token_or_with_a_wrong_one_does_not_join() {
    let home = std::env::temp_dir().join(format!("shoal-auth-home-{}", fastrand::u64(..)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(common::cluster(0, 1.0));
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(common::binary());
        cmd.args([
            "raylet",
            "--gcs",
            &cluster.gcs_address,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ])
        .env("SHOAL_HOME", &home)
        .env_remove(shoal::auth::ENV_TOKEN)
        .env_remove(shoal::auth::ENV_TOKEN_FILE)
        .stdin(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "the raylet ran");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&[]);
    assert!(e.contains("needs the cluster token") && e.contains("--insecure-no-auth"), "{e}");
    let e = run(&[(shoal::auth::ENV_TOKEN, "wrong-token")]);
    assert!(e.to_lowercase().contains("token") && !e.contains("panicked"), "{e}");
    assert!(!e.contains(cluster.token.as_ref().unwrap().expose()));
    assert_eq!(rt.block_on(cluster.nodes()).unwrap().len(), 1, "only the head's raylet joined");
    let _ = std::fs::remove_dir_all(&home);
}
