# Methods that learn across subjects (their class `uses` "training", e.g. uqsm) are trained
# once per run, before any of that run's reconstruct jobs.  The weights go to the per-user
# cache keyed by a hash of the training configuration ($QSMBENCH_CACHE, default
# ~/.cache/qsmbench), where each reconstruct job's prepare() finds them; this rule's output is
# the record of that training (status, hash, weights file, time, loss per epoch).

# METHOD_CLASSES, run_env and reconstruct_gpus: common.smk
TRAINED_RUNS = [run_id for run_id, spec in RUNS.items()
                if "training" in getattr(METHOD_CLASSES.get(spec["method"]), "uses", ())]
# Extra input of reconstruct, by run: the pretrain record of runs whose method trains.
PRETRAINED = {run_id: [f"results/pretrain/{run_id}.json"] for run_id in TRAINED_RUNS}



rule pretrain:
    output:
        "results/pretrain/{run}.json",
    params:
        run=lambda wildcards: RUNS[wildcards.run],
        device=config.get("device", "auto"),
        method_dirs=config.get("method_dirs", []),
    log:
        "logs/pretrain/{run}.log",
    conda:
        run_env  # the deep-learning environment for torch/GPU methods, else the core one
    threads: pretrain_threads  # half the local cores: the other jobs run beside it
    priority: 10  # first when jobs compete: the trained runs' reconstructions wait for it
    resources:
        **GPU_JOB_RESOURCES,  # gpu=1 for GPU-capable methods, else none (resources.smk)
        training=1,  # one training at a time on a local run (profiles/default: --resources training=1)
        mem_mb=16000,  # the paper profile simulates 24 phantoms of up to 176^3 on a 2x finer grid
        runtime=240,
    script:
        "../scripts/pretrain.py"
