"""The GPU verification kit's measurements, shared by the pytest checks (``tests/gpu/test_gpu.py``,
CUDA, 160^3) and by ``tests/benchmarks/gpu_check.sh --cpu-smoke`` (CPU, tiny sizes).

Each check runs a method through :func:`qsmbench.runner.run_method` (the workflow's path: timing,
peak RSS and GPU memory, output validation) and returns a flat dict of measurements:

* :func:`dipole_agreement` -- the torch dipole operator of the deep-learning methods on the device
  against :func:`qsmbench.physics.forward_field` (numpy, float64, CPU): relative max error.
* :func:`inr_steps` -- INR-QSM for one epoch (every patch once; mixed precision on CUDA in the paper
  profile): time per patch step, peak GPU memory, NRMSE after that epoch.
* :func:`inr_fast_steps` -- INR-QSM-fast for a few full-volume steps.
* :func:`uqsm_training` -- uQSM: a few training steps on freshly simulated phantoms (no cache),
  then one reconstruction.

``python tests/gpu/checks.py --device cpu --size 32 --profile quick --json OUT`` runs them all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from qsmbench import metrics, registry, runner
from qsmbench.phantom import make_phantom


def phantom(n: int, voxel_mm: float = 1.0):
    return make_phantom((n, n, n), (voxel_mm,) * 3, seed=0)


def nrmse(chi, vol) -> float:
    return float(metrics.evaluate(chi, vol.references["chi"], vol.mask, metrics=["nrmse"])[0].value)


def _params(name: str, wanted: dict) -> dict:
    """The overrides this version of the method knows (others are left out, and said so)."""
    known = registry.get_method_class(name).parameters
    return {k: v for k, v in wanted.items() if k in known}


def _run(name, vol, profile, device, params):
    res = runner.run_method(name, vol, profile=profile, device=device, params=params, seed=0)
    if res.status != "ok":
        raise RuntimeError(f"{name} failed: {res.record['error']}\n{res.record['traceback']}")
    return res


def dipole_agreement(device: str, n: int = 64) -> dict:
    """Max |torch(device) - numpy| / max |numpy| of the zero-padded forward model, anisotropic voxels
    and an oblique B0, on a random chi."""
    import importlib

    import torch

    from qsmbench.physics import forward_field

    cls = registry.get_method_class("inr_qsm")
    common = importlib.import_module(cls.__module__ + ".common")
    rng = np.random.default_rng(0)
    chi = rng.standard_normal((n, n + 8, n - 8))
    voxel, b0 = (1.0, 1.2, 2.0), (0.1, 0.2, 0.97)
    ref = forward_field(chi, voxel, b0, d0=0.0, pad_factor=2.0)
    op = common.DipoleOperator(chi.shape, voxel, b0, d0=0.0, pad_factor=2.0, device=device)
    got = op(torch.as_tensor(chi, dtype=torch.float32, device=device)).cpu().numpy()
    return {"dipole_shape": list(chi.shape), "dipole_device": runner.device_description(runner.resolve_device(device)),
            "dipole_rel_max_err": float(np.abs(got - ref).max() / np.abs(ref).max())}


def inr_steps(device: str, n: int, profile: str = "paper", patch_size=None) -> dict:
    """INR-QSM for one epoch (every patch once, no phase compensation or warm start)."""
    vol = phantom(n)
    params = _params("inr_qsm", {"epochs": 1, "warm_start": "none", "phase_compensation": False,
                                 **({"patch_size": patch_size} if patch_size else {})})
    res = _run("inr_qsm", vol, profile, device, params)
    rec = res.record
    steps = max(1, _n_patches(rec))
    return {"inr_profile": rec["profile"], "inr_device": rec["device"], "inr_size": n,
            "inr_mixed_precision": bool(rec["parameters"].get("mixed_precision")) and device != "cpu",
            "inr_patch_steps": steps, "inr_s_per_step": rec["wall_s"] / steps, "inr_epoch_s": rec["wall_s"],
            "inr_peak_gpu_mb": rec["peak_gpu_mb"], "inr_peak_rss_mb": rec["peak_rss_mb"],
            "inr_nrmse_1_epoch": nrmse(res.chi_ppm, vol), "inr_epochs_in_profile": _epochs(profile)}


def _n_patches(record) -> int:
    for note in record.get("notes", []):
        if " patches of " in note:
            return int(note.split(" patches of ")[0].split()[-1])
    return 1


def _epochs(profile: str) -> int:
    cls = registry.get_method_class("inr_qsm")
    return int(cls.resolve_parameters({}, profile=profile)["epochs"])


def inr_fast_steps(device: str, n: int, profile: str = "paper", steps: int = 20) -> dict:
    vol = phantom(n)
    params = _params("inr_qsm_fast", {"max_steps": steps, "min_steps": steps})
    res = _run("inr_qsm_fast", vol, profile, device, params)
    rec = res.record
    return {"fast_profile": rec["profile"], "fast_steps": steps, "fast_s_per_step": rec["wall_s"] / steps,
            "fast_peak_gpu_mb": rec["peak_gpu_mb"], "fast_nrmse": nrmse(res.chi_ppm, vol)}


def uqsm_training(device: str, steps: int, profile: str = "paper", n: int = 64, small: bool = False) -> dict:
    """A few uQSM training steps on simulated phantoms (nothing cached), then one reconstruction."""
    vol = phantom(n, 2.0 if small else 1.0)
    wanted = {"epochs": 1, "steps_per_epoch": steps, "train_phantoms": 2, "cache": False}
    if small:
        wanted.update(width=4, patch_size=32, train_shape_min=40, train_shape_max=48, batch_size=1,
                      train_oversample=1, train_voxel_size_mm=[2.0, 2.0, 2.0])
    else:
        wanted.update(train_shape_min=112, train_shape_max=128, train_oversample=1)
    params = _params("uqsm", wanted)
    cls = registry.get_method_class("uqsm")
    dev = runner.resolve_device(device)
    method = cls(profile=profile, seed=0, device=dev, **params)
    res = runner.run_method(method, vol)
    if res.status != "ok":
        raise RuntimeError(f"uqsm failed: {res.record['error']}\n{res.record['traceback']}")
    rec, train = res.record, method.training_record
    history = train.get("history", [])
    return {"uqsm_profile": profile, "uqsm_train_steps": steps, "uqsm_width": method.params["width"],
            "uqsm_patch": method.params["patch_size"], "uqsm_data_s": train.get("data_s"),
            "uqsm_train_s": train.get("train_s"), "uqsm_s_per_step": (train.get("train_s") or 0) / steps,
            "uqsm_recon_s": rec["wall_s"], "uqsm_peak_gpu_mb": rec["peak_gpu_mb"],
            "uqsm_losses": [h["loss"] for h in history], "uqsm_nrmse": nrmse(res.chi_ppm, vol)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=32, help="phantom size for INR-QSM and INR-QSM-fast")
    p.add_argument("--profile", default="quick")
    p.add_argument("--patch", type=int, nargs=3, default=None, help="INR-QSM patch size override")
    p.add_argument("--fast-steps", type=int, default=5)
    p.add_argument("--uqsm-steps", type=int, default=3)
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args(argv)
    out = {}
    t0 = time.perf_counter()
    out.update(dipole_agreement(args.device, n=args.size))
    out.update(inr_steps(args.device, args.size, args.profile, args.patch))
    out.update(inr_fast_steps(args.device, args.size, args.profile, args.fast_steps))
    out.update(uqsm_training(args.device, args.uqsm_steps, args.profile, n=args.size, small=args.device == "cpu"))
    out["total_s"] = time.perf_counter() - t0
    text = json.dumps(out, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
