"""Isolated method runs: a method that hangs, eats memory, crashes, prints gigabytes or litters its
working folder ends its own run (status timeout / oom / failed) and nothing else; the workflow
finishes with a report; an interrupted parent leaves no orphan and no record.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from qsmbench import isolate, runner
from qsmbench.io import read_nifti, save_volume
from qsmbench.method import Method

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")

HEAD = "import os, sys, time\nfrom pathlib import Path\n\nimport numpy as np\nfrom qsmbench.method import Method\n"
PLUGINS = {
    "hangs": '''
class Hangs(Method):
    """Never returns."""
    name = "hangs"
    references = ["none"]

    def reconstruct(self, vol):
        print("starting to hang", flush=True)
        while True:
            time.sleep(0.05)
''',
    "hog": '''
class Hog(Method):
    """Allocates without bound (64 MB a step, touched)."""
    name = "hog"
    references = ["none"]

    def reconstruct(self, vol):
        keep = []
        while True:
            keep.append(np.ones(2**23))
''',
    "always_fails": '''
class AlwaysFails(Method):
    """Raises, always."""
    name = "always_fails"
    references = ["none"]

    def reconstruct(self, vol):
        print("about to fail", flush=True)
        raise RuntimeError("this method is broken on purpose")
''',
    "crashes": '''
class Crashes(Method):
    """Kills its own interpreter the hard way (as a crash in compiled code would)."""
    name = "crashes"
    references = ["none"]

    def reconstruct(self, vol):
        os.abort()
''',
    "messy": '''
class Messy(Method):
    """Correct result, but prints a lot and leaves stray files in its working folder."""
    name = "messy"
    references = ["none"]

    def reconstruct(self, vol):
        Path("chi_ppm.nii.gz").write_text("not a NIfTI")
        Path("run.json").write_text("{}")
        Path(os.environ["TMPDIR"], "scratch.bin").write_bytes(b"x" * 1000)
        line = "y" * 99 + "\\n"
        for _ in range(30_000):          # 3 MB
            sys.stdout.write(line)
        print("the last line", flush=True)
        return vol.field_ppm * vol.mask
''',
    "slowtrain": '''
class SlowTrain(Method):
    """Trains forever (prepare never returns)."""
    name = "slowtrain"
    references = ["none"]
    uses = {"training"}

    def prepare(self, train):
        print("training...", flush=True)
        while True:
            time.sleep(0.05)

    def reconstruct(self, vol):
        return vol.field_ppm * vol.mask
''',
    "quicktrain": '''
class QuickTrain(Method):
    """Trains instantly and says so."""
    name = "quicktrain"
    references = ["none"]
    uses = {"training"}

    def prepare(self, train):
        self.notes.append("trained")
        self.training_record = {"epochs": 1}

    def reconstruct(self, vol):
        return vol.field_ppm * vol.mask
''',
    "selfterm": '''
class SelfTerm(Method):
    """Sends itself SIGTERM: looks like an interrupted run, not a method failure."""
    name = "selfterm"
    references = ["none"]

    def reconstruct(self, vol):
        os.kill(os.getpid(), 15)
        time.sleep(30)
''',
}


@pytest.fixture(autouse=True, params=["fork", "spawn"])
def start(request, monkeypatch):
    """Every test with both ways of starting the child (qsmbench.isolate: a fork of this process
    where that is safe, else a new interpreter; QSMBENCH_ISOLATE_START=spawn forces the latter).
    The whole-workflow tests (marked slow) run once, with the default start: the two starts share
    everything above the child, which the unit-level tests here check with both."""
    if request.param == "spawn" and request.node.get_closest_marker("slow"):
        pytest.skip("workflow-level: once, with the default start (both starts are tested at the unit level)")
    monkeypatch.setenv("QSMBENCH_ISOLATE_START", request.param)
    return request.param


def _expected_start(start: str) -> str:
    return "fork" if start == "fork" and isolate.fork_possible() else "spawn"


@pytest.fixture
def plugins(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, body in PLUGINS.items():
        (folder / f"{name}.py").write_text(HEAD + body)
    return folder


@pytest.fixture
def volume_dir(tmp_path, small_volume):
    return save_volume(small_volume, tmp_path / "data")


def job(volume_dir, tmp_path, plugins, method, **kw):
    out = tmp_path / "recon" / method / "run.json"
    log = tmp_path / f"{method}.log"
    rec = runner.run_job(volume_dir, out, run_id=method, method=method, dataset="d", extra_dirs=[plugins],
                         log_path=log, **kw)
    saved = json.loads(out.read_text())
    assert saved["status"] == rec["status"]
    return rec, out.parent, log


# --------------------------------------------------------------------------- run_job
def test_isolated_run_measures_inside_the_child_and_matches_in_process(volume_dir, tmp_path, plugins, start):
    expected = _expected_start(start)
    rec, folder, log = job(volume_dir, tmp_path, plugins, "tkd")
    assert rec["status"] == "ok" and rec["wall_s"] > 0 and rec["peak_rss_mb"] > 10
    assert rec["isolation"]["start"] == expected and f", {expected}) -----" in log.read_text()
    assert rec["isolation"]["exit_code"] == 0 and rec["isolation"]["elapsed_s"] >= rec["wall_s"]
    assert rec["log_tail"] is None
    chi, _, _ = read_nifti(folder / runner.CHI_FILE)
    out2 = tmp_path / "inproc" / "run.json"
    rec2 = runner.run_job(volume_dir, out2, run_id="tkd", method="tkd", dataset="d", isolate=False)
    chi2, _, _ = read_nifti(out2.parent / runner.CHI_FILE)
    np.testing.assert_array_equal(chi, chi2)  # same seed, same code: the same bits
    assert rec2["seed"] == rec["seed"] and rec2["isolation"] is None
    assert sorted(p.name for p in folder.iterdir()) == [runner.CHI_FILE, runner.RUN_FILE]


def test_hanging_method_times_out_with_its_stack_in_the_log(volume_dir, tmp_path, plugins):
    t0 = time.monotonic()
    rec, folder, log = job(volume_dir, tmp_path, plugins, "hangs", timeout_s=10)
    assert time.monotonic() - t0 < 60
    assert rec["status"] == "timeout" and "wall-clock limit of 10 s" in rec["error"]
    assert rec["isolation"]["exit_code"] == -signal.SIGKILL
    # the stack dump (SIGUSR1 -> faulthandler) shows where it hung
    assert "hangs.py" in log.read_text() and "in reconstruct" in rec["log_tail"]
    assert "starting to hang" in log.read_text()
    assert not (folder / runner.CHI_FILE).exists()
    assert not list(folder.glob(".qsmbench-run-*"))


def test_method_allocating_without_bound_is_killed_as_oom(volume_dir, tmp_path, plugins):
    rec, folder, _ = job(volume_dir, tmp_path, plugins, "hog", mem_limit_mb=400, timeout_s=120)
    assert rec["status"] == "oom" and "exceeded the limit of 400 MB" in rec["error"]
    assert rec["isolation"]["peak_tree_rss_mb"] > 400
    assert not (folder / runner.CHI_FILE).exists()


def test_exception_and_crash_are_failures_with_the_log_tail(volume_dir, tmp_path, plugins):
    rec, _, _ = job(volume_dir, tmp_path, plugins, "always_fails")
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: this method is broken on purpose"
    assert "about to fail" in rec["log_tail"] and "Traceback" in rec["traceback"]
    rec, _, _ = job(volume_dir, tmp_path, plugins, "crashes")
    assert rec["status"] == "failed" and "killed by SIGABRT" in rec["error"]
    assert "Fatal Python error" in rec["log_tail"]  # faulthandler's stack of the crash


def test_output_is_bounded_and_stray_files_stay_in_the_scratch_folder(volume_dir, tmp_path, plugins, monkeypatch):
    monkeypatch.setattr(isolate, "HEAD_BYTES", 100_000)
    monkeypatch.setattr(isolate, "TAIL_BYTES", 50_000)
    rec, folder, log = job(volume_dir, tmp_path, plugins, "messy")
    assert rec["status"] == "ok"
    assert rec["isolation"]["output_bytes"] > 3_000_000 and rec["isolation"]["output_omitted_bytes"] > 2_800_000
    text = log.read_text()
    assert log.stat().st_size < 200_000 and "bytes of output left out" in text and "the last line" in text
    assert sorted(p.name for p in folder.iterdir()) == [runner.CHI_FILE, runner.RUN_FILE]
    chi, _, _ = read_nifti(folder / runner.CHI_FILE)  # the method's result, not its stray file
    assert chi.shape == (24, 24, 20)
    assert json.loads((folder / runner.RUN_FILE).read_text())["method"] == "messy"


def test_stale_scratch_folders_are_removed(volume_dir, tmp_path, plugins):
    stale = tmp_path / "recon" / "tkd" / ".qsmbench-run-killed"
    (stale / "work").mkdir(parents=True)
    job(volume_dir, tmp_path, plugins, "tkd")
    assert not stale.exists()


def test_a_child_killed_by_a_signal_other_than_ours_is_an_interruption(volume_dir, tmp_path, plugins):
    out = tmp_path / "recon" / "selfterm" / "run.json"
    with pytest.raises(runner.RunInterrupted, match="SIGTERM"):
        runner.run_job(volume_dir, out, run_id="selfterm", method="selfterm", dataset="d", extra_dirs=[plugins])
    assert not out.exists() and not list(out.parent.glob(".qsmbench-run-*"))


def _start_parent(volume_dir, tmp_path, plugins) -> tuple[subprocess.Popen, psutil.Process]:
    """A process running run_job on the hanging plugin; returns it and its isolated child."""
    # SIGINT as in an interactive Ctrl-C, even where the test itself was started with SIGINT ignored
    # (a background job of a non-interactive shell, e.g. `nohup .ci/run &`, passes that on)
    code = textwrap.dedent(f"""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from qsmbench.runner import run_job
        run_job({str(volume_dir)!r}, {str(tmp_path / 'recon' / 'hangs' / 'run.json')!r}, run_id="hangs",
                method="hangs", dataset="d", extra_dirs=[{str(plugins)!r}], timeout_s=300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # its only child: a new interpreter (python -m qsmbench._child) or a fork running the same code
        kids = psutil.Process(parent.pid).children()
        if kids:
            time.sleep(1.5)  # let the child import and register its parent watch
            return parent, kids[0]
        time.sleep(0.1)
    parent.kill()
    raise AssertionError("the isolated process did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_parent_stops_the_child_and_records_nothing(volume_dir, tmp_path, plugins, sig):
    parent, child = _start_parent(volume_dir, tmp_path, plugins)
    os.kill(parent.pid, sig)
    parent.wait(30)
    assert parent.returncode != 0
    gone, alive = psutil.wait_procs([child], timeout=10)
    assert not alive, f"the isolated process outlived its parent ({sig.name})"
    assert not (tmp_path / "recon" / "hangs" / "run.json").exists()


def test_pretraining_is_isolated_too(tmp_path, plugins):
    out = tmp_path / "pretrain" / "quicktrain.json"
    rec = runner.pretrain_job(out, run_id="quicktrain", method="quicktrain", params={}, profile="quick",
                              extra_dirs=[plugins])
    assert rec["status"] == "ok" and rec["training"] == {"epochs": 1} and rec["notes"] == ["trained"]
    assert json.loads(out.read_text())["status"] == "ok"
    out = tmp_path / "pretrain" / "slowtrain.json"
    rec = runner.pretrain_job(out, run_id="slowtrain", method="slowtrain", params={}, profile="quick",
                              extra_dirs=[plugins], timeout_s=20, log_path=tmp_path / "slowtrain.log")
    assert rec["status"] == "timeout" and "training..." in (tmp_path / "slowtrain.log").read_text()
    assert json.loads(out.read_text())["status"] == "timeout"
    assert sorted(p.name for p in (tmp_path / "pretrain").iterdir()) == ["quicktrain.json", "slowtrain.json"]


def test_in_process_memory_error_is_oom(small_volume):
    class Greedy(Method):
        """Raises MemoryError."""
        name = "greedy"
        references = ["none"]

        def reconstruct(self, vol):
            raise MemoryError("no more")

    res = runner.run_method(Greedy(), small_volume)
    assert res.status == "oom" and res.record["error"] == "MemoryError: no more"


def test_bounded_log_keeps_head_and_tail(tmp_path):
    log = isolate.BoundedLog(tmp_path / "x.log", head_bytes=10, tail_bytes=5)
    for chunk in (b"0123456", b"789abcdef", b"ghij\nklmno"):
        log.feed(chunk)
    log.close()
    text = (tmp_path / "x.log").read_text()
    assert text.startswith("0123456789") and text.endswith("klmno")
    assert "[... 11 bytes of output left out" in text
    assert log.tail_text() == "0123456789abcdefghij\nklmno"  # the last lines of all the output


def test_log_tail_keeps_the_runs_last_output_above_a_stack_dump(tmp_path):
    """A timeout dumps every thread's stack (faulthandler) before the kill: run.json's log_tail
    keeps the method's last output and the informative frames; the frames every thread shares
    (threading's bootstrap, ``python -m``) are left out of the tail -- the log keeps them."""
    boot = ['  File "/usr/lib/python3.11/threading.py", line 982 in run',
            '  File "/usr/lib/python3.11/threading.py", line 1045 in _bootstrap_inner',
            '  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap']
    dump = []
    for i in range(7):
        dump += [f"Thread 0x{i:016x} (most recent call first):", f'  File "/m/worker.py", line {i + 1} in loop',
                 *boot, ""]
    dump += ["Current thread 0x00007f0000000000 (most recent call first):",
             '  File "/m/solver.py", line 9 in iterate', '  File "<frozen runpy>", line 88 in _run_code',
             '  File "<frozen runpy>", line 198 in _run_module_as_main']
    assert len(dump) > isolate.TAIL_LINES
    log = isolate.BoundedLog(tmp_path / "x.log")
    log.feed(("entering the solver loop\n" + "\n".join(dump) + "\n").encode())
    log.close()
    tail = log.tail_text().splitlines()
    assert tail[0] == "entering the solver loop" and tail[-1] == '  File "/m/solver.py", line 9 in iterate'
    assert sum("in loop" in ln for ln in tail) == 7 and not any("threading.py" in ln or "runpy" in ln for ln in tail)
    assert "_bootstrap_inner" in (tmp_path / "x.log").read_text()


# --------------------------------------------------------------------------- the workflow
def _snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(workdir / "config.yaml"), *args],
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_workflow_survives_hanging_greedy_and_failing_plugins(tmp_path, plugins):
    """`snakemake --cores all` finishes with a report; the other methods' results are complete."""
    cfg = {"datasets": {"tiny": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0],
                                 "seed": 1, "calcification": True}},
           "perturbations": ["none", "noise-snr20-seed1"],
           "methods": {"tkd": {}, "cfl2": {}, "hangs": {"timeout_s": 5}, "hog": {"mem_mb": 500},
                       "always_fails": {}},
           "method_dirs": [str(plugins)]}
    run = tmp_path / "run"
    proc = _snakemake(run, cfg, "--cores", "all")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Using workflow specific profile" in proc.stderr  # profiles/default: keep-going, rerun-incomplete
    table = pd.read_parquet(run / "results" / "metrics.parquet")
    runs = table.drop_duplicates(["perturbation", "method"]).set_index(["perturbation", "method"])["run_status"]
    for pert in ("none", "noise-snr20-seed1"):
        assert runs[pert, "hangs"] == "timeout" and runs[pert, "hog"] == "oom"
        assert runs[pert, "always_fails"] == "failed"
        for method in ("tkd", "cfl2"):
            rows = table[(table.method == method) & (table.perturbation == pert)]
            assert set(rows.run_status) == {"ok"} and {"rmse", "nrmse", "xsim"} <= set(rows[rows.status == "ok"].metric)
    html = (run / "results" / "report" / "index.html").read_text()
    assert "timeout" in html and "oom" in html and "this method is broken on purpose" in html
    assert "about to fail" in html  # the log tail is in the report's failure table
    hog = json.loads((run / "results/recon/tiny/none/hog/run.json").read_text())
    assert hog["isolation"]["mem_limit_mb"] == 500 and "500 MB" in hog["error"]
    # its output (here at least the stack dump taken at the timeout) is in the job's log
    assert "output of the isolated process" in (run / "logs/recon/tiny/none/hangs.log").read_text()


