"""The HTML report: one self-contained file built from the results table and declared images.

:func:`render_report` turns the tidy table of :mod:`qsmbench.results` (every number comes from
it) plus a list of slice montages (images read from the volume folders and the χ maps) into a
single HTML page: figures are embedded as base64 PNG, the style sheet is inlined, and nothing
is loaded from the network.

The look lives in the ``report/`` folder at the repository root: ``templates/report.html.j2``
(Jinja2, autoescaped), ``style.css`` and one-line reStructuredText captions in ``captions/``
(``{key}.rst``; see :data:`DEFAULT_CAPTIONS` for the keys).  Change the words there, not here.
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
import math
import os
import platform
import re
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from . import __version__, io, metrics, results
from .errors import InputError

#: The report folder shipped with the repository (templates, style sheet, captions).
REPORT_DIR = Path(__file__).resolve().parent.parent / "report"
TEMPLATE = "report.html.j2"
STYLE = "style.css"

#: Sections in page order: anchor id -> heading.
SECTIONS = {
    "overview": "Overview",
    "metrics": "Metrics",
    "robustness": "Robustness",
    "montages": "Slice montages",
    "runtime": "Run time and peak memory",
    "failures": "Failed runs",
    "definitions": "Metric definitions",
    "provenance": "Provenance",
}

#: Caption used when ``captions/{key}.rst`` is missing.
DEFAULT_CAPTIONS = {
    "overview": "What this report covers: datasets, perturbations, methods and references.",
    "run_status": "Status of every reconstruction run, per method and (dataset, perturbation).",
    "metrics": "Metric values per method; the best value of each column is highlighted.",
    "robustness": "How each method degrades along each perturbation axis (noise, resolution, B0 orientation).",
    "robustness_plot": "Metric against perturbation level, one line per method (mean over seeds, band: min–max).",
    "robustness_table": "The values of the plot above: mean ± standard deviation over seeds.",
    "montage": "Central slices of the reference χ, the input field, each method's χ and its error.",
    "runtime_table": "Run time and peak memory of every reconstruction run.",
    "runtime_chart": "Mean run time and peak memory per method over its successful runs.",
    "failed_runs": "Runs that failed, with their error.",
    "metric_definitions": "Definitions and sources of the metrics.",
    "provenance": "Software versions and the configuration that produced these results.",
    "config": "The configuration of the run.",
}

#: Colour-blind-friendly palette (Okabe-Ito, then Tableau) assigned to methods.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#76B7B2", "#EDC948", "#9C755F")

#: Fallback χ display range (ppm) when the data give none.
CHI_RANGE_PPM = (-0.15, 0.25)

_ORIENTATIONS = (("axial", 2), ("coronal", 1), ("sagittal", 0))


# --------------------------------------------------------------------------- colours
def method_colour(name: str) -> str:
    """A display colour (``#rrggbb``) that depends on the method name only."""
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def method_colours(names: Sequence[str]) -> dict[str, str]:
    """Distinct colours for a set of methods: the palette in sorted-name order.

    Beyond the palette's length, names fall back to :func:`method_colour`.
    """
    names = sorted(set(names))
    return {n: PALETTE[i] if i < len(PALETTE) else method_colour(n) for i, n in enumerate(names)}


# --------------------------------------------------------------------------- formatting
def format_number(value: Any, digits: int = 4) -> str:
    """``digits`` significant figures without exponent for everyday magnitudes; 'n/a' otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-3:
        return f"{v:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(a)))
    return f"{v:.{decimals}f}"


def _label(metric: str, unit: str) -> str:
    return f"{metric} ({unit})" if unit else metric


def _cell(text: Any = "", *, title: str = "", cls: str = "", swatch: str = "") -> dict[str, str]:
    return {"text": str(text), "title": title, "cls": cls, "swatch": swatch}


def _table(key: str, columns: Sequence[Any], rows: list[list[dict]], captions: _Captions, source: str,
           title: str = "") -> dict[str, Any]:
    cols = [c if isinstance(c, dict) else {"text": str(c), "title": ""} for c in columns]
    anchor = "table-" + re.sub(r"[^a-z0-9]+", "-", f"{key} {title}".lower()).strip("-")
    return {"key": key, "anchor": anchor, "title": title, "columns": cols, "rows": rows,
            "caption": captions(key), "source": source, "notes": []}


class _Captions:
    """One-line ``.rst`` captions, rendered to HTML (inline literals only)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, key: str) -> Markup:
        path = self.folder / f"{key}.rst"
        text = ""
        if path.is_file():
            text = " ".join(line.strip() for line in path.read_text(encoding="utf-8").splitlines()).strip()
        text = text or DEFAULT_CAPTIONS.get(key, "")
        escaped = html.escape(text)
        escaped = re.sub(r"``(.+?)``", r"<code>\1</code>", escaped)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", escaped)
        return Markup(escaped)


