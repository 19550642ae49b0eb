# Python helpers shared by the rules: config validation and the lists of jobs.

import sys
from pathlib import Path

# The workflow uses the qsmbench package of this checkout, installed or not.
sys.path.insert(0, str(Path(workflow.basedir)))

from qsmbench.config import config_hash, method_runs, validate_config  # noqa: E402
from qsmbench.errors import ConfigError  # noqa: E402

try:
    config = validate_config(config, source="configuration (config/config.yaml or --configfile)")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

DATASETS = list(config["datasets"])
PERTURBATIONS = list(config["perturbations"])
RUNS = method_runs(config)
CONFIG_HASH = config_hash(config)
ENV = "../../environment.yml"


wildcard_constraints:
    dataset="|".join(DATASETS),
    perturbation="|".join(PERTURBATIONS),
    run="|".join(RUNS),


def volume_dir(wildcards):
    """Folder of the (possibly perturbed) input volume of one job."""
    if wildcards.perturbation == "none":
        return f"results/data/{wildcards.dataset}"
    return f"results/perturbed/{wildcards.dataset}/{wildcards.perturbation}"


def volume_meta(wildcards):
    return f"{volume_dir(wildcards)}/meta.json"


def all_jobs():
    return [(d, p, r) for d in DATASETS for p in PERTURBATIONS for r in RUNS]


def all_run_jsons(wildcards=None):
    return [f"results/recon/{d}/{p}/{r}/run.json" for d, p, r in all_jobs()]


def all_metric_jsons(wildcards=None):
    return [f"results/metrics/{d}/{p}/{r}.json" for d, p, r in all_jobs()]
