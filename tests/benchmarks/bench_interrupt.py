"""Interrupted runs: kill a real tiny workflow at several points, run the same command again, and
compare the final table with an uninterrupted run's.

    python tests/benchmarks/bench_interrupt.py [--points all|NAME,...] [--workdir DIR] [--keep]

For each interruption point the workflow (32^3 embedded phantom; tkd, cfl2, ilsqr; the unperturbed
volume and two noise realisations) is started in its own process group, interrupted when the
point's condition holds (SIGKILL of the whole group, or SIGINT as a terminal's Ctrl-C sends it),
then the same command is run again to the end.  Printed per point: whether the rerun succeeded,
how many finished jobs it redid (outputs that existed, complete, before the rerun and were
rewritten: must be 0), whether any output was corrupt (every NIfTI, JSON, parquet, CSV and
PNG of results/ is read back), and whether the final table's values equal the uninterrupted
run's exactly.  tests/test_interrupt.py runs two of these points.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
KEY = ["dataset", "reference", "perturbation", "method", "seed", "metric"]

CONFIG = {
    "datasets": {"tiny": {"type": "phantom", "shape": [32, 32, 32], "voxel_size_mm": [3.0, 3.0, 3.0], "seed": 1,
                          "calcification": True}},
    "perturbations": ["none", {"noise": {"snr": [20], "seeds": 2}}],
    "methods": {"tkd": {}, "cfl2": {}, "ilsqr": {}},
}


def command(workdir: Path, config: Path, cores: int = 2) -> list[str]:
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(config),
            "--cores", str(cores)]


def run_to_end(workdir: Path, config: Path, log: Path, cores: int = 2, timeout: float = 1800) -> int:
    with open(log, "ab") as fh:
        return subprocess.run(command(workdir, config, cores), stdout=fh, stderr=subprocess.STDOUT,
                              timeout=timeout, env=_env()).returncode


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


# --------------------------------------------------------------------------- interruption points
def _run_jsons(w: Path) -> list[Path]:
    return list((w / "results" / "recon").glob("*/*/*/run.json"))


def _reconstruct_running(w: Path) -> bool:
    """A method's isolated process has started and its job has not finished."""
    for log in (w / "logs" / "recon").glob("*/*/*.log"):
        d, p, r = log.relative_to(w / "logs" / "recon").with_suffix("").parts
        if "output of the isolated process" in log.read_text(errors="replace") and \
                not (w / "results" / "recon" / d / p / r / "run.json").exists():
            return True
    return False


@dataclass
class Point:
    name: str
    signal: int
    ready: Callable[[Path], bool]
    what: str


POINTS = {p.name: p for p in [
    Point("kill-during-phantom", signal.SIGKILL, lambda w: (w / "logs" / "data" / "tiny.log").exists(),
          "SIGKILL of the group while simulate_phantom runs"),
    Point("kill-during-perturb", signal.SIGKILL, lambda w: any((w / "logs" / "perturbed").glob("*/*.log")),
          "SIGKILL while a perturb job runs"),
    Point("kill-mid-reconstruct", signal.SIGKILL, _reconstruct_running,
          "SIGKILL while a method's isolated process computes"),
    Point("kill-after-3-recons", signal.SIGKILL, lambda w: len(_run_jsons(w)) >= 3,
          "SIGKILL once 3 reconstructions are done"),
    Point("ctrl-c-after-1-recon", signal.SIGINT, lambda w: len(_run_jsons(w)) >= 1,
          "SIGINT to the group (Ctrl-C) once 1 reconstruction is done"),
    Point("kill-during-evaluate", signal.SIGKILL, lambda w: any((w / "logs" / "metrics").glob("*/*/*.log")),
          "SIGKILL while evaluate jobs run"),
    Point("kill-during-report", signal.SIGKILL, lambda w: (w / "logs" / "report.log").exists(),
          "SIGKILL while render_report / paper_figures run"),
    Point("ctrl-c-during-report", signal.SIGINT, lambda w: (w / "results" / "metrics.parquet").exists(),
          "SIGINT once the table is written (report and figures running)"),
]}


def interrupt(workdir: Path, config: Path, point: Point, log: Path, timeout: float = 900) -> str:
    """Start the workflow, send ``point.signal`` to its process group when ready; how it went."""
    with open(log, "ab") as fh:
        # Its own process group (the signal goes to the whole workflow, as a terminal's Ctrl-C does) with
        # SIGINT's default action: a shell starts background commands with SIGINT ignored, and an ignored
        # signal stays ignored across exec.
        proc = subprocess.Popen(command(workdir, config), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_env(),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        t0 = time.monotonic()
        while proc.poll() is None and not point.ready(workdir):
            if time.monotonic() - t0 > timeout:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            return f"finished before the point (exit {proc.returncode})"
        os.killpg(proc.pid, point.signal)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "did not stop within 120 s of the signal; killed"
        if point.signal != signal.SIGKILL:  # Ctrl-C: whatever the group left running is gone too
            try:
                os.killpg(proc.pid, 0)
                time.sleep(2)
            except ProcessLookupError:
                pass
        return f"interrupted at {time.monotonic() - t0:.1f} s (exit {proc.returncode})"


# --------------------------------------------------------------------------- checks
def incomplete_outputs(workdir: Path) -> set[str]:
    """Outputs Snakemake marked incomplete (its .snakemake/incomplete markers, base64 paths)."""
    out = set()
    folder = workdir / ".snakemake" / "incomplete"
    for marker in folder.rglob("*") if folder.exists() else []:
        if marker.is_file() and marker.name != "migration_underway":
            parts = marker.relative_to(folder).parts
            b64 = "".join(p.lstrip("@") for p in parts)
            try:
                out.add(base64.urlsafe_b64decode(b64).decode())
            except (ValueError, UnicodeDecodeError):
                pass
    return out


def snapshot(workdir: Path) -> dict[str, int]:
    """mtime of every finished job output (run.json, metric JSON, table) that is not incomplete."""
    res = workdir / "results"
    files = [*res.glob("recon/*/*/*/run.json"), *res.glob("metrics/*/*/*.json"), *res.glob("data/*/meta.json"),
             *res.glob("perturbed/*/*/meta.json"), *res.glob("metrics.parquet")]
    skip = incomplete_outputs(workdir)
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in files if str(p.relative_to(workdir)) not in skip}


