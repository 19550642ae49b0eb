"""Run one method on one volume: seeding, timing, peak memory, device, output validation, isolation.

:func:`run_method` (in this process) and :func:`run_job` (one workflow job, by default in a child
process with a wall-clock and a memory limit) never raise for a failure *of the method*: an
exception, a wrong shape or non-finite values, a crash, a hang or runaway memory give a
``status`` of ``failed``, ``timeout`` or ``oom`` (:data:`STATUSES`) in ``run.json``, with the
error (and the last lines of the method's output), and no chi file, so the workflow goes on and
the report shows the failure.  Problems of the *caller* (bad volume, unknown method, bad
parameters) do raise.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, plugins
from .devices import AUTO, cuda_devices, resolve_profile
from .errors import ConfigError, MethodUnavailableError, QsmbenchError
from .io import write_json, write_nifti
from .method import Method
from .physics import count_ffts, set_fft_workers
from .provenance import git_commit, is_dirty, package_versions, packages_digest
from .registry import get_method_class
from .volume import Volume

log = logging.getLogger(__name__)

CHI_FILE = "chi_ppm.nii.gz"
RUN_FILE = "run.json"
#: Prefix of the isolated runs' scratch folders inside a job's output folder.
SCRATCH_PREFIX = ".qsmbench-run-"

#: Status of a run in run.json: ``ok``; ``failed`` (the method raised, returned a bad array or its
#: process crashed); ``timeout`` (killed past its wall-clock limit); ``oom`` (out of memory: a
#: MemoryError, or killed past its memory limit or by the system's out-of-memory killer);
#: ``not_run`` (an imported reconstruction whose map does not exist, :mod:`qsmbench.plugins`).
STATUSES = ("ok", "failed", "timeout", "oom", "not_run")


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from a job's identity, e.g. ``(dataset, perturbation, method, repetition)``.

    Stable across processes and platforms (SHA-256 of the parts' text), unlike ``hash()``.
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF




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


#: cuBLAS's setting for deterministic results (CUDA >= 10.2); read when cuBLAS initialises.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def deterministic_torch() -> dict[str, Any]:
    """Switch on PyTorch's deterministic modes (importing torch); returns what was set, for run.json.

    What ``torch.use_deterministic_algorithms(True, warn_only=True)`` sets (an operation without a
    deterministic implementation warns instead of failing), ``cudnn.benchmark = False`` (no
    autotuner choosing kernels by timing), ``cudnn.deterministic = True`` and
    ``CUBLAS_WORKSPACE_CONFIG`` (effective when set before cuBLAS starts: the isolated child's
    environment has it from the start, :func:`child_env`).  On the CPU a seeded run is then
    bitwise repeatable for a fixed thread count; on CUDA see README, "Reproducibility".

    ``use_deterministic_algorithms`` sets two flags: the operators' (``torch._C``) and
    TorchInductor's (``torch._inductor.config.deterministic``, for ``torch.compile``).  To set the
    second it imports TorchInductor, and with it TorchDynamo and SymPy, in every torch job of a
    run, although no qsmbench method compiles (measured: a uQSM reconstruct job 4.1 -> 3.6 s; a
    plain process ``import torch`` + the call 4.0 -> 2.1 s, Dynamo's exit handlers included).  So
    the operators' flag is set directly, and Inductor's through ``TORCHINDUCTOR_DETERMINISTIC=1``,
    which Inductor reads when it is imported (or on its config at once, if it is already loaded):
    the same two flags, without the import.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    try:
        import torch  # noqa: PLC0415
    except ImportError:  # the method will report itself unavailable
        return {}

    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None:  # a torch without the private setter: the public call (and its import)
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
        inductor = sys.modules.get("torch._inductor.config")
        if inductor is not None:
            inductor.deterministic = True
        set_flag(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return {"torch_deterministic_algorithms": True, "cudnn_benchmark": False, "cudnn_deterministic": True,
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def _base_record(name: str, identity: Mapping[str, Any], params: Mapping[str, Any], profile: str | None,
                 seed: int, device: str, vol: Volume) -> dict[str, Any]:
    """The fields of run.json that exist before the method runs (``status`` still None)."""
    return {
        "method": name,
        **identity,
        "parameters": dict(params),
        "profile": profile,
        "seed": int(seed),
        "device": device,
        "qsmbench_version": __version__,
        "git_commit": (commit := git_commit()),
        "git_dirty": is_dirty(commit),
        "packages": package_versions(),
        "packages_sha256": packages_digest(package_versions()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "started_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "input_shape": list(vol.shape),
        "voxel_size_mm": list(vol.voxel_size_mm),
        "b0_dir": list(vol.b0_dir),
        "has_magnitude": vol.magnitude is not None,
        "status": None,
        "error": None,
        "traceback": None,
        "wall_s": None,
        "cpu_s": None,
        "prepare_s": None,
        "peak_rss_mb": None,
        "peak_gpu_mb": None,
        "fft_count": None,
        "notes": [],
        "info": {},
        "tuned_on": None,
        "trained_on": None,
        "isolation": None,
        "log_tail": None,
    }


def is_out_of_memory(exc: BaseException) -> bool:
    """A host ``MemoryError`` (numpy's ``_ArrayMemoryError`` included) or torch's ``OutOfMemoryError``."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def run_method(method: str | Method, vol: Volume, *, params: Mapping[str, Any] | None = None,
               profile: str | None = None, seed: int | None = None, device: str = "auto",
               train: Sequence[Volume] = (), identity: Mapping[str, Any] | None = None,
               extra_dirs: Sequence[str | os.PathLike] = ()) -> RunResult:
    """Prepare (untimed) and run (timed) ``method`` on ``vol`` in this process; never raises for
    method failures.

    ``identity`` (dataset, perturbation, repetition) feeds :func:`derive_seed` when ``seed`` is
    None and is copied into the record.  ``profile="auto"`` becomes ``paper`` on a CUDA device and
    ``quick`` on the CPU (:func:`qsmbench.devices.resolve_profile`); the record keeps the profile
    that ran, the one requested and why.  A method that raises gives status ``failed``, one that
    runs out of memory (``MemoryError``, torch's ``OutOfMemoryError``) status ``oom``.  This is
    the in-process path (tests, benchmarks, ``qsmbench reconstruct``); the workflow runs it in a
    child process with limits (:func:`run_job`).
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
    record = _base_record(name, identity, instance.params, profile, int(seed),
                          device_description(instance.device), vol)
    record.update(profile_requested=requested_profile, profile_reason=profile_reason, device_requested=device,
                  tuned_on=type(instance).tuned_on)
    if "torch" in getattr(type(instance), "requirements", ()):
        record["determinism"] = deterministic_torch()
    seed_everything(int(seed))
    plugins.before_run(instance, identity)
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
        # a command plugin's program that timed out / ran out of memory, a missing import: their own status
        own = getattr(exc, "status", None)
        status = own if own in STATUSES and own != "ok" else "oom" if is_out_of_memory(exc) else "failed"
        chi = None
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
        log.error("method %s failed (%s): %s", name, status, record["error"])
    record["status"] = status
    record["notes"] = list(getattr(instance, "notes", []))
    record["info"] = dict(getattr(instance, "info", None) or {})
    record["trained_on"] = getattr(instance, "trained_on", None)
    plugins.annotate_record(instance, record)  # command line, version, image; imported: no timing
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
    earlier successful run is removed when this run failed.  Both writes are atomic.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result.status == "ok":
        write_nifti(out_dir / CHI_FILE, result.chi_ppm, affine, dtype=np.float32)
    return _write_record(result.record, out_dir)


def _write_record(record: Mapping[str, Any], out_dir: Path) -> Path:
    record = dict(record)
    if record["status"] == "ok":
        record["output"] = CHI_FILE
    else:
        (out_dir / CHI_FILE).unlink(missing_ok=True)
        record["output"] = None
    return write_json(out_dir / RUN_FILE, record)


class RunInterrupted(QsmbenchError):
    """The isolated run was stopped by SIGINT/SIGTERM/SIGHUP: the job is interrupted, not failed.

    Nothing is written, so the next workflow run redoes the job.
    """


def expected_profile(cls: type[Method], profile: str | None, device: str = "auto") -> str | None:
    """The profile a run of ``cls`` will resolve to (:func:`qsmbench.devices.resolve_profile`),
    decided without importing torch (the NVIDIA driver answers): for its time limit and for
    checking its parameters before the child starts."""
    if profile != AUTO:
        return profile
    wants_gpu = ("gpu" in cls.uses and device != "cpu") or ("gpu_optional" in cls.uses
                                                            and str(device).startswith("cuda"))
    on_gpu = wants_gpu and bool(cuda_devices(use_torch=False))
    return resolve_profile(cls, profile, "cuda" if on_gpu else "cpu", requested_device=device)[0]


def run_job(volume_dir: str | os.PathLike, run_json: str | os.PathLike, *, run_id: str, method: str,
            params: Mapping[str, Any] | None = None, profile: str | None = None, device: str = "auto",
            dataset: str = "", perturbation: str = "none", repetition: int = 0, threads: int | None = None,
            extra_dirs: Sequence[str | os.PathLike] = (), timeout_s: float | None = None,
            mem_limit_mb: float | None = None, log_path: str | os.PathLike | None = None,
            isolate: bool = True) -> dict[str, Any]:
    """One workflow job: load the volume, run the method, write chi + run.json beside it.

    The seed is derived from ``(dataset, perturbation, run_id, repetition)``.  A failed method
    still produces run.json (status ``failed``, ``timeout`` or ``oom``, see :data:`STATUSES`),
    so the workflow and the report go on.  Problems of the caller -- an unreadable volume, an
    unknown method, bad parameters -- raise (:class:`~qsmbench.errors.QsmbenchError`).

    With ``isolate`` (the default) the method runs in a child process (``python -m
    qsmbench._child``, see :mod:`qsmbench.isolate`):

    * wall-clock limit ``timeout_s`` (None: the method's default for ``profile``,
      :meth:`~qsmbench.method.Method.timeout_for`), covering start-up, ``prepare`` and
      ``reconstruct``; past it the process tree is killed and the status is ``timeout``;
    * memory limit ``mem_limit_mb`` (resident memory of the child and its descendants; None: no
      limit); past it the tree is killed and the status is ``oom``;
    * its output goes to ``log_path`` (bounded: head and tail), its last lines to run.json's
      ``log_tail`` when the run did not succeed;
    * its working directory (and ``TMPDIR``) is a scratch folder inside the job's output folder,
      removed afterwards, so stray files cannot reach other jobs' outputs;
    * timing and peak memory are measured inside the child, as in-process.

    ``isolate=False`` runs :func:`run_method` in this process (no limits).
    """
    from .io import load_volume  # noqa: PLC0415

    if threads is not None:
        set_threads(threads)
    vol = load_volume(volume_dir)
    seed = derive_seed(dataset, perturbation, run_id, repetition)
    identity = {"run_id": run_id, "dataset": dataset, "perturbation": perturbation,
                "repetition": repetition}
    out_dir = Path(run_json).parent
    try:
        cls = get_method_class(method, extra_dirs=extra_dirs)
    except MethodUnavailableError as exc:
        # e.g. torch not installed: only this run fails, with the reason, and the workflow goes on
        record = _base_record(method, identity, params or {}, profile, seed, "", vol)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", profile_requested=profile,
                      profile_reason="not resolved: the method is unavailable", device_requested=device)
        write_run(RunResult("failed", None, record), out_dir, vol.affine)
        return record
    expected = expected_profile(cls, profile, device)
    cls.resolve_parameters(params, profile=expected)  # bad parameters: the caller's error, raised here
    if plugins.is_imported(cls):
        isolate = False  # reads one file; its map pattern may be relative to the working directory
    if not isolate:
        result = run_method(method, vol, params=params, profile=profile, seed=seed, device=device,
                            identity=identity, extra_dirs=extra_dirs)
        write_run(result, out_dir, vol.affine)
        return result.record
    limit_s = cls.timeout_for(expected) if timeout_s is None else float(timeout_s)
    if not limit_s > 0:
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if mem_limit_mb is not None and not float(mem_limit_mb) > 0:
        raise ConfigError(f"the memory limit must be a positive number of MB, got {mem_limit_mb!r}")
    request = {"volume_dir": str(Path(volume_dir).resolve()), "method": method, "params": dict(params or {}),
               "profile": profile, "seed": seed, "device": device, "identity": identity, "threads": threads,
               "extra_dirs": [str(Path(d).resolve()) for d in extra_dirs], "parent_pid": os.getpid()}
    base = _base_record(method, identity, cls.resolve_parameters(params, profile=expected), expected, seed,
                        device, vol)
    base.update(tuned_on=cls.tuned_on, profile_requested=profile, device_requested=device)
    record = _run_isolated(request, base, out_dir, timeout_s=limit_s, mem_limit_mb=mem_limit_mb,
                           log_path=log_path)
    return record


def _remove_stale_scratch(out_dir: Path) -> None:
    """Scratch folders left by a job that was killed outright (SIGKILL of the whole workflow)."""
    for old in out_dir.glob(f"{SCRATCH_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)


def child_env(work: Path, threads: int | None) -> dict[str, str]:
    """The child's environment: this checkout of qsmbench first on the path, absolute qsmbench
    paths (the child runs elsewhere), unbuffered output, ``TMPDIR`` in its scratch folder."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    paths = [here] + [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    for key in ("QSMBENCH_METHODS_PATH", "QSMBENCH_MANIFESTS_PATH"):
        if env.get(key):
            env[key] = os.pathsep.join(str(Path(p).resolve()) for p in env[key].split(os.pathsep) if p)
    for key in ("QSMBENCH_CACHE", "QSMBENCH_DATA"):
        if env.get(key):
            env[key] = str(Path(env[key]).expanduser().resolve())
    env.update(PYTHONUNBUFFERED="1", TMPDIR=str(work), TEMP=str(work), TMP=str(work))
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)  # before cuBLAS starts (deterministic_torch)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), QSMBENCH_THREADS=str(threads))
    return env


def _run_isolated(request: dict[str, Any], base: dict[str, Any], out_dir: Path, *, timeout_s: float,
                  mem_limit_mb: float | None, log_path: str | os.PathLike | None,
                  write: Callable[[dict[str, Any], Path], Any] | None = None) -> dict[str, Any]:
    """Run ``request`` in a child; ``out_dir`` is the job's own folder (its scratch folder goes
    there, and stale ones from killed runs of the same job are removed)."""
    from .isolate import run_limited  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(out_dir)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out_dir)).resolve()  # the child runs elsewhere
    try:
        work, exchange = scratch / "work", scratch / "exchange"
        work.mkdir()
        exchange.mkdir()
        request = {**request, "exchange": str(exchange)}
        write_json(exchange / "request.json", request)
        request_path = str(exchange / "request.json")
        outcome = run_limited([sys.executable, "-m", "qsmbench._child", request_path],
                              cwd=work, env=child_env(work, request["threads"]), timeout_s=timeout_s,
                              mem_limit_mb=mem_limit_mb, log_path=log_path,
                              target=functools.partial(_forked_child_main, request_path, os.getpid()))
        record = _classify(outcome, exchange, base, timeout_s=timeout_s, mem_limit_mb=mem_limit_mb)
        record["isolation"] = {
            "timeout_s": timeout_s, "mem_limit_mb": mem_limit_mb, "elapsed_s": round(outcome.elapsed_s, 3),
            "peak_tree_rss_mb": round(outcome.peak_rss_mb, 1), "exit_code": outcome.returncode,
            "output_bytes": outcome.output_bytes, "output_omitted_bytes": outcome.omitted_bytes,
            "start": outcome.start,
        }
        record["log_tail"] = outcome.tail if record["status"] not in ("ok", "unavailable") else None
        if write is not None:
            write(record, exchange)
            return record
        if record["status"] == "ok":
            os.replace(exchange / CHI_FILE, out_dir / CHI_FILE)
        _write_record(record, out_dir)
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _classify(outcome, exchange: Path, base: dict[str, Any], *, timeout_s: float,
              mem_limit_mb: float | None) -> dict[str, Any]:
    """The run record from what the child left: its own record, or why it has none."""
    from .io import read_json  # noqa: PLC0415

    result = exchange / "result.json"
    if result.exists() and (exchange / "done").exists():
        record = read_json(result)
        if record.get("status") != "ok" or record.get("kind") == "pretrain" or (exchange / CHI_FILE).exists():
            return record
    record = dict(base)
    sig = outcome.signal_name
    if outcome.limit == "timeout":
        status, error = "timeout", (
            f"TimeoutError: the run exceeded its wall-clock limit of {timeout_s:g} s and was killed (the limit "
            "is methods.<run>.timeout_s in the config; the default is the method's Method.timeout_s for "
            "its profile)")
    elif outcome.limit == "memory":
        status, error = "oom", (
            f"MemoryError: the run's resident memory ({outcome.peak_rss_mb:.0f} MB, with its child processes) "
            f"exceeded the limit of {mem_limit_mb:g} MB and it was killed (the limit is the reconstruct job's "
            "mem_mb resource; methods.<run>.mem_mb in the config)")
    elif sig in ("SIGINT", "SIGTERM", "SIGHUP"):
        raise RunInterrupted(f"the isolated run of '{base['method']}' was interrupted by {sig}; nothing was "
                             "recorded, so the next run of the workflow redoes this job")
    elif sig == "SIGKILL":
        status, error = "oom", (
            "Killed: the method's process was killed by SIGKILL from outside qsmbench, most often by the "
            "kernel's or the cluster's out-of-memory killer")
    else:
        how = f"was killed by {sig}" if sig else f"exited with status {outcome.returncode}"
        hint = " (a crash in compiled code; the log shows the stack)" if sig in ("SIGSEGV", "SIGBUS", "SIGABRT",
                                                                                 "SIGILL", "SIGFPE") else ""
        status, error = "failed", f"ProcessError: the method's process {how} before recording a result{hint}"
    record.update(status=status, error=error)
    return record


def _forked_child_main(request_path: str, parent_pid: int) -> int:
    """:func:`child_main` in a forked child (qsmbench.isolate set up its streams, signals and
    stack dumps, as ``qsmbench._child`` does in a new interpreter)."""
    from .isolate import die_with_parent  # noqa: PLC0415

    die_with_parent(parent_pid)
    return child_main(request_path)


def child_main(request_path: str | os.PathLike) -> int:
    """The isolated run itself (started as ``python -m qsmbench._child REQUEST``, which has set up
    the parent watch and the stack dumps): runs :func:`run_method` on the request's volume (or,
    for a ``pretrain`` request, :func:`pretrain_in_process`) and leaves ``result.json`` (+ the chi
    map when ok) and a ``done`` marker in the exchange folder.
    """
    from .io import load_volume, read_json  # noqa: PLC0415
    from .jobs import retain_freed_memory  # noqa: PLC0415

    retain_freed_memory()   # every isolated run, spawned or forked, from the workflow or not
    req = read_json(request_path)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if req.get("threads") is not None:
        set_threads(int(req["threads"]))
    exchange = Path(req["exchange"])
    if req.get("kind") == "pretrain":
        record = pretrain_in_process(run_id=req["identity"]["run_id"], method=req["method"], params=req["params"],
                                     profile=req["profile"], device=req["device"], extra_dirs=req["extra_dirs"])
        write_json(exchange / "result.json", record)
        write_json(exchange / "done", {"status": record["status"]})
        return 0
    vol = load_volume(req["volume_dir"])
    result = run_method(req["method"], vol, params=req["params"], profile=req["profile"], seed=req["seed"],
                        device=req["device"], identity=req["identity"], extra_dirs=req["extra_dirs"])
    if result.status == "ok":
        write_nifti(exchange / CHI_FILE, result.chi_ppm, vol.affine, dtype=np.float32)
    write_json(exchange / "result.json", result.record)
    write_json(exchange / "done", {"status": result.status})
    log.info("isolated run of %s: %s", req["method"], result.status)
    return 0


# --------------------------------------------------------------------------- pretraining
def pretrain_in_process(*, run_id: str, method: str, params: Mapping[str, Any] | None, profile: str | None,
                        device: str = "auto", extra_dirs: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """``prepare([])`` one run's method (untimed training + caching); return the training record.

    Never raises for a failure of the method: a missing requirement gives status
    ``unavailable``, an exception ``failed`` (``oom`` for running out of memory).
    """
    record: dict[str, Any] = {
        "kind": "pretrain", "run_id": run_id, "method": method, "profile": profile,
        "parameters": dict(params or {}), "qsmbench_version": __version__, "git_commit": git_commit(),
        "status": None, "error": None, "traceback": None, "device": None, "prepare_s": None, "notes": [],
        "training": {}, "trained_on": None, "isolation": None, "log_tail": None}
    try:
        cls = get_method_class(method, extra_dirs=extra_dirs)
        dev = method_device(cls, device)
        # 'auto' resolves as in the reconstruct jobs (paper on CUDA, quick on the CPU), so that they
        # find these weights in the cache
        resolved, reason = resolve_profile(cls, profile, dev, requested_device=device)
        record.update(profile=resolved, profile_requested=profile, profile_reason=reason)
        instance = cls(profile=resolved, device=dev, **dict(params or {}))
        t0 = time.perf_counter()
        instance.prepare([])
        record.update(status="ok", device=device_description(dev), prepare_s=time.perf_counter() - t0,
                      notes=list(instance.notes), training=dict(getattr(instance, "training_record", {})),
                      trained_on=getattr(instance, "trained_on", None))
    except MethodUnavailableError as exc:
        record.update(status="unavailable", error=str(exc))
    except Exception as exc:
        record.update(status="oom" if is_out_of_memory(exc) else "failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    return record


def pretrain_job(out_json: str | os.PathLike, *, run_id: str, method: str, params: Mapping[str, Any] | None,
                 profile: str | None, device: str = "auto", threads: int | None = None,
                 extra_dirs: Sequence[str | os.PathLike] = (), timeout_s: float | None = None,
                 mem_limit_mb: float | None = None, log_path: str | os.PathLike | None = None,
                 isolate: bool = True) -> dict[str, Any]:
    """The pretrain rule's job: :func:`pretrain_in_process`, isolated like :func:`run_job`; writes
    the record to ``out_json``.  ``timeout_s`` None: the method's default for ``profile``.

    A training that hangs or eats memory ends as ``timeout`` / ``oom``; the run's reconstruct
    jobs then go on (and record whatever their own ``prepare`` meets).
    """
    if threads is not None:
        set_threads(threads)
    out_json = Path(out_json)
    if not isolate:
        record = pretrain_in_process(run_id=run_id, method=method, params=params, profile=profile, device=device,
                                     extra_dirs=extra_dirs)
        write_json(out_json, record)
        return record
    try:
        cls = get_method_class(method, extra_dirs=extra_dirs)
    except MethodUnavailableError:
        cls = Method
    limit_s = cls.timeout_for(expected_profile(cls, profile, device)) if timeout_s is None else float(timeout_s)
    base = {"kind": "pretrain", "run_id": run_id, "method": method, "profile": profile,
            "parameters": dict(params or {}), "qsmbench_version": __version__, "git_commit": git_commit(),
            "status": None, "error": None, "traceback": None, "device": None, "prepare_s": None, "notes": [],
            "training": {}}
    request = {"kind": "pretrain", "volume_dir": None, "method": method, "params": dict(params or {}),
               "profile": profile, "seed": 0, "device": device, "identity": {"run_id": run_id}, "threads": threads,
               "extra_dirs": [str(Path(d).resolve()) for d in extra_dirs], "parent_pid": os.getpid()}
    job_dir = out_json.parent / f".{out_json.stem}.pretrain"  # this run's own folder: others' scratch is safe
    try:
        return _run_isolated(request, base, job_dir, timeout_s=limit_s, mem_limit_mb=mem_limit_mb,
                             log_path=log_path, write=lambda record, _exchange: write_json(out_json, record))
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
