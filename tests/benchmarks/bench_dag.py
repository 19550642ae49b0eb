"""Time the workflow's DAG and the aggregate step on a big grid (a standalone script, not collected by pytest).

    python tests/benchmarks/bench_dag.py [--variants 50] [--snrs 4] [--noise-seeds 50] [--metric-files 10000]
                                         [--skip-dag] [--skip-aggregate] [--keep DIR]

Target (GitHub issue 19): a grid of about 10,000 (dataset x perturbation x method) jobs builds its DAG
and dry-runs (``snakemake -n``) in under 30 s on 2 cores; the aggregate step reads 10,000 metric files
in under 30 s with a peak memory under 2 GB.

The grid: one 24^3 analytic phantom, ``--variants`` TKD runs (thresholds 0.05, 0.055, ...) and
``none`` plus ``--snrs`` x ``--noise-seeds`` noise volumes: 50 x (1 + 4 x 50) = 10,050 reconstruct
jobs by default (each reconstruct job also scores its run).  The metric files are copies of one real record
(TKD on a 24^3 phantom, scored by :func:`qsmbench.results.evaluate_run`) under distinct
(perturbation, method) names; the aggregate step is what the rule runs
(:func:`qsmbench.results.collect` + :func:`qsmbench.results.write_table`).

Each step runs in its own process; the table gives its wall-clock time, its CPU time (user + system,
children included: the machine may be shared, so wall time alone can mislead) and its peak resident
memory (``ru_maxrss``).  The last line adds a fixed pure-Python workload's time (:func:`reference_loop_s`),
to compare figures measured at different hours on a machine whose speed varies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
SNRS = (10, 20, 40, 80, 160, 320, 640, 1280)


def grid_config(variants: int, snrs: int, noise_seeds: int) -> dict:
    return {
        "datasets": {"ph": {"type": "phantom", "model": "analytic", "shape": [24, 24, 24],
                            "voxel_size_mm": [2.0, 2.0, 2.0], "seed": 1}},
        "perturbations": ["none", {"noise": {"snr": list(SNRS[:snrs]), "seeds": noise_seeds}}],
        "methods": {f"tkd_{i:03d}": {"method": "tkd", "params": {"threshold": round(0.05 + 0.005 * i, 4)}}
                    for i in range(variants)},
        "device": "cpu",
        "threads": 1,
    }


def timed(cmd: list[str], **kw) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s, peak RSS MB) of ``cmd`` and its children, from wait4's rusage."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, done


def bench_dag(work: Path, args) -> list[tuple]:
    cfg = grid_config(args.variants, args.snrs, args.noise_seeds)
    n_jobs = args.variants * (1 + args.snrs * args.noise_seeds)
    (work / "dag").mkdir(parents=True, exist_ok=True)
    cfg_path = work / "dag" / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, cpu, rss, proc = timed([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(work / "dag"),
                                  "--configfile", str(cfg_path), "--cores", "2", "-n", "--quiet", "rules"], env=env)
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{proc.stdout[-3000:]}")
    return [(f"DAG build + dry run ({n_jobs} reconstruct jobs, each also scoring)", wall, cpu, rss)]


def one_metric_record(work: Path) -> dict:
    """A real metrics record: TKD on a 24^3 analytic phantom, scored."""
    from qsmbench.phantom import write_phantom
    from qsmbench.results import evaluate_run
    from qsmbench.runner import run_job

    vol = work / "vol"
    write_phantom(vol, name="ph", model="analytic", shape=(24, 24, 24), voxel_size_mm=(2.0, 2.0, 2.0), seed=1)
    run_json = work / "recon" / "run.json"
    run_job(vol, run_json, run_id="tkd", method="tkd", dataset="ph", isolate=False)
    return evaluate_run(run_json, vol, work / "metrics.json")


AGGREGATE = """
import sys
from qsmbench.results import collect, write_table
from pathlib import Path
paths = [line for line in Path(sys.argv[1]).read_text().splitlines() if line]
table = collect(paths)
table["config_hash"] = "0123456789ab"
write_table(table, sys.argv[2], sys.argv[3])
print(len(table), "rows")
"""


def bench_aggregate(work: Path, args) -> list[tuple]:
    record = one_metric_record(work)
    files = []
    per_dir = 200
    for i in range(args.metric_files):
        pert, method = f"noise-snr{10 + i // per_dir}-seed1", f"tkd_{i % per_dir:03d}"
        path = work / "metrics" / "ph" / pert / f"{method}.json"
        if i % per_dir == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        rec = {**record, "perturbation": pert, "method": method,
               "run": {**record["run"], "perturbation": pert, "run_id": method}}
        path.write_text(json.dumps(rec, indent=2, sort_keys=True))
        files.append(str(path))
    listing = work / "metric_files.txt"
    listing.write_text("\n".join(files))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, cpu, rss, proc = timed([sys.executable, "-c", AGGREGATE, str(listing), str(work / "metrics.parquet"),
                                  str(work / "metrics.csv")], env=env)
    if proc.returncode != 0:
        sys.exit(f"aggregate failed:\n{proc.stdout[-3000:]}")
    rows = proc.stdout.split()[0]
    return [(f"aggregate {args.metric_files} metric files ({rows} rows)", wall, cpu, rss)]


def reference_loop_s(repeats: int = 3) -> float:
    """Seconds of a fixed pure-Python workload (dict, string and list operations, as Snakemake's
    bookkeeping is), best of ``repeats``: the same machine ran this benchmark 1.8x faster in one
    hour than in another (31.8 and 18.0 s, the same code), so a figure is quoted with this one to
    compare runs across hours."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        d: dict = {}
        for i in range(300_000):
            key = f"results/recon/ph/noise-snr{i % 8}-seed{i % 50}/tkd_{i % 50:03d}/run.json"
            d[key] = d.get(key, 0) + len(key.split("/"))
        sorted(d)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", type=int, default=50, help="TKD runs (methods)")
    ap.add_argument("--snrs", type=int, default=4, choices=range(1, len(SNRS) + 1), help="noise levels")
    ap.add_argument("--noise-seeds", type=int, default=50, help="noise seeds per level")
    ap.add_argument("--metric-files", type=int, default=10000)
    ap.add_argument("--skip-dag", action="store_true")
    ap.add_argument("--skip-aggregate", action="store_true")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args(argv)
    os.environ.setdefault("QSMBENCH_CACHE", tempfile.mkdtemp(prefix="qsmbench-bench-cache-"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="qsmbench-bench-dag-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        if not args.skip_dag:
            rows += bench_dag(work, args)
        if not args.skip_aggregate:
            rows += bench_aggregate(work, args)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'step':<72} {'wall s':>8} {'CPU s':>8} {'peak MB':>8}")
    for name, wall, cpu, rss in rows:
        print(f"{name:<72} {wall:8.1f} {cpu:8.1f} {rss:8.0f}")
    print(f"(os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; CPU s includes children; "
          f"reference loop {reference_loop_s():.2f} s: the machine's speed at the time, smaller is faster)")


if __name__ == "__main__":
    main()
