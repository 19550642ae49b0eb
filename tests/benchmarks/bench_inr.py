"""Benchmark INR-QSM and INR-QSM-fast: time per step, peak memory, and (optionally) accuracy.

Not collected by pytest.  Default run (short: a few steps per variant and size, CPU or GPU):

    python tests/benchmarks/bench_inr.py                      # 64^3 and 160^3, quick profile
    python tests/benchmarks/bench_inr.py --sizes 64 --profile paper

Time per step: ``inr_qsm`` -- one Adam step on one patch, the epoch it implies (all patches),
and one phase compensation (a full-grid prediction and one full zero-padded FFT per patch,
extrapolated from two patches); ``inr_qsm_fast`` -- one full-volume step.  Peak memory: the
process's resident set sampled during the timed work (phantom and interpreter included), and
torch's peak CUDA allocation.

``--accuracy`` fits to convergence on the 64^3 phantom (optionally with Gaussian field noise,
``--noise PPM``) and prints NRMSE against TKD, iLSQR and CFL2, with the phase-compensation
ablation of ``inr_qsm`` (``--no-ablation`` skips it) and the untimed ``prepare`` (the warm start
of the paper profile; ``--warm-start-shape 64 64 64`` fits it on a phantom of the test's size,
``--threads`` limits the CPU threads).  INR-QSM quick and paper on a CPU at 64^3:

    python tests/benchmarks/bench_inr.py --accuracy --inr-profile quick --no-ablation
    python tests/benchmarks/bench_inr.py --accuracy --inr-profile paper --no-ablation \
        --warm-start-shape 64 64 64 --device cpu --methods inr_qsm

When CUDA is available, ``--paper-gpu`` times the paper profile of ``inr_qsm`` (and of
``inr_qsm_fast``) for one subject at 160^3 and names the card.

Timings measured while other processes use the CPU are pessimistic.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time

import numpy as np

from qsmbench import metrics, registry, runner, seeds
from qsmbench.phantom import make_phantom

#: The phantom of this benchmark: a tuning-range seed of the default (MNI) model -- never a seed
#: that the workflow's datasets use (test range) or that a method was trained on.
SEED = seeds.draw("tune", 1, "bench_inr")[0]
MODEL = "mni"


def _phantom(n: int, noise_ppm: float = 0.0):
    vol = make_phantom((n, n, n), (1.0, 1.0, 1.0), model=MODEL, seed=SEED)
    if noise_ppm > 0:
        rng = np.random.default_rng(1)
        vol.field_ppm = ((vol.field_ppm + noise_ppm * rng.standard_normal(vol.shape)) * vol.mask).astype(np.float32)
    return vol


def _run(name, vol, profile, device, params):
    """Run through the runner (timing, peak RSS/GPU); returns (record, method instance, chi)."""
    cls = registry.get_method_class(name)
    dev = runner.resolve_device(device) if "gpu" in cls.uses else "cpu"
    method = cls(profile=profile, seed=0, device=dev, **params)
    res = runner.run_method(method, vol)
    if res.status != "ok":
        raise RuntimeError(f"{name} failed: {res.record['error']}")
    return res.record, method, res.chi_ppm


def _nrmse(chi, vol):
    return metrics.evaluate(chi, vol.references["chi"], vol.mask, metrics=["nrmse"])[0].value


def _mb(x):
    return f"{x:.0f}" if x is not None else "-"


def _inr_step_timing(vol, profile, device, steps, n_outside):
    """Time INR-QSM's pieces on ``vol``: patch steps, one full-grid prediction, outside fields."""
    import importlib  # noqa: PLC0415

    import torch  # noqa: PLC0415

    cls = registry.get_method_class("inr_qsm")
    dev = runner.resolve_device(device)
    m = cls(profile=profile, seed=0, device=dev)
    m.prepare([])
    pkg = importlib.import_module(cls.__module__)
    inr = importlib.import_module(cls.__module__ + ".inr")
    patches_mod = importlib.import_module(cls.__module__ + ".patches")
    common = importlib.import_module(cls.__module__ + ".common")
    p = m.params
    prob = pkg._problem(m, vol.for_method())
    patches = patches_mod.make_patches(vol.mask, common.int_list(p["patch_size"], "patch_size"),
                                       stride_fraction=p["patch_stride_fraction"],
                                       min_brain_fraction=p["min_brain_fraction"])
    op_patch = common.DipoleOperator(patches[0].size, vol.voxel_size_mm, vol.b0_dir, d0=p["d0"],
                                     pad_factor=p["patch_pad_factor"], device=dev)
    op_full = common.DipoleOperator(vol.shape, vol.voxel_size_mm, vol.b0_dir, d0=p["d0"],
                                    pad_factor=p["volume_pad_factor"], device=dev)
    net = inr.build_siren(p, 0).to(dev)
    amp = common.amp_settings(torch.device(dev), p["mixed_precision"], p["amp_dtype"])
    opt = torch.optim.Adam(net.parameters(), lr=p["lr_start"])
    scaler = torch.amp.GradScaler(torch.device(dev).type, enabled=amp[0] and amp[1] == torch.float16)

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    with runner.PeakMemory() as mem:
        inr.train_step(net, opt, scaler, prob, patches[:1], [None], op_patch, 0.15, 1.0, mask_chi=p["mask_chi"],
                       amp=amp)  # warm-up
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            inr.train_step(net, opt, scaler, prob, [patches[i % len(patches)]], [None], op_patch,
                           p["lambda_smooth"], p["lambda_grad"], mask_chi=p["mask_chi"], amp=amp)
        sync()
        per_step = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        chi_hat = inr.predict(net, prob, mask_chi=p["mask_chi"], chunk_points=p["chunk_points"])
        sync()
        t_pred = time.perf_counter() - t0
        k = min(n_outside, len(patches))
        t0 = time.perf_counter()
        inr.outside_fields(chi_hat, patches[:k], op_full)
        sync()
        t_out = (time.perf_counter() - t0) / k
    return {"device": runner.device_description(dev), "per_step": per_step, "patches": len(patches),
            "size": patches[0].size, "compensation": t_pred + t_out * len(patches),
            "epoch": per_step * len(patches), "rss": mem.peak_mb, "gpu": mem.peak_gpu_mb}


