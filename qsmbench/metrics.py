"""Image-quality metrics, each a pure function of (reconstruction, reference, mask/labels).

Adding a metric is one function plus the :func:`register` decorator::

    @register("rmse", better="lower", unit="%", needs=(),
              definition="100 * ||M x - M y|| / ||M y|| over the whole volume",
              source="Langkammer et al., MRM 2018;79:1661 (2016 challenge)")
    def rmse(ctx: EvalContext) -> float: ...

A metric raises :class:`NotApplicable` (with a reason) when the data cannot support it; the
evaluator records that instead of a number.  Every metric sees the same :class:`EvalContext`, and
the evaluator never branches on the method that produced the reconstruction.

Conventions
-----------
``x`` = reconstruction (chi, ppm), ``y`` = reference (ppm), ``M`` = the evaluation mask (the
dataset's scoring mask when it has one, else the brain mask).  Unless a definition says
otherwise, metrics see the *masked* maps ``M·x`` and ``M·y``: the challenges scored masked
submissions against references that are zero outside the scoring mask, so on the official data
masking ``y`` changes nothing, and on data whose reference extends outside ``M`` (the RC2 head,
the embedded phantom) it keeps skull and air out of the score.

The implemented set
-------------------
* 2016 challenge (Langkammer et al. 2018): ``rmse``, ``hfen``, ``ssim2016`` (our reconstruction:
  the organisers' SSIM script is unpublished), ``roi_error_gm``, ``roi_error_wm``.
* XSIM (Milovic et al. 2025): ``xsim``.
* 2019 challenge 2.0 (Bilgic et al. 2021): ``nrmse``, ``dnrmse``, ``dnrmse_tissue``,
  ``dnrmse_blood``, ``dnrmse_dgm``, ``slope_error``, ``calc_streak``, ``calc_moment_error``.
* General: ``pearson``, ``psnr``.

Label schemes
-------------
The two challenges number their label maps differently, so a label map is read according to
``extras["label_scheme"]``:

* ``"rc2"`` (default): the RC2 segmentation, 0 background, 1 caudate, 2 globus pallidus,
  3 putamen, 4 red nucleus, 5 dentate nucleus, 6 substantia nigra + STN, 7 thalamus, 8 white
  matter, 9 grey matter, 10 CSF, 11 blood, 12 fat, 13 bone, 14 air, 15 muscle, 16 calcification.
  Used by ``dnrmse_tissue/_blood/_dgm``, ``slope_error``, ``calc_streak``, ``calc_moment_error``.
* ``"qsm2016"``: the 2016 ``evaluation_mask``, 0 background, 1-6 grey-matter ROIs, 7-11
  white-matter ROIs.  Used by ``roi_error_gm`` and ``roi_error_wm``.

A metric built for the other scheme is *not applicable* (with that reason).  A label map that
holds a value outside its scheme's set is an :class:`~qsmbench.errors.InputError`.

Options (``extras``)
--------------------
``label_scheme``      ``"rc2"`` (default) or ``"qsm2016"``, see above.
``dnrmse_fit``        ``"recon_to_truth"`` (default): least-squares fit ``ỹ ≈ a·x̃ + b`` and score
                      ``a·x̃ + b``; ``"truth_to_recon"``: fit ``x̃ ≈ p·ỹ + q`` and score
                      ``(x̃ − q)/p``.  Sources disagree on the direction (DATA_AND_METRICS.md).
``xsim_mask``         ``"mask"`` (default): average the XSIM map over ``M``;
                      ``"reference_support"``: over the non-zero voxels of ``M·y`` (what the
                      authors' ``compute_xsim`` does when called without a mask).
``ssim2016_rescale``  ``"reference_range"`` (default) or ``"per_image"``, see :func:`ssim2016` (our
                      reconstruction of the unpublished 2016 script).
``ssim2016_halfwidth`` half-width of the 2016 SSIM Gaussian window in voxels (default 1: 3³).
``roi_error_mode``    ``"voxelwise"`` (default): mean over the ROI voxels of ``|M·x − y|``;
                      ``"roi_means"``: mean over the ROIs of ``|mean(M·x) − mean(y)|``.
``calc_moment_gt``    the ground-truth calcification moment (RC2's ``CalcMoment``, ppm·voxel);
                      without it the moment is computed from ``y`` with the same rule as for ``x``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from .errors import InputError


class NotApplicable(Exception):
    """Raised by a metric that cannot be computed on this data; the message is the reason."""


@dataclasses.dataclass
class EvalContext:
    """Everything a metric may look at.  Arrays are float64 copies; masks are bool."""

    recon: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    _cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Share an intermediate (e.g. a filtered image) between metrics of one evaluation."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def option(self, key: str) -> Any:
        """An ``extras`` option, or its default from :data:`OPTIONS`."""
        return self.extras.get(key, OPTIONS[key][0])


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    func: Callable[[EvalContext], float]
    better: str  # "lower" or "higher"
    unit: str
    definition: str
    source: str
    needs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MetricResult:
    metric: str
    value: float | None
    status: str  # "ok" or "not_applicable"
    reason: str = ""
    better: str = ""
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_REGISTRY: dict[str, MetricSpec] = {}


def register(name: str, *, better: str, unit: str, definition: str, source: str,
             needs: Sequence[str] = ()):
    """Decorator registering a metric function under ``name`` (unique)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")

    def deco(func: Callable[[EvalContext], float]):
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is registered twice")
        _REGISTRY[name] = MetricSpec(name, func, better, unit, definition, source, tuple(needs))
        return func

    return deco


