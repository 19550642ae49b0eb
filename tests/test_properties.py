"""Property-based tests (hypothesis): physics invariants, metric bounds and invariances, and a fuzz
of the NIfTI reader.  Few examples each, derandomised (the same examples on every run), no
deadline: they stay fast and deterministic.
"""

from __future__ import annotations

import gzip
import math

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qsmbench import io, metrics, operators, physics
from qsmbench.errors import InputError

FAST = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

dims = st.tuples(*[st.integers(2, 9)] * 3)
voxel_sizes = st.tuples(*[st.floats(0.2, 4.0)] * 3)
directions = st.tuples(*[st.floats(-1.0, 1.0)] * 3).filter(lambda v: math.hypot(*v) > 1e-3)
d0s = st.sampled_from([0.0, 1.0 / 3.0])


def negated_frequencies(a: np.ndarray) -> np.ndarray:
    """``a`` at ``-k`` on the (unshifted) FFT grid: index ``i`` -> ``(-i) mod n`` on every axis."""
    return np.roll(np.flip(a, axis=(0, 1, 2)), 1, axis=(0, 1, 2))


def mirrored(shape) -> np.ndarray:
    """Where ``-k`` is on the grid: everywhere but the Nyquist plane of an even axis, whose sample
    stands for both +N/2 and -N/2 (its sign is a convention; see tests/test_physics.py)."""
    keep = np.ones(shape, bool)
    for axis, n in enumerate(shape):
        if n % 2 == 0:
            keep[(slice(None),) * axis + (n // 2,)] = False
    return keep


# --------------------------------------------------------------------------- dipole kernel
@FAST
@given(dims, voxel_sizes, directions, d0s)
def test_dipole_kernel_is_even_in_k(shape, voxel, b0, d0):
    d = physics.dipole_kernel(shape, voxel, b0, d0=d0)
    keep = mirrored(shape)
    np.testing.assert_allclose(d[keep], negated_frequencies(d)[keep], rtol=0, atol=1e-12)


@FAST
@given(dims, voxel_sizes, directions, d0s)
def test_dipole_kernel_ignores_the_sign_of_b0(shape, voxel, b0, d0):
    plus = physics.dipole_kernel(shape, voxel, b0, d0=d0)
    minus = physics.dipole_kernel(shape, voxel, tuple(-x for x in b0), d0=d0)
    np.testing.assert_allclose(plus, minus, rtol=0, atol=1e-12)


@FAST
@given(dims, voxel_sizes, directions, d0s)
def test_dipole_kernel_range_and_d0(shape, voxel, b0, d0):
    d = physics.dipole_kernel(shape, voxel, b0, d0=d0)
    assert d.min() >= -2.0 / 3.0 - 1e-12 and d.max() <= 1.0 / 3.0 + 1e-12
    assert d[0, 0, 0] == d0


@FAST
@given(dims, voxel_sizes, directions)
def test_rfft_kernel_is_the_half_of_the_full_kernel(shape, voxel, b0):
    full = physics.dipole_kernel(shape, voxel, b0, d0=0.0)
    half = physics.dipole_kernel(shape, voxel, b0, d0=0.0, rfft=True)
    # rfftfreq puts the last axis's Nyquist sample at +N/2, fftfreq at -N/2: compare below it
    n = (shape[2] + 1) // 2
    np.testing.assert_allclose(half[..., :n], full[..., :n], rtol=0, atol=1e-12)
    assert half.shape[2] == shape[2] // 2 + 1


# --------------------------------------------------------------------------- forward model
@FAST
@given(dims, voxel_sizes, directions, st.sampled_from([1.0, 1.5, 2.0]), st.integers(0, 2**32 - 1))
def test_forward_model_is_self_adjoint(shape, voxel, b0, pad, seed):
    """<A x, y> = <x, A^T y> with A^T = A: zero-padding's adjoint is cropping, D is real and even."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, *shape))
    ax = physics.forward_field(x, voxel, b0, pad_factor=pad)
    ay = physics.forward_field(y, voxel, b0, pad_factor=pad)
    lhs, rhs = float(np.vdot(ax, y)), float(np.vdot(x, ay))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9 * np.linalg.norm(x) * np.linalg.norm(y))


@FAST
@given(dims, voxel_sizes, directions, st.integers(0, 2**32 - 1))
def test_forward_model_is_linear(shape, voxel, b0, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, *shape))
    a, b = rng.normal(size=2)
    lhs = physics.forward_field(a * x + b * y, voxel, b0)
    rhs = a * physics.forward_field(x, voxel, b0) + b * physics.forward_field(y, voxel, b0)
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-10 * (1 + np.abs(rhs).max()))


@FAST
@given(dims, voxel_sizes, st.sampled_from(["neumann", "periodic"]), st.integers(0, 2**32 - 1))
def test_gradient_adjoint(shape, voxel, bc, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    g = rng.standard_normal((3, *shape))
    lhs = float(np.vdot(operators.grad(x, voxel, bc=bc), g))
    rhs = float(np.vdot(x, operators.grad_adjoint(g, voxel, bc=bc)))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


# --------------------------------------------------------------------------- units
fields = st.floats(-1e3, 1e3, allow_nan=False)
b0s = st.floats(0.1, 14.0)
tes = st.floats(1e-4, 0.1)


@FAST
@given(fields, b0s, tes)
def test_ppm_rad_round_trip(x, b0, te):
    assert physics.rad_to_ppm(physics.ppm_to_rad(x, b0, te), b0, te) == pytest.approx(x, rel=1e-12, abs=1e-12)


@FAST
@given(fields, b0s)
def test_ppm_hz_round_trip(x, b0):
    assert physics.hz_to_ppm(physics.ppm_to_hz(x, b0), b0) == pytest.approx(x, rel=1e-12, abs=1e-12)


@FAST
@given(fields, b0s, tes)
def test_phase_is_two_pi_times_frequency_times_te(x, b0, te):
    phase = physics.ppm_to_rad(x, b0, te)
    assert phase == pytest.approx(2 * math.pi * physics.ppm_to_hz(x, b0) * te, rel=1e-12, abs=1e-12)


@FAST
@given(st.sampled_from([-1.0, 0.0, -1e-9]), tes)
def test_unit_conversions_refuse_non_positive_b0(b0, te):
    with pytest.raises(ValueError):
        physics.ppm_to_rad(1.0, b0, te)
    with pytest.raises(ValueError):
        physics.hz_to_ppm(1.0, b0)


# --------------------------------------------------------------------------- metrics
N = 10
MASK = np.zeros((N, N, N), bool)
MASK[2:8, 2:8, 2:8] = True
finite = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=32)
images = arrays(np.float64, (N, N, N), elements=finite)
labels = arrays(np.int16, (N, N, N), elements=st.integers(0, 16))


def _values(results) -> dict[str, float]:
    return {r.metric: r.value for r in results if r.status == "ok"}


@FAST
@given(images, images, st.one_of(st.none(), labels))
def test_metrics_are_finite_or_not_applicable_on_any_finite_input(x, y, lab):
    for r in metrics.evaluate(x, y, MASK, labels=lab):
        if r.status == "ok":
            assert math.isfinite(r.value), r
        else:
            assert r.status == "not_applicable" and r.value is None and r.reason, r


@FAST
@given(images, images)
def test_metric_bounds(x, y):
    v = _values(metrics.evaluate(x, y, MASK, metrics=["rmse", "nrmse", "hfen", "pearson", "xsim"]))
    for m in ("rmse", "nrmse", "hfen"):
        assert v.get(m, 0.0) >= 0.0
    assert -1.0 - 1e-12 <= v.get("pearson", 0.0) <= 1.0 + 1e-12
    assert v.get("xsim", 0.0) <= 1.0 + 1e-12


@FAST
@given(images)
def test_a_perfect_reconstruction_scores_perfectly(y):
    assume(np.ptp(y[MASK]) > 1e-3)
    v = _values(metrics.evaluate(y, y, MASK, metrics=["rmse", "nrmse", "pearson", "xsim"]))
    assert v["rmse"] == 0.0 and v["nrmse"] == 0.0
    assert v["pearson"] == pytest.approx(1.0) and v["xsim"] == pytest.approx(1.0)


@FAST
@given(images, images, st.floats(-5.0, 5.0), st.floats(0.1, 10.0))
def test_metric_invariances(x, y, offset, scale):
    assume(np.ptp(x[MASK]) > 1e-3 and np.ptp(y[MASK]) > 1e-3)
    names = ["nrmse", "pearson", "rmse"]
    base = _values(metrics.evaluate(x, y, MASK, metrics=names))
    # nrmse demeans inside the mask: an offset of the reconstruction changes nothing
    assert _values(metrics.evaluate(x + offset, y, MASK, metrics=["nrmse"]))["nrmse"] == \
        pytest.approx(base["nrmse"], rel=1e-9, abs=1e-9)
    # correlation ignores a positive affine change of the reconstruction
    assert _values(metrics.evaluate(scale * x + offset, y, MASK, metrics=["pearson"]))["pearson"] == \
        pytest.approx(base["pearson"], rel=1e-9, abs=1e-9)
    # relative errors do not depend on the unit: scaling both images changes nothing
    both = _values(metrics.evaluate(scale * x, scale * y, MASK, metrics=["rmse", "nrmse"]))
    assert both["rmse"] == pytest.approx(base["rmse"], rel=1e-9)
    assert both["nrmse"] == pytest.approx(base["nrmse"], rel=1e-9)


# --------------------------------------------------------------------------- NIfTI fuzz
def _valid_nifti() -> bytes:
    data = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    return nib.Nifti1Image(data, np.diag([1.0, 1.5, 2.0, 1.0])).to_bytes()


VALID = _valid_nifti()


def _read_or_input_error(path) -> None:
    try:
        data, affine, zooms = io.read_nifti(path, role="field")
    except InputError:
        return
    # whatever is accepted is a sane 3-D real image with a positive voxel size
    assert data.ndim == 3 and np.all(np.isfinite(data)) and all(z > 0 for z in zooms)
    assert affine.shape == (4, 4) and np.all(np.isfinite(affine))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=2048), st.booleans())
def test_random_bytes_give_an_input_error(tmp_path_factory, blob, gz):
    path = tmp_path_factory.mktemp("fuzz") / ("x.nii.gz" if gz else "x.nii")
    path.write_bytes(gzip.compress(blob) if gz and blob[:1] != b"\x1f" else blob)
    _read_or_input_error(path)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)), st.booleans())
def test_mutated_headers_give_an_input_error_or_a_valid_image(tmp_path_factory, edits, cut, gz):
    raw = bytearray(VALID)
    for offset, value in edits:
        raw[offset] = value
    raw = bytes(raw[:cut]) if cut < len(raw) else bytes(raw)
    path = tmp_path_factory.mktemp("fuzz") / ("x.nii.gz" if gz else "x.nii")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    _read_or_input_error(path)
