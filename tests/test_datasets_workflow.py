"""The tiny end-to-end workflow on a challenge-layout dataset served by a local HTTP server.

A 2016-layout archive (12x12x10 voxels) is served on 127.0.0.1; the workflow downloads it into a
temporary cache (QSMBENCH_DATA), converts it, reconstructs, scores against both references and
renders the report, next to a tiny phantom dataset (the two rules that make results/data/ must
not collide).  No internet.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_datasets import ARCHIVE, DataServer, qsm2016_archive, qsm2016_manifest

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")


def snakemake(workdir: Path, config: dict, env: dict, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture
def server():
    s = DataServer()
    yield s
    s.close()


@pytest.mark.slow
def test_workflow_on_a_served_challenge_dataset(tmp_path, server):
    arrays, archive, hashes = qsm2016_archive()
    server.add(f"qsm2016/{ARCHIVE}", archive)
    manifest = qsm2016_manifest(tmp_path, hashes)
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSMBENCH_")}
    env["QSMBENCH_DATA"] = str(cache)
    config = {
        "datasets": {
            "challenge": {"type": "manifest", "manifest": str(manifest), "mirror": server.url},
            "tiny": {"type": "phantom", "shape": [24, 24, 20], "voxel_size_mm": [5.0, 5.0, 5.0], "seed": 1},
        },
        "perturbations": ["none"],
        "methods": {"tkd": {}},
    }
    run = tmp_path / "run"
    proc = snakemake(run, config, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert server.gets(f"qsm2016/{ARCHIVE}") == 1
    assert (cache / "qsm2016" / ARCHIVE).is_file() and (cache / "checksums.lock.json").is_file()
    log = (run / "logs" / "data" / "challenge.log").read_text()
    assert "no official checksum exists" in log                     # trust on first use, said in the log
    table = pd.read_parquet(run / "results" / "metrics.parquet")
    challenge = table[table.dataset == "challenge"]
    assert set(challenge.reference) == {"chi_33", "chi_cosmos"}       # both references scored
    ok = challenge[challenge.status == "ok"]
    for ref in ("chi_33", "chi_cosmos"):
        assert {"rmse", "hfen", "xsim", "roi_error_gm", "roi_error_wm"} <= set(ok[ok.reference == ref].metric)
    assert set(table[table.dataset == "tiny"].reference) == {"chi"}
    html = (run / "results" / "report" / "index.html").read_text()
    assert "challenge" in html and "chi_cosmos" in html
    # nothing to do again, and a fresh dataset folder is rebuilt from the cache without a request
    again = snakemake(run, config, env, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    shutil.rmtree(run / "results" / "data" / "challenge")
    server.close()
    proc = snakemake(run, config, env, "results/data/challenge/meta.json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert server.gets() == 1
