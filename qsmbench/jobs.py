"""Support for the workflow's scripts: logging to the job's log file, clean failure.

Every script in ``workflow/scripts/`` is three or four lines inside ``with job(snakemake):``.
Log records (and warnings) go to the rule's ``log:`` file; an exception is logged with its
traceback, summarised on stderr, and ends the job with a non-zero status so Snakemake removes
the job's declared outputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 1024) -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the kernel (glibc).

    By default glibc serves large blocks (from 128 kB, rising with use) by mmap and returns them
    -- and free memory at the top of the heap -- to the kernel on free; the next array of that
    size then faults in fresh zeroed pages.  The workflow's jobs allocate and free arrays of
    megabytes all the time (a training step's activations, a solver's temporaries): the default
    run took 26.5 million page faults, most of its ~150 s of system time.  Blocks up to
    ``mmap_threshold_mb`` now come from the heap, and up to ``trim_threshold_mb`` of free heap is
    kept.  The peak memory stays about the same (what is kept is reused, up to the largest
    working set): 1.41 GB for the default run, 1.43 GB before; its system time fell from 148 to
    67 s and its 864 metric values stayed bitwise the same.  Called by every workflow job
    (:func:`job`) and every isolated method run (:func:`qsmbench.runner.child_main`).
    Returns False where there is no glibc (macOS, musl): nothing changes there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20)
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20))


@contextlib.contextmanager
def job(smk, name: str | None = None):
    retain_freed_memory()
    log_path = smk.log[0] if len(smk.log) else None
    name = name or getattr(smk, "rule", "job")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        # truncate, then append: the isolated method process's output (qsmbench.isolate) is
        # appended to the same file, so both writers must write at its end
        open(log_path, "w").close()
        handlers.append(logging.FileHandler(log_path, mode="a"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    log = logging.getLogger(f"qsmbench.{name}")
    log.info("start %s %s", name, dict(smk.wildcards.items()) if hasattr(smk, "wildcards") else "")
    t0 = time.perf_counter()
    try:
        yield log
    except Exception as exc:
        log.exception("%s failed: %s", name, exc)
        sys.exit(1)
    log.info("done in %.2f s", time.perf_counter() - t0)


#: Open files whose advisory locks mark this process as the workflow's running instance.
_HELD: list = []


def release_stale_locks(snakemake_dir: str = ".snakemake") -> list[str]:
    """Remove Snakemake's directory locks when no other instance of this workflow is running.

    Snakemake locks the working directory (``.snakemake/locks/``) and a run that is killed
    outright (SIGKILL, power cut) leaves the lock behind, so that "the same command again"
    fails until ``snakemake --unlock``.  Called from the Snakefile by the main Snakemake process
    (before Snakemake takes its lock), this takes an exclusive advisory lock (``flock``) on
    ``.snakemake/qsmbench.instance.lock`` and holds it until the process ends -- the kernel
    releases it however the process ends.  Holding it proves that no other instance of this
    workflow runs in this directory, so any Snakemake lock present is stale and is removed.
    When another instance holds it, nothing is touched and Snakemake's own lock protects the
    directory as usual.  Returns the removed lock files' names (empty on systems without
    ``fcntl``, where nothing is done).
    """
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:
        return []
    folder = Path(snakemake_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / "qsmbench.instance.lock", "a")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return []
    _HELD.append(fh)
    locks = folder / "locks"
    stale = sorted(p.name for p in locks.glob("*.lock")) if locks.is_dir() else []
    if stale:
        shutil.rmtree(locks, ignore_errors=True)
    return stale


def cache_function_signatures() -> bool:
    """Make Snakemake remember the signature of each input function / resource callable.

    Snakemake (9.x) calls ``inspect.signature`` on every params/input function and on every
    resource evaluator again for every job it creates and prints: about 15 calls per
    reconstruct job, roughly a seventh of the time a 10,000-job grid takes to build and
    dry-run.  A function's signature does not change, so the result is stored on the function
    itself (for a bound method: on the function behind it); an override set through
    ``snakemake.common.overwrite_function_params`` still comes first.  Called once from the workflow
    (workflow/rules/resources.smk); returns False, changing nothing, when this Snakemake lacks
    that hook.
    """
    import inspect  # noqa: PLC0415

    try:
        import snakemake.common as common  # noqa: PLC0415
        import snakemake.jobs as sm_jobs  # noqa: PLC0415
        import snakemake.rules as sm_rules  # noqa: PLC0415
    except ImportError:
        return False
    attr = getattr(common, "FUNC_OVERWRITE_PARAMS_ATTR", None)
    original = getattr(common, "get_function_params", None)
    if attr is None or original is None or getattr(original, "_qsmbench_cached", False):
        return bool(getattr(original, "_qsmbench_cached", False))

    def get_function_params(func):
        if hasattr(func, attr):  # Snakemake's own override first, as before
            return getattr(func, attr)
        # a bound method (e.g. a resource's evaluator) is a new object at each access: cache its
        # signature (without self) on the function behind it, under a name of its own
        target, key = (func.__func__, "_qsmbench_bound_params") if inspect.ismethod(func) else \
            (func, "_qsmbench_params")
        params = getattr(target, "__dict__", {}).get(key)
        if params is None:
            params = inspect.signature(func).parameters
            try:
                setattr(target, key, params)
            except (AttributeError, TypeError):  # builtins, partials of builtins: not cached
                pass
        return params

    get_function_params._qsmbench_cached = True
    for module in (common, sm_rules, sm_jobs):
        if getattr(module, "get_function_params", None) is original:
            module.get_function_params = get_function_params
    return True


def _snakemake_attr(module: str, name: str):
    """``module.name`` of this Snakemake, or None when the module or the attribute is missing (the
    shims below then change nothing)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def skip_job_info_nobody_reads(cls=None) -> bool:
    """Make Snakemake skip describing a job when every log handler would drop the description.

    For every job it runs or dry-runs, Snakemake (9.x) builds the job's description (input,
    output and log files, wildcards, resources, the reason it runs) and logs it as a JOB_INFO
    event, which its own handlers (console and log file) drop under ``--quiet rules``.  On the
    10,000-job grid of tests/benchmarks/bench_dag.py ``log_info`` took 2.6-3.0 s; skipping it
    took the dry run from 18.0 to 16.8 s (part of that work, the jobs' resources, is done later
    anyway).  With ``rules`` among the quiet settings and no logger plugin attached (a plugin
    sees every event) the description is not built; otherwise Snakemake's own ``Job.log_info``
    runs, as before.  Called once from the workflow
    (workflow/rules/resources.smk); returns False, changing nothing, when this Snakemake lacks
    the pieces (``Job.log_info``, ``Quietness.RULES``).
    """
    try:
        from snakemake.settings.enums import Quietness  # noqa: PLC0415
    except ImportError:
        return False
    if cls is None:  # the argument: for tests
        cls = _snakemake_attr("snakemake.jobs", "Job")
    original = getattr(cls, "log_info", None)
    rules = getattr(Quietness, "RULES", None)
    if original is None or rules is None:
        return False
    if getattr(original, "_qsmbench_quiet", False):
        return True

    def log_info(self, *args, **kwargs):
        manager = getattr(getattr(getattr(self, "dag", None), "workflow", None), "logger_manager", None)
        quiet = getattr(getattr(manager, "settings", None), "quiet", None) or ()
        if rules in quiet and not getattr(manager, "plugin_handlers", True):
            return None
        return original(self, *args, **kwargs)

    log_info._qsmbench_quiet = True
    cls.log_info = log_info
    return True


