rule reconstruct:
    input:
        volume_meta,
        pretrained=lambda wildcards: PRETRAINED.get(wildcards.run, []),  # pretrain.smk
    output:
        "results/recon/{dataset}/{perturbation}/{run}/run.json",
    params:
        run=lambda wildcards: RUNS[wildcards.run],
        device=config.get("device", "auto"),
        method_dirs=config.get("method_dirs", []),
    log:
        "logs/recon/{dataset}/{perturbation}/{run}.log",
    conda:
        run_env  # the deep-learning environment for torch/GPU methods, else the core one (common.smk)
    threads: config.get("threads", 1)
    resources:
        mem_mb=reconstruct_mem_mb,
        gpu=reconstruct_gpus,  # 1 for GPU-capable methods (SLURM plugin: --gpus=1), else none
        runtime=60,
    script:
        "../scripts/reconstruct.py"
