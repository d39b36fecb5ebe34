"""The task API on a local cluster: Ray's names and meanings."""

import pickle
import time

import numpy as np
import pytest

import shoal as ray


def test_tasks_run_and_return_in_order(cluster):
    @ray.remote
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]
    assert ray.get(square.remote(7)) == 49


def test_every_argument_kind_in_one_call(cluster):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    @ray.remote
    def describe(value, array, ref_value, big, point, put_value, *, keyword):
        return (value, float(array.sum()), ref_value, big.shape, big.dtype.str, point.x + point.y, put_value, keyword)

    @ray.remote
    def make():
        return "from a task"

    big = np.ones((600, 600))  # 2.9 MB: put automatically, passed by reference
    out = ray.get(
        describe.remote(3, np.arange(10), make.remote(), big, Point(1, 2), ray.put({"a": [1, 2]}), keyword="kw")
    )
    assert out == (3, 45.0, "from a task", (600, 600), big.dtype.str, 3, {"a": [1, 2]}, "kw")


def test_seed_example_process_data_with_resources(cluster):
    @ray.remote(num_cpus=2, memory=1000)
    def process_data(data):
        return np.asarray(data) * 2

    out = ray.get(process_data.remote([1, 2, 3]))
    assert out.tolist() == [2, 4, 6]


def test_a_fifty_mib_numpy_argument_arrives_intact(cluster):
    a = np.random.default_rng(1).random(50 * 1024 * 1024 // 8)

    @ray.remote
    def checksum(x):
        return float(x.sum()), x.nbytes

    assert ray.get(checksum.remote(a)) == (float(a.sum()), a.nbytes)
    back = ray.get(ray.put(a))
    assert np.array_equal(back, a)


def test_multiple_returns(cluster):
    @ray.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    a, b, c = three.remote()
    assert ray.get([a, b, c]) == [1, "two", [3]]

    @ray.remote(num_returns=2)
    def wrong():
        return 1, 2, 3

    x, _ = wrong.remote()
    with pytest.raises(ray.exceptions.TaskError, match="num_returns=2"):
        ray.get(x)


def test_calling_a_remote_function_directly_is_a_clear_error(cluster):
    @ray.remote
    def f():
        return 1

    with pytest.raises(TypeError, match=r"f\.remote\(\)"):
        f()


def test_options_are_checked_and_apply(cluster):
    @ray.remote
    def f():
        return ray.get_runtime_context().get_task_id()

    with pytest.raises(ValueError, match="unknown option"):
        f.options(num_cpu=1)
    with pytest.raises(ValueError, match="num_cpus"):
        f.options(num_cpus=-1)
    with pytest.raises(ValueError, match="CPU"):
        f.options(resources={"CPU": 1})
    with pytest.raises(ValueError, match="num_returns"):
        ray.remote(num_returns=0)(lambda: 1)
    assert ray.get(f.options(num_cpus=0.5, name="named").remote()) is not None


def test_an_impossible_task_fails_instead_of_hanging(cluster):
    @ray.remote(num_cpus=64)
    def huge():
        return 1

    with pytest.raises(ray.exceptions.TaskUnschedulableError, match="cpu"):
        ray.get(huge.remote(), timeout=30)


def test_get_timeout_and_wait_order(cluster):
    @ray.remote
    def sleepy(seconds, tag):
        time.sleep(seconds)
        return tag

    slow = sleepy.remote(3, "slow")
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(slow, timeout=0.2)
    with pytest.raises(TimeoutError):
        ray.get(slow, timeout=0.1)
    fast = [sleepy.remote(0, i) for i in range(3)]
    refs = [slow] + fast
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=10)
    assert ready == fast, "ready refs come back in input order"
    assert not_ready == [slow]
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=0.1)
    assert len(ready) == 3 and not_ready == [slow]
    with pytest.raises(ValueError):
        ray.wait([slow, slow])
    with pytest.raises(TypeError):
        ray.wait(slow)
    ray.cancel(slow, force=True)


def test_nested_tasks_three_deep(cluster):
    @ray.remote
    def depth(n):
        if n == 0:
            return [ray.get_runtime_context().get_task_id()]
        return ray.get(depth.remote(n - 1)) + [n]

    out = ray.get(depth.remote(3))
    assert out[1:] == [1, 2, 3] and out[0]


def test_object_refs_are_hashable_printable_and_travel_inside_values(cluster):
    r = ray.put(41)
    assert hash(r) == hash(r) and r == r and {r: 1}[r] == 1
    assert r.hex() in repr(r)

    @ray.remote
    def first_plus_one(refs):
        return ray.get(refs[0]) + 1

    assert ray.get(first_plus_one.remote([r])) == 42
    # A ref pickled by the user's own code comes back as a ref to the same object.
    again = pickle.loads(pickle.dumps({"r": r}))["r"]
    assert again == r and ray.get(again) == 41


def test_put_get_values_and_errors(cluster):
    for v in [None, 1, "s", b"bytes", [1, {"a": (1, 2)}], {1, 2}, np.arange(5)]:
        got = ray.get(ray.put(v))
        if isinstance(v, np.ndarray):
            assert np.array_equal(got, v)
        else:
            assert got == v
    with pytest.raises(TypeError):
        ray.put(ray.put(1))
    with pytest.raises(TypeError, match="ObjectRef"):
        ray.get(1)
    assert ray.get([]) == []


def test_runtime_context_and_cluster_state(cluster):
    ctx = ray.get_runtime_context()
    assert ctx.get_task_id() is None
    node = ctx.get_node_id()

    @ray.remote
    def where():
        c = ray.get_runtime_context()
        return c.get_node_id(), c.get_job_id(), c.get_task_id()

    n, job, task = ray.get(where.remote())
    assert n == node and job == ctx.get_job_id() and task
    res = ray.cluster_resources()
    assert res["CPU"] == 4 and res["memory"] > 0
    assert ray.available_resources()["CPU"] <= 4
    nodes = ray.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"] and nodes[0]["NodeID"] == node
    assert ray.is_initialized()


def test_node_affinity_and_spread(cluster):
    node = ray.get_runtime_context().get_node_id()

    @ray.remote
    def here():
        return ray.get_runtime_context().get_node_id()

    strategy = ray.NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    assert ray.get(here.options(scheduling_strategy=strategy).remote()) == node
    assert ray.get(here.options(scheduling_strategy="SPREAD").remote()) == node
    with pytest.raises(ValueError):
        here.options(scheduling_strategy="NEAREST")
