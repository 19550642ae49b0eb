"""Runner: seeds, timing and memory records, failures recorded instead of raised."""

import json

import numpy as np
import pytest

from qsmbench import runner
from qsmbench.io import save_volume
from qsmbench.method import Method


class Raises(Method):
    """Always fails."""
    name = "raises"
    references = ["none"]

    def reconstruct(self, vol):
        raise RuntimeError("deliberate failure")


class WrongShape(Method):
    """Returns the wrong shape."""
    name = "wrong_shape"
    references = ["none"]

    def reconstruct(self, vol):
        return np.zeros((3, 3, 3))


class NonFinite(Method):
    """Returns NaNs."""
    name = "non_finite"
    references = ["none"]

    def reconstruct(self, vol):
        out = np.zeros(vol.shape)
        out[0, 0, 0] = np.nan
        return out


class Noisy(Method):
    """Uses its seeded generator."""
    name = "noisy"
    references = ["none"]

    def reconstruct(self, vol):
        return self.rng.normal(size=vol.shape) * vol.mask


def test_derive_seed_is_stable_and_distinct():
    a = runner.derive_seed("phantom", "none", "tkd", 0)
    assert a == runner.derive_seed("phantom", "none", "tkd", 0)
    assert a != runner.derive_seed("phantom", "none", "tkd", 1)
    assert a != runner.derive_seed("phantom", "noise-snr20-seed1", "tkd", 0)
    assert 0 <= a < 2**31
    # fixed value: the derivation must never change silently (results record it)
    assert runner.derive_seed("a", "b") == runner.derive_seed("a", "b") == 1884085485


def test_successful_run_record(small_volume):
    res = runner.run_method("tkd", small_volume, identity={"dataset": "d", "perturbation": "none"})
    r = res.record
    assert res.status == "ok" and r["status"] == "ok" and r["error"] is None
    assert r["wall_s"] > 0 and r["cpu_s"] >= 0 and r["peak_rss_mb"] > 10
    assert r["seed"] == runner.derive_seed("d", "none", "tkd", 0)
    assert r["parameters"]["variant"] == "official2016"
    assert r["device"].startswith("cpu") and r["qsmbench_version"]
    assert res.chi_ppm.shape == small_volume.shape and res.chi_ppm.dtype == np.float32
    json.dumps(r)  # JSON-serialisable


@pytest.mark.parametrize("cls,message", [(Raises, "RuntimeError: deliberate failure"),
                                         (WrongShape, "returned shape (3, 3, 3)"),
                                         (NonFinite, "1 non-finite")])
def test_failures_are_recorded_not_raised(cls, message, small_volume, tmp_path):
    res = runner.run_method(cls(), small_volume)
    assert res.status == "failed" and res.chi_ppm is None
    assert message in res.record["error"]
    assert "Traceback" in res.record["traceback"]
    runner.write_run(res, tmp_path, small_volume.affine)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["status"] == "failed" and saved["output"] is None
    assert not (tmp_path / "chi_ppm.nii.gz").exists()


def test_seeded_methods_are_reproducible(small_volume):
    a = runner.run_method(Noisy(seed=5), small_volume).chi_ppm
    b = runner.run_method(Noisy(seed=5), small_volume).chi_ppm
    c = runner.run_method(Noisy(seed=6), small_volume).chi_ppm
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_run_job_writes_chi_then_run_json(tmp_path, small_volume):
    save_volume(small_volume, tmp_path / "data")
    out = tmp_path / "recon" / "run.json"
    rec = runner.run_job(tmp_path / "data", out, run_id="tkd_shmueli", method="tkd",
                         params={"variant": "shmueli"}, dataset="d")
    assert rec["status"] == "ok" and rec["parameters"]["variant"] == "shmueli"
    assert (tmp_path / "recon" / "chi_ppm.nii.gz").exists()
    assert json.loads(out.read_text())["output"] == "chi_ppm.nii.gz"
    assert rec["seed"] == runner.derive_seed("d", "none", "tkd_shmueli", 0)


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="device"):
        runner.resolve_device("tpu")


def test_unavailable_method_fails_only_its_run(tmp_path, small_volume, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "needs_missing.py").write_text(
        "from qsmbench.method import Method\n\n"
        "class NeedsMissing(Method):\n"
        '    """Needs a module that is not installed."""\n'
        '    name = "needs_missing"\n'
        '    requirements = ["module_that_is_not_installed_xyz"]\n'
        '    references = ["none"]\n\n'
        "    def reconstruct(self, vol):\n"
        "        return vol.field_ppm * vol.mask\n")
    save_volume(small_volume, tmp_path / "data")
    rec = runner.run_job(tmp_path / "data", tmp_path / "recon" / "run.json", run_id="needs_missing",
                         method="needs_missing", dataset="d", extra_dirs=[plugins])
    assert rec["status"] == "failed"
    assert "module_that_is_not_installed_xyz" in rec["error"]
    saved = json.loads((tmp_path / "recon" / "run.json").read_text())
    assert saved["status"] == "failed" and saved["output"] is None


class Trained(Method):
    """Declares tuned defaults and records its training subjects in prepare()."""
    name = "trained"
    references = ["none"]
    tuned_on = {"what": "nothing real", "phantom_model": "analytic", "seeds": [2_000_001]}

    def prepare(self, train):
        self.trained_on = {"phantom_model": "analytic", "seeds": [1_000_003, 1_000_004]}

    def reconstruct(self, vol):
        return np.zeros(vol.shape)


def test_training_and_tuning_provenance_reaches_run_json(small_volume, tmp_path):
    res = runner.run_method(Trained(), small_volume)
    assert res.record["tuned_on"] == {"what": "nothing real", "phantom_model": "analytic", "seeds": [2_000_001]}
    assert res.record["trained_on"] == {"phantom_model": "analytic", "seeds": [1_000_003, 1_000_004]}
    runner.write_run(res, tmp_path, small_volume.affine)
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["trained_on"]["seeds"] == [1_000_003, 1_000_004]
    plain = runner.run_method("tkd", small_volume)
    assert plain.record["tuned_on"] is None and plain.record["trained_on"] is None
