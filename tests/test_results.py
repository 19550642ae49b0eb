"""Scoring runs (evaluate_run) and the tidy results table (collect, write_table, read_table)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qsmbench import io, metrics, results
from qsmbench.errors import InputError
from qsmbench.physics import forward_field
from qsmbench.volume import Volume

SHAPE = (16, 16, 16)


# --------------------------------------------------------------------------- synthetic data
def make_volume(folder: Path, name: str = "tiny", references=("chi",), seed: int = 0) -> Volume:
    """A 16³ ball with two nuclei, its labels and forward-simulated field, saved at ``folder``."""
    rng = np.random.default_rng(seed)
    g = np.indices(SHAPE).astype(float) - 7.5
    r = np.sqrt((g ** 2).sum(axis=0))
    mask = r < 7
    labels = np.where(mask, 9, 0).astype(np.int16)
    labels[(np.abs(g[0] - 2) < 2) & (np.abs(g[1]) < 2) & (np.abs(g[2]) < 2)] = 2
    labels[(np.abs(g[0] + 3) < 2) & (np.abs(g[1] - 1) < 2) & (np.abs(g[2]) < 2)] = 3
    chi = np.select([labels == 2, labels == 3, labels == 9], [0.15, 0.05, 0.02], 0.0)
    chi = chi + 0.005 * rng.standard_normal(SHAPE) * mask
    refs = {ref: chi * (1.0 + 0.1 * i) for i, ref in enumerate(references)}
    vol = Volume(field_ppm=forward_field(chi, (1.0, 1.0, 1.0)) * mask, mask=mask, labels=labels,
                 references=refs, name=name, voxel_size_mm=(1.0, 1.0, 1.2))
    io.save_volume(vol, folder)
    return io.load_volume(folder)


def make_run(run_dir: Path, *, dataset: str, method: str, perturbation: str = "none", seed: int = 1,
             chi_ppm: np.ndarray | None = None, affine=None, error: str | None = None,
             parameters=None, wall_s: float = 1.5, run_id: str | None = None) -> Path:
    """Write a runner-style ``run.json`` (and ``chi_ppm.nii.gz`` for a successful run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    failed = error is not None
    if not failed:
        io.write_nifti(run_dir / "chi_ppm.nii.gz", chi_ppm,
                       affine if affine is not None else np.diag([1.0, 1.0, 1.2, 1.0]))
    run = {
        "status": "failed" if failed else "ok", "error": error,
        "traceback": "Traceback (most recent call last): ..." if failed else None,
        "method": method, "parameters": parameters if parameters is not None else {"b": 2, "a": 0.19},
        "dataset": dataset, "perturbation": perturbation, "seed": seed, "wall_s": wall_s,
        "cpu_s": 2 * wall_s, "prepare_s": 0.0, "peak_rss_mb": 321.0, "peak_gpu_mb": None,
        "device": "cpu", "qsmbench_version": "0.1.0", "git_commit": None, "python": "3.11.9",
        "started_utc": "2025-01-01T00:00:00Z", "output": None if failed else "chi_ppm.nii.gz",
        "notes": [],
    }
    if run_id is not None:
        run.update(run_id=run_id, repetition=0, profile="quick")
    io.write_json(run_dir / "run.json", run)
    return run_dir / "run.json"


def recon_of(vol: Volume, kind: str, seed: int = 0) -> np.ndarray:
    ref = vol.references[sorted(vol.references)[0]]
    if kind == "exact":
        return ref.copy()
    noise = np.random.default_rng(seed).standard_normal(ref.shape)
    return (0.8 * ref + 0.01 * noise) * vol.mask


def build_case(root: Path):
    """Two datasets (one with two references), three methods ('exact', 'noisy', 'broken' fails),
    two seeds for 'noisy' on the first dataset.  Returns (metric json paths, montage entries)."""
    vols = {"alpha": make_volume(root / "data" / "alpha", "alpha", references=("chi", "chi_cosmos")),
            "beta": make_volume(root / "data" / "beta", "beta", seed=3)}
    paths, montages = [], []
    for dataset, vol in vols.items():
        recons = {}
        noisy_seeds = [1, 2] if dataset == "alpha" else [1]
        for method, seeds in (("exact", [1]), ("noisy", noisy_seeds), ("broken", [1])):
            for seed in seeds:
                run_dir = root / "recon" / dataset / "none" / method / str(seed)
                if method == "broken":
                    run_json = make_run(run_dir, dataset=dataset, method=method, seed=seed,
                                        error="RuntimeError: solver diverged <at iteration 3>")
                    recons[method] = None
                else:
                    run_json = make_run(run_dir, dataset=dataset, method=method, seed=seed,
                                        chi_ppm=recon_of(vol, method, seed))
                    recons[method] = run_dir / "chi_ppm.nii.gz"
                out = root / "metrics" / dataset / "none" / f"{method}-{seed}.json"
                results.evaluate_run(run_json, root / "data" / dataset, out)
                paths.append(out)
        montages.append({"dataset": dataset, "perturbation": "none", "volume_dir": root / "data" / dataset,
                         "recons": recons})
    return paths, montages


# --------------------------------------------------------------------------- evaluate_run
def test_evaluate_run_scores_every_reference_like_metrics_evaluate(tmp_path):
    vol = make_volume(tmp_path / "vol", references=("chi", "chi_cosmos"))
    run_json = make_run(tmp_path / "run", dataset="tiny", method="noisy", chi_ppm=recon_of(vol, "noisy"))
    out = tmp_path / "metrics" / "tiny.json"

    record = results.evaluate_run(run_json, tmp_path / "vol", out)

    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert (record["dataset"], record["perturbation"], record["method"]) == ("tiny", "none", "noisy")
    assert record["status"] == "ok" and record["error"] is None
    assert "traceback" not in record["run"] and record["run"]["wall_s"] == 1.5
    assert sorted(record["references"]) == ["chi", "chi_cosmos"]
    chi, _, _ = io.read_nifti(tmp_path / "run" / "chi_ppm.nii.gz")
    for ref, scores in record["references"].items():
        expected = metrics.evaluate(chi, vol.references[ref], vol.eval_mask, labels=vol.labels,
                                    voxel_size_mm=vol.voxel_size_mm)
        assert [s["metric"] for s in scores] == [e.metric for e in expected] == metrics.list_metrics()
        for got, exp in zip(scores, expected, strict=True):
            assert got == exp.as_dict()
    assert record["references"]["chi"] != record["references"]["chi_cosmos"]


def test_evaluate_run_passes_metric_extras(tmp_path, monkeypatch):
    vol = make_volume(tmp_path / "vol")
    io.save_volume(vol, tmp_path / "vol", extra_meta={"metric_extras": {"calc_moment": 1.25}})
    run_json = make_run(tmp_path / "run", dataset="tiny", method="m", chi_ppm=recon_of(vol, "noisy"))
    seen = {}
    real = metrics.evaluate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "evaluate", spy)
    results.evaluate_run(run_json, tmp_path / "vol", tmp_path / "out.json")
    assert seen["extras"] == {"calc_moment": 1.25}
    assert seen["voxel_size_mm"] == pytest.approx((1.0, 1.0, 1.2))


