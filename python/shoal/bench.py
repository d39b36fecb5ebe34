"""Microbenchmarks of the task API, in the shape of Ray's own (``ray microbenchmark``).

    python -m shoal.bench                 # a table
    python -m shoal.bench --json          # one JSON object: every figure by name
    python -m shoal.bench --quick         # small counts and sizes: a few seconds, for tests
    python -m shoal.bench --num-cpus 4    # the local cluster's CPUs (default 2)

Every figure comes from one local cluster started inside this process. The
figures, by name (sizes are those of a full run; ``--quick`` shrinks every
count and size, so its figures only show that each benchmark runs):

init_ms
    ``shoal.init(num_cpus=N)``: starting the local cluster and connecting to it.
idle_rss_mib
    Resident memory (VmRSS) of the whole process tree, the driver and its
    worker processes, right after two tasks ran at once (so two Python
    workers exist) and then rested a moment. Shared pages count once per
    process that maps them, as ``ps`` counts them.
sync_p50_ms, sync_p99_ms
    Round trip of one no-op task, submitted and gotten one at a time: the
    median and the 99th percentile over 2,000 calls.
async_tasks_per_s
    Throughput of no-op tasks submitted 1,000 at a time, then all gotten;
    five such rounds.
submit_get_10k_s
    Submitting 10,000 no-op tasks, then getting them all.
chain_1000_s
    A chain of 1,000 dependent tasks, each taking the previous one's ref.
fan_in_1000_s
    1,000 tasks each returning 1 KiB of bytes, then one task taking all
    1,000 refs as arguments; until its result is gotten.
put_100mib_bytes_gbps, get_100mib_bytes_gbps
    ``put()`` of 100 MiB of ``bytes``, and ``get()`` of it back: GB/s
    (10^9 bytes a second, not gigabits), the best of three.
put_100mib_numpy_gbps, get_100mib_numpy_gbps
    The same with a 100 MiB numpy array (pickled out of band).
shutdown_ms
    ``shoal.shutdown()``: stopping the cluster and its workers, at the end.

The JSON object holds every figure under its name, and ``"reasons"``,
``"quick"`` and ``"num_cpus"``. A figure that could not be measured is null
(``—`` in the table) and ``"reasons"`` says why. The exit status is 1 if a
benchmark failed with an error, and 0 otherwise (also when a figure cannot
be measured here, as ``idle_rss_mib`` without /proc).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import shoal

#: How long any one get() may wait before the benchmark counts as failed.
GET_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Sizes:
    """The counts and sizes of a run."""

    sync_calls: int = 2_000
    async_batch: int = 1_000
    async_rounds: int = 5
    submit_get_tasks: int = 10_000
    chain_length: int = 1_000
    fan_in: int = 1_000
    put_get_mib: int = 100
    put_get_repeats: int = 3


FULL = Sizes()
QUICK = Sizes(
    sync_calls=200,
    async_batch=200,
    async_rounds=2,
    submit_get_tasks=500,
    chain_length=50,
    fan_in=50,
    put_get_mib=4,
    put_get_repeats=1,
)

#: Every figure: its name, unit and label (formatted with the run's sizes).
FIGURES: List[Tuple[str, str, str]] = [
    ("init_ms", "ms", "init()"),
    ("idle_rss_mib", "MiB", "idle RSS: driver and its workers"),
    ("sync_p50_ms", "ms", "sync no-op round trip, p50 of {sync_calls:,}"),
    ("sync_p99_ms", "ms", "sync no-op round trip, p99 of {sync_calls:,}"),
    ("async_tasks_per_s", "tasks/s", "async no-op throughput, {async_rounds} x {async_batch:,}"),
    ("submit_get_10k_s", "s", "{submit_get_tasks:,} no-op tasks, submit + get"),
    ("chain_1000_s", "s", "chain of {chain_length:,} dependent tasks"),
    ("fan_in_1000_s", "s", "fan-in of {fan_in:,} x 1 KiB"),
    ("put_100mib_bytes_gbps", "GB/s", "put {put_get_mib} MiB of bytes"),
    ("get_100mib_bytes_gbps", "GB/s", "get {put_get_mib} MiB of bytes"),
    ("put_100mib_numpy_gbps", "GB/s", "put {put_get_mib} MiB numpy array"),
    ("get_100mib_numpy_gbps", "GB/s", "get {put_get_mib} MiB numpy array"),
    ("shutdown_ms", "ms", "shutdown()"),
]
NAMES = [name for name, _, _ in FIGURES]


class Unmeasurable(Exception):
    """A figure this machine or configuration cannot give (not a failure)."""


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


@shoal.remote
def noop() -> None:
    return None


@shoal.remote
def increment(x: int) -> int:
    return x + 1


@shoal.remote
def kib() -> bytes:
    return b"x" * 1024


@shoal.remote
def total_length(*parts: bytes) -> int:
    return sum(len(p) for p in parts)


@shoal.remote
def rest_and_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def get(refs):
    return shoal.get(refs, timeout=GET_TIMEOUT_S)


def elapsed(since: float) -> float:
    # Never 0, so that rates stay finite (JSON has no infinity).
    return max(time.perf_counter() - since, 1e-9)


# ---------------------------------------------------------------------------
# Benchmarks: each returns its figures by name
# ---------------------------------------------------------------------------


def _process_tree(root: int) -> List[int]:
    """``root`` and every descendant of it, from /proc."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces and parentheses: fields
                # are counted after its closing one. The 2nd is the parent.
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # gone meanwhile, or a kernel thread


