"""Ray's task API over shoal's Rust client.

The process is in one of three modes: not initialized; a *driver*, after
``init()`` (which starts a local cluster inside this process, or connects to
a running one); or a *worker*, when a raylet started this interpreter to run
tasks (``shoal._worker``), where the API is ready without ``init()`` and
nested tasks go through the worker's own raylet.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import os
import shutil
import sys
import sysconfig
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cloudpickle

from . import _native, _serialization, exceptions
from .util.scheduling_strategies import NodeAffinitySchedulingStrategy

ObjectRef = _native.ObjectRef

#: Arguments above this size (bytes, pickled) are put into the object store
#: and passed by reference; smaller ones travel inside the task.
INLINE_LIMIT: int = _native.INLINE_LIMIT


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.client: Optional[_native.Client] = None
        self.cluster: Optional[_native.LocalCluster] = None
        self.cluster_dir: Optional[str] = None
        self.mode: str = "none"  # "none", "driver" or "worker"
        self.exported: set = set()
        # Inside a worker: the running task.
        self.task_id: Optional[str] = None
        self.job_id: Optional[int] = None
        self.attempt: int = 0


_state = _State()


def _client() -> _native.Client:
    c = _state.client
    if c is not None:
        return c
    with _state.lock:
        if _state.client is None:
            if _state.mode == "worker":
                _state.client = _native.Client.connect(
                    os.environ["SHOAL_ADDRESS"],
                    job_id=_state.job_id or None,
                    worker_id=os.environ.get("SHOAL_WORKER_ID"),
                    name="worker",
                )
            else:
                raise RuntimeError("shoal is not initialized: call shoal.init() first")
        return _state.client


def _adopt(object_id: str, owner: str) -> ObjectRef:
    """An ObjectRef read from inside a value: held again by this process."""
    return _client().borrow(object_id, owner)


# ---------------------------------------------------------------------------
# init / shutdown
# ---------------------------------------------------------------------------


def _machine_memory() -> int:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text != "max":
            return int(text)
    except (OSError, ValueError):
        pass
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def _resource_pairs(num_cpus: float, num_gpus: float, memory: int, resources: Dict[str, float]) -> List[Tuple[str, float]]:
    pairs = [("cpu", float(num_cpus)), ("gpu", float(num_gpus)), ("memory", float(memory))]
    for k, v in (resources or {}).items():
        if k in ("CPU", "GPU", "memory"):
            raise ValueError(f"use num_cpus, num_gpus or memory instead of resources={{'{k}': ...}}")
        pairs.append((k, float(v)))
    return pairs


class RayContext(dict):
    """What ``init()`` returns: the cluster's addresses (a dict, as Ray's)."""

    @property
    def address_info(self) -> Dict[str, Any]:
        return dict(self)

    def __enter__(self) -> "RayContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()


def init(
    address: Optional[str] = None,
    *,
    num_cpus: Optional[float] = None,
    num_gpus: Optional[float] = None,
    resources: Optional[Dict[str, float]] = None,
    object_store_memory: Optional[int] = None,
    memory: Optional[int] = None,
    ignore_reinit_error: bool = False,
    **_ignored: Any,
) -> RayContext:
    """Starts shoal in this process.

    With no address (and none in ``SHOAL_ADDRESS``), starts a local cluster
    inside this process: a head with one node offering ``num_cpus`` (default:
    the machine's), ``num_gpus``, ``memory`` bytes (70 % of the machine's) and
    an object store of ``object_store_memory`` bytes (30 % of memory), whose
    workers are this interpreter. ``shutdown()`` or the interpreter's exit
    stops it and every worker. With ``address="auto"`` or ``"HOST:PORT"`` (a
    raylet or a GCS), connects to a running cluster instead; an entrypoint
    job's driver joins its job.
    """
    with _state.lock:
        if _state.mode == "worker":
            return RayContext(address=os.environ.get("SHOAL_ADDRESS", ""))
        if _state.mode == "driver":
            if ignore_reinit_error:
                return _context_info()
            raise RuntimeError("shoal.init() was already called; call shoal.shutdown() first, or pass ignore_reinit_error=True")
        if address is None:
            address = os.environ.get("SHOAL_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
        job = os.environ.get("SHOAL_JOB_ID")
        if address is None:
            if num_cpus is not None and num_cpus < 0 or num_gpus is not None and num_gpus < 0:
                raise ValueError("num_cpus and num_gpus must be non-negative")
            mem = int(memory if memory is not None else _machine_memory() * 7 // 10)
            store = int(object_store_memory if object_store_memory is not None else max(mem * 3 // 10, 64 << 20))
            cpus = float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
            pairs = _resource_pairs(cpus, float(num_gpus or 0), mem, resources or {})
            d = tempfile.mkdtemp(prefix="shoal-py-")
            python = [sys.executable, "-m", "shoal._worker"]
            try:
                cluster = _native.LocalCluster.start(pairs, store, python, python + ["--native"], d)
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                raise
            _state.cluster, _state.cluster_dir = cluster, d
            address = cluster.raylet_address
        elif num_cpus is not None or num_gpus is not None or resources:
            raise ValueError("num_cpus, num_gpus and resources describe a new local cluster; they cannot be given with an address")
        try:
            _state.client = _native.Client.connect(
                address, job_id=int(job) if job else None, name=os.path.basename(sys.argv[0] or "python")
            )
        except BaseException:
            _stop_cluster()
            raise
        _state.mode = "driver"
        atexit.register(shutdown)
        return _context_info()


def _context_info() -> RayContext:
    c = _state.client
    info = RayContext(address=c.address if c else "", node_id=c.node_id if c else "", job_id=c.job_id if c else 0)
    if _state.cluster is not None:
        info["gcs_address"] = _state.cluster.gcs_address
        info["webui_url"] = _state.cluster.http_address
    return info


def _stop_cluster() -> None:
    cluster, d = _state.cluster, _state.cluster_dir
    _state.cluster, _state.cluster_dir = None, None
    if cluster is not None:
        cluster.shutdown()
    if d:
        shutil.rmtree(d, ignore_errors=True)


def shutdown() -> None:
    """Disconnects; a local cluster started by ``init()`` stops with its workers."""
    with _state.lock:
        if _state.mode != "driver":
            return
        _state.client = None
        _state.exported.clear()
        _state.mode = "none"
        _stop_cluster()


def is_initialized() -> bool:
    """Whether ``init()`` was called (always true inside a task)."""
    return _state.mode != "none"


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------


def _check_refs(refs: Any, what: str) -> Tuple[List[ObjectRef], bool]:
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, (list, tuple)):
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"{what} takes ObjectRefs, or a list of them; got a list holding {type(r).__name__}")
        return list(refs), False
    raise TypeError(f"{what} takes an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")


def _value_of(item: Tuple[int, int, Any], ref: ObjectRef, timeout: Optional[float]) -> Any:
    status, fmt, data = item
    if status == "value":
        return _serialization.decode(fmt, data, _adopt)
    if status == "timeout":
        raise exceptions.GetTimeoutError(f"get timed out after {timeout} s waiting for {ref!r}")
    cause = None
    if data.get("cause"):
        try:
            cause = cloudpickle.loads(data["cause"])
        except Exception:  # the exception's class may not exist here
            cause = None
    raise exceptions.from_details(data, cause)


def get(object_refs: Union[ObjectRef, Sequence[ObjectRef]], *, timeout: Optional[float] = None) -> Any:
    """The value of an object, or a list of values; waits for them (at most
    ``timeout`` seconds). A failed task's error is raised here."""
    refs, single = _check_refs(object_refs, "get")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    if not refs:
        return []
    items = _client().get(refs, timeout)
    values = [_value_of(i, r, timeout) for i, r in zip(items, refs)]
    return values[0] if single else values


