"""Safe archive extraction: every member is checked before anything is written.

Refused (the whole archive, with an error naming the member): absolute paths, drive letters,
``..`` components, symbolic or hard links whose target leaves the extraction folder, device
files and FIFOs.  Extraction goes to a temporary sibling folder that is renamed into place only
when every member has been written (zip CRCs checked), so an interrupted or failed extraction
never leaves a half-filled folder under the final name.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..errors import InputError

MARKER = ".qsmbench-extracted.json"
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchiveError(InputError):
    """An archive member that would be written outside the extraction folder."""


def _check_name(archive: Path, name: str) -> str:
    """Normalised member path, or :class:`UnsafeArchiveError`."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: refused: member {name!r} contains a NUL byte")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeArchiveError(f"{archive}: refused: member {name!r} has an absolute path")
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: refused: member {name!r} contains '..' (it would be written "
                                 f"outside the extraction folder)")
    return posixpath.normpath(name.replace("\\", "/"))


def _check_link(archive: Path, name: str, target: str, *, hard: bool) -> None:
    if target.startswith(("/", "\\")) or _DRIVE.match(target):
        raise UnsafeArchiveError(f"{archive}: refused: link {name!r} points to the absolute path {target!r}")
    base = "" if hard else posixpath.dirname(name)  # hard-link targets are archive paths
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: refused: link {name!r} -> {target!r} points outside the "
                                 f"extraction folder")


def archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise InputError(f"{path} is neither a zip nor a tar archive (a truncated or wrong download?)")


def check_members(path: Path) -> list[str]:
    """Check every member of a zip/tar archive; return the member file names."""
    names = []
    if archive_kind(path) == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _check_name(path, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    _check_link(path, name, zf.read(info).decode("utf-8", "replace"), hard=False)
                if not info.is_dir():
                    names.append(name)
        return names
    try:
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                name = _check_name(path, m.name)
                if m.issym() or m.islnk():
                    _check_link(path, name, m.linkname, hard=m.islnk())
                elif m.isdev() or m.isfifo():
                    raise UnsafeArchiveError(f"{path}: refused: member {m.name!r} is a device file or FIFO")
                if m.isfile():
                    names.append(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"{path} is a corrupt tar archive: {exc}") from None
    return names


def safe_extract(path: str | os.PathLike, target: str | os.PathLike, *, fingerprint: str) -> Path:
    """Extract ``path`` into ``target`` after checking every member; return ``target``.

    ``fingerprint`` (the archive's sha256) is written to a marker file so that a later call can
    tell whether ``target`` holds this archive's complete content (:func:`is_extracted`).
    """
    path, target = Path(path), Path(target)
    members = check_members(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if archive_kind(path) == "zip":
            _extract_zip(path, tmp)
        else:
            _extract_tar(path, tmp)
        (tmp / MARKER).write_text(json.dumps({"archive": path.name, "sha256": fingerprint,
                                              "members": len(members)}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def is_extracted(target: Path, fingerprint: str) -> bool:
    marker = Path(target) / MARKER
    try:
        return json.loads(marker.read_text()).get("sha256") == fingerprint
    except (OSError, ValueError):
        return False


def _extract_zip(path: Path, dest: Path) -> None:
    root = dest.resolve()
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _check_name(path, info.filename)
                out = (root / name).resolve()
                if out != root and root not in out.parents:  # belt and braces after _check_name
                    raise UnsafeArchiveError(f"{path}: refused: member {info.filename!r} resolves outside the folder")
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                # links are written as plain files holding their target (zipfile never creates links)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise InputError(f"{path} is a corrupt zip archive: {exc}") from None


def _extract_tar(path: Path, dest: Path) -> None:
    try:
        with tarfile.open(path) as tf:
            # The 'data' filter (Python >= 3.11.4) repeats our checks and drops unsafe modes.
            tf.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"{path}: refused: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"{path} is a corrupt tar archive: {exc}") from None
