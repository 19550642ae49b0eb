"""Rule prepare_brainweb: a BrainWeb anatomical model as a QSM phantom (downloaded on first use)."""

from pathlib import Path

from qsmbench.datasets.brainweb import write_brainweb_phantom
from qsmbench.jobs import job

with job(snakemake):
    spec = {k: v for k, v in snakemake.params.spec.items() if k != "type"}
    for key in ("shape", "voxel_size_mm", "b0_dir"):
        if key in spec:
            spec[key] = tuple(spec[key])
    write_brainweb_phantom(Path(snakemake.output[0]).parent, name=snakemake.wildcards.dataset, **spec)
