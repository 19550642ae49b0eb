"""Getting a manifest's files into the cache, verified: :func:`fetch` and its dry run :func:`plan_fetch`.

Sources (``source.type`` in the manifest):

``url``
    Public data: one ``archive`` (downloaded, verified, safely extracted; the files are then
    found inside it by their ``path`` globs) or per-file downloads from ``base_url``.
``gated``
    A repository that needs sign-in and a data-use agreement (RC2).  Files already in the cache
    (downloaded earlier or placed there by hand) are used as they are; missing ones are
    downloaded over WebDAV with the credentials named in ``source.credentials`` (environment
    variables); with neither, :class:`GatedDataError` explains the agreement and lists exactly
    which file goes where.
``local``
    The user's own files, used in place (nothing is copied or recorded).
``simulated``
    Generated on demand; nothing to fetch.

Every file is verified on every use: against the manifest's sha256 when it has one, otherwise
against the sha256 recorded in the cache's lock file on first use (with a warning that no
official checksum exists).  Known hashes of the *uncompressed* content (``content_sha256``)
are checked as well, so ``.nii`` and ``.nii.gz`` copies of the same image verify alike.

A mirror (``QSMBENCH_MIRROR``, a config's ``mirror``, ``qsmbench fetch --mirror``) replaces
the origin: it serves each file at ``{mirror}/{key}``, the same relative path as in the cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import InputError, QsmbenchError
from .cache import ChecksumLock, cache_root, check_content, check_file, file_mutex, trust_on_first_use
from .download import DEFAULT_RETRIES, download, remote_size
from .extract import is_extracted, safe_extract
from .manifest import FileSpec, Manifest, load_manifest

ENV_MIRROR = "QSMBENCH_MIRROR"
FETCH_MUTEX = ".qsmbench-fetch.mutex"

log = logging.getLogger("qsmbench.datasets")


class GatedDataError(QsmbenchError):
    """Gated data that are neither in the cache nor downloadable without credentials."""


@dataclasses.dataclass
class FetchResult:
    """The located, verified files of one manifest."""

    manifest: Manifest
    files: dict[str, Path]                       # FileSpec.key -> path
    checksums: dict[str, dict[str, Any]]         # cache key -> {"sha256", "status"}
    origins: list[str]                           # URLs or folders the files came from
    cache: Path | None

    def path(self, spec: FileSpec) -> Path | None:
        return self.files.get(spec.key)


@dataclasses.dataclass
class PlanItem:
    """One download of a dry run."""

    what: str
    url: str
    dest: Path
    cached: bool
    size_bytes: int | None
    size_note: str
    checksum: str
    needs_credentials: bool = False


# --------------------------------------------------------------------------- URLs
def _mirror(mirror: str | None) -> str | None:
    m = mirror or os.environ.get(ENV_MIRROR) or None
    if m and not urlsplit(m).scheme:
        raise InputError(f"mirror {m!r} is not a URL (expected http://... or https://...)")
    return m.rstrip("/") if m else None


def archive_filename(manifest: Manifest) -> str:
    archive = manifest.source["archive"]
    name = archive.get("filename") or Path(urlsplit(archive["url"]).path).name
    if not name or name in (".", "..") or "/" in name:
        raise InputError(f"{manifest.path}: key 'source.archive.url': cannot derive a file name from "
                         f"{archive['url']!r}; set source.archive.filename")
    return name


def _url_for(manifest: Manifest, key_rel: str, mirror: str | None) -> str:
    """URL of a file given its path relative to the dataset's cache folder."""
    if mirror:
        return f"{mirror}/{manifest.cache_subdir}/{key_rel}"
    src = manifest.source
    if "archive" in src:
        return src["archive"]["url"]
    return f"{src['base_url'].rstrip('/')}/{key_rel}"


def _credentials(manifest: Manifest) -> tuple[str, str] | None:
    cred = manifest.source.get("credentials")
    if not cred:
        return None
    user, password = os.environ.get(cred["username_env"]), os.environ.get(cred["password_env"])
    return (user, password) if user and password else None


