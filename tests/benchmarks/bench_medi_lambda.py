"""Benchmark: MEDI's lambda rule -- the toolbox's fixed lambda = 1000 vs the discrepancy principle.

Not collected by pytest.  Run:

    python tests/benchmarks/bench_medi_lambda.py [--n-seeds 2] [--shape 80 96 80] [--voxel-size 2 2 2]
                                                 [--snr 0 40 20 10] [--tau 1.0]

On phantoms of reserved *tuning* seeds (``qsmbench.seeds.draw("tune", n, "medi-lambda")``, never a
test seed), for each peak SNR (0 = noise-free; qsmbench's noise perturbation
``perturb.add_noise(vol, snr, seed=1)``: complex Gaussian noise, phase noise sigma/|magnitude|)
prints NRMSE (%, demeaned in the mask, ``qsmbench.metrics``), the lambda used, the estimated
weighted phase noise, the final residual / target, the wall time and the number of 3-D FFTs (a
load-independent cost) of: TKD (reference),
MEDI ``lambda_rule=fixed`` (lam 1000) and MEDI ``lambda_rule=discrepancy`` (``discrepancy_tau``
from ``--tau``, the search's tolerance from ``--search-tol``; repeat a flag for several).  A last
block averages over the seeds.
"""

from __future__ import annotations

import os
import time

import numpy as np
from _tuning import nrmse, stop_rule_parser

from qsmbench import perturb, physics, registry, seeds
from qsmbench.phantom import make_phantom


def main(argv=None):
    p = stop_rule_parser(__doc__.splitlines()[0], "1.0")
    p.add_argument("--no-fixed", action="store_true", help="skip MEDI with the fixed lambda")
    p.add_argument("--search-tol", type=float, action="append", default=None,
                   help="the discrepancy search's search_tol (repeatable; default: MEDI's)")
    args = p.parse_args(argv)
    taus = args.tau or [1.0]
    tune = seeds.draw("tune", args.n_seeds, "medi-lambda")
    print(f"# tune seeds {tune}; phantom {tuple(args.shape)} @ {tuple(args.voxel_size)} mm (mni); "
          f"noise seed 1; {len(os.sched_getaffinity(0))} cores; load {os.getloadavg()[0]:.1f}")
    header = (f"{'seed':>8} {'SNR':>5} {'method':<26} {'NRMSE %':>8} {'lambda':>9} {'sigma_w':>8} "
              f"{'res/tgt':>8} {'wall s':>7} {'FFTs':>6}")
    print(header)
    print("-" * len(header))
    medi_cls = registry.get_method_class("medi")
    tkd = registry.get_method("tkd")
    rows = []
    for seed in tune:
        vol = make_phantom(tuple(args.shape), tuple(args.voxel_size), seed=seed, calcification=True)
        for snr in args.snr:
            noisy = vol if snr == 0 else perturb.add_noise(vol, snr, seed=1)
            label = "inf" if snr == 0 else f"{snr:g}"
            runs = [("tkd", tkd, {})]
            if not args.no_fixed:
                runs.append(("medi fixed 1000", medi_cls(lambda_rule="fixed", lam=1000.0), {}))
            tols = args.search_tol or [medi_cls.parameters["search_tol"]]
            runs += [(f"medi discr. t={t:g} tol={tol:g}",
                      medi_cls(lambda_rule="discrepancy", discrepancy_tau=t, search_tol=tol), {})
                     for t in taus for tol in tols]
            for name, m, _ in runs:
                t0 = time.perf_counter()
                with physics.count_ffts() as ffts:
                    chi = m.reconstruct(noisy.for_method())
                wall = time.perf_counter() - t0
                info = getattr(m, "info", {}) or {}
                lam = info.get("lam", float("nan"))
                sw = info.get("noise_sigma_w_rad", float("nan"))
                ratio = info.get("final_ratio", float("nan"))
                err = nrmse(chi, noisy)
                rows.append((seed, label, name, err, lam, wall, ffts["n"]))
                print(f"{seed:>8} {label:>5} {name:<26} {err:8.1f} {lam:9.4g} {sw:8.4f} {ratio:8.3f} {wall:7.1f} "
                      f"{ffts['n']:6d}", flush=True)
    print("\n# mean over seeds")
    print(f"{'SNR':>5} {'method':<26} {'NRMSE %':>8} {'lambda (geo)':>12} {'wall s':>7} {'FFTs':>6}")
    order = ["inf" if s == 0 else f"{s:g}" for s in args.snr]
    keys = sorted({(r[1], r[2]) for r in rows}, key=lambda k: (order.index(k[0]), k[1]))
    for label, name in keys:
        sel = [r for r in rows if r[1] == label and r[2] == name]
        lams = [r[4] for r in sel if np.isfinite(r[4])]
        geo = float(np.exp(np.mean(np.log(lams)))) if lams else float("nan")
        err, wall, nfft = np.mean([r[3] for r in sel]), np.mean([r[5] for r in sel]), np.mean([r[6] for r in sel])
        print(f"{label:>5} {name:<26} {err:8.1f} {geo:12.4g} {wall:7.1f} {nfft:6.0f}")


if __name__ == "__main__":
    main()
