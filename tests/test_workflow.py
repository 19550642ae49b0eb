"""The tiny end-to-end workflow run (offline, CPU, a few seconds) and its error handling."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")

FAILING_PLUGIN = '''
from qsmbench.method import Method

class AlwaysFails(Method):
    """Fails on purpose (workflow test)."""
    name = "always_fails"
    references = ["none"]

    def reconstruct(self, vol):
        raise RuntimeError("this method is broken on purpose")
'''


def tiny_config(**extra):
    cfg = {
        "datasets": {"tiny": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0],
                              "seed": 1, "calcification": True}},
        "perturbations": ["none"],
        "methods": {"tkd": {}, "tkd_shmueli": {"method": "tkd", "params": {"variant": "shmueli"}},
                    "cfl2": {}},
    }
    cfg.update(extra)
    return cfg


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "always_fails.py").write_text(FAILING_PLUGIN)
    cfg = tiny_config(method_dirs=[str(plugins)])
    cfg["methods"]["always_fails"] = {}
    proc = snakemake(tmp_path / "run", cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    table = pd.read_parquet(run / "results" / "metrics.parquet")
    html = (run / "results" / "report" / "index.html").read_text()
    for method in ("tkd", "tkd_shmueli", "cfl2"):
        rows = table[(table.method == method) & (table.status == "ok")]
        assert {"rmse", "nrmse", "pearson", "psnr"} <= set(rows.metric)
        assert method in html
    failed = table[table.method == "always_fails"]
    assert set(failed.status) == {"run_failed"}
    assert "this method is broken on purpose" in failed.reason.iloc[0]
    assert "this method is broken on purpose" in html
    record = json.loads((run / "results/recon/tiny/none/always_fails/run.json").read_text())
    assert record["status"] == "failed"
    assert (run / "logs/recon/tiny/none/tkd.log").exists()
    # provenance: the seed and parameters are in the table
    tkd = table[table.method == "tkd_shmueli"].iloc[0]
    assert json.loads(tkd.parameters)["variant"] == "shmueli" and tkd.seed > 0
    again = snakemake(run, cfg, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    # every reconstruct job scored its own run: there are no evaluate jobs
    assert not (run / "logs" / "metrics").exists() and (run / "results/metrics/tiny/none/tkd.json").exists()
    # re-scoring a finished run runs no method and rewrites the metrics files bitwise identically
    # (the scores do not depend on the job's threads), so Snakemake has nothing to redo ...
    before = {p: p.read_bytes() for p in (run / "results/metrics").rglob("*.json")}

    def rescore():
        proc = subprocess.run([sys.executable, "-m", "qsmbench.cli", "rescore", str(run)], capture_output=True,
                              text=True, cwd=run)
        assert proc.returncode == 0, proc.stderr
        assert f"re-scored {len(before)} reconstruction(s)" in proc.stdout

    rescore()
    assert {p: p.read_bytes() for p in (run / "results/metrics").rglob("*.json")} == before
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(run, cfg, "-n"))
    # ... and when a score changes (here: TKD's χ map replaced by its double), the next run
    # re-aggregates and redraws without reconstructing anything
    chi_path = run / "results/recon/tiny/none/tkd/chi_ppm.nii.gz"
    from qsmbench import io
    chi, affine, _ = io.read_nifti(chi_path)
    io.write_nifti(chi_path, 2 * chi, affine)
    rescore()
    changed = json.loads((run / "results/metrics/tiny/none/tkd.json").read_text())
    assert changed != json.loads(before[run / "results/metrics/tiny/none/tkd.json"])
    plan = snakemake(run, cfg, "-n")
    planned = plan.stdout + plan.stderr
    assert "rule aggregate:" in planned and "rule render_report:" in planned, planned
    assert "rule reconstruct:" not in planned and "rule simulate_phantom:" not in planned, planned


@pytest.mark.slow
@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["methods"].update(nosuch={}), "key 'methods.nosuch': unknown method 'nosuch'"),
    (lambda c: c["datasets"]["tiny"].update(shape=[24, "x", 20]), "key 'datasets.tiny.shape.1'"),
])
def test_bad_config_stops_before_any_job(tmp_path, mutate, message):
    cfg = tiny_config()
    mutate(cfg)
    proc = snakemake(tmp_path / "run", cfg)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "results").exists()


# --------------------------------------------------------------------------- --configfile replaces the default
MY_CONFIG = {"datasets": {"ph": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0],
                                 "seed": 1}},
             "perturbations": ["none"],
             "methods": {"tkd": {}, "cfl2": {}}}


def repo_like(workdir: Path) -> Path:
    """A working directory holding the repository's config/ (config/config.yaml: the default with
    its own dataset and nine method runs, some of whose perturbation filters name perturbations
    MY_CONFIG does not have): a user's --configfile there must replace it, never merge with it."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "config", workdir / "config")
    return workdir


