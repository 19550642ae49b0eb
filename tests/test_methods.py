"""TKD and CFL2 against their closed forms (full complex FFTs computed independently here)."""

import numpy as np
import pytest

from qsmbench import registry
from qsmbench.physics import difference_kernel_sq, dipole_kernel
from qsmbench.volume import Volume

# Odd sizes: with an oblique B0 the kernel has no mirror sample on even-size Nyquist planes,
# where real-to-complex and full complex FFT paths legitimately differ.
SHAPE, VOXEL, B0 = (15, 17, 13), (1.0, 1.1, 1.3), (0.1, 0.2, 1.0)


def periodic_volume(rng, d0):
    """A field that is exactly D*chi on the periodic grid, full mask."""
    chi = rng.normal(size=SHAPE) * 0.05
    d = dipole_kernel(SHAPE, VOXEL, B0, d0=d0)
    field = np.fft.ifftn(d * np.fft.fftn(chi)).real
    return Volume(field_ppm=field, mask=np.ones(SHAPE, bool), voxel_size_mm=VOXEL, b0_dir=B0), chi, d


def test_tkd_official2016_zeroes_the_cone(rng):
    vol, chi, d = periodic_volume(rng, 1 / 3)
    out = registry.get_method("tkd").reconstruct(vol)
    expected = np.fft.ifftn(np.fft.fftn(chi) * (np.abs(d) > 0.19)).real
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_tkd_shmueli_uses_sign_over_t_in_the_cone(rng):
    vol, chi, _ = periodic_volume(rng, 0.0)
    d = dipole_kernel(SHAPE, VOXEL, B0, d0=0.0)
    out = registry.get_method("tkd", variant="shmueli").reconstruct(vol)
    k = np.where(np.abs(d) > 0.15, 1 / np.where(d == 0, 1, d), np.sign(d) / 0.15)
    expected = np.fft.ifftn(np.fft.fftn(vol.field_ppm) * k).real
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert abs(out.mean()) < 1e-6  # D(0) = 0 and sign(0) = 0: the mean is not recovered


def test_tkd_threshold_parameter_overrides_variant(rng):
    vol, chi, d = periodic_volume(rng, 1 / 3)
    out = registry.get_method("tkd", threshold=0.3).reconstruct(vol)
    expected = np.fft.ifftn(np.fft.fftn(chi) * (np.abs(d) > 0.3)).real
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_cfl2_closed_form(rng):
    vol, _, _ = periodic_volume(rng, 1 / 3)
    d = dipole_kernel(SHAPE, VOXEL, B0, d0=1 / 3)
    e2 = difference_kernel_sq(SHAPE)
    out = registry.get_method("cfl2").reconstruct(vol)
    expected = np.fft.ifftn(d * np.fft.fftn(vol.field_ppm) / (d * d + 0.09 * e2)).real
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_cfl2_without_regularisation_inverts_exactly_off_the_cone(rng):
    vol, chi, d = periodic_volume(rng, 1 / 3)
    out = registry.get_method("cfl2", lam=0.0).reconstruct(vol)
    keep = np.abs(d) > 1e-6
    expected = np.fft.ifftn(np.fft.fftn(chi) * keep).real
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["tkd", "cfl2"])
def test_linear_in_the_field_and_masked(name, small_volume):
    m = registry.get_method(name)
    a = m.reconstruct(small_volume)
    small_volume.field_ppm = small_volume.field_ppm * 2.0
    b = m.reconstruct(small_volume)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-5, atol=1e-7)
    assert np.all(a[~small_volume.mask] == 0)


def test_zero_padding_reduces_wraparound_error(small_volume):
    truth = small_volume.references["chi"]
    m = small_volume.mask
    err = {}
    for pad in (1.0, 2.0):
        chi = registry.get_method("tkd", variant="shmueli", pad_factor=pad).reconstruct(small_volume)
        err[pad] = np.linalg.norm((chi - truth)[m])
    assert err[2.0] < err[1.0]
