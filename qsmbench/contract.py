"""The generic tests every method must pass (used by pytest and ``qsmbench check-method``).

Each check takes a Method *class* and returns nothing or raises :class:`ContractFailure` with a
sentence saying what is wrong.  The checks use a tiny analytic volume (spheres of known
susceptibility, field from the zero-padded forward model), so they run in seconds on a CPU for
a method in its ``quick`` profile.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from .errors import ConfigError
from .method import Method, check_class
from .physics import forward_field
from .volume import Volume

CONTRACT_SHAPE = (24, 24, 20)
CONTRACT_VOXEL_MM = (1.0, 1.0, 1.2)


class ContractFailure(AssertionError):
    pass


@lru_cache(maxsize=4)
def _contract_arrays(shape=CONTRACT_SHAPE, voxel=CONTRACT_VOXEL_MM, b0_dir=(0.0, 0.0, 1.0)):
    grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, voxel)], indexing="ij")
    r_brain = np.sqrt(sum((g / (0.42 * n * v)) ** 2 for g, n, v in zip(grid, shape, voxel)))
    mask = r_brain <= 1.0
    chi = np.zeros(shape)
    for centre, radius, value in (((-3.0, 0.0, 0.0), 3.0, 0.15), ((4.0, 2.0, 1.0), 2.5, -0.08),
                                  ((0.0, -4.0, -2.0), 2.0, 0.3)):
        r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        chi[r <= radius] = value
    chi *= mask
    field = forward_field(chi, voxel, b0_dir, d0=0.0, pad_factor=2.0) * mask
    magnitude = np.where(mask, 1.0 - 2.0 * np.abs(chi), 0.0)
    return field.astype(np.float32), mask, chi.astype(np.float32), magnitude.astype(np.float32)


def contract_volume(*, magnitude: bool = True, b0_dir=(0.0, 0.0, 1.0)) -> Volume:
    field, mask, chi, mag = _contract_arrays(b0_dir=tuple(b0_dir))
    return Volume(field_ppm=field.copy(), mask=mask.copy(), voxel_size_mm=CONTRACT_VOXEL_MM,
                  b0_dir=b0_dir, b0_tesla=3.0, te_s=0.02, magnitude=mag.copy() if magnitude else None,
                  references={"chi": chi.copy()}, name="contract")


def _run(cls: type[Method], vol: Volume, seed: int = 0, **params) -> np.ndarray:
    m = cls(profile="quick", seed=seed, device="cpu", **params)
    m.prepare([])
    out = m.reconstruct(vol.for_method())
    torch_tensor = getattr(out, "detach", None)
    if torch_tensor is not None:
        out = out.detach().cpu().numpy()
    return np.asarray(out)


# Several checks look at the same reconstruction; running each method once per situation keeps
# the contract cheap for slow (deep-learning) methods.  Keyed by the class object.
_RUNS: dict[tuple, tuple] = {}


def _standard_run(cls: type[Method]) -> tuple[Volume, np.ndarray, list[str]]:
    """``(volume, chi, inputs the method modified)`` for the standard contract volume, seed 0."""
    key = (cls, "standard")
    if key not in _RUNS:
        vol = contract_volume()
        before = copy.deepcopy((vol.field_ppm, vol.mask, vol.magnitude))
        chi = _run(cls, vol, seed=0)
        modified = [what for a, b, what in zip(before, (vol.field_ppm, vol.mask, vol.magnitude),
                                                ("field", "mask", "magnitude")) if not np.array_equal(a, b)]
        _RUNS[key] = (contract_volume(), chi, modified)
    return _RUNS[key]


def clear_cache() -> None:
    _RUNS.clear()


# --------------------------------------------------------------------------- checks
def check_declaration(cls):
    """Name, parameters, requirements, uses, references and profiles are well formed."""
    problems = check_class(cls)
    if problems:
        raise ContractFailure("; ".join(problems))
    try:
        json.dumps(cls.parameters)
        json.dumps(cls.profiles)
    except TypeError as exc:
        raise ContractFailure(f"parameters/profiles must be JSON-serialisable: {exc}") from None
    if not (cls.__doc__ or "").strip():
        raise ContractFailure(f"{cls.__name__} needs a docstring citing the paper and listing parameters")


def check_unknown_parameter_rejected(cls):
    """An unknown parameter name is a ConfigError, not silently ignored."""
    try:
        cls(profile="quick", this_parameter_does_not_exist=1)
    except ConfigError:
        return
    raise ContractFailure("an unknown parameter was accepted silently")


def check_output_shape_finite_masked(cls):
    """Output: same shape as the field, finite, real, zero outside the mask."""
    vol, chi, _ = _standard_run(cls)
    if chi.shape != vol.shape:
        raise ContractFailure(f"output shape {chi.shape}, expected {vol.shape}")
    if np.iscomplexobj(chi) or not np.all(np.isfinite(chi)):
        raise ContractFailure("output must be real and finite")
    outside = np.abs(chi[~vol.mask]).max(initial=0.0)
    if outside > 1e-6:
        raise ContractFailure(f"output is not zero outside the mask (max |chi| = {outside:.3g} ppm)")


def check_recovers_spheres(cls):
    """In ppm and the right sign: correlates with the truth of a noiseless sphere phantom."""
    vol, chi, _ = _standard_run(cls)
    truth = vol.references["chi"]
    r = np.corrcoef(chi[vol.mask], truth[vol.mask])[0, 1]
    if not r > 0.5:
        raise ContractFailure(f"correlation with the truth is {r:.3f} (expected > 0.5): wrong units, "
                              "sign or B0 direction?")
    # units: a least-squares scale near 1 (ppm in, ppm out), loosely bounded
    scale = float(np.dot(chi[vol.mask], truth[vol.mask]) / np.dot(truth[vol.mask], truth[vol.mask]))
    if not 0.2 < scale < 5.0:
        raise ContractFailure(f"chi is off by a factor {scale:.3g} from the truth: units not ppm?")


def check_deterministic(cls):
    """The same seed gives the same output."""
    vol, a, _ = _standard_run(cls)
    b = _run(cls, vol, seed=0)
    if not np.allclose(a, b, rtol=1e-5, atol=1e-7):
        raise ContractFailure(f"two runs with seed 0 differ (max |diff| = {np.abs(a - b).max():.3g})")


def check_input_untouched(cls):
    """The method does not modify the volume it is given."""
    _, _, modified = _standard_run(cls)
    if modified:
        raise ContractFailure(f"reconstruct() modified the input {', '.join(modified)}")


def check_without_magnitude_and_oblique(cls):
    """Runs without a magnitude image and with an oblique B0 direction."""
    vol = contract_volume(magnitude=False, b0_dir=(0.0, 0.5, np.sqrt(3) / 2))
    chi = _run(cls, vol)
    if chi.shape != vol.shape or not np.all(np.isfinite(chi)):
        raise ContractFailure("failed without magnitude / with an oblique B0 direction")


CHECKS: list[Callable] = [
    check_declaration,
    check_unknown_parameter_rejected,
    check_output_shape_finite_masked,
    check_recovers_spheres,
    check_deterministic,
    check_input_untouched,
    check_without_magnitude_and_oblique,
]


def run_contract(cls) -> list[tuple[str, bool, str]]:
    """Run every check; returns ``(check name, passed, message)`` rows (never raises)."""
    for key in [k for k in _RUNS if k[0] is cls]:
        del _RUNS[key]  # a fresh look at a class that may have been edited since
    rows = []
    for check in CHECKS:
        try:
            check(cls)
            rows.append((check.__name__, True, ""))
        except Exception as exc:  # report every failure, keep checking
            msg = str(exc) if isinstance(exc, ContractFailure) else f"{type(exc).__name__}: {exc}"
            rows.append((check.__name__, False, msg))
            if check is check_declaration:
                break
    return rows
