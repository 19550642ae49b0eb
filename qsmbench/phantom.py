"""The embedded head phantom: seeded, head-shaped susceptibility phantoms with a ground truth.

Models (``model`` of :func:`make_phantom`)
-----------------------------------------
``mni`` (the default)
    Real anatomy from the MNI ICBM152 2009 template; a seed is a subject (a smooth random
    diffeomorphic deformation and physiological variation of size, ventricles, nuclei, vessels,
    iron): :mod:`qsmbench.anatomy`.  Tissue chi, proton density and R2*, the T2*-weighted
    magnitude with its own texture and coil shading, and the edge-overlap statistic published in
    ``meta["edge_overlap"]``: :mod:`qsmbench.tissue`.  The field of view is centred on the brain
    and the anatomy keeps its physical size at any matrix and voxel size.
``brainweb``
    One of the 20 BrainWeb anatomical models (:mod:`qsmbench.datasets.brainweb`) with the same
    tissue model; the seed varies the tissue only.
``analytic``
    Ellipsoids in FOV-normalised coordinates (below): fast and any size; for tests.

All three carry the RC2 label set (:data:`LABELS`, :data:`CHI_PPM`) and are simulated the same
way (below, "Simulation"): on the fine grid the realistic models label the fine samples
themselves; their target labels and mask are the fine labels at the target voxel centres (a
structure smaller than a voxel that falls between centres gets the voxel holding most of it,
recorded in ``meta["labels_placed_off_centre"]``), and their magnitude is the fine signal
averaged over each voxel's footprint.  ``meta["phantom_version"]`` (:data:`PHANTOM_VERSION`)
changes whenever the output of any model changes; the workflow re-simulates on a change and
:func:`qsmbench.results.collect` refuses results of two versions for one dataset.

Analytic geometry
-----------------
Every structure is an analytic shape (ellipsoid, box, tube segment, folded sphere) defined in
coordinates *normalised to the field of view*: ``u = -1 .. +1`` spans the FOV
(``shape * voxel_size_mm``) along each array axis, so the phantom rasterises at any matrix and
voxel size, anisotropic ones included (it is then stretched with the FOV).  Array axis 0 runs
left-right, axis 1 posterior-anterior, axis 2 inferior-superior (B0 along axis 2 by default,
as in both QSM challenges).  The head (scalp/fat) fills about 85 % of the FOV per axis.
Structures inside the brain are defined in *brain coordinates* ``p = (u - centre) / semi_axes``
of the brain ellipsoid (the brain is the unit ball there).

Labels use the RC2 numbering (:data:`LABELS`); outside the head is 0.  The brain mask is the
brain ellipsoid; it holds labels 1-11 and 16 (CSF and veins included).

Simulation (no inverse crime)
-----------------------------
chi is rasterised on a fine grid of ``oversample * shape`` voxels covering the same FOV.  Fine
voxel ``f`` sits at target-voxel coordinate ``f / oversample``, i.e. every ``oversample``-th
fine sample coincides with a target voxel centre -- the sample layout that
:func:`qsmbench.physics.kspace_resample` (DFT resampling) assumes.  The local field is the field
of ``chi * brain`` only (chi outside the brain is background field and not simulated), computed
on the fine grid with zero padding and ``D(0) = 0``; chi and field are then brought to the
target grid by k-space cropping (Nyquist planes of even axes dropped, see :func:`qsmbench.physics.kspace_resample`)
and multiplied by the target mask.  The analytic model's target mask and labels
are rasterised directly at the target voxel centres (exact analytic shapes, no resampling
threshold to choose).  ``oversample=1`` skips the fine grid: the field is then the exact
discrete forward model of the truth (the "inverse crime") -- for tests only.

Texture (analytic model; the realistic models: :mod:`qsmbench.tissue`)
----------------------------------------------------------------------
Smooth, seeded Gaussian-correlated noise (correlation length ``_TEXTURE_SIGMA_VOXELS`` target
voxels) is added inside each tissue with standard deviation ``texture_ppm``; every tissue mixes
three independent noise fields with its own random weights, so texture is not shared across a
boundary and piecewise-constant priors are not favoured.  CSF (the zero reference) and the
calcification carry no texture.  The noise is drawn on the target grid and interpolated to the
fine grid by zero-filling its (band-limited) spectrum, so it is nearly independent of
``oversample``.  The seed also jitters the cortical folding and the cortical veins.

References
----------
Marques JP et al. QSM reconstruction challenge 2.0: a realistic in silico head phantom for MRI
data simulation and evaluation of susceptibility mapping procedures. MRM 2021;86:526-542.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.fft

from . import physics
from .volume import Volume

#: RC2 segmentation labels (Marques et al. 2021); 0 is outside the head.
LABELS: dict[int, str] = {
    1: "caudate",
    2: "globus pallidus",
    3: "putamen",
    4: "red nucleus",
    5: "dentate nucleus",
    6: "substantia nigra + STN",
    7: "thalamus",
    8: "white matter",
    9: "grey matter",
    10: "CSF",
    11: "blood (veins)",
    12: "fat",
    13: "bone",
    14: "air",
    15: "muscle",
    16: "calcification",
}

#: Susceptibility per label, ppm relative to CSF (= 0).
#: Brain values (1-9) are typical in-vivo adult values, rounded, from Deistung et al.,
#: NeuroImage 2013;65:299 (7 T QSM of deep grey matter), Lim et al., NeuroImage 2013;82:449
#: (QSM atlas of deep grey matter) and the RC2 head phantom (Marques et al., MRM 2021;86:526).
#: Venous blood: Hct * (1 - Y) * dchi_deoxy ~= 0.4 * 0.3 * 3.4 ~= 0.4 ppm (Spees et al.,
#: MRM 2001;45:533); 0.35 sits in the usual 0.3-0.4 range.  Calcification: strongly diamagnetic
#: (about -1 ppm; RC2's Sim2 has a calcification too).  Labels 12-15 lie outside the brain and do
#: NOT enter the local field; their values are rough literature figures kept for completeness
#: (relative to water: fat ~ +0.6; cortical bone ~ -2.1, Hopkins & Wehrli MRM 1997;37:494;
#: air ~ +9.4, Schenck Med Phys 1996;23:815; muscle ~ water).
CHI_PPM: dict[int, float] = {
    1: 0.06,
    2: 0.15,
    3: 0.05,
    4: 0.10,
    5: 0.09,
    6: 0.12,
    7: 0.01,
    8: -0.03,
    9: 0.02,
    10: 0.0,
    11: 0.35,
    12: 0.6,
    13: -2.1,
    14: 9.4,
    15: 0.0,
    16: -1.0,
}

#: Labels inside the brain mask (the local field is the field of chi on these only).
BRAIN_LABELS: frozenset[int] = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16})

#: T2*-weighted-like magnitude per label (arbitrary units; iron-rich nuclei and veins darker).
MAGNITUDE: dict[int, float] = {
    0: 0.0, 1: 0.62, 2: 0.52, 3: 0.6, 4: 0.55, 5: 0.55, 6: 0.5, 7: 0.7, 8: 0.75, 9: 0.85,
    10: 1.0, 11: 0.3, 12: 0.9, 13: 0.05, 14: 0.0, 15: 0.45, 16: 0.1,
}

#: Version of the phantoms' output; bump it whenever any model's output changes (2: the mni and
#: brainweb models, the edge-overlap record; the analytic model's arrays are unchanged).
PHANTOM_VERSION = "2"

#: Gaussian correlation length (sigma) of the chi and magnitude textures, in target voxels.
_TEXTURE_SIGMA_VOXELS = 1.5
#: Relative standard deviation of the multiplicative magnitude texture.
_MAGNITUDE_TEXTURE = 0.03
#: Labels whose chi carries no texture (the CSF reference and the calcification).
_NO_TEXTURE = frozenset({10, 16})
_N_TEXTURE_FIELDS = 3

# Head-frame layout (normalised FOV coordinates u): the head, skull and brain ellipsoids.
_HEAD_SEMI = (0.80, 0.86, 0.86)
_SKULL_SEMI = (0.76, 0.82, 0.82)
_BRAIN_CENTRE = (0.0, 0.0, 0.03)
_BRAIN_SEMI = (0.70, 0.76, 0.72)


# --------------------------------------------------------------------------- shapes
def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix: about x, then y, then z (angles in degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclasses.dataclass(frozen=True)
class _Shape:
    """A labelled region.  ``frame`` is "head" (u) or "brain" (p); ``within`` restricts painting
    to voxels that currently carry one of these labels (e.g. veins only inside the brain)."""

    label: int
    frame: str = "brain"
    within: frozenset[int] | None = None

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inside(self, x, y, z) -> np.ndarray:  # pragma: no cover - abstract
        """Boolean array for broadcastable per-axis coordinate vectors (in ``frame``)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Ellipsoid(_Shape):
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    semi: tuple[float, float, float] = (1.0, 1.0, 1.0)
    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _rot(self) -> np.ndarray:
        return _rotation(self.angles_deg)

    def bbox(self):
        r = self._rot()
        half = np.sqrt(((r * np.asarray(self.semi)) ** 2).sum(axis=1))
        c = np.asarray(self.centre)
        return c - half, c + half

    def inside(self, x, y, z):
        r = self._rot()
        m = r @ np.diag(1.0 / np.asarray(self.semi) ** 2) @ r.T
        d = [x - self.centre[0], y - self.centre[1], z - self.centre[2]]
        q = m[0, 0] * d[0] ** 2 + m[1, 1] * d[1] ** 2 + m[2, 2] * d[2] ** 2
        for i, j in ((0, 1), (0, 2), (1, 2)):
            if m[i, j] != 0.0:
                q = q + (2.0 * m[i, j]) * d[i] * d[j]
        return q <= 1.0


