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

from .devices import candidate_profiles
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
    _cli_booleans(config)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), e.path))
    if errors:
        err = _most_specific(errors[0])
        raise ConfigError(f"{source}: key '{_key_path(err)}': {err.message}")
    _check_datasets(config, source)
    if check_methods:
        _check_methods(config, source)
    plan = perturbation_plan(config, source=source)
    _check_run_filters(config, plan, source)
    if check_methods:
        _check_tuning(config, plan, source)
    return config


def _check_tuning(config: Mapping[str, Any], plan: Mapping[str, Any], source: str) -> None:
    """Tuning keys against the registry and the datasets (:func:`qsmbench.tuning.check_config`)."""
    from .registry import method_infos  # noqa: PLC0415
    from .tuning import check_config  # noqa: PLC0415

    infos = {i.name: i for i in method_infos(config.get("method_dirs", []))}
    check_config(config, infos, plan, lambda d: dataset_has_truth(config, d), source)


def _cli_booleans(config: dict) -> None:
    """Top-level boolean keys given as text (``snakemake --config strict_datasets=true`` passes the
    string 'true') become booleans; anything else is left for the schema to reject."""
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    for key, spec in schema()["properties"].items():
        value = config.get(key)
        if spec.get("type") == "boolean" and isinstance(value, str) and value.strip().lower() in words:
            config[key] = words[value.strip().lower()]


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For if/then/allOf failures, report the innermost error (it names the actual key)."""
    best = error
    while best.context:
        best = max(best.context, key=lambda e: len(list(e.absolute_path)))
    return best


def method_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{run_id: {"method", "profile", "params", "timeout_s", "mem_mb"}}`` with defaults filled in.

    ``timeout_s`` and ``mem_mb`` are None unless the run sets them (the runner then uses the
    method's default time limit for the profile, the workflow the rule's default memory).
    """
    runs = {}
    for run_id, spec in config["methods"].items():
        spec = spec or {}
        runs[run_id] = {
            "method": spec.get("method", run_id),
            "profile": spec.get("profile", config.get("profile", "auto")),
            "params": dict(spec.get("params", {})),
            "timeout_s": spec.get("timeout_s"),
            "mem_mb": spec.get("mem_mb"),
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
            for profile in candidate_profiles(run["profile"]):  # auto: quick on the CPU, paper on CUDA
                info.cls.resolve_parameters(run["params"], profile=_defined(info.cls, profile))
        except ConfigError as exc:
            raise ConfigError(f"{source}: key '{key}': {exc}") from None


def _defined(cls, profile: str | None) -> str | None:
    """``profile``, or ``default`` when ``auto`` would fall back to the defaults (see resolve_profile)."""
    return profile if profile is None or profile in cls.profiles else "default"


def without_datasets(config: Mapping[str, Any], names) -> dict:
    """A copy of a validated ``config`` without the datasets ``names`` (e.g. gated data not present).

    Perturbation entries that list datasets lose those names, and an entry left with none is
    dropped, so that :func:`perturbation_plan` of the result plans only the remaining datasets.
    """
    names = set(names)
    out = json.loads(json.dumps(config))
    out["datasets"] = {d: spec for d, spec in out["datasets"].items() if d not in names}
    perts = []
    for item in out.get("perturbations", []):
        if isinstance(item, Mapping) and "datasets" in item:
            kept = [d for d in item["datasets"] if d not in names]
            if not kept:
                continue
            item = {**item, "datasets": kept}
        perts.append(item)
    out["perturbations"] = perts
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of ``config`` (recorded as provenance)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- perturbations
def dataset_has_truth(config: Mapping[str, Any], name: str) -> bool:
    """Whether dataset ``name`` has a ground-truth χ, so that perturbations needing one apply.

    The embedded phantom always has one.  Other dataset types answer from their data manifest
    (extend this function for them); a type it does not know is treated as having none: such a
    dataset gets only ``none`` (and noise on its measured field when an entry lists it).
    """
    spec = config["datasets"][name]
    if spec.get("type") == "manifest":
        return dataset_manifest(config, name).has_truth
    return spec.get("type") in SIMULATED_TYPES


def dataset_manifest(config: Mapping[str, Any], name: str):
    """The validated :class:`qsmbench.datasets.Manifest` of a ``type: manifest`` dataset
    (``manifest`` defaults to the dataset id; a relative path starts from the working directory)."""
    from .datasets import load_manifest  # noqa: PLC0415

    spec = config["datasets"][name]
    return load_manifest(spec.get("manifest", name))


#: Dataset types qsmbench simulates (with a ground truth and a seed that must be a test seed).
SIMULATED_TYPES = ("phantom", "brainweb")


def _check_datasets(config: Mapping[str, Any], source: str) -> None:
    """Every manifest dataset names a manifest that exists and validates; every simulated
    dataset's seed is a test seed (:mod:`qsmbench.seeds`): never a training or tuning subject."""
    from . import seeds  # noqa: PLC0415

    def check_seed(seed, where: str) -> None:
        try:
            seeds.check_role(seed, "test", where=where)
        except ValueError as exc:
            ranges = ", ".join(f"{role} {lo}..{hi - 1}" for role, (lo, hi) in seeds.RANGES.items())
            raise ConfigError(f"{source}: {exc}. A benchmark dataset must not be a subject any method was "
                              f"trained or tuned on (seed ranges: {ranges})") from None

    for name, spec in config["datasets"].items():
        if spec.get("type") in SIMULATED_TYPES:
            check_seed(spec.get("seed", 0), f"key 'datasets.{name}.seed'")
        if spec.get("type") != "manifest":
            continue
        try:
            m = dataset_manifest(config, name)
        except ConfigError as exc:  # ManifestError: names the manifest file and its key
            raise ConfigError(f"{source}: key 'datasets.{name}.manifest': {exc}") from None
        if m.source_type == "simulated":
            check_seed(m.source.get("parameters", {}).get("seed", 0),
                       f"key 'datasets.{name}' (manifest {m.path}: key 'source.parameters.seed')")


def dataset_geometry(config: Mapping[str, Any], name: str) -> dict[str, tuple] | None:
    """``shape``, ``voxel_size_mm`` and ``b0_dir`` of dataset ``name`` when the config fixes them.

    For a simulated dataset (phantom, brainweb): its keys, or :func:`qsmbench.phantom.make_phantom`'s
    defaults.  ``None`` when only the data know (the perturb job checks the same constraints then, with an error naming
    the volume).
    """
    spec = config["datasets"][name]
    if spec.get("type") == "manifest":  # the manifest's documented geometry, when it states one
        m = dataset_manifest(config, name)
        geometry = m.geometry
        if m.source_type == "simulated" or not {"shape", "voxel_size_mm"} <= set(geometry):
            return None
        return {"shape": tuple(geometry["shape"]), "voxel_size_mm": tuple(geometry["voxel_size_mm"]),
                "b0_dir": tuple(m.acquisition["b0_dir"])}
    if spec.get("type") not in SIMULATED_TYPES:
        return None
    import inspect  # noqa: PLC0415

    from .phantom import make_phantom  # noqa: PLC0415 - imports scipy

    defaults = {k: p.default for k, p in inspect.signature(make_phantom).parameters.items()}
    return {k: tuple(spec.get(k, defaults[k])) for k in ("shape", "voxel_size_mm", "b0_dir")}


def perturbation_plan(config: Mapping[str, Any], *, source: str = "config") -> dict[str, dict[str, list[dict]]]:
    """``{dataset: {perturbation id: components}}``: the perturbed volumes the workflow builds.

    Every dataset gets ``none`` (first; the baseline of every degradation plot).  Each entry of
    ``perturbations`` (see :func:`qsmbench.perturb.expand_item`) applies to the datasets it lists
    under ``datasets``, else to every dataset with a ground truth (:func:`dataset_has_truth`).
    Errors (:class:`ConfigError`, naming the key) for: a malformed id or value, an unknown dataset,
    a resolution or orientation entry that lists a dataset without truth, a target voxel size finer
    than the dataset's or an orientation axis parallel to its B0 (where the config fixes the
    geometry), and one id produced twice with different parameters.
    """
    from . import perturb  # noqa: PLC0415 - perturb imports numpy

    datasets = list(config["datasets"])
    plan: dict[str, dict[str, list[dict]]] = {d: {"none": []} for d in datasets}
    origin: dict[tuple[str, str], str] = {}
    for i, item in enumerate(config.get("perturbations", [])):
        key = f"perturbations.{i}"
        if item == "none":
            continue
        try:
            perts = perturb.expand_item(item)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{source}: key '{key}': {exc}") from None
        kinds = {c["kind"] for comps in perts for c in comps}
        explicit = item.get("datasets") if isinstance(item, Mapping) else None
        if explicit is None:
            targets = [d for d in datasets if dataset_has_truth(config, d)]
        else:
            targets = []
            for j, d in enumerate(explicit):
                if d not in config["datasets"]:
                    raise ConfigError(f"{source}: key '{key}.datasets.{j}': unknown dataset {d!r}; "
                                      f"datasets: {', '.join(datasets)}")
                needs = sorted(kinds & perturb.NEEDS_TRUTH)
                if needs and not dataset_has_truth(config, d):
                    raise ConfigError(f"{source}: key '{key}.datasets.{j}': dataset {d!r} has no ground-truth χ, "
                                      f"which {' and '.join(needs)} perturbations need; a dataset without truth "
                                      "can only get noise on its measured field")
                targets.append(d)
        for d in targets:
            _check_perturbation_geometry(config, d, item, key, source)
            for comps in perts:
                pid = perturb.slug(comps)
                if pid in plan[d] and plan[d][pid] != comps:
                    raise ConfigError(f"{source}: key '{key}': perturbation {pid!r} of dataset {d!r} is also defined "
                                      f"by '{origin[d, pid]}' with other parameters")
                plan[d][pid] = comps
                origin.setdefault((d, pid), key)
    return plan


def _check_perturbation_geometry(config, dataset, item, key, source) -> None:
    from . import perturb  # noqa: PLC0415

    geometry = dataset_geometry(config, dataset)
    if geometry is None:
        return
    if isinstance(item, str):
        parts = [(c["kind"], c, key) for c in perturb.parse_slug(item)]
        specs = [(kind, {"voxel_size_mm": [c["voxel_size_mm"]]} if kind == "resolution" else c, k)
                 for kind, c, k in parts]
    elif "combine" in item:
        specs = [(kind, spec, f"{key}.combine.{kind}") for kind, spec in item["combine"].items()]
    else:
        specs = [(kind, spec, f"{key}.{kind}") for kind, spec in item.items() if kind != "datasets"]
    where = (f"dataset {dataset!r} ({'x'.join(str(n) for n in geometry['shape'])} voxels of "
             f"{'x'.join(perturb.format_number(v) for v in geometry['voxel_size_mm'])} mm)")
    for kind, spec, k in specs:
        if kind == "resolution":
            sizes = spec["voxel_size_mm"]
            for j, size in enumerate(sizes if isinstance(sizes, list | tuple) else [sizes]):
                target = [size] * 3 if isinstance(size, int | float) else size
                try:
                    perturb.resolution_grid(geometry["shape"], geometry["voxel_size_mm"], target)
                except ValueError as exc:
                    at = k if isinstance(item, str) else f"{k}.voxel_size_mm.{j}"
                    raise ConfigError(f"{source}: key '{at}': {where}: {exc}") from None
        elif kind == "orientation":
            import numpy as np  # noqa: PLC0415

            axis = np.asarray(spec.get("axis", perturb.DEFAULT_AXIS), dtype=float)
            b0 = np.asarray(geometry["b0_dir"], dtype=float)
            if np.linalg.norm(axis) > 0 and np.linalg.norm(b0) > 0 and \
                    abs(axis @ b0) / (np.linalg.norm(axis) * np.linalg.norm(b0)) > 1 - 1e-9:
                at = k if isinstance(item, str) else f"{k}.axis"
                raise ConfigError(f"{source}: key '{at}': {where}: the rotation axis {axis.tolist()} is parallel "
                                  f"to B0 {list(geometry['b0_dir'])}, so a tilt would change nothing")


def _check_run_filters(config: Mapping[str, Any], plan: Mapping[str, Mapping[str, Any]], source: str) -> None:
    from . import perturb  # noqa: PLC0415

    ids = sorted({p for perts in plan.values() for p in perts})
    for run_id, spec in config["methods"].items():
        for j, entry in enumerate((spec or {}).get("perturbations") or []):
            # an axis name is always valid (a sweep may be commented out); an id or pattern must match
            if not (_is_axis_name(entry) or any(perturb.matches(entry, p) for p in ids)):
                axes = sorted({perturb.axis_name(p) for p in ids} - {"none"})
                raise ConfigError(f"{source}: key 'methods.{run_id}.perturbations.{j}': {entry!r} matches no "
                                  f"perturbation of this configuration (ids: {', '.join(ids)}; axis names: "
                                  f"{', '.join(axes) or 'none'})")


def _is_axis_name(text: str) -> bool:
    from . import perturb  # noqa: PLC0415

    kinds = text.split("+")
    return all(k in perturb.KINDS for k in kinds) and kinds == sorted(set(kinds), key=perturb.KINDS.index)


def run_accepts(config: Mapping[str, Any], run_id: str, perturbation: str) -> bool:
    """Whether method run ``run_id`` runs on ``perturbation`` (its ``perturbations`` filter).

    ``none`` is always run; without a filter, everything is.
    """
    from . import perturb  # noqa: PLC0415

    entries = (config["methods"][run_id] or {}).get("perturbations")
    return perturbation == "none" or entries is None or any(perturb.matches(e, perturbation) for e in entries)


def job_list(config: Mapping[str, Any], plan: Mapping[str, Mapping[str, Any]] | None = None
             ) -> list[tuple[str, str, str]]:
    """Every (dataset, perturbation, method run) job, honouring each run's perturbation filter."""
    plan = perturbation_plan(config) if plan is None else plan
    return [(d, p, r) for d, perts in plan.items() for p in perts for r in config["methods"]
            if run_accepts(config, r, p)]
