"""A tiny workflow run with perturbations: the perturb rule, per-run filters, the Robustness section."""

import json

import pandas as pd
import pytest
from test_workflow import snakemake  # tests/ is on sys.path under pytest's default import mode


def tiny_config(**extra):
    cfg = {
        "datasets": {"tiny": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0],
                              "seed": 1}},
        "perturbations": ["none", {"noise": {"snr": [20], "seeds": 2}},
                          {"resolution": {"voxel_size_mm": [[7.5, 7.5, 10]]}}, "orient-30"],
        "methods": {"tkd": {}, "cfl2": {"perturbations": ["noise"]}},
    }
    cfg.update(extra)
    return cfg


@pytest.mark.slow
def test_perturbation_sweep_end_to_end(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config()
    proc = snakemake(run, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]

    perturbed = run / "results" / "perturbed" / "tiny"
    assert sorted(p.name for p in perturbed.iterdir()) == [
        "noise-snr20-seed1", "noise-snr20-seed2", "orient-30", "res-7.5x7.5x10"]
    meta = json.loads((perturbed / "noise-snr20-seed2" / "meta.json").read_text())
    assert meta["perturbation"]["id"] == "noise-snr20-seed2"
    assert meta["perturbation"]["components"][0]["rng_seed"] > 0
    assert meta["perturbation"]["source"].endswith("results/data/tiny")
    meta = json.loads((perturbed / "res-7.5x7.5x10" / "meta.json").read_text())
    assert meta["shape"] == [16, 16, 10] and meta["voxel_size_mm"] == [7.5, 7.5, 10.0]
    assert json.loads((perturbed / "orient-30" / "meta.json").read_text())["b0_dir"][1] == pytest.approx(-0.5)

    table = pd.read_parquet(run / "results" / "metrics.parquet")
    ok = table[(table.status == "ok") & (table.metric == "nrmse")]
    assert sorted(set(ok[ok.method == "tkd"].perturbation)) == [
        "noise-snr20-seed1", "noise-snr20-seed2", "none", "orient-30", "res-7.5x7.5x10"]
    # cfl2 is limited to the noise axis (and 'none', which always runs)
    assert sorted(set(ok[ok.method == "cfl2"].perturbation)) == ["noise-snr20-seed1", "noise-snr20-seed2", "none"]
    assert not (run / "results" / "recon" / "tiny" / "orient-30" / "cfl2").exists()

    page = (run / "results" / "report" / "index.html").read_text()
    section = page[page.index('<section id="robustness">'):page.index('<section id="montages">')]
    for title in ("tiny · reference chi · noise", "tiny · reference chi · resolution",
                  "tiny · reference chi · orientation"):
        assert title in section
    assert section.count('src="data:image/png;base64,') == 3
    for label in ("SNR 20", "7.5×7.5×10 mm", "30°", "nrmse (%)", "xsim"):
        assert label in section
    assert " ± " in section  # two noise seeds: a spread

    again = snakemake(run, cfg, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["perturbations"].append({"resolution": {"voxel_size_mm": [4]}}),
     "key 'perturbations.4.resolution.voxel_size_mm.0'"),
    (lambda c: c["perturbations"].append({"noise": {"snr": [-1]}}), "key 'perturbations.4.noise.snr.0'"),
    (lambda c: c["perturbations"].append("orient-95"), "key 'perturbations.4'"),
])
def test_bad_perturbation_config_stops_before_any_job(tmp_path, mutate, message):
    cfg = tiny_config()
    mutate(cfg)
    proc = snakemake(tmp_path / "run", cfg)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "results").exists()
