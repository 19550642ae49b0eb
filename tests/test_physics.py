"""Physics with analytic answers: units, the dipole kernel, the forward model, resampling."""

import numpy as np
import pytest

from qsmbench import physics


# --------------------------------------------------------------------------- units
def test_phase_to_ppm_at_3t_25ms():
    # 2 pi * 42.57747892 MHz/T * 3 T * 25 ms * 1e-6 = 20.064 rad per ppm
    assert physics.ppm_to_rad(1.0, 3.0, 0.025) == pytest.approx(2 * np.pi * 42.57747892 * 3 * 0.025)
    assert physics.ppm_to_rad(1.0, 3.0, 0.025) == pytest.approx(20.064, abs=1e-3)
    assert physics.rad_to_ppm(20.064, 3.0, 0.025) == pytest.approx(1.0, abs=1e-4)


def test_hz_to_ppm_at_7t():
    assert physics.hz_to_ppm(298.04, 7.0) == pytest.approx(1.0, abs=1e-4)
    assert physics.ppm_to_hz(physics.hz_to_ppm(123.4, 7.0), 7.0) == pytest.approx(123.4)


def test_unit_round_trips_on_arrays():
    x = np.linspace(-3, 3, 11)
    np.testing.assert_allclose(physics.rad_to_ppm(physics.ppm_to_rad(x, 7.0, 0.004), 7.0, 0.004), x)


@pytest.mark.parametrize("b0,te", [(0, 0.02), (3, 0), (-1, 0.02)])
def test_units_reject_nonpositive_acquisition(b0, te):
    with pytest.raises(ValueError):
        physics.ppm_per_rad(b0, te)


