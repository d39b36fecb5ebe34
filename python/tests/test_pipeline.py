"""examples/pipeline.py: the ML pipeline gives the same accuracy as shoal
tasks as in-process, and learns something."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.py"


def load_example():
    spec = importlib.util.spec_from_file_location("pipeline_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_remote_and_in_process_pipelines_agree(cluster):
    pipeline = load_example().pipeline
    remote, local = pipeline(remote=True), pipeline(remote=False)
    assert remote == local
    # The labels are about balanced (chance is near 0.5); the data give 0.82.
    assert remote > 0.75
