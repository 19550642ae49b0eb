"""QSMnet: the supervised deep-learning baseline (Yoon et al., NeuroImage 2018), trained on our phantoms."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qsmbench import __version__, seeds
from qsmbench.errors import ConfigError
from qsmbench.method import Method
from qsmbench.phantom import MODELS, PHANTOM_VERSION, make_phantom
from qsmbench.physics import tilted_b0_dir
from qsmbench.registry import load_module_from_file
from qsmbench.results import atomic_write

log = logging.getLogger(__name__)

#: Bump when the training code changes what a given configuration learns (invalidates caches).
#: 2: channels-last convolutions on the CPU (the same network; float rounding differs).
#: 3: the weights channels-last on the CPU too (_engine.on_device; float rounding differs).
TRAINING_CODE_VERSION = "3"

#: Parameters that determine the trained weights (the cache key); ``cache`` acts elsewhere.
TRAINING_KEYS = (
    "width", "levels", "kernel_size", "leaky_slope", "batch_norm", "w_chi", "w_model", "w_grad", "gradient_loss",
    "patch_size", "min_brain_fraction", "batch_size", "epochs", "steps_per_epoch", "optimizer", "lr", "lr_decay",
    "lr_decay_steps", "train_phantoms", "train_model", "train_shape", "train_voxel_size_mm", "train_oversample",
    "train_calcification_prob", "train_b0_tesla", "train_te_s", "train_seed", "augment_max_tilt_deg",
    "augment_noise_snr",
)

# Weights trained or loaded in this process, by weights file: the contract tests and benchmarks
# prepare the same configuration many times.
_MEMORY: dict[str, dict] = {}


def _uqsm():
    """The uQSM package (its cache folder, hashing and axis helpers are shared, not copied)."""
    return load_module_from_file(Path(__file__).resolve().parent.parent / "uqsm")


def _torch_engine():
    """The torch half (imported only when the method runs; see uQSM for why import_module)."""
    return importlib.import_module(f"{__name__}._engine")


class QSMnet(Method):
    """QSMnet: a 3-D U-Net trained with labels -- (local field, chi) pairs -- applied in one pass.

    Yoon J, Gong E, Chatnuntawech I, Bilgic B, Lee J, Jung W, Ko J, Jung H, Setsompop K,
    Zaharchuk G, Kim EY, Pauly J, Lee J. Quantitative susceptibility mapping using deep neural
    network: QSMnet. NeuroImage 2018;179:199-206.  The supervised deep-learning baseline of the
    INR-QSM paper's comparisons.

    **Trained on qsmbench's own phantoms.**  The original was trained on COSMOS maps of in-vivo
    3 T data (5 subjects x 5 head orientations, 1 mm); this reimplementation is trained on
    (field, chi) pairs simulated by the embedded phantom generator (``train_model``, default the
    MNI-anatomy phantom) on seeds of the reserved *training* range (:mod:`qsmbench.seeds`, never
    a benchmark seed), recorded in ``trained_on`` (run.json, the report's method table).  Its
    scores on our phantoms therefore say how a supervised network does on data *like its
    training data*; its scores under perturbations it never saw (B0 orientation, voxel size,
    noise) show the known weakness of supervised training.

    Network (the paper's "modified U-net")
        ``levels`` (5) levels of ``width * 2**l`` channels (32-64-...-512), two
        ``kernel_size``^3 convolutions + batch normalisation + LeakyReLU per level, 2^3 max
        pooling, 2^3 transposed convolutions with skip concatenation, a 1^3 linear output:
        19 convolutions, 4 poolings, 4 deconvolutions.  Kernel 5^3 and LeakyReLU slope 0.1 are
        from the authors' released TensorFlow code (``leaky_slope=0``: ReLU).
    Standardisation
        Input field and label chi are standardised with the mean and standard deviation over the
        brain voxels of the training data (as the released code does); the constants are stored
        with the weights.  Output ``chi_ppm = o * chi_std + chi_mean``, times the mask.
    Loss (per batch of training patches)
        ``w_chi * L1 + w_model * model + w_grad * gradient``:
        ``L1 = mean |chi_hat - chi|`` (standardised units, every patch voxel);
        ``model = mean |m (D * chi_hat_ppm - f)|`` in ppm, with the *patch-sized* dipole kernel
        (``D(0) = 0``, circular convolution on the patch, B0 and voxel size of the training
        volume), the paper's model loss; ``gradient = sum_j mean | |grad_j chi_hat| - |grad_j chi| |``
        (standardised units, forward differences), the gradient *difference* loss
        (``gradient_loss="l1"``: ``|grad_j chi_hat - grad_j chi|``).
        Weights ``w_chi = 1``, ``w_model = 1``, ``w_grad = 0.1``: the values the authors' group
        states for QSMnet in its PyTorch reimplementation (SNU-LIST ``qsmnet_torch``; QSMnet+
        uses model 0.5); the paper's own text could not be consulted here, so they are
        **not confirmed from the paper**.  The released TensorFlow script weights the model loss
        5 and computes the gradient term from ReLU'd 26-neighbour differences -- not followed.
        The relative units (chi L1 standardised, model loss in ppm) follow the released code.
    Training (``prepare``, untimed)
        ``train_phantoms`` phantoms of ``train_shape`` at ``train_voxel_size_mm`` (oversampled
        ``train_oversample`` times for the field, no inverse crime when > 1), seeds from
        ``seeds.draw("train", train_phantoms, "qsmnet-<train_seed>")``, a calcification with
        probability ``train_calcification_prob``, **B0 along the last array axis** (the paper's
        single training orientation).  Random ``patch_size``^3 patches holding more than
        ``min_brain_fraction`` brain (the paper: a fixed grid of 64^3 patches with about 66 %
        overlap -- ours draws positions at random), ``optimizer`` (Adam) at ``lr`` (1e-3) decayed
        exponentially by ``lr_decay`` per ``lr_decay_steps`` steps (0.95 per 600, as the released
        code), ``epochs`` x ``steps_per_epoch`` steps of ``batch_size`` patches (25 epochs, batch
        12, as the paper; 1400 steps per epoch matches its 16,800 patches).  A progress bar with
        the time left is shown on a terminal, logged every 10 % otherwise.
    Augmentation (our switches, off by default as in the paper)
        ``augment_max_tilt_deg`` > 0: each training phantom is simulated with B0 tilted by a
        uniform random angle up to that value about a random transverse axis (the network is
        still not told B0; it learns an average over the tilts).  ``augment_noise_snr`` (a list
        of peak SNRs): each training phantom also contributes a noisy copy at one of these SNRs,
        with the benchmark's own noise model (:func:`qsmbench.perturb.add_noise`, phase noise at
        ``train_b0_tesla``/``train_te_s``).  Both enter the cache key and ``trained_on``.
    Other B0 directions, voxel sizes, noise
        Handled as the paper does -- not at all: the network maps a field to chi assuming B0
        along the last axis and the training voxel size.  The array axis closest to ``b0_dir``
        is moved last (an exact permutation, undone on the output; uQSM's helper), any residual
        obliquity is ignored, and the voxel size is not used.
    Cache
        ``cache_dir()/qsmnet/<hash>.pt`` (``$QSMBENCH_CACHE``, default ``~/.cache/qsmbench``;
        uQSM's folder helper) with a JSON sidecar; the hash covers every parameter in
        :data:`TRAINING_KEYS`, :data:`TRAINING_CODE_VERSION`, the phantom and qsmbench versions --
        not the device or the job seed, so one training serves every job (the workflow's
        ``pretrain`` rule trains it once per run).  Written atomically, read with
        ``torch.load(weights_only=True)``.  ``cache=False`` trains every time.
    Inference (``reconstruct``, timed)
        The whole masked, standardised field, zero-padded to a multiple of ``2**(levels-1)``,
        in one forward pass on ``self.device``.

    Profiles: ``paper`` (the defaults: the paper's network and schedule on 24 phantoms of
    160x192x160 at 1 mm; meant for a GPU -- hours on a CPU); ``quick`` (CI and the offline default
    run: 8-16-32-64 channels, 3^3 kernels, 32^3 patches, 300 steps of 4 patches, 4 phantoms of
    80x96x80 at 2 mm, the default benchmark grid; 1.5-3 min on 1 thread as in the default run).
    """

    name = "qsmnet"
    parameters = {
        "width": 32,
        "levels": 5,
        "kernel_size": 5,
        "leaky_slope": 0.1,
        "batch_norm": True,
        "w_chi": 1.0,
        "w_model": 1.0,
        "w_grad": 0.1,
        "gradient_loss": "gdl",
        "patch_size": 64,
        "min_brain_fraction": 0.1,
        "batch_size": 12,
        "epochs": 25,
        "steps_per_epoch": 1400,
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_decay": 0.95,
        "lr_decay_steps": 600,
        "train_phantoms": 24,
        "train_model": "mni",
        "train_shape": [160, 192, 160],
        "train_voxel_size_mm": [1.0, 1.0, 1.0],
        "train_oversample": 2,
        "train_calcification_prob": 0.5,
        "train_b0_tesla": 3.0,
        "train_te_s": 0.025,
        "train_seed": 0,
        "augment_max_tilt_deg": 0.0,
        "augment_noise_snr": [],
        "cache": True,
    }
    profiles = {
        "paper": {},
        "quick": {"width": 8, "levels": 4, "kernel_size": 3, "patch_size": 32, "batch_size": 4, "epochs": 6,
                  "steps_per_epoch": 50, "lr": 2e-3, "lr_decay": 0.5, "lr_decay_steps": 300, "train_phantoms": 4,
                  "train_shape": [80, 96, 80], "train_voxel_size_mm": [2.0, 2.0, 2.0]},
    }
    requirements = ["torch"]
    uses = {"gpu", "training"}
    references = [
        "Yoon J, Gong E, Chatnuntawech I, Bilgic B, Lee J, Jung W, Ko J, Jung H, Setsompop K, Zaharchuk G, "
        "Kim EY, Pauly J, Lee J. Quantitative susceptibility mapping using deep neural network: QSMnet. "
        "NeuroImage 2018;179:199-206. doi:10.1016/j.neuroimage.2018.06.030",
        "Mathieu M, Couprie C, LeCun Y. Deep multi-scale video prediction beyond mean square error "
        "(gradient difference loss). ICLR 2016. arXiv:1511.05440",
    ]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._check_parameters()
        self._net = None
        #: What ``prepare`` did (hash, weights file, trained or loaded, timings, loss history).
        self.training_record: dict[str, Any] = {}

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self) -> None:
        p = self.params

        def fail(msg: str):
            raise ConfigError(f"qsmnet: {msg}")

        for key in ("width", "levels", "kernel_size", "patch_size", "batch_size", "epochs", "steps_per_epoch",
                    "lr_decay_steps", "train_phantoms", "train_oversample"):
            if p[key] < 1:
                fail(f"parameter '{key}' must be >= 1, got {p[key]}")
        if p["kernel_size"] % 2 == 0:
            fail(f"kernel_size must be odd, got {p['kernel_size']}")
        if p["patch_size"] % 2 ** (p["levels"] - 1):
            fail(f"patch_size ({p['patch_size']}) must be a multiple of 2**(levels-1) = {2 ** (p['levels'] - 1)}")
        for key in ("lr", "lr_decay", "train_b0_tesla", "train_te_s"):
            if not p[key] > 0:
                fail(f"parameter '{key}' must be positive, got {p[key]}")
        for key in ("w_chi", "w_model", "w_grad", "leaky_slope"):
            if not p[key] >= 0:
                fail(f"parameter '{key}' must be >= 0, got {p[key]}")
        if p["gradient_loss"] not in ("gdl", "l1"):
            fail(f"gradient_loss must be 'gdl' or 'l1', got {p['gradient_loss']!r}")
        if p["optimizer"] not in ("adam", "rmsprop"):
            fail(f"optimizer must be 'adam' or 'rmsprop', got {p['optimizer']!r}")
        if p["train_model"] not in MODELS or p["train_model"] == "brainweb":
            fail(f"train_model must be one of 'mni', 'analytic', got {p['train_model']!r}")
        if not 0.0 <= p["min_brain_fraction"] < 1.0:
            fail(f"min_brain_fraction must be in [0, 1), got {p['min_brain_fraction']}")
        if not 0.0 <= p["train_calcification_prob"] <= 1.0:
            fail(f"train_calcification_prob must be in [0, 1], got {p['train_calcification_prob']}")
        if not 0.0 <= p["augment_max_tilt_deg"] <= 90.0:
            fail(f"augment_max_tilt_deg must be in [0, 90], got {p['augment_max_tilt_deg']}")
        try:
            p["augment_noise_snr"] = [float(s) for s in p["augment_noise_snr"]]
        except (TypeError, ValueError):
            fail(f"augment_noise_snr must be a list of peak SNRs, got {p['augment_noise_snr']!r}")
        if not all(np.isfinite(s) and s > 0 for s in p["augment_noise_snr"]):
            fail(f"augment_noise_snr must hold positive numbers, got {p['augment_noise_snr']}")
        for key, kind in (("train_shape", int), ("train_voxel_size_mm", float)):
            try:
                vals = [kind(v) for v in p[key]]
            except (TypeError, ValueError):
                vals = []
            if len(vals) != 3 or not all(v > 0 for v in vals) or (kind is int and min(vals) < 8):
                fail(f"{key} must be three positive numbers{' >= 8' if kind is int else ''}, got {p[key]!r}")
            p[key] = vals

    def training_config(self) -> dict[str, Any]:
        """Everything that determines the trained weights (hashed into the cache key)."""
        p = self.params
        return {
            "method": self.name,
            "training_code_version": TRAINING_CODE_VERSION,
            "qsmbench_version": __version__,
            "phantom_version": PHANTOM_VERSION,
            "params": {k: p[k] for k in TRAINING_KEYS},
        }

    def weights_path(self) -> Path:
        uqsm = _uqsm()
        return uqsm.cache_dir() / "qsmnet" / f"{uqsm.training_hash(self.training_config())}.pt"

    # ------------------------------------------------------------------ training data
    def phantom_specs(self) -> list[dict[str, Any]]:
        """Seeds (reserved training range), B0 directions, calcification and noise of the training
        phantoms -- a deterministic function of ``train_seed``."""
        p = self.params
        subjects = seeds.draw("train", p["train_phantoms"], f"qsmnet-{p['train_seed']}")
        rng = np.random.default_rng([p["train_seed"], 0x515A4E])
        specs = []
        for seed in subjects:
            b0 = (0.0, 0.0, 1.0)
            if p["augment_max_tilt_deg"] > 0:
                theta = float(rng.uniform(0.0, p["augment_max_tilt_deg"]))
                phi = float(rng.uniform(0.0, 2 * np.pi))
                b0 = tuple(float(x) for x in tilted_b0_dir(theta, axis=(np.cos(phi), np.sin(phi), 0.0)))
            calc = bool(rng.uniform() < p["train_calcification_prob"])
            snr = float(rng.choice(p["augment_noise_snr"])) if p["augment_noise_snr"] else None
            specs.append({"seed": seed, "b0_dir": b0, "calcification": calc, "noise_snr": snr,
                          "noise_seed": int(rng.integers(2**31 - 1))})
        return specs

    def _training_pairs(self):
        from qsmbench.perturb import add_noise  # noqa: PLC0415

        engine = _torch_engine()
        p = self.params
        pairs = []
        for spec in self.phantom_specs():
            vol = make_phantom(p["train_shape"], p["train_voxel_size_mm"], model=p["train_model"], seed=spec["seed"],
                               b0_dir=spec["b0_dir"], b0_tesla=p["train_b0_tesla"], te_s=p["train_te_s"],
                               calcification=spec["calcification"], oversample=p["train_oversample"])
            versions = [vol]
            if spec["noise_snr"] is not None:
                versions.append(add_noise(vol, spec["noise_snr"], spec["noise_seed"]))
            for v in versions:
                pair, frac = engine.as_train_pair(v.field_ppm, v.references["chi"], v.mask, v.voxel_size_mm,
                                                  v.b0_dir, patch=p["patch_size"],
                                                  min_fraction=p["min_brain_fraction"])
                if frac <= p["min_brain_fraction"]:
                    self.notes.append(f"training phantom seed {spec['seed']}: no {p['patch_size']}^3 patch holds "
                                      f"> {p['min_brain_fraction']:.0%} brain; used the best ones ({frac:.0%})")
                pairs.append(pair)
        return pairs

    def _trained_on(self) -> dict[str, Any]:
        p = self.params
        specs = self.phantom_specs()
        record = {
            "what": "supervised (field, chi) pairs from the phantom generator",
            "phantom_model": p["train_model"],
            "phantom_version": PHANTOM_VERSION,
            "seeds": [s["seed"] for s in specs],
            "shape": list(p["train_shape"]),
            "voxel_size_mm": list(p["train_voxel_size_mm"]),
            "b0": "along the last array axis" if p["augment_max_tilt_deg"] == 0
            else f"tilted up to {p['augment_max_tilt_deg']:g} deg",
        }
        if p["augment_noise_snr"]:
            record["noise_snr"] = list(p["augment_noise_snr"])
        return record

    # ------------------------------------------------------------------ the contract
    def prepare(self, train: Sequence = ()) -> None:
        """Load the cached weights of this training configuration, or train and cache them.

        ``train`` volumes are not used: the labels come from the phantom generator only.
        """
        engine = _torch_engine()
        uqsm = _uqsm()
        uqsm._limit_threads()
        p = self.params
        config = self.training_config()
        key = uqsm.training_hash(config)
        path = uqsm.cache_dir() / "qsmnet" / f"{key}.pt"
        record: dict[str, Any] = {"hash": key, "weights": str(path), "trained": False}
        state = None
        if p["cache"]:
            state = _MEMORY.get(str(path)) or self._load(path)
        if state is None:
            t0 = time.perf_counter()
            pairs = self._training_pairs()
            data_s = time.perf_counter() - t0
            state, rec = engine.train(p, pairs, device=self.device, seed=p["train_seed"])
            record.update(trained=True, data_s=data_s, train_s=rec["train_s"], history=rec["history"],
                          standardisation=rec["standardisation"], device=self.device, n_volumes=len(pairs))
            final = rec["history"][-1]["loss"]
            self.notes.append(f"trained qsmnet in {data_s + rec['train_s']:.1f} s on {self.device} ({data_s:.1f} s "
                              f"simulating {len(pairs)} training volumes; final loss {final:.4g})")
            if p["cache"]:
                self._save(path, state, config, record)
        else:
            self.notes.append(f"qsmnet weights from the cache ({path.name})")
        if p["cache"]:
            _MEMORY[str(path)] = state
        self.notes.append("supervised on qsmbench phantoms (see trained_on), not on the paper's in-vivo COSMOS data")
        net = engine.build_net(p)
        net.load_state_dict(state)
        self._net = engine.on_device(net, self.device).eval()
        self.training_record = record
        self.trained_on = self._trained_on()

    def reconstruct(self, vol) -> np.ndarray:
        if self._net is None:
            self.prepare([])
        uqsm = _uqsm()
        uqsm._limit_threads()
        perm = uqsm.b0_axis_permutation(vol.b0_dir)
        field = np.transpose(vol.field_ppm, perm)
        mask = np.transpose(vol.mask, perm)
        chi = _torch_engine().infer(self._net, field, mask, device=self.device)
        return np.ascontiguousarray(np.transpose(chi, np.argsort(perm)))

    # ------------------------------------------------------------------ cache
    def _load(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        import torch  # noqa: PLC0415

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: train again and replace it
            self.notes.append(f"cached weights {path} unreadable ({type(exc).__name__}: {exc}); retrained")
            log.warning("qsmnet: cannot read %s (%s); training again", path, exc)
            return None

    def _save(self, path: Path, state: dict, config: dict, record: dict) -> None:
        import json  # noqa: PLC0415

        import torch  # noqa: PLC0415

        sidecar = {"config": config, "record": record, "trained_on": self._trained_on(), "torch": torch.__version__}
        atomic_write(path.with_suffix(".json"),
                     lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=1), encoding="utf-8"))
        atomic_write(path, lambda tmp: torch.save(state, tmp))
