"""Controlled perturbations of a volume with a ground truth: noise, resolution, B0 orientation.

Every perturbation is a pure function of (volume, parameters, seed) and avoids the "inverse
crime" of simulating the field with the operator a reconstruction inverts (one documented
exception: the orientation perturbation of a dataset that is not the embedded phantom).

Perturbation ids (slugs)
------------------------
A perturbation is a list of *components*, at most one of each kind, applied in the fixed order
orientation -> resolution -> noise (the noise of an acquisition comes last, on the final grid).
Its id joins the components' slugs with ``+`` in that order:

=================  ==============================  =============================================
kind               component slug                  parameters
=================  ==============================  =============================================
(none)             ``none``                        the unperturbed volume
orientation        ``orient-30`` /                 ``theta_deg`` (0-90), ``axis`` (default
                   ``orient-30-axis0x1x0``         ``[1, 0, 0]``; negative numbers as ``m1``)
resolution         ``res-3x3x3``, ``res-1x1x2``    ``voxel_size_mm``, the target voxel size (mm)
noise              ``noise-snr20-seed1``           ``snr`` (> 0), ``seed_index`` (1, 2, ...)
=================  ==============================  =============================================

e.g. ``orient-30+noise-snr20-seed1``.  Numbers are written in their shortest decimal form
(``20``, ``12.5``, ``1.0625``).  :func:`parse_slug` and :func:`slug` are inverse to each other; a
non-canonical spelling (``noise-snr20.0-seed1``, components out of order) is an error that gives
the canonical one.  Config files describe sweeps with :func:`expand_item`.

Noise (:func:`add_noise`)
-------------------------
Complex Gaussian noise on the signal ``s = magnitude * exp(i phi)``, ``phi = ppm_to_rad(field,
B0, TE)`` (the phase of the *local* field at the dataset's TE and B0): real and imaginary parts
each get standard deviation ``sigma = max(magnitude in mask) / SNR`` (peak SNR), so the phase
noise is ``sigma / magnitude`` rad at high SNR.  The new field is the phase of the noisy signal
converted back to ppm, and the new magnitude its modulus.  Without a magnitude the signal
magnitude is 1 inside the mask (and the output has no magnitude either, so a method never gets
an image made of pure noise).  Noise is added inside the mask only (the local field is only
defined there, after background removal); outside, field and magnitude are left unchanged.

*Phase wrapping.*  The local-field phase can exceed pi (the phantom's calcification reaches
about 5 rad at 3 T and TE = 25 ms), so the noisy phase is taken on the 2 pi branch nearest the
noise-free phase, ``phi + angle(noisy * exp(-i phi))``: the result of an ideal phase unwrapper.
No unwrapping errors are simulated, which is optimistic at very low SNR (phase noise near pi).
The largest |phi| in the mask is recorded in ``meta.json``.

The random generator is seeded with :func:`qsmbench.runner.derive_seed` of (dataset, slug), so
every (dataset, perturbation) has its own reproducible noise; the seed is recorded.

Resolution (:func:`change_resolution`)
--------------------------------------
The target voxel size must be at least the source's along every axis.  The physical field of
view is kept: the new matrix is ``round(n * v / v_target)`` per axis and the actual voxel size
``n * v / n_new`` (recorded beside the requested one; they differ when the FOV is not a multiple,
e.g. 160 mm / 3 mm).  New voxel ``j`` is centred on old voxel coordinate ``j * n / n_new`` (the
sample layout of DFT resampling); the affine's voxel axes are scaled and its origin kept.

*Truth and field* are brought to the new grid by k-space cropping (:func:`crop_kspace`: mean
kept, Nyquist planes of even axes dropped as in :mod:`qsmbench.phantom`), so the field is never
simulated on the target grid (the phantom's was simulated on a grid twice as fine as the dataset,
then cropped twice).  Before cropping, the field outside the old mask is replaced by the
zero-padded forward field of the (first) reference chi on the source grid: the true local field
does not stop at the mask, and cropping a masked field rings into the new mask.  On the 80x96x80
2 mm phantom, cropping the masked field deviates from cropping the phantom's unmasked simulated
field by 2.5-3.0 % inside the new mask (3, 4 and 2x2x4 mm), with this extrapolation by 0.4-0.8 %.
Only voxels outside the mask use the source-grid operator.  Field and truth are then multiplied
by the new mask.

*Mask* (and scoring mask): the fraction of each new voxel's footprint covered by the old mask,
thresholded at :data:`MASK_THRESHOLD` = 0.5 ("more than half inside", the analogue of the
phantom's rasterisation, which keeps voxels whose centre is in the brain).  A stricter threshold
such as 0.9 erodes the mask and leaves susceptibility sources in the partial-volume rim outside
it, whose field no chi inside the mask explains.  On the same phantom the cropped field differs
from the zero-padded field of the cropped, masked truth by 1.4 % (3 mm), 2.1 % (2x2x4 mm) and
2.8 % (4 mm) inside a 0.5 mask (0.9 % on the 2 mm source grid), but by 2.3 %, 2.5 % and 3.6 %
inside a 0.9 mask, which also loses 7-9 % of the brain volume (the 0.5 mask keeps it within
0.2 %).  *Labels*: the label covering most of the footprint (ties: the smaller label).
*Magnitude*: the footprint average (partial volume).  A ``calc_moment_gt`` in
``meta["metric_extras"]`` (RC2's moment, ppm·voxel of the source grid) is dropped, so the metric
takes the moment from the cropped truth.

Orientation (:func:`tilt_b0`)
-----------------------------
B0 is rotated by ``theta_deg`` about ``axis`` (array coordinates, Rodrigues' formula,
:func:`qsmbench.physics.tilted_b0_dir`), starting from the dataset's own ``b0_dir``.  The truth
is unchanged; methods receive the tilted ``b0_dir``.  For the embedded phantom (any model, and the
BrainWeb phantoms) the whole phantom is regenerated with its own parameters (model, seed, ...
from ``meta.json``) and the tilted direction -- the same subject, so the field is again simulated
on the 2x finer grid and cropped (no inverse crime; theta = 0 reproduces the dataset exactly; the
regenerated chi is checked against the dataset's).  Any other dataset
with a truth is re-simulated from its reference chi on the dataset grid with zero padding
(``pad_factor`` 2, D(0) = 0): this reuses the discrete forward operator, a milder inverse crime,
and ``meta.json`` says so.  Include ``0`` in the angles for such datasets so that the
orientation sweep has a baseline simulated the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import physics
from .errors import InputError
from .volume import Volume

#: Kinds in their order of application (and of the slug's components).
KINDS = ("orientation", "resolution", "noise")
#: Kinds whose result cannot be scored without a ground-truth chi (noise needs only the field).
NEEDS_TRUTH = frozenset({"orientation", "resolution"})
#: The default rotation axis of the orientation perturbation (array coordinates).
DEFAULT_AXIS = (1.0, 0.0, 0.0)
#: Mask threshold of the resolution perturbation: fraction of a new voxel inside the old mask.
MASK_THRESHOLD = 0.5
#: Zero padding of the non-phantom orientation re-simulation.
RESIMULATION_PAD_FACTOR = 2.0
#: Angles allowed by the orientation perturbation, degrees.
ANGLE_RANGE_DEG = (0.0, 90.0)

_NUM = r"\d+(?:\.\d+)?"
_SNUM = r"m?\d+(?:\.\d+)?"
_PATTERNS = {
    "noise": re.compile(rf"noise-snr(?P<snr>{_NUM})-seed(?P<seed>\d+)"),
    "resolution": re.compile(rf"res-(?P<x>{_NUM})x(?P<y>{_NUM})x(?P<z>{_NUM})"),
    "orientation": re.compile(rf"orient-(?P<theta>{_NUM})(?:-axis(?P<ax>{_SNUM})x(?P<ay>{_SNUM})x(?P<az>{_SNUM}))?"),
}


# --------------------------------------------------------------------------- slugs
def format_number(x: float) -> str:
    """Shortest decimal spelling without exponent: 20.0 -> '20', 12.5 -> '12.5'; '-' as 'm'."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")
    text = np.format_float_positional(x, trim="-")
    return text.replace("-", "m")


