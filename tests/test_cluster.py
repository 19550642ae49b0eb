"""The cluster profiles (workflow/profiles/cluster-generic, slurm): a run through a fake scheduler,
and what a SLURM dry run would request for each job."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
FAKE = Path(__file__).with_name("fake_scheduler.py")


def needs_plugin(module: str) -> None:
    """Skip, saying how to install it, where the profile's executor plugin is missing.  The README's
    test install (`.[dl,test]`) pulls the `cluster` extra, so CI always runs these
    (tests/test_packaging.py checks that it does)."""
    pytest.importorskip(module, reason=f"{module} not installed: pip install -e '.[cluster]'")


def tiny_config(**extra) -> dict:
    cfg = {
        "datasets": {"tiny": {"type": "phantom", "model": "analytic", "shape": [24, 24, 24],
                              "voxel_size_mm": [2.0, 2.0, 2.0], "seed": 1}},
        "perturbations": ["none", {"noise": {"snr": [20], "seeds": 2}}],
        "methods": {"tkd": {}},
        "device": "cpu",
    }
    cfg.update(extra)
    return cfg


def run_snakemake(workdir: Path, config: dict, profile: str, *args: str, env=None) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(workdir / "config.yaml"),
                           "--workflow-profile", str(ROOT / "workflow" / "profiles" / profile), *args],
                          capture_output=True, text=True, timeout=1200, env=env)


@pytest.mark.slow
def test_generic_profile_runs_the_tiny_config_through_a_fake_scheduler(tmp_path):
    needs_plugin("snakemake_executor_plugin_cluster_generic")
    state = tmp_path / "scheduler"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "QSMBENCH_SUBMIT": f"{sys.executable} {FAKE} submit --state {state}"}
    proc = run_snakemake(tmp_path / "run", tiny_config(), "cluster-generic",
                         "--cluster-generic-status-cmd", f"{sys.executable} {FAKE} status --state {state}",
                         "--cores", "2", "--latency-wait", "10", "--max-status-checks-per-second", "5",
                         "results/metrics.parquet", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "run" / "results" / "metrics.parquet")
    assert set(table.perturbation) == {"none", "noise-snr20-seed1", "noise-snr20-seed2"}
    assert (table[table.metric == "rmse"].status == "ok").all()

    subs = [json.loads(line) for line in (state / "submissions.jsonl").read_text().splitlines()]
    # every job went through the scheduler (none ran on the submit host), each exited 0
    assert all((state / f"{s['id']}.exit").read_text().strip() == "0" for s in subs)
    single = [s for s in subs if s["properties"]["type"] == "single"]
    groups = [s for s in subs if s["properties"]["type"] == "group"]
    by_rule = {}
    for s in single:
        by_rule.setdefault(s["properties"]["rule"], []).append(s)
    assert len(by_rule["reconstruct"]) == 3 and len(by_rule["simulate_phantom"]) == 1
    assert len(by_rule["aggregate"]) == 1
    # the qsub line carries each rule's declared threads, memory and runtime
    assert {(s["ppn"], s["mem_mb"], s["walltime_min"]) for s in by_rule["simulate_phantom"]} == {(1, 4000, 20)}
    assert {(s["ppn"], s["mem_mb"]) for s in by_rule["reconstruct"]} == {(1, 6000)}
    assert {(s["ppn"], s["mem_mb"], s["walltime_min"]) for s in by_rule["aggregate"]} == {(1, 2000, 10)}
    # each reconstruct job also scored its run (no evaluate jobs); the 2 tiny perturb jobs are
    # batched into one submission.  With --cores 2 both run side by side (1 thread, 6000 MB and
    # 30 min each): 2 threads, 12000 MB, 30 min.
    assert {tuple(s["properties"]["output"]) for s in by_rule["reconstruct"]} == {
        (f"results/recon/tiny/{p}/tkd/run.json", f"results/metrics/tiny/{p}/tkd.json")
        for p in ("none", "noise-snr20-seed1", "noise-snr20-seed2")}
    assert "evaluate" not in by_rule and "perturb" not in by_rule
    assert {g["properties"]["groupid"] for g in groups} == {"tiny_perturb"}
    assert len(groups) == 1 and len(groups[0]["properties"]["output"]) == 2
    assert (groups[0]["ppn"], groups[0]["mem_mb"], groups[0]["walltime_min"]) == (2, 12000, 30)
    # no job asked for a GPU (TKD is CPU-only)
    assert not any("gpu" in s["properties"]["resources"] for s in subs)


def dry_run_jobs(text: str) -> list[dict]:
    """Each job block of `snakemake -n` output: rule, wildcards and resources."""
    jobs = []
    for block in re.split(r"\n\s*rule ", text)[1:]:
        rule = block.split(":", 1)[0].strip()
        wc = re.search(r"wildcards: (.*)", block)
        res = re.search(r"resources: (.*)", block)
        jobs.append({"rule": rule,
                     "wildcards": dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {},
                     "resources": dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}})
    return jobs


def test_slurm_dry_run_requests_gpus_only_for_gpu_capable_jobs(tmp_path):
    needs_plugin("snakemake_executor_plugin_slurm")
    cfg = tiny_config(methods={"tkd": {}, "inr_qsm_fast": {}, "uqsm": {}}, device="auto",
                      cluster={"partition": "cpu", "gpu_partition": "gpu", "account": "lab"})
    proc = run_snakemake(tmp_path / "run", cfg, "slurm", "-n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    recon = [j for j in jobs if j["rule"] == "reconstruct"]
    assert len(recon) == 9  # 3 volumes x 3 methods
    gpu_capable = {"inr_qsm_fast", "uqsm"}
    for job in jobs:
        run = job["wildcards"].get("run")
        wants_gpu = job["rule"] in ("reconstruct", "pretrain") and run in gpu_capable
        assert (job["resources"].get("gpu") == "1") == wants_gpu, job
        assert ("gpu" in job["resources"]) == wants_gpu, job
        if job["rule"] in ("all",):
            continue
        # partition and account come from the config's `cluster` key; GPU jobs to the GPU partition
        assert job["resources"]["slurm_partition"] == ("gpu" if wants_gpu else "cpu"), job
        assert job["resources"]["slurm_account"] == "lab", job
        assert int(job["resources"]["mem_mb"]) > 0 and int(job["resources"]["runtime"]) > 0, job
    assert any(j["rule"] == "pretrain" and j["wildcards"]["run"] == "uqsm" for j in jobs)
    # device: cpu -> no job asks for a GPU
    cfg["device"] = "cpu"
    proc = run_snakemake(tmp_path / "cpu", cfg, "slurm", "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any("gpu" in j["resources"] for j in dry_run_jobs(proc.stdout + proc.stderr))


def test_slurm_profile_names_no_partition_or_account():
    """Nothing site-specific is hard-coded in the profiles."""
    for name in ("slurm", "cluster-generic"):
        profile = yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())
        text = json.dumps(profile)
        assert "slurm_partition" not in text and "slurm_account" not in text


# --------------------------------------------------------------------------- DAG speed shims
def test_cached_function_signatures_match_inspect():
    import functools
    import inspect

    import snakemake.common as common
    import snakemake.rules as sm_rules

    from qsmbench.jobs import cache_function_signatures

    assert cache_function_signatures() and cache_function_signatures()  # idempotent
    assert sm_rules.get_function_params is common.get_function_params

    def f(wildcards, input, threads=1):
        return 0

    class R:
        def evaluate(self, *args, **kwargs):
            return 0

    part = functools.partial(f, threads=2)
    for func in (f, R().evaluate, part, lambda wildcards: 1):
        expected = list(inspect.signature(func).parameters)
        assert list(common.get_function_params(func)) == expected
        assert list(common.get_function_params(func)) == expected  # from the cache
    assert list(common.get_function_params(R().evaluate)) == ["args", "kwargs"]  # bound: no self
    # Snakemake's own override still wins
    def g(*args):
        return 0

    common.overwrite_function_params(g, ["a", "b"])
    assert common.get_function_params(g) == ["a", "b"]
    assert common.get_input_function_aux_params(f, {"input": 1, "threads": 2, "other": 3}) == \
        {"input": 1, "threads": 2}


def test_job_descriptions_are_skipped_only_when_every_handler_drops_them():
    from types import SimpleNamespace

    from snakemake.settings.enums import Quietness

    from qsmbench.jobs import skip_job_info_nobody_reads

    described = []

    class Job:
        def __init__(self, quiet, plugins):
            settings = SimpleNamespace(quiet=quiet)
            manager = SimpleNamespace(settings=settings, plugin_handlers=plugins)
            self.dag = SimpleNamespace(workflow=SimpleNamespace(logger_manager=manager))

        def log_info(self, indent=False, printshellcmd=True):
            described.append((indent, printshellcmd))

    assert skip_job_info_nobody_reads(Job) and skip_job_info_nobody_reads(Job)  # idempotent
    Job({Quietness.RULES}, []).log_info()                          # --quiet rules: nobody reads it
    Job({Quietness.RULES, Quietness.PROGRESS}, []).log_info(True)  # ... nor here
    assert described == []
    Job(set(), []).log_info(True, False)                           # not quiet: described, as before
    Job({Quietness.PROGRESS}, []).log_info()                       # quiet about something else
    Job({Quietness.ALL}, []).log_info()                            # -q: a dry run still shows jobs
    Job({Quietness.RULES}, [object()]).log_info()                  # a logger plugin sees every event
    assert described == [(True, False), (False, True), (False, True), (False, True)]


def test_a_dry_run_still_describes_every_job_unless_told_to_be_quiet(tmp_path):
    """The workflow with the skip installed: ``-n`` lists each job with its resources, ``-n --quiet
    rules`` only the job counts."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": {"ph": {"type": "phantom", "model": "analytic", "shape": [24, 24, 24],
                            "voxel_size_mm": [2.0, 2.0, 2.0], "seed": 1}},
        "perturbations": ["none"], "methods": {"tkd": {}, "cfl2": {}}, "device": "cpu"}))
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
            "--configfile", str(cfg), "--cores", "1", "-n"]
    loud = subprocess.run(base, capture_output=True, text=True, cwd=ROOT)
    quiet = subprocess.run(base + ["--quiet", "rules"], capture_output=True, text=True, cwd=ROOT)
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr[-2000:] + quiet.stderr[-2000:]
    loud_text, quiet_text = loud.stdout + loud.stderr, quiet.stdout + quiet.stderr
    assert loud_text.count("rule reconstruct:") == 2
    assert "wildcards: dataset=ph, perturbation=none, run=tkd" in loud_text
    assert "mem_mb=" in loud_text
    assert "rule reconstruct:" not in quiet_text and "reconstruct" in quiet_text  # the job stats table


