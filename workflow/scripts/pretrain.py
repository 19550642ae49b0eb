"""Rule pretrain: train (or find in the cache) the weights of one run's method -> training record.

``pretrain_job`` is generic (any method whose class ``uses`` "training") and belongs in
``qsmbench.runner`` beside ``run_job``; it lives here until it moves there.
"""

import time
import traceback

from qsmbench import __version__
from qsmbench.devices import resolve_profile
from qsmbench.errors import MethodUnavailableError
from qsmbench.io import write_json
from qsmbench.jobs import job
from qsmbench.registry import get_method_class
from qsmbench.runner import device_description, git_commit, method_device, set_threads


def pretrain_job(out_json, *, run_id, method, params, profile, device="auto", threads=None, extra_dirs=()):
    """prepare([]) one run's method (untimed training + caching) and write its record.

    Never raises for a failure of the method: a missing requirement gives status "unavailable",
    an exception "failed"; the run's reconstruct jobs then go on and record the reason.
    """
    if threads is not None:
        set_threads(threads)
    record = {"run_id": run_id, "method": method, "profile": profile, "parameters": dict(params or {}),
              "qsmbench_version": __version__, "git_commit": git_commit(), "status": None, "error": None,
              "traceback": None, "device": None, "prepare_s": None, "notes": [], "training": {}}
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
        record.update(status="ok", device=device_description(dev), prepare_s=time.perf_counter() - t0, notes=list(instance.notes),
                      training=dict(getattr(instance, "training_record", {})))
    except MethodUnavailableError as exc:
        record.update(status="unavailable", error=str(exc))
    except Exception as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    write_json(out_json, record)
    return record


with job(snakemake) as log:
    run = snakemake.params.run
    record = pretrain_job(snakemake.output[0], run_id=snakemake.wildcards.run, method=run["method"],
                          params=run["params"], profile=run["profile"], device=snakemake.params.device,
                          threads=snakemake.threads, extra_dirs=snakemake.params.method_dirs)
    log.info("status %s, prepare %s s; %s", record["status"], record["prepare_s"], "; ".join(record["notes"]))
    if record["error"]:
        log.error("pretraining failed (recorded; the reconstruct jobs will report it): %s\n%s",
                  record["error"], record["traceback"] or "")
