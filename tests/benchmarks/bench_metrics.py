"""Time every metric on one 160³ reconstruction (a standalone script, not collected by pytest).

    python tests/benchmarks/bench_metrics.py [--size 160] [--cores 2] [--repeat 3]

Target (GitHub issue 3): all metrics of one 160³ volume in under 3 s on 2 cores, memory below
2 GB.  The data are synthetic: an ellipsoidal "brain" with RC2-like labels (random blobs for the
deep grey nuclei, a cortex shell, ventricles, veins), a calcification, smooth texture, and a
reconstruction that is a noisy, slightly blurred and rescaled copy of the truth.

Prints one row per metric (time inside one shared evaluation context, so the first metric that
needs an intermediate pays for it; the 2016 ROI errors are timed on the same map read in the
2016 numbering), then the end-to-end :func:`qsmbench.metrics.evaluate` time
(best of ``--repeat``), the peak traced numpy allocation of one evaluation, and the process's
peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import sys


def _limit_cores(cores: int) -> int:
    """Pin the process to ``cores`` CPUs and cap BLAS/OpenMP threads (before numpy loads)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(cores)
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(available[:cores]))
        return len(os.sched_getaffinity(0))
    return cores


def make_data(n: int, seed: int = 0):
    """Synthetic (recon, truth, mask, labels) with the RC2 label numbering and a calcification."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = (np.arange(n) - (n - 1) / 2) / (n / 2)
    zz, yy, xx = np.meshgrid(grid, grid, grid, indexing="ij")
    r = np.sqrt((xx / 0.8) ** 2 + (yy / 0.9) ** 2 + (zz / 0.75) ** 2)
    del xx, yy, zz
    mask = r < 1.0
    labels = np.zeros((n, n, n), dtype=np.int32)
    labels[mask] = 8                                   # white matter
    labels[(r > 0.88) & mask] = 9                      # cortex shell
    labels[r < 0.12] = 10                              # "ventricle"
    chi = {1: 0.06, 2: 0.15, 3: 0.05, 4: 0.10, 5: 0.09, 6: 0.12, 7: 0.01, 8: -0.03, 9: 0.02,
           10: 0.0, 11: 0.35, 16: -1.2}
    centres = rng.integers(int(0.3 * n), int(0.7 * n), size=(8, 3))
    radius = max(2, n // 20)
    ball = (np.sum((np.indices((2 * radius + 1,) * 3) - radius) ** 2, axis=0) <= radius**2)
    for lab, c in zip((1, 2, 3, 4, 5, 6, 7, 7), centres, strict=True):
        sl = tuple(slice(ci - radius, ci + radius + 1) for ci in c)
        labels[sl][ball] = lab
    for _ in range(3):                                 # veins: straight tubes along axis 2
        a, b = rng.integers(int(0.3 * n), int(0.7 * n), size=2)
        labels[a - 1:a + 2, b - 1:b + 2, int(0.2 * n):int(0.8 * n)] = 11
    c = n // 2 + n // 8
    labels[c - 2:c + 3, c - 2:c + 3, n // 2 - 2:n // 2 + 3] = 16   # calcification
    labels[~mask] = 0
    lut = np.zeros(17)
    for lab, v in chi.items():
        lut[lab] = v
    texture = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 3.0)
    texture *= 0.01 / texture.std()
    truth = (lut[labels] + texture) * mask
    recon = 0.9 * ndimage.gaussian_filter(truth, 0.7) + 0.004 + 0.01 * rng.standard_normal((n, n, n))
    recon *= mask
    return recon, truth, mask, labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    cores = _limit_cores(args.cores)

    import resource
    import time
    import tracemalloc

    import numpy as np

    from qsmbench import metrics

    recon, truth, mask, labels = make_data(args.size)
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        results = metrics.evaluate(recon, truth, mask, labels=labels)
        best = min(best, time.perf_counter() - t0)
    not_ok = [r.metric for r in results if r.status != "ok"]

    ctx = metrics.make_context(recon, truth, mask, labels=labels)
    rows = []
    for spec in metrics._REGISTRY.values():
        t0 = time.perf_counter()
        try:
            value = f"{spec.func(ctx):.5g}"
        except metrics.NotApplicable as exc:
            value = f"n/a ({exc})"
        rows.append((spec.name, time.perf_counter() - t0, value))
    del ctx

    # The 2016 ROI errors need the 2016 numbering: time them on the same map read as qsm2016.
    labels_2016 = np.where(labels <= 11, labels, 0)
    ctx = metrics.make_context(recon, truth, mask, labels=labels_2016,
                               extras={"label_scheme": "qsm2016"})
    for i, (name, _, _) in enumerate(rows):
        if name.startswith("roi_error"):
            t0 = time.perf_counter()
            value = f"{metrics.get_metric(name).func(ctx):.5g} (labels read as qsm2016)"
            rows[i] = (name, time.perf_counter() - t0, value)
    del ctx, labels_2016

    tracemalloc.start()
    metrics.evaluate(recon, truth, mask, labels=labels)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    print(f"qsmbench metrics benchmark: {args.size}^3 volume, {cores} core(s)")
    print(f"{'metric':<20}{'time (s)':>10}  value")
    for name, seconds, value in rows:
        print(f"{name:<20}{seconds:>10.3f}  {value}")
    print(f"{'sum of the above':<20}{sum(s for _, s, _ in rows):>10.3f}")
    print(f"{'evaluate() total':<20}{best:>10.3f}  (best of {args.repeat}, incl. input validation)")
    print(f"peak traced allocation during evaluate(): {traced_peak / 2**20:.0f} MiB")
    print(f"peak resident memory of the process:      {peak_rss:.0f} MiB")
    if not_ok:
        print(f"not applicable: {', '.join(not_ok)}")
    ok = best < 3.0 and peak_rss < 2048
    print("target (< 3 s, < 2 GB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
