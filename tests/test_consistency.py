"""Data-consistency diagnostics (qsmbench.consistency) against independent numpy computations."""

import numpy as np
import pytest

from qsmbench.consistency import data_consistency_error, patch_boxes, patch_data_consistency_error
from qsmbench.physics import dipole_kernel, padded_shape


def _numpy_forward(chi, voxel, b0, pad):
    """Zero-padded FFT convolution with D(0) = 0, written out with numpy's complex FFT."""
    big = padded_shape(chi.shape, pad)  # the same padded grid as the library (FFT-friendly sizes)
    d = dipole_kernel(big, voxel, b0, d0=0.0)
    x = np.zeros(big)
    x[: chi.shape[0], : chi.shape[1], : chi.shape[2]] = chi
    y = np.fft.ifftn(np.fft.fftn(x) * d).real
    return y[: chi.shape[0], : chi.shape[1], : chi.shape[2]]


def _volume(shape=(16, 18, 14)):
    rng = np.random.default_rng(3)
    grid = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    mask = sum((g / (0.4 * n)) ** 2 for g, n in zip(grid, shape)) <= 1
    chi = rng.normal(0, 0.05, shape) * mask
    return chi, mask


def test_full_model_error_is_zero_for_the_field_of_chi_and_matches_numpy():
    chi, mask = _volume()
    # B0 along an axis: a complex-FFT reference equals the library's real FFTs exactly (an oblique
    # kernel is not symmetric on the even Nyquist planes, where the two differ)
    voxel, b0 = (1.0, 1.2, 0.9), (0.0, 0.0, 1.0)
    field = _numpy_forward(chi, voxel, b0, 2) * mask
    assert data_consistency_error(chi, field, mask, voxel, b0) < 1e-6
    # a wrong chi: half of it leaves half the field unexplained
    assert data_consistency_error(0.5 * chi, field, mask, voxel, b0) == pytest.approx(0.5, rel=1e-6)
    # an independent residual: chi fitted to another field
    other = np.roll(field, 2, axis=0) * mask
    expected = np.linalg.norm((_numpy_forward(chi, voxel, b0, 2) - other)[mask]) / np.linalg.norm(other[mask])
    assert data_consistency_error(chi, other, mask, voxel, b0) == pytest.approx(expected, rel=1e-6)


def test_patch_model_error_matches_a_numpy_sum_over_boxes_and_misses_nonlocal_fields():
    chi, mask = _volume((16, 16, 16))
    voxel, b0 = (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)
    field = _numpy_forward(chi, voxel, b0, 2) * mask
    boxes = patch_boxes(chi.shape, (8, 8, 8), 0.5)
    # 0, 4, 8 per axis: 27 boxes
    assert len(boxes) == 27 and boxes[-1] == (slice(8, 16),) * 3
    num = den = 0.0
    for box in boxes:
        m = mask[box]
        if not m.any():
            continue
        r = (_numpy_forward(chi[box], voxel, b0, 2) - field[box])[m]
        num += np.sum(r**2)
        den += np.sum(field[box][m] ** 2)
    got = patch_data_consistency_error(chi, field, mask, voxel, b0, patch_size=(8, 8, 8), stride_fraction=0.5)
    assert got == pytest.approx(np.sqrt(num / den), rel=1e-6)
    # the exact field of chi is not explained by the patch model (sources outside each box are
    # missing), while the full model explains it
    assert got > 0.05
    assert data_consistency_error(chi, field, mask, voxel, b0) < 1e-6
    # one box covering the whole volume is the full model
    whole = patch_data_consistency_error(chi, field, mask, voxel, b0, patch_size=(32, 32, 32))
    assert whole == pytest.approx(data_consistency_error(chi, field, mask, voxel, b0), abs=1e-9)


def test_patch_boxes_cover_every_voxel_and_end_flush():
    shape = (20, 17, 9)
    boxes = patch_boxes(shape, (8, 8, 48), 1 / 3)
    cover = np.zeros(shape, int)
    for b in boxes:
        cover[b] += 1
        assert tuple(s.stop - s.start for s in b) == (8, 8, 9)  # clipped to the matrix
    assert cover.min() >= 1
    assert {b[0].start for b in boxes} == {0, 3, 6, 9, 12}  # stride round(8/3) = 3, last flush: 12


def test_bad_input_is_a_clear_error():
    chi, mask = _volume()
    with pytest.raises(ValueError, match="one shape"):
        data_consistency_error(chi, chi[:-1], mask)
    with pytest.raises(ValueError, match="mask is empty"):
        data_consistency_error(chi, chi, np.zeros_like(mask))
    with pytest.raises(ValueError, match="zero inside the mask"):
        data_consistency_error(chi, np.zeros_like(chi), mask)
    with pytest.raises(ValueError, match="stride_fraction"):
        patch_boxes(chi.shape, (8, 8, 8), 0.0)
