"""Scoring of reconstructions and the tidy results table.

Two steps:

scoring (in each ``reconstruct`` job, after the method)
    :func:`evaluate_run` reads a run's ``run.json`` and its χ map, scores the map against every
    reference of the input volume with :func:`qsmbench.metrics.evaluate`, and writes
    ``results/metrics/{dataset}/{perturbation}/{method}.json``.  A failed run is recorded, not
    skipped: its file has no scores but carries the run's status and error.  :func:`rescore`
    (``qsmbench rescore results/``) re-scores every reconstruction of a results folder.

``aggregate`` (one job)
    :func:`collect` turns those files into one long ("tidy") table, one row per
    (dataset, reference, perturbation, method, seed, metric), described by :data:`COLUMNS`;
    :func:`write_table` stores it as parquet (and CSV).  Every number in the report comes from
    this table.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import io, metrics
from .errors import InputError
from .io import atomic_write  # the one atomic writer; re-exported for callers of results
from .tuning import tuned_value_text

if TYPE_CHECKING:   # annotations only: pandas is imported where a table is built
    import pandas as pd

#: Status of a run, as written by the runner in ``run.json`` (:data:`qsmbench.runner.STATUSES`).
RUN_STATUSES = ("ok", "failed", "timeout", "oom", "not_run")

#: Status of a row of the table.
ROW_STATUSES = ("ok", "not_applicable", "run_failed")

#: The tidy table: column name -> description, in column order.  One row per
#: (dataset, reference, perturbation, method, seed, metric); the first six columns are the key.
COLUMNS: dict[str, str] = {
    "dataset": "dataset id (a data manifest name or the embedded phantom)",
    "reference": "name of the ground-truth χ map the row is scored against (e.g. 'chi', 'chi_33'); "
                 "'' when nothing was scored (failed run, or a volume without reference)",
    "perturbation": "perturbation id (slug), 'none' for the unperturbed volume",
    "method": "the configured method run (the workflow's run id, e.g. 'tkd' or 'tkd_shmueli'); the "
              "registered method name when run.json has no run_id",
    "seed": "seed of the run, derived from (dataset, perturbation, method, repetition)",
    "metric": "metric name (see qsmbench.metrics.metric_table)",
    "value": "metric value (float); NaN whenever status is not 'ok'",
    "status": "'ok' (value present), 'not_applicable' (metric undefined on these data; see reason) "
              "or 'run_failed' (the reconstruction failed; reason holds its error)",
    "reason": "why there is no value: the metric's reason or the run's error; '' when status is 'ok'",
    "better": "'lower' or 'higher': which direction of the value is better",
    "unit": "unit of value ('%', 'dB', 'ppm', '' for unitless)",
    "run_status": "status of the reconstruction run: 'ok', 'failed' (the method raised, returned a bad array "
                  "or crashed), 'timeout' (killed past its wall-clock limit), 'oom' (out of memory) or 'not_run' (an "
                  "imported reconstruction whose map does not exist)",
    "error": "the run's error as 'ExcType: message'; '' when the run succeeded",
    "log_tail": "the last lines of the method's output when the run did not succeed (run.json's log_tail); '' "
                "otherwise",
    "wall_s": "wall-clock time of the timed reconstruction, s",
    "cpu_s": "CPU time of the timed reconstruction (all threads), s",
    "prepare_s": "wall-clock time of the untimed preparation (training, caching), s",
    "peak_rss_mb": "peak resident memory of the run, MB",
    "peak_gpu_mb": "peak GPU memory of the run, MB; NaN when no GPU was used",
    "method_name": "registered name of the Method class that ran (several runs may share one)",
    "profile": "parameter profile of the run (e.g. 'quick', 'paper'); '' when none",
    "profile_reason": "why that profile ran, e.g. 'auto → quick: no CUDA device' or 'requested'; '' when "
                      "not recorded",
    "device": "device the method ran on (e.g. 'cpu', 'cuda:0 (NVIDIA H100)')",
    "parameters": "the method's parameters as JSON (sorted keys)",
    "qsmbench_version": "qsmbench version that ran the reconstruction",
    "git_commit": "git commit of the qsmbench checkout that ran it (git describe; '-dirty' when it had "
                  "uncommitted changes); '' when unknown",
    "git_dirty": "'true' when that checkout had uncommitted changes to tracked files, 'false' when not, '' when "
                 "unknown",
    "packages_sha256": "digest of the versions of Python and the numerical packages that ran it "
                       "(qsmbench.provenance.package_versions; the list is in run.json and results/provenance.json); "
                       "'' when not recorded",
    "data_sha256": "checksum of the input volume the method reconstructed: sha256 of the lines "
                   "'{file} {sha256 of its uncompressed content}' of the volume folder's NIfTI files in "
                   "sorted order (volume_checksums); '' when not recorded",
    "phantom_model": "model of the simulated phantom the volume came from ('mni', 'analytic', 'brainweb'; "
                     "its meta.json); '' for measured or downloaded data",
    "phantom_version": "qsmbench.phantom.PHANTOM_VERSION that simulated the volume; '' for measured data. "
                       "collect() refuses a dataset whose rows come from different phantom models or versions",
    "trained_on": "what the method was trained on (run.json 'trained_on', as JSON: phantom model and version, "
                  "seeds from the training range); '' for methods that do not train",
    "tuned_on": "what the method's defaults were tuned on (run.json 'tuned_on', as JSON: what, phantom model, "
                "seeds from the tuning range); '' when the defaults come from the paper",
    "tuning": "tuning mode of the run (qsmbench.tuning): 'default' (the method's defaults), 'oracle' (value chosen "
              "against the truth: an upper bound), 'lcurve' or 'discrepancy' (chosen without the truth). Rankings "
              "are computed per mode, never across modes",
    "tuned_value": "the tuned parameter and the value chosen for this run, as JSON (e.g. {\"lam\": 0.05}); '' for "
                   "default runs",
}

#: Columns the workflow adds after the schema's (kept by :func:`write_table`/:func:`read_table`).
EXTRA_COLUMNS: dict[str, str] = {
    "config_hash": "hash of the validated configuration (qsmbench.config.config_hash), added by the "
                   "aggregate rule",
}

#: Schema columns newer than some stored tables: filled with '' when a table lacks them.
_ADDED_COLUMNS = ("git_dirty", "packages_sha256",
                  "data_sha256", "phantom_model", "phantom_version", "trained_on", "tuned_on", "profile_reason",
                  "log_tail", "tuning", "tuned_value")

#: The columns that identify a row, in sort order.
KEY_COLUMNS = ("dataset", "reference", "perturbation", "method", "seed", "metric", "tuning")

_FLOAT_COLUMNS = ("value", "wall_s", "cpu_s", "prepare_s", "peak_rss_mb", "peak_gpu_mb")
_INT_COLUMNS = ("seed",)
_STR_COLUMNS = tuple(c for c in COLUMNS if c not in _FLOAT_COLUMNS + _INT_COLUMNS)

_RUN_REQUIRED = ("status", "dataset", "perturbation", "method")


# --------------------------------------------------------------------------- evaluate
def evaluate_run(run_json_path: str | os.PathLike, volume_dir: str | os.PathLike,
                 out_json_path: str | os.PathLike) -> dict[str, Any]:
    """Score one run against every reference of its input volume; write and return the record.

    Parameters
    ----------
    run_json_path : the runner's ``run.json``; its ``output`` names the χ map (ppm) relative to
        the file's folder.
    volume_dir : the volume the method reconstructed, in the canonical layout
        (``results/data/{dataset}`` or its perturbed copy).
    out_json_path : where to write the record (atomically).

    Returns
    -------
    dict with ``dataset``, ``perturbation``, ``method`` (the run id when run.json has one, else
    the method name), ``status`` and ``error`` (of the run),
    ``run`` (run.json without its traceback), ``references`` ({reference name: [MetricResult
    dicts]}, empty for a failed run or a volume without reference) and ``notes``.

    Metrics are computed in ``volume.eval_mask`` with the volume's labels, voxel size and
    ``meta["metric_extras"]``.  Bad inputs raise :class:`InputError` naming the file.
    """
    run_path = Path(run_json_path)
    volume_dir = Path(volume_dir)
    run = _read_run(run_path)
    vol = io.load_volume(volume_dir)
    extras = _metric_extras(vol.meta, volume_dir)
    record: dict[str, Any] = {
        "dataset": run["dataset"],
        "perturbation": run["perturbation"],
        "method": run.get("run_id") or run["method"],
        "status": run["status"],
        "error": run.get("error"),
        "run": {k: v for k, v in run.items() if k != "traceback"},
        "references": {},
        "notes": [],
        "data_files": volume_checksums(volume_dir),
    }
    record["data_sha256"] = digest_of(record["data_files"])
    record["phantom_model"] = str(vol.meta.get("model", "")) if vol.meta.get("phantom_version") else ""
    record["phantom_version"] = str(vol.meta.get("phantom_version") or "")
    if run["status"] != "ok":
        record["notes"].append(f"the reconstruction did not succeed (status {run['status']}), so nothing was scored")
    elif not vol.references:
        record["notes"].append(f"the volume {volume_dir} has no reference, so nothing was scored")
    else:
        chi_path = run_path.parent / run["output"]
        chi_ppm, affine, _ = io.read_nifti(chi_path, role="reconstruction")
        io.check_same_grid(volume_dir / io.FIELD, vol.shape, vol.affine, chi_path, chi_ppm.shape, affine)
        mask_name = io.SCORING_MASK if vol.scoring_mask is not None else io.MASK
        for name in sorted(vol.references):
            scores = metrics.evaluate(
                chi_ppm, vol.references[name], vol.eval_mask, labels=vol.labels,
                voxel_size_mm=vol.voxel_size_mm, extras=extras,
                names={"recon": f"reconstruction {chi_path}",
                       "truth": f"reference {volume_dir / (io.REFERENCE_PREFIX + name + '.nii.gz')}",
                       "mask": f"mask {volume_dir / mask_name}",
                       "labels": f"labels {volume_dir / io.LABELS}"})
            record["references"][name] = [s.as_dict() for s in scores]
    io.write_json(out_json_path, record)
    return record


def check_scorable(volume_dir: str | os.PathLike) -> None:
    """Raise :class:`InputError` when the volume's meta.json would stop :func:`evaluate_run`
    (unreadable, or ``metric_extras`` not an object).  The reconstruct job calls it before the
    method runs; the volume's files (field, mask, references, labels) are read and checked by the
    runner's own load before the method runs too, so no reconstruction time is spent on a volume
    whose result cannot be scored -- and the volume is not read once more for the check."""
    volume_dir = Path(volume_dir)
    meta = io.read_json(volume_dir / io.META)
    if not isinstance(meta, Mapping):
        raise InputError(f"{volume_dir / io.META} must hold a JSON object")
    _metric_extras(meta, volume_dir)


def _metric_extras(meta: Mapping[str, Any], volume_dir: Path) -> Mapping[str, Any]:
    extras = meta.get("metric_extras", {})
    if not isinstance(extras, Mapping):
        raise InputError(f"{volume_dir / io.META}: 'metric_extras' must be an object, "
                         f"got {type(extras).__name__}")
    return extras


def rescore(results_dir: str | os.PathLike) -> list[Path]:
    """Score every reconstruction of a workflow's results folder again; return the files written.

    For each ``recon/{dataset}/{perturbation}/{run}/run.json`` (and each tuned run's
    ``tune/{dataset}/{perturbation}/{run}/{mode}/run.json``) of ``results_dir``, rewrites
    ``metrics/{dataset}/{perturbation}/{run}.json`` (``.../{mode}/metrics.json``) with
    :func:`evaluate_run` against its input volume (``data/{dataset}``, or
    ``perturbed/{dataset}/{perturbation}``).  No method runs.  The rewritten files are newer than
    the results table, so the next ``snakemake`` re-aggregates and redraws the report.
    """
    root = Path(results_dir)
    if not (root / "recon").is_dir():
        raise InputError(f"{root} holds no reconstructions (no folder {root / 'recon'}): "
                         "expected the results/ folder of a workflow run")

    def volume(dataset: str, perturbation: str) -> Path:
        return root / "data" / dataset if perturbation == "none" else root / "perturbed" / dataset / perturbation

    jobs = [(run, volume(run.parts[-4], run.parts[-3]), root / "metrics" / run.parts[-4] / run.parts[-3]
             / f"{run.parts[-2]}.json") for run in sorted(root.glob("recon/*/*/*/run.json"))]
    jobs += [(run, volume(run.parts[-5], run.parts[-4]), run.with_name("metrics.json"))
             for run in sorted(root.glob("tune/*/*/*/*/run.json")) if not run.parent.name.startswith("candidate-")]
    written = []
    for run_json, volume_dir, out in jobs:
        if not (volume_dir / io.META).is_file():
            raise InputError(f"{run_json}: its input volume {volume_dir} is missing (no {io.META})")
        evaluate_run(run_json, volume_dir, out)
        written.append(out)
    return written


def volume_checksums(volume_dir: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256 of its uncompressed content} of the NIfTI files of a volume folder.

    The content of a ``.nii.gz`` is hashed, not the gzip stream (whose header may carry a time).
    """
    out = {}
    for path in sorted(Path(volume_dir).glob("*.nii*")):
        if path.name.startswith("."):  # a temporary file left by an interrupted writer
            continue
        h = hashlib.sha256()
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot read {path} to checksum it: {exc}") from None
        out[path.name] = h.hexdigest()
    return out


