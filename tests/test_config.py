"""Configuration validation: schema errors name the key; methods are checked by the registry."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from qsmbench.config import load_config, method_runs, perturbation_plan, validate_config, without_datasets
from qsmbench.errors import ConfigError

GOOD = {"datasets": {"phantom": {"type": "phantom", "shape": [32, 32, 32]}},
        "perturbations": ["none"], "methods": {"tkd": {}, "tkd_s": {"method": "tkd", "params": {"variant": "shmueli"}}}}


def test_default_and_paper_configs_validate():
    cfg = load_config("config/config.yaml")
    assert "phantom" in cfg["datasets"]
    assert set(method_runs(cfg)) >= {"tkd", "cfl2", "tkd_shmueli"}


def test_the_default_config_runs_every_builtin_method_and_the_orientation_comparison():
    """The default table holds every shipped method, and the supervised baseline's weakness (a B0
    orientation it never saw) next to INR-QSM-fast's at the same tilt (issue 20)."""
    from qsmbench.config import run_accepts

    cfg = load_config("config/config.yaml")
    methods = {spec["method"] for spec in method_runs(cfg).values()}
    assert methods >= {"tkd", "cfl2", "ilsqr", "medi", "uqsm", "inr_qsm", "qsmnet"}
    for run_id in ("qsmnet", "inr_qsm_fast", "tkd", "medi", "uqsm"):
        assert run_accepts(cfg, run_id, "none") and run_accepts(cfg, run_id, "orient-45"), run_id
    assert not run_accepts(cfg, "qsmnet", "noise-snr10-seed1")


def test_method_runs_fill_defaults():
    # no profile key: auto, the default of the schema and of config/config.yaml (paper on CUDA, quick on the CPU)
    runs = method_runs(validate_config(GOOD))
    assert runs["tkd"] == {"method": "tkd", "profile": "auto", "params": {}, "timeout_s": None, "mem_mb": None}
    assert runs["tkd_s"]["method"] == "tkd" and runs["tkd_s"]["params"] == {"variant": "shmueli"}


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["datasets"]["phantom"].update(shape="big"), "key 'datasets.phantom.shape'"),
    (lambda c: c["datasets"]["phantom"].update(voxel_size_mm=[1, 0, 1]), "key 'datasets.phantom.voxel_size_mm.1'"),
    (lambda c: c.update(threads="two"), "key 'threads'"),
    (lambda c: c.update(colour="blue"), "'colour' was unexpected"),
    (lambda c: c["methods"].update(nosuch={}), "key 'methods.nosuch': unknown method 'nosuch'; registered methods:"),
    (lambda c: c["methods"]["tkd"].update(params={"thresh": 0.2}),
     "key 'methods.tkd': method 'tkd' has no parameter 'thresh'"),
    (lambda c: c["methods"]["tkd"].update(params={"threshold": "high"}), "expects a"),
    (lambda c: c.update(perturbations=[]), "key 'perturbations'"),
])
def test_bad_configs_name_the_key(mutate, message):
    cfg = copy.deepcopy(GOOD)
    mutate(cfg)
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg, source="my.yaml")
    assert str(exc.value).startswith("my.yaml: ")
    assert message in str(exc.value)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(GOOD))
    assert load_config(ok)["methods"]["tkd"] == {}


@pytest.mark.parametrize("seed, role", [(1_000_000, "training"), (1_999_999, "training"), (2_500_000, "tuning"),
                                        (3_000_000, None)])
def test_benchmark_phantom_seeds_must_be_test_seeds(seed, role):
    """A dataset whose subject a method may have been trained or tuned on is refused; the message
    names the key and the reserved ranges."""
    bad = {**GOOD, "datasets": {"phantom": {"type": "phantom", "shape": [32, 32, 32], "seed": seed}}}
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    msg = str(err.value)
    assert "key 'datasets.phantom.seed'" in msg and str(seed) in msg
    assert "test 0..999999, train 1000000..1999999, tune 2000000..2999999" in msg
    if role:
        assert f"reserved for {role}" in msg
    ok = {**GOOD, "datasets": {"phantom": {"type": "phantom", "shape": [32, 32, 32], "seed": 999_999}}}
    assert validate_config(ok)["datasets"]["phantom"]["seed"] == 999_999


