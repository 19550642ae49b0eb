"""Seed discipline: which phantom seeds may be used for what.

A phantom seed is a *subject* (see :mod:`qsmbench.phantom`).  A benchmark is only honest if no
method was trained or tuned on the subject it is scored on, so phantom seeds are split into
reserved, disjoint ranges:

========  =========================  ====================================================
role      seeds                      used by
========  =========================  ====================================================
test      ``0 .. 999_999``           benchmark datasets (``datasets.*.seed`` in a config),
                                     tests that check accuracy
train     ``1_000_000 .. 1_999_999`` learned methods' training data (uQSM, the supervised
                                     baseline, INR-QSM's warm start)
tune      ``2_000_000 .. 2_999_999`` choosing defaults of tuned methods (INR-QSM-fast's
                                     regularisation weights, any hand-tuned default)
========  =========================  ====================================================

Seeds from ``3_000_000`` on are unassigned and rejected everywhere a role is checked.

The configuration rejects a benchmark dataset whose seed lies in the train or tune range
(:func:`check_role`); methods draw their training/tuning subjects with :func:`draw` and record
them in ``run.json``.  Perturbation seeds (``noise-snr20-seed1``) are noise realisations, not
subjects, and are not governed by these ranges.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: role -> (first seed, one past the last seed)
RANGES: dict[str, tuple[int, int]] = {
    "test": (0, 1_000_000),
    "train": (1_000_000, 2_000_000),
    "tune": (2_000_000, 3_000_000),
}
_GERUND = {"test": "testing", "train": "training", "tune": "tuning"}


def role_of(seed: int) -> str | None:
    """The role whose range holds ``seed`` ("test", "train", "tune"), or None when unassigned."""
    for role, (lo, hi) in RANGES.items():
        if lo <= int(seed) < hi:
            return role
    return None


def check_role(seed: int, role: str, where: str = "seed") -> int:
    """Return ``seed`` if it lies in ``role``'s range, else raise ValueError naming ``where``."""
    if role not in RANGES:
        raise ValueError(f"unknown seed role {role!r}; known: {', '.join(RANGES)}")
    lo, hi = RANGES[role]
    if isinstance(seed, bool) or not float(seed).is_integer() or not lo <= int(seed) < hi:
        actual = role_of(seed) if not isinstance(seed, bool) and float(seed).is_integer() else None
        held = f"it is reserved for {_GERUND[actual]}" if actual in ("train", "tune") else "it is outside every range"
        raise ValueError(f"{where}: {seed!r} cannot be used for {_GERUND[role]} ({held}); {role} seeds are "
                         f"{lo}..{hi - 1} (see qsmbench.seeds)")
    return int(seed)


def draw(role: str, n: int, stream: int | str = 0) -> list[int]:
    """``n`` distinct seeds of ``role``'s range, a deterministic function of ``stream``.

    Different streams (e.g. one per method: ``draw("train", 24, "uqsm")``) give different,
    reproducible subjects; the same stream always gives the same list.
    """
    if role not in RANGES:
        raise ValueError(f"unknown seed role {role!r}; known: {', '.join(RANGES)}")
    lo, hi = RANGES[role]
    if not 0 <= int(n) <= hi - lo:
        raise ValueError(f"cannot draw {n} distinct {role} seeds from {hi - lo}")
    text = f"{role}\x1f{stream}".encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text).digest()[:8], "big"))
    picked = rng.choice(hi - lo, size=int(n), replace=False)
    return [int(lo + s) for s in picked]
