"""Tune INR-QSM-fast's regularisation weights on tuning-range phantoms (never on a test seed).

Not collected by pytest.  Scores a candidate (lambda_smooth, lambda_smooth_noise, lambda_grad)
by the mean NRMSE of INR-QSM-fast (profile ``--profile``, the default run's ``quick``) over
``--seeds`` phantoms drawn from the reserved *tuning* range (``qsmbench.seeds.draw("tune", n,
"inr_qsm_fast")``), each noiseless and with complex noise at the peak SNRs ``--snr``.  The search
is a coordinate descent from ``--start``: each weight in turn takes each value of its list with
the others at the best so far, for ``--passes`` passes (``--search grid`` scores the full grid
instead).  Prints every candidate scored, the table best first, the choice, and the
``tuned_on`` record to paste into ``INRQSMFast``.  Rerun with ``--model`` when the default
phantom model changes:

    python tests/benchmarks/tune_inr_fast.py [--model analytic] [--seeds 2] [--snr 10]
        [--shape 80 96 80] [--voxel-size 2 2 2] [--threads 1] [--search coordinate|grid]
        [--lambda-smooth 0.05 0.15 0.5] [--lambda-smooth-noise 0.2 0.6 2] [--lambda-grad 0.1 0.3 1]

Each candidate costs seeds x (1 + len(snr)) fits of about 20 s on one idle core.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from _tuning import conditions, default_model, header, mean, nrmse, phantom

from qsmbench import registry, runner, seeds
from qsmbench.phantom import PHANTOM_VERSION

STREAM = "inr_qsm_fast"
KEYS = ("lambda_smooth", "lambda_smooth_noise", "lambda_grad")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model(), help="phantom model (default: make_phantom's default)")
    ap.add_argument("--seeds", type=int, default=2, help="number of tuning-range phantoms")
    ap.add_argument("--snr", type=float, nargs="*", default=[10.0], help="peak SNRs of the noisy versions")
    ap.add_argument("--shape", type=int, nargs=3, default=[80, 96, 80])
    ap.add_argument("--voxel-size", type=float, nargs=3, default=[2.0, 2.0, 2.0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--search", choices=["coordinate", "grid"], default="coordinate")
    ap.add_argument("--passes", type=int, default=1, help="coordinate-descent passes")
    ap.add_argument("--start", type=float, nargs=3, default=[0.15, 0.6, 0.3], metavar=KEYS,
                    help="coordinate descent starts here (the previous defaults)")
    ap.add_argument("--lambda-smooth", type=float, nargs="+", default=[0.05, 0.15, 0.5])
    ap.add_argument("--lambda-smooth-noise", type=float, nargs="+", default=[0.2, 0.6, 2.0])
    ap.add_argument("--lambda-grad", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    args = ap.parse_args(argv)
    runner.set_threads(args.threads)
    tune_seeds = seeds.draw("tune", args.seeds, STREAM)
    print(header("tune_inr_fast", args.model, tune_seeds), flush=True)
    data = []
    for s in tune_seeds:
        vol = phantom(s, args.shape, args.voxel_size, args.model)
        data += [(s, label, v) for label, v in conditions(vol, args.snr, s)]
    cls = registry.get_method_class("inr_qsm_fast")
    values = dict(zip(KEYS, (args.lambda_smooth, args.lambda_smooth_noise, args.lambda_grad)))
    print(f"# {args.search} search over {json.dumps(values)}; {len(data)} volumes "
          f"({', '.join(f'{s}/{label}' for s, label, _ in data)}), profile {args.profile}; NRMSE % per volume, "
          f"then the mean", flush=True)
    scored: dict[tuple, tuple[float, list[float]]] = {}
    t0 = time.perf_counter()

    def score(cand: tuple) -> float:
        if cand not in scored:
            params = dict(zip(KEYS, cand))
            nr = []
            for s, _, v in data:
                res = runner.run_method(cls(profile=args.profile, seed=s, device="cpu", **params), v)
                nr.append(nrmse(res.chi_ppm, v) if res.status == "ok" else float("inf"))
            scored[cand] = (mean(nr), nr)
            print("  ".join(f"{k} {c:<6g}" for k, c in zip(KEYS, cand)) + f"  mean {scored[cand][0]:6.2f}  "
                  + " ".join(f"{x:5.1f}" for x in nr) + f"   [{time.perf_counter() - t0:.0f} s]", flush=True)
        return scored[cand][0]

    if args.search == "grid":
        for cand in itertools.product(*values.values()):
            score(cand)
    else:
        best = tuple(args.start)
        score(best)
        for _ in range(args.passes):
            for i, key in enumerate(KEYS):
                for v in values[key]:
                    cand = best[:i] + (v,) + best[i + 1:]
                    if score(cand) < score(best):
                        best = cand
    rows = sorted(scored.items(), key=lambda kv: kv[1][0])
    print("\n# candidates, best first (mean NRMSE % over the tuning volumes)")
    for cand, (m, _) in rows:
        print(f"{m:6.2f}  {json.dumps(dict(zip(KEYS, cand)))}")
    choice = dict(zip(KEYS, rows[0][0]))
    print(f"\n# choice: {json.dumps(choice)}")
    tuned_on = {"what": "lambda_smooth, lambda_smooth_noise, lambda_grad (min. mean NRMSE, "
                        f"{args.search} search)",
                "phantom_model": args.model, "phantom_version": PHANTOM_VERSION, "seeds": tune_seeds,
                "shape": args.shape, "voxel_size_mm": args.voxel_size, "noise_peak_snr": [None, *args.snr],
                "profile": args.profile, "script": "tests/benchmarks/tune_inr_fast.py"}
    print(f"# tuned_on = {json.dumps(tuned_on)}")


if __name__ == "__main__":
    main()
