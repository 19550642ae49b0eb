"""Rule paper_figures: the tidy table + reconstructions -> results/paper_figures/ (PNG, SVG, CSV, README)."""

from pathlib import Path

from qsmbench.figures import paper_figures
from qsmbench.jobs import job
from qsmbench.report import montages_from_runs

with job(snakemake) as log:
    volumes = {d: Path(m).parent for d, m in zip(snakemake.params.datasets, snakemake.input.volumes)}
    # one entry per unperturbed volume: its folder and every run's reconstruction -- the slice
    # montages and the ablation's data-consistency errors (chi against its input field) use them
    entries = montages_from_runs(snakemake.params.runs, volumes)
    written = paper_figures(snakemake.input.table, snakemake.output[0], montages=entries, ablation=entries)
    log.info("%d files in %s", len(written), snakemake.output[0])