def list_metrics() -> list[str]:
    return list(_REGISTRY)


def get_metric(name: str) -> MetricSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown metric {name!r}; known: {', '.join(_REGISTRY)}") from None


def metric_table() -> list[dict[str, str]]:
    """The documentation rows shown in the report (name, direction, unit, definition, source)."""
    return [{"metric": s.name, "better": s.better, "unit": s.unit, "definition": s.definition,
             "source": s.source} for s in _REGISTRY.values()]


# --------------------------------------------------------------------------- constants
SRC_2016 = "2016 QSM challenge: Langkammer et al., MRM 2018;79:1661, doi:10.1002/mrm.26830"
SRC_RC2 = "2019 QSM challenge 2.0: Bilgic et al., MRM 2021;86:1241, doi:10.1002/mrm.28754"
SRC_XSIM = "Milovic et al., XSIM, MRM 2025;93:411 (authors' compute_xsim.m)"

#: Largest label of each scheme; every scheme's label set is 0..max.
LABEL_SCHEMES: dict[str, tuple[int, str]] = {
    "rc2": (16, "RC2 segmentation: 1-6 deep grey nuclei, 7 thalamus, 8 WM, 9 GM, 10 CSF, "
                "11 blood, 12 fat, 13 bone, 14 air, 15 muscle, 16 calcification"),
    "qsm2016": (11, "2016 evaluation_mask: 1-6 grey-matter ROIs, 7-11 white-matter ROIs"),
}
RC2_DGM = (1, 2, 3, 4, 5, 6)
RC2_TISSUE = (7, 8, 9)
RC2_BLOOD = 11
RC2_CALCIFICATION = 16
QSM2016_GM = (1, 2, 3, 4, 5, 6)
QSM2016_WM = (7, 8, 9, 10, 11)

#: extras options: key -> (default, allowed values or None for "a finite number").
OPTIONS: dict[str, tuple[Any, tuple[Any, ...] | None]] = {
    "label_scheme": ("rc2", tuple(LABEL_SCHEMES)),
    "dnrmse_fit": ("recon_to_truth", ("recon_to_truth", "truth_to_recon")),
    "xsim_mask": ("mask", ("mask", "reference_support")),
    "ssim2016_rescale": ("reference_range", ("reference_range", "per_image")),
    "ssim2016_halfwidth": (1, None),
    "roi_error_mode": ("voxelwise", ("voxelwise", "roi_means")),
    "calc_moment_gt": (None, None),
}

HFEN_SIZE = 15          # LoG kernel edge (voxels)
HFEN_SIGMA = 1.5        # LoG sigma (voxels)
XSIM_K = (0.01, 0.001)
XSIM_L = 1.0            # ppm
XSIM_SIGMA = 1.5
XSIM_RADIUS = 3         # 7x7x7 window
SSIM2016_K = (0.01, 0.03)
SSIM2016_L = 255.0
SSIM2016_SIGMA = 1.5
CALC_THRESHOLDS = -np.arange(151) / 100.0   # 0, -0.01, ..., -1.5 ppm
CALC_GROW = (3, 4, 4)   # B3 = bbox + 3, B7 = B3 + 4, B11 = B7 + 4


# --------------------------------------------------------------------------- evaluation
def _validate_extras(extras: Mapping[str, Any]) -> None:
    for key, (_default, allowed) in OPTIONS.items():
        if key not in extras:
            continue
        value = extras[key]
        if allowed is not None:
            if value not in allowed:
                raise InputError(f"extras[{key!r}] = {value!r} is not one of: "
                                 f"{', '.join(map(repr, allowed))}")
        elif key == "ssim2016_halfwidth":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"extras['ssim2016_halfwidth'] must be a positive integer, got {value!r}")
        elif value is not None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise InputError(f"extras[{key!r}] must be a finite number, got {value!r}")


def _validate_labels(lab: np.ndarray, scheme: str, what: str) -> None:
    top, description = LABEL_SCHEMES[scheme]
    if lab.size and int(lab.max()) > top:
        unexpected = np.unique(lab[lab > top])
        shown = ", ".join(str(int(v)) for v in unexpected[:10])
        more = f" (and {unexpected.size - 10} more)" if unexpected.size > 10 else ""
        raise InputError(f"{what} holds label values {shown}{more} outside the {scheme!r} label set "
                         f"0-{top} ({description}); set extras['label_scheme'] to the scheme the "
                         f"map uses ({', '.join(LABEL_SCHEMES)})")