def test_simulated_manifest_seeds_must_be_test_seeds(tmp_path):
    manifest = tmp_path / "sim.yaml"
    manifest.write_text(yaml.safe_dump({
        "schema_version": 1, "name": "sim", "title": "t", "citation": ["c"], "licence": "l",
        "source": {"type": "simulated", "generator": "phantom", "parameters": {"seed": 1_000_123}},
        "acquisition": {"b0_tesla": 3.0, "b0_dir": [0, 0, 1]}}))
    bad = {**GOOD, "datasets": {"sim": {"type": "manifest", "manifest": str(manifest)}}}
    with pytest.raises(ConfigError, match=r"source.parameters.seed.*1000123.*reserved for training"):
        validate_config(bad)


def test_phantom_model_key():
    cfg = {**GOOD, "datasets": {"phantom": {"type": "phantom", "model": "analytic"}}}
    assert validate_config(cfg)["datasets"]["phantom"]["model"] == "analytic"
    with pytest.raises(ConfigError, match="datasets.phantom.model"):
        validate_config({**GOOD, "datasets": {"phantom": {"type": "phantom", "model": "ellipsoid"}}})


def test_simulate_rules_rerun_when_the_phantom_version_changes():
    """The phantom version is a parameter of the rules that make simulated datasets, so a new
    version re-runs them (Snakemake's params rerun trigger) and everything downstream."""
    text = (Path(__file__).resolve().parent.parent / "workflow" / "rules" / "data.smk").read_text()
    rules = {r.split(":")[0]: r for r in re.split(r"\n(?=rule )", text)[1:]}
    assert set(rules) == {"rule simulate_phantom", "rule prepare_brainweb"}
    for body in rules.values():
        assert "phantom_version=PHANTOM_VERSION" in body.split("params:")[1].split("log:")[0]


def test_without_datasets_prunes_perturbation_entries():
    cfg = validate_config({
        "datasets": {"a": {"type": "phantom"}, "b": {"type": "phantom"}},
        "perturbations": ["none", {"noise": {"snr": [20]}}, {"orientation": {"angles_deg": [0]}, "datasets": ["b"]},
                         {"resolution": {"voxel_size_mm": [2]}, "datasets": ["a", "b"]}],
        "methods": {"tkd": {}}})
    out = without_datasets(cfg, ["b"])
    assert list(out["datasets"]) == ["a"]
    assert out["perturbations"] == ["none", {"noise": {"snr": [20]}},
                                    {"resolution": {"voxel_size_mm": [2]}, "datasets": ["a"]}]
    assert set(perturbation_plan(out)) == {"a"} and "orient-0" not in perturbation_plan(out)["a"]
    assert list(cfg["datasets"]) == ["a", "b"]  # the input is not changed


@pytest.mark.parametrize("value,expected", [("true", True), ("False", False), (True, True), ("1", True)])
def test_boolean_keys_given_as_text_on_the_command_line(value, expected):
    # snakemake --config strict_datasets=true passes the text 'true'
    assert validate_config({**GOOD, "strict_datasets": value})["strict_datasets"] is expected


@pytest.mark.parametrize("device,ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True),
                                       ("gpu", False), ("cuda:x", False)])
def test_device_key(device, ok):
    if ok:
        assert validate_config({**GOOD, "device": device})["device"] == device
    else:
        with pytest.raises(ConfigError, match="key 'device'"):
            validate_config({**GOOD, "device": device})


def test_profile_auto_validates_parameters_for_both_profiles():
    # auto may become quick or paper: a parameter override is checked against the method either way
    assert validate_config({**GOOD, "profile": "auto"})["profile"] == "auto"
    with pytest.raises(ConfigError, match="key 'methods.tkd'.*no parameter 'nosuch'"):
        validate_config({**GOOD, "profile": "auto", "methods": {"tkd": {"params": {"nosuch": 1}}}})
