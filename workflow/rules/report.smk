rule render_report:
    input:
        table="results/metrics.parquet",
        runs=all_run_jsons,
        volumes=expand("results/data/{dataset}/meta.json", dataset=DATASETS),
    output:
        report(
            "results/report/index.html",
            category="Report",
            caption="../../report/captions/report.rst",
        ),
    params:
        config=config,
        config_hash=CONFIG_HASH,
        datasets=DATASETS,
        runs=list(RUNS),
    log:
        "logs/report.log",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/render_report.py"
