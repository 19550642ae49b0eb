"""GPU checks (CUDA only; skipped elsewhere): the dipole operator on CUDA agrees with the CPU
reference, INR-QSM's paper profile trains in mixed precision at 160^3 within the card's memory, and
uQSM's paper network trains.  Measurements go to gpu_check.sh's table (see conftest.report).

No wall-clock limit is asserted (timings are measurements, printed); memory and correctness are."""

import math

import checks  # tests/gpu/checks.py (pytest puts this folder on sys.path)
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _card_mb() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**20


def test_dipole_operator_on_cuda_agrees_with_the_cpu_reference(report):
    res = checks.dipole_agreement("cuda", n=96)
    report("dipole", res)
    assert res["dipole_rel_max_err"] < 1e-5  # float32 FFTs of a 192x208x176 padded box


def test_inr_qsm_paper_profile_mixed_precision_at_160(report):
    """One epoch (every 96x96x48 patch once) of the paper network (SIREN 10x512) in float16 autocast."""
    res = checks.inr_steps("cuda", 160, profile="paper")
    report("inr_paper", res)
    assert res["inr_profile"] == "paper" and res["inr_device"].startswith("cuda:")
    assert res["inr_mixed_precision"] and res["inr_patch_steps"] > 1
    assert 0 < res["inr_peak_gpu_mb"] < 0.8 * _card_mb()
    assert math.isfinite(res["inr_nrmse_1_epoch"])


def test_inr_qsm_fast_paper_profile_at_160(report):
    res = checks.inr_fast_steps("cuda", 160, profile="paper", steps=50)
    report("inr_fast", res)
    assert 0 < res["fast_peak_gpu_mb"] < 0.8 * _card_mb() and math.isfinite(res["fast_nrmse"])


def test_uqsm_paper_network_trains_on_cuda(report):
    res = checks.uqsm_training("cuda", steps=20, profile="paper", n=96)
    report("uqsm", res)
    losses = res["uqsm_losses"]
    assert losses and np.isfinite(losses).all()
    assert 0 < res["uqsm_peak_gpu_mb"] < 0.8 * _card_mb() and math.isfinite(res["uqsm_nrmse"])
