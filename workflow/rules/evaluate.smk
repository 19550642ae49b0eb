rule evaluate:
    input:
        run="results/recon/{dataset}/{perturbation}/{run}/run.json",
        volume=volume_meta,
    output:
        "results/metrics/{dataset}/{perturbation}/{run}.json",
    log:
        "logs/metrics/{dataset}/{perturbation}/{run}.log",
    conda:
        ENV_CORE
    threads: 1
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=3000,
        runtime=10,
    script:
        "../scripts/evaluate.py"


rule aggregate:
    input:
        all_metric_jsons,
        all_tuned_metric_jsons,  # tune.smk
    output:
        parquet="results/metrics.parquet",
        csv="results/metrics.csv",
        provenance="results/provenance.json",  # what produced the table: qsmbench provenance results/
    params:
        config_hash=CONFIG_HASH,
        config=config,
    log:
        "logs/aggregate.log",
    conda:
        ENV_CORE
    threads: 1
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/aggregate.py"
