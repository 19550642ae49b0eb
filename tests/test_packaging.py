"""Packaging invariants: pinned versions agree in every env file; every rule has a log and names an
existing conda env; what `--use-conda` builds; README commands."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names of PyPI packages whose names differ
CONDA_NAME = {"matplotlib": "matplotlib-base", "torch": "pytorch"}
ENV_FILES = [ROOT / "environment.yml", *sorted((ROOT / "workflow" / "envs").glob("*.yaml"))]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")


def pyproject_pins(*extras: str) -> dict[str, str]:
    """{conda name: version} of pyproject.toml's runtime dependencies (and the given extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"]) + [d for e in extras for d in project["optional-dependencies"][e]]
    deps = [d for d in deps if not d.startswith("qsmbench[")]  # an extra that pulls in another extra
    return {CONDA_NAME.get(name, name): version for name, version in (d.split("==") for d in deps)}


def conda_specs(path: Path) -> dict[str, SpecifierSet]:
    """{package: its version constraint} of a conda environment file (conda's 'name=1.2' is exact)."""
    env = yaml.safe_load(path.read_text())
    assert env["channels"][0] == "conda-forge" and "nodefaults" in env["channels"], path.name
    out = {}
    for dep in env["dependencies"]:
        if not isinstance(dep, str):  # the pip: section
            continue
        name, constraint = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", dep.strip()).groups()
        constraint = constraint.replace(" ", "")
        if re.fullmatch(r"=?[0-9][^,<>=!]*", constraint):
            constraint = "==" + constraint.lstrip("=")
        out[name] = SpecifierSet(constraint)
    return out


def test_env_files_exist():
    assert [p.name for p in ENV_FILES] == ["environment.yml", "core.yaml", "dl.yaml"]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_every_env_file_pins_what_pyproject_pins(path):
    """Exact pins equal pyproject's; a range (only pytorch: conda-forge's builds may lag PyPI) includes it."""
    specs = conda_specs(path)
    extras = {"environment.yml": ("dl", "test"), "dl.yaml": ("dl",)}.get(path.name, ())
    needed = pyproject_pins(*extras)
    needed.pop("snakemake")  # the rules' environments do not run Snakemake (environment.yml: via pip)
    assert specs["python"].contains("3.11")
    for name, version in needed.items():
        assert name in specs, f"{path.name} lacks {name}"
        assert specs[name].contains(version), f"{path.name}: {name}{specs[name]} excludes pyproject's {version}"
        if name != "pytorch":
            assert str(specs[name]) == f"=={version}", f"{path.name}: {name} must be pinned exactly"
    for name in specs:  # nothing that pyproject does not know
        assert name in needed or name in ("python", "pip"), f"{path.name}: {name} is not in pyproject.toml"


def test_environment_yml_is_the_all_in_one_environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert f"snakemake=={pyproject_pins()['snakemake']}" in " ".join(pip)
    core, dl = (conda_specs(ROOT / "workflow" / "envs" / n) for n in ("core.yaml", "dl.yaml"))
    assert set(dl) == set(core) | {"pytorch"} and "pytorch" not in core
    assert "pytorch" in conda_specs(ROOT / "environment.yml")


def test_pytorch_build_is_left_to_the_solver():
    """No build string (cuda*/cpu*) and no cuda-version pin: conda-forge's CUDA builds of pytorch need
    the __cuda virtual package, so the solver takes one where a driver exists and the CPU build elsewhere."""
    text = (ROOT / "workflow" / "envs" / "dl.yaml").read_text()
    deps = yaml.safe_load(text)["dependencies"]
    assert [d for d in deps if d.startswith("pytorch")] == ["pytorch>=2.5,<3"]
    assert not any(str(d).startswith(("cuda", "cpuonly", "pytorch-cpu", "pytorch-gpu")) for d in deps)
    assert "__cuda" in text and "CONDA_OVERRIDE_CUDA" in text


def rules_and_envs() -> dict[str, str | None]:
    """{rule: the name its conda: directive gives} over workflow/rules/*.smk."""
    out = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in [b for b in re.split(r"\n(?=rule )", smk.read_text()) if b.startswith("rule ")]:
            name = block.split(":")[0].split()[1]
            m = re.search(r"\n    conda:\n        (\S+)", block)
            out[name] = m.group(1) if m else None
    return out


