"""A tiny stand-in for a batch scheduler, for testing the cluster-generic profile here.

    fake_scheduler.py submit --state DIR [qsub options ...] JOBSCRIPT   -> prints a job id
    fake_scheduler.py status --state DIR JOBID                          -> running | success | failed

``submit`` records the request (the qsub-style options, parsed, and the job's properties from
the job script Snakemake wrote) as one JSON line in ``DIR/submissions.jsonl``, starts the job
script in the background and prints its id; the job's exit status lands in ``DIR/{id}.exit``.
``status`` reads that file.  Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path


def job_properties(jobscript: Path) -> dict:
    """The ``# properties = {...}`` line Snakemake writes into every job script."""
    for line in jobscript.read_text().splitlines():
        if line.startswith("# properties = "):
            return json.loads(line[len("# properties = "):])
    return {}


def parse_qsub(options: list[str]) -> dict:
    """``-N name -l nodes=1:ppn=2,mem=3000mb,walltime=10:00 -V`` -> {name, ppn, mem_mb, walltime_min}."""
    out: dict = {}
    it = iter(options)
    for opt in it:
        if opt == "-N":
            out["name"] = next(it)
        elif opt == "-l":
            for item in next(it).split(","):
                key, _, value = item.partition("=")
                if key == "nodes":
                    out["ppn"] = int(re.search(r"ppn=(\d+)", value).group(1))
                elif key == "mem":
                    out["mem_mb"] = int(value.removesuffix("mb"))
                elif key == "walltime":
                    out["walltime_min"] = int(value.split(":")[0])
    return out


def submit(state: Path, args: list[str]) -> int:
    jobscript = Path(args[-1])
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "counter", "a+") as fh:  # one submitter at a time (Snakemake submits serially)
        fh.seek(0)
        n = len(fh.read()) + 1
        fh.write(".")
    jobid = f"fake{n}"
    record = {"id": jobid, **parse_qsub(args[:-1]), "properties": job_properties(jobscript)}
    with open(state / "submissions.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    exit_file = state / f"{jobid}.exit"
    log = open(state / f"{jobid}.log", "w")  # noqa: SIM115 - handed to the background job
    subprocess.Popen(["/bin/sh", "-c", '/bin/sh "$1"; echo $? > "$2.tmp" && mv "$2.tmp" "$2"', "job",
                      str(jobscript), str(exit_file)], stdout=log, stderr=subprocess.STDOUT,
                     start_new_session=True)
    print(jobid)
    return 0


def status(state: Path, jobid: str) -> int:
    exit_file = state / f"{jobid}.exit"
    if not exit_file.exists():
        print("running")
    else:
        print("success" if exit_file.read_text().strip() == "0" else "failed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=("submit", "status"))
    ap.add_argument("--state", type=Path, required=True)
    known, rest = ap.parse_known_args(argv)
    if known.command == "submit":
        return submit(known.state, rest)
    return status(known.state, rest[0])


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
