//! The Rust client: connect to a raylet, submit tasks, put, get and wait.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_runtime::Error> {
//! use shoal_runtime::{Client, Task};
//! let c = Client::connect("127.0.0.1:6380").await?;
//! let a = c.submit(Task::builtin("identity").arg(20)).await?;
//! let b = c.submit(Task::builtin("add").arg(&a).arg(22)).await?;
//! let v: i64 = c.get(&b).await?;
//! assert_eq!(v, 42);
//! # Ok(()) }
//! ```
//!
//! The raylet the client connects to owns everything the client submits or
//! puts. Submissions and reference changes travel in order on one session
//! stream, batched by a background task, so `submit` returns at once with
//! the task's object references. Gets and waits name the last message they
//! depend on, so they never overtake a submission. Dropping the last clone of
//! an [`ObjectRef`] releases it; closing the client releases them all.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::net::Channel;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::v1 as pb;
use shoal_proto::v1::raylet_client::RayletClient;
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result, TaskError};
use crate::ids::{JobId, NodeId, ObjectId, TaskId, WorkerId};
use crate::resources::{ResourceSet, CPU};
use crate::strategy::Strategy;
use crate::value::{Value, INLINE_LIMIT};

/// Bound of the queue of submissions and reference changes awaiting the
/// session stream; `submit` waits when it is full.
const OP_QUEUE: usize = 65_536;
/// Most operations folded into one stream message.
const OPS_PER_MESSAGE: usize = 8192;

// A submission is the common case; boxing it would cost an allocation per task.
#[allow(clippy::large_enum_variant)]
enum Op {
    Submit(pb::TaskSpec),
    AddRef(ObjectId),
    /// A hold on an object owned by another raylet.
    Borrow(pb::ObjectRef),
    RemoveRef(ObjectId),
    Cancel(pb::CancelTasks),
    Lend(pb::LendRefs),
}

struct Ops {
    tx: mpsc::Sender<Op>,
    enqueued: AtomicU64,
}

