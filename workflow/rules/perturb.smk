rule perturb:
    input:
        "results/data/{dataset}/meta.json",
    output:
        "results/perturbed/{dataset}/{perturbation}/meta.json",
    params:
        components=lambda wildcards: PLAN[wildcards.dataset][wildcards.perturbation],
    log:
        "logs/perturbed/{dataset}/{perturbation}.log",
    conda:
        ENV_CORE
    threads: 1  # as simulate_phantom: runs beside the pretraining and the reconstructions
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=6000,
        runtime=30,
    script:
        "../scripts/perturb.py"