def idle_rss(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    if not os.path.exists("/proc/self/status"):
        raise Unmeasurable("no /proc on this system")
    if num_cpus < 2:
        raise Unmeasurable("needs --num-cpus 2 or more, to run two workers at once")
    # Two tasks that overlap need two workers; their pids show they got them.
    workers = set(get([rest_and_pid.remote(0.3) for _ in range(2)]))
    if len(workers) < 2:
        raise Unmeasurable("the two concurrent tasks ran in one worker")
    time.sleep(0.5)  # let the workers go idle again
    tree = _process_tree(os.getpid())
    missing = workers - set(tree)
    if missing:
        raise Unmeasurable(f"worker(s) {sorted(missing)} are not in the driver's process tree")
    return {"idle_rss_mib": sum(_rss_bytes(p) for p in tree) / 2**20}


def _percentile(sorted_values: List[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured, not interpolated."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def sync_round_trip(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    get([noop.remote() for _ in range(10)])  # export the function, start workers
    times = []
    for _ in range(sizes.sync_calls):
        t = time.perf_counter()
        get(noop.remote())
        times.append(elapsed(t))
    times.sort()
    return {"sync_p50_ms": _percentile(times, 0.50) * 1e3, "sync_p99_ms": _percentile(times, 0.99) * 1e3}


def async_throughput(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    t = time.perf_counter()
    for _ in range(sizes.async_rounds):
        get([noop.remote() for _ in range(sizes.async_batch)])
    return {"async_tasks_per_s": sizes.async_rounds * sizes.async_batch / elapsed(t)}


def submit_get(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    t = time.perf_counter()
    get([noop.remote() for _ in range(sizes.submit_get_tasks)])
    return {"submit_get_10k_s": elapsed(t)}


def chain(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    t = time.perf_counter()
    ref = increment.remote(0)
    for _ in range(sizes.chain_length - 1):
        ref = increment.remote(ref)
    end = get(ref)
    seconds = elapsed(t)
    if end != sizes.chain_length:
        raise RuntimeError(f"the chain ended at {end}, not {sizes.chain_length}")
    return {"chain_1000_s": seconds}


def fan_in(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    t = time.perf_counter()
    length = get(total_length.remote(*[kib.remote() for _ in range(sizes.fan_in)]))
    seconds = elapsed(t)
    if length != sizes.fan_in * 1024:
        raise RuntimeError(f"the fan-in task saw {length} bytes, not {sizes.fan_in * 1024}")
    return {"fan_in_1000_s": seconds}


def _put_get_gbps(value, nbytes: int, repeats: int, same: Callable) -> Tuple[float, float]:
    """The best put and get throughput (GB/s) of ``value`` over ``repeats``."""
    best_put = best_get = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        ref = shoal.put(value)
        put_s = elapsed(t)
        t = time.perf_counter()
        back = get(ref)
        get_s = elapsed(t)
        if not same(back, value):
            raise RuntimeError("get() returned something else than was put")
        best_put, best_get = min(best_put, put_s), min(best_get, get_s)
        del ref, back  # free the object before the next round
    return nbytes / best_put / 1e9, nbytes / best_get / 1e9


def put_get_bytes(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    n = sizes.put_get_mib << 20
    value = os.urandom(n)  # random, so no page is the shared zero page
    put, got = _put_get_gbps(value, n, sizes.put_get_repeats, lambda a, b: a == b)
    return {"put_100mib_bytes_gbps": put, "get_100mib_bytes_gbps": got}


def put_get_numpy(sizes: Sizes, num_cpus: int) -> Dict[str, float]:
    try:
        import numpy as np
    except ImportError:
        raise Unmeasurable("numpy is not installed") from None
    n = sizes.put_get_mib << 20
    value = np.random.default_rng(0).random(n // 8)
    put, got = _put_get_gbps(value, n, sizes.put_get_repeats, np.array_equal)
    return {"put_100mib_numpy_gbps": put, "get_100mib_numpy_gbps": got}


# Idle RSS comes first, before the other benchmarks start more workers and
# leave the driver's heap grown.
BENCHMARKS: List[Tuple[Tuple[str, ...], Callable[[Sizes, int], Dict[str, float]]]] = [
    (("idle_rss_mib",), idle_rss),
    (("sync_p50_ms", "sync_p99_ms"), sync_round_trip),
    (("async_tasks_per_s",), async_throughput),
    (("submit_get_10k_s",), submit_get),
    (("chain_1000_s",), chain),
    (("fan_in_1000_s",), fan_in),
    (("put_100mib_bytes_gbps", "get_100mib_bytes_gbps"), put_get_bytes),
    (("put_100mib_numpy_gbps", "get_100mib_numpy_gbps"), put_get_numpy),
]


# ---------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------


@dataclass
class Report:
    figures: Dict[str, Optional[float]]
    reasons: Dict[str, str]
    failed: bool = False

    def fail(self, names, reason: str, error: bool) -> None:
        for name in names:
            self.reasons[name] = reason
        self.failed = self.failed or error


def run(sizes: Sizes, num_cpus: int) -> Report:
    report = Report({name: None for name in NAMES}, {})
    t = time.perf_counter()
    try:
        shoal.init(num_cpus=num_cpus)
    except Exception as e:
        report.fail(NAMES, f"init() failed: {type(e).__name__}: {e}", error=True)
        return report
    report.figures["init_ms"] = elapsed(t) * 1e3
    try:
        for names, bench in BENCHMARKS:
            try:
                report.figures.update(bench(sizes, num_cpus))
            except Unmeasurable as e:
                report.fail(names, str(e), error=False)
            except Exception as e:
                report.fail(names, f"{type(e).__name__}: {e}", error=True)
    finally:
        t = time.perf_counter()
        try:
            shoal.shutdown()
            report.figures["shutdown_ms"] = elapsed(t) * 1e3
        except Exception as e:
            report.fail(["shutdown_ms"], f"shutdown() failed: {type(e).__name__}: {e}", error=True)
    return report


def _number(value: float) -> str:
    # Three significant digits, and thousands separated: 0.412, 41.2, 12,300.
    digits = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:,.{digits}f}"


def _short(reason: str, limit: int = 160) -> str:
    # Errors from a chain of tasks can run to pages; the JSON has them whole.
    line = reason.strip().splitlines()[0] if reason.strip() else reason
    return line if len(line) <= limit else line[: limit - 1] + "…"


def table(report: Report, sizes: Sizes, num_cpus: int, quick: bool) -> str:
    title = f"shoal bench: a local cluster of {num_cpus} CPUs" + (" (--quick: small sizes)" if quick else "")
    labels = [label.format(**asdict(sizes)) for _, _, label in FIGURES]
    width = max(len(label) for label in labels)
    lines = [title]
    for (name, unit, _), label in zip(FIGURES, labels):
        value = report.figures[name]
        shown = f"{_number(value):>10} {unit}" if value is not None else f"{'—':>10}  ({_short(report.reasons[name])})"
        lines.append(f"  {label:<{width}}  {shown}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts and sizes: a few seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--num-cpus", type=int, default=2, metavar="N", help="CPUs of the local cluster (default 2)")
    args = parser.parse_args(argv)
    if args.num_cpus < 1:
        parser.error("--num-cpus must be at least 1")
    sizes = QUICK if args.quick else FULL
    report = run(sizes, args.num_cpus)
    if args.json:
        out = dict(report.figures, reasons=report.reasons, quick=args.quick, num_cpus=args.num_cpus)
        print(json.dumps(out))
    else:
        print(table(report, sizes, args.num_cpus, args.quick))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
