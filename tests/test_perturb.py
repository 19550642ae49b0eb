"""Perturbations: noise level, resolution by k-space cropping, B0 tilt; ids; config expansion."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import numpy as np
import pytest

from qsmbench import config as qconfig
from qsmbench import io, perturb, physics
from qsmbench.contract import contract_volume
from qsmbench.errors import ConfigError, InputError
from qsmbench.phantom import make_phantom
from qsmbench.registry import get_method_class
from qsmbench.runner import derive_seed
from qsmbench.volume import Volume


@pytest.fixture(scope="module")
def phantom():
    """A small embedded phantom (3 mm, simulated on a 1.5 mm grid)."""
    return make_phantom((32, 32, 32), (3.0, 3.0, 3.0), model="analytic", seed=2, calcification=True)


def flat_volume(shape=(40, 40, 40), field_rad=None, magnitude=None, b0_tesla=3.0, te_s=0.025) -> Volume:
    """Mask = everything but a one-voxel border; a field given as phase (rad)."""
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    phase = np.zeros(shape) if field_rad is None else field_rad
    field = physics.rad_to_ppm(phase, b0_tesla, te_s) * mask
    return Volume(field_ppm=field.astype(np.float64), mask=mask, voxel_size_mm=(1.0, 1.0, 1.0),
                  b0_tesla=b0_tesla, te_s=te_s, magnitude=magnitude, references={"chi": np.zeros(shape)},
                  name="flat")


# --------------------------------------------------------------------------- ids
@pytest.mark.parametrize("text", ["none", "noise-snr20-seed1", "noise-snr12.5-seed3", "res-1x1x2", "res-1.5x1.5x1.5",
                                  "orient-30", "orient-0", "orient-22.5-axis0x1x0", "orient-30-axis1xm1x0",
                                  "orient-30+noise-snr20-seed1", "orient-15+res-3x3x6+noise-snr40-seed2"])
def test_ids_round_trip(text):
    comps = perturb.parse_slug(text)
    assert perturb.slug(comps) == text
    assert perturb.parse_slug(perturb.slug(comps)) == comps


def test_id_parameters_and_labels():
    assert perturb.parse_slug("orient-30-axis0x1x0+noise-snr12.5-seed3") == [
        {"kind": "orientation", "theta_deg": 30.0, "axis": [0.0, 1.0, 0.0]},
        {"kind": "noise", "snr": 12.5, "seed_index": 3}]
    assert perturb.axis_name("orient-30+noise-snr20-seed1") == "orientation+noise"
    assert perturb.axis_name("none") == "none"
    assert perturb.level_id("orient-30+noise-snr20-seed2") == "orient-30+noise-snr20"
    assert perturb.level_label("res-1x1x2") == "1×1×2 mm"
    assert perturb.level_label("orient-30+noise-snr20-seed1") == "30° · SNR 20"
    assert perturb.format_number(20.0) == "20" and perturb.format_number(1.0625) == "1.0625"
    # more degraded sorts later
    ids = ["noise-snr40-seed1", "noise-snr10-seed1", "noise-snr20-seed1"]
    assert sorted(ids, key=perturb.severity) == ["noise-snr40-seed1", "noise-snr20-seed1", "noise-snr10-seed1"]
    assert sorted(["res-2x2x4", "res-3x3x3", "res-2x2x2"], key=perturb.severity) == [
        "res-2x2x2", "res-2x2x4", "res-3x3x3"]


@pytest.mark.parametrize("text, message", [
    ("noise-snr20.0-seed1", "write 'noise-snr20-seed1'"),
    ("noise-snr20-seed1+orient-30", "write 'orient-30+noise-snr20-seed1'"),
    ("orient-30-axis1x0x0", "write 'orient-30'"),
    ("noise-snr0-seed1", "snr must be a positive number"),
    ("noise-snr20-seed0", "seed index must be an integer >= 1"),
    ("res-0x1x1", "positive numbers"),
    ("orient-120", "between 0 and 90"),
    ("orient-30-axis0x0x0", "not all zero"),
    ("noise-snr20-seed1+noise-snr10-seed1", "noise repeated"),
    ("blur-3", "is not a perturbation id"),
    ("", "non-empty"),
])
def test_bad_ids_are_errors_that_say_why(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        perturb.parse_slug(text)


def test_expand_items():
    ids = lambda item: [perturb.slug(c) for c in perturb.expand_item(item)]  # noqa: E731
    assert ids("none") == ["none"]
    assert ids({"noise": {"snr": [10, 20], "seeds": 2}}) == [
        "noise-snr10-seed1", "noise-snr10-seed2", "noise-snr20-seed1", "noise-snr20-seed2"]
    assert ids({"noise": {"snr": [10], "seeds": [2, 5]}}) == ["noise-snr10-seed2", "noise-snr10-seed5"]
    assert ids({"resolution": {"voxel_size_mm": [1.5, [1, 1, 2]]}}) == ["res-1.5x1.5x1.5", "res-1x1x2"]
    assert ids({"orientation": {"angles_deg": [0, 30], "axis": [0, 1, 0]}}) == [
        "orient-0-axis0x1x0", "orient-30-axis0x1x0"]
    assert ids({"combine": {"noise": {"snr": [20], "seeds": 2}, "orientation": {"angles_deg": [15, 30]}},
                "datasets": ["x"]}) == [
        "orient-15+noise-snr20-seed1", "orient-15+noise-snr20-seed2",
        "orient-30+noise-snr20-seed1", "orient-30+noise-snr20-seed2"]
    with pytest.raises(ValueError, match="exactly one of"):
        perturb.expand_item({"noise": {"snr": [5]}, "orientation": {"angles_deg": [5]}})
    with pytest.raises(ValueError, match="unknown key"):
        perturb.expand_item({"noise": {"snr": [5], "sigma": 2}})


def test_run_filter_matching():
    assert perturb.matches("noise", "noise-snr20-seed1")
    assert not perturb.matches("noise", "orient-30+noise-snr20-seed1")  # an axis name is exact
    assert perturb.matches("orientation+noise", "orient-30+noise-snr20-seed1")
    assert perturb.matches("noise-snr20-*", "noise-snr20-seed2")
    assert not perturb.matches("noise-snr20-*", "noise-snr10-seed1")
    assert perturb.matches("res-1x1x2", "res-1x1x2")


# --------------------------------------------------------------------------- none
def test_none_is_bit_identical(phantom, tmp_path):
    out = perturb.apply(phantom, "none")
    for name in ("field_ppm", "mask", "magnitude", "labels", "affine"):
        a, b = getattr(out, name), getattr(phantom, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
        assert a is not b  # a copy: perturbing it never touches the source
    assert out.references["chi"].tobytes() == phantom.references["chi"].tobytes()
    assert (out.voxel_size_mm, out.b0_dir, out.meta) == (phantom.voxel_size_mm, phantom.b0_dir, phantom.meta)
    # and through the files
    io.save_volume(phantom, tmp_path / "src")
    perturb.perturb_dataset(tmp_path / "src", tmp_path / "none", "none", dataset="p")
    for name in ("field_ppm.nii.gz", "mask.nii.gz", "reference-chi.nii.gz", "labels.nii.gz"):
        a, aff_a, _ = io.read_nifti(tmp_path / "src" / name)
        b, aff_b, _ = io.read_nifti(tmp_path / "none" / name)
        assert np.array_equal(a, b) and np.array_equal(aff_a, aff_b)


# --------------------------------------------------------------------------- noise
@pytest.mark.parametrize("snr", [10.0, 40.0])
def test_phase_noise_matches_the_requested_snr(snr):
    # A field whose phase spans several multiples of pi: no wrap may leak into the noise.
    shape = (40, 40, 40)
    phase = np.linspace(-3 * np.pi, 3 * np.pi, np.prod(shape)).reshape(shape)
    vol = flat_volume(shape, field_rad=phase)  # no magnitude: uniform 1 in the mask
    out = perturb.add_noise(vol, snr, seed=7)
    m = vol.mask
    dphi = physics.ppm_to_rad(out.field_ppm.astype(np.float64) - vol.field_ppm, vol.b0_tesla, vol.te_s)[m]
    assert np.abs(dphi).max() < np.pi  # the branch nearest the noise-free phase
    # at high SNR the phase noise sd is sigma / magnitude = 1 / SNR rad
    assert np.std(dphi) == pytest.approx(1.0 / snr, rel=0.03)
    assert abs(np.mean(dphi)) < 3 * (1.0 / snr) / np.sqrt(dphi.size)
    assert out.magnitude is None  # the dataset had none, so the output has none either
    assert np.array_equal(out.field_ppm[~m], vol.field_ppm[~m].astype(np.float32))
    rec = out.meta["perturbation"]["components"][-1]
    assert rec["sigma"] == pytest.approx(1.0 / snr) and rec["rng_seed"] == 7
    assert rec["max_abs_phase_rad"] == pytest.approx(np.abs(phase[m]).max()) and rec["max_abs_phase_rad"] > 2 * np.pi


def test_noise_scales_with_the_magnitude():
    shape = (40, 40, 40)
    magnitude = np.ones(shape)
    magnitude[20:] = 0.5  # half the signal: twice the phase noise; sigma is set by the peak (1)
    vol = flat_volume(shape, magnitude=magnitude)
    out = perturb.add_noise(vol, 25.0, seed=3)
    dphi = physics.ppm_to_rad(out.field_ppm.astype(np.float64), vol.b0_tesla, vol.te_s)
    m = vol.mask
    assert np.std(dphi[:20][m[:20]]) == pytest.approx(1 / 25, rel=0.04)
    assert np.std(dphi[20:][m[20:]]) == pytest.approx(2 / 25, rel=0.04)
    # the noisy magnitude: E|s + n|^2 = |s|^2 + 2 sigma^2
    assert np.mean(out.magnitude[:20][m[:20]] ** 2) == pytest.approx(1 + 2 / 25**2, rel=0.01)
    # field noise in ppm follows TE and B0: one radian is 1 / (2 pi gamma B0 TE) ppm
    rec = out.meta["perturbation"]["components"][-1]
    assert rec["field_noise_sd_ppm_at_peak_magnitude"] == pytest.approx(1 / 25 / (2 * np.pi * 42.57747892 * 3 * 0.025))


def test_same_seed_same_noise_other_seed_other_noise(phantom):
    a = perturb.apply(phantom, "noise-snr20-seed1", dataset="phantom")
    b = perturb.apply(phantom, "noise-snr20-seed1", dataset="phantom")
    c = perturb.apply(phantom, "noise-snr20-seed2", dataset="phantom")
    d = perturb.apply(phantom, "noise-snr20-seed1", dataset="other")
    assert np.array_equal(a.field_ppm, b.field_ppm) and np.array_equal(a.magnitude, b.magnitude)
    assert not np.allclose(a.field_ppm, c.field_ppm) and not np.allclose(a.field_ppm, d.field_ppm)
    rec = a.meta["perturbation"]
    assert rec["id"] == "noise-snr20-seed1" and rec["dataset"] == "phantom"
    assert rec["components"][0]["rng_seed"] == derive_seed("phantom", "noise-snr20-seed1")
    assert rec["components"][0]["seed_index"] == 1
    assert c.meta["perturbation"]["components"][0]["rng_seed"] == derive_seed("phantom", "noise-snr20-seed2")
    # the truth is untouched
    assert np.array_equal(a.references["chi"], phantom.references["chi"])


def test_noise_needs_some_magnitude_in_the_mask():
    vol = flat_volume(magnitude=np.zeros((40, 40, 40)))
    with pytest.raises(InputError, match="zero everywhere in the mask"):
        perturb.add_noise(vol, 20, seed=1)


# --------------------------------------------------------------------------- resolution
def test_cropping_keeps_the_mean(rng):
    x = rng.standard_normal((24, 30, 20)) + 0.3
    for shape in [(12, 15, 10), (16, 20, 13), (24, 30, 10)]:
        y = perturb.crop_kspace(x, shape)
        assert y.shape == shape
        assert y.mean() == pytest.approx(x.mean(), abs=1e-12)
    # a smooth (band-limited) signal is sampled exactly at the coinciding voxel centres
    i = np.arange(24)
    smooth = np.cos(2 * np.pi * 2 * i / 24)[:, None, None] * np.ones((24, 30, 20))
    assert np.allclose(perturb.crop_kspace(smooth, (12, 30, 20))[:, 0, 0], smooth[::2, 0, 0], atol=1e-12)


def test_footprints():
    w = perturb.footprint_weights(6, 4)  # new voxels 1.5 old wide, centred on 0, 1.5, 3, 4.5
    assert np.allclose(w.sum(axis=1), 1)
    assert np.allclose(w[1], [0, 0.5, 0.5, 0, 0, 0])  # [0.75, 2.25]: 0.75 of voxel 1, 0.75 of voxel 2
    assert np.allclose(w[0], [2 / 3, 1 / 6, 0, 0, 0, 1 / 6])  # [-0.75, 0.75] wraps onto voxel 5
    assert np.allclose(perturb.footprint_weights(5, 5), np.eye(5))
    labels = np.zeros((6, 6, 6), np.int16)
    labels[:3] = 2
    labels[3:] = 7
    labels[2, 2, 2] = 9
    out = perturb.majority_labels(labels, (3, 3, 3))  # footprints [-1, 1], [1, 3], [3, 5] (old voxels)
    assert out.dtype == labels.dtype
    assert set(np.unique(out[0])) == {2} and set(np.unique(out[2])) == {7}
    assert set(np.unique(out[1])) == {2}  # 1.5 voxels of 2 beat 0.5 of 7 (and the lone 9)


def test_resolution_keeps_the_field_of_view_and_updates_the_affine(phantom):
    out = perturb.apply(phantom, "res-4.5x4.5x6")
    assert out.shape == (21, 21, 16)  # round(96 / 4.5) = 21, 96 / 6 = 16
    assert np.allclose(np.array(out.shape) * out.voxel_size_mm, np.array(phantom.shape) * phantom.voxel_size_mm)
    assert out.voxel_size_mm == pytest.approx((96 / 21, 96 / 21, 6.0))
    assert np.allclose(out.affine[:3, :3], phantom.affine[:3, :3] @ np.diag(np.array(phantom.shape) / out.shape))
    assert np.allclose(out.affine[:3, 3], phantom.affine[:3, 3])  # voxel 0 keeps its centre
    rec = out.meta["perturbation"]["components"][0]
    assert rec["voxel_size_mm_requested"] == [4.5, 4.5, 6.0] and rec["shape"] == [21, 21, 16]
    # everything on the new grid; the mask keeps the brain volume
    for arr in (out.mask, out.magnitude, out.labels, out.references["chi"]):
        assert arr.shape == out.shape
    assert out.mask.sum() * np.prod(out.voxel_size_mm) == pytest.approx(
        phantom.mask.sum() * np.prod(phantom.voxel_size_mm), rel=0.05)
    assert not out.references["chi"][~out.mask].any() and not out.field_ppm[~out.mask].any()
    # labels by majority: no new label; the large structures survive (tiny nuclei may not, at 4.5 mm)
    assert set(np.unique(out.labels)) <= set(np.unique(phantom.labels))
    assert {7, 8, 9, 10, 11} <= set(np.unique(out.labels[out.mask]))
    # the truth is the k-space cropped truth, and its mean over the FOV is kept before masking
    cropped = perturb.crop_kspace(phantom.references["chi"], out.shape)
    assert cropped.mean() == pytest.approx(phantom.references["chi"].astype(np.float64).mean(), abs=1e-9)
    assert np.allclose(out.references["chi"], cropped * out.mask, atol=1e-6)


def test_anisotropic_voxels_give_the_right_matrix_and_affine():
    vol = contract_volume()  # 24x24x20, 1 x 1 x 1.2 mm
    out = perturb.apply(vol, "res-1x1x2.4")
    assert out.shape == (24, 24, 10) and out.voxel_size_mm == pytest.approx((1.0, 1.0, 2.4))
    assert np.allclose(out.affine, np.diag([1.0, 1.0, 2.4, 1.0]))
    # a rotated affine: the voxel axes are scaled, the origin kept
    rot = np.eye(4)
    rot[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1.2]]
    rot[:3, 3] = [5, -7, 2]
    out = perturb.change_resolution(dataclasses.replace(vol, affine=rot), [2, 1, 2.4])
    assert out.shape == (12, 24, 10)
    assert np.allclose(out.affine[:3, :3], [[0, -1, 0], [2, 0, 0], [0, 0, 2.4]])
    assert np.allclose(out.affine[:3, 3], [5, -7, 2])


def test_resolution_only_coarsens(phantom):
    with pytest.raises(InputError, match="finer than the source"):
        perturb.apply(phantom, "res-2x3x3")
    with pytest.raises(InputError, match="at least 4 voxels"):
        perturb.apply(phantom, "res-3x3x40")


def test_no_inverse_crime_in_the_noiseless_resolution_case(phantom):
    """TKD on res-4.5x4.5x4.5 does not recover the truth's well-conditioned part; on a field made with
    TKD's own forward operator from the same truth it does, to float precision."""
    out = perturb.apply(phantom, "res-4.5x4.5x4.5")
    t = 0.05
    tkd = get_method_class("tkd")(profile="quick", seed=0, device="cpu", threshold=t)  # official2016: D(0) = 1/3
    chi = out.references["chi"].astype(np.float64)

    def kernel(shape):
        return physics.dipole_kernel(shape, out.voxel_size_mm, out.b0_dir, d0=1 / 3, rfft=True)

    truth_t = physics.kspace_filter(chi, lambda s: (np.abs(kernel(s)) > t).astype(float))
    crime = dataclasses.replace(out, field_ppm=physics.kspace_filter(chi, kernel))
    m = out.mask

    def error(vol):
        return np.linalg.norm((tkd.reconstruct(vol.for_method()) - truth_t)[m]) / np.linalg.norm(truth_t[m])

    assert error(crime) < 1e-5
    assert error(out) > 0.05
    # the perturbed field is not the target grid's (zero-padded) simulation of the perturbed truth either
    sim = physics.forward_field(chi, out.voxel_size_mm, out.b0_dir, d0=0.0, pad_factor=2)
    assert np.linalg.norm((out.field_ppm - sim)[m]) / np.linalg.norm(out.field_ppm[m]) > 1e-2


