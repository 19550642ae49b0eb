"""NIfTI and JSON input/output with validation and atomic writes.

The canonical on-disk layout of a volume (``results/data/{dataset}/`` and every perturbed copy)::

    field_ppm.nii.gz          local field, ppm
    mask.nii.gz               brain mask (uint8)
    magnitude.nii.gz          optional
    labels.nii.gz             optional integer segmentation (RC2 numbering)
    scoring_mask.nii.gz       optional evaluation mask
    reference-{name}.nii.gz   ground-truth chi in ppm, one file per reference
    meta.json                 units, geometry (B0 direction, B0, TE), provenance

Voxel size and affine come from the NIfTI headers; ``meta.json`` carries what NIfTI cannot.
Every writer writes to a temporary name in the same folder and renames, so an interrupted job
never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from .errors import InputError
from .volume import Volume

FIELD = "field_ppm.nii.gz"
MASK = "mask.nii.gz"
MAGNITUDE = "magnitude.nii.gz"
LABELS = "labels.nii.gz"
SCORING_MASK = "scoring_mask.nii.gz"
META = "meta.json"
REFERENCE_PREFIX = "reference-"

#: Affines that differ by less than this (mm) are taken as the same grid.
AFFINE_TOLERANCE_MM = 1e-3


# --------------------------------------------------------------------------- NIfTI
#: What :func:`read_nifti` accepts, by ``kind``.
KINDS = {
    "real": "real numbers (integer or floating point; not complex, not boolean)",
    "binary": "a binary mask: 0 outside, 1 inside (boolean, integer or floating point)",
    "labels": "non-negative integer labels",
}


def read_nifti(path: str | os.PathLike, *, role: str = "image", kind: str = "real"
               ) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Read a 3-D NIfTI; return ``(data, affine, voxel_size_mm)``.

    Trailing singleton dimensions are dropped.  :class:`InputError` naming the file (and
    ``role``) for: a missing, truncated or corrupt file (NIfTI or gzip); anything not 3-D; a
    voxel size (``pixdim``) that is zero, negative or not finite -- read from the raw header,
    because nibabel silently turns 0 into 1 and a negative size into its absolute value; a
    data type or values that ``kind`` (:data:`KINDS`) does not accept; NaN or infinite values.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} file not found: {path}")
    if path.is_dir():
        raise InputError(f"{role} file {path} is a folder; expected a NIfTI file (.nii or .nii.gz)")
    try:
        with _quiet_nibabel():  # nibabel logs its silent header "fixes"; we check the raw header instead
            img = nib.load(str(path))
        zooms = _raw_voxel_size(img, path)
        data = np.asanyarray(img.dataobj)
        affine = img.affine
    except InputError:
        raise
    except Exception as exc:  # nibabel, gzip and numpy raise many types for corrupt files
        raise InputError(f"cannot read {role} file {path} (a truncated or corrupt NIfTI/gzip file?): "
                         f"{type(exc).__name__}: {exc}") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{role} file {path} must be 3-D, got shape {data.shape}")
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(f"{role} file {path} has the voxel size {_fmt(zooms)} mm in its header (pixdim); "
                         "expected three positive numbers")
    data = np.asarray(data)
    _check_kind(path, role, data, kind)
    if affine is None:
        affine = np.diag([*zooms, 1.0])
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{role} file {path} has a voxel-to-world matrix (affine) that is not finite")
    return data, affine, zooms


@contextlib.contextmanager
def _quiet_nibabel():
    logger = logging.getLogger("nibabel.global")
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


def _fmt(values) -> str:
    return " x ".join(f"{v:g}" for v in values)


def _raw_voxel_size(img, path: Path) -> tuple[float, float, float]:
    """pixdim[1:4] as stored in the file (nibabel's header has 0 -> 1 and abs() applied)."""
    hdr = img.header
    if isinstance(hdr, nib.Nifti1Header):  # Nifti2Header too
        with ImageOpener(str(path)) as fh:
            raw = type(hdr).from_fileobj(fh, check=False)
        return tuple(float(z) for z in raw["pixdim"][1:4])  # type: ignore[return-value]
    return tuple(float(z) for z in hdr.get_zooms()[:3])  # type: ignore[return-value]


def _check_kind(path: Path, role: str, data: np.ndarray, kind: str) -> None:
    expected = KINDS[kind]
    dtype = data.dtype
    is_bool = dtype.kind == "b"
    if dtype.fields is not None or not (np.issubdtype(dtype, np.number) or is_bool):
        raise InputError(f"{role} file {path} has the data type {dtype} (e.g. RGB); expected {expected}")
    if np.iscomplexobj(data):
        raise InputError(f"{role} file {path} is complex-valued ({dtype}); expected {expected}"
                         + (" -- a field map is real: convert complex data to a field (phase) first"
                            if kind == "real" else ""))
    if kind == "real" and is_bool:
        raise InputError(f"{role} file {path} is boolean; expected {expected}")
    if np.issubdtype(dtype, np.floating) and not np.all(np.isfinite(data)):
        n = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{role} file {path} contains {n} non-finite values (NaN/inf); expected {expected}")
    if kind == "binary" and not is_bool:
        odd = data[(data != 0) & (data != 1)]
        if odd.size:
            shown = ", ".join(f"{v:g}" for v in np.unique(odd)[:3])
            raise InputError(f"{role} file {path} is not a binary mask: {odd.size} voxels hold values other than "
                             f"0 and 1 (e.g. {shown}); expected {expected}")
    if kind == "labels" and not is_bool and (np.any(data < 0) or np.any(data != np.round(data))):
        raise InputError(f"{role} file {path} holds negative or non-integer values; expected {expected}")


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *,
                dtype=None) -> Path:
    """Write ``data`` atomically (temporary file + rename, :func:`atomic_write`) as NIfTI-1."""
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm", "sec")
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically, sorted and indented, with numpy scalars converted."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process's umask, read once at import (``os.umask`` can only be read by setting it).
_UMASK = _read_umask()

