"""MEDI: morphology enabled dipole inversion, with the semantics of Cornell's ``MEDI_L1``.

Reimplemented from the papers (Liu T et al. 2011, Liu J et al. 2012, Liu T et al. 2013) and
the published description of the toolbox's behaviour; no toolbox code is used.  The solver is
written out as functions (:func:`medi_l1`, :func:`edge_mask`, :func:`medi_cost`, ...) so that
tests can check each piece; :class:`MEDI` is the plugin that converts units and calls them.

Everything is computed in radians, in float32, with real-to-complex FFTs counted by
:mod:`qsmbench.physics`.  Notation: ``rdf`` = local field in radians at the echo time,
``x`` = susceptibility in radians (``chi_ppm = rad_to_ppm(x)``), ``W`` = data weight,
``wG`` = binary edge weight, ``D`` = dipole kernel with ``D(0) = 0`` (as the toolbox).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qsmbench import operators, physics
from qsmbench.backend import Backend
from qsmbench.backend import for_method as backend_for
from qsmbench.errors import ConfigError, InputError
from qsmbench.method import Method
from qsmbench.tuning import LogRange

#: Data-term weightings: the toolbox's ``data_weighting`` modes 0 (uniform) and 1 (1 / noise std).
DATA_WEIGHTINGS = ("uniform", "magnitude")

# --------------------------------------------------------------------------- edge mask


@dataclasses.dataclass
class EdgeMask:
    """The binary gradient weight and how its threshold was found.

    Attributes
    ----------
    wg : float array ``(3, X, Y, Z)``: 1 where the magnitude gradient component is at most
        ``tau`` (regularised), 0 on edges (not regularised).
    tau : the threshold, in magnitude units per mm.
    tau0 : the toolbox's starting threshold, ``0.01 * max(magnitude)``.
    steps : number of x1.05 (positive) or x0.95 (negative) steps from ``tau0``.
    n_edges : number of edge components (``> tau``), summed over the three axes.
    n_mask : number of mask voxels; ``n_edges / n_mask`` is close to ``percentage``.
    """

    wg: np.ndarray
    tau: float
    tau0: float
    steps: int
    n_edges: int
    n_mask: int

    @property
    def edge_fraction(self) -> float:
        return self.n_edges / self.n_mask


def edge_mask(magnitude: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float],
              percentage: float = 0.9) -> EdgeMask:
    """MEDI's binary edge mask from the magnitude (the toolbox's ``percentage`` rule).

    How the rule is read (and implemented exactly, without a per-step loop over the volume):

    1. ``g = |grad(mask * magnitude)|`` per component: Neumann forward differences divided by
       the voxel size (:func:`qsmbench.operators.grad`), ``3 * X * Y * Z`` numbers.
    2. Start at ``tau0 = 0.01 * max(magnitude)`` -- the maximum of the magnitude image itself
       (the toolbox's ``0.01*max(iMag(:))``), not of its gradient.  The start only fixes the
       grid of candidate thresholds ``tau0 * 1.05**k`` / ``tau0 * 0.95**k``.
    3. If more than ``percentage * n_mask`` components exceed ``tau0``, multiply ``tau`` by 1.05
       until at most that many exceed it; otherwise multiply by 0.95 while fewer exceed it.
       So the number of edges equals ``percentage`` times the number of *mask voxels* (not of
       gradient components) to within one 5 % step of ``tau``.
    4. ``wG = (g <= tau)``: edges are not regularised.

    If even ``tau = 0`` leaves fewer than ``percentage * n_mask`` non-zero components (e.g. a
    constant magnitude), the toolbox would loop forever; here ``tau = 0`` (every non-zero
    gradient component is an edge).
    """
    mask = np.asarray(mask, dtype=bool)
    mag = np.asarray(magnitude, dtype=np.float32)
    if not 0 < percentage < 3:
        raise ConfigError(f"medi: percentage must be in (0, 3) (edges per mask voxel), got {percentage}")
    g = np.abs(operators.grad(mag * mask, voxel_size_mm))
    n_mask = int(np.count_nonzero(mask))
    target = percentage * n_mask
    tau0 = 0.01 * float(np.max(mag))
    flat = g.reshape(-1)

    def count(t: float) -> int:
        return int(np.count_nonzero(flat > t))

    def tau_at(k: int) -> float:
        return tau0 * (1.05 ** k if k >= 0 else 0.95 ** (-k))

    if tau0 > 0 and count(tau0) > target:
        # the toolbox's loop ends on the smallest k >= 1 with count(tau0 * 1.05**k) <= target:
        # jump near it from a quantile estimate, then settle it with exact counts
        threshold = _upper_quantile(flat, math.floor(target) + 1)
        k = max(1, math.ceil(math.log(threshold / tau0) / math.log(1.05))) if threshold > tau0 else 1
        while k > 1 and count(tau_at(k - 1)) <= target:
            k -= 1
        while count(tau_at(k)) > target:
            k += 1
        steps, tau = k, tau_at(k)
    elif tau0 > 0 and count(0.0) >= target:
        # ... here on the smallest j >= 0 with count(tau0 * 0.95**j) >= target
        threshold = _upper_quantile(flat, math.ceil(target))
        j = max(0, math.floor(math.log(threshold / tau0) / math.log(0.95)) - 1) if threshold > 0 else 0
        while j > 0 and count(tau_at(-(j - 1))) >= target:
            j -= 1
        while count(tau_at(-j)) < target:
            j += 1
        steps, tau = -j, tau_at(-j)
    else:
        steps, tau = 0, 0.0
    wg = (g <= tau).astype(np.float32)
    return EdgeMask(wg=wg, tau=float(tau), tau0=tau0, steps=steps, n_edges=count(tau), n_mask=n_mask)


def _upper_quantile(values: np.ndarray, k: int) -> float:
    """About the ``k``-th largest of ``values`` (from a strided subsample of its non-zero part).

    Only a starting guess: :func:`edge_mask` corrects it with exact counts.
    """
    nz = values[values > 0]
    if k > nz.size:
        return 0.0
    step = max(1, nz.size // 400_000)
    sub = nz[::step]
    j = min(sub.size - 1, max(0, int(round(k / step)) - 1))
    return float(np.partition(sub, sub.size - 1 - j)[sub.size - 1 - j])


# --------------------------------------------------------------------------- kernels
def smv_kernel(shape: Sequence[int], voxel_size_mm: Sequence[float], radius_mm: float, *,
               subsamples: int = 5) -> np.ndarray:
    """Half spectrum (rfft layout) of the normalised sphere of radius ``radius_mm``.

    The sphere is centred at voxel 0 (wrapped), with partial-volume weights from
    ``subsamples**3`` points per voxel, and sums to 1.  ``1 - smv_kernel`` is the SMV
    high-pass (``f - SMV(f)``) that MEDI's ``smv`` option applies to field and kernel.
    """
    vs = np.asarray(voxel_size_mm, dtype=float)
    reach = [int(math.ceil(radius_mm / v)) + 1 for v in vs]
    if any(2 * r + 1 > n for r, n in zip(reach, shape)):
        raise InputError(f"SMV radius {radius_mm} mm does not fit in a grid of shape {tuple(shape)}")
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    axes = [np.arange(-r, r + 1)[:, None] + offsets[None, :] for r in reach]   # (voxels, subsamples)
    d2 = [(a * v) ** 2 for a, v in zip(axes, vs)]
    inside = (d2[0][:, None, None, :, None, None] + d2[1][None, :, None, None, :, None]
              + d2[2][None, None, :, None, None, :]) <= radius_mm ** 2
    weights = inside.mean(axis=(3, 4, 5))
    sphere = np.zeros(tuple(int(n) for n in shape), dtype=np.float64)
    idx = np.ix_(*[np.arange(-r, r + 1) % n for r, n in zip(reach, shape)])
    sphere[idx] = weights / weights.sum()
    return physics.rfftn(sphere).real.astype(np.float32)


def dipole_conv(x, kernel, backend=None):
    """``F^-1[K F(x)]`` with counted real-to-complex FFTs (``kernel``: a real half spectrum).

    numpy in, numpy out unless ``backend`` is given; then ``x`` is the backend's array and
    ``kernel`` must come from ``backend.prepare_kernel``."""
    if backend is None:
        x = np.asarray(x)
        spec = physics.rfftn(x)
        spec *= kernel
        return physics.irfftn(spec, s=x.shape).astype(x.dtype, copy=False)
    return operators.fft_filter(x, kernel, backend)


def weighted_laplacian(x: np.ndarray, weights: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """``grad^T (weights * grad x)`` with Neumann forward differences (``weights``: ``(3, *x.shape)``).

    Equal to ``operators.grad_adjoint(weights * operators.grad(x, vs), vs)`` (tested); computed
    by :func:`qsmbench.operators.weighted_laplacian` after :func:`laplacian_weights`.
    """
    x = np.ascontiguousarray(x)
    return operators.weighted_laplacian(x, laplacian_weights(weights, voxel_size_mm), np.empty_like(x))


def laplacian_weights(weights, voxel_size_mm: Sequence[float], backend=None):
    """``weights[j] / h_j^2`` with the last sample along axis ``j`` set to zero (a new array):
    :func:`qsmbench.operators.prepare_laplacian_weights`."""
    return operators.prepare_laplacian_weights(weights, voxel_size_mm, backend)


# --------------------------------------------------------------------------- the problem
@dataclasses.dataclass
class MEDIProblem:
    """One MEDI cost function, on the (possibly padded) working grid.

    ``E(x) = lam * sum W^2 |exp(i D*x) - exp(i rdf)|^2 + sum |wG grad x|
    + lam_csf/2 * ||L x||^2`` with ``L x = M_csf (x - mean_csf(x))`` (MEDI+0; the toolbox's
    Hessian term ``lam_csf * L^T L`` corresponds to this halved quadratic).
    ``|exp(ia) - exp(ib)|^2 = 4 sin^2((a - b)/2)`` keeps everything real.

    Arrays are numpy arrays, or the arrays of ``backend`` (:mod:`qsmbench.backend`, e.g. torch
    tensors on a GPU) -- ``kernel`` stays a numpy half spectrum and is prepared for the backend
    once.  The MEDI+0 term (``csf_mask``) is numpy only.
    """

    rdf: Any                     # field in radians (after SMV when that is on)
    w2: Any                      # W^2, the squared data weight
    wg: Any                      # (3, ...) binary edge weight
    kernel: np.ndarray           # half-spectrum dipole kernel (times the SMV high-pass), numpy
    voxel_size_mm: tuple[float, float, float]
    lam: float = 1000.0
    eps: float = 1e-6
    csf_mask: np.ndarray | None = None
    lam_csf: float = 100.0
    backend: Backend | None = None

    def __post_init__(self):
        self.be = self.backend if self.backend is not None else operators.get_backend("cpu")
        self.dtype = np.float64 if operators._np_dtype(self.rdf) == np.float64 else np.float32  # noqa: SLF001
        self._k = self.be.prepare_kernel(self.kernel, self.dtype)

    def dconv(self, x):
        return operators.fft_filter(x, self._k, self.be)

    def csf_projection(self, x: np.ndarray) -> np.ndarray:
        """``L x = M_csf (x - mean of x in M_csf)`` (self-adjoint and idempotent)."""
        c = self.csf_mask
        return np.where(c, x - x[c].mean(dtype=np.float64), 0).astype(x.dtype, copy=False)

    def _grad(self, x, out=None):
        return operators.grad(x, self.voxel_size_mm, out=out, backend=self.be)

    def cost(self, x, dx_conv=None) -> dict[str, float]:
        """Cost terms at ``x`` (``dx_conv = D*x`` when already known)."""
        be = self.be
        dxc = self.dconv(x) if dx_conv is None else dx_conv
        s = be.subtract(dxc, self.rdf)
        be.multiply(s, be.scalar(0.5, s), out=s)
        be.sin(s, out=s)
        be.multiply(s, s, out=s)
        data = float(self.lam * 4.0 * be.dot(self.w2, s))
        g = self._grad(x)
        be.multiply(g, self.wg, out=g)
        reg = be.sum(be.abs(g, out=g))
        csf = 0.0
        if self.csf_mask is not None and self.lam_csf:
            lx = self.csf_projection(x)
            csf = float(0.5 * self.lam_csf * np.sum(lx * lx, dtype=np.float64))
        return {"data": data, "reg": reg, "csf": csf, "total": data + reg + csf}

    def smoothed_cost(self, x) -> float:
        """The cost with ``|t| -> sqrt(t^2 + eps)`` (what one lagged-diffusivity step sees)."""
        be = self.be
        c = self.cost(x)
        g = self._grad(x)
        be.multiply(g, self.wg, out=g)
        be.multiply(g, g, out=g)
        be.add(g, be.scalar(self.eps, g), out=g)
        return c["total"] - c["reg"] + be.sum(be.sqrt(g, out=g))

    def reg_weights(self, x):
        """Lagged diffusivity: ``wG^2 / sqrt(|wG grad x|^2 + eps)`` per component."""
        be = self.be
        g = self._grad(x)
        be.multiply(g, self.wg, out=g)
        be.multiply(g, g, out=g)
        be.add(g, be.scalar(self.eps, g), out=g)
        be.sqrt(g, out=g)
        return be.divide(self.wg, g, out=g)   # wG is binary, so wG^2 = wG

    def gradient(self, x, dx_conv, weights):
        """Gradient of the smoothed cost at ``x``: ``grad^T(R grad x) + lam_csf L x +
        2 lam D^T(W^2 sin(D*x - rdf))`` (``R`` = :meth:`reg_weights` at ``x``)."""
        be = self.be
        t = be.subtract(dx_conv, self.rdf)
        be.sin(t, out=t)
        be.multiply(t, self.w2, out=t)
        out = self.dconv(t)
        be.multiply(out, be.scalar(2.0 * self.lam, out), out=out)
        operators.weighted_laplacian(x, laplacian_weights(weights, self.voxel_size_mm, be), out, t,
                                     accumulate=True, backend=be)
        if self.csf_mask is not None and self.lam_csf:
            out += np.asarray(self.lam_csf, dtype=out.dtype) * self.csf_projection(x)
        return out

    def hessian_operator(self, weights) -> Callable:
        """Gauss-Newton Hessian with lagged weights: ``grad^T R grad + 2 lam D W^2 D (+ lam_csf L)``.

        Symmetric positive semi-definite (``D`` is real and even, the Laplacian uses the exact
        adjoint), so CG applies.  Per application: four FFTs (two pairs), the product by
        ``2 lam W^2`` and the weighted Laplacian accumulated into the result.
        """
        be = self.be
        # fold constants into the weights once per Gauss-Newton step, not once per CG iteration
        w2 = be.multiply(self.w2, be.scalar(2.0 * self.lam, self.w2))
        prepared = laplacian_weights(weights, self.voxel_size_mm, be)
        buf = be.empty_like(self.rdf)

        def apply(v):
            t = self.dconv(v)
            be.multiply_inplace(t, w2)
            out = self.dconv(t)
            operators.weighted_laplacian(v, prepared, out, buf, accumulate=True, backend=be)
            if self.csf_mask is not None and self.lam_csf:
                out += np.asarray(self.lam_csf, dtype=out.dtype) * self.csf_projection(v)
            return out

        return apply


def conjugate_gradient(apply_a: Callable, b, *, tol: float, max_iter: int, replace_every: int = 50,
                       return_best: bool = False, backend: Backend | None = None) -> tuple[Any, float, int]:
    """Plain CG from zero for ``A x = b``; stops when ``||r|| <= tol ||b||`` or after ``max_iter``.

    Returns the last iterate (``return_best=False``, as the toolbox's ``cgsolve``, which tracks
    the best iterate but returns the last one) or the iterate with the smallest relative residual
    seen; then the smallest relative residual seen (what ``cgsolve`` reports) and the number of
    iterations.  The recursive residual is replaced by ``b - A x`` every ``replace_every``
    iterations (as the toolbox's CG does).  ``backend``: the arrays' backend (default numpy;
    plain numpy vectors of any shape are accepted, e.g. in tests).
    """
    be = backend if backend is not None else operators.get_backend("cpu")
    if backend is None:
        b = np.ascontiguousarray(b)
    x = be.zeros_like(b)
    r = be.copy(b)
    d = be.copy(b)
    delta0 = be.dot(b, b)
    if delta0 == 0.0:
        return x, 0.0, 0
    delta = delta0
    best = be.copy(x) if return_best else None
    best_res = 1.0
    n = 0
    while n < max_iter and delta > tol * tol * delta0:
        q = apply_a(d)
        dq = be.dot(d, q)
        if not dq > 0:
            break  # direction of (numerically) zero curvature: nothing more to gain
        alpha = delta / dq
        delta_old = delta
        if (n + 1) % replace_every == 0:
            be.axpy(alpha, d, x)
            be.subtract(b, apply_a(x), out=r)
            delta = be.dot(r, r)
        else:
            delta = be.cg_step(alpha, d, q, x, r)   # x += alpha d, r -= alpha q, ||r||^2
        be.xpby(r, delta / delta_old, d)            # d = r + (delta / delta_old) d
        n += 1
        res = math.sqrt(delta / delta0)
        if res < best_res:
            best_res = res
            if return_best:
                best[...] = x
    return (best if return_best else x), best_res, n


# --------------------------------------------------------------------------- the solver
@dataclasses.dataclass
class MEDIResult:
    """What :func:`medi_l1` returns.

    x_rad : susceptibility in radians on the input grid, multiplied by ``mask_out``.
    mask_out : the mask of the result (the input mask, or its SMV erosion).
    history : one dict per Gauss-Newton iteration (``iteration``, ``norm_ratio`` = ||dx||/||x||
        before the update, ``cg_iterations``, ``cg_residual``, ``data``, ``reg``, ``csf``,
        ``total`` = the cost after the update, ``merit_voxels``); ``initial_cost`` is the cost at 0.
    edges : the :class:`EdgeMask`, or None without magnitude weighting.
    weight : the data weight W on the input grid (after MERIT's last update), mean 1 in the mask.
    x_work : the solution on the (padded) working grid, not masked (a warm start for ``x0``).
    residual : ``||W (exp(i D*x) - exp(i RDF))||^2`` at the result (the data term without ``lam``).
    """

    x_rad: np.ndarray
    mask_out: np.ndarray
    history: list[dict]
    initial_cost: dict[str, float]
    edges: EdgeMask | None
    converged: bool
    weight: np.ndarray | None = None
    x_work: np.ndarray | None = None
    residual: float | None = None


def magnitude_noise_std(magnitude: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Relative noise standard deviation of the field from the magnitude: ``1 / |magnitude|`` in
    the mask, 0 outside.

    For complex Gaussian noise of standard deviation sigma, the phase of a voxel of magnitude
    ``|S|`` has noise ``sigma / |S|`` rad (high-SNR limit), so the field's noise std is
    proportional to ``1 / |S|`` -- what the toolbox's multi-echo fit (``Fit_ppm_complex``)
    returns as ``N_std``, up to a constant that the data weight's normalisation removes.  Voxels
    of zero magnitude get 0 here, which :func:`data_weight` turns into weight 0 (the toolbox
    zeroes non-finite weights).
    """
    mag = np.abs(np.asarray(magnitude, dtype=np.float64))
    m = np.asarray(mask, dtype=bool) & (mag > 0)
    out = np.zeros(mag.shape, dtype=np.float64)
    out[m] = 1.0 / mag[m]
    return out


def data_weight(noise_std: np.ndarray, mask: np.ndarray, dtype=np.float32) -> np.ndarray:
    """The toolbox's data weight (``dataterm_mask``, mode 1): ``mask / noise_std`` with non-finite
    values set to 0, normalised to mean 1 over the mask."""
    m = np.asarray(mask, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(m, 1.0 / np.asarray(noise_std, dtype=np.float64), 0.0)
    w[~np.isfinite(w)] = 0
    mean = float(w[m].mean()) if m.any() else 0.0
    if not mean > 0:
        raise InputError("MEDI data weight: the noise map gives no finite weight inside the mask")
    return (w / mean).astype(dtype)


def medi_l1(rdf_rad: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float],
            b0_dir: Sequence[float] = (0.0, 0.0, 1.0), *, magnitude: np.ndarray | None = None,
            lam: float = 1000.0, percentage: float = 0.9, edge_weighting: bool = True,
            data_weighting: str = "magnitude", noise_std: np.ndarray | None = None,
            eps: float = 1e-6, max_iter: int = 10, tol_norm_ratio: float = 0.1,
            cg_max_iter: int = 100, cg_tol: float = 0.01, cg_return: str = "last", smv: bool = False,
            smv_radius_mm: float = 5.0, merit: bool = False, merit_sigma: float = 6.0,
            csf_mask: np.ndarray | None = None, lam_csf: float = 100.0, pad_factor: float = 1.0,
            d0: float = 0.0, dtype=np.float32, backend: Backend | None = None,
            x0: np.ndarray | None = None) -> MEDIResult:
    """MEDI (``MEDI_L1`` semantics) on a field in radians; see :class:`MEDI` for the parameters.

    ``backend`` (:mod:`qsmbench.backend`; default numpy) runs the Gauss-Newton/CG loop, e.g. on
    torch tensors on a GPU; the edge mask, the data weight, SMV and MERIT are computed with numpy.

    ``magnitude=None`` or ``edge_weighting=False`` gives plain anisotropic TV (``wG = 1``).
    Data weight ``W = mask / N_std`` normalised to mean 1 in the mask (:func:`data_weight`):
    ``data_weighting="magnitude"`` (the toolbox's default mode 1) takes ``N_std = noise_std`` when
    given, else :func:`magnitude_noise_std` of ``magnitude``; ``"uniform"`` (mode 0), or no
    magnitude and no noise map, gives ``W = mask``.  MERIT then adapts ``N_std`` (a unit map when
    uniform).  ``x0`` (a previous result's ``x_work``) warm-starts Gauss-Newton instead of 0.
    """
    if data_weighting not in DATA_WEIGHTINGS:
        raise ConfigError(f"medi: data_weighting must be one of {', '.join(DATA_WEIGHTINGS)}, got {data_weighting!r}")
    if cg_return not in ("last", "best"):
        raise ConfigError(f"medi: cg_return must be 'last' or 'best', got {cg_return!r}")
    dtype = np.dtype(dtype).type
    shape = tuple(np.shape(rdf_rad))
    vs = tuple(float(v) for v in voxel_size_mm)
    pshape = physics.padded_shape(shape, pad_factor)

    def pad(a, kind):
        out = np.zeros(pshape, dtype=kind)
        out[: shape[0], : shape[1], : shape[2]] = a
        return out

    rdf = pad(rdf_rad, dtype)
    m = pad(mask, bool)
    kernel = physics.dipole_kernel(pshape, vs, b0_dir, d0=d0, rfft=True, dtype=dtype)
    weighted = data_weighting == "magnitude" and (noise_std is not None or magnitude is not None)
    if not weighted:
        n_std = m.astype(dtype)         # mode 0 / unknown noise: unit standard deviation in the mask
    elif noise_std is not None:
        n_std = pad(noise_std, dtype) * m
    else:
        n_std = pad(magnitude_noise_std(magnitude, mask), dtype)
    if smv:
        # as the toolbox: the noise map is masked by the *input* mask (above), then smoothed;
        # the mask is eroded and the weight is taken on the eroded mask
        sphere = smv_kernel(pshape, vs, smv_radius_mm)
        m = dipole_conv(m.astype(dtype), sphere) > 0.999
        if not m.any():
            raise InputError(f"the SMV erosion (radius {smv_radius_mm} mm) leaves an empty mask")
        high_pass = (1.0 - sphere).astype(dtype)
        kernel *= high_pass
        rdf = dipole_conv(rdf, high_pass) * m

    def weight_of(noise):
        tempn = noise
        if smv:
            tempn = np.sqrt(np.maximum(dipole_conv(noise * noise, sphere), 0) + noise * noise)
        return data_weight(tempn, m, dtype)

    edges = None
    if magnitude is not None and edge_weighting:
        edges = edge_mask(pad(magnitude, dtype), m, vs, percentage)
        wg = edges.wg
    else:
        wg = np.ones((3, *pshape), dtype=dtype)
    w = weight_of(n_std)
    csf = None if csf_mask is None else pad(csf_mask, bool) & m
    if csf is not None and not csf.any():
        csf = None
    be = backend if backend is not None else operators.get_backend("cpu")
    if csf is not None and not isinstance(be, operators.NumpyBackend):
        raise ConfigError("medi: the MEDI+0 (CSF) term runs with the numpy backend only")
    prob = MEDIProblem(rdf=be.asarray(rdf), w2=be.asarray(w * w), wg=be.asarray(wg, dtype), kernel=kernel,
                       voxel_size_mm=vs, lam=float(lam), eps=float(eps), csf_mask=csf, lam_csf=float(lam_csf),
                       backend=be)

    if x0 is None:
        x = be.zeros(pshape, dtype)
        dxc = be.zeros(pshape, dtype)
    else:   # warm start (the discrepancy search): a previous result's working-grid solution
        x0 = np.asarray(x0, dtype=dtype)
        if x0.shape != pshape:
            raise InputError(f"medi: warm start x0 has shape {x0.shape}, the working grid is {pshape}")
        x = be.asarray(np.array(x0, copy=True))
        dxc = prob.dconv(x)
    initial = prob.cost(x, dxc)
    history: list[dict] = []
    converged = False
    for it in range(1, int(max_iter) + 1):
        weights = prob.reg_weights(x)
        b = prob.gradient(x, dxc, weights)
        be.negative(b, out=b)
        dx, cg_res, cg_n = conjugate_gradient(prob.hessian_operator(weights), b, tol=cg_tol,
                                              max_iter=int(cg_max_iter), return_best=cg_return == "best",
                                              backend=be)
        del b, weights
        norm_x = be.norm(x)
        ratio = be.norm(dx) / norm_x if norm_x > 0 else math.inf
        be.add_inplace(x, dx)
        del dx
        dxc = prob.dconv(x)
        entry = {"iteration": it, "norm_ratio": ratio, "cg_iterations": cg_n, "cg_residual": cg_res,
                 **prob.cost(x, dxc), "merit_voxels": 0}
        if merit:
            # complex weighted residual, demeaned in the mask; voxels beyond merit_sigma * std(|r|)
            # get their noise std multiplied by (|r| / (merit_sigma std))^2 (on the CPU, numpy)
            dxc_np = be.to_numpy(dxc)
            wres = w * (np.exp(1j * dxc_np) - np.exp(1j * rdf))
            wres = wres - wres[m].mean()
            mag_res = np.abs(wres).astype(dtype)
            factor = merit_sigma * float(np.std(mag_res[m], ddof=1))
            if factor > 0:
                scale = np.maximum(mag_res / dtype(factor), dtype(1))
                entry["merit_voxels"] = int(np.count_nonzero((scale > 1) & m))
                n_std = np.where(m, n_std * scale * scale, n_std).astype(dtype)
                w = weight_of(n_std)
                prob.w2 = be.asarray(w * w)
        history.append(entry)
        if ratio < tol_norm_ratio:
            converged = True
            break
    mask_out = m[: shape[0], : shape[1], : shape[2]]
    x_out = be.to_numpy(x)[: shape[0], : shape[1], : shape[2]] * mask_out
    return MEDIResult(x_rad=np.ascontiguousarray(x_out), mask_out=mask_out, history=history,
                      initial_cost=initial, edges=edges, converged=converged,
                      weight=np.ascontiguousarray(w[: shape[0], : shape[1], : shape[2]]),
                      x_work=be.to_numpy(x), residual=float(prob.cost(x, dxc)["data"] / prob.lam))


def medi_cost(x_rad: np.ndarray, rdf_rad: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float],
              b0_dir: Sequence[float] = (0.0, 0.0, 1.0), *, magnitude: np.ndarray | None = None,
              lam: float = 1000.0, percentage: float = 0.9, edge_weighting: bool = True,
              data_weighting: str = "magnitude", d0: float = 0.0) -> dict[str, float]:
    """The MEDI cost (no SMV, no MERIT, no CSF term, no padding) of ``x_rad`` for a field in radians."""
    vs = tuple(float(v) for v in voxel_size_mm)
    m = np.asarray(mask, dtype=bool)
    dtype = np.float64 if np.asarray(x_rad).dtype == np.float64 else np.float32
    wg = (edge_mask(magnitude, m, vs, percentage).wg if magnitude is not None and edge_weighting
          else np.ones((3, *m.shape), dtype=dtype))
    if data_weighting == "magnitude" and magnitude is not None:
        w = data_weight(magnitude_noise_std(magnitude, m), m, dtype)
    else:
        w = m.astype(dtype)
    prob = MEDIProblem(rdf=np.asarray(rdf_rad, dtype=dtype), w2=w * w, wg=wg.astype(dtype),
                       kernel=physics.dipole_kernel(m.shape, vs, b0_dir, d0=d0, rfft=True, dtype=dtype),
                       voxel_size_mm=vs, lam=lam)
    return prob.cost(np.asarray(x_rad, dtype=dtype))


# --------------------------------------------------------------------------- lambda by the discrepancy principle
#: How MEDI's ``lam`` is set: the toolbox's fixed value, or Morozov's discrepancy principle.
LAMBDA_RULES = ("fixed", "discrepancy")


@dataclasses.dataclass
class PhaseNoise:
    """A truth-free estimate of the weighted phase noise (see :func:`estimate_phase_noise`).

    sigma_w : standard deviation (rad) of ``W_i n_i``, the phase noise ``n_i`` times the data
        weight -- one number for all voxels: with the magnitude weighting the noise std is
        ``sigma_i = sigma_w / W_i`` (``proportional to 1 / magnitude``), with the uniform one
        ``sigma_i = sigma_w``.
    n_used : voxels whose Laplacian entered the estimate (the mask eroded by one voxel).
    n_data : voxels of the data term (mask voxels with ``W > 0``).
    expected_residual : ``E ||W (exp(i n) - 1)||^2 = sum_i W_i^2 * 2 (1 - exp(-sigma_i^2 / 2))``
        over the data voxels, for Gaussian ``n_i ~ N(0, sigma_i^2)``; about ``n_data * sigma_w^2``
        when ``sigma_i << 1``.
    """

    sigma_w: float
    n_used: int
    n_data: int
    expected_residual: float


def estimate_phase_noise(rdf: np.ndarray, mask: np.ndarray, weight: np.ndarray) -> PhaseNoise:
    """Estimate the phase noise of ``rdf`` (rad) from the data alone: the robust high-pass
    residual of :func:`qsmbench.operators.robust_noise_sd` weighted by the data weight ``W``
    (:func:`data_weight`; the mask for the uniform weighting), so ``sigma_w`` is the weighted
    noise std.  The field's own voxel-scale structure leaks in: on the 2 mm MNI phantom without
    noise the estimate is about 0.03 rad, the noise of a peak SNR near 90 (``MEDI``'s
    ``discrepancy_tau`` is chosen with this estimator).
    """
    m = np.asarray(mask, dtype=bool)
    w = np.asarray(weight, dtype=np.float64)
    data = m & (w > 0)
    sigma_w, n_used = operators.robust_noise_sd(rdf, m, w)
    if n_used < 50:
        raise InputError(f"medi: the mask eroded by one voxel keeps {n_used} voxels; "
                         "at least 50 are needed to estimate the noise for lambda_rule 'discrepancy'")
    return PhaseNoise(sigma_w=sigma_w, n_used=n_used, n_data=int(np.count_nonzero(data)),
                      expected_residual=expected_residual(sigma_w, w, data))


def expected_residual(sigma_w: float, weight: np.ndarray, mask: np.ndarray) -> float:
    """``sum_i W_i^2 * 2 (1 - exp(-sigma_i^2 / 2))`` with ``sigma_i = sigma_w / W_i`` over ``mask``
    (``W > 0``): the expected ``||W (exp(i n) - 1)||^2`` for independent ``n_i ~ N(0, sigma_i^2)``
    (``E cos n = exp(-sigma^2 / 2)``), i.e. MEDI's data residual at the true susceptibility."""
    w = np.asarray(weight, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    w = w[w > 0]
    return float(np.sum(w * w * 2.0 * -np.expm1(-0.5 * (sigma_w / w) ** 2)))


@dataclasses.dataclass
class LambdaSearch:
    """What :func:`discrepancy_search` found.

    lam : the chosen lambda.  target : ``tau * expected_residual``.  trace : one dict per
    evaluation (``lam``, ``residual``, ``ratio`` = residual / target, ``gn_iterations``).
    converged : ``|ln ratio| <= ln(1 + tol)`` at ``lam`` (else the best bracket interpolation
    or a bound).  bound : "lam_min" / "lam_max" when the target lies beyond that bound.
    """

    lam: float
    target: float
    trace: list[dict]
    converged: bool
    bound: str | None = None


def discrepancy_search(evaluate: Callable[[float], float], target: float, lam_start: float, *,
                       lam_min: float, lam_max: float, tol: float = 0.1, max_evals: int = 6,
                       slope0: float = -0.75, max_step: float = math.log(30.0)) -> LambdaSearch:
    """Find ``lam`` with ``residual(lam) = target`` (Morozov), by a safeguarded secant in log-log.

    ``evaluate(lam)`` returns the data residual of the solution at ``lam``; it decreases with
    ``lam`` (more weight on the data).  ``g(t) = ln residual(e^t) - ln target`` is followed from
    ``t = ln lam_start``: a secant step from the last two points (first: slope ``slope0``, the
    typical log-log slope on phantoms), at most ``max_step`` in ``ln lam``, inside the bracket once
    the root is bracketed (bisection when the secant leaves it), within ``[lam_min, lam_max]``.
    Stops when ``|g| <= ln(1 + tol)`` or after ``max_evals`` evaluations; then takes the root of
    the bracketing secant (not evaluated), or the bound the target lies beyond.
    """
    if not target > 0:
        raise InputError(f"medi: the discrepancy target must be > 0, got {target}")
    lo_t, hi_t = math.log(lam_min), math.log(lam_max)
    tol_g = math.log1p(tol)
    pts: list[tuple[float, float]] = []   # (t, g)
    trace: list[dict] = []
    t = min(max(math.log(lam_start), lo_t), hi_t)
    while True:
        res = float(evaluate(math.exp(t)))
        g = math.log(max(res, 1e-300)) - math.log(target)
        pts.append((t, g))
        trace.append({"lam": math.exp(t), "residual": res, "ratio": math.exp(g)})
        if abs(g) <= tol_g:
            return LambdaSearch(lam=math.exp(t), target=target, trace=trace, converged=True)
        above = [p for p in pts if p[1] > 0]     # residual too large: lam too small
        below = [p for p in pts if p[1] < 0]
        a = max(above, key=lambda p: p[0]) if above else None
        b = min(below, key=lambda p: p[0]) if below else None
        bracket = a is not None and b is not None and a[0] < b[0]
        if len(pts) >= max_evals:
            break
        if bracket:
            t_new = a[0] - a[1] * (b[0] - a[0]) / (b[1] - a[1])
            if not a[0] < t_new < b[0] or abs(t_new - t) < 1e-6:
                t_new = 0.5 * (a[0] + b[0])
        else:
            if g < 0 and t <= lo_t + 1e-12:
                return LambdaSearch(lam=lam_min, target=target, trace=trace, converged=False, bound="lam_min")
            if g > 0 and t >= hi_t - 1e-12:
                return LambdaSearch(lam=lam_max, target=target, trace=trace, converged=False, bound="lam_max")
            slope = slope0
            if len(pts) >= 2:
                (t1, g1), (t2, g2) = pts[-2], pts[-1]
                if t2 != t1 and (g2 - g1) / (t2 - t1) < -0.05:
                    slope = (g2 - g1) / (t2 - t1)
            step = max(-max_step, min(max_step, -g / slope))
            t_new = min(max(t + step, lo_t), hi_t)
        t = t_new
    if bracket:
        lam = math.exp(a[0] - a[1] * (b[0] - a[0]) / (b[1] - a[1]))
    else:
        lam = math.exp(min(pts, key=lambda p: abs(p[1]))[0])
    return LambdaSearch(lam=lam, target=target, trace=trace, converged=False)


def medi_discrepancy(rdf_rad: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float],
                     b0_dir: Sequence[float] = (0.0, 0.0, 1.0), *, lam_start: float = 1000.0,
                     tau: float = 1.0, lam_min: float = 1.0, lam_max: float = 1e5, search_tol: float = 0.1,
                     search_max_evals: int = 6, search_max_iter: int = 2, **solver
                     ) -> tuple[MEDIResult, LambdaSearch, PhaseNoise]:
    """MEDI with ``lam`` from the discrepancy principle: ``||W (exp(i D*x) - exp(i RDF))||^2 =
    tau * E||W (exp(i n) - 1)||^2`` (about ``tau * N * sigma_w^2``), the noise from the data.

    1. Solve at ``lam_start`` from zero with the full settings (``solver``: the keywords of
       :func:`medi_l1`); take ``W`` and the result's mask from it and estimate the noise
       (:func:`estimate_phase_noise`; with SMV on the unfiltered field, whose noise the SMV
       high-pass barely changes).
    2. :func:`discrepancy_search` in ``ln lam``; every further evaluation is warm-started from
       the evaluated solution nearest in ``ln lam`` and runs at most ``search_max_iter``
       Gauss-Newton iterations.
    3. The full solve (``solver``'s iteration limits) at the chosen ``lam``, warm-started the
       same way -- unless the search already evaluated that ``lam`` and its Gauss-Newton stopped
       by its convergence test (then that solve *is* the full solve from its warm start), or it is
       ``lam_start``.  Returns its result, the search and the noise estimate.
    """
    solved: dict[float, MEDIResult] = {}
    state: dict[str, PhaseNoise] = {}

    def run(lam: float, max_iter: int | None) -> MEDIResult:
        warm = None
        if solved:
            nearest = min(solved, key=lambda v: abs(math.log(v / lam)))
            warm = solved[nearest].x_work
        kw = dict(solver)
        if max_iter is not None:
            kw["max_iter"] = max_iter
        return medi_l1(rdf_rad, mask, voxel_size_mm, b0_dir, lam=lam, x0=warm, **kw)

    first = run(float(lam_start), None)
    solved[float(lam_start)] = first
    noise = estimate_phase_noise(rdf_rad, first.mask_out, first.weight)
    state["noise"] = noise
    target = tau * noise.expected_residual

    def evaluated(lam: float) -> float | None:
        # the search proposes exp(ln lam): the start comes back as e.g. 999.9999999999998
        return next((v for v in solved if abs(math.log(v / lam)) < 1e-9), None)

    def evaluate(lam: float) -> float:
        key = evaluated(lam)
        if key is None:
            key = lam
            solved[key] = run(lam, search_max_iter)
        return float(solved[key].residual)

    search = discrepancy_search(evaluate, target, lam_start, lam_min=lam_min, lam_max=lam_max,
                                tol=search_tol, max_evals=search_max_evals)
    key = evaluated(search.lam)
    if key is not None and (key == float(lam_start) or solved[key].converged):
        # the start's full solve, or a search solve whose Gauss-Newton stopped by its own test: a
        # full solve from the same warm start would repeat those iterations and stop there too
        final = solved[key]
    else:
        final = run(search.lam, None)
    return final, search, noise


# --------------------------------------------------------------------------- the plugin
class MEDI(Method):
    """Morphology enabled dipole inversion, with the semantics of Cornell's ``MEDI_L1``.

    Minimises, in **radians**,

    ``lam * ||W (exp(i D*x) - exp(i RDF))||^2 + sum_voxels sum_j |wG_j grad_j x|``

    (nonlinear complex data term, anisotropic L1 of the edge-weighted gradient) by Gauss-Newton
    with lagged diffusivity, then returns ``chi_ppm = x / (2 pi gamma_bar B0 T) * 1e6``.

    * ``RDF = f_ppm * 2 pi gamma_bar B0 T * 1e-6`` (:func:`qsmbench.physics.ppm_to_rad`) with the
      volume's B0 and ``T`` the time over which the toolbox's field map accrues phase: its
      multi-echo fit (``Fit_ppm_complex``) returns the phase per **echo spacing** ``delta_TE``, so
      for multi-echo data whose manifest records ``acquisition.echo_spacing_s`` (RC2: 8 ms) ``T``
      is that spacing; otherwise (single echo) the volume's TE, or qsmbench's reference
      acquisition 3 T / 25 ms for data that states none (``te_source``).  ``lam`` acts in
      radians, so -- as in the toolbox -- the same field in ppm at a longer T or higher B0 is
      regularised relatively less.
    * ``W = mask / N_std`` normalised to mean 1 in the mask (the toolbox's ``data_weighting``
      mode 1, its default): ``N_std``, the field's noise std, is ``1 / magnitude`` -- the phase
      noise of a complex signal with Gaussian noise, which is also how qsmbench's noise
      perturbation makes it -- so ``W = magnitude / mean(magnitude in the mask)`` in the mask.
      ``data_weighting="uniform"`` (mode 0), or no magnitude, gives ``W = mask`` (noted).
    * ``wG``: binary edge mask of ``mask * magnitude`` (see :func:`edge_mask`; ``percentage``
      edge components per mask voxel).  Without a magnitude ``wG = 1`` (plain TV), noted in
      ``run.json``.
    * Dipole kernel with ``D(0) = 0`` (the toolbox's), unpadded unless ``pad_factor > 1``;
      Neumann forward differences scaled by the voxel size and their exact adjoint.
    * Gauss-Newton: at most ``max_iter`` iterations, stop when ``||dx|| / ||x|| < tol_norm_ratio``
      (``x`` before the update, so at least two iterations); each step solves the normal
      equations with CG from zero (``cg_max_iter``, relative residual ``cg_tol``) and takes its
      last iterate, as the toolbox's ``cgsolve``; lagged diffusivity
      ``1 / sqrt(|wG grad x|^2 + eps)``.
    * Convergence, as the toolbox's: the CG of a Gauss-Newton step nearly always stops at its
      100-iteration cap, not at its 1 % tolerance (on the 2 mm tune phantom 2548831 at peak SNR 20
      and ``lam`` 25, plain CG needs ~200 iterations to reach 1 %), and the result lies a few per
      cent above the minimum of its own cost: on that phantom an ADMM solve of the same cost
      (a scratch measurement, not part of qsmbench) reached a 6 % lower cost noiseless at ``lam``
      55 and 5 % lower at SNR 20 at ``lam`` 25, with NRMSE 23.6 / 39.3 % against 27.8 / 42.3 %.
      So MEDI's accuracy here, as in the toolbox, is that of its iteration budget as well as of
      its model; ``cg_max_iter`` and ``max_iter`` are that budget.
    * Symmetry: the cost is unchanged under ``(x, RDF) -> (-x, -RDF)`` (W and wG come from the
      magnitude), and every step of the solver is odd in the field, so ``chi(-f) = -chi(f)`` to
      float rounding; it is not homogeneous (``lam`` acts in radians).  The discrepancy rule keeps
      this: the noise estimate and the residuals are even in the field, so ``lam`` is the same.
    * **lambda** (``lambda_rule``).  The toolbox's ``lam = 1000`` is one number for every noise
      level: at qsmbench's peak SNR 10 it fits the noise (NRMSE above 100 %, worse than TKD).
      Choosing lambda by the discrepancy principle is attributed to de Rochefort et al. (MRM
      2010;63:194) for this family of solvers; we could not check the papers' full texts, so the
      exact criterion below is our reading of Morozov's principle.  ``"discrepancy"`` (default) picks ``lam``
      with ``||W (exp(i D*x_lam) - exp(i RDF))||^2 = discrepancy_tau * E`` (Morozov), where
      ``E = sum_i W_i^2 2 (1 - exp(-sigma_i^2 / 2))`` (about ``N sigma_w^2``) is the expected
      residual of the true susceptibility under Gaussian phase noise ``sigma_i = sigma_w / W_i``
      (``proportional to 1 / magnitude``, the same per-voxel model as the data weight), and
      ``sigma_w`` is estimated from the field alone (:func:`estimate_phase_noise`: the MAD of the
      weighted 7-point Laplacian inside the mask eroded by one voxel, calibrated so white noise of
      std sigma returns sigma).  Search: :func:`medi_discrepancy` -- a full solve at ``lam``
      (1000) from zero, then a secant in ``ln lam`` with warm starts and ``search_max_iter``
      Gauss-Newton steps per evaluation (stop when within ``search_tol``), then the full solve at
      the chosen ``lam`` (none when the search's solve there already stopped by the Gauss-Newton
      convergence test: that solve is the full solve from its warm start).  The chosen ``lam``,
      ``sigma_w``, target and final residual go to ``run.json``'s ``info``.  ``"fixed"`` is the
      toolbox's reading (``lam`` as given).
      Measured cost and accuracy: ``tests/benchmarks/bench_medi_lambda.py`` (tune seeds).

    Parameters
    ----------
    lambda_rule : "discrepancy" (default, see above) or "fixed" (the toolbox's: ``lam`` as given)
        How the data-term weight is set.
    lam : float, default 1000
        Weight of the data term (dimensionless; data in radians, gradients in rad/mm): the value
        used with ``lambda_rule="fixed"``, the search's start with ``"discrepancy"``.
    discrepancy_tau : float, default 0.5
        Morozov's factor: the residual aimed at is ``tau`` times the expected noise residual.
        0.5, not the textbook 1, for two measured reasons: the regularised solution fits part of
        the noise (for a linear estimator ``E||r||^2 = sigma^2 (N - trace(influence))``, here the
        residual at the best lambda was 0.5-0.75 of the true noise residual), and the field's own
        voxel-scale structure inflates the noise estimate (about SNR 90 equivalent at 2 mm).  On
        the tune phantom 2548832 (80x96x80, 2 mm; ``bench_medi_lambda.py``) NRMSE % for tau 1 /
        0.5 / fixed 1000 / TKD: no noise 25.0 / 19.8 / 13.6 / 55.4, SNR 40 40.7 / 29.4 / 53.8 /
        60.2, SNR 20 49.9 / 41.0 / 131.2 / 72.9, SNR 10 61.8 / 67.0 / 327.4 / 116.6 (``tuned_on``).
    lam_min, lam_max : float, default 1 and 1e5
        The search's range; when the target lies beyond a bound, that bound is used (noted).
    search_tol : float, default 0.1
        The search stops when residual / target is within ``1 +- search_tol`` (in ``ln``).
    search_max_evals : int, default 6
        Solves of the search at most (the first is a full solve at ``lam``).
    search_max_iter : int, default 2
        Gauss-Newton iterations of each warm-started search solve (the final solve uses ``max_iter``).
    percentage : float, default 0.9
        Edge components per mask voxel in the edge mask (0.9 = 30 % of the gradient components).
    edge_weighting : bool, default True
        Use the magnitude edge mask; False gives plain TV even with a magnitude.
    data_weighting : "magnitude" (default, the toolbox's mode 1) or "uniform" (mode 0)
        Data weight ``W``: mask / noise std with the noise std ``1 / magnitude``, normalised to
        mean 1 in the mask; or the mask.  Without a magnitude both are the mask.
    te_source : "echo_spacing" (default) or "te"
        The time ``T`` that turns the field into radians: the dataset's echo spacing when it
        records one (``meta["echo_spacing_s"]``, from the manifest's ``acquisition.echo_spacing_s``;
        the toolbox's ``delta_TE``), else its TE; or always its TE.
    eps : float, default 1e-6
        Lagged-diffusivity smoothing, (rad/mm)^2.
    max_iter : int, default 10
        Gauss-Newton iterations at most.
    tol_norm_ratio : float, default 0.1
        Gauss-Newton stops when ``||dx|| / ||x|| <`` this.
    cg_max_iter : int, default 100
        CG iterations per Gauss-Newton step at most.
    cg_tol : float, default 0.01
        CG relative residual.
    cg_return : "last" (default, the toolbox's ``cgsolve``) or "best"
        Which CG iterate a Gauss-Newton step takes: the last one, or the one with the smallest
        residual seen.
    smv : bool, default False
        Apply the SMV high-pass (radius ``smv_radius_mm``) to field and kernel and erode the
        mask accordingly (the toolbox's option for fields with residual background; off for
        local fields).  As in the toolbox, the noise map is masked by the input mask, then
        smoothed (``sqrt(SMV(N^2) + N^2)``), and the weight is taken on the eroded mask.
    smv_radius_mm : float, default 5
        SMV sphere radius, mm.
    merit : bool, default False
        MERIT: after each Gauss-Newton step down-weight voxels whose residual exceeds
        ``merit_sigma`` standard deviations.
    merit_sigma : float, default 6
        MERIT threshold, in standard deviations of the residual magnitude.
    medi0 : bool, default False
        MEDI+0 (zero reference in the ventricular CSF, ``lam_csf``).  It needs a CSF mask, which
        the toolbox derives from an R2* map (R2* < 5 /s, central components); a qsmbench volume
        carries no R2* map and methods never see labels, so asking for it is an error for now.
    lam_csf : float, default 100
        MEDI+0 weight (Hessian term ``lam_csf * L^T L``).
    pad_factor : float, default 1
        Zero padding of all arrays before solving (1 = none, as the toolbox's default).
    d0 : float, default 0
        ``D(0)`` of the dipole kernel (the toolbox's 0).

    References
    ----------
    Liu T et al. MRM 2011;66:777 (MEDI); Liu J et al. NeuroImage 2012;59:2560 (edge mask,
    percentage); Liu T et al. MRM 2013;69:467 (nonlinear data term, MERIT); Liu Z et al.
    MRM 2018;79:2795 (MEDI+0).
    """

    name = "medi"
    #: the default lambda rule and discrepancy_tau were chosen on these tuning phantoms (bench_medi_lambda.py)
    tuned_on = {"what": "lambda_rule default (discrepancy vs the toolbox's fixed 1000) and discrepancy_tau (0.5 "
                        "vs 1), by NRMSE without noise and at peak SNR 40, 20, 10 (noise seed 1)",
                "phantom_model": "mni", "phantom_version": "2", "shape": [80, 96, 80], "voxel_size_mm": [2.0, 2.0, 2.0],
                "seeds": [2548830, 2548832]}
    symmetry = "odd"      # the cost in radians is odd-symmetric; lambda makes it not homogeneous
    parameters = {
        "lambda_rule": "discrepancy", "lam": 1000.0, "discrepancy_tau": 0.5, "lam_min": 1.0, "lam_max": 1e5,
        "search_tol": 0.1, "search_max_evals": 6, "search_max_iter": 2,
        "percentage": 0.9, "edge_weighting": True, "data_weighting": "magnitude",
        "te_source": "echo_spacing", "eps": 1e-6,
        "max_iter": 10, "tol_norm_ratio": 0.1, "cg_max_iter": 100, "cg_tol": 0.01, "cg_return": "last",
        "smv": False, "smv_radius_mm": 5.0, "merit": False, "merit_sigma": 6.0,
        "medi0": False, "lam_csf": 100.0, "pad_factor": 1.0, "d0": 0.0,
    }
    uses = {"magnitude", "gpu_optional"}   # Gauss-Newton/CG on torch tensors with device cuda
    #: searched by qsmbench.tuning; lam weights the data term, so a larger lam regularises less;
    #: searched with lambda_rule fixed (with the default discrepancy rule lam is only the start)
    tunable = {"lam": LogRange(1e0, 1e4, 5, regularises="down", fixed=(("lambda_rule", "fixed"),))}
    references = [
        "Liu T et al. Morphology enabled dipole inversion (MEDI) from a single-angle acquisition: "
        "comparison with COSMOS in human brain imaging. MRM 2011;66:777-783. doi:10.1002/mrm.22816",
        "Liu J et al. Morphology enabled dipole inversion for quantitative susceptibility mapping using "
        "structural consistency between the magnitude image and the susceptibility map. "
        "NeuroImage 2012;59:2560-2568. doi:10.1016/j.neuroimage.2011.08.082",
        "Liu T et al. Nonlinear formulation of the magnetic field to source relationship for robust "
        "quantitative susceptibility mapping. MRM 2013;69:467-476. doi:10.1002/mrm.24272",
        "Liu Z et al. MEDI+0: morphology enabled dipole inversion with automatic uniform cerebrospinal "
        "fluid zero reference for quantitative susceptibility mapping. MRM 2018;79:2795-2803. "
        "doi:10.1002/mrm.26946",
    ]

    def _check(self):
        p = self.params
        positive = ("lam", "percentage", "eps", "max_iter", "cg_max_iter", "cg_tol", "smv_radius_mm",
                    "merit_sigma", "discrepancy_tau", "lam_min", "lam_max", "search_tol", "search_max_evals",
                    "search_max_iter")
        for key in positive:
            if not p[key] > 0:
                raise ConfigError(f"medi: {key} must be > 0, got {p[key]}")
        if not p["tol_norm_ratio"] >= 0:
            raise ConfigError(f"medi: tol_norm_ratio must be >= 0, got {p['tol_norm_ratio']}")
        if not p["lam_min"] < p["lam_max"]:
            raise ConfigError(f"medi: lam_min ({p['lam_min']}) must be smaller than lam_max ({p['lam_max']})")
        for key, allowed in (("lambda_rule", LAMBDA_RULES), ("data_weighting", DATA_WEIGHTINGS),
                             ("te_source", ("echo_spacing", "te")),
                             ("cg_return", ("last", "best"))):
            if p[key] not in allowed:
                raise ConfigError(f"medi: {key} must be one of {', '.join(allowed)}, got {p[key]!r}")
        if not p["lam_csf"] >= 0:
            raise ConfigError(f"medi: lam_csf must be >= 0, got {p['lam_csf']}")
        if p["medi0"]:
            raise ConfigError(
                "medi: medi0=True needs a ventricular CSF mask; the toolbox derives it from an R2* map, "
                "which a qsmbench volume does not carry, and methods never see the labels")

    def phase_time(self, vol) -> tuple[float, str]:
        """The time (s) over which the field accrues the phase MEDI works with, and its origin."""
        spacing = (vol.meta or {}).get("echo_spacing_s")
        if self.params["te_source"] == "echo_spacing" and spacing:
            return float(spacing), "echo spacing"
        return float(vol.te_s), "TE"

    def reconstruct(self, vol):
        p = self.params
        self._check()
        t, which = self.phase_time(vol)
        rdf = physics.ppm_to_rad(vol.field_ppm.astype(np.float64), vol.b0_tesla, t)
        rad_per_ppm = physics.ppm_to_rad(1.0, vol.b0_tesla, t)
        note = (f"radians: B0 = {vol.b0_tesla:g} T, {which} = {t * 1e3:g} ms "
                f"({rad_per_ppm:.4g} rad/ppm)")
        if which == "TE" and (vol.b0_tesla, vol.te_s) == (physics.REFERENCE_B0_TESLA, physics.REFERENCE_TE_S):
            note += "; these are qsmbench's reference values, used when a dataset states none"
        self.notes.append(note)
        if p["data_weighting"] == "magnitude" and vol.magnitude is None:
            self.notes.append("no magnitude: uniform data weight (W = mask)")
        if vol.magnitude is None:
            self.notes.append("no magnitude: plain TV (wG = 1)")
        elif not p["edge_weighting"]:
            self.notes.append("edge_weighting off: plain TV (wG = 1)")
        solver = dict(
            magnitude=vol.magnitude, percentage=p["percentage"], edge_weighting=p["edge_weighting"],
            data_weighting=p["data_weighting"], eps=p["eps"],
            max_iter=p["max_iter"], tol_norm_ratio=p["tol_norm_ratio"], cg_max_iter=p["cg_max_iter"],
            cg_tol=p["cg_tol"], cg_return=p["cg_return"], smv=p["smv"], smv_radius_mm=p["smv_radius_mm"],
            merit=p["merit"], merit_sigma=p["merit_sigma"], pad_factor=p["pad_factor"], d0=p["d0"],
            backend=backend_for(self))
        if p["lambda_rule"] == "fixed":
            res = medi_l1(rdf.astype(np.float32), vol.mask, vol.voxel_size_mm, vol.b0_dir, lam=p["lam"], **solver)
            self.info = {"lambda_rule": "fixed", "lam": float(p["lam"])}
        else:
            res = self._discrepancy(rdf.astype(np.float32), vol, solver)
        #: the last run's solver record (history, edge mask), for tests and diagnostics
        self.result = res
        h = res.history
        self.notes.append(
            f"Gauss-Newton: {len(h)} iteration(s), {'converged' if res.converged else 'stopped at max_iter'}"
            f" (||dx||/||x|| = {h[-1]['norm_ratio']:.3g}); CG iterations {[e['cg_iterations'] for e in h]}")
        if res.edges is not None:
            self.notes.append(f"edge mask: tau = {res.edges.tau:.4g}/mm, "
                              f"{res.edges.edge_fraction:.3f} edges per mask voxel")
        chi = physics.rad_to_ppm(res.x_rad.astype(np.float64), vol.b0_tesla, t)
        return (chi * vol.mask).astype(np.float32)

    def _discrepancy(self, rdf: np.ndarray, vol, solver: dict) -> MEDIResult:
        """``lam`` by the discrepancy principle (:func:`medi_discrepancy`); fills :attr:`info` and a note."""
        p = self.params
        res, search, noise = medi_discrepancy(
            rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir, lam_start=p["lam"], tau=p["discrepancy_tau"],
            lam_min=p["lam_min"], lam_max=p["lam_max"], search_tol=p["search_tol"],
            search_max_evals=int(p["search_max_evals"]), search_max_iter=int(p["search_max_iter"]), **solver)
        #: extra facts of the last run, copied into run.json's "info" by the runner
        self.info = {
            "lambda_rule": "discrepancy", "lam": search.lam, "discrepancy_tau": float(p["discrepancy_tau"]),
            "noise_sigma_w_rad": noise.sigma_w, "noise_voxels": noise.n_used,
            "expected_residual": noise.expected_residual, "target_residual": search.target,
            "final_residual": res.residual, "final_ratio": res.residual / search.target,
            "search_converged": search.converged, "search_bound": search.bound,
            "search_trace": search.trace,
        }
        self.search = search
        self.notes.append(
            f"lambda by the discrepancy principle: lam = {search.lam:.4g} (residual / target = "
            f"{res.residual / search.target:.3g}, tau = {p['discrepancy_tau']:g}); weighted phase noise "
            f"sigma_w = {noise.sigma_w:.3g} rad estimated from the field (MAD of the weighted Laplacian), "
            f"{len(search.trace)} search solve(s)" + (f"; target beyond {search.bound}" if search.bound else ""))
        return res
