"""Rule aggregate: the per-job metric files -> one tidy table (parquet + csv) and results/provenance.json."""

from qsmbench.jobs import job
from qsmbench.provenance import write_record
from qsmbench.results import collect, write_table

with job(snakemake) as log:
    table = collect(snakemake.input)
    packages = table.attrs.get("packages")  # {packages_sha256: versions} of the runs
    table["config_hash"] = snakemake.params.config_hash
    write_table(table, snakemake.output.parquet, snakemake.output.csv)
    write_record(table, snakemake.output.provenance, config=snakemake.params.config,
                 config_hash=snakemake.params.config_hash, packages=packages)
    log.info("%d rows", len(table))