def test_failed_run_reads_no_chi_and_records_the_error(tmp_path):
    make_volume(tmp_path / "vol")
    run_json = make_run(tmp_path / "run", dataset="tiny", method="broken", error="ValueError: bad input")
    # Even a file under the usual name is not read for a failed run.
    (tmp_path / "run" / "chi_ppm.nii.gz").write_bytes(b"not a nifti")
    record = results.evaluate_run(run_json, tmp_path / "vol", tmp_path / "out.json")
    assert record["references"] == {}
    assert record["status"] == "failed" and record["error"] == "ValueError: bad input"
    assert "traceback" not in record["run"]

    df = results.collect([tmp_path / "out.json"])
    assert len(df) == len(metrics.list_metrics())
    assert set(df["status"]) == {"run_failed"} and set(df["reference"]) == {""}
    assert set(df["reason"]) == {"ValueError: bad input"} and df["value"].isna().all()
    assert list(df["metric"]) == sorted(metrics.list_metrics())


def test_missing_chi_file_is_an_input_error_naming_it(tmp_path):
    vol = make_volume(tmp_path / "vol")
    run_json = make_run(tmp_path / "run", dataset="tiny", method="m", chi_ppm=recon_of(vol, "noisy"))
    (tmp_path / "run" / "chi_ppm.nii.gz").unlink()
    with pytest.raises(InputError, match="chi_ppm.nii.gz"):
        results.evaluate_run(run_json, tmp_path / "vol", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_chi_on_another_grid_is_an_input_error_naming_it(tmp_path):
    make_volume(tmp_path / "vol")
    run_json = make_run(tmp_path / "run", dataset="tiny", method="m", chi_ppm=np.zeros((16, 16, 15)))
    with pytest.raises(InputError, match=r"run/chi_ppm\.nii\.gz has shape"):
        results.evaluate_run(run_json, tmp_path / "vol", tmp_path / "out.json")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"status": "ok", "dataset": "d", "perturbation": "none"}), "lacks the key"),
    (json.dumps({"status": "weird", "dataset": "d", "perturbation": "none", "method": "m"}), "status"),
    (json.dumps({"status": "ok", "dataset": "d", "perturbation": "none", "method": "m", "output": None}),
     "output"),
])
def test_bad_run_json_is_an_input_error_naming_it(tmp_path, content, message):
    make_volume(tmp_path / "vol")
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        results.evaluate_run(tmp_path / "run.json", tmp_path / "vol", tmp_path / "out.json")
    assert "run.json" in str(info.value)


