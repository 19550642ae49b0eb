"""Conversion of a manifest's verified files to the canonical volume (``qsmbench.io`` layout).

Units are converted explicitly (:mod:`qsmbench.physics`):

* field ``ppm`` as is; ``ppb`` / 1000; ``Hz`` -> ppm with ``hz_to_ppm(f, B0)`` (RC2 at 7 T:
  f / 298.04);
* phase ``rad`` (a local, unwrapped phase at echo time TE) -> ppm with ``rad_to_ppm(phi, B0, TE)``;
* references ``ppm`` as is, ``ppb`` / 1000.

The grid (shape, affine, voxel size) comes from the field's NIfTI header; every other NIfTI
must share it, and arrays read from MATLAB files must have its shape.  The manifest's
``geometry`` is checked: a different shape is an error; a different voxel size is a warning
and the manifest's value wins (it documents the acquisition; the affine is rescaled to match).
``acquisition`` gives B0 (T), TE (s), the B0 direction in array coordinates and, for multi-echo data, the echo
spacing (``echo_spacing_s``, kept in ``meta`` and shown to methods: MEDI works in radians per echo spacing).

What a method may not see (references, labels, scoring mask) stays out of
:meth:`~qsmbench.volume.Volume.for_method`; label numbering and RC2's ``CalcMoment`` go to
``meta["metric_extras"]`` for :mod:`qsmbench.metrics`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..io import AFFINE_TOLERANCE_MM, save_volume
from ..physics import GAMMA_BAR_MHZ_PER_T, REFERENCE_TE_S, hz_to_ppm, rad_to_ppm
from ..volume import Volume
from .download import DEFAULT_RETRIES
from .fetch import FetchResult, fetch
from .manifest import FileSpec, Manifest, load_manifest

log = logging.getLogger("qsmbench.datasets")

VOXEL_TOLERANCE_MM = 1e-3


# --------------------------------------------------------------------------- readers
def read_mat_variable(path: str | os.PathLike, variable: str) -> np.ndarray:
    """One variable of a MATLAB file as an array in MATLAB's index order.

    MATLAB v7.3 files are HDF5: they are read with h5py when it is installed (and transposed, as
    HDF5 stores MATLAB's column-major arrays with reversed axes); without h5py the error says so.
    """
    import scipy.io  # noqa: PLC0415

    path = Path(path)
    try:
        data = scipy.io.loadmat(path, variable_names=[variable])
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        return _read_mat73(path, variable)
    except (ValueError, OSError, TypeError) as exc:
        raise InputError(f"cannot read the MATLAB file {path}: {exc}") from None
    if variable not in data:
        found = sorted(k for k in _mat_names(path) if not k.startswith("__"))
        raise InputError(f"{path} has no variable '{variable}' (it has: {', '.join(found) or 'none'})")
    return np.asarray(data[variable])


def _mat_names(path: Path) -> list[str]:
    import scipy.io  # noqa: PLC0415

    try:
        return [name for name, _shape, _cls in scipy.io.whosmat(path)]
    except Exception:  # noqa: BLE001 - only used to improve a message
        return []


def _read_mat73(path: Path, variable: str) -> np.ndarray:
    try:
        import h5py  # noqa: PLC0415
    except ImportError:
        raise InputError(f"{path} is a MATLAB v7.3 file (HDF5). Reading it needs the h5py package, which is not "
                         f"installed: run 'pip install h5py' (or re-save the file in MATLAB with "
                         f"save(..., '-v7'))") from None
    try:
        with h5py.File(path, "r") as fh:
            if variable not in fh:
                raise InputError(f"{path} has no variable '{variable}' (it has: {', '.join(sorted(fh)) or 'none'})")
            arr = np.asarray(fh[variable][()])
    except OSError as exc:
        raise InputError(f"cannot read the MATLAB v7.3 file {path}: {exc}") from None
    return arr.T


def _read_image(path: Path, spec: FileSpec, what: str) -> tuple[np.ndarray, np.ndarray | None, tuple | None]:
    """``(data, affine, voxel_size_mm)``; affine and voxel size are None for .mat arrays."""
    if spec.is_mat:
        arr = read_mat_variable(path, spec.variable)
        affine = zooms = None
    else:
        try:
            img = nib.load(str(path))
            arr = np.asanyarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise InputError(f"cannot read the {what} file {path}: {exc}") from None
        affine = np.asarray(img.affine, dtype=float)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if spec.volume is not None:
        if arr.ndim != 4:
            raise InputError(f"{path} ({what}): 'volume: {spec.volume}' needs a 4-D image, got shape {arr.shape}")
        if spec.volume >= arr.shape[3]:
            raise InputError(f"{path} ({what}): volume {spec.volume} requested but it has {arr.shape[3]}")
        arr = arr[..., spec.volume]
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        hint = " (set 'volume:' in the manifest to pick one, e.g. 0 for the first echo)" if arr.ndim == 4 else ""
        raise InputError(f"{path} ({what}) must be 3-D, got shape {arr.shape}{hint}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        n = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{path} ({what}) contains {n} non-finite values (NaN/inf)")
    return np.asarray(arr), affine, zooms


def _scalar(path: Path, spec: FileSpec) -> float | None:
    value = np.asarray(read_mat_variable(path, spec.variable)).squeeze()
    if value.size != 1:
        raise InputError(f"{path}: '{spec.variable}' should be a scalar, got shape {value.shape}")
    number = float(value)
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------- conversion
def field_to_ppm(data: np.ndarray, units: str, *, b0_tesla: float, te_s: float | None) -> tuple[np.ndarray, str]:
    """Convert a local field (or local phase) to ppm; return the array and a sentence saying how."""
    data = np.asarray(data, dtype=np.float64)
    if units == "ppm":
        return data, "field given in ppm (unchanged)"
    if units == "ppb":
        return data / 1000.0, "field ppb -> ppm: / 1000"
    if units == "Hz":
        return hz_to_ppm(data, b0_tesla), (f"field Hz -> ppm: f / (gamma_bar * B0) = f / "
                                           f"({GAMMA_BAR_MHZ_PER_T} MHz/T * {b0_tesla} T)")
    if units == "rad":
        if not te_s:
            raise InputError("a phase in rad needs the echo time (acquisition.te_s) to convert it to ppm")
        return rad_to_ppm(data, b0_tesla, te_s), (f"phase rad -> ppm: phi / (2 pi gamma_bar B0 TE) * 1e6 with "
                                                  f"B0 = {b0_tesla} T, TE = {te_s} s")
    raise InputError(f"unknown field units {units!r}")


def chi_to_ppm(data: np.ndarray, units: str) -> np.ndarray:
    data = np.asarray(data, dtype=np.float64)
    return data / 1000.0 if units == "ppb" else data


def build_volume(result: FetchResult, *, name: str | None = None) -> Volume:
    """The canonical :class:`Volume` of a fetched manifest (see the module docstring)."""
    m = result.manifest
    acq = m.acquisition
    b0_tesla = float(acq["b0_tesla"])
    te_s = acq.get("te_s")
    specs = {s.key: s for s in m.files if s.key in result.files}
    field_spec = specs.get("field") or specs["phase"]
    field_path = result.files[field_spec.key]
    raw, affine, zooms = _read_image(field_path, field_spec, field_spec.role)
    units = field_spec.units or ("rad" if field_spec.role == "phase" else "ppm")
    field_ppm, how = field_to_ppm(raw, units, b0_tesla=b0_tesla, te_s=te_s)
    conversions = [how]
    notes = []
    shape = field_ppm.shape

    expected_shape = m.geometry.get("shape")
    if expected_shape and tuple(expected_shape) != shape:
        raise InputError(f"{field_path} has shape {shape}, but the manifest {m.path} says {tuple(expected_shape)}")
    header_affine = affine
    voxel = zooms
    expected_voxel = m.geometry.get("voxel_size_mm")
    if expected_voxel and not np.allclose(zooms, expected_voxel, atol=VOXEL_TOLERANCE_MM):
        msg = (f"{field_path}: the NIfTI header's voxel size {zooms} mm differs from the manifest's "
               f"{tuple(expected_voxel)} mm; using the manifest's (it documents the acquisition)")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
        voxel = tuple(float(v) for v in expected_voxel)
        scale = np.array(voxel) / np.array(zooms)
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3] * scale[None, :]

    arrays: dict[str, np.ndarray] = {}
    for key, spec in specs.items():
        if spec is field_spec or spec.role == "calc_moment":
            continue
        path = result.files[key]
        data, aff, _ = _read_image(path, spec, key)
        if data.shape != shape:
            raise InputError(f"{path} ({key}) has shape {data.shape} but the field {field_path} has shape {shape}")
        if aff is not None and not np.allclose(aff, header_affine, atol=AFFINE_TOLERANCE_MM):
            raise InputError(f"{path} ({key}) and {field_path} have different affines (voxel-to-world matrices)")
        arrays[key] = data

    extras: dict[str, Any] = dict(m.data.get("metric_extras", {}))
    labels_spec = specs.get("labels")
    if labels_spec is not None and labels_spec.label_scheme:
        extras["label_scheme"] = labels_spec.label_scheme
    if "calc_moment" in specs:
        moment = _scalar(result.files["calc_moment"], specs["calc_moment"])
        if moment is not None:
            extras["calc_moment_gt"] = moment
    references = {}
    for key, spec in specs.items():
        if spec.role == "reference":
            references[spec.name] = chi_to_ppm(arrays[key], spec.units or "ppm").astype(np.float32)
            if (spec.units or "ppm") == "ppb":
                conversions.append(f"reference {spec.name}: ppb -> ppm: / 1000")

    meta = {
        "source": f"data manifest {m.name}",
        "dataset": name or m.name,
        "manifest": {"name": m.name, "path": str(m.path), "title": m.title, "source_type": m.source_type},
        "citation": list(m.data["citation"]),
        "licence": m.data["licence"],
        "origins": result.origins,
        "checksums": result.checksums,
        "files": {key: _relative(result.files[key], result.cache) for key in specs},
        "original_units": {key: (spec.units or {"phase": "rad"}.get(spec.role, "ppm"))
                           for key, spec in specs.items() if spec.role in ("field", "phase", "reference")},
        "conversions": conversions,
        "metric_extras": extras,
    }
    if notes:
        meta["geometry_notes"] = notes
    if acq.get("notes"):
        meta["acquisition_notes"] = acq["notes"]
    if acq.get("echo_times_s"):
        meta["echo_times_s"] = list(acq["echo_times_s"])
    if acq.get("echo_spacing_s"):
        meta["echo_spacing_s"] = float(acq["echo_spacing_s"])   # passed on to methods (Volume.for_method)
    magnitude = arrays.get("magnitude")
    labels = arrays.get("labels")
    scoring = arrays.get("scoring_mask")
    try:
        return Volume(
            field_ppm=field_ppm.astype(np.float32),
            mask=arrays["mask"] != 0,
            voxel_size_mm=voxel,
            b0_dir=tuple(acq["b0_dir"]),
            b0_tesla=b0_tesla,
            te_s=float(te_s) if te_s else REFERENCE_TE_S,
            affine=affine,
            magnitude=None if magnitude is None else magnitude.astype(np.float32),
            references=references,
            labels=None if labels is None else np.rint(labels).astype(np.int16) if _integral(labels) else labels,
            scoring_mask=None if scoring is None else scoring != 0,
            name=name or m.name,
            meta=meta,
        )
    except InputError as exc:
        raise InputError(f"dataset '{name or m.name}' ({m.path}): {exc}") from None


def _integral(a: np.ndarray) -> bool:
    """Labels stored as floats (common in challenge files) are accepted when they are whole numbers."""
    return bool(np.all(np.abs(a - np.rint(a)) < 1e-3))


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


# --------------------------------------------------------------------------- entry point
def prepare_dataset(manifest: str | os.PathLike | Manifest, outdir: str | os.PathLike, *,
                    name: str | None = None, cache: str | os.PathLike | None = None,
                    mirror: str | None = None, retries: int = DEFAULT_RETRIES) -> Path:
    """Fetch (download, verify, extract) a manifest's data and write the canonical volume.

    ``outdir`` receives the layout of :mod:`qsmbench.io` (``field_ppm.nii.gz``, ``mask.nii.gz``,
    references, labels, ``meta.json``, ...), written all or nothing.  ``name`` is the dataset id
    (default: the manifest name).  Simulated manifests are generated instead of fetched.
    """
    m = load_manifest(manifest)
    if m.source_type == "simulated":
        from ..phantom import make_phantom  # noqa: PLC0415

        params = dict(m.source.get("parameters", {}))
        for k in ("shape", "voxel_size_mm", "b0_dir"):
            if k in params:
                params[k] = tuple(params[k])
        vol = make_phantom(name=name or m.name, **params)
        return save_volume(vol, outdir, extra_meta={"manifest": {"name": m.name, "path": str(m.path),
                                                                 "title": m.title, "source_type": "simulated"},
                                                    "citation": list(m.data["citation"])})
    result = fetch(m, cache=cache, mirror=mirror, retries=retries)
    vol = build_volume(result, name=name)
    log.info("%s: %s volume %s, voxel %s mm, references %s", vol.name, m.source_type, vol.shape,
             vol.voxel_size_mm, sorted(vol.references) or "none")
    return save_volume(vol, outdir)
