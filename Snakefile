# qsmbench: one command benchmarks every configured QSM method on every configured dataset.
#   snakemake --cores all                       (default: offline, embedded phantom)
#   snakemake --cores all --configfile config/paper.yaml
# Stages: data -> (perturbed) -> recon -> metrics -> aggregate -> report.  See README.md.

from snakemake.utils import min_version

min_version("9.0")


# The default configuration -- only when no --configfile is given: a user's file replaces it
# (Snakemake would merge the two, and the default's datasets and methods would leak into every
# user configuration).  --config KEY=VALUE still applies on top of either.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/perturb.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/metrics.parquet",
        "results/report/index.html",
        "results/paper_figures",  # also a target of its own: snakemake paper_figures
    default_target: True
