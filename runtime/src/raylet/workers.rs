//! Worker processes: starting them, and the local socket they connect back on.
//!
//! The raylet starts worker processes of the kind a task needs (`shoal
//! worker` for builtins and commands, a Python interpreter running
//! `shoal._worker` for Python functions) with the socket path and a worker
//! id in the environment. Each worker
//! connects, says hello, then takes `ExecuteTask` frames and answers with
//! `TaskDone` frames. Workers die with their raylet: they get SIGKILL when it
//! exits (`PR_SET_PDEATHSIG`), and exit on their own when the socket closes.
//! Workers the raylet did not start (an external worker container sharing
//! the socket) are accepted the same way. A hello without the cluster's
//! token is refused (the socket is also the user's alone, mode 0600); the
//! raylet hands the token to the workers it starts in `SHOAL_TOKEN`.

use std::sync::Arc;

use bytes::BytesMut;
use shoal_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::frame;
use crate::ids::WorkerId;
use crate::raylet::executor::worker_pool::WorkerKind;
use crate::raylet::executor::{store_returns, Done};
use crate::raylet::Inner;
use crate::value::INLINE_LIMIT;

/// Environment variable naming the raylet's worker socket.
pub const ENV_SOCKET: &str = "SHOAL_RAYLET_SOCKET";
/// Environment variable carrying the worker id the raylet assigned.
pub const ENV_WORKER_ID: &str = "SHOAL_WORKER_ID";
/// Environment variable with the raylet's gRPC address (for nested tasks).
pub const ENV_ADDRESS: &str = "SHOAL_ADDRESS";

/// Starts worker processes on one thread that lives as long as the raylet.
///
/// Forking is blocking work, so it is kept off the async threads; and it
/// must not happen on a pool thread that may exit when idle, because a
/// worker's parent-death signal fires when the *thread* that forked it ends.
pub(crate) struct Spawner {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<(WorkerId, WorkerKind)>>,
}

impl Spawner {
    /// Starts the spawning thread; it ends with the raylet.
    pub(crate) fn start(inner: std::sync::Weak<Inner>) -> Spawner {
        let (tx, rx) = std::sync::mpsc::channel::<(WorkerId, WorkerKind)>();
        let rt = tokio::runtime::Handle::try_current().ok();
        let body = move || {
            let _entered = rt.as_ref().map(|h| h.enter());
            while let Ok((id, kind)) = rx.recv() {
                let Some(inner) = inner.upgrade() else { return };
                let res = spawn(&inner, id, kind);
                let mut core = inner.core();
                match res {
                    Ok(pid) => core.worker_spawned(id, pid),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker process");
                        core.worker_spawn_failed(id);
                    }
                }
            }
        };
        if let Err(e) = std::thread::Builder::new().name("shoal-spawner".into()).spawn(body) {
            tracing::error!(error = %e, "cannot start the worker spawning thread");
        }
        Spawner { tx: std::sync::Mutex::new(tx) }
    }

    /// Asks for worker `id` of `kind` to be started.
    pub(crate) fn spawn(&self, id: WorkerId, kind: WorkerKind) -> bool {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).send((id, kind)).is_ok()
    }
}

/// Starts one worker process of `kind`; returns its pid.
pub(crate) fn spawn(inner: &Arc<Inner>, id: WorkerId, kind: WorkerKind) -> std::io::Result<u32> {
    let cfg = &inner.config;
    let argv = match kind {
        WorkerKind::Native => &cfg.native_worker,
        WorkerKind::Python => &cfg.python_worker,
    };
    let Some(program) = argv.first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no command starts {kind:?} workers"),
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .env(ENV_SOCKET, &cfg.worker_socket)
        .env(ENV_WORKER_ID, id.to_string())
        .env(ENV_ADDRESS, &inner.address)
        .env("SHOAL_NODE_ID", inner.node_id.to_string())
        .env("SHOAL_GCS_ADDRESS", &cfg.gcs_address)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match &cfg.token {
        Some(t) => cmd.env(crate::auth::ENV_TOKEN, t.expose()),
        None => cmd.env_remove(crate::auth::ENV_TOKEN),
    };
    cmd.env_remove(crate::auth::ENV_TOKEN_FILE);
    crate::process::die_with_parent(cmd.as_std_mut());
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let status = child.wait().await;
        let reason = match status {
            Ok(s) => describe_exit(s),
            Err(e) => format!("could not be waited for: {e}"),
        };
        if let Some(inner) = weak.upgrade() {
            inner.core().on_worker_exit(id, &reason);
        }
    });
    Ok(pid)
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(9)) => "was killed (SIGKILL; out of memory?)".to_string(),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "exited".to_string(),
    }
}