#: Marker in the names of :func:`atomic_write`'s temporary files (hidden: they start with '.').
TEMP_MARKER = ".qsmtmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``path``.

    The one way every output of qsmbench is written (NIfTI, JSON, parquet, CSV, figures, the
    report): the temporary file sits in ``path``'s folder (so the rename is atomic on POSIX and
    Windows) and ends with ``path``'s own suffixes (``.nii.gz``, ``.png``: writers that infer the
    format from the name keep working).  An interrupted write (exception, SIGINT, SIGKILL) never
    leaves a truncated file under the final name: readers see the old content or the new one.
    On an exception the temporary file is removed; after a SIGKILL a hidden
    ``.{name}.qsmtmp-*`` file may remain, which nothing reads.  The file gets the permissions a
    plain ``open()`` would give it (0666 less the umask), not mkstemp's 0600.  There is no
    fsync: the guarantee is against interruption of the process, not against power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    suffix = "".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{name}{TEMP_MARKER}", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- volumes
def check_same_grid(ref_path, ref_shape, ref_affine, path, shape, affine) -> None:
    """Error naming both files when two images do not share one grid."""
    if tuple(shape) != tuple(ref_shape):
        raise InputError(f"{path} has shape {tuple(shape)} but {ref_path} has shape {tuple(ref_shape)}")
    if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE_MM):
        raise InputError(f"{path} and {ref_path} have different affines (voxel-to-world matrices)")


