"""The in-memory record that every stage passes on.

A :class:`Volume` holds one subject's local field (ppm), its brain mask and its acquisition
geometry, plus -- for evaluation only -- the reference susceptibility map(s) and labels.
Methods receive :meth:`Volume.for_method`, which drops everything a reconstruction must not see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import InputError
from .physics import REFERENCE_B0_TESLA, REFERENCE_TE_S, _as_voxel_size, unit_vector


def default_affine(voxel_size_mm) -> np.ndarray:
    """Diagonal affine with the given voxel size and the origin at voxel (0, 0, 0)."""
    a = np.eye(4)
    a[0, 0], a[1, 1], a[2, 2] = _as_voxel_size(voxel_size_mm)
    return a


@dataclasses.dataclass
class Volume:
    """One subject, on one grid.

    Attributes
    ----------
    field_ppm : local (tissue) field in ppm, 3-D float.
    mask : brain mask (bool), same shape; the region methods reconstruct.
    voxel_size_mm : spacing along the three array axes, mm.
    b0_dir : unit B0 direction in array coordinates.
    b0_tesla, te_s : acquisition; used by methods that work in radians (MEDI, uQSM).
        ``te_s`` is the (effective) echo time that relates the field to phase.
    affine : 4x4 voxel-to-world (RAS, mm) matrix, carried through to the outputs.
    magnitude : optional magnitude image (arbitrary units).
    references : ground-truth susceptibility maps in ppm, by name (e.g. ``{"chi": ...}`` for the
        phantom, ``{"chi_33": ..., "chi_cosmos": ...}`` for the 2016 data). Never shown to methods.
    labels : optional integer segmentation (RC2 label numbering).
    scoring_mask : optional evaluation mask (RC2's eroded mask); ``mask`` when absent.
    name : dataset / subject identifier.
    meta : free-form provenance (units, source, seeds, perturbation parameters).
    """

    field_ppm: np.ndarray
    mask: np.ndarray
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    b0_tesla: float = REFERENCE_B0_TESLA
    te_s: float = REFERENCE_TE_S
    affine: np.ndarray | None = None
    magnitude: np.ndarray | None = None
    references: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    labels: np.ndarray | None = None
    scoring_mask: np.ndarray | None = None
    name: str = "volume"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self, source: str | None = None) -> None:
        """Check dimensionality, shapes, finiteness and geometry; raise :class:`InputError`."""
        where = f" in {source}" if source else f" in volume '{self.name}'"
        field = np.asarray(self.field_ppm)
        if field.ndim != 3:
            raise InputError(f"field must be a 3-D array{where}, got {field.ndim}-D shape {field.shape}")
        if not np.issubdtype(field.dtype, np.floating):
            field = field.astype(np.float32)
        if not np.all(np.isfinite(field)):
            n = int(np.size(field) - np.count_nonzero(np.isfinite(field)))
            raise InputError(f"field contains {n} non-finite values (NaN/inf){where}")
        self.field_ppm = field
        self.mask = self._check_same_shape("mask", self.mask, where).astype(bool)
        if not self.mask.any():
            raise InputError(f"mask is empty (no non-zero voxel){where}")
        if self.magnitude is not None:
            self.magnitude = self._check_finite("magnitude", self.magnitude, where)
        self.references = {k: self._check_finite(f"reference '{k}'", v, where)
                           for k, v in dict(self.references).items()}
        if self.labels is not None:
            labels = self._check_same_shape("labels", self.labels, where)
            if not np.all(np.isfinite(labels)) or np.any(labels < 0) or np.any(labels != np.round(labels)):
                raise InputError(f"labels must be non-negative integers{where}")
            self.labels = labels.astype(np.int16)
        if self.scoring_mask is not None:
            self.scoring_mask = self._check_same_shape("scoring_mask", self.scoring_mask, where).astype(bool)
            if not self.scoring_mask.any():
                raise InputError(f"scoring mask is empty{where}")
        try:
            self.voxel_size_mm = _as_voxel_size(self.voxel_size_mm)
            self.b0_dir = tuple(float(x) for x in unit_vector(self.b0_dir))
        except ValueError as exc:
            raise InputError(f"{exc}{where}") from None
        if not (np.isfinite(self.b0_tesla) and self.b0_tesla > 0):
            raise InputError(f"b0_tesla must be positive{where}, got {self.b0_tesla}")
        if not (np.isfinite(self.te_s) and self.te_s > 0):
            raise InputError(f"te_s must be positive{where}, got {self.te_s}")
        if self.affine is None:
            self.affine = default_affine(self.voxel_size_mm)
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise InputError(f"affine must be a finite 4x4 matrix{where}")

    def _check_same_shape(self, what: str, arr, where: str) -> np.ndarray:
        arr = np.asarray(arr)
        if arr.shape != self.field_ppm.shape:
            raise InputError(f"{what} has shape {arr.shape} but the field has shape "
                             f"{self.field_ppm.shape}{where}")
        return arr

    def _check_finite(self, what: str, arr, where: str) -> np.ndarray:
        arr = self._check_same_shape(what, arr, where)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what} contains non-finite values (NaN/inf){where}")
        return arr

    # ------------------------------------------------------------------ accessors
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.field_ppm.shape)  # type: ignore[return-value]

    @property
    def has_truth(self) -> bool:
        return bool(self.references)

    @property
    def eval_mask(self) -> np.ndarray:
        """The mask metrics are computed in: the scoring mask when given, else the brain mask."""
        return self.scoring_mask if self.scoring_mask is not None else self.mask

    def for_method(self) -> Volume:
        """A copy without references, labels and scoring mask: what a method may see.

        Of ``meta`` it keeps ``units``, ``source``, ``dataset`` and the acquisition's
        ``echo_spacing_s`` (multi-echo data: the echo spacing, s; MEDI's radians are per echo
        spacing, as the Cornell toolbox's field map).
        """
        return dataclasses.replace(self, references={}, labels=None, scoring_mask=None,
                                   meta={k: v for k, v in self.meta.items()
                                         if k in ("units", "source", "dataset", "echo_spacing_s")})

    def geometry(self) -> Mapping[str, Any]:
        """The scalar acquisition description (JSON-friendly)."""
        return {
            "shape": list(self.shape),
            "voxel_size_mm": list(self.voxel_size_mm),
            "b0_dir": list(self.b0_dir),
            "b0_tesla": float(self.b0_tesla),
            "te_s": float(self.te_s),
        }
