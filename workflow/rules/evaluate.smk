# Scoring: each reconstruct job scores its own result (reconstruct.smk, tune.smk), writing
# results/metrics/{dataset}/{perturbation}/{run}.json; the aggregate job turns those files into the
# results table.  `qsmbench rescore results/` re-scores every existing reconstruction (e.g. after a
# metric changed) without running any method again; the next `snakemake` then re-aggregates.


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
