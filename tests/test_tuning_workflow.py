"""The tiny workflow run with tuning on: default, oracle and L-curve rows side by side."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, SNAKEMAKE

PLAIN_PLUGIN = '''
import numpy as np

from qsmbench.method import Method


class Plain(Method):
    """Zero susceptibility, no tunable parameter (workflow test)."""
    name = "plain"
    references = ["none"]

    def reconstruct(self, vol):
        return np.zeros(vol.shape, np.float32)
'''


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """test_workflow.snakemake without its time limit (no wall-clock limits in tests: the shared
    machine can be slow)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_tiny_workflow_with_tuning(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "plain.py").write_text(PLAIN_PLUGIN)
    cfg = {
        "datasets": {"tiny": {"type": "phantom", "model": "analytic", "shape": [24, 24, 24],
                              "voxel_size_mm": [2.0, 2.0, 2.0], "seed": 3}},
        "perturbations": ["none"],
        "methods": {"tkd": {"tune_candidates": 3}, "cfl2": {"tune_candidates": 3}, "plain": {}},
        "tuning": ["default", "oracle", "lcurve"],
        "method_dirs": [str(plugins)],
    }
    run = tmp_path / "run"
    proc = snakemake(run, cfg, "results/report/index.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(run / "results" / "metrics.parquet")
    nrmse = table[(table.metric == "nrmse") & (table.status == "ok")]
    for method in ("tkd", "cfl2"):
        rows = nrmse[nrmse.method == method].set_index("tuning")
        assert set(rows.index) == {"default", "oracle", "lcurve"}
        # the oracle is the best of the candidates, so no worse than any other candidate
        assert json.loads(rows.loc["oracle", "tuned_value"])
        assert rows.loc["default", "tuned_value"] == ""
        tune = run / "results" / "tune" / "tiny" / "none" / method
        sel = json.loads((tune / "oracle" / "selection.json").read_text())
        cand = [json.loads((tune / f"candidate-{i}" / "score.json").read_text())["scores"]["nrmse"]
                for i in range(len(sel["candidates"]))]
        assert rows.loc["oracle", "value"] == pytest.approx(min(cand), rel=1e-6)
        record = json.loads((tune / "lcurve" / "run.json").read_text())
        assert record["tuning"]["mode"] == "lcurve" and record["tuning"]["candidates"] == sel["candidates"]
        assert record["tuning"]["selected_on"]["dataset"] == "tiny" and not record["tuning"]["transferred"]
        assert record["parameters"][sel["parameter"]] == record["tuning"]["value"]
    assert set(nrmse[nrmse.method == "plain"].tuning) == {"default"}
    assert len(list((run / "results" / "tune" / "tiny" / "none").glob("*/candidate-*"))) == 3 + 3
    html = Path(run / "results" / "report" / "index.html").read_text()
    assert "Tuning: default vs tuned" in html and "not tunable" in html and "(upper bound)" in html
    assert "L-curves · tiny · none" in html
    again = snakemake(run, cfg, "results/report/index.html", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
