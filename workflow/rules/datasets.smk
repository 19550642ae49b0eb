# Datasets described by data manifests (data_manifests/*.yaml, or your own): download into the
# data cache (QSMBENCH_DATA or the per-user cache), verify, extract safely, convert to the
# canonical layout.  Phantom datasets are made by simulate_phantom (data.smk).


rule prepare_dataset:
    input:
        manifest_inputs,
    output:
        "results/data/{dataset}/meta.json",
    wildcard_constraints:
        dataset=one_of(MANIFEST_DATASETS),
    params:
        manifest=lambda wildcards: str(dataset_manifest(config, wildcards.dataset).path),
        mirror=lambda wildcards: config["datasets"][wildcards.dataset].get("mirror"),
    log:
        "logs/data/{dataset}.log",
    conda:
        ENV_CORE
    # downloads happen where the network is: on the submitting host, not on cluster nodes
    localrule: True
    threads: 1
    resources:
        **CLUSTER_RESOURCES,  # partition/account from the config (resources.smk)
        mem_mb=6000,
        runtime=120,
    script:
        "../scripts/prepare_dataset.py"