@dataclasses.dataclass(frozen=True)
class _Box(_Shape):
    lo: tuple[float, float, float] = (-1.0, -1.0, -1.0)
    hi: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def bbox(self):
        return np.asarray(self.lo, float), np.asarray(self.hi, float)

    def inside(self, x, y, z):
        ok = [(c >= lo) & (c <= hi) for c, lo, hi in zip((x, y, z), self.lo, self.hi, strict=True)]
        return ok[0] & ok[1] & ok[2]


@dataclasses.dataclass(frozen=True)
class _Segment(_Shape):
    """A tube of radius ``radius`` around the segment ``a``-``b`` (a capsule)."""

    a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    b: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 0.03

    def bbox(self):
        a, b = np.asarray(self.a), np.asarray(self.b)
        return np.minimum(a, b) - self.radius, np.maximum(a, b) + self.radius

    def inside(self, x, y, z):
        v = np.subtract(self.b, self.a)
        vv = float(v @ v)
        d = [x - self.a[0], y - self.a[1], z - self.a[2]]
        dd = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
        if vv == 0.0:
            return dd <= self.radius**2
        dv = d[0] * v[0] + d[1] * v[1] + d[2] * v[2]
        t = np.clip(dv / vv, 0.0, 1.0)
        return dd - 2.0 * t * dv + t * t * vv <= self.radius**2


