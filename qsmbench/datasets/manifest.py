"""Data manifests: find, parse and validate ``data_manifests/*.yaml``.

A manifest is the single description of a dataset: where it comes from (``source``), which file
plays which role (``files``), units, expected geometry, acquisition (B0, TE, B0 direction),
citation, licence and checksums.  The format is the JSON Schema
``qsmbench/schemas/manifest.schema.json``; :func:`load_manifest` validates against it and then
checks what a schema cannot (one field, one mask, unique reference names, ...).  Every error is a
:class:`ManifestError` that names the manifest file and the dotted key, e.g.
``data_manifests/qsm2016.yaml: key 'files.2.role': 'truthh' is not one of [...]``.

Manifests are looked up by name in, in order: the folders of ``QSMBENCH_MANIFESTS_PATH``
(``os.pathsep``-separated), ``./data_manifests`` and the repository's ``data_manifests/``.  A
value containing a path separator or ending in ``.yaml``/``.yml`` is a path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "manifest.schema.json"
REPO_MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
ENV_MANIFESTS = "QSMBENCH_MANIFESTS_PATH"

ROLES = ("field", "phase", "mask", "magnitude", "reference", "labels", "scoring_mask", "calc_moment")
#: Roles that may appear at most once (field/phase and mask exactly once, checked separately).
SINGLE_ROLES = ("magnitude", "labels", "scoring_mask", "calc_moment")
DEFAULT_UNITS = {"field": "ppm", "phase": "rad", "reference": "ppm"}
GLOB_CHARS = set("*?[")


class ManifestError(ConfigError):
    """A data manifest that does not validate; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One entry of a manifest's ``files``; ``index`` is its position (for error messages)."""

    index: int
    role: str
    path: str
    name: str | None = None
    units: str | None = None
    variable: str | None = None
    volume: int | None = None
    label_scheme: str | None = None
    optional: bool = False
    sha256: str | None = None
    content_sha256: str | None = None
    size_bytes: int | None = None
    description: str | None = None

    @property
    def key(self) -> str:
        """Identifier in fetch results: the role, or ``reference:NAME``."""
        return f"reference:{self.name}" if self.role == "reference" else self.role

    @property
    def is_glob(self) -> bool:
        return bool(GLOB_CHARS & set(self.path))

    @property
    def is_mat(self) -> bool:
        return self.path.lower().endswith(".mat")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest.  ``data`` is the plain dict as written in the YAML file."""

    path: Path
    data: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def title(self) -> str:
        return self.data["title"]

    @property
    def source(self) -> Mapping[str, Any]:
        return self.data["source"]

    @property
    def source_type(self) -> str:
        return self.data["source"]["type"]

    @property
    def acquisition(self) -> Mapping[str, Any]:
        return self.data["acquisition"]

    @property
    def geometry(self) -> Mapping[str, Any]:
        return self.data.get("geometry", {})

    @property
    def files(self) -> list[FileSpec]:
        return [FileSpec(index=i, **spec) for i, spec in enumerate(self.data["files"])]

    @property
    def cache_subdir(self) -> str:
        """Folder under the cache root holding this dataset's downloads (url and gated sources)."""
        return self.source.get("cache_subdir", self.name)

    @property
    def has_truth(self) -> bool:
        """Whether the dataset has at least one reference susceptibility map (or is simulated)."""
        if self.source_type == "simulated":
            return True
        if self.source_type == "local":  # an optional reference counts only when its file is there
            return any(f.role == "reference" and (not f.optional or self.local_path(f).is_file())
                       for f in self.files)
        return any(f.role == "reference" for f in self.files)

    @property
    def reference_names(self) -> list[str]:
        return [f.name for f in self.files if f.role == "reference"]

    def local_root(self) -> Path:
        """For local sources: the folder relative paths start from."""
        root = self.source.get("root")
        if root is None:
            return self.path.parent
        root = Path(os.path.expandvars(os.path.expanduser(root)))
        return root if root.is_absolute() else self.path.parent / root

    def local_path(self, spec: FileSpec) -> Path:
        p = Path(os.path.expandvars(os.path.expanduser(spec.path)))
        return p if p.is_absolute() else self.local_root() / p


@lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return json.load(fh)