def timing(sizes, profile, device, steps):
    print("inr_qsm: s/step = one Adam step on one patch; epoch = all patches; compensation = one full-grid "
          "prediction + one full zero-padded FFT per patch (estimated from 2 patches).")
    print("inr_qsm_fast: s/step = one full-volume step.  Peak RSS includes the phantom and the interpreter.")
    print(f"{'variant':<14} {'size':>5} {'profile':<8} {'device':<30} {'s/step':>8} {'epoch s':>8} "
          f"{'compens. s':>10} {'patches':>12} {'peak RSS MB':>12} {'peak GPU MB':>12}")
    for n in sizes:
        vol = _phantom(n)
        t = _inr_step_timing(vol, profile, device, steps, n_outside=2)
        print(f"{'inr_qsm':<14} {n:>5} {profile:<8} {t['device'][:30]:<30} {t['per_step']:8.3f} {t['epoch']:8.1f} "
              f"{t['compensation']:10.1f} {str(t['patches']) + ' x ' + 'x'.join(map(str, t['size'])):>12} "
              f"{_mb(t['rss']):>12} {_mb(t['gpu']):>12}")
        rec, m, _ = _run("inr_qsm_fast", vol, profile, device, {"max_steps": steps + 1, "min_steps": steps + 1})
        hist = m.history
        per_step = (hist[-1]["seconds"] - hist[0]["seconds"]) / max(len(hist) - 1, 1)
        print(f"{'inr_qsm_fast':<14} {n:>5} {profile:<8} {rec['device'][:30]:<30} {per_step:8.3f} {'-':>8} "
              f"{'-':>10} {'-':>12} {_mb(rec['peak_rss_mb']):>12} {_mb(rec['peak_gpu_mb']):>12}")
        del vol


def accuracy(n, noise, device, inr_profile, fast_profile, *, ablation=True, warm_start_shape=None, methods=None):
    vol = _phantom(n, noise)
    print(f"# {n}^3 {MODEL} phantom at 1 mm (tuning seed {SEED}), field noise {noise} ppm; NRMSE (%) vs the "
          f"phantom's chi")
    print(f"{'method':<34} {'NRMSE %':>8} {'prepare s':>10} {'wall s':>8} {'peak RSS MB':>12}  notes", flush=True)
    inr_params = {"warm_start_shape": list(warm_start_shape)} if warm_start_shape else {}
    rows = [("tkd", None, {}), ("ilsqr", None, {}), ("cfl2", None, {}),
            ("inr_qsm_fast", fast_profile, {}), ("inr_qsm", inr_profile, inr_params)]
    if ablation:
        rows.append(("inr_qsm", inr_profile, {**inr_params, "phase_compensation": False}))
    available = registry.list_methods()
    for name, profile, params in rows:
        if methods and name not in methods:
            continue
        if name not in available:
            print(f"{name:<34} not available")
            continue
        rec, m, chi = _run(name, vol, profile, device, params)
        label = name + (f" [{profile}]" if profile else "") + (" no phase comp." if "phase_compensation" in params
                                                              else "")
        notes = "; ".join(rec["notes"])
        print(f"{label:<34} {_nrmse(chi, vol):8.1f} {rec['prepare_s'] or 0:10.1f} {rec['wall_s']:8.1f} "
              f"{_mb(rec['peak_rss_mb']):>12}  {notes}", flush=True)