# --------------------------------------------------------------------------- kernel
@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 17, 13), (8, 9, 10)])
@pytest.mark.parametrize("d0", [0.0, 1 / 3])
def test_kernel_range_d0_and_point_symmetry(shape, d0):
    d = physics.dipole_kernel(shape, (1.0, 0.9, 1.3), (0.2, 0.3, 1.0), d0=d0)
    assert d.shape == shape
    assert d[0, 0, 0] == d0
    assert d.min() >= -2 / 3 - 1e-12 and d.max() <= 1 / 3 + 1e-12
    # real kernel of a real field: D(k) = D(-k).  On even axes the Nyquist sample has no
    # mirror on the grid (its sign is a convention), so those planes are excluded.
    flipped = np.roll(d[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))
    keep = np.ones(shape, bool)
    for axis, n in enumerate(shape):
        if n % 2 == 0:
            keep[(slice(None),) * axis + (n // 2,)] = False
    np.testing.assert_allclose(d[keep], flipped[keep], atol=1e-12)


def test_kernel_values_along_and_across_b0():
    d = physics.dipole_kernel((8, 8, 8), (1, 1, 1), (0, 0, 1), d0=0.0)
    assert d[0, 0, 1] == pytest.approx(-2 / 3)  # k parallel to B0
    assert d[1, 0, 0] == pytest.approx(1 / 3)  # k perpendicular
    assert d[0, 1, 0] == pytest.approx(1 / 3)


def test_kernel_uses_physical_frequencies():
    # With anisotropic voxels the magic-angle cone sits at the physical, not index, angle.
    d = physics.dipole_kernel((16, 16, 16), (1.0, 1.0, 2.0), (0, 0, 1), d0=0.0)
    kx = 1 / 16 * 2  # cycles/mm of index 2 along x
    kz = 1 / 32 * 1  # cycles/mm of index 1 along z (dz = 2 mm)
    assert d[2, 0, 1] == pytest.approx(1 / 3 - kz**2 / (kx**2 + kz**2))


def test_rfft_kernel_matches_full_kernel():
    full = physics.dipole_kernel((10, 12, 9), (1, 1, 1.5), (1, 1, 1), d0=1 / 3)
    half = physics.dipole_kernel((10, 12, 9), (1, 1, 1.5), (1, 1, 1), d0=1 / 3, rfft=True)
    np.testing.assert_allclose(half, full[:, :, : 9 // 2 + 1])


def test_b0_dir_is_normalised_and_validated():
    a = physics.dipole_kernel((8, 8, 8), d0=0.0, b0_dir=(0, 0, 5))
    b = physics.dipole_kernel((8, 8, 8), d0=0.0, b0_dir=(0, 0, 1))
    np.testing.assert_allclose(a, b)
    with pytest.raises(ValueError):
        physics.dipole_kernel((8, 8, 8), d0=0.0, b0_dir=(0, 0, 0))
    with pytest.raises(ValueError):
        physics.dipole_kernel((8, 8, 8), (1, 0, 1), d0=0.0)


def test_d0_is_required():
    with pytest.raises(TypeError):
        physics.dipole_kernel((8, 8, 8))  # the D(0) convention must be explicit


# --------------------------------------------------------------------------- forward model
def _sphere(n, radius, voxel=1.0, supersample=4):
    """Partial-volume sphere (fraction of each voxel inside), centred on the grid centre."""
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    centre = (n - 1) / 2
    coords = ((np.arange(n)[:, None] + sub[None, :]) - centre).reshape(-1) * voxel
    x, y, z = np.meshgrid(coords, coords, coords, indexing="ij", sparse=True)
    inside = (x**2 + y**2 + z**2) <= radius**2
    frac = inside.reshape(n, supersample, n, supersample, n, supersample).mean(axis=(1, 3, 5))
    return frac


def test_field_of_a_sphere_matches_the_analytic_solution():
    """Outside: dchi (a/r)^3 (3cos^2(theta) - 1)/3; inside: 0 (Lorentz-corrected)."""
    n, a, dchi = 64, 6.0, 0.1
    chi = dchi * _sphere(n, a)
    field = physics.forward_field(chi, (1, 1, 1), (0, 0, 1), d0=0.0, pad_factor=2.0)
    c = (n - 1) / 2
    x, y, z = np.meshgrid(*(np.arange(n) - c,) * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    cos2 = np.divide(z**2, r**2, out=np.zeros_like(r), where=r > 0)
    analytic = np.where(r > a, dchi * (a / np.maximum(r, 1e-9)) ** 3 * (3 * cos2 - 1) / 3, 0.0)
    peak = 2 * dchi / 3  # field maximum, on the surface along B0
    outside = (r > 1.5 * a) & (r < 3 * a)
    inside = r < 0.6 * a
    # Tolerances: 2 % of the peak outside, 1 % inside -- the remaining error is the
    # discretised sphere surface and the finite padded box (periodic images 128 voxels away).
    assert np.abs(field[outside] - analytic[outside]).max() < 0.02 * peak
    assert np.abs(field[inside]).max() < 0.01 * peak
    # the pattern has the right sign: positive along B0, negative in the equatorial plane
    i = int(round(c))
    assert field[i, i, i + 12] > 0 and field[i + 12, i, i] < 0


def test_rotating_b0_rotates_the_field():
    rng = np.random.default_rng(0)
    chi = np.zeros((20, 22, 24))
    chi[5:15, 6:16, 7:17] = rng.normal(size=(10, 10, 10))
    f_z = physics.forward_field(chi, (1, 1, 1), (0, 0, 1))
    # swapping array axes 0 and 2 turns "B0 along axis 2" into "B0 along axis 0"
    f_x = physics.forward_field(chi.transpose(2, 1, 0), (1, 1, 1), (1, 0, 0))
    np.testing.assert_allclose(f_x.transpose(2, 1, 0), f_z, atol=1e-10)


def test_forward_field_is_linear_and_keeps_dtype():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 12, 12, 12))
    fa, fb = physics.forward_field(a), physics.forward_field(b)
    np.testing.assert_allclose(physics.forward_field(2 * a - b), 2 * fa - fb, atol=1e-12)
    assert physics.forward_field(a.astype(np.float32)).dtype == np.float32


def test_tilted_b0_direction():
    z = np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(physics.tilted_b0_dir(0), z)
    np.testing.assert_allclose(physics.tilted_b0_dir(90, axis=(1, 0, 0)), [0, -1, 0], atol=1e-12)
    v = physics.tilted_b0_dir(30, axis=(0, 1, 0))
    assert np.degrees(np.arccos(v @ z)) == pytest.approx(30)


def test_difference_kernel():
    e2 = physics.difference_kernel_sq((8, 7, 6))
    assert e2[0, 0, 0] == 0
    assert e2[4, 0, 0] == pytest.approx(4.0)  # Nyquist of an even axis: |1 - e^{i pi}|^2
    np.testing.assert_allclose(physics.difference_kernel_sq((8, 7, 6), rfft=True), e2[:, :, :4])


# --------------------------------------------------------------------------- resampling
def test_kspace_resample_keeps_mean_and_round_trips():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 14, 15)) + 3.0
    down = physics.kspace_resample(x, (8, 7, 9))
    assert down.shape == (8, 7, 9)
    assert down.mean() == pytest.approx(x.mean(), rel=1e-12)
    # band-limited signal: zero-filling then cropping back is the identity
    up = physics.kspace_resample(down, (16, 14, 18))
    np.testing.assert_allclose(physics.kspace_resample(up, (8, 7, 9)), down, atol=1e-10)


def test_kspace_resample_of_a_smooth_function_samples_it():
    # A low-frequency cosine over the same field of view is reproduced at the new sample points.
    n_fine, n_coarse = 32, 16
    xf = np.arange(n_fine) / n_fine
    xc = np.arange(n_coarse) / n_coarse
    f = np.cos(2 * np.pi * 3 * xf)[:, None, None] * np.ones((1, 4, 4))
    g = physics.kspace_resample(f, (n_coarse, 4, 4))
    np.testing.assert_allclose(g[:, 0, 0], np.cos(2 * np.pi * 3 * xc), atol=1e-12)


def test_padded_shape():
    assert physics.padded_shape((10, 11, 12), 1.0) == (10, 11, 12)
    shape = physics.padded_shape((10, 11, 12), 2.0)
    assert all(s >= 2 * n for s, n in zip(shape, (10, 11, 12)))
    with pytest.raises(ValueError):
        physics.padded_shape((8, 8, 8), 0.5)


def test_kspace_resample_can_drop_the_nyquist_planes():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 15, 12))
    y = physics.kspace_resample(x, (8, 9, 6), drop_nyquist=True)
    spec = np.fft.fftn(y)
    assert np.abs(spec[4, :, :]).max() < 1e-10  # even axes: Nyquist plane removed
    assert np.abs(spec[:, :, 3]).max() < 1e-10
    kept = np.fft.fftn(physics.kspace_resample(x, (8, 9, 6)))
    kept[4, :, :] = 0
    kept[:, :, 3] = 0
    np.testing.assert_allclose(spec, kept, atol=1e-10)  # everything else untouched


def test_count_ffts_counts_double_precision_separately():
    x32 = np.zeros((4, 5, 6), np.float32)
    with physics.count_ffts() as c:
        spec = physics.rfftn(x32)
        physics.irfftn(spec, s=x32.shape)
        physics.irfftn(physics.rfftn(x32.astype(np.float64)), s=x32.shape)
        physics.ifftn(physics.fftn(x32.astype(np.complex128)))
        physics.add_fft_calls(2, double=True)
        physics.add_fft_calls(1)
    assert spec.dtype == np.complex64
    assert c == {"n": 9, "double": 6}
