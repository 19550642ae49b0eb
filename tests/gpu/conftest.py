"""The GPU verification kit: every test here is marked ``gpu`` and skipped, with the reason, where
no CUDA device is visible (this project's CI and development machines have none).  Run it on a GPU
machine with ``bash tests/benchmarks/gpu_check.sh`` (or ``pytest -n 0 tests/gpu -m gpu -rs -s``: one
process for the one GPU)."""

import json
import os
from pathlib import Path

import pytest


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


SKIP = "no CUDA device visible (torch.cuda.is_available() is False): the GPU kit needs one; " \
       "run tests/benchmarks/gpu_check.sh on a GPU machine"


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason=SKIP))


@pytest.fixture
def report():
    """Record a check's measurements: printed, and written to $QSMBENCH_GPU_REPORT/{name}.json for
    gpu_check.sh's table."""
    def write(name: str, values: dict):
        print(f"{name}: {json.dumps(values, default=str)}")
        folder = os.environ.get("QSMBENCH_GPU_REPORT")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / f"{name}.json").write_text(json.dumps(values, indent=1, default=str))
    return write