def make_context(recon, truth, mask, *, labels=None, voxel_size_mm=(1.0, 1.0, 1.0),
                 extras: Mapping[str, Any] | None = None, names: Mapping[str, str] | None = None
                 ) -> EvalContext:
    """Validate inputs and build the context.  ``names`` label the inputs in error messages."""
    names = {"recon": "reconstruction", "truth": "reference", "mask": "mask", "labels": "labels",
             **(names or {})}
    extras = dict(extras or {})
    _validate_extras(extras)
    x = np.asarray(recon)
    y = np.asarray(truth)
    m = np.asarray(mask)
    for key, arr in (("recon", x), ("truth", y), ("mask", m)):
        if arr.ndim != 3:
            raise InputError(f"{names[key]} must be 3-D, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"{names[key]} must hold numbers, got dtype {arr.dtype}")
    for key, arr in (("truth", y), ("mask", m)):
        if arr.shape != x.shape:
            raise InputError(f"{names[key]} has shape {arr.shape} but {names['recon']} has shape {x.shape}")
    for key, arr in (("recon", x), ("truth", y)):
        if np.iscomplexobj(arr):
            raise InputError(f"{names[key]} is complex; metrics need real susceptibility maps (ppm)")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{names[key]} contains non-finite values (NaN/inf)")
    if np.iscomplexobj(m) or not np.all(np.isfinite(m)):
        raise InputError(f"{names['mask']} must hold finite real values")
    m = m.astype(bool)
    if not m.any():
        raise InputError(f"{names['mask']} is empty (no non-zero voxel)")
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != x.shape:
            raise InputError(f"{names['labels']} has shape {lab.shape} but {names['recon']} "
                             f"has shape {x.shape}")
        if not (np.issubdtype(lab.dtype, np.number) or lab.dtype == bool) or np.iscomplexobj(lab):
            raise InputError(f"{names['labels']} must hold non-negative integers, got dtype {lab.dtype}")
        if np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool:
            bad = lab.size > 0 and lab.min() < 0
        else:
            bad = not np.all(np.isfinite(lab)) or np.any(lab < 0) or np.any(lab != np.round(lab))
        if bad:
            raise InputError(f"{names['labels']} must hold non-negative integers")
        lab = lab.astype(np.int32)
        _validate_labels(lab, extras.get("label_scheme", OPTIONS["label_scheme"][0]), names["labels"])
    return EvalContext(recon=x.astype(np.float64), truth=y.astype(np.float64), mask=m, labels=lab,
                       voxel_size_mm=tuple(float(v) for v in voxel_size_mm), extras=extras)


def evaluate(recon, truth, mask, *, labels=None, voxel_size_mm=(1.0, 1.0, 1.0),
             metrics: Iterable[str] | None = None, extras: Mapping[str, Any] | None = None,
             names: Mapping[str, str] | None = None) -> list[MetricResult]:
    """Compute every (or the named) metric; not-applicable metrics carry their reason."""
    ctx = make_context(recon, truth, mask, labels=labels, voxel_size_mm=voxel_size_mm,
                       extras=extras, names=names)
    specs = [get_metric(n) for n in metrics] if metrics is not None else list(_REGISTRY.values())
    out = []
    for spec in specs:
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                value = float(spec.func(ctx))
        except NotApplicable as exc:
            out.append(MetricResult(spec.name, None, "not_applicable", str(exc), spec.better, spec.unit))
            continue
        if not math.isfinite(value):
            out.append(MetricResult(spec.name, None, "not_applicable",
                                    "the metric is undefined on this data (non-finite value)",
                                    spec.better, spec.unit))
            continue
        out.append(MetricResult(spec.name, value, "ok", "", spec.better, spec.unit))
    return out


# --------------------------------------------------------------------------- helpers
def demean_in_mask(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``(a - mean_M(a)) * M``."""
    return np.where(m, a - a[m].mean(), 0.0)


def norm2(a: np.ndarray) -> float:
    """Euclidean norm of ``a``, accumulated in float64 by numpy's pairwise summation.

    Not ``np.linalg.norm``/``np.dot``: those call BLAS, whose multithreaded reductions add in an
    order that depends on the thread count, so a score would change in its last bits with the
    job's threads (a reconstruct job's scores and ``qsmbench rescore``'s must be bitwise equal).
    """
    return math.sqrt(dot64(a, a))


def dot64(a: np.ndarray, b: np.ndarray) -> float:
    """``Σ a·b`` in float64 by numpy's pairwise summation: independent of the thread count (see
    :func:`norm2`)."""
    return float(np.sum(np.multiply(a, b, dtype=np.float64)))


def relative_error_percent(x: np.ndarray, y: np.ndarray, what: str = "reference") -> float:
    """``100 * ||x - y|| / ||y||``; not applicable when ``y`` is all zero."""
    ny = norm2(y)
    if ny == 0:
        raise NotApplicable(f"the {what} is zero, so a relative error is undefined")
    return 100.0 * norm2(np.subtract(x, y, dtype=np.float64)) / ny


def masked(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
    """``(M·x, M·y)``, shared by the metrics of one evaluation."""
    return ctx.cached("masked", lambda: (np.where(ctx.mask, ctx.recon, 0.0),
                                         np.where(ctx.mask, ctx.truth, 0.0)))


def mask_box(ctx: EvalContext, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``M`` grown by ``margin`` voxels (clipped to the volume).

    A filter of radius ``margin`` evaluated at the voxels of ``M`` only reads voxels inside this
    box, and where the box meets the volume's edge the padding is the same as for the full
    array, so filtering the crop gives exactly the values of filtering the whole volume there.
    """
    def bbox():
        out = []
        for axis in range(3):
            hit = np.flatnonzero(ctx.mask.any(axis=tuple(a for a in range(3) if a != axis)))
            out.append((int(hit[0]), int(hit[-1])))
        return out

    return tuple(slice(max(lo - margin, 0), min(hi + margin + 1, n))
                 for (lo, hi), n in zip(ctx.cached("mask_bbox", bbox), ctx.mask.shape, strict=True))


def erode(region: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3×3×3 cube; voxels outside the array count as background."""
    return ndimage.minimum_filter(region.view(np.uint8), size=3, mode="constant", cval=0).view(bool)


def dilate(region: np.ndarray) -> np.ndarray:
    """Binary dilation by a 3×3×3 cube."""
    return ndimage.maximum_filter(region.view(np.uint8), size=3, mode="constant", cval=0).view(bool)


def require_labels(ctx: EvalContext, scheme: str) -> np.ndarray:
    """The label map, if there is one and it follows ``scheme``; else :class:`NotApplicable`."""
    if ctx.labels is None:
        raise NotApplicable("no label map was given (--labels)")
    actual = ctx.option("label_scheme")
    if actual != scheme:
        raise NotApplicable(f"needs a label map in the {scheme!r} numbering; this one is {actual!r} "
                            f"(extras['label_scheme'])")
    return ctx.labels


def label_stats(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label voxel counts and sums of ``x`` and ``y`` (all voxels of each label, no mask)."""
    def compute():
        lab = ctx.labels.ravel()
        n = int(lab.max()) + 1 if lab.size else 1
        return (np.bincount(lab, minlength=n).astype(np.float64),
                np.bincount(lab, weights=ctx.recon.ravel(), minlength=n),
                np.bincount(lab, weights=ctx.truth.ravel(), minlength=n))
    return ctx.cached("label_stats", compute)


def log_kernel(size: int = HFEN_SIZE, sigma: float = HFEN_SIGMA) -> np.ndarray:
    """The 2016 HFEN Laplacian-of-Gaussian kernel (``size``³ voxels, zero sum).

    A Gaussian normalised to unit sum, times ``r²/σ⁴ − 3/σ²``, then shifted by its mean so that
    it sums to zero (as in the organisers' ``compute_hfen.m``).
    """
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    r2 = r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2
    h = np.exp(-r2 / (2 * sigma**2))
    h /= h.sum()
    k = (r2 / sigma**4 - 3 / sigma**2) * h
    return k - k.mean()


def correlate_same_zero_pad(a: np.ndarray, kernel: np.ndarray, kernel_fft=None):
    """``scipy.ndimage.correlate(a, kernel, mode="constant")`` (odd kernel) computed by FFT.

    The circular FFT length only needs ``n + (k−1)/2`` per axis for the "same"-size output to
    be free of wrap-around.  Returns ``(result, kernel_fft)`` so that the kernel's transform can
    be reused for arrays of the same shape.
    """
    half = [(k - 1) // 2 for k in kernel.shape]
    fshape = [sp_fft.next_fast_len(n + h, real=True) for n, h in zip(a.shape, half, strict=True)]
    if kernel_fft is None:
        kernel_fft = sp_fft.rfftn(kernel[::-1, ::-1, ::-1], fshape)
    full = sp_fft.irfftn(sp_fft.rfftn(a, fshape) * kernel_fft, fshape)
    crop = tuple(slice(h, h + n) for h, n in zip(half, a.shape, strict=True))
    return full[crop], kernel_fft


def ssim_map(x: np.ndarray, y: np.ndarray, *, c1: float, c2: float, sigma: float, radius: int,
             mode: str) -> np.ndarray:
    """Voxel-wise SSIM (Wang et al. 2004) with a Gaussian window of ``2·radius+1`` voxels a side.

    Local means, variances and the covariance are Gaussian-weighted (population, not sample,
    statistics); ``mode`` is the ``scipy.ndimage`` padding ("nearest" = MATLAB 'replicate',
    "constant" = zero padding as in ``convn(..., 'same')``).
    """
    def blur(a):
        return ndimage.gaussian_filter(a, sigma, mode=mode, cval=0.0, radius=radius)

    mx = blur(x)
    my = blur(y)
    mxy = mx * my
    mxx = mx * mx
    myy = my * my
    sxx = blur(x * x)
    sxx -= mxx
    syy = blur(y * y)
    syy -= myy
    sxy = blur(x * y)
    sxy -= mxy
    num = 2 * mxy + c1
    num *= 2 * sxy + c2
    den = mxx + myy + c1
    sxx += syy
    sxx += c2
    den *= sxx
    num /= den
    return num


def _demean(v: np.ndarray) -> np.ndarray:
    """``v − mean(v)``, exactly zero for a constant ``v`` (no round-off residue)."""
    if v.size == 0 or v.min() == v.max():
        return np.zeros_like(v)
    return v - v.mean()


# --------------------------------------------------------------------------- 2016 challenge
@register("rmse", better="lower", unit="%",
          definition="100·‖M·x − M·y‖₂ / ‖M·y‖₂ over the whole volume (x masked first, no "
                     "demeaning; the official reference is zero outside M, so masking y changes "
                     "nothing there)",
          source=SRC_2016 + "; organisers' compute_rmse.m")
def rmse(ctx: EvalContext) -> float:
    x, y = masked(ctx)
    return relative_error_percent(x, y)


@register("hfen", better="lower", unit="%",
          definition="RMSE of LoG(M·x) against LoG(M·y): 100·‖LoG(M·x) − LoG(M·y)‖₂ / "
                     "‖LoG(M·y)‖₂; LoG = 15×15×15 kernel, σ = 1.5 voxels, unit-sum Gaussian × "
                     "(r²/σ⁴ − 3/σ²) shifted to zero sum, applied as correlation with zero "
                     "padding, same size (MATLAB imfilter default)",
          source=SRC_2016 + "; organisers' compute_hfen.m")
def hfen(ctx: EvalContext) -> float:
    # M·x and M·y vanish outside M, so LoG(·) vanishes beyond M's box grown by the kernel radius.
    box = mask_box(ctx, HFEN_SIZE // 2)
    x, y = (a[box] for a in masked(ctx))
    kernel = log_kernel()
    log_y, kfft = correlate_same_zero_pad(y, kernel)
    # LoG is linear: LoG(x) − LoG(y) = LoG(x − y), one transform fewer.
    log_d, _ = correlate_same_zero_pad(x - y, kernel, kfft)
    ny = norm2(log_y)
    if ny == 0:
        raise NotApplicable("the reference has no high-frequency content (LoG(y) = 0)")
    return 100.0 * norm2(log_d) / ny


def _rescale_2016(ctx: EvalContext, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    x, y = (a[box] for a in masked(ctx))
    m = ctx.mask[box]

    def affine(a, ref, what):
        lo, hi = float(ref[m].min()), float(ref[m].max())
        if hi == lo:
            raise NotApplicable(f"the {what} is constant inside the mask, so the 0-255 rescaling "
                                "of the 2016 SSIM is undefined")
        return (a - lo) * (SSIM2016_L / (hi - lo))

    if ctx.option("ssim2016_rescale") == "per_image":
        return affine(x, x, "reconstruction"), affine(y, y, "reference")
    return affine(x, y, "reference"), affine(y, y, "reference")


@register("ssim2016", better="higher", unit="",
          definition="qsmbench's RECONSTRUCTION of the 2016 challenge's SSIM -- the organisers' "
                     "script is unpublished, so the window, the rescaling and L = 255 below are our "
                     "choices, not the official definition: M·x and M·y mapped by the same affine "
                     "map v ↦ 255·(v − min_M y)/(max_M y − min_M y) (no clipping), then 3-D SSIM "
                     "with a 3×3×3 Gaussian window σ = 1.5 (normalised; extras ssim2016_halfwidth), "
                     "zero padding, K1 = 0.01, K2 = 0.03, L = 255, population (co)variances, "
                     "averaged over M.  A shared map keeps scale and offset errors visible, whereas "
                     "per-image rescaling (extras ssim2016_rescale='per_image') hides them.  Values "
                     "are not comparable with the published 2016 SSIM figures; prefer xsim",
          source=SRC_2016 + " (SSIM reported, script unpublished); 3-D SSIM of Wang et al., IEEE TIP "
                 "2004;13:600 (ssim_index3d); window, rescaling and L: qsmbench's reconstruction")
def ssim2016(ctx: EvalContext) -> float:
    """Our reconstruction of the 2016 challenge's SSIM (not the official definition).

    Langkammer et al. (2018) report an SSIM computed after rescaling the maps to an 8-bit-like
    range, but the organisers' script is not published: the 3x3x3 Gaussian window (sigma 1.5),
    the shared affine rescaling onto [0, 255] fixed by the reference's range in the mask, and
    ``L = 255`` are qsmbench's reading of that description (``ssim2016_rescale`` and
    ``ssim2016_halfwidth`` switch the alternatives).  Numbers are therefore not comparable with
    the published 2016 SSIM values; XSIM (:func:`xsim`) is the published, fully specified
    successor and the one to prefer.
    """
    radius = int(ctx.option("ssim2016_halfwidth"))
    box = mask_box(ctx, radius)
    xs, ys = _rescale_2016(ctx, box)
    c1 = (SSIM2016_K[0] * SSIM2016_L) ** 2
    c2 = (SSIM2016_K[1] * SSIM2016_L) ** 2
    smap = ssim_map(xs, ys, c1=c1, c2=c2, sigma=SSIM2016_SIGMA, radius=radius, mode="constant")
    return float(smap[ctx.mask[box]].mean())


def _roi_error(ctx: EvalContext, rois: tuple[int, ...], what: str) -> float:
    lab = require_labels(ctx, "qsm2016")
    counts, _, sum_y = label_stats(ctx)
    present = [r for r in rois if r < counts.size and counts[r] > 0]
    if not present:
        raise NotApplicable(f"the label map has no {what} ROI (labels {rois[0]}-{rois[-1]})")
    x, _ = masked(ctx)  # 2016: the submission is masked first; the ROIs use the reference as is
    if ctx.option("roi_error_mode") == "roi_means":
        errs = []
        for r in present:
            sel = lab == r
            errs.append(abs(float(x[sel].mean()) - sum_y[r] / counts[r]))
        return float(np.mean(errs))
    sel = np.isin(lab, present)
    return float(np.mean(np.abs(x[sel] - ctx.truth[sel])))


@register("roi_error_gm", better="lower", unit="ppm",
          definition="mean over all voxels with a grey-matter label (1-6 of the 2016 "
                     "evaluation_mask) of |M·x − y| (extras roi_error_mode='roi_means': mean over "
                     "the ROIs of |mean(M·x) − mean(y)|); needs label_scheme='qsm2016'",
          source=SRC_2016 + " (ROI analysis against χ33)",
          needs=("labels (qsm2016 scheme)",))
def roi_error_gm(ctx: EvalContext) -> float:
    return _roi_error(ctx, QSM2016_GM, "grey-matter")


@register("roi_error_wm", better="lower", unit="ppm",
          definition="mean over all voxels with a white-matter label (7-11 of the 2016 "
                     "evaluation_mask) of |M·x − y| (extras roi_error_mode='roi_means': mean over "
                     "the ROIs of |mean(M·x) − mean(y)|); needs label_scheme='qsm2016'",
          source=SRC_2016 + " (ROI analysis against χ33)",
          needs=("labels (qsm2016 scheme)",))
def roi_error_wm(ctx: EvalContext) -> float:
    return _roi_error(ctx, QSM2016_WM, "white-matter")


# --------------------------------------------------------------------------- XSIM
@register("xsim", better="higher", unit="",
          definition="SSIM of M·x and M·y in native ppm (no rescaling), K1 = 0.01, K2 = 0.001, "
                     "L = 1 ppm, Gaussian window 7×7×7 σ = 1.5 voxels (normalised), replicate "
                     "padding, population (co)variances; the SSIM map averaged over M "
                     "(extras xsim_mask='reference_support': over the non-zero voxels of M·y)",
          source=SRC_XSIM)
def xsim(ctx: EvalContext) -> float:
    box = mask_box(ctx, XSIM_RADIUS)
    x, y = (a[box] for a in masked(ctx))
    smap = ssim_map(x, y, c1=(XSIM_K[0] * XSIM_L) ** 2, c2=(XSIM_K[1] * XSIM_L) ** 2,
                    sigma=XSIM_SIGMA, radius=XSIM_RADIUS, mode="nearest")
    region = ctx.mask[box] if ctx.option("xsim_mask") == "mask" else y != 0
    if not region.any():
        raise NotApplicable("the reference is zero everywhere inside the mask, so its support is empty")
    return float(smap[region].mean())


# --------------------------------------------------------------------------- 2019 challenge (RC2)
@register("nrmse", better="lower", unit="%",
          definition="100·‖x̃ − ỹ‖₂ / ‖ỹ‖₂ over M, x̃ and ỹ demeaned inside M (M = the scoring mask)",
          source=SRC_RC2)
def nrmse(ctx: EvalContext) -> float:
    m = ctx.mask
    x = ctx.recon[m]
    y = ctx.truth[m]
    return relative_error_percent(_demean(x), _demean(y), "demeaned reference")


def _dnrmse(ctx: EvalContext, region: np.ndarray, what: str) -> float:
    if not region.any():
        raise NotApplicable(f"the {what} region is empty")
    xt = _demean(ctx.recon[region])
    yt = _demean(ctx.truth[region])
    yy = dot64(yt, yt)
    if yy == 0:
        raise NotApplicable(f"the reference is constant in the {what} region, so a relative "
                            "error is undefined")
    xy = dot64(xt, yt)
    if ctx.option("dnrmse_fit") == "recon_to_truth":
        xx = dot64(xt, xt)
        # A constant reconstruction cannot be corrected: the best fit is the constant mean.
        corrected = xt * (xy / xx) if xx > 0 else np.zeros_like(xt)
    else:
        if xy == 0:
            raise NotApplicable(f"the reconstruction is uncorrelated with the reference in the "
                                f"{what} region, so the fit x ≈ p·y has p = 0 and cannot be inverted")
        corrected = xt * (yy / xy)
    return relative_error_percent(corrected, yt, "demeaned reference")


_DNRMSE_FIT = ("x̃, ỹ demeaned inside R; least-squares fit ỹ ≈ a·x̃ + b, score "
               "100·‖a·x̃ + b − ỹ‖₂/‖ỹ‖₂ over R (extras dnrmse_fit='truth_to_recon': fit "
               "x̃ ≈ p·ỹ + q, score (x̃ − q)/p)")


@register("dnrmse", better="lower", unit="%",
          definition="NRMSE after the best linear correction: R = M; " + _DNRMSE_FIT,
          source=SRC_RC2)
def dnrmse(ctx: EvalContext) -> float:
    return _dnrmse(ctx, ctx.mask, "mask")


def _region(ctx: EvalContext, key: str, labels: Sequence[int], morph: Callable[[np.ndarray], np.ndarray]
            ) -> np.ndarray:
    """A regional mask in the official order: ``morph(M ∩ (labels in ``labels``))``.

    The RC2 usage script selects each region inside the scoring mask first and then erodes or
    dilates it; the dilated blood region is *not* re-masked, so it may include a one-voxel shell
    outside ``M`` (where the metric sees the unmasked maps).
    """
    lab = require_labels(ctx, "rc2")
    return ctx.cached(key, lambda: morph(np.isin(lab, labels) & ctx.mask))


@register("dnrmse_tissue", better="lower", unit="%",
          definition="dNRMSE in R = erode(M ∩ labels 7-9: thalamus, WM, GM) by one voxel with a "
                     "3×3×3 cube (the official order: mask first, then erode); " + _DNRMSE_FIT,
          source=SRC_RC2, needs=("labels (rc2 scheme)",))
def dnrmse_tissue(ctx: EvalContext) -> float:
    region = _region(ctx, "region_tissue", RC2_TISSUE, erode)
    return _dnrmse(ctx, region, "tissue (labels 7-9 in M, eroded)")


@register("dnrmse_blood", better="lower", unit="%",
          definition="dNRMSE in R = dilate(M ∩ label 11: blood) by one voxel with a 3×3×3 cube, "
                     "not re-masked (the official order: the shell may leave M, where the "
                     "unmasked maps are used); " + _DNRMSE_FIT,
          source=SRC_RC2, needs=("labels (rc2 scheme)",))
def dnrmse_blood(ctx: EvalContext) -> float:
    region = _region(ctx, "region_blood", (RC2_BLOOD,), dilate)
    return _dnrmse(ctx, region, "blood (label 11 in M, dilated)")


@register("dnrmse_dgm", better="lower", unit="%",
          definition="dNRMSE in R = erode(M ∩ labels 1-6: deep grey-matter nuclei, their union) "
                     "by one voxel with a 3×3×3 cube (the official order); " + _DNRMSE_FIT,
          source=SRC_RC2, needs=("labels (rc2 scheme)",))
def dnrmse_dgm(ctx: EvalContext) -> float:
    region = _region(ctx, "region_dgm", RC2_DGM, erode)
    return _dnrmse(ctx, region, "deep grey matter (labels 1-6 in M, eroded)")


@register("slope_error", better="lower", unit="",
          definition="|1 − s|, s the least-squares slope (with intercept) of the per-label means "
                     "of x against those of y over labels 1-6 (all voxels of each label, "
                     "unmasked, no erosion); labels absent from the map are skipped, at least two "
                     "are needed",
          source=SRC_RC2, needs=("labels (rc2 scheme)",))
def slope_error(ctx: EvalContext) -> float:
    require_labels(ctx, "rc2")
    counts, sum_x, sum_y = label_stats(ctx)
    present = [r for r in RC2_DGM if r < counts.size and counts[r] > 0]
    if len(present) < 2:
        raise NotApplicable(f"needs at least two deep grey-matter labels (1-6); the map has "
                            f"{present or 'none'}")
    mx = sum_x[present] / counts[present]
    my = sum_y[present] / counts[present]
    dy = my - my.mean()
    vy = dot64(dy, dy)
    if vy == 0:
        raise NotApplicable("the reference has the same mean in every deep grey-matter label, so "
                            "the slope is undefined")
    return abs(1.0 - dot64(dy, mx - mx.mean()) / vy)


def _calc_geometry(ctx: EvalContext):
    """Crop of the B11 box and the B3 / B7 masks inside it (see :func:`calc_streak`)."""
    lab = require_labels(ctx, "rc2")

    def compute():
        calc = lab == RC2_CALCIFICATION
        if not calc.any():
            raise NotApplicable(f"no calcification label ({RC2_CALCIFICATION}) in the label map")
        lo, hi = [], []
        for axis in range(3):
            hit = np.flatnonzero(calc.any(axis=tuple(a for a in range(3) if a != axis)))
            lo.append(int(hit[0]))
            hi.append(int(hit[-1]))
        g3, g7 = CALC_GROW[0], CALC_GROW[0] + CALC_GROW[1]
        g11 = g7 + CALC_GROW[2]
        crop = tuple(slice(max(a - g11, 0), min(b + g11 + 1, n))
                     for a, b, n in zip(lo, hi, lab.shape, strict=True))
        shape = tuple(s.stop - s.start for s in crop)

        def box(grow):
            out = np.zeros(shape, dtype=bool)
            out[tuple(slice(max(a - grow, 0) - s.start, min(b + grow + 1, n) - s.start)
                      for a, b, n, s in zip(lo, hi, lab.shape, crop, strict=True))] = True
            return out

        return crop, box(g3), box(g7)

    return ctx.cached("calc_geometry", compute)


def calc_threshold(shell: np.ndarray) -> float:
    """First t of 0, −0.01, …, −1.5 ppm with no shell voxel below t.

    When even −1.5 ppm has shell voxels below it, the search ends at −1.5 ppm (the last
    threshold, where a loop over the list without a break stops).
    """
    low = float(shell.min()) if shell.size else math.inf
    ok = CALC_THRESHOLDS <= low
    return float(CALC_THRESHOLDS[int(np.argmax(ok))] if ok.any() else CALC_THRESHOLDS[-1])


def _calc_segment(img: np.ndarray, b3: np.ndarray) -> tuple[float, np.ndarray]:
    t = calc_threshold(img[~b3])
    return t, b3 & (img < t)


def _calc_recon(ctx: EvalContext):
    crop, b3, b7 = _calc_geometry(ctx)

    def compute():
        x, y = masked(ctx)
        xc, yc = x[crop], y[crop]
        t, s = _calc_segment(xc, b3)
        return xc, yc, t, s

    return ctx.cached("calc_recon", compute), b3, b7


@register("calc_streak", better="lower", unit="",
          definition="B3 = bounding box of label 16 grown by 3 voxels, B7 = B3 grown by 4, "
                     "B11 = B7 grown by 4 (clipped to the volume); on M·x and M·y: t = first of "
                     "0, −0.01, …, −1.5 ppm with no voxel of x in B11∖B3 below t (−1.5 if none); "
                     "S = voxels of B3 with x < t; least-squares fit x ≈ p1·y + p2 on B7∖B3; "
                     "CalcStreak = std(x − p1·y − p2 over B7∖B3, N−1) / |mean(x over S)|",
          source=SRC_RC2 + " (Sim2 calcification)", needs=("labels (rc2 scheme)", "calcification (label 16)"))
def calc_streak(ctx: EvalContext) -> float:
    (xc, yc, t, s), b3, b7 = _calc_recon(ctx)
    if not s.any():
        raise NotApplicable(f"the reconstruction has no voxel below t = {t:g} ppm in B3, so the "
                            "calcification is not depicted and CalcStreak (÷ its mean) is undefined")
    ring = b7 & ~b3
    if np.count_nonzero(ring) < 3:
        raise NotApplicable("B7∖B3 has fewer than 3 voxels inside the volume; the streak fit is undefined")
    xr, yr = xc[ring], yc[ring]
    design = np.stack([yr, np.ones_like(yr)], axis=1)
    coef, *_ = np.linalg.lstsq(design, xr, rcond=None)
    residual = xr - design @ coef
    return float(np.std(residual, ddof=1) / abs(xc[s].mean()))


@register("calc_moment_error", better="lower", unit="ppm·voxel",
          definition="|moment_GT − moment|, moment = |S|·mean(x over S) = Σ_S x (0 when S is "
                     "empty), S as in calc_streak; moment_GT = extras calc_moment_gt (RC2's "
                     "CalcMoment) or else Σ of y over S_y, S_y found from M·y by the same threshold "
                     "rule",
          source=SRC_RC2 + " (Sim2 calcification)",
          needs=("labels (rc2 scheme)", "calcification (label 16)", "calc_moment_gt (optional)"))
def calc_moment_error(ctx: EvalContext) -> float:
    (xc, yc, _t, s), b3, _b7 = _calc_recon(ctx)
    moment = float(xc[s].sum())
    gt = ctx.option("calc_moment_gt")
    if gt is None:
        _ty, sy = _calc_segment(yc, b3)
        gt = float(yc[sy].sum())
    return abs(float(gt) - moment)


# --------------------------------------------------------------------------- general
@register("pearson", better="higher", unit="",
          definition="Pearson correlation coefficient of x and y over the voxels of M",
          source="standard; reported in both challenges' overviews")
def pearson(ctx: EvalContext) -> float:
    x = ctx.recon[ctx.mask]
    y = ctx.truth[ctx.mask]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        raise NotApplicable("correlation is undefined for a constant image inside the mask")
    return float(np.corrcoef(x, y)[0, 1])


@register("psnr", better="higher", unit="dB",
          definition="10·log10(R² / MSE), MSE = mean over M of (x − y)², R = max_M(y) − min_M(y)",
          source="standard PSNR, peak taken as the reference's dynamic range inside M "
                 "(as in the QSM deep-learning literature, e.g. Yoon et al., NeuroImage 2018)")
def psnr(ctx: EvalContext) -> float:
    y = ctx.truth[ctx.mask]
    mse = float(np.mean((ctx.recon[ctx.mask] - y) ** 2))
    peak = float(np.ptp(y))
    if peak == 0:
        raise NotApplicable("the reference is constant inside the mask, so PSNR has no peak")
    if mse == 0:
        raise NotApplicable("the reconstruction equals the reference, so PSNR is infinite")
    return 10.0 * math.log10(peak * peak / mse)
