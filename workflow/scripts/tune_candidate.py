"""Rule tune_candidate: one candidate value of a tuning search -> run.json (+ chi) and score.json."""

from pathlib import Path

from qsmbench.jobs import job
from qsmbench.tuning import candidate_job

with job(snakemake) as log:
    w, p = snakemake.wildcards, snakemake.params
    score = candidate_job(Path(snakemake.input[0]).parent, snakemake.output.run, snakemake.output.score,
                          run_id=w.run, run=p.run, parameter=p.plan["parameter"], value=p.value, index=int(w.index),
                          metric=p.plan["metric"], dataset=w.dataset, perturbation=w.perturbation, device=p.device,
                          threads=snakemake.threads, extra_dirs=p.method_dirs, timeout_s=p.timeout_s,
                          mem_limit_mb=snakemake.resources.mem_mb, log_path=snakemake.log[0])
    log.info("%s = %g: status %s, misfit %s, regulariser %s, scores %s", p.plan["parameter"], p.value,
             score["status"], score["misfit"], score["regulariser"], score["scores"])