# --------------------------------------------------------------------------- orientation
def test_orientation_zero_reproduces_the_field(phantom):
    out = perturb.apply(phantom, "orient-0")
    assert np.array_equal(out.field_ppm, phantom.field_ppm)
    assert np.allclose(out.b0_dir, phantom.b0_dir)
    vol = contract_volume()  # not the phantom: re-simulated from the reference with zero padding
    out = perturb.apply(vol, "orient-0")
    assert np.allclose(out.field_ppm, vol.field_ppm, atol=1e-7)


def test_tilted_phantom_equals_a_direct_simulation_with_the_tilted_kernel(phantom):
    out = perturb.apply(phantom, "orient-30")
    b0 = np.array([0.0, -np.sin(np.pi / 6), np.cos(np.pi / 6)])  # z rotated by 30 deg about x
    assert np.allclose(out.b0_dir, b0)
    direct = make_phantom((32, 32, 32), (3.0, 3.0, 3.0), model="analytic", seed=2, calcification=True, b0_dir=b0)
    assert np.allclose(out.field_ppm, direct.field_ppm, atol=1e-7)
    assert not np.allclose(out.field_ppm, phantom.field_ppm, atol=1e-3)
    assert np.array_equal(out.references["chi"], phantom.references["chi"])  # the truth does not tilt
    rec = out.meta["perturbation"]["components"][0]
    assert rec["b0_dir"] == pytest.approx(b0.tolist()) and "no inverse crime" in rec["method"]


