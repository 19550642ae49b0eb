"""Time the report and the paper figures on a big synthetic grid (a standalone script, not collected by pytest).

    python tests/benchmarks/bench_report.py [--methods 5] [--levels 20] [--seeds 3] [--cores 2]
                                            [--no-montage] [--keep DIR]

Target (GitHub issue 9): the report of 5 methods × 20 perturbation levels × 3 seeds renders in
under 60 s on 2 cores.  The table is synthetic but has the real schema and sizes: one dataset
with two references (like qsm2016: chi_33 and chi_cosmos), every registered metric, levels
spread over noise (seeds are noise seeds: ``noise-snr{S}-seed{1..3}``), resolution, orientation
and orientation + noise (seeds of the others are method repetitions), a method that fails on a
few volumes, run times and memory.  The montage (unless ``--no-montage``) uses the embedded
phantom at 80×96×80 with four noisy "reconstructions" and a failed one.

Prints one row per step: building the table (not part of the target), the statistics alone,
:func:`qsmbench.report.render_report` without and with figure files (PNG + SVG), and
:func:`qsmbench.figures.paper_figures` (300 dpi); then the table size and the HTML size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def _limit_cores(cores: int) -> int:
    """Pin the process to ``cores`` CPUs and cap BLAS/OpenMP threads (before numpy loads)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(cores)
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(available[:cores]))
        return len(os.sched_getaffinity(0))
    return cores


METHODS = ("tkd", "tkd_shmueli", "cfl2", "ilsqr", "medi", "uqsm", "inr_qsm", "star", "ndi", "tv")


def levels(n: int) -> list[tuple[str, bool]]:
    """``n`` perturbation levels as (level id, seeds are noise seeds) from a fixed pool, 'none' first."""
    pool = [("none", False)]
    pool += [(f"noise-snr{s}", True) for s in (80, 40, 20, 10, 5, 2.5)]
    pool += [(f"res-{v}", False) for v in ("2x2x2", "2x2x3", "3x3x3", "2x2x4", "4x4x4")]
    pool += [(f"orient-{a}", False) for a in (10, 20, 30, 45)]
    pool += [(f"orient-{a}+noise-snr{s}", True) for a, s in ((15, 40), (15, 10), (45, 40), (45, 10))]
    pool += [(f"orient-{a}", False) for a in (60, 75, 90)]
    if n > len(pool):
        sys.exit(f"at most {len(pool)} levels")
    return pool[:n]


def make_table(n_methods: int, n_levels: int, n_seeds: int):
    import numpy as np
    import pandas as pd

    from qsmbench import metrics, results

    rng = np.random.default_rng(0)
    specs = metrics.metric_table()
    rows = []
    for m_i, method in enumerate(METHODS[:n_methods]):
        quality = 1.0 + 0.15 * m_i
        for l_i, (level, noisy) in enumerate(levels(n_levels)):
            for k in range(1, n_seeds + 1):
                pid = f"{level}-seed{k}" if noisy else level
                seed = 1000 * m_i + 10 * l_i + k
                failed = method == METHODS[min(2, n_methods - 1)] and l_i % 7 == 6 and k == 1
                run = {"dataset": "qsm2016", "perturbation": pid, "method": method, "seed": seed,
                       "run_status": "failed" if failed else "ok",
                       "error": "RuntimeError: did not converge" if failed else "",
                       "wall_s": float(rng.gamma(2.0, 0.5 * (m_i + 1))), "cpu_s": 1.0, "prepare_s": 0.0,
                       "peak_rss_mb": 200.0 + 50 * m_i, "peak_gpu_mb": np.nan, "method_name": method,
                       "profile": "quick", "device": "cpu (x86_64, 2 logical cores)",
                       "parameters": '{"lam": 0.1}', "qsmbench_version": "0.1.0", "git_commit": "abc",
                       "data_sha256": f"{l_i:02d}{k}" + "0" * 61}
                if failed:
                    for spec in specs:
                        rows.append({**run, "reference": "", "metric": spec["metric"], "value": np.nan,
                                     "status": "run_failed", "reason": run["error"], "better": spec["better"],
                                     "unit": spec["unit"]})
                    continue
                for reference in ("chi_33", "chi_cosmos"):
                    for spec in specs:
                        value = (20 + 5 * l_i) * quality * (1 + 0.05 * rng.standard_normal())
                        if spec["better"] == "higher":
                            value = 1 / (1 + value / 50)
                        rows.append({**run, "reference": reference, "metric": spec["metric"], "value": value,
                                     "status": "ok", "reason": "", "better": spec["better"], "unit": spec["unit"]})
    return results.as_table(pd.DataFrame(rows))


def make_montage(folder, n_methods):
    import numpy as np

    from qsmbench import io
    from qsmbench.phantom import make_phantom

    vol = make_phantom((80, 96, 80), (2.0, 2.0, 2.0), calcification=True)
    io.save_volume(vol, folder / "data")
    ref = vol.references[sorted(vol.references)[0]]
    rng = np.random.default_rng(1)
    recons = {}
    for i, method in enumerate(METHODS[:n_methods]):
        if i == n_methods - 1:
            recons[method] = None
            continue
        chi = (0.9 * ref + 0.01 * (i + 1) * rng.standard_normal(ref.shape)) * vol.mask
        path = folder / "recon" / method / "chi_ppm.nii.gz"
        io.write_nifti(path, chi.astype(np.float32), vol.affine)
        recons[method] = path
    return [{"dataset": "qsm2016", "perturbation": "none", "volume_dir": folder / "data", "recons": recons}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=int, default=5)
    parser.add_argument("--levels", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--no-montage", action="store_true")
    parser.add_argument("--keep", help="write the outputs here instead of a temporary folder")
    args = parser.parse_args()
    cores = _limit_cores(args.cores)

    from pathlib import Path

    from qsmbench import figures, report, stats

    rows = []

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        table = timed("build the synthetic table (setup)", lambda: make_table(args.methods, args.levels, args.seeds))
        montages = [] if args.no_montage else timed("simulate the montage volume (setup)",
                                                    lambda: make_montage(folder, args.methods))
        timed("statistics: summarise + compare + rank", lambda: (stats.summarise(table), stats.compare_methods(
            table, metrics=("nrmse", "xsim")), stats.rank_methods(table)))
        out = timed("render_report (HTML only)", lambda: report.render_report(
            table, folder / "report" / "index.html", montages=montages))
        timed("render_report + figure files (PNG + SVG)", lambda: report.render_report(
            table, folder / "report" / "index.html", montages=montages, figures_dir=folder / "report" / "figures"))
        paper = timed("paper_figures (300 dpi PNG + SVG)", lambda: figures.paper_figures(
            table, folder / "paper_figures", montages=montages))
        n_runs = len(table.drop_duplicates(["dataset", "perturbation", "method", "seed"]))
        size_mb = out.stat().st_size / 1e6
        n_img = out.read_text(encoding="utf-8").count("<img ")
    print(f"\nreport benchmark: {args.methods} methods × {args.levels} levels × {args.seeds} seeds "
          f"({n_runs} runs, {len(table)} table rows, 2 references), {cores} core(s)\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'time (s)':>9}")
    print(f"{'-' * width}  {'-' * 9}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:9.2f}")
    print(f"\nHTML {size_mb:.1f} MB with {n_img} embedded images; {len(paper)} paper files. Target: each "
          "render_report row under 60 s on 2 cores.")


if __name__ == "__main__":
    main()