/// Accepts worker connections until the raylet stops.
pub(crate) async fn serve(inner: Arc<Inner>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(Arc::downgrade(&inner), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a worker connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(inner: std::sync::Weak<Inner>, stream: UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The hello comes first.
    let hello: pb::WorkerHello = loop {
        match frame::decode_from::<pb::FromWorker>(&mut buf) {
            Ok(Some(pb::FromWorker { kind: Some(pb::from_worker::Kind::Hello(h)) })) => break h,
            Ok(Some(_)) => {
                tracing::warn!("a worker spoke before saying hello; closing it");
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "corrupt frame from a worker; closing it");
                return;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    };
    let Some(inner_now) = inner.upgrade() else { return };
    if let Some(t) = &inner_now.config.token {
        if !t.matches(hello.token.as_bytes()) {
            tracing::warn!(pid = hello.pid, "a worker without the cluster token; closing it");
            return;
        }
    }
    let welcome = pb::ToWorker {
        kind: Some(pb::to_worker::Kind::Welcome(pb::WorkerWelcome {
            address: inner_now.address.clone(),
            gcs_address: inner_now.config.gcs_address.clone(),
            node_id: inner_now.node_id.to_string(),
        })),
    };
    drop(inner_now);
    let Ok(id) = WorkerId::from_slice(&hello.worker_id) else {
        tracing::warn!("a worker sent a malformed id; closing it");
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<pb::ToWorker>();
    // The welcome goes first: the channel keeps order.
    let _ = tx.send(welcome);
    // Writer: batch whatever is queued into one write.
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            frame::encode_into(&first, &mut out);
            while out.len() < (1 << 20) {
                match rx.try_recv() {
                    Ok(m) => frame::encode_into(&m, &mut out),
                    Err(_) => break,
                }
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    });
    match inner.upgrade() {
        Some(i) => i.core().on_worker_connected(id, hello.pid, tx),
        None => return,
    }
    let mut done = Vec::new();
    let reason = loop {
        loop {
            match frame::decode_from::<pb::FromWorker>(&mut buf) {
                Ok(Some(pb::FromWorker { kind: Some(pb::from_worker::Kind::Done(d)) })) => done.push(d),
                Ok(Some(_)) => {}
                Ok(None) => {
                    if !done.is_empty() {
                        let Some(i) = inner.upgrade() else { return };
                        let batch = std::mem::take(&mut done);
                        let large = batch.iter().any(|d| d.returns.iter().any(|v| v.data.len() > INLINE_LIMIT));
                        let store = i.store.clone();
                        let stored = move || -> Vec<Done> {
                            batch.into_iter().filter_map(|d| store_returns(&store, d)).collect()
                        };
                        // Large values go into the store, which may spill:
                        // off the async threads and before taking the core.
                        let finished = if large {
                            match tokio::task::spawn_blocking(stored).await {
                                Ok(f) => f,
                                Err(e) => {
                                    tracing::error!(worker = %id, error = %e, "storing task results failed");
                                    Vec::new()
                                }
                            }
                        } else {
                            stored()
                        };
                        let mut core = i.core();
                        for d in finished {
                            core.on_task_done(id, d);
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(worker = %id, error = %e, "corrupt frame from a worker; closing it");
                    writer.abort();
                    if let Some(i) = inner.upgrade() {
                        i.core().on_worker_exit(id, "sent a corrupt frame");
                    }
                    return;
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "closed its connection".to_string(),
            Err(e) => break format!("connection failed: {e}"),
            Ok(_) => {}
        }
    };
    writer.abort();
    if let Some(i) = inner.upgrade() {
        i.core().on_worker_exit(id, &reason);
    }
}
