"""Warm-start weights for INR-QSM: a cache keyed by a hash of everything that shapes them."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHE_FORMAT = 1


def cache_root(cache_dir: str = "") -> Path:
    """``cache_dir``, else ``$QSMBENCH_CACHE/inr_qsm``, else ``~/.cache/qsmbench/inr_qsm``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("QSMBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qsmbench")
    return Path(base) / "inr_qsm"


def volume_fingerprint(vol) -> str:
    """SHA-256 of a volume's field, mask and geometry (what a fit on it depends on)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(vol.field_ppm, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(vol.mask, dtype=bool).tobytes())
    h.update(json.dumps([list(vol.shape), list(vol.voxel_size_mm), list(vol.b0_dir)]).encode())
    return h.hexdigest()


def cache_key(config: Mapping[str, Any]) -> str:
    text = json.dumps({"format": CACHE_FORMAT, **config}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def save_state(path: Path, state: Mapping[str, torch.Tensor]) -> Path:
    """Write atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Load weights only (``weights_only=True``: no pickled code is executed)."""
    return torch.load(path, map_location="cpu", weights_only=True)