# --------------------------------------------------------------------------- fetch
def fetch(manifest: str | os.PathLike | Manifest, *, cache: str | os.PathLike | None = None,
          mirror: str | None = None, retries: int = DEFAULT_RETRIES) -> FetchResult:
    """Download (if needed), verify and locate every file of ``manifest``.

    Raises :class:`~qsmbench.datasets.download.DownloadError`,
    :class:`~qsmbench.datasets.cache.ChecksumError`, :class:`GatedDataError` or
    :class:`~qsmbench.errors.InputError` (unsafe or corrupt archive, a missing file), each naming
    the file and what to do.
    """
    m = load_manifest(manifest)
    kind = m.source_type
    if kind == "simulated":
        return FetchResult(m, {}, {}, [f"simulated ({m.source['generator']})"], None)
    if kind == "local":
        return _fetch_local(m)
    root = cache_root(cache)
    folder = root / m.cache_subdir
    lock = ChecksumLock(root)
    mirror = _mirror(mirror)
    with file_mutex(folder / FETCH_MUTEX):
        if kind == "url" and "archive" in m.source:
            result = _fetch_archive(m, root, folder, lock, mirror, retries)
        else:
            result = _fetch_files(m, root, folder, lock, mirror, retries)
    return result


def _fetch_local(m: Manifest) -> FetchResult:
    files, checksums = {}, {}
    for spec in m.files:
        p = m.local_path(spec)
        if not p.is_file():
            if spec.optional:
                log.warning("%s: optional %s file %s not found; skipped", m.name, spec.key, p)
                continue
            raise InputError(f"{m.path}: key 'files.{spec.index}.path': the {spec.key} file {p} does not exist")
        if spec.sha256:
            sha, status = check_file(p, str(p), official=spec.sha256, lock=ChecksumLock(p.parent), what=spec.key)
            checksums[str(p)] = {"sha256": sha, "status": status}
        _check_content(m, spec, p)
        files[spec.key] = p
    return FetchResult(m, files, checksums, [str(m.local_root())], None)


def _fetch_archive(m: Manifest, root: Path, folder: Path, lock: ChecksumLock, mirror: str | None,
                   retries: int) -> FetchResult:
    spec = m.source["archive"]
    name = archive_filename(m)
    path = folder / name
    key = f"{m.cache_subdir}/{name}"
    url = _url_for(m, name, mirror)
    official = spec.get("sha256")
    fresh = False
    if path.exists():
        log.info("%s: using the cached archive %s (no download)", m.name, path)
    else:
        download(url, path, sha256=official, retries=retries, what=f"{m.name} archive")
        fresh = True
    files = {}
    try:
        sha, status = check_file(path, key, official=official, lock=lock, what=f"{m.name} archive")
        target = folder / "extracted" / _stem(name)
        if is_extracted(target, sha):
            log.info("%s: using the extracted content in %s", m.name, target)
        else:
            log.info("%s: extracting %s to %s", m.name, path, target)
            safe_extract(path, target, fingerprint=sha)
        for f in m.files:
            found = _locate(target, f, m)
            if found is None:
                continue
            if f.sha256:
                check_file(found, str(found), official=f.sha256, lock=lock, what=f"{m.name} {f.key}")
            _check_content(m, f, found)
            files[f.key] = found
    except InputError:
        if fresh:  # a bad fresh download is not kept: the next run downloads it again
            path.unlink(missing_ok=True)
        raise
    if status == "new":  # only once the archive proved usable
        trust_on_first_use(path, key, sha, lock=lock, origin=url)
        status = "recorded"
    return FetchResult(m, files, {key: {"sha256": sha, "status": status}}, [url], root)


def _stem(name: str) -> str:
    for ext in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".tar"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name + ".d"


