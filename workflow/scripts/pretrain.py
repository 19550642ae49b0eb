"""Rule pretrain: train (or find in the cache) the weights of one run's method -> training record.

The training runs in a child process limited to the rule's runtime and mem_mb resources
(qsmbench.runner.pretrain_job); its output goes to this job's log.
"""

from qsmbench.jobs import job
from qsmbench.runner import pretrain_job

with job(snakemake) as log:
    run = snakemake.params.run
    record = pretrain_job(snakemake.output[0], run_id=snakemake.wildcards.run, method=run["method"],
                          params=run["params"], profile=run["profile"], device=snakemake.params.device,
                          threads=snakemake.threads, extra_dirs=snakemake.params.method_dirs,
                          timeout_s=snakemake.resources.runtime * 60, mem_limit_mb=snakemake.resources.mem_mb,
                          log_path=snakemake.log[0])
    log.info("status %s, prepare %s s; %s", record["status"], record["prepare_s"], "; ".join(record["notes"]))
    if record["error"]:
        log.error("pretraining failed (recorded; the reconstruct jobs will report it): %s\n%s",
                  record["error"], record["traceback"] or "")
