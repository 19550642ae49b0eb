# Tuning (qsmbench.tuning): default, tuned-by-truth (oracle) and tuned-without-truth (lcurve,
# discrepancy) results side by side.  For each (dataset, perturbation, run) in a tuned mode:
#   one tune_candidate job per candidate value of the run's tunable parameter (shared by the modes),
#   one select_tuning job per mode (the chosen value), then reconstruct_tuned + evaluate_tuned:
#   the final run with that value, scored like any other (column 'tuning' of the results table).
# A run with tuned_on: {dataset, perturbation} takes the value chosen there (transfer).

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


rule tune_candidate:
    input:
        volume_meta,
    output:
        run="results/tune/{dataset}/{perturbation}/{run}/candidate-{index}/run.json",
        score="results/tune/{dataset}/{perturbation}/{run}/candidate-{index}/score.json",
    wildcard_constraints:
        index=r"\d+",
    params:
        run=lambda wildcards: RUNS[wildcards.run],
        plan=lambda wildcards: TUNING_PLAN[wildcards.run],
        value=lambda wildcards: TUNING_PLAN[wildcards.run]["candidates"][int(wildcards.index)],
        device=config.get("device", "auto"),
        method_dirs=config.get("method_dirs", []),
        timeout_s=reconstruct_timeout_s,
    log:
        "logs/tune/{dataset}/{perturbation}/{run}/candidate-{index}.log",
    conda:
        run_env
    threads: config.get("threads", 1)
    resources:
        mem_mb=reconstruct_mem_mb,
        gpu=reconstruct_gpus,
        runtime=reconstruct_runtime,
    script:
        "../scripts/tune_candidate.py"


rule select_tuning:
    input:
        candidate_scores,
    output:
        "results/tune/{dataset}/{perturbation}/{run}/{mode}/selection.json",
    wildcard_constraints:
        mode="|".join(TUNED_MODES),
    params:
        plan=lambda wildcards: TUNING_PLAN[wildcards.run],
    log:
        "logs/tune/{dataset}/{perturbation}/{run}/{mode}-select.log",
    conda:
        ENV_CORE
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/select_tuning.py"


rule reconstruct_tuned:
    input:
        volume=volume_meta,
        selection=lambda wildcards: selection_of(wildcards.dataset, wildcards.perturbation, wildcards.run,
                                                 wildcards.mode),
    output:
        "results/tune/{dataset}/{perturbation}/{run}/{mode}/run.json",
    wildcard_constraints:
        mode="|".join(TUNED_MODES),
    params:
        run=lambda wildcards: RUNS[wildcards.run],
        device=config.get("device", "auto"),
        method_dirs=config.get("method_dirs", []),
        timeout_s=reconstruct_timeout_s,
    log:
        "logs/tune/{dataset}/{perturbation}/{run}/{mode}.log",
    conda:
        run_env
    threads: config.get("threads", 1)
    resources:
        mem_mb=reconstruct_mem_mb,
        gpu=reconstruct_gpus,
        runtime=reconstruct_runtime,
    script:
        "../scripts/reconstruct_tuned.py"


rule evaluate_tuned:
    input:
        run="results/tune/{dataset}/{perturbation}/{run}/{mode}/run.json",
        volume=volume_meta,
    output:
        "results/tune/{dataset}/{perturbation}/{run}/{mode}/metrics.json",
    wildcard_constraints:
        mode="|".join(TUNED_MODES),
    log:
        "logs/tune/{dataset}/{perturbation}/{run}/{mode}-evaluate.log",
    conda:
        ENV_CORE
    resources:
        mem_mb=3000,
        runtime=10,
    script:
        "../scripts/evaluate.py"
