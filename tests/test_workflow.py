"""The tiny end-to-end workflow run (offline, CPU, a few seconds) and its error handling."""

import json
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
