"""Benchmark: QSMnet (supervised, quick profile) against TKD, CFL2 and INR-QSM-fast, unperturbed
and with B0 tilted 45 degrees, on unseen test phantoms.

Not collected by pytest.  Trains the profile from scratch into a temporary cache (the user's
cache is never touched), then reconstructs the default grid (80x96x80 at 2 mm) of a test-range
seed that no method trains or tunes on (default 5), unperturbed and as ``orient-45`` (the
phantom regenerated with B0 tilted 45 degrees about the first array axis, qsmbench.perturb).
Run:

    python tests/benchmarks/bench_qsmnet.py [--seed 5] [--profile quick] [--threads 2] [--no-inr]

Prints training wall and CPU time, then per method NRMSE (%) and Pearson r per volume and the
reconstruct wall time.  Timings are wall-clock on the machine as it is (load average printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from qsmbench import perturb, registry, runner, seeds
from qsmbench.phantom import make_phantom


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--profile", default="quick")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-inr", action="store_true", help="skip INR-QSM-fast (the slowest row)")
    args = p.parse_args(argv)
    seeds.check_role(args.seed, "test", "--seed")
    os.environ["QSMBENCH_CACHE"] = tempfile.mkdtemp(prefix="qsmbench-bench-qsmnet-")
    runner.set_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, {args.threads} "
          f"threads, device {args.device}, load average {os.getloadavg()[0]:.1f} at start")
    cls = registry.get_method_class("qsmnet")
    m = cls(profile=args.profile, seed=0, device=args.device)
    c0, t0 = time.process_time(), time.perf_counter()
    m.prepare([])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec = m.training_record
    print(f"# qsmnet/{args.profile} prepare: {wall:.1f} s wall, {cpu:.1f} s CPU (phantoms "
          f"{rec.get('data_s', 0):.1f} s, training {rec.get('train_s', 0):.1f} s); trained on "
          f"{m.trained_on['phantom_model']} seeds {m.trained_on['seeds']}")
    base = make_phantom((80, 96, 80), (2.0, 2.0, 2.0), seed=args.seed, calcification=True, name="bench")
    vols = {"none": base, "orient-45": perturb.apply(base, "orient-45")}
    print(f"# test seed {args.seed}, 80x96x80 @ 2 mm; NRMSE % / r / reconstruct wall s")
    header = f"{'method':<16}" + "".join(f"{k:>26}" for k in vols)
    print(header)
    print("-" * len(header))
    rows = [("tkd", "tkd"), ("cfl2", "cfl2"), (f"qsmnet/{args.profile}", m)]
    if not args.no_inr:
        rows.append(("inr_qsm_fast", "inr_qsm_fast"))
    for label, method in rows:
        cells = []
        for pid, vol in vols.items():
            res = runner.run_method(method, vol, profile="quick", device=args.device,
                                    identity={"dataset": "bench", "perturbation": pid})
            if res.status != "ok":
                cells.append(f"{'failed: ' + res.record['error'][:16]:>26}")
                continue
            truth, mask = vol.references["chi"], vol.mask
            err = 100 * np.linalg.norm((res.chi_ppm - truth)[mask]) / np.linalg.norm(truth[mask])
            r = np.corrcoef(res.chi_ppm[mask], truth[mask])[0, 1]
            cells.append(f"{err:12.1f} / {r:5.3f} / {res.record['wall_s']:5.2f}")
        print(f"{label:<16}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
