"""QSMnet's torch half: the U-Net, the three loss terms, patch sampling, training and inference.

Imported lazily by :mod:`methods.qsmnet` (so the method is listed, and its parameters validated,
without torch).  Every function takes plain numbers and arrays; the method class holds the
parameters, the cache and the notes.  The patch-grid dipole kernel, the circular patch
convolution and the patch-position search are uQSM's (imported from its engine, not copied).
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def uqsm_engine():
    """uQSM's torch engine (the registry's module object, imported by path)."""
    from qsmbench.registry import load_module_from_file  # noqa: PLC0415

    pkg = load_module_from_file(Path(__file__).resolve().parent.parent / "uqsm")
    return importlib.import_module(f"{pkg.__name__}._engine")


# --------------------------------------------------------------------------- the network
class _Block(nn.Sequential):
    """Two ``k^3`` convolutions, each followed by batch normalisation and a (leaky) ReLU."""

    def __init__(self, cin: int, cout: int, k: int, slope: float, batch_norm: bool):
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv3d(c, cout, k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm3d(cout))
            layers.append(nn.LeakyReLU(slope) if slope > 0 else nn.ReLU())
        super().__init__(*layers)


class QSMnetUNet(nn.Module):
    """QSMnet's 3-D U-Net (Yoon et al. 2018): ``levels`` levels of ``width * 2**l`` channels.

    Per level two ``kernel_size^3`` convolutions with batch normalisation and (leaky) ReLU; 2^3
    max pooling on the way down; a 2^3 transposed convolution (stride 2) on the way up,
    concatenated with the skip connection of that level; a 1^3 linear output.  With the paper's
    5 levels that is 18 + 1 convolutions, 4 poolings and 4 deconvolutions.  Input sizes must be
    multiples of ``2**(levels-1)``.

    The standardisation constants of the training data (mean and standard deviation of the
    field and of chi in the brain) are buffers, so they travel with the weights (state_dict).
    """

    def __init__(self, width: int = 32, levels: int = 5, kernel_size: int = 5, leaky_slope: float = 0.1,
                 batch_norm: bool = True):
        super().__init__()
        ch = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList([_Block(1 if i == 0 else ch[i - 1], ch[i], kernel_size, leaky_slope, batch_norm)
                                   for i in range(levels)])
        self.upconv = nn.ModuleList([nn.ConvTranspose3d(ch[i + 1], ch[i], 2, stride=2) for i in range(levels - 1)])
        self.up = nn.ModuleList([_Block(2 * ch[i], ch[i], kernel_size, leaky_slope, batch_norm)
                                 for i in range(levels - 1)])
        self.out = nn.Conv3d(ch[0], 1, 1)
        for name in ("field_mean", "chi_mean"):
            self.register_buffer(name, torch.zeros(()))
        for name in ("field_std", "chi_std"):
            self.register_buffer(name, torch.ones(()))

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = uqsm_engine().channels_last_on_cpu(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool3d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](torch.cat([skips[i], self.upconv[i](x)], dim=1))
        return self.out(x)


def on_device(net: nn.Module, device) -> nn.Module:
    """``net`` on ``device``, channels-last on a CPU: uQSM's :func:`on_device` (the measured gain is there)."""
    return uqsm_engine().on_device(net, device)


def build_net(p: dict) -> QSMnetUNet:
    return QSMnetUNet(width=p["width"], levels=p["levels"], kernel_size=p["kernel_size"],
                      leaky_slope=p["leaky_slope"], batch_norm=p["batch_norm"])


# --------------------------------------------------------------------------- the loss
def chi_loss(pred_n: torch.Tensor, label_n: torch.Tensor) -> torch.Tensor:
    """L1 loss ``mean |chi_pred - chi_label|`` in standardised chi units, every patch voxel."""
    return (pred_n - label_n).abs().mean()


def model_loss(pred_ppm: torch.Tensor, field_ppm: torch.Tensor, mask: torch.Tensor,
               kernel: torch.Tensor) -> torch.Tensor:
    """Model (data-consistency) loss ``mean |m (D * chi_pred) - m f|`` in ppm.

    ``D *`` is the circular convolution on the patch grid with the patch-sized dipole kernel
    (``kernel``, rfft half spectrum, ``D(0) = 0``) -- the paper's patch-wise model loss.
    """
    model = uqsm_engine().dipole_conv(pred_ppm, kernel)
    return (mask * (model - field_ppm)).abs().mean()


def _diffs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (x[..., 1:, :, :] - x[..., :-1, :, :], x[..., :, 1:, :] - x[..., :, :-1, :],
            x[..., :, :, 1:] - x[..., :, :, :-1])