def test_every_rule_declares_log_conda_and_resources():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in [b for b in re.split(r"\n(?=rule )", text) if b.startswith("rule ")]:
            name = rule.split(":")[0]
            for directive in ("log:", "conda:", "resources:", "output:"):
                assert directive in rule, f"{smk.name}: {name} lacks {directive}"


def test_every_rules_conda_names_an_env_file_that_exists():
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    envs = dict(re.findall(r'^(ENV_\w+) = "([^"]+)"', common, re.M))
    assert set(envs) == {"ENV_CORE", "ENV_DL"}
    for name, rel in envs.items():  # relative to the rule files, as Snakemake reads them
        assert (ROOT / "workflow" / "rules" / rel).resolve().is_file(), name
    rules = rules_and_envs()
    methods_run = {"reconstruct", "pretrain", "tune_candidate", "reconstruct_tuned"}  # the rules that run a method
    assert {r for r, e in rules.items() if e in ("run_env", "RUN_ENV")} == methods_run
    for rule, env in rules.items():
        assert env in ("ENV_CORE", "run_env", "RUN_ENV"), f"rule {rule}: conda: {env}"
    assert "return ENV_DL if wildcards.run in DL_RUNS else ENV_CORE" in common


FAKE_CONDA = """#!/bin/sh
# stands in for conda where none is installed: answers Snakemake's start-up questions only
case "$*" in
  "info --json") echo '{"conda_prefix": "%s", "platform": "linux-64"}' ;;
  "--version") echo "conda 24.11.3" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "fake conda cannot: $*" >&2; exit 1 ;;
esac
"""


def _with_fake_conda(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    conda = bin_dir / "conda"
    conda.write_text(FAKE_CONDA % (tmp_path / "conda-prefix"))
    conda.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("methods,envs", [
    ({"tkd": {}, "cfl2": {}}, ["core.yaml"]),
    ({"tkd": {}, "uqsm": {}, "inr_qsm_fast": {}}, ["core.yaml", "dl.yaml"]),
])
def test_use_conda_builds_the_core_env_and_the_dl_env_only_for_dl_methods(tmp_path, methods, envs):
    """What `snakemake -n --use-conda` would create (conda cannot run here: a stand-in answers its
    start-up questions; the torch-free registry still tells which runs need the DL environment)."""
    cfg = {"datasets": {"ph": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0]}},
           "perturbations": ["none"], "methods": methods}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(cfg))
    env = _with_fake_conda(tmp_path)
    base = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path / "run"), "--configfile",
            str(tmp_path / "my.yaml"), "--cores", "1"]
    proc = subprocess.run([*base, "-n", "--use-conda"], capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert sorted(Path(p).name for p in re.findall(r"Conda environment (\S+) will be created", out)) == envs
    listed = subprocess.run([*base, "--list-conda-envs"], capture_output=True, text=True, timeout=300, env=env)
    rows = [line.split("\t") for line in listed.stdout.splitlines() if "\t" in line and line.endswith("_")]
    assert sorted(Path(r[0]).name for r in rows) == envs
    assert all(r[-1].startswith(".snakemake/conda/") for r in rows)


def test_readme_install_and_test_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "snakemake --cores all" in readme
    assert "pytest" in readme
    assert "snakemake -n --use-conda" in readme and "workflow/envs/dl.yaml" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and "pytest" in ci and "--lint" in ci


def test_the_test_extra_installs_the_cluster_plugins():
    """tests/test_cluster.py runs the profiles through their executor plugins; the README's test
    install must bring them, or those tests would only ever be skipped."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "qsmbench[cluster]" in extras["test"]
    assert {d.split("==")[0] for d in extras["cluster"]} >= {
        "snakemake-executor-plugin-slurm", "snakemake-executor-plugin-cluster-generic"}
    assert 'pip install -e ".[dl,test]"' in (ROOT / "README.md").read_text()
    assert 'pip install -q -e ".[dl,test]"' in (ROOT / ".ci" / "run").read_text()


def test_readme_plugin_example_passes_the_contract(tmp_path):
    from qsmbench.cli import main

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "my_inversion.py"
    path.write_text(example)
    assert main(["check-method", str(path)]) == 0
