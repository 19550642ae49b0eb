"""Patch tiling of INR-QSM (numpy only, no torch): positions, the brain-fraction rule, coverage."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Patch:
    """One box of the volume: ``start`` and ``size`` in voxels, and its fraction of brain voxels."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    brain_fraction: float

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))  # type: ignore[return-value]


def axis_starts(n: int, size: int, stride: int) -> list[int]:
    """Start indices along one axis of length ``n``: ``0, stride, 2 stride, ...`` and a last one
    flush with the end, so that every voxel of the axis is covered."""
    size = min(size, n)
    starts = list(range(0, n - size + 1, max(1, stride)))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def clipped_patch_size(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int, int]:
    """The patch size, clipped to the volume (a patch never exceeds the matrix)."""
    return tuple(min(int(p), int(n)) for p, n in zip(patch_size, shape))  # type: ignore[return-value]


def make_patches(mask: np.ndarray, patch_size: Sequence[int], *, stride_fraction: float = 1.0 / 3.0,
                 min_brain_fraction: float = 0.3, ensure_coverage: bool = True) -> list[Patch]:
    """Tile ``mask`` with overlapping boxes and keep those with enough brain.

    Patches of ``patch_size`` (clipped to the matrix) start every ``round(stride_fraction * size)``
    voxels per axis, plus one flush with the far edge.  A patch is kept when at least
    ``min_brain_fraction`` of its voxels are in the mask (the paper's 30 % rule).  With
    ``ensure_coverage`` (our addition, the paper does not say), dropped patches are added back,
    greedily, until every mask voxel lies in at least one kept patch -- otherwise the voxels of
    a thin brain edge near a corner of the matrix would never enter the data term.
    """
    mask = np.asarray(mask, dtype=bool)
    size = clipped_patch_size(mask.shape, patch_size)
    strides = [max(1, int(round(s * stride_fraction))) for s in size]
    starts = [axis_starts(n, s, st) for n, s, st in zip(mask.shape, size, strides)]
    kept, dropped = [], []
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                sl = (slice(i, i + size[0]), slice(j, j + size[1]), slice(k, k + size[2]))
                frac = float(mask[sl].mean())
                patch = Patch((i, j, k), size, frac)
                if frac >= min_brain_fraction and frac > 0:
                    kept.append(patch)
                elif frac > 0:
                    dropped.append(patch)
    if ensure_coverage:
        covered = coverage(mask.shape, kept) > 0
        uncovered = mask & ~covered
        while uncovered.any() and dropped:
            gains = [int(uncovered[p.slices].sum()) for p in dropped]
            best = int(np.argmax(np.array(gains) + 1e-3 * np.array([p.brain_fraction for p in dropped])))
            if gains[best] == 0:
                break
            patch = dropped.pop(best)
            kept.append(patch)
            uncovered[patch.slices] = False
    return kept


def coverage(shape: Sequence[int], patches: Sequence[Patch]) -> np.ndarray:
    """How many patches contain each voxel."""
    count = np.zeros(tuple(shape), dtype=np.int32)
    for p in patches:
        count[p.slices] += 1
    return count
