"""Reproducibility: bitwise reruns, the provenance columns and the `qsmbench provenance` command."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from qsmbench import provenance
from qsmbench.io import load_volume
from qsmbench.phantom import write_phantom
from qsmbench.runner import CHI_FILE, run_job, run_method

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vol") / "tiny"
    write_phantom(out, name="tiny", model="analytic", shape=(24, 24, 24), voxel_size_mm=(2.0, 2.0, 2.0), seed=1)
    return out


def _chi_bytes(run_json: Path) -> bytes:
    """The uncompressed NIfTI of a run's chi map (the gzip header carries a time; the content must not differ)."""
    with gzip.open(run_json.parent / CHI_FILE, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("method", ["tkd", "cfl2", "ilsqr", "medi"])
def test_classical_method_rerun_is_bitwise_identical(method, volume_dir, tmp_path):
    """The same job twice, each in its own isolated process (as the workflow runs it): same bytes."""
    records = []
    for k in range(2):
        run_json = tmp_path / f"run{k}" / "run.json"
        records.append(run_job(volume_dir, run_json, run_id=method, method=method, dataset="tiny",
                               perturbation="none", threads=1, profile="auto", device="cpu"))
        assert records[-1]["status"] == "ok", records[-1]["error"]
    a, b = _chi_bytes(tmp_path / "run0" / "run.json"), _chi_bytes(tmp_path / "run1" / "run.json")
    assert a == b
    chi = np.asarray(nib.load(tmp_path / "run0" / CHI_FILE).dataobj)
    assert np.count_nonzero(chi) > 0 and np.all(np.isfinite(chi))
    # the records agree on everything but times, memory and the start time
    varying = {"wall_s", "cpu_s", "prepare_s", "peak_rss_mb", "peak_gpu_mb", "started_utc", "isolation"}
    assert {k: v for k, v in records[0].items() if k not in varying} == \
        {k: v for k, v in records[1].items() if k not in varying}
    # provenance of the run
    rec = json.loads((tmp_path / "run0" / "run.json").read_text())
    assert rec["packages"]["numpy"] == np.__version__
    assert rec["packages_sha256"] == provenance.packages_digest(rec["packages"])
    assert rec["git_dirty"] == provenance.is_dirty(rec["git_commit"])


def test_deep_learning_method_is_bitwise_identical_on_the_cpu_with_a_fixed_seed(volume_dir):
    pytest.importorskip("torch")
    vol = load_volume(volume_dir)
    params = {"max_steps": 8, "min_steps": 8, "log_every": 4}
    runs = [run_method("inr_qsm_fast", vol, params=params, profile="quick", seed=s, device="cpu")
            for s in (123, 123, 124)]
    assert all(r.status == "ok" for r in runs), [r.record["error"] for r in runs]
    assert runs[0].chi_ppm.tobytes() == runs[1].chi_ppm.tobytes()
    assert runs[0].chi_ppm.tobytes() != runs[2].chi_ppm.tobytes()  # the seed matters: the test can fail
    det = runs[0].record["determinism"]
    assert det["torch_deterministic_algorithms"] is True and det["cudnn_benchmark"] is False
    import torch

    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("inductor_first", [False, True])
def test_deterministic_torch_sets_what_use_deterministic_algorithms_sets(inductor_first):
    """Both flags of torch.use_deterministic_algorithms(True, warn_only=True) -- the operators' and
    TorchInductor's -- without importing Inductor when it is not loaded yet (a fresh process each)."""
    pytest.importorskip("torch")
    code = "\n".join([
        "import os, sys",
        "os.environ.pop('TORCHINDUCTOR_DETERMINISTIC', None)",
        "import torch",
        *(["import torch._inductor.config"] if inductor_first else []),
        "from qsmbench.runner import deterministic_torch",
        "assert not torch.are_deterministic_algorithms_enabled()",
        "det = deterministic_torch()",
        "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),",
        "      'torch._inductor' in sys.modules, det['torch_deterministic_algorithms'])",
        "import torch._inductor.config as inductor",
        "print(inductor.deterministic)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", str(inductor_first), "True", "True"]


def test_classical_runs_record_no_torch_switches(volume_dir):
    result = run_method("tkd", load_volume(volume_dir), seed=1, device="cpu")
    assert "determinism" not in result.record


# --------------------------------------------------------------------------- provenance command
def qsmbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qsmbench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("prov") / "run"
    work.mkdir()
    cfg = {"datasets": {"tiny": {"type": "phantom", "model": "analytic", "shape": [24, 24, 24],
                                 "voxel_size_mm": [2.0, 2.0, 2.0], "seed": 1}},
           "perturbations": ["none"], "methods": {"tkd": {}}, "device": "cpu"}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--configfile",
                           str(work / "config.yaml"), "--cores", "2", "results/metrics.parquet"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.mark.slow
def test_results_rows_and_record_carry_the_provenance(finished_run):
    table = pd.read_parquet(finished_run / "results" / "metrics.parquet")
    record = json.loads((finished_run / "results" / "provenance.json").read_text())
    assert len(set(table.packages_sha256)) == 1 and set(table.git_dirty) <= {"true", "false"}
    (digest,) = set(table.packages_sha256)
    assert record["packages"][digest] == provenance.package_versions()
    assert record["config_hash"] == table.config_hash.iloc[0] and len(record["config_hash"]) == 12
    assert record["git_commits"] == sorted(set(table.git_commit))
    assert set(table.phantom_version) == {record["phantom_versions"]["tiny"][0]}
    assert record["data_sha256"]["tiny/none"] == sorted(set(table.data_sha256)) and table.data_sha256.iloc[0]


@pytest.mark.slow
def test_provenance_command_on_a_finished_run(finished_run, tmp_path):
    proc = qsmbench("provenance", finished_run / "results", "--configfile", finished_run / "config.yaml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    record = json.loads((finished_run / "results" / "provenance.json").read_text())
    assert record["git_commits"][0] in out and record["config_hash"] in out
    assert "[same] config hash" in out and "[same] package versions" in out and "[same] phantom version" in out
    now = provenance.git_commit()
    dirty = bool(provenance.is_dirty(now)) or record["git_dirty"]
    assert ("[DIFFERENT] uncommitted changes" in out) == dirty
    assert ("verdict: this checkout would reproduce" in out) == (not dirty)
    # the workflow folder works as well as its results/ folder; --check exits 1 when it would not reproduce
    check = qsmbench("provenance", finished_run, "--check")
    assert check.returncode == (1 if dirty else 0) and "results folder:" in check.stdout
    # another configuration: a different config hash
    other = yaml.safe_load((finished_run / "config.yaml").read_text())
    other["methods"]["cfl2"] = {}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    proc = qsmbench("provenance", finished_run / "results", "--configfile", tmp_path / "other.yaml", "--check")
    assert proc.returncode == 1 and "[DIFFERENT] config hash" in proc.stdout


def test_provenance_command_rejects_a_folder_that_is_not_a_results_folder(tmp_path):
    proc = qsmbench("provenance", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a qsmbench results folder" in proc.stderr and "metrics.parquet" in proc.stderr
    proc = qsmbench("provenance", tmp_path / "missing")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "metrics.parquet").write_text("not parquet")
    (tmp_path / "provenance.json").write_text("{}")
    proc = qsmbench("provenance", tmp_path)
    assert proc.returncode == 2 and "is not a qsmbench provenance record" in proc.stderr
