# Simulated datasets: the embedded phantom (simulate_phantom) and the BrainWeb phantoms
# (prepare_brainweb).  The phantom version is a parameter of both rules, so a new version of the
# simulation re-runs them, and with them everything downstream (results of different phantom
# versions never mix; qsmbench.results.collect refuses them too).

from qsmbench.phantom import PHANTOM_VERSION  # noqa: E402


rule simulate_phantom:
    output:
        "results/data/{dataset}/meta.json",
    wildcard_constraints:
        dataset=one_of(PHANTOM_DATASETS),  # manifest datasets: prepare_dataset (datasets.smk)
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
        phantom_version=PHANTOM_VERSION,
    log:
        "logs/data/{dataset}.log",
    conda:
        ENV_CORE
    threads: 1  # 2 would block a 2-core run: the pretraining (1 thread) and this could not run side by side
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/simulate_phantom.py"


rule prepare_brainweb:
    output:
        "results/data/{dataset}/meta.json",
    wildcard_constraints:
        dataset=one_of(BRAINWEB_DATASETS),
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
        phantom_version=PHANTOM_VERSION,
    log:
        "logs/data/{dataset}.log",
    conda:
        ENV_CORE
    # the first use downloads the subject's files (about 12 files): on the submitting host
    localrule: True
    threads: 2
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/prepare_brainweb.py"
