"""Dipole physics and unit conversions.

Conventions (used everywhere in qsmbench):

* Arrays are indexed ``[i, j, k]`` and the voxel size ``voxel_size_mm = (dx, dy, dz)`` gives the
  physical spacing along those three array axes.
* ``b0_dir`` is the unit main-field direction **in array coordinates**, i.e. expressed in the
  orthonormal frame of the three (physical) array axes.  ``(0, 0, 1)`` means B0 along the third
  array axis, as in both QSM challenges.
* Frequencies are in cycles/mm, built with :func:`numpy.fft.fftfreq` (odd sizes are handled
  exactly: there is no Nyquist sample then).
* The dipole kernel is ``D(k) = 1/3 - (k.b)^2 / |k|^2``.  Its value at ``k = 0`` is a
  convention and is always an explicit argument (``d0``): the 2016 challenge baselines use 1/3,
  forward simulation and most solvers use 0.
* Susceptibility and field are both in ppm: ``field_ppm = D * chi_ppm`` (the relative field
  shift dB/B0, Lorentz-sphere corrected).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import numpy as np
import scipy.fft

#: Reduced gyromagnetic ratio of the proton, gamma / 2 pi, in MHz/T (CODATA 2018).
GAMMA_BAR_MHZ_PER_T = 42.57747892

#: Reference acquisition used when a dataset states no B0 or TE (documented in METHODS.md).
REFERENCE_B0_TESLA = 3.0
REFERENCE_TE_S = 0.025


# --------------------------------------------------------------------------- FFTs
#: Threads for scipy.fft (-1 = all cores); the runner sets it from the job's thread count.
_FFT_WORKERS = int(os.environ.get("QSMBENCH_FFT_WORKERS", "-1"))
#: FFTs done so far: all, and those in double precision (float64/complex128 data), which cost
#: about twice a single-precision one (the benchmarks' FFT floor weighs them so).
_FFT_CALLS = [0]
_FFT_CALLS_DOUBLE = [0]


def _count(x) -> None:
    _FFT_CALLS[0] += 1
    if getattr(x, "dtype", None) in (np.float64, np.complex128):
        _FFT_CALLS_DOUBLE[0] += 1


def set_fft_workers(n: int) -> None:
    """Threads used by the FFTs below (``-1``: all cores)."""
    global _FFT_WORKERS
    _FFT_WORKERS = int(n)


def fft_workers() -> int:
    """Threads of the FFTs (``-1``: all cores); the numpy backend's fused updates use as many."""
    return _FFT_WORKERS


def add_fft_calls(n: int = 1, *, double: bool = False) -> None:
    """Count ``n`` 3-D FFTs computed elsewhere (the torch backend of :mod:`qsmbench.backend`);
    ``double``: in double precision."""
    _FFT_CALLS[0] += int(n)
    if double:
        _FFT_CALLS_DOUBLE[0] += int(n)


def fft_calls() -> int:
    """Number of 3-D FFTs (forward or inverse) computed through this module so far."""
    return _FFT_CALLS[0]


@contextlib.contextmanager
def count_ffts():
    """``with count_ffts() as c: ...`` then ``c["n"]`` is the number of FFTs done inside and
    ``c["double"]`` how many of them were in double precision."""
    counter = {"n": 0, "double": 0}
    start, start_double = _FFT_CALLS[0], _FFT_CALLS_DOUBLE[0]
    try:
        yield counter
    finally:
        counter["n"] = _FFT_CALLS[0] - start
        counter["double"] = _FFT_CALLS_DOUBLE[0] - start_double


def rfftn(x, s=None, workers=None):
    """Counted :func:`scipy.fft.rfftn` over all three axes."""
    _count(x)
    return scipy.fft.rfftn(x, s=s, workers=_FFT_WORKERS if workers is None else workers)


def irfftn(x, s, workers=None):
    """Counted :func:`scipy.fft.irfftn` (``s`` is the real output shape)."""
    _count(x)
    return scipy.fft.irfftn(x, s=s, workers=_FFT_WORKERS if workers is None else workers)


def fftn(x, s=None, workers=None):
    """Counted complex :func:`scipy.fft.fftn`."""
    _count(x)
    return scipy.fft.fftn(x, s=s, workers=_FFT_WORKERS if workers is None else workers)


