"""The realistic default phantom (model 'mni'): anatomy, subject variation, tissue model, edges.

Small grids (4 mm voxels: 40x48x40 covers the whole head) keep every phantom to a second or two.
The stated ranges are those of the module docstrings of qsmbench.anatomy and qsmbench.tissue.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from qsmbench import anatomy, perturb, physics, tissue
from qsmbench.phantom import BRAIN_LABELS, CHI_PPM, LABELS, PHANTOM_VERSION, make_phantom

SHAPE, VOXEL = (40, 48, 40), (4.0, 4.0, 4.0)
ML = float(np.prod(VOXEL)) / 1000.0


@pytest.fixture(scope="module")
def subjects():
    return {s: make_phantom(SHAPE, VOXEL, seed=s, calcification=True) for s in (0, 1)}


@pytest.fixture(scope="module")
def vol(subjects):
    return subjects[0]


def _misfit(v) -> float:
    f = physics.forward_field(v.references["chi"].astype(np.float64), v.voxel_size_mm, v.b0_dir, d0=0.0)
    return float(np.linalg.norm((f - v.field_ppm)[v.mask]) / np.linalg.norm(v.field_ppm[v.mask]))


def _faces(m: np.ndarray) -> int:
    """Number of voxel faces between ``m`` and its complement (the voxelised surface area)."""
    return sum(int(np.abs(np.diff(np.pad(m, [(1, 1) if a == ax else (0, 0) for a in range(3)]).astype(np.int8),
                                  axis=ax)).sum()) for ax in range(3))


def _ball_surface_per_voxel(n: int) -> float:
    r = (3 * n / (4 * np.pi)) ** (1 / 3)
    g = np.indices((int(2 * r) + 6,) * 3) - (int(2 * r) + 6) / 2
    ball = (g ** 2).sum(axis=0) <= r * r
    return _faces(ball) / ball.sum()


# --------------------------------------------------------------------------- the volume
def test_volume_structure_and_provenance(vol):
    assert vol.shape == SHAPE and vol.voxel_size_mm == VOXEL
    assert vol.meta["model"] == "mni" and vol.meta["phantom_version"] == PHANTOM_VERSION
    assert vol.meta["source"] == "embedded phantom" and vol.meta["seed"] == 0
    assert "ICBM152" in vol.meta["template"]["name"] and "Fonov" in vol.meta["template"]["citation"]
    assert np.array_equal(vol.mask, np.isin(vol.labels, list(BRAIN_LABELS)))
    assert np.all(vol.field_ppm[~vol.mask] == 0) and np.all(vol.references["chi"][~vol.mask] == 0)
    assert vol.labels[0, 0, 0] == 0  # air in the FOV's corner
    for k in (12, 13, 15):  # scalp fat, bone, temporal muscle outside the brain
        assert (vol.labels == k).any(), LABELS[k]


def test_every_brain_label_is_present(subjects):
    for v in subjects.values():
        for k in sorted(BRAIN_LABELS):
            assert (v.labels == k).any(), f"label {k} ({LABELS[k]}) missing"
    assert not (make_phantom(SHAPE, VOXEL, seed=0).labels == 16).any()  # calcification only on request


def test_tissue_volumes_within_the_stated_ranges(subjects):
    """qsmbench.anatomy: GM 0.58-0.92 L, WM 0.34-0.56 L, CSF 0.15-0.40 L, intracranial 1.2-1.9 L."""
    for v in subjects.values():
        gm, wm, csf = ((v.labels == k).sum() * ML for k in (9, 8, 10))
        assert 580 < gm < 920 and 340 < wm < 560 and 150 < csf < 400, (gm, wm, csf)
        assert 1200 < v.mask.sum() * ML < 1900


def test_cortex_is_folded(vol):
    """GM's and WM's surface-to-volume ratios are far above a ball's of the same volume (the
    analytic phantom: GM 3.2x, WM 1.5x; a smooth shell would give WM about 1x)."""
    for label, least in ((9, 4.5), (8, 4.0)):
        m = vol.labels == label
        ratio = (_faces(m) / m.sum()) / _ball_surface_per_voxel(int(m.sum()))
        assert ratio > least, (LABELS[label], ratio)


def test_deep_grey_nuclei_sit_where_the_atlas_puts_them(vol):
    """Each nucleus's centroid is within 6 mm (plus the subject's shift and scaling) of its MNI
    centre mapped to the subject: the anatomy is in the right place."""
    subject = anatomy.draw_subject(np.random.default_rng(0).spawn(3)[0], 0)
    scale = subject.scale
    template = anatomy.load_mni_template()
    axes = [((np.arange(n) - (n - 1) / 2.0) * v) for n, v in zip(SHAPE, VOXEL, strict=True)]
    mni = anatomy.template_positions(subject, template, axes)
    for label, name in ((7, "thalamus"), (3, "putamen"), (5, "dentate nucleus"), (4, "red nucleus")):
        nuc = next(n for n in anatomy.NUCLEI if n.name == name)
        right = (vol.labels == label) & (mni[0] > 0)
        got = np.array([m[right].mean() for m in mni])
        assert np.linalg.norm(got - np.array(nuc.centre)) < 6.0 / scale.min(), (name, got)


# --------------------------------------------------------------------------- subjects
def test_subject_parameters_within_ranges_and_recorded(vol):
    a = vol.meta["anatomy"]
    lo, hi = anatomy.RANGES["brain_volume_factor"]
    assert lo <= a["brain_volume_factor"] <= hi
    assert anatomy.RANGES["deformation_rms_mm"][0] <= a["deformation_rms_mm"] <= anatomy.RANGES["deformation_rms_mm"][1]
    assert anatomy.RANGES["ventricle_factor"][0] <= a["ventricle_factor"] <= anatomy.RANGES["ventricle_factor"][1]
    assert len(a["nuclei"]) == 2 * len(anatomy.NUCLEI)
    t = vol.meta["tissue"]
    assert tissue.RANGES["iron_factor"][0] <= t["iron_factor"] <= tissue.RANGES["iron_factor"][1]
    assert 0.30 < t["chi_vein_ppm"] < 0.44  # Hct 0.42, Y 0.70-0.78


def test_two_seeds_are_two_subjects(subjects):
    """Documented: GM labels of two seeds overlap with Dice < 0.85 at 4 mm; their parameters differ."""
    a, b = subjects[0], subjects[1]
    ga, gb = a.labels == 9, b.labels == 9
    dice = 2 * (ga & gb).sum() / (ga.sum() + gb.sum())
    assert dice < 0.85
    assert a.meta["anatomy"]["brain_volume_factor"] != b.meta["anatomy"]["brain_volume_factor"]
    assert a.meta["tissue"]["venous_oxygenation"] != b.meta["tissue"]["venous_oxygenation"]
    assert a.meta["anatomy"]["cortical_veins"] >= 6 and b.meta["anatomy"]["cortical_veins"] >= 6


def test_same_seed_same_subject(vol):
    again = make_phantom(SHAPE, VOXEL, seed=0, calcification=True)
    for x, y in ((vol.field_ppm, again.field_ppm), (vol.references["chi"], again.references["chi"]),
                 (vol.magnitude, again.magnitude), (vol.labels, again.labels)):
        assert np.array_equal(x, y)


def test_deformation_is_a_diffeomorphism():
    """exp(v) and exp(-v) (scaling and squaring) compose to the identity, and the inverse warp's
    Jacobian determinant is positive everywhere: the warp folds nothing."""
    template = anatomy.load_mni_template()
    subject = anatomy.draw_subject(np.random.default_rng(5), 5)
    inv, axes = anatomy.inverse_displacement(subject, template)
    fwd, _ = anatomy.inverse_displacement(subject, template, inverse=False)
    h = anatomy.DEFORMATION_GRID_MM
    grid = np.meshgrid(*[np.arange(a.size, dtype=np.float32) for a in axes], indexing="ij")
    at = np.stack([grid[c] + inv[c] / h for c in range(3)])
    comp = inv + np.stack([ndi.map_coordinates(fwd[c], at, order=1, mode="nearest") for c in range(3)])
    inner = tuple(slice(4, -4) for _ in range(3))
    rms = np.sqrt((inv[(slice(None), *inner)] ** 2).sum(axis=0).mean())
    assert rms > 1.0  # a real deformation (RMS 2-4 mm over the brain by construction)
    assert np.abs(comp[(slice(None), *inner)]).max() < 0.25 * rms
    jac = np.stack([np.stack(np.gradient(inv[c], h), axis=0) for c in range(3)])  # d u_c / d x_k
    jac += np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    assert det.min() > 0.2


# --------------------------------------------------------------------------- chi and magnitude
def test_field_consistent_with_chi_inside_the_mask(vol):
    """forward(truth) is close to the field (simulated on the 2x finer grid and cropped) but not
    equal to it (no inverse crime).  The misfit is the Gibbs tail of the cropped chi outside the
    mask (2 % at 2 mm, about 5 % at 4 mm)."""
    assert 1e-3 < _misfit(vol) < 0.08


def test_oversample_one_commits_the_inverse_crime():
    v = make_phantom((32, 40, 32), (5.0, 5.0, 5.0), seed=3, oversample=1)
    assert _misfit(v) < 1e-5


def test_chi_values_follow_the_tables_and_the_iron_gradient():
    v = make_phantom((54, 64, 54), (3.0, 3.0, 3.0), seed=4, texture_ppm=0.0)
    chi, lab = v.references["chi"], v.labels
    core = {k: ndi.binary_erosion(lab == k) for k in (8, 9)}
    assert chi[core[8]].mean() == pytest.approx(CHI_PPM[8], abs=0.01)
    assert chi[core[9]].mean() == pytest.approx(CHI_PPM[9], abs=0.01)
    iron = v.meta["tissue"]["iron_factor"]
    gp = chi[lab == 2].mean()
    assert gp > 0.5 * CHI_PPM[2] * iron and gp > chi[lab == 3].mean() > chi[core[8]].mean()
    assert chi[lab == 11].mean() > 0.15  # veins paramagnetic (partial volume at 3 mm)
    # putamen: iron (chi) rises posteriorly (array axis 1 runs posterior -> anterior)
    put = lab == 3
    y = np.indices(lab.shape)[1]
    mid = np.median(y[put])
    assert chi[put & (y < mid)].mean() > chi[put & (y > mid)].mean()


def test_magnitude_is_a_model_of_its_own(vol):
    mag, lab = vol.magnitude, vol.labels
    assert np.all(np.isfinite(mag)) and mag.min() >= 0 and np.quantile(mag[vol.mask], 0.99) == pytest.approx(1.0)
    mean = {k: mag[lab == k].mean() for k in (2, 3, 8, 9, 10, 11)}
    assert mean[10] > mean[9] > mean[8] > mean[2]  # CSF bright, GM > WM, pallidum dark (T2*)
    assert mean[11] < mean[10]  # veins darker than the CSF around them (at 4 mm mostly partial volume)
    # against the white matter around it, the putamen is a chi edge but hardly a magnitude edge
    # (R2* 28 vs 21 s^-1, PD 0.82 vs 0.69), the globus pallidus both (R2* 40 s^-1)
    chi = vol.references["chi"]

    def contrast(k):
        ring = ndi.binary_dilation(lab == k) & (lab == 8)
        return mag[lab == k].mean() / mag[ring].mean() - 1, chi[lab == k].mean() - chi[ring].mean()

    (m_put, c_put), (m_gp, c_gp) = contrast(3), contrast(2)
    assert abs(m_put) < 0.1 and c_put > 0.04
    assert m_gp < -0.1 and c_gp > 0.08


def test_edge_overlap_within_the_stated_range(vol):
    """qsmbench.tissue: at 4 mm about 0.5-0.65 both ways for the mni model (0.35-0.45 at 2 mm),
    against 0.95 / 0.87 for the analytic phantom's per-label magnitude."""
    e = vol.meta["edge_overlap"]
    assert 0.3 < e["chi_edges_in_magnitude"] < 0.8 and 0.3 < e["magnitude_edges_in_chi"] < 0.8
    analytic = make_phantom(SHAPE, VOXEL, model="analytic", seed=0, calcification=True).meta["edge_overlap"]
    assert analytic["chi_edges_in_magnitude"] > e["chi_edges_in_magnitude"] + 0.2
    assert "top 10 %" in e["definition"]