def test_volume_without_reference_gives_no_scores_and_a_note(tmp_path):
    vol = make_volume(tmp_path / "vol", references=())
    run_json = make_run(tmp_path / "run", dataset="tiny", method="m", chi_ppm=vol.field_ppm)
    record = results.evaluate_run(run_json, tmp_path / "vol", tmp_path / "out.json")
    assert record["references"] == {} and "no reference" in record["notes"][0]
    df = results.collect([tmp_path / "out.json"])
    assert len(df) == len(metrics.list_metrics())
    assert set(df["status"]) == {"not_applicable"} and set(df["run_status"]) == {"ok"}
    assert df["wall_s"].eq(1.5).all()


# --------------------------------------------------------------------------- collect
def test_collect_schema_row_counts_and_order(tmp_path):
    paths, _ = build_case(tmp_path)
    df = results.collect(paths)

    assert list(df.columns) == list(results.COLUMNS)
    assert all(desc.strip() for desc in results.COLUMNS.values())
    n_metrics = len(metrics.list_metrics())
    # alpha: 2 references × (exact + 2 seeds of noisy); beta: 1 reference × (exact + noisy);
    # each failed run: one row per metric with reference ''.
    assert len(df) == (2 * 3 + 1 * 2) * n_metrics + 2 * n_metrics
    sizes = df.groupby(["dataset", "reference", "method", "seed"]).size()
    assert set(sizes) == {n_metrics}

    failed = df[df["method"] == "broken"]
    assert set(failed["status"]) == {"run_failed"} and set(failed["run_status"]) == {"failed"}
    assert set(failed["reason"]) == set(failed["error"]) == {"RuntimeError: solver diverged <at iteration 3>"}
    ok = df[df["run_status"] == "ok"]
    assert set(ok["status"]) <= {"ok", "not_applicable"} and set(ok["error"]) == {""}
    assert ok.loc[ok["status"] == "ok", "value"].notna().all()
    assert df.loc[df["status"] != "ok", "value"].isna().all()
    # psnr of an exact reconstruction is not applicable (infinite), with the metric's reason
    exact_psnr = df[(df["method"] == "exact") & (df["metric"] == "psnr") & (df["reference"] == "chi")]
    assert set(exact_psnr["status"]) == {"not_applicable"} and exact_psnr["reason"].str.len().gt(0).all()

    assert df["parameters"].eq(json.dumps({"a": 0.19, "b": 2}, sort_keys=True)).all()
    assert json.loads(df["parameters"].iloc[0]) == {"a": 0.19, "b": 2}
    assert df["seed"].dtype == np.int64 and df["value"].dtype == np.float64
    assert df["peak_gpu_mb"].isna().all() and set(df["git_commit"]) == {""}

    keys = list(results.KEY_COLUMNS)
    assert df[keys].equals(df.sort_values(keys)[keys].reset_index(drop=True))
    assert not df.duplicated(keys).any()
    # order of the inputs does not matter
    pd.testing.assert_frame_equal(df, results.collect(list(reversed(paths))))


