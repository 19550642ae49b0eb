"""Shared fixtures: tiny volumes built in memory (no network, no GPU)."""

import os
import sys
import tempfile

import numpy as np
import pytest

from qsmbench import registry
from qsmbench.contract import contract_volume


def pytest_configure(config):
    """Trained weights (uQSM, INR warm starts) go to a private cache, never the user's (one for all
    of a run's xdist workers: the method caches write atomically).  Under pytest-xdist (pyproject:
    ``-n auto``) each worker has one core, so its BLAS/OpenMP/torch pools get one thread: two
    workers whose torch pools each spin on both cores of a 2-core machine ran several times slower."""
    if "QSMBENCH_CACHE" not in os.environ:
        os.environ["QSMBENCH_CACHE"] = tempfile.mkdtemp(prefix="qsmbench-test-cache-")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        if "torch" in sys.modules:  # already imported (its pools sized): size them now
            sys.modules["torch"].set_num_threads(1)


@pytest.fixture
def small_volume():
    """The contract's analytic sphere volume (24x24x20, 1x1x1.2 mm, with truth)."""
    return contract_volume()


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Each test sees the registry as discovered under its own environment."""
    monkeypatch.delenv("QSMBENCH_METHODS_PATH", raising=False)
    registry.clear_cache()
    yield
    registry.clear_cache()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: A stand-in for a deep-learning method (no torch): can use a GPU, quick and paper profiles.
GPU_CAPABLE_PLUGIN = '''
from qsmbench.method import Method

class GpuCapable(Method):
    """Stands for a deep-learning method: can use a GPU, quick and paper profiles (no torch)."""
    name = "gpu_capable"
    parameters = {"steps": 0}
    profiles = {"quick": {"steps": 3}, "paper": {"steps": 300}}
    uses = {"gpu"}
    references = ["none"]

    def reconstruct(self, vol):
        return vol.field_ppm * self.params["steps"] * vol.mask
'''


@pytest.fixture
def gpu_plugin_dir(tmp_path):
    """A folder holding the ``gpu_capable`` plugin (pass it as a methods dir)."""
    plugins = tmp_path / "gpu_plugins"
    plugins.mkdir()
    (plugins / "gpu_capable.py").write_text(GPU_CAPABLE_PLUGIN)
    return plugins


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny volumes gain nothing from threads, and on a shared, busy machine torch's spinning
    worker threads make the deep-learning tests several times slower (use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
