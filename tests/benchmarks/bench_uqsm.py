"""Benchmark: uQSM training time and accuracy per profile against TKD and CFL2.

Not collected by pytest.  Trains each profile from scratch into a temporary cache (the user's
cache is never touched), then reconstructs phantoms the training never saw (seed 0; training
phantoms use seeds of the reserved training range, see qsmbench.seeds).  Run:

    python tests/benchmarks/bench_uqsm.py [--profiles quick cpu] [--threads 2] [--device cpu]

Timings are wall-clock on the machine as it is: other processes on the CPU make them longer.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from qsmbench import metrics, registry, runner
from qsmbench.phantom import make_phantom

PHANTOMS = {
    "64^3 @ 1 mm": dict(shape=(64, 64, 64), voxel_size_mm=(1.0, 1.0, 1.0), seed=0),
    "64^3 @ 1 mm + calc": dict(shape=(64, 64, 64), voxel_size_mm=(1.0, 1.0, 1.0), seed=0, calcification=True),
    "80x96x80 @ 2 mm (default run)": dict(shape=(80, 96, 80), voxel_size_mm=(2.0, 2.0, 2.0), seed=0,
                                          calcification=True),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", nargs="*", default=["quick", "cpu"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    os.environ["QSMBENCH_CACHE"] = tempfile.mkdtemp(prefix="qsmbench-bench-uqsm-")
    runner.set_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
          f"{args.threads} threads, device {args.device}, load average {os.getloadavg()[0]:.1f} at start")
    vols = {name: make_phantom(**spec) for name, spec in PHANTOMS.items()}
    header = f"{'method':<14} {'prepare s':>9} " + " ".join(f"{n:>30}" for n in vols)
    print(f"{'':<24} NRMSE % / wall s of reconstruct")
    print(header)
    print("-" * len(header))
    cls = registry.get_method_class("uqsm")
    rows = [("tkd", None), ("cfl2", None)] + [("uqsm", prof) for prof in args.profiles]
    for name, profile in rows:
        prepare_s = "-"
        if name == "uqsm":
            m = cls(profile=profile, seed=0, device=args.device)
            t0 = time.perf_counter()
            m.prepare([])
            prepare_s = f"{time.perf_counter() - t0:9.1f}"
            history = m.training_record.get("history", [])
            label, method = f"uqsm/{profile}", m
        else:
            label, method = name, name
        cells = []
        for vol in vols.values():
            res = runner.run_method(method, vol, profile="quick", device=args.device,
                                    identity={"dataset": "bench", "perturbation": "none"})
            if res.status != "ok":
                cells.append(f"{'failed':>30}")
                continue
            nrmse = metrics.evaluate(res.chi_ppm, vol.references["chi"], vol.mask, metrics=["nrmse"])[0].value
            cells.append(f"{nrmse:22.1f} / {res.record['wall_s']:5.2f}")
        print(f"{label:<14} {prepare_s:>9} " + " ".join(cells), flush=True)
        if name == "uqsm":
            print(f"{'':<14} loss per epoch: " + " ".join(f"{h['loss']:.4g}" for h in history))


if __name__ == "__main__":
    main()
