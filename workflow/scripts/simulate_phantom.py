"""Rule simulate_phantom: the embedded numerical head phantom of one dataset."""

from pathlib import Path

from qsmbench.jobs import job
from qsmbench.phantom import write_phantom

with job(snakemake):
    spec = {k: v for k, v in snakemake.params.spec.items() if k != "type"}
    write_phantom(Path(snakemake.output[0]).parent, name=snakemake.wildcards.dataset, **spec)