@dataclasses.dataclass(frozen=True)
class _FoldedBall(_Shape):
    """Ball whose radius is modulated by a separable sine pattern (a crude cortical folding)."""

    radius: float = 0.8
    amplitude: float = 0.05
    frequency: float = 12.0
    phases: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def bbox(self):
        r = self.radius + self.amplitude
        return np.full(3, -r), np.full(3, r)

    def inside(self, x, y, z):
        f, ph = self.frequency, self.phases
        g = np.sin(f * x + ph[0]) * np.sin(f * y + ph[1]) * np.sin(f * z + ph[2])
        rr = self.radius + self.amplitude * g
        return x * x + y * y + z * z <= rr * rr


def _tube(label: int, points: Sequence[Sequence[float]], radius: float,
          within: frozenset[int] | None = BRAIN_LABELS) -> list[_Shape]:
    """A polyline tube as a chain of capsules."""
    pts = [tuple(float(c) for c in p) for p in points]
    return [_Segment(label, "brain", within, a, b, radius) for a, b in zip(pts[:-1], pts[1:], strict=True)]


def _arc_yz(x: float, centre_yz: Sequence[float], radius: float, theta_deg: Sequence[float],
            n: int = 24) -> list[tuple[float, float, float]]:
    """Points on a circular arc in the plane ``p_x = x`` (angle 0 = anterior, 90 = superior)."""
    t = np.deg2rad(np.linspace(theta_deg[0], theta_deg[1], n))
    return [(x, centre_yz[0] + radius * np.cos(a), centre_yz[1] + radius * np.sin(a)) for a in t]