def put(value: Any) -> ObjectRef:
    """Stores ``value`` in the object store; returns its reference."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed: pass the ObjectRef itself")
    return _client().put(_serialize(value, "the value given to put()"))


def _serialize(value: Any, what: str) -> Any:
    """The pickled value as the extension takes it: its bytes, with the
    ObjectRefs inside it when there are any."""
    try:
        data, refs = _serialization.serialize(value)
    except Exception as e:
        raise TypeError(f"{what} could not be pickled: {type(e).__name__}: {e}") from e
    return (data, refs) if refs else data


def wait(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: Optional[float] = None,
    fetch_local: bool = True,
) -> Tuple[List[ObjectRef], List[ObjectRef]]:
    """Waits until ``num_returns`` of the objects are ready or ``timeout``
    passes; returns the ready and the not-ready references, in input order."""
    if isinstance(object_refs, ObjectRef):
        raise TypeError("wait() takes a list of ObjectRefs, not a single ObjectRef")
    refs, _ = _check_refs(object_refs, "wait")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not isinstance(num_returns, int) or num_returns < 0:
        raise ValueError("num_returns must be a non-negative integer")
    if num_returns > len(refs):
        raise ValueError(f"num_returns ({num_returns}) cannot exceed the number of ObjectRefs ({len(refs)})")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    if not refs:
        return [], []
    flags = _client().wait(refs, num_returns, timeout)
    ready = [r for r, f in zip(refs, flags) if f][:num_returns]
    chosen = set(ready)
    return ready, [r for r in refs if r not in chosen]


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancels the task that makes ``object_ref``: a pending task never
    runs; a running one is interrupted (``force`` kills its worker). ``get``
    then raises :class:`TaskCancelledError`."""
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(object_ref).__name__}")
    _client().cancel(object_ref, force, recursive)