def corrupt_outputs(workdir: Path) -> list[str]:
    """Every output under results/ that does not read back (names of the bad ones)."""
    import nibabel as nib  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    bad = []
    for path in sorted((workdir / "results").rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.name.endswith((".nii", ".nii.gz")):
                np.asarray(nib.load(path).dataobj)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".parquet":
                pd.read_parquet(path)
            elif path.suffix == ".csv":
                pd.read_csv(path)
            elif path.suffix == ".png":
                Image.open(path).verify()
            elif path.suffix == ".html":
                assert path.read_text().rstrip().endswith("</html>")
        except Exception as exc:  # noqa: BLE001 - any failure to read back is corruption
            bad.append(f"{path.relative_to(workdir)}: {type(exc).__name__}")
    return bad


def leftovers(workdir: Path) -> list[str]:
    """Temporary files and scratch folders under results/ (harmless, hidden; reported)."""
    res = workdir / "results"
    return sorted(str(p.relative_to(workdir)) for p in res.rglob(".*") if ".qsmtmp-" in p.name
                  or p.name.startswith(".qsmbench-run-"))


def same_table(a: Path, b: Path) -> tuple[bool, str]:
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    ta = pd.read_parquet(a).sort_values(KEY).reset_index(drop=True)
    tb = pd.read_parquet(b).sort_values(KEY).reset_index(drop=True)
    if len(ta) != len(tb) or not ta[KEY].equals(tb[KEY]):
        return False, f"rows differ ({len(ta)} vs {len(tb)})"
    va, vb = ta["value"].to_numpy(), tb["value"].to_numpy()
    same = (va == vb) | (np.isnan(va) & np.isnan(vb))
    status = (ta["status"] == tb["status"]).all() and (ta["run_status"] == tb["run_status"]).all()
    return bool(same.all() and status), f"{int((~same).sum())} of {len(va)} values differ"


@dataclass
class Outcome:
    point: str
    how: str
    rerun_rc: int
    redone: int
    corrupt: list[str]
    identical: bool
    detail: str
    leftovers: int


def check_point(base: Path, point: Point, reference: Path) -> Outcome:
    workdir = base / point.name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    log = workdir / "snakemake.log"
    how = interrupt(workdir, config, point, log)
    before = snapshot(workdir)
    rc = run_to_end(workdir, config, log)
    after = snapshot(workdir)
    redone = sum(1 for k, t in before.items() if after.get(k) != t)
    table = workdir / "results" / "metrics.parquet"
    identical, detail = same_table(reference, table) if table.exists() else (False, "no table")
    return Outcome(point.name, how, rc, redone, corrupt_outputs(workdir), identical, detail, len(leftovers(workdir)))


def reference_run(base: Path) -> Path:
    workdir = base / "reference"
    table = workdir / "results" / "metrics.parquet"
    if table.exists():
        return table
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    t0 = time.monotonic()
    rc = run_to_end(workdir, config, workdir / "snakemake.log")
    if rc != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {rc}); see {workdir / 'snakemake.log'}")
    print(f"uninterrupted run: {time.monotonic() - t0:.0f} s", flush=True)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="all", help=f"comma-separated, of: {', '.join(POINTS)}")
    ap.add_argument("--workdir", default=None, help="where to run (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the working folders")
    args = ap.parse_args(argv)
    names = list(POINTS) if args.points == "all" else args.points.split(",")
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="qsmbench-interrupt-"))
    os.environ.setdefault("QSMBENCH_CACHE", str(base / "cache"))
    reference = reference_run(base)
    rows = []
    for name in names:
        outcome = check_point(base, POINTS[name], reference)
        rows.append(outcome)
        print(f"{name:<24} {outcome.how:<40} rerun exit {outcome.rerun_rc}  redone {outcome.redone}  "
              f"corrupt {len(outcome.corrupt)}  identical {outcome.identical} ({outcome.detail})  "
              f"temp leftovers {outcome.leftovers}", flush=True)
    ok = sum(r.rerun_rc == 0 and r.redone == 0 and not r.corrupt and r.identical for r in rows)
    print(f"\n{ok} of {len(rows)} interruption points: rerun completed, no finished job redone, no corrupt output, "
          "final table identical to the uninterrupted run")
    if not args.keep and not args.workdir:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
