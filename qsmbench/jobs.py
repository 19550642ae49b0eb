"""Support for the workflow's scripts: logging to the job's log file, clean failure.

Every script in ``workflow/scripts/`` is three or four lines inside ``with job(snakemake):``.
Log records (and warnings) go to the rule's ``log:`` file; an exception is logged with its
traceback, summarised on stderr, and ends the job with a non-zero status so Snakemake removes
the job's declared outputs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings


@contextlib.contextmanager
def job(smk, name: str | None = None):
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
