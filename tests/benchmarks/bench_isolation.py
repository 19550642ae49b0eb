"""Cost of isolating method runs: one workflow job in-process vs in a child process (fork or spawn).

    python tests/benchmarks/bench_isolation.py [--shape 32] [--repeats 5] [--methods tkd,cfl2,ilsqr]

For each method, :func:`qsmbench.runner.run_job` runs on the same saved phantom volume
``--repeats`` times in-process (``isolate=False``), isolated in a new interpreter
(``QSMBENCH_ISOLATE_START=spawn``) and isolated in a fork of this process (the default on Linux,
qsmbench.isolate), interleaved so all three see the same machine load, with 1 thread (the
default workflow's).  The table gives the median job wall time and CPU time (this process plus
its children) of each and the isolation overheads: a new interpreter's start, imports and plugin
discovery, or a fork.  The timed reconstruction itself (``wall_s``) is measured inside the
child.  On a loaded machine the wall-time difference grows with the load; the CPU difference
does not.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from qsmbench import runner
from qsmbench.io import save_volume
from qsmbench.phantom import make_phantom


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", default="tkd,cfl2,ilsqr")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qsmbench-bench-isolation-") as tmp:
        tmp = Path(tmp)
        vol = make_phantom((args.shape,) * 3, (96.0 / args.shape,) * 3, seed=1)
        save_volume(vol, tmp / "data")
        print(f"{args.shape}^3 phantom, {args.repeats} repeats (medians; overheads against in-process)\n")
        print(f"{'method':<8} {'job wall in/spawn/fork (s)':>28} {'overhead spawn/fork':>20} "
              f"{'job CPU in/spawn/fork (s)':>27} {'overhead spawn/fork':>20}")
        modes = ("in", "spawn", "fork")
        for method in args.methods.split(","):
            times = {m: [] for m in modes}
            cpus = {m: [] for m in modes}
            for i in range(args.repeats):
                for mode in modes:
                    os.environ["QSMBENCH_ISOLATE_START"] = mode
                    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
                    rec = runner.run_job(tmp / "data", tmp / f"{method}-{mode}-{i}" / "run.json", run_id=method,
                                         method=method, dataset="bench", isolate=mode != "in", threads=1)
                    times[mode].append(time.perf_counter() - t0)
                    cpus[mode].append(time.process_time() - c0 + _children_cpu() - k0)
                    assert rec["status"] == "ok", rec["error"]
                    if mode != "in":
                        assert rec["isolation"]["start"] == mode, (mode, rec["isolation"])
            t = {m: statistics.median(times[m]) for m in modes}
            c = {m: statistics.median(cpus[m]) for m in modes}
            print(f"{method:<8} {t['in']:>10.2f} / {t['spawn']:.2f} / {t['fork']:<6.2f} "
                  f"{t['spawn'] - t['in']:>9.2f} / {t['fork'] - t['in']:<8.2f} "
                  f"{c['in']:>9.2f} / {c['spawn']:.2f} / {c['fork']:<6.2f} "
                  f"{c['spawn'] - c['in']:>9.2f} / {c['fork'] - c['in']:<8.2f}")
        os.environ.pop("QSMBENCH_ISOLATE_START", None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
