"""Benchmark: wall time, CPU time, peak memory and FFT floor of every available method (160^3, SNR 20).

Not collected by pytest.  Run:

    python tests/benchmarks/bench_methods.py [--shape 160 160 160] [--methods tkd cfl2] [--profile quick]
                                             [--snr 20] [--threads 2] [--save DIR] [--no-classical]

The volume is the embedded phantom (seed 0) with qsmbench's noise perturbation at peak SNR
``--snr`` (complex Gaussian noise, phase noise sigma/|magnitude|; 0 = noiseless), so that the
iterative methods' iteration counts resemble real data.  Each method runs in this process on
``--threads`` threads (FFT workers and the numpy backend's fused updates, as a workflow job
granted that many), with glibc told to keep freed memory for reuse, as every workflow job does
(:func:`qsmbench.jobs.retain_freed_memory`; without it MEDI at 80x96x80 took 10.1 s instead of 8.1).

Columns: "wall s" and "cpu s" (process CPU time, all threads) of ``reconstruct``; peak RSS is the
process's resident memory sampled during the call (phantom and interpreter included), "extra"
subtracts the RSS before the call.  "FFTs" counts the 3-D FFTs done through ``qsmbench.physics``
or the torch backend, "f64" how many of them in double precision.  The FFT floor is the time
those FFTs alone take on the unpadded grid: FFTs/2 x the median time of one rfftn+irfftn pair
(float32 pairs for single-precision FFTs, float64 pairs for double ones), measured here with the
same threads; "wall/floor" and "cpu/floor" (CPU time over the pairs' CPU time) near 1 mean the
method is FFT-bound.  On a loaded machine the wall figures rise with the load; CPU time and
cpu/floor are much less sensitive to it.

When CUDA is available a second table runs the methods on the GPU (``device cuda``: the
classical methods through the torch backend, qsmbench.backend) with the peak GPU memory and the
floor of torch.fft pairs on the device; each method runs once untimed first (CUDA context,
cuFFT plans).

A last table (skip with ``--no-classical``) follows the classical methods' internals (issue 12):
iLSQR's step-1 (Laplacian-weighted LSQR) and final NRMSE, and MEDI with both data weightings
(``magnitude``, the Cornell default, and ``uniform``) on the same noisy phantom, with its FFT count,
and MEDI in the toolbox's own configuration (``lambda_rule fixed``, lambda 1000: one Gauss-Newton
solve, no lambda search -- what the Cornell toolbox and QSM.rs are timed with), TKD alongside as
the baseline.  ``--save DIR`` writes each method's chi to ``DIR/<method>.npy`` (to compare two
versions of the code).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import psutil

from qsmbench import metrics, perturb, physics, registry, runner
from qsmbench.jobs import retain_freed_memory
from qsmbench.phantom import make_phantom

CLASSICAL = ("tkd", "cfl2", "ilsqr", "medi")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[160, 160, 160])
    p.add_argument("--voxel-size", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--profile", default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--snr", type=float, default=20.0, help="peak SNR of the noise (0: noiseless phantom)")
    p.add_argument("--threads", type=int, default=2, help="threads of each run (as a workflow job's)")
    p.add_argument("--save", default=None, help="folder for each method's chi (<method>.npy)")
    p.add_argument("--no-classical", action="store_true", help="skip the iLSQR/MEDI internals table")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU table even when CUDA is available")
    args = p.parse_args(argv)

    runner.set_threads(args.threads)
    retain_freed_memory()  # glibc keeps freed memory for reuse, as in every workflow job (qsmbench.jobs)
    t0 = time.perf_counter()
    vol = make_phantom(tuple(args.shape), tuple(args.voxel_size), seed=0)
    t_phantom = time.perf_counter() - t0
    seed = runner.derive_seed("bench", f"noise-snr{args.snr:g}-seed1")
    data = perturb.add_noise(vol, args.snr, seed) if args.snr > 0 else vol
    names = args.methods or [n for n in registry.list_methods()  # imported maps reconstruct nothing
                             if not getattr(registry.get_method_class(n), "imported", False)]
    print(f"# phantom {tuple(args.shape)} @ {tuple(args.voxel_size)} mm (seed 0) built in {t_phantom:.1f} s; "
          + (f"noise at peak SNR {args.snr:g} (rng seed {seed})" if args.snr > 0 else "noiseless"))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, affinity "
          f"{len(os.sched_getaffinity(0))}, {args.threads} threads per run, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    pair = {dt: _fft_pair_seconds(vol.shape, dt) for dt in (np.float32, np.float64)}
    print(f"# one rfftn+irfftn pair on the unpadded grid: float32 {pair[np.float32][0] * 1e3:.1f} ms wall "
          f"({pair[np.float32][1] * 1e3:.1f} ms CPU), float64 {pair[np.float64][0] * 1e3:.1f} ms wall "
          f"({pair[np.float64][1] * 1e3:.1f} ms CPU)")
    header = (f"{'method':<14} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'extra MB':>9} {'NRMSE %':>8} "
              f"{'FFTs':>6} {'f64':>5} {'floor s':>8} {'wall/floor':>10} {'cpu/floor':>9} {'status':<8}")
    print(header)
    print("-" * len(header))
    truth = vol.references["chi"]
    saved = Path(args.save) if args.save else None
    if saved:
        saved.mkdir(parents=True, exist_ok=True)
    for name in names:
        base = psutil.Process().memory_info().rss / 2**20
        with physics.count_ffts() as c:
            res = runner.run_method(name, data, profile=args.profile, device=args.device,
                                    identity={"dataset": "bench", "perturbation": "none"})
        r = res.record
        if res.status != "ok":
            print(f"{name:<14} {'-':>8} {'-':>8} {'-':>12} {'-':>9} {'-':>8} failed: {r['error']}")
            continue
        if saved:
            np.save(saved / f"{name}.npy", res.chi_ppm)
        nrmse = metrics.evaluate(res.chi_ppm, truth, vol.mask, metrics=["nrmse"])[0].value
        n, nd = c["n"], c.get("double", 0)
        floor_wall = (n - nd) / 2 * pair[np.float32][0] + nd / 2 * pair[np.float64][0]
        floor_cpu = (n - nd) / 2 * pair[np.float32][1] + nd / 2 * pair[np.float64][1]
        ratios = (f"{r['wall_s'] / floor_wall:10.2f} {r['cpu_s'] / floor_cpu:9.2f}" if n
                  else f"{'-':>10} {'-':>9}")
        print(f"{name:<14} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_rss_mb'] - base:9.0f} {nrmse:8.2f} {n:6d} {nd:5d} {floor_wall:8.2f} {ratios} "
              f"{res.status:<8}", flush=True)
    if not args.no_gpu:
        gpu_table(data, truth, vol.mask, names, args.profile)
    if not args.no_classical:
        classical(data, args.snr, seed)


def gpu_table(data, truth, mask, names, profile) -> None:
    """The same runs on the CUDA device (skipped without torch or CUDA)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return
    if not torch.cuda.is_available():
        print("\n# no CUDA device: no GPU table")
        return
    shape = data.shape
    x = torch.randn(shape, device="cuda")
    times = []
    for _ in range(7):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.fft.irfftn(torch.fft.rfftn(x), s=shape)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    gpu_pair = float(np.median(times[2:]))
    print(f"\n# GPU: {torch.cuda.get_device_name(0)}; one float32 rfftn+irfftn pair {gpu_pair * 1e3:.2f} ms")
    header = (f"{'method':<14} {'wall s':>8} {'peak GPU MB':>12} {'NRMSE %':>8} {'FFTs':>6} {'f64':>5} "
              f"{'wall/floor':>10} {'status':<8}")
    print(header)
    print("-" * len(header))
    for name in names:
        cls = registry.get_method_class(name)
        if not ({"gpu", "gpu_optional"} & set(getattr(cls, "uses", ()))):
            continue
        runner.run_method(name, data, profile=profile, device="cuda", identity={"dataset": "bench"})  # warm-up
        torch.cuda.reset_peak_memory_stats()
        with physics.count_ffts() as c:
            res = runner.run_method(name, data, profile=profile, device="cuda", identity={"dataset": "bench"})
        r = res.record
        if res.status != "ok":
            print(f"{name:<14} failed: {r['error']}")
            continue
        nrmse = metrics.evaluate(res.chi_ppm, truth, mask, metrics=["nrmse"])[0].value
        n, nd = c["n"], c.get("double", 0)
        # a float64 FFT on the GPU costs about 2x a float32 one (memory-bound)
        floor = ((n - nd) / 2 + nd) * gpu_pair
        ratio = f"{r['wall_s'] / floor:10.2f}" if n else f"{'-':>10}"
        print(f"{name:<14} {r['wall_s']:8.2f} {r['peak_gpu_mb'] or 0:12.0f} {nrmse:8.2f} {n:6d} {nd:5d} {ratio} "
              f"{res.status:<8}", flush=True)


