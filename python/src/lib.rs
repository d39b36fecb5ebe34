//! `shoal._native`: the Rust runtime under the `shoal` Python package.
//!
//! A thin binding: the Python layer (`python/shoal/`) is Ray's API; this
//! module hands its calls to the runtime crate's [`Client`], runs a Python
//! worker's task loop over the raylet's socket, and starts the local cluster
//! that `shoal.init()` embeds. Every call that waits releases the
//! interpreter, so other Python threads run while `get` blocks in Rust.
//!
//! Values cross as bytes: the Python layer pickles them (pickle protocol 5,
//! `shoal._serialization`) and this module stores them as
//! `Format::Pickle5` objects, never looking inside.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList};
use shoal_proto::v1 as pb;
use shoal_runtime::client::ConnectOptions;
use shoal_runtime::head::{Head, HeadConfig};
use shoal_runtime::raylet::RayletConfig;
use shoal_runtime::{Client, Error, JobId, NodeId, ObjectId, ResourceSet, Strategy, Task, TaskArg, WorkerId};

create_exception!(
    _native,
    NativeError,
    PyException,
    "An error of the runtime: args are (kind, message), kind being shoal's error kind by name."
);

/// The runtime the clients of this process run on: one per process, made
/// on first use, two threads (the client only waits on sockets).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shoal-client")
            .enable_all()
            .build()
            .expect("the client runtime starts")
    })
}

/// How often a blocking call looks for a pending signal (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Runs `fut` to completion with the interpreter released. A signal that
/// arrives meanwhile (Ctrl-C in a driver, a cancel's interrupt in a task)
/// ends the wait with the exception its handler raises, as a blocking call
/// of Python's own would.
fn block_on<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    py.detach(|| {
        runtime().block_on(async {
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tokio::time::sleep(SIGNAL_CHECK) => Python::attach(|py| py.check_signals())?,
                }
            }
        })
    })
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Task(t) => t.kind.as_str(),
        Error::Timeout(..) => "GetTimeout",
        Error::Connect { .. } => "NodeUnreachable",
        Error::Invalid(_) => "InvalidRequest",
        Error::SessionClosed(_) => "Conflict",
        Error::Rpc { status, .. } => shoal_runtime::error::kind_of(status).as_str(),
        _ => "Internal",
    }
}

fn to_py(e: Error) -> PyErr {
    NativeError::new_err((error_kind(&e).to_string(), e.to_string()))
}

fn invalid(msg: impl Into<String>) -> PyErr {
    NativeError::new_err(("InvalidRequest".to_string(), msg.into()))
}

/// A reference to an object: the Rust client's reference, so dropping the
/// last Python handle releases it.
#[pyclass(frozen, module = "shoal._native", name = "ObjectRef")]
struct ObjRef {
    inner: shoal_runtime::ObjectRef,
}

#[pymethods]
impl ObjRef {
    /// The object id in hex.
    fn hex(&self) -> String {
        self.inner.id().to_string()
    }

    /// The id of the task that makes the object, in hex.
    fn task_id(&self) -> String {
        self.inner.id().task_id().to_string()
    }

    /// The address of the raylet that owns the object.
    #[getter]
    fn owner_address(&self) -> String {
        self.inner.owner().to_string()
    }

    fn __hash__(&self) -> u64 {
        let b = self.inner.id().to_bytes();
        b.iter().fold(0xcbf29ce484222325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x100000001b3))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.extract::<PyRef<'_, ObjRef>>().is_ok_and(|o| o.inner.id() == self.inner.id())
    }

    fn __repr__(&self) -> String {
        format!("ObjectRef({})", self.inner.id())
    }

    /// Pickled by id and owner: whoever unpickles it holds the object again
    /// through its own client (`shoal._api._adopt`).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (String, String))> {
        let adopt = py.import("shoal._api")?.getattr("_adopt")?;
        Ok((adopt, (self.hex(), self.owner_address())))
    }
}

/// What `get` found for one object.
fn result_tuple<'py>(py: Python<'py>, r: Result<pb::ObjectValue, Error>) -> PyResult<Bound<'py, PyAny>> {
    match r {
        Ok(v) if v.format == pb::Format::Error as i32 => {
            let e = shoal_runtime::value::decode_error(&v);
            error_tuple(py, &e)
        }
        Ok(v) => ("value", v.format, PyBytes::new(py, &v.data)).into_pyobject(py).map(|t| t.into_any()),
        Err(Error::Task(e)) => error_tuple(py, &e),
        Err(Error::Timeout(..)) => ("timeout", 0, py.None()).into_pyobject(py).map(|t| t.into_any()),
        Err(e) => Err(to_py(e)),
    }
}