def check_scripts_once_per_rule(cls=None) -> bool:
    """Make Snakemake check that a rule's ``script:`` file is readable once per rule, not per job.

    After building the DAG, Snakemake (9.x) reads every job's script through its source cache to
    check that it is accessible: one file read, URI parse and cache lookup per job, about a fifth
    of the time a 10,000-job grid takes to dry-run.  For a script path without wildcards or
    params (``{...}``) -- all of this workflow's -- the answer is the same for every job of the
    rule, so the first job's check stands for the others; a path with ``{`` is still checked for
    each job.  Called once from the workflow (workflow/rules/resources.smk); returns False,
    changing nothing, when this Snakemake lacks the hook (``snakemake.dag.ScriptProcessor``).
    """
    if cls is None:  # the argument: for tests
        cls = _snakemake_attr("snakemake.dag", "ScriptProcessor")
    original = getattr(cls, "process_job", None)
    if original is None or not hasattr(cls, "script_type"):
        return False
    if getattr(original, "_qsmbench_once", False):
        return True

    def process_job(self, job):
        entry = getattr(job.rule, self.script_type, None) if getattr(job, f"is_{self.script_type}", False) else None
        if entry is None or "{" in str(entry):
            return original(self, job)
        checked = self.__dict__.setdefault("_qsmbench_checked", set())
        key = (job.rule.name, str(entry))
        if key not in checked:
            original(self, job)  # raises when the script is not accessible
            checked.add(key)
        return None

    process_job._qsmbench_once = True
    cls.process_job = process_job
    return True
