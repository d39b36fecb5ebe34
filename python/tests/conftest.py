"""Fixtures: a local cluster embedded in the pytest process, started once
per test module and stopped after it."""

import os
import time

import pytest

import shoal


@pytest.fixture(scope="module")
def cluster():
    shoal.init(num_cpus=4, object_store_memory=1 << 30)
    yield shoal
    shoal.shutdown()


def wait_until(what, predicate, timeout=20.0):
    """Polls ``predicate`` until it is true; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting until {what}")
        time.sleep(0.02)


def alive(pid):
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shoal_binary():
    path = os.environ.get("SHOAL_BIN")
    if not path:
        pytest.skip("SHOAL_BIN is not set (tests/python.rs sets it to the shoal binary cargo built)")
    return path
