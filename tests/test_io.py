"""NIfTI/JSON I/O: validation messages name the file; writes are atomic; round trips."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmbench import io
from qsmbench.errors import InputError
from qsmbench.volume import Volume


def save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def test_volume_round_trip(tmp_path, small_volume):
    small_volume.labels = (small_volume.mask * 8).astype(np.int16)
    small_volume.meta = {"seed": 3}
    io.save_volume(small_volume, tmp_path / "v")
    back = io.load_volume(tmp_path / "v")
    np.testing.assert_allclose(back.field_ppm, small_volume.field_ppm, rtol=1e-6)
    np.testing.assert_array_equal(back.mask, small_volume.mask)
    np.testing.assert_allclose(back.references["chi"], small_volume.references["chi"], rtol=1e-6)
    np.testing.assert_array_equal(back.labels, small_volume.labels)
    assert back.voxel_size_mm == pytest.approx(small_volume.voxel_size_mm)
    assert back.b0_tesla == 3.0 and back.te_s == 0.02
    meta = json.loads((tmp_path / "v" / "meta.json").read_text())
    assert meta["units"]["field"] == "ppm" and meta["seed"] == 3 and meta["references"] == ["chi"]


def test_save_volume_replaces_previous_content_atomically(tmp_path, small_volume):
    io.save_volume(small_volume, tmp_path / "v")
    (tmp_path / "v" / "stale.txt").write_text("old")
    io.save_volume(small_volume, tmp_path / "v")
    assert not (tmp_path / "v" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no temporary folders left


def test_four_d_field_is_rejected_with_its_name(tmp_path):
    f = save(tmp_path / "field.nii.gz", np.zeros((4, 4, 4, 2), np.float32))
    m = save(tmp_path / "mask.nii.gz", np.ones((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match=r"field file .*field\.nii\.gz must be 3-D"):
        io.volume_from_files(f, m)


def test_mask_of_another_shape(tmp_path):
    f = save(tmp_path / "field.nii.gz", np.zeros((4, 4, 4), np.float32))
    m = save(tmp_path / "mask.nii.gz", np.ones((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match=r"mask\.nii\.gz has shape \(4, 4, 5\) but .*field\.nii\.gz"):
        io.volume_from_files(f, m)


def test_mask_with_another_affine(tmp_path):
    f = save(tmp_path / "field.nii.gz", np.zeros((4, 4, 4), np.float32))
    m = save(tmp_path / "mask.nii.gz", np.ones((4, 4, 4), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(InputError, match="different affines"):
        io.volume_from_files(f, m)


def test_nan_in_field(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    f = save(tmp_path / "field.nii.gz", data)
    m = save(tmp_path / "mask.nii.gz", np.ones((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match=r"field file .*field\.nii\.gz contains 1 non-finite"):
        io.volume_from_files(f, m)


def test_empty_mask(tmp_path):
    f = save(tmp_path / "field.nii.gz", np.zeros((4, 4, 4), np.float32))
    m = save(tmp_path / "mask.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match=r"mask file .*mask\.nii\.gz is empty"):
        io.volume_from_files(f, m)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="field file not found"):
        io.read_nifti(tmp_path / "nope.nii.gz", role="field")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"cannot read field file .*bad\.nii\.gz"):
        io.read_nifti(bad, role="field")


def test_write_nifti_leaves_no_temporary_file_on_failure(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", boom)
    with pytest.raises(OSError):
        io.write_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_volume_validation_messages():
    with pytest.raises(InputError, match="3-D"):
        Volume(field_ppm=np.zeros((4, 4)), mask=np.ones((4, 4)))
    with pytest.raises(InputError, match="b0_dir"):
        Volume(field_ppm=np.zeros((4, 4, 4)), mask=np.ones((4, 4, 4)), b0_dir=(0, 0, 0))
    with pytest.raises(InputError, match="voxel_size_mm"):
        Volume(field_ppm=np.zeros((4, 4, 4)), mask=np.ones((4, 4, 4)), voxel_size_mm=(1, 0, 1))
    with pytest.raises(InputError, match="labels must be non-negative integers"):
        Volume(field_ppm=np.zeros((4, 4, 4)), mask=np.ones((4, 4, 4)), labels=np.full((4, 4, 4), 0.5))


def test_for_method_hides_the_truth(small_volume):
    seen = small_volume.for_method()
    assert seen.references == {} and seen.labels is None
    assert seen.field_ppm is small_volume.field_ppm  # no copy of big arrays
