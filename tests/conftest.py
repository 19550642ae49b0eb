"""Shared fixtures: tiny volumes built in memory (no network, no GPU)."""

import os
import tempfile

import numpy as np
import pytest

from qsmbench import registry
from qsmbench.contract import contract_volume


def pytest_configure(config):
    """Trained weights (uQSM, INR warm starts) go to a private cache, never the user's."""
    if "QSMBENCH_CACHE" not in os.environ:
        os.environ["QSMBENCH_CACHE"] = tempfile.mkdtemp(prefix="qsmbench-test-cache-")


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
