"""uQSM: the unsupervised deep-learning baseline (Liu & Koch, MICCAI MLMIR 2020)."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
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
from qsmbench.volume import Volume

log = logging.getLogger(__name__)

#: Bump when the training code changes what a given configuration learns (invalidates caches).
#: 2: TV of the masked output, training phantoms from the reserved train seed range, phase_scale.
#: 3: the phantom model is a parameter (train_model, default "mni"), passed to make_phantom.
#: 4: channels-last convolutions on the CPU (the same network; float rounding differs).
#: 5: the weights channels-last on the CPU too (_engine.on_device; float rounding differs).
TRAINING_CODE_VERSION = "5"

#: Parameters that determine the trained weights (the cache key); the others act at inference.
TRAINING_KEYS = (
    "width", "levels", "leaky_slope", "field_scale", "kernel_scale", "phase_scale", "tv_weight", "patch_size",
    "min_brain_fraction", "batch_size", "epochs", "steps_per_epoch", "lr", "lr_decay",
    "train_phantoms", "train_model", "train_shape_min", "train_shape_max", "train_voxel_size_mm", "train_oversample",
    "train_max_tilt_deg", "train_b0_tesla", "train_te_s", "train_seed",
)

# Weights trained in this process, by weights file: the contract tests and benchmarks prepare the
# same configuration many times.
_MEMORY: dict[str, dict] = {}


def cache_dir() -> Path:
    """Per-user cache folder of qsmbench: ``$QSMBENCH_CACHE``, else ``$XDG_CACHE_HOME/qsmbench``,
    else ``~/.cache/qsmbench``."""
    env = os.environ.get("QSMBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "qsmbench"


def training_hash(config: dict) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of a training configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def volume_digest(vol: Volume) -> str:
    """Content hash of what training reads from a volume (field, mask, magnitude, geometry)."""
    h = hashlib.sha256()
    for arr in (vol.field_ppm, vol.mask, vol.magnitude):
        if arr is not None:
            a = np.ascontiguousarray(arr, dtype=np.float32)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    h.update(json.dumps(vol.geometry(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def b0_axis_permutation(b0_dir: Sequence[float]) -> tuple[int, int, int]:
    """Axis order that puts the array axis closest to B0 last (where training put B0).

    A permutation is exact (no interpolation); ``np.transpose(x, perm)`` applies it and
    ``np.argsort(perm)`` undoes it.
    """
    k = int(np.argmax(np.abs(np.asarray(b0_dir, float))))
    return tuple([i for i in range(3) if i != k] + [k])  # type: ignore[return-value]


def _torch_engine():
    """The torch half (imported only when the method runs).  ``import_module`` rather than
    ``from . import``: the registry loads this package under a private name whose parent
    package does not exist, which the relative-import statement needs."""
    return importlib.import_module(f"{__name__}._engine")


def _limit_threads() -> None:
    """Honour the job's thread count (the runner exports it before torch is imported)."""
    n = os.environ.get("QSMBENCH_THREADS")
    if n:
        import torch  # noqa: PLC0415

        torch.set_num_threads(max(1, int(n)))


