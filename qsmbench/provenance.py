"""What produced a results folder, and whether this checkout would reproduce it.

Every run records (``run.json``, and from there every row of the results table):

* ``git_commit`` -- ``git describe --always --dirty`` of the qsmbench checkout that ran it, and
  ``git_dirty`` -- whether that checkout had uncommitted changes to tracked files;
* ``packages`` -- the versions of Python and of the packages that compute (:data:`PACKAGES`),
  and ``packages_sha256`` -- a digest of them (the table's column; the full list is in
  ``results/provenance.json`` and in each run.json);
* the config hash (:func:`qsmbench.config.config_hash` of the validated configuration), the
  phantom version and the input data's checksum (``data_sha256``).

The aggregate step writes ``results/provenance.json`` (:func:`write_record`), one record of the
whole folder; ``qsmbench provenance RESULTS_DIR`` (:func:`report`) prints it and compares it with
the current checkout: commit, uncommitted changes, package versions, config hash.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import InputError

#: Distributions whose versions can change a number in the results (and Snakemake, which ran it).
PACKAGES = ("numpy", "scipy", "nibabel", "torch", "pandas", "pyarrow", "snakemake")

RECORD_FILE = "provenance.json"
RECORD_KIND = "qsmbench-provenance"


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """{name: version} of Python, qsmbench and :data:`PACKAGES` (those installed), without importing them."""
    from . import __version__  # noqa: PLC0415

    out = {"python": platform.python_version(), "qsmbench": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def packages_digest(versions: Mapping[str, str]) -> str:
    """Short sha256 of ``{name: version}`` (the ``packages_sha256`` column)."""
    text = json.dumps(dict(versions), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """``git describe --always --dirty --abbrev=12`` of the checkout holding qsmbench, or None outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=where,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def is_dirty(commit: str | None) -> bool | None:
    """Whether a :func:`git_commit` string marks uncommitted changes (None when unknown)."""
    return None if not commit else commit.endswith("-dirty")


def clean_commit(commit: str | None) -> str:
    return (commit or "").removesuffix("-dirty")


# --------------------------------------------------------------------------- the folder's record
def write_record(table, path: str | os.PathLike, *, config: Mapping[str, Any] | None, config_hash: str,
                 packages: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """Write ``results/provenance.json`` from the aggregated table (and its package lists)."""
    from .io import write_json  # noqa: PLC0415

    runs = table.drop_duplicates(subset=["dataset", "perturbation", "method", "seed"])
    record = {
        "kind": RECORD_KIND,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "config_hash": config_hash,
        "config": dict(config) if config is not None else None,
        "git_commits": sorted({c for c in runs["git_commit"] if c}),
        "git_dirty": bool((runs["git_dirty"] == "true").any()) if "git_dirty" in runs else None,
        "qsmbench_versions": sorted({v for v in runs["qsmbench_version"] if v}),
        "packages": {k: dict(v) for k, v in sorted((packages or {}).items())},
        "phantom_versions": {d: sorted({v for v in g["phantom_version"] if v})
                             for d, g in runs.groupby("dataset", sort=True)},
        "data_sha256": {f"{d}/{p}": sorted({s for s in g["data_sha256"] if s})
                        for (d, p), g in runs.groupby(["dataset", "perturbation"], sort=True)},
        "runs": int(len(runs)),
        "rows": int(len(table)),
        "aggregated_by": {"git_commit": git_commit(), "packages": package_versions()},
    }
    write_json(path, record)
    return record


def find_results(folder: str | os.PathLike) -> Path:
    """The results folder itself: ``folder`` or ``folder/results`` holding ``metrics.parquet``."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder} does not exist; give a results folder (e.g. results/) of a finished run")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a results folder (e.g. results/) of a finished run")
    for candidate in (folder, folder / "results"):
        if (candidate / "metrics.parquet").is_file():
            return candidate
    raise InputError(f"{folder} is not a qsmbench results folder: neither {folder / 'metrics.parquet'} nor "
                     f"{folder / 'results' / 'metrics.parquet'} exists (the workflow writes them when it finishes; "
                     "snakemake --cores all results/metrics.parquet)")


def load(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(results folder, its provenance record); the record is rebuilt from the table when the
    folder predates ``provenance.json``."""
    from .results import read_table  # noqa: PLC0415

    results = find_results(folder)
    path = results / RECORD_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path} is not a readable provenance record: {exc}") from None
        if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
            raise InputError(f"{path} is not a qsmbench provenance record (no \"kind\": \"{RECORD_KIND}\")")
        return results, record
    table = read_table(results / "metrics.parquet")
    config_hash = sorted(set(table["config_hash"])) if "config_hash" in table else []
    record = {"kind": RECORD_KIND, "config_hash": config_hash[0] if len(config_hash) == 1 else "",
              "config": None, "git_commits": sorted({c for c in table["git_commit"] if c}),
              "git_dirty": bool((table["git_dirty"] == "true").any()),
              "qsmbench_versions": sorted({v for v in table["qsmbench_version"] if v}), "packages": {},
              "phantom_versions": {d: sorted({v for v in g["phantom_version"] if v})
                                   for d, g in table.groupby("dataset", sort=True)},
              "data_sha256": {}, "runs": int(len(table.drop_duplicates(["dataset", "perturbation", "method",
                                                                         "seed"]))),
              "rows": int(len(table)), "note": f"no {RECORD_FILE}: rebuilt from metrics.parquet"}
    return results, record


