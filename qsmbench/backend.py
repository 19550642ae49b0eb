"""Array backends of the classical methods: numpy on the CPU, or PyTorch tensors (CUDA or CPU).

The iterative solvers of TKD, CFL2, iLSQR and MEDI are written once against the small set of
operations below (a :class:`Backend`): counted real-to-complex FFTs, allocation-free elementwise
updates with ``out=`` buffers, fused vector updates with their norms, and reductions returned as
Python floats (accumulated in float64).  Two implementations:

* :class:`NumpyBackend` (the default; no torch needed): numpy arrays, FFTs through
  :mod:`scipy.fft` with the job's workers (:func:`qsmbench.physics.set_fft_workers`).  Its fused
  updates run block by block (64 Ki elements, cache-resident) on the same number of threads
  -- numpy releases the GIL inside its loops -- so that the elementwise work of an iteration
  uses the cores the job was granted, as the FFTs do.  The partition into blocks does not depend
  on the thread count, so results are bit-identical for any number of threads.
* :class:`TorchBackend`: ``torch.Tensor`` on a device (``cuda``, ``cuda:N`` or ``cpu``), FFTs
  through :mod:`torch.fft`.  torch is imported only when this backend is created, so the
  registry, the workflow and every CPU run of the classical methods work without torch.

Setup work that runs once per reconstruction (percentiles, weights from the data, the edge mask,
building the kernels) stays in numpy on the CPU in both cases and is moved to the device; only
the loops that dominate the run time (Krylov iterations, FFT filters) run on the backend.  Both
backends compute the same mathematics in the same order; results agree to float32 rounding
amplified by the iterations (see ``tests/test_backend.py`` for the stated tolerances).

FFTs of either backend are counted by :func:`qsmbench.physics.count_ffts`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import physics

#: Elements per block of the numpy backend's fused updates (256 KiB of float32: several arrays'
#: blocks stay in a 1 MiB L2 cache).
BLOCK = 1 << 16

KINDS = ("numpy", "torch")


def get_backend(device: str = "cpu", kind: str | None = None) -> Backend:
    """The backend of a run on ``device``: torch on a CUDA device, numpy on the CPU.

    ``kind`` forces ``"numpy"`` or ``"torch"`` (e.g. torch tensors on the CPU, for tests that
    compare the two paths); numpy on a CUDA device is an error.
    """
    device = str(device or "cpu")
    if kind is None:
        kind = "torch" if device.startswith("cuda") else "numpy"
    if kind == "numpy":
        if device != "cpu":
            raise ValueError(f"the numpy backend runs on the CPU, not on {device!r}")
        return NumpyBackend()
    if kind == "torch":
        return TorchBackend(device)
    raise ValueError(f"unknown array backend {kind!r}; known: {', '.join(KINDS)}")


def for_method(method: Any) -> Backend:
    """The backend a method instance computes with: its ``backend`` attribute when set (tests,
    benchmarks), else the one of its ``device`` (:func:`get_backend`)."""
    chosen = getattr(method, "backend", None)
    return chosen if chosen is not None else get_backend(getattr(method, "device", "cpu"))


def _threads() -> int:
    n = physics.fft_workers()
    return max(1, n if n > 0 else (os.cpu_count() or 1))


class Backend:
    """The operations the classical solvers use (see the module docstring).

    Arrays are the backend's own (numpy arrays or torch tensors).  ``dtype`` arguments are numpy
    dtypes (``np.float32`` ...), translated by the backend.  Every ``out=`` is written in place
    and returned.  Reductions return Python floats.
    """

    name = "abstract"
    device = "cpu"

    # -- conversion ---------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        raise NotImplementedError

    def to_numpy(self, x) -> np.ndarray:
        raise NotImplementedError


class NumpyBackend(Backend):
    """numpy arrays on the CPU; scipy.fft FFTs; fused updates block by block on the job's threads."""

    name = "numpy"
    device = "cpu"

    def __init__(self):
        self._local = threading.local()

    # -- conversion, allocation ---------------------------------------------------------------
    def asarray(self, a, dtype=None):
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def empty(self, shape, dtype=np.float32):
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        return np.zeros(shape, dtype)

    def empty_like(self, x):
        return np.empty_like(x)

    def zeros_like(self, x):
        return np.zeros_like(x)

    def copy(self, x):
        return x.copy()

    def astype(self, x, dtype):
        return x.astype(dtype, copy=False)

    def is_complex(self, x) -> bool:
        return np.iscomplexobj(x)

    # -- FFTs (counted) -----------------------------------------------------------------------
    def rfftn(self, x):
        return physics.rfftn(x)

    def irfftn(self, spec, shape):
        return physics.irfftn(spec, s=tuple(shape))

    # -- elementwise ----------------------------------------------------------------------------
    add = staticmethod(np.add)
    subtract = staticmethod(np.subtract)
    multiply = staticmethod(np.multiply)
    divide = staticmethod(np.divide)
    negative = staticmethod(np.negative)
    sin = staticmethod(np.sin)
    sqrt = staticmethod(np.sqrt)
    abs = staticmethod(np.abs)
    where = staticmethod(np.where)

    def scalar(self, value, like):
        """``value`` as a 0-d array of ``like``'s real dtype (keeps float32 arithmetic float32)."""
        return np.asarray(value, dtype=_real_dtype(like.dtype))

    def sum(self, x) -> float:
        return float(np.sum(x, dtype=np.float64))

    # -- blocked execution ----------------------------------------------------------------------
    def _scratch(self, dtype, n: int) -> np.ndarray:
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        key = np.dtype(dtype)
        buf = bufs.get(key)
        if buf is None or buf.size < n:
            buf = bufs[key] = np.empty(max(n, BLOCK), key)
        return buf[:n]

    def blocks(self, n: int, fn: Callable[[int, int], Any], *, size: int | None = None) -> list:
        """``[fn(lo, hi) for each block]`` over ``range(n)`` in blocks of ``size`` elements (default
        :data:`BLOCK`), the blocks split in contiguous runs over the job's threads; results in
        block order."""
        size = max(int(size or BLOCK), 1)
        starts = list(range(0, n, size))
        threads = min(_threads(), len(starts))
        if threads <= 1:
            return [fn(s, min(s + size, n)) for s in starts]

        def run(group):
            return [fn(s, min(s + size, n)) for s in group]

        per = math.ceil(len(starts) / threads)
        groups = [starts[i:i + per] for i in range(0, len(starts), per)]
        futures = [_pool().submit(run, g) for g in groups[1:]]
        out = run(groups[0])
        for f in futures:
            out.extend(f.result())
        return out

    # -- fused vector updates (flat real views; complex arrays are handled as re/im pairs) -------
    def dot(self, x, y) -> float:
        """Real inner product ``sum(x * y)`` (complex: of the re/im pairs), float64 accumulation."""
        xf, yf = _flat(x), _flat(y)

        def part(lo, hi):
            t = self._scratch(xf.dtype, hi - lo)
            np.multiply(xf[lo:hi], yf[lo:hi], out=t)
            return _total(t)

        return math.fsum(self.blocks(xf.size, part))

    def norm(self, x) -> float:
        return math.sqrt(max(self.dot(x, x), 0.0))

    def scale(self, x, a: float):
        """``x *= a`` in place."""
        xf = _flat(x)
        s = np.asarray(a, xf.dtype)
        self.blocks(xf.size, lambda lo, hi: _mul(xf[lo:hi], s, xf[lo:hi]))
        return x

    def axpy(self, a: float, x, y):
        """``y += a x`` in place."""
        xf, yf = _flat(x), _flat(y)
        s = np.asarray(a, yf.dtype)

        def part(lo, hi):
            t = self._scratch(yf.dtype, hi - lo)
            np.multiply(xf[lo:hi], s, out=t)
            np.add(yf[lo:hi], t, out=yf[lo:hi])

        self.blocks(yf.size, part)
        return y

    def axpy_norm(self, a: float, x, y) -> float:
        """``y += a x`` in place; returns ``||y||`` (after the update)."""
        xf, yf = _flat(x), _flat(y)
        s = np.asarray(a, yf.dtype)

        def part(lo, hi):
            t = self._scratch(yf.dtype, hi - lo)
            np.multiply(xf[lo:hi], s, out=t)
            yb = yf[lo:hi]
            np.add(yb, t, out=yb)
            return _sq(yb, t)

        return math.sqrt(max(math.fsum(self.blocks(yf.size, part)), 0.0))

    def xpby(self, x, b: float, y):
        """``y = x + b y`` in place (Krylov search-direction updates)."""
        xf, yf = _flat(x), _flat(y)
        s = np.asarray(b, yf.dtype)

        def part(lo, hi):
            yb = yf[lo:hi]
            np.multiply(yb, s, out=yb)
            np.add(yb, xf[lo:hi], out=yb)

        self.blocks(yf.size, part)
        return y

    def axpy_xpby(self, a: float, w, x, v, b: float):
        """``x += a w`` then ``w = v + b w``, in one pass (LSQR's solution/direction update)."""
        wf, xf, vf = _flat(w), _flat(x), _flat(v)
        sa, sb = np.asarray(a, xf.dtype), np.asarray(b, wf.dtype)

        def part(lo, hi):
            t = self._scratch(xf.dtype, hi - lo)
            wb, xb = wf[lo:hi], xf[lo:hi]
            np.multiply(wb, sa, out=t)
            np.add(xb, t, out=xb)
            np.multiply(wb, sb, out=wb)
            np.add(wb, vf[lo:hi], out=wb)

        self.blocks(wf.size, part)

    def cg_step(self, alpha: float, d, q, x, r) -> float:
        """``x += alpha d``, ``r -= alpha q`` in one pass; returns ``||r||^2`` (after the update)."""
        df, qf, xf, rf = _flat(d), _flat(q), _flat(x), _flat(r)
        sa = np.asarray(alpha, xf.dtype)

        def part(lo, hi):
            t = self._scratch(xf.dtype, hi - lo)
            xb, rb = xf[lo:hi], rf[lo:hi]
            np.multiply(df[lo:hi], sa, out=t)
            np.add(xb, t, out=xb)
            np.multiply(qf[lo:hi], sa, out=t)
            np.subtract(rb, t, out=rb)
            return _sq(rb, t)

        return math.fsum(self.blocks(xf.size, part))

    def kmul(self, spec, kernel):
        """``spec *= kernel`` in place for a complex half spectrum and a kernel prepared by
        :meth:`prepare_kernel` (a real kernel interleaved to multiply the re/im pairs)."""
        sf, kf = _flat(spec), kernel.reshape(-1)
        self.blocks(sf.size, lambda lo, hi: _mul(sf[lo:hi], kf[lo:hi], sf[lo:hi]))
        return spec

    def kmul_into(self, spec, kernel, out):
        """``out = spec * kernel`` (as :meth:`kmul`, into ``out``)."""
        sf, kf, of = _flat(spec), kernel.reshape(-1), _flat(out)
        self.blocks(sf.size, lambda lo, hi: _mul(sf[lo:hi], kf[lo:hi], of[lo:hi]))
        return out

    def prepare_kernel(self, kernel, dtype=np.float32):
        """A real half-spectrum kernel in the layout :meth:`kmul` multiplies complex spectra with
        (numpy: repeated for the interleaved re/im pairs, real arithmetic ~2-3x faster than complex)."""
        return np.repeat(np.asarray(kernel, dtype=dtype), 2, axis=-1)

    def multiply_inplace(self, x, y):
        """``x *= y`` (same shapes, real) in place, blocked."""
        xf, yf = _flat(x), _flat(y)
        self.blocks(xf.size, lambda lo, hi: _mul(xf[lo:hi], yf[lo:hi], xf[lo:hi]))
        return x

    def add_inplace(self, x, y):
        """``x += y`` (same shapes) in place, blocked."""
        xf, yf = _flat(x), _flat(y)
        self.blocks(xf.size, lambda lo, hi: _add(xf[lo:hi], yf[lo:hi], xf[lo:hi]))
        return x

    def synchronize(self) -> None:
        pass


