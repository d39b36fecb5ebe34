"""python -m shoal.bench --quick --json: it runs, and gives every figure.
No timing thresholds: this checks that each benchmark works, not its speed."""

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The figures' names are a stable interface: scripts compare runs by them.
FIGURES = [
    "sync_p50_ms",
    "sync_p99_ms",
    "async_tasks_per_s",
    "submit_get_10k_s",
    "chain_1000_s",
    "fan_in_1000_s",
    "put_100mib_bytes_gbps",
    "get_100mib_bytes_gbps",
    "put_100mib_numpy_gbps",
    "get_100mib_numpy_gbps",
    "idle_rss_mib",
    "init_ms",
    "shutdown_ms",
]


def test_quick_bench_reports_every_figure_as_json():
    p = subprocess.run(
        [sys.executable, "-m", "shoal.bench", "--quick", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["reasons"] == {}, out["reasons"]
    for name in FIGURES:
        value = out.get(name)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value > 0, (name, value)