class UQSM(Method):
    """uQSM: a 3-D U-Net trained without susceptibility labels, applied in one pass.

    Liu J, Koch KM. Model-based learning for quantitative susceptibility mapping. MICCAI
    workshop MLMIR 2020 (arXiv:2004.06259).  The INR-QSM paper (Zhang et al. 2024) compares
    against an unsupervised deep-learning method trained across subjects with a physics loss on
    patches; that this method is uQSM is **not confirmed** -- uQSM is qsmbench's stand-in for
    that role.

    Network
        ``levels`` (5) levels with ``width * 2**l`` channels (24-48-96-192-384), one 3x3x3
        convolution + LeakyReLU (slope ``leaky_slope`` = 0.01, the framework default that the
        authors' code uses) per level and direction, max pooling, nearest-neighbour upsampling
        with skip concatenation, a 1x1x1 linear output ``o``.
    Scaling (as in the paper)
        The network sees ``field_scale * f`` (``100 f_ppm``) inside the mask; its output is in
        units where the dipole kernel is ``kernel_scale * D`` (``3 D``), so
        ``chi_ppm = kernel_scale * o / field_scale`` (``3 o / 100``).  ``D(0) = 0``.
    Loss (unsupervised, per training patch)
        ``mean_voxels W^2 |e^{i phi} - e^{i phi_model}|^2 + tv_weight * TV1(m o)`` with
        ``phi = s f`` and ``phi_model = s F^-1[3 D F(m o)] / 100``, ``s`` the phase per ppm of
        field (``phase_scale``, below).  ``W = m * magnitude / max(magnitude in m)`` (``W = m``
        without magnitude).  TV1 is the anisotropic TV of the *masked* output ``m o`` (as the
        authors' code, which masks chi before both terms): per-voxel forward differences summed
        over the three axes and averaged over voxels (the code averages each axis's differences
        on the ``(N-1)^3`` corner block: the same up to O(1/N)).  The dipole kernel is built for
        the *patch* grid with the volume's voxel size and B0 direction and applied by circular
        FFT without padding: the non-local shortcut that INR-QSM's phase compensation addresses.
        It is kept on purpose: this is the baseline.
    Phase per ppm (``phase_scale``)
        The paper's data term is the nonlinear dipole inversion's phase consistency
        ``|W (e^{i phi} - e^{i d * chi})|^2``, with ``phi`` the measured local phase in radians;
        that reading is ``s = 2 pi gamma_bar B0 TE`` of each training volume (``phase_scale`` =
        None, the default: 20.06 rad/ppm at 3 T and 25 ms), and it is what the equations say.
        The authors' code instead converts the field to ppm and takes ``e^{i 100 f_ppm}``, i.e.
        a fixed 100 rad/ppm whatever B0 and TE -- about 5x the physical phase of their 3 T, 25 ms
        data, which weighs the data term about 25x more against TV (for small residuals the
        term is ``s^2 |residual|^2``) and wraps the phase of fields beyond +-0.03 ppm.  The
        ``paper`` profile reproduces the code (``phase_scale = 100``); a number fixes ``s`` in
        rad/ppm.
    Training (``prepare``, untimed)
        Unlabelled fields only: ``train_phantoms`` embedded head phantoms of the model
        ``train_model`` (default ``"mni"``, the default phantom of the workflow) whose seeds are drawn
        from the reserved *training* range (:func:`qsmbench.seeds.draw`, stream ``"uqsm"``, or
        ``"uqsm-<train_seed>"`` when ``train_seed`` is not 0), shapes and B0 tilts drawn from
        ``train_seed`` (each axis uniform in ``[train_shape_min, train_shape_max]``, voxel size
        ``train_voxel_size_mm``, B0 tilted by up to ``train_max_tilt_deg`` about a random
        transverse axis, acquisition ``train_b0_tesla``/``train_te_s``), plus any volumes passed
        to ``prepare`` by an API caller (their own geometry, B0 and TE; hashed into the cache key).
        The workflow passes none: the benchmark's datasets are test subjects, and training on
        them -- even without labels -- would make uQSM transductive, unlike the paper (trained on
        one set of subjects, tested on others) and unlike the seed discipline of
        :mod:`qsmbench.seeds`.  No reference chi is ever read.  What was trained on (phantom
        model and version, seeds, shapes, volumes) is ``self.trained_on`` (copied into
        run.json).  Random ``patch_size``-cubes with more than ``min_brain_fraction`` brain,
        Adam with learning rate ``lr`` times ``lr_decay`` per epoch, ``epochs`` x
        ``steps_per_epoch`` steps of ``batch_size`` patches, with a progress bar (or periodic log
        lines when stderr is not a terminal) showing the time left.
    Generalisation
        TE and B0 enter only the data term's phase (per training volume) -- the network maps
        ppm to ppm, so it applies unchanged to any acquisition.  Isotropic voxel size does not
        change the dipole kernel on the voxel grid, so any isotropic size is covered; the data
        term uses the true (possibly anisotropic) voxel size of each training volume and
        ``train_voxel_size_mm`` sets the phantoms' anisotropy.  For B0, the array axis closest to
        ``b0_dir`` is moved last at inference (an exact axis permutation, undone on the output),
        and ``train_max_tilt_deg`` trains on tilted fields; the network itself is not told
        ``b0_dir``, so a strong obliquity outside the trained range is out of distribution.
    Cache
        Weights live in ``cache_dir()/uqsm/<hash>.pt`` (``$QSMBENCH_CACHE``, default
        ``~/.cache/qsmbench``) with a JSON sidecar; the hash covers every parameter in
        :data:`TRAINING_KEYS`, the phantom and training-code versions, the qsmbench version and a
        content hash of the training volumes -- not the device or the job seed, so one training
        serves every job.  Written atomically, read with ``torch.load(weights_only=True)``.
        ``cache=False`` trains every time.
    Inference (``reconstruct``, timed)
        The whole masked field, zero-padded to a multiple of ``2**(levels-1)`` (16), in one
        forward pass on ``self.device``; returns ``m * chi_ppm``.

    Parameters
    ----------
    width, levels, leaky_slope : network (24, 5, 0.01).
    field_scale, kernel_scale : the paper's scaling (100 and 3).
    phase_scale : radians of phase per ppm of field in the data term; None (default) = the
        physical phase of each training volume's B0 and TE; ``paper`` profile 100 (the code).
    tv_weight : weight of TV1(m o) (0.001).
    patch_size, min_brain_fraction, batch_size, epochs, steps_per_epoch, lr, lr_decay : training
        (96, 0.5, -, 10, -, 1e-4, 0.8; batch size and patches per epoch are not stated: 2, 1000).
    train_* : the training data (above); ``train_model`` "mni" (default) or "analytic";
        ``train_voxel_size_mm`` one triple (mm) or a list of triples, phantom ``i`` taking entry
        ``i`` modulo their number.
    cache : read/write the weights cache.

    Profiles: ``paper`` (the published settings and the code's ``phase_scale = 100``, meant for
    a GPU); ``quick`` (CI and the offline default run: 8-16-32-64-128 channels, 48^3 patches,
    8 epochs x 50 steps of 2 patches at learning rate 1e-3, 8 phantoms of 64-96 voxels per axis,
    alternately at 1 mm (a field of view through the brain, the resolution of in-vivo data) and
    2 mm (whole heads, the default run's resolution); 2-4 minutes on 1 CPU core (130 s in a fast hour), chosen
    on tuning-range phantoms, see :attr:`tuned_on`: trained at 1 mm only it stayed behind TKD at
    both resolutions); ``cpu`` (12 channels,
    10 x 60 steps, 12 phantoms of 64-112 voxels: a few minutes on 2 idle cores).  Patches smaller
    than about 48^3 train *worse* the longer they train on these phantoms (the patch-circular
    data term then rewards spurious sources), so even ``quick`` keeps 48^3.
    """

    name = "uqsm"
    parameters = {
        "width": 24,
        "levels": 5,
        "leaky_slope": 0.01,
        "field_scale": 100.0,
        "kernel_scale": 3.0,
        "phase_scale": None,
        "tv_weight": 1e-3,
        "patch_size": 96,
        "min_brain_fraction": 0.5,
        "batch_size": 2,
        "epochs": 10,
        "steps_per_epoch": 1000,
        "lr": 1e-4,
        "lr_decay": 0.8,
        "train_phantoms": 24,
        "train_model": "mni",
        "train_shape_min": 144,
        "train_shape_max": 176,
        "train_voxel_size_mm": [1.0, 1.0, 1.0],
        "train_oversample": 2,
        "train_max_tilt_deg": 0.0,
        "train_b0_tesla": 3.0,
        "train_te_s": 0.025,
        "train_seed": 0,
        "cache": True,
    }
    parameter_types = {"phase_scale": float}
    profiles = {
        "paper": {"phase_scale": 100.0},
        "cpu": {"width": 12, "patch_size": 48, "batch_size": 2, "epochs": 10, "steps_per_epoch": 60,
                "lr": 1e-3, "train_phantoms": 12, "train_shape_min": 64, "train_shape_max": 112,
                "train_oversample": 1},
        "quick": {"width": 8, "patch_size": 48, "batch_size": 2, "epochs": 8, "steps_per_epoch": 50,
                  "lr": 1e-3, "train_phantoms": 8, "train_shape_min": 64, "train_shape_max": 96,
                  "train_voxel_size_mm": [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], "train_oversample": 1},
    }
    #: How the quick profile's training data and length were chosen (NRMSE % on tuning-range
    #: phantoms, never a test seed; rerun with tests/benchmarks/tune_uqsm_quick.py).
    tuned_on = {
        "what": "quick profile: training voxel sizes and epochs. Candidates (NRMSE % at 2 mm noise-free / 2 mm "
                "peak SNR 20 / 1 mm noise-free, mean of the 2 mm seeds): 1 mm only, 6 epochs (previous) 61.2 / 63.0 "
                "/ 60.5; 2 mm only 49.8 / 54.0 / 63.2; 1 and 2 mm alternating 53.8 / 56.2 / 55.6; 1, 1.5 and 2 mm "
                "54.2 / 57.1 / 56.0; 1 and 2 mm, 8 epochs (chosen) 52.3 / 55.3 / 54.0; the same with tv_weight 1e-4 "
                "50.7 / 56.6 / 54.2. TKD 55.9 / 72.1 / 54.7",
        "phantom_model": "mni", "phantom_version": "2", "seeds": [2240783, 2482977],
        "shape": [[80, 96, 80], [160, 192, 160]], "voxel_size_mm": [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]],
        "noise_peak_snr": [None, 20.0], "profile": "quick", "script": "tests/benchmarks/tune_uqsm_quick.py",
    }
    requirements = ["torch"]
    uses = {"magnitude", "gpu", "training"}
    references = [
        "Liu J, Koch KM. Model-based learning for quantitative susceptibility mapping. Machine "
        "Learning for Medical Image Reconstruction (MLMIR, MICCAI workshop) 2020. arXiv:2004.06259. "
        "doi:10.48550/arXiv.2004.06259",
        "Zhang M et al. Unsupervised learning of the susceptibility map with implicit neural "
        "representation (INR-QSM). Medical Image Analysis 2024;95:103173. "
        "doi:10.1016/j.media.2024.103173",
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
        for key in ("width", "levels", "patch_size", "batch_size", "epochs", "steps_per_epoch",
                    "train_shape_min", "train_oversample"):
            if p[key] < 1:
                raise ConfigError(f"uqsm: parameter '{key}' must be >= 1, got {p[key]}")
        if p["patch_size"] % 2 ** (p["levels"] - 1):
            raise ConfigError(f"uqsm: patch_size ({p['patch_size']}) must be a multiple of "
                              f"2**(levels-1) = {2 ** (p['levels'] - 1)}")
        if p["train_phantoms"] < 0 or p["train_shape_max"] < p["train_shape_min"] or p["train_shape_min"] < 8:
            raise ConfigError("uqsm: need train_phantoms >= 0 and 8 <= train_shape_min <= train_shape_max, got "
                              f"{p['train_phantoms']}, {p['train_shape_min']}, {p['train_shape_max']}")
        if p["train_model"] not in MODELS or p["train_model"] == "brainweb":
            raise ConfigError(f"uqsm: train_model must be 'mni' or 'analytic' (a phantom model of "
                              f"qsmbench.phantom), got {p['train_model']!r}")
        if not 0.0 <= p["min_brain_fraction"] < 1.0:
            raise ConfigError(f"uqsm: min_brain_fraction must be in [0, 1), got {p['min_brain_fraction']}")
        for key in ("field_scale", "kernel_scale", "lr", "lr_decay", "train_b0_tesla", "train_te_s"):
            if not p[key] > 0:
                raise ConfigError(f"uqsm: parameter '{key}' must be positive, got {p[key]}")
        if p["phase_scale"] is not None and not p["phase_scale"] > 0:
            raise ConfigError(f"uqsm: phase_scale must be positive (rad/ppm) or null (physical), got "
                              f"{p['phase_scale']!r}")
        if p["tv_weight"] < 0 or not 0 <= p["train_max_tilt_deg"] <= 90:
            raise ConfigError("uqsm: tv_weight must be >= 0 and train_max_tilt_deg in [0, 90]")
        raw = p["train_voxel_size_mm"]
        nested = isinstance(raw, (list, tuple)) and len(raw) > 0 and all(isinstance(x, (list, tuple)) for x in raw)
        try:
            sizes = [[float(v) for v in x] for x in (raw if nested else [raw])]
        except (TypeError, ValueError):
            sizes = [[]]
        if not all(len(vs) == 3 and all(v > 0 for v in vs) for vs in sizes):
            raise ConfigError(f"uqsm: train_voxel_size_mm must be three positive numbers (mm) or a list of such "
                              f"triples, got {raw!r}")
        p["train_voxel_size_mm"] = sizes if nested else sizes[0]

    def train_voxel_sizes(self) -> list[list[float]]:
        """The training phantoms' voxel sizes, one triple per entry of ``train_voxel_size_mm``
        (phantom ``i`` uses entry ``i`` modulo their number)."""
        vs = self.params["train_voxel_size_mm"]
        return vs if isinstance(vs[0], list) else [vs]

    def training_config(self, train: Sequence[Volume] = ()) -> dict[str, Any]:
        """Everything that determines the trained weights (hashed into the cache key)."""
        p = self.params
        return {
            "method": self.name,
            "training_code_version": TRAINING_CODE_VERSION,
            "qsmbench_version": __version__,
            "phantom_version": PHANTOM_VERSION,
            "params": {k: p[k] for k in TRAINING_KEYS},
            "train_volumes": [volume_digest(v) for v in train],
        }

    def weights_path(self, train: Sequence[Volume] = ()) -> Path:
        return cache_dir() / "uqsm" / f"{training_hash(self.training_config(train))}.pt"

    # ------------------------------------------------------------------ training data
    def train_seeds(self) -> list[int]:
        """Seeds of the training phantoms: reserved training-range seeds (:mod:`qsmbench.seeds`)."""
        p = self.params
        stream = "uqsm" if p["train_seed"] == 0 else f"uqsm-{p['train_seed']}"
        return seeds.draw("train", p["train_phantoms"], stream)

    def phantom_specs(self) -> list[dict[str, Any]]:
        """Seeds (from the training range), shapes and B0 directions (drawn from ``train_seed``) of
        the training phantoms."""
        p = self.params
        rng = np.random.default_rng([p["train_seed"], 0x75514D])
        specs = []
        sizes = self.train_voxel_sizes()
        for i, seed in enumerate(self.train_seeds()):
            shape = tuple(int(n) for n in rng.integers(p["train_shape_min"], p["train_shape_max"] + 1, 3))
            b0 = (0.0, 0.0, 1.0)
            if p["train_max_tilt_deg"] > 0:
                theta = float(rng.uniform(0.0, p["train_max_tilt_deg"]))
                phi = float(rng.uniform(0.0, 2 * np.pi))
                b0 = tuple(float(x) for x in tilted_b0_dir(theta, axis=(np.cos(phi), np.sin(phi), 0.0)))
            specs.append({"shape": shape, "seed": seed, "b0_dir": b0, "voxel_size_mm": sizes[i % len(sizes)]})
        return specs

    def describe_training(self, train: Sequence[Volume] = ()) -> dict[str, Any]:
        """``trained_on``: the phantom model/version, seeds, shapes and any API-given volumes."""
        p = self.params
        specs = self.phantom_specs()
        return {
            "what": "uqsm weights (unsupervised; fields only, no chi)",
            "phantom_model": p["train_model"],
            "phantom_version": PHANTOM_VERSION,
            "seeds": [s["seed"] for s in specs],
            "seed_stream": "uqsm" if p["train_seed"] == 0 else f"uqsm-{p['train_seed']}",
            "shapes": [list(s["shape"]) for s in specs],
            "voxel_size_mm": [list(s["voxel_size_mm"]) for s in specs],
            "b0_dirs": [list(s["b0_dir"]) for s in specs],
            "volumes": [{"name": v.name, "digest": volume_digest(v)} for v in train],
        }

    def _training_volumes(self, train: Sequence[Volume]):
        engine = _torch_engine()
        p = self.params
        out = []

        def add(v: Volume, what: str):
            tv, frac = engine.as_train_volume(v.field_ppm, v.mask, v.magnitude, v.voxel_size_mm, v.b0_dir,
                                              v.b0_tesla, v.te_s, patch=p["patch_size"],
                                              min_fraction=p["min_brain_fraction"], phase_scale=p["phase_scale"])
            if frac <= p["min_brain_fraction"]:
                self.notes.append(f"{what}: no {p['patch_size']}^3 patch holds > {p['min_brain_fraction']:.0%} "
                                  f"brain; used the best ones ({frac:.0%})")
            out.append(tv)

        for spec in self.phantom_specs():
            vol = make_phantom(spec["shape"], spec["voxel_size_mm"], model=p["train_model"], seed=spec["seed"],
                               b0_dir=spec["b0_dir"],
                               b0_tesla=p["train_b0_tesla"], te_s=p["train_te_s"],
                               oversample=p["train_oversample"])
            add(vol, f"training phantom seed {spec['seed']}")
        for v in train:
            add(v, f"training volume '{v.name}'")
        if not out:
            raise ConfigError("uqsm: no training data (train_phantoms = 0 and no training volumes)")
        return out

    # ------------------------------------------------------------------ the contract
    def prepare(self, train: Sequence[Volume] = ()) -> None:
        """Load the cached weights of this training configuration, or train and cache them."""
        engine = _torch_engine()
        _limit_threads()
        p = self.params
        train = list(train)
        config = self.training_config(train)
        key = training_hash(config)
        path = cache_dir() / "uqsm" / f"{key}.pt"
        record = {"hash": key, "weights": str(path), "trained": False}
        state = None
        if p["cache"]:
            state = _MEMORY.get(str(path)) or self._load(path)
        if state is None:
            t0 = time.perf_counter()
            volumes = self._training_volumes(train)
            data_s = time.perf_counter() - t0
            state, rec = engine.train(p, volumes, device=self.device, seed=p["train_seed"])
            record.update(trained=True, data_s=data_s, train_s=rec["train_s"], history=rec["history"],
                          device=self.device, n_volumes=len(volumes))
            self.notes.append(f"trained uqsm in {data_s + rec['train_s']:.1f} s on {self.device} "
                              f"(final loss {rec['history'][-1]['loss']:.4g})")
            if p["cache"]:
                self._save(path, state, config, record)
        else:
            self.notes.append(f"uqsm weights from the cache ({path.name})")
            record["trained_then"] = self._sidecar_record(path)
        if p["cache"]:
            _MEMORY[str(path)] = state
        net = engine.build_net(p)
        net.load_state_dict(state)
        self._net = engine.on_device(net, self.device).eval()
        self.training_record = record
        self.trained_on = self.describe_training(train)

    def reconstruct(self, vol: Volume) -> np.ndarray:
        if self._net is None:
            self.prepare([])
        _limit_threads()
        perm = b0_axis_permutation(vol.b0_dir)
        field = np.transpose(vol.field_ppm, perm)
        mask = np.transpose(vol.mask, perm)
        chi = _torch_engine().infer(self._net, field, mask, field_scale=self.params["field_scale"],
                                    kernel_scale=self.params["kernel_scale"], device=self.device)
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
            log.warning("uqsm: cannot read %s (%s); training again", path, exc)
            return None

    @staticmethod
    def _sidecar_record(path: Path) -> dict:
        """The training record saved beside cached weights (history, timings), or {}."""
        try:
            return dict(json.loads(path.with_suffix(".json").read_text()).get("record", {}))
        except (OSError, ValueError, AttributeError):
            return {}

    def _save(self, path: Path, state: dict, config: dict, record: dict) -> None:
        import torch  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = {"config": config, "record": record, "torch": torch.__version__}
        umask = os.umask(0)
        os.umask(umask)  # mkstemp makes 0600 files; a shared cache wants the usual permissions
        for target, write in ((path.with_suffix(".json"), lambda fh: fh.write(json.dumps(sidecar, indent=1).encode())),
                              (path, lambda fh: torch.save(state, fh))):
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.chmod(tmp, 0o666 & ~umask)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
