"""Benchmark: wall time and peak memory of every available method on a phantom (default 160^3).

Not collected by pytest.  Run:

    python tests/benchmarks/bench_methods.py [--shape 160 160 160] [--methods tkd cfl2] [--profile quick]
                                             [--snr 20] [--no-classical]

Peak RSS is the process's resident memory sampled during ``reconstruct`` (the phantom and the
interpreter included); "extra" subtracts the RSS before the call.  "FFTs" counts the 3-D FFTs a
method did through ``qsmbench.physics``; "wall/FFT" is its wall time over (FFTs/2 x the time of
one rfftn+irfftn pair on the unpadded grid) -- near 1 means the method is FFT-bound.

A second table (skip with ``--no-classical``) follows the classical methods' internals (issue 12):
iLSQR's step-1 (Laplacian-weighted LSQR) and final NRMSE, and MEDI with both data weightings
(``magnitude``, the Cornell default, and ``uniform``) on the phantom with qsmbench's noise
perturbation at peak SNR ``--snr`` (complex Gaussian noise, phase noise sigma/|magnitude|), TKD
alongside as the baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import psutil

from qsmbench import metrics, perturb, physics, registry, runner
from qsmbench.phantom import make_phantom


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[160, 160, 160])
    p.add_argument("--voxel-size", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--profile", default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--snr", type=float, default=20.0, help="peak SNR of the noisy MEDI runs (classical table)")
    p.add_argument("--no-classical", action="store_true", help="skip the iLSQR/MEDI internals table")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    vol = make_phantom(tuple(args.shape), tuple(args.voxel_size), seed=0)
    t_phantom = time.perf_counter() - t0
    names = args.methods or [n for n in registry.list_methods()  # imported maps reconstruct nothing
                             if not getattr(registry.get_method_class(n), "imported", False)]
    print(f"# phantom {tuple(args.shape)} @ {tuple(args.voxel_size)} mm built in {t_phantom:.1f} s; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
          f"affinity {len(os.sched_getaffinity(0))}")
    fft_pair = _fft_pair_seconds(vol.shape)
    print(f"# one rfftn+irfftn pair on the unpadded {vol.shape} grid: {fft_pair * 1e3:.1f} ms (float32)")
    header = (f"{'method':<14} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'extra MB':>9} "
              f"{'NRMSE %':>8} {'FFTs':>6} {'wall/FFT':>8} {'status':<8}")
    print(header)
    print("-" * len(header))
    truth = vol.references["chi"]
    for name in names:
        base = psutil.Process().memory_info().rss / 2**20
        res = runner.run_method(name, vol, profile=args.profile, device=args.device,
                                identity={"dataset": "bench", "perturbation": "none"})
        r = res.record
        if res.status != "ok":
            print(f"{name:<14} {'-':>8} {'-':>8} {'-':>12} {'-':>9} {'-':>8} failed: {r['error']}")
            continue
        nrmse = metrics.evaluate(res.chi_ppm, truth, vol.mask, metrics=["nrmse"])[0].value
        n_fft = r.get("fft_count") or 0
        ratio = f"{r['wall_s'] / (n_fft / 2 * fft_pair):8.2f}" if n_fft else f"{'-':>8}"
        print(f"{name:<14} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_rss_mb'] - base:9.0f} {nrmse:8.1f} {n_fft:6d} {ratio} {res.status:<8}")
    if not args.no_classical:
        classical(vol, args.snr)


def _nrmse(x, vol) -> float:
    return metrics.evaluate(x, vol.references["chi"], vol.mask, metrics=["nrmse"])[0].value


def classical(vol, snr: float) -> None:
    """iLSQR's step 1 vs its final result; MEDI's two data weightings under noise."""
    available = set(registry.list_methods())
    rows = []
    if "ilsqr" in available:
        import inspect

        ilsqr_mod = inspect.getmodule(registry.get_method_class("ilsqr"))
        t0 = time.perf_counter()
        chi, det = ilsqr_mod.ilsqr(vol.field_ppm, vol.mask, vol.voxel_size_mm, vol.b0_dir)
        wall = time.perf_counter() - t0
        rows.append(("ilsqr step 1 (LSQR)", "none", _nrmse(det["chi_lsqr"] * vol.mask, vol), None,
                     f"{det['lsqr']['iterations']} it, {det['lsqr']['stop']}"))
        rows.append(("ilsqr final", "none", _nrmse(chi, vol), wall,
                     f"streak {det['streak']['solver'].upper()} {det['streak']['iterations']} it"))
    seed = runner.derive_seed("bench", f"noise-snr{snr:g}-seed1")
    if "medi" in available:
        noisy = perturb.add_noise(vol, snr, seed)
        label = f"snr {snr:g}"
        rows.append(("tkd", label, _nrmse(registry.get_method("tkd").reconstruct(noisy.for_method()), noisy),
                     None, "baseline"))
        for weighting in ("magnitude", "uniform"):
            m = registry.get_method("medi", data_weighting=weighting)
            t0 = time.perf_counter()
            chi = m.reconstruct(noisy.for_method())
            wall = time.perf_counter() - t0
            h = m.result.history
            rows.append((f"medi {weighting}", label, _nrmse(chi, noisy), wall,
                         f"GN {len(h)}, CG {[e['cg_iterations'] for e in h]}"))
    if not rows:
        return
    print()
    print(f"# classical internals (noise: qsmbench.perturb.add_noise at peak SNR {snr:g}, rng seed {seed})")
    header = f"{'variant':<22} {'data':<8} {'NRMSE %':>8} {'wall s':>8}  notes"
    print(header)
    print("-" * len(header))
    for name, data, value, wall, note in rows:
        w = f"{wall:8.2f}" if wall is not None else f"{'-':>8}"
        print(f"{name:<22} {data:<8} {value:8.1f} {w}  {note}")


def _fft_pair_seconds(shape, repeats: int = 5) -> float:
    """Median time of one forward + inverse real FFT of ``shape`` (the unit of 'wall/FFT')."""
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        physics.irfftn(physics.rfftn(x), s=shape)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


if __name__ == "__main__":
    main()
