"""Rule select_tuning: the candidates' scores -> the value one tuning mode chooses (selection.json)."""

from qsmbench.jobs import job
from qsmbench.tuning import select_job

with job(snakemake) as log:
    w = snakemake.wildcards
    record = select_job(snakemake.input, snakemake.output[0], mode=w.mode, plan=snakemake.params.plan,
                        run_id=w.run, dataset=w.dataset, perturbation=w.perturbation)
    log.info("%s: %s = %s (%s)", w.mode, record["parameter"], record["value"], record["status"])