def test_tilted_dataset_equals_a_forward_simulation_with_the_tilted_kernel():
    vol = contract_volume()
    out = perturb.apply(vol, "orient-45-axis0x1x0")
    b0 = physics.tilted_b0_dir(45, (0, 1, 0), (0, 0, 1))
    assert np.allclose(b0, [np.sqrt(0.5), 0, np.sqrt(0.5)])
    expected = physics.forward_field(vol.references["chi"].astype(np.float64), vol.voxel_size_mm, b0, d0=0.0,
                                     pad_factor=2) * vol.mask
    assert np.allclose(out.field_ppm, expected, atol=1e-7) and np.allclose(out.b0_dir, b0)
    rec = out.meta["perturbation"]["components"][0]
    assert rec["reference"] == "chi" and "inverse_crime" in rec
    # a sphere's field follows (3 cos^2 - 1): its centre value flips sign beyond the magic angle
    with pytest.raises(InputError, match="parallel to B0"):
        perturb.apply(vol, "orient-30-axis0x0x1")
    with pytest.raises(InputError, match="no reference"):
        perturb.tilt_b0(dataclasses.replace(vol, references={}), 30)


def test_orientation_refuses_a_phantom_it_cannot_regenerate(phantom):
    other = copy.deepcopy(phantom)
    other.meta["seed"] = 3  # not the seed this phantom was made with
    with pytest.raises(InputError, match="does not reproduce"):
        perturb.apply(other, "orient-15")


