"""Finite-difference gradient operators with exact adjoints (shared by the iterative methods).

``grad`` returns forward differences along the three array axes, scaled by the voxel size (so a
gradient is in units per mm), stacked on a new first axis.  Boundary conditions:

* ``"neumann"`` (default): the difference across the last sample of each axis is zero, as in
  MEDI's ``fgrad`` -- no wrap-around.
* ``"periodic"``: circular differences (diagonal in k-space, see
  :func:`qsmbench.physics.difference_kernel_sq`).

``grad_adjoint`` is the exact adjoint of ``grad`` for the same arguments
(``<grad x, g> == <x, grad_adjoint g>``); the divergence is its negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOUNDARIES = ("neumann", "periodic")


def _check(bc: str) -> None:
    if bc not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {bc!r}")


def grad(x: np.ndarray, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0), *, bc: str = "neumann") -> np.ndarray:
    """Forward differences ``(x[i+1] - x[i]) / h`` along each axis; shape ``(3, *x.shape)``."""
    _check(bc)
    x = np.asarray(x)
    out = np.zeros((3, *x.shape), dtype=np.result_type(x.dtype, np.float32))
    for axis in range(3):
        h = float(voxel_size_mm[axis])
        if bc == "periodic":
            out[axis] = (np.roll(x, -1, axis=axis) - x) / h
        else:
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis] = slice(0, -1)
            hi[axis] = slice(1, None)
            target = out[axis]
            target[tuple(lo)] = (x[tuple(hi)] - x[tuple(lo)]) / h
    return out


def grad_adjoint(g: np.ndarray, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0), *,
                 bc: str = "neumann") -> np.ndarray:
    """Exact adjoint of :func:`grad` (equals minus the backward-difference divergence)."""
    _check(bc)
    g = np.asarray(g)
    if g.ndim != 4 or g.shape[0] != 3:
        raise ValueError(f"expected a gradient of shape (3, X, Y, Z), got {g.shape}")
    out = np.zeros(g.shape[1:], dtype=g.dtype)
    for axis in range(3):
        h = float(voxel_size_mm[axis])
        ga = g[axis]
        if bc == "periodic":
            out += (np.roll(ga, 1, axis=axis) - ga) / h
        else:
            # adjoint of D with D x[i] = x[i+1] - x[i] for i < n-1 and 0 at i = n-1:
            # (D^T g)[i] = g[i-1] - g[i] (g[-1] := 0, g[n-1] ignored)
            n = ga.shape[axis]
            lo = [slice(None)] * 3
            lo[axis] = slice(0, n - 1)
            hi = [slice(None)] * 3
            hi[axis] = slice(1, n)
            gl = ga[tuple(lo)]
            contrib = np.zeros_like(ga)
            contrib[tuple(lo)] -= gl
            contrib[tuple(hi)] += gl
            out += contrib / h
    return out


def divergence(g: np.ndarray, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0), *, bc: str = "neumann") -> np.ndarray:
    """Backward-difference divergence, ``-grad_adjoint``."""
    return -grad_adjoint(g, voxel_size_mm, bc=bc)
