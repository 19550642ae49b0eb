#!/usr/bin/env bash
# The GPU verification kit in one command (about 8 minutes at most on one GPU):
#   bash tests/benchmarks/gpu_check.sh               on a CUDA machine: tests/gpu (dipole operator
#                                                    CUDA vs CPU, INR-QSM paper profile in mixed
#                                                    precision at 160^3, INR-QSM-fast, uQSM training)
#                                                    + bench_inr.py --paper-gpu (one subject at 160^3)
#   bash tests/benchmarks/gpu_check.sh --cpu-smoke   the same measurements at tiny sizes on the CPU
#                                                    (quick profile; under 2 minutes): checks the kit
# Prints one table: card, time per subject at 160^3 for INR-QSM (paper) and INR-QSM-fast (paper),
# per-step times, peak GPU memory, NRMSE.  Run from the repository root with qsmbench importable
# (pip install -e ".[dl,test]", or PYTHONPATH=.).  Stage limits: tests 240 s, bench 240 s.
set -uo pipefail
cd "$(dirname "$0")/../.."
MODE=gpu
[ "${1:-}" = "--cpu-smoke" ] && MODE=cpu
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export QSMBENCH_GPU_REPORT="$OUT/report"
export QSMBENCH_CACHE="${QSMBENCH_CACHE:-$OUT/cache}"   # no stale weights: the kit trains what it times
mkdir -p "$QSMBENCH_GPU_REPORT"
T0=$SECONDS

if [ "$MODE" = cpu ]; then
  echo "== CPU smoke: tests/gpu/checks.py at 32^3 (quick profile, CPU)"
  python tests/gpu/checks.py --device cpu --size 32 --profile quick --patch 32 32 32 --fast-steps 5 \
    --uqsm-steps 3 --json "$QSMBENCH_GPU_REPORT/smoke.json" > "$OUT/smoke.log" 2>&1 \
    || { cat "$OUT/smoke.log"; echo "gpu_check: the CPU smoke run failed"; exit 1; }
  echo "== tests/gpu is collected and skipped without CUDA:"
  python -m pytest -q -p no:cacheprovider -n 0 tests/gpu -rs 2>&1 | tail -3
else
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: no CUDA device visible to torch; use --cpu-smoke"; exit 2; }
  echo "== tests/gpu (pytest -m gpu)"
  timeout 240 python -m pytest -q -p no:cacheprovider -n 0 tests/gpu -m gpu -rs -s > "$OUT/pytest.log" 2>&1
  echo "pytest exit status $? (log tail below)"; tail -5 "$OUT/pytest.log"
  echo "== bench_inr.py --paper-gpu (one subject at 160^3, paper profiles)"
  timeout 240 python tests/benchmarks/bench_inr.py --paper-gpu > "$OUT/bench_inr.txt" 2>&1
  echo "bench_inr exit status $? (124: stopped after 240 s)"; cat "$OUT/bench_inr.txt"
fi

python - "$MODE" "$QSMBENCH_GPU_REPORT" "$OUT/bench_inr.txt" "$((SECONDS - T0))" <<'PY'
import json
import re
import sys
from pathlib import Path

mode, folder, bench, elapsed = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
r = {}
for f in sorted(folder.glob("*.json")):
    r.update(json.loads(f.read_text()))


def num(x, fmt="{:.3g}"):
    return "-" if x is None else fmt.format(x)


card = "cpu (smoke)" if mode == "cpu" else "?"
subject = {}
if bench.is_file():
    text = bench.read_text()
    m = re.search(r"one subject at (\d+)\^3, on (.+)", text)
    if m:
        card = m.group(2).strip()
    for name, wall, nrmse, gpu in re.findall(r"^(inr_qsm(?:_fast)?)\s+wall\s+([\d.]+) s\s+NRMSE\s+([\d.]+) %"
                                             r"\s+peak GPU (\S+) MB", text, re.M):
        subject[name] = (float(wall), float(nrmse), gpu)
if card == "?" and r.get("inr_device"):
    card = r["inr_device"]
size = r.get("inr_size", "?")
rows = [("card", card, "", "", "")]
est = r.get("inr_epoch_s", 0) * r.get("inr_epochs_in_profile", 0) if r.get("inr_epoch_s") else None
for name, label in (("inr_qsm", "INR-QSM paper"), ("inr_qsm_fast", "INR-QSM-fast paper")):
    if name in subject:
        wall, nrmse, gpu = subject[name]
        rows.append((f"{label}: one subject at 160^3", f"{wall:.1f} s", gpu, f"{nrmse:.1f}", "bench_inr --paper-gpu"))
    else:
        rows.append((f"{label}: one subject at 160^3", "not measured", "-", "-",
                     "no CUDA (smoke)" if mode == "cpu" else "bench_inr did not finish in 240 s or failed"))
rows.append((f"INR-QSM {r.get('inr_profile', '?')}: 1 epoch at {size}^3", f"{num(r.get('inr_epoch_s'))} s "
             f"({r.get('inr_patch_steps', '?')} steps, {num(r.get('inr_s_per_step'))} s/step)",
             num(r.get("inr_peak_gpu_mb"), "{:.0f}"), num(r.get("inr_nrmse_1_epoch"), "{:.1f}"),
             f"x {r.get('inr_epochs_in_profile', '?')} epochs = {num(est, '{:.0f}')} s per subject (est.); "
             f"mixed precision {r.get('inr_mixed_precision')}"))
rows.append((f"INR-QSM-fast {r.get('fast_profile', '?')}: {r.get('fast_steps', '?')} steps at {size}^3",
             f"{num(r.get('fast_s_per_step'))} s/step", num(r.get("fast_peak_gpu_mb"), "{:.0f}"),
             num(r.get("fast_nrmse"), "{:.1f}"), "NRMSE after those steps only"))
rows.append((f"uQSM {r.get('uqsm_profile', '?')} training (width {r.get('uqsm_width', '?')}, patch "
             f"{r.get('uqsm_patch', '?')})", f"{num(r.get('uqsm_s_per_step'))} s/step",
             num(r.get("uqsm_peak_gpu_mb"), "{:.0f}"), num(r.get("uqsm_nrmse"), "{:.1f}"),
             f"{r.get('uqsm_train_steps', '?')} steps, loss {num((r.get('uqsm_losses') or [None])[-1])}"))
rows.append(("dipole operator vs numpy", r.get("dipole_device", "-"), "-", "-",
             f"rel. max error {num(r.get('dipole_rel_max_err'))}"))
heads = ("check", "time", "peak GPU MB", "NRMSE %", "notes")
widths = [max(len(str(x[i])) for x in [heads, *rows]) for i in range(5)]
print()
print("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
print("  ".join("-" * w for w in widths))
for row in rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
print(f"\ngpu_check ({mode}): {elapsed} s in all")
PY