# --------------------------------------------------------------------------- entry point
def render_report(table: pd.DataFrame | str | os.PathLike, out_html: str | os.PathLike, *,
                  montages: Sequence[Mapping[str, Any]] = (), config: Any = None,
                  provenance: Mapping[str, Any] | None = None,
                  captions_dir: str | os.PathLike | None = None,
                  report_dir: str | os.PathLike | None = None,
                  robustness_metrics: Sequence[str] = ("nrmse", "xsim")) -> Path:
    """Write the report as one self-contained HTML file (atomically); return its path.

    Parameters
    ----------
    table : the tidy results table (:data:`qsmbench.results.COLUMNS`) or the path of its
        parquet/CSV file.
    out_html : the HTML file to write.
    montages : one dict per slice montage: ``dataset``, ``perturbation``, ``volume_dir`` (the
        canonical volume folder the methods reconstructed), ``recons`` ({method: path of its χ
        NIfTI, or None when the run failed}) and optionally ``reference`` (which reference to
        show; default the first in sorted order).
    config : the workflow configuration, as a mapping (shown as YAML) or the path of its file.
    provenance : extra key/value pairs shown under Provenance (e.g. the Snakemake version).
    captions_dir : folder of the ``{key}.rst`` captions; default ``report_dir/captions``.
    report_dir : folder holding ``templates/`` and ``style.css``; default :data:`REPORT_DIR`.
    robustness_metrics : the metrics of the degradation plots (Robustness section), one panel each.
    """
    source = "the results table"
    if not isinstance(table, pd.DataFrame):
        source = f"the results table {Path(table).name}"
        table = results.read_table(table)
    df = results.as_table(table)  # the schema's columns and dtypes, whatever the source
    report_dir = Path(report_dir) if report_dir is not None else REPORT_DIR
    if not (report_dir / "templates" / TEMPLATE).is_file():
        raise InputError(f"report template not found: {report_dir / 'templates' / TEMPLATE}")
    captions = _Captions(Path(captions_dir) if captions_dir is not None else report_dir / "captions")
    run_table = results.runs(df)
    method_names = set(df["method"]) | {m for e in montages for m in e.get("recons", {})}
    colours = method_colours(sorted(method_names))

    context = {
        "title": "qsmbench report",
        "css": Markup((report_dir / STYLE).read_text(encoding="utf-8")) if (report_dir / STYLE).is_file()
        else "",
        "sections": SECTIONS,
        "overview": _overview(df, run_table, colours, captions, source),
        "metric_tables": _metric_tables(df, run_table, colours, captions, source),
        "robustness": _robustness(df, colours, captions, source, robustness_metrics),
        "montages": [_montage(e, colours, captions) for e in montages],
        "runtime": _runtime(run_table, colours, captions, source),
        "failures": _failures(run_table, colours, captions, source),
        "definitions": _definitions(df, captions),
        "provenance": _provenance(df, config, provenance, captions, source),
        "version": __version__,
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(report_dir / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    text = env.get_template(TEMPLATE).render(**context)
    return results.atomic_write(out_html, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def montages_from_runs(run_json_paths: Sequence[str | os.PathLike],
                       volume_dirs: Mapping[Any, str | os.PathLike], *,
                       perturbations: Sequence[str] = ("none",)) -> list[dict[str, Any]]:
    """The ``montages`` argument of :func:`render_report`, built from the runner's ``run.json`` files.

    One entry per (dataset, perturbation) with ``perturbation`` in ``perturbations``; its volume
    folder is ``volume_dirs[(dataset, perturbation)]``, or ``volume_dirs[dataset]`` for the
    unperturbed volume ('none').  Runs whose volume folder is not given are skipped.  A failed
    run contributes ``None`` (shown as a labelled blank panel).
    """
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for p in run_json_paths:
        path = Path(p)
        run = io.read_json(path)
        try:
            dataset, perturbation, status = str(run["dataset"]), str(run["perturbation"]), run["status"]
            method = str(run.get("run_id") or run["method"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path} lacks the key {exc}") from None
        if perturbation not in perturbations:
            continue
        folder = volume_dirs.get((dataset, perturbation))
        if folder is None and perturbation == "none":
            folder = volume_dirs.get(dataset)
        if folder is None:
            continue
        entry = entries.setdefault((dataset, perturbation), {
            "dataset": dataset, "perturbation": perturbation, "volume_dir": Path(folder), "recons": {}})
        ok = status == "ok" and run.get("output")
        entry["recons"][method] = path.parent / run["output"] if ok else None
    return [entries[k] for k in sorted(entries)]


# --------------------------------------------------------------------------- sections
def _method_cell(name: str, colours: Mapping[str, str]) -> dict[str, str]:
    return _cell(name, cls="method", swatch=colours.get(name, method_colour(name)))


def _overview(df, run_table, colours, captions, source) -> dict[str, Any]:
    n_ok = int((run_table["run_status"] == "ok").sum())
    refs = sorted({r for r in df["reference"] if r})
    facts = [
        ("datasets", ", ".join(sorted(set(df["dataset"]))) or "none"),
        ("perturbations", ", ".join(sorted(set(df["perturbation"]))) or "none"),
        ("methods", ", ".join(sorted(set(df["method"]))) or "none"),
        ("references", ", ".join(refs) or "none"),
        ("metrics", ", ".join(_metric_order(df)) or "none"),
        ("runs", f"{len(run_table)} ({n_ok} succeeded, {len(run_table) - n_ok} failed)"),
        ("metric values", f"{int((df['status'] == 'ok').sum())} computed, "
                          f"{int((df['status'] == 'not_applicable').sum())} not applicable, "
                          f"{int((df['status'] == 'run_failed').sum())} missing because the run failed"),
    ]
    groups = sorted({(d, p) for d, p in zip(run_table["dataset"], run_table["perturbation"], strict=True)})
    rows = []
    for m in sorted(set(run_table["method"])):
        row = [_method_cell(m, colours)]
        for d, p in groups:
            sel = run_table[(run_table["method"] == m) & (run_table["dataset"] == d)
                            & (run_table["perturbation"] == p)]
            if sel.empty:
                row.append(_cell("—", title="not run"))
                continue
            ok = int((sel["run_status"] == "ok").sum())
            text = "ok" if ok == len(sel) else "failed" if ok == 0 else f"{ok}/{len(sel)} ok"
            errors = "; ".join(sorted({e for e in sel["error"] if e}))
            row.append(_cell(text, title=errors, cls="ok" if ok == len(sel) else "failed"))
        rows.append(row)
    status = _table("run_status", ["method", *[f"{d} / {p}" for d, p in groups]], rows, captions,
                    f"qsmbench.report from {source}: run_status per (dataset, perturbation, method, seed)")
    return {"caption": captions("overview"), "facts": facts, "status": status}


def _metric_order(df: pd.DataFrame) -> list[str]:
    registered = [r["metric"] for r in metrics.metric_table()]
    present = set(df["metric"])
    return [m for m in registered if m in present] + sorted(present - set(registered))


def _metric_tables(df, run_table, colours, captions, source) -> list[dict[str, Any]]:
    """One methods × metrics table per (dataset, reference, perturbation).

    Values are means over seeds of the 'ok' rows.  Methods whose runs failed keep their row.  A
    metric that is not applicable for every method loses its column and is listed, with its
    reason, in a note under the table instead.
    """
    order = _metric_order(df)
    scored = df[df["reference"] != ""]
    tables = []
    for (dataset, reference, perturbation), group in scored.groupby(
            ["dataset", "reference", "perturbation"], sort=True):
        runs_here = run_table[(run_table["dataset"] == dataset) & (run_table["perturbation"] == perturbation)]
        methods_here = sorted(set(group["method"]) | set(runs_here["method"]))
        metric_names = [m for m in order if m in set(group["metric"])]
        cells: dict[tuple[str, str], dict] = {}
        means: dict[tuple[str, str], float] = {}
        for method in methods_here:
            mruns = runs_here[runs_here["method"] == method]
            for metric in metric_names:
                rows = group[(group["method"] == method) & (group["metric"] == metric)]
                cells[method, metric], mean = _metric_cell(rows, mruns)
                if mean is not None:
                    means[method, metric] = mean
        shown = [k for k in metric_names if any((m, k) in means for m in methods_here)] or metric_names
        hidden = [k for k in metric_names if k not in shown]
        first = {k: group[group["metric"] == k].iloc[0] for k in metric_names}
        for metric in shown:
            vals = {m: v for (m, k), v in means.items() if k == metric}
            if len(vals) < 2:
                continue
            best = (min if first[metric]["better"] == "lower" else max)(vals.values())
            for m, v in vals.items():
                if math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15):
                    cells[m, metric]["cls"] += " best"
        columns = [{"text": "method", "title": ""}] + [
            {"text": _label(k, first[k]["unit"]), "title": f"{first[k]['better']} is better"} for k in shown]
        rows_out = [[_method_cell(m, colours)] + [cells[m, k] for k in shown] for m in methods_here]
        table = _table(
            "metrics", columns, rows_out, captions,
            f"qsmbench.report from {source}: rows with dataset={dataset}, reference={reference}, "
            f"perturbation={perturbation}; mean over seeds of the 'ok' values",
            title=f"{dataset} · reference {reference} · perturbation {perturbation}")
        table["notes"] = [
            f"{k}: not applicable on these data — "
            + "; ".join(sorted({r for r in group.loc[group["metric"] == k, "reason"] if r}))
            for k in hidden]
        tables.append(table)
    return tables


def _metric_cell(rows: pd.DataFrame, runs_of_method: pd.DataFrame) -> tuple[dict[str, str], float | None]:
    """The cell of one method and metric (rows: its rows of the table) and its mean value."""
    n_failed = int((runs_of_method["run_status"] == "failed").sum())
    errors = "; ".join(sorted({e for e in runs_of_method["error"] if e}))
    ok = rows.loc[rows["status"] == "ok", "value"].to_numpy(dtype=float)
    if ok.size:
        mean = float(ok.mean())
        text, notes = format_number(mean), []
        if ok.size > 1:
            text += " ± " + _format_like(ok.std(ddof=1), text)
            notes.append(f"mean ± sd over {ok.size} seeds")
        na = rows[rows["status"] == "not_applicable"]
        if len(na):
            notes.append(f"not applicable for {len(na)} seeds: " + "; ".join(sorted(set(na["reason"]))))
        if n_failed:
            notes.append(f"{n_failed} of {len(runs_of_method)} runs failed: {errors}")
        return _cell(text, title="\n".join(notes), cls="num"), mean
    if len(rows):
        reasons = "; ".join(sorted({r for r in rows["reason"] if r})) or "not applicable"
        return _cell("n/a", title=reasons, cls="na"), None
    if n_failed:
        return _cell("failed", title=errors, cls="failed"), None
    return _cell("—", title="not computed", cls="na"), None


def _format_like(value: float, reference_text: str) -> str:
    """``value`` with as many decimals as ``reference_text`` (a spread next to its mean)."""
    if "e" in reference_text or not math.isfinite(value):
        return format_number(value)
    decimals = len(reference_text.split(".")[1]) if "." in reference_text else 0
    text = f"{value:.{decimals}f}"
    return text if float(text) != 0 or value == 0 else format_number(value, digits=2)


def _robustness(df, colours, captions, source, metric_names=("nrmse", "xsim")) -> dict[str, Any]:
    """One degradation plot (and its table) per (dataset, reference, perturbation axis).

    The x axis holds ``none`` then the axis's levels (a level is a perturbation id without its
    noise seed, :func:`qsmbench.perturb.level_id`), from least to most degraded; each method's
    line is the mean over seeds (noise seeds and method seeds) of its 'ok' values, the band the
    min–max.  Perturbation ids that :mod:`qsmbench.perturb` cannot parse are listed in a note.
    """
    from . import perturb

    notes, axis_of = [], {}
    for p in sorted(set(df["perturbation"]) - {"none"}):
        try:
            axis_of[p] = perturb.axis_name(p)
        except ValueError as exc:
            notes.append(f"perturbation {p!r} is not shown: {exc}")
    present = set(df["metric"])
    metric_list = [m for m in metric_names if m in present]
    items = []
    scored = df[(df["reference"] != "") & df["metric"].isin(metric_list)]
    for (dataset, reference), group in scored.groupby(["dataset", "reference"], sort=True):
        axes = sorted({axis_of[p] for p in set(group["perturbation"]) if p in axis_of},
                      key=lambda a: (a.count("+"), [perturb.KINDS.index(k) for k in a.split("+")]))
        for axis in axes:
            levels: dict[str, list[str]] = {}
            for p in sorted(p for p in set(group["perturbation"]) if axis_of.get(p) == axis):
                levels.setdefault(perturb.level_id(p), []).append(p)
            order = sorted(levels, key=lambda lv: perturb.severity(levels[lv][0]))
            points = [("none", ["none"])] + [(perturb.level_label(levels[lv][0]), levels[lv]) for lv in order]
            # the metrics scored somewhere on this axis (all of them when every run failed)
            on_axis = group[group["perturbation"].isin([p for ids in levels.values() for p in ids])
                            & (group["status"] == "ok")]
            shown = [m for m in metric_list if m in set(on_axis["metric"])] or metric_list
            items.append(_degradation(dataset, reference, axis, points, group, shown, colours, captions, source))
    return {"caption": captions("robustness"), "items": items, "notes": notes}


def _degradation(dataset, reference, axis, points, group, metric_list, colours, captions, source) -> dict[str, Any]:
    """The plot and table of one axis: ``points`` is [(label, [perturbation ids])], 'none' first."""
    methods = sorted(set(group["method"]))
    first = {m: group[group["metric"] == m].iloc[0] for m in metric_list}
    stats: dict[tuple[str, str], list[tuple[float, float, float, float, int]]] = {}
    for metric in metric_list:
        for method in methods:
            rows = group[(group["metric"] == metric) & (group["method"] == method) & (group["status"] == "ok")]
            series = []
            for _, ids in points:
                v = rows.loc[rows["perturbation"].isin(ids), "value"].to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                series.append((float(v.mean()), float(v.min()), float(v.max()),
                               float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)) if v.size
                              else (math.nan, math.nan, math.nan, math.nan, 0))
            stats[metric, method] = series
    title = f"{dataset} · reference {reference} · {axis.replace('+', ' + ')}"
    png = _degradation_png(title, axis, [label for label, _ in points], methods, metric_list, first, stats, colours)
    columns = ["method", "metric"] + [label for label, _ in points]
    rows_out = []
    for method in methods:
        for metric in metric_list:
            cells = [_method_cell(method, colours), _cell(_label(metric, first[metric]["unit"]))]
            for mean, _lo, _hi, sd, n in stats[metric, method]:
                if n == 0:
                    cells.append(_cell("—", title="no successful run at this level", cls="na"))
                    continue
                text = format_number(mean)
                if n > 1:
                    text += " ± " + _format_like(sd, text)
                cells.append(_cell(text, title=f"{n} value{'s' if n > 1 else ''}", cls="num"))
            rows_out.append(cells)
    ids = ", ".join(i for _, group_ids in points[1:] for i in group_ids)
    table = _table("robustness_table", columns, rows_out, captions,
                   f"qsmbench.report from {source}: rows with dataset={dataset}, reference={reference}, "
                   f"status ok, perturbation none or {ids}", title="")
    figure = {"title": title, "caption": captions("robustness_plot"), "png": png,
              "alt": f"degradation plot of {', '.join(metric_list)} against {axis} level for {', '.join(methods)}",
              "source": f"qsmbench.report (matplotlib) from {source}"}
    return {"figure": figure, "table": table}


_AXIS_LABELS = {"noise": "peak SNR", "resolution": "voxel size", "orientation": "B0 tilt"}


def _degradation_png(title, axis, labels, methods, metric_list, first, stats, colours) -> str:
    plt = _pyplot()
    n = max(1, len(metric_list))
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n + 0.4, 3.4), layout="constrained", squeeze=False)
    fig.suptitle(title, fontsize=11)
    x = np.arange(len(labels))
    for ax, metric in zip(axes[0], metric_list, strict=False):
        for method in methods:
            series = np.array([s[:3] for s in stats[metric, method]], dtype=float)
            colour = colours.get(method, method_colour(method))
            ax.plot(x, series[:, 0], marker="o", ms=4, color=colour, label=method)
            if np.any(series[:, 2] > series[:, 1]):
                ax.fill_between(x, series[:, 1], series[:, 2], color=colour, alpha=0.2, linewidth=0)
        ax.set_xticks(x, labels, rotation=30 if len(labels) > 4 or axis not in _AXIS_LABELS else 0,
                      ha="right" if len(labels) > 4 or axis not in _AXIS_LABELS else "center", fontsize=8)
        ax.set_xlabel(_AXIS_LABELS.get(axis, "level") + " (least to most perturbed)", fontsize=9)
        ax.set_ylabel(f"{_label(metric, first[metric]['unit'])}, {first[metric]['better']} is better", fontsize=9)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][-1].legend(fontsize=8, frameon=False, loc="best")
    return _png(fig)


