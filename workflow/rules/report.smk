# The report (results/report/index.html, self-contained; its figures also as PNG + SVG under
# results/report/figures/{kind}/) and the paper figures (results/paper_figures/).  Figures are
# registered for Snakemake's own report:  snakemake --report report.html


rule render_report:
    input:
        table="results/metrics.parquet",
        volumes=expand("results/data/{dataset}/meta.json", dataset=DATASETS),
        selections=all_selection_jsons,  # tuning searches (tune.smk), for the L-curve plots
    output:
        html=report(
            "results/report/index.html",
            category="Report",
            caption="../../report/captions/report.rst",
        ),
        ranking=report(
            directory("results/report/figures/ranking"),
            patterns=["{name}.png"],
            category="Figures",
            subcategory="Ranking",
            caption="../../report/captions/ranking.rst",
            labels={"figure": "{name}"},
        ),
        robustness=report(
            directory("results/report/figures/robustness"),
            patterns=["{name}.png"],
            category="Figures",
            subcategory="Robustness",
            caption="../../report/captions/robustness_plot.rst",
            labels={"figure": "{name}"},
        ),
        montage=report(
            directory("results/report/figures/montage"),
            patterns=["{name}.png"],
            category="Figures",
            subcategory="Slice montages",
            caption="../../report/captions/montage.rst",
            labels={"figure": "{name}"},
        ),
        cost=report(
            directory("results/report/figures/cost"),
            patterns=["{name}.png"],
            category="Figures",
            subcategory="Cost",
            caption="../../report/captions/runtime_chart.rst",
            labels={"figure": "{name}"},
        ),
    params:
        # the unperturbed runs' run.json (their χ maps: the slice montages).  Not inputs: each is
        # written by the job that writes its metrics file, so the table (an input) already waits
        # for them and is rewritten whenever one changes -- and a big grid's DAG does not match
        # every run.json once more per figure rule.
        runs=unperturbed_run_jsons,
        config=config,
        config_hash=CONFIG_HASH,
        datasets=DATASETS,
        not_run=NOT_RUN,  # {dataset: why} skipped at start-up (common.smk)
        tuning_plan=TUNING_PLAN,  # tune.smk
        figures_dir=lambda wildcards, output: str(Path(output.ranking).parent),
        title=config.get("report", {}).get("title", "qsmbench report"),
    log:
        "logs/report.log",
    conda:
        ENV_CORE
    threads: 1
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/render_report.py"


rule paper_figures:
    input:
        table="results/metrics.parquet",
        volumes=expand("results/data/{dataset}/meta.json", dataset=DATASETS),
    output:
        report(
            directory("results/paper_figures"),
            patterns=["{name}.png"],
            category="Paper figures",
            caption="../../report/captions/paper_figures.rst",
            labels={"figure": "{name}"},
        ),
    params:
        runs=unperturbed_run_jsons,  # as render_report's
        datasets=DATASETS,
    log:
        "logs/paper_figures.log",
    conda:
        ENV_CORE
    threads: 1
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/paper_figures.py"
