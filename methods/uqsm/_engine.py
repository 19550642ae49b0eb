"""uQSM's torch half: the U-Net, the unsupervised loss, patch sampling, training and inference.

Imported lazily by :mod:`methods.uqsm` (so the method is listed, and its parameters validated,
without torch).  Every function takes plain numbers and arrays; the method class holds the
parameters, the cache and the notes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsmbench.physics import dipole_kernel, ppm_to_rad
from qsmbench.progress import Progress

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the network
class UNet(nn.Module):
    """3-D U-Net of uQSM: ``levels`` levels, ``width * 2**l`` channels at level ``l``.

    One 3x3x3 convolution + LeakyReLU per level on the way down (max pooling between levels)
    and one per level on the way up (nearest-neighbour upsampling, then concatenation with the
    skip connection of that level); a 1x1x1 linear convolution gives the output.  Input sizes
    must be multiples of ``2**(levels - 1)``.
    """

    def __init__(self, width: int = 24, levels: int = 5, in_channels: int = 1, leaky_slope: float = 0.01):
        super().__init__()
        ch = [width * 2**i for i in range(levels)]
        self.slope = float(leaky_slope)
        self.down = nn.ModuleList([nn.Conv3d(in_channels if i == 0 else ch[i - 1], ch[i], 3, padding=1)
                                   for i in range(levels)])
        self.up = nn.ModuleList([nn.Conv3d(ch[i + 1] + ch[i], ch[i], 3, padding=1) for i in range(levels - 1)])
        self.out = nn.Conv3d(ch[0], 1, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last_on_cpu(x)
        skips = []
        for i, conv in enumerate(self.down):
            if i:
                x = F.max_pool3d(x, 2)
            x = F.leaky_relu(conv(x), self.slope)
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.leaky_relu(self.up[i](torch.cat([x, skips[i]], dim=1)), self.slope)
        return self.out(x)


def channels_last_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """``x`` channels-last on a CPU (as is elsewhere): oneDNN's 3-D convolutions with few channels
    run faster so; the same network, only the float rounding differs.  Used by this U-Net and
    QSMnet's, whose weights :func:`on_device` lays out the same way."""
    return x.contiguous(memory_format=torch.channels_last_3d) if x.device.type == "cpu" else x


def on_device(net: nn.Module, device) -> nn.Module:
    """``net`` moved to ``device``; on a CPU with its convolution weights channels-last too.

    With the activations channels-last (:func:`channels_last_on_cpu`) but the weights not, oneDNN
    reorders every weight at every call: a uQSM quick training step on 1 thread took 0.71-0.74 s,
    with both channels-last 0.49-0.51 s (QSMnet's quick: 0.64-0.65 s -> 0.43-0.51 s).  The values
    are the same; only the layout (and so the float rounding of the sums) differs.  Used for
    training and inference by uQSM and QSMnet; on a GPU the layout is left as it is.
    """
    net = net.to(device)
    if torch.device(device).type == "cpu":
        net = net.to(memory_format=torch.channels_last_3d)
    return net


# --------------------------------------------------------------------------- the loss
def patch_kernel(shape: Sequence[int], voxel_size_mm, b0_dir, kernel_scale: float) -> torch.Tensor:
    """``kernel_scale * D(k)`` on the rfft half spectrum of ``shape``, ``D(0) = 0`` (float32)."""
    d = dipole_kernel(tuple(shape), voxel_size_mm, b0_dir, d0=0.0, rfft=True, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(d * np.float32(kernel_scale)))


