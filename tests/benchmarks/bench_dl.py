"""Benchmark: the deep-learning methods (uQSM, INR-QSM, INR-QSM-fast) against TKD and CFL2.

Not collected by pytest.  Builds one phantom of the default (MNI) model from the reserved *tuning*
seed range (default ``seeds.draw("tune", 1, "bench_dl")``: never a seed that the workflow's
datasets use, nor one a method was trained on; 80x96x80 at 2 mm with the calcification, as the
default run) and
runs each method in the given profile through the runner (prepare untimed, reconstruct timed),
with the default run's thread count (1).  uQSM trains into a temporary cache unless
``--cache`` names one.  Run:

    python tests/benchmarks/bench_dl.py [--seed TUNE_SEED] [--model mni] [--shape 80 96 80] [--voxel-size 2 2 2]
        [--profile quick] [--methods tkd cfl2 uqsm inr_qsm inr_qsm_fast] [--threads 1]

Prints NRMSE (%) and HFEN (%) against the phantom's chi, the correlation with it, prepare and
reconstruct wall time and the CPU time of the whole run (prepare included; this process).
Timings with other load on the machine are pessimistic.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from qsmbench import metrics, runner, seeds
from qsmbench.phantom import make_phantom


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=seeds.draw("tune", 1, "bench_dl")[0])
    p.add_argument("--model", default="mni", choices=["mni", "analytic"])
    p.add_argument("--shape", type=int, nargs=3, default=[80, 96, 80])
    p.add_argument("--voxel-size", type=float, nargs=3, default=[2.0, 2.0, 2.0])
    p.add_argument("--profile", default="quick")
    p.add_argument("--methods", nargs="*", default=["tkd", "cfl2", "uqsm", "inr_qsm", "inr_qsm_fast"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="", help="QSMBENCH_CACHE for trained weights (default: a temporary one)")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE")
    args = p.parse_args(argv)
    seeds.check_role(args.seed, "tune", "--seed")
    os.environ["QSMBENCH_CACHE"] = args.cache or tempfile.mkdtemp(prefix="qsmbench-bench-dl-")
    runner.set_threads(args.threads)
    overrides: dict[str, dict] = {}
    for item in args.param:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        overrides.setdefault(method, {})[name] = value
    t0 = time.perf_counter()
    vol = make_phantom(tuple(args.shape), tuple(args.voxel_size), model=args.model, seed=args.seed,
                       calcification=True)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, {args.threads} "
          f"thread(s), load average {os.getloadavg()[0]:.1f}; {args.model} phantom, tuning seed {args.seed} "
          f"{tuple(args.shape)} @ "
          f"{tuple(args.voxel_size)} mm built in {time.perf_counter() - t0:.1f} s; profile {args.profile}")
    print(f"{'method':<14} {'NRMSE %':>8} {'HFEN %':>7} {'r':>6} {'prepare s':>10} {'wall s':>8} {'CPU s':>7}  notes")
    truth, mask = vol.references["chi"], vol.mask
    for name in args.methods:
        c0 = time.process_time()
        res = runner.run_method(name, vol, params=overrides.get(name, {}), profile=args.profile, device="cpu",
                                identity={"dataset": f"bench-seed{args.seed}", "perturbation": "none"})
        cpu = time.process_time() - c0
        if res.status != "ok":
            print(f"{name:<14} failed: {res.record['error']}")
            continue
        nrmse, hfen = (s.value for s in metrics.evaluate(res.chi_ppm, truth, mask, metrics=["nrmse", "hfen"]))
        r = float(np.corrcoef(res.chi_ppm[mask], truth[mask])[0, 1])
        notes = "; ".join(n for n in res.record["notes"])[:160]
        print(f"{name:<14} {nrmse:8.1f} {hfen:7.1f} {r:6.3f} {res.record['prepare_s'] or 0:10.1f} "
              f"{res.record['wall_s']:8.1f} {cpu:7.1f}  "
              f"{notes}", flush=True)


if __name__ == "__main__":
    main()
