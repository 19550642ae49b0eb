"""Cost of isolating method runs: one workflow job in-process vs in a child process.

    python tests/benchmarks/bench_isolation.py [--shape 32] [--repeats 5] [--methods tkd,cfl2,ilsqr]

For each method, :func:`qsmbench.runner.run_job` runs on the same saved phantom volume
``--repeats`` times with ``isolate=False`` and ``isolate=True`` (interleaved, so both see the
same machine load); the table gives the median job wall time and CPU time (this process plus
its children) of each, and the differences: the child's interpreter start, imports and plugin
discovery.  The timed reconstruction itself (``wall_s``) is measured inside the child.  On a
loaded machine the wall-time difference grows with the load; the CPU difference does not.
"""

from __future__ import annotations

import argparse
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
        print(f"{args.shape}^3 phantom, {args.repeats} repeats (medians)\n")
        print(f"{'method':<8} {'job wall in / iso (s)':>22} {'overhead':>9} {'job CPU in / iso (s)':>21} "
              f"{'overhead':>9} {'wall_s in / iso':>17}")
        for method in args.methods.split(","):
            times = {False: [], True: []}
            cpus = {False: [], True: []}
            walls = {False: [], True: []}
            for i in range(args.repeats):
                for isolate in (False, True):
                    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
                    rec = runner.run_job(tmp / "data", tmp / f"{method}-{isolate}-{i}" / "run.json", run_id=method,
                                         method=method, dataset="bench", isolate=isolate)
                    times[isolate].append(time.perf_counter() - t0)
                    cpus[isolate].append(time.process_time() - c0 + _children_cpu() - k0)
                    walls[isolate].append(rec["wall_s"])
                    assert rec["status"] == "ok", rec["error"]
            a, b = statistics.median(times[False]), statistics.median(times[True])
            ca, cb = statistics.median(cpus[False]), statistics.median(cpus[True])
            wa, wb = statistics.median(walls[False]), statistics.median(walls[True])
            print(f"{method:<8} {a:>10.2f} / {b:<9.2f} {b - a:>9.2f} {ca:>10.2f} / {cb:<8.2f} {cb - ca:>9.2f} "
                  f"{wa:>8.3f} / {wb:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
