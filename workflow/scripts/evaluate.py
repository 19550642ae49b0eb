"""Rule evaluate: every applicable metric of one reconstruction against every reference."""

from pathlib import Path

from qsmbench.jobs import job
from qsmbench.results import evaluate_run

with job(snakemake):
    evaluate_run(snakemake.input.run, Path(snakemake.input.volume).parent, snakemake.output[0])
