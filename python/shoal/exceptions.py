"""The errors shoal raises, under one base class, with Ray's names as aliases.

A task whose function raised is reported to the caller as a
:class:`TaskError` that is *also* an instance of the exception's own class,
so ``except ValueError`` catches a remote ``ValueError`` (as Ray's
``RayTaskError`` does). It carries the remote traceback, the task, its
function, the node it ran on and the attempt.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class ShoalError(Exception):
    """Base of every error shoal raises."""


class TaskError(ShoalError):
    """A task failed: its function raised, or it could not run.

    Attributes: ``kind`` (shoal's error kind), ``task_id``, ``task_name``,
    ``function``, ``node_id``, ``attempt``, ``traceback_str`` (the remote
    traceback) and ``cause`` (the original exception, when it could be
    sent back).
    """

    def __init__(
        self,
        message: str = "",
        *,
        kind: str = "TaskFailed",
        task_id: str = "",
        task_name: str = "",
        function: str = "",
        node_id: str = "",
        attempt: int = 0,
        traceback_str: str = "",
        stderr_tail: str = "",
        cause: Optional[BaseException] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.task_id = task_id
        self.task_name = task_name
        self.function = function
        self.node_id = node_id
        self.attempt = attempt
        self.traceback_str = traceback_str
        self.stderr_tail = stderr_tail
        self.cause = cause

    def _where(self) -> str:
        name = self.task_name or self.task_id or "?"
        parts = [f"task `{name}`"]
        if self.function:
            parts.append(f"function {self.function}")
        if self.node_id:
            parts.append(f"node {self.node_id}")
        parts.append(f"attempt {self.attempt}")
        return ", ".join(parts)

    def __str__(self) -> str:
        head = f"{self.kind} in {self._where()}"
        body = self.traceback_str.rstrip() or self.message
        text = f"{head}:\n{body}" if body else head
        if self.stderr_tail:
            text += f"\n--- stderr tail ---\n{self.stderr_tail}"
        return text

    def __reduce__(self) -> Any:
        return (_rebuild_task_error, (self.__dict__.copy(),))

    def as_instanceof_cause(self) -> "TaskError":
        """This error as an instance of both :class:`TaskError` and the
        class of the exception the function raised (itself when there is no
        cause, or the two classes cannot be combined)."""
        cause = self.cause
        if cause is None or isinstance(cause, TaskError):
            return self
        cls = type(cause)
        try:
            derived = _derived_class(cls)
            err = derived.__new__(derived)
        except TypeError:
            return self
        err.__dict__.update(self.__dict__)
        err.args = cause.args
        return err


_DERIVED: Dict[type, type] = {}


def _derived_class(cls: type) -> type:
    derived = _DERIVED.get(cls)
    if derived is None:
        derived = type(f"TaskError({cls.__name__})", (TaskError, cls), {"__module__": __name__})
        # Keep TaskError's rendering and pickling over the cause class's.
        derived.__str__ = TaskError.__str__  # type: ignore[method-assign]
        derived.__reduce__ = TaskError.__reduce__  # type: ignore[method-assign]
        derived.__init__ = TaskError.__init__  # type: ignore[method-assign]
        _DERIVED[cls] = derived
    return derived


def _rebuild_task_error(state: Dict[str, Any]) -> TaskError:
    err = TaskError(state.get("message", ""))
    err.__dict__.update(state)
    return err.as_instanceof_cause()


class GetTimeoutError(ShoalError, TimeoutError):
    """``get`` ran out of time before the object was ready."""


class TaskCancelledError(TaskError):
    """The task was cancelled (``shoal.cancel``) before it finished."""


class WorkerCrashedError(TaskError):
    """The worker running the task died (killed, crashed, out of memory)
    and the task's retries were used up."""


class NodeDiedError(TaskError):
    """The node running the task died and the task's retries were used up."""


class TaskUnschedulableError(TaskError):
    """No node of the cluster can ever fit the task's resources."""


class ObjectLostError(TaskError):
    """Every copy of the object is lost and it cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The raylet that owned the object died, and with it the object."""


class ObjectStoreFullError(TaskError):
    """The object store had no room for the object, even after spilling."""


# Ray's names, so that `import shoal as ray` code keeps its except clauses.
RayError = ShoalError
RayTaskError = TaskError
RaySystemError = TaskError
ObjectFreedError = ObjectLostError
ReferenceCountingAssertionError = ObjectLostError

_BY_KIND = {
    "Cancelled": TaskCancelledError,
    "WorkerDied": WorkerCrashedError,
    "NodeDied": NodeDiedError,
    "NodeUnreachable": NodeDiedError,
    "Infeasible": TaskUnschedulableError,
    "ObjectLost": ObjectLostError,
    "OwnerDied": OwnerDiedError,
    "ObjectStoreFull": ObjectStoreFullError,
}


def from_details(d: Dict[str, Any], cause: Optional[BaseException]) -> TaskError:
    """The exception for a failed object, as the runtime describes it."""
    cls = _BY_KIND.get(d.get("kind", ""), TaskError)
    err = cls(
        d.get("message", ""),
        kind=d.get("kind", "TaskFailed"),
        task_id=d.get("task_id", ""),
        task_name=d.get("task_name", ""),
        function=d.get("function", ""),
        node_id=d.get("node_id", ""),
        attempt=d.get("attempt", 0),
        traceback_str=d.get("traceback", ""),
        stderr_tail=d.get("stderr_tail", ""),
        cause=cause,
    )
    return err.as_instanceof_cause() if cls is TaskError else err


__all__ = [
    "ShoalError",
    "TaskError",
    "GetTimeoutError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "NodeDiedError",
    "TaskUnschedulableError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectStoreFullError",
    "RayError",
    "RayTaskError",
    "RaySystemError",
    "ObjectFreedError",
]
