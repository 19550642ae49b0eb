"""Configuration validation: schema errors name the key; methods are checked by the registry."""

import copy

import pytest
import yaml

from qsmbench.config import load_config, method_runs, validate_config
from qsmbench.errors import ConfigError

GOOD = {"datasets": {"phantom": {"type": "phantom", "shape": [32, 32, 32]}},
        "perturbations": ["none"], "methods": {"tkd": {}, "tkd_s": {"method": "tkd", "params": {"variant": "shmueli"}}}}


def test_default_and_paper_configs_validate():
    cfg = load_config("config/config.yaml")
    assert "phantom" in cfg["datasets"]
    assert set(method_runs(cfg)) >= {"tkd", "cfl2", "tkd_shmueli"}


def test_method_runs_fill_defaults():
    runs = method_runs(validate_config(GOOD))
    assert runs["tkd"] == {"method": "tkd", "profile": "quick", "params": {}, "timeout_s": None, "mem_mb": None}
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
