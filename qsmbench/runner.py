"""Run one method on one volume: seeding, timing, peak memory, device, output validation.

:func:`run_method` never raises for a failure *of the method*: an exception, a wrong shape or
non-finite values give ``status: "failed"`` in ``run.json`` (with the error) and no chi file, so
the workflow goes on and the report shows the failure.  Problems of the *caller* (bad volume,
unknown method, bad parameters when ``strict``) do raise.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .devices import resolve_profile
from .errors import MethodUnavailableError
from .io import write_json, write_nifti
from .method import Method
from .physics import count_ffts, set_fft_workers
from .registry import get_method_class
from .volume import Volume

log = logging.getLogger(__name__)

CHI_FILE = "chi_ppm.nii.gz"
RUN_FILE = "run.json"


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from a job's identity, e.g. ``(dataset, perturbation, method, repetition)``.

    Stable across processes and platforms (SHA-256 of the parts' text), unlike ``hash()``.
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding qsmbench (with ``-dirty``), or None outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=where,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resolve_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU (only if torch is already importable), else cpu.

    ``cuda`` or ``cuda:N`` where torch sees no such device is a ValueError naming it.
    """
    if requested not in ("auto", "cpu", "cuda") and not (requested.startswith("cuda:")
                                                          and requested[5:].isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    try:
        import torch  # noqa: PLC0415 - optional dependency
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        count = 0
    if requested == "auto":
        return "cuda" if count else "cpu"
    if not count:
        raise ValueError(f"device {requested!r} requested but no CUDA device is available")
    if ":" in requested and int(requested[5:]) >= count:
        raise ValueError(f"device {requested!r} requested but only {count} CUDA device(s) are available")
    return requested


def method_device(cls, requested: str = "auto") -> str:
    """The device a run of method class ``cls`` uses when ``requested`` is asked for.

    ``uses`` "gpu" (GPU-first methods): :func:`resolve_device` (``auto`` -> CUDA when there is
    one).  ``uses`` "gpu_optional" (the classical methods' torch path): CUDA only when asked for
    explicitly (``cuda``/``cuda:N``), so that ``auto`` keeps them on numpy in an environment
    without torch.  Anything else: the CPU.
    """
    uses = getattr(cls, "uses", set())
    if "gpu" in uses or ("gpu_optional" in uses and str(requested).startswith("cuda")):
        return resolve_device(requested)
    return "cpu"


def device_description(device: str) -> str:
    """The device with its name, e.g. ``cuda:0 (NVIDIA H200)`` or ``cpu (x86_64, 16 logical cores)``."""
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415
        index = int(device[5:]) if device.startswith("cuda:") else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


class PeakMemory:
    """Sample this process's resident set size in a thread; ``peak_mb`` after the block.

    ``ru_maxrss`` alone is the peak of the whole process lifetime, which is useless when several
    methods run in one process (benchmarks); sampling every ``interval`` s catches the peak of
    the block itself.  The CUDA peak comes from torch's allocator when torch is loaded.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mb = 0.0
        self.peak_gpu_mb: float | None = None
        self._stop = threading.Event()

    def _rss_mb(self) -> float:
        import psutil  # noqa: PLC0415
        return psutil.Process().memory_info().rss / 2**20

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak_mb = self._rss_mb()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        return False


@dataclasses.dataclass
class RunResult:
    status: str
    chi_ppm: np.ndarray | None
    record: dict[str, Any]


def seed_everything(seed: int) -> None:
    """Seed numpy's legacy global RNG and torch (if loaded); methods should use ``self.rng``."""
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def run_method(method: str | Method, vol: Volume, *, params: Mapping[str, Any] | None = None,
               profile: str | None = None, seed: int | None = None, device: str = "auto",
               train: Sequence[Volume] = (), identity: Mapping[str, Any] | None = None,
               extra_dirs: Sequence[str | os.PathLike] = ()) -> RunResult:
    """Prepare (untimed) and run (timed) ``method`` on ``vol``; never raises for method failures.

    ``identity`` (dataset, perturbation, repetition) feeds :func:`derive_seed` when ``seed`` is
    None and is copied into the record.  ``profile="auto"`` becomes ``paper`` on a CUDA device and
    ``quick`` on the CPU (:func:`qsmbench.devices.resolve_profile`); the record keeps the profile
    that ran, the one requested and why.
    """
    identity = dict(identity or {})
    requested_profile = profile
    if isinstance(method, Method):
        instance = method
        name = type(method).name
        seed = instance.seed if seed is None else seed
        profile, profile_reason = instance.profile, "set on the method instance"
    else:
        name = method
        cls = get_method_class(name, extra_dirs=extra_dirs)
        if seed is None:
            seed = derive_seed(identity.get("dataset", vol.name), identity.get("perturbation", "none"),
                               name, identity.get("repetition", 0))
        dev = method_device(cls, device)
        profile, profile_reason = resolve_profile(cls, profile, dev, requested_device=device)
        instance = cls(profile=profile, seed=seed, device=dev, **dict(params or {}))
    record: dict[str, Any] = {
        "method": name,
        **identity,
        "parameters": dict(instance.params),
        "profile": profile,
        "profile_requested": requested_profile,
        "profile_reason": profile_reason,
        "seed": int(seed),
        "device": device_description(instance.device),
        "device_requested": device,
        "qsmbench_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "started_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "input_shape": list(vol.shape),
        "voxel_size_mm": list(vol.voxel_size_mm),
        "b0_dir": list(vol.b0_dir),
        "has_magnitude": vol.magnitude is not None,
        "error": None,
        "traceback": None,
        "wall_s": None,
        "cpu_s": None,
        "prepare_s": None,
        "peak_rss_mb": None,
        "peak_gpu_mb": None,
        "fft_count": None,
        "notes": [],
        "tuned_on": type(instance).tuned_on,
        "trained_on": None,
    }
    seed_everything(int(seed))
    visible = vol.for_method()
    chi = None
    try:
        t0 = time.perf_counter()
        instance.prepare(train)
        record["prepare_s"] = time.perf_counter() - t0
        with PeakMemory() as mem, count_ffts() as ffts:
            c0, t0 = time.process_time(), time.perf_counter()
            chi = instance.reconstruct(visible)
            _sync_cuda(instance.device)
            record["wall_s"] = time.perf_counter() - t0
            record["cpu_s"] = time.process_time() - c0
        record["fft_count"] = ffts["n"]
        record["peak_rss_mb"] = mem.peak_mb
        record["peak_gpu_mb"] = mem.peak_gpu_mb
        chi = validate_output(chi, vol)
        status = "ok"
    except Exception as exc:  # a failing method must not stop the benchmark
        status, chi = "failed", None
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
        log.error("method %s failed: %s", name, record["error"])
    record["status"] = status
    record["notes"] = list(getattr(instance, "notes", []))
    record["trained_on"] = getattr(instance, "trained_on", None)
    return RunResult(status, chi, record)


def set_threads(n: int) -> None:
    """Limit the FFTs (and torch, when loaded) to ``n`` threads, as the scheduler granted."""
    set_fft_workers(n)
    # torch (imported later, by the method) reads OMP_NUM_THREADS at import; one already loaded
    # is limited directly.
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    os.environ["QSMBENCH_THREADS"] = str(n)


def _sync_cuda(device: str) -> None:
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415
        torch.cuda.synchronize()


def validate_output(chi, vol: Volume) -> np.ndarray:
    """Check a method's output: an array of ``vol``'s shape, finite; returned masked, float32."""
    if chi is None:
        raise ValueError("reconstruct() returned None")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(chi, torch.Tensor):
        chi = chi.detach().cpu().numpy()
    chi = np.asarray(chi)
    if chi.shape != vol.shape:
        raise ValueError(f"reconstruct() returned shape {chi.shape}, expected {vol.shape}")
    if not np.issubdtype(chi.dtype, np.number) or np.iscomplexobj(chi):
        raise ValueError(f"reconstruct() returned dtype {chi.dtype}, expected real floats")
    bad = int(np.size(chi) - np.count_nonzero(np.isfinite(chi)))
    if bad:
        raise ValueError(f"reconstruct() returned {bad} non-finite values (NaN/inf)")
    return (chi * vol.mask).astype(np.float32)


def write_run(result: RunResult, out_dir: str | os.PathLike, affine) -> Path:
    """Write ``chi_ppm.nii.gz`` (when ok) and then ``run.json`` into ``out_dir``.

    run.json is written last, so its presence means the job finished; a stale chi file from an
    earlier successful run is removed when this run failed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = dict(result.record)
    if result.status == "ok":
        write_nifti(out_dir / CHI_FILE, result.chi_ppm, affine, dtype=np.float32)
        record["output"] = CHI_FILE
    else:
        (out_dir / CHI_FILE).unlink(missing_ok=True)
        record["output"] = None
    return write_json(out_dir / RUN_FILE, record)


def run_job(volume_dir: str | os.PathLike, run_json: str | os.PathLike, *, run_id: str, method: str,
            params: Mapping[str, Any] | None = None, profile: str | None = None, device: str = "auto",
            dataset: str = "", perturbation: str = "none", repetition: int = 0, threads: int | None = None,
            extra_dirs: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """One workflow job: load the volume, run the method, write chi + run.json beside it.

    The seed is derived from ``(dataset, perturbation, run_id, repetition)``.  A failed method
    still produces run.json (status "failed"), so the workflow and the report go on.
    """
    from .io import load_volume  # noqa: PLC0415

    if threads is not None:
        set_threads(threads)
    vol = load_volume(volume_dir)
    seed = derive_seed(dataset, perturbation, run_id, repetition)
    identity = {"run_id": run_id, "dataset": dataset, "perturbation": perturbation,
                "repetition": repetition}
    try:
        result = run_method(method, vol, params=params, profile=profile, seed=seed, device=device,
                            identity=identity, extra_dirs=extra_dirs)
    except MethodUnavailableError as exc:
        # e.g. torch not installed: only this run fails, with the reason, and the workflow goes on
        record = {"method": method, **identity, "parameters": dict(params or {}), "profile": profile,
                  "profile_requested": profile, "profile_reason": "not resolved: the method is unavailable",
                  "seed": seed, "device": "", "device_requested": device, "qsmbench_version": __version__,
                  "git_commit": git_commit(),
                  "status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": None,
                  "wall_s": None, "cpu_s": None, "prepare_s": None, "peak_rss_mb": None,
                  "peak_gpu_mb": None, "notes": []}
        result = RunResult("failed", None, record)
    write_run(result, Path(run_json).parent, vol.affine)
    return result.record