def digest_of(checksums: Mapping[str, str]) -> str:
    """One sha256 over ``{file: sha256}``: of the lines '{file} {sha256}' in sorted order."""
    text = "".join(f"{name} {checksums[name]}\n" for name in sorted(checksums))
    return hashlib.sha256(text.encode()).hexdigest() if checksums else ""


def _read_run(path: Path) -> dict[str, Any]:
    run = io.read_json(path)
    if not isinstance(run, dict):
        raise InputError(f"{path} must hold a JSON object")
    missing = [k for k in _RUN_REQUIRED if k not in run]
    if missing:
        raise InputError(f"{path} lacks the key(s) {', '.join(missing)}")
    if run["status"] not in RUN_STATUSES:
        raise InputError(f"{path}: status must be one of {RUN_STATUSES}, got {run['status']!r}")
    if run["status"] == "ok" and not isinstance(run.get("output"), str):
        raise InputError(f"{path}: a successful run must name its output file ('output')")
    return run


# --------------------------------------------------------------------------- aggregate
def collect(metric_json_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Build the tidy table (:data:`COLUMNS`) from the files written by :func:`evaluate_run`.

    A failed run yields one row per registered metric with ``reference = ''``, status
    ``run_failed`` and the run's error as reason; a successful run on a volume without
    reference yields the same rows with status ``not_applicable``.  So every run appears in the
    table.  Rows are sorted by :data:`KEY_COLUMNS`; a duplicated key is an :class:`InputError`, and
    so is a dataset whose rows come from different phantom models or versions
    (:func:`check_phantom_versions`).
    """
    if isinstance(metric_json_paths, str | os.PathLike):
        metric_json_paths = [metric_json_paths]
    rows: list[dict[str, Any]] = []
    origin: dict[tuple, Path] = {}
    packages: dict[str, dict] = {}
    for p in metric_json_paths:
        path = Path(p)
        record = io.read_json(path)
        run = record.get("run") if isinstance(record, dict) else None
        if isinstance(run, dict) and run.get("packages_sha256") and isinstance(run.get("packages"), dict):
            packages.setdefault(run["packages_sha256"], run["packages"])
        for row in _rows_of(record, path):
            key = tuple(row[k] for k in KEY_COLUMNS)
            if key in origin:
                raise InputError(f"{path} and {origin[key]} both score "
                                 + ", ".join(f"{k}={v!r}" for k, v in zip(KEY_COLUMNS, key, strict=True)))
            origin[key] = path
            rows.append(row)
    import pandas as pd  # here, not at import: the reconstruct jobs (one per run) score but never build tables

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df = _coerce(df)
    check_phantom_versions(df)
    df = df.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
    df.attrs["packages"] = packages  # {packages_sha256: versions}, for the provenance record
    return df


def _rows_of(record: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(record, dict) or not isinstance(record.get("run"), dict) \
            or not isinstance(record.get("references"), dict):
        raise InputError(f"{path} is not a metrics file written by qsmbench.results.evaluate_run "
                         "(needs the objects 'run' and 'references')")
    run = record["run"]
    status = run.get("status")
    if status not in RUN_STATUSES:
        raise InputError(f"{path}: run status must be one of {RUN_STATUSES}, got {status!r}")
    try:
        seed = int(run["seed"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: the run has no integer 'seed'") from None
    common = {
        "dataset": _text(record.get("dataset", run.get("dataset"))),
        "perturbation": _text(record.get("perturbation", run.get("perturbation"))),
        "method": _text(record.get("method") or run.get("run_id") or run.get("method")),
        "seed": seed,
        "run_status": status,
        "error": _text(run.get("error")),
        "log_tail": _text(run.get("log_tail")) if status != "ok" else "",
        "wall_s": _number(run.get("wall_s")),
        "cpu_s": _number(run.get("cpu_s")),
        "prepare_s": _number(run.get("prepare_s")),
        "peak_rss_mb": _number(run.get("peak_rss_mb")),
        "peak_gpu_mb": _number(run.get("peak_gpu_mb")),
        "method_name": _text(run.get("method")),
        "profile": _text(run.get("profile")),
        "profile_reason": _text(run.get("profile_reason")),
        "device": _text(run.get("device")),
        "parameters": json.dumps(run.get("parameters") or {}, sort_keys=True, default=str),
        "qsmbench_version": _text(run.get("qsmbench_version")),
        "git_commit": _text(run.get("git_commit")),
        "git_dirty": "" if run.get("git_dirty") is None else str(bool(run["git_dirty"])).lower(),
        "packages_sha256": _text(run.get("packages_sha256")),
        "data_sha256": _text(record.get("data_sha256")),
        "phantom_model": _text(record.get("phantom_model")),
        "phantom_version": _text(record.get("phantom_version")),
        "trained_on": _provenance_text(run.get("trained_on")),
        "tuned_on": _provenance_text(run.get("tuned_on")),
        "tuning": str((run.get("tuning") or {}).get("mode") or "default"),
        "tuned_value": tuned_value_text(run.get("tuning")),
    }
    rows = []
    if status != "ok" or not record["references"]:
        if status != "ok":
            row_status, reason = "run_failed", _text(run.get("error")) or "the run failed (no error recorded)"
        else:
            row_status = "not_applicable"
            reason = "; ".join(record.get("notes") or []) or "the volume has no reference"
        for spec in metrics.metric_table():
            rows.append({**common, "reference": "", "metric": spec["metric"], "value": math.nan,
                         "status": row_status, "reason": reason, "better": spec["better"],
                         "unit": spec["unit"]})
        return rows
    for ref, scores in record["references"].items():
        if not isinstance(scores, list):
            raise InputError(f"{path}: references.{ref} must be a list of metric results")
        for res in scores:
            try:
                rstatus = res["status"]
                value = _number(res.get("value")) if rstatus == "ok" else math.nan
                rows.append({**common, "reference": str(ref), "metric": str(res["metric"]),
                             "value": value, "status": rstatus, "reason": _text(res.get("reason")),
                             "better": _text(res.get("better")), "unit": _text(res.get("unit"))})
            except (KeyError, TypeError) as exc:
                raise InputError(f"{path}: malformed metric result in references.{ref}: {exc}") from None
            if rstatus not in ("ok", "not_applicable"):
                raise InputError(f"{path}: metric status must be 'ok' or 'not_applicable', got {rstatus!r}")
    return rows


def _provenance_text(x: Any) -> str:
    """run.json's trained_on / tuned_on as JSON text ('' when absent)."""
    if x in (None, "", {}, []):
        return ""
    return x if isinstance(x, str) else json.dumps(x, sort_keys=True, default=str)


def check_phantom_versions(df: pd.DataFrame, origin: Mapping[tuple, Path] | None = None) -> None:
    """Refuse a table in which one dataset's rows come from different phantom models or versions.

    Such rows score methods on different subjects or simulations under one dataset id (e.g.
    metric files left over from before a phantom update); the message names them.
    """
    if "phantom_version" not in df.columns or df.empty:
        return
    for dataset, g in df.groupby("dataset", sort=True):
        kinds = sorted({(m, v) for m, v in zip(g["phantom_model"], g["phantom_version"], strict=True)})
        if len(kinds) > 1:
            what = ", ".join(f"model {m or '(none)'!r} version {v or '(none)'!r}" for m, v in kinds)
            raise InputError(f"dataset {dataset!r} mixes results of different phantoms ({what}); re-run the workflow "
                             "so that every result of a dataset comes from the same phantom (delete the stale "
                             "results/metrics files of the old one)")


def _text(x: Any) -> str:
    return "" if x is None else str(x)


def _number(x: Any) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Fix the dtypes of the :data:`COLUMNS` (after building or reading CSV) and put them first.

    Extra columns (e.g. a ``config_hash`` added by the workflow) are kept, after the schema's.
    """
    import pandas as pd

    df = df.copy()
    for c in _FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="raise").astype("int64")
    for c in _STR_COLUMNS:
        df[c] = df[c].where(df[c].notna(), "").astype(str)
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


# --------------------------------------------------------------------------- storage
def as_table(df: pd.DataFrame, what: str = "the results table") -> pd.DataFrame:
    """``df`` with the :data:`COLUMNS` first and typed; :class:`InputError` if one is missing."""
    missing = [c for c in COLUMNS if c not in df.columns and c not in _ADDED_COLUMNS]
    df = df.assign(**{c: "" for c in _ADDED_COLUMNS if c not in df.columns})
    if missing:
        raise InputError(f"{what} lacks the column(s) {', '.join(missing)}")
    df = _coerce(df)
    df["tuning"] = df["tuning"].replace("", "default")  # tables from before tuning existed
    return df


def write_table(df: pd.DataFrame, parquet_path: str | os.PathLike,
                csv_path: str | os.PathLike | None = None) -> None:
    """Write the table as parquet (and CSV when ``csv_path`` is given), each atomically."""
    df = as_table(df)
    atomic_write(parquet_path, lambda tmp: df.to_parquet(tmp, index=False))
    if csv_path is not None:
        atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False, na_rep="NaN"))


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (``.parquet`` or ``.csv``), with its dtypes."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"results table not found: {path}")
    try:
        if path.suffix == ".csv":
            # Empty strings are values ('' reference, '' error), not missing data.
            df = pd.read_csv(path, keep_default_na=False, na_values={c: ["NaN", "nan", ""]
                                                                     for c in _FLOAT_COLUMNS},
                             dtype={c: str for c in _STR_COLUMNS})
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow and the CSV parser raise many types
        raise InputError(f"cannot read results table {path}: {exc}") from None
    return as_table(df, str(path))


def default_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs with the methods' default parameters (``tuning == 'default'``): what every
    section of the report except "Tuning" shows, so that tuned and default results never mix."""
    if "tuning" not in df.columns:
        return df
    return df[df["tuning"].isin(["default", ""])].reset_index(drop=True)


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run (dataset, perturbation, method, seed, tuning) with its run-level columns."""
    cols = ["dataset", "perturbation", "method", "seed", "run_status", "error", "log_tail", "wall_s", "cpu_s",
            "prepare_s", "peak_rss_mb", "peak_gpu_mb", "method_name", "profile", "profile_reason", "device",
            "parameters", "qsmbench_version", "git_commit", "git_dirty", "packages_sha256",
            "data_sha256", "phantom_model", "phantom_version",
            "trained_on", "tuned_on", "tuning", "tuned_value"]
    out = df[cols].drop_duplicates(subset=["dataset", "perturbation", "method", "seed", "tuning"])
    return out.sort_values(["dataset", "perturbation", "method", "seed"]).reset_index(drop=True)


__all__ = ["COLUMNS", "EXTRA_COLUMNS", "KEY_COLUMNS", "ROW_STATUSES", "RUN_STATUSES", "as_table", "atomic_write",
           "check_phantom_versions", "check_scorable", "collect", "default_rows", "digest_of", "evaluate_run",
           "read_table", "rescore", "runs", "volume_checksums", "write_table"]
