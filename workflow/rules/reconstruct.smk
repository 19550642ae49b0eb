rule reconstruct:
    input:
        volume_meta,
    output:
        "results/recon/{dataset}/{perturbation}/{run}/run.json",
    params:
        run=lambda wildcards: RUNS[wildcards.run],
        device=config.get("device", "auto"),
        method_dirs=config.get("method_dirs", []),
    log:
        "logs/recon/{dataset}/{perturbation}/{run}.log",
    conda:
        ENV
    threads: config.get("threads", 1)
    resources:
        mem_mb=6000,
        runtime=60,
    script:
        "../scripts/reconstruct.py"
