"""The HTML report: one self-contained page built from the results table and the χ maps.

:func:`render_report` turns the tidy table of :mod:`qsmbench.results` (every number comes from
it), the statistics of :mod:`qsmbench.stats` and the figures of :mod:`qsmbench.figures` into a
single HTML page: figures are embedded as base64 PNG, the style sheet is inlined, and nothing
is loaded from the network.  With ``figures_dir`` every figure is also written there as PNG and
SVG (``{figures_dir}/{kind}/{name}.png``; kinds :data:`FIGURE_KINDS`), for the Snakemake report
and for reuse.

Sections (:data:`SECTIONS`): overview (what was run, run status, the best method per headline
metric), results per dataset (metric table of the unperturbed data, ranking, paired
comparisons, every perturbation level collapsed), robustness (degradation curves per axis),
slice montages, cost (time and memory, device), method parameters, failed runs (with their
error), metric definitions and provenance (software, hardware, configuration and data
checksums).  Every table and figure has a caption (``report/captions/{key}.rst``) and a note
of what produced it.

The look lives in the ``report/`` folder at the repository root: ``templates/report.html.j2``
(Jinja2, autoescaped), ``style.css`` and one-line reStructuredText captions in ``captions/``
(``{key}.rst``; see :data:`DEFAULT_CAPTIONS` for the keys).  Change the words there, not here.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from . import __version__, figures, io, metrics, results, stats
from .errors import InputError
from .plugins import IMPORTED

#: The report folder shipped with the repository (templates, style sheet, captions).
REPORT_DIR = Path(__file__).resolve().parent.parent / "report"
TEMPLATE = "report.html.j2"
STYLE = "style.css"

#: Sections in page order: anchor id -> heading.
SECTIONS = {
    "overview": "Overview",
    "results": "Results per dataset",
    "robustness": "Robustness",
    "montages": "Slice montages",
    "cost": "Cost: run time and memory",
    "parameters": "Method parameters",
    "failures": "Failed runs",
    "definitions": "Metric definitions",
    "provenance": "Provenance",
}

#: The section shown after "results" when any run is tuned (qsmbench.tuning).
TUNING_SECTION = ("tuning", "Tuning: default vs tuned")

#: Sub-folders of ``figures_dir``, one per kind of figure.
FIGURE_KINDS = ("ranking", "robustness", "montage", "cost", "tuning")

#: Caption used when ``captions/{key}.rst`` is missing.
DEFAULT_CAPTIONS = {
    "overview": "What this report covers: datasets, perturbations, methods and references.",
    "run_status": "Successful runs out of all runs, per method and dataset.",
    "not_run": "Configured datasets that were skipped at start-up because their data could not be had, and why.",
    "run_status_detail": "Status of every run per perturbation (rows) and method (columns).",
    "headline": "The best method per headline metric on the unperturbed data.",
    "statistics": "How the statistics are computed.",
    "metrics": "Metric values per method on the unperturbed data; the best value of each column is highlighted.",
    "levels_table": "Metric values per perturbation level and method.",
    "ranking": "Mean rank of every method per metric over all volumes of the dataset.",
    "ranking_table": "The values of the ranking figure.",
    "comparisons": "Paired comparisons of the methods over the same perturbed volumes.",
    "robustness": "How each method degrades along each perturbation axis (noise, resolution, B0 orientation).",
    "robustness_plot": "Metric against perturbation level, one line per method (mean over seeds, band: 95 % CI).",
    "robustness_table": "The values of the plot above: mean ± half width of the 95 % CI over seeds.",
    "montage": "Central slices of the reference χ, the input field, each method's χ and its error.",
    "runtime_chart": "Run time and peak memory per method over its successful runs.",
    "cost_summary": "Run time and memory per method.",
    "runtime_table": "Run time and peak memory of every reconstruction run.",
    "parameters": "The parameters every method ran with.",
    "failed_runs": "Runs that failed, with their error.",
    "metric_definitions": "Definitions and sources of the metrics.",
    "tuning_side_by_side": "Per method and volume, the score with the default parameters next to the score after "
                           "tuning one parameter, with the value each mode chose. Oracle values are chosen against "
                           "the ground truth and are an upper bound; L-curve and discrepancy values are chosen "
                           "without it. 'not tunable': the method declares no tunable parameter.",
    "tuning_ranking": "Ranking of the methods within each tuning mode (mean over volumes; 1 = best). Modes are "
                      "ranked separately and never mixed.",
    "lcurve": "L-curve of each method's search: data misfit against regulariser norm over the candidate values; "
              "the marks show the value each mode chose.",
    "provenance": "Software versions, hardware and configuration that produced these results.",
    "data_checksums": "Checksums of the input data.",
    "config": "The configuration of the run.",
}

#: Tables longer than this are collapsed (``<details>``) by default.
COLLAPSE_ROWS = 12


# --------------------------------------------------------------------------- colours (compat)
def method_colour(name: str) -> str:
    """The display colour (``#rrggbb``) of a method shown on its own."""
    return figures.method_styles([name])[name].colour


def method_colours(names: Sequence[str]) -> dict[str, str]:
    """Distinct display colours of a set of methods (:func:`qsmbench.figures.method_styles`)."""
    return {n: s.colour for n, s in figures.method_styles(names).items()}


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


def _format_like(value: float, reference_text: str) -> str:
    """``value`` with as many decimals as ``reference_text`` (a spread next to its mean)."""
    if "e" in reference_text or not math.isfinite(value):
        return format_number(value)
    decimals = len(reference_text.split(".")[1]) if "." in reference_text else 0
    text = f"{value:.{decimals}f}"
    return text if float(text) != 0 or value == 0 else format_number(value, digits=2)


def _label(metric: str, unit: str) -> str:
    return f"{metric} ({unit})" if unit else metric


def _cell(text: Any = "", *, title: str = "", cls: str = "", swatch: str = "") -> dict[str, str]:
    return {"text": str(text), "title": title, "cls": cls, "swatch": swatch}


def _num_cell(value: Any, missing: str = "not recorded") -> dict[str, str]:
    text = format_number(value)
    return _cell(text, title=missing if text == "n/a" else "", cls="num" if text != "n/a" else "na")


def _anchor(*parts: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", " ".join(parts).lower()).strip("-")


class _Captions:
    """One-line ``.rst`` captions, rendered to HTML (inline literals, strong and emphasis only)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: dict[str, Markup] = {}

    def __call__(self, key: str) -> Markup:
        if key not in self._cache:
            path = self.folder / f"{key}.rst"
            text = ""
            if path.is_file():
                text = " ".join(line.strip() for line in path.read_text(encoding="utf-8").splitlines()).strip()
            text = text or DEFAULT_CAPTIONS.get(key, "")
            escaped = html.escape(text)
            escaped = re.sub(r"``(.+?)``", r"<code>\1</code>", escaped)
            escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
            escaped = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", escaped)
            self._cache[key] = Markup(escaped)
        return self._cache[key]


class _Builder:
    """Holds what every section needs: the table, styles, captions, statistics, the figure sink."""

    def __init__(self, df: pd.DataFrame, source: str, captions: _Captions, styles: Mapping[str, figures.MethodStyle],
                 figures_dir: Path | None, confidence: float, alpha: float, correction: str):
        self.df = df
        self.source = source
        self.captions = captions
        self.styles = styles
        self.figures_dir = figures_dir
        self.confidence = confidence
        self.alpha = alpha
        self.correction = correction
        self.run_table = results.runs(df)
        level_of = {p: stats.level_of(p) for p in set(self.run_table["perturbation"])}
        self.run_table["level"] = self.run_table["perturbation"].map(level_of)
        self.metric_order = _metric_order(df)
        self.summary = stats.summarise(df, confidence=confidence)
        self.meta = {m: (str(u), str(b)) for m, u, b in
                     df.groupby("metric")[["unit", "better"]].first().itertuples(name=None)}
        self.level_labels = _level_labels(set(df["perturbation"]))
        self.pct = f"{confidence:.0%}".replace("%", " %")

    # ------------------------------------------------------------------ building blocks
    def method_cell(self, name: str) -> dict[str, str]:
        st = figures.style_of(self.styles, name)
        title = f"run id {name}" if st.label != name else ""
        return _cell(st.label, cls="method", swatch=st.colour, title=title)

    def table(self, key: str, columns: Sequence[Any], rows: list[list[dict]], source: str, *, title: str = "",
              collapsed: bool | None = None, summary: str = "", anchor: str = "") -> dict[str, Any]:
        cols = [c if isinstance(c, dict) else {"text": str(c), "title": ""} for c in columns]
        if collapsed is None:
            collapsed = len(rows) > COLLAPSE_ROWS
        return {"key": key, "anchor": "table-" + (anchor or _anchor(key, title)), "title": title, "columns": cols,
                "rows": rows, "caption": self.captions(key), "source": source, "notes": [],
                "collapsed": collapsed, "summary": summary or f"{len(rows)} rows"}

    def figure(self, key: str, fig, kind: str, name: str, title: str, alt: str, source: str) -> dict[str, Any]:
        folder = self.figures_dir / kind if self.figures_dir is not None else None
        png = figures.export(fig, folder=folder, stem=figures.slug(name) if folder else None)
        return {"title": title, "caption": self.captions(key), "alt": alt, "source": source,
                "png": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}

    def value_cell(self, row: Any) -> tuple[dict[str, str], float | None]:
        """A metric cell from a :func:`qsmbench.stats.summarise` row: mean ± CI half width."""
        if row is None or row["n"] == 0:
            return _cell("—", title="no value", cls="na"), None
        mean = float(row["mean"])
        text = format_number(mean)
        title = "1 value"
        if row["n"] > 1:
            text += " ± " + _format_like(float(row["ci_half"]), text)
            title = (f"mean of {row['n']} seeds ± half width of the {self.pct} t-interval "
                     f"[{format_number(row['ci_lo'])}, {format_number(row['ci_hi'])}]; sd {format_number(row['sd'])}")
        return _cell(text, title=title, cls="num"), mean

    def level_label(self, level: str) -> str:
        return self.level_labels.get(level, level)


def _metric_order(df: pd.DataFrame) -> list[str]:
    registered = [r["metric"] for r in metrics.metric_table()]
    present = set(df["metric"])
    return [m for m in registered if m in present] + sorted(present - set(registered))


def _level_labels(perturbations) -> dict[str, str]:
    from . import perturb

    out = {"none": "none"}
    for p in perturbations:
        level = stats.level_of(p)
        if level in out:
            continue
        try:
            out[level] = perturb.level_label(p)
        except ValueError:
            out[level] = level
    return out


def _level_sort_key(level: str):
    """Sort key of a level or perturbation id: none, single axes by kind and severity, combinations, unknown."""
    from . import perturb

    if level == "none":
        return (0, (), ())
    as_id = level + "-seed1" if re.search(r"noise-snr[^+]*$", level) and "-seed" not in level else level
    try:
        kinds = tuple(perturb.KINDS.index(k) for k in perturb.axis_name(as_id).split("+"))
        return (len(kinds), kinds, perturb.severity(as_id))
    except ValueError:
        return (9, (), (level,))


# --------------------------------------------------------------------------- entry point
def render_report(table: pd.DataFrame | str | os.PathLike, out_html: str | os.PathLike, *,
                  montages: Sequence[Mapping[str, Any]] = (), config: Any = None,
                  provenance: Mapping[str, Any] | None = None,
                  captions_dir: str | os.PathLike | None = None,
                  report_dir: str | os.PathLike | None = None,
                  robustness_metrics: Sequence[str] = ("nrmse", "xsim"),
                  comparison_metrics: Sequence[str] | None = None,
                  figures_dir: str | os.PathLike | None = None,
                  data_dirs: Mapping[str, str | os.PathLike] | None = None,
                  title: str | None = None, labels: Mapping[str, str] | None = None,
                  confidence: float = stats.CONFIDENCE, alpha: float = stats.ALPHA,
                  correction: str = "holm", not_run: Mapping[str, str] | None = None,
                  tuning_plan: Mapping[str, Any] | None = None,
                  selections: Sequence[str | os.PathLike | Mapping[str, Any]] = ()) -> Path:
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
    comparison_metrics : the headline metrics: paired comparisons and the overview's best
        methods (default ``robustness_metrics``).
    figures_dir : also write every figure there as PNG + SVG (``{kind}/{name}``); each kind's
        folder (:data:`FIGURE_KINDS`) is created, emptied of old figures, even when it stays empty.
    data_dirs : {dataset: its canonical volume folder}; their ``meta.json`` checksums (of the
        downloaded source files) are listed under Provenance.
    title : the page title (default "qsmbench report").
    labels : display names of run ids (default :data:`qsmbench.figures.KNOWN_METHODS`, else the id).
    confidence, alpha, correction : the t-interval's confidence level, the significance level
        and the multiple-comparison correction of the paired tests (:mod:`qsmbench.stats`).
    not_run : {dataset: why} of configured datasets that did not run (e.g. gated data absent):
        listed under "Not run" in the overview.
    tuning_plan : {run: plan} of :func:`qsmbench.tuning.run_plan` (which modes each run asked for,
        whether its method is tunable); selections : the tuning selection records (or their JSON
        files) for the L-curve plots.  Rows of tuned runs (``tuning`` other than ``default``) appear
        only in the "Tuning" section; every other section shows the default runs.
    """
    source = "the results table"
    if not isinstance(table, pd.DataFrame):
        source = f"the results table {Path(table).name}"
        table = results.read_table(table)
    df = results.as_table(table)  # the schema's columns and dtypes, whatever the source
    results.check_phantom_versions(df)  # one dataset, one phantom: never mix simulations in a report
    all_rows, df = df, results.default_rows(df)  # tuned runs: the Tuning section only
    report_dir = Path(report_dir) if report_dir is not None else REPORT_DIR
    if not (report_dir / "templates" / TEMPLATE).is_file():
        raise InputError(f"report template not found: {report_dir / 'templates' / TEMPLATE}")
    if correction not in stats.CORRECTIONS:
        raise InputError(f"unknown correction {correction!r}; known: {', '.join(stats.CORRECTIONS)}")
    captions = _Captions(Path(captions_dir) if captions_dir is not None else report_dir / "captions")
    fig_dir = Path(figures_dir) if figures_dir is not None else None
    if fig_dir is not None:
        for kind in FIGURE_KINDS:
            (fig_dir / kind).mkdir(parents=True, exist_ok=True)
            for old in (fig_dir / kind).glob("*.*"):
                if old.suffix in (".png", ".svg"):
                    old.unlink()
    method_names = set(df["method"]) | {m for e in montages for m in e.get("recons", {})}
    # imported reconstructions (method type precomputed: run.json's device 'imported') say so everywhere
    imported = set(df.loc[df["device"] == IMPORTED, "method"]) if "device" in df else set()
    labels = {**{m: f"{m} (imported)" for m in sorted(imported)}, **dict(labels or {})}
    styles = figures.method_styles(sorted(method_names), labels)
    b = _Builder(df, source, captions, styles, fig_dir, confidence, alpha, correction)
    headline = [m for m in (comparison_metrics or robustness_metrics) if m in set(df["metric"])]
    montage_figures = [_montage(b, e) for e in montages]  # first: bad χ files fail before the slow part

    context = {
        "title": title or "qsmbench report",
        "css": Markup((report_dir / STYLE).read_text(encoding="utf-8")) if (report_dir / STYLE).is_file()
        else "",
        "sections": _with_tuning(SECTIONS) if _tuning_requested(all_rows, tuning_plan) else SECTIONS,
        "overview": _overview(b, headline, not_run or {}),
        "datasets": _results(b, headline),
        "tuning": _tuning(b, all_rows, tuning_plan, selections, headline),
        "robustness": _robustness(b, robustness_metrics),
        "montages": montage_figures,
        "cost": _cost(b),
        "parameters": _parameters(b),
        "failures": _failures(b),
        "definitions": _definitions(b),
        "provenance": _provenance(b, config, provenance, data_dirs),
        "version": __version__,
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(report_dir / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    text = env.get_template(TEMPLATE).render(**context)
    out = io.atomic_write(out_html, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    out.chmod(0o644)  # a web page: readable by whoever serves it (mkstemp makes 0600)
    return out


def montages_from_runs(run_json_paths: Sequence[str | os.PathLike],
                       volume_dirs: Mapping[Any, str | os.PathLike], *,
                       perturbations: Sequence[str] = ("none",)) -> list[dict[str, Any]]:
    """The ``montages`` argument of :func:`render_report`, built from the runner's ``run.json`` files.

    One entry per (dataset, perturbation) with ``perturbation`` in ``perturbations``; its volume
    folder is ``volume_dirs[(dataset, perturbation)]``, or ``volume_dirs[dataset]`` for the
    unperturbed volume ('none').  Runs whose volume folder is not given are skipped.  A failed
    run contributes ``None`` (shown as a labelled blank row).
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


# --------------------------------------------------------------------------- overview
def _overview(b: _Builder, headline: Sequence[str], not_run: Mapping[str, str] | None = None) -> dict[str, Any]:
    df, run_table = b.df, b.run_table
    n_ok = int((run_table["run_status"] == "ok").sum())
    refs = sorted({r for r in df["reference"] if r})
    axes, _ = stats.robustness_axes(set(df["perturbation"]))
    n_ids = len(set(df["perturbation"]))
    axes_text = "; ".join(f"{a.replace('+', ' + ')}: {', '.join(lb for _, lb, _ in levels)}"
                          for a, levels in axes.items())
    methods = sorted(set(df["method"]))
    facts = [
        ("datasets", ", ".join(sorted(set(df["dataset"]))) or "none"),
        *([("not run", ", ".join(sorted(not_run)) + " (see Not run below)")] if not_run else []),
        ("references", ", ".join(refs) or "none"),
        ("perturbations", f"{n_ids} id{'s' if n_ids != 1 else ''} (none" + (f"; {axes_text})" if axes_text else ")")),
        ("methods", ", ".join(figures.style_of(b.styles, m).label for m in methods) or "none"),
        ("metrics", ", ".join(b.metric_order) or "none"),
        ("runs", f"{len(run_table)} ({n_ok} succeeded, {len(run_table) - n_ok} failed)"),
        ("metric values", f"{int((df['status'] == 'ok').sum())} computed, "
                          f"{int((df['status'] == 'not_applicable').sum())} not applicable, "
                          f"{int((df['status'] == 'run_failed').sum())} missing because the run failed"),
    ]
    datasets = sorted(set(run_table["dataset"]))
    rows = []
    for m in sorted(set(run_table["method"])):
        row = [b.method_cell(m)]
        for d in datasets:
            sel = run_table[(run_table["method"] == m) & (run_table["dataset"] == d)]
            if sel.empty:
                row.append(_cell("—", title="not run"))
                continue
            ok = int((sel["run_status"] == "ok").sum())
            errors = "; ".join(sorted({e for e in sel["error"] if e}))
            cls = "ok" if ok == len(sel) else "failed"
            row.append(_cell(f"{ok}/{len(sel)} ok", title=errors, cls=cls))
        rows.append(row)
    status = b.table("run_status", ["method", *datasets], rows,
                     f"qsmbench.report from {b.source}: run_status of every (dataset, perturbation, method, seed)",
                     title="Run status", collapsed=False, anchor="run-status")
    details = [_not_run(b, not_run)] if not_run else []
    for d in datasets:
        sel = run_table[run_table["dataset"] == d]
        ms = sorted(set(sel["method"]))
        perts = sorted(set(sel["perturbation"]), key=lambda p: _level_sort_key(p))
        grid = {k: g for k, g in sel.groupby(["perturbation", "method"])}
        drows = []
        for p in perts:
            row = [_cell(p, cls="key")]
            for m in ms:
                g = grid.get((p, m))
                if g is None:
                    row.append(_cell("—", title="not run"))
                    continue
                ok = int((g["run_status"] == "ok").sum())
                text = "ok" if ok == len(g) else "failed" if ok == 0 else f"{ok}/{len(g)} ok"
                row.append(_cell(text, title="; ".join(sorted({e for e in g["error"] if e})),
                                 cls="ok" if ok == len(g) else "failed"))
            drows.append(row)
        heads = ["perturbation", *[figures.style_of(b.styles, m).label for m in ms]]
        details.append(b.table("run_status_detail", heads, drows,
                               f"qsmbench.report from {b.source}: run_status per (perturbation, method)",
                               title=f"{d}: run status per perturbation", collapsed=True,
                               anchor=_anchor("run-status", d),
                               summary=f"{d}: {len(perts)} perturbation{'s' if len(perts) != 1 else ''} × "
                                       f"{len(ms)} method{'s' if len(ms) != 1 else ''}"))
    # the best method per headline metric on the unperturbed data
    base = b.summary[(b.summary["level"] == "none") & (b.summary["reference"] != "") & (b.summary["n"] > 0)]
    hrows = []
    for (d, r), g in base.groupby(["dataset", "reference"], sort=True):
        row = [_cell(f"{d} · {r}", cls="key")]
        for metric in headline:
            gm = g[g["metric"] == metric]
            if gm.empty:
                row.append(_cell("n/a", cls="na", title="not computed on these data"))
                continue
            lower = b.meta[metric][1] == "lower"
            best = gm.loc[gm["mean"].idxmin() if lower else gm["mean"].idxmax()]
            st = figures.style_of(b.styles, best["method"])
            row.append(_cell(f"{st.label} ({format_number(best['mean'])})", swatch=st.colour,
                             title=f"best mean {metric} over {len(gm)} methods"))
        hrows.append(row)
    best = b.table("headline", ["dataset · reference", *[{"text": _label(m, b.meta[m][0]),
                                                         "title": f"{b.meta[m][1]} is better"} for m in headline]],
                   hrows, f"qsmbench.report from {b.source}: perturbation none, mean over seeds",
                   title="Best method per headline metric (unperturbed data)", collapsed=False, anchor="headline")
    statistics = b.captions("statistics")
    return {"caption": b.captions("overview"), "facts": facts, "status": status, "details": details,
            "best": best, "statistics": statistics}


# --------------------------------------------------------------------------- results per dataset
def _results(b: _Builder, headline: Sequence[str]) -> list[dict[str, Any]]:
    df = b.df
    out = []
    ranks = stats.rank_methods(df)
    comparisons = stats.compare_methods(df, metrics=headline, correction=b.correction, alpha=b.alpha) \
        if headline else pd.DataFrame(columns=list(stats.COMPARISON_COLUMNS))
    for dataset in sorted(set(df["dataset"])):
        refs = sorted({r for r in df.loc[df["dataset"] == dataset, "reference"] if r})
        blocks = []
        for reference in refs:
            s = b.summary[(b.summary["dataset"] == dataset) & (b.summary["reference"] == reference)]
            block = {"title": f"{dataset} · reference {reference}", "anchor": _anchor("results", dataset, reference),
                     "metrics": _metric_table(b, dataset, reference, s), "ranking": None, "ranking_table": None,
                     "comparisons": None, "levels": None}
            r = ranks[(ranks["dataset"] == dataset) & (ranks["reference"] == reference)]
            if len(r) and r["method"].nunique() > 1:
                block["ranking"], block["ranking_table"] = _ranking(b, dataset, reference, r)
            c = comparisons[(comparisons["dataset"] == dataset) & (comparisons["reference"] == reference)]
            if len(c):
                block["comparisons"] = _comparisons(b, dataset, reference, c)
            if s["level"].nunique() > 1:
                block["levels"] = _levels_table(b, dataset, reference, s)
            blocks.append(block)
        runs_here = b.run_table[b.run_table["dataset"] == dataset]
        out.append({"dataset": dataset, "anchor": _anchor("dataset", dataset), "blocks": blocks,
                    "note": "" if refs else (
                        "Nothing was scored on this dataset: "
                        + ("every run failed." if (runs_here["run_status"] != "ok").all()
                           else "it has no reference χ."))})
    return out


def _metric_table(b: _Builder, dataset: str, reference: str, s: pd.DataFrame) -> dict[str, Any]:
    """Methods × metrics on the unperturbed volume (or the least perturbed level when 'none' is absent)."""
    levels = sorted(set(s["level"]), key=_level_sort_key)
    level = "none" if "none" in levels else levels[0]
    here = s[s["level"] == level]
    df = b.df
    rows_df = df[(df["dataset"] == dataset) & (df["reference"] == reference)]
    rows_df = rows_df[stats.with_levels(rows_df)["level"] == level] if len(rows_df) else rows_df
    runs_here = b.run_table[(b.run_table["dataset"] == dataset) & (b.run_table["level"] == level)]
    methods = sorted(set(here["method"]) | set(runs_here["method"]))
    metric_names = [m for m in b.metric_order if m in set(here["metric"])]
    by = {(r.method, r.metric): r for r in here.itertuples(index=False)}
    cells, means = {}, {}
    for method in methods:
        mruns = runs_here[runs_here["method"] == method]
        n_failed = int((mruns["run_status"] != "ok").sum())
        errors = "; ".join(sorted({e for e in mruns["error"] if e}))
        for metric in metric_names:
            r = by.get((method, metric))
            if r is not None and r.n > 0:
                cell, mean = b.value_cell(r._asdict())
                if n_failed:
                    cell["title"] += f"\n{n_failed} of {len(mruns)} runs failed: {errors}"
                cells[method, metric], means[method, metric] = cell, mean
            elif r is not None:
                sel = rows_df[(rows_df["method"] == method) & (rows_df["metric"] == metric)]
                reasons = "; ".join(sorted({x for x in sel["reason"] if x})) or "not applicable"
                cells[method, metric] = _cell("n/a", title=reasons, cls="na")
            elif n_failed:
                cells[method, metric] = _cell("failed", title=errors, cls="failed")
            else:
                cells[method, metric] = _cell("—", title="not computed", cls="na")
    shown = [k for k in metric_names if any((m, k) in means for m in methods)] or metric_names
    hidden = [k for k in metric_names if k not in shown]
    for metric in shown:
        vals = {m: v for (m, k), v in means.items() if k == metric}
        if len(vals) < 2:
            continue
        best = (min if b.meta[metric][1] == "lower" else max)(vals.values())
        for m, v in vals.items():
            if math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15):
                cells[m, metric]["cls"] += " best"
    columns = [{"text": "method", "title": ""}] + [
        {"text": _label(k, b.meta[k][0]), "title": f"{b.meta[k][1]} is better"} for k in shown]
    rows_out = [[b.method_cell(m)] + [cells[m, k] for k in shown] for m in methods]
    table = b.table("metrics", columns, rows_out,
                    f"qsmbench.report from {b.source}: rows with dataset={dataset}, reference={reference}, "
                    f"perturbation level {level}; mean over seeds of the 'ok' values (qsmbench.stats.summarise)",
                    title=f"{dataset} · reference {reference} · perturbation {b.level_label(level)}", collapsed=False)
    table["notes"] = [
        f"{k}: not applicable on these data — "
        + "; ".join(sorted({r for r in rows_df.loc[rows_df["metric"] == k, "reason"] if r}))
        for k in hidden]
    return table


def _ranking(b: _Builder, dataset: str, reference: str, r: pd.DataFrame):
    order = [m for m in b.metric_order if m in set(r["metric"])]
    n_vol = int(r["n_volumes"].max())
    fig = figures.ranking_figure(r, order, b.styles)
    figure = b.figure("ranking", fig, "ranking", f"ranking-{dataset}-{reference}",
                      f"{dataset} · reference {reference} · mean rank over {n_vol} volume{'s' if n_vol != 1 else ''}",
                      f"heat map of the mean rank of each method per metric on {dataset}",
                      f"qsmbench.stats.rank_methods and qsmbench.figures.ranking_figure from {b.source}")
    wide = r.pivot(index="method", columns="metric", values="mean_rank").reindex(columns=order)
    wide = wide.loc[wide.mean(axis=1).sort_values(kind="stable").index]
    info = r.set_index(["method", "metric"])
    rows = []
    for m in wide.index:
        row = [b.method_cell(m)]
        for k in order:
            v = wide.loc[m, k]
            if not np.isfinite(v):
                row.append(_cell("—", cls="na", title="not ranked"))
                continue
            i = info.loc[(m, k)]
            best = v == wide[k].min()
            row.append(_cell(f"{v:.2f}", cls="num best" if best else "num",
                             title=f"{int(i['wins'])} win(s) over {int(i['n_volumes'])} volume(s); "
                                   f"{int(i['n_failed'])} failed run(s) ranked last"))
        rows.append(row)
    table = b.table("ranking_table", ["method", *order], rows,
                    f"qsmbench.stats.rank_methods from {b.source}: dataset={dataset}, reference={reference}",
                    title="", collapsed=True, summary="mean ranks as a table",
                    anchor=_anchor("ranking", dataset, reference))
    return figure, table


def _comparisons(b: _Builder, dataset: str, reference: str, c: pd.DataFrame) -> dict[str, Any]:
    rows = []
    for r in c.itertuples(index=False):
        a, bb = figures.style_of(b.styles, r.method_a), figures.style_of(b.styles, r.method_b)
        if r.significant:
            verdict = _cell(f"{figures.style_of(b.styles, r.winner).label} better",
                            swatch=figures.style_of(b.styles, r.winner).colour, cls="sig")
        elif r.n == 0:
            verdict = _cell("not compared", title=r.note, cls="na")
        else:
            verdict = _cell("no significant difference", title=r.note, cls="nodiff")
        rows.append([
            _cell(_label(r.metric, b.meta[r.metric][0]), title=f"{r.better} is better"),
            _cell(a.label, swatch=a.colour, cls="method"), _cell(bb.label, swatch=bb.colour, cls="method"),
            _cell(r.n, cls="num", title=f"{r.n_untied} untied"),
            _num_cell(r.median_diff, missing="no pair"),
            _cell(f"{r.a_better} / {r.b_better}", cls="num"),
            _num_cell(r.p_value, missing="no pair"), _num_cell(r.p_adjusted, missing="no pair"),
            verdict,
        ])
    columns = ["metric", "method A", "method B", "volumes", "median A − B", "wins A / B", "p",
               f"p ({b.correction})", f"at α = {b.alpha:g}"]
    notes = []
    for metric, g in c.groupby("metric", sort=False):
        n_max, m = int(g["n_untied"].max()), int(g["p_value"].notna().sum())
        if m == 0 or n_max == 0:
            continue
        best_p = 2.0 / 2.0 ** n_max  # all pairs agree in sign: the exact two-sided minimum
        if best_p * (m if b.correction == "holm" else 1) >= b.alpha:
            notes.append(f"{metric}: with at most {n_max} untied volume{'s' if n_max != 1 else ''} the smallest "
                         f"possible p-value is {format_number(best_p)}, and {b.correction} over {m} pairs needs "
                         f"less than {format_number(b.alpha / m if b.correction == 'holm' else b.alpha)}: no "
                         "difference can be significant; more volumes (e.g. more noise seeds or perturbation "
                         "levels) are needed")
    table = b.table("comparisons", columns, rows,
                   f"qsmbench.stats.compare_methods (scipy.stats.wilcoxon, {b.correction} correction per metric) "
                   f"from {b.source}: dataset={dataset}, reference={reference}, every perturbed volume",
                   title="", summary=f"paired comparisons of {', '.join(sorted(set(c['metric'])))}: {len(rows)} "
                                     f"pairs, {int(c['significant'].sum())} significant at α = {b.alpha:g} "
                                     f"({b.correction})",
                   anchor=_anchor("comparisons", dataset, reference))
    table["notes"] = notes
    return table


def _levels_table(b: _Builder, dataset: str, reference: str, s: pd.DataFrame) -> dict[str, Any]:
    """Every perturbation level × method (rows) and metric (columns); collapsed."""
    metric_names = [m for m in b.metric_order if m in set(s.loc[s["n"] > 0, "metric"])]
    levels = sorted(set(s["level"]), key=_level_sort_key)
    by = {(r.level, r.method, r.metric): r._asdict() for r in s.itertuples(index=False)}
    methods = sorted(set(s["method"]))
    rows = []
    for level in levels:
        for m in methods:
            if not any((level, m, k) in by for k in metric_names):
                continue
            row = [_cell(b.level_label(level), cls="key", title=level), b.method_cell(m)]
            for k in metric_names:
                r = by.get((level, m, k))
                row.append(b.value_cell(r)[0] if r is not None else _cell("—", cls="na", title="not run"))
            rows.append(row)
    columns = ["level", "method"] + [{"text": _label(k, b.meta[k][0]), "title": f"{b.meta[k][1]} is better"}
                                     for k in metric_names]
    return b.table("levels_table", columns, rows,
                   f"qsmbench.stats.summarise from {b.source}: dataset={dataset}, reference={reference}",
                   title="", collapsed=True,
                   summary=f"every perturbation level: {len(levels)} levels × {len(methods)} methods",
                   anchor=_anchor("levels", dataset, reference))


# --------------------------------------------------------------------------- robustness
def _robustness(b: _Builder, metric_names: Sequence[str]) -> dict[str, Any]:
    """One degradation plot (and its collapsed table) per (dataset, reference, perturbation axis).

    The x axis holds ``none`` then the axis's levels from least to most perturbed; each line is
    the mean over seeds (noise seeds and repetitions) with its t-interval band.
    """
    df = b.df
    axes, notes = stats.robustness_axes(set(df["perturbation"]))
    metric_list = [m for m in metric_names if m in set(df["metric"])]
    items = []
    scored = b.summary[(b.summary["reference"] != "") & b.summary["metric"].isin(metric_list)]
    for (dataset, reference), s in scored.groupby(["dataset", "reference"], sort=True):
        for axis, levels in axes.items():
            present = [(lv, lb, ids) for lv, lb, ids in levels if lv in set(s["level"])]
            if not present:
                continue
            names = ["none", *[lv for lv, _, _ in present]]
            labels = ["none", *[lb for _, lb, _ in present]]
            on_axis = s[s["level"].isin(names[1:]) & (s["n"] > 0)]
            shown = [m for m in metric_list if m in set(on_axis["metric"])] or metric_list
            methods = sorted(set(s["method"]))
            series = figures.degradation_series(s, names, methods, shown)
            title = f"{dataset} · reference {reference} · {axis.replace('+', ' + ')}"
            fig = figures.degradation_figure(title, axis, labels, methods, shown, series,
                                             {m: b.meta[m] for m in shown}, b.styles, b.confidence)
            figure = b.figure("robustness_plot", fig, "robustness", f"{dataset}-{reference}-{axis.replace('+', '_')}",
                              title, f"degradation plot of {', '.join(shown)} against {axis} level for "
                                     f"{', '.join(figures.style_of(b.styles, m).label for m in methods)}",
                              f"qsmbench.figures.degradation_figure (matplotlib) from {b.source}")
            rows = []
            for method in methods:
                for metric in shown:
                    cells = [b.method_cell(method), _cell(_label(metric, b.meta[metric][0]))]
                    for mean, lo, hi, n in series[metric, method]:
                        if n == 0:
                            cells.append(_cell("—", title="no successful run at this level", cls="na"))
                            continue
                        row = {"mean": mean, "ci_lo": lo, "ci_hi": hi, "n": n, "ci_half": (hi - lo) / 2,
                               "sd": math.nan}
                        cell, _ = b.value_cell(row)
                        if n > 1:
                            cell["title"] = f"mean of {n} seeds ± half width of the {b.pct} t-interval"
                        cells.append(cell)
                    rows.append(cells)
            ids = ", ".join(i for _, _, group_ids in present for i in group_ids)
            table = b.table("robustness_table", ["method", "metric", *labels], rows,
                            f"qsmbench.stats.summarise from {b.source}: rows with dataset={dataset}, "
                            f"reference={reference}, status ok, perturbation none or {ids}",
                            collapsed=True, summary="the values as a table",
                            anchor=_anchor("robustness", dataset, reference, axis))
            items.append({"figure": figure, "table": table})
    return {"caption": b.captions("robustness"), "items": items, "notes": notes}


# --------------------------------------------------------------------------- montages
def _montage(b: _Builder, entry: Mapping[str, Any]) -> dict[str, Any]:
    m = figures.load_montage(entry)
    fig = figures.montage_figure(m["vol"], m["reference"], m["ref_name"], m["recons"], b.styles,
                                 f"{m['dataset']} / {m['perturbation']}")
    title = f"{m['dataset']} · perturbation {m['perturbation']}" + (
        f" · reference {m['ref_name']}" if m["ref_name"] else "")
    names = ", ".join(figures.style_of(b.styles, k).label for k in m["recons"]) or "no method"
    return b.figure("montage", fig, "montage", f"{m['dataset']}-{m['perturbation']}", title,
                    f"slice montage of {m['dataset']} ({m['perturbation']}) for {names}",
                    f"qsmbench.figures.montage_figure (matplotlib) from {m['volume_dir'].name}/ and the methods' "
                    "χ maps; values outside the brain mask are hidden")


# --------------------------------------------------------------------------- tuning
def _tuning_requested(df: pd.DataFrame, plan: Mapping[str, Any] | None) -> bool:
    return bool((df["tuning"] != "default").any()) or any(
        m != "default" for p in (plan or {}).values() for m in p.get("modes", []))


def _with_tuning(sections: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for k, v in sections.items():
        out[k] = v
        if k == "results":
            out[TUNING_SECTION[0]] = TUNING_SECTION[1]
    return out


def _tuned_values_text(text: str) -> str:
    """'{"lam": 0.0316...}; ...' (the table's tuned_value, joined over seeds) as 'lam = 0.0316; ...'."""
    out = []
    for part in (p for p in text.split("; ") if p):
        try:
            out.append(", ".join(f"{k} = {format_number(v)}" for k, v in json.loads(part).items()))
        except (json.JSONDecodeError, AttributeError):
            out.append(part)
    return "; ".join(out)


def _tuning(b: _Builder, df: pd.DataFrame, plan: Mapping[str, Any] | None, selections,
            headline: Sequence[str]) -> dict[str, Any] | None:
    """Default vs tuned scores side by side, the per-mode rankings and the L-curves."""
    from . import tuning  # noqa: PLC0415

    if not _tuning_requested(df, plan):
        return None
    metric = (headline or ["nrmse"])[0]
    table, modes = tuning.side_by_side(df, plan, metric)
    unit = b.meta.get(metric, ("", ""))[0]
    columns = ["dataset", "perturbation", "method"]
    for mode in modes:
        columns.append({"text": f"{_label(metric, unit)} · {mode}" + (" (upper bound)" if mode == "oracle" else ""),
                        "title": tuning.MODE_LABELS[mode]})
        if mode != "default":
            columns.append(f"{mode}: chosen value")
    rows = []
    for r in table.itertuples(index=False):
        r = r._asdict()
        row = [_cell(r["dataset"]), _cell(r["perturbation"]), b.method_cell(r["method"])]
        for mode in modes:
            v = r[mode]
            if v == tuning.NOT_TUNABLE:
                row.append(_cell(v, cls="na", title="the method declares no tunable parameter (Method.tunable)"))
            elif v is None or (isinstance(v, float) and math.isnan(v)):
                row.append(_cell("—", cls="na", title="not run in this mode"))
            else:
                row.append(_cell(format_number(v), cls="num"))
            if mode != "default":
                row.append(_cell(_tuned_values_text(r[f"{mode}_value"]) or ("" if v == tuning.NOT_TUNABLE else "—"),
                                 title=r[f"{mode}_value"]))
        rows.append(row)
    side = b.table("tuning_side_by_side", columns, rows,
                   f"qsmbench.tuning.side_by_side from {b.source} ({metric}, mean over seeds)", collapsed=False)
    ranks = tuning.rankings(df, metric)
    rank_rows = [[_cell(tuning.MODE_LABELS.get(r.tuning, r.tuning)), _cell(r.dataset), b.method_cell(r.method),
                  _cell(format_number(r.mean), cls="num"), _cell(int(r.n), cls="num"), _cell(int(r.rank), cls="num")]
                 for r in ranks.itertuples(index=False)]
    ranking = b.table("tuning_ranking", ["mode", "dataset", "method", f"mean {metric}", "volumes", "rank"],
                      rank_rows, f"qsmbench.tuning.rankings from {b.source}: one ranking per mode", collapsed=False)
    from .io import read_json  # noqa: PLC0415

    sels = [s if isinstance(s, Mapping) else read_json(s) for s in selections]
    groups: dict[tuple[str, str], list] = {}
    for s in sels:
        if s.get("points"):
            groups.setdefault((s["dataset"], s["perturbation"]), []).append(s)
    figs = []
    for (d, p), group in sorted(groups.items()):
        if not any(s.get("mode") in ("lcurve", "discrepancy") for s in group):
            continue
        fig = figures.lcurve_figure(group, b.styles)
        figs.append(b.figure("lcurve", fig, "tuning", f"lcurve-{d}-{p}", f"L-curves · {d} · {p}",
                             f"L-curves of the tuning searches on {d} ({p})",
                             "qsmbench.figures.lcurve_figure from the tuning selection records "
                             "(results/tune/.../selection.json)"))
    return {"side_by_side": side, "ranking": ranking, "figures": figs}


# --------------------------------------------------------------------------- cost
def _cost(b: _Builder) -> dict[str, Any]:
    run_table = b.run_table
    ok = run_table[run_table["run_status"] == "ok"]
    figure = None
    if len(ok):
        devices = sorted({d for d in ok["device"] if d})
        fig = figures.cost_figure(ok, b.styles, "device: " + "; ".join(devices) if len(devices) == 1 else "")
        figure = b.figure("runtime_chart", fig, "cost", "runtime", "",
                          "bar chart of run time and peak memory per method, device named under each",
                          f"qsmbench.figures.cost_figure (matplotlib) from {b.source}: successful runs only")
    srows = []
    for m, g in run_table.groupby("method", sort=True):
        good = g[g["run_status"] == "ok"]
        none = "imported: not timed" if (g["device"] == IMPORTED).all() else "no successful run"
        srows.append([
            b.method_cell(m), _cell(f"{len(good)}/{len(g)}", cls="num"),
            _cell("; ".join(sorted({d for d in g["device"] if d})) or "not recorded", cls="device"),
            _num_cell(good["wall_s"].median() if len(good) else math.nan, missing=none),
            _num_cell(good["wall_s"].max() if len(good) else math.nan, missing=none),
            _num_cell(good["cpu_s"].median() if len(good) else math.nan, missing=none),
            _num_cell(good["prepare_s"].max() if len(good) else math.nan, missing=none),
            _num_cell(good["peak_rss_mb"].max() if len(good) else math.nan, missing=none),
            _num_cell(good["peak_gpu_mb"].max() if len(good) and good["peak_gpu_mb"].notna().any() else math.nan,
                      missing="no GPU memory recorded"),
        ])
    summary = b.table("cost_summary", ["method", "ok runs", "device", "median wall (s)", "max wall (s)",
                                       "median CPU (s)", "max prepare (s)", "max peak RAM (MB)",
                                       "max peak GPU (MB)"], srows,
                      f"qsmbench.report from {b.source}: successful runs per method; times and memory measured by "
                      "qsmbench.runner (reconstruction timed, preparation untimed)", collapsed=False)
    rows = []
    for r in run_table.itertuples(index=False):
        rows.append([
            _cell(r.dataset), _cell(r.perturbation), b.method_cell(r.method), _cell(r.seed),
            _cell(r.run_status, title=r.error, cls="ok" if r.run_status == "ok" else "failed"),
            _cell(r.device or "n/a"),
            *[_num_cell(getattr(r, c), missing="imported: not timed" if r.device == IMPORTED else "not recorded")
              for c in ("wall_s", "cpu_s", "prepare_s", "peak_rss_mb")],
            _num_cell(r.peak_gpu_mb, missing="no GPU memory recorded"),
        ])
    table = b.table("runtime_table", ["dataset", "perturbation", "method", "seed", "status", "device", "wall (s)",
                                      "CPU (s)", "prepare (s)", "peak RAM (MB)", "peak GPU (MB)"], rows,
                    f"qsmbench.report from {b.source}: one row per run", summary=f"every run: {len(rows)} rows")
    return {"figure": figure, "summary": summary, "table": table}


# --------------------------------------------------------------------------- parameters, failures
def _parameters(b: _Builder) -> dict[str, Any]:
    rows = []
    run_table = b.run_table
    for m, g in run_table.groupby("method", sort=True):
        sets = sorted(set(g["parameters"]))
        for params in sets:
            try:
                value = json.loads(params) if params else {}
            except json.JSONDecodeError:
                value = params
            text = ", ".join(f"{k}={json.dumps(v)}" for k, v in value.items()) if isinstance(value, dict) \
                else str(value)
            n = int((g["parameters"] == params).sum())
            same = g[g["parameters"] == params]
            rows.append([b.method_cell(m), _cell(m, cls="key"),
                         _cell(", ".join(sorted({x for x in g["method_name"] if x})) or "—"),
                         _profile_cell(g),
                         _cell(text or "(defaults: none)", cls="params"),
                         _provenance_cell(same["trained_on"]), _provenance_cell(same["tuned_on"]),
                         _cell(f"{n}" + (f" of {len(g)}" if len(sets) > 1 else ""), cls="num")])
    return b.table("parameters", ["method", "run id", "method class", "profile", "parameters", "trained on",
                                  "tuned on", "runs"], rows,
                   f"qsmbench.report from {b.source}: the parameters, trained_on and tuned_on columns (from each "
                   "run.json)", collapsed=False)


def provenance_text(value: Any) -> str:
    """A short description of a run.json ``trained_on`` / ``tuned_on`` record ('—' when absent).

    E.g. ``regularisation weights; phantom mni v2; 8 seeds 2000017–2999431`` (seeds from the
    reserved ranges of :mod:`qsmbench.seeds`, whose role is named when they have one).
    """
    if value in (None, "", {}, []):
        return "—"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    if not isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    from . import seeds as seeds_mod  # noqa: PLC0415

    parts, rest = [], dict(value)
    if "what" in rest:
        parts.append(str(rest.pop("what")))
    model, version = rest.pop("phantom_model", None), rest.pop("phantom_version", None)
    if model or version:
        parts.append("phantom " + " ".join(x for x in (str(model) if model else "", f"v{version}" if version else "")
                                           if x))
    seed_list = rest.pop("seeds", None)
    if isinstance(seed_list, list) and seed_list and all(isinstance(x, int) for x in seed_list):
        roles = sorted({seeds_mod.role_of(x) or "unassigned" for x in seed_list})
        span = f"{min(seed_list)}" if len(seed_list) == 1 else f"{min(seed_list)}–{max(seed_list)}"
        parts.append(f"{len(seed_list)} seed{'s' if len(seed_list) > 1 else ''} {span} ({', '.join(roles)} range)")
    elif seed_list:
        parts.append(f"seeds {seed_list}")
    vols = rest.pop("volumes", None)
    if vols:
        parts.append(f"{len(vols)} volume{'s' if len(vols) > 1 else ''}" if isinstance(vols, list) else str(vols))
    parts += [f"{k}={json.dumps(v, default=str)}" for k, v in sorted(rest.items())]
    return "; ".join(parts) or "—"


def _provenance_cell(values) -> dict[str, str]:
    texts = sorted({str(v) for v in values})
    shown = sorted({provenance_text(v) for v in texts})
    cls = "na" if shown == ["—"] else "params"
    return _cell(" | ".join(shown), title="; ".join(t for t in texts if t), cls=cls)


def _profile_cell(g: pd.DataFrame) -> dict[str, str]:
    """The profile(s) a method ran with and why (run.json's profile_reason, e.g. auto → quick)."""
    pairs = sorted({(p, r) for p, r in zip(g["profile"], g["profile_reason"], strict=True) if p or r})
    text = "; ".join(f"{p or '—'} ({r})" if r and r != "requested" else (p or "—") for p, r in pairs)
    return _cell(text or "—", title="; ".join(r for _, r in pairs if r))


def _not_run(b: _Builder, not_run: Mapping[str, str]) -> dict[str, Any]:
    rows = [[_cell(d, cls="key"), _cell(why, cls="error")] for d, why in sorted(not_run.items())]
    return b.table("not_run", ["dataset", "why"], rows,
                   "the workflow's start-up check (qsmbench.datasets.availability): datasets skipped before any job",
                   title="Not run", collapsed=False, anchor="not-run")


def _failures(b: _Builder) -> dict[str, Any]:
    failed = b.run_table[b.run_table["run_status"] != "ok"]
    rows = [[b.method_cell(r.method), _cell(r.dataset), _cell(r.perturbation), _cell(r.seed),
             _cell(r.run_status, cls="failed"), _cell(r.error or "no error recorded", cls="error"),
             _cell(r.log_tail or "—", cls="log")] for r in failed.itertuples(index=False)]
    return b.table("failed_runs", ["method", "dataset", "perturbation", "seed", "status", "error",
                                   "last lines of the method's output"], rows,
                   f"qsmbench.report from {b.source}: runs with run_status failed, timeout, oom or not_run (error and "
                   "log tail from run.json; the whole output is in the job's log under logs/recon/)",
                   collapsed=len(rows) > 40, summary=f"{len(rows)} failed runs")


def _definitions(b: _Builder) -> dict[str, Any]:
    rows = [[_cell(r["metric"], cls="key"), _cell(r["better"]), _cell(r["unit"] or "—"),
             _cell(r["definition"]), _cell(r["source"])] for r in metrics.metric_table()]
    return b.table("metric_definitions", ["metric", "better", "unit", "definition", "source"], rows,
                   "qsmbench.metrics.metric_table(): the registered metrics of this qsmbench version", collapsed=False)


# --------------------------------------------------------------------------- provenance
def _hardware() -> list[tuple[str, str]]:
    out = [("report machine", f"{platform.machine()}, {os.cpu_count()} logical cores")]
    try:
        import psutil

        out.append(("report machine memory", f"{psutil.virtual_memory().total / 2 ** 30:.1f} GiB"))
    except Exception:  # pragma: no cover - psutil is a dependency
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out.append(("report machine CPU", line.split(":", 1)[1].strip()))
                break
    except OSError:
        pass
    return out


def _provenance(b: _Builder, config, provenance, data_dirs) -> dict[str, Any]:
    import matplotlib
    import nibabel
    import scipy

    df = b.df
    facts = [
        ("report generated by", f"qsmbench {__version__}"),
        ("qsmbench version(s) of the runs", ", ".join(sorted({v for v in df["qsmbench_version"] if v}))
         or "not recorded"),
        ("git commit(s) of the runs", ", ".join(sorted({v for v in df["git_commit"] if v})) or "not recorded"),
        ("devices of the runs", "; ".join(sorted({v for v in df["device"] if v})) or "not recorded"),
        *_hardware(),
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("numpy", np.__version__), ("scipy", scipy.__version__), ("pandas", pd.__version__),
        ("nibabel", nibabel.__version__), ("matplotlib", matplotlib.__version__), ("jinja2", jinja2.__version__),
        ("statistics", f"{b.pct} Student-t intervals over seeds; paired two-sided Wilcoxon signed-rank tests "
                       f"(scipy.stats.wilcoxon), {b.correction} correction per (dataset, reference, metric), "
                       f"α = {b.alpha:g}"),
    ]
    for column in [c for c in df.columns if c not in results.COLUMNS]:  # e.g. the workflow's config_hash
        values = sorted({str(v) for v in df[column].dropna()})
        facts.append((column, ", ".join(values) or "—"))
    for key, value in (provenance or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if (str(key), text) not in facts:  # e.g. a config_hash that the table already carries
            facts.append((str(key), text))
    rows = [[_cell(k, cls="key"), _cell(v)] for k, v in facts]
    table = b.table("provenance", ["item", "value"], rows,
                    f"qsmbench.report: this Python environment, {b.source} and the workflow's provenance",
                    collapsed=False)
    return {"table": table, "checksums": _checksums(b, data_dirs), "config": _config_text(config),
            "config_caption": b.captions("config")}


def _checksums(b: _Builder, data_dirs) -> dict[str, Any]:
    rows = []
    for dataset, folder in sorted((data_dirs or {}).items()):
        meta_path = Path(folder) / io.META
        meta = io.read_json(meta_path) if meta_path.is_file() else {}
        sums = meta.get("checksums") if isinstance(meta, dict) else None
        if isinstance(sums, Mapping) and sums:
            for name, value in sorted(sums.items()):
                text = value.get("sha256", json.dumps(value, sort_keys=True)) if isinstance(value, Mapping) \
                    else str(value)
                status = value.get("status") if isinstance(value, Mapping) else None
                rows.append([_cell(dataset, cls="key"), _cell(f"source file ({status})" if status else "source file"),
                             _cell(str(name)), _cell(text, cls="hash")])
        elif meta:
            what = str(meta.get("source", "")) or "no source checksums recorded"
            rows.append([_cell(dataset, cls="key"), _cell("source"), _cell(what), _cell("—", cls="na",
                                                                                       title="nothing downloaded")])
    sums = b.df[["dataset", "perturbation", "data_sha256"]].drop_duplicates()
    for r in sorted(sums.itertuples(index=False), key=lambda r: (r.dataset, _level_sort_key(r.perturbation))):
        rows.append([_cell(r.dataset, cls="key"), _cell("input volume"), _cell(r.perturbation),
                     _cell(r.data_sha256 or "not recorded", cls="hash" if r.data_sha256 else "na")])
    return b.table("data_checksums", ["dataset", "what", "file / perturbation", "sha256"], rows,
                   f"qsmbench.report from {b.source} (data_sha256: qsmbench.results.volume_checksums of each input "
                   "volume) and the datasets' meta.json", title="Data checksums", anchor="data-checksums",
                   summary=f"data checksums: {len(rows)} rows")


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


__all__ = ["DEFAULT_CAPTIONS", "FIGURE_KINDS", "REPORT_DIR", "SECTIONS", "format_number", "method_colour",
           "method_colours", "montages_from_runs", "render_report"]
