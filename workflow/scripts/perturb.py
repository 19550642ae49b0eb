"""Rule perturb: one perturbation (noise, resolution, orientation or a combination) of one dataset."""

from pathlib import Path

from qsmbench.jobs import job
from qsmbench.perturb import perturb_dataset

with job(snakemake):
    perturb_dataset(Path(snakemake.input[0]).parent, Path(snakemake.output[0]).parent,
                    snakemake.params.components, dataset=snakemake.wildcards.dataset)