def _number(text: str) -> float:
    return float(text.replace("m", "-"))


def component(kind: str, **params: Any) -> dict[str, Any]:
    """A validated component dict: ``{"kind": ..., parameters}`` with canonical number types.

    ``noise``: ``snr`` > 0, ``seed_index`` >= 1; ``resolution``: ``voxel_size_mm`` (one number =
    isotropic, or three), each > 0; ``orientation``: ``theta_deg`` in [0, 90], ``axis`` (three
    numbers, not zero; default ``[1, 0, 0]``), optional ``reference`` (name of the reference chi
    a non-phantom dataset is re-simulated from).  Raises :class:`ValueError` with a sentence.
    """
    required = {"noise": "snr", "resolution": "voxel_size_mm", "orientation": "theta_deg"}.get(kind)
    if required is not None and required not in params:
        raise ValueError(f"{kind}: the parameter {required!r} is missing")
    if kind == "noise":
        snr = float(params.pop("snr"))
        seed_index = params.pop("seed_index", 1)
        if not (math.isfinite(snr) and snr > 0):
            raise ValueError(f"noise: snr must be a positive number, got {snr:g}")
        if isinstance(seed_index, bool) or int(seed_index) != seed_index or seed_index < 1:
            raise ValueError(f"noise: seed index must be an integer >= 1, got {seed_index!r}")
        out = {"kind": kind, "snr": snr, "seed_index": int(seed_index)}
    elif kind == "resolution":
        vs = params.pop("voxel_size_mm")
        vs = [vs] * 3 if isinstance(vs, int | float) else list(vs)
        if len(vs) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in vs):
            raise ValueError(f"resolution: voxel_size_mm must be one or three positive numbers (mm), got {vs!r}")
        out = {"kind": kind, "voxel_size_mm": [float(v) for v in vs]}
    elif kind == "orientation":
        theta = float(params.pop("theta_deg"))
        axis = [float(a) for a in params.pop("axis", DEFAULT_AXIS)]
        lo, hi = ANGLE_RANGE_DEG
        if not (math.isfinite(theta) and lo <= theta <= hi):
            raise ValueError(f"orientation: angle must be between {lo:g} and {hi:g} degrees, got {theta:g}")
        if len(axis) != 3 or not all(math.isfinite(a) for a in axis) or not any(axis):
            raise ValueError(f"orientation: axis must be three numbers, not all zero, got {axis!r}")
        out = {"kind": kind, "theta_deg": theta, "axis": axis}
        reference = params.pop("reference", None)
        if reference is not None:
            out["reference"] = str(reference)
    else:
        raise ValueError(f"unknown perturbation kind {kind!r}; known: {', '.join(KINDS)}")
    if params:
        raise ValueError(f"{kind}: unknown parameter(s) {', '.join(sorted(params))}")
    return out