def test_combination_tilt_crop_noise_and_meta_on_disk(phantom, tmp_path):
    io.save_volume(phantom, tmp_path / "src")
    pid = "orient-30+res-4.5x4.5x4.5+noise-snr20-seed2"
    perturb.perturb_dataset(tmp_path / "src", tmp_path / "out", pid, dataset="phantom")
    vol = io.load_volume(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    rec = meta["perturbation"]
    assert rec["id"] == pid and rec["source"] == str(tmp_path / "src")
    assert [c["kind"] for c in rec["components"]] == ["orientation", "resolution", "noise"]
    assert rec["components"][2]["rng_seed"] == derive_seed("phantom", pid)
    assert vol.shape == (21, 21, 21) and np.allclose(vol.b0_dir, physics.tilted_b0_dir(30))
    # the same as doing it in memory (float32 on disk)
    mem = perturb.apply(phantom, pid, dataset="phantom")
    assert np.allclose(vol.field_ppm, mem.field_ppm, atol=1e-7)


# --------------------------------------------------------------------------- configuration
BASE = {"datasets": {"phantom": {"type": "phantom", "shape": [32, 32, 32], "voxel_size_mm": [2, 2, 2]},
                     "invivo": {"type": "phantom", "shape": [32, 32, 32], "voxel_size_mm": [2, 2, 2]}},
        "perturbations": ["none", {"noise": {"snr": [10, 20], "seeds": 2}},
                          {"resolution": {"voxel_size_mm": [3, [2, 2, 4]]}},
                          {"orientation": {"angles_deg": [15, 30]}},
                          {"combine": {"orientation": {"angles_deg": [30]}, "noise": {"snr": [20]}}}],
        "methods": {"tkd": {}, "cfl2": {"perturbations": ["noise", "orient-*"]}}}


@pytest.fixture
def no_truth_for_invivo(monkeypatch):
    real = qconfig.dataset_has_truth
    monkeypatch.setattr(qconfig, "dataset_has_truth", lambda cfg, name: name != "invivo" and real(cfg, name))


def test_plan_and_jobs(no_truth_for_invivo):
    cfg = qconfig.validate_config(BASE)
    plan = qconfig.perturbation_plan(cfg)
    assert list(plan["invivo"]) == ["none"]  # no truth: only the unperturbed volume
    assert list(plan["phantom"]) == [
        "none", "noise-snr10-seed1", "noise-snr10-seed2", "noise-snr20-seed1", "noise-snr20-seed2",
        "res-3x3x3", "res-2x2x4", "orient-15", "orient-30", "orient-30+noise-snr20-seed1"]
    assert plan["phantom"]["res-2x2x4"] == [{"kind": "resolution", "voxel_size_mm": [2.0, 2.0, 4.0]}]
    jobs = qconfig.job_list(cfg)
    cfl2 = [p for d, p, r in jobs if r == "cfl2" and d == "phantom"]
    assert cfl2 == ["none", "noise-snr10-seed1", "noise-snr10-seed2", "noise-snr20-seed1", "noise-snr20-seed2",
                    "orient-15", "orient-30", "orient-30+noise-snr20-seed1"]  # a pattern matches the whole id
    assert len([j for j in jobs if j[2] == "tkd"]) == 11
    assert ("invivo", "none", "cfl2") in jobs
    # measured-field noise on a dataset without truth, when asked for
    cfg2 = copy.deepcopy(BASE)
    cfg2["perturbations"].append({"noise": {"snr": [5]}, "datasets": ["invivo"]})
    assert list(qconfig.perturbation_plan(qconfig.validate_config(cfg2))["invivo"]) == ["none", "noise-snr5-seed1"]


def test_default_configs_keep_none_valid():
    cfg = qconfig.validate_config({**BASE, "perturbations": ["none"], "methods": {"tkd": {"perturbations": ["noise"]}}})
    assert qconfig.perturbation_plan(cfg) == {"phantom": {"none": []}, "invivo": {"none": []}}
    assert qconfig.job_list(cfg) == [("phantom", "none", "tkd"), ("invivo", "none", "tkd")]


@pytest.mark.parametrize("mutate, key, message", [
    (lambda c: c["perturbations"][1]["noise"]["snr"].__setitem__(0, -10), "perturbations.1.noise.snr.0",
     "less than or equal to the minimum of 0"),
    (lambda c: c["perturbations"][2]["resolution"]["voxel_size_mm"].__setitem__(1, [2, 0, 4]),
     "perturbations.2.resolution.voxel_size_mm.1.1", "less than or equal to the minimum of 0"),
    (lambda c: c["perturbations"][2]["resolution"]["voxel_size_mm"].__setitem__(0, 1.5),
     "perturbations.2.resolution.voxel_size_mm.0", "finer than the source's 2 mm"),
    (lambda c: c["perturbations"][3]["orientation"]["angles_deg"].__setitem__(1, 95),
     "perturbations.3.orientation.angles_deg.1", "greater than the maximum of 90"),
    (lambda c: c["perturbations"][3]["orientation"].update(axis=[0, 0, 1]),
     "perturbations.3.orientation.axis", "parallel to B0"),
    (lambda c: c["perturbations"].append("noise-snr-5-seed1"), "perturbations.5", "is not a perturbation id"),
    (lambda c: c["perturbations"].append("orient-100"), "perturbations.5", "between 0 and 90"),
    (lambda c: c["perturbations"].append({"orientation": {"angles_deg": [10]}, "datasets": ["invivo"]}),
     "perturbations.5.datasets.0", "dataset 'invivo' has no ground-truth χ, which orientation perturbations need"),
    (lambda c: c["perturbations"].append({"noise": {"snr": [10]}, "datasets": ["nosuch"]}),
     "perturbations.5.datasets.0", "unknown dataset 'nosuch'"),
    (lambda c: c["methods"]["tkd"].update(perturbations=["blur"]), "methods.tkd.perturbations.0",
     "matches no perturbation"),
])
def test_bad_perturbation_config_names_the_key(no_truth_for_invivo, mutate, key, message):
    cfg = copy.deepcopy(BASE)
    mutate(cfg)
    with pytest.raises(ConfigError) as exc:
        qconfig.validate_config(cfg, source="my.yaml")
    assert str(exc.value).startswith(f"my.yaml: key '{key}': ")
    assert message in str(exc.value)


@pytest.mark.parametrize("path", ["config/config.yaml", "config/sweep.yaml", "config/paper.yaml"])
def test_shipped_configs_expand(path):
    cfg = qconfig.load_config(path)
    plan = qconfig.perturbation_plan(cfg)
    assert all(next(iter(perts)) == "none" for perts in plan.values())
    for perts in plan.values():
        for pid in perts:
            assert perturb.slug(perturb.parse_slug(pid)) == pid


def test_resolution_drops_a_grid_bound_calcification_moment(phantom):
    vol = dataclasses.replace(phantom, meta={**phantom.meta, "metric_extras": {"calc_moment_gt": -12.5,
                                                                               "label_scheme": "rc2"}})
    out = perturb.apply(vol, "res-4.5x4.5x4.5")
    assert out.meta["metric_extras"] == {"label_scheme": "rc2"}
    assert "calc_moment_gt dropped" in out.meta["perturbation"]["components"][0]["metric_extras"]
    assert vol.meta["metric_extras"]["calc_moment_gt"] == -12.5  # the source is untouched
    assert perturb.apply(vol, "noise-snr20-seed1").meta["metric_extras"]["calc_moment_gt"] == -12.5
