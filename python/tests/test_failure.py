"""Failures: remote exceptions keep their type, message and traceback;
retries; unpicklable values; functions and modules missing on a worker.
Each leaves the cluster healthy."""

import os
import signal
import sys
import threading

import pytest

import shoal as ray
from shoal.exceptions import ShoalError, TaskError, WorkerCrashedError


class CustomError(Exception):
    pass


def test_a_remote_exception_is_its_own_class_and_a_task_error(cluster):
    @ray.remote
    def fails_deep():
        def inner():
            raise KeyError("missing-key")

        inner()

    with pytest.raises(KeyError) as info:
        ray.get(fails_deep.remote())
    e = info.value
    assert isinstance(e, TaskError) and isinstance(e, ShoalError)
    assert e.kind == "TaskFailed" and e.attempt == 0 and e.node_id
    assert "fails_deep" in e.task_name and e.function.startswith("python:")
    assert "in inner" in e.traceback_str and "fails_deep" in e.traceback_str, e.traceback_str
    assert "missing-key" in str(e)
    assert isinstance(e.cause, KeyError)

    @ray.remote
    def custom():
        raise CustomError("mine")

    with pytest.raises(CustomError, match="mine"):
        ray.get(custom.remote())


def test_an_exception_is_not_retried_unless_retry_exceptions(cluster, tmp_path):
    marker = tmp_path / "attempts"

    @ray.remote(max_retries=2)
    def flaky(path, retry):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            raise ValueError("not yet")
        return "done"

    with pytest.raises(ValueError):
        ray.get(flaky.remote(str(marker), False))
    assert marker.read_text() == "x", "an exception is not retried by default"
    marker.unlink()
    assert ray.get(flaky.options(retry_exceptions=True).remote(str(marker), True)) == "done"
    assert marker.read_text() == "xxx"


def test_a_worker_killed_mid_task_is_retried_then_reported(cluster, tmp_path):
    marker = tmp_path / "pids"

    @ray.remote(max_retries=1)
    def die_once(path):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        if len(open(path).read().split()) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return ray.get_runtime_context().get_attempt_number()

    assert ray.get(die_once.remote(str(marker))) == 1
    pids = marker.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1], "the retry ran in a new worker"

    @ray.remote(max_retries=0)
    def always_dies():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError) as info:
        ray.get(always_dies.remote())
    assert "always_dies" in str(info.value)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def test_unpicklable_arguments_and_results_are_clear_errors(cluster):
    @ray.remote
    def echo(x):
        return x

    with pytest.raises(TypeError, match="argument 0 of .*echo could not be pickled"):
        echo.remote(Unpicklable())

    @ray.remote
    def bad_result():
        return Unpicklable()

    with pytest.raises(TaskError, match="could not be pickled"):
        ray.get(bad_result.remote())
    lock = threading.Lock()
    with pytest.raises(TypeError, match="could not be pickled"):
        ray.put(lock)
    assert ray.get(echo.remote(5)) == 5, "the cluster stays healthy"


def test_a_function_whose_module_is_missing_on_the_worker_names_the_task(cluster, tmp_path):
    # A module importable only by the driver (its directory is on the
    # driver's path, not the workers'), pickled by reference.
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "only_here.py").write_text("def helper():\n    return 1\n")
    sys.path.insert(0, str(pkg))
    try:
        import only_here  # noqa: F401

        @ray.remote
        def uses_helper():
            return only_here.helper()

        with pytest.raises(TaskError) as info:
            ray.get(uses_helper.options(name="uses_helper").remote())
        assert "only_here" in str(info.value), str(info.value)
        assert info.value.task_name == "uses_helper"
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop("only_here", None)

    @ray.remote
    def needs_a_module_the_worker_lacks():
        import a_module_no_worker_has  # noqa: F401

    with pytest.raises(ModuleNotFoundError, match="a_module_no_worker_has"):
        ray.get(needs_a_module_the_worker_lacks.remote())

    @ray.remote
    def ok():
        return "healthy"

    assert ray.get(ok.remote()) == "healthy"


def test_a_failure_at_the_root_of_a_long_chain_reaches_its_end_as_the_root_error(cluster):
    @ray.remote
    def fail():
        raise ValueError("root cause")

    @ray.remote
    def inc(x):
        return x + 1

    ref = fail.remote()
    for _ in range(2000):
        ref = inc.remote(ref)
    with pytest.raises(ValueError, match="root cause") as info:
        ray.get(ref)
    assert "fail" in info.value.task_name
