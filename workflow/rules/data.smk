rule simulate_phantom:
    output:
        "results/data/{dataset}/meta.json",
    wildcard_constraints:
        dataset=one_of(PHANTOM_DATASETS),  # manifest datasets: prepare_dataset (datasets.smk)
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
    log:
        "logs/data/{dataset}.log",
    conda:
        ENV_CORE
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/simulate_phantom.py"