def volume_from_files(field: str | os.PathLike, mask: str | os.PathLike, *,
                      magnitude: str | os.PathLike | None = None,
                      references: Mapping[str, str | os.PathLike] | None = None,
                      labels: str | os.PathLike | None = None,
                      scoring_mask: str | os.PathLike | None = None,
                      b0_dir=(0.0, 0.0, 1.0), b0_tesla: float | None = None,
                      te_s: float | None = None, name: str | None = None,
                      meta: Mapping[str, Any] | None = None) -> Volume:
    """Build a validated :class:`Volume` from NIfTI files (field in ppm)."""
    field_data, affine, zooms = read_nifti(field, role="field")
    arrays: dict[str, Any] = {}
    extra = {"mask": mask, "magnitude": magnitude, "labels": labels, "scoring_mask": scoring_mask}
    extra.update({f"reference '{k}'": v for k, v in (references or {}).items()})
    kinds = {"mask": "binary", "scoring_mask": "binary", "labels": "labels"}
    for role, path in extra.items():
        if path is None:
            continue
        data, aff, _ = read_nifti(path, role=role, kind=kinds.get(role, "real"))
        check_same_grid(field, field_data.shape, affine, path, data.shape, aff)
        arrays[role] = data
    mask_data = arrays["mask"]
    if not np.any(mask_data):
        raise InputError(f"mask file {mask} is empty (no non-zero voxel); expected a brain mask")
    if np.all(mask_data):
        raise InputError(f"mask file {mask} covers every voxel ({mask_data.size}); expected a brain mask that leaves "
                         "out the background (a dipole inversion needs to know where the tissue ends)")
    kwargs: dict[str, Any] = {}
    if b0_tesla is not None:
        kwargs["b0_tesla"] = b0_tesla
    if te_s is not None:
        kwargs["te_s"] = te_s
    try:
        return Volume(
            field_ppm=field_data.astype(np.float32, copy=False),
            mask=mask_data != 0,
            voxel_size_mm=zooms,
            b0_dir=tuple(b0_dir),
            affine=affine,
            magnitude=None if "magnitude" not in arrays else arrays["magnitude"].astype(np.float32),
            references={k: arrays[f"reference '{k}'"].astype(np.float32) for k in (references or {})},
            labels=arrays.get("labels"),
            scoring_mask=None if "scoring_mask" not in arrays else arrays["scoring_mask"] != 0,
            name=name or Path(field).name.split(".")[0],
            meta=dict(meta or {}),
            **kwargs,
        )
    except InputError as exc:
        raise InputError(f"{field}: {exc}") from None


def load_volume(folder: str | os.PathLike) -> Volume:
    """Read a volume in the canonical layout (see the module docstring)."""
    folder = Path(folder)
    meta = read_json(folder / META)
    try:
        refs = {name: folder / f"{REFERENCE_PREFIX}{name}.nii.gz" for name in meta.get("references", [])}
        geometry = {k: meta[k] for k in ("b0_dir", "b0_tesla", "te_s")}
    except (KeyError, TypeError) as exc:
        raise InputError(f"{folder / META} lacks the key {exc}") from None
    optional = {}
    for key, fname in (("magnitude", MAGNITUDE), ("labels", LABELS), ("scoring_mask", SCORING_MASK)):
        if (folder / fname).exists():
            optional[key] = folder / fname
    return volume_from_files(folder / FIELD, folder / MASK, references=refs,
                             name=meta.get("name", folder.name), meta=meta, **optional, **geometry)


def save_volume(vol: Volume, folder: str | os.PathLike, *, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``vol`` in the canonical layout, all or nothing.

    Files are written into a temporary sibling folder which then replaces ``folder``; an
    interrupted call leaves the previous content (or nothing) in place.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_nifti(tmp / FIELD, vol.field_ppm.astype(np.float32), vol.affine)
        write_nifti(tmp / MASK, vol.mask, vol.affine, dtype=np.uint8)
        if vol.magnitude is not None:
            write_nifti(tmp / MAGNITUDE, vol.magnitude.astype(np.float32), vol.affine)
        if vol.labels is not None:
            write_nifti(tmp / LABELS, vol.labels, vol.affine, dtype=np.int16)
        if vol.scoring_mask is not None:
            write_nifti(tmp / SCORING_MASK, vol.scoring_mask, vol.affine, dtype=np.uint8)
        for name, chi in vol.references.items():
            write_nifti(tmp / f"{REFERENCE_PREFIX}{name}.nii.gz", chi.astype(np.float32), vol.affine)
        meta = dict(vol.meta)
        meta.update(extra_meta or {})
        meta.update(vol.geometry())
        meta.update({
            "name": vol.name,
            "references": sorted(vol.references),
            "units": {"field": "ppm", "chi": "ppm", "voxel_size": "mm", "b0": "T", "te": "s"},
        })
        write_json(tmp / META, meta)
        if folder.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, aside / "old")
            os.replace(tmp, folder)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
