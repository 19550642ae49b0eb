# Python helpers shared by the rules: config validation and the lists of jobs.

import sys
from pathlib import Path

# The workflow uses the qsmbench package of this checkout, installed or not.
sys.path.insert(0, str(Path(workflow.basedir)))

import re  # noqa: E402

from qsmbench.config import config_hash, job_list, method_runs, perturbation_plan, validate_config  # noqa: E402
from qsmbench.config import dataset_manifest  # noqa: E402
from qsmbench.errors import ConfigError  # noqa: E402

try:
    config = validate_config(config, source="configuration (config/config.yaml or --configfile)")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

if workflow.is_main_process:
    # A run killed outright leaves Snakemake's directory lock behind; remove it when no other
    # instance of this workflow runs here, so that the same command simply resumes.
    from qsmbench.jobs import release_stale_locks  # noqa: E402

    if _stale := release_stale_locks():
        print(f"qsmbench: removed the stale Snakemake lock(s) {', '.join(_stale)} left by an interrupted run "
              "(no other instance of this workflow is running here)", file=sys.stderr)

DATASETS = list(config["datasets"])
# results/data/{dataset} is made by simulate_phantom (type phantom) or prepare_dataset (type manifest)
PHANTOM_DATASETS = [d for d, spec in config["datasets"].items() if spec["type"] == "phantom"]
MANIFEST_DATASETS = [d for d, spec in config["datasets"].items() if spec["type"] == "manifest"]
# {dataset: {perturbation id: components}}; 'none' for every dataset (qsmbench.config.perturbation_plan)
PLAN = perturbation_plan(config)
PERTURBATIONS = sorted({p for perts in PLAN.values() for p in perts})
RUNS = method_runs(config)
CONFIG_HASH = config_hash(config)
ENV = "../../environment.yml"


wildcard_constraints:
    dataset="|".join(DATASETS),
    perturbation="|".join(re.escape(p) for p in PERTURBATIONS),  # ids hold '.' and '+'
    run="|".join(RUNS),


def volume_dir(wildcards):
    """Folder of the (possibly perturbed) input volume of one job."""
    if wildcards.perturbation == "none":
        return f"results/data/{wildcards.dataset}"
    return f"results/perturbed/{wildcards.dataset}/{wildcards.perturbation}"


def volume_meta(wildcards):
    return f"{volume_dir(wildcards)}/meta.json"


def all_jobs():
    """(dataset, perturbation, run) triples, honouring each run's 'perturbations' filter."""
    return job_list(config, PLAN)


def all_run_jsons(wildcards=None):
    return [f"results/recon/{d}/{p}/{r}/run.json" for d, p, r in all_jobs()]


def all_metric_jsons(wildcards=None):
    return [f"results/metrics/{d}/{p}/{r}.json" for d, p, r in all_jobs()]


def one_of(names):
    """A wildcard constraint matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def manifest_inputs(wildcards):
    """prepare_dataset's inputs: the manifest and, for your own data, its files (edits re-run it)."""
    m = dataset_manifest(config, wildcards.dataset)
    files = [str(m.path)]
    if m.source_type == "local":
        files += [str(m.local_path(f)) for f in m.files if not f.optional or m.local_path(f).exists()]
    return files


def reconstruct_uses_gpu(wildcards):
    """True for a run whose method declares "gpu" in its ``uses`` (INR-QSM, uQSM, ...)."""
    from qsmbench.errors import MethodError  # noqa: PLC0415
    from qsmbench.registry import get_method_class  # noqa: PLC0415

    try:
        cls = get_method_class(RUNS[wildcards.run]["method"], extra_dirs=config.get("method_dirs", []))
    except MethodError:  # unavailable (e.g. no torch): the run fails fast, on the CPU
        return False
    return "gpu" in cls.uses


def reconstruct_gpus(wildcards):
    """GPUs to request for a reconstruction: 1 for a GPU-capable method unless device is cpu."""
    return int(reconstruct_uses_gpu(wildcards) and config.get("device", "auto") != "cpu")


def reconstruct_mem_mb(wildcards):
    """The run's mem_mb, else more for the GPU-capable (deep-learning) methods, which also run on the
    CPU.  The runner kills a reconstruction whose resident memory exceeds it (status oom)."""
    mem_mb = RUNS[wildcards.run]["mem_mb"]
    if mem_mb is not None:
        return mem_mb
    return 16000 if reconstruct_uses_gpu(wildcards) else 6000


def reconstruct_timeout_s(wildcards):
    """The run's timeout_s, else the method's default for the run's profile (Method.timeout_s)."""
    from qsmbench.errors import MethodError  # noqa: PLC0415
    from qsmbench.method import Method  # noqa: PLC0415
    from qsmbench.registry import get_method_class  # noqa: PLC0415

    run = RUNS[wildcards.run]
    if run["timeout_s"] is not None:
        return float(run["timeout_s"])
    try:
        cls = get_method_class(run["method"], extra_dirs=config.get("method_dirs", []))
    except MethodError:  # unavailable: the run fails fast
        cls = Method
    return cls.timeout_for(run["profile"])


def reconstruct_runtime(wildcards):
    """Scheduler runtime (minutes): the run's time limit plus a margin for loading and writing."""
    return int(reconstruct_timeout_s(wildcards) // 60) + 10
