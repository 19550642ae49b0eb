"""Workflow configuration: JSON-Schema validation with readable errors, and derived views.

The schema (``qsmbench/schemas/config.schema.json``) describes every key; defaults are written
in ``config/config.yaml``.  Beyond the schema, :func:`validate_config` checks what only the
registry knows: method names and their parameter names/types.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError, MethodError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.json"


@lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return json.load(fh)


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config file and validate it (errors name the file and the key)."""
    path = Path(path)
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return validate_config(config or {}, source=str(path))


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def validate_config(config: Mapping[str, Any], *, source: str = "config",
                    check_methods: bool = True) -> dict:
    """Validate ``config`` against the schema and the method registry; return a plain dict.

    Raises :class:`ConfigError` with the file and the dotted key path of the first problem,
    e.g. ``config/config.yaml: key 'datasets.phantom.shape': 'x' is not of type 'array'``.
    """
    config = json.loads(json.dumps(config))  # plain types, a copy
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), e.path))
    if errors:
        err = _most_specific(errors[0])
        raise ConfigError(f"{source}: key '{_key_path(err)}': {err.message}")
    if check_methods:
        _check_methods(config, source)
    return config


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For if/then/allOf failures, report the innermost error (it names the actual key)."""
    best = error
    while best.context:
        best = max(best.context, key=lambda e: len(list(e.absolute_path)))
    return best


def method_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{run_id: {"method", "profile", "params"}}`` with defaults filled in."""
    runs = {}
    for run_id, spec in config["methods"].items():
        spec = spec or {}
        runs[run_id] = {
            "method": spec.get("method", run_id),
            "profile": spec.get("profile", config.get("profile", "quick")),
            "params": dict(spec.get("params", {})),
        }
    return runs


def _check_methods(config: Mapping[str, Any], source: str) -> None:
    from .registry import method_infos  # noqa: PLC0415 - registry imports method files

    try:
        infos = {i.name: i for i in method_infos(config.get("method_dirs", []))}
    except MethodError as exc:
        raise ConfigError(f"{source}: key 'method_dirs': {exc}") from None
    for run_id, run in method_runs(config).items():
        name = run["method"]
        key = f"methods.{run_id}"
        if name not in infos:
            raise ConfigError(f"{source}: key '{key}': unknown method '{name}'; registered methods: "
                              f"{', '.join(infos) or '(none)'}")
        info = infos[name]
        if info.cls is None:  # unavailable at import time; the run will record the reason
            continue
        try:
            info.cls.resolve_parameters(run["params"], profile=run["profile"])
        except ConfigError as exc:
            raise ConfigError(f"{source}: key '{key}': {exc}") from None


def config_hash(config: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of ``config`` (recorded as provenance)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
