"""INR-QSM (Zhang et al., Medical Image Analysis 2024) and INR-QSM-fast: per-subject implicit
neural representations of the susceptibility map.

Torch is imported only inside the methods' calls (and by the sibling modules), so a missing
torch leaves both methods listed as unavailable ("missing requirement: torch") instead of
breaking the registry.
"""

from __future__ import annotations

from qsmbench.errors import ConfigError, InputError
from qsmbench.method import Method

_REFERENCES = [
    "Zhang M, Feng R, Li Z, Feng J, Wu Q, Zhang Z, Ma C, Wu J, Yan F, Liu C, Zhang Y, Wei H. "
    "A subject-specific unsupervised deep learning method for quantitative susceptibility mapping "
    "using implicit neural representation. Medical Image Analysis 2024;95:103173. "
    "doi:10.1016/j.media.2024.103173",
    "Sitzmann V, Martel JNP, Bergman AW, Lindell DB, Wetzstein G. Implicit neural representations "
    "with periodic activation functions (SIREN). NeurIPS 2020. arXiv:2006.09661",
]


#: Bump when the fitting code changes what a warm start learns (the warm-start cache key holds it).
#: 2: zero output bias, normalised loss, pooled edge weights, training-range phantom seeds.
#: 3: the phantom model is a parameter (warm_start_model, default "mni"), passed to make_phantom.
WARM_START_CODE_VERSION = "3"
EDGE_POOLING = ("pooled", "per_axis")


def _check_volume(vol, name: str) -> None:
    if vol.field_ppm.ndim != 3 or min(vol.field_ppm.shape) < 2:
        raise InputError(f"{name}: needs a 3-D field of at least 2 voxels per axis, got shape "
                         f"{vol.field_ppm.shape}")


def _warm_up_torch() -> None:
    """Load torch and its optimiser machinery (several seconds, once per process) outside the timed
    ``reconstruct``, and honour the job's thread count."""
    import torch  # noqa: PLC0415

    from .common import apply_thread_limit  # noqa: PLC0415

    apply_thread_limit()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _problem(method: Method, vol):
    """chi0 -> edge weights -> the subject's tensors on the method's device."""
    from .common import apply_thread_limit, edge_weights, initial_chi, torch_device  # noqa: PLC0415
    from .inr import Problem  # noqa: PLC0415

    apply_thread_limit()
    p = method.params
    chi0 = initial_chi(vol, p["chi0_method"], seed=method.seed, notes=method.notes)
    if p["edge_pooling"] not in EDGE_POOLING:
        raise ConfigError(f"{method.name}: edge_pooling must be one of {EDGE_POOLING}, got {p['edge_pooling']!r}")
    wg = edge_weights(chi0, vol.mask, low_percentile=p["edge_low_percentile"],
                      high_percentile=p["edge_high_percentile"], pooled=p["edge_pooling"] == "pooled")
    return Problem.build(vol.field_ppm, vol.mask, vol.voxel_size_mm, vol.b0_dir, wg, torch_device(method.device))


#: INR-QSM's quick profile (CI and the default run); see INRQSM.tuned_on for how it was chosen.
QUICK_PROFILE = {"hidden_features": 64, "sine_layers": 3, "w0_first": 60.0, "w0_hidden": 60.0, "w0_last": 60.0,
                 "chi0_method": "tkd", "patch_size": [48, 48, 48], "patch_stride_fraction": 0.5, "epochs": 20,
                 "compensate_every": 4, "lr_start": 1e-3, "lr_end": 1e-4, "warm_start": "none", "min_steps": 540}
QUICK_TUNED_ON = {
    "what": "quick profile (SIREN width, w0, learning rate, epochs, patch stride, compensation period): per-epoch "
            "NRMSE traces of candidates fitted to tuning-range phantoms (tests/benchmarks/tune_inr_quick.py); "
            "rejected: width 32 at lr 3e-3 and width 64 at lr 2e-3 (both stall near chi = 0, NRMSE 94 % after 12 "
            "epochs, seed 2288774); chosen: width 64, w0 60, lr 1e-3 -> 1e-4, 20 epochs, NRMSE 52.1 % against "
            "TKD 54.9 % and CFL2 67.8 % (seed 2783698)",
    "phantom_model": "mni", "phantom_version": "2", "seeds": [2783698, 2288774], "shape": [80, 96, 80],
    "voxel_size_mm": [2.0, 2.0, 2.0], "noise_peak_snr": [None], "script": "tests/benchmarks/tune_inr_quick.py",
}