def test_scripts_are_checked_once_per_rule_unless_their_path_has_wildcards():
    from types import SimpleNamespace

    from qsmbench.jobs import check_scripts_once_per_rule

    calls = []

    class Processor:
        script_type = "script"

        def process_job(self, job):
            calls.append(job.name)
            if "missing" in (job.rule.script or ""):
                raise FileNotFoundError(job.rule.script)

    assert check_scripts_once_per_rule(Processor)
    proc = Processor()

    def job(name, rule, script):
        return SimpleNamespace(name=name, is_script=script is not None, rule=SimpleNamespace(name=rule, script=script))

    for i in range(3):
        proc.process_job(job(f"r{i}", "reconstruct", "../scripts/reconstruct.py"))
        proc.process_job(job(f"w{i}", "wild", "../scripts/{wildcards.x}.py"))
        proc.process_job(job(f"s{i}", "shell", None))
    assert calls == ["r0", "w0", "s0", "w1", "s1", "w2", "s2"]
    with pytest.raises(FileNotFoundError):  # a script that is not there still fails the first job
        proc.process_job(job("m0", "broken", "../scripts/missing.py"))
    with pytest.raises(FileNotFoundError):  # ... and every later one (nothing was remembered)
        proc.process_job(job("m1", "broken", "../scripts/missing.py"))
