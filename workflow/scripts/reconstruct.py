"""Rule reconstruct: one method on one (perturbed) volume -> chi_ppm.nii.gz + run.json, then its
scores against every reference of the volume -> results/metrics/.../{run}.json.

The method runs in a child process limited to params.timeout_s seconds and resources.mem_mb MB
(qsmbench.runner.run_job); its output goes to this job's log.  The scoring runs in this process
after it (qsmbench.results.evaluate_run); what it needs from the volume is checked before the
method starts, so a bad reference fails the job before any reconstruction time is spent.
"""

from pathlib import Path

from qsmbench.jobs import job
from qsmbench.results import check_scorable, evaluate_run
from qsmbench.runner import run_job

with job(snakemake) as log:
    run = snakemake.params.run
    volume_dir = Path(snakemake.input[0]).parent
    check_scorable(volume_dir)
    record = run_job(volume_dir, snakemake.output.run, run_id=snakemake.wildcards.run,
                     method=run["method"], params=run["params"], profile=run["profile"],
                     device=snakemake.params.device, dataset=snakemake.wildcards.dataset,
                     perturbation=snakemake.wildcards.perturbation, threads=snakemake.threads,
                     extra_dirs=snakemake.params.method_dirs, timeout_s=snakemake.params.timeout_s,
                     mem_limit_mb=snakemake.resources.mem_mb, log_path=snakemake.log[0])
    log.info("status %s, wall %s s, peak RSS %s MB", record["status"], record["wall_s"], record["peak_rss_mb"])
    if record["traceback"]:
        log.error("method failed (recorded in run.json):\n%s", record["traceback"])
    evaluate_run(snakemake.output.run, volume_dir, snakemake.output.metrics)