fn error_tuple<'py>(py: Python<'py>, e: &shoal_runtime::TaskError) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    d.set_item("kind", e.kind.as_str())?;
    d.set_item("message", &e.message)?;
    d.set_item("task_id", &e.task_id)?;
    d.set_item("task_name", &e.task_name)?;
    d.set_item("function", &e.function)?;
    d.set_item("node_id", &e.node_id)?;
    d.set_item("attempt", e.attempt)?;
    d.set_item("stderr_tail", &e.stderr_tail)?;
    d.set_item("traceback", &e.traceback)?;
    d.set_item("cause", PyBytes::new(py, &e.cause))?;
    ("error", 0, d).into_pyobject(py).map(|t| t.into_any())
}

fn bytes_of(b: PyBackedBytes) -> Bytes {
    Bytes::from_owner(b)
}

fn pickled(data: PyBackedBytes, nested: &[PyRef<'_, ObjRef>]) -> pb::ObjectValue {
    pb::ObjectValue {
        format: pb::Format::Pickle5 as i32,
        data: bytes_of(data),
        nested_refs: nested.iter().map(|r| r.inner.to_wire()).collect(),
    }
}

/// A pickled value as the Python layer hands it over: its bytes, or its
/// bytes and the references inside it.
fn value_arg(a: &Bound<'_, PyAny>) -> PyResult<pb::ObjectValue> {
    if let Ok((data, nested)) = a.extract::<(PyBackedBytes, Vec<PyRef<'_, ObjRef>>)>() {
        return Ok(pickled(data, &nested));
    }
    let data: PyBackedBytes =
        a.extract().map_err(|_| invalid("a value must be pickled bytes, or (bytes, [ObjectRef])"))?;
    Ok(pickled(data, &[]))
}

fn strategy_of(s: Option<(String, Option<String>, bool)>) -> PyResult<Strategy> {
    match s {
        None => Ok(Strategy::Default),
        Some((kind, node, soft)) => match kind.as_str() {
            "DEFAULT" => Ok(Strategy::Default),
            "SPREAD" => Ok(Strategy::Spread),
            "NODE_AFFINITY" => {
                let node = node.unwrap_or_default();
                let id: NodeId = node.parse().map_err(|_| invalid(format!("`{node}` is not a node id")))?;
                Ok(Strategy::NodeAffinity { node: id, soft })
            }
            other => Err(invalid(format!("unknown scheduling strategy `{other}`"))),
        },
    }
}

/// A connection to a raylet, which owns what this client submits.
#[pyclass(frozen, module = "shoal._native", name = "Client")]
struct PyClient {
    inner: Client,
}

#[pymethods]
impl PyClient {
    /// Connects to the raylet at `address` (`"auto"` finds it) and opens a
    /// session of `job_id` (a new job when `None`); `worker_id` is set in a
    /// worker, so that the raylet lends its CPU while it waits in `get`.
    #[staticmethod]
    #[pyo3(signature = (address, job_id=None, worker_id=None, name=String::new()))]
    fn connect(
        py: Python<'_>,
        address: String,
        job_id: Option<u32>,
        worker_id: Option<String>,
        name: String,
    ) -> PyResult<PyClient> {
        let worker_id = match worker_id {
            Some(w) => Some(w.parse::<WorkerId>().map_err(|_| invalid(format!("`{w}` is not a worker id")))?),
            None => None,
        };
        let opts = ConnectOptions { name, job_id: job_id.map(JobId), worker_id, token: None };
        let inner = block_on(py, Client::connect_with(&address, opts))?.map_err(to_py)?;
        Ok(PyClient { inner })
    }

    #[getter]
    fn job_id(&self) -> u32 {
        self.inner.job_id().0
    }

    #[getter]
    fn node_id(&self) -> String {
        self.inner.node_id().to_string()
    }

    #[getter]
    fn address(&self) -> String {
        self.inner.address().to_string()
    }

    /// Submits a Python task. `args` holds pickled values (`bytes`) and
    /// references; returns the references to its `num_returns` results.
    #[pyo3(signature = (function_id, name, args, num_returns, resources, max_retries, retry_exceptions, strategy=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        function_id: String,
        name: String,
        args: Vec<Bound<'_, PyAny>>,
        num_returns: u32,
        resources: Vec<(String, f64)>,
        max_retries: i32,
        retry_exceptions: bool,
        strategy: Option<(String, Option<String>, bool)>,
    ) -> PyResult<Vec<ObjRef>> {
        let mut task = Task::from_descriptor(
            pb::FunctionDescriptor {
                kind: Some(pb::function_descriptor::Kind::Python(pb::PythonFunction {
                    function_id,
                    name: name.clone(),
                })),
            },
            name,
        );
        for a in args {
            if let Ok(r) = a.extract::<PyRef<'_, ObjRef>>() {
                task = task.arg(TaskArg::Ref(r.inner.clone()));
            } else {
                task = task.arg(TaskArg::Encoded(value_arg(&a)?));
            }
        }
        let mut res = ResourceSet::new();
        for (k, v) in resources {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(format!("resource `{k}` must be a non-negative number, got {v}")));
            }
            res = res.with(&k, v);
        }
        let task = task
            .num_returns(num_returns)
            .resources(res)
            .max_retries(max_retries)
            .retry_exceptions(retry_exceptions)
            .strategy(strategy_of(strategy)?);
        let refs = block_on(py, self.inner.submit_returns(task))?.map_err(to_py)?;
        Ok(refs.into_iter().map(|inner| ObjRef { inner }).collect())
    }

    /// Stores a pickled value (bytes, or bytes and the references inside
    /// it, which it then holds) and returns its reference.
    fn put(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<ObjRef> {
        let v = value_arg(&value)?;
        let inner = block_on(py, self.inner.put_encoded(v))?.map_err(to_py)?;
        Ok(ObjRef { inner })
    }

    /// Lends `refs`, returned inside the results of an attempt, to the
    /// task's owner (a worker calls it before answering).
    fn lend(&self, py: Python<'_>, task_id: String, attempt: u32, refs: Vec<PyRef<'_, ObjRef>>) -> PyResult<()> {
        let task: shoal_runtime::TaskId =
            task_id.parse().map_err(|_| invalid(format!("`{task_id}` is not a task id")))?;
        let refs: Vec<shoal_runtime::ObjectRef> = refs.iter().map(|r| r.inner.clone()).collect();
        block_on(py, self.inner.lend(task, attempt, &refs))?.map_err(to_py)
    }

    /// Waits for objects; for each, `("value", format, bytes)`,
    /// `("error", 0, details)` or `("timeout", 0, None)`.
    #[pyo3(signature = (refs, timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        refs: Vec<PyRef<'py, ObjRef>>,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let refs: Vec<shoal_runtime::ObjectRef> = refs.iter().map(|r| r.inner.clone()).collect();
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        let results = block_on(py, self.inner.get_encoded_many(&refs, timeout))?.map_err(to_py)?;
        results.into_iter().map(|r| result_tuple(py, r)).collect()
    }

    /// Which of `refs` are ready, once `num_returns` are or `timeout` passed.
    #[pyo3(signature = (refs, num_returns, timeout=None))]
    fn wait(
        &self,
        py: Python<'_>,
        refs: Vec<PyRef<'_, ObjRef>>,
        num_returns: usize,
        timeout: Option<f64>,
    ) -> PyResult<Vec<bool>> {
        let rs: Vec<shoal_runtime::ObjectRef> = refs.iter().map(|r| r.inner.clone()).collect();
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        let (ready, _) = block_on(py, self.inner.wait(&rs, num_returns, timeout))?.map_err(to_py)?;
        let ready: std::collections::HashSet<ObjectId> = ready.iter().map(|r| r.id()).collect();
        Ok(rs.iter().map(|r| ready.contains(&r.id())).collect())
    }

    /// Cancels the task that makes `r`.
    fn cancel(&self, py: Python<'_>, r: PyRef<'_, ObjRef>, force: bool, recursive: bool) -> PyResult<()> {
        let r = r.inner.clone();
        block_on(py, self.inner.cancel(&r, force, recursive))?.map_err(to_py)
    }

    /// Holds an object another client handed over by id and owner.
    fn borrow(&self, py: Python<'_>, object_id: String, owner: String) -> PyResult<ObjRef> {
        let id: ObjectId = object_id.parse().map_err(|_| invalid(format!("`{object_id}` is not an object id")))?;
        let inner = block_on(py, self.inner.borrow(id, &owner))?.map_err(to_py)?;
        Ok(ObjRef { inner })
    }

    /// Appends text to the log of job `job_id`.
    fn append_job_log(&self, py: Python<'_>, job_id: u32, data: PyBackedBytes) -> PyResult<()> {
        block_on(py, self.inner.append_job_log(JobId(job_id), bytes_of(data)))?.map_err(to_py)
    }

    /// The counters of this client's raylet (objects, tasks, workers,
    /// transfers), as a dict of name to number.
    fn raylet_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = block_on(py, shoal_runtime::node_stats(self.inner.address()))?.map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("object_count", s.object_count)?;
        d.set_item("object_store_used", s.object_store_used)?;
        d.set_item("owned_objects", s.owned_objects)?;
        d.set_item("owned_tasks", s.owned_tasks)?;
        d.set_item("lent_objects", s.lent_objects)?;
        d.set_item("borrowed_objects", s.borrowed_objects)?;
        d.set_item("running_tasks", s.running_tasks)?;
        d.set_item("queued_tasks", s.queued_tasks)?;
        d.set_item("workers", s.workers)?;
        d.set_item("idle_workers", s.idle_workers)?;
        Ok(d)
    }

    /// Waits until the raylet has applied everything this client sent.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        block_on(py, self.inner.flush())?.map_err(to_py)
    }

    /// Stores `value` under `key` in the cluster's key-value store.
    fn kv_put(&self, py: Python<'_>, key: String, value: PyBackedBytes, overwrite: bool) -> PyResult<bool> {
        block_on(py, self.inner.kv_put(&key, bytes_of(value), overwrite))?.map_err(to_py)
    }

    /// The value under `key`, or `None`.
    fn kv_get<'py>(&self, py: Python<'py>, key: String) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let v = block_on(py, self.inner.kv_get(&key))?.map_err(to_py)?;
        Ok(v.map(|b| PyBytes::new(py, &b)))
    }

    /// The cluster's nodes: dicts of id, address, state, labels, total and
    /// available resources.
    fn nodes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let reply = block_on(py, self.inner.nodes())?.map_err(to_py)?;
        let list = PyList::empty(py);
        for n in &reply.nodes {
            let d = PyDict::new(py);
            let id = NodeId::from_slice(&n.node_id).map(|i| i.to_string()).unwrap_or_default();
            d.set_item("node_id", &id)?;
            d.set_item("address", &n.address)?;
            d.set_item("alive", n.state == pb::NodeState::NodeAlive as i32)?;
            d.set_item("labels", n.labels.clone())?;
            d.set_item("total", amounts(n.total.as_ref()))?;
            let load = reply.loads.iter().find(|l| l.node_id == n.node_id);
            let available = load.and_then(|l| l.available.as_ref()).or(n.total.as_ref());
            d.set_item("available", amounts(available))?;
            list.append(d)?;
        }
        Ok(list)
    }
}

