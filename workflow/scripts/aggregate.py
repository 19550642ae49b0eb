"""Rule aggregate: the per-job metric files -> one tidy table (parquet + csv)."""

from qsmbench.jobs import job
from qsmbench.results import collect, write_table

with job(snakemake) as log:
    table = collect(snakemake.input)
    table["config_hash"] = snakemake.params.config_hash
    write_table(table, snakemake.output.parquet, snakemake.output.csv)
    log.info("%d rows", len(table))