# ---------------------------------------------------------------------------
# Remote functions
# ---------------------------------------------------------------------------

_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "scheduling_strategy",
    "name",
}


def _check_options(opts: Dict[str, Any]) -> None:
    unknown = sorted(set(opts) - _OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid ones are {', '.join(sorted(_OPTIONS))}")
    for k in ("num_cpus", "num_gpus", "memory"):
        v = opts.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"{k} must be a non-negative number, got {v!r}")
    res = opts.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError("resources must be a dict of name to amount")
        for k, v in res.items():
            if k in ("CPU", "GPU", "memory"):
                raise ValueError(f"use num_cpus, num_gpus or memory instead of resources={{'{k}': ...}}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"resource {k} must be a non-negative number, got {v!r}")
    n = opts.get("num_returns")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024):
        raise ValueError(f"num_returns must be an integer from 1 to 1024, got {n!r}")
    r = opts.get("max_retries")
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < -1):
        raise ValueError(f"max_retries must be an integer >= -1 (-1 retries forever), got {r!r}")
    s = opts.get("scheduling_strategy")
    if s is not None and s not in ("DEFAULT", "SPREAD") and not isinstance(s, NodeAffinitySchedulingStrategy):
        raise ValueError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a NodeAffinitySchedulingStrategy, got {s!r}")


def _strategy(s: Any) -> Optional[Tuple[str, Optional[str], bool]]:
    if s is None or s == "DEFAULT":
        return None
    if s == "SPREAD":
        return ("SPREAD", None, False)
    return ("NODE_AFFINITY", s.node_id, bool(s.soft))


def _by_value_module(fn: Callable) -> Optional[Any]:
    """The module to pickle with ``fn`` by value: user code that workers
    may not be able to import (not under site-packages or the stdlib)."""
    mod = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(mod, "__file__", None)
    if mod is None or path is None or mod.__name__ == "__main__":
        return None
    path = os.path.realpath(path)
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    if any(path.startswith(os.path.realpath(r) + os.sep) for r in roots):
        return None
    return mod


def _pickle_function(fn: Callable) -> bytes:
    mod = _by_value_module(fn)
    if mod is None:
        return _serialization.dumps_function(fn)
    cloudpickle.register_pickle_by_value(mod)
    try:
        return _serialization.dumps_function(fn)
    finally:
        cloudpickle.unregister_pickle_by_value(mod)