def _real_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return np.dtype(np.float64) if dtype in (np.complex128, np.float64) else np.dtype(np.float32)


def _flat(x: np.ndarray) -> np.ndarray:
    """A flat real view of a contiguous array (complex: interleaved re/im)."""
    if not x.flags.c_contiguous:
        raise ValueError("fused updates need C-contiguous arrays")
    if np.iscomplexobj(x):
        x = x.view(np.float64 if x.dtype == np.complex128 else np.float32)
    return x.reshape(-1)


def _sq(block: np.ndarray, tmp: np.ndarray) -> float:
    """``sum(block**2)`` through ``tmp``."""
    np.multiply(block, block, out=tmp)
    return _total(tmp)


def _total(t: np.ndarray) -> float:
    """Sum of one block: numpy's pairwise summation in the block's dtype (float32 blocks: relative
    error ~1e-6 at most), accumulated across blocks in float64 by the caller (``math.fsum``)."""
    return float(t.sum())


def _mul(a, b, out) -> None:
    np.multiply(a, b, out=out)


def _add(a, b, out) -> None:
    np.add(a, b, out=out)


_POOL: list[ThreadPoolExecutor | None] = [None]
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there."""
    global _POOL_LOCK
    _POOL[0] = None
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if _POOL[0] is None or _POOL[0]._max_workers < _threads():  # noqa: SLF001
            _POOL[0] = ThreadPoolExecutor(max_workers=max(_threads(), 2), thread_name_prefix="qsmbench-blocks")
        return _POOL[0]


class TorchBackend(Backend):
    """``torch.Tensor`` on ``device`` (``cuda``, ``cuda:N`` or ``cpu``); torch is imported here."""

    name = "torch"

    def __init__(self, device: str = "cuda"):
        import torch  # noqa: PLC0415 - optional dependency, imported only for this backend

        self.torch = torch
        self.device = str(device)
        self._dev = torch.device(self.device)
        self._dtypes = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                        np.dtype(np.complex64): torch.complex64, np.dtype(np.complex128): torch.complex128,
                        np.dtype(bool): torch.bool}

    def _dt(self, dtype):
        return self._dtypes[np.dtype(dtype)]

    # -- conversion, allocation ---------------------------------------------------------------
    def asarray(self, a, dtype=None):
        t = self.torch
        if isinstance(a, t.Tensor):
            return a.to(device=self._dev, dtype=None if dtype is None else self._dt(dtype)).contiguous()
        arr = np.ascontiguousarray(a, dtype=dtype)
        return t.from_numpy(arr).to(self._dev)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, self.torch.Tensor) else np.asarray(x)

    def empty(self, shape, dtype=np.float32):
        return self.torch.empty(tuple(shape), dtype=self._dt(dtype), device=self._dev)

    def zeros(self, shape, dtype=np.float32):
        return self.torch.zeros(tuple(shape), dtype=self._dt(dtype), device=self._dev)

    def empty_like(self, x):
        return self.torch.empty_like(x)

    def zeros_like(self, x):
        return self.torch.zeros_like(x)

    def copy(self, x):
        return x.clone()

    def astype(self, x, dtype):
        return x.to(self._dt(dtype))

    def is_complex(self, x) -> bool:
        return x.is_complex()

    # -- FFTs (counted) -----------------------------------------------------------------------
    def rfftn(self, x):
        physics.add_fft_calls(1, double=x.dtype == self.torch.float64)
        return self.torch.fft.rfftn(x, dim=(-3, -2, -1))

    def irfftn(self, spec, shape):
        physics.add_fft_calls(1, double=spec.dtype == self.torch.complex128)
        return self.torch.fft.irfftn(spec, s=tuple(shape), dim=(-3, -2, -1))

    # -- elementwise ----------------------------------------------------------------------------
    def add(self, a, b, out=None):
        return self.torch.add(self._t(a), self._t(b), out=out)

    def subtract(self, a, b, out=None):
        return self.torch.sub(self._t(a), self._t(b), out=out)

    def multiply(self, a, b, out=None):
        return self.torch.mul(self._t(a), self._t(b), out=out)

    def divide(self, a, b, out=None):
        return self.torch.div(self._t(a), self._t(b), out=out)

    def negative(self, a, out=None):
        return self.torch.neg(a, out=out)

    def sin(self, a, out=None):
        return self.torch.sin(a, out=out)

    def sqrt(self, a, out=None):
        return self.torch.sqrt(a, out=out)

    def abs(self, a, out=None):
        return self.torch.abs(a, out=out)

    def where(self, cond, a, b):
        return self.torch.where(cond, self._t(a), self._t(b))

    def _t(self, a):
        """Tensors pass; numpy 0-d arrays and Python numbers become Python scalars (torch keeps
        the tensor's dtype for scalar operands, as numpy does for 0-d arrays of its dtype)."""
        if isinstance(a, self.torch.Tensor):
            return a
        if isinstance(a, np.ndarray) and a.ndim == 0:
            return a.item()
        if isinstance(a, np.ndarray):
            return self.asarray(a)
        return a

    def scalar(self, value, like):
        return float(value)

    def sum(self, x) -> float:
        return float(x.sum(dtype=self.torch.float64))

    # -- fused vector updates ---------------------------------------------------------------------
    def _real(self, x):
        return self.torch.view_as_real(x) if x.is_complex() else x

    def dot(self, x, y) -> float:
        xr, yr = self._real(x).reshape(-1), self._real(y).reshape(-1)
        return float(self.torch.dot(xr.double(), yr.double()))

    def norm(self, x) -> float:
        return math.sqrt(max(self.dot(x, x), 0.0))

    def scale(self, x, a: float):
        x.mul_(float(a))
        return x

    def axpy(self, a: float, x, y):
        y.add_(x, alpha=float(a))
        return y

    def axpy_norm(self, a: float, x, y) -> float:
        y.add_(x, alpha=float(a))
        return self.norm(y)

    def xpby(self, x, b: float, y):
        y.mul_(float(b)).add_(x)
        return y

    def axpy_xpby(self, a: float, w, x, v, b: float):
        x.add_(w, alpha=float(a))
        w.mul_(float(b)).add_(v)

    def cg_step(self, alpha: float, d, q, x, r) -> float:
        x.add_(d, alpha=float(alpha))
        r.sub_(q, alpha=float(alpha))
        return self.dot(r, r)

    def kmul(self, spec, kernel):
        spec.mul_(kernel)
        return spec

    def kmul_into(self, spec, kernel, out):
        return self.torch.mul(spec, kernel, out=out)

    def prepare_kernel(self, kernel, dtype=np.float32):
        return self.asarray(np.asarray(kernel, dtype=dtype))

    def multiply_inplace(self, x, y):
        x.mul_(y)
        return x

    def add_inplace(self, x, y):
        x.add_(y)
        return x

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize(self._dev)


__all__ = ["BLOCK", "KINDS", "Backend", "NumpyBackend", "TorchBackend", "for_method", "get_backend"]