def _runtime(run_table, colours, captions, source) -> dict[str, Any]:
    columns = ["dataset", "perturbation", "method", "seed", "status", "device", "wall (s)", "CPU (s)",
               "prepare (s)", "peak RAM (MB)", "peak GPU (MB)"]
    rows = []
    for r in run_table.itertuples(index=False):
        rows.append([
            _cell(r.dataset), _cell(r.perturbation), _method_cell(r.method, colours), _cell(r.seed),
            _cell(r.run_status, title=r.error, cls="ok" if r.run_status == "ok" else "failed"),
            _cell(r.device or "n/a"),
            *[_num_cell(getattr(r, c)) for c in ("wall_s", "cpu_s", "prepare_s", "peak_rss_mb")],
            _num_cell(r.peak_gpu_mb, missing="no GPU memory recorded"),
        ])
    table = _table("runtime_table", columns, rows, captions,
                   f"qsmbench.report from {source}: one row per run; times and memory measured by "
                   "qsmbench.runner (reconstruction timed, preparation untimed)")
    figure = None
    ok = run_table[run_table["run_status"] == "ok"]
    if len(ok):
        figure = {"title": "", "caption": captions("runtime_chart"), "png": _runtime_chart(ok, colours),
                  "alt": "bar chart of run time and peak memory per method",
                  "source": f"qsmbench.report (matplotlib) from {source}: successful runs only"}
    return {"table": table, "figure": figure}