def _locate(target: Path, spec: FileSpec, m: Manifest) -> Path | None:
    """The one file inside the extracted archive matching ``spec.path`` (at any depth)."""
    matches = sorted(p for p in target.rglob(spec.path) if p.is_file())
    if not matches:
        if spec.optional:
            log.warning("%s: optional %s file %s is not in the archive; skipped", m.name, spec.key, spec.path)
            return None
        listing = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
        shown = ", ".join(listing[:20]) + (" ..." if len(listing) > 20 else "")
        raise InputError(f"{m.path}: key 'files.{spec.index}.path': no file matching {spec.path!r} in the "
                         f"archive (extracted to {target}; it holds: {shown or 'nothing'})")
    if len(matches) > 1:
        # the same image stored as .nii and .nii.gz side by side is not ambiguous; anything else is
        if len({str(p).removesuffix(".gz") for p in matches}) > 1:
            raise InputError(f"{m.path}: key 'files.{spec.index}.path': {spec.path!r} matches several files in "
                             f"the archive: {', '.join(str(p.relative_to(target)) for p in matches)}")
        log.info("%s: %s matches %s; using %s", m.name, spec.path, [p.name for p in matches], matches[0].name)
    return matches[0]


def _fetch_files(m: Manifest, root: Path, folder: Path, lock: ChecksumLock, mirror: str | None,
                 retries: int) -> FetchResult:
    auth = _credentials(m)
    gated = m.source_type == "gated"
    files: dict[str, Path] = {}
    checksums: dict[str, dict[str, Any]] = {}
    missing = _unique_paths(s for s in m.files if not (folder / s.path).is_file())
    if gated and auth is None:
        required = [s for s in missing if not s.optional]
        if required:
            raise GatedDataError(gated_instructions(m, root, required, [s for s in missing if s.optional]))
        for s in missing:
            log.warning("%s: optional %s file %s is not in the cache and no credentials are set; skipped",
                        m.name, s.key, folder / s.path)
    origins = set()
    for spec in m.files:
        path = folder / spec.path
        key = f"{m.cache_subdir}/{spec.path}"
        url = _url_for(m, spec.path, mirror)
        fresh = False
        if not path.is_file():
            if gated and auth is None:
                continue  # optional, warned above
            try:
                download(url, path, sha256=spec.sha256, auth=auth, retries=retries, what=f"{m.name} {spec.key}")
            except QsmbenchError as exc:
                if spec.optional and getattr(exc, "status", None) == 404:
                    log.warning("%s: optional %s file not found at %s; skipped", m.name, spec.key, url)
                    continue
                raise
            fresh = True
            origins.add(f"{mirror}/{m.cache_subdir}" if mirror else m.source["base_url"])
        else:
            log.info("%s: using the cached %s", m.name, path)
            origins.add(str(folder))
        try:
            sha, status = check_file(path, key, official=spec.sha256, lock=lock, what=f"{m.name} {spec.key}")
            _check_content(m, spec, path)
        except InputError:
            if fresh:
                path.unlink(missing_ok=True)
            raise
        if status == "new":
            trust_on_first_use(path, key, sha, lock=lock, origin=url if fresh else f"placed by hand in {folder}")
            status = "recorded"
        checksums[key] = {"sha256": sha, "status": status}
        files[spec.key] = path
    return FetchResult(m, files, checksums, sorted(origins), root)


def _unique_paths(specs) -> list[FileSpec]:
    """One spec per path (RC2's scoring mask and calcification moment share one .mat file); a path
    is optional only if every spec using it is."""
    by_path: dict[str, FileSpec] = {}
    for s in specs:
        if s.path not in by_path or (by_path[s.path].optional and not s.optional):
            by_path[s.path] = s
    return list(by_path.values())


def _check_content(m: Manifest, spec: FileSpec, path: Path) -> None:
    if spec.content_sha256:
        check_content(path, spec.content_sha256, f"{m.name} {spec.key}")
        log.info("%s: %s content verified against the known sha256", m.name, spec.key)


