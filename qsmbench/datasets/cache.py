"""The data cache: where downloads live, checksums, and the trust-on-first-use lock file.

Layout (``cache_root()`` is ``$QSMBENCH_DATA`` or the per-user cache folder, never the
repository)::

    {root}/checksums.lock.json               sha256 recorded on first use (no official checksum)
    {root}/{cache_subdir}/{archive}          a downloaded archive (e.g. qsm2016/2017..._challenge.zip)
    {root}/{cache_subdir}/extracted/{stem}/  its safely extracted content (+ a completion marker)
    {root}/{cache_subdir}/{path}             a per-file download or a file placed by hand (rc2)

A file's *key* is its path relative to the root (``qsm2016/2017..._challenge.zip``); the lock file
and mirrors use the same keys (a mirror serves ``{mirror}/{key}``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_write

ENV_DATA = "QSMBENCH_DATA"
LOCK_NAME = "checksums.lock.json"
CHUNK = 1 << 20
REPO_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger("qsmbench.datasets")


class ChecksumError(InputError):
    """A file whose sha256 differs from the manifest's or from the one recorded on first use."""


class NoOfficialChecksumWarning(UserWarning):
    """A download was accepted without an official checksum (trust on first use)."""


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$QSMBENCH_DATA``, else the per-user cache dir."""
    if override:
        root = Path(os.path.expanduser(os.fspath(override)))
    elif os.environ.get(ENV_DATA):
        root = Path(os.path.expanduser(os.environ[ENV_DATA]))
    else:
        import pooch  # noqa: PLC0415

        root = Path(pooch.os_cache("qsmbench"))  # platformdirs' user cache dir, e.g. ~/.cache/qsmbench
    root = root.resolve()
    if (REPO_ROOT / ".git").exists() and (root == REPO_ROOT or REPO_ROOT in root.parents):
        warnings.warn(f"the data cache {root} is inside the qsmbench repository; datasets are large and "
                      f"licensed separately — point {ENV_DATA} outside the checkout", stacklevel=2)
    return root


# --------------------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike, *, content: bool = False) -> str:
    """SHA-256 of a file; with ``content=True`` a ``.gz`` file is hashed after decompression."""
    path = Path(path)
    h = hashlib.sha256()
    opener = gzip.open if content and path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise ChecksumError(f"cannot read {path} to verify it: {exc}") from None
    return h.hexdigest()


# --------------------------------------------------------------------------- locking
@contextlib.contextmanager
def file_mutex(path: str | os.PathLike):
    """An exclusive advisory lock on ``path`` (created if needed) for the duration of the block.

    Parallel workflow jobs that share the cache (the four RC2 subjects) serialise on it.  Where
    ``fcntl`` is missing (Windows) the block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- lock file
class ChecksumLock:
    """``{root}/checksums.lock.json``: sha256 of files without an official checksum, by key."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._mutex = self.root / f".{LOCK_NAME}.mutex"

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"comment": "qsmbench: sha256 of downloaded files that have no official checksum, "
                               "recorded on first use and verified on every later use.", "files": {}}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"the checksum lock file {self.path} is not valid JSON ({exc}); fix or delete it "
                             f"(deleting it re-trusts the cached files on their next use)") from None
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise InputError(f"the checksum lock file {self.path} lacks its 'files' object; fix or delete it")
        return data

    def get(self, key: str) -> dict[str, Any] | None:
        return self._read()["files"].get(key)

    def record(self, key: str, sha256: str, size_bytes: int, origin: str) -> None:
        with file_mutex(self._mutex):
            data = self._read()
            data["files"][key] = {
                "sha256": sha256, "size_bytes": int(size_bytes), "origin": origin,
                "recorded_utc": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))


def check_file(path: Path, key: str, *, official: str | None, lock: ChecksumLock, what: str) -> tuple[str, str]:
    """Verify ``path`` against its official sha256, else against the lock file.

    Returns ``(sha256, status)`` with status ``"official"`` (matches the manifest),
    ``"recorded"`` (matches the lock file) or ``"new"`` (nothing to compare with yet; the caller
    records it with :func:`trust_on_first_use` once the file has proven usable).
    """
    actual = sha256_file(path)
    if official:
        if actual != official:
            raise ChecksumError(f"{path} ({what}) has sha256 {actual}, but the manifest says {official}: the "
                                f"file is corrupt or not the expected one; delete it to download it again")
        return actual, "official"
    entry = lock.get(key)
    if entry is None:
        return actual, "new"
    if entry.get("sha256") != actual:
        raise ChecksumError(
            f"{path} ({what}) has changed since its checksum was recorded on first use in {lock.path} "
            f"(recorded {entry.get('sha256')} on {entry.get('recorded_utc', '?')}, now {actual}); no official "
            f"checksum exists, so qsmbench cannot tell which copy is right. Delete the file to download it again, "
            f"or delete the entry '{key}' from the lock file if the change is intended")
    log.info("verified %s against the checksum recorded on first use (no official checksum exists)", key)
    return actual, "recorded"


def trust_on_first_use(path: Path, key: str, sha256: str, *, lock: ChecksumLock, origin: str) -> None:
    """Record ``sha256`` for ``key`` and warn that no official checksum exists."""
    lock.record(key, sha256, path.stat().st_size, origin)
    warnings.warn(f"no official checksum exists for {key}; recorded sha256 {sha256} in {lock.path} "
                  f"(trust on first use) — every later use is verified against it",
                  NoOfficialChecksumWarning, stacklevel=3)


def check_content(path: Path, expected: str, what: str) -> None:
    """Verify the sha256 of the *uncompressed* content (``.nii.gz`` is hashed after gunzip)."""
    actual = sha256_file(path, content=True)
    if actual != expected:
        raise ChecksumError(f"{path} ({what}): the sha256 of its uncompressed content is {actual}, but the "
                            f"manifest records {expected} for the original file — this is not the published data")