def gradient_loss(pred_n: torch.Tensor, label_n: torch.Tensor, kind: str = "gdl") -> torch.Tensor:
    """Gradient loss in standardised chi units, summed over the three axes of per-voxel forward
    differences (each averaged over its voxel pairs).

    ``kind="gdl"`` (default): the gradient *difference* loss of Mathieu et al. (ICLR 2016),
    ``| |grad_j pred| - |grad_j label| |``; ``kind="l1"``: ``|grad_j pred - grad_j label|``.
    """
    total = pred_n.new_zeros(())
    for gp, gl in zip(_diffs(pred_n), _diffs(label_n), strict=True):
        d = (gp.abs() - gl.abs()) if kind == "gdl" else (gp - gl)
        total = total + d.abs().mean()
    return total


def loss_terms(net: QSMnetUNet, batch: dict[str, torch.Tensor], p: dict) -> tuple[torch.Tensor, ...]:
    """(total, chi L1, model, gradient) of one batch."""
    pred_n = net(batch["input"])
    pred_ppm = pred_n * net.chi_std + net.chi_mean
    l_chi = chi_loss(pred_n, batch["label"])
    l_model = model_loss(pred_ppm, batch["field"], batch["mask"], batch["kernel"])
    l_grad = gradient_loss(pred_n, batch["label"], p["gradient_loss"])
    total = p["w_chi"] * l_chi + p["w_model"] * l_model + p["w_grad"] * l_grad
    return total, l_chi, l_model, l_grad


# --------------------------------------------------------------------------- training data
@dataclass
class TrainPair:
    """One labelled training volume, prepared for patch sampling."""

    field_ppm: np.ndarray      # local field, ppm, float32, zero outside the mask
    chi_ppm: np.ndarray        # the label, ppm, float32, zero outside the mask
    mask: np.ndarray           # bool
    voxel_size_mm: tuple
    b0_dir: tuple
    corners: np.ndarray        # (n, 3) patch corners


def as_train_pair(field_ppm, chi_ppm, mask, voxel_size_mm, b0_dir, *, patch: int,
                  min_fraction: float) -> tuple[TrainPair, float]:
    """A training pair (padded to at least one patch) and the smallest brain fraction of its
    usable patch positions."""
    eng = uqsm_engine()
    mask = np.asarray(mask, bool)
    field = np.asarray(field_ppm, np.float32) * mask
    chi = np.asarray(chi_ppm, np.float32) * mask
    field, chi, mask = (eng.pad_to_patch(a, patch) for a in (field, chi, mask))
    corners, frac = eng.patch_corners(mask, patch, min_fraction)
    return TrainPair(field, chi, mask, tuple(float(v) for v in voxel_size_mm),
                     tuple(float(b) for b in b0_dir), corners), frac


def standardisation(pairs: Sequence[TrainPair]) -> dict[str, float]:
    """Mean and standard deviation of the field and of chi over the brain voxels of all pairs."""
    f = np.concatenate([p.field_ppm[p.mask].astype(np.float64) for p in pairs])
    c = np.concatenate([p.chi_ppm[p.mask].astype(np.float64) for p in pairs])
    return {"field_mean": float(f.mean()), "field_std": float(f.std()) or 1.0,
            "chi_mean": float(c.mean()), "chi_std": float(c.std()) or 1.0}


class PatchSampler:
    """Random training patches (seeded): a pair uniformly, then a valid corner uniformly; each
    patch standardised with the training statistics."""

    def __init__(self, pairs: Sequence[TrainPair], patch: int, stats: dict[str, float], rng: np.random.Generator):
        eng = uqsm_engine()
        self.pairs = list(pairs)
        self.patch = patch
        self.stats = stats
        self.rng = rng
        self.kernels: dict[tuple, torch.Tensor] = {}
        for v in self.pairs:
            key = (v.voxel_size_mm, v.b0_dir)
            if key not in self.kernels:
                self.kernels[key] = eng.patch_kernel((patch,) * 3, v.voxel_size_mm, v.b0_dir, 1.0)

    def batch(self, size: int, device) -> dict[str, torch.Tensor]:
        p = self.patch
        fields, chis, masks, kernels = [], [], [], []
        for _ in range(size):
            v = self.pairs[int(self.rng.integers(len(self.pairs)))]
            c = v.corners[int(self.rng.integers(len(v.corners)))]
            box = tuple(slice(int(i), int(i) + p) for i in c)
            fields.append(v.field_ppm[box])
            chis.append(v.chi_ppm[box])
            masks.append(v.mask[box])
            kernels.append(self.kernels[(v.voxel_size_mm, v.b0_dir)])
        s = self.stats
        field = torch.from_numpy(np.stack(fields)[:, None])
        chi = torch.from_numpy(np.stack(chis)[:, None])
        out = {
            "input": (field - s["field_mean"]) / s["field_std"],
            "label": (chi - s["chi_mean"]) / s["chi_std"],
            "field": field,
            "mask": torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)),
            "kernel": torch.stack(kernels)[:, None],
        }
        return {k: t.to(device) for k, t in out.items()}