/// Resource amounts by name as floats.
fn amounts(r: Option<&pb::ResourceSet>) -> std::collections::HashMap<String, f64> {
    let r = ResourceSet::from(r);
    r.iter().map(|(k, v)| (k.to_string(), v as f64 / shoal_runtime::resources::UNIT as f64)).collect()
}

/// The local cluster `shoal.init()` starts inside the driver: a head (GCS,
/// REST API) with its own raylet, on a runtime of its own, so that
/// [`LocalCluster::shutdown`] ends every socket and task it had.
#[pyclass(module = "shoal._native", name = "LocalCluster")]
struct LocalCluster {
    state: Mutex<Option<(tokio::runtime::Runtime, Head)>>,
    #[pyo3(get)]
    raylet_address: String,
    #[pyo3(get)]
    gcs_address: String,
    #[pyo3(get)]
    http_address: String,
    #[pyo3(get)]
    node_id: String,
}

#[pymethods]
impl LocalCluster {
    /// Starts a cluster of one node offering `resources` (name → amount;
    /// memory in bytes), whose workers are started with the given command
    /// lines, keeping its socket and spill files in `dir`.
    #[staticmethod]
    #[pyo3(signature = (resources, object_store_memory, python_worker, native_worker, dir, prestart_workers=0))]
    fn start(
        py: Python<'_>,
        resources: Vec<(String, f64)>,
        object_store_memory: u64,
        python_worker: Vec<String>,
        native_worker: Vec<String>,
        dir: PathBuf,
        prestart_workers: usize,
    ) -> PyResult<LocalCluster> {
        let mut res = ResourceSet::new();
        for (k, v) in &resources {
            res = res.with(k, *v);
        }
        let cpus = res.get(shoal_runtime::resources::CPU);
        let mut raylet = RayletConfig::new("", res);
        raylet.host = "127.0.0.1".into();
        raylet.port = 0;
        raylet.metrics_port = 0;
        raylet.object_store_memory = object_store_memory;
        raylet.python_worker = python_worker;
        raylet.native_worker = native_worker;
        raylet.worker_socket = dir.join("raylet.sock");
        raylet.spill_dir = Some(dir.join("spill"));
        raylet.max_workers = (cpus.ceil() as usize).max(1);
        raylet.prestart_workers = prestart_workers;
        // A cluster of this process's own: a token of its own, known to
        // this process's clients by address and handed to its workers.
        let token = shoal_runtime::auth::Token::generate().map_err(to_py)?;
        let cfg = HeadConfig {
            host: "127.0.0.1".into(),
            gcs_port: 0,
            http_port: 0,
            gcs: Default::default(),
            ready_file: None,
            rest: Default::default(),
            raylet: Some(raylet),
            state_dir: None,
            token: Some(token.clone()),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shoal-cluster")
            .enable_all()
            .build()
            .map_err(|e| NativeError::new_err(("Internal".to_string(), format!("cannot start a runtime: {e}"))))?;
        let head = py.detach(|| rt.block_on(shoal_runtime::head::start(cfg, true))).map_err(to_py)?;
        let raylet = head.raylet.as_ref().ok_or_else(|| invalid("the head started no raylet"))?;
        shoal_runtime::auth::remember(
            &[raylet.address.clone(), head.gcs_address.clone(), head.http_address.clone()],
            &token,
        );
        Ok(LocalCluster {
            raylet_address: raylet.address.clone(),
            node_id: raylet.node_id().to_string(),
            gcs_address: head.gcs_address.clone(),
            http_address: head.http_address.clone(),
            state: Mutex::new(Some((rt, head))),
        })
    }

    /// Stops the cluster: kills its workers (waiting for them to exit),
    /// then ends its servers. Safe to call twice.
    fn shutdown(&self, py: Python<'_>) {
        let Some((rt, head)) = self.state.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        shoal_runtime::auth::forget(&[
            self.raylet_address.clone(),
            self.gcs_address.clone(),
            self.http_address.clone(),
        ]);
        py.detach(|| {
            let pids = head.raylet.as_ref().map(|r| r.worker_pids()).unwrap_or_default();
            {
                let _entered = rt.enter();
                head.shutdown();
            }
            // The raylet's tasks reap the killed workers; give them a moment.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while pids.iter().any(|p| shoal_runtime::process::is_running(*p)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(head);
            rt.shutdown_timeout(Duration::from_secs(1));
        });
    }
}

/// Runs this process as a Python worker of its raylet (`python -m
/// shoal._worker`): every task is handed to `execute(function_id, name,
/// args, num_returns, task_id, job_id, attempt, gpu_ids)`, with `args` a list
/// of `(format, bytes)`; it returns `("ok", [(format, bytes), ...])` or
/// `("error", kind, message, traceback, cause)`.
///
/// An interrupt from the raylet (a cancel without `force`) raises
/// `KeyboardInterrupt` in the running task if it is still the attempt named.
#[pyfunction]
fn run_worker(py: Python<'_>, execute: Py<PyAny>) -> PyResult<()> {
    let (socket, id) = worker_env()?;
    let running: std::sync::Arc<Mutex<Option<(Bytes, u32)>>> = Default::default();
    let watched = running.clone();
    // SAFETY: pthread_self has no preconditions; this is the interpreter's
    // main thread, which runs every task.
    let main_thread = unsafe { libc::pthread_self() } as usize;
    let interrupt = move |task_id: &[u8], attempt: u32| {
        let current = watched.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(t, a)| t[..] == task_id[..] && *a == attempt) {
            // SIGINT to the main thread itself: Python's handler raises
            // KeyboardInterrupt there, and a blocking call (sleep, a read)
            // returns early with EINTR to let it.
            // SAFETY: the main thread outlives this reader thread's use of it
            // (both end with the process).
            unsafe { libc::pthread_kill(main_thread as libc::pthread_t, libc::SIGINT) };
        }
    };
    let execute_one = |task: pb::ExecuteTask| {
        *running.lock().unwrap_or_else(|p| p.into_inner()) = Some((task.task_id.clone(), task.attempt));
        let done = Python::attach(|py| {
            // An interrupt meant for an attempt that ended just before it
            // arrived must not hit this one.
            let _ = py.check_signals();
            run_task(py, &execute, task)
        });
        *running.lock().unwrap_or_else(|p| p.into_inner()) = None;
        done
    };
    py.detach(|| shoal_runtime::worker::serve_interruptible(&socket, id, execute_one, interrupt))
        .map_err(|e| NativeError::new_err(("Internal".to_string(), format!("the worker's socket failed: {e}"))))
}