def _structures(rng: np.random.Generator, calcification: bool) -> list[_Shape]:
    """The ordered paint list (later shapes overwrite earlier ones)."""
    head_only = frozenset({12})
    brain = BRAIN_LABELS
    s: list[_Shape] = [
        _Ellipsoid(12, "head", None, (0.0, 0.0, 0.0), _HEAD_SEMI),
        # temporal muscles and neck muscles, clipped to the scalp
        *(_Ellipsoid(15, "head", head_only, (sx * 0.78, 0.12, 0.12), (0.06, 0.30, 0.32))
          for sx in (-1, 1)),
        _Ellipsoid(15, "head", head_only, (0.0, -0.55, -0.78), (0.45, 0.30, 0.20)),
        _Ellipsoid(13, "head", None, (0.0, 0.0, 0.0), _SKULL_SEMI),
        # frontal and sphenoid sinuses, clipped to the bone
        _Ellipsoid(14, "head", frozenset({13}), (0.0, 0.79, 0.02), (0.10, 0.03, 0.08)),
        _Ellipsoid(14, "head", frozenset({13}), (0.0, 0.45, -0.62), (0.12, 0.12, 0.05)),
        # brain: outer CSF rim, cortex, folded white-matter surface, medial cortex
        _Ellipsoid(10, "head", None, _BRAIN_CENTRE, _BRAIN_SEMI),
        _Ellipsoid(9, "brain", None, (0.0, 0.0, 0.0), (0.95, 0.95, 0.95)),
        _FoldedBall(8, "brain", frozenset({9}), 0.78, 0.06, 12.0,
                    tuple(float(v) for v in rng.uniform(0.0, 2.0 * np.pi, 3))),
        _Box(9, "brain", frozenset({8}), (-0.04, -0.75, 0.30), (0.04, 0.75, 1.0)),
    ]
    for sx in (-1, 1):  # deep grey matter, mirrored left/right
        s += [
            _Ellipsoid(7, "brain", None, (sx * 0.12, -0.18, 0.03), (0.11, 0.20, 0.14), (0, 0, sx * 10)),
            _Ellipsoid(3, "brain", None, (sx * 0.40, 0.08, 0.0), (0.08, 0.25, 0.17), (0, 0, -sx * 12)),
            _Ellipsoid(2, "brain", None, (sx * 0.31, 0.04, -0.02), (0.06, 0.14, 0.10), (0, 0, -sx * 12)),
            _Ellipsoid(1, "brain", None, (sx * 0.22, 0.24, 0.15), (0.09, 0.16, 0.12), (0, 0, -sx * 15)),
            _Ellipsoid(6, "brain", None, (sx * 0.12, -0.08, -0.26), (0.05, 0.12, 0.065), (0, 0, sx * 30)),
            _Ellipsoid(4, "brain", None, (sx * 0.06, -0.15, -0.22), (0.065, 0.065, 0.065)),
            _Ellipsoid(5, "brain", None, (sx * 0.20, -0.55, -0.42), (0.09, 0.07, 0.07), (0, 0, sx * 25)),
        ]
    for sx in (-1, 1):  # lateral ventricles: body + occipital horn
        s += [
            _Ellipsoid(10, "brain", None, (sx * 0.11, 0.02, 0.22), (0.06, 0.36, 0.09), (0, sx * 20, 0)),
            _Ellipsoid(10, "brain", None, (sx * 0.17, -0.34, 0.14), (0.05, 0.14, 0.06), (0, 0, -sx * 20)),
        ]
    s.append(_Ellipsoid(10, "brain", None, (0.0, -0.08, 0.02), (0.025, 0.14, 0.09)))  # 3rd ventricle
    # Veins: superior sagittal sinus along the midline just under the skull, straight sinus,
    # transverse sinuses, internal cerebral veins and a few seeded cortical veins.
    s += _tube(11, _arc_yz(0.0, (-0.05, -0.03), 0.89, (25.0, 195.0)), 0.05)
    confluence = (0.0, -0.86, -0.26)
    s += _tube(11, [(0.0, -0.28, 0.04), (0.0, -0.55, -0.08), confluence], 0.035)
    for sx in (-1, 1):
        s += _tube(11, [confluence, (sx * 0.28, -0.80, -0.30), (sx * 0.50, -0.66, -0.34)], 0.04)
        s += _tube(11, [(sx * 0.04, 0.18, 0.12), (sx * 0.035, -0.05, 0.10), (0.0, -0.28, 0.04)], 0.025)
    for i in range(6):
        sx = -1 if i % 2 else 1
        y = float(rng.uniform(-0.55, 0.55))
        t = np.linspace(float(rng.uniform(0.12, 0.2)), float(rng.uniform(1.0, 1.3)), 6)
        c = np.sqrt(1.0 - y * y)
        pts = [(0.9 * sx * c * np.sin(a), 0.9 * y, 0.9 * c * np.cos(a)) for a in t]
        s += _tube(11, pts, 0.022)
    if calcification:
        s.append(_Ellipsoid(16, "brain", brain, (-0.36, 0.06, -0.01), (0.05, 0.05, 0.05)))
    return s


# --------------------------------------------------------------------------- rasterisation
def _axis_coords(shape: Sequence[int], oversample: int) -> list[np.ndarray]:
    """Normalised FOV coordinate u of each fine sample along each axis.

    Target voxel ``m`` of ``n`` has its centre at ``u = (2 m + 1) / n - 1``; fine sample ``f``
    sits at target coordinate ``m = f / oversample`` (DFT-resampling layout).
    """
    return [((2.0 * np.arange(n * oversample) / oversample + 1.0) / n - 1.0) for n in shape]


def _rasterise(shape: Sequence[int], oversample: int, structures: Sequence[_Shape]) -> np.ndarray:
    """Paint ``structures`` in order on the ``oversample * shape`` grid (int8 labels)."""
    axes_u = _axis_coords(shape, oversample)
    centre, semi = np.asarray(_BRAIN_CENTRE), np.asarray(_BRAIN_SEMI)
    labels = np.zeros(tuple(len(a) for a in axes_u), dtype=np.int8)
    for st in structures:
        lo, hi = st.bbox()
        if st.frame == "brain":
            lo, hi = centre + semi * lo, centre + semi * hi
        sl, coords = [], []
        for ax, u in enumerate(axes_u):
            i0, i1 = np.searchsorted(u, lo[ax], "left"), np.searchsorted(u, hi[ax], "right")
            sl.append(slice(i0, i1))
            c = u[i0:i1].astype(np.float32)
            if st.frame == "brain":
                c = (c - np.float32(centre[ax])) / np.float32(semi[ax])
            shp = [1, 1, 1]
            shp[ax] = c.size
            coords.append(c.reshape(shp))
        if any(s.stop <= s.start for s in sl):
            continue
        sub = labels[tuple(sl)]
        ins = st.inside(*coords)
        if st.within is not None:
            ins &= np.isin(sub, np.fromiter(st.within, dtype=np.int8))
        sub[ins] = st.label
    return labels


