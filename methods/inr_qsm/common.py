"""Torch building blocks shared by INR-QSM and INR-QSM-fast.

Conventions (both variants):

* Field and chi in ppm, float32.  ``field = D * chi`` with the project's one dipole kernel
  (:func:`qsmbench.physics.dipole_kernel`), evaluated on a zero-padded grid
  (:func:`qsmbench.physics.padded_shape`) and cropped back, exactly as
  :func:`qsmbench.physics.forward_field`.  ``D(0) = d0`` (default 0: the simulated field has zero
  mean over the padded box, the convention of the phantom's forward simulation).
* Gradients are forward differences *per voxel* (no voxel-size scaling, the usual reading of
  the paper's code), taken only between two voxels of the mask: the edge weights carry that
  pair mask, so the field outside the brain never enters a gradient term.
* Coordinates are voxel centres in mm, centred, divided by the half extent of the longest axis:
  the longest axis spans [-1, 1] and the others proportionally (isotropic in mm).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from qsmbench.errors import ConfigError, MethodUnavailableError, UnknownMethodError
from qsmbench.physics import dipole_kernel, padded_shape

log = logging.getLogger("qsmbench.methods.inr_qsm")


def apply_thread_limit() -> None:
    """Honour the job's thread count (the runner sets ``QSMBENCH_THREADS`` before torch loads)."""
    n = os.environ.get("QSMBENCH_THREADS")
    if n and n.isdigit() and int(n) > 0 and torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))


