//! The worker process: runs tasks its raylet sends over a local socket.
//!
//! The loop is synchronous: read a frame, run the function, write the
//! result. Results are buffered and flushed once no further task is already
//! waiting in the socket buffer, so a pipelined burst costs one write. A
//! builtin that submits nested tasks gets a client of the raylet from its
//! [`TaskContext`]; the client runs on a small background runtime created on
//! first use.

pub mod builtins;
pub mod context;
pub mod exec;

use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use shoal_proto::v1 as pb;

use crate::error::{ErrorKind, TaskError};
use crate::frame;
use crate::ids::WorkerId;
use crate::value::Value;
pub use builtins::Registry;
pub use context::TaskContext;

/// Runs one worker until its raylet closes the socket.
pub fn run(socket: &Path, worker_id: WorkerId, registry: &Registry) -> std::io::Result<()> {
    let mut ctx = TaskContext::new(worker_id);
    serve(socket, worker_id, |task| execute(&mut ctx, registry, task))
}

/// Connects to the raylet's socket, says hello as `worker_id` with the cluster
/// token of the environment (`SHOAL_TOKEN`, set by the raylet, or
/// `SHOAL_TOKEN_FILE` for an external worker), and waits for the raylet's
/// welcome. Returns the stream's halves and whatever was read past the welcome.
fn connect(socket: &Path, worker_id: WorkerId) -> std::io::Result<(UnixStream, BufWriter<UnixStream>, BytesMut)> {
    let stream = UnixStream::connect(socket)?;
    let mut reader = stream.try_clone()?;
    let mut writer = BufWriter::with_capacity(256 * 1024, stream);
    let hello = pb::FromWorker {
        kind: Some(pb::from_worker::Kind::Hello(pb::WorkerHello {
            worker_id: worker_id.to_bytes(),
            pid: std::process::id(),
            token: crate::auth::from_env()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?
                .map(|t| t.expose().to_string())
                .unwrap_or_default(),
        })),
    };
    frame::write_blocking(&mut writer, &hello)?;
    writer.flush()?;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    match frame::read_blocking::<pb::ToWorker, _>(&mut reader, &mut buf)? {
        Some(pb::ToWorker { kind: Some(pb::to_worker::Kind::Welcome(w)) }) => welcome(&w),
        Some(_) => {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the raylet did not welcome this worker"))
        }
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the raylet closed the socket after the hello (a wrong or missing cluster token? see SHOAL_TOKEN_FILE)",
            ))
        }
    }
    Ok((reader, writer, buf))
}

/// Gives a worker someone else started the environment a worker the raylet starts
/// has (its address, the GCS's, its node id), so nested tasks, `exec` tasks and
/// drivers find their raylet. Runs before any thread of the worker loop exists;
/// what the environment already says wins.
fn welcome(w: &pb::WorkerWelcome) {
    for (name, value) in
        [(crate::raylet::ENV_ADDRESS, &w.address), ("SHOAL_GCS_ADDRESS", &w.gcs_address), ("SHOAL_NODE_ID", &w.node_id)]
    {
        if std::env::var_os(name).is_none() && !value.is_empty() {
            std::env::set_var(name, value);
        }
    }
}

/// The worker protocol with any executor: says hello on the raylet's
/// socket as `worker_id`, then answers every task with what `execute`
/// returns (its `attempt` is filled in here), until the raylet closes the
/// socket. A worker of another language (the Python package's) runs its
/// functions through this same loop.
pub fn serve(
    socket: &Path,
    worker_id: WorkerId,
    mut execute: impl FnMut(pb::ExecuteTask) -> pb::TaskDone,
) -> std::io::Result<()> {
    let (mut reader, mut writer, mut buf) = connect(socket, worker_id)?;
    loop {
        let msg: Option<pb::ToWorker> = frame::read_blocking(&mut reader, &mut buf)?;
        let Some(msg) = msg else { return Ok(()) };
        let Some(pb::to_worker::Kind::Execute(task)) = msg.kind else { continue };
        let attempt = task.attempt;
        let done = pb::TaskDone { attempt, ..execute(task) };
        frame::write_blocking(&mut writer, &pb::FromWorker { kind: Some(pb::from_worker::Kind::Done(done)) })?;
        // Flush unless another task is already waiting to be read.
        if buf.is_empty() {
            writer.flush()?;
        }
    }
}