class INRQSM(Method):
    """INR-QSM (Zhang et al., Medical Image Analysis 2024;95:103173), reimplemented from the paper.

    chi is a SIREN of the voxel coordinates, fitted to one subject's local field alone.  Every
    ``phase_compensation`` period the network is evaluated on the full grid (``chi_hat``) and each
    patch's target becomes ``f~_p = R_p[f] - R_p[F^-1 D F(chi_hat (1 - 1_p))]`` -- the field of
    the current estimate *outside* the patch is removed from its measurement (the paper's
    answer to the non-local dipole field that patch training otherwise cuts off).

    Loss per patch (each sum divided by the patch's voxel count and, with ``normalise_loss``, by
    ``mean(f^2)`` over the mask):
    ``|m (D*chi_p - f~_p)|^2 + lambda_smooth sum_j |WG_j grad_j chi_p|^2
    + lambda_grad sum_j |WG_j (grad_j D*chi_p - grad_j f~_p)|^2``, with ``D*chi_p`` the patch
    zero-padded (``patch_pad_factor``) before the FFT.  Gradients are per-voxel forward
    differences; field and chi in ppm; ``D(0) = d0`` (default 0, as the forward simulation).

    Loss normalisation (``normalise_loss``, our choice, as INR-QSM-fast): dividing every term by
    the same constant leaves the minimiser and the weights' meaning unchanged, but keeps the
    loss O(1).  Unnormalised, the loss of a converging fit is about 1e-5 ppm^2 and the
    parameters' gradients fall to the order of Adam's ``eps`` (1e-8), which then damps the
    steps of exactly the parameters that are still learning (measured in the report of issue 12).

    Edge weights ``WG_j``: ``|grad_j chi0|`` of an initial inversion ``chi0`` (another registered
    method, ``chi0_method``; TKD when that one is not available -- noted in run.json), ramped over
    the mask between the ``edge_low_percentile`` (weight 1) and ``edge_high_percentile``
    (weight 0); zero where a difference leaves the mask.  ``edge_pooling = "pooled"`` (default,
    as the authors' preprocessing) takes one pair of percentiles over the three gradient
    directions together; ``"per_axis"`` a pair per axis.

    Warm start (``warm_start``; the authors' configuration loads pretrained weights and only
    fine-tunes them at its tiny learning rate, so the ``paper`` profile warm-starts):
    ``"phantom"`` fits the network, in ``prepare`` (untimed), to ``warm_start_phantoms`` embedded
    phantoms of the model ``warm_start_model`` (default ``"mni"``, the workflow's default) in
    turn, whose seeds are drawn from the reserved *training* range (:func:`qsmbench.seeds.draw`,
    stream ``"inr_qsm"``, or ``"inr_qsm-<warm_start_seed>"``), of
    ``warm_start_shape`` voxels of ``warm_start_voxel_size_mm``, for ``warm_start_epochs`` each at
    a learning rate decaying from ``warm_start_lr_start`` to ``warm_start_lr_end`` (pretraining,
    higher than the fine-tuning rate); ``"train"`` fits the first volume given to ``prepare``
    (API use; the workflow gives none); ``"none"`` starts from random weights (the ablation).
    The weights are cached under ``cache_dir`` (default ``$QSMBENCH_CACHE/inr_qsm`` or
    ``~/.cache/qsmbench/inr_qsm``) by a hash of the warm-start configuration, the source,
    :data:`WARM_START_CODE_VERSION`, the phantom model/version and the qsmbench version, loaded
    with ``torch.load(weights_only=True)``; ``self.trained_on`` records what they were fitted to.

    Parameters (defaults = the authors' published configuration, where it is known)
    ----------
    hidden_features, sine_layers : SIREN width 512 and 10 sine layers, then a linear output
        (*unknown*: whether the paper's "10 layers" count the output layer; we do not).
    w0_first, w0_hidden, w0_last : 40, 40, 40 (w0_last only scales the output layer's init).
    output_scale : chi = output_scale * network output (ppm).  *Unknown in the paper*: 1.
    zero_output_bias : the output bias starts at 0 (our choice; see :class:`.networks.Siren`).
    chi0_method, edge_low_percentile, edge_high_percentile, edge_pooling : "ilsqr", 50, 70,
        "pooled" (see above).
    patch_size : 96 x 96 x 48 voxels (clipped to the matrix).
    patch_stride_fraction : 1/3 of the patch; min_brain_fraction : keep patches >= 30 % brain
        (plus, our addition, any dropped patch needed to cover a mask voxel).
    patch_pad_factor, volume_pad_factor : zero padding of a patch / of the full volume (2x).
    d0 : D(0) of the dipole kernel (0).
    lambda_smooth, lambda_grad : 0.15 and 1.0.
    normalise_loss : divide the loss by mean(f^2) in the mask (above; our choice).
    phase_compensation, compensate_every : on, every 5 epochs (from epoch 5; at epoch 0 too
        after a warm start).  Off = the ablation.
    epochs, lr_start, lr_end : Adam, learning rate decaying exponentially (per epoch) from 1e-5
        to 2e-7 over 50 epochs.  *Unknown*: per-epoch vs per-step decay (we decay per epoch and
        reach lr_end at the last epoch).
    patches_per_step : patches per Adam step.  *Unknown in the paper*: 1.
    min_steps : at least this many optimiser steps (our addition; 0 = off, the paper): when
        ``epochs`` x steps per epoch is fewer -- a volume of few patches -- the epoch count rises
        to reach it, the learning-rate decay and the compensation period stay per epoch.  The
        quick profile sets 540, the steps it was tuned with (27 patches x 20 epochs on the
        80 x 96 x 80 tuning phantoms): without it a volume smaller than one patch got 20 steps
        from the zero-initialised output and came out at about 0.15 of the true scale.
    mask_chi : chi is multiplied by the mask inside the forward model (the output is masked, so
        the model fits the same object it returns).  *Unknown*: on.
    mixed_precision, amp_dtype : autocast on CUDA (float16 with loss scaling); sine arguments and
        FFTs stay in float32.  Ignored on CPU.
    chunk_points : points per network call when predicting the full grid.
    warm_start, warm_start_model, warm_start_phantoms, warm_start_epochs, warm_start_lr_start, warm_start_lr_end,
    warm_start_shape, warm_start_voxel_size_mm, warm_start_seed, cache_dir : the warm start
        (above): "phantom", 1 phantom of 160^3 at 1 mm, 50 epochs at 1e-4 -> 1e-5 (*unknown in
        the paper*: how the authors' weights were pretrained).

    Profiles: ``paper`` (the published settings with the warm start; meant for a GPU -- hours on
    a CPU) and ``quick`` (CI and the default offline run, no warm start: a SIREN of 3 x 64 with
    w0 60, 48^3 patches overlapping by half (stride 24), 20 epochs at a learning rate decaying
    from 1e-3 to 1e-4, phase compensation every 4 epochs; chosen on tuning-range phantoms of the
    MNI model, see :attr:`tuned_on`).  The quick profile costs about 2-3 CPU minutes for
    80 x 96 x 80 voxels on one (busy) core: cheaper settings tried (fewer epochs, width 32,
    higher learning rates) did not get ahead of TKD.  ``prepare`` also loads torch's optimiser machinery, so
    that one-off import time (seconds) is not counted in the timed reconstruction.  Deterministic
    on the CPU for a given seed and thread count; a progress bar (or periodic log lines) shows
    the time left of every fit.
    """

    name = "inr_qsm"
    requirements = ["torch"]
    uses = {"gpu"}
    references = _REFERENCES
    parameters = {
        "hidden_features": 512, "sine_layers": 10, "w0_first": 40.0, "w0_hidden": 40.0, "w0_last": 40.0,
        "output_scale": 1.0, "zero_output_bias": True,
        "chi0_method": "ilsqr", "edge_low_percentile": 50.0, "edge_high_percentile": 70.0, "edge_pooling": "pooled",
        "patch_size": [96, 96, 48], "patch_stride_fraction": 1.0 / 3.0, "min_brain_fraction": 0.3,
        "patch_pad_factor": 2.0, "volume_pad_factor": 2.0, "d0": 0.0,
        "lambda_smooth": 0.15, "lambda_grad": 1.0, "normalise_loss": True,
        "phase_compensation": True, "compensate_every": 5,
        "epochs": 50, "lr_start": 1e-5, "lr_end": 2e-7, "patches_per_step": 1, "min_steps": 0,
        "mask_chi": True,
        "mixed_precision": True, "amp_dtype": "float16",
        "chunk_points": 262144,
        "warm_start": "phantom", "warm_start_model": "mni", "warm_start_phantoms": 1, "warm_start_epochs": 50,
        "warm_start_lr_start": 1e-4, "warm_start_lr_end": 1e-5, "warm_start_shape": [160, 160, 160],
        "warm_start_voxel_size_mm": [1.0, 1.0, 1.0], "warm_start_seed": 0, "cache_dir": "",
    }
    profiles = {
        "quick": QUICK_PROFILE,
        "paper": {"hidden_features": 512, "sine_layers": 10, "w0_first": 40.0, "w0_hidden": 40.0, "w0_last": 40.0,
                  "chi0_method": "ilsqr", "patch_size": [96, 96, 48], "patch_stride_fraction": 1.0 / 3.0,
                  "epochs": 50, "compensate_every": 5, "lr_start": 1e-5, "lr_end": 2e-7, "phase_compensation": True,
                  "warm_start": "phantom"},
    }
    tuned_on = QUICK_TUNED_ON

    WARM_STARTS = ("none", "phantom", "train")
    #: Parameters that do not change the warm-start weights (left out of the cache key): the
    #: per-subject schedule (the warm start has its own) and bookkeeping.
    _NOT_IN_KEY = ("cache_dir", "epochs", "lr_start", "lr_end", "warm_start", "chunk_points")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        p = self.params
        if p["warm_start"] not in self.WARM_STARTS:
            raise ConfigError(f"inr_qsm: warm_start must be one of {self.WARM_STARTS}, got {p['warm_start']!r}")
        if p["edge_pooling"] not in EDGE_POOLING:
            raise ConfigError(f"inr_qsm: edge_pooling must be one of {EDGE_POOLING}, got {p['edge_pooling']!r}")
        if p["warm_start_model"] not in ("mni", "analytic"):
            raise ConfigError(f"inr_qsm: warm_start_model must be 'mni' or 'analytic' (a phantom model of "
                              f"qsmbench.phantom), got {p['warm_start_model']!r}")
        if int(p["warm_start_phantoms"]) < 1 or int(p["warm_start_epochs"]) < 1:
            raise ConfigError("inr_qsm: warm_start_phantoms and warm_start_epochs must be >= 1")
        if not (p["warm_start_lr_start"] > 0 and p["warm_start_lr_end"] > 0):
            raise ConfigError("inr_qsm: warm_start_lr_start and warm_start_lr_end must be positive")
        self.history: list[dict] = []
        self.n_patches = 0
        self.init_state = None
        self.warm_start_file = None

    # ------------------------------------------------------------------ warm start (untimed)
    def warm_start_seeds(self) -> list[int]:
        """Seeds of the warm-start phantoms: reserved training-range seeds (:mod:`qsmbench.seeds`)."""
        from qsmbench import seeds  # noqa: PLC0415

        s = int(self.params["warm_start_seed"])
        return seeds.draw("train", int(self.params["warm_start_phantoms"]), "inr_qsm" if s == 0 else f"inr_qsm-{s}")

    def warm_start_params(self) -> dict:
        """The parameters of the warm-start fits: the method's, with the warm start's schedule."""
        p = self.params
        return {**p, "epochs": int(p["warm_start_epochs"]), "lr_start": float(p["warm_start_lr_start"]),
                "lr_end": float(p["warm_start_lr_end"])}

    def warm_start_key(self, source: dict) -> str:
        from qsmbench import __version__  # noqa: PLC0415
        from qsmbench.phantom import PHANTOM_VERSION  # noqa: PLC0415

        from .warmstart import cache_key  # noqa: PLC0415

        params = {k: v for k, v in self.warm_start_params().items() if k not in self._NOT_IN_KEY}
        return cache_key({"method": self.name, "params": params, "source": source,
                          "code_version": WARM_START_CODE_VERSION, "phantom_version": PHANTOM_VERSION,
                          "qsmbench_version": __version__})

    def warm_start_source(self, train) -> dict:
        """What the warm start fits: phantom seeds/shape/voxel size, or the first training volume."""
        from .common import int_list  # noqa: PLC0415

        p = self.params
        if p["warm_start"] == "train":
            from .warmstart import volume_fingerprint  # noqa: PLC0415

            if not train:
                raise ConfigError("inr_qsm: warm_start='train' needs at least one training volume "
                                  "(none was given); use warm_start='phantom' or 'none'")
            return {"train": volume_fingerprint(train[0].for_method())}
        shape = int_list(p["warm_start_shape"], "warm_start_shape")
        try:
            voxel = [float(v) for v in p["warm_start_voxel_size_mm"]]
        except (TypeError, ValueError):
            voxel = []
        if len(voxel) != 3 or not all(v > 0 for v in voxel):
            raise ConfigError("inr_qsm: warm_start_voxel_size_mm must be three positive numbers")
        return {"phantom": {"model": p["warm_start_model"], "shape": shape, "voxel_size_mm": voxel,
                            "seeds": self.warm_start_seeds()}}

    def prepare(self, train) -> None:
        _warm_up_torch()
        p = self.params
        self.init_state, self.warm_start_file, self.trained_on = None, None, None
        if p["warm_start"] == "none":
            return
        from .inr import fit  # noqa: PLC0415
        from .warmstart import cache_root, load_state, save_state  # noqa: PLC0415

        source = self.warm_start_source(train)
        path = cache_root(p["cache_dir"]) / f"{self.warm_start_key(source)}.pt"
        wp = self.warm_start_params()
        if path.exists():
            self.init_state = load_state(path)
            self.notes.append(f"warm start: weights loaded from cache {path}")
        else:
            if "train" in source:
                subjects = [("training volume", train[0].for_method())]
            else:
                from qsmbench.phantom import make_phantom  # noqa: PLC0415

                ph = source["phantom"]
                subjects = [(f"phantom seed {s}", None) for s in ph["seeds"]]
            state = None
            for i, (what, vol) in enumerate(subjects):
                if vol is None:
                    vol = make_phantom(tuple(ph["shape"]), tuple(ph["voxel_size_mm"]), model=ph["model"],
                                       seed=ph["seeds"][i]).for_method()
                prob = _problem(self, vol)
                # seeded by the warm start's own seed, not by the job: one cached fit serves every subject
                result = fit(prob, wp, device=self.device, seed=int(p["warm_start_seed"]) + i, init_state=state,
                             label=f"inr_qsm warm start {i + 1}/{len(subjects)} ({what})")
                state = result.state
            save_state(path, state)
            self.init_state = state
            self.notes.append(f"warm start: fitted on {next(iter(source))} for {p['warm_start_epochs']} epochs, "
                              f"cached as {path}")
        self.warm_start_file = path
        self.trained_on = self.describe_warm_start(source, train)

    def describe_warm_start(self, source: dict, train=()) -> dict:
        """``trained_on``: what the warm-start weights were fitted to (chi never read)."""
        from qsmbench.phantom import PHANTOM_VERSION  # noqa: PLC0415

        p = self.params
        out = {"what": "warm-start weights (fitted to fields only, then fine-tuned per subject)",
               "epochs": int(p["warm_start_epochs"]),
               "lr": [float(p["warm_start_lr_start"]), float(p["warm_start_lr_end"])],
               "code_version": WARM_START_CODE_VERSION}
        if "phantom" in source:
            out.update(phantom_model=p["warm_start_model"], phantom_version=PHANTOM_VERSION,
                       seeds=list(source["phantom"]["seeds"]), shapes=[source["phantom"]["shape"]],
                       voxel_size_mm=source["phantom"]["voxel_size_mm"])
        else:
            out.update(volumes=[{"name": train[0].name, "digest": source["train"][:16]}])
        return out

    # ------------------------------------------------------------------ reconstruction (timed)
    def reconstruct(self, vol):
        from .inr import fit  # noqa: PLC0415

        _check_volume(vol, self.name)
        prob = _problem(self, vol)
        result = fit(prob, self.params, device=self.device, seed=self.seed, init_state=self.init_state)
        self.history, self.n_patches = result.history, len(result.patches)
        self.notes.append(f"{self.n_patches} patches of {list(result.patches[0].size)}, {len(result.history)} epochs, "
                          f"phase compensation {'on' if self.params['phase_compensation'] else 'off'}"
                          + (", warm start" if self.init_state is not None else ", no warm start"))
        return result.chi * vol.mask


