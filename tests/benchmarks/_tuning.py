"""Helpers of the tuning scripts (tune_inr_fast.py, tune_inr_quick.py, bench_medi_lambda.py,
bench_ilsqr_stop.py): tuning-range phantoms, their noisy versions, and scoring.  Not collected by
pytest; never touches test-range seeds."""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import time
from collections.abc import Sequence

import numpy as np

from qsmbench import metrics, perturb, seeds
from qsmbench.phantom import PHANTOM_VERSION, make_phantom


def default_model() -> str:
    """The phantom model ``make_phantom`` builds by default ("analytic" before it had models)."""
    param = inspect.signature(make_phantom).parameters.get("model")
    return str(param.default) if param is not None else "analytic"


def phantom(seed: int, shape: Sequence[int], voxel_size_mm: Sequence[float], model: str):
    """A tuning phantom (``seed`` must be a tuning-range seed) of phantom model ``model``."""
    seeds.check_role(seed, "tune", "tuning phantom seed")
    kwargs = {"seed": seed, "calcification": True}
    if "model" in inspect.signature(make_phantom).parameters:
        kwargs["model"] = model
    elif model != "analytic":
        raise SystemExit(f"--model {model!r}: this qsmbench's make_phantom has no phantom models "
                         f"(only the analytic one); use --model analytic")
    return make_phantom(tuple(shape), tuple(voxel_size_mm), **kwargs)


def conditions(vol, snrs: Sequence[float], seed: int):
    """(label, volume) for the noiseless phantom and each peak SNR (complex noise, seeded)."""
    out = [("none", vol)]
    for i, snr in enumerate(snrs):
        out.append((f"snr{snr:g}", perturb.add_noise(vol, snr, seed=seed * 100 + i)))
    return out


def nrmse(chi, vol) -> float:
    return float(metrics.evaluate(chi, vol.references["chi"], vol.mask, metrics=["nrmse"])[0].value)


def header(what: str, model: str, tune_seeds: Sequence[int]) -> str:
    return (f"# {what}: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, load "
            f"average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}\n"
            f"# phantom model {model} (version {PHANTOM_VERSION}), tuning seeds {list(tune_seeds)}")


def mean(values) -> float:
    return float(np.mean(list(values)))


def stop_rule_parser(description: str, default_taus: str) -> argparse.ArgumentParser:
    """The arguments of the stopping/lambda-rule studies (bench_medi_lambda.py, bench_ilsqr_stop.py):
    tuning seeds, phantom grid, peak SNRs and the repeatable ``--tau``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--n-seeds", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=[80, 96, 80])
    p.add_argument("--voxel-size", type=float, nargs=3, default=[2.0, 2.0, 2.0])
    p.add_argument("--snr", type=float, nargs="*", default=[0, 40, 20, 10], help="peak SNRs; 0 = no noise")
    p.add_argument("--tau", type=float, action="append", default=None,
                   help=f"discrepancy_tau (repeatable; default {default_taus})")
    return p
