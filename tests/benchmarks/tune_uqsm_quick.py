"""Tuning record: uQSM quick-profile candidates on reserved tuning-seed phantoms.

Not collected by pytest.  Run (each candidate trains from scratch into a temporary cache, ~2-3 min
on 2 idle cores):

    python tests/benchmarks/tune_uqsm_quick.py                      # the candidates of UQSM.tuned_on
    python tests/benchmarks/tune_uqsm_quick.py '{"name": {"epochs": 10}}'   # your own (JSON)

Phantoms: MNI model, seeds ``qsmbench.seeds.draw("tune", 2, "uqsm-quick")`` (never a test seed),
80 x 96 x 80 at 2 mm (noise-free and peak SNR 20, noise seed 1) and the first seed again at 1 mm
(160 x 192 x 160, noise-free).  Prints the NRMSE (%) of TKD and of each candidate (the quick
profile with the candidate's overrides), the training time and the loss per epoch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

CANDIDATES = {
    "1mm-6ep": {"train_voxel_size_mm": [1.0, 1.0, 1.0], "epochs": 6},
    "2mm": {"train_voxel_size_mm": [2.0, 2.0, 2.0], "epochs": 6},
    "1+2mm": {"train_voxel_size_mm": [[1, 1, 1], [2, 2, 2]], "epochs": 6},
    "1+1.5+2mm": {"train_voxel_size_mm": [[1, 1, 1], [1.5, 1.5, 1.5], [2, 2, 2]], "epochs": 6},
    "1+2mm-8ep": {"train_voxel_size_mm": [[1, 1, 1], [2, 2, 2]], "epochs": 8},
    "1+2mm-8ep-tv1e-4": {"train_voxel_size_mm": [[1, 1, 1], [2, 2, 2]], "epochs": 8, "tv_weight": 1e-4},
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    candidates = json.loads(argv[0]) if argv else CANDIDATES
    os.environ["QSMBENCH_CACHE"] = tempfile.mkdtemp(prefix="qsmbench-tune-uqsm-")
    import torch

    from qsmbench import metrics, perturb, registry, seeds
    from qsmbench.phantom import make_phantom

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tune = seeds.draw("tune", 2, "uqsm-quick")
    vols = []
    for s in tune:
        v = make_phantom((80, 96, 80), (2.0, 2.0, 2.0), seed=s, calcification=True)
        vols += [(f"{s}/2mm", v), (f"{s}/2mm/snr20", perturb.add_noise(v, 20, seed=1))]
    vols.append((f"{tune[0]}/1mm", make_phantom((160, 192, 160), (1.0, 1.0, 1.0), seed=tune[0], calcification=True)))

    def nrmse(chi, v):
        return metrics.evaluate(chi, v.references["chi"], v.mask, metrics=["nrmse"])[0].value

    print(f"# tune seeds {tune}; load {os.getloadavg()[0]:.1f}")
    print(f"{'candidate':<18} {'train s':>8} " + " ".join(f"{n:>20}" for n, _ in vols))
    tkd = registry.get_method("tkd")
    print(f"{'TKD':<18} {'-':>8} " + " ".join(f"{nrmse(tkd.reconstruct(v), v):20.1f}" for _, v in vols), flush=True)
    cls = registry.get_method_class("uqsm")
    for name, params in candidates.items():
        m = cls(profile="quick", seed=0, device="cpu", **params)
        t0 = time.perf_counter()
        m.prepare([])
        t = time.perf_counter() - t0
        cells = " ".join(f"{nrmse(m.reconstruct(v), v):20.1f}" for _, v in vols)
        losses = " ".join(f"{h['loss']:.3g}" for h in m.training_record.get("history", []))
        print(f"{name:<18} {t:8.1f} {cells}   loss {losses}", flush=True)


if __name__ == "__main__":
    main()
