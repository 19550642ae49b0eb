"""Rule reconstruct_tuned: the method with the value a tuning mode chose -> chi_ppm.nii.gz + run.json,
then its scores -> metrics.json (as rule reconstruct)."""

from pathlib import Path

from qsmbench.jobs import job
from qsmbench.results import check_scorable, evaluate_run
from qsmbench.tuning import tuned_run_job

with job(snakemake) as log:
    w, p = snakemake.wildcards, snakemake.params
    volume_dir = Path(snakemake.input.volume).parent
    check_scorable(volume_dir)
    record = tuned_run_job(volume_dir, snakemake.output.run, snakemake.input.selection,
                           run_id=w.run, run=p.run, mode=w.mode, dataset=w.dataset, perturbation=w.perturbation,
                           device=p.device, threads=snakemake.threads, extra_dirs=p.method_dirs,
                           timeout_s=p.timeout_s, mem_limit_mb=snakemake.resources.mem_mb, log_path=snakemake.log[0])
    log.info("status %s with %s", record["status"], record.get("tuning", {}).get("value"))
    evaluate_run(snakemake.output.run, volume_dir, snakemake.output.metrics)