/// Runs this process as a native worker (builtins and `exec` tasks), for
/// clusters started from Python, which have no `shoal` binary.
#[pyfunction]
fn run_native_worker(py: Python<'_>) -> PyResult<()> {
    let (socket, id) = worker_env()?;
    let registry = shoal_runtime::worker::Registry::standard();
    py.detach(|| shoal_runtime::worker::run(&socket, id, &registry))
        .map_err(|e| NativeError::new_err(("Internal".to_string(), format!("the worker's socket failed: {e}"))))
}

fn worker_env() -> PyResult<(PathBuf, WorkerId)> {
    let socket = std::env::var(shoal_runtime::raylet::ENV_SOCKET)
        .map_err(|_| invalid("SHOAL_RAYLET_SOCKET is not set: workers are started by a raylet"))?;
    let id = std::env::var(shoal_runtime::raylet::ENV_WORKER_ID)
        .ok()
        .and_then(|w| w.parse::<WorkerId>().ok())
        .ok_or_else(|| invalid("SHOAL_WORKER_ID is not set to a worker id"))?;
    Ok((PathBuf::from(socket), id))
}

fn run_task(py: Python<'_>, execute: &Py<PyAny>, task: pb::ExecuteTask) -> pb::TaskDone {
    let failed = |kind: &str, message: String, traceback: String, cause: Bytes| pb::TaskDone {
        task_id: task.task_id.clone(),
        error: Some(pb::TaskError {
            kind: kind.to_string(),
            message,
            traceback,
            cause,
            attempt: task.attempt,
            ..Default::default()
        }),
        ..Default::default()
    };
    let Some(pb::function_descriptor::Kind::Python(f)) = task.function.as_ref().and_then(|f| f.kind.as_ref()) else {
        return failed(
            "UnknownFunction",
            "a Python worker runs only Python functions".into(),
            String::new(),
            Bytes::new(),
        );
    };
    let outcome = (|| -> PyResult<pb::TaskDone> {
        let args = PyList::empty(py);
        for a in &task.args {
            args.append((a.format, PyBytes::new(py, &a.data)))?;
        }
        let tid = shoal_runtime::TaskId::from_slice(&task.task_id).map(|t| t.to_string()).unwrap_or_default();
        let r = execute.bind(py).call1((
            f.function_id.as_str(),
            f.name.as_str(),
            args,
            task.num_returns,
            tid,
            task.job_id,
            task.attempt,
            task.gpu_ids.clone(),
        ))?;
        let status: String = r.get_item(0)?.extract()?;
        if status == "ok" {
            let items: Vec<(i32, PyBackedBytes, Vec<PyRef<'_, ObjRef>>)> = r.get_item(1)?.extract()?;
            let returns = items
                .into_iter()
                .map(|(format, data, nested)| pb::ObjectValue {
                    format,
                    data: bytes_of(data),
                    nested_refs: nested.iter().map(|r| r.inner.to_wire()).collect(),
                })
                .collect();
            Ok(pb::TaskDone { task_id: task.task_id.clone(), returns, ..Default::default() })
        } else {
            let kind: String = r.get_item(1)?.extract()?;
            let message: String = r.get_item(2)?.extract()?;
            let traceback: String = r.get_item(3)?.extract()?;
            let cause: PyBackedBytes = r.get_item(4)?.extract()?;
            Ok(failed(&kind, message, traceback, bytes_of(cause)))
        }
    })();
    outcome
        .unwrap_or_else(|e| failed("Internal", format!("the Python worker failed: {e}"), String::new(), Bytes::new()))
}

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ObjRef>()?;
    m.add_class::<PyClient>()?;
    m.add_class::<LocalCluster>()?;
    m.add_function(wrap_pyfunction!(run_worker, m)?)?;
    m.add_function(wrap_pyfunction!(run_native_worker, m)?)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("INLINE_LIMIT", shoal_runtime::value::INLINE_LIMIT)?;
    Ok(())
}
