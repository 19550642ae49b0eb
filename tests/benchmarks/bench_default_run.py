"""Time the default run from an empty cache, and say where its time goes (a standalone script, not
collected by pytest).

    python tests/benchmarks/bench_default_run.py [--cores all] [--keep DIR]

Target (issue 16): ``snakemake --cores all`` -- offline, embedded phantom, every method in its quick
profile -- finishes in under 5 minutes from an empty cache on 2 cores.

What runs: a fresh ``git clone`` of this checkout's HEAD (uncommitted changes are not in it), with
``QSMBENCH_CACHE`` pointing at an empty folder (so uQSM and QSMnet train), then the README's command
``snakemake --cores all`` in it.  The script prints:

* the wall-clock time, the CPU time (user + system of Snakemake and every job it started) and
  the largest process's peak memory (:func:`bench_dag.timed`);
* job-seconds by rule (each job's start to its end, from Snakemake's log, 1 s resolution) and
  job-seconds / cores, the wall time a perfect packing of those jobs would take;
* by run (method): reconstructions, the methods' own time (``wall_s`` in run.json, training from
  the pretrain record) and the rest of their jobs' time (start-up, loading, writing, scoring);
* :func:`bench_dag.reference_loop_s` before and after: this machine's speed varies up to 2x from hour
  to hour, so a wall time is only comparable with another measured at the same reference figure.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dag import SNAKEMAKE, reference_loop_s, timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TARGET_S = 300.0

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")


def job_spans(log_text: str) -> list[dict]:
    """Each job of a Snakemake 9 log: rule, wildcards, start and end (datetime, 1 s resolution).

    The log names a job in a block -- ``[timestamp]``, ``localrule NAME:`` (or ``rule``), ...,
    ``jobid: N``, ``wildcards: a=b, ...`` -- and its end as ``[timestamp]`` then
    ``Finished jobid: N``.  Jobs that never finished are left out."""
    stamp = None
    open_jobs: dict[str, dict] = {}
    done = []
    rule = job = None
    for line in log_text.splitlines():
        if m := _STAMP.match(line):
            stamp = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := _RULE.match(line):
            rule, job = {"rule": m.group(1), "start": stamp, "wildcards": {}}, None
        elif rule is not None and (m := _JOBID.match(line)):
            job = m.group(1)
            open_jobs[job] = rule
        elif job is not None and (m := _WILDCARDS.match(line)):
            open_jobs[job]["wildcards"] = dict(kv.split("=", 1) for kv in m.group(1).split(", ") if "=" in kv)
        elif m := _FINISHED.match(line):
            started = open_jobs.pop(m.group(1), None)
            if started is not None and started["start"] is not None and stamp is not None:
                done.append({**started, "end": stamp, "seconds": (stamp - started["start"]).total_seconds()})
    return done


def method_seconds(results: Path) -> dict[str, dict[str, float]]:
    """By run id: reconstructions, the methods' own seconds (run.json ``wall_s``) and the training's
    (the pretrain record's ``prepare_s``)."""
    out: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"runs": 0, "method_s": 0.0, "train_s": 0.0})
    for f in sorted(results.glob("recon/*/*/*/run.json")):
        rec = json.loads(f.read_text())
        row = out[rec.get("run_id") or f.parent.name]
        row["runs"] += 1
        row["method_s"] += float(rec.get("wall_s") or 0.0)
    for f in sorted(results.glob("pretrain/*.json")):
        rec = json.loads(f.read_text())
        out[rec.get("run_id") or f.stem]["train_s"] += float(rec.get("prepare_s") or 0.0)
    return dict(out)


def tables(spans: list[dict], methods: dict[str, dict[str, float]], cores: int) -> str:
    by_rule: dict[str, list[float]] = collections.defaultdict(list)
    job_s_by_run: dict[str, float] = collections.defaultdict(float)
    for s in spans:
        by_rule[s["rule"]].append(s["seconds"])
        if s["rule"] in ("reconstruct", "pretrain") and "run" in s["wildcards"]:
            job_s_by_run[s["wildcards"]["run"]] += s["seconds"]
    total = sum(sum(v) for v in by_rule.values())
    lines = [f"{'rule':<18} {'jobs':>5} {'job s':>8}", "-" * 33]
    for rule, secs in sorted(by_rule.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"{rule:<18} {len(secs):5d} {sum(secs):8.0f}")
    lines += ["-" * 33, f"{'all':<18} {sum(map(len, by_rule.values())):5d} {total:8.0f}   "
              f"/ {cores} cores = {total / cores:.0f} s (a perfect packing)", ""]
    lines += [f"{'run':<16} {'recons':>6} {'method s':>9} {'training s':>11} {'job s':>7} {'rest s':>7}", "-" * 61]
    for run, row in sorted(methods.items(), key=lambda kv: -(job_s_by_run.get(kv[0], 0.0))):
        job_s = job_s_by_run.get(run, 0.0)
        rest = job_s - row["method_s"] - row["train_s"]
        lines.append(f"{run:<16} {row['runs']:6.0f} {row['method_s']:9.1f} {row['train_s']:11.1f} "
                     f"{job_s:7.0f} {rest:7.0f}")
    lines.append("(rest: start-up, loading, writing and scoring; job times have a 1 s resolution)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cores", default="all", help="snakemake --cores (default: all)")
    ap.add_argument("--keep", type=Path, help="clone into this (new) folder and keep it")
    args = ap.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="qsmbench-default-run-"))
    if args.keep and args.keep.exists():
        ap.error(f"--keep {args.keep}: the folder exists; give a new one")
    repo, cache = work / "repo", work / "cache"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    cache.mkdir(parents=True)
    env = {**os.environ, "QSMBENCH_CACHE": str(cache)}
    cores = os.cpu_count() if args.cores == "all" else int(args.cores)

    ref_before = reference_loop_s()
    wall, cpu, peak_mb, done = timed([SNAKEMAKE, "--cores", str(args.cores)], cwd=repo, env=env)
    ref_after = reference_loop_s()
    rc = done.returncode
    (work / "snakemake.out").write_text(done.stdout)

    logs = sorted((repo / ".snakemake" / "log").glob("*.snakemake.log"))
    spans = job_spans(logs[-1].read_text()) if logs else []
    report = repo / "results" / "report" / "index.html"
    print(f"# default run of {head} (fresh clone, empty cache), snakemake --cores {args.cores} ({cores} cores)")
    print(f"# reference loop (bench_dag.reference_loop_s) {ref_before:.3f} s before, {ref_after:.3f} s after")
    print(f"wall {wall:.0f} s ({int(wall // 60)} min {wall % 60:.0f} s; target {TARGET_S:.0f} s: "
          f"{'met' if wall <= TARGET_S else 'NOT met'}), CPU {cpu:.0f} s, largest process {peak_mb:.0f} MB, exit {rc}, "
          f"report {'written' if report.exists() else 'MISSING'}")
    print()
    if not spans:
        print(f"# no job times read from Snakemake's log ({logs[-1] if logs else 'none found'}): "
              "its format may have changed (job_spans expects Snakemake 9's)")
    print(tables(spans, method_seconds(repo / "results"), cores))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\n# kept: {work} (snakemake.out, repo/, cache/)")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