class RemoteFunction:
    """A function made remote by ``@remote``: call it with ``.remote()``."""

    def __init__(self, fn: Callable, options: Dict[str, Any]) -> None:
        _check_options(options)
        self._function = fn
        self._options = options
        self._name = f"{fn.__module__}.{fn.__qualname__}"
        self._pickled: Optional[bytes] = None
        self._id: Optional[str] = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "remote_function")
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote functions cannot be called directly: instead of `{self._name}()`, "
            f"call `{self.__name__}.remote()` and `shoal.get()` its result"
        )

    def options(self, **options: Any) -> "RemoteFunction":
        """The same function with these options changed, for one call."""
        merged = dict(self._options)
        merged.update(options)
        other = RemoteFunction.__new__(RemoteFunction)
        other.__dict__.update(self.__dict__)
        _check_options(merged)
        other._options = merged
        return other

    def _export(self, client: _native.Client) -> str:
        if self._id is None:
            try:
                self._pickled = _pickle_function(self._function)
            except Exception as e:
                raise TypeError(f"remote function {self._name} could not be pickled: {type(e).__name__}: {e}") from e
            self._id = hashlib.sha256(self._pickled).hexdigest()[:32]
        key = (id(client), self._id)
        if key not in _state.exported:
            client.kv_put("fn:" + self._id, self._pickled, False)
            _state.exported.add(key)
        return self._id

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submits the call; returns its ObjectRef (a list of them with
        ``num_returns`` above 1)."""
        client = _client()
        fid = self._export(client)
        o = self._options
        # First, the names of the keyword arguments (none: empty, the common case).
        task_args: List[Any] = [_serialization.serialize(tuple(kwargs))[0] if kwargs else b""]
        for i, a in enumerate(list(args) + list(kwargs.values())):
            if isinstance(a, ObjectRef):
                task_args.append(a)
            else:
                where = f"argument {i}" if i < len(args) else f"argument `{list(kwargs)[i - len(args)]}`"
                task_args.append(_serialize(a, f"{where} of {self._name}"))
        cpus = o.get("num_cpus")
        pairs = [("cpu", float(1 if cpus is None else cpus))]
        if o.get("num_gpus"):
            pairs.append(("gpu", float(o["num_gpus"])))
        if o.get("memory"):
            pairs.append(("memory", float(o["memory"])))
        for k, v in (o.get("resources") or {}).items():
            pairs.append((k, float(v)))
        n = o.get("num_returns") or 1
        max_retries = o.get("max_retries")
        refs = client.submit(
            fid,
            o.get("name") or self._name,
            task_args,
            n,
            pairs,
            3 if max_retries is None else max_retries,
            bool(o.get("retry_exceptions", False)),
            _strategy(o.get("scheduling_strategy")),
        )
        return refs[0] if n == 1 else refs

    def __repr__(self) -> str:
        return f"<remote function {self._name}>"


def remote(*args: Any, **options: Any) -> Any:
    """Makes a function remote: ``@remote`` or ``@remote(num_cpus=2, ...)``.

    Options: ``num_cpus`` (default 1), ``num_gpus``, ``memory`` (bytes),
    ``resources``, ``num_returns``, ``max_retries`` (default 3; -1 forever),
    ``retry_exceptions``, ``scheduling_strategy`` (``"DEFAULT"``,
    ``"SPREAD"`` or :class:`NodeAffinitySchedulingStrategy`), ``name``.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@remote takes keyword options only, as in @remote(num_cpus=2)")
    return lambda fn: _make_remote(fn, options)


def _make_remote(fn: Any, options: Dict[str, Any]) -> RemoteFunction:
    if inspect.isclass(fn):
        raise TypeError("actors (remote classes) are not supported by shoal yet; make a function remote instead")
    if not callable(fn):
        raise TypeError(f"@remote needs a function, got {type(fn).__name__}")
    return RemoteFunction(fn, options)


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------

_RAY_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


def _ray_resources(amounts: Dict[str, float]) -> Dict[str, float]:
    return {_RAY_NAMES.get(k, k): v for k, v in amounts.items() if v}


def nodes() -> List[Dict[str, Any]]:
    """The cluster's nodes, as Ray describes them."""
    out = []
    for n in _client().nodes():
        out.append(
            {
                "NodeID": n["node_id"],
                "Alive": n["alive"],
                "NodeManagerAddress": n["address"].rsplit(":", 1)[0],
                "NodeManagerPort": int(n["address"].rsplit(":", 1)[1]) if ":" in n["address"] else 0,
                "Resources": _ray_resources(n["total"]),
                "Labels": dict(n["labels"]),
            }
        )
    return out


def _sum(key: str) -> Dict[str, float]:
    total: Dict[str, float] = {}
    for n in _client().nodes():
        if not n["alive"]:
            continue
        for k, v in _ray_resources(n[key]).items():
            total[k] = total.get(k, 0.0) + v
    return total


def cluster_resources() -> Dict[str, float]:
    """The resources of every alive node, summed."""
    return _sum("total")


def available_resources() -> Dict[str, float]:
    """The resources free right now on alive nodes, summed (as last reported)."""
    return _sum("available")


class RuntimeContext:
    """Where the caller runs: its job, task (inside a task) and node."""

    def get_job_id(self) -> str:
        if _state.mode == "worker" and _state.job_id is not None:
            return f"{_state.job_id:08x}"
        return f"{_client().job_id:08x}"

    def get_task_id(self) -> Optional[str]:
        return _state.task_id if _state.mode == "worker" else None

    def get_node_id(self) -> str:
        if _state.mode == "worker":
            return os.environ.get("SHOAL_NODE_ID", "")
        return _client().node_id

    def get_attempt_number(self) -> int:
        return _state.attempt

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def task_id(self) -> Optional[str]:
        return self.get_task_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()


def get_runtime_context() -> RuntimeContext:
    """The caller's job, task and node ids."""
    return RuntimeContext()