def test_runs_of_one_method_with_different_run_ids_stay_apart(tmp_path):
    vol = make_volume(tmp_path / "vol")
    paths = []
    for run_id, params in (("tkd", {"threshold": 0.19}), ("tkd_strong", {"threshold": 0.1})):
        run_json = make_run(tmp_path / run_id, dataset="tiny", method="tkd", run_id=run_id, seed=7,
                            parameters=params, chi_ppm=recon_of(vol, "noisy"))
        paths.append(tmp_path / f"{run_id}.json")
        assert results.evaluate_run(run_json, tmp_path / "vol", paths[-1])["method"] == run_id
    df = results.collect(paths)
    assert sorted(set(df["method"])) == ["tkd", "tkd_strong"]
    assert set(df["method_name"]) == {"tkd"} and set(df["profile"]) == {"quick"}
    assert set(df.loc[df["method"] == "tkd_strong", "parameters"]) == {'{"threshold": 0.1}'}


def test_collect_rejects_two_files_for_one_run(tmp_path):
    paths, _ = build_case(tmp_path)
    copy = tmp_path / "copy.json"
    copy.write_text(Path(paths[0]).read_text())
    with pytest.raises(InputError, match="copy.json"):
        results.collect([*paths, copy])


def test_collect_of_nothing_is_an_empty_table_with_the_schema():
    df = results.collect([])
    assert list(df.columns) == list(results.COLUMNS) and len(df) == 0


