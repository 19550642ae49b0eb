"""Realistic head anatomy for the embedded phantom (``model="mni"``) and its subject-to-subject variation.

The anatomy comes from the MNI ICBM152 2009a nonlinear symmetric template (Fonov et al. 2009,
2011), whose grey- and white-matter probability maps and skull-stripped T1 (197x233x189 voxels
of 1 mm, uint8) the ``nilearn`` wheel bundles.  They are read as package data (no network, no
nilearn function): :func:`load_mni_template`, cached per process.

Template space
--------------
Positions are MNI coordinates in mm (x left->right, y posterior->anterior, z inferior->superior),
the same frame as the phantom's array axes 0, 1, 2.  From the template:

* *brain mask*: the T1's non-zero voxels (brain, ventricles and sulcal CSF, skull stripped);
  ``sdf`` is the signed distance to its boundary (mm, positive inside; computed on a 2 mm grid).
* *intracranial region* (the phantom's brain mask): the brain mask grown by an extra-cerebral
  CSF rim of ``csf_rim_mm`` (subarachnoid space), i.e. ``sdf > -csf_rim_mm``.
* *tissue classes* inside it: GM and WM probabilities from the template, CSF = 1 - GM - WM;
  each point gets the most probable class (ventricles and sulcal CSF come out as CSF).
* *deep grey nuclei*: ellipsoids (centres and semi-axes in :data:`NUCLEI`, mirrored left/right)
  painted over GM/WM (never over CSF, so ventricles keep their shape).  Caudate, putamen and
  thalamus are grey in the template's GM map, so their ellipsoids are painted over the voxels the
  template calls GM only (plus a core of 60 % of the ellipsoid): their outline follows the
  template's own anatomy.  Globus pallidus, red nucleus, substantia nigra/STN and dentate are
  white in a T1 template and are painted as ellipsoids.  Centres are rounded centres of mass from
  published MNI atlases: dentate from He et al., Cerebellum 2017, doi:10.1007/s12311-017-0872-7
  (QSM dentate atlas, +-13.8, -55.8, -36.4 mm); STN, SN and red nucleus after the 7 T ATAG atlas (Keuken et al.,
  NeuroImage 2014;94:40); caudate, putamen, pallidum and thalamus after the Harvard-Oxford
  subcortical atlas (Desikan et al., NeuroImage 2006;31:968; shipped with FSL).  Semi-axes give
  volumes in the range of the same atlases; positions were checked on the template's GM map.
* *veins* (label 11): the superior sagittal sinus follows the template's inner surface in the
  midline (rays cast from the brain centre to ``sdf = -1 mm``), from the frontal pole over the
  vertex to the confluence of sinuses; the transverse sinuses run laterally from the confluence
  along the posterior surface; the straight sinus joins the great cerebral vein (0, -50, 4) to
  the confluence; the paired internal cerebral veins run 3 mm from the midline above the third
  ventricle (standard venous anatomy, cf. the MNI venous atlas of Huck et al., Brain Struct Funct
  2019;224:2467).  Six to ten seeded cortical veins climb the lateral surface to the superior
  sagittal sinus.  Where a vein leaves the intracranial region, the region grows around it by a
  1.5 mm CSF halo, so that the mask boundary is CSF (chi = 0) everywhere: a vein cut by the mask
  would leave a field inside it that no chi inside explains (the cropped chi's Gibbs tail).
* *calcification* (optional, label 16): a sphere in the left globus pallidus, the commonest site
  of physiological basal-ganglia calcification.
* *head* outside the intracranial region (outside the mask; it carries no field): 7 mm of bone
  (13), then 5 mm of scalp fat (12), temporal muscle (15) laterally and a frontal sinus (14).

Subject-to-subject variation (the seed)
---------------------------------------
A seed is a subject (:func:`draw_subject`); every number below is drawn uniformly in its range
and recorded in ``meta.json`` (``meta["subject"]``):

* linear scale: the ICBM152 brain is larger than an average adult's (its brain mask holds
  1.89 L), so the template is scaled by ``0.89 * V**(1/3)`` with brain-volume factor ``V`` in
  [0.85, 1.15] (GM + WM about 1.0-1.4 L at 2 mm), times a per-axis factor in [0.97, 1.03];
* head rotation: [-3, 3] degrees about each axis (the brain is not perfectly aligned with B0);
* a smooth random diffeomorphic deformation: a stationary velocity field of three Gaussian
  random components (correlation length 20 mm) with RMS [2, 4] mm over the brain, exponentiated
  by scaling and squaring (2^6 steps), so the warp is invertible; the phantom is sampled through
  its inverse (the exponential of the negated field);
* ventricles: a linear scale factor in [0.85, 1.30] about the lateral ventricles' centre
  (0, -10, 18) mm, added to the velocity field as ``log(f) (y - c) w(y)`` with a Gaussian window
  ``w`` (semi-axes 14, 28, 14 mm): volume factor 0.6-2.2, as between young and elderly adults;
* extra-cerebral CSF rim: [1, 3] mm;
* each nucleus: size factor [0.9, 1.1] and shift [-1.5, 1.5] mm per axis, left and right apart;
* vessels: cortical-vein count [6, 10], their paths and radii [0.8, 1.4] mm; sinus radii factor
  [0.85, 1.15]; calcification radius [2.5, 3.5] mm and shift [-2, 2] mm per axis.

Iron content, venous oxygenation and coil shading vary with the seed as well; their ranges are
documented where they are used (:mod:`qsmbench.tissue`).  Two seeds are two plausible subjects:
at 2 mm the grey-matter labels of two seeds overlap with a Dice coefficient of about 0.66 (tested:
below 0.85 at 4 mm), their brain volumes differ by the drawn factors and every nucleus moves by
up to a few millimetres.  The resulting tissue volumes (labels at 4 mm, tested for two seeds):
grey matter 0.58-0.92 L, white matter 0.34-0.56 L, CSF (ventricles, sulci and the extra-cerebral
rim) 0.15-0.40 L, intracranial region 1.2-1.9 L.  Grey matter dominates (GM/WM about 1.7, above
the 1.2-1.5 of adult brains) because every voxel gets its most probable class from an average
template, whose blurred cortex has more GM than WM probability at the boundary.  The cortex is
folded: at 4 mm the surface-to-volume ratio of GM is 5.5 times that of a ball of the same volume
(WM 5 times; the analytic phantom's 3.2 and 1.5).

FOV
---
The target grid's field of view (``shape * voxel_size_mm``) is centred on the centre of the
template brain mask's bounding box (MNI (0, -17, 5) mm), scaled and deformed as above; the
physical size of the anatomy never depends on the FOV.  The default 80x96x80 grid of 2 mm
(160x192x160 mm) holds every subject (the template's brain mask spans 145x181x156 mm, scaled by
at most 0.96): for seeds 0-39 the intracranial region stays at least 4 mm from every face of
the FOV.  A smaller FOV crops the head.  The template ends 72 mm below the anterior commissure:
the brainstem is cut there (as by the FOV of a real acquisition).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from .errors import InputError

#: File names of the template maps in the nilearn wheel (nilearn/datasets/data/).
TEMPLATE_FILES = {
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
}
TEMPLATE_NAME = "MNI ICBM152 2009a nonlinear symmetric (GM/WM probability maps and T1, as bundled by nilearn)"
TEMPLATE_CITATION = (
    "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average age-appropriate brain "
    "templates from birth to adulthood. NeuroImage 2009;47:S102. Fonov V, Evans AC, Botteron K, Almli CR, "
    "McKinstry RC, Collins DL. Unbiased average age-appropriate atlases for pediatric studies. NeuroImage "
    "2011;54:313-327. Template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
    "Montreal Neurological Institute, McGill University (see the README for the full notice)."
)

#: Mean linear scale from the ICBM152 template brain to an average adult brain (see the docstring).
MEAN_SCALE = 0.89
#: Ranges of the subject parameters (uniform); documented in the module docstring.
RANGES: dict[str, tuple[float, float]] = {
    "brain_volume_factor": (0.85, 1.15),
    "axis_scale": (0.97, 1.03),
    "rotation_deg": (-3.0, 3.0),
    "deformation_rms_mm": (2.0, 4.0),
    "ventricle_factor": (0.85, 1.30),
    "csf_rim_mm": (1.0, 3.0),
    "nucleus_size": (0.9, 1.1),
    "nucleus_shift_mm": (-1.5, 1.5),
    "cortical_veins": (6, 10),
    "cortical_vein_radius_mm": (0.8, 1.4),
    "sinus_radius_factor": (0.85, 1.15),
    "calcification_radius_mm": (2.5, 3.5),
    "calcification_shift_mm": (-2.0, 2.0),
}
#: Correlation length (Gaussian sigma) of the random velocity field, mm.
DEFORMATION_SIGMA_MM = 20.0
#: Spacing of the grid the velocity field lives on, mm.
DEFORMATION_GRID_MM = 5.0
#: Scaling-and-squaring steps (the field is divided by 2**steps, then composed steps times).
SQUARING_STEPS = 6
#: Centre and Gaussian window (semi-axes, mm) of the ventricle scaling, MNI mm.
VENTRICLE_CENTRE = (0.0, -10.0, 18.0)
VENTRICLE_WINDOW_MM = (14.0, 28.0, 14.0)
#: Head layers outside the intracranial region, mm of template space.
BONE_MM = 7.0
SCALP_MM = 5.0


@dataclasses.dataclass(frozen=True)
class Nucleus:
    """A deep grey nucleus of the right hemisphere (mirrored for the left).

    ``centre`` and ``semi`` in MNI mm; ``angle_deg`` rotates the ellipsoid about z (positive:
    its anterior (+y) end towards the midline, -x; the long axes of thalamus, lentiform nucleus
    and dentate run from anteromedial to posterolateral, those of the caudate head and the
    nigra from anterolateral to posteromedial); ``grey_only``: paint over template-GM voxels only (plus the core);
    ``gradient``: unit direction (right hemisphere) along which its iron rises (see
    :mod:`qsmbench.tissue`).
    """

    name: str
    label: int
    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    angle_deg: float = 0.0
    grey_only: bool = False
    gradient: tuple[float, float, float] = (0.0, -1.0, 0.0)


#: Deep grey nuclei (right hemisphere), painted in this order (later ones win).  Sources in the
#: module docstring.  The iron gradients follow the known patterns: putamen and thalamus
#: (pulvinar) richer posteriorly, caudate anteriorly (head), globus pallidus medially (internal
#: segment), substantia nigra rostrally.
NUCLEI: tuple[Nucleus, ...] = (
    Nucleus("thalamus", 7, (11.0, -18.0, 7.0), (10.0, 16.5, 11.0), 8.0, True, (0.0, -1.0, 0.0)),
    Nucleus("caudate head", 1, (12.5, 13.0, 9.0), (7.0, 11.0, 11.0), -10.0, True, (0.0, 1.0, 0.0)),
    Nucleus("caudate body", 1, (16.0, -8.0, 19.0), (5.0, 14.0, 5.5), 15.0, True, (0.0, 1.0, 0.0)),
    Nucleus("putamen", 3, (25.0, 2.0, 1.0), (7.5, 18.0, 11.5), 12.0, True, (0.0, -1.0, 0.0)),
    Nucleus("globus pallidus", 2, (19.0, -4.0, -1.0), (5.0, 11.0, 7.0), 15.0, False, (-1.0, 0.0, 0.0)),
    Nucleus("subthalamic nucleus", 6, (11.5, -13.0, -6.0), (3.0, 6.0, 3.0), -30.0, False, (0.0, 1.0, 0.0)),
    Nucleus("substantia nigra", 6, (11.0, -17.0, -12.0), (3.5, 10.0, 4.5), -35.0, False, (0.0, 1.0, 0.0)),
    Nucleus("red nucleus", 4, (5.0, -20.0, -9.0), (4.0, 4.5, 4.5), 0.0, False, (0.0, 1.0, 0.0)),
    Nucleus("dentate nucleus", 5, (13.8, -55.8, -36.4), (6.0, 10.0, 6.5), 30.0, False, (1.0, 0.0, 0.0)),
)

#: The calcification (left globus pallidus), MNI mm.
CALCIFICATION_CENTRE = (-19.0, -4.0, -1.0)
#: Great cerebral vein (of Galen), start of the straight sinus, MNI mm.
GALEN = (0.0, -50.0, 4.0)
#: Internal cerebral vein path (right; mirrored), MNI mm, ending at the great cerebral vein.
INTERNAL_CEREBRAL_VEIN = ((3.0, 2.0, 12.0), (3.5, -12.0, 14.0), (3.0, -28.0, 12.0), (1.5, -40.0, 8.0),
                          (0.0, -48.0, 5.0))
#: Radii (mm, template space) before the seed's sinus factor.
SSS_RADIUS_MM = 3.5
TRANSVERSE_RADIUS_MM = 3.2
STRAIGHT_RADIUS_MM = 2.5
INTERNAL_VEIN_RADIUS_MM = 1.3
#: Where a vein leaves the intracranial region, the region grows around it by this CSF halo (mm).
VESSEL_HALO_MM = 1.5


# --------------------------------------------------------------------------- template
@dataclasses.dataclass(frozen=True, eq=False)
class Template:
    """An anatomy on a regular template grid (MNI mm), the input of :func:`build_anatomy`.

    ``gm``, ``wm`` (and optionally ``csf``, ``vessels``, ``head``: {"fat", "muscle", "bone"})
    are float32 probabilities on the template grid (``origin_mm`` = position of voxel (0, 0, 0),
    isotropic ``spacing_mm``).  ``sdf`` is the signed distance (mm) to the brain mask, positive
    inside, on the template grid subsampled by ``sdf_step``.  ``centre_mm`` is where the FOV is
    centred.  ``synthetic_vessels``: add the venous tree of this module (the MNI template has no
    vessels; BrainWeb has its own).  ``rim_inside_sdf``: the intracranial region is
    ``sdf > -csf_rim_mm`` (MNI: the rim of extra-cerebral CSF is added) or ``sdf > 0`` (BrainWeb,
    whose mask already holds its CSF).
    """

    name: str
    gm: np.ndarray
    wm: np.ndarray
    sdf: np.ndarray
    sdf_step: int
    origin_mm: tuple[float, float, float]
    spacing_mm: float
    centre_mm: tuple[float, float, float]
    citation: str
    csf: np.ndarray | None = None
    vessels: np.ndarray | None = None
    head: dict[str, np.ndarray] | None = None
    synthetic_vessels: bool = True
    add_csf_rim: bool = True


def _nilearn_data_dir():
    if importlib.util.find_spec("nilearn") is None:
        raise InputError("the realistic phantom (model 'mni') reads the MNI ICBM152 2009 template bundled with the "
                         "nilearn package, which is not installed: pip install nilearn==0.13.1 (or use "
                         "model='analytic')")
    return importlib.resources.files("nilearn") / "datasets" / "data"


def _read_template_map(name: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib  # noqa: PLC0415

    res = _nilearn_data_dir() / TEMPLATE_FILES[name]
    try:
        raw = gzip.decompress(res.read_bytes())
        img = nib.Nifti1Image.from_bytes(raw)
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(f"cannot read the MNI template file {res} from the nilearn package: {exc}") from None
    return np.asarray(img.dataobj), np.asarray(img.affine, dtype=float)


def signed_distance(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Signed Euclidean distance (mm) to the boundary of ``mask``: positive inside, negative outside.

    Each voxel's value is its distance to the nearest voxel of the other class minus half a
    voxel, so the zero level lies half-way between the last inside and the first outside voxel.
    """
    inside = ndi.distance_transform_edt(mask, sampling=spacing_mm)
    outside = ndi.distance_transform_edt(~mask, sampling=spacing_mm)
    return np.where(mask, inside, -outside).astype(np.float32) - np.float32(0.5 * spacing_mm) * np.where(
        mask, 1, -1).astype(np.float32)


