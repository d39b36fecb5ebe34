"""A Python worker: the process a raylet starts to run Python tasks.

``python -m shoal._worker`` runs the Rust worker loop of the extension over
the raylet's socket (the same protocol as ``shoal worker``); the interpreter
is entered only to load a function (fetched once from the cluster's
key-value store and cached), unpickle its arguments, call it and pickle its
results. ``--native`` runs the builtin worker instead, for clusters started
from Python, which have no ``shoal`` binary.

A task's output is prefixed with its name and the worker's pid, as Ray's
is, on the way to the raylet's stdout and stderr (a local driver's
terminal).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Tuple

import cloudpickle

from . import _api, _native, _serialization


class _JobLog:
    """What tasks print, on its way to their job's log (REST ``logs``):
    buffered, and sent when a task ends or every ``INTERVAL`` seconds."""

    INTERVAL = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Dict[int, List[str]] = {}
        threading.Thread(target=self._run, name="shoal-job-log", daemon=True).start()

    def add(self, job_id: int, text: str) -> None:
        with self._lock:
            self._pending.setdefault(job_id, []).append(text)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for job_id, parts in pending.items():
            try:
                _api._client().append_job_log(job_id, "".join(parts).encode("utf-8", "replace"))
            except Exception:  # the log is best effort; the terminal has the text
                pass

    def _run(self) -> None:
        while True:
            time.sleep(self.INTERVAL)
            self.flush()


_job_log: "_JobLog | None" = None


class _Prefixed:
    """A text stream that starts every line with ``(task pid=N) `` and
    copies it to the running task's job log."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._at_line_start = True
        self.prefix = ""

    def write(self, text: str) -> int:
        if not self.prefix:
            return self._stream.write(text)
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self.prefix)
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        line = "".join(out)
        self._stream.write(line)
        job = _api._state.job_id
        if _job_log is not None and job and _api._state.task_id is not None:
            _job_log.add(job, line)
        if self._at_line_start:
            self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_functions: Dict[str, Callable] = {}


def _load(function_id: str, name: str) -> Callable:
    fn = _functions.get(function_id)
    if fn is None:
        data = _api._client().kv_get("fn:" + function_id)
        if data is None:
            raise LookupError(f"function {name} ({function_id}) was never exported to this cluster")
        fn = cloudpickle.loads(data)
        _functions[function_id] = fn
    return fn


def _decode_args(args: List[Tuple[int, bytes]]) -> Tuple[list, dict]:
    names = _serialization.deserialize(args[0][1], _api._adopt) if args[0][1] else ()
    n_pos = len(args) - 1 - len(names)
    values = []
    for i, (fmt, data) in enumerate(args[1:]):
        try:
            values.append(_serialization.decode(fmt, data, _api._adopt))
        except Exception as e:
            raise _ArgumentError(i, e) from e
    return values[:n_pos], dict(zip(names, values[n_pos:]))


class _ArgumentError(Exception):
    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"argument {index} could not be unpickled on the worker: {type(cause).__name__}: {cause}")
        self.cause = cause


def _returns(result: Any, n: int, name: str) -> List[Tuple[int, bytes, list]]:
    if n == 1:
        values = [result]
    else:
        try:
            values = list(result)
        except TypeError:
            raise ValueError(f"{name} declares num_returns={n}, so it must return {n} values; it returned {type(result).__name__}") from None
        if len(values) != n:
            raise ValueError(f"{name} declares num_returns={n}, so it must return {n} values; it returned {len(values)}")
    out = []
    for i, v in enumerate(values):
        try:
            data, refs = _serialization.serialize(v)
            out.append((_serialization.FORMAT_PICKLE5, data, refs))
        except Exception as e:
            raise TypeError(f"result {i} of {name} could not be pickled: {type(e).__name__}: {e}") from e
    return out


def _cause_bytes(e: BaseException) -> bytes:
    try:
        return cloudpickle.dumps(e, protocol=5)
    except Exception:
        return b""


def _remote_traceback(e: BaseException) -> str:
    tb = e.__traceback__
    # Drop this module's own frames: the user's function is where it starts.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def execute(
    function_id: str,
    name: str,
    args: List[Tuple[int, bytes]],
    num_returns: int,
    task_id: str,
    job_id: int,
    attempt: int,
    gpu_ids: List[int],
) -> tuple:
    st = _api._state
    st.task_id, st.job_id, st.attempt = task_id, job_id, attempt
    prefix = f"({name.rsplit('.', 1)[-1]} pid={os.getpid()}) "
    for s in (sys.stdout, sys.stderr):
        if isinstance(s, _Prefixed):
            s.prefix = prefix
    if gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    else:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        try:
            fn = _load(function_id, name)
        except BaseException as e:
            msg = f"cannot load {name} on this worker: {type(e).__name__}: {e}"
            return ("error", "TaskFailed", msg, _remote_traceback(e), _cause_bytes(e))
        try:
            pos, kw = _decode_args(args)
        except _ArgumentError as e:
            return ("error", "TaskFailed", str(e), "", _cause_bytes(e.cause))
        try:
            result = fn(*pos, **kw)
        except KeyboardInterrupt:
            return ("error", "Cancelled", f"{name} was interrupted: the task was cancelled", "", b"")
        except BaseException as e:
            msg = f"{type(e).__name__}: {e}"
            return ("error", "TaskFailed", msg, _remote_traceback(e), _cause_bytes(e))
        try:
            returns = _returns(result, num_returns, name)
        except BaseException as e:
            return ("error", "TaskFailed", str(e), "", b"")
        lent = [r for _, _, refs in returns for r in refs]
        if lent:
            # Held by this node's raylet until the task's owner holds them,
            # so that they outlive this worker's own references.
            _api._client().lend(task_id, attempt, lent)
        return ("ok", returns)
    finally:
        for s in (sys.stdout, sys.stderr):
            s.flush()
        st.task_id = None
        if _job_log is not None:
            _job_log.flush()


def main() -> None:
    if "--native" in sys.argv[1:]:
        _native.run_native_worker()
        return
    global _job_log
    _api._state.mode = "worker"
    _job_log = _JobLog()
    sys.stdout = _Prefixed(sys.stdout)
    sys.stderr = _Prefixed(sys.stderr)
    _native.run_worker(execute)


if __name__ == "__main__":
    main()
