"""Methods in any language: command plugins and imported reconstructions, described by YAML specs.

A method spec is a YAML file in ``methods/`` or a ``method_dirs`` folder (schema:
``qsmbench/schemas/method_spec.schema.json``).  The registry turns each into a
:class:`~qsmbench.method.Method` subclass, so it is listed, configured, run, scored and reported
like a Python plugin.

``type: command`` -- an external program (MATLAB, Julia, a compiled tool, a container's entry
point), run once per reconstruction by :class:`CommandMethod`:

1. qsmbench writes the inputs as NIfTI-1 files (``.nii``, float32; mask uint8 0/1; the affine of
   the dataset, so the header's voxel size is the real one) into a scratch folder: ``{field}``
   the local field in the unit the spec declares (``units.field``: ``ppm``, ``ppb`` or ``hz``,
   f_Hz = f_ppm · γ̄ · B0 with γ̄ = 42.57747892 MHz/T), ``{phase}`` the local phase in rad
   (φ = 2π · γ̄ · B0 · TE · f_ppm · 1e-6, not wrapped), ``{mask}``, ``{magnitude}``, and
   ``qsmbench_inputs.json`` (``{inputs_json}``: every path and number below, for programs that
   prefer one file to many arguments, e.g. ``matlab -batch``).
2. It builds the argument list from ``command``: each list item is one argument, and the
   placeholders inside it are replaced by text (paths, numbers: ``{voxel_size}`` and
   ``{b0_dir}`` as ``x,y,z``, floats as Python's shortest round-trip repr, booleans as
   ``true``/``false``).  No shell is involved, so a path with spaces or a parameter value such
   as ``; rm -rf x`` reaches the program as one literal argument.  A nested list is an
   optional group, dropped when the volume has no magnitude image.
3. It runs the program in the scratch folder with :func:`qsmbench.isolate.run_limited` (the
   mechanism of the isolated Python runs: wall-clock and resident-memory limits on the whole
   process tree).  Inside a workflow job the runner's own isolated child already enforces the
   run's limits on the tree (``QSMBENCH_ISOLATED``), so the program's output is only echoed to
   the job's log; run in-process (``qsmbench reconstruct``, ``check-method``) the method's
   ``timeout_s`` applies here.  A non-zero exit, a missing or unreadable output, a wrong shape
   or non-finite values inside the mask fail the run with the last lines of the program's output.
4. It reads ``{out}`` (χ in ``units.output``: ``ppm`` or ``ppb``), converts it to ppm, zeroes
   it outside the mask and hands it to the runner, which records the command line, the program's
   version output (``version_command``), the container image (and its digest where the
   reference pins one, ``...@sha256:...``) and the conda environment under ``command`` in
   run.json.  ``cpu_s`` and ``peak_rss_mb`` then include the program's process tree.

``type: precomputed`` -- χ maps computed elsewhere (a closed tool, a collaborator):
:class:`PrecomputedMethod` reads ``maps`` (a path pattern with ``{dataset}`` and
``{perturbation}``) for each job, validates it against the volume like a command's output,
and records it as *imported*: no timing, device ``imported``.  A map that does not exist gives
the status ``not_run`` with the path it looked for.  The built-in method ``precomputed``
(``methods/precomputed.py``) does the same from a config entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError, MethodError
from .method import Method
from .physics import ppm_to_hz, ppm_to_rad

SPEC_SUFFIXES = (".yaml", ".yml")
SCHEMA_PATH = Path(__file__).parent / "schemas" / "method_spec.schema.json"
#: Units qsmbench can write the field in, and read the output in.
FIELD_UNITS = ("ppm", "ppb", "hz")
OUTPUT_UNITS = ("ppm", "ppb")
#: The placeholders of ``command`` (``params.NAME`` besides), and what each becomes.
PLACEHOLDERS = {
    "field": "path of the local field, in units.field (ppm, ppb or hz)",
    "phase": "path of the local phase, rad (2π γ̄ B0 TE × field)",
    "mask": "path of the brain mask (uint8, 0/1)",
    "magnitude": "path of the magnitude image (only inside an optional group, or the method needs one)",
    "out": "path the program must write χ to, in units.output",
    "voxel_size": "voxel size, mm, as x,y,z",
    "b0_dir": "unit B0 direction in array coordinates, as x,y,z",
    "b0_tesla": "field strength, T",
    "te_s": "echo time, s",
    "python": "the Python interpreter running qsmbench",
    "spec_dir": "the folder holding the spec file",
    "work": "the scratch folder the program runs in",
    "inputs_json": "path of qsmbench_inputs.json (every other value, and the parameters)",
}
#: Placeholders a version_command may use (it runs before any input exists).
VERSION_PLACEHOLDERS = ("python", "spec_dir")
INPUTS_JSON = "qsmbench_inputs.json"
#: run.json's ``device`` (and ``profile``) for imported reconstructions.
IMPORTED = "imported"
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class CommandFailed(RuntimeError):
    """The program failed; ``status`` is the run status (failed, timeout or oom)."""

    def __init__(self, message: str, status: str = "failed"):
        super().__init__(message)
        self.status = status


class NotRun(RuntimeError):
    """An imported reconstruction that does not exist for this job: status ``not_run``."""

    status = "not_run"


# --------------------------------------------------------------------------- units
def field_in_unit(field_ppm: np.ndarray, unit: str, b0_tesla: float) -> np.ndarray:
    """The local field in ``unit`` (ppm, ppb or hz) from ppm."""
    if unit == "ppm":
        return np.asarray(field_ppm, dtype=np.float64)
    if unit == "ppb":
        return np.asarray(field_ppm, dtype=np.float64) * 1e3
    if unit == "hz":
        return ppm_to_hz(np.asarray(field_ppm, dtype=np.float64), b0_tesla)
    raise ValueError(f"unknown field unit {unit!r}; expected one of {FIELD_UNITS}")


def chi_to_ppm(chi: np.ndarray, unit: str) -> np.ndarray:
    """χ in ppm from ``unit`` (ppm or ppb)."""
    if unit == "ppm":
        return np.asarray(chi, dtype=np.float64)
    if unit == "ppb":
        return np.asarray(chi, dtype=np.float64) * 1e-3
    raise ValueError(f"unknown output unit {unit!r}; expected one of {OUTPUT_UNITS}")


# --------------------------------------------------------------------------- placeholders
def placeholders_in(text: str) -> list[str]:
    """The placeholder names in ``text`` (``{{``/``}}`` are literal braces); a ValueError for a
    lone brace."""
    names = []
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise ValueError(f"a lone '{tok}' in {text!r} (write {{{{ or }}}} for a literal brace)")
        names.append(m.group(1))
    return names


def format_value(value: Any) -> str:
    """Text of one placeholder value: floats in repr, vectors as ``x,y,z``, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def substitute(text: str, values: Mapping[str, Any]) -> str:
    """Replace every placeholder of ``text`` by :func:`format_value` of its value (one argument in,
    one argument out: no splitting, no shell)."""
    def repl(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        if m.group(1) is None:
            raise ValueError(f"a lone '{tok}' in {text!r}")
        key = m.group(1)
        if key not in values:
            raise KeyError(key)
        return format_value(values[key])
    return _TOKEN.sub(repl, text)


def build_argv(template: Sequence[str | Sequence[str]], values: Mapping[str, Any]) -> list[str]:
    """The argument list: each template item is one argument; a nested list is an optional group,
    left out when one of its placeholders has no value (``magnitude`` absent)."""
    argv: list[str] = []
    for item in template:
        if isinstance(item, (list, tuple)):
            if all(name in values for a in item for name in placeholders_in(a)):
                argv += [substitute(a, values) for a in item]
        else:
            argv.append(substitute(item, values))
    return argv


# --------------------------------------------------------------------------- specs
@lru_cache(maxsize=1)
def spec_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return json.load(fh)


def is_conda_env_file(data: Any) -> bool:
    """A conda environment file (``dependencies:``) next to a spec is not a spec; skipped."""
    return isinstance(data, dict) and "dependencies" in data and not {"command", "maps"} & set(data)


def read_spec_file(path: str | os.PathLike) -> Any:
    import yaml  # noqa: PLC0415 - not needed by runs of Python methods (keeps their start-up lean)

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise MethodError(f"method spec {path} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise MethodError(f"cannot read method spec {path}: {exc.strerror or exc}") from None


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a method spec; a :class:`MethodError` naming the file and the key for any
    problem.  Returns the spec with defaults filled in and ``_path`` (absolute)."""
    import jsonschema  # noqa: PLC0415 - only for specs

    path = Path(path).resolve()
    data = read_spec_file(path)
    if not isinstance(data, dict):
        raise MethodError(f"method spec {path} must be a mapping of keys (name, references, command, ...), "
                          f"got {type(data).__name__}")
    validator = jsonschema.Draft202012Validator(spec_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(list(e.absolute_path)), list(e.path)))
    if errors:
        err = errors[0]
        while err.context:
            err = max(err.context, key=lambda e: len(list(e.absolute_path)))
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise MethodError(f"method spec {path}: key '{key}': {err.message}")
    spec = dict(data)
    spec.setdefault("type", "command")
    units = {"field": "ppm", "output": "ppm", **(spec.get("units") or {})}
    spec["units"] = units
    spec.setdefault("parameters", {})
    spec.setdefault("profiles", {})
    spec["_path"] = str(path)

    def bad(key: str, msg: str) -> MethodError:
        return MethodError(f"method spec {path}: key '{key}': {msg}")

    if spec["type"] == "precomputed":
        for key in ("command", "version_command", "container", "conda", "parameters", "env", "profiles"):
            if data.get(key):
                raise bad(key, "not allowed for type precomputed (imported maps run no program)")
        if "maps" not in spec:
            raise bad("maps", "type precomputed needs a path pattern, e.g. maps/{dataset}/{perturbation}.nii.gz")
        try:
            names = placeholders_in(spec["maps"])
        except ValueError as exc:
            raise bad("maps", str(exc)) from None
        unknown = sorted(set(names) - {"dataset", "perturbation", "run"})
        if unknown or "dataset" not in names:
            raise bad("maps", (f"unknown placeholder(s) {unknown}; " if unknown else "")
                      + "the pattern must name {dataset} (and usually {perturbation}); allowed: "
                        "{dataset}, {perturbation}, {run}")
        if data.get("units", {}).get("field"):
            raise bad("units.field", "type precomputed reads no field; only units.output applies")
        return spec
    if "command" not in spec:
        raise bad("command", "a command plugin needs the program and its arguments as a list, e.g. "
                             "[\"{python}\", \"{spec_dir}/my_qsm.py\", \"{field}\", \"{mask}\", \"{out}\"]")
    if "maps" in spec:
        raise bad("maps", "only for type precomputed")
    allowed = set(PLACEHOLDERS) | {f"params.{p}" for p in spec["parameters"]}
    outputs = 0
    for i, item in enumerate(spec["command"]):
        group = item if isinstance(item, list) else [item]
        for j, arg in enumerate(group):
            key = f"command.{i}" + (f".{j}" if isinstance(item, list) else "")
            try:
                names = placeholders_in(arg)
            except ValueError as exc:
                raise bad(key, str(exc)) from None
            for name in names:
                if name not in allowed:
                    hint = (f"the spec has no parameter '{name[7:]}' (declare it under parameters:)"
                            if name.startswith("params.") else f"known placeholders: {', '.join(sorted(PLACEHOLDERS))}"
                            ", params.NAME")
                    raise bad(key, f"unknown placeholder {{{name}}}; {hint}")
            outputs += names.count("out") + names.count("inputs_json")
            if isinstance(item, list) and "out" in names:
                raise bad(key, "{out} cannot be in an optional group: the program must always be told where to "
                               "write χ")
    for key, env_value in (spec.get("env") or {}).items():
        try:
            names = placeholders_in(env_value)
        except ValueError as exc:
            raise bad(f"env.{key}", str(exc)) from None
        unknown = sorted(set(names) - allowed)
        if unknown:
            raise bad(f"env.{key}", f"unknown placeholder(s) {unknown}")
        outputs += names.count("out") + names.count("inputs_json")
    if not outputs:
        raise bad("command", "no argument (or env value) names the output: use {out} (or {inputs_json}, whose "
                             "'out' entry is the path to write)")
    for i, arg in enumerate(spec.get("version_command") or []):
        try:
            names = placeholders_in(arg)
        except ValueError as exc:
            raise bad(f"version_command.{i}", str(exc)) from None
        unknown = sorted(set(names) - set(VERSION_PLACEHOLDERS))
        if unknown:
            raise bad(f"version_command.{i}", f"placeholder(s) {unknown} are not known before the run; only "
                                              f"{', '.join('{' + p + '}' for p in VERSION_PLACEHOLDERS)}")
    for pname, prof in spec["profiles"].items():
        unknown = sorted(set(prof) - set(spec["parameters"]))
        if unknown:
            raise bad(f"profiles.{pname}", f"unknown parameter(s) {unknown}; declared: "
                                           f"{', '.join(sorted(spec['parameters'])) or '(none)'}")
    if spec.get("conda"):
        env_file = (path.parent / spec["conda"]).resolve()
        if not env_file.is_file():
            raise bad("conda", f"environment file {env_file} not found (the path is relative to the spec's folder)")
        spec["conda"] = str(env_file)
    return spec


def _needs_magnitude(spec: Mapping[str, Any]) -> bool:
    return any("magnitude" in placeholders_in(item) for item in spec["command"] if isinstance(item, str))


def _mentions_magnitude(spec: Mapping[str, Any]) -> bool:
    flat = [a for item in spec["command"] for a in (item if isinstance(item, list) else [item])]
    return any("magnitude" in placeholders_in(a) for a in flat) or "inputs_json" in " ".join(flat)


def class_from_spec(path: str | os.PathLike) -> type[Method]:
    """The Method subclass a spec file describes (:class:`CommandMethod` or :class:`PrecomputedMethod`)."""
    spec = load_spec(path)
    doc = spec.get("description") or (
        f"{'Imported reconstructions' if spec['type'] == 'precomputed' else 'Command plugin'} "
        f"'{spec['name']}' described by {spec['_path']}.")
    attrs: dict[str, Any] = {
        "__doc__": doc, "__module__": __name__, "name": spec["name"], "references": list(spec["references"]),
        "spec": spec, "spec_path": Path(spec["_path"]),
    }
    if spec["type"] == "precomputed":
        attrs.update(maps=spec["maps"], base_dir=Path(spec["_path"]).parent, output_unit=spec["units"]["output"])
        return type(f"Precomputed_{spec['name']}", (PrecomputedMethod,), attrs)
    uses = set(spec.get("uses") or [])
    if _mentions_magnitude(spec):
        uses.add("magnitude")
    attrs.update(parameters=dict(spec["parameters"]), profiles={k: dict(v) for k, v in spec["profiles"].items()},
                 uses=uses, symmetry=spec.get("symmetry"))
    if spec.get("timeout_s"):
        attrs["timeout_s"] = {"default": float(spec["timeout_s"])}
    return type(f"Command_{spec['name']}", (CommandMethod,), attrs)


def unavailable_reason(cls: type[Method]) -> str:
    """Why a command plugin cannot run here ('' when it can): its program is not found.

    Not checked when the spec names a container or a conda environment (the program is in there).
    """
    spec = getattr(cls, "spec", None)
    if not spec or spec.get("type") != "command" or spec.get("container") or spec.get("conda"):
        return ""
    program = substitute(spec["command"][0], {"python": sys.executable, "spec_dir": str(cls.spec_path.parent)}) \
        if set(placeholders_in(spec["command"][0])) <= {"python", "spec_dir"} else None
    if program is None:
        return ""
    if os.sep in program or (os.altsep and os.altsep in program):
        ok = Path(program).is_file() and os.access(program, os.X_OK)
    else:
        ok = shutil.which(program) is not None
    return "" if ok else (f"program '{program}' (command.0 of {cls.spec_path}) not found"
                          + ("" if os.sep in program else " on PATH"))


def container_record(image: str | None) -> dict[str, Any] | None:
    """The image, its digest when the reference pins one (``@sha256:...``), and the image file this
    job runs in (Apptainer/Singularity set ``APPTAINER_CONTAINER``)."""
    if not image:
        return None
    digest = image.split("@", 1)[1] if "@" in image else None
    inside = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    return {"image": image, "digest": digest,
            "digest_note": None if digest else "not pinned: write the image as NAME@sha256:DIGEST to record it",
            "running_inside": inside,
            "note": None if inside else "this run was not inside the image (run snakemake with "
                                        "--software-deployment-method apptainer to use it)"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    import nibabel as nib  # noqa: PLC0415

    img = nib.Nifti1Image(np.asarray(data).astype(dtype), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def read_chi(path: Path, vol, unit: str, *, what: str) -> tuple[np.ndarray, list[str]]:
    """Read a χ map written by a program or imported, check it against ``vol``; return (ppm, notes).

    Errors (a ValueError naming ``what`` and the file): unreadable, not 3-D, another shape,
    complex, non-finite values inside the mask.  Non-finite values outside the mask are zeroed
    (many tools write NaN there).  A header voxel size other than the volume's is a note (some
    writers do not set it), as is a magnitude that suggests other units.
    """
    import nibabel as nib  # noqa: PLC0415

    notes = []
    try:
        img = nib.load(str(path))
        data = np.array(np.asanyarray(img.dataobj))  # in memory, not a map of a file about to be removed
    except Exception as exc:  # nibabel and gzip raise many types
        raise ValueError(f"{what} {path} cannot be read as NIfTI: {type(exc).__name__}: {exc}") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.shape != tuple(vol.shape):
        raise ValueError(f"{what} {path} has shape {tuple(data.shape)}, expected {tuple(vol.shape)} (the input's)")
    if np.iscomplexobj(data) or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{what} {path} has data type {data.dtype}; expected real numbers")
    data = chi_to_ppm(data, unit)
    mask = np.asarray(vol.mask, dtype=bool)
    bad = int(np.count_nonzero(~np.isfinite(data[mask])))
    if bad:
        raise ValueError(f"{what} {path} has {bad} non-finite values (NaN/inf) inside the mask")
    chi = np.where(mask, data, 0.0)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not np.allclose(zooms, vol.voxel_size_mm, rtol=1e-3, atol=1e-4):
        notes.append(f"{what} has the voxel size {zooms} mm in its header, the input {tuple(vol.voxel_size_mm)} mm "
                     "(used as written: same shape; check the program's header handling)")
    peak = float(np.percentile(np.abs(chi[mask]), 99.9)) if mask.any() else 0.0
    if peak > 20.0:
        notes.append(f"{what}: 99.9th percentile of |χ| in the mask is {peak:.3g} ppm -- is the output really in "
                     f"{unit} (units.output)?")
    return chi, notes


# --------------------------------------------------------------------------- command plugins
class CommandMethod(Method):
    """Base of the classes made from ``type: command`` specs (see the module docstring)."""

    spec: ClassVar[dict[str, Any]] = {}
    spec_path: ClassVar[Path] = Path()
    references: ClassVar[list[str]] = []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.command_record: dict[str, Any] | None = None
        self._version: dict[str, Any] | None = None

    def prepare(self, train) -> None:
        """Untimed: run ``version_command`` once and keep its output for run.json."""
        self._version = self._run_version()

    def _run_version(self) -> dict[str, Any] | None:
        cmd = self.spec.get("version_command")
        if not cmd:
            return None
        values = {"python": sys.executable, "spec_dir": str(self.spec_path.parent)}
        argv = [substitute(a, values) for a in cmd]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                                 env=self._env(values))
            text = (out.stdout + out.stderr).strip()
            return {"argv": argv, "exit_code": out.returncode, "output": text[:2000]}
        except (OSError, subprocess.SubprocessError) as exc:
            return {"argv": argv, "exit_code": None, "output": f"{type(exc).__name__}: {exc}"}

    def _env(self, values: Mapping[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in (self.spec.get("env") or {}).items():
            with contextlib.suppress(KeyError):  # the version command runs before any input exists
                env[key] = substitute(value, values)
        return env

    def reconstruct(self, vol):
        spec = self.spec
        if vol.magnitude is None and _needs_magnitude(spec):
            raise ValueError(f"the command plugin '{self.name}' needs a magnitude image ({{magnitude}} outside an "
                             "optional group in its command) and this volume has none")
        if self._version is None and spec.get("version_command"):
            self._version = self._run_version()
        work = Path(tempfile.mkdtemp(prefix="qsmbench-command-")).resolve()
        try:
            return self._run_in(work, vol)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run_in(self, work: Path, vol):
        from .isolate import run_limited  # noqa: PLC0415
        from .volume import default_affine  # noqa: PLC0415

        spec, units = self.spec, self.spec["units"]
        affine = vol.affine if vol.affine is not None else default_affine(vol.voxel_size_mm)
        field = field_in_unit(vol.field_ppm, units["field"], vol.b0_tesla)
        files = {"field": work / "field.nii", "phase": work / "phase.nii", "mask": work / "mask.nii"}
        _write_nifti(files["field"], field, affine, np.float32)
        _write_nifti(files["phase"], ppm_to_rad(np.asarray(vol.field_ppm, dtype=np.float64), vol.b0_tesla, vol.te_s),
                     affine, np.float32)
        _write_nifti(files["mask"], np.asarray(vol.mask, dtype=bool), affine, np.uint8)
        if vol.magnitude is not None:
            files["magnitude"] = work / "magnitude.nii"
            _write_nifti(files["magnitude"], vol.magnitude, affine, np.float32)
        out = work / "chi.nii"
        values: dict[str, Any] = {k: str(v) for k, v in files.items()}
        values.update(out=str(out), voxel_size=list(map(float, vol.voxel_size_mm)),
                      b0_dir=list(map(float, vol.b0_dir)), b0_tesla=float(vol.b0_tesla), te_s=float(vol.te_s),
                      python=sys.executable, spec_dir=str(self.spec_path.parent), work=str(work),
                      inputs_json=str(work / INPUTS_JSON))
        values.update({f"params.{k}": v for k, v in self.params.items()})
        inputs = {k: v for k, v in values.items() if not k.startswith("params.")}
        inputs.update(units={"field": units["field"], "phase": "rad", "output": units["output"]},
                      params=dict(self.params), shape=list(vol.shape))
        (work / INPUTS_JSON).write_text(json.dumps(inputs, indent=1))
        argv = build_argv(spec["command"], values)
        isolated = os.environ.get("QSMBENCH_ISOLATED") == "1"
        limit = None if isolated else self.timeout_for(self.profile)
        self.command_record = {
            "spec": str(self.spec_path), "spec_sha256": _sha256(self.spec_path), "argv": argv,
            "cwd": "(scratch folder, removed afterwards)", "env": dict(spec.get("env") or {}),
            "units": inputs["units"], "version": self._version, "container": container_record(spec.get("container")),
            "conda": spec.get("conda"), "exit_code": None, "elapsed_s": None, "cpu_s": None, "peak_rss_mb": None,
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            outcome = run_limited(argv, cwd=work, env=self._env(values), timeout_s=limit, log_path=None,
                                  echo=sys.stderr.buffer if isolated else None)
        except OSError as exc:  # the program cannot be started
            raise CommandFailed(f"cannot start the command {argv[0]!r}: {exc.strerror or exc}") from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.command_record.update(
            exit_code=outcome.returncode, elapsed_s=round(outcome.elapsed_s, 3),
            peak_rss_mb=round(outcome.peak_rss_mb, 1),
            cpu_s=round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 3),
            output_bytes=outcome.output_bytes)
        tail = outcome.tail.strip()
        said = f"; the last lines of its output:\n{tail}" if tail else "; it printed nothing"
        if outcome.limit == "timeout":
            raise CommandFailed(f"the command ran past its wall-clock limit of {limit:g} s and was killed{said}",
                                status="timeout")
        if outcome.limit == "memory":
            raise CommandFailed(f"the command exceeded its memory limit and was killed{said}", status="oom")
        if outcome.returncode != 0:
            how = (f"was killed by {outcome.signal_name}" if outcome.signal_name
                   else f"exited with status {outcome.returncode}")
            raise CommandFailed(f"the command {how}{said}")
        if not out.exists():
            raise CommandFailed(f"the command exited with status 0 but wrote no output file ({{out}} = {out}){said}")
        try:
            chi, notes = read_chi(out, vol, units["output"], what="the command's output")
        except ValueError as exc:
            raise CommandFailed(f"{exc}{said}") from None
        self.notes.extend(notes)
        return chi


# --------------------------------------------------------------------------- imported maps
class PrecomputedMethod(Method):
    """Base of imported reconstructions (``type: precomputed`` specs and the built-in ``precomputed``).

    The map of a job is ``maps`` with ``{dataset}``, ``{perturbation}`` and ``{run}`` filled in,
    relative to ``base_dir`` (the spec's folder; the working directory for the built-in method,
    whose ``maps`` and ``unit`` are parameters).  Nothing is timed.
    """

    imported: ClassVar[bool] = True
    maps: ClassVar[str] = ""
    base_dir: ClassVar[Path | None] = None
    output_unit: ClassVar[str] = "ppm"
    references: ClassVar[list[str]] = []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: (dataset, perturbation, run_id) of the job, set by the runner before reconstruct().
        self.job_identity: dict[str, Any] = {}

    @classmethod
    def pattern_and_unit(cls, params: Mapping[str, Any] | None = None) -> tuple[str, str]:
        params = dict(params or {})
        pattern = str(params.get("maps") or cls.maps)
        unit = str(params.get("unit") or cls.output_unit)
        return pattern, unit

    @classmethod
    def map_path(cls, params: Mapping[str, Any] | None, dataset: str, perturbation: str, run_id: str = "") -> Path:
        """Where the χ map of one job is (the file may not exist)."""
        pattern, _ = cls.pattern_and_unit(params)
        if not pattern:
            raise ConfigError(f"method '{cls.name}': no map pattern; set the parameter maps, e.g. "
                              "maps/{dataset}/{perturbation}.nii.gz")
        try:
            text = substitute(pattern, {"dataset": dataset, "perturbation": perturbation, "run": run_id or cls.name})
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"method '{cls.name}': the map pattern {pattern!r} has a bad placeholder {exc}; "
                              "allowed: {dataset}, {perturbation}, {run}") from None
        path = Path(text).expanduser()
        return path if path.is_absolute() or cls.base_dir is None else cls.base_dir / path

    def reconstruct(self, vol):
        ident = self.job_identity
        dataset, perturbation = ident.get("dataset") or vol.name, ident.get("perturbation") or "none"
        _, unit = self.pattern_and_unit(self.params)
        if unit not in OUTPUT_UNITS:
            raise ConfigError(f"method '{self.name}': unit must be one of {OUTPUT_UNITS}, got {unit!r}")
        path = self.map_path(self.params, dataset, perturbation, ident.get("run_id", ""))
        if not path.is_file():
            raise NotRun(f"no imported χ map for dataset '{dataset}', perturbation '{perturbation}': "
                         f"{path.resolve()} does not exist")
        chi, notes = read_chi(path, vol, unit, what="the imported map")
        self.notes.extend([f"imported from {path.resolve()} (sha256 {_sha256(path)[:16]}..., unit {unit})", *notes])
        return chi


# --------------------------------------------------------------------------- the runner's hooks
def before_run(instance: Method, identity: Mapping[str, Any]) -> None:
    """Give an imported method the identity of its job (which map to read)."""
    if isinstance(instance, PrecomputedMethod):
        instance.job_identity = dict(identity)


def annotate_record(instance: Method, record: dict[str, Any]) -> None:
    """Add what a command plugin or an import did to a run record (run.json).

    Command: ``command`` (argv, version output, container image and digest, conda env, exit code,
    the program's CPU time and peak memory); ``cpu_s`` and ``peak_rss_mb`` include the program's
    process tree.  Imported: timing and memory are None and ``device``/``profile`` say ``imported``.
    """
    cmd = getattr(instance, "command_record", None)
    if isinstance(instance, CommandMethod) and cmd is not None:
        record["command"] = cmd
        with contextlib.suppress(TypeError):
            if record.get("cpu_s") is not None and cmd.get("cpu_s") is not None:
                record["cpu_s"] = record["cpu_s"] + cmd["cpu_s"]
            if record.get("peak_rss_mb") is not None and cmd.get("peak_rss_mb") is not None:
                record["peak_rss_mb"] = record["peak_rss_mb"] + cmd["peak_rss_mb"]
    if isinstance(instance, PrecomputedMethod):
        pattern, unit = type(instance).pattern_and_unit(instance.params)
        record.update(wall_s=None, cpu_s=None, prepare_s=None, peak_rss_mb=None, peak_gpu_mb=None, fft_count=None,
                      device=IMPORTED, profile=IMPORTED,
                      imported={"maps": pattern, "unit": unit,
                                "base_dir": str(instance.base_dir) if instance.base_dir else "working directory"})


def is_imported(cls: Any) -> bool:
    return bool(getattr(cls, "imported", False))


__all__ = ["FIELD_UNITS", "IMPORTED", "OUTPUT_UNITS", "PLACEHOLDERS", "SPEC_SUFFIXES", "CommandFailed",
           "CommandMethod", "NotRun", "PrecomputedMethod", "annotate_record", "before_run", "build_argv",
           "chi_to_ppm", "class_from_spec", "container_record", "field_in_unit", "format_value", "is_conda_env_file",
           "is_imported", "load_spec", "placeholders_in", "read_chi", "substitute", "unavailable_reason"]
