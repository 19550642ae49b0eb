"""The download engine: pooch with retries, a progress bar, atomic placement and sha256 checks.

:func:`download` fetches one URL to one cache path.  Pooch streams into a temporary file in
the destination folder and moves it under the final name only when the transfer completed and
the known sha256 (if any) matched, so an interrupted, truncated or corrupted transfer never
leaves a file under the final name.  Connection errors, truncated transfers and HTTP 5xx are
retried (``retries`` more attempts, pooch waits 1 s, 2 s, ... between them); HTTP 4xx is not
(retrying a 404 or a refused password cannot help).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..errors import QsmbenchError
from .cache import ChecksumError

log = logging.getLogger("qsmbench.datasets")

#: Extra attempts after a failed transfer (connection error, truncation, HTTP 5xx).
DEFAULT_RETRIES = 3
#: Seconds to wait for the server to connect / send the next bytes.
TIMEOUT_S = (30, 120)
CHUNK = 1 << 20


class DownloadError(QsmbenchError):
    """A transfer that failed (HTTP error, connection, truncation) after its retries."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _PermanentHTTPError(Exception):
    """An HTTP 4xx: deliberately neither ValueError nor RequestException, so pooch does not retry it."""

    def __init__(self, status: int, reason: str, url: str):
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status, self.reason, self.url = status, reason, url


class LogProgress:
    """Pooch progress-bar protocol (total/update/reset/close) that logs every 10 %.

    Used when stderr is not a terminal (workflow jobs log to files), where a tqdm bar would
    write a line per refresh.
    """

    def __init__(self, label: str):
        self.label = label
        self.total = 0
        self.n = 0
        self._next = 0.1

    def update(self, n: int) -> None:
        self.n += n
        if self.total and self.n / self.total >= self._next:
            log.info("%s: %.0f %% of %.1f MB", self.label, min(100.0, 100 * self.n / self.total), self.total / 1e6)
            while self._next <= self.n / self.total:
                self._next += 0.1

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        log.info("%s: done (%.1f MB)", self.label, max(self.n, self.total) / 1e6)


def progress_bar(label: str):
    """tqdm on an interactive terminal, else a logging progress (see :class:`LogProgress`)."""
    if sys.stderr.isatty():
        try:
            import tqdm  # noqa: F401, PLC0415
        except ImportError:
            return LogProgress(label)
        return True
    return LogProgress(label)


class _Downloader:
    """pooch.HTTPDownloader that turns HTTP 4xx into a non-retried error."""

    def __init__(self, *, auth=None, progressbar=False):
        import pooch  # noqa: PLC0415

        self._http = pooch.HTTPDownloader(progressbar=progressbar, chunk_size=CHUNK, auth=auth,
                                          timeout=TIMEOUT_S, headers={"User-Agent": "qsmbench (pooch)"})

    def __call__(self, url, output_file, pooch_obj, check_only=False):
        import requests  # noqa: PLC0415

        try:
            return self._http(url, output_file, pooch_obj, check_only=check_only)
        except requests.HTTPError as exc:
            resp = exc.response
            status = resp.status_code if resp is not None else 0
            if 400 <= status < 500 and status not in (408, 429):
                raise _PermanentHTTPError(status, resp.reason or "", url) from None
            raise


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, auth=None,
             retries: int = DEFAULT_RETRIES, what: str = "file") -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``sha256`` when given.

    Raises :class:`DownloadError` (with the HTTP status when there is one) or
    :class:`~qsmbench.datasets.cache.ChecksumError`; on any failure nothing is left under
    ``dest``.
    """
    import pooch  # noqa: PLC0415
    import requests  # noqa: PLC0415

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fetcher = pooch.Pooch(path=dest.parent, base_url="", registry={dest.name: sha256},
                          urls={dest.name: url}, retry_if_failed=int(retries))
    downloader = _Downloader(auth=auth, progressbar=progress_bar(f"download {dest.name}"))
    log.info("downloading %s (%s) from %s to %s", what, dest.name, url, dest)
    attempts = int(retries) + 1
    try:
        fetcher.fetch(dest.name, downloader=downloader)
    except _PermanentHTTPError as exc:
        hint = {
            401: "the server wants credentials (or refused the ones given)",
            403: "access is forbidden with these credentials (was the data-use agreement accepted?)",
            404: "the file is not (or no longer) at this address; if it moved, point a mirror at a copy "
                 "(QSMBENCH_MIRROR, the dataset's 'mirror' in the config, or --mirror)",
        }.get(exc.status, "the server refused the request")
        raise DownloadError(f"{what}: {url} answered {exc}: {hint}; nothing was written to {dest}",
                            status=exc.status) from None
    except ValueError as exc:  # pooch: hash mismatch (after retrying)
        _cleanup(dest, sha256)
        raise ChecksumError(f"{what}: the file downloaded from {url} is corrupt: {exc}; it was discarded "
                            f"({attempts} attempt(s)) and nothing was written to {dest}") from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise DownloadError(f"{what}: {url} failed after {attempts} attempt(s): {exc}; nothing was written to "
                            f"{dest}", status=status) from None
    except requests.RequestException as exc:
        raise DownloadError(f"{what}: the transfer from {url} failed after {attempts} attempt(s) (connection "
                            f"error, timeout or truncated transfer): {type(exc).__name__}: {exc}; nothing was "
                            f"written to {dest}") from None
    return dest


def _cleanup(dest: Path, sha256: str | None) -> None:
    """Pooch removes its temporary file; a stale file under the final name (an 'update' of a
    corrupt cached copy) must not survive either."""
    if dest.exists() and sha256:
        from .cache import sha256_file  # noqa: PLC0415

        if sha256_file(dest) != sha256:
            dest.unlink()


def remote_size(url: str, *, auth=None, timeout: float = 15.0) -> tuple[int | None, str]:
    """Size of ``url`` from a HEAD request: ``(bytes or None, note)``; never raises."""
    import requests  # noqa: PLC0415

    try:
        resp = requests.head(url, allow_redirects=True, timeout=timeout, auth=auth,
                             headers={"User-Agent": "qsmbench (pooch)"})
    except requests.RequestException as exc:
        return None, f"HEAD request failed: {type(exc).__name__}"
    if resp.status_code >= 400:
        return None, f"HEAD answered HTTP {resp.status_code} {resp.reason or ''}".strip()
    length = resp.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None, "the server did not state a size"
    return int(length), "from a HEAD request"
