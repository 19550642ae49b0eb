"""Print default vs oracle vs L-curve vs discrepancy NRMSE and the chosen values of a tuning run.

    python tests/benchmarks/tuning_table.py WORKDIR [--dataset phantom] [--perturbation none]

WORKDIR is the folder a workflow ran in (e.g. ``--directory`` of ``snakemake --configfile
config/tuning.yaml``).  The default NRMSE comes from ``results/metrics/{dataset}/{perturbation}/
{run}.json``; each mode's choice is recomputed with :func:`qsmbench.tuning.select` from the
candidates' score files (the same rule the select_tuning jobs apply), and the NRMSE of the final
tuned run is read from ``results/tune/.../{mode}/metrics.json`` when it exists (else the chosen
candidate's NRMSE, marked ``*``: the same method, value and seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qsmbench import metrics, tuning


def nrmse_of(metrics_json: Path) -> float | None:
    if not metrics_json.exists():
        return None
    rec = json.loads(metrics_json.read_text())
    refs = rec.get("references") or {}
    ref = "chi" if "chi" in refs else (sorted(refs) or [None])[0]
    for r in refs.get(ref, []):
        if r["metric"] == "nrmse" and r["status"] == "ok":
            return float(r["value"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--dataset", default="phantom")
    ap.add_argument("--perturbation", default="none")
    ap.add_argument("--metric", default=tuning.DEFAULT_METRIC)
    args = ap.parse_args()
    res = args.workdir / "results"
    tune = res / "tune" / args.dataset / args.perturbation
    better = metrics.get_metric(args.metric).better
    modes = ["oracle", "lcurve", "discrepancy"]
    print(f"{'method':8s} {'param':10s} {'default':>8s} " + " ".join(f"{m:>22s}" for m in modes))
    for run_dir in sorted(p for p in tune.iterdir() if p.is_dir()):
        run = run_dir.name
        scores = [json.loads(p.read_text()) for p in sorted(run_dir.glob("candidate-*/score.json"))]
        if not scores:
            continue
        scores.sort(key=lambda s: s["index"])
        default = nrmse_of(res / "metrics" / args.dataset / args.perturbation / f"{run}.json")
        cells = []
        for mode in modes:
            sel_file = run_dir / mode / "selection.json"
            regularises = json.loads(sel_file.read_text())["regularises"] if sel_file.exists() else "up"
            try:
                sel = tuning.select(scores, mode, metric=args.metric, better=better, regularises=regularises)
            except ValueError as exc:
                cells.append(f"failed: {exc}"[:22])
                continue
            final = nrmse_of(run_dir / mode / "metrics.json")
            mark = ""
            if final is None:
                final = next(s for s in scores if s["index"] == sel["index"])["scores"].get("nrmse")
                mark = "*"
            cells.append(f"{final:6.2f}{mark} @ {sel['value']:.3g}")
        default_text = "n/a" if default is None else f"{default:.2f}"
        print(f"{run:8s} {scores[0]['parameter']:10s} {default_text:>8s} " + " ".join(f"{c:>22s}" for c in cells))
    print("(NRMSE in %; '*' = chosen candidate's own score, the final run "
          "not yet scored; oracle = upper bound)")


if __name__ == "__main__":
    main()
