"""cancel(): pending tasks never run, running ones are interrupted (or
killed with force), recursively through the tasks they submitted."""

import os
import time

import pytest

import shoal as ray
from shoal.exceptions import TaskCancelledError

from conftest import alive, wait_until


@ray.remote
def mark_and_sleep(path, seconds):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return "finished"


def test_a_pending_task_never_runs(cluster, tmp_path):
    blockers = [mark_and_sleep.remote(str(tmp_path / f"b{i}"), 2) for i in range(4)]
    pending = mark_and_sleep.remote(str(tmp_path / "never"), 0)
    ray.cancel(pending)
    with pytest.raises(TaskCancelledError):
        ray.get(pending)
    ray.get(blockers)
    time.sleep(0.3)
    assert not (tmp_path / "never").exists(), "a cancelled pending task must never start"


def test_a_running_task_is_interrupted_and_its_worker_stays(cluster, tmp_path):
    path = tmp_path / "running"

    @ray.remote
    def interruptible(p):
        with open(p, "w") as f:
            f.write(str(os.getpid()))
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            with open(p + ".interrupted", "w") as f:
                f.write("yes")
            raise
        return "finished"

    r = interruptible.remote(str(path))
    wait_until("the task starts", path.exists)
    pid = int(path.read_text())
    started = time.monotonic()
    ray.cancel(r)
    with pytest.raises(TaskCancelledError):
        ray.get(r)
    wait_until("the task sees the interrupt", (tmp_path / "running.interrupted").exists, timeout=10)
    assert time.monotonic() - started < 10, "the sleep was interrupted, not waited out"
    assert alive(pid), "a cancel without force keeps the worker"


def test_force_kills_the_worker(cluster, tmp_path):
    path = tmp_path / "forced"
    r = mark_and_sleep.remote(str(path), 60)
    wait_until("the task starts", path.exists)
    pid = int(path.read_text().split()[0])
    ray.cancel(r, force=True)
    with pytest.raises(TaskCancelledError):
        ray.get(r)
    wait_until("the worker is killed", lambda: not alive(pid))


def test_recursive_cancel_reaches_the_tasks_a_task_submitted(cluster, tmp_path):
    child_marker = tmp_path / "child"

    @ray.remote
    def parent(p):
        child = mark_and_sleep.remote(p, 60)
        return ray.get(child)

    r = parent.remote(str(child_marker))
    wait_until("the child starts", child_marker.exists)
    child_pid = int(child_marker.read_text().split()[0])
    ray.cancel(r, force=True, recursive=True)
    with pytest.raises(TaskCancelledError):
        ray.get(r)
    wait_until("the child's worker is killed too", lambda: not alive(child_pid))

    @ray.remote
    def ok():
        return 1

    assert ray.get(ok.remote()) == 1
