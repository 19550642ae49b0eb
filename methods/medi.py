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

import numpy as np

from qsmbench import operators, physics
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


def dipole_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``F^-1[K F(x)]`` with counted real-to-complex FFTs (``kernel``: half spectrum)."""
    spec = physics.rfftn(x)
    spec *= kernel
    return physics.irfftn(spec, s=x.shape).astype(x.dtype, copy=False)


def weighted_laplacian(x: np.ndarray, weights: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """``grad^T (weights * grad x)`` with Neumann forward differences (``weights``: ``(3, *x.shape)``).

    Equal to ``operators.grad_adjoint(weights * operators.grad(x, vs), vs)`` (tested); computed
    by :func:`_laplacian_flat` after :func:`laplacian_weights`.
    """
    return _laplacian_flat(x, laplacian_weights(weights, voxel_size_mm), np.empty_like(x), np.empty_like(x))


def laplacian_weights(weights: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """``weights[j] / h_j^2`` with the last sample along axis ``j`` set to zero (a new array).

    Neumann forward differences vanish across the last sample, so those weights are never used;
    zeroing them lets :func:`_laplacian_flat` difference the *flattened* arrays at stride
    ``s_j`` (contiguous memory, no wrap-around terms) instead of slicing strided views.
    """
    out = np.empty(weights.shape, dtype=weights.dtype)
    for axis in range(3):
        np.multiply(weights[axis], np.asarray(1.0 / float(voxel_size_mm[axis]) ** 2, dtype=weights.dtype),
                    out=out[axis])
        last = [slice(None)] * 3
        last[axis] = slice(-1, None)
        out[axis][tuple(last)] = 0
    return out


def _laplacian_flat(x: np.ndarray, prepared: np.ndarray, out: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """``grad^T (w grad x)`` for weights from :func:`laplacian_weights`, into ``out`` (C-contiguous).

    Along axis ``j`` with memory stride ``s`` (elements): ``t[p] = w[p] (x[p+s] - x[p])`` for the
    first ``N - s`` flat positions (``w`` is zero wherever ``p + s`` would leave the row), and
    ``(grad^T g)[p] = t[p-s] - t[p]``.  About twelve contiguous passes over memory, no allocation.
    """
    xf, of, bf = x.reshape(-1), out.reshape(-1), buf.reshape(-1)
    n_total = xf.size
    strides = (x.shape[1] * x.shape[2], x.shape[2], 1)
    for axis, s in enumerate(strides):
        if x.shape[axis] < 2:
            if axis == 0:
                of[...] = 0
            continue
        m = n_total - s
        t = bf[:m]
        np.subtract(xf[s:], xf[:m], out=t)
        t *= prepared[axis].reshape(-1)[:m]
        if axis == 0:
            np.negative(t, out=of[:m])
            of[m:] = 0
        else:
            of[:m] -= t
        of[s:] += t
    return out


# --------------------------------------------------------------------------- the problem
@dataclasses.dataclass
class MEDIProblem:
    """One MEDI cost function, on the (possibly padded) working grid.

    ``E(x) = lam * sum W^2 |exp(i D*x) - exp(i rdf)|^2 + sum |wG grad x|
    + lam_csf/2 * ||L x||^2`` with ``L x = M_csf (x - mean_csf(x))`` (MEDI+0; the toolbox's
    Hessian term ``lam_csf * L^T L`` corresponds to this halved quadratic).
    ``|exp(ia) - exp(ib)|^2 = 4 sin^2((a - b)/2)`` keeps everything real.
    """

    rdf: np.ndarray              # field in radians (after SMV when that is on)
    w2: np.ndarray               # W^2, the squared data weight
    wg: np.ndarray               # (3, ...) binary edge weight
    kernel: np.ndarray           # half-spectrum dipole kernel (times the SMV high-pass)
    voxel_size_mm: tuple[float, float, float]
    lam: float = 1000.0
    eps: float = 1e-6
    csf_mask: np.ndarray | None = None
    lam_csf: float = 100.0

    def dconv(self, x: np.ndarray) -> np.ndarray:
        return dipole_conv(x, self.kernel)

    def csf_projection(self, x: np.ndarray) -> np.ndarray:
        """``L x = M_csf (x - mean of x in M_csf)`` (self-adjoint and idempotent)."""
        c = self.csf_mask
        return np.where(c, x - x[c].mean(dtype=np.float64), 0).astype(x.dtype, copy=False)

    def cost(self, x: np.ndarray, dx_conv: np.ndarray | None = None) -> dict[str, float]:
        """Cost terms at ``x`` (``dx_conv = D*x`` when already known)."""
        dxc = self.dconv(x) if dx_conv is None else dx_conv
        s = np.sin(0.5 * (dxc - self.rdf))
        data = float(self.lam * 4.0 * np.sum(self.w2 * s * s, dtype=np.float64))
        reg = float(np.sum(np.abs(self.wg * operators.grad(x, self.voxel_size_mm)), dtype=np.float64))
        csf = 0.0
        if self.csf_mask is not None and self.lam_csf:
            lx = self.csf_projection(x)
            csf = float(0.5 * self.lam_csf * np.sum(lx * lx, dtype=np.float64))
        return {"data": data, "reg": reg, "csf": csf, "total": data + reg + csf}

    def smoothed_cost(self, x: np.ndarray) -> float:
        """The cost with ``|t| -> sqrt(t^2 + eps)`` (what one lagged-diffusivity step sees)."""
        c = self.cost(x)
        g = self.wg * operators.grad(x, self.voxel_size_mm)
        return c["total"] - c["reg"] + float(np.sum(np.sqrt(g * g + self.eps), dtype=np.float64))

    def reg_weights(self, x: np.ndarray) -> np.ndarray:
        """Lagged diffusivity: ``wG^2 / sqrt(|wG grad x|^2 + eps)`` per component."""
        g = operators.grad(x, self.voxel_size_mm)
        g *= self.wg
        g *= g
        g += np.asarray(self.eps, dtype=g.dtype)
        np.sqrt(g, out=g)
        np.divide(self.wg, g, out=g)   # wG is binary, so wG^2 = wG
        return g

    def gradient(self, x: np.ndarray, dx_conv: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Gradient of the smoothed cost at ``x``: ``grad^T(R grad x) + lam_csf L x +
        2 lam D^T(W^2 sin(D*x - rdf))`` (``R`` = :meth:`reg_weights` at ``x``)."""
        t = np.sin(dx_conv - self.rdf)
        t *= self.w2
        out = self.dconv(t)
        out *= np.asarray(2.0 * self.lam, dtype=out.dtype)
        out += weighted_laplacian(x, weights, self.voxel_size_mm)
        if self.csf_mask is not None and self.lam_csf:
            out += np.asarray(self.lam_csf, dtype=out.dtype) * self.csf_projection(x)
        return out

    def hessian_operator(self, weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Gauss-Newton Hessian with lagged weights: ``grad^T R grad + 2 lam D W^2 D (+ lam_csf L)``.

        Symmetric positive semi-definite (``D`` is real and even, the Laplacian uses the exact
        adjoint), so CG applies.  Per application: four FFTs and about twenty passes over memory.
        """
        dtype = self.rdf.dtype
        # fold constants into the weights once per Gauss-Newton step, not once per CG iteration
        w2 = self.w2 * np.asarray(2.0 * self.lam, dtype=dtype)
        prepared = laplacian_weights(weights, self.voxel_size_mm)
        buf = np.empty_like(self.rdf)
        lap = np.empty_like(self.rdf)

        def apply(v: np.ndarray) -> np.ndarray:
            t = self.dconv(v)
            t *= w2
            out = self.dconv(t)
            out += _laplacian_flat(v, prepared, lap, buf)
            if self.csf_mask is not None and self.lam_csf:
                out += np.asarray(self.lam_csf, dtype=dtype) * self.csf_projection(v)
            return out

        return apply


def conjugate_gradient(apply_a: Callable[[np.ndarray], np.ndarray], b: np.ndarray, *, tol: float,
                       max_iter: int, replace_every: int = 50, return_best: bool = False
                       ) -> tuple[np.ndarray, float, int]:
    """Plain CG from zero for ``A x = b``; stops when ``||r|| <= tol ||b||`` or after ``max_iter``.

    Returns the last iterate (``return_best=False``, as the toolbox's ``cgsolve``, which tracks
    the best iterate but returns the last one) or the iterate with the smallest relative residual
    seen; then the smallest relative residual seen (what ``cgsolve`` reports) and the number of
    iterations.  The recursive residual is replaced by ``b - A x`` every ``replace_every``
    iterations (as the toolbox's CG does).
    """
    x = np.zeros_like(b)
    r = b.copy()
    d = r.copy()
    tmp = np.empty_like(b)
    delta0 = float(np.vdot(b, b))
    if delta0 == 0.0:
        return x, 0.0, 0
    delta = delta0
    best = x.copy() if return_best else None
    best_res = 1.0
    n = 0
    while n < max_iter and delta > tol * tol * delta0:
        q = apply_a(d)
        dq = float(np.vdot(d, q))
        if not dq > 0:
            break  # direction of (numerically) zero curvature: nothing more to gain
        alpha = delta / dq
        x += np.multiply(d, np.asarray(alpha, dtype=x.dtype), out=tmp)
        if (n + 1) % replace_every == 0:
            np.subtract(b, apply_a(x), out=r)
        else:
            r -= np.multiply(q, np.asarray(alpha, dtype=r.dtype), out=tmp)
        delta_old, delta = delta, float(np.vdot(r, r))
        d *= np.asarray(delta / delta_old, dtype=d.dtype)
        d += r
        n += 1
        res = math.sqrt(delta / delta0)
        if res < best_res:
            best_res = res
            if return_best:
                np.copyto(best, x)
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
    """

    x_rad: np.ndarray
    mask_out: np.ndarray
    history: list[dict]
    initial_cost: dict[str, float]
    edges: EdgeMask | None
    converged: bool
    weight: np.ndarray | None = None


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
            d0: float = 0.0, dtype=np.float32) -> MEDIResult:
    """MEDI (``MEDI_L1`` semantics) on a field in radians; see :class:`MEDI` for the parameters.

    ``magnitude=None`` or ``edge_weighting=False`` gives plain anisotropic TV (``wG = 1``).
    Data weight ``W = mask / N_std`` normalised to mean 1 in the mask (:func:`data_weight`):
    ``data_weighting="magnitude"`` (the toolbox's default mode 1) takes ``N_std = noise_std`` when
    given, else :func:`magnitude_noise_std` of ``magnitude``; ``"uniform"`` (mode 0), or no
    magnitude and no noise map, gives ``W = mask``.  MERIT then adapts ``N_std`` (a unit map when
    uniform).
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
    prob = MEDIProblem(rdf=rdf, w2=w * w, wg=wg, kernel=kernel, voxel_size_mm=vs, lam=float(lam),
                       eps=float(eps), csf_mask=None if csf_mask is None else pad(csf_mask, bool) & m,
                       lam_csf=float(lam_csf))
    if prob.csf_mask is not None and not prob.csf_mask.any():
        prob.csf_mask = None

    x = np.zeros(pshape, dtype=dtype)
    dxc = np.zeros(pshape, dtype=dtype)
    initial = prob.cost(x, dxc)
    history: list[dict] = []
    converged = False
    for it in range(1, int(max_iter) + 1):
        weights = prob.reg_weights(x)
        b = prob.gradient(x, dxc, weights)
        b *= -1
        dx, cg_res, cg_n = conjugate_gradient(prob.hessian_operator(weights), b, tol=cg_tol,
                                              max_iter=int(cg_max_iter), return_best=cg_return == "best")
        del b, weights
        norm_x = float(np.linalg.norm(x))
        ratio = float(np.linalg.norm(dx)) / norm_x if norm_x > 0 else math.inf
        x += dx
        dxc = prob.dconv(x)
        entry = {"iteration": it, "norm_ratio": ratio, "cg_iterations": cg_n, "cg_residual": cg_res,
                 **prob.cost(x, dxc), "merit_voxels": 0}
        if merit:
            # complex weighted residual, demeaned in the mask; voxels beyond merit_sigma * std(|r|)
            # get their noise std multiplied by (|r| / (merit_sigma std))^2
            wres = w * (np.exp(1j * dxc) - np.exp(1j * rdf))
            wres = wres - wres[m].mean()
            mag_res = np.abs(wres).astype(dtype)
            factor = merit_sigma * float(np.std(mag_res[m], ddof=1))
            if factor > 0:
                scale = np.maximum(mag_res / dtype(factor), dtype(1))
                entry["merit_voxels"] = int(np.count_nonzero((scale > 1) & m))
                n_std = np.where(m, n_std * scale * scale, n_std).astype(dtype)
                w = weight_of(n_std)
                prob.w2 = w * w
        history.append(entry)
        if ratio < tol_norm_ratio:
            converged = True
            break
    mask_out = m[: shape[0], : shape[1], : shape[2]]
    x_out = x[: shape[0], : shape[1], : shape[2]] * mask_out
    return MEDIResult(x_rad=np.ascontiguousarray(x_out), mask_out=mask_out, history=history,
                      initial_cost=initial, edges=edges, converged=converged,
                      weight=np.ascontiguousarray(w[: shape[0], : shape[1], : shape[2]]))


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
    * Symmetry: the cost is unchanged under ``(x, RDF) -> (-x, -RDF)`` (W and wG come from the
      magnitude), and every step of the solver is odd in the field, so ``chi(-f) = -chi(f)`` to
      float rounding; it is not homogeneous (``lam`` is fixed in radians).

    Parameters
    ----------
    lam : float, default 1000
        Weight of the data term (dimensionless; data in radians, gradients in rad/mm).
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
    symmetry = "odd"      # the cost in radians is odd-symmetric; lambda makes it not homogeneous
    parameters = {
        "lam": 1000.0, "percentage": 0.9, "edge_weighting": True, "data_weighting": "magnitude",
        "te_source": "echo_spacing", "eps": 1e-6,
        "max_iter": 10, "tol_norm_ratio": 0.1, "cg_max_iter": 100, "cg_tol": 0.01, "cg_return": "last",
        "smv": False, "smv_radius_mm": 5.0, "merit": False, "merit_sigma": 6.0,
        "medi0": False, "lam_csf": 100.0, "pad_factor": 1.0, "d0": 0.0,
    }
    uses = {"magnitude"}
    #: searched by qsmbench.tuning; lam weights the data term, so a larger lam regularises less
    tunable = {"lam": LogRange(1e2, 1e4, 5, regularises="down")}
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
                    "merit_sigma")
        for key in positive:
            if not p[key] > 0:
                raise ConfigError(f"medi: {key} must be > 0, got {p[key]}")
        if not p["tol_norm_ratio"] >= 0:
            raise ConfigError(f"medi: tol_norm_ratio must be >= 0, got {p['tol_norm_ratio']}")
        for key, allowed in (("data_weighting", DATA_WEIGHTINGS), ("te_source", ("echo_spacing", "te")),
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
        res = medi_l1(
            rdf.astype(np.float32), vol.mask, vol.voxel_size_mm, vol.b0_dir, magnitude=vol.magnitude,
            lam=p["lam"], percentage=p["percentage"], edge_weighting=p["edge_weighting"],
            data_weighting=p["data_weighting"], eps=p["eps"],
            max_iter=p["max_iter"], tol_norm_ratio=p["tol_norm_ratio"], cg_max_iter=p["cg_max_iter"],
            cg_tol=p["cg_tol"], cg_return=p["cg_return"], smv=p["smv"], smv_radius_mm=p["smv_radius_mm"],
            merit=p["merit"], merit_sigma=p["merit_sigma"], pad_factor=p["pad_factor"], d0=p["d0"])
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