/// [`serve`] for a worker that can stop a running task: frames are read on
/// a thread of their own, so that an `InterruptTask` reaches `interrupt`
/// (with the task id and attempt) while `execute` runs on this thread.
pub fn serve_interruptible(
    socket: &Path,
    worker_id: WorkerId,
    mut execute: impl FnMut(pb::ExecuteTask) -> pb::TaskDone,
    interrupt: impl Fn(&[u8], u32) + Send + 'static,
) -> std::io::Result<()> {
    let (mut reader, mut writer, buf) = connect(socket, worker_id)?;
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<pb::ExecuteTask>>();
    std::thread::Builder::new().name("shoal-worker-reader".into()).spawn(move || {
        let mut buf = buf;
        loop {
            let msg = match frame::read_blocking::<pb::ToWorker, _>(&mut reader, &mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let sent = match msg.kind {
                Some(pb::to_worker::Kind::Execute(t)) => tx.send(Ok(t)).is_ok(),
                Some(pb::to_worker::Kind::Interrupt(i)) => {
                    interrupt(&i.task_id, i.attempt);
                    true
                }
                Some(pb::to_worker::Kind::Welcome(_)) | None => true,
            };
            if !sent {
                return;
            }
        }
    })?;
    let mut next = rx.recv().ok();
    while let Some(task) = next.take() {
        let task = task?;
        let attempt = task.attempt;
        let done = pb::TaskDone { attempt, ..execute(task) };
        frame::write_blocking(&mut writer, &pb::FromWorker { kind: Some(pb::from_worker::Kind::Done(done)) })?;
        // Flush unless another task is already waiting.
        next = rx.try_recv().ok();
        if next.is_none() {
            writer.flush()?;
            next = rx.recv().ok();
        }
    }
    Ok(())
}

#[allow(clippy::result_large_err)] // becomes the task's error as is
fn split_returns(v: Value, n: u32) -> Result<Vec<pb::ObjectValue>, TaskError> {
    if n == 1 {
        return Ok(vec![v.encode()]);
    }
    match v {
        Value::Json(serde_json::Value::Array(items)) if items.len() == n as usize => {
            Ok(items.into_iter().map(|i| Value::Json(i).encode()).collect())
        }
        other => Err(TaskError::new(
            ErrorKind::TaskFailed,
            format!(
                "the task declares num_returns {n}, so its result must be an array of {n} values; got {}",
                describe(&other)
            ),
        )),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Json(serde_json::Value::Array(a)) => format!("an array of {}", a.len()),
        Value::Json(j) => {
            let s = j.to_string();
            if s.len() > 80 {
                format!("{}...", &s[..s.char_indices().nth(80).map(|(i, _)| i).unwrap_or(s.len())])
            } else {
                s
            }
        }
        Value::Bytes(b) => format!("{} raw bytes", b.len()),
    }
}

/// Runs one task and builds its `TaskDone`.
#[allow(clippy::result_large_err)]
fn execute(ctx: &mut TaskContext, registry: &Registry, task: pb::ExecuteTask) -> pb::TaskDone {
    let task_id = task.task_id.clone();
    let mut args = Vec::with_capacity(task.args.len());
    for (i, a) in task.args.iter().enumerate() {
        match Value::decode(a) {
            Ok(v) => args.push(v),
            Err(mut e) => {
                // An argument that is itself a failed object: propagate its error.
                if e.kind != ErrorKind::CorruptObject {
                    return done_err(task_id, e);
                }
                e.message = format!("argument {i}: {}", e.message);
                return done_err(task_id, e);
            }
        }
    }
    ctx.begin(&task);
    let result = match task.function.as_ref().and_then(|f| f.kind.as_ref()) {
        Some(pb::function_descriptor::Kind::Builtin(name)) => match registry.get(name) {
            Some(b) => {
                let f = b.func;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx, args))) {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(msg)) => Err(TaskError::new(ErrorKind::TaskFailed, msg)),
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panic".into());
                        Err(TaskError::new(ErrorKind::TaskFailed, format!("builtin:{name} panicked: {msg}")))
                    }
                }
            }
            None => {
                Err(TaskError::new(ErrorKind::UnknownFunction, format!("no builtin named `{name}` in this worker")))
            }
        },
        Some(pb::function_descriptor::Kind::Exec(e)) if !task.gpu_ids.is_empty() => {
            let mut e = e.clone();
            let ids: Vec<String> = task.gpu_ids.iter().map(u32::to_string).collect();
            e.env.insert("CUDA_VISIBLE_DEVICES".to_string(), ids.join(","));
            exec::run_exec(&e, &args, task.num_returns)
        }
        Some(pb::function_descriptor::Kind::Exec(e)) => exec::run_exec(e, &args, task.num_returns),
        Some(pb::function_descriptor::Kind::Python(p)) => Err(TaskError::new(
            ErrorKind::UnknownFunction,
            format!("Python function `{}` was sent to a native worker; Python workers run it", p.name),
        )),
        None => Err(TaskError::new(ErrorKind::InvalidTask, "the task names no function")),
    };
    ctx.end();
    match result.and_then(|v| split_returns(v, task.num_returns.max(1))) {
        Ok(returns) => pb::TaskDone { task_id, returns, attempt: task.attempt, ..Default::default() },
        Err(e) => done_err(task_id, e),
    }
}

fn done_err(task_id: Bytes, e: TaskError) -> pb::TaskDone {
    pb::TaskDone { task_id, stderr_tail: e.stderr_tail.clone(), error: Some((&e).into()), ..Default::default() }
}