@pytest.mark.slow
def test_default_profile_keeps_going_after_a_failed_job(tmp_path, plugins):
    """A job that fails (here: a method that SIGTERMs itself, i.e. an interruption) stops nothing else."""
    cfg = {"datasets": {"tiny": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0]}},
           "perturbations": ["none", "noise-snr20-seed1", "noise-snr10-seed1"],
           "methods": {"selfterm": {}, "tkd": {}}, "method_dirs": [str(plugins)]}
    run = tmp_path / "run"
    proc = _snakemake(run, cfg, "--cores", "1")
    assert proc.returncode != 0
    assert "Using workflow specific profile" in proc.stderr
    for pert in ("none", "noise-snr20-seed1", "noise-snr10-seed1"):
        assert (run / f"results/metrics/tiny/{pert}/tkd.json").exists(), pert
        assert not (run / f"results/recon/tiny/{pert}/selfterm/run.json").exists()


def test_the_child_is_a_fork_of_a_single_threaded_parent_without_torch(volume_dir, tmp_path, plugins, start):
    """A fresh process (as a workflow job is) forks its child: no interpreter start, no imports.
    The fork has its own working directory, TMPDIR and environment, and its output in the log."""
    if not sys.platform.startswith("linux"):
        pytest.skip("fork start on Linux only")
    out = tmp_path / "recon" / "envcheck" / "run.json"
    (plugins / "envcheck.py").write_text(HEAD + """
import tempfile


class EnvCheck(Method):
    name = "envcheck"
    references = ["none"]

    def reconstruct(self, vol):
        print("cwd", os.getcwd(), "tmp", tempfile.gettempdir(), "threads", os.environ.get("QSMBENCH_THREADS"),
              "torch" in sys.modules, flush=True)
        return vol.field_ppm * vol.mask
""")
    code = textwrap.dedent(f"""
        import json, sys
        from qsmbench.runner import run_job
        rec = run_job({str(volume_dir)!r}, {str(out)!r}, run_id="envcheck", method="envcheck", dataset="d",
                      extra_dirs=[{str(plugins)!r}], threads=1, log_path={str(tmp_path / 'envcheck.log')!r})
        print(json.dumps([rec["status"], rec["isolation"]["start"]]))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1]) == ["ok", start]
    line = next(ln for ln in (tmp_path / "envcheck.log").read_text().splitlines() if ln.startswith("cwd "))
    _, cwd, _, tmp, _, threads, torch_loaded = line.split()
    assert Path(cwd).name == "work" and Path(cwd).parent.name.startswith(runner.SCRATCH_PREFIX)
    assert tmp == cwd and threads == "1" and torch_loaded == "False"


RETAIN_SCRIPT = """
import resource, sys
import numpy as np
from qsmbench.jobs import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def work():  # what a solver or a training step does: arrays of megabytes, allocated and freed
    keep = [np.ones(mb << 18, np.float32) for mb in (1, 3, 9, 27, 9, 3)]
    del keep
work()
before = faults()
for _ in range(10):
    work()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_job_processes_reuse_the_memory_they_free():
    """qsmbench.jobs.retain_freed_memory (called by every workflow job and isolated child): after a
    first round, the same allocations fault in no new pages -- by default glibc hands large
    blocks back to the kernel and faults them in again, zeroed, at the next allocation."""
    def page_faults(mode):
        out = subprocess.run([sys.executable, "-c", RETAIN_SCRIPT, mode], capture_output=True, text=True,
                             cwd=ROOT, check=True)
        return int(out.stdout.split()[-1])

    default, retained = page_faults("default"), page_faults("retain")
    assert default > 1000, default        # 10 rounds of ~52 MB: glibc returned (most of) it each time
    assert retained < 0.05 * default, (retained, default)
