"""Interrupted runs resume: kill a real (tiny) workflow, run the same command again, get the same table.

Two interruption points of tests/benchmarks/bench_interrupt.py (which tries eight): SIGKILL of
the whole process group while a method's isolated process computes, and Ctrl-C (SIGINT to the
group) once a reconstruction is done.  After each, the plain command must finish without
``--unlock`` (the stale lock is removed), without redoing a finished job, with no corrupt output,
and with exactly the uninterrupted run's values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
import bench_interrupt as bench  # noqa: E402

SMALL = {
    "datasets": {"tiny": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0], "seed": 1,
                          "calcification": True}},
    "perturbations": ["none", "noise-snr20-seed1"],
    "methods": {"tkd": {}, "cfl2": {}},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("interrupt")
    bench.CONFIG = SMALL
    return base, bench.reference_run(base)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["kill-mid-reconstruct", "ctrl-c-after-1-recon"])
def test_interrupted_run_resumes_to_the_same_table(reference, point):
    base, table = reference
    outcome = bench.check_point(base, bench.POINTS[point], table)
    assert outcome.how.startswith("interrupted"), outcome.how
    assert outcome.rerun_rc == 0, (base / point / "snakemake.log").read_text()[-3000:]
    assert outcome.redone == 0
    assert outcome.corrupt == []
    assert outcome.identical, outcome.detail


def test_incomplete_markers_are_decoded(tmp_path):
    import base64

    folder = tmp_path / ".snakemake" / "incomplete"
    folder.mkdir(parents=True)
    name = "results/recon/tiny/none/tkd/run.json"
    (folder / base64.urlsafe_b64encode(name.encode()).decode()).write_text("{}")
    assert bench.incomplete_outputs(tmp_path) == {name}


def test_stale_snakemake_locks_are_removed_only_when_no_instance_runs(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from qsmbench.jobs import release_stale_locks

    snake = tmp_path / ".snakemake"
    (snake / "locks").mkdir(parents=True)
    (snake / "locks" / "0.output.lock").write_text("results/metrics.parquet\n")
    root = Path(__file__).resolve().parent.parent
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom qsmbench.jobs import release_stale_locks\n"
                               f"print(release_stale_locks({str(snake)!r}), flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert holder.stdout.readline().strip() == "['0.output.lock']"  # no other instance: stale, removed
        (snake / "locks").mkdir()
        (snake / "locks" / "0.output.lock").write_text("results/metrics.parquet\n")  # the running instance's
        assert release_stale_locks(snake) == []  # another instance holds the directory: hands off
        assert (snake / "locks" / "0.output.lock").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # killed outright: the kernel releases its flock
        holder.wait()
    time.sleep(0.1)
    assert release_stale_locks(snake) == ["0.output.lock"] and not (snake / "locks").exists()