def component_slug(c: Mapping[str, Any]) -> str:
    """The slug of one component (see the module docstring)."""
    kind = c["kind"]
    if kind == "noise":
        return f"noise-snr{format_number(c['snr'])}-seed{int(c['seed_index'])}"
    if kind == "resolution":
        return "res-" + "x".join(format_number(v) for v in c["voxel_size_mm"])
    if kind == "orientation":
        text = f"orient-{format_number(c['theta_deg'])}"
        if tuple(float(a) for a in c["axis"]) != DEFAULT_AXIS:
            text += "-axis" + "x".join(format_number(a) for a in c["axis"])
        return text
    raise ValueError(f"unknown perturbation kind {kind!r}; known: {', '.join(KINDS)}")


def canonical(components: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validated components in the order of application; at most one of each kind."""
    out = []
    for c in components:
        params = {k: v for k, v in c.items() if k != "kind"}
        out.append(component(c["kind"], **params))
    kinds = [c["kind"] for c in out]
    dup = sorted({k for k in kinds if kinds.count(k) > 1})
    if dup:
        raise ValueError(f"a perturbation combines at most one component of each kind; {', '.join(dup)} repeated")
    return sorted(out, key=lambda c: KINDS.index(c["kind"]))


def slug(components: Sequence[Mapping[str, Any]]) -> str:
    """The perturbation id of a list of components (``none`` for the empty list)."""
    comps = canonical(components)
    return "+".join(component_slug(c) for c in comps) if comps else "none"


def parse_slug(text: str) -> list[dict[str, Any]]:
    """Components of a perturbation id; ``[]`` for ``none``.  :class:`ValueError` when malformed."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"a perturbation id must be a non-empty string, got {text!r}")
    if text == "none":
        return []
    comps = []
    for part in text.split("+"):
        for kind, pattern in _PATTERNS.items():
            m = pattern.fullmatch(part)
            if m is None:
                continue
            g = m.groupdict()
            if kind == "noise":
                comps.append(component(kind, snr=float(g["snr"]), seed_index=int(g["seed"])))
            elif kind == "resolution":
                comps.append(component(kind, voxel_size_mm=[float(g[a]) for a in "xyz"]))
            else:
                axis = [_number(g[a]) for a in ("ax", "ay", "az")] if g["ax"] is not None else DEFAULT_AXIS
                comps.append(component(kind, theta_deg=float(g["theta"]), axis=axis))
            break
        else:
            raise ValueError(f"{part!r} is not a perturbation id; expected none, noise-snr<SNR>-seed<N>, "
                             "res-<X>x<Y>x<Z> or orient-<DEGREES>[-axis<X>x<Y>x<Z>], joined by '+'")
    comps = canonical(comps)
    if slug(comps) != text:
        raise ValueError(f"{text!r} is not written canonically; write {slug(comps)!r}")
    return comps


def axis_name(perturbation: str | Sequence[Mapping[str, Any]]) -> str:
    """``none``, ``noise``, ``resolution``, ``orientation`` or a combination like ``orientation+noise``."""
    comps = parse_slug(perturbation) if isinstance(perturbation, str) else canonical(perturbation)
    return "+".join(c["kind"] for c in comps) if comps else "none"


def level_id(perturbation: str) -> str:
    """The id without noise seed indices: the perturbation *level* that seeds repeat."""
    return re.sub(r"-seed\d+", "", perturbation)


def level_label(perturbation: str | Sequence[Mapping[str, Any]]) -> str:
    """A human label of the level: ``SNR 20``, ``3×3×3 mm``, ``30°``, joined by `` · ``."""
    comps = parse_slug(perturbation) if isinstance(perturbation, str) else canonical(perturbation)
    if not comps:
        return "none"
    parts = []
    for c in comps:
        if c["kind"] == "noise":
            parts.append(f"SNR {format_number(c['snr'])}")
        elif c["kind"] == "resolution":
            parts.append("×".join(format_number(v) for v in c["voxel_size_mm"]) + " mm")
        else:
            text = f"{format_number(c['theta_deg'])}°"
            if tuple(c["axis"]) != DEFAULT_AXIS:
                text += " about (" + ", ".join(f"{a:g}" for a in c["axis"]) + ")"
            parts.append(text)
    return " · ".join(parts)


def severity(perturbation: str | Sequence[Mapping[str, Any]]) -> tuple:
    """A sort key: more degraded levels sort later (1/SNR, voxel volume, angle), per component."""
    comps = parse_slug(perturbation) if isinstance(perturbation, str) else canonical(perturbation)
    key: list[float] = []
    for c in comps:
        if c["kind"] == "noise":
            key += [1.0 / c["snr"], c["seed_index"]]
        elif c["kind"] == "resolution":
            key += [float(np.prod(c["voxel_size_mm"])), *c["voxel_size_mm"]]
        else:
            key += [c["theta_deg"], *c["axis"]]
    return tuple(key)


def matches(pattern: str, perturbation: str) -> bool:
    """Whether a method run's filter entry selects a perturbation id.

    An entry is an id (``noise-snr20-seed1``), an axis name (``noise``, ``orientation+noise``:
    exactly that combination of kinds) or a shell pattern over ids (``noise-snr20-*``, ``res-*``).
    """
    if pattern == perturbation or fnmatch.fnmatchcase(perturbation, pattern):
        return True
    return pattern == axis_name(perturbation)


# --------------------------------------------------------------------------- config items
def _values(spec: Mapping[str, Any], key: str) -> list:
    value = spec[key]
    return list(value) if isinstance(value, list | tuple) else [value]


def _expand_axis(kind: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{kind}: expected a mapping of parameters, got {spec!r}")
    spec = dict(spec)
    if kind == "noise":
        seeds = spec.pop("seeds", 1)
        seed_list = list(range(1, int(seeds) + 1)) if isinstance(seeds, int) and not isinstance(seeds, bool) \
            else list(seeds)
        if not seed_list:
            raise ValueError("noise: seeds must be a positive count or a non-empty list of indices")
        out = [component(kind, snr=s, seed_index=k) for s in _values(spec, "snr") for k in seed_list]
        spec.pop("snr")
    elif kind == "resolution":
        sizes = spec.pop("voxel_size_mm")
        sizes = sizes if isinstance(sizes, list | tuple) else [sizes]
        out = [component(kind, voxel_size_mm=v) for v in sizes]
    elif kind == "orientation":
        axis = spec.pop("axis", DEFAULT_AXIS)
        extra = {"reference": spec.pop("reference")} if "reference" in spec else {}
        out = [component(kind, theta_deg=t, axis=axis, **extra) for t in _values(spec, "angles_deg")]
        spec.pop("angles_deg")
    else:
        raise ValueError(f"unknown perturbation kind {kind!r}; known: {', '.join(KINDS)}")
    if spec:
        raise ValueError(f"{kind}: unknown key(s) {', '.join(sorted(spec))}")
    return out


def expand_item(item: str | Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """The perturbations (lists of components) described by one entry of the config's list.

    Entries: ``none``; an id (``orient-30+noise-snr20-seed1``); ``{noise: {snr: [...], seeds: N}}``
    (``seeds``: a count, giving seed indices 1..N, or a list of indices); ``{resolution:
    {voxel_size_mm: [3, [2, 2, 4]]}}`` (a number is isotropic); ``{orientation: {angles_deg:
    [...], axis: [1, 0, 0], reference: NAME}}``; ``{combine: {KIND: {...}, KIND: {...}}}``, the
    Cartesian product of its axes.  A ``datasets`` key (a list of dataset ids) is read by
    :mod:`qsmbench.config`, not here.
    """
    if isinstance(item, str):
        return [parse_slug(item)]
    if not isinstance(item, Mapping):
        raise ValueError(f"a perturbation entry must be an id or a mapping, got {item!r}")
    kinds = [k for k in item if k != "datasets"]
    if len(kinds) != 1:
        raise ValueError("a perturbation entry must have exactly one of noise, resolution, orientation, combine; "
                         f"got {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    if kind != "combine":
        return [[c] for c in _expand_axis(kind, item[kind])]
    spec = item["combine"]
    if not isinstance(spec, Mapping) or len(spec) < 2:
        raise ValueError("combine: expected a mapping of at least two kinds, e.g. {orientation: ..., noise: ...}")
    per_kind = [_expand_axis(k, spec[k]) for k in sorted(spec, key=lambda k: KINDS.index(k) if k in KINDS else -1)]
    return [canonical(list(combo)) for combo in itertools.product(*per_kind)]


# --------------------------------------------------------------------------- k-space and footprints
def crop_kspace(x: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """``x`` on a coarser grid of the same field of view by k-space cropping.

    :func:`qsmbench.physics.kspace_resample` (mean kept), then the Nyquist planes of even axes
    dropped as the phantom does (so an oblique dipole kernel stays consistent there).  Computed
    in float64.
    """
    return physics.kspace_resample(np.asarray(x, dtype=np.float64), new_shape, drop_nyquist=True)


def footprint_weights(n_old: int, n_new: int) -> np.ndarray:
    """``(n_new, n_old)`` matrix: fraction of new voxel ``j``'s footprint lying in old voxel ``i``.

    New voxel ``j`` is centred on old coordinate ``j * n_old / n_new`` (DFT resampling layout)
    with width ``n_old / n_new`` old voxels; old voxel ``i`` spans ``[i - 1/2, i + 1/2]``.  The grid
    is periodic (as the DFT), so edge footprints wrap.  Rows sum to 1.
    """
    r = n_old / n_new
    w = np.zeros((n_new, n_old))
    for j in range(n_new):
        lo, hi = j * r - r / 2, j * r + r / 2
        for i in range(math.floor(lo + 0.5), math.ceil(hi - 0.5) + 1):
            overlap = min(hi, i + 0.5) - max(lo, i - 0.5)
            if overlap > 1e-12:
                w[j, i % n_old] += overlap / r
    return w


def footprint_average(x: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Average of ``x`` over each new voxel's footprint (separable, exact partial volume)."""
    out = np.asarray(x, dtype=np.float64)
    for ax, n_new in enumerate(new_shape):
        w = footprint_weights(out.shape[ax], int(n_new))
        out = np.moveaxis(np.tensordot(w, np.moveaxis(out, ax, 0), axes=(1, 0)), 0, ax)
    return out


def majority_labels(labels: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """The label covering the largest part of each new voxel's footprint (ties: smaller label)."""
    best = None
    best_frac = None
    for value in np.unique(labels):
        frac = footprint_average(labels == value, new_shape)
        if best is None:
            best = np.full(frac.shape, value, dtype=labels.dtype)
            best_frac = frac
            continue
        better = frac > best_frac + 1e-9
        best[better] = value
        best_frac = np.where(better, frac, best_frac)
    return best


# --------------------------------------------------------------------------- the perturbations
def _record(vol: Volume, entry: Mapping[str, Any]) -> dict[str, Any]:
    meta = copy.deepcopy(vol.meta)
    pert = dict(meta.get("perturbation") or {})
    pert["components"] = [*pert.get("components", []), dict(entry)]
    meta["perturbation"] = pert
    return meta


def add_noise(vol: Volume, snr: float, seed: int) -> Volume:
    """Complex Gaussian noise at peak SNR ``snr`` (see the module docstring); seeded by ``seed``."""
    snr = float(snr)
    if not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"noise: snr must be a positive number, got {snr:g}")
    mask = vol.mask
    has_magnitude = vol.magnitude is not None
    magnitude = np.abs(vol.magnitude.astype(np.float64)) if has_magnitude else mask.astype(np.float64)
    peak = float(magnitude[mask].max())
    if not peak > 0:
        raise InputError(f"the magnitude of volume '{vol.name}' is zero everywhere in the mask: "
                         "no noise level can be set relative to it")
    sigma = peak / snr
    rng = np.random.default_rng(int(seed))
    noise = rng.standard_normal((2, *vol.shape))
    phase = physics.ppm_to_rad(vol.field_ppm.astype(np.float64), vol.b0_tesla, vol.te_s)
    carrier = np.exp(1j * phase)
    noisy = magnitude * carrier + sigma * (noise[0] + 1j * noise[1])
    del noise
    # Ideal unwrapping: the noisy phase on the 2 pi branch nearest the noise-free phase.
    dphi = np.angle(noisy * np.conj(carrier))
    field = np.where(mask, vol.field_ppm + physics.rad_to_ppm(dphi, vol.b0_tesla, vol.te_s), vol.field_ppm)
    new_magnitude = np.where(mask, np.abs(noisy), vol.magnitude).astype(np.float32) if has_magnitude else None
    entry = {
        "kind": "noise", "snr": snr, "rng_seed": int(seed), "sigma": sigma,
        "sigma_definition": "standard deviation of each of the real and imaginary parts; "
                            "sigma = max(magnitude in mask) / snr",
        "magnitude": "dataset" if has_magnitude else "uniform, 1 inside the mask (the dataset has none; "
                                                     "the output has none either)",
        "region": "inside the mask; field and magnitude outside it unchanged",
        "phase_wrapping": "noisy phase taken on the 2 pi branch nearest the noise-free phase (ideal unwrapping)",
        "max_abs_phase_rad": float(np.abs(phase[mask]).max()),
        "field_noise_sd_ppm_at_peak_magnitude": float(physics.rad_to_ppm(1.0 / snr, vol.b0_tesla, vol.te_s)),
    }
    return dataclasses.replace(vol, field_ppm=field.astype(np.float32), magnitude=new_magnitude,
                               meta=_record(vol, entry))


def resolution_grid(shape: Sequence[int], voxel_size_mm: Sequence[float],
                    target_mm: Sequence[float]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The matrix and actual voxel size of ``target_mm`` on the field of view ``shape * voxel_size_mm``.

    Raises :class:`ValueError` when the target is finer than the source along an axis (a resolution
    perturbation only coarsens) or leaves fewer than 4 voxels along an axis.
    """
    target = physics._as_voxel_size(target_mm)
    source = physics._as_voxel_size(voxel_size_mm)
    names = ("first", "second", "third")
    for ax in range(3):
        if target[ax] < source[ax] * (1 - 1e-6):
            raise ValueError(f"resolution: target voxel size {format_number(target[ax])} mm along the {names[ax]} "
                             f"axis is finer than the source's {format_number(source[ax])} mm; a resolution "
                             "perturbation can only coarsen")
    new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, source, target))
    if min(new_shape) < 4:
        raise ValueError(f"resolution: {'x'.join(map(format_number, target))} mm leaves a {new_shape} matrix "
                         f"on a {tuple(int(n) for n in shape)} grid; at least 4 voxels per axis are needed")
    actual = tuple(n * s / m for n, s, m in zip(shape, source, new_shape))
    return new_shape, actual  # type: ignore[return-value]


def change_resolution(vol: Volume, voxel_size_mm: Sequence[float] | float, *,
                      mask_threshold: float = MASK_THRESHOLD) -> Volume:
    """``vol`` on a coarser grid of the same field of view (see the module docstring)."""
    target = [float(voxel_size_mm)] * 3 if isinstance(voxel_size_mm, int | float) else list(voxel_size_mm)
    try:
        new_shape, actual = resolution_grid(vol.shape, vol.voxel_size_mm, target)
    except ValueError as exc:
        raise InputError(f"volume '{vol.name}': {exc}") from None
    mask = footprint_average(vol.mask, new_shape) > mask_threshold
    if not mask.any():
        raise InputError(f"volume '{vol.name}': no voxel of the {new_shape} grid lies more than "
                         f"{mask_threshold:g} inside the mask")

    def crop(x):
        return (crop_kspace(x, new_shape) * mask).astype(np.float32)

    field = vol.field_ppm
    fill = None
    if vol.references:
        # The local field does not stop at the mask: a masked field has a step there whose k-space
        # truncation rings into the new mask.  Outside the mask, use the field of the truth instead.
        fill = sorted(vol.references)[0]
        outside = physics.forward_field(vol.references[fill].astype(np.float64), vol.voxel_size_mm, vol.b0_dir,
                                        d0=0.0, pad_factor=RESIMULATION_PAD_FACTOR)
        field = np.where(vol.mask, field, outside)

    scoring = None
    if vol.scoring_mask is not None:
        scoring = footprint_average(vol.scoring_mask, new_shape) > mask_threshold
        if not scoring.any():
            raise InputError(f"volume '{vol.name}': the scoring mask vanishes on the {new_shape} grid")
    ratio = np.array([n / m for n, m in zip(vol.shape, new_shape)])
    affine = np.asarray(vol.affine, dtype=float) @ np.diag([*ratio, 1.0])
    entry = {
        "kind": "resolution", "voxel_size_mm_requested": [float(t) for t in target],
        "voxel_size_mm": list(actual), "shape": list(new_shape), "source_shape": list(vol.shape),
        "source_voxel_size_mm": list(vol.voxel_size_mm),
        "method": "k-space cropping of truth and field (mean kept, Nyquist planes of even axes dropped); "
                  f"mask = footprint fraction of the old mask > {mask_threshold:g}; labels by majority; "
                  "magnitude = footprint average",
        "field_outside_mask": "unchanged (no reference)" if fill is None else
        f"replaced by the zero-padded forward field of reference {fill!r} before cropping",
    }
    meta = _record(vol, entry)
    extras = dict(meta.get("metric_extras") or {})
    if "calc_moment_gt" in extras:
        # A moment in ppm·voxel of the source grid; the metric recomputes it from the cropped truth.
        extras.pop("calc_moment_gt")
        meta["metric_extras"] = extras
        meta["perturbation"]["components"][-1]["metric_extras"] = (
            "calc_moment_gt dropped (ppm·voxel of the source grid): the moment is taken from the cropped truth")
    return dataclasses.replace(
        vol, field_ppm=crop(field), mask=mask, voxel_size_mm=actual, affine=affine,
        magnitude=None if vol.magnitude is None else footprint_average(vol.magnitude, new_shape).astype(np.float32),
        references={k: crop(v) for k, v in vol.references.items()},
        labels=None if vol.labels is None else majority_labels(vol.labels, new_shape),
        scoring_mask=scoring, meta=meta)


def is_phantom(vol: Volume) -> bool:
    """Whether ``vol`` is a phantom qsmbench simulated (embedded or BrainWeb), so that it can be
    regenerated from its ``meta``."""
    return vol.meta.get("source") in ("embedded phantom", "BrainWeb phantom")


def _regenerate_phantom(vol: Volume, b0_dir: np.ndarray) -> np.ndarray:
    from . import phantom  # noqa: PLC0415 - phantom imports scipy's FFT machinery

    meta = vol.meta
    if str(meta.get("phantom_version")) != phantom.PHANTOM_VERSION:
        raise InputError(f"volume '{vol.name}' was made by phantom version {meta.get('phantom_version')!r}, "
                         f"this qsmbench has version {phantom.PHANTOM_VERSION!r}: it cannot be regenerated "
                         "with a tilted B0; rebuild the dataset")
    try:
        params = phantom.regeneration_parameters(meta)
    except KeyError as exc:
        raise InputError(f"volume '{vol.name}': its meta.json lacks the phantom parameter {exc}") from None
    new = phantom.make_phantom(vol.shape, vol.voxel_size_mm, b0_dir=b0_dir, b0_tesla=vol.b0_tesla,
                               te_s=vol.te_s, name=vol.name, **params)
    same = ("chi" in vol.references and np.array_equal(new.mask, vol.mask)
            and np.allclose(new.references["chi"], vol.references["chi"], rtol=0, atol=1e-6))
    if not same:
        raise InputError(f"regenerating phantom '{vol.name}' from its meta.json does not reproduce its chi and "
                         "mask (was it perturbed on another grid first, or made by another qsmbench version?)")
    return new.field_ppm


def tilt_b0(vol: Volume, theta_deg: float, axis: Sequence[float] = DEFAULT_AXIS, *,
            reference: str | None = None) -> Volume:
    """``vol`` with B0 tilted by ``theta_deg`` about ``axis`` and the field re-simulated (see the
    module docstring); ``reference`` names the chi a non-phantom dataset is re-simulated from
    (default: the first in sorted order)."""
    comp = component("orientation", theta_deg=theta_deg, axis=axis)
    b0 = np.asarray(vol.b0_dir, dtype=float)
    k = physics.unit_vector(comp["axis"])
    if comp["theta_deg"] > 0 and abs(float(k @ b0)) > 1 - 1e-9:
        raise InputError(f"volume '{vol.name}': the rotation axis {comp['axis']} is parallel to B0 "
                         f"{list(vol.b0_dir)}, so a tilt would change nothing")
    new_b0 = physics.tilted_b0_dir(comp["theta_deg"], comp["axis"], b0)
    entry: dict[str, Any] = {"kind": "orientation", "theta_deg": comp["theta_deg"], "axis": comp["axis"],
                             "source_b0_dir": list(vol.b0_dir), "b0_dir": [float(x) for x in new_b0]}
    if is_phantom(vol):
        field = _regenerate_phantom(vol, new_b0)
        entry["method"] = ("embedded phantom regenerated with its own parameters and the tilted B0 (field simulated "
                           "on the finer grid and k-space cropped: no inverse crime)")
    else:
        if not vol.references:
            raise InputError(f"volume '{vol.name}' has no reference chi: an orientation perturbation needs one "
                             "to re-simulate the field")
        name = reference if reference is not None else sorted(vol.references)[0]
        if name not in vol.references:
            raise InputError(f"volume '{vol.name}' has no reference {name!r}; it has {sorted(vol.references)}")
        chi = vol.references[name].astype(np.float64)
        field = physics.forward_field(chi, vol.voxel_size_mm, new_b0, d0=0.0,
                                      pad_factor=RESIMULATION_PAD_FACTOR) * vol.mask
        entry.update({
            "reference": name,
            "method": f"field re-simulated from reference {name!r} on the dataset grid, zero padded "
                      f"(pad_factor {RESIMULATION_PAD_FACTOR:g}), D(0) = 0, times the mask",
            "inverse_crime": "mild: the field is simulated with the discrete dipole operator on the grid methods "
                             "reconstruct on (zero padded); compare with orient-0, simulated the same way",
        })
    return dataclasses.replace(vol, field_ppm=np.asarray(field, dtype=np.float32), b0_dir=tuple(new_b0),
                               meta=_record(vol, entry))


def apply(vol: Volume, perturbation: str | Sequence[Mapping[str, Any]], *, dataset: str | None = None) -> Volume:
    """``vol`` perturbed by an id (``orient-30+noise-snr20-seed1``) or a list of components.

    Components run in the order orientation -> resolution -> noise.  The noise seed is
    ``derive_seed(dataset, id)`` (``dataset`` defaults to ``vol.name``).  ``none`` returns a copy
    identical to ``vol``.  ``meta["perturbation"]`` records the id, the dataset and every
    component's parameters (seed included).
    """
    from .runner import derive_seed  # noqa: PLC0415 - runner imports the registry

    comps = parse_slug(perturbation) if isinstance(perturbation, str) else canonical(perturbation)
    if not comps:
        return copy.deepcopy(vol)
    pid = slug(comps)
    dataset = dataset or vol.name
    out = dataclasses.replace(vol, meta={**copy.deepcopy(vol.meta),
                                         "perturbation": {"id": pid, "dataset": dataset, "components": []}})
    for c in comps:
        if c["kind"] == "orientation":
            out = tilt_b0(out, c["theta_deg"], c["axis"], reference=c.get("reference"))
        elif c["kind"] == "resolution":
            out = change_resolution(out, c["voxel_size_mm"])
        else:
            out = add_noise(out, c["snr"], derive_seed(dataset, pid))
            out.meta["perturbation"]["components"][-1]["seed_index"] = c["seed_index"]
    return out


def perturb_dataset(source_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    perturbation: str | Sequence[Mapping[str, Any]], *, dataset: str | None = None) -> Path:
    """The workflow's ``perturb`` job: load the canonical volume, perturb it (an id or components, see
    :func:`apply`), save it in the canonical layout (atomically); returns ``out_dir``."""
    from . import io  # noqa: PLC0415

    comps = parse_slug(perturbation) if isinstance(perturbation, str) else canonical(perturbation)
    vol = io.load_volume(source_dir)
    out = apply(vol, comps, dataset=dataset or vol.name)
    if comps:
        out.meta["perturbation"]["source"] = str(source_dir)
    return io.save_volume(out, out_dir)


__all__ = ["KINDS", "MASK_THRESHOLD", "NEEDS_TRUTH", "add_noise", "apply", "axis_name", "canonical",
           "change_resolution", "component", "component_slug", "crop_kspace", "expand_item", "footprint_average",
           "footprint_weights", "format_number", "level_id", "level_label", "majority_labels", "matches",
           "parse_slug", "perturb_dataset", "resolution_grid", "severity", "slug", "tilt_b0"]
