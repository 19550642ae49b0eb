rule reconstruct:
    input:
        volume_meta,
        pretrained=lambda wildcards: PRETRAINED.get(wildcards.run, []),  # pretrain.smk
        imported=imported_map,  # method type precomputed: the χ map (common.smk)
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
        timeout_s=reconstruct_timeout_s,
    log:
        "logs/recon/{dataset}/{perturbation}/{run}.log",
    conda:
        run_env  # the deep-learning environment for torch/GPU methods, else the core one (common.smk)
    container:
        run_container  # a command plugin's image (its spec's container:), else none
    threads: config.get("threads", 1)
    resources:
        mem_mb=reconstruct_mem_mb,
        **GPU_JOB_RESOURCES,  # gpu=1 for GPU-capable methods (SLURM plugin: --gpus=1), else none (resources.smk)
        runtime=reconstruct_runtime,
    script:
        "../scripts/reconstruct.py"