def compare(record: Mapping[str, Any], *, configfile: str | os.PathLike | None = None) -> list[tuple[str, bool, str]]:
    """[(what, same, detail)]: the record against this checkout (and ``configfile``, when given)."""
    from .phantom import PHANTOM_VERSION  # noqa: PLC0415

    checks = []
    now = git_commit()
    commits = {clean_commit(c) for c in record.get("git_commits", [])}
    if now is None:
        checks.append(("git commit", False, "this qsmbench is not a git checkout"))
    elif not commits:
        checks.append(("git commit", False, "the results record no commit"))
    else:
        same = commits == {clean_commit(now)}
        checks.append(("git commit", same,
                       f"results: {', '.join(sorted(commits))}; this checkout: {clean_commit(now)}"))
    checks.append(("uncommitted changes", not is_dirty(now) and not record.get("git_dirty"),
                   f"results: {'yes' if record.get('git_dirty') else 'no'}; this checkout: "
                   f"{'yes' if is_dirty(now) else 'no' if now else 'unknown'}"))
    current = package_versions()
    if record.get("packages"):
        diffs = []
        for versions in record["packages"].values():
            for name in sorted(set(versions) | set(current)):
                a, b = versions.get(name), current.get(name)
                if a != b and (a is not None or name in ("python", "qsmbench", "numpy", "scipy")):
                    diffs.append(f"{name} {a or '(absent)'} -> {b or '(absent)'}")
        checks.append(("package versions", not diffs, "; ".join(sorted(set(diffs))) or
                       f"same as {', '.join(record['packages'])}"))
    else:
        checks.append(("package versions", False, "not recorded"))
    versions = {v for vs in record.get("phantom_versions", {}).values() for v in vs}
    if versions:
        checks.append(("phantom version", versions == {str(PHANTOM_VERSION)},
                       f"results: {', '.join(sorted(versions))}; this checkout: {PHANTOM_VERSION}"))
    if configfile is not None:
        from .config import config_hash, load_config  # noqa: PLC0415

        h = config_hash(load_config(configfile))
        checks.append(("config hash", h == record.get("config_hash"),
                       f"results: {record.get('config_hash') or '(none)'}; {configfile}: {h}"))
    return checks


def report(folder: str | os.PathLike, *, configfile: str | os.PathLike | None = None) -> tuple[str, bool]:
    """The text ``qsmbench provenance`` prints, and whether this checkout would reproduce the folder."""
    results, record = load(folder)
    lines = [f"results folder: {results}"]
    if record.get("note"):
        lines.append(f"  ({record['note']})")
    lines += [
        f"  created:          {record.get('created_utc', '(unknown)')}",
        f"  runs / rows:      {record.get('runs')} / {record.get('rows')}",
        f"  git commit(s):    {', '.join(record.get('git_commits') or ['(unknown)'])}"
        f"{'  [uncommitted changes]' if record.get('git_dirty') else ''}",
        f"  qsmbench version: {', '.join(record.get('qsmbench_versions') or ['(unknown)'])}",
        f"  config hash:      {record.get('config_hash') or '(unknown)'}",
    ]
    for digest, versions in (record.get("packages") or {}).items():
        lines.append(f"  packages {digest}: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    for d, vs in (record.get("phantom_versions") or {}).items():
        lines.append(f"  dataset {d}: phantom version {', '.join(vs) or '(not simulated)'}")
    n_data = len(record.get("data_sha256") or {})
    if n_data:
        lines.append(f"  input volumes:    {n_data} checksummed (data_sha256 in the table and {RECORD_FILE})")
    checks = compare(record, configfile=configfile)
    ok = all(same for _, same, _ in checks)
    lines.append("")
    lines.append("this checkout against the results:")
    for what, same, detail in checks:
        lines.append(f"  [{'same' if same else 'DIFFERENT'}] {what}: {detail}")
    if configfile is None:
        lines.append("  (config not compared: give --configfile FILE, the configuration you would run)")
    lines.append("")
    lines.append("verdict: this checkout would reproduce these results" if ok else
                 "verdict: this checkout would NOT necessarily reproduce these results (see DIFFERENT above)")
    return "\n".join(lines), ok


__all__ = ["PACKAGES", "RECORD_FILE", "clean_commit", "compare", "find_results", "git_commit", "is_dirty", "load",
           "package_versions", "packages_digest", "report", "write_record"]