# --------------------------------------------------------------------------- lookup
def search_path() -> list[Path]:
    """Folders searched for ``NAME.yaml``, in order."""
    dirs = [Path(p) for p in os.environ.get(ENV_MANIFESTS, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "data_manifests", REPO_MANIFESTS]
    seen, out = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def list_manifests() -> dict[str, Path]:
    """``{name: path}`` of every manifest on the search path (first one wins)."""
    found: dict[str, Path] = {}
    for d in search_path():
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
                found.setdefault(p.stem, p)
    return found


def looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith((".yaml", ".yml"))


def find_manifest(name_or_path: str | os.PathLike, *, base_dir: str | os.PathLike | None = None) -> Path:
    """The manifest file for a name (searched) or a path (relative to ``base_dir`` or the cwd)."""
    value = os.fspath(name_or_path)
    if looks_like_path(value):
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = Path(base_dir or Path.cwd()) / p
        if not p.is_file():
            raise ManifestError(f"data manifest not found: {p}")
        return p
    available = list_manifests()
    if value not in available:
        raise ManifestError(f"unknown dataset manifest '{value}'; available: {', '.join(sorted(available)) or '(none)'}"
                            f" (searched {', '.join(str(d) for d in search_path())})")
    return available[value]


# --------------------------------------------------------------------------- validation
def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    best = error
    while best.context and not _custom_message(best):
        best = max(best.context, key=lambda e: len(list(e.absolute_path)))
    return best


def _custom_message(error: jsonschema.ValidationError) -> str | None:
    custom = error.schema.get("errorMessage") if isinstance(error.schema, Mapping) else None
    if isinstance(custom, Mapping):
        return custom.get(error.validator)
    return None


def _format(error: jsonschema.ValidationError) -> str:
    custom = _custom_message(error)
    if custom:
        return f"{error.instance!r} {custom}" if error.validator == "pattern" else custom
    if error.validator == "additionalProperties" and error.validator_value is False:
        return error.message + " (unknown key)"
    return error.message


def validate_manifest(data: Any, *, source: str = "manifest", stem: str | None = None) -> dict:
    """Validate a parsed manifest; return a plain-dict copy.  Raises :class:`ManifestError`."""
    if not isinstance(data, Mapping):
        raise ManifestError(f"{source}: must be a mapping (YAML object), got {type(data).__name__}")
    data = json.loads(json.dumps(data, default=str))
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(list(e.absolute_path)), list(map(str, e.path))))
    if errors:
        err = _most_specific(errors[0])
        raise ManifestError(f"{source}: key '{_key_path(err)}': {_format(err)}")
    _check_semantics(data, source, stem)
    return data


def _fail(source: str, key: str, message: str):
    raise ManifestError(f"{source}: key '{key}': {message}")


def _check_semantics(data: dict, source: str, stem: str | None) -> None:
    if stem is not None and data["name"] != stem:
        _fail(source, "name", f"'{data['name']}' must equal the file name without extension ('{stem}')")
    src = data["source"]
    kind = src["type"]
    if kind == "simulated":
        if "files" in data:
            _fail(source, "files", "a simulated source generates its files: remove 'files'")
        return
    files = data["files"]
    roles = [f["role"] for f in files]
    n_input = roles.count("field") + roles.count("phase")
    if n_input != 1:
        _fail(source, "files", f"needs exactly one file with role 'field' or 'phase', found {n_input}")
    if roles.count("mask") != 1:
        _fail(source, "files", f"needs exactly one file with role 'mask', found {roles.count('mask')}")
    for role in SINGLE_ROLES:
        if roles.count(role) > 1:
            _fail(source, "files", f"at most one file may have role '{role}', found {roles.count(role)}")
    seen_refs: set[str] = set()
    for i, f in enumerate(files):
        key = f"files.{i}"
        if f["role"] == "reference":
            if f["name"] in seen_refs:
                _fail(source, f"{key}.name", f"reference name '{f['name']}' is used twice")
            seen_refs.add(f["name"])
        elif "name" in f:
            _fail(source, f"{key}.name", "only files with role 'reference' have a name")
        if "label_scheme" in f and f["role"] != "labels":
            _fail(source, f"{key}.label_scheme", "only files with role 'labels' have a label_scheme")
        if "units" in f and f["role"] not in DEFAULT_UNITS:
            _fail(source, f"{key}.units", f"role '{f['role']}' has no units (only field, phase and reference)")
        is_mat = f["path"].lower().endswith(".mat")
        if is_mat and "variable" not in f:
            _fail(source, f"{key}.variable", f"{f['path']} is a MATLAB file: name the variable to read")
        if "variable" in f and not is_mat:
            _fail(source, f"{key}.variable", "'variable' applies to MATLAB .mat files only")
        if f["role"] == "calc_moment" and not is_mat:
            _fail(source, f"{key}.path", "the calc_moment (a scalar) is read from a MATLAB .mat file")
        if f["role"] in ("field", "phase") and is_mat:
            _fail(source, f"{key}.path", "the field (or phase) must be a NIfTI file: it defines the grid and affine")
        per_file_download = kind == "gated" or (kind == "url" and "base_url" in src)
        if per_file_download and GLOB_CHARS & set(f["path"]):
            _fail(source, f"{key}.path", "glob patterns are allowed only inside archives; a per-file download "
                                         "needs the exact path")
    if "phase" in roles and "te_s" not in data["acquisition"]:
        _fail(source, "acquisition.te_s", "a 'phase' file (rad) needs the echo time to convert it to ppm")


def parse_manifest_text(text: str, *, source: str, stem: str | None = None) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source} is not valid YAML: {exc}") from None
    return validate_manifest(data, source=source, stem=stem)


def load_manifest(name_or_path: str | os.PathLike | Manifest, *,
                  base_dir: str | os.PathLike | None = None) -> Manifest:
    """Find, read and validate a manifest (a :class:`Manifest` is returned unchanged)."""
    if isinstance(name_or_path, Manifest):
        return name_or_path
    path = find_manifest(name_or_path, base_dir=base_dir)
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _load_cached(path: str, _mtime_ns: int) -> Manifest:
    p = Path(path)
    data = parse_manifest_text(p.read_text(), source=str(_display(p)), stem=p.stem)
    return Manifest(path=p, data=data)


def _display(path: Path) -> Path:
    """A short name for messages: relative to the cwd when below it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