def normalised_coords(shape: Sequence[int], voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Voxel-centre coordinates, shape ``(*shape, 3)``, float32, isotropic in mm.

    ``c_j = (i_j - (N_j - 1)/2) * d_j / R`` with ``R = max_j (N_j - 1) d_j / 2``.
    """
    half = [(int(n) - 1) * float(d) / 2.0 for n, d in zip(shape, voxel_size_mm)]
    r = max(max(half), 1e-6)
    axes = [((np.arange(int(n)) - (int(n) - 1) / 2.0) * float(d) / r).astype(np.float32)
            for n, d in zip(shape, voxel_size_mm)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def half_extents(shape: Sequence[int], voxel_size_mm: Sequence[float]) -> tuple[float, float, float]:
    """Half extent of each axis in the normalised coordinates (the longest is 1)."""
    half = [(int(n) - 1) * float(d) / 2.0 for n, d in zip(shape, voxel_size_mm)]
    r = max(max(half), 1e-6)
    return tuple(max(h / r, 1e-6) for h in half)  # type: ignore[return-value]


class DipoleOperator:
    """``x -> crop(F^-1[D . F(zero_pad(x))])`` on the last three axes of a torch tensor.

    Equal (to float32 rounding) to :func:`qsmbench.physics.forward_field` with the same
    ``pad_factor`` and ``d0``.

    The operator is symmetric: ``crop`` is the adjoint of ``zero_pad`` and ``F^-1 D F`` is a
    convolution with a real, even kernel (``D(k) = D(-k)``, real), so its adjoint -- the
    gradient of a loss through it -- is the operator itself.  :class:`_SymmetricOperator` gives
    autograd that backward: one more r2c/c2r pair.  Autograd's own backward through ``rfftn`` with
    a padded size builds the full complex spectrum and runs a complex-to-complex FFT of it: on
    INR-QSM-fast's grid (80 x 96 x 80 padded to 160 x 192 x 160, one thread) a forward + backward
    took 152-179 ms that way and 118-128 ms this way (no difference on 48^3 patches).  The values
    are those of the same adjoint, to float32 rounding (``tests/test_inr_qsm.py`` checks it against
    autograd's), so a fit differs in the last digits: in the default run INR-QSM-fast's NRMSE went
    38.32906 -> 38.32910 % unperturbed and 36.7705 -> 36.7612 % at 45 degrees, INR-QSM's XSIM
    0.38067 -> 0.38055.
    """

    def __init__(self, shape: Sequence[int], voxel_size_mm: Sequence[float], b0_dir: Sequence[float], *,
                 d0: float, pad_factor: float, device: torch.device | str = "cpu"):
        self.shape = tuple(int(n) for n in shape)
        self.pshape = padded_shape(self.shape, pad_factor)
        kernel = dipole_kernel(self.pshape, voxel_size_mm, b0_dir, d0=d0, rfft=True, dtype=np.float32)
        self.kernel = torch.from_numpy(kernel).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _SymmetricOperator.apply(x, self)
        return self.apply_plain(x)

    def apply_plain(self, x: torch.Tensor) -> torch.Tensor:
        """The operator through torch's FFTs, for autograd to differentiate as it would."""
        dims = (-3, -2, -1)
        spec = torch.fft.rfftn(x.float(), s=self.pshape, dim=dims)
        # real kernel times complex spectrum without promoting the kernel to a complex copy
        spec = torch.view_as_complex(torch.view_as_real(spec) * self.kernel.unsqueeze(-1))
        y = torch.fft.irfftn(spec, s=self.pshape, dim=dims)
        return y[..., : self.shape[0], : self.shape[1], : self.shape[2]]


class _SymmetricOperator(torch.autograd.Function):
    """A :class:`DipoleOperator` whose backward is the operator again (it is its own adjoint)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, op: DipoleOperator) -> torch.Tensor:
        ctx.op, ctx.dtype = op, x.dtype
        with torch.no_grad():
            return op.apply_plain(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        return ctx.op.apply_plain(grad).to(ctx.dtype), None


def forward_diff(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Forward difference per voxel along spatial ``axis`` (0, 1, 2) of the last three axes."""
    return torch.diff(x, dim=x.ndim - 3 + axis)


def pair_masks(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis, True where both voxels of a forward difference are in the mask."""
    out = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out.append(mask[tuple(lo)] & mask[tuple(hi)])
    return out


def edge_weights(chi0: np.ndarray, mask: np.ndarray, *, low_percentile: float = 50.0,
                 high_percentile: float = 70.0, pooled: bool = True) -> list[np.ndarray]:
    """Edge weights WG_j (one array per axis, shape of the forward difference along j).

    ``|grad_j chi0|`` is ramped over the mask: weight 1 at or below the ``low_percentile``, 0 at or
    above the ``high_percentile``, linear in between; zero where the difference leaves the mask.
    ``pooled`` (default, as the authors' preprocessing): one pair of percentiles of the
    gradient magnitudes of all three directions together; otherwise a pair per axis.
    """
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ConfigError(f"edge percentiles must satisfy 0 <= low < high <= 100, got "
                          f"{low_percentile}, {high_percentile}")
    chi0 = np.asarray(chi0, dtype=np.float64)
    pairs = pair_masks(mask)
    grads = [np.abs(np.diff(chi0, axis=axis)) for axis in range(3)]
    if pooled:
        vals = np.concatenate([g[pair] for g, pair in zip(grads, pairs)])
        thresholds = [np.percentile(vals, [low_percentile, high_percentile]) if vals.size else None] * 3
    else:
        thresholds = [np.percentile(g[pair], [low_percentile, high_percentile]) if pair.any() else None
                      for g, pair in zip(grads, pairs)]
    weights = []
    for g, pair, th in zip(grads, pairs, thresholds):
        if th is None:
            weights.append(np.zeros(g.shape, np.float32))
            continue
        lo, hi = th
        if hi > lo:
            w = np.clip((hi - g) / (hi - lo), 0.0, 1.0)
        else:
            w = (g <= lo).astype(np.float64)
        weights.append((w * pair).astype(np.float32))
    return weights


def field_noise_ppm(field: np.ndarray, mask: np.ndarray, *, erode: int = 2) -> float:
    """Robust estimate of white noise in the field (ppm) from its 6-neighbour Laplacian.

    White noise of std sigma gives a Laplacian of std ``sigma * sqrt(42)``; the field itself is
    smooth except at sharp chi edges, which are sparse, so the median absolute deviation over the
    mask (eroded by ``erode`` voxels, away from its boundary) measures the noise.  A noiseless
    field reads as a small floor (about 0.1 of its RMS on the phantom).
    """
    from scipy import ndimage  # noqa: PLC0415

    f = np.asarray(field, np.float64)
    lap = -6.0 * f
    for axis in range(3):
        lap += np.roll(f, 1, axis) + np.roll(f, -1, axis)
    inner = ndimage.binary_erosion(mask, iterations=erode) if erode > 0 else np.asarray(mask, bool)
    if inner.sum() < 10:
        inner = np.asarray(mask, bool)
    v = lap[inner]
    return float(1.4826 * np.median(np.abs(v - np.median(v))) / np.sqrt(42.0))


def initial_chi(vol, method_name: str, *, seed: int, notes: list[str]) -> np.ndarray:
    """chi0 (ppm) from another registered method; falls back to TKD when it is not available."""
    from qsmbench import registry  # noqa: PLC0415 - the registry imports method files

    try:
        method = registry.get_method(method_name, seed=seed)
    except (UnknownMethodError, MethodUnavailableError) as exc:
        if method_name == "tkd":
            raise
        notes.append(f"chi0 method '{method_name}' not available ({exc}); edge weights from TKD instead")
        log.warning(notes[-1])
        method = registry.get_method("tkd", seed=seed)
    chi0 = method.reconstruct(vol)
    chi0 = chi0.detach().cpu().numpy() if hasattr(chi0, "detach") else np.asarray(chi0)
    return (chi0 * vol.mask).astype(np.float32)


def int_list(value, key: str, n: int = 3) -> list[int]:
    """A list of ``n`` positive ints from a parameter (config lists or "96,96,48")."""
    try:
        out = [int(float(v)) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"parameter '{key}' must be {n} integers, got {value!r}") from None
    if len(out) != n or any(v < 1 for v in out):
        raise ConfigError(f"parameter '{key}' must be {n} positive integers, got {value!r}")
    return out


def torch_device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but torch sees no CUDA device")
    return dev


def amp_settings(device: torch.device, enabled: bool, dtype_name: str) -> tuple[bool, torch.dtype]:
    """Mixed precision only on CUDA; ``dtype_name`` is "float16" or "bfloat16"."""
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype_name not in dtypes:
        raise ConfigError(f"amp_dtype must be one of {sorted(dtypes)}, got {dtype_name!r}")
    return bool(enabled) and device.type == "cuda", dtypes[dtype_name]
