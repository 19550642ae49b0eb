"""Tissue properties of the realistic phantoms: susceptibility, proton density, R2*, and the magnitude.

Used by the ``mni`` and ``brainweb`` models of :func:`qsmbench.phantom.make_phantom` on the
fine simulation grid (labels from :mod:`qsmbench.anatomy`).  Every random choice takes the
generator it is given (streams derived from the phantom's seed); the drawn values are recorded
in ``meta.json`` (``meta["tissue"]``).

Susceptibility (ppm, CSF = 0)
-----------------------------
``chi = chi_label * iron + gradient + large-scale variation + texture``:

* ``chi_label``: :data:`qsmbench.phantom.CHI_PPM` (cited there).
* *iron*: the iron-rich nuclei (caudate, globus pallidus, putamen, red nucleus, dentate,
  substantia nigra/STN, thalamus) are scaled by a subject factor in [0.8, 1.25] (brain iron rises
  with age, Hallgren & Sourander, J Neurochem 1958;3:41) times a per-nucleus factor in [0.9, 1.1].
* *gradient*: within each nucleus chi rises linearly along its iron gradient
  (:attr:`qsmbench.anatomy.Nucleus.gradient`: posterior putamen and pulvinar, caudate head,
  internal pallidum, rostral nigra), by a total of [10, 35] % of its value from one end to the
  other.
* *large-scale variation*: smooth Gaussian random fields (correlation length 8 mm) of standard
  deviation 0.006 ppm in white matter (fibre orientation and myelin content, e.g. Li et al.,
  NeuroImage 2012;59:2088) and grey matter (cortical iron), one field per tissue.
* *texture*: three smooth fields (correlation length 3 mm) mixed with per-tissue weights, of
  standard deviation ``texture_ppm`` (as in the analytic phantom); none in CSF and calcification.
* *veins*: ``Hct (1 - Y) dchi_do`` with ``dchi_do = 3.39 ppm`` (0.27 ppm cgs; Spees et al.,
  MRM 2001;45:533), haematocrit 0.42 and a subject venous oxygenation ``Y`` in [0.70, 0.78]:
  0.31-0.43 ppm.
* *calcification*: -1.0 ppm times a factor in [0.8, 1.2].

Magnitude (T2*-weighted gradient echo)
--------------------------------------
``S = PD * exp(-TE * R2*)`` on the fine grid, then averaged over each target voxel's footprint
(partial volume at every boundary), times a receive-coil shading and a texture of its own:

* *proton density* :data:`PD` (water content relative to CSF): WM 0.69, cortical GM 0.81, deep
  grey 0.76-0.82 (Neeb et al., NeuroImage 2006;29:910), venous blood 0.87 (Herscovitch & Raichle,
  J Cereb Blood Flow Metab 1985;5:65); bone, air and calcification low.
* *R2* at 3 T* :data:`R2STAR_3T` (s^-1): approximate, rounded values in the ranges reported at
  3 T for globus pallidus, putamen, caudate, thalamus, frontal WM and cortical GM (Gelman et al.,
  Radiology 1999;210:759) and for the iron-rich midbrain and cerebellar nuclei (Péran et al.,
  JMRI 2007;26:1413); scaled by B0/3 T at other fields (R2* grows about linearly with B0; Yao
  et al., NeuroImage 2009;44:1259), except CSF.  They set contrasts, not a quantitative R2* map.
  Venous blood: ``12 + 33 ((1 - Y)/0.3)^2`` s^-1 (45 s^-1 at Y = 0.7; blood relaxation rates
  grow with (1 - Y)^2, Zhao et al., MRM 2007;58:592).
* *R2* is not a copy of chi*: in the nuclei R2* follows the iron part of chi (subject and
  per-nucleus factors, gradients) with half its relative amplitude (both rise with iron,
  Langkammer et al., NeuroImage 2012;62:1593, but R2* also has non-iron sources), and all brain
  tissue gets an independent smooth R2* variation (5 % standard deviation, correlation length
  10 mm).  So the putamen (chi +0.05, R2* 28 vs WM 21) is a chi edge but hardly a magnitude
  edge, while CSF (chi 0, bright) and GM/WM have strong magnitude edges.
* *coil shading*: eight receive loops (radius 45 mm) around the head at two heights, sensitivity
  ``a^2 / (a^2 + d^2)^(3/2)``, combined by root-sum-of-squares, then its square root (what an
  intensity normalisation leaves); the array's rotation is seeded.  Over the brain of the
  default phantom the 99th/1st percentile ratio is about 2.1 (maximum/minimum 2.8): bright
  cortex, darker centre.
* *texture*: multiplicative smooth noise, 3 % standard deviation, correlation length 3 mm,
  independent of chi's.

The magnitude is scaled so that its 99th percentile inside the mask is 1.

Edge overlap
------------
:func:`edge_overlap` measures how many chi edges are magnitude edges (published in
``meta["edge_overlap"]``).  An *edge* voxel of an image is a voxel of the mask eroded by one
voxel (3x3x3) whose gradient magnitude (central differences, per mm) is in the top 10 % of that
image's gradient magnitudes over the eroded mask.  ``chi_edges_in_magnitude`` is the fraction of
chi edge voxels that have a magnitude edge voxel in their 3x3x3 neighbourhood;
``magnitude_edges_in_chi`` the reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage as ndi

from . import physics

#: Proton density (water content relative to CSF) per RC2 label; sources in the module docstring.
PD: dict[int, float] = {
    0: 0.0, 1: 0.82, 2: 0.76, 3: 0.82, 4: 0.77, 5: 0.78, 6: 0.77, 7: 0.77, 8: 0.69, 9: 0.81,
    10: 1.0, 11: 0.87, 12: 0.90, 13: 0.05, 14: 0.0, 15: 0.75, 16: 0.10,
}
#: R2* at 3 T (s^-1) per RC2 label; sources in the module docstring.  Label 11 (venous blood)
#: is computed from the oxygenation instead.
R2STAR_3T: dict[int, float] = {
    0: 0.0, 1: 23.0, 2: 40.0, 3: 28.0, 4: 33.0, 5: 32.0, 6: 38.0, 7: 21.0, 8: 21.0, 9: 16.0,
    10: 2.0, 11: 45.0, 12: 30.0, 13: 300.0, 14: 0.0, 15: 30.0, 16: 250.0,
}
#: Labels whose chi scales with the subject's iron content.
IRON_LABELS = (1, 2, 3, 4, 5, 6, 7)
#: Ranges of the seeded tissue parameters (uniform).
RANGES: dict[str, tuple[float, float]] = {
    "iron_factor": (0.8, 1.25),
    "nucleus_iron_factor": (0.9, 1.1),
    "iron_gradient": (0.10, 0.35),
    "venous_oxygenation": (0.70, 0.78),
    "calcification_factor": (0.8, 1.2),
}
HAEMATOCRIT = 0.42
#: Susceptibility difference between fully deoxygenated and oxygenated blood, ppm (SI).
DCHI_DEOXY_PPM = 3.39
LARGE_SCALE_SIGMA_MM = 8.0
LARGE_SCALE_PPM = {8: 0.006, 9: 0.006}
TEXTURE_SIGMA_MM = 3.0
N_TEXTURE_FIELDS = 3
NO_TEXTURE = frozenset({10, 16})
R2STAR_VARIATION = 0.05
R2STAR_SIGMA_MM = 10.0
R2STAR_IRON_COUPLING = 0.5
MAGNITUDE_TEXTURE = 0.03
COILS = 8
COIL_RADIUS_MM = 45.0
EDGE_TOP_FRACTION = 0.10


@dataclasses.dataclass(frozen=True)
class TissueParams:
    """Seeded tissue parameters of one subject (:func:`draw_tissue`)."""

    iron_factor: float
    nucleus_iron: tuple[float, ...]      # per anatomy.NUCLEI entry
    nucleus_gradient: tuple[float, ...]  # per anatomy.NUCLEI entry
    venous_oxygenation: float
    calcification_factor: float
    coil_rotation_deg: float

    @property
    def chi_vein(self) -> float:
        return HAEMATOCRIT * (1.0 - self.venous_oxygenation) * DCHI_DEOXY_PPM

    @property
    def r2star_vein_3t(self) -> float:
        return 12.0 + 33.0 * ((1.0 - self.venous_oxygenation) / 0.3) ** 2

    def summary(self) -> dict[str, Any]:
        from .anatomy import NUCLEI  # noqa: PLC0415

        return {
            "iron_factor": round(self.iron_factor, 4),
            "nuclei": {n.name: {"iron_factor": round(f, 4), "gradient": round(g, 4)}
                       for n, f, g in zip(NUCLEI, self.nucleus_iron, self.nucleus_gradient, strict=True)},
            "venous_oxygenation": round(self.venous_oxygenation, 4),
            "chi_vein_ppm": round(self.chi_vein, 4),
            "r2star_vein_3t_per_s": round(self.r2star_vein_3t, 2),
            "calcification_factor": round(self.calcification_factor, 4),
            "coil_rotation_deg": round(self.coil_rotation_deg, 2),
            "ranges": {k: list(v) for k, v in RANGES.items()},
        }


def draw_tissue(rng: np.random.Generator, n_nuclei: int) -> TissueParams:
    def u(key, size=None):
        lo, hi = RANGES[key]
        return rng.uniform(lo, hi, size)

    return TissueParams(
        iron_factor=float(u("iron_factor")),
        nucleus_iron=tuple(float(x) for x in u("nucleus_iron_factor", n_nuclei)),
        nucleus_gradient=tuple(float(x) for x in u("iron_gradient", n_nuclei)),
        venous_oxygenation=float(u("venous_oxygenation")),
        calcification_factor=float(u("calcification_factor")),
        coil_rotation_deg=float(rng.uniform(0.0, 360.0 / COILS)),
    )


def _lut(values: Mapping[int, float], default: float = 0.0) -> np.ndarray:
    lut = np.full(256, default, dtype=np.float32)
    for k, v in values.items():
        lut[k] = v
    return lut


# --------------------------------------------------------------------------- smooth noise
def smooth_noise(rng: np.random.Generator, shape: Sequence[int], voxel_size_mm: Sequence[float],
                 oversample: int, sigma_mm: float) -> np.ndarray:
    """Unit-variance Gaussian-correlated noise (Gaussian kernel of ``sigma_mm``) drawn on the
    target grid ``shape`` and evaluated on the ``oversample`` times finer grid.

    Filtered in k-space (periodic); the spectrum is zero-filled to the fine grid, which
    interpolates the noise exactly (Nyquist bins are dropped so the result stays real).
    """
    shape = tuple(int(n) for n in shape)
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = scipy.fft.rfftn(white, workers=-1)
    f = physics.kspace_grid(shape, voxel_size_mm, rfft=True)  # cycles/mm
    spec *= np.exp(-2.0 * np.pi**2 * sigma_mm**2 * (f[0] ** 2 + f[1] ** 2 + f[2] ** 2)).astype(np.float32)
    for ax, n in enumerate(shape):
        if n % 2 == 0:
            idx = [slice(None)] * 3
            idx[ax] = n // 2
            spec[tuple(idx)] = 0
    spec[0, 0, 0] = 0
    spec /= np.float32(max(float(scipy.fft.irfftn(spec, s=shape, workers=-1).std()), 1e-12))
    fine = tuple(n * oversample for n in shape)
    if oversample == 1:
        return scipy.fft.irfftn(spec, s=fine, workers=-1).astype(np.float32, copy=False)
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


# --------------------------------------------------------------------------- iron
def iron_relative(labels: np.ndarray, nucleus_index: np.ndarray, mni: Sequence[np.ndarray],
                  params: TissueParams) -> np.ndarray:
    """Relative iron of every fine voxel: 1 outside the nuclei (and the thalamus outside its
    ellipsoid: the subject factor); inside nucleus ``k`` the subject and nucleus factors times
    ``1 + g s``, with ``s`` in [-1/2, 1/2] the position along the nucleus's gradient direction in
    units of its longest diameter (so the total rise across it is about ``g``)."""
    from .anatomy import NUCLEI  # noqa: PLC0415

    rel = np.ones(labels.shape, dtype=np.float32)
    thal = labels == 7
    rel[thal] = params.iron_factor
    for k, nuc in enumerate(NUCLEI):
        sel = nucleus_index == k
        if not sel.any():
            continue
        side = np.sign(mni[0][sel])
        side[side == 0] = 1.0
        g = np.asarray(nuc.gradient, dtype=np.float32)
        d = [mni[i][sel] - (side * nuc.centre[0] if i == 0 else np.float32(nuc.centre[i])) for i in range(3)]
        proj = (d[0] * side * g[0] + d[1] * g[1] + d[2] * g[2]) / np.float32(2.0 * max(nuc.semi))
        proj = np.clip(proj, -0.5, 0.5)
        rel[sel] = params.iron_factor * params.nucleus_iron[k] * (1.0 + params.nucleus_gradient[k] * proj)
    return rel


# --------------------------------------------------------------------------- chi
def chi_fine(labels: np.ndarray, iron: np.ndarray, params: TissueParams, *, chi_table: Mapping[int, float],
             brain_labels: frozenset[int], texture_ppm: float, rng: np.random.Generator, shape: Sequence[int],
             voxel_size_mm: Sequence[float], oversample: int) -> np.ndarray:
    """chi (ppm) on the fine grid, zero outside ``brain_labels`` (see the module docstring)."""
    table = {k: v for k, v in chi_table.items() if k in brain_labels}
    table[11] = params.chi_vein
    if 16 in table:
        table[16] = table[16] * params.calcification_factor
    lut = _lut(table)
    chi = lut[labels]
    iron_sel = np.isin(labels, IRON_LABELS)
    chi[iron_sel] *= iron[iron_sel]
    for label, std in LARGE_SCALE_PPM.items():
        noise = smooth_noise(rng, shape, voxel_size_mm, oversample, LARGE_SCALE_SIGMA_MM)
        sel = labels == label
        chi[sel] += np.float32(std) * noise[sel]
        del noise
    if texture_ppm > 0:
        textured = [k for k in sorted(brain_labels) if k not in NO_TEXTURE]
        weights = rng.standard_normal((len(textured), N_TEXTURE_FIELDS))
        weights /= np.linalg.norm(weights, axis=1, keepdims=True)
        for j in range(N_TEXTURE_FIELDS):
            noise = smooth_noise(rng, shape, voxel_size_mm, oversample, TEXTURE_SIGMA_MM)
            noise *= _lut({k: texture_ppm * weights[i, j] for i, k in enumerate(textured)})[labels]
            chi += noise
            del noise
    return chi


# --------------------------------------------------------------------------- magnitude
def signal_fine(labels: np.ndarray, iron: np.ndarray, params: TissueParams, *, b0_tesla: float, te_s: float,
                rng: np.random.Generator, shape: Sequence[int], voxel_size_mm: Sequence[float],
                oversample: int) -> np.ndarray:
    """``PD exp(-TE R2*)`` on the fine grid (before partial volume, shading and texture)."""
    b0_scale = float(b0_tesla) / 3.0
    r2 = {k: (v if k == 10 else v * b0_scale) for k, v in R2STAR_3T.items()}
    r2[11] = params.r2star_vein_3t * b0_scale
    r2s = _lut(r2)[labels]
    iron_sel = np.isin(labels, IRON_LABELS)
    r2s[iron_sel] *= 1.0 + np.float32(R2STAR_IRON_COUPLING) * (iron[iron_sel] - 1.0)
    brain = (labels >= 1) & (labels <= 11) | (labels == 16)
    noise = smooth_noise(rng, shape, voxel_size_mm, oversample, R2STAR_SIGMA_MM)
    r2s[brain] *= 1.0 + np.float32(R2STAR_VARIATION) * noise[brain]
    del noise
    np.clip(r2s, 0.0, None, out=r2s)
    sig = _lut(PD)[labels]
    sig *= np.exp(-np.float32(te_s) * r2s)
    return sig


def coil_shading(shape: Sequence[int], voxel_size_mm: Sequence[float], rotation_deg: float,
                 head_semi_mm: Sequence[float] = (95.0, 115.0, 100.0)) -> np.ndarray:
    """Receive shading on the target grid (origin at the FOV centre); mean about 1 (see the module
    docstring).  Coils sit on an ellipsoid of ``head_semi_mm`` around the FOV centre."""
    axes = [((np.arange(n) - (n - 1) / 2.0) * v).astype(np.float32) for n, v in zip(shape, voxel_size_mm,
                                                                                   strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    total = np.zeros(tuple(int(n) for n in shape), dtype=np.float32)
    a2 = np.float32(COIL_RADIUS_MM**2)
    for k in range(COILS):
        phi = np.deg2rad(rotation_deg + 360.0 * k / COILS)
        elev = np.deg2rad(0.0 if k % 2 == 0 else 35.0)
        p = (head_semi_mm[0] * np.cos(elev) * np.sin(phi), head_semi_mm[1] * np.cos(elev) * np.cos(phi),
             head_semi_mm[2] * np.sin(elev))
        d2 = (x - np.float32(p[0])) ** 2 + (y - np.float32(p[1])) ** 2 + (z - np.float32(p[2])) ** 2
        s = a2 / (a2 + d2) ** 1.5
        total += s * s
    shading = np.sqrt(np.sqrt(total))
    return shading / np.float32(shading.mean())


# --------------------------------------------------------------------------- edges
def edge_overlap(chi: np.ndarray, magnitude: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float],
                 top_fraction: float = EDGE_TOP_FRACTION) -> dict[str, Any]:
    """Fraction of chi edges that are magnitude edges and the reverse (module docstring)."""
    cube = np.ones((3, 3, 3), dtype=bool)
    region = ndi.binary_erosion(mask, structure=cube)
    if region.sum() < 10:
        return {"chi_edges_in_magnitude": None, "magnitude_edges_in_chi": None,
                "reason": "the mask eroded by one voxel holds fewer than 10 voxels"}

    def edges(img):
        g = np.gradient(np.asarray(img, dtype=np.float64), *voxel_size_mm)
        mag = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
        vals = mag[region]
        thr = np.quantile(vals, 1.0 - top_fraction)
        return region & (mag >= thr) & (mag > 0)

    e_chi, e_mag = edges(chi), edges(magnitude)
    near_mag = ndi.binary_dilation(e_mag, structure=cube)
    near_chi = ndi.binary_dilation(e_chi, structure=cube)
    n_chi, n_mag = int(e_chi.sum()), int(e_mag.sum())
    return {
        "chi_edges_in_magnitude": round(float((e_chi & near_mag).sum() / max(n_chi, 1)), 4),
        "magnitude_edges_in_chi": round(float((e_mag & near_chi).sum() / max(n_mag, 1)), 4),
        "chi_edge_voxels": n_chi,
        "magnitude_edge_voxels": n_mag,
        "definition": (f"edge voxel: a voxel of the mask eroded by one voxel (3x3x3) whose gradient magnitude "
                       f"(central differences, per mm) is in the top {100 * top_fraction:g} % of that image's over "
                       "the eroded mask; chi_edges_in_magnitude = fraction of chi edge voxels with a magnitude "
                       "edge voxel in their 3x3x3 neighbourhood; magnitude_edges_in_chi = the reverse"),
    }


__all__ = ["PD", "R2STAR_3T", "RANGES", "TissueParams", "chi_fine", "coil_shading", "draw_tissue", "edge_overlap",
           "iron_relative", "signal_fine", "smooth_noise"]