def _num_cell(value: Any, missing: str = "not recorded") -> dict[str, str]:
    text = format_number(value)
    return _cell(text, title=missing if text == "n/a" else "", cls="num" if text != "n/a" else "na")


def _failures(run_table, colours, captions, source) -> dict[str, Any]:
    failed = run_table[run_table["run_status"] == "failed"]
    rows = [[_method_cell(r.method, colours), _cell(r.dataset), _cell(r.perturbation), _cell(r.seed),
             _cell(r.error or "no error recorded", cls="error")] for r in failed.itertuples(index=False)]
    return _table("failed_runs", ["method", "dataset", "perturbation", "seed", "error"], rows, captions,
                  f"qsmbench.report from {source}: runs with run_status = failed (error from run.json)")


def _definitions(df, captions) -> dict[str, Any]:
    rows = [[_cell(r["metric"], cls="method"), _cell(r["better"]), _cell(r["unit"] or "—"),
             _cell(r["definition"]), _cell(r["source"])] for r in metrics.metric_table()]
    return _table("metric_definitions", ["metric", "better", "unit", "definition", "source"], rows, captions,
                  "qsmbench.metrics.metric_table(): the registered metrics of this qsmbench version")


def _provenance(df, config, provenance, captions, source) -> dict[str, Any]:
    import matplotlib
    import nibabel

    facts = [
        ("report generated by", f"qsmbench {__version__}"),
        ("qsmbench version(s) of the runs", ", ".join(sorted({v for v in df["qsmbench_version"] if v}))
         or "not recorded"),
        ("git commit(s) of the runs",
         ", ".join(sorted({v for v in df["git_commit"] if v})) or "not recorded"),
        ("devices", ", ".join(sorted({v for v in df["device"] if v})) or "not recorded"),
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("numpy", np.__version__), ("pandas", pd.__version__), ("nibabel", nibabel.__version__),
        ("matplotlib", matplotlib.__version__), ("jinja2", jinja2.__version__),
    ]
    for column in [c for c in df.columns if c not in results.COLUMNS]:  # e.g. the workflow's config_hash
        values = sorted({str(v) for v in df[column].dropna()})
        facts.append((column, ", ".join(values) or "—"))
    for key, value in (provenance or {}).items():
        facts.append((str(key), value if isinstance(value, str)
                      else json.dumps(value, sort_keys=True, default=str)))
    rows = [[_cell(k, cls="key"), _cell(v)] for k, v in facts]
    table = _table("provenance", ["item", "value"], rows, captions,
                   f"qsmbench.report: this Python environment, {source} and the workflow's provenance")
    return {"table": table, "config": _config_text(config), "config_caption": captions("config")}


