# Cluster placement of the jobs, in one place (included by common.smk).  Every rule declares its
# own threads, mem_mb and runtime (minutes) next to its code; this file adds what a cluster needs on
# top of them:
#   * CLUSTER_RESOURCES -- the SLURM partition/account from the config's `cluster` key, spread into
#     the resources of every rule that is submitted (`**CLUSTER_RESOURCES`).  Empty when the config
#     has no `cluster` key: then `--default-resources slurm_partition=... slurm_account=...` on the
#     command line (or the cluster's defaults) apply.  Nothing is hard-coded.
#   * GPU_JOB_RESOURCES -- for reconstruct and pretrain: `gpu` (1 for the runs of GPU-capable methods,
#     GPU_RUNS in common.smk, unless device is cpu; absent -- no request at all -- for every other run),
#     which the SLURM plugin submits as `--gpus=1`, and the partition of GPU jobs (cluster.gpu_partition).
# Grouping of the many tiny jobs (evaluate, perturb) into few submissions is a matter of the
# cluster profiles (workflow/profiles/*/config.yaml: groups, group-components); local runs ignore it.

from qsmbench.jobs import cache_function_signatures, check_scripts_once_per_rule, skip_job_info_nobody_reads  # noqa: E402

# DAG time of big grids (tests/benchmarks/bench_dag.py): Snakemake inspects the signature of every
# input function / resource callable again for every job, reads every job's script file to check
# it is there, and describes every job even under --quiet rules; remember each function's
# signature, check each rule's script once, and describe a job only when someone reads it.
cache_function_signatures()
check_scripts_once_per_rule()
skip_job_info_nobody_reads()

CLUSTER = config.get("cluster") or {}

# slurm_partition / slurm_account of every submitted job, when the config names them
CLUSTER_RESOURCES = {res: CLUSTER[key] for res, key in (("slurm_partition", "partition"), ("slurm_account", "account"))
                     if CLUSTER.get(key)}

# GPUs of a reconstruct/pretrain job: 1 for a GPU-capable method unless device is cpu (reconstruct_gpus,
# common.smk), else None -- no `gpu` resource at all, so the scheduler is asked for none.  per_run
# (common.smk): a constant where every run agrees; a config without GPU runs has no `gpu` key at all.
GPU_JOB_RESOURCES = {**CLUSTER_RESOURCES, "gpu": per_run(lambda wildcards: reconstruct_gpus(wildcards) or None)}
if CLUSTER.get("gpu_partition"):
    # cluster.gpu_partition for the jobs that request a GPU, else cluster.partition (or the default)
    GPU_JOB_RESOURCES["slurm_partition"] = per_run(lambda wildcards: (
        CLUSTER["gpu_partition"] if reconstruct_gpus(wildcards) else CLUSTER.get("partition")))
GPU_JOB_RESOURCES = {k: v for k, v in GPU_JOB_RESOURCES.items() if v is not None}