def ifftn(x, s=None, workers=None):
    """Counted complex :func:`scipy.fft.ifftn`."""
    _count(x)
    return scipy.fft.ifftn(x, s=s, workers=_FFT_WORKERS if workers is None else workers)


# --------------------------------------------------------------------------- units
def ppm_per_rad(b0_tesla: float, te_s: float) -> float:
    """Field (ppm) per radian of phase accrued at echo time ``te_s`` in ``b0_tesla``.

    ``phase_rad = 2 pi * gamma_bar * B0 * TE * field_ppm * 1e-6`` (gamma_bar in Hz/T).
    For 3 T and TE = 25 ms one radian is 1/20.06 ppm.
    """
    if b0_tesla <= 0 or te_s <= 0:
        raise ValueError(f"B0 and TE must be positive, got B0={b0_tesla} T, TE={te_s} s")
    return 1.0 / (2.0 * np.pi * GAMMA_BAR_MHZ_PER_T * b0_tesla * te_s)


def rad_to_ppm(phase_rad, b0_tesla: float, te_s: float):
    """Phase in radians (at echo time ``te_s``) to field in ppm."""
    return phase_rad * ppm_per_rad(b0_tesla, te_s)


def ppm_to_rad(field_ppm, b0_tesla: float, te_s: float):
    """Field in ppm to the phase in radians accrued at echo time ``te_s``."""
    return field_ppm / ppm_per_rad(b0_tesla, te_s)


def hz_to_ppm(freq_hz, b0_tesla: float):
    """Frequency offset in Hz to field in ppm: ``f / (gamma_bar * B0)`` (7 T: f / 298.04)."""
    if b0_tesla <= 0:
        raise ValueError(f"B0 must be positive, got {b0_tesla} T")
    return freq_hz / (GAMMA_BAR_MHZ_PER_T * b0_tesla)


def ppm_to_hz(field_ppm, b0_tesla: float):
    """Field in ppm to frequency offset in Hz."""
    if b0_tesla <= 0:
        raise ValueError(f"B0 must be positive, got {b0_tesla} T")
    return field_ppm * (GAMMA_BAR_MHZ_PER_T * b0_tesla)


# --------------------------------------------------------------------------- geometry
def unit_vector(b0_dir: Sequence[float]) -> np.ndarray:
    """Return ``b0_dir`` normalised to unit length (error for a zero or non-3-vector)."""
    v = np.asarray(b0_dir, dtype=float).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise ValueError(f"b0_dir must be three finite numbers, got {b0_dir!r}")
    n = np.linalg.norm(v)
    if n == 0:
        raise ValueError("b0_dir must not be the zero vector")
    return v / n


