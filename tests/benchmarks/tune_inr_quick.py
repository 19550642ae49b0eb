"""Choose INR-QSM's quick-profile settings on tuning-range phantoms (never on a test seed).

Not collected by pytest.  The quick profile (CI and the default run) must converge within a small
part of the default run, so the search is over what makes the fit converge fastest within a CPU
budget.  The chosen profile (width 64, 20 epochs) takes 80-120 s of one CPU core for 80x96x80
voxels (83 and 93 s in the default runs of 2026-12-02), more than the ``--budget-s`` default of
60 s: pass ``--budget-s 150`` to compare candidates with it.  ``--grid`` names the axes, e.g.
``--grid w0=30,60 lr_start=1e-3,2e-3 epochs=10 patch_size=48x48x48`` (``w0`` sets the three
SIREN frequencies, ``lr_end`` follows ``lr_start * --lr-ratio``; any other key is an inr_qsm
parameter).  Each candidate is fitted to ``--seeds`` phantoms drawn from the reserved *tuning*
range (``qsmbench.seeds.draw("tune", n, "inr_qsm")``), noiseless and with complex noise at the
peak SNRs ``--snr``; the error after every epoch (mean over the volumes) and the CPU time are
printed, and the candidate with the lowest mean final NRMSE whose mean CPU time is within
``--budget-s`` is chosen.  Prints the ``tuned_on`` record to paste into ``INRQSM``.  Rerun with
``--model`` when the default phantom model changes:

    python tests/benchmarks/tune_inr_quick.py [--model analytic] [--seeds 2] [--snr ...]
        [--grid w0=30,60,90 lr_start=1e-3,2e-3 epochs=10] [--budget-s 60]

CPU seconds measured while other processes share the CPU are pessimistic (cache contention).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import time

from _tuning import conditions, default_model, header, mean, nrmse, phantom

from qsmbench import registry, runner, seeds
from qsmbench.phantom import PHANTOM_VERSION

STREAM = "inr_qsm"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model(), help="phantom model (default: make_phantom's default)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--snr", type=float, nargs="*", default=[])
    ap.add_argument("--shape", type=int, nargs=3, default=[80, 96, 80])
    ap.add_argument("--voxel-size", type=float, nargs=3, default=[2.0, 2.0, 2.0])
    ap.add_argument("--grid", nargs="+", default=["w0=30,60,90", "lr_start=1e-3,2e-3", "epochs=10"],
                    metavar="KEY=V1,V2", help="the axes of the grid")
    ap.add_argument("--lr-ratio", type=float, default=0.1)
    ap.add_argument("--budget-s", type=float, default=60.0, help="max mean CPU seconds per fit")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    runner.set_threads(args.threads)
    tune_seeds = seeds.draw("tune", args.seeds, STREAM)
    print(header("tune_inr_quick", args.model, tune_seeds), flush=True)
    data = []
    for s in tune_seeds:
        vol = phantom(s, args.shape, args.voxel_size, args.model)
        data += [(s, label, v) for label, v in conditions(vol, args.snr, s)]
    cls = registry.get_method_class("inr_qsm")
    pkg = importlib.import_module(cls.__module__)
    inr = importlib.import_module(cls.__module__ + ".inr")
    axes = {}
    for item in args.grid:
        key, _, values = item.partition("=")
        axes[key] = [_value(v) for v in values.split(",")]
    grid = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    print(f"# {len(grid)} candidates x {len(data)} volumes; NRMSE % after each epoch (mean over the volumes), "
          f"final NRMSE per volume, mean CPU s", flush=True)
    rows = []
    for cand in grid:
        params = {}
        for key, value in cand.items():
            if key == "w0":
                params.update(w0_first=value, w0_hidden=value, w0_last=value)
            else:
                params[key] = value
        if "lr_start" in params:
            params["lr_end"] = params["lr_start"] * args.lr_ratio
        curves, finals, cpu = [], [], []
        for s, _, v in data:
            m = cls(profile="quick", seed=s, device="cpu", **params)
            m.prepare([])
            curve = []
            c0 = time.process_time()
            excluded = [0.0]

            def trace(row, net, prob, v=v, curve=curve, excluded=excluded):
                t = time.process_time()
                chi = inr.predict(net, prob, mask_chi=True, chunk_points=262144).cpu().numpy()
                curve.append(nrmse(chi, v))
                excluded[0] += time.process_time() - t
                net.train()

            prob = pkg._problem(m, v.for_method())
            res = inr.fit(prob, m.params, device="cpu", seed=s, on_epoch=trace)
            cpu.append(time.process_time() - c0 - excluded[0])
            curves.append(curve)
            finals.append(nrmse(res.chi * v.mask, v))
        mean_curve = [mean(c[i] for c in curves) for i in range(len(curves[0]))]
        rows.append((mean(finals), params, finals, mean(cpu)))
        print(f"{json.dumps(cand)}: " + " ".join(f"{x:.1f}" for x in mean_curve)
              + f" | final {' '.join(f'{x:.1f}' for x in finals)} mean {rows[-1][0]:.2f} | CPU {rows[-1][3]:.0f} s",
              flush=True)
    ok = [r for r in rows if r[3] <= args.budget_s] or rows
    ok.sort(key=lambda r: r[0])
    print("\n# candidates within the budget, best first (mean final NRMSE %, mean CPU s)")
    for score, params, _, cpu in ok:
        print(f"{score:6.2f}  {cpu:5.0f} s  {json.dumps(params)}")
    print(f"\n# choice: {json.dumps(ok[0][1])}")
    tuned_on = {"what": f"quick profile: {', '.join(axes)} (grid search, min. mean NRMSE within "
                        f"{args.budget_s:g} CPU s)",
                "phantom_model": args.model, "phantom_version": PHANTOM_VERSION, "seeds": tune_seeds,
                "shape": args.shape, "voxel_size_mm": args.voxel_size, "noise_peak_snr": [None, *args.snr],
                "script": "tests/benchmarks/tune_inr_quick.py"}
    print(f"# tuned_on = {json.dumps(tuned_on)}")


def _value(text: str):
    """``1e-3`` -> float, ``10`` -> int, ``48x48x24`` -> [48, 48, 24], else the string."""
    if "x" in text and all(p.isdigit() for p in text.split("x")):
        return [int(p) for p in text.split("x")]
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    main()
