"""The ablation figure (data consistency of INR-QSM variants) and the paper-figure map in README.md."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from test_results import make_run, make_volume

from qsmbench import consistency, figures, io, results
from qsmbench.physics import forward_field
from qsmbench.report import montages_from_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ablation_case(tmp_path_factory):
    """One volume; INR-QSM as three runs (exact chi, 0.8 x chi, a failure) and TKD."""
    root = tmp_path_factory.mktemp("ablation")
    tiny = make_volume(root / "tiny", "ph")
    chi = (tiny.references["chi"] * tiny.mask).astype(np.float32)
    # the field of chi on the volume's own (anisotropic) grid: exactly consistent
    field = forward_field(chi, tiny.voxel_size_mm, tiny.b0_dir) * tiny.mask
    io.save_volume(dataclasses.replace(tiny, field_ppm=field.astype(np.float32)), root / "data" / "ph")
    vol = io.load_volume(root / "data" / "ph")
    runs, paths = [], []
    for run_id, method, recon, params in (
            ("inr_qsm", "inr_qsm", chi, {"patch_size": [8, 8, 8], "patch_stride_fraction": 0.5}),
            ("inr_qsm_nocomp", "inr_qsm", 0.8 * chi, {"patch_size": [8, 8, 8], "phase_compensation": False}),
            ("inr_qsm_nograd", "inr_qsm", None, {}),
            ("tkd", "tkd", 0.9 * chi, {"threshold": 0.19})):
        run_dir = root / "recon" / "ph" / "none" / run_id
        run_json = make_run(run_dir, dataset="ph", method=method, run_id=run_id, chi_ppm=recon, parameters=params,
                            error=None if recon is not None else "RuntimeError: out of memory")
        out = root / "metrics" / "ph" / "none" / f"{run_id}.json"
        results.evaluate_run(run_json, root / "data" / "ph", out)
        runs.append(run_json)
        paths.append(out)
    entries = montages_from_runs(runs, {"ph": root / "data" / "ph"})
    return {"vol": vol, "chi": chi, "table": results.collect(paths), "entries": entries}


def test_ablation_runs_are_the_runs_of_one_method(ablation_case):
    groups = figures.ablation_runs(ablation_case["table"])
    assert groups == {"inr_qsm": ["inr_qsm", "inr_qsm_nocomp", "inr_qsm_nograd"]}
    assert figures.ablation_runs(ablation_case["table"], ["tkd"]) == {}  # one run only: no ablation


def test_ablation_table_uses_each_runs_patch_geometry_and_marks_failures(ablation_case):
    vol, chi = ablation_case["vol"], ablation_case["chi"]
    dc = figures.ablation_table(ablation_case["table"], ablation_case["entries"]).set_index("run")
    assert sorted(dc.index) == ["inr_qsm", "inr_qsm_nocomp", "inr_qsm_nograd"]  # tkd is not an ablation run
    geometry = (vol.voxel_size_mm, vol.b0_dir)
    # the exact chi: full-model residual at the precision of the saved NIfTI; the patch model misses
    # the fields of sources outside each 8^3 box
    assert dc.loc["inr_qsm", "dc_full"] < 1e-3
    expected_patch = 100 * consistency.patch_data_consistency_error(chi.astype(np.float32), vol.field_ppm, vol.mask,
                                                                    *geometry, patch_size=(8, 8, 8),
                                                                    stride_fraction=0.5)
    assert dc.loc["inr_qsm", "dc_patch"] == pytest.approx(expected_patch, rel=1e-4)
    assert dc.loc["inr_qsm", "patch_size"] == "8x8x8" and dc.loc["inr_qsm", "patch_stride_fraction"] == 0.5
    # 0.8 chi leaves 20 % of the field unexplained under the full model; default stride 1/3
    assert dc.loc["inr_qsm_nocomp", "dc_full"] == pytest.approx(20.0, rel=1e-3)
    assert dc.loc["inr_qsm_nocomp", "patch_stride_fraction"] == pytest.approx(1 / 3)
    # a run without patch parameters gets INR-QSM's published patches; a failed run has NaN
    assert dc.loc["inr_qsm_nograd", "patch_size"] == "96x96x48"
    assert np.isnan(dc.loc["inr_qsm_nograd", "dc_full"]) and np.isnan(dc.loc["inr_qsm_nograd", "dc_patch"])


def test_paper_figures_draw_the_ablation_and_map_every_paper_figure(ablation_case, tmp_path):
    out = tmp_path / "paper"
    entries = ablation_case["entries"]
    written = figures.paper_figures(ablation_case["table"], out, montages=entries, ablation=entries, dpi=50)
    names = {p.name for p in written}
    assert {"ablation-ph-chi.png", "ablation-ph-chi.svg", "ablation.csv", "README.md"} <= names
    assert (out / "ablation-ph-chi.png").read_bytes().startswith(PNG_MAGIC)
    table = pd.read_csv(out / "ablation.csv")
    assert sorted(table["run"]) == ["inr_qsm", "inr_qsm_nocomp", "inr_qsm_nograd"]
    readme = (out / "README.md").read_text()
    assert "## The INR-QSM paper's figures" in readme
    for kind, *_ in figures.PAPER_FIGURE_KINDS:
        assert kind in readme
    # produced kinds name their files, missing ones say why
    assert "`ablation-ph-chi.png`" in readme and "`montage-ph.png`" in readme and "`runtime.png`" in readme
    assert "not produced in this run (no perturbations in this configuration)" in readme
    assert "No supervised deep-learning baseline ran" in readme


def test_ablation_figure_panels(ablation_case):
    from qsmbench import stats

    df = ablation_case["table"]
    dc = figures.ablation_table(df, ablation_case["entries"])
    s = stats.summarise(df)
    base = s[(s["level"] == "none") & (s["reference"] == "chi")]
    runs = ["inr_qsm", "inr_qsm_nocomp", "inr_qsm_nograd"]
    styles = figures.method_styles(runs)
    fig = figures.ablation_figure(dc, base, runs, ["nrmse", "xsim"], styles, "t")
    assert len(fig.axes) == 3
    assert "data consistency" in fig.axes[0].get_title()
    # the failed run is marked, not drawn
    assert any(t.get_text().strip() == "n/a" for t in fig.axes[0].texts)
    assert figures.export(fig).startswith(PNG_MAGIC)
