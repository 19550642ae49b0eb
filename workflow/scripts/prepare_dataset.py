"""Rule prepare_dataset: fetch a manifest's data (download, verify, extract) and write the canonical volume."""

from pathlib import Path

from qsmbench.datasets import prepare_dataset
from qsmbench.jobs import job

with job(snakemake):
    prepare_dataset(snakemake.params.manifest, Path(snakemake.output[0]).parent, name=snakemake.wildcards.dataset,
                    mirror=snakemake.params.mirror)