# --------------------------------------------------------------------------- progress
class Progress:
    """Training progress with the time left: a tqdm bar on an interactive terminal, otherwise a
    log line at every tenth of the run (workflow jobs log to files)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.n = max(1, int(total)), label, 0
        self.t0 = time.perf_counter()
        self._next = 0.1
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=self.total, desc=label, unit="step", leave=False)

    def update(self, loss: float) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            return
        if self.n / self.total >= self._next or self.n == self.total:
            elapsed = time.perf_counter() - self.t0
            left = elapsed / self.n * (self.total - self.n)
            log.info("%s: step %d/%d (%.0f %%), loss %.4g, %.0f s elapsed, about %.0f s left", self.label, self.n,
                     self.total, 100.0 * self.n / self.total, loss, elapsed, left)
            while self._next <= self.n / self.total:
                self._next += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- training
def train(p: dict, pairs: Sequence[TrainPair], *, device: str, seed: int) -> tuple[dict, dict]:
    """Train a fresh network (``p`` = the method's parameters); returns (state_dict, record)."""
    torch.manual_seed(seed)
    net = on_device(build_net(p), device)
    stats = standardisation(pairs)
    for k, v in stats.items():
        getattr(net, k).fill_(v)
    rng = np.random.default_rng(seed)
    sampler = PatchSampler(pairs, p["patch_size"], stats, rng)
    optimiser = torch.optim.RMSprop if p["optimizer"] == "rmsprop" else torch.optim.Adam
    opt = optimiser(net.parameters(), lr=p["lr"])
    # continuous exponential decay: lr * lr_decay ** (step / lr_decay_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: p["lr_decay"] ** (step / p["lr_decay_steps"]))
    history = []
    net.train()
    t0 = time.perf_counter()
    progress = Progress(p["epochs"] * p["steps_per_epoch"], "qsmnet training")
    try:
        for epoch in range(p["epochs"]):
            running = np.zeros(4)
            for _ in range(p["steps_per_epoch"]):
                batch = sampler.batch(p["batch_size"], device)
                terms = loss_terms(net, batch, p)
                opt.zero_grad(set_to_none=True)
                terms[0].backward()
                opt.step()
                sched.step()
                values = [t.item() for t in terms]
                running += values
                progress.update(values[0])
            running /= max(1, p["steps_per_epoch"])
            history.append({"epoch": epoch + 1, "loss": float(running[0]), "chi_l1": float(running[1]),
                            "model": float(running[2]), "gradient": float(running[3]),
                            "lr": opt.param_groups[0]["lr"], "elapsed_s": time.perf_counter() - t0})
            log.debug("qsmnet epoch %d/%d: loss %.4g (chi %.4g, model %.4g, gradient %.4g)", epoch + 1,
                      p["epochs"], *running)
    finally:
        progress.close()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return state, {"history": history, "train_s": time.perf_counter() - t0, "standardisation": stats}


# --------------------------------------------------------------------------- inference
def infer(net: QSMnetUNet, field_ppm: np.ndarray, mask: np.ndarray, *, device: str) -> np.ndarray:
    """chi (ppm) of one whole volume in one pass, masked.

    The masked field is standardised with the training statistics and zero-padded
    symmetrically to a multiple of ``2**(levels-1)`` per axis (the padding holds the
    standardised value of a zero field, as the background of the training patches does).
    """
    mult = net.multiple
    shape = field_ppm.shape
    pads = [((-n) % mult // 2, (-n) % mult - (-n) % mult // 2) for n in shape]
    fm, fs = float(net.field_mean), float(net.field_std)
    x = np.pad((np.asarray(field_ppm, np.float32) * mask).astype(np.float32), pads)
    x = (x - np.float32(fm)) / np.float32(fs)
    net.eval()
    with torch.no_grad():
        o = net(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device))[0, 0].cpu().numpy()
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, shape, strict=True))
    chi = o[crop] * np.float32(float(net.chi_std)) + np.float32(float(net.chi_mean))
    return (chi * mask).astype(np.float32)


def parameter_count(net: nn.Module) -> int:
    return int(sum(math.prod(t.shape) for t in net.parameters()))