def dipole_conv(o: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Circular convolution of ``o`` (..., X, Y, Z) with a half-spectrum kernel (no padding)."""
    spatial = o.shape[-3:]
    return torch.fft.irfftn(torch.fft.rfftn(o, dim=(-3, -2, -1)) * kernel, s=spatial, dim=(-3, -2, -1))


def data_term(o: torch.Tensor, phase_rad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
              kernel: torch.Tensor, rad_per_unit: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of ``|W (e^{i phi} - e^{i phi_model})|^2``, per batch element.

    ``phi_model = rad_per_unit * (kernel * (m o))``: ``o`` in network units, ``kernel`` the
    scaled dipole kernel and ``rad_per_unit`` the radians per network unit of field (see
    :meth:`methods.uqsm.UQSM` for the scaling).  ``|e^{ia} - e^{ib}|^2 = 2 - 2 cos(a - b)``
    is used because it is exact and has a clean gradient.
    """
    model = dipole_conv(o * mask, kernel) * rad_per_unit.view(-1, 1, 1, 1, 1)
    residual = weight * weight * (2.0 - 2.0 * torch.cos(phase_rad - model))
    return residual.mean(dim=(1, 2, 3, 4))


def total_variation(o: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV, ``sum_j |forward difference_j o|`` averaged over voxels, per batch element.

    Differences are per voxel (no mm scaling); the last plane has no forward neighbour
    (Neumann boundary), so it contributes nothing.
    """
    n = o[0].numel()
    tv = (o[..., 1:, :, :] - o[..., :-1, :, :]).abs().sum(dim=(1, 2, 3, 4))
    tv = tv + (o[..., :, 1:, :] - o[..., :, :-1, :]).abs().sum(dim=(1, 2, 3, 4))
    tv = tv + (o[..., :, :, 1:] - o[..., :, :, :-1]).abs().sum(dim=(1, 2, 3, 4))
    return tv / n


# --------------------------------------------------------------------------- training data
@dataclass
class TrainVolume:
    """One unlabelled training field, prepared for patch sampling."""

    field_ppm: np.ndarray      # masked local field, ppm, float32
    mask: np.ndarray           # bool
    weight: np.ndarray         # W = magnitude / max inside m, times m (float32)
    voxel_size_mm: tuple
    b0_dir: tuple
    rad_per_ppm: float         # phase per ppm in the data term: ppm_to_rad(1, B0, TE) or phase_scale
    corners: np.ndarray        # (n, 3) valid patch corners


def magnitude_weight(magnitude, mask) -> np.ndarray:
    """``W = m * magnitude / max(magnitude in m)``; ``W = m`` without a usable magnitude."""
    m = np.asarray(mask, bool)
    if magnitude is None:
        return m.astype(np.float32)
    mag = np.abs(np.asarray(magnitude, dtype=np.float32)) * m
    top = float(mag.max(initial=0.0))
    return (mag / top).astype(np.float32) if top > 0 else m.astype(np.float32)


def patch_corners(mask: np.ndarray, patch: int, min_fraction: float) -> tuple[np.ndarray, float]:
    """Corners of every ``patch``-cube inside ``mask`` holding > ``min_fraction`` brain.

    Uses a summed-volume table, so all positions are checked exactly.  When none qualifies the
    positions with the largest brain fraction are returned (with that fraction) instead.
    """
    m = np.asarray(mask, dtype=np.int64)
    s = np.zeros(tuple(n + 1 for n in m.shape), dtype=np.int64)
    s[1:, 1:, 1:] = m.cumsum(0).cumsum(1).cumsum(2)
    p = patch
    a = slice(p, None)
    b = slice(None, -p)
    box = (s[a, a, a] - s[b, a, a] - s[a, b, a] - s[a, a, b]
           + s[b, b, a] + s[b, a, b] + s[a, b, b] - s[b, b, b])
    frac = box / float(p**3)
    ok = frac > min_fraction
    if not ok.any():
        ok = frac >= frac.max() - 1e-12
    return np.argwhere(ok).astype(np.int32), float(frac[ok].min())


def pad_to_patch(arr: np.ndarray, patch: int) -> np.ndarray:
    """Zero-pad each axis (after the end) to at least ``patch`` voxels."""
    pad = [(0, max(0, patch - n)) for n in arr.shape]
    return np.pad(arr, pad) if any(p[1] for p in pad) else arr


def as_train_volume(field_ppm, mask, magnitude, voxel_size_mm, b0_dir, b0_tesla, te_s, *, patch: int,
                    min_fraction: float, phase_scale: float | None = None) -> tuple[TrainVolume, float]:
    """A training volume (padded to at least one patch) and the smallest brain fraction of its
    usable patch positions.  The data term's phase per ppm is ``phase_scale`` (rad/ppm) or, when
    None, the physical ``ppm_to_rad(1, b0_tesla, te_s)``."""
    mask = np.asarray(mask, bool)
    weight = magnitude_weight(magnitude, mask)
    field = np.asarray(field_ppm, np.float32) * mask
    field, mask, weight = (pad_to_patch(a, patch) for a in (field, mask, weight))
    corners, frac = patch_corners(mask, patch, min_fraction)
    rad_per_ppm = float(ppm_to_rad(1.0, b0_tesla, te_s)) if phase_scale is None else float(phase_scale)
    tv = TrainVolume(field, mask, weight, tuple(float(v) for v in voxel_size_mm),
                     tuple(float(b) for b in b0_dir), rad_per_ppm, corners)
    return tv, frac


class PatchSampler:
    """Random training patches (seeded): a volume uniformly, then a valid corner uniformly."""

    def __init__(self, volumes: Sequence[TrainVolume], patch: int, field_scale: float, kernel_scale: float,
                 rng: np.random.Generator):
        self.volumes = list(volumes)
        self.patch = patch
        self.field_scale = field_scale
        self.rng = rng
        self.kernels: dict[tuple, torch.Tensor] = {}
        for v in self.volumes:
            key = (v.voxel_size_mm, v.b0_dir)
            if key not in self.kernels:
                self.kernels[key] = patch_kernel((patch,) * 3, v.voxel_size_mm, v.b0_dir, kernel_scale)

    def batch(self, size: int, device) -> dict[str, torch.Tensor]:
        p = self.patch
        fields, masks, weights, kernels, rad = [], [], [], [], []
        for _ in range(size):
            v = self.volumes[int(self.rng.integers(len(self.volumes)))]
            c = v.corners[int(self.rng.integers(len(v.corners)))]
            box = tuple(slice(int(i), int(i) + p) for i in c)
            fields.append(v.field_ppm[box])
            masks.append(v.mask[box])
            weights.append(v.weight[box])
            kernels.append(self.kernels[(v.voxel_size_mm, v.b0_dir)])
            rad.append(v.rad_per_ppm)
        field = torch.from_numpy(np.stack(fields)[:, None])
        rad_per_ppm = torch.tensor(rad, dtype=torch.float32)
        out = {
            "input": field * self.field_scale,
            "phase": field * rad_per_ppm.view(-1, 1, 1, 1, 1),
            "mask": torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)),
            "weight": torch.from_numpy(np.stack(weights)[:, None]),
            "kernel": torch.stack(kernels)[:, None],
            # network units of field -> radians: field_ppm = unit / field_scale
            "rad_per_unit": rad_per_ppm / self.field_scale,
        }
        return {k: t.to(device) for k, t in out.items()}


# --------------------------------------------------------------------------- training
def loss_terms(net: UNet, batch: dict[str, torch.Tensor], tv_weight: float) -> tuple[torch.Tensor, ...]:
    """(loss, data term, TV) of a batch, each the mean over its patches; TV of the masked output."""
    o = net(batch["input"])
    data = data_term(o, batch["phase"], batch["weight"], batch["mask"], batch["kernel"], batch["rad_per_unit"])
    tv = total_variation(o * batch["mask"])
    return (data + tv_weight * tv).mean(), data.mean(), tv.mean()


def build_net(p: dict) -> UNet:
    return UNet(width=p["width"], levels=p["levels"], leaky_slope=p["leaky_slope"])


def train(p: dict, volumes: Sequence[TrainVolume], *, device: str, seed: int) -> tuple[dict, dict]:
    """Train a fresh network (``p`` = the method's parameters); returns (state_dict, record)."""
    torch.manual_seed(seed)
    net = on_device(build_net(p), device)
    rng = np.random.default_rng(seed)
    sampler = PatchSampler(volumes, p["patch_size"], p["field_scale"], p["kernel_scale"], rng)
    opt = torch.optim.Adam(net.parameters(), lr=p["lr"])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=p["lr_decay"])
    history = []
    t0 = time.perf_counter()
    progress = Progress(p["epochs"] * p["steps_per_epoch"], "uqsm training", logger=log)
    for epoch in range(p["epochs"]):
        running = np.zeros(3)
        for step in range(p["steps_per_epoch"]):
            batch = sampler.batch(p["batch_size"], device)
            loss, data, tv = loss_terms(net, batch, p["tv_weight"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += [loss.item(), data.item(), tv.item()]
            progress.update(1, {"epoch": epoch + 1, "loss": running[0] / (step + 1)})
        running /= max(1, p["steps_per_epoch"])
        history.append({"epoch": epoch + 1, "loss": float(running[0]), "data": float(running[1]),
                        "tv": float(running[2]),
                        "lr": opt.param_groups[0]["lr"], "elapsed_s": time.perf_counter() - t0})
        log.info("uqsm epoch %d/%d: loss %.4g (data %.4g, tv %.4g) %.1f s", epoch + 1, p["epochs"],
                 *running, time.perf_counter() - t0)
        sched.step()
    progress.close()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return state, {"history": history, "train_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- inference
def infer(net: UNet, field_ppm: np.ndarray, mask: np.ndarray, *, field_scale: float, kernel_scale: float,
          device: str) -> np.ndarray:
    """chi (ppm) of one whole volume: ``kernel_scale * o / field_scale``, masked.

    The (masked) field is zero-padded symmetrically to a multiple of the network's
    ``2**(levels-1)`` per axis.
    """
    mult = net.multiple
    shape = field_ppm.shape
    pads = []
    for n in shape:
        extra = (-n) % mult
        pads.append((extra // 2, extra - extra // 2))
    x = np.pad((field_ppm * mask).astype(np.float32) * np.float32(field_scale), pads)
    with torch.no_grad():
        o = net(torch.from_numpy(x)[None, None].to(device))[0, 0].cpu().numpy()
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, shape))
    return (o[crop] * np.float32(kernel_scale / field_scale) * mask).astype(np.float32)