@lru_cache(maxsize=1)
def load_mni_template() -> Template:
    """The ICBM152 2009a template as a :class:`Template` (cached per process, about 80 MB)."""
    gm, affine = _read_template_map("gm")
    wm, _ = _read_template_map("wm")
    t1, _ = _read_template_map("t1")
    if not (gm.shape == wm.shape == t1.shape and np.allclose(np.diag(affine)[:3], 1.0)):
        raise InputError(f"unexpected MNI template geometry: shapes {gm.shape}, {wm.shape}, {t1.shape}, "
                         f"affine {affine.tolist()}")
    scale = np.float32(1.0 / 255.0) if gm.dtype == np.uint8 else np.float32(1.0 / max(float(gm.max()), 1e-6))
    gm = np.ascontiguousarray(gm, dtype=np.float32) * scale
    wm = np.ascontiguousarray(wm, dtype=np.float32) * (np.float32(1.0 / 255.0) if wm.dtype == np.uint8 else
                                  np.float32(1.0 / max(float(wm.max()), 1e-6)))
    brain = t1 > 0
    step = 2
    sdf = np.ascontiguousarray(signed_distance(brain[::step, ::step, ::step], float(step)))
    origin = tuple(float(v) for v in affine[:3, 3])
    idx = [np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    centre = tuple(origin[ax] + 0.5 * (float(i[0]) + float(i[-1])) for ax, i in enumerate(idx))
    for a in (gm, wm, sdf):
        a.setflags(write=False)
    return Template(name=TEMPLATE_NAME, gm=gm, wm=wm, sdf=sdf, sdf_step=step, origin_mm=origin, spacing_mm=1.0,
                    centre_mm=centre, citation=TEMPLATE_CITATION)


# --------------------------------------------------------------------------- subject parameters
@dataclasses.dataclass(frozen=True)
class Subject:
    """The anatomical parameters of one subject (drawn from a seed by :func:`draw_subject`)."""

    seed: int
    deform: bool
    brain_volume_factor: float
    axis_scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    deformation_rms_mm: float
    ventricle_factor: float
    csf_rim_mm: float
    nuclei: tuple[tuple[float, tuple[float, float, float]], ...]  # (size, shift mm) per NUCLEI, right then left
    sinus_radius_factor: float
    cortical_veins: tuple[tuple[tuple[float, float, float], ...], ...]
    cortical_vein_radii: tuple[float, ...]
    calcification_centre: tuple[float, float, float]
    calcification_radius_mm: float
    velocity_seed: int

    @property
    def scale(self) -> np.ndarray:
        """Per-axis linear scale from template to subject."""
        if not self.deform:
            return np.ones(3)
        return MEAN_SCALE * self.brain_volume_factor ** (1.0 / 3.0) * np.asarray(self.axis_scale)

    @property
    def linear(self) -> np.ndarray:
        """The linear part ``A`` of the template-to-subject map (rotation times scale)."""
        if not self.deform:
            return np.eye(3)
        return _rotation(self.rotation_deg) @ np.diag(self.scale)

    def summary(self) -> dict[str, Any]:
        """What ``meta.json`` records (the vessel paths are left out: they follow from the seed)."""
        out = {
            "seed": self.seed,
            "anatomical_variation": self.deform,
            "linear_scale": [round(float(s), 4) for s in self.scale],
            "brain_volume_factor": round(self.brain_volume_factor, 4),
            "rotation_deg": [round(a, 3) for a in self.rotation_deg] if self.deform else [0.0, 0.0, 0.0],
            "deformation_rms_mm": round(self.deformation_rms_mm, 3),
            "ventricle_factor": round(self.ventricle_factor, 4),
            "csf_rim_mm": round(self.csf_rim_mm, 3),
            "nuclei": {f"{NUCLEI[i // 2].name} ({('right', 'left')[i % 2]})":
                       {"size": round(size, 4), "shift_mm": [round(s, 3) for s in shift]}
                       for i, (size, shift) in enumerate(self.nuclei)},
            "sinus_radius_factor": round(self.sinus_radius_factor, 4),
            "cortical_veins": len(self.cortical_veins),
            "calcification_radius_mm": round(self.calcification_radius_mm, 3),
            "ranges": {k: list(v) for k, v in RANGES.items()},
        }
        return out


def draw_subject(rng: np.random.Generator, seed: int, *, deform: bool = True) -> Subject:
    """Draw one subject's anatomical parameters (ranges: :data:`RANGES`, module docstring).

    ``deform=False`` keeps the template's size, shape and nucleus positions (BrainWeb subjects
    are real anatomies); vessels, calcification and the rest still follow ``rng``.
    """
    def u(key, size=None):
        lo, hi = RANGES[key]
        return rng.uniform(lo, hi, size)

    volume = float(u("brain_volume_factor"))
    axis = tuple(float(x) for x in u("axis_scale", 3))
    rot = tuple(float(x) for x in u("rotation_deg", 3))
    rms = float(u("deformation_rms_mm"))
    vent = float(u("ventricle_factor"))
    rim = float(u("csf_rim_mm"))
    nuclei = []
    for _ in NUCLEI:
        for _side in (0, 1):
            nuclei.append((float(u("nucleus_size")), tuple(float(x) for x in u("nucleus_shift_mm", 3))))
    sinus = float(u("sinus_radius_factor"))
    lo, hi = RANGES["cortical_veins"]
    n_veins = int(rng.integers(lo, hi + 1))
    veins = tuple(_cortical_vein_path(rng, i) for i in range(n_veins))
    radii = tuple(float(x) for x in u("cortical_vein_radius_mm", n_veins))
    calc_c = tuple(float(c + d) for c, d in zip(CALCIFICATION_CENTRE, u("calcification_shift_mm", 3), strict=True))
    calc_r = float(u("calcification_radius_mm"))
    vseed = int(rng.integers(0, 2**31 - 1))
    if not deform:
        nuclei = [(1.0, (0.0, 0.0, 0.0)) for _ in nuclei]
    return Subject(seed=int(seed), deform=deform, brain_volume_factor=volume, axis_scale=axis, rotation_deg=rot,
                   deformation_rms_mm=rms, ventricle_factor=vent, csf_rim_mm=rim, nuclei=tuple(nuclei),
                   sinus_radius_factor=sinus, cortical_veins=veins, cortical_vein_radii=radii,
                   calcification_centre=calc_c, calcification_radius_mm=calc_r, velocity_seed=vseed)


def _cortical_vein_path(rng: np.random.Generator, i: int) -> tuple[tuple[float, float, float], ...]:
    """(side, y, elevation) of a cortical vein's points: it climbs the lateral surface of one
    hemisphere, roughly in a coronal plane (its y drifts by up to 15 mm), from an elevation of
    0-30 degrees up to the vertex, where it meets the superior sagittal sinus.  Alternately right
    and left; turned into surface points by ray casting in :func:`_vessel_paths`."""
    side = 1.0 if i % 2 == 0 else -1.0
    y0 = float(rng.uniform(-75.0, 45.0))
    y1 = y0 + float(rng.uniform(-15.0, 15.0))
    el = np.linspace(float(rng.uniform(0.0, 30.0)), 80.0, 12)
    y = np.linspace(y0, y1, el.size) + np.cumsum(rng.normal(0.0, 1.5, el.size))
    return tuple((side, float(a), float(e)) for a, e in zip(y, el, strict=True))


# --------------------------------------------------------------------------- sampling helpers
def _sample(volume: np.ndarray, origin: np.ndarray, spacing: float, points_mm: Sequence[np.ndarray], *,
            cval: float = 0.0) -> np.ndarray:
    """Trilinear interpolation of ``volume`` at MNI points (arrays of any, equal shapes)."""
    shape = np.shape(points_mm[0])
    coords = np.empty((3, int(np.prod(shape))), dtype=np.float32)
    for ax in range(3):
        coords[ax] = ((np.asarray(points_mm[ax], dtype=np.float32) - np.float32(origin[ax]))
                      / np.float32(spacing)).ravel()
    out = ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=cval, prefilter=False)
    return out.reshape(shape).astype(np.float32, copy=False)


