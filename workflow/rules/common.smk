# Python helpers shared by the rules: config validation, start-up checks (device, datasets) and
# the lists of jobs.

import sys
from pathlib import Path

# The workflow uses the qsmbench package of this checkout, installed or not.
sys.path.insert(0, str(Path(workflow.basedir)))

import json  # noqa: E402
import re  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from snakemake.logging import logger  # noqa: E402

from qsmbench.config import config_hash, job_list, method_runs, perturbation_plan, validate_config  # noqa: E402
from qsmbench.config import dataset_manifest, without_datasets  # noqa: E402
from qsmbench.errors import ConfigError  # noqa: E402
from qsmbench.registry import method_infos  # noqa: E402

SOURCE = f"configuration ({', '.join(map(str, workflow.overwrite_configfiles)) or 'config/config.yaml'})"
try:
    config = validate_config(config, source=SOURCE)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

if workflow.is_main_process:
    # A run killed outright leaves Snakemake's directory lock behind; remove it when no other
    # instance of this workflow runs here, so that the same command simply resumes.
    from qsmbench.jobs import release_stale_locks  # noqa: E402

    if _stale := release_stale_locks():
        print(f"qsmbench: removed the stale Snakemake lock(s) {', '.join(_stale)} left by an interrupted run "
              "(no other instance of this workflow is running here)", file=sys.stderr)

RUNS = method_runs(config)
# Classes of the registered methods by name (None when a file failed to import).  They load
# without torch (the deep-learning methods import it lazily), so GPU-ness and the software
# environment of a run are known in a Snakemake without torch, e.g. under --use-conda.
METHOD_CLASSES = {i.name: i.cls for i in method_infos(config.get("method_dirs", []))}


def run_class(run_id):
    return METHOD_CLASSES.get(RUNS[run_id]["method"])


# Runs of methods that can use a GPU (their class `uses` "gpu") and runs that need the
# deep-learning environment (they can use a GPU or require torch).  The classical methods declare
# "gpu_optional" instead: numpy on the CPU in the core environment, and their torch path on the
# GPU only when the config asks for a CUDA device explicitly (device: cuda or cuda:N) -- then
# they join the GPU runs (GPU request, deep-learning environment); with auto or cpu they stay
# CPU runs without torch (qsmbench.runner.method_device decides the same in the job).
CUDA_REQUESTED = str(config.get("device", "auto")).startswith("cuda")
GPU_RUNS = sorted(r for r in RUNS if "gpu" in getattr(run_class(r), "uses", ())
                  or (CUDA_REQUESTED and "gpu_optional" in getattr(run_class(r), "uses", ())))
DL_RUNS = sorted(r for r in RUNS if r in GPU_RUNS or "torch" in getattr(run_class(r), "requirements", ()))

# Software environments of `snakemake --use-conda` (workflow/envs/; paths relative to rules/).
ENV_CORE = "../envs/core.yaml"  # numerics, data, metrics, report
ENV_DL = "../envs/dl.yaml"  # + PyTorch: a CUDA build where the machine has an NVIDIA driver


def run_env(wildcards):
    """The conda environment of a reconstruct/pretrain job: a command plugin's own (its spec's
    conda:, absolute), else deep learning or core."""
    own = (getattr(run_class(wildcards.run), "spec", None) or {}).get("conda")
    if own:
        return own
    return ENV_DL if wildcards.run in DL_RUNS else ENV_CORE


def run_container(wildcards):
    """The image of a command plugin whose spec names one (container:), else None: used by
    snakemake --software-deployment-method apptainer for that run's reconstruct jobs."""
    return (getattr(run_class(wildcards.run), "spec", None) or {}).get("container")


def imported_map(wildcards):
    """Input of an imported run's (method type precomputed) reconstruct job: its χ map when it exists,
    so a new or changed map re-runs the job; a missing one gives the status not_run."""
    cls = run_class(wildcards.run)
    if not getattr(cls, "imported", False):
        return []
    path = cls.map_path(RUNS[wildcards.run]["params"], wildcards.dataset, wildcards.perturbation, wildcards.run)
    return [str(path)] if path.is_file() else []