def run_snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def planned_jobs(out: str) -> dict[str, list[str]]:
    """{rule: [its wildcards lines]} from a dry run's output."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=rule \w+:)", out):
        m = re.match(r"rule (\w+):", block)
        if m:
            w = re.search(r"wildcards: (.*)", block)
            jobs.setdefault(m.group(1), []).append(w.group(1) if w else "")
    return jobs


def test_configfile_replaces_the_default_dry_run(tmp_path):
    work = repo_like(tmp_path / "run")
    (work / "my.yaml").write_text(yaml.safe_dump(MY_CONFIG))
    proc = run_snakemake(work, "-n", "--cores", "1", "--configfile", str(work / "my.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert sorted(jobs["reconstruct"]) == ["dataset=ph, perturbation=none, run=cfl2",
                                           "dataset=ph, perturbation=none, run=tkd"]
    assert jobs["simulate_phantom"] == ["dataset=ph"] and "pretrain" not in jobs and "perturb" not in jobs
    # without --configfile the default is loaded (and --config still applies on top of it)
    proc = run_snakemake(work, "-n", "--cores", "1", "--config", "strict_datasets=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {w.split("run=")[1] for w in planned_jobs(proc.stdout + proc.stderr)["reconstruct"]}
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert runs == set(default["methods"])
    # its two training runs (uqsm, qsmnet) take turns: each pretrain job holds the `training`
    # resource, which the default profile limits to 1, so they never hold both cores together
    pretrain = re.findall(r"rule pretrain:.*?wildcards: run=(\w+).*?resources: ([^\n]*)", proc.stdout + proc.stderr,
                          re.S)
    assert sorted(run for run, _ in pretrain) == ["qsmnet", "uqsm"]
    assert all(re.search(r"\btraining=1\b", res) for _, res in pretrain), pretrain
    assert yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())["resources"] == ["training=1"]


@pytest.mark.slow
def test_configfile_replaces_the_default_real_run(tmp_path):
    work = repo_like(tmp_path / "run")
    (work / "my.yaml").write_text(yaml.safe_dump(MY_CONFIG))
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(work / "my.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (work / "results" / "recon" / "ph" / "none").iterdir()) == ["cfl2", "tkd"]
    assert sorted(p.name for p in (work / "results" / "data").iterdir()) == ["ph"]
    table = pd.read_csv(work / "results" / "metrics.csv")
    assert set(table.method) == {"tkd", "cfl2"} and set(table.dataset) == {"ph"}
    record = json.loads((work / "results/recon/ph/none/tkd/run.json").read_text())
    assert record["profile_requested"] == "auto" and record["profile_reason"].startswith("auto → ")
    assert record["device"].startswith("cpu (")


# --------------------------------------------------------------------------- datasets that cannot be had
def unavailable_config(server_url: str) -> dict:
    """The tiny phantom, gated RC2 data that are absent, and the 2016 challenge from a mirror that
    does not answer (a closed port on 127.0.0.1)."""
    return {"datasets": {"ph": MY_CONFIG["datasets"]["ph"],
                         "rc2_sim1snr1": {"type": "manifest", "manifest": "rc2_sim1snr1"},
                         "qsm2016": {"type": "manifest", "manifest": "qsm2016", "mirror": server_url}},
            "perturbations": ["none", {"orientation": {"angles_deg": [0]}, "datasets": ["rc2_sim1snr1", "qsm2016"]}],
            "methods": {"tkd": {}}}


def closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def offline_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSMBENCH_") or k == "QSMBENCH_CACHE"}
    env["QSMBENCH_DATA"] = str(tmp_path / "empty-data")
    return env


def test_unavailable_datasets_are_skipped_with_a_warning_or_stop_when_strict(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "my.yaml").write_text(yaml.safe_dump(unavailable_config(closed_port())))
    env = offline_env(tmp_path)
    proc = run_snakemake(work, "-n", "--cores", "1", "--configfile", str(work / "my.yaml"), env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"SKIPPED dataset 'rc2_sim1snr1' is gated .*'qsmbench fetch rc2_sim1snr1' explains how to "
                     r"get access", out)
    assert re.search(r"SKIPPED dataset 'qsm2016' cannot be downloaded now: http://127.0.0.1:\d+/qsm2016/\S+ is "
                     r"unreachable .*Run 'qsmbench fetch qsm2016'", out)
    assert out.count("SKIPPED") == 2
    jobs = planned_jobs(out)
    assert jobs["reconstruct"] == ["dataset=ph, perturbation=none, run=tkd"] and "prepare_dataset" not in jobs
    # a job re-parsing the workflow on a cluster node (Snakemake's remote mode) follows the main
    # process's decision (recorded in .snakemake/qsmbench/not_run.json), silently: the report's
    # inputs do not name the skipped datasets
    node = run_snakemake(work, "results/report/index.html", "-n", "--mode", "remote", "--cores", "1",
                         "--configfile", str(work / "my.yaml"), env=env)
    node_out = node.stdout + node.stderr
    assert node.returncode == 0, node_out[-3000:]
    assert "SKIPPED" not in node_out and "rule render_report" in node_out
    assert "rc2_sim1snr1" not in node_out and "qsm2016" not in node_out
    strict = run_snakemake(work, "-n", "--cores", "1", "--configfile", str(work / "my.yaml"),
                           "--config", "strict_datasets=true", env=env)
    err = strict.stdout + strict.stderr
    assert strict.returncode != 0
    assert "2 dataset(s) cannot run (strict_datasets: true)" in err
    assert "dataset 'rc2_sim1snr1' is gated" in err and "'qsmbench fetch rc2_sim1snr1'" in err
    assert "dataset 'qsm2016' cannot be downloaded now" in err
    assert not (work / "results").exists()


@pytest.mark.slow
def test_skipped_datasets_are_listed_under_not_run_in_the_report(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "my.yaml").write_text(yaml.safe_dump(unavailable_config(closed_port())))
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(work / "my.yaml"), env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (work / "results" / "report" / "index.html").read_text()
    not_run = page[page.index('id="table-not-run"'):]
    not_run = not_run[:not_run.index("</figure>")]
    assert "rc2_sim1snr1" in not_run and "qsmbench fetch rc2_sim1snr1" in not_run and "qsm2016" in not_run


@pytest.mark.skipif(bool(__import__("qsmbench.devices", fromlist=["x"]).cuda_devices()), reason="has a CUDA device")
def test_cuda_asked_where_there_is_none_stops_at_start_up(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    cfg = {**MY_CONFIG, "methods": {"tkd": {}, "inr_qsm_fast": {}}, "device": "cuda"}
    (work / "my.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(work, "-n", "--cores", "1", "--configfile", str(work / "my.yaml"))
    assert proc.returncode != 0
    assert "my.yaml): key 'device': 'cuda' asks for a CUDA GPU but this machine has none" in proc.stdout + proc.stderr
    assert "rule reconstruct" not in proc.stdout
    # device: cpu never asks for a GPU; auto asks for one for the GPU-capable run only (the others
    # declare no gpu resource at all: "none")
    for device, gpus in (("cpu", {"tkd": "none", "inr_qsm_fast": "none"}),
                         ("auto", {"tkd": "none", "inr_qsm_fast": "1"})):
        (work / "my.yaml").write_text(yaml.safe_dump({**cfg, "device": device}))
        proc = run_snakemake(work, "-n", "--cores", "1", "--configfile", str(work / "my.yaml"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        blocks = re.findall(r"rule reconstruct:.*?run=(\w+)\n.*?resources: ([^\n]*)", proc.stdout + proc.stderr, re.S)
        found = {run: (re.search(r"\bgpu=(\d)", res) or [None, "none"])[1] for run, res in blocks}
        assert found == gpus, device