def test_collect_rejects_a_file_that_is_not_a_metrics_record(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(InputError, match="x.json"):
        results.collect([tmp_path / "x.json"])


# --------------------------------------------------------------------------- storage
def test_write_and_read_table_round_trip(tmp_path):
    paths, _ = build_case(tmp_path)
    df = results.collect(paths)
    parquet, csv = tmp_path / "out" / "metrics.parquet", tmp_path / "out" / "metrics.csv"
    results.write_table(df, parquet, csv)
    assert sorted(p.name for p in parquet.parent.iterdir()) == ["metrics.csv", "metrics.parquet"]
    for path in (parquet, csv):
        back = results.read_table(path)
        pd.testing.assert_frame_equal(back, df, check_exact=path is parquet, rtol=1e-12)
    assert "" in set(results.read_table(csv)["reference"])
    # columns added by the workflow (e.g. a config hash) survive, after the schema's
    results.write_table(df.assign(config_hash="abc123"), parquet, csv)
    for path in (parquet, csv):
        back = results.read_table(path)
        assert list(back.columns) == [*results.COLUMNS, "config_hash"]
        assert set(back["config_hash"]) == {"abc123"}


def test_read_table_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.parquet"):
        results.read_table(tmp_path / "missing.parquet")
    pd.DataFrame({"dataset": ["d"]}).to_parquet(tmp_path / "partial.parquet")
    with pytest.raises(InputError, match="partial.parquet.*lacks the column"):
        results.read_table(tmp_path / "partial.parquet")


def test_runs_has_one_row_per_run(tmp_path):
    paths, _ = build_case(tmp_path)
    runs = results.runs(results.collect(paths))
    assert len(runs) == 7  # alpha: exact, noisy×2, broken; beta: exact, noisy, broken
    assert int((runs["run_status"] == "failed").sum()) == 2
    assert not math.isnan(runs["wall_s"].iloc[0])


# --------------------------------------------------------------------------- phantom versions, provenance
def _with_meta(folder: Path, **meta) -> None:
    data = json.loads((folder / "meta.json").read_text())
    data.update(meta)
    (folder / "meta.json").write_text(json.dumps(data))


def test_collect_refuses_one_dataset_from_two_phantom_versions(tmp_path):
    """Metric files left from an older phantom must not be aggregated with the new ones."""
    paths = []
    for pert, version in (("none", "2"), ("noise-snr20-seed1", "1")):
        folder = tmp_path / "data" / pert
        vol = make_volume(folder, "ph")
        _with_meta(folder, model="mni", phantom_version=version)
        run = make_run(tmp_path / "recon" / pert, dataset="ph", method="exact", perturbation=pert,
                       chi_ppm=recon_of(vol, "exact"))
        results.evaluate_run(run, folder, tmp_path / "metrics" / f"{pert}.json")
        paths.append(tmp_path / "metrics" / f"{pert}.json")
    with pytest.raises(InputError, match=r"dataset 'ph' mixes results of different phantoms \(model 'mni' version "
                                         r"'1', model 'mni' version '2'\)"):
        results.collect(paths)
    table = results.collect(paths[:1])
    assert set(table["phantom_version"]) == {"2"} and set(table["phantom_model"]) == {"mni"}
    with pytest.raises(InputError, match="mixes results"):  # a hand-made mixture is refused as well
        results.check_phantom_versions(pd.concat([table, table.assign(phantom_model="analytic")]))


def test_trained_and_tuned_on_are_carried_from_run_json(tmp_path):
    vol = make_volume(tmp_path / "data", "ph")
    run = make_run(tmp_path / "recon", dataset="ph", method="learned", chi_ppm=recon_of(vol, "exact"))
    record = json.loads(run.read_text())
    record["trained_on"] = {"phantom_model": "mni", "phantom_version": "2", "seeds": [1_000_003, 1_000_004]}
    record["tuned_on"] = None
    run.write_text(json.dumps(record))
    results.evaluate_run(run, tmp_path / "data", tmp_path / "m.json")
    plain = make_run(tmp_path / "recon2", dataset="ph", method="tkd", chi_ppm=recon_of(vol, "exact"))
    results.evaluate_run(plain, tmp_path / "data", tmp_path / "m2.json")
    table = results.runs(results.collect([tmp_path / "m.json", tmp_path / "m2.json"])).set_index("method")
    assert json.loads(table.loc["learned", "trained_on"])["seeds"] == [1_000_003, 1_000_004]
    assert table.loc["learned", "tuned_on"] == "" and table.loc["tkd", "trained_on"] == ""
    # tables written before these columns existed still read
    old = tmp_path / "old.csv"
    results.collect([tmp_path / "m.json"]).drop(columns=["trained_on", "tuned_on", "phantom_version",
                                                         "phantom_model"]).to_csv(old, index=False)
    assert set(results.read_table(old)["trained_on"]) == {""}


# --------------------------------------------------------------------------- re-scoring a results folder
def workflow_layout(root: Path) -> dict[str, Path]:
    """A workflow-style results folder: an unperturbed and a perturbed volume, a run on each, a
    tuned run and a tuning candidate (which is not re-scored: its score.json is the search's)."""
    vol = make_volume(root / "data" / "ph", "ph")
    make_volume(root / "perturbed" / "ph" / "noise-snr20-seed1", "ph", seed=5)
    runs = {
        "none": make_run(root / "recon" / "ph" / "none" / "tkd", dataset="ph", method="tkd", run_id="tkd",
                         chi_ppm=recon_of(vol, "noisy")),
        "noise": make_run(root / "recon" / "ph" / "noise-snr20-seed1" / "tkd", dataset="ph", method="tkd",
                          perturbation="noise-snr20-seed1", run_id="tkd", chi_ppm=recon_of(vol, "exact")),
        "tuned": make_run(root / "tune" / "ph" / "none" / "tkd" / "oracle", dataset="ph", method="tkd",
                          run_id="tkd", chi_ppm=recon_of(vol, "exact")),
        "candidate": make_run(root / "tune" / "ph" / "none" / "tkd" / "candidate-0", dataset="ph", method="tkd",
                              run_id="tkd", chi_ppm=recon_of(vol, "exact")),
    }
    return runs


def test_rescore_rewrites_every_metrics_file_from_the_reconstructions_alone(tmp_path):
    runs = workflow_layout(tmp_path)
    written = results.rescore(tmp_path)
    assert written == [tmp_path / "metrics/ph/noise-snr20-seed1/tkd.json", tmp_path / "metrics/ph/none/tkd.json",
                       tmp_path / "tune/ph/none/tkd/oracle/metrics.json"]
    assert not (tmp_path / "tune/ph/none/tkd/candidate-0/metrics.json").exists()
    # each file is what evaluate_run writes for that run against its own input volume
    for run, volume, out in ((runs["noise"], tmp_path / "perturbed/ph/noise-snr20-seed1", written[0]),
                             (runs["none"], tmp_path / "data/ph", written[1]),
                             (runs["tuned"], tmp_path / "data/ph", written[2])):
        expected = results.evaluate_run(run, volume, tmp_path / "expected.json")
        assert json.loads(out.read_text()) == json.loads(json.dumps(expected))
    # the perturbed run is scored against the perturbed volume's reference (seed 5), not the clean one
    table = results.collect(written[:2]).set_index(["perturbation", "metric"])
    assert table.loc[("noise-snr20-seed1", "nrmse"), "value"] > 0
    # a stale metrics file is replaced, not kept
    (tmp_path / "metrics/ph/none/tkd.json").write_text("{}")
    results.rescore(tmp_path)
    assert json.loads((tmp_path / "metrics/ph/none/tkd.json").read_text())["method"] == "tkd"


def test_rescore_names_what_is_missing(tmp_path):
    with pytest.raises(InputError, match=r"holds no reconstructions \(no folder .*recon\)"):
        results.rescore(tmp_path)
    workflow_layout(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "perturbed")
    with pytest.raises(InputError, match=r"run\.json: its input volume .*noise-snr20-seed1 is missing"):
        results.rescore(tmp_path)


def test_check_scorable_refuses_what_evaluate_run_could_not_score(tmp_path):
    make_volume(tmp_path / "vol", "ph")
    results.check_scorable(tmp_path / "vol")  # a good volume passes
    _with_meta(tmp_path / "vol", metric_extras=[1, 2])
    with pytest.raises(InputError, match=r"meta\.json: 'metric_extras' must be an object, got list"):
        results.check_scorable(tmp_path / "vol")
    (tmp_path / "vol" / "meta.json").write_text("[]")
    with pytest.raises(InputError, match=r"meta\.json must hold a JSON object"):
        results.check_scorable(tmp_path / "vol")


def test_a_corrupt_reference_stops_the_job_before_the_method_runs(tmp_path):
    """The volume's files are checked by the runner's load, before any reconstruction."""
    from qsmbench import runner

    make_volume(tmp_path / "vol", "ph")
    (tmp_path / "vol" / f"{io.REFERENCE_PREFIX}chi.nii.gz").write_bytes(b"not a nifti")
    results.check_scorable(tmp_path / "vol")  # meta.json alone is fine
    with pytest.raises(InputError, match=r"reference-chi\.nii\.gz"):
        runner.run_job(tmp_path / "vol", tmp_path / "recon" / "run.json", run_id="tkd", method="tkd")
    assert not (tmp_path / "recon").exists()