def adam_eps(n, profile, device, epochs):
    """Why INR-QSM normalises its loss: the parameters' RMS gradient at the end of a fit, with and
    without the normalisation, against Adam's eps (1e-8; Adam's step is m / (sqrt(v) + eps), so
    where sqrt(v) is not far above eps the step shrinks).  A tuning-range phantom, not a test one."""
    import importlib  # noqa: PLC0415

    import torch  # noqa: PLC0415


    seed = seeds.draw("tune", 1, "bench-inr-adam-eps")[0]
    vol = make_phantom((n, n, n), (1.5, 1.5, 1.5), seed=seed)
    cls = registry.get_method_class("inr_qsm")
    pkg = importlib.import_module(cls.__module__)
    inr = importlib.import_module(cls.__module__ + ".inr")
    common = importlib.import_module(cls.__module__ + ".common")
    print(f"# {n}^3 phantom (tuning seed {seed}) at 1.5 mm, inr_qsm [{profile}], {epochs} epochs; RMS gradient "
          f"per parameter over one epoch at the end of the fit, vs Adam's eps = 1e-8")
    print(f"{'loss':<12} {'final loss':>11} {'NRMSE %':>8} {'median RMS grad':>16} {'< 1e-7':>8} {'< 1e-6':>8}")
    for normalise in (False, True):
        m = cls(profile=profile, seed=0, device=device, normalise_loss=normalise, epochs=epochs)
        prob = pkg._problem(m, vol.for_method())
        res = inr.fit(prob, m.params, device=device, seed=0)
        net = inr.build_siren(m.params, 0)
        net.load_state_dict(res.state)
        p = m.params
        op = common.DipoleOperator(res.patches[0].size, vol.voxel_size_mm, vol.b0_dir, d0=p["d0"],
                                   pad_factor=p["patch_pad_factor"], device=device)
        sq = [torch.zeros_like(w) for w in net.parameters()]
        for patch in res.patches:
            net.zero_grad()
            data, smooth, grad = inr.patch_terms(net, prob, patch, inr.compensated_target(prob, patch, None), op,
                                                 mask_chi=p["mask_chi"], norm=res.norm)
            (data + p["lambda_smooth"] * smooth + p["lambda_grad"] * grad).backward()
            for acc, w in zip(sq, net.parameters()):
                acc += w.grad.detach() ** 2
        rms = torch.cat([(acc / len(res.patches)).sqrt().flatten() for acc in sq]).numpy()
        label = "normalised" if normalise else "ppm^2"
        print(f"{label:<12} {res.history[-1]['loss']:11.3g} {_nrmse(res.chi, vol):8.1f} {np.median(rms):16.3g} "
              f"{np.mean(rms < 1e-7):8.1%} {np.mean(rms < 1e-6):8.1%}", flush=True)


def paper_gpu(n):
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        print("# no CUDA device: skipping the paper-profile GPU timing")
        return
    vol = _phantom(n)
    print(f"# paper profile, one subject at {n}^3, on {torch.cuda.get_device_name(0)}")
    for name in ("inr_qsm", "inr_qsm_fast"):
        rec, m, chi = _run(name, vol, "paper", "cuda", {})
        print(f"{name:<14} wall {rec['wall_s']:8.1f} s  NRMSE {_nrmse(chi, vol):5.1f} %  peak GPU "
              f"{_mb(rec['peak_gpu_mb'])} MB  peak RSS {_mb(rec['peak_rss_mb'])} MB  {'; '.join(rec['notes'])}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[64, 160])
    p.add_argument("--profile", default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=3, help="steps timed per variant and size")
    p.add_argument("--accuracy", action="store_true", help="fit to convergence on the 64^3 phantom")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian field noise (ppm) for --accuracy")
    p.add_argument("--inr-profile", default="quick")
    p.add_argument("--fast-profile", default="cpu")
    p.add_argument("--paper-gpu", action="store_true", help="time the paper profile at 160^3 on CUDA")
    p.add_argument("--no-ablation", action="store_true", help="--accuracy: skip the no-phase-compensation run")
    p.add_argument("--warm-start-shape", type=int, nargs=3, default=None,
                   help="--accuracy: shape of the warm-start phantom (default: the profile's)")
    p.add_argument("--methods", nargs="*", default=None, help="--accuracy: only these methods")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--adam-eps", action="store_true",
                   help="gradients vs Adam's eps with and without the loss normalisation (48^3)")
    p.add_argument("--epochs", type=int, default=10, help="--adam-eps: epochs of the fit")
    args = p.parse_args(argv)
    if args.threads:
        runner.set_threads(args.threads)
    elif "QSMBENCH_THREADS" in os.environ:
        runner.set_threads(int(os.environ["QSMBENCH_THREADS"]))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, affinity "
          f"{len(os.sched_getaffinity(0))}, QSMBENCH_THREADS={os.environ.get('QSMBENCH_THREADS', '-')}, "
          f"load average {os.getloadavg()[0]:.1f} (timings with other load are pessimistic)")
    t0 = time.perf_counter()
    if args.accuracy or args.adam_eps:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.adam_eps:
        adam_eps(48, args.profile, runner.resolve_device(args.device), args.epochs)
    elif args.accuracy:
        accuracy(64, args.noise, args.device, args.inr_profile, args.fast_profile, ablation=not args.no_ablation,
                 warm_start_shape=args.warm_start_shape, methods=args.methods)
    elif args.paper_gpu:
        paper_gpu(160)
    else:
        timing(args.sizes, args.profile, args.device, args.steps)
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            paper_gpu(160)
    print(f"# total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
