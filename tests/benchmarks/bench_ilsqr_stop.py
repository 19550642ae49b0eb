"""Benchmark: iLSQR step 1's stopping rule -- the author's tolerance rule vs the noise-scaled
discrepancy rule (``lsqr_stop``), and the choice of ``discrepancy_tau``.

Not collected by pytest.  Run:

    python tests/benchmarks/bench_ilsqr_stop.py [--n-seeds 2] [--shape 80 96 80] [--voxel-size 2 2 2]
                                                [--snr 0 40 20 10] [--tau 0.5 --tau 1 ...]

On MNI phantoms of reserved *tuning* seeds (``qsmbench.seeds.draw("tune", n, "ilsqr-stop")``, never
a test seed), for each peak SNR (0 = noise-free; ``perturb.add_noise(vol, snr, seed=1)``) prints
the NRMSE (%, ``qsmbench.metrics``) of TKD (reference), of iLSQR's step 1 and final result with
``lsqr_stop="tolerance"`` (the author's rule) and with ``"discrepancy"`` for each tau, with step 1's
iteration count and stop reason.  The last block averages over the seeds and gives, per rule, the
mean and worst ratio of iLSQR's final NRMSE to TKD's: the default tau is the one with the best
worst-case ratio.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from _tuning import nrmse, stop_rule_parser

from qsmbench import perturb, registry, seeds
from qsmbench.phantom import make_phantom


def main(argv=None):
    p = stop_rule_parser(__doc__.splitlines()[0], "0.5, 1, 1.5, 2")
    args = p.parse_args(argv)
    taus = args.tau or [0.5, 1.0, 1.5, 2.0]
    tune = seeds.draw("tune", args.n_seeds, "ilsqr-stop")
    print(f"# tune seeds {tune}; phantom {tuple(args.shape)} @ {tuple(args.voxel_size)} mm (mni); "
          f"noise seed 1; {len(os.sched_getaffinity(0))} cores; load {os.getloadavg()[0]:.1f}")
    header = (f"{'seed':>8} {'SNR':>5} {'rule':<18} {'step1 %':>8} {'final %':>8} {'TKD %':>7} "
              f"{'iters':>6} {'stop':<26} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    run_ilsqr = sys.modules[registry.get_method_class("ilsqr").__module__].ilsqr   # returns step 1 too
    tkd = registry.get_method("tkd")
    rules = [("tolerance", {"lsqr_stop": "tolerance"})] + [
        (f"discrepancy {t:g}", {"lsqr_stop": "discrepancy", "discrepancy_tau": t}) for t in taus]
    ratios: dict[str, list[float]] = {name: [] for name, _ in rules}
    for seed in tune:
        vol = make_phantom(tuple(args.shape), tuple(args.voxel_size), seed=seed, calcification=True)
        for snr in args.snr:
            noisy = vol if snr == 0 else perturb.add_noise(vol, snr, seed=1)
            label = "inf" if snr == 0 else f"{snr:g}"
            ref = nrmse(tkd.reconstruct(noisy), noisy)
            for name, params in rules:
                t0 = time.perf_counter()
                chi, details = run_ilsqr(noisy.field_ppm, noisy.mask, noisy.voxel_size_mm, noisy.b0_dir,
                                         **params)
                wall = time.perf_counter() - t0
                final, step1 = nrmse(chi, noisy), nrmse(details["chi_lsqr"], noisy)
                ratios[name].append(final / ref)
                info = details["lsqr"]
                print(f"{seed:>8} {label:>5} {name:<18} {step1:8.1f} {final:8.1f} {ref:7.1f} "
                      f"{info['iterations']:>6} {info['stop']:<26} {wall:7.1f}", flush=True)
    print()
    print(f"{'rule':<18} {'mean final/TKD':>15} {'worst final/TKD':>16}")
    for name, r in ratios.items():
        print(f"{name:<18} {np.mean(r):15.3f} {np.max(r):16.3f}")


if __name__ == "__main__":
    main()