def sample_sdf(template: Template, points_mm: Sequence[np.ndarray]) -> np.ndarray:
    """Signed distance (mm) to the template brain mask at MNI points (far outside: -50)."""
    return _sample(template.sdf, np.asarray(template.origin_mm), template.spacing_mm * template.sdf_step,
                   points_mm, cval=-50.0)


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _interp_separable(arr: np.ndarray, axes_idx: Sequence[np.ndarray]) -> np.ndarray:
    """Linear interpolation of a 3-D array on the tensor grid of fractional indices (clamped)."""
    out = arr
    for ax, f in enumerate(axes_idx):
        n = out.shape[ax]
        f = np.clip(np.asarray(f, dtype=np.float64), 0.0, n - 1.0)
        i0 = np.minimum(np.floor(f).astype(np.intp), max(n - 2, 0))
        w = (f - i0).astype(np.float32)
        shp = [1, 1, 1]
        shp[ax] = w.size
        w = w.reshape(shp)
        a = np.take(out, i0, axis=ax)
        b = np.take(out, np.minimum(i0 + 1, n - 1), axis=ax)
        out = a + (b - a) * w
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- deformation
def _velocity_grid(subject: Subject, template: Template) -> tuple[np.ndarray, list[np.ndarray]]:
    """The stationary velocity field (3, nx, ny, nz) on a fixed grid of subject space (mm, origin
    at the brain centre), and the grid's axes.  Independent of the target FOV."""
    h = DEFORMATION_GRID_MM
    half = np.array([115.0, 135.0, 115.0])
    axes = [np.arange(-hh, hh + 0.5 * h, h) for hh in half]
    shape = tuple(a.size for a in axes)
    rng = np.random.default_rng(subject.velocity_seed)
    v = np.empty((3, *shape), dtype=np.float32)
    for c in range(3):
        v[c] = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), DEFORMATION_SIGMA_MM / h,
                                   mode="constant")
    yy = np.meshgrid(*axes, indexing="ij", sparse=True)
    brain = (yy[0] / 68.0) ** 2 + (yy[1] / 85.0) ** 2 + (yy[2] / 68.0) ** 2 <= 1.0
    rms = float(np.sqrt(np.mean(np.sum(v[:, brain] ** 2, axis=0))))
    v *= np.float32(subject.deformation_rms_mm / max(rms, 1e-12))
    # ventricle enlargement/shrinkage about the ventricles' centre, in subject space
    a = subject.linear
    cv = a @ (np.asarray(VENTRICLE_CENTRE) - np.asarray(template.centre_mm))
    d = [yy[i] - cv[i] for i in range(3)]
    w = np.exp(-0.5 * sum((d[i] / VENTRICLE_WINDOW_MM[i]) ** 2 for i in range(3)))
    lf = np.float32(np.log(subject.ventricle_factor))
    for c in range(3):
        v[c] += lf * (d[c] * w).astype(np.float32)
    return v, axes


