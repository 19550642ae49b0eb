"""Packaging invariants: pinned versions agree; every rule has log and conda; README commands."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names of PyPI packages whose names differ
CONDA_NAME = {"matplotlib": "matplotlib-base"}


def test_environment_yml_pins_the_same_versions_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = dict(d.split("=", 1) for d in env["dependencies"] if isinstance(d, str))
    for name, version in pins.items():
        if name == "snakemake":  # the rules' environment does not run Snakemake itself
            continue
        assert conda.get(CONDA_NAME.get(name, name)) == version, f"{name} pinned differently"


def test_every_rule_declares_log_conda_and_resources():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"\n(?=rule )", text)[1:]:
            name = rule.split(":")[0]
            for directive in ("log:", "conda:", "resources:", "output:"):
                assert directive in rule, f"{smk.name}: {name} lacks {directive}"


def test_readme_install_and_test_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "snakemake --cores all" in readme
    assert "pytest" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and "pytest" in ci and "--lint" in ci


def test_readme_plugin_example_passes_the_contract(tmp_path):
    from qsmbench.cli import main

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "my_inversion.py"
    path.write_text(example)
    assert main(["check-method", str(path)]) == 0
