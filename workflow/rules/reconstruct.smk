rule reconstruct:
    input:
        volume_meta,
        pretrained=per_run(lambda wildcards: PRETRAINED.get(wildcards.run, [])),  # pretrain.smk; per_run: common.smk
        imported=IMPORTED_MAP,  # method type precomputed: the χ map (imported_map, common.smk)
    output:
        run="results/recon/{dataset}/{perturbation}/{run}/run.json",
        # scored in the same job (evaluate.smk): one job per run, not two -- half the DAG of a big
        # grid and half the job start-ups of a run.  `qsmbench rescore results/` re-scores
        # existing reconstructions without running any method again.
        metrics="results/metrics/{dataset}/{perturbation}/{run}.json",
    params:
        run=lambda wildcards: RUNS[wildcards.run],
        device=config.get("device", "auto"),
        method_dirs=config.get("method_dirs", []),
        timeout_s=RUN_TIMEOUT_S,
    log:
        "logs/recon/{dataset}/{perturbation}/{run}.log",
    conda:
        RUN_ENV  # the deep-learning environment for torch/GPU methods, else the core one (run_env, common.smk)
    container:
        RUN_CONTAINER  # a command plugin's image (its spec's container:), else none
    threads: config.get("threads", 1)
    resources:
        mem_mb=RUN_MEM_MB,
        **GPU_JOB_RESOURCES,  # gpu=1 for GPU-capable methods (SLURM plugin: --gpus=1), else none (resources.smk)
        runtime=RUN_RUNTIME,
    script:
        "../scripts/reconstruct.py"
