"""ObjectRefs inside values stay refs and keep their objects alive while
anyone holds them (a list of refs passed to a task, stored with put, or
returned by a task); once nobody does, every object is freed."""

import gc

import numpy as np

import shoal as ray
from shoal import _api

from conftest import wait_until

BIG = 200_000  # float64s: 1.6 MB, kept in the store rather than inline


def stats():
    return _api._client().raylet_stats()


def store_empty():
    gc.collect()
    s = stats()
    return s["object_count"] == 0 and s["owned_objects"] == 0, s


def test_refs_in_a_task_argument_live_until_the_task_is_done(cluster):
    @ray.remote
    def total(refs):
        return float(sum(ray.get(r).sum() for r in refs))

    # The list and its refs are dropped right after the call: the task holds them.
    r = total.remote([ray.put(np.full(BIG, i, dtype=np.float64)) for i in range(4)])
    assert ray.get(r) == float(sum(i * BIG for i in range(4)))
    del r
    wait_until("every object is freed", lambda: store_empty()[0])


def test_refs_in_a_stored_list_live_as_long_as_the_list(cluster):
    inner = [ray.put(np.full(BIG, i, dtype=np.float64)) for i in range(3)]
    outer = ray.put({"parts": inner})
    del inner
    gc.collect()
    parts = ray.get(outer)["parts"]
    assert [float(ray.get(p)[0]) for p in parts] == [0.0, 1.0, 2.0]
    del parts
    gc.collect()
    # Still held by the stored dict.
    again = ray.get(outer)["parts"]
    assert float(ray.get(again[2])[-1]) == 2.0
    del again, outer
    wait_until("the list and its parts are freed", lambda: store_empty()[0])


def test_refs_returned_by_a_task_outlive_the_worker_that_made_them(cluster):
    @ray.remote
    def part(i):
        return np.full(BIG, i, dtype=np.float64)

    @ray.remote
    def make_parts(n):
        # Refs of nested tasks and of puts, owned by this worker's raylet;
        # the worker drops its own handles as soon as it returns.
        return [part.remote(i) for i in range(n)] + [ray.put("put inside a task")]

    refs = ray.get(make_parts.remote(3))
    gc.collect()
    values = ray.get(refs)
    assert [float(v[0]) for v in values[:3]] == [0.0, 1.0, 2.0] and values[3] == "put inside a task"
    del refs, values
    wait_until("the returned objects are freed once the driver drops them", lambda: store_empty()[0])


def test_a_ref_inside_an_argument_reaches_a_nested_task(cluster):
    @ray.remote
    def leaf(refs):
        return float(ray.get(refs[0]).sum())

    @ray.remote
    def middle(refs):
        return ray.get(leaf.remote(refs))

    assert ray.get(middle.remote([ray.put(np.ones(BIG))])) == float(BIG)
    wait_until("every object is freed", lambda: store_empty()[0])
