"""Progress of long loops (training, per-subject fits): a tqdm bar or periodic log lines.

On an interactive terminal (stderr is a TTY) a tqdm bar on stderr shows the step, the rate and
the estimated time left.  Elsewhere -- workflow jobs log to files -- a bar would write a line per
refresh, so progress goes to the log instead: one line every ``log_every_s`` seconds (and at the
end) with the step, the elapsed time and the estimated time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("qsmbench.progress")


def format_seconds(s: float) -> str:
    """``75 -> "1:15"``, ``3725 -> "1:02:05"``."""
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """``total`` steps of ``label``: call :meth:`update` after each step, :meth:`close` at the end.

    ``bar``: True forces the tqdm bar, False forces log lines, None (default) chooses the bar
    when stderr is a terminal.  Usable as a context manager.
    """

    def __init__(self, total: int, label: str, *, unit: str = "step", bar: bool | None = None,
                 log_every_s: float = 30.0, logger: logging.Logger | None = None):
        self.total, self.label, self.unit = int(total), label, unit
        self.n = 0
        self.log = logger or log
        self.log_every_s = float(log_every_s)
        self.t0 = time.perf_counter()
        self._last_log = self.t0
        self._postfix: dict[str, Any] = {}
        self._tqdm = None
        if bar is None:
            bar = sys.stderr.isatty()
        if bar:
            try:
                from tqdm import tqdm  # noqa: PLC0415
            except ImportError:  # tqdm is a dependency; degrade to log lines all the same
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=self.total, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True,
                                  leave=False)

    def eta_s(self, now: float | None = None) -> float | None:
        """Estimated seconds left (the mean time per step so far times the steps left)."""
        if self.n <= 0:
            return None
        now = time.perf_counter() if now is None else now
        return (now - self.t0) / self.n * max(self.total - self.n, 0)

    def update(self, n: int = 1, postfix: Mapping[str, Any] | None = None) -> None:
        self.n += int(n)
        if postfix:
            self._postfix = dict(postfix)
        if self._tqdm is not None:
            if postfix:
                self._tqdm.set_postfix(self._postfix, refresh=False)
            self._tqdm.update(n)
            return
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s and self.n < self.total:
            self._last_log = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``label: 40/300 steps (13 %), 0:21 elapsed, about 2:17 left; loss 0.01`` (at ``now``,
        a ``time.perf_counter()`` value; default: the clock read once)."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self.t0
        eta = self.eta_s(now)
        pct = 100.0 * self.n / self.total if self.total else 100.0
        text = (f"{self.label}: {self.n}/{self.total} {self.unit}s ({pct:.0f} %), {format_seconds(elapsed)} elapsed"
                + (f", about {format_seconds(eta)} left" if eta is not None and self.n < self.total else ""))
        if self._postfix:
            text += "; " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in self._postfix.items())
        return text

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        self.log.info("%s", self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