def inverse_displacement(subject: Subject, template: Template, *, inverse: bool = True
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Displacement ``u`` of the inverse warp, ``phi^-1(y) = y + u(y)``, on the velocity grid.

    ``phi = exp(v)`` maps the (scaled, rotated) template to the subject; its inverse is
    ``exp(-v)``, computed by scaling and squaring: ``u = -v / 2^K``, then K times
    ``u(x) <- u(x) + u(x + u(x))`` (trilinear interpolation of ``u``).  ``inverse=False``
    returns the displacement of ``phi`` itself (for tests: the two compose to the identity).
    """
    v, axes = _velocity_grid(subject, template)
    h = DEFORMATION_GRID_MM
    u = (-v if inverse else v) / np.float32(2.0**SQUARING_STEPS)
    grid = np.meshgrid(*[np.arange(a.size, dtype=np.float32) for a in axes], indexing="ij")
    for _ in range(SQUARING_STEPS):
        coords = np.stack([grid[c] + u[c] / np.float32(h) for c in range(3)])
        u = u + np.stack([ndi.map_coordinates(u[c], coords, order=1, mode="nearest", prefilter=False)
                          for c in range(3)])
    return u.astype(np.float32), axes


# --------------------------------------------------------------------------- the subject on a grid
@dataclasses.dataclass
class Anatomy:
    """A subject sampled on a (fine) grid: labels and the MNI position of every voxel."""

    labels: np.ndarray          # int8, RC2 numbering, 0 outside the head
    mni: list[np.ndarray]       # three float32 arrays: MNI mm of each voxel (template space)
    nucleus_index: np.ndarray   # int8: index into NUCLEI of the nucleus painted (-1: none)
    vessel_paths: dict[str, Any]


def fine_axes_mm(shape: Sequence[int], voxel_size_mm: Sequence[float], oversample: int) -> list[np.ndarray]:
    """Subject-space positions (mm, origin at the FOV centre) of the fine samples along each axis.

    Target voxel ``m`` is centred at ``(m - (n - 1)/2) * v``; fine sample ``f`` sits at target
    coordinate ``f / oversample`` (the DFT-resampling layout of :mod:`qsmbench.phantom`).
    """
    return [((np.arange(n * oversample) / oversample) - (n - 1) / 2.0) * v
            for n, v in zip(shape, voxel_size_mm, strict=True)]


def template_positions(subject: Subject, template: Template, axes_mm: Sequence[np.ndarray]) -> list[np.ndarray]:
    """MNI position (mm) of every grid point of the tensor grid ``axes_mm`` (subject space).

    ``t = c + A^-1 (y + u(y))`` with ``A`` the subject's rotation times scale, ``c`` the template
    centre and ``u`` the inverse warp's displacement (:func:`inverse_displacement`).
    """
    ainv = np.linalg.inv(subject.linear).astype(np.float32)
    c = np.asarray(template.centre_mm, dtype=np.float32)
    shape = tuple(a.size for a in axes_mm)
    y = [np.asarray(a, dtype=np.float32).reshape([-1 if i == ax else 1 for i in range(3)])
         for ax, a in enumerate(axes_mm)]
    if subject.deform:
        u, gaxes = inverse_displacement(subject, template)
        ut = np.einsum("rk,kxyz->rxyz", ainv, u).astype(np.float32)  # A^-1 u on the (small) velocity grid
        idx = [(a - g[0]) / DEFORMATION_GRID_MM for a, g in zip(axes_mm, gaxes, strict=True)]
    out = []
    for r in range(3):
        lin = c[r] + ainv[r, 0] * y[0] + ainv[r, 1] * y[1] + ainv[r, 2] * y[2]  # broadcasts to shape
        if subject.deform:
            t = _interp_separable(ut[r], idx)
            t += lin
        else:
            t = np.broadcast_to(lin, shape).astype(np.float32)
        out.append(t)
    return out


class _Boxes:
    """Index boxes of a fine grid that hold given MNI regions (via a coarse copy of the positions)."""

    def __init__(self, mni: Sequence[np.ndarray], step: int = 6):
        self.step = step
        self.shape = mni[0].shape
        self.coarse = [m[::step, ::step, ::step] for m in mni]
        # largest MNI distance between neighbouring coarse samples: a region closer than that to no
        # coarse sample cannot exist, so growing it by this much finds it
        gaps = [np.abs(np.diff(c, axis=ax)).max() for c in self.coarse for ax in range(3) if c.shape[ax] > 1]
        self.pad = 1.1 * float(max(gaps)) if gaps else 0.0

    def box(self, lo: Sequence[float], hi: Sequence[float], margin: float) -> tuple[slice, slice, slice] | None:
        """Index box holding every grid point within ``margin`` mm (MNI) of the box ``lo``..``hi``."""
        margin = margin + self.pad
        ok = np.ones(self.coarse[0].shape, dtype=bool)
        for ax in range(3):
            ok &= (self.coarse[ax] >= lo[ax] - margin) & (self.coarse[ax] <= hi[ax] + margin)
        if not ok.any():
            return None
        sl = []
        for ax in range(3):
            hit = np.nonzero(ok.any(axis=tuple(a for a in range(3) if a != ax)))[0]
            i0 = max(int(hit[0]) * self.step - self.step, 0)
            i1 = min(int(hit[-1]) * self.step + self.step + 1, self.shape[ax])
            sl.append(slice(i0, i1))
        return tuple(sl)


def _ellipsoid_q(mni, sl, centre, semi, angle_deg) -> np.ndarray:
    """Quadratic form ((R^T (x - c)) / semi)^2 summed (<= 1 inside) on a box of the grid."""
    a = np.deg2rad(angle_deg)
    ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
    dx = mni[0][sl] - np.float32(centre[0])
    dy = mni[1][sl] - np.float32(centre[1])
    dz = mni[2][sl] - np.float32(centre[2])
    # rotation about z by +angle takes the ellipsoid's axes to world; invert it on the offsets
    px = ca * dx + sa * dy
    py = -sa * dx + ca * dy
    return (px / np.float32(semi[0])) ** 2 + (py / np.float32(semi[1])) ** 2 + (dz / np.float32(semi[2])) ** 2


def _segment_d2(mni, sl, a, b) -> np.ndarray:
    """Squared distance of the grid points of a box to the segment a-b (MNI mm)."""
    a = np.asarray(a, dtype=np.float32)
    v = np.asarray(b, dtype=np.float32) - a
    vv = float(v @ v)
    d = [mni[i][sl] - a[i] for i in range(3)]
    if vv == 0.0:
        return d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    t = np.clip((d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / np.float32(vv), 0.0, 1.0)
    return (d[0] - t * v[0]) ** 2 + (d[1] - t * v[1]) ** 2 + (d[2] - t * v[2]) ** 2


def _ray_surface(template: Template, origin: Sequence[float], direction: Sequence[float], level: float,
                 max_mm: float = 140.0, step: float = 0.5) -> np.ndarray:
    """The farthest point along a ray from ``origin`` whose template ``sdf`` is >= ``level``."""
    d = np.asarray(direction, dtype=float)
    d /= np.linalg.norm(d)
    s = np.arange(0.0, max_mm, step)
    pts = np.asarray(origin, dtype=float)[:, None] + d[:, None] * s[None, :]
    vals = sample_sdf(template, [pts[0], pts[1], pts[2]])
    ok = np.nonzero(vals >= level)[0]
    return pts[:, int(ok[-1]) if ok.size else 0]


#: Origin of the rays that place the sinuses and cortical veins (near the brain centre), MNI mm.
RAY_ORIGIN = (0.0, -18.0, 12.0)


@lru_cache(maxsize=4)
def _sinus_paths(template: Template) -> dict[str, np.ndarray]:
    """Template-space polylines of the superior sagittal, transverse and straight sinuses."""
    o = np.asarray(RAY_ORIGIN)
    theta = np.deg2rad(np.linspace(-8.0, 198.0, 48))  # from anterior (0) over the vertex (90) to posterior
    sss = np.array([_ray_surface(template, o, (0.0, np.cos(t), np.sin(t)), -1.0) for t in theta])
    # the confluence: where the midline surface meets the tentorium level behind the occipital lobes
    confluence = _ray_surface(template, (0.0, -40.0, -8.0), (0.0, -1.0, 0.0), -1.0)
    sss = np.vstack([sss[sss[:, 2] > confluence[2] + 4.0], confluence[None, :]])
    transverse = {}
    for side in (1.0, -1.0):
        phi = np.deg2rad(np.linspace(0.0, 75.0, 14))
        pts = [_ray_surface(template, (0.0, -30.0, confluence[2] - 4.0 * np.sin(p)),
                            (side * np.sin(p), -np.cos(p), -0.12 * np.sin(p)), -1.0) for p in phi]
        transverse["right" if side > 0 else "left"] = np.vstack([confluence[None, :], np.asarray(pts)[1:]])
    straight = np.array([GALEN, confluence])
    return {"superior sagittal sinus": sss, "straight sinus": straight,
            "transverse sinus (right)": transverse["right"], "transverse sinus (left)": transverse["left"]}


def _vessel_paths(template: Template, subject: Subject) -> list[tuple[str, np.ndarray, float]]:
    """(name, MNI polyline, radius mm) of every vessel of the subject (template space)."""
    f = subject.sinus_radius_factor
    out = []
    if template.synthetic_vessels:
        sinus = _sinus_paths(template)
        out.append(("superior sagittal sinus", sinus["superior sagittal sinus"], SSS_RADIUS_MM * f))
        out.append(("straight sinus", sinus["straight sinus"], STRAIGHT_RADIUS_MM * f))
        for side in ("right", "left"):
            out.append((f"transverse sinus ({side})", sinus[f"transverse sinus ({side})"], TRANSVERSE_RADIUS_MM * f))
        for s in (1.0, -1.0):
            pts = np.array([(s * x, y, z) for x, y, z in INTERNAL_CEREBRAL_VEIN])
            out.append((f"internal cerebral vein ({'right' if s > 0 else 'left'})", pts, INTERNAL_VEIN_RADIUS_MM))
        for i, (path, r) in enumerate(zip(subject.cortical_veins, subject.cortical_vein_radii, strict=True)):
            pts = []
            for side, y, el in path:
                e = np.deg2rad(el)
                pts.append(_ray_surface(template, (0.0, y, RAY_ORIGIN[2]), (side * np.cos(e), 0.0, np.sin(e)), 0.5))
            out.append((f"cortical vein {i + 1}", np.asarray(pts), float(r)))
    return out


def build_anatomy(template: Template, subject: Subject, shape: Sequence[int], voxel_size_mm: Sequence[float],
                  oversample: int, *, calcification: bool) -> Anatomy:
    """Label the ``oversample * shape`` grid of the target FOV with the subject's anatomy."""
    axes = fine_axes_mm(shape, voxel_size_mm, oversample)
    mni = template_positions(subject, template, axes)
    origin = np.asarray(template.origin_mm)
    sp = template.spacing_mm
    sdf = sample_sdf(template, mni)
    rim = subject.csf_rim_mm if template.add_csf_rim else 0.0
    icv = sdf > -rim
    inside = [m[icv] for m in mni]  # tissue maps are needed inside the intracranial region only
    gm = np.zeros(icv.shape, dtype=np.float32)
    wm = np.zeros(icv.shape, dtype=np.float32)
    gm[icv] = _sample(template.gm, origin, sp, inside)
    wm[icv] = _sample(template.wm, origin, sp, inside)
    if template.csf is not None:
        csf = np.zeros(icv.shape, dtype=np.float32)
        csf[icv] = _sample(template.csf, origin, sp, inside)
    else:
        csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    del inside
    labels = np.zeros(mni[0].shape, dtype=np.int8)
    labels[icv] = 10
    labels[icv & (gm > wm) & (gm >= csf)] = 9
    labels[icv & (wm >= gm) & (wm >= csf)] = 8
    del csf
    if template.head is not None:
        _paint_head_memberships(labels, template, mni, icv)
    else:
        _paint_head_layers(labels, sdf + np.float32(rim), mni)
    del sdf
    nucleus_index = np.full(labels.shape, -1, dtype=np.int8)
    boxes = _Boxes(mni)
    for k, nuc in enumerate(NUCLEI):
        for side_i, side in enumerate((1.0, -1.0)):
            size, shift = subject.nuclei[2 * k + side_i]
            centre = (side * nuc.centre[0] + shift[0], nuc.centre[1] + shift[1], nuc.centre[2] + shift[2])
            semi = tuple(s * size for s in nuc.semi)
            angle = side * nuc.angle_deg
            reach = max(semi)
            sl = boxes.box(np.asarray(centre) - reach, np.asarray(centre) + reach, 0.5)
            if sl is None:
                continue
            q = _ellipsoid_q(mni, sl, centre, semi, angle)
            sub = labels[sl]
            tissue = (sub == 8) | (sub == 9) | ((sub >= 1) & (sub <= 7))
            if nuc.grey_only:
                grey = gm[sl] > wm[sl]
                ins = (q <= 1.0) & tissue & (grey | (q <= 0.36))
            else:
                ins = (q <= 1.0) & tissue
            sub[ins] = nuc.label
            nucleus_index[sl][ins] = k
    del gm, wm
    if template.vessels is not None:
        ves = _sample(template.vessels, origin, sp, mni)
        labels[icv & (ves > 0.5)] = 11
        del ves
    paths = _vessel_paths(template, subject)
    for _name, pts, radius in paths:
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            sl = boxes.box(np.minimum(a, b), np.maximum(a, b), radius + VESSEL_HALO_MM + 0.5)
            if sl is None:
                continue
            d2 = _segment_d2(mni, sl, a, b)
            sub = labels[sl]
            outside = (sub == 0) | (sub >= 12) & (sub <= 15)
            # where a vein leaves the intracranial region, the region grows around it by a CSF halo,
            # so the mask boundary is CSF (chi = 0) there too, as everywhere else
            halo = outside & (d2 <= np.float32((radius + VESSEL_HALO_MM) ** 2))
            sub[halo] = 10
            ins = d2 <= np.float32(radius**2)
            sub[ins] = 11
            nucleus_index[sl][ins] = -1
    if calcification:
        c, r = subject.calcification_centre, subject.calcification_radius_mm
        sl = boxes.box(np.asarray(c) - r, np.asarray(c) + r, 0.5)
        if sl is not None:
            ins = (_segment_d2(mni, sl, c, c) <= np.float32(r * r)) & icv[sl]
            labels[sl][ins] = 16
            nucleus_index[sl][ins] = -1
    vessel_record = {name: {"radius_mm": round(float(radius), 3), "points": int(len(pts))}
                     for name, pts, radius in paths}
    return Anatomy(labels=labels, mni=mni, nucleus_index=nucleus_index, vessel_paths=vessel_record)


def _paint_head_layers(labels: np.ndarray, depth: np.ndarray, mni: Sequence[np.ndarray]) -> None:
    """Bone, scalp fat, temporal muscle and frontal sinus outside the intracranial region.

    ``depth`` is the signed distance to the intracranial boundary (mm, negative outside)."""
    outside = labels == 0
    bone = outside & (depth > -BONE_MM)
    scalp = outside & ~bone & (depth > -(BONE_MM + SCALP_MM)) & (depth > -45.0)
    labels[bone] = 13
    labels[scalp] = 12
    temporal = scalp & (np.abs(mni[0]) > 48.0) & (mni[2] > -30.0) & (mni[2] < 25.0) & (mni[1] > -45.0) & (
        mni[1] < 25.0)
    labels[temporal] = 15
    sinus = bone & (((mni[0] / 14.0) ** 2 + ((mni[1] - 76.0) / 8.0) ** 2 + ((mni[2] + 2.0) / 10.0) ** 2) <= 1.0)
    labels[sinus] = 14


def _paint_head_memberships(labels: np.ndarray, template: Template, mni, icv: np.ndarray) -> None:
    """Head tissues from membership maps (BrainWeb): the most probable of fat, muscle and bone."""
    origin = np.asarray(template.origin_mm)
    outside = ~icv
    names = ("fat", "muscle", "bone")
    codes = np.array([12, 15, 13], dtype=np.int8)
    maps = np.stack([_sample(template.head[n], origin, template.spacing_mm, mni) for n in names])
    best = np.argmax(maps, axis=0)
    present = maps.max(axis=0) > 0.5
    labels[outside & present] = codes[best[outside & present]]


__all__ = ["NUCLEI", "RANGES", "Anatomy", "Nucleus", "Subject", "Template", "build_anatomy", "draw_subject",
           "fine_axes_mm", "inverse_displacement", "load_mni_template", "sample_sdf", "signed_distance",
           "template_positions"]