class INRQSMFast(Method):
    """INR-QSM-fast: qsmbench's fast variant of INR-QSM (Zhang et al., MedIA 2024).

    Same physics and regularisers as ``inr_qsm``, engineered for speed: chi is a dense
    multiresolution feature grid (trilinear interpolation, pure PyTorch) followed by a small MLP
    (cf. Mueller et al., Instant-NGP, ACM TOG 2022), fitted against the *exact* full-volume
    zero-padded forward model (``torch.fft.rfftn``) -- no patches, hence no non-local error to
    compensate.  Loss, every term divided by ``sum(m f^2)`` so that the weights do not depend on
    the field's scale::

        |m (D*chi - f)|^2 + lambda_smooth sum_j |WG_j grad_j chi|^2
                          + lambda_grad  sum_j |WG_j (grad_j D*chi - grad_j f)|^2

    Edge weights ``WG_j``: ``|grad_j chi0|`` of an initial inversion ``chi0`` (another registered
    method, ``chi0_method``; TKD when that one is not available -- noted in run.json), ramped over
    the mask between the ``edge_low_percentile`` (weight 1) and ``edge_high_percentile``
    (weight 0), percentiles pooled over the three directions (``edge_pooling``, as inr_qsm);
    zero where a difference leaves the mask.

    An INR fitted to a noisy field overfits the noise once the data term keeps falling (see
    METHODS.md).  Three guards, all parameters: (1) every term is divided by the field's energy,
    so the weights are ratios to the data term whatever the field's scale; (2) the smoothness
    weight grows with the field's estimated noise-to-signal ratio (a Wiener-like rule):
    ``lambda_smooth + lambda_smooth_noise * sigma^2 / mean(m f^2)``, sigma estimated from the
    median absolute deviation of the field's Laplacian inside the eroded mask (recorded in
    run.json's notes); (3) early stopping when the data term plateaus: stop once the best data
    term of the last ``plateau_window`` steps improves on the best before them by less than
    ``plateau_tol`` (relative), after ``min_steps``.  The three weights are *tuned*, not derived:
    chosen by a grid search on phantoms of the reserved tuning seed range, noiseless and noisy
    (``tests/benchmarks/tune_inr_fast.py``; what, phantom model and seeds in :attr:`tuned_on`,
    copied into every run.json).

    Parameters
    ----------
    levels, features_per_level : grid levels and channels per level.
    grid_min_cells, grid_max_scale : cells across the longest axis at the coarsest level, and at
        the finest as a fraction of the voxels along it (1 = one node per voxel).
    grid_init_scale : features start uniform in +-grid_init_scale.
    mlp_width, mlp_layers : the MLP (ReLU) after the encoding.
    output_scale : chi = output_scale * network output (ppm).
    chi0_method, edge_low_percentile, edge_high_percentile : as inr_qsm (default TKD, fast).
    pad_factor, d0 : zero padding of the full-volume forward model, and D(0).
    lambda_smooth, lambda_smooth_noise, lambda_grad : weights of the two regularising terms
        (the smoothness weight adapted to the noise as above; ``lambda_smooth_noise = 0`` fixes it).
    lr, lr_end, max_steps : Adam, learning rate decaying exponentially from lr to lr_end over
        max_steps.
    min_steps, plateau_window, plateau_tol : the stopping rule (above).
    coarse_to_fine_steps : fade the grid levels in, coarse first, over this many steps (0 = off).
    chunk_points : mask voxels per network call; beyond it the step back-propagates chunk by
        chunk (same gradient, bounded memory).
    log_every : steps between progress lines in the log.

    Profiles: ``quick`` (at most 60 steps: CI and the default run), ``cpu`` (= the
    defaults, for a 64^3-160^3 volume on a few CPU cores) and ``paper`` (finer grid, wider MLP,
    more steps: for a GPU at the paper's 160^3).
    """

    name = "inr_qsm_fast"
    requirements = ["torch"]
    uses = {"gpu"}
    references = _REFERENCES + [
        "Mueller T, Evans A, Schied C, Keller A. Instant neural graphics primitives with a "
        "multiresolution hash encoding. ACM Trans Graph 2022;41(4):102. doi:10.1145/3528223.3530127",
    ]
    parameters = {
        "levels": 8, "features_per_level": 2, "grid_min_cells": 4, "grid_max_scale": 1.0, "grid_init_scale": 1e-4,
        "mlp_width": 32, "mlp_layers": 2, "output_scale": 1.0,
        "chi0_method": "tkd", "edge_low_percentile": 50.0, "edge_high_percentile": 70.0, "edge_pooling": "pooled",
        "pad_factor": 2.0, "d0": 0.0,
        "lambda_smooth": 0.5, "lambda_smooth_noise": 2.0, "lambda_grad": 0.1,
        "lr": 3e-2, "lr_end": 3e-3, "max_steps": 300, "min_steps": 40, "plateau_window": 20, "plateau_tol": 0.01,
        "coarse_to_fine_steps": 0,
        "chunk_points": 1048576, "log_every": 10,
    }
    profiles = {
        "quick": {"max_steps": 60, "min_steps": 20, "plateau_window": 10},
        "cpu": {},
        "paper": {"levels": 12, "mlp_width": 64, "max_steps": 1000, "min_steps": 100, "plateau_window": 50},
    }

    #: The regularisation weights' tuning (tests/benchmarks/tune_inr_fast.py at the quick profile);
    #: mean NRMSE % over the noiseless and the peak-SNR-10 versions of the tuning phantom:
    #: (0.5, 2, 0.1) 67.7 (42.5 / 92.9); the previous (0.15, 0.6, 0.3) 70.4 (40.9 / 99.9);
    #: (0.05, 0.6, 0.3) 71.4; (0.15, 0.6, 1) 72.4; (0.5, 2, 0.3) 93.6 at SNR 10.  TKD on the same
    #: volumes: 55.0 / 130.4, CFL2 65.4 / 70.7.
    tuned_on = {
        "what": "lambda_smooth, lambda_smooth_noise, lambda_grad (min. mean NRMSE over 5 candidates, quick profile)",
        "phantom_model": "mni", "phantom_version": "2", "seeds": [2304503], "shape": [80, 96, 80],
        "voxel_size_mm": [2.0, 2.0, 2.0], "noise_peak_snr": [None, 10.0], "profile": "quick",
        "script": "tests/benchmarks/tune_inr_fast.py",
    }

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.history: list[dict] = []
        self.steps = 0

    def prepare(self, train) -> None:
        _warm_up_torch()

    def reconstruct(self, vol):
        from .fast import fit_fast  # noqa: PLC0415

        _check_volume(vol, self.name)
        prob = _problem(self, vol)
        result = fit_fast(prob, self.params, device=self.device, seed=self.seed)
        self.history, self.steps = result.history, result.steps
        self.notes.append(f"{result.steps} steps" + (" (stopped early: data term plateau)" if result.stopped_early
                                                     else " (max_steps reached)")
                          + f"; field noise-to-signal {result.noise_to_signal:.3g} -> lambda_smooth "
                            f"{result.lambda_smooth:.3g}")
        return result.chi * vol.mask
