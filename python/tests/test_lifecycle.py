"""init() and shutdown(): a local cluster inside the driver, connecting to a
running one, and no process left behind."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shoal as ray

from conftest import alive, shoal_binary, wait_until

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import shoal as ray
    t = time.monotonic()
    ray.init(num_cpus=2)
    init_s = time.monotonic() - t

    @ray.remote
    def pid():
        time.sleep(0.2)
        return os.getpid()

    pids = sorted(set(ray.get([pid.remote() for _ in range(4)])))
    print({"pids": pids, "init_s": init_s}, flush=True)
    if sys.argv[1] == "shutdown":
        t = time.monotonic()
        ray.shutdown()
        print({"shutdown_s": time.monotonic() - t}, flush=True)
    elif sys.argv[1] == "hang":
        time.sleep(600)
    """
)


def run_driver(mode, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)


def children_left(pids):
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("mode", ["shutdown", "exit"])
def test_a_driver_leaves_no_process_behind(mode, tmp_path):
    p = run_driver(mode, tmp_path)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    lines = [eval(line) for line in out.splitlines() if line.startswith("{")]
    pids = lines[0]["pids"]
    assert pids and os.getpid() not in pids
    assert lines[0]["init_s"] < 5
    wait_until("every worker of the driver is gone", lambda: not children_left(pids), timeout=10)
    left = [d for d in os.listdir("/tmp") if d.startswith("shoal-py-")]
    assert not any(str(p.pid) in d for d in left)


def test_a_killed_driver_takes_its_workers_with_it(tmp_path):
    p = run_driver("hang", tmp_path)
    line = p.stdout.readline()
    pids = eval(line)["pids"]
    assert all(alive(x) for x in pids)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    wait_until("the workers die with their driver", lambda: not children_left(pids), timeout=10)


def test_init_twice_is_an_error_unless_asked(tmp_path):
    ray.init(num_cpus=1)
    try:
        assert ray.is_initialized()
        with pytest.raises(RuntimeError, match="already"):
            ray.init()
        ray.init(ignore_reinit_error=True)
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    with pytest.raises(RuntimeError, match="not initialized"):
        ray.put(1)


def start_up(tmp_path):
    """`shoal up` with two 2-CPU raylets whose Python workers run this
    interpreter; returns it once its banner is out, with the environment
    that finds it (its record lives in a directory of this test)."""
    env = dict(os.environ, SHOAL_HOME=str(tmp_path / "home"), SHOAL_PYTHON=sys.executable)
    env.pop("SHOAL_ADDRESS", None)
    up = subprocess.Popen(
        [shoal_binary(), "up", "--nodes", "2", "--cpus-per-node", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    banner = []
    for line in up.stdout:
        banner.append(line)
        if "Ctrl-C" in line:
            break
    # Keep draining so that `shoal up` never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in up.stdout], daemon=True).start()
    return up, env, "".join(banner)


def test_init_with_an_address_joins_a_running_cluster_and_entrypoint_drivers_run_python_tasks(tmp_path):
    up, env, banner = start_up(tmp_path)
    try:
        assert up.poll() is None, banner
        # The recorded cluster is found with address="auto".
        code = textwrap.dedent(
            """
            import os, shoal as ray
            ray.init(address="auto")
            @ray.remote
            def where(x):
                return ray.get_runtime_context().get_node_id(), x * 2
            out = ray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(6)])
            print("NODES", len({n for n, _ in out}), "VALUES", [v for _, v in out], flush=True)
            print("CLUSTER", ray.cluster_resources()["CPU"], flush=True)
            ray.shutdown()
            """
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "NODES 2" in r.stdout and "VALUES [0, 2, 4, 6, 8, 10]" in r.stdout, r.stdout
        assert "CLUSTER 4.0" in r.stdout, r.stdout

        # A REST entrypoint job whose driver is a Python script using shoal.
        script = tmp_path / "job.py"
        script.write_text(
            textwrap.dedent(
                """
                import shoal as ray
                ray.init()
                @ray.remote
                def double(x):
                    print("TASK-SAYS", x)
                    return 2 * x
                print("RESULT", sum(ray.get([double.remote(i) for i in range(10)])), flush=True)
                """
            )
        )
        spec = tmp_path / "job.json"
        spec.write_text(json.dumps({"name": "py-entrypoint", "entrypoint": f"{sys.executable} {script}"}))
        r = subprocess.run(
            [shoal_binary(), "submit", "--wait", "--output", "json", str(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        job = json.loads(r.stdout)
        assert job["state"] == "SUCCEEDED", job
        job_id = str(job["id"])
        logs = subprocess.run([shoal_binary(), "logs", job_id], capture_output=True, text=True, env=env, timeout=60)
        assert "RESULT 90" in logs.stdout, logs.stdout + logs.stderr
        # What the tasks printed reaches the job's log, prefixed with the task.
        assert "(double pid=" in logs.stdout and "TASK-SAYS 9" in logs.stdout, logs.stdout
        # All of that found the generated token by itself; a wrong one is refused.
        r = subprocess.run([shoal_binary(), "jobs", "--token", "wrong"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode != 0 and "token" in r.stderr, r.stdout + r.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)


def test_ctrl_c_interrupts_a_driver_blocked_in_get(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            import shoal as ray
            ray.init(num_cpus=1)
            @ray.remote
            def forever():
                time.sleep(600)
            r = forever.remote()
            print("WAITING", flush=True)
            try:
                ray.get(r)
            except KeyboardInterrupt:
                print("INTERRUPTED", flush=True)
            """
        )
    )
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "WAITING"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert "INTERRUPTED" in out
    assert p.returncode == 0