def _config_text(config: Any) -> str:
    if config is None:
        return ""
    if isinstance(config, str | os.PathLike):
        path = Path(config)
        if not path.is_file():
            raise InputError(f"configuration file not found: {path}")
        return path.read_text(encoding="utf-8")
    try:
        import yaml
        return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=True)
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        return json.dumps(config, indent=2, sort_keys=True, default=str)


# --------------------------------------------------------------------------- figures
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _runtime_chart(ok: pd.DataFrame, colours: Mapping[str, str]) -> str:
    plt = _pyplot()
    stats = ok.groupby("method").agg(wall=("wall_s", "mean"), wall_min=("wall_s", "min"),
                                     wall_max=("wall_s", "max"), rss=("peak_rss_mb", "max"),
                                     n=("wall_s", "size"),
                                     device=("device", lambda s: ", ".join(sorted({d for d in s if d}))))
    stats = stats.sort_index()
    names = list(stats.index)
    labels = [f"{m}\n({d})" if d else m for m, d in zip(names, stats["device"], strict=True)]
    ys = np.arange(len(names))
    cols = [colours.get(m, method_colour(m)) for m in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 0.55 * len(names) + 1.4), layout="constrained",
                                   sharey=True)
    wall = stats["wall"].fillna(0).to_numpy()
    err = np.vstack([wall - stats["wall_min"].fillna(0).to_numpy(),
                     stats["wall_max"].fillna(0).to_numpy() - wall])
    ax1.barh(ys, wall, color=cols, xerr=err if len(ok) > len(names) else None, capsize=3)
    ax1.set_xlabel("wall time (s): mean, min–max")
    ax1.set_yticks(ys, labels)
    ax1.invert_yaxis()
    ax2.barh(ys, stats["rss"].fillna(0).to_numpy(), color=cols)
    ax2.set_xlabel("peak RAM (MB): max")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _central_index(mask: np.ndarray) -> tuple[int, int, int]:
    idx = np.argwhere(mask)
    return tuple(int(round(c)) for c in idx.mean(axis=0))  # type: ignore[return-value]