# ---------------------------------------------------------------- start-up checks
# Only in the main Snakemake process: a job re-parsing this file on a cluster node checks nothing.
if workflow.is_main_process and GPU_RUNS and str(config.get("device", "auto")).startswith("cuda"):
    if workflow.resource_settings.nodes is None:  # local execution: this machine runs the GPU jobs
        from qsmbench.devices import check_device  # noqa: E402

        try:
            check_device(config["device"], source=SOURCE)
        except ConfigError as exc:
            raise WorkflowError(str(exc)) from None
    else:  # --jobs N / a cluster executor: the GPU is on the nodes; each GPU job checks it there
        logger.info(f"device {config['device']}: checked by each GPU job on its node (cluster execution)")


def _unavailable_datasets():
    """{dataset: why its data cannot be had} for manifest datasets not yet in results/data/."""
    from qsmbench.datasets import availability  # noqa: PLC0415

    out = {}
    for d, spec in config["datasets"].items():
        if spec["type"] != "manifest" or Path(f"results/data/{d}/meta.json").exists():
            continue
        reason = availability(dataset_manifest(config, d), mirror=spec.get("mirror"))
        if reason:
            out[d] = reason
    return out


# Datasets whose data cannot be had (gated files absent, download unreachable) are skipped with a
# warning and listed under "not run" in the report; strict_datasets: true makes that an error.
# The main process decides and records it; a job that re-parses this file on a cluster node reads
# that record, so that its inputs (e.g. the report's) match the main process's plan.
NOT_RUN_FILE = Path(".snakemake/qsmbench/not_run.json")
if workflow.is_main_process:
    NOT_RUN = _unavailable_datasets()
    NOT_RUN_FILE.parent.mkdir(parents=True, exist_ok=True)
    NOT_RUN_FILE.write_text(json.dumps(NOT_RUN, indent=1))
else:
    NOT_RUN = json.loads(NOT_RUN_FILE.read_text()) if NOT_RUN_FILE.exists() else {}
if NOT_RUN and workflow.is_main_process:
    if config.get("strict_datasets", False) or len(NOT_RUN) == len(config["datasets"]):
        raise WorkflowError("\n".join(
            [f"{len(NOT_RUN)} dataset(s) cannot run"
             + (" (strict_datasets: true)" if config.get("strict_datasets") else " and no other dataset is left")
             + ":"] + [f"  - {why}" for why in NOT_RUN.values()]))
    for d, why in NOT_RUN.items():
        logger.warning(f"qsmbench: SKIPPED {why}. It is listed under 'not run' in the report; "
                       "--config strict_datasets=true makes this an error.")
# The configuration the jobs run: the validated one less the skipped datasets.
RUN_CONFIG = without_datasets(config, NOT_RUN) if NOT_RUN else config

DATASETS = list(RUN_CONFIG["datasets"])
# results/data/{dataset} is made by simulate_phantom (type phantom) or prepare_dataset (type manifest)
PHANTOM_DATASETS = [d for d, spec in RUN_CONFIG["datasets"].items() if spec["type"] == "phantom"]
BRAINWEB_DATASETS = [d for d, spec in RUN_CONFIG["datasets"].items() if spec["type"] == "brainweb"]  # prepare_brainweb
MANIFEST_DATASETS = [d for d, spec in RUN_CONFIG["datasets"].items() if spec["type"] == "manifest"]
# {dataset: {perturbation id: components}}; 'none' for every dataset (qsmbench.config.perturbation_plan)
PLAN = perturbation_plan(RUN_CONFIG)
PERTURBATIONS = sorted({p for perts in PLAN.values() for p in perts})
CONFIG_HASH = config_hash(config)


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
    return job_list(RUN_CONFIG, PLAN)


def unperturbed_run_jsons(wildcards=None):
    return [f"results/recon/{d}/{p}/{r}/run.json" for d, p, r in all_jobs() if p == "none"]


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


def reconstruct_gpus(wildcards):
    """GPUs to request for a reconstruction or pretraining job: 1 for a GPU-capable method unless
    device is cpu; 0 (no request at all for the scheduler) for every other job."""
    return int(wildcards.run in GPU_RUNS and config.get("device", "auto") != "cpu")


def reconstruct_mem_mb(wildcards):
    """The run's mem_mb, else more for the GPU-first (deep-learning) methods, which also run on the
    CPU.  The runner kills a reconstruction whose resident memory exceeds it (status oom)."""
    mem_mb = RUNS[wildcards.run]["mem_mb"]
    if mem_mb is not None:
        return mem_mb
    return 16000 if "gpu" in getattr(run_class(wildcards.run), "uses", ()) else 6000