def _lut(values: dict[int, float], default: float = 0.0) -> np.ndarray:
    lut = np.full(256, default, dtype=np.float32)
    for k, v in values.items():
        lut[k] = v
    return lut


# --------------------------------------------------------------------------- texture
def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], oversample: int,
                  sigma_vox: float) -> np.ndarray:
    """Unit-variance Gaussian-correlated noise drawn on ``shape``, evaluated on the fine grid.

    The noise is filtered in k-space (periodic) and its spectrum zero-filled to the fine grid,
    which interpolates it exactly (Nyquist bins are dropped so the result stays real).
    """
    shape = tuple(int(n) for n in shape)
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = scipy.fft.rfftn(white, workers=-1)
    f = physics.kspace_grid(shape, (1.0, 1.0, 1.0), rfft=True)  # cycles/voxel
    spec *= np.exp(-2.0 * np.pi**2 * sigma_vox**2 * (f[0] ** 2 + f[1] ** 2 + f[2] ** 2)).astype(np.float32)
    for ax, n in enumerate(shape):
        if n % 2 == 0:
            idx = [slice(None)] * 3
            idx[ax] = n // 2
            spec[tuple(idx)] = 0
    spec[0, 0, 0] = 0
    spec /= np.float32(scipy.fft.irfftn(spec, s=shape, workers=-1).std())
    fine = tuple(n * oversample for n in shape)
    if oversample == 1:
        return scipy.fft.irfftn(spec, s=fine, workers=-1).astype(np.float32, copy=False)
    # Embed the spectrum in the fine grid's: frequencies 0..+K and -K..-1 per full axis,
    # 0..K along the half (rfft) axis, with K = (n - 1) // 2 (the Nyquist bins are zero).
    src, dst = [], []
    for ax, (n, m) in enumerate(zip(shape, fine, strict=True)):
        k = (n - 1) // 2
        if ax == 2:
            src.append(np.arange(k + 1))
            dst.append(np.arange(k + 1))
        else:
            src.append(np.r_[0 : k + 1, n - k : n])
            dst.append(np.r_[0 : k + 1, m - k : m])
    big = np.zeros((fine[0], fine[1], fine[2] // 2 + 1), dtype=spec.dtype)
    big[np.ix_(*dst)] = spec[np.ix_(*src)] * np.float32(np.prod(fine) / np.prod(shape))
    return scipy.fft.irfftn(big, s=fine, workers=-1).astype(np.float32, copy=False)


def _box_downsample(x: np.ndarray, oversample: int) -> np.ndarray:
    """Average each target voxel's footprint on the fine grid (partial-volume magnitude).

    Target voxel ``m`` is centred on fine sample ``oversample * m``; its footprint is a centred
    box of width ``oversample`` fine samples (half weights at the ends when it is even).
    """
    s = oversample
    if s == 1:
        return x.astype(np.float32, copy=True)
    half = s // 2
    taps = {j: 1.0 for j in range(-half, half + 1)}
    if s % 2 == 0:
        taps[-half] = taps[half] = 0.5
    out = x.astype(np.float32, copy=False)
    for ax in range(3):
        acc = None
        for j, w in taps.items():
            part = np.roll(out, -j, axis=ax)
            idx = [slice(None)] * 3
            idx[ax] = slice(0, None, s)
            part = part[tuple(idx)] * np.float32(w / s)
            acc = part if acc is None else acc + part
        out = acc
    return out


# --------------------------------------------------------------------------- public API
#: Phantom models (``model`` of :func:`make_phantom`).
MODELS = ("mni", "analytic", "brainweb")
#: The default model (configs, the CLI and :func:`make_phantom`).
DEFAULT_MODEL = "mni"
#: Parameters that regenerate a phantom from its ``meta.json`` (with its shape, voxel size, B0).
REGENERATION_KEYS = ("model", "seed", "calcification", "oversample", "texture_ppm", "pad_factor")


def _check_inputs(shape, voxel_size_mm, oversample, texture_ppm) -> tuple[tuple[int, int, int],
                                                                          tuple[float, float, float]]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be three integers >= 8, got {shape!r}") from None
    if len(dims) != 3 or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                                 and n >= 8 for n in dims):
        raise ValueError(f"shape must be three integers >= 8, got {shape!r}")
    try:
        vs = physics._as_voxel_size(voxel_size_mm)
    except (TypeError, ValueError):
        raise ValueError(f"voxel_size_mm must be three positive numbers, got {voxel_size_mm!r}") from None
    if not isinstance(oversample, numbers.Integral) or isinstance(oversample, bool) or oversample < 1:
        raise ValueError(f"oversample must be an integer >= 1, got {oversample!r}")
    if not (np.isfinite(texture_ppm) and texture_ppm >= 0):
        raise ValueError(f"texture_ppm must be a non-negative number, got {texture_ppm!r}")
    return tuple(int(n) for n in dims), vs  # type: ignore[return-value]


def make_phantom(shape: Sequence[int] = (80, 96, 80),
                 voxel_size_mm: Sequence[float] = (2.0, 2.0, 2.0), *, model: str = DEFAULT_MODEL,
                 seed: int = 0, b0_dir: Sequence[float] = (0.0, 0.0, 1.0), b0_tesla: float = 3.0,
                 te_s: float = 0.025, calcification: bool = False, oversample: int = 2,
                 texture_ppm: float = 0.01, pad_factor: float = 2.0, subject: int | None = None,
                 name: str = "phantom") -> Volume:
    """Simulate the embedded head phantom on a ``shape`` grid.

    Parameters
    ----------
    shape : three ints >= 8, the target matrix (any parity).
    voxel_size_mm : target voxel size along the array axes, mm (anisotropic allowed).
    model : ``"mni"`` (default: real anatomy from the MNI ICBM152 template, a seed is a subject;
        :mod:`qsmbench.anatomy`, :mod:`qsmbench.tissue`), ``"analytic"`` (ellipsoids in
        FOV-normalised coordinates, any size, fast; for tests) or ``"brainweb"`` (one of the 20
        BrainWeb anatomical models, downloaded on first use; :mod:`qsmbench.datasets.brainweb`).
    seed : the subject (mni: anatomy, vessels, iron, texture; analytic: texture and the geometry
        jitter; brainweb: vessels' chi, iron, texture).  Benchmarks use test seeds
        (:mod:`qsmbench.seeds`).
    b0_dir : B0 direction in array coordinates.
    b0_tesla, te_s : acquisition; the field is in ppm regardless; the realistic magnitude uses
        them (R2* scales with B0, the signal decays over TE).
    calcification : add a small calcification (label 16, about -1 ppm).
    oversample : fine-grid factor per axis for the forward simulation; 1 commits the inverse
        crime (tests only).
    texture_ppm : standard deviation of the smooth chi texture inside tissues, ppm.
    pad_factor : zero padding of the fine-grid forward simulation (see
        :func:`qsmbench.physics.forward_field`).
    subject : the BrainWeb subject number (``model="brainweb"`` only; e.g. 4, 5, ..., 54).
    name : the volume's name.

    Returns
    -------
    Volume
        ``field_ppm`` (local field, ppm, float32, zero outside the mask), ``mask`` (brain),
        ``magnitude``, ``references={"chi": chi_ppm}`` (float32, zero outside the mask), ``labels``
        (RC2 numbering, int16) and provenance in ``meta`` (``model``, ``phantom_version``, and for
        the realistic models the subject's drawn parameters and ``edge_overlap``).

    Memory: the fine grid needs about 5 GB at 160^3 with ``oversample=2`` (most of it in the
    padded forward FFT); the default 80x96x80 grid about 1 GB.
    """
    shape, vs = _check_inputs(shape, voxel_size_mm, oversample, texture_ppm)
    if model not in MODELS:
        raise ValueError(f"unknown phantom model {model!r}; known: {', '.join(MODELS)}")
    if subject is not None and model != "brainweb":
        raise ValueError(f"'subject' selects a BrainWeb model (model='brainweb'), not model={model!r}")
    b0 = physics.unit_vector(b0_dir)
    oversample = int(oversample)
    common = dict(seed=int(seed), b0=b0, b0_tesla=float(b0_tesla), te_s=float(te_s), calcification=bool(calcification),
                  oversample=oversample, texture_ppm=float(texture_ppm), pad_factor=float(pad_factor), name=name)
    if model == "analytic":
        return _make_analytic(shape, vs, **common)
    if model == "brainweb":
        from .datasets.brainweb import brainweb_template  # noqa: PLC0415 - downloads on first use

        if subject is None:
            raise ValueError("model='brainweb' needs the BrainWeb subject number ('subject', e.g. 4)")
        template, info = brainweb_template(subject)
        extra = {"source": "BrainWeb phantom", "brainweb_subject": int(subject), "brainweb": info}
        return make_realistic(template, shape, vs, model="brainweb", deform=False, extra_meta=extra, **common)
    from .anatomy import load_mni_template  # noqa: PLC0415

    return make_realistic(load_mni_template(), shape, vs, model="mni", deform=True, **common)


def _affine(shape, vs) -> np.ndarray:
    affine = np.diag([*vs, 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * v for n, v in zip(shape, vs, strict=True)]
    return affine


def _base_meta(model: str, common: dict) -> dict:
    return {
        "source": "embedded phantom",
        "model": model,
        "seed": common["seed"],
        "oversample": common["oversample"],
        "calcification": common["calcification"],
        "texture_ppm": common["texture_ppm"],
        "pad_factor": common["pad_factor"],
        "chi_ppm": {str(k): v for k, v in CHI_PPM.items()},
        "label_names": {str(k): v for k, v in LABELS.items()},
        "phantom_version": PHANTOM_VERSION,
    }


def _make_analytic(shape, vs, *, seed, b0, b0_tesla, te_s, calcification, oversample, texture_ppm, pad_factor,
                   name) -> Volume:
    """The analytic (ellipsoid) phantom; see the module docstring."""
    common = dict(seed=seed, oversample=oversample, calcification=calcification, texture_ppm=texture_ppm,
                  pad_factor=pad_factor)
    geom_rng, chi_rng, mag_rng = np.random.default_rng(seed).spawn(3)
    structures = _structures(geom_rng, calcification)

    labels = _rasterise(shape, 1, structures)
    mask = np.isin(labels, np.fromiter(BRAIN_LABELS, dtype=np.int8))
    fine_labels = labels if oversample == 1 else _rasterise(shape, oversample, structures)

    chi_lut = _lut({k: v for k, v in CHI_PPM.items() if k in BRAIN_LABELS})
    chi_fine = chi_lut[fine_labels]
    if texture_ppm > 0:
        textured = [k for k in sorted(BRAIN_LABELS) if k not in _NO_TEXTURE]
        weights = chi_rng.standard_normal((len(textured), _N_TEXTURE_FIELDS))
        weights /= np.linalg.norm(weights, axis=1, keepdims=True)
        for j in range(_N_TEXTURE_FIELDS):
            noise = _smooth_noise(chi_rng, shape, oversample, _TEXTURE_SIGMA_VOXELS)
            w_lut = _lut({k: texture_ppm * weights[i, j] for i, k in enumerate(textured)})
            noise *= w_lut[fine_labels]
            chi_fine += noise
            del noise

    mag_fine = _lut(MAGNITUDE)[fine_labels]
    magnitude = _box_downsample(mag_fine, oversample)
    del mag_fine, fine_labels
    magnitude *= 1.0 + _MAGNITUDE_TEXTURE * _smooth_noise(mag_rng, shape, 1, _TEXTURE_SIGMA_VOXELS)
    np.clip(magnitude, 0.0, None, out=magnitude)

    chi, field = _simulate_field(chi_fine, shape, vs, b0, oversample, pad_factor)
    del chi_fine
    chi = (chi * mask).astype(np.float32)
    field = (field * mask).astype(np.float32)
    meta = _base_meta("analytic", common)
    from .tissue import edge_overlap  # noqa: PLC0415

    meta["edge_overlap"] = edge_overlap(chi, magnitude, mask, vs)
    return Volume(field_ppm=field, mask=mask, voxel_size_mm=vs, b0_dir=tuple(b0), b0_tesla=b0_tesla,
                  te_s=te_s, affine=_affine(shape, vs), magnitude=magnitude, references={"chi": chi},
                  labels=labels.astype(np.int16), name=name, meta=meta)


def _simulate_field(chi_fine: np.ndarray, shape, vs, b0, oversample: int, pad_factor: float):
    """chi and its local field on the target grid: the field of ``chi_fine`` simulated on the fine
    grid (zero padding, D(0) = 0), both brought to ``shape`` by k-space cropping."""
    fine_vs = tuple(v / oversample for v in vs)
    field_fine = physics.forward_field(chi_fine, fine_vs, b0, d0=0.0, pad_factor=pad_factor, workers=-1)
    if oversample == 1:
        return chi_fine, field_fine
    field = physics.kspace_resample(field_fine, shape, drop_nyquist=True)
    del field_fine
    chi = physics.kspace_resample(chi_fine, shape, drop_nyquist=True)
    return chi, field


def _ensure_labels(labels: np.ndarray, fine_labels: np.ndarray, oversample: int, wanted) -> list[int]:
    """Give every label of ``wanted`` present on the fine grid at least one target voxel.

    Target labels are the fine labels at the target voxel centres; a structure smaller than a
    target voxel can fall between centres.  Its label then goes to the brain voxel whose
    footprint holds most of it.  Returns the labels so placed.
    """
    placed = []
    brain = np.isin(labels, np.fromiter(BRAIN_LABELS, dtype=np.int8))
    present = set(np.unique(labels).tolist())
    for k in sorted(set(wanted) - present):
        sel = fine_labels == k
        if not sel.any():
            continue
        o = oversample
        if o > 1:
            sel = np.roll(sel, (o // 2, o // 2, o // 2), axis=(0, 1, 2))
            n = labels.shape
            counts = sel.reshape(n[0], o, n[1], o, n[2], o).sum(axis=(1, 3, 5))
        else:
            counts = sel.astype(np.int32)
        counts[~brain] = 0
        if counts.max() == 0:
            continue
        labels[np.unravel_index(int(np.argmax(counts)), labels.shape)] = k
        placed.append(int(k))
    return placed


def make_realistic(template, shape, vs, *, model: str, deform: bool, seed: int, b0, b0_tesla: float, te_s: float,
                   calcification: bool, oversample: int, texture_ppm: float, pad_factor: float, name: str,
                   extra_meta: dict | None = None) -> Volume:
    """A realistic phantom from an anatomy template (:class:`qsmbench.anatomy.Template`): the
    subject of ``seed`` labelled on the fine grid, chi and magnitude from :mod:`qsmbench.tissue`,
    the field simulated on the fine grid and k-space cropped (see the module docstring)."""
    from . import anatomy, tissue  # noqa: PLC0415

    common = dict(seed=seed, oversample=oversample, calcification=calcification, texture_ppm=texture_ppm,
                  pad_factor=pad_factor)
    anat_rng, chi_rng, mag_rng = np.random.default_rng(seed).spawn(3)
    subject = anatomy.draw_subject(anat_rng, seed, deform=deform)
    params = tissue.draw_tissue(chi_rng, len(anatomy.NUCLEI))
    anat = anatomy.build_anatomy(template, subject, shape, vs, oversample, calcification=calcification)
    fine_labels = anat.labels
    iron = tissue.iron_relative(fine_labels, anat.nucleus_index, anat.mni, params)
    anat.mni = []
    chi_fine = tissue.chi_fine(fine_labels, iron, params, chi_table=CHI_PPM, brain_labels=BRAIN_LABELS,
                               texture_ppm=texture_ppm, rng=chi_rng, shape=shape, voxel_size_mm=vs,
                               oversample=oversample)
    signal = tissue.signal_fine(fine_labels, iron, params, b0_tesla=b0_tesla, te_s=te_s, rng=mag_rng, shape=shape,
                                voxel_size_mm=vs, oversample=oversample)
    del iron
    magnitude = _box_downsample(signal, oversample)
    del signal
    magnitude *= tissue.coil_shading(shape, vs, params.coil_rotation_deg)
    magnitude *= 1.0 + np.float32(tissue.MAGNITUDE_TEXTURE) * tissue.smooth_noise(mag_rng, shape, vs, 1,
                                                                                  tissue.TEXTURE_SIGMA_MM)
    np.clip(magnitude, 0.0, None, out=magnitude)

    labels = np.ascontiguousarray(fine_labels[::oversample, ::oversample, ::oversample])
    placed = _ensure_labels(labels, fine_labels, oversample, BRAIN_LABELS)
    del fine_labels, anat.labels, anat.nucleus_index
    mask = np.isin(labels, np.fromiter(BRAIN_LABELS, dtype=np.int8))
    chi, field = _simulate_field(chi_fine, shape, vs, b0, oversample, pad_factor)
    del chi_fine
    chi = (chi * mask).astype(np.float32)
    field = (field * mask).astype(np.float32)
    peak = float(np.quantile(magnitude[mask], 0.99)) if mask.any() else 1.0
    magnitude = (magnitude / np.float32(peak if peak > 0 else 1.0)).astype(np.float32)

    meta = _base_meta(model, common)
    meta.update({
        "template": {"name": template.name, "citation": template.citation},
        "anatomy": subject.summary(),
        "tissue": params.summary(),
        "vessels": anat.vessel_paths,
        "fov": "centred on the template brain's bounding-box centre (qsmbench.anatomy, 'FOV')",
        "labels_placed_off_centre": placed,
        "edge_overlap": tissue.edge_overlap(chi, magnitude, mask, vs),
    })
    meta.update(extra_meta or {})
    return Volume(field_ppm=field, mask=mask, voxel_size_mm=vs, b0_dir=tuple(b0), b0_tesla=b0_tesla,
                  te_s=te_s, affine=_affine(shape, vs), magnitude=magnitude, references={"chi": chi},
                  labels=labels.astype(np.int16), name=name, meta=meta)


def regeneration_parameters(meta: dict) -> dict:
    """Keyword arguments of :func:`make_phantom` (besides the geometry and acquisition) that
    regenerate a phantom from its ``meta.json``; :class:`KeyError` names a missing one."""
    params = {k: meta[k] for k in REGENERATION_KEYS}
    if meta.get("model") == "brainweb":
        params["subject"] = meta["brainweb_subject"]
    return params


def write_phantom(outdir: str | os.PathLike, **kwargs) -> Path:
    """Make the phantom (keyword arguments of :func:`make_phantom`) and save it in the canonical
    layout (:func:`qsmbench.io.save_volume`); returns the folder."""
    from .io import save_volume

    return save_volume(make_phantom(**kwargs), outdir)