def _slice(arr: np.ndarray, axis: int, index: int) -> np.ndarray:
    # Transposed so that the first remaining array axis runs left to right and the second
    # bottom to top (with origin="lower").
    return np.take(arr, index, axis=axis).T


def _aspect(voxel_size_mm, axis: int) -> float:
    a, b = [v for i, v in enumerate(voxel_size_mm) if i != axis]
    return b / a


def _montage(entry: Mapping[str, Any], colours: Mapping[str, str], captions: _Captions) -> dict[str, Any]:
    try:
        dataset, perturbation = str(entry["dataset"]), str(entry["perturbation"])
        volume_dir = Path(entry["volume_dir"])
    except KeyError as exc:
        raise InputError(f"a montage entry lacks the key {exc}") from None
    vol = io.load_volume(volume_dir)
    ref_name = entry.get("reference") or (sorted(vol.references)[0] if vol.references else None)
    if ref_name is not None and ref_name not in vol.references:
        raise InputError(f"{volume_dir} has no reference {ref_name!r}; it has {sorted(vol.references)}")
    reference = vol.references.get(ref_name) if ref_name else None
    recons: dict[str, np.ndarray | None] = {}
    for method in sorted(entry.get("recons", {})):
        path = entry["recons"][method]
        if path is None:
            recons[method] = None
            continue
        chi, affine, _ = io.read_nifti(path, role=f"reconstruction of {method}")
        io.check_same_grid(volume_dir / io.FIELD, vol.shape, vol.affine, path, chi.shape, affine)
        recons[method] = chi.astype(float)
    png = _montage_png(vol, reference, ref_name, recons, colours, f"{dataset} / {perturbation}")
    title = f"{dataset} · perturbation {perturbation}" + (f" · reference {ref_name}" if ref_name else "")
    return {"title": title,
            "caption": captions("montage"), "png": png,
            "alt": f"slice montage of {dataset} ({perturbation}) for {', '.join(recons) or 'no method'}",
            "source": f"qsmbench.report (matplotlib) from {volume_dir.name}/ and the methods' χ maps; "
                      "values outside the brain mask are hidden"}