def reconstruct_timeout_s(wildcards):
    """The run's timeout_s, else the method's default for the profile the run will resolve to."""
    from qsmbench.method import Method  # noqa: PLC0415
    from qsmbench.runner import expected_profile  # noqa: PLC0415

    run = RUNS[wildcards.run]
    if run["timeout_s"] is not None:
        return float(run["timeout_s"])
    cls = run_class(wildcards.run) or Method  # unavailable: the run fails fast
    return cls.timeout_for(expected_profile(cls, run["profile"], config.get("device", "auto")))


def reconstruct_runtime(wildcards):
    """Scheduler runtime (minutes): the run's time limit plus a margin for loading and writing."""
    return int(reconstruct_timeout_s(wildcards) // 60) + 10


def per_run(fn):
    """A directive value for the rules that run a method, from ``fn(wildcards)`` of each run (only
    ``wildcards.run`` may be read): the value itself when every run of the config has the same, else
    a function of the job's {run} that looks it up.  Snakemake calls a directive's function again
    for each job, with some 30 µs of bookkeeping around every call, and these rules have several:
    on a 10,000-job grid of one method that is a tenth of the dry run (tests/benchmarks/bench_dag.py).
    Each run's value is computed here once, so a run's function also runs once, not once per job."""
    values = {run: fn(SimpleNamespace(run=run)) for run in RUNS}
    distinct = {json.dumps(v, sort_keys=True, default=str) for v in values.values()}
    if len(distinct) == 1:
        return next(iter(values.values()))
    return lambda wildcards: values[wildcards.run]


# Per-run directives of reconstruct (and of the tuning rules): constants where the runs agree
RUN_ENV = per_run(run_env)
RUN_CONTAINER = per_run(run_container)
RUN_TIMEOUT_S = per_run(reconstruct_timeout_s)
RUN_MEM_MB = per_run(reconstruct_mem_mb)
RUN_RUNTIME = per_run(reconstruct_runtime)
# the χ map of an imported run (imported_map reads the dataset and perturbation too): no input at
# all when no run of the config is imported
IMPORTED_MAP = imported_map if any(getattr(run_class(r), "imported", False) for r in RUNS) else []


def pretrain_threads(wildcards):
    """Threads of a training job.  Training is the run's critical path (its reconstructions wait
    for it) but must not serialise the run: locally it gets half of --cores (at least 1, at most
    8), so the classical jobs, which do not depend on it, run beside it on the other half (with 2
    cores: one each).  Several training runs take turns (resource `training`, limited to 1 by
    profiles/default), so together they never hold every core.  On a cluster (--jobs, executor
    nodes) each job has its node: 8.  Override with --set-threads pretrain=N."""
    if workflow.resource_settings.nodes is not None:
        return 8
    try:
        cores = workflow.cores
    except WorkflowError:  # no --cores (dry run)
        return 8
    return max(1, min(8, int(cores) // 2))


# ---------------------------------------------------------------- tuning (tune.smk)
from qsmbench.config import dataset_has_truth  # noqa: E402
from qsmbench.tuning import TUNED_MODES, run_plan, selection_source, tuned_jobs  # noqa: E402

TUNING_PLAN = run_plan(config, METHOD_CLASSES)  # {run: modes, parameter, candidates, ...}
TUNED_JOBS = tuned_jobs(all_jobs(), TUNING_PLAN, {d: dataset_has_truth(RUN_CONFIG, d) for d in DATASETS})


def tune_dir(dataset, perturbation, run):
    return f"results/tune/{dataset}/{perturbation}/{run}"


def selection_of(dataset, perturbation, run, mode):
    """The selection record whose value a run on (dataset, perturbation) uses (tuned_on: another's)."""
    src_d, src_p = selection_source(dataset, perturbation, TUNING_PLAN[run])
    return f"{tune_dir(src_d, src_p, run)}/{mode}/selection.json"


def candidate_scores(wildcards):
    n = len(TUNING_PLAN[wildcards.run]["candidates"])
    base = tune_dir(wildcards.dataset, wildcards.perturbation, wildcards.run)
    return [f"{base}/candidate-{i}/score.json" for i in range(n)]


def all_tuned_metric_jsons(wildcards=None):
    return [f"{tune_dir(d, p, r)}/{m}/metrics.json" for d, p, r, m in TUNED_JOBS]


def all_selection_jsons(wildcards=None):
    return sorted({selection_of(d, p, r, m) for d, p, r, m in TUNED_JOBS})


# Cluster placement (partition, account, GPU requests): resources.smk
include: "resources.smk"
