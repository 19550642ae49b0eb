"""Data consistency of a reconstruction: how well chi explains its own input field.

Two relative residuals of a chi map (ppm) against the local field ``f`` (ppm) it was
reconstructed from, inside the brain mask ``m``:

``full``  (:func:`data_consistency_error`)
    ``|| m (D * chi - f) || / || m f ||`` with the *full* forward model: the whole chi map,
    zero-padded (``pad_factor``) before the FFT convolution with the dipole kernel ``D``
    (``D(0) = d0``), as :func:`qsmbench.physics.forward_field` simulates the field.
``patch`` (:func:`patch_data_consistency_error`)
    The same residual under the *patch model* that patch-trained methods optimise: the volume
    is tiled with overlapping boxes; inside each box ``p`` only the chi of that box is a source,
    ``r_p = m_p (D * (chi restricted to p) - f_p)`` (the box zero-padded on its own), and the
    error is ``sqrt(sum_p ||r_p||^2) / sqrt(sum_p ||m_p f_p||^2)``.  It ignores the field that chi
    outside a box induces inside it -- the non-local error that INR-QSM's phase compensation
    removes.

A map fitted to the patch model (INR-QSM without phase compensation) has a small ``patch`` and a
larger ``full`` error; compensation trades some patch-model consistency for physical (full)
consistency.  Noise in ``f`` puts a floor under both.  The tiling follows INR-QSM's
(:mod:`methods.inr_qsm.patches`): boxes of ``patch_size`` clipped to the matrix, starting every
``round(stride_fraction * size)`` voxels per axis plus one flush with the far edge; every box
holding at least one brain voxel counts (no 30 % rule: the diagnostic covers the whole brain).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .physics import forward_field


def _checked(chi, field, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chi = np.asarray(chi, dtype=np.float64)
    field = np.asarray(field, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if chi.ndim != 3 or chi.shape != field.shape or chi.shape != mask.shape:
        raise ValueError(f"chi, field and mask must be 3-D arrays of one shape, got {chi.shape}, {field.shape}, "
                         f"{mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty: no data consistency to measure")
    return chi, field, mask


def data_consistency_error(chi_ppm, field_ppm, mask, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                           b0_dir: Sequence[float] = (0.0, 0.0, 1.0), *, d0: float = 0.0,
                           pad_factor: float = 2.0) -> float:
    """``||m (D * chi - f)|| / ||m f||`` with the full, zero-padded forward model (a ratio, not %)."""
    chi, field, mask = _checked(chi_ppm, field_ppm, mask)
    model = forward_field(chi, voxel_size_mm, b0_dir, d0=d0, pad_factor=pad_factor)
    den = float(np.linalg.norm(field[mask]))
    if den == 0:
        raise ValueError("the field is zero inside the mask: the relative error is undefined")
    return float(np.linalg.norm((model - field)[mask]) / den)


def patch_boxes(shape: Sequence[int], patch_size: Sequence[int], stride_fraction: float = 1.0 / 3.0
                ) -> list[tuple[slice, slice, slice]]:
    """The tiling of :func:`patch_data_consistency_error` (every box, brain or not)."""
    if len(shape) != 3 or len(patch_size) != 3:
        raise ValueError(f"shape and patch_size must have three entries, got {shape!r}, {patch_size!r}")
    if not 0 < stride_fraction <= 1:
        raise ValueError(f"stride_fraction must be in (0, 1], got {stride_fraction}")
    starts = []
    sizes = [max(1, min(int(p), int(n))) for p, n in zip(patch_size, shape, strict=True)]
    for n, size in zip(shape, sizes, strict=True):
        stride = max(1, int(round(size * stride_fraction)))
        s = list(range(0, int(n) - size + 1, stride))
        if s[-1] != int(n) - size:
            s.append(int(n) - size)
        starts.append(s)
    return [(slice(i, i + sizes[0]), slice(j, j + sizes[1]), slice(k, k + sizes[2]))
            for i in starts[0] for j in starts[1] for k in starts[2]]


def patch_data_consistency_error(chi_ppm, field_ppm, mask, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                                 b0_dir: Sequence[float] = (0.0, 0.0, 1.0), *,
                                 patch_size: Sequence[int] = (96, 96, 48), stride_fraction: float = 1.0 / 3.0,
                                 d0: float = 0.0, pad_factor: float = 2.0) -> float:
    """The relative residual under the patch model (see the module docstring; a ratio, not %)."""
    chi, field, mask = _checked(chi_ppm, field_ppm, mask)
    num = den = 0.0
    for box in patch_boxes(chi.shape, patch_size, stride_fraction):
        m = mask[box]
        if not m.any():
            continue
        model = forward_field(chi[box] * 1.0, voxel_size_mm, b0_dir, d0=d0, pad_factor=pad_factor)
        f = field[box]
        num += float(np.sum((model - f)[m] ** 2))
        den += float(np.sum(f[m] ** 2))
    if den == 0:
        raise ValueError("the field is zero inside the mask: the relative error is undefined")
    return float(np.sqrt(num / den))


__all__ = ["data_consistency_error", "patch_boxes", "patch_data_consistency_error"]