# --------------------------------------------------------------------------- gated help
def gated_instructions(m: Manifest, root: Path, missing: list[FileSpec], optional: list[FileSpec] = ()) -> str:
    """The message for gated data that are neither cached nor downloadable."""
    src = m.source
    cred = src["credentials"]
    folder = root / m.cache_subdir
    width = max(len(s.path) for s in [*missing, *optional])
    where = "\n".join(f"    {s.path:<{width}}  ->  {folder / s.path}" for s in missing)
    if optional:
        roles = {p: ", ".join(f.key for f in m.files if f.path == p) for p in (s.path for s in optional)}
        where += ("\nand, used when present (without them: " + "; ".join(
            f"no {roles[s.path]}" for s in optional) + "):\n" + "\n".join(
            f"    {s.path:<{width}}  ->  {folder / s.path}" for s in optional))
    doi = f" (doi:{src['doi']})" if src.get("doi") else ""
    extra = f"\n{textwrap.fill(src['instructions'], 96)}\n" if src.get("instructions") else ""
    return (
        f"dataset '{m.name}' ({m.title}) is gated: {src['repository']}{doi} shares it only with signed-in "
        f"users who accept its data-use agreement ({src['agreement']}). qsmbench cannot accept the agreement "
        f"for you and an anonymous download is impossible. These files are missing from the cache:\n{where}\n\n"
        f"Either\n"
        f"  1. sign in at {src['landing_page']}, request access, read and accept the agreement, create your "
        f"data-access (WebDAV) credentials in the repository, then set\n"
        f"       export {cred['username_env']}=<data-access user name>\n"
        f"       export {cred['password_env']}=<data-access password>\n"
        f"     and run again: the files are downloaded from {src['base_url']} and verified; or\n"
        f"  2. download the files yourself after accepting the agreement and put each one at the path shown "
        f"above (the cache is {root}; set QSMBENCH_DATA to use another).\n"
        f"No checksums are published for these files: qsmbench records them on first use in "
        f"{root / 'checksums.lock.json'} and verifies every later use against them.{extra}"
    )


# --------------------------------------------------------------------------- availability
def availability(manifest: str | os.PathLike | Manifest, *, cache: str | os.PathLike | None = None,
                 mirror: str | None = None, timeout: float = 10.0) -> str | None:
    """Why the data of ``manifest`` cannot be had now, or None when :func:`fetch` can get them.

    Downloads nothing: the files already in the cache need no request; a gated dataset whose
    required files are absent and for which no credentials are set cannot be had; otherwise one
    HEAD request (``timeout`` seconds) tells whether the first missing file's server answers
    (an HTTP error other than 405 "method not allowed" counts as unreachable).  The workflow
    asks this at start-up to skip such a dataset with a warning (or, with
    ``strict_datasets: true``, to stop).
    """
    m = load_manifest(manifest)
    if m.source_type in ("simulated", "local"):
        return None
    root = cache_root(cache)
    folder = root / m.cache_subdir
    mirror = _mirror(mirror)
    fetch_cmd = f"'qsmbench fetch {m.name}'"
    if m.source_type == "url" and "archive" in m.source:
        name = archive_filename(m)
        missing = [name] if not (folder / name).is_file() else []
    else:
        missing = [s.path for s in _unique_paths(m.files) if not s.optional and not (folder / s.path).is_file()]
    if not missing:
        return None
    auth = _credentials(m)
    if m.source_type == "gated" and auth is None:
        cred = m.source["credentials"]
        doi = f"doi:{m.source['doi']}, " if m.source.get("doi") else ""
        return (f"dataset '{m.name}' is gated ({doi}sign-in and a data-use agreement) and {len(missing)} of its "
                f"files are not in the cache {folder}, with no {cred['username_env']}/{cred['password_env']} set; "
                f"{fetch_cmd} explains how to get access and where to put the files")
    url = _url_for(m, missing[0], mirror)
    problem = _unreachable(url, auth=auth, timeout=timeout)
    if problem is None:
        return None
    what = f"the file {missing[0]} is" if len(missing) == 1 else f"{len(missing)} files are"
    return (f"dataset '{m.name}' cannot be downloaded now: {url} {problem}, and {what} not in the cache "
            f"{folder}. Run {fetch_cmd} where the network is (or set QSMBENCH_MIRROR, or place the files there "
            f"by hand: 'qsmbench fetch {m.name} --dry-run' lists them)")


def _unreachable(url: str, *, auth=None, timeout: float = 10.0) -> str | None:
    """None when ``url``'s server answers a HEAD request with success (or 405); else why not."""
    import requests  # noqa: PLC0415

    try:
        resp = requests.head(url, allow_redirects=True, timeout=timeout, auth=auth,
                             headers={"User-Agent": "qsmbench (pooch)"})
    except requests.RequestException as exc:
        return f"is unreachable ({type(exc).__name__})"
    if resp.status_code >= 400 and resp.status_code != 405:
        return f"answered HTTP {resp.status_code} {resp.reason or ''}".rstrip()
    return None