def tilted_b0_dir(theta_deg: float, axis: Sequence[float] = (1.0, 0.0, 0.0),
                  b0_dir: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``b0_dir`` rotated by ``theta_deg`` about ``axis`` (Rodrigues' formula)."""
    k = unit_vector(axis)
    v = unit_vector(b0_dir)
    t = np.deg2rad(theta_deg)
    rotated = v * np.cos(t) + np.cross(k, v) * np.sin(t) + k * np.dot(k, v) * (1 - np.cos(t))
    return unit_vector(rotated)


def _as_voxel_size(voxel_size_mm: Sequence[float]) -> tuple[float, float, float]:
    vs = tuple(float(v) for v in voxel_size_mm)
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size_mm must be three positive numbers, got {voxel_size_mm!r}")
    return vs  # type: ignore[return-value]


def kspace_grid(shape: Sequence[int], voxel_size_mm: Sequence[float], *, rfft: bool = False):
    """Spatial frequencies (cycles/mm) of a ``shape`` grid, as three broadcastable arrays.

    With ``rfft=True`` the last axis holds only the non-negative frequencies of
    :func:`scipy.fft.rfftn`.
    """
    vs = _as_voxel_size(voxel_size_mm)
    if len(shape) != 3:
        raise ValueError(f"shape must be 3-D, got {shape!r}")
    freqs = [np.fft.fftfreq(int(n), d=d) for n, d in zip(shape[:2], vs[:2])]
    last = np.fft.rfftfreq(int(shape[2]), d=vs[2]) if rfft else np.fft.fftfreq(int(shape[2]), d=vs[2])
    freqs.append(last)
    return np.meshgrid(*freqs, indexing="ij", sparse=True)


def dipole_kernel(shape: Sequence[int], voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                  b0_dir: Sequence[float] = (0.0, 0.0, 1.0), *, d0: float,
                  rfft: bool = False, dtype=np.float64) -> np.ndarray:
    """Dipole kernel ``D(k) = 1/3 - (k.b)^2/|k|^2`` on the FFT grid of ``shape`` (unshifted).

    Parameters
    ----------
    shape : three ints, any parity.
    voxel_size_mm : voxel spacing along the array axes, in mm.
    b0_dir : main-field direction in array coordinates (normalised here).
    d0 : value at ``k = 0`` (keyword-only, no default: 1/3 or 0 are both in use).
    rfft : return the half spectrum matching :func:`scipy.fft.rfftn`.
    """
    b = unit_vector(b0_dir)
    dtype = np.dtype(dtype).type
    # Built in the requested dtype with in-place operations: two full-size arrays at most
    # (this kernel is allocated on padded grids of several hundred voxels per side).
    kx, ky, kz = (k.astype(dtype) for k in kspace_grid(shape, voxel_size_mm, rfft=rfft))
    d = kx * dtype(b[0]) + ky * dtype(b[1])
    d = d + kz * dtype(b[2])
    d *= d
    k2 = kx * kx + ky * ky
    k2 = k2 + kz * kz
    k2[0, 0, 0] = 1.0
    d /= k2
    del k2
    np.subtract(dtype(1.0 / 3.0), d, out=d)
    d[0, 0, 0] = d0
    return d


# --------------------------------------------------------------------------- forward model
def padded_shape(shape: Sequence[int], pad_factor: float) -> tuple[int, int, int]:
    """Smallest FFT-friendly shape of at least ``pad_factor * shape`` per axis.

    ``pad_factor == 1`` returns ``shape`` unchanged (no padding at all, as in the 2016
    organisers' baselines).
    """
    if not pad_factor >= 1:
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
    if pad_factor == 1:
        return tuple(int(n) for n in shape)  # type: ignore[return-value]
    return tuple(scipy.fft.next_fast_len(int(np.ceil(n * pad_factor)), real=True) for n in shape)


def kspace_filter(x: np.ndarray, make_filter: Callable[[tuple[int, int, int]], np.ndarray], *,
                  pad_factor: float = 1.0, workers: int | None = None) -> np.ndarray:
    """``F^-1[K . F(x)]`` for a real 3-D ``x`` with real-to-complex FFTs and zero padding.

    ``make_filter(padded_shape)`` returns ``K`` on the half spectrum of that shape (the layout
    of :func:`scipy.fft.rfftn`, e.g. ``dipole_kernel(..., rfft=True)``).  The result is cropped
    back to ``x``'s grid.  float64 input is computed in float64, anything else in float32.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {x.shape}")
    work_dtype = np.float64 if x.dtype == np.float64 else np.float32
    pshape = padded_shape(x.shape, pad_factor)
    spec = rfftn(x.astype(work_dtype, copy=False), s=pshape, workers=workers)
    spec *= make_filter(pshape).astype(work_dtype, copy=False)
    y = irfftn(spec, s=pshape, workers=workers)
    return np.ascontiguousarray(y[: x.shape[0], : x.shape[1], : x.shape[2]])


def forward_field(chi_ppm: np.ndarray, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                  b0_dir: Sequence[float] = (0.0, 0.0, 1.0), *, d0: float = 0.0,
                  pad_factor: float = 2.0, workers: int | None = None) -> np.ndarray:
    """Field (ppm) induced by ``chi_ppm``: ``F^-1[D F(chi)]`` with zero padding.

    The array is zero-padded to at least ``pad_factor`` times its size per axis so that the
    circular FFT convolution approximates the linear (non-periodic) one; the field is returned
    on the input grid.  ``d0 = 0`` (default) means a zero-mean field over the padded box, the
    usual convention for simulation.
    """
    chi = np.asarray(chi_ppm)
    if chi.ndim != 3:
        raise ValueError(f"chi must be 3-D, got shape {chi.shape}")
    dtype = np.float64 if chi.dtype == np.float64 else np.float32
    return kspace_filter(
        chi, lambda s: dipole_kernel(s, voxel_size_mm, b0_dir, d0=d0, rfft=True, dtype=dtype),
        pad_factor=pad_factor, workers=workers)


def kspace_resample(x: np.ndarray, new_shape: Sequence[int], *, drop_nyquist: bool = False) -> np.ndarray:
    """Resample a real 3-D array to ``new_shape`` by cropping (or zero-filling) its spectrum.

    The physical field of view is kept: the voxel size scales by ``old/new`` per axis.  The
    spectrum is centred, cropped/padded symmetrically around DC, and rescaled so the mean is
    preserved.  Even-sized Nyquist samples are split (zero-filling) or summed (cropping) so the
    result stays real and cropping inverts zero-filling exactly.

    ``drop_nyquist=True`` zeroes the Nyquist planes of the even output axes.  That sample stands
    for both +k_N and -k_N; with an oblique B0 the dipole kernel differs there, so a cropped
    field cannot match any chi at that frequency -- dropping the plane from both keeps a
    (chi, field) pair consistent (used by the phantom and the resolution perturbation).
    """
    x = np.asarray(x)
    if x.ndim != 3 or len(new_shape) != 3:
        raise ValueError("kspace_resample works on 3-D arrays")
    new_shape = tuple(int(n) for n in new_shape)
    if any(n < 1 for n in new_shape):
        raise ValueError(f"new_shape must be positive, got {new_shape}")
    if new_shape == x.shape:
        return x.copy()
    spec = np.fft.fftshift(np.fft.fftn(x))
    out = spec
    for axis, (n_old, n_new) in enumerate(zip(x.shape, new_shape)):
        out = _centre_resize_axis(out, axis, n_old, n_new)
    if drop_nyquist:
        out = out.copy() if out is spec else out
        for axis, n_new in enumerate(new_shape):
            if n_new % 2 == 0:  # after fftshift the Nyquist sample -n/2 sits at index 0
                out[(slice(None),) * axis + (0,)] = 0
    y = np.fft.ifftn(np.fft.ifftshift(out)).real
    y *= np.prod(new_shape) / np.prod(x.shape)
    return y.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64, copy=False)


def _centre_resize_axis(spec: np.ndarray, axis: int, n_old: int, n_new: int) -> np.ndarray:
    """Crop or zero-pad a centred (fftshifted) spectrum along one axis, keeping DC centred."""
    if n_new == n_old:
        return spec
    c_old = n_old // 2  # DC index after fftshift
    c_new = n_new // 2
    if n_new < n_old:
        start = c_old - c_new
        out = np.take(spec, np.arange(start, start + n_new), axis=axis)
        if n_new % 2 == 0:
            # The new Nyquist bin -n/2 stands for both +n/2 and -n/2 of the old spectrum
            # (they alias onto one sample): their sum is real for a real signal, and it makes
            # cropping the exact inverse of zero-filling.
            idx = [slice(None)] * spec.ndim
            idx[axis] = 0
            plus = np.take(spec, start + n_new, axis=axis) if start + n_new < n_old else 0
            out[tuple(idx)] = out[tuple(idx)] + plus
        return out
    pad_before = c_new - c_old
    pad = [(0, 0)] * spec.ndim
    pad[axis] = (pad_before, n_new - n_old - pad_before)
    out = np.pad(spec, pad)
    if n_old % 2 == 0:
        # Split the old Nyquist sample equally between +n/2 and -n/2.
        idx = [slice(None)] * spec.ndim
        idx[axis] = pad_before
        half = 0.5 * out[tuple(idx)]
        out[tuple(idx)] = half
        idx2 = list(idx)
        idx2[axis] = pad_before + n_old
        out[tuple(idx2)] = half
    return out


def difference_kernel_sq(shape: Sequence[int], *, rfft: bool = False, dtype=np.float64) -> np.ndarray:
    """``sum_i |E_i|^2`` of periodic forward differences, ``E_i = 1 - exp(2 pi i k_i / N_i)``.

    ``k_i`` is the integer frequency index, so there is no voxel-size scaling (the CFL2 baseline
    of the 2016 challenge).  ``|E_i|^2 = 2 - 2 cos(2 pi k_i / N_i)``.
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be 3-D, got {shape!r}")
    terms = []
    for axis, n in enumerate(shape):
        k = np.fft.rfftfreq(int(n)) if (rfft and axis == 2) else np.fft.fftfreq(int(n))
        e2 = 2.0 - 2.0 * np.cos(2.0 * np.pi * k)
        view = [1, 1, 1]
        view[axis] = e2.size
        terms.append(e2.reshape(view))
    return (terms[0] + terms[1] + terms[2]).astype(dtype, copy=False)
