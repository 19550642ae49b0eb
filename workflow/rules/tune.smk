# Tuning (qsmbench.tuning): default, tuned-by-truth (oracle) and tuned-without-truth (lcurve,
# discrepancy) results side by side.  For each (dataset, perturbation, run) in a tuned mode:
#   one tune_candidate job per candidate value of the run's tunable parameter (shared by the modes),
#   one select_tuning job per mode (the chosen value), then reconstruct_tuned: the final run with
#   that value, scored in the same job like any other (column 'tuning' of the results table).
# A run with tuned_on: {dataset, perturbation} takes the value chosen there (transfer).

# TUNING_PLAN, TUNED_JOBS and the path helpers: common.smk


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
        timeout_s=RUN_TIMEOUT_S,
    log:
        "logs/tune/{dataset}/{perturbation}/{run}/candidate-{index}.log",
    conda:
        RUN_ENV
    threads: config.get("threads", 1)
    resources:
        mem_mb=RUN_MEM_MB,
        runtime=RUN_RUNTIME,
        **GPU_JOB_RESOURCES,  # gpu=1 for GPU-capable methods, else none (resources.smk)
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
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
        **CLUSTER_RESOURCES,
    script:
        "../scripts/select_tuning.py"


rule reconstruct_tuned:
    input:
        volume=volume_meta,
        selection=lambda wildcards: selection_of(wildcards.dataset, wildcards.perturbation, wildcards.run,
                                                 wildcards.mode),
    output:
        run="results/tune/{dataset}/{perturbation}/{run}/{mode}/run.json",
        metrics="results/tune/{dataset}/{perturbation}/{run}/{mode}/metrics.json",
    wildcard_constraints:
        mode="|".join(TUNED_MODES),
    params:
        run=lambda wildcards: RUNS[wildcards.run],
        device=config.get("device", "auto"),
        method_dirs=config.get("method_dirs", []),
        timeout_s=RUN_TIMEOUT_S,
    log:
        "logs/tune/{dataset}/{perturbation}/{run}/{mode}.log",
    conda:
        RUN_ENV
    threads: config.get("threads", 1)
    resources:
        mem_mb=RUN_MEM_MB,
        runtime=RUN_RUNTIME,
        **GPU_JOB_RESOURCES,  # gpu=1 for GPU-capable methods, else none (resources.smk)
    script:
        "../scripts/reconstruct_tuned.py"