def _montage_png(vol, reference, ref_name, recons, colours, title) -> str:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    mask = vol.mask
    inside = mask.astype(bool)
    if reference is not None:
        lo, hi = np.percentile(reference[inside], [0.5, 99.5])
    else:
        pooled = [r[inside] for r in recons.values() if r is not None]
        lo, hi = np.percentile(np.concatenate(pooled), [0.5, 99.5]) if pooled else CHI_RANGE_PPM
    if not hi > lo:
        lo, hi = CHI_RANGE_PPM
    field_lim = float(np.percentile(np.abs(vol.field_ppm[inside]), 99.5)) or 1.0
    errors = {m: (r - reference) for m, r in recons.items() if r is not None and reference is not None}
    err_lim = float(np.percentile(np.abs(np.concatenate([e[inside] for e in errors.values()])), 99)) \
        if errors else 0.0
    err_lim = err_lim or (hi - lo) / 4

    # Field first, so that the columns sharing a colour scale (and a colour bar) are adjacent.
    columns: list[tuple[str, str, Any, str]] = [("local field", "field", vol.field_ppm, "")]
    if reference is not None:
        columns.append((f"reference χ ({ref_name})", "chi", reference, ""))
    columns += [(f"{m} χ", "chi", r, m) for m, r in recons.items()]
    if reference is not None:
        columns += [(f"{m} error", "err", errors.get(m), m) for m in recons]
    cmaps = {"chi": plt.get_cmap("gray").with_extremes(bad="black"),
             "field": plt.get_cmap("gray").with_extremes(bad="black"),
             "err": plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9"),
             "failed": plt.get_cmap("gray").with_extremes(bad="#f2f2f2")}
    limits = {"chi": (lo, hi), "field": (-field_lim, field_lim), "err": (-err_lim, err_lim)}

    centre = _central_index(inside)
    ncol = len(columns)
    fig, axes = plt.subplots(3, ncol, figsize=(1.55 * ncol + 0.6, 3 * 1.6 + 1.6), layout="constrained",
                             squeeze=False)
    fig.suptitle(title, fontsize=11)
    mappables: dict[str, Any] = {}
    for row, (orient, axis) in enumerate(_ORIENTATIONS):
        for col, (name, kind, image, method) in enumerate(columns):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9, color=colours.get(method, "black") if method else "black",
                             fontweight="bold" if method else "normal")
            if col == 0:
                ax.set_ylabel(orient, fontsize=9)
            if image is None:
                ax.imshow(np.ma.masked_all(_slice(inside, axis, centre[axis]).shape), origin="lower",
                          cmap=cmaps["failed"], aspect=_aspect(vol.voxel_size_mm, axis))
                ax.text(0.5, 0.5, "failed", ha="center", va="center", transform=ax.transAxes,
                        fontsize=10, color="#b00020")
                continue
            shown = np.ma.masked_where(~_slice(inside, axis, centre[axis]), _slice(image, axis, centre[axis]))
            im = ax.imshow(shown, origin="lower", cmap=cmaps[kind], vmin=limits[kind][0],
                           vmax=limits[kind][1], interpolation="nearest",
                           aspect=_aspect(vol.voxel_size_mm, axis))
            mappables.setdefault(kind, im)
    labels = {"chi": "χ (ppm)", "field": "field (ppm)", "err": "χ − reference (ppm)"}
    for kind in ("chi", "field", "err"):
        if kind not in mappables:
            continue
        cols = [c for c, (_, k, _, _) in enumerate(columns) if k == kind]
        cb = fig.colorbar(mappables[kind], ax=list(axes[:, cols].ravel()), location="bottom",
                          shrink=0.9 if len(cols) > 1 else 1.0, aspect=12 * max(1, len(cols)), pad=0.02)
        cb.ax.xaxis.set_major_locator(MaxNLocator(nbins=3 if len(cols) == 1 else 7))
        cb.set_label(labels[kind], fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return _png(fig)