# --------------------------------------------------------------------------- dry run
def plan_fetch(manifest: str | os.PathLike | Manifest, *, cache: str | os.PathLike | None = None,
               mirror: str | None = None, head: bool = True) -> tuple[Manifest, Path | None, list[PlanItem]]:
    """What :func:`fetch` would download, where to and how big -- downloading nothing.

    Sizes come from the manifest (``size_bytes``) or, when it has none and ``head`` is true, from
    a HEAD request; cached files need no request at all.
    """
    m = load_manifest(manifest)
    if m.source_type in ("simulated", "local"):
        return m, None, []
    root = cache_root(cache)
    folder = root / m.cache_subdir
    mirror = _mirror(mirror)
    lock = ChecksumLock(root)
    auth = _credentials(m)
    items = []
    if m.source_type == "url" and "archive" in m.source:
        spec = m.source["archive"]
        name = archive_filename(m)
        entries = [(f"{m.name} archive", name, spec.get("sha256"), spec.get("size_bytes"), spec.get("size_hint"))]
    else:
        entries = [(f"{m.name} {s.key}" + (" (optional)" if s.optional else ""), s.path, s.sha256, s.size_bytes,
                    None) for s in _unique_paths(m.files)]
    for what, rel, sha, size, hint in entries:
        dest = folder / rel
        url = _url_for(m, rel, mirror)
        key = f"{m.cache_subdir}/{rel}"
        cached = dest.is_file()
        if sha:
            checksum = "official sha256 (manifest)"
        elif lock.get(key):
            checksum = f"recorded on first use in {lock.path}"
        else:
            checksum = "no official checksum: recorded on first use (trust on first use)"
        needs_cred = m.source_type == "gated" and auth is None and not cached
        if cached:
            size, note = dest.stat().st_size, "in the cache, no download"
        elif size:
            note = "from the manifest"
        elif head and not needs_cred:
            size, note = remote_size(url, auth=auth)
        else:
            size, note = None, "needs credentials to ask the server" if needs_cred else "not asked"
        if size is None and hint:
            note += f"; the manifest says {hint}"
        items.append(PlanItem(what, url, dest, cached, size, note, checksum, needs_cred))
    return m, root, items


def _human(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def format_plan(m: Manifest, root: Path | None, items: list[PlanItem]) -> str:
    lines = [f"{m.name}: {m.title}", f"  source: {m.source_type}" + (f"; cache: {root}" if root else "")]
    if m.source_type == "local":
        lines.append(f"  local files, used in place (nothing to download) from {m.local_root()}")
    if m.source_type == "simulated":
        lines.append("  simulated on demand (nothing to download)")
    todo = [i for i in items if not i.cached]
    for i in items:
        state = ("cached" if i.cached else "missing (gated: needs credentials, or place it by hand)"
                 if i.needs_credentials else "would download")
        lines += [f"  {state}: {i.what}",
                  f"      from {i.url}",
                  f"      to   {i.dest}",
                  f"      size: {_human(i.size_bytes)} ({i.size_note})",
                  f"      checksum: {i.checksum}"]
    if items:
        known = [i.size_bytes for i in todo if i.size_bytes is not None]
        total = _human(sum(known)) if known else "unknown"
        unknown = len(todo) - len(known)
        lines.append(f"  total to download: {len(todo)} file(s), {total}"
                     + (f" (+ {unknown} of unknown size)" if unknown and known else ""))
    if any(i.needs_credentials for i in items):
        cred = m.source["credentials"]
        lines.append(f"  gated: set {cred['username_env']} and {cred['password_env']} (see the message of "
                     f"'qsmbench fetch {m.name}') or place the files by hand at the paths above")
    lines.append(f"  cite: {'; '.join(m.data['citation'])}")
    lines.append(f"  licence: {m.data['licence']}")
    return "\n".join(lines)
