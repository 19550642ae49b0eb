"""Rule render_report: the tidy table + reconstructions -> results/report/index.html (+ figures)."""

from importlib.metadata import version
from pathlib import Path

from qsmbench.jobs import job
from qsmbench.report import montages_from_runs, render_report

with job(snakemake):
    volumes = {d: Path(m).parent for d, m in zip(snakemake.params.datasets, snakemake.input.volumes)}
    render_report(snakemake.input.table, snakemake.output.html,
                  montages=montages_from_runs(snakemake.params.runs, volumes),
                  config=snakemake.params.config, title=snakemake.params.title,
                  figures_dir=snakemake.params.figures_dir, data_dirs=volumes, not_run=snakemake.params.not_run,
                  tuning_plan=snakemake.params.tuning_plan, selections=snakemake.input.selections,
                  provenance={"config_hash": snakemake.params.config_hash, "snakemake": version("snakemake")})