def test_edge_overlap_on_planar_edges():
    """chi has one step, the magnitude two (one at chi's): all chi edges are magnitude edges, half
    of the magnitude's edges are chi edges."""
    shape = (40, 8, 8)
    mask = np.ones(shape, dtype=bool)
    x = np.indices(shape)[0]
    chi = (x >= 10).astype(float)
    mag = (x >= 10).astype(float) + (x >= 25).astype(float)
    e = tissue.edge_overlap(chi, mag, mask, (1.0, 1.0, 1.0), top_fraction=0.2)
    assert e["chi_edge_voxels"] == 2 * 6 * 6 and e["magnitude_edge_voxels"] == 4 * 6 * 6
    assert e["chi_edges_in_magnitude"] == 1.0 and e["magnitude_edges_in_chi"] == 0.5


# --------------------------------------------------------------------------- geometry and perturbations
def test_any_grid_and_anisotropic_voxels():
    v = make_phantom((45, 50, 39), (3.5, 3.0, 4.2), seed=7, b0_dir=(0.0, 0.3, 1.0))
    assert v.shape == (45, 50, 39) and np.allclose(np.diag(v.affine)[:3], (3.5, 3.0, 4.2))
    for k in (1, 3, 7, 8, 9, 10, 11):
        assert (v.labels == k).any(), LABELS[k]
    assert 1e-3 < _misfit(v) < 0.12
    # the anatomy keeps its physical size: the intracranial volume does not depend on the grid
    assert v.mask.sum() * 3.5 * 3.0 * 4.2 / 1000 == pytest.approx(
        make_phantom(SHAPE, VOXEL, seed=7).mask.sum() * ML, rel=0.06)


def test_orientation_perturbation_regenerates_the_same_subject(vol):
    tilted = perturb.tilt_b0(vol, 30.0)
    direct = make_phantom(SHAPE, VOXEL, seed=0, calcification=True, b0_dir=tilted.b0_dir)
    assert np.array_equal(tilted.field_ppm, direct.field_ppm)
    assert np.array_equal(tilted.references["chi"], vol.references["chi"])
    assert not np.allclose(tilted.field_ppm, vol.field_ppm)


def test_unknown_model_and_misplaced_subject_are_errors():
    with pytest.raises(ValueError, match="unknown phantom model"):
        make_phantom(SHAPE, VOXEL, model="ellipsoid")
    with pytest.raises(ValueError, match="BrainWeb"):
        make_phantom(SHAPE, VOXEL, model="mni", subject=4)