impl Ops {
    async fn send(&self, op: Op) -> Result<()> {
        self.tx.send(op).await.map_err(|_| Error::SessionClosed("the session stream has ended".into()))?;
        self.enqueued.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn send_now(self: &Arc<Self>, op: Op) {
        match self.tx.try_send(op) {
            Ok(()) => {
                self.enqueued.fetch_add(1, Ordering::SeqCst);
            }
            Err(mpsc::error::TrySendError::Full(op)) => {
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    let me = self.clone();
                    h.spawn(async move {
                        let _ = me.send(op).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

struct RefInner {
    id: ObjectId,
    owner: String,
    ops: Arc<Ops>,
}

impl Drop for RefInner {
    fn drop(&mut self) {
        self.ops.send_now(Op::RemoveRef(self.id));
    }
}

/// A reference to an object: a task's result or a `put` value. Cloning is
/// cheap; the object is freed once every clone is dropped and no pending
/// task needs it.
#[derive(Clone)]
pub struct ObjectRef {
    inner: Arc<RefInner>,
}

impl ObjectRef {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.inner.id
    }

    /// The address of the raylet that owns the object.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The reference as it travels on the wire (inside a value's
    /// `nested_refs`, for instance).
    pub fn to_wire(&self) -> pb::ObjectRef {
        pb::ObjectRef { object_id: self.inner.id.to_bytes(), owner_address: self.inner.owner.clone() }
    }
}

impl std::fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({})", self.inner.id)
    }
}

/// An argument of a task: a value or a reference.
#[derive(Clone, Debug)]
pub enum TaskArg {
    /// A value, inlined into the task when small.
    Value(Value),
    /// Another object; the task waits until it is ready.
    Ref(ObjectRef),
    /// A value already encoded (a language binding's own format, such as
    /// pickled Python), inlined when small and put when large.
    Encoded(pb::ObjectValue),
}

impl From<&ObjectRef> for TaskArg {
    fn from(r: &ObjectRef) -> Self {
        TaskArg::Ref(r.clone())
    }
}
impl From<ObjectRef> for TaskArg {
    fn from(r: ObjectRef) -> Self {
        TaskArg::Ref(r)
    }
}
impl From<serde_json::Value> for TaskArg {
    fn from(v: serde_json::Value) -> Self {
        TaskArg::Value(Value::Json(v))
    }
}
impl From<Value> for TaskArg {
    fn from(v: Value) -> Self {
        TaskArg::Value(v)
    }
}
impl From<Bytes> for TaskArg {
    fn from(b: Bytes) -> Self {
        TaskArg::Value(Value::Bytes(b))
    }
}
macro_rules! json_arg {
    ($($t:ty),*) => {$(
        impl From<$t> for TaskArg {
            fn from(v: $t) -> Self {
                TaskArg::Value(Value::Json(serde_json::json!(v)))
            }
        }
    )*};
}
json_arg!(i32, i64, u32, u64, f64, bool, &str, String);

/// A task to submit: the function, its arguments and options.
#[derive(Clone, Debug)]
pub struct Task {
    function: pb::FunctionDescriptor,
    args: Vec<TaskArg>,
    name: String,
    num_returns: u32,
    resources: ResourceSet,
    max_retries: i32,
    retry_exceptions: bool,
    strategy: Strategy,
}

impl Task {
    fn new(function: pb::function_descriptor::Kind, name: String) -> Task {
        Task {
            function: pb::FunctionDescriptor { kind: Some(function) },
            args: Vec::new(),
            name,
            num_returns: 1,
            resources: ResourceSet::new().with(CPU, 1.0),
            max_retries: 3,
            retry_exceptions: false,
            strategy: Strategy::Default,
        }
    }

    /// A task running the function a descriptor names.
    pub fn from_descriptor(function: pb::FunctionDescriptor, name: impl Into<String>) -> Task {
        let mut t = Task::builtin("");
        t.function = function;
        t.name = name.into();
        t
    }

    /// A task running the builtin `name` (with or without the `builtin:` prefix).
    pub fn builtin(name: &str) -> Task {
        let name = name.strip_prefix("builtin:").unwrap_or(name);
        Task::new(pb::function_descriptor::Kind::Builtin(name.to_string()), name.to_string())
    }

    /// A task running a command; its arguments arrive on stdin as a JSON
    /// array and its stdout, parsed as JSON, is the result.
    pub fn exec<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Task {
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        let name = argv.first().cloned().unwrap_or_default();
        Task::new(pb::function_descriptor::Kind::Exec(pb::ExecFunction { argv, ..Default::default() }), name)
    }

    fn with_exec(mut self, f: impl FnOnce(&mut pb::ExecFunction)) -> Task {
        if let Some(pb::function_descriptor::Kind::Exec(e)) = self.function.kind.as_mut() {
            f(e);
        }
        self
    }

    /// For `exec` tasks: keep stdout as a string instead of parsing JSON.
    pub fn output_text(self, yes: bool) -> Task {
        self.with_exec(|e| e.output_text = yes)
    }

    /// For `exec` tasks: an environment variable.
    pub fn env(self, key: &str, value: &str) -> Task {
        self.with_exec(|e| {
            e.env.insert(key.to_string(), value.to_string());
        })
    }

    /// For `exec` tasks: the working directory.
    pub fn cwd(self, dir: &str) -> Task {
        self.with_exec(|e| e.cwd = dir.to_string())
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl Into<TaskArg>) -> Task {
        self.args.push(a.into());
        self
    }

    /// Appends several arguments.
    pub fn args<A: Into<TaskArg>>(mut self, a: impl IntoIterator<Item = A>) -> Task {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// A name for logs and errors.
    pub fn name(mut self, name: impl Into<String>) -> Task {
        self.name = name.into();
        self
    }

    /// How many objects the task returns (its result is then an array of that length).
    pub fn num_returns(mut self, n: u32) -> Task {
        self.num_returns = n;
        self
    }

    /// The resources the task holds while it runs (default: 1 CPU).
    pub fn resources(mut self, r: ResourceSet) -> Task {
        self.resources = r;
        self
    }

    /// Shorthand for the CPU amount.
    pub fn cpus(mut self, cpus: f64) -> Task {
        self.resources = self.resources.with(CPU, cpus);
        self
    }

    /// Retries after system failures (-1 forever, default 3).
    pub fn max_retries(mut self, n: i32) -> Task {
        self.max_retries = n;
        self
    }

    /// Whether failures of the function itself are retried too.
    pub fn retry_exceptions(mut self, yes: bool) -> Task {
        self.retry_exceptions = yes;
        self
    }

    /// Where to run the task.
    pub fn strategy(mut self, s: Strategy) -> Task {
        self.strategy = s;
        self
    }
}

/// Converts a scheduling strategy to its wire form.
pub fn strategy_to_pb(s: &Strategy) -> Option<pb::SchedulingStrategy> {
    use pb::scheduling_strategy::Kind;
    let kind = match s {
        Strategy::Default => return None,
        Strategy::Spread => Kind::Spread(true),
        Strategy::NodeAffinity { node, soft } => {
            Kind::NodeAffinity(pb::NodeAffinity { node_id: node.to_bytes(), soft: *soft })
        }
        Strategy::Labels(l) => Kind::Labels(pb::LabelSelector { match_labels: l.iter().cloned().collect() }),
    };
    Some(pb::SchedulingStrategy { kind: Some(kind) })
}

/// Options of [`Client::connect_with`].
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// A name for the job this client drives.
    pub name: String,
    /// Join an existing job instead of starting one.
    pub job_id: Option<JobId>,
    /// Set by workers for nested tasks.
    pub worker_id: Option<WorkerId>,
    /// The cluster's token. `None` finds it: the one known for the address
    /// (a local cluster this process started, or the record of `shoal up`),
    /// else `SHOAL_TOKEN_FILE` / `SHOAL_TOKEN` (see [`crate::auth`]).
    pub token: Option<crate::auth::Token>,
}

struct ClientInner {
    raylet: RayletClient<Channel>,
    address: String,
    /// The raylet's GCS, connected on first use (key-value store, nodes).
    gcs_address: String,
    gcs: tokio::sync::OnceCell<shoal_proto::v1::gcs_client::GcsClient<Channel>>,
    token: Option<crate::auth::Token>,
    session_id: u64,
    job_id: JobId,
    node_id: NodeId,
    ops: Arc<Ops>,
    driver_task: TaskId,
    put_index: AtomicU32,
}

/// A connection to a raylet, which owns what this client submits. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl Client {
    /// Connects to the raylet at `addr` (`host:port`) and starts a job.
    /// Given a GCS address instead, picks an alive raylet.
    pub async fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects with options. `"auto"` (or `""`) finds the cluster: the
    /// raylet in `SHOAL_ADDRESS` (set for drivers and workers), else the
    /// head raylet of the cluster `shoal up` started ([`crate::discovery`]).
    pub async fn connect_with(addr: &str, opts: ConnectOptions) -> Result<Client> {
        let found;
        let addr = if addr.is_empty() || addr == "auto" {
            found = auto_address()?;
            found.as_str()
        } else {
            addr
        };
        let mut opts = opts;
        if opts.token.is_none() {
            opts.token = crate::auth::for_address(addr)?;
        }
        match Client::open(addr, &opts).await {
            Err(Error::Rpc { status, .. }) if status.code() == tonic::Code::Unimplemented => {
                let raylet = pick_raylet(addr, opts.token.as_ref()).await?;
                Client::open(&raylet, &opts).await
            }
            other => other,
        }
    }

    async fn open(addr: &str, opts: &ConnectOptions) -> Result<Client> {
        let channel = crate::net::connect(addr, opts.token.as_ref()).await?;
        let mut raylet = crate::net::raylet_client(channel);
        let (stream_tx, stream_rx) = mpsc::channel::<pb::SessionRequest>(64);
        let open = pb::SessionRequest {
            seq: 0,
            kind: Some(pb::session_request::Kind::Open(pb::OpenSession {
                job_id: opts.job_id.map(|j| j.0).unwrap_or(0),
                name: opts.name.clone(),
                worker_id: opts.worker_id.map(|w| w.to_bytes()).unwrap_or_default(),
            })),
        };
        stream_tx.send(open).await.map_err(|_| Error::SessionClosed("could not open".into()))?;
        let mut events = raylet
            .session(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
            .await
            .map_err(|s| Error::rpc(format!("opening a session with {addr}"), s))?
            .into_inner();
        let opened = match events.message().await {
            Ok(Some(pb::SessionEvent { kind: Some(pb::session_event::Kind::Opened(o)) })) => o,
            Ok(_) => return Err(Error::SessionClosed("the raylet did not open the session".into())),
            Err(s) => return Err(Error::rpc("opening a session", s)),
        };
        tokio::spawn(async move {
            while let Ok(Some(ev)) = events.message().await {
                if let Some(pb::session_event::Kind::Error(e)) = ev.kind {
                    tracing::warn!(problem = %e, "the raylet rejected part of a submission");
                }
            }
        });
        let (tx, rx) = mpsc::channel(OP_QUEUE);
        let ops = Arc::new(Ops { tx, enqueued: AtomicU64::new(0) });
        tokio::spawn(flush_ops(rx, stream_tx));
        let job_id = JobId(opened.job_id);
        Ok(Client {
            inner: Arc::new(ClientInner {
                raylet,
                address: addr.to_string(),
                gcs_address: opened.gcs_address,
                gcs: tokio::sync::OnceCell::new(),
                token: opts.token.clone(),
                session_id: opened.session_id,
                job_id,
                node_id: NodeId::from_slice(&opened.node_id).unwrap_or_default(),
                ops,
                driver_task: TaskId::random(job_id),
                put_index: AtomicU32::new(0),
            }),
        })
    }

    /// The job this client drives.
    pub fn job_id(&self) -> JobId {
        self.inner.job_id
    }

    /// The node of the raylet this client talks to.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The raylet's address.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    fn make_ref(&self, id: ObjectId) -> ObjectRef {
        ObjectRef { inner: Arc::new(RefInner { id, owner: self.inner.address.clone(), ops: self.inner.ops.clone() }) }
    }

    /// Submits a task and returns a reference to its (first) result.
    pub async fn submit(&self, task: Task) -> Result<ObjectRef> {
        let mut refs = self.submit_returns(task).await?;
        if refs.is_empty() {
            return Err(Error::Invalid("the task returns nothing".into()));
        }
        Ok(refs.swap_remove(0))
    }

    /// Submits a task and returns references to all its `num_returns` results.
    pub async fn submit_returns(&self, task: Task) -> Result<Vec<ObjectRef>> {
        if task.num_returns == 0 || task.num_returns > crate::ids::MAX_RETURNS {
            return Err(Error::Invalid(format!("num_returns must be 1..=1024, got {}", task.num_returns)));
        }
        let task_id = TaskId::random(self.inner.job_id);
        let mut args = Vec::with_capacity(task.args.len());
        // Keep large literal arguments alive until the submission is queued.
        let mut temporaries = Vec::new();
        for a in task.args {
            let enc = match a {
                TaskArg::Ref(r) => {
                    args.push(ref_arg(&r));
                    temporaries.push(r);
                    continue;
                }
                TaskArg::Value(v) => v.encode(),
                TaskArg::Encoded(e) => e,
            };
            if enc.data.len() > INLINE_LIMIT {
                let r = self.put_encoded(enc).await?;
                args.push(ref_arg(&r));
                temporaries.push(r);
            } else {
                args.push(pb::Arg { kind: Some(pb::arg::Kind::Value(enc)) });
            }
        }
        let spec = pb::TaskSpec {
            task_id: task_id.to_bytes(),
            job_id: self.inner.job_id.0,
            name: task.name,
            function: Some(task.function),
            args,
            num_returns: task.num_returns,
            resources: Some((&task.resources).into()),
            max_retries: task.max_retries,
            retry_exceptions: task.retry_exceptions,
            strategy: strategy_to_pb(&task.strategy),
            owner_address: self.inner.address.clone(),
            attempt: 0,
            spillback_count: 0,
        };
        let n = task.num_returns;
        self.inner.ops.send(Op::Submit(spec)).await?;
        drop(temporaries);
        Ok((0..n).map(|i| self.make_ref(task_id.return_id(i))).collect())
    }

    /// Stores a serialisable value (as JSON) and returns a reference to it.
    pub async fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef> {
        let v = serde_json::to_value(value).map_err(|e| Error::Codec(e.to_string()))?;
        self.put_value(Value::Json(v)).await
    }

    /// Stores a value and returns a reference to it.
    pub async fn put_value(&self, value: Value) -> Result<ObjectRef> {
        self.put_encoded(value.encode()).await
    }

    /// Stores a value already encoded and returns a reference to it.
    pub async fn put_encoded(&self, value: pb::ObjectValue) -> Result<ObjectRef> {
        let idx = self.inner.put_index.fetch_add(1, Ordering::Relaxed);
        let id = self.inner.driver_task.put_id(idx);
        let mut raylet = self.inner.raylet.clone();
        raylet
            .put(pb::PutRequest { session_id: self.inner.session_id, object_id: id.to_bytes(), value: Some(value) })
            .await
            .map_err(|s| Error::rpc("put", s))?;
        Ok(self.make_ref(id))
    }

    /// Waits for an object and deserialises it from JSON.
    pub async fn get<T: DeserializeOwned>(&self, r: &ObjectRef) -> Result<T> {
        match self.get_value(r).await? {
            Value::Json(v) => serde_json::from_value(v).map_err(|e| Error::Codec(e.to_string())),
            Value::Bytes(b) => {
                serde_json::from_slice(&b).map_err(|e| Error::Codec(format!("raw bytes are not JSON: {e}")))
            }
        }
    }

    /// Waits for an object's value.
    pub async fn get_value(&self, r: &ObjectRef) -> Result<Value> {
        self.get_timeout(r, None).await
    }

    /// Waits up to `timeout` for an object's value.
    pub async fn get_timeout(&self, r: &ObjectRef, timeout: Option<Duration>) -> Result<Value> {
        let mut all = self.get_many(std::slice::from_ref(r), timeout).await?;
        all.pop().unwrap_or_else(|| Err(Error::Invalid("no result".into())))
    }

    /// Waits for several objects at once; each gets its own result.
    pub async fn get_many(&self, refs: &[ObjectRef], timeout: Option<Duration>) -> Result<Vec<Result<Value>>> {
        let encoded = self.get_encoded_many(refs, timeout).await?;
        Ok(encoded.into_iter().map(|r| r.and_then(|v| Value::decode(&v).map_err(Error::from))).collect())
    }

    /// [`Client::get_many`] without decoding: each value as stored, in its
    /// own format (a failed object is a `Format::Error` value, which
    /// [`crate::value::decode_error`] reads).
    pub async fn get_encoded_many(
        &self,
        refs: &[ObjectRef],
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<pb::ObjectValue>>> {
        let mut raylet = self.inner.raylet.clone();
        let req = pb::GetObjectsRequest {
            session_id: self.inner.session_id,
            after_seq: self.inner.ops.enqueued.load(Ordering::SeqCst),
            refs: refs.iter().map(ObjectRef::to_wire).collect(),
            timeout_ms: timeout.map(|t| t.as_millis().max(1) as u64).unwrap_or(0),
        };
        let reply = match raylet.get_objects(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if owner_gone(&s) => {
                // The raylet that owns these objects is unreachable: a `put`
                // value had its only copy there and is lost; a task's result
                // has lost its owner.
                return Ok(refs.iter().map(|r| Err(Error::from(owner_gone_error(r, &s)))).collect());
            }
            Err(s) => return Err(Error::rpc("get", s)),
        };
        Ok(reply
            .results
            .into_iter()
            .zip(refs)
            .map(|(r, oref)| match r.kind {
                Some(pb::get_result::Kind::Value(v)) => Ok(v),
                Some(pb::get_result::Kind::TimedOut(_)) => {
                    Err(Error::Timeout(timeout.unwrap_or_default(), format!("object {}", oref.id())))
                }
                None => Err(Error::from(TaskError::new(ErrorKind::ObjectLost, "no value returned"))),
            })
            .collect())
    }

    /// Waits until `num_returns` of `refs` are ready or `timeout` passes.
    /// Returns the ready and the not-ready references, each in input order.
    pub async fn wait(
        &self,
        refs: &[ObjectRef],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<(Vec<ObjectRef>, Vec<ObjectRef>)> {
        if num_returns > refs.len() {
            return Err(Error::Invalid(format!(
                "num_returns {num_returns} exceeds the {} references given",
                refs.len()
            )));
        }
        let mut raylet = self.inner.raylet.clone();
        let req = pb::WaitObjectsRequest {
            session_id: self.inner.session_id,
            after_seq: self.inner.ops.enqueued.load(Ordering::SeqCst),
            refs: refs.iter().map(ObjectRef::to_wire).collect(),
            num_ready: num_returns as u32,
            timeout_ms: timeout.map(|t| t.as_millis().max(1) as u64).unwrap_or(0),
        };
        let ready = raylet.wait_objects(req).await.map_err(|s| Error::rpc("wait", s))?.into_inner().ready;
        let mut yes = Vec::new();
        let mut no = Vec::new();
        for (r, is) in refs.iter().zip(ready.iter().chain(std::iter::repeat(&false))) {
            if *is && yes.len() < num_returns {
                yes.push(r.clone());
            } else {
                no.push(r.clone());
            }
        }
        Ok((yes, no))
    }

    /// Cancels the task that creates `r`: it never starts if it has not, and
    /// `get` returns a `Cancelled` error. `force` kills the worker of a running
    /// task; `recursive` also cancels the tasks it submitted. Cancelled tasks
    /// are never retried.
    pub async fn cancel(&self, r: &ObjectRef, force: bool, recursive: bool) -> Result<()> {
        let c = pb::CancelTasks { object_ids: vec![r.id().to_bytes()], force, recursive };
        self.inner.ops.send(Op::Cancel(c)).await
    }

    /// Takes an extra reference on an object for this session (used when a
    /// reference is handed over from elsewhere).
    pub async fn add_ref(&self, id: ObjectId) -> Result<ObjectRef> {
        self.inner.ops.send(Op::AddRef(id)).await?;
        Ok(self.make_ref(id))
    }

    /// Holds an object that a reference handed over from elsewhere names by
    /// its id and its owner's address ([`ObjectRef::id`], [`ObjectRef::owner`]).
    /// When another raylet owns it, this client's raylet becomes a borrower:
    /// the owner keeps the object while the returned reference (or a task
    /// given it) lives, even once the original holder lets go. Returns once
    /// the owner has counted the borrow; an object its owner no longer has
    /// reads as `ObjectLost`, one whose owner is gone as `OwnerDied`.
    ///
    /// Submissions are pipelined, so the owner knows a task's result only
    /// once the client that submitted it has sent the submission: a client
    /// handing a fresh reference to another process out of band calls
    /// [`Client::flush`] first. (References inside values and arguments need
    /// nothing: they travel behind the submissions that made them.)
    pub async fn borrow(&self, id: ObjectId, owner: &str) -> Result<ObjectRef> {
        if owner.is_empty() || owner == self.inner.address {
            return self.add_ref(id).await;
        }
        let wire = pb::ObjectRef { object_id: id.to_bytes(), owner_address: owner.to_string() };
        self.inner.ops.send(Op::Borrow(wire)).await?;
        self.flush().await?;
        Ok(ObjectRef { inner: Arc::new(RefInner { id, owner: owner.to_string(), ops: self.inner.ops.clone() }) })
    }

    async fn gcs(&self) -> Result<shoal_proto::v1::gcs_client::GcsClient<Channel>> {
        let addr = &self.inner.gcs_address;
        if addr.is_empty() {
            return Err(Error::Invalid("the raylet did not name its GCS".into()));
        }
        let c = self
            .inner
            .gcs
            .get_or_try_init(|| async {
                crate::net::connect(addr, self.inner.token.as_ref())
                    .await
                    .map(shoal_proto::v1::gcs_client::GcsClient::new)
            })
            .await?;
        Ok(c.clone())
    }

    /// Stores `value` under `key` in the cluster's key-value store (kept by
    /// the head, durable with its state dir). Returns whether the key was
    /// new; an existing key is replaced only with `overwrite`.
    pub async fn kv_put(&self, key: &str, value: Bytes, overwrite: bool) -> Result<bool> {
        let req = pb::KvPutRequest { key: key.to_string(), value, overwrite };
        let r = self.gcs().await?.kv_put(req).await.map_err(|s| Error::rpc("kv put", s))?;
        Ok(r.into_inner().added)
    }

    /// The value under `key` in the cluster's key-value store.
    pub async fn kv_get(&self, key: &str) -> Result<Option<Bytes>> {
        let req = pb::KvGetRequest { key: key.to_string() };
        let r = self.gcs().await?.kv_get(req).await.map_err(|s| Error::rpc("kv get", s))?.into_inner();
        Ok(r.found.then_some(r.value))
    }

    /// Appends `data` to the log of job `job` (as the REST API serves it).
    pub async fn append_job_log(&self, job: JobId, data: Bytes) -> Result<()> {
        let req = pb::AppendJobLogRequest { job_id: job.0, data };
        self.gcs().await?.append_job_log(req).await.map_err(|s| Error::rpc("appending to a job log", s))?;
        Ok(())
    }

    /// The cluster's nodes as the GCS knows them, with their last loads.
    pub async fn nodes(&self) -> Result<pb::GetNodesReply> {
        let r =
            self.gcs().await?.get_nodes(pb::GetNodesRequest {}).await.map_err(|s| Error::rpc("listing nodes", s))?;
        Ok(r.into_inner())
    }

    /// Lends `refs` for the results of `attempt` of `task` (a worker
    /// returning references inside its results): the raylet holds them
    /// until the result has reached the task's owner, which holds them
    /// itself from then on. Returns once the raylet holds them, so that the
    /// caller may drop its own references.
    pub async fn lend(&self, task: TaskId, attempt: u32, refs: &[ObjectRef]) -> Result<()> {
        let lend =
            pb::LendRefs { task_id: task.to_bytes(), attempt, refs: refs.iter().map(ObjectRef::to_wire).collect() };
        self.inner.ops.send(Op::Lend(lend)).await?;
        self.flush().await
    }

    /// Waits until the raylet has applied every submission and reference
    /// change this client queued (borrows included).
    pub async fn flush(&self) -> Result<()> {
        let mut raylet = self.inner.raylet.clone();
        let req = pb::GetObjectsRequest {
            session_id: self.inner.session_id,
            after_seq: self.inner.ops.enqueued.load(Ordering::SeqCst),
            refs: Vec::new(),
            timeout_ms: 0,
        };
        raylet.get_objects(req).await.map_err(|s| Error::rpc("flush", s))?;
        Ok(())
    }
}

/// A by-reference argument naming `r` and its owner.
fn ref_arg(r: &ObjectRef) -> pb::Arg {
    pb::Arg {
        kind: Some(pb::arg::Kind::ObjectRef(pb::RefArg {
            object_id: r.id().to_bytes(),
            owner_address: r.owner().to_string(),
            locations: vec![],
            size: 0,
        })),
    }
}

async fn flush_ops(mut rx: mpsc::Receiver<Op>, stream: mpsc::Sender<pb::SessionRequest>) {
    let mut sent: u64 = 0;
    let mut pending: Option<Op> = None;
    loop {
        let first = match pending.take() {
            Some(op) => op,
            None => match rx.recv().await {
                Some(op) => op,
                None => return,
            },
        };
        // Fold a run of operations of one kind into one message.
        let msg_kind;
        let mut count = 1u64;
        match first {
            Op::Cancel(c) => {
                msg_kind = pb::session_request::Kind::Cancel(c);
            }
            Op::Lend(l) => {
                msg_kind = pb::session_request::Kind::Lend(l);
            }
            Op::Submit(t) => {
                let mut tasks = vec![t];
                while tasks.len() < OPS_PER_MESSAGE {
                    match rx.try_recv() {
                        Ok(Op::Submit(t)) => tasks.push(t),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                count = tasks.len() as u64;
                msg_kind = pb::session_request::Kind::Submit(pb::SubmitTasks { tasks });
            }
            first => {
                let mut u = pb::RefUpdate::default();
                let push = |op: Op, u: &mut pb::RefUpdate| match op {
                    Op::AddRef(id) => u.add.push(id.to_bytes()),
                    Op::Borrow(r) => u.borrow.push(r),
                    Op::RemoveRef(id) => u.remove.push(id.to_bytes()),
                    Op::Submit(_) | Op::Cancel(_) | Op::Lend(_) => {}
                };
                push(first, &mut u);
                while (count as usize) < OPS_PER_MESSAGE {
                    match rx.try_recv() {
                        Ok(op @ (Op::Submit(_) | Op::Cancel(_) | Op::Lend(_))) => {
                            pending = Some(op);
                            break;
                        }
                        Ok(op) => {
                            push(op, &mut u);
                            count += 1;
                        }
                        Err(_) => break,
                    }
                }
                msg_kind = pb::session_request::Kind::Refs(u);
            }
        }
        sent += count;
        if stream.send(pb::SessionRequest { seq: sent, kind: Some(msg_kind) }).await.is_err() {
            return;
        }
    }
}

/// Whether a failed call means the owner raylet could not be reached, as
/// opposed to an answer it sent (a raylet's own `Cancelled` or `Internal`
/// is an error of the request, not a dead owner).
fn owner_gone(s: &tonic::Status) -> bool {
    crate::error::kind_of(s) == ErrorKind::NodeUnreachable
}

fn owner_gone_error(r: &ObjectRef, s: &tonic::Status) -> TaskError {
    let why = format!("its owner {} is unreachable: {}", r.owner(), s.message());
    if r.id().is_put() {
        TaskError::new(
            ErrorKind::ObjectLost,
            format!("put object {} is lost ({why}); put objects cannot be rebuilt", r.id()),
        )
    } else {
        TaskError::new(ErrorKind::OwnerDied, format!("object {}: {why}", r.id()))
    }
}

/// The raylet `"auto"` names: `SHOAL_ADDRESS`, else the recorded cluster's head raylet.
fn auto_address() -> Result<String> {
    if let Some(a) = std::env::var(crate::raylet::ENV_ADDRESS).ok().filter(|a| !a.is_empty() && !a.contains("://")) {
        return Ok(a);
    }
    match crate::discovery::find() {
        Some(rec) => Ok(rec.raylet),
        None => Err(Error::Invalid(format!("no running shoal cluster found: {}", crate::discovery::HOW_TO_START))),
    }
}

/// Asks a GCS for an alive raylet's address.
async fn pick_raylet(gcs_addr: &str, token: Option<&crate::auth::Token>) -> Result<String> {
    let ch = crate::net::connect(gcs_addr, token).await?;
    let mut gcs = shoal_proto::v1::gcs_client::GcsClient::new(ch);
    let nodes = gcs.get_nodes(pb::GetNodesRequest {}).await.map_err(|s| Error::rpc("listing nodes", s))?.into_inner();
    nodes
        .nodes
        .into_iter()
        .find(|n| n.state == pb::NodeState::NodeAlive as i32)
        .map(|n| n.address)
        .ok_or_else(|| Error::Connect { addr: gcs_addr.to_string(), reason: "the cluster has no alive raylet".into() })
}

/// Statistics of one raylet (for tools and tests), presenting the token
/// known for its address.
pub async fn node_stats(raylet_addr: &str) -> Result<pb::NodeStatsReply> {
    let token = crate::auth::for_address(raylet_addr)?;
    let ch = crate::net::connect(raylet_addr, token.as_ref()).await?;
    let mut c = crate::net::raylet_client(ch);
    Ok(c.node_stats(pb::NodeStatsRequest {}).await.map_err(|s| Error::rpc("node stats", s))?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u8) -> pb::TaskSpec {
        pb::TaskSpec { name: format!("t{n}"), ..Default::default() }
    }

    fn oid(n: u32) -> ObjectId {
        TaskId::random(JobId(1)).return_id(n)
    }

    /// Queues `ops` before the folder starts (so it sees them all at once, as
    /// under load) and returns the messages it sends.
    async fn fold(ops: Vec<Op>) -> Vec<pb::SessionRequest> {
        let (tx, rx) = mpsc::channel(ops.len().max(1));
        for op in ops {
            tx.try_send(op).expect("room for every op");
        }
        drop(tx);
        let (stream_tx, mut stream_rx) = mpsc::channel(1024);
        let folder = tokio::spawn(flush_ops(rx, stream_tx));
        let mut out = Vec::new();
        while let Some(m) = stream_rx.recv().await {
            out.push(m);
        }
        folder.await.expect("folder ends when the ops end");
        out
    }

    fn names(m: &pb::SessionRequest) -> Vec<String> {
        match &m.kind {
            Some(pb::session_request::Kind::Submit(s)) => s.tasks.iter().map(|t| t.name.clone()).collect(),
            other => panic!("not a submission: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_run_of_submissions_travels_as_one_message_counting_every_task() {
        let out = fold((0..5).map(|i| Op::Submit(spec(i))).collect()).await;
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["t0", "t1", "t2", "t3", "t4"]);
        assert_eq!(out[0].seq, 5);
    }

    #[tokio::test]
    async fn reference_changes_fold_together_but_never_across_a_submission() {
        let (a, b, c) = (oid(0), oid(1), oid(2));
        let out = fold(vec![
            Op::AddRef(a),
            Op::RemoveRef(b),
            Op::Submit(spec(0)),
            Op::Submit(spec(1)),
            Op::RemoveRef(a),
            Op::AddRef(c),
        ])
        .await;
        assert_eq!(out.len(), 3, "{out:?}");
        let Some(pb::session_request::Kind::Refs(u)) = &out[0].kind else { panic!("{:?}", out[0]) };
        assert_eq!((u.add.clone(), u.remove.clone()), (vec![a.to_bytes()], vec![b.to_bytes()]));
        assert_eq!(names(&out[1]), ["t0", "t1"]);
        let Some(pb::session_request::Kind::Refs(u)) = &out[2].kind else { panic!("{:?}", out[2]) };
        assert_eq!((u.add.clone(), u.remove.clone()), (vec![c.to_bytes()], vec![a.to_bytes()]));
        // `seq` counts operations, so a `get` naming `after_seq` waits for exactly its own.
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 4, 6]);
    }

    #[tokio::test]
    async fn a_cancel_is_its_own_message_after_what_came_before() {
        let cancel = pb::CancelTasks { object_ids: vec![oid(0).to_bytes()], force: false, recursive: false };
        let out = fold(vec![Op::Submit(spec(0)), Op::Cancel(cancel.clone()), Op::Submit(spec(1))]).await;
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(names(&out[0]), ["t0"]);
        assert_eq!(out[1].kind, Some(pb::session_request::Kind::Cancel(cancel)));
        assert_eq!(names(&out[2]), ["t1"]);
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_message_holds_at_most_ops_per_message_operations() {
        let n = OPS_PER_MESSAGE + 3;
        let out = fold((0..n).map(|i| Op::Submit(spec((i % 200) as u8))).collect()).await;
        assert_eq!(out.len(), 2);
        assert_eq!(names(&out[0]).len(), OPS_PER_MESSAGE);
        assert_eq!(names(&out[1]).len(), 3);
        assert_eq!(out[1].seq, n as u64);
        let refs: Vec<Op> = (0..n as u32).map(|i| Op::AddRef(oid(i))).collect();
        let out = fold(refs).await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].seq, OPS_PER_MESSAGE as u64);
    }
}