def _nrmse(x, vol) -> float:
    return metrics.evaluate(x, vol.references["chi"], vol.mask, metrics=["nrmse"])[0].value


def classical(noisy, snr: float, seed: int) -> None:
    """iLSQR's step 1 vs its final result; MEDI's two data weightings (on the noisy phantom)."""
    available = set(registry.list_methods())
    rows = []
    label = f"snr {snr:g}" if snr > 0 else "none"
    vol = noisy.for_method()
    if "tkd" in available:
        rows.append(("tkd", label, _nrmse(registry.get_method("tkd").reconstruct(vol), noisy), None, "baseline"))
    if "ilsqr" in available:
        import inspect  # noqa: PLC0415

        ilsqr_mod = inspect.getmodule(registry.get_method_class("ilsqr"))
        t0 = time.perf_counter()
        chi, det = ilsqr_mod.ilsqr(noisy.field_ppm, noisy.mask, noisy.voxel_size_mm, noisy.b0_dir)
        wall = time.perf_counter() - t0
        rows.append(("ilsqr step 1 (LSQR)", label, _nrmse(det["chi_lsqr"] * noisy.mask, noisy), None,
                     f"{det['lsqr']['iterations']} it, {det['lsqr']['stop']}"))
        rows.append(("ilsqr final", label, _nrmse(chi, noisy), wall,
                     f"streak {det['streak']['solver'].upper()} {det['streak']['iterations']} it"))
    if "medi" in available:
        # the default (lambda by the discrepancy principle) with both data weightings, and the
        # toolbox's own configuration (fixed lambda 1000): the one the Cornell toolbox and QSM.rs
        # are timed with, i.e. a single Gauss-Newton solve without the lambda search
        variants = [(f"medi {w}", {"data_weighting": w}) for w in ("magnitude", "uniform")]
        variants.append(("medi fixed lam 1000", {"lambda_rule": "fixed", "lam": 1000.0}))
        for title, params in variants:
            m = registry.get_method("medi", **params)
            t0 = time.perf_counter()
            with physics.count_ffts() as c:
                chi = m.reconstruct(vol)
            wall = time.perf_counter() - t0
            h = m.result.history
            lam = (m.info or {}).get("lam")
            cg = [e["cg_iterations"] for e in h]
            rows.append((title, label, _nrmse(chi, noisy), wall,
                         f"lambda {lam:.3g}, {c['n']} FFTs; last solve GN {len(h)}, CG {cg}"))
    if not rows:
        return
    print()
    print(f"# classical internals ({label}; qsmbench.perturb.add_noise, rng seed {seed})")
    header = f"{'variant':<22} {'data':<8} {'NRMSE %':>8} {'wall s':>8}  notes"
    print(header)
    print("-" * len(header))
    for name, data, value, wall, note in rows:
        w = f"{wall:8.2f}" if wall is not None else f"{'-':>8}"
        print(f"{name:<22} {data:<8} {value:8.1f} {w}  {note}")


def _fft_pair_seconds(shape, dtype=np.float32, repeats: int = 7) -> tuple[float, float]:
    """Median wall and CPU time of one forward + inverse real FFT of ``shape`` in ``dtype`` (the
    unit of the FFT floor), with the threads set by :func:`qsmbench.runner.set_threads`."""
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        physics.irfftn(physics.rfftn(x), s=shape)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus))


if __name__ == "__main__":
    main()
