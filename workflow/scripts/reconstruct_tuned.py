"""Rule reconstruct_tuned: the method with the value a tuning mode chose -> chi_ppm.nii.gz + run.json."""

from pathlib import Path

from qsmbench.jobs import job
from qsmbench.tuning import tuned_run_job

with job(snakemake) as log:
    w, p = snakemake.wildcards, snakemake.params
    record = tuned_run_job(Path(snakemake.input.volume).parent, snakemake.output[0], snakemake.input.selection,
                           run_id=w.run, run=p.run, mode=w.mode, dataset=w.dataset, perturbation=w.perturbation,
                           device=p.device, threads=snakemake.threads, extra_dirs=p.method_dirs,
                           timeout_s=p.timeout_s, mem_limit_mb=snakemake.resources.mem_mb, log_path=snakemake.log[0])
    log.info("status %s with %s", record["status"], record.get("tuning", {}).get("value"))
