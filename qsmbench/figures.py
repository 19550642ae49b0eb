"""Figures of the report and of the paper (matplotlib, PNG + SVG), all drawn from the results table.

Every figure function returns a :class:`matplotlib.figure.Figure`; :func:`export` writes it as
PNG (and SVG) and returns the PNG bytes that the HTML report embeds.  Each method keeps one
display name, colour and marker everywhere (:func:`method_styles`): the built-in methods have
fixed ones, any other run id gets the next free colour of a colour-blind-friendly palette in
sorted order.

=====================  ==================================================================
figure                 what it shows
=====================  ==================================================================
:func:`montage_figure` central axial, coronal and sagittal slices: reference χ, each method's
                       χ (one shared χ scale) and its error χ − reference (one shared,
                       symmetric error scale), all in ppm inside the brain mask, and the input
                       field
:func:`degradation_figure`  a metric against perturbation level, one line per method: mean over
                       seeds and its t-interval band (:mod:`qsmbench.stats`)
:func:`cost_figure`    reconstruction wall time (median, min–max) and peak memory per method,
                       the device named under each method
:func:`ranking_figure` mean rank of every method per metric over the perturbed volumes
:func:`metric_bars_figure`  metric values per method on one perturbation level (mean, CI bars)
:func:`ablation_figure`  variants of one method (e.g. INR-QSM with/without phase compensation):
                       data-consistency error under the full and the patch forward model
                       (:mod:`qsmbench.consistency`) and the metrics
=====================  ==================================================================

:func:`paper_figures` writes the set a paper needs into one folder, with an index (README.md).
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import io, results
from .errors import InputError

# --------------------------------------------------------------------------- method styles
#: The built-in run ids: display name, colour, marker (Okabe-Ito colours).
KNOWN_METHODS: dict[str, tuple[str, str, str]] = {
    "tkd": ("TKD", "#0072B2", "o"),
    "tkd_shmueli": ("TKD (Shmueli)", "#56B4E9", "v"),
    "cfl2": ("CFL2", "#009E73", "s"),
    "ilsqr": ("iLSQR", "#E69F00", "^"),
    "medi": ("MEDI", "#D55E00", "D"),
    "uqsm": ("uQSM", "#CC79A7", "P"),
    "inr_qsm": ("INR-QSM", "#000000", "*"),
    "inr_qsm_fast": ("INR-QSM (fast)", "#666666", "X"),
    "inr_qsm_nocomp": ("INR-QSM, no phase compensation", "#332288", "d"),
    "inr_qsm_nograd": ("INR-QSM, no gradient term", "#117733", "p"),
    "qsmnet": ("QSMnet (supervised)", "#882255", "h"),
}
#: Colours for other run ids, in sorted-name order (Tableau 10 without the Okabe-Ito look-alikes).
EXTRA_PALETTE = ("#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#9C755F", "#76B7B2", "#EDC948",
                 "#BAB0AC", "#FF9DA7", "#8C564B", "#17BECF", "#BCBD22", "#7F7F7F")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
#: Fallback χ display range (ppm) when the data give none.
CHI_RANGE_PPM = (-0.15, 0.25)
_ORIENTATIONS = (("axial", 2), ("coronal", 1), ("sagittal", 0))
_AXIS_LABELS = {"noise": "peak SNR", "resolution": "voxel size", "orientation": "B0 tilt"}


@dataclass(frozen=True)
class MethodStyle:
    """How one method (run id) looks in every figure and table."""

    label: str
    colour: str
    marker: str


def method_styles(names: Sequence[str], labels: Mapping[str, str] | None = None) -> dict[str, MethodStyle]:
    """Display name, colour and marker of every run id in ``names`` (see the module docstring).

    ``labels`` overrides display names.  Built-in run ids keep their colour whatever else is
    present; the others take :data:`EXTRA_PALETTE` in sorted order, then a colour derived from
    the name.  Display names are unique: a clash falls back to the run ids.
    """
    labels = dict(labels or {})
    names = sorted(set(names))
    out: dict[str, MethodStyle] = {}
    free = iter(EXTRA_PALETTE)
    markers = iter(MARKERS[i % len(MARKERS)] for i in range(10_000))
    for name in names:
        if name in KNOWN_METHODS:
            label, colour, marker = KNOWN_METHODS[name]
        else:
            label = name
            colour = next(free, None) or _hash_colour(name)
            marker = next(markers)
        out[name] = MethodStyle(labels.get(name, label), colour, marker)
    shown = [s.label for s in out.values()]
    if len(set(shown)) < len(shown):
        clashing = {lb for lb in shown if shown.count(lb) > 1}
        out = {n: MethodStyle(n, s.colour, s.marker) if s.label in clashing else s for n, s in out.items()}
    return out


def _hash_colour(name: str) -> str:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab20"](zlib.crc32(name.encode()) % 20)
    return f"#{int(r * 255):02X}{int(g * 255):02X}{int(b * 255):02X}"


def style_of(styles: Mapping[str, MethodStyle], name: str) -> MethodStyle:
    return styles.get(name) or method_styles([name])[name]


# --------------------------------------------------------------------------- output
def pyplot():
    """matplotlib.pyplot on the Agg backend, with deterministic SVG output."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.hashsalt"] = "qsmbench"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (editable in a paper)
    import matplotlib.pyplot as plt

    return plt


def export(fig, *, folder: str | os.PathLike | None = None, stem: str | None = None,
           formats: Sequence[str] = ("png", "svg"), dpi: int = 110) -> bytes:
    """Close ``fig`` and return it as PNG bytes; with ``folder``, also write ``{stem}.{fmt}`` there.

    Files are written atomically; PNG and SVG carry no creation date, so the same figure gives
    the same bytes.
    """
    plt = pyplot()
    try:
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
        png = buf.getvalue()
        # The layout (constrained, in figure fractions) is now computed; the other formats reuse it
        # instead of solving it again -- that solve is most of the cost of a many-panel montage.
        fig.set_layout_engine("none")
        if folder is not None:
            if not stem:
                raise ValueError("export: a stem is needed to write files")
            folder = Path(folder)
            for fmt in formats:
                path = folder / f"{stem}.{fmt}"
                if fmt == "png":
                    io.atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
                else:
                    meta = {"Date": None} if fmt in ("svg", "pdf") else {}
                    io.atomic_write(path, lambda tmp, f=fmt, m=meta: fig.savefig(
                        tmp, format=f, dpi=dpi, metadata=m))
        return png
    finally:
        plt.close(fig)


def slug(*parts: str) -> str:
    """A file-name stem from ids: lowercase letters, digits, '.', '_' and '-'."""
    text = "-".join(str(p) for p in parts if p)
    return re.sub(r"[^a-z0-9._-]+", "_", text.lower()).strip("_") or "figure"


def axis_label(metric: str, unit: str, better: str = "") -> str:
    text = f"{metric} ({unit})" if unit else metric
    return f"{text}, {better} is better" if better else text


# --------------------------------------------------------------------------- montage
def _central_index(mask: np.ndarray) -> tuple[int, int, int]:
    idx = np.argwhere(mask)
    if idx.size == 0:
        return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in idx.mean(axis=0))  # type: ignore[return-value]


def _slice(arr: np.ndarray, axis: int, index: int) -> np.ndarray:
    # Transposed so that the first remaining array axis runs left to right and the second
    # bottom to top (with origin="lower").
    return np.take(arr, index, axis=axis).T


def _aspect(voxel_size_mm, axis: int) -> float:
    a, b = [v for i, v in enumerate(voxel_size_mm) if i != axis]
    return b / a


def montage_figure(vol, reference: np.ndarray | None, ref_name: str | None,
                   recons: Mapping[str, np.ndarray | None], styles: Mapping[str, MethodStyle], title: str = ""):
    """Slice montage: one row per image, axial/coronal/sagittal χ on the left, errors on the right.

    Row 1 is the reference χ (left) and the input local field (right, its own scale); then one
    row per method: its χ on the reference's scale and χ − reference on one symmetric scale
    shared by every method (99th percentile of |error| in the mask).  Without a reference the
    χ scale comes from the methods and there are no error panels.  A failed method (``None``)
    has a labelled blank row.  Values outside the brain mask are hidden.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    inside = vol.mask.astype(bool)
    if reference is not None:
        lo, hi = np.percentile(reference[inside], [0.5, 99.5]) if inside.any() else CHI_RANGE_PPM
    else:
        pooled = [r[inside] for r in recons.values() if r is not None]
        lo, hi = np.percentile(np.concatenate(pooled), [0.5, 99.5]) if pooled and inside.any() else CHI_RANGE_PPM
    if not hi > lo:
        lo, hi = CHI_RANGE_PPM
    field_lim = float(np.percentile(np.abs(vol.field_ppm[inside]), 99.5)) if inside.any() else 1.0
    field_lim = field_lim or 1.0
    errors = {m: r - reference for m, r in recons.items() if r is not None and reference is not None}
    err_lim = float(np.percentile(np.abs(np.concatenate([e[inside] for e in errors.values()])), 99)) \
        if errors and inside.any() else 0.0
    err_lim = err_lim or (hi - lo) / 4

    rows: list[tuple[str, str, np.ndarray | None, np.ndarray | None]] = []  # (label, method, chi, right)
    rows.append((f"reference χ ({ref_name})" if reference is not None else "input", "",
                 reference, vol.field_ppm))
    for m, r in recons.items():
        rows.append((style_of(styles, m).label, m, r, errors.get(m) if r is not None else None))
    ncol = 6
    centre = _central_index(inside)
    # panel size from the largest slice, so that panels are roughly square in inches
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.45 * ncol + 0.9, 1.45 * len(rows) + 1.3),
                             layout="constrained", squeeze=False)
    if title:
        fig.suptitle(title, fontsize=11)
    cmaps = {"chi": plt.get_cmap("gray").with_extremes(bad="black"),
             "field": plt.get_cmap("gray").with_extremes(bad="black"),
             "err": plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9")}
    limits = {"chi": (lo, hi), "field": (-field_lim, field_lim), "err": (-err_lim, err_lim)}
    mappables: dict[str, Any] = {}
    for i, (label, method, chi, right) in enumerate(rows):
        colour = style_of(styles, method).colour if method else "black"
        for j in range(ncol):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            orient, axis = _ORIENTATIONS[j % 3]
            kind = "chi" if j < 3 else ("field" if i == 0 else "err")
            image = chi if j < 3 else right
            if i == 0:
                head = orient if j < 3 else (f"{orient}" if reference is None else orient)
                ax.set_title(head, fontsize=8, color="#444444")
            if j == 0:
                ax.set_ylabel(label, fontsize=9, color=colour, fontweight="bold" if method else "normal",
                              rotation=0 if len(label) <= 4 else 90, ha="right" if len(label) <= 4 else "center",
                              va="center")
            if j == 3 and i == 0:
                ax.text(0.03, 0.97, "input field", transform=ax.transAxes, fontsize=7, color="white", va="top")
            if j == 3 and i == 1 and reference is not None:
                ax.text(0.03, 0.97, "error", transform=ax.transAxes, fontsize=7, color="black", va="top")
            shape = _slice(inside, axis, centre[axis]).shape
            aspect = _aspect(vol.voxel_size_mm, axis)
            if image is None:
                ax.imshow(np.ma.masked_all(shape), origin="lower", cmap=cmaps["chi"], aspect=aspect)
                if method and (j == 1 or j == 4):
                    ax.text(0.5, 0.5, "failed" if chi is None else "", ha="center", va="center",
                            transform=ax.transAxes, fontsize=10, color="#b00020")
                ax.set_facecolor("#f4f4f4")
                continue
            shown = np.ma.masked_where(~_slice(inside, axis, centre[axis]), _slice(image, axis, centre[axis]))
            im = ax.imshow(shown, origin="lower", cmap=cmaps[kind], vmin=limits[kind][0], vmax=limits[kind][1],
                           interpolation="nearest", aspect=aspect)
            mappables.setdefault(kind, im)
    bars = {"chi": ("χ (ppm)", axes[:, :3]), "err": ("χ − reference (ppm), shared by every method", axes[1:, 3:]),
            "field": ("input local field (ppm)", axes[0:1, 3:])}
    for kind in ("chi", "err", "field"):
        if kind not in mappables or bars[kind][1].size == 0:
            continue
        label, target = bars[kind]
        location = "right" if kind == "field" else "bottom"
        cb = fig.colorbar(mappables[kind], ax=list(target.ravel()), location=location,
                          shrink=0.8 if location == "bottom" else 0.9, aspect=25 if location == "bottom" else 10,
                          pad=0.01)
        cb.ax.tick_params(labelsize=7)
        if location == "bottom":
            cb.ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
            cb.set_label(label, fontsize=8)
        else:
            cb.ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
            cb.set_label("field (ppm)", fontsize=7)
    return fig


def load_montage(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Read one montage entry (see :func:`qsmbench.report.render_report`): the volume, reference, χ maps."""

    try:
        dataset, perturbation = str(entry["dataset"]), str(entry["perturbation"])
        volume_dir = Path(entry["volume_dir"])
    except KeyError as exc:
        raise InputError(f"a montage entry lacks the key {exc}") from None
    vol = io.load_volume(volume_dir)
    ref_name = entry.get("reference") or (sorted(vol.references)[0] if vol.references else None)
    if ref_name is not None and ref_name not in vol.references:
        raise InputError(f"{volume_dir} has no reference {ref_name!r}; it has {sorted(vol.references)}")
    recons: dict[str, np.ndarray | None] = {}
    for method in sorted(entry.get("recons", {})):
        path = entry["recons"][method]
        if path is None:
            recons[method] = None
            continue
        chi, affine, _ = io.read_nifti(path, role=f"reconstruction of {method}")
        io.check_same_grid(volume_dir / io.FIELD, vol.shape, vol.affine, path, chi.shape, affine)
        recons[method] = chi.astype(float)
    return {"dataset": dataset, "perturbation": perturbation, "volume_dir": volume_dir, "vol": vol,
            "reference": vol.references.get(ref_name) if ref_name else None, "ref_name": ref_name,
            "recons": recons}


# --------------------------------------------------------------------------- degradation curves
def degradation_figure(title: str, axis: str, labels: Sequence[str], methods: Sequence[str],
                       metric_list: Sequence[str], series: Mapping[tuple[str, str], Sequence[Sequence[float]]],
                       meta: Mapping[str, tuple[str, str]], styles: Mapping[str, MethodStyle],
                       confidence: float = 0.95):
    """Metric against perturbation level: one panel per metric, one line per method.

    ``series[metric, method]`` holds one ``(mean, ci_lo, ci_hi, n)`` per entry of ``labels``
    (NaN where no run succeeded); the band is the t-interval where ``n > 1``.  ``meta[metric]``
    is ``(unit, better)``.
    """
    plt = pyplot()
    n = max(1, len(metric_list))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 1.6, 3.3), layout="constrained", squeeze=False)
    if title:
        fig.suptitle(title, fontsize=11)
    _draw_degradation(axes[0], axis, labels, methods, metric_list, series, meta, styles, xlabel=True)
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right center", fontsize=8, frameon=False,
                   title=f"line: mean\nband: {confidence:.0%} CI", title_fontsize=7)
    return fig


# --------------------------------------------------------------------------- cost
def cost_figure(run_table: pd.DataFrame, styles: Mapping[str, MethodStyle], title: str = ""):
    """Wall time (bar: median; whisker: min–max over runs) and peak memory (max) per method.

    ``run_table`` holds successful runs (:func:`qsmbench.results.runs`).  The device of each
    method is written under its name; GPU memory gets its own panel when any run recorded it.
    """
    plt = pyplot()
    g = run_table.groupby("method")
    stats = pd.DataFrame({
        "median": g["wall_s"].median(), "lo": g["wall_s"].min(), "hi": g["wall_s"].max(),
        "rss": g["peak_rss_mb"].max(), "gpu": g["peak_gpu_mb"].max(), "n": g["wall_s"].size(),
        "device": g["device"].agg(lambda s: "; ".join(sorted({d for d in s if d})) or "device not recorded")})
    names = list(stats.index)
    labels = [f"{style_of(styles, m).label}\n{_short_device(d)}" for m, d in zip(names, stats["device"], strict=True)]
    cols = [style_of(styles, m).colour for m in names]
    has_gpu = bool(np.isfinite(stats["gpu"]).any())
    ncol = 3 if has_gpu else 2
    fig, axes = plt.subplots(1, ncol, figsize=(3.6 * ncol + 1.4, 0.52 * len(names) + 1.5), layout="constrained",
                             sharey=True, squeeze=False)
    axes = axes[0]
    if title:
        fig.suptitle(title, fontsize=11)
    ys = np.arange(len(names))
    med = stats["median"].fillna(0).to_numpy()
    err = np.vstack([med - stats["lo"].fillna(0).to_numpy(), stats["hi"].fillna(0).to_numpy() - med])
    axes[0].barh(ys, med, color=cols, xerr=err if (stats["n"] > 1).any() else None, capsize=3,
                 error_kw={"elinewidth": 1, "ecolor": "#333333"})
    positive = med[med > 0]
    if positive.size and positive.max() / positive.min() > 100:
        axes[0].set_xscale("log")
    axes[0].set_xlabel("wall time (s): median, min–max", fontsize=9)
    axes[0].set_yticks(ys, labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[1].barh(ys, stats["rss"].fillna(0).to_numpy(), color=cols)
    axes[1].set_xlabel("peak RAM (MB): max over runs", fontsize=9)
    if has_gpu:
        axes[2].barh(ys, stats["gpu"].fillna(0).to_numpy(), color=cols)
        axes[2].set_xlabel("peak GPU memory (MB): max", fontsize=9)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    return fig


def _short_device(device: str, width: int = 34) -> str:
    return device if len(device) <= width else device[:width - 1] + "…"


# --------------------------------------------------------------------------- ranking
def ranking_figure(ranks: pd.DataFrame, metric_list: Sequence[str], styles: Mapping[str, MethodStyle],
                   title: str = ""):
    """Heat map of mean ranks (:func:`qsmbench.stats.rank_methods` rows of one dataset/reference).

    Rows: methods, best mean rank over the shown metrics first; columns: metrics; 1 is best.
    """
    plt = pyplot()
    wide = ranks.pivot(index="method", columns="metric", values="mean_rank")
    metric_list = [m for m in metric_list if m in wide.columns]
    wide = wide.reindex(columns=metric_list)
    wide = wide.loc[wide.mean(axis=1, skipna=True).sort_values(kind="stable").index]
    n_methods = max(2, len(wide))
    fig, ax = plt.subplots(figsize=(0.62 * len(metric_list) + 2.6, 0.42 * len(wide) + 1.6), layout="constrained")
    if title:
        ax.set_title(title, fontsize=10)
    data = wide.to_numpy(dtype=float)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=1, vmax=n_methods, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 1 + 0.55 * (n_methods - 1) else "black")
    ax.set_xticks(np.arange(len(metric_list)), metric_list, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(wide)), [style_of(styles, m).label for m in wide.index], fontsize=8)
    for tick, m in zip(ax.get_yticklabels(), wide.index, strict=True):
        tick.set_color(style_of(styles, m).colour)
        tick.set_fontweight("bold")
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("mean rank (1 = best)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return fig


# --------------------------------------------------------------------------- metric bars
def metric_bars_figure(summary: pd.DataFrame, metric_list: Sequence[str], methods: Sequence[str],
                       styles: Mapping[str, MethodStyle], title: str = "", confidence: float = 0.95):
    """One panel per metric, one bar per method: the mean over seeds, whiskers its t-interval.

    ``summary`` is :func:`qsmbench.stats.summarise` output restricted to one dataset, reference
    and level.  A method without a value has no bar and an "n/a" mark.
    """
    plt = pyplot()
    valued = set(summary.loc[summary["n"] > 0, "metric"])
    metric_list = [m for m in metric_list if m in valued]  # a metric undefined for every method: no panel
    n = max(1, len(metric_list))
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols + 0.6, 0.32 * len(methods) * nrows + 1.2 * nrows + 0.5),
                             layout="constrained", squeeze=False)
    if title:
        fig.suptitle(title, fontsize=11)
    by = summary.set_index(["metric", "method"])
    ys = np.arange(len(methods))
    for k, ax in enumerate(axes.ravel()):
        if k >= len(metric_list):
            ax.set_visible(False)
            continue
        metric = metric_list[k]
        first = summary[summary["metric"] == metric].iloc[0]
        for y, m in zip(ys, methods, strict=True):
            st = style_of(styles, m)
            if (metric, m) not in by.index or not np.isfinite(by.loc[(metric, m), "mean"]):
                ax.text(0, y, " n/a", va="center", fontsize=7, color="#888888")
                continue
            r = by.loc[(metric, m)]
            xerr = r["ci_half"] if r["n"] > 1 and np.isfinite(r["ci_half"]) else None
            ax.barh(y, r["mean"], color=st.colour, xerr=xerr, capsize=2, error_kw={"elinewidth": 1})
        ax.set_yticks(ys, [style_of(styles, m).label for m in methods] if k % ncols == 0 else [""] * len(methods),
                      fontsize=8)
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_title(axis_label(metric, first["unit"]), fontsize=9)
        ax.set_xlabel(f"{first['better']} is better", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    if (summary["n"] > 1).any():
        fig.text(0.99, 0.005, f"whiskers: {confidence:.0%} t-interval over seeds", ha="right", va="bottom", fontsize=7,
                 color="#555555")
    return fig


# --------------------------------------------------------------------------- ablation
#: Methods whose runs :func:`paper_figures` compares as an ablation when a config has several of them.
ABLATION_METHODS = ("inr_qsm",)
ABLATION_METRICS = ("nrmse", "xsim", "hfen")
#: Patch model of the data-consistency diagnostic when a run's parameters do not give one
#: (INR-QSM's published patches, 96x96x48 with a stride of one third).
DEFAULT_PATCH = {"patch_size": [96, 96, 48], "patch_stride_fraction": 1.0 / 3.0, "patch_pad_factor": 2.0}


def _run_parameters(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{run id: parameters}`` from the table's ``parameters`` column (JSON text)."""
    out: dict[str, dict[str, Any]] = {}
    for run, text in df.drop_duplicates("method")[["method", "parameters"]].itertuples(index=False):
        try:
            value = json.loads(text) if isinstance(text, str) and text else {}
        except json.JSONDecodeError:
            value = {}
        out[str(run)] = value if isinstance(value, dict) else {}
    return out


def ablation_runs(df: pd.DataFrame, methods: Sequence[str] = ABLATION_METHODS) -> dict[str, list[str]]:
    """``{method: [run ids]}`` for each method of ``methods`` that the table holds under at least
    two run ids (e.g. ``inr_qsm`` and ``inr_qsm_nocomp``), run ids sorted."""
    pairs = df[["method", "method_name"]].drop_duplicates()
    out = {}
    for name in methods:
        ids = sorted(set(pairs.loc[pairs["method_name"] == name, "method"]))
        if len(ids) >= 2:
            out[name] = ids
    return out


def ablation_table(df: pd.DataFrame, entries: Sequence[Mapping[str, Any]],
                   methods: Sequence[str] = ABLATION_METHODS) -> pd.DataFrame:
    """Data-consistency errors of every ablation run with a reconstruction on disk.

    ``entries`` are montage entries (:func:`qsmbench.report.montages_from_runs`: dataset,
    perturbation, volume folder, ``{run id: chi file or None}``).  One row per (dataset,
    perturbation, run): ``dc_full`` and ``dc_patch`` in % (:mod:`qsmbench.consistency`, the patch
    model with the run's own ``patch_size`` / ``patch_stride_fraction`` / ``patch_pad_factor``
    when it has them, else :data:`DEFAULT_PATCH`), NaN for a failed run.
    """
    from . import consistency, io

    groups = ablation_runs(df, methods)
    params = _run_parameters(df)
    columns = ["dataset", "perturbation", "method_name", "run", "dc_full", "dc_patch", "patch_size",
               "patch_stride_fraction"]
    rows = []
    for entry in entries:
        recons = entry.get("recons", {})
        wanted = [(name, run) for name, ids in groups.items() for run in ids if run in recons]
        if not wanted:
            continue
        vol = io.load_volume(Path(entry["volume_dir"]))
        for name, run in wanted:
            p = {**DEFAULT_PATCH, **{k: v for k, v in params.get(run, {}).items() if k in DEFAULT_PATCH}}
            full = patch = math.nan
            path = recons[run]
            if path is not None:
                chi, affine, _ = io.read_nifti(path, role=f"reconstruction of {run}")
                io.check_same_grid(Path(entry["volume_dir"]) / io.FIELD, vol.shape, vol.affine, path, chi.shape,
                                   affine)
                geometry = (vol.voxel_size_mm, vol.b0_dir)
                full = 100.0 * consistency.data_consistency_error(chi, vol.field_ppm, vol.mask, *geometry)
                patch = 100.0 * consistency.patch_data_consistency_error(
                    chi, vol.field_ppm, vol.mask, *geometry, patch_size=p["patch_size"],
                    stride_fraction=float(p["patch_stride_fraction"]), pad_factor=float(p["patch_pad_factor"]))
            rows.append({"dataset": str(entry["dataset"]), "perturbation": str(entry["perturbation"]),
                         "method_name": name, "run": run, "dc_full": full, "dc_patch": patch,
                         "patch_size": "x".join(str(int(n)) for n in p["patch_size"]),
                         "patch_stride_fraction": float(p["patch_stride_fraction"])})
    return pd.DataFrame(rows, columns=columns)


def ablation_figure(dc: pd.DataFrame, summary: pd.DataFrame, runs: Sequence[str], metric_list: Sequence[str],
                    styles: Mapping[str, MethodStyle], title: str = "", confidence: float = 0.95):
    """Ablation of one method on one volume: data consistency (left) and metrics (right).

    ``dc``: :func:`ablation_table` rows of this volume; ``summary``: :func:`qsmbench.stats.summarise`
    rows of one (dataset, reference, level).  Left panel: per run, the relative residual
    ``||m (D * chi - f)|| / ||m f||`` under the full (zero-padded, whole-volume) forward model
    (solid bar) and under the patch model (hatched bar).  Then one panel per metric (mean,
    t-interval whiskers over seeds).
    """
    plt = pyplot()
    valued = set(summary.loc[summary["n"] > 0, "metric"])
    metric_list = [m for m in metric_list if m in valued]
    n = 1 + len(metric_list)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n + 1.6, 0.5 * len(runs) + 1.9), layout="constrained",
                             squeeze=False)
    axes = axes[0]
    if title:
        fig.suptitle(title, fontsize=11)
    ys = np.arange(len(runs))
    labels = [style_of(styles, r).label for r in runs]
    by_run = dc.set_index("run") if len(dc) else pd.DataFrame(columns=["dc_full", "dc_patch"])
    ax = axes[0]
    h = 0.38
    for y, run in zip(ys, runs, strict=True):
        st = style_of(styles, run)
        if run not in by_run.index or not np.isfinite(by_run.loc[run, "dc_full"]):
            ax.text(0, y, " n/a", va="center", fontsize=7, color="#888888")
            continue
        ax.barh(y - h / 2, by_run.loc[run, "dc_full"], height=h, color=st.colour,
                label="full forward model" if y == 0 else None)
        ax.barh(y + h / 2, by_run.loc[run, "dc_patch"], height=h, color="white", edgecolor=st.colour, hatch="///",
                label="patch model" if y == 0 else None)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_ylim(len(runs) - 0.5, -0.5)
    ax.set_title("data consistency ‖m(D∗χ − f)‖ / ‖m f‖", fontsize=9)
    ax.set_xlabel("relative residual (%): lower is better", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    by = summary.set_index(["metric", "method"])
    for ax, metric in zip(axes[1:], metric_list, strict=True):
        first = summary[summary["metric"] == metric].iloc[0]
        for y, run in zip(ys, runs, strict=True):
            if (metric, run) not in by.index or not np.isfinite(by.loc[(metric, run), "mean"]):
                ax.text(0, y, " n/a", va="center", fontsize=7, color="#888888")
                continue
            r = by.loc[(metric, run)]
            xerr = r["ci_half"] if r["n"] > 1 and np.isfinite(r["ci_half"]) else None
            ax.barh(y, r["mean"], color=style_of(styles, run).colour, xerr=xerr, capsize=2, error_kw={"elinewidth": 1})
        ax.set_yticks(ys, [""] * len(runs))
        ax.set_ylim(len(runs) - 0.5, -0.5)
        ax.set_title(axis_label(metric, first["unit"]), fontsize=9)
        ax.set_xlabel(f"{first['better']} is better", fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig


# --------------------------------------------------------------------------- paper figures
PAPER_METRICS = ("rmse", "hfen", "xsim", "nrmse", "dnrmse", "roi_error_gm", "roi_error_wm", "slope_error")
ROBUSTNESS_METRICS = ("nrmse", "xsim")


def degradation_series(summary: pd.DataFrame, levels: Sequence[str], methods: Sequence[str],
                       metric_list: Sequence[str]) -> dict[tuple[str, str], list[tuple[float, float, float, int]]]:
    """``series`` of :func:`degradation_figure` from :func:`qsmbench.stats.summarise` output of one
    (dataset, reference): ``(mean, ci_lo, ci_hi, n)`` per level ('none' included as a level)."""
    idx = summary.set_index(["metric", "method", "level"])[["mean", "ci_lo", "ci_hi", "n"]]
    lookup = {k: tuple(v) for k, v in zip(idx.index, idx.itertuples(index=False, name=None), strict=True)}
    empty = (math.nan, math.nan, math.nan, 0)
    return {(metric, method): [lookup.get((metric, method, lv), empty) for lv in levels]
            for metric in metric_list for method in methods}


def paper_figures(table: pd.DataFrame | str | os.PathLike, out_dir: str | os.PathLike, *,
                  montages: Sequence[Mapping[str, Any]] = (), ablation: Sequence[Mapping[str, Any]] = (),
                  ablation_methods: Sequence[str] = ABLATION_METHODS, metrics: Sequence[str] = PAPER_METRICS,
                  robustness_metrics: Sequence[str] = ROBUSTNESS_METRICS, labels: Mapping[str, str] | None = None,
                  formats: Sequence[str] = ("png", "svg"), dpi: int = 300, correction: str = "holm",
                  confidence: float = 0.95) -> list[Path]:
    """Write the figures (and tables) of an INR-QSM-style paper into ``out_dir``; return the paths.

    * ``comparison-{dataset}-{reference}``: every method on the unperturbed data (metric bars),
    * ``montage-{dataset}``: slice montage of each entry of ``montages``,
    * ``robustness-{axis}``: degradation curves (rows: dataset · reference; columns: metrics)
      for noise, voxel size and B0 orientation (and any combination present),
    * ``ranking-{dataset}-{reference}``: mean rank per metric over all volumes,
    * ``runtime``: wall time and peak memory per method (device named),
    * ``ablation-{dataset}-{reference}`` and ``ablation.csv``: the runs of one method of
      ``ablation_methods`` (e.g. INR-QSM with and without phase compensation) compared on
      data consistency (full vs patch forward model, computed from each reconstruction and its
      input field: ``ablation`` holds montage-style entries) and the metrics, unperturbed,
    * ``summary.csv`` (mean, sd, n, t-interval per dataset/reference/level/method/metric),
      ``comparisons.csv`` (paired Wilcoxon tests, ``correction``-adjusted) and ``README.md``
      (what each file shows and what produced it, and which figure kind of the INR-QSM paper
      each file regenerates, with what differs from the paper).

    Figures are written in every format of ``formats`` at ``dpi``; stale files of an earlier
    run are removed first.
    """
    from . import stats

    source = "the results table"
    if not isinstance(table, pd.DataFrame):
        source = f"the results table {Path(table).name}"
        table = results.read_table(table)
    df = results.default_rows(results.as_table(table))  # tuned runs are shown in the report's Tuning section
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file() and old.suffix in {".png", ".svg", ".pdf", ".csv", ".md"}:
            old.unlink()
    styles = method_styles(sorted(set(df["method"]) | {m for e in montages for m in e.get("recons", {})}), labels)
    index: list[tuple[str, str, str]] = []
    written: list[Path] = []

    def save(fig, stem, what, produced):
        export(fig, folder=out, stem=stem, formats=formats, dpi=dpi)
        written.extend(out / f"{stem}.{fmt}" for fmt in formats)
        index.append((stem, what, produced))

    summary = stats.summarise(df, confidence=confidence)
    scored = summary[summary["reference"] != ""]
    metric_order = [m for m in metrics if m in set(scored["metric"])]
    for (dataset, reference), s in scored.groupby(["dataset", "reference"], sort=True):
        base = s[s["level"] == "none"]
        methods = sorted(set(s["method"]))
        if len(base) and metric_order:
            fig = metric_bars_figure(base, metric_order, methods, styles,
                                     f"{dataset} · reference {reference} · unperturbed", confidence)
            save(fig, slug("comparison", dataset, reference),
                 f"Method comparison on {dataset} (reference {reference}), unperturbed: mean over seeds with "
                 f"{confidence:.0%} t-interval whiskers.", f"qsmbench.figures.metric_bars_figure from {source}")
    for entry in montages:
        m = load_montage(entry)
        fig = montage_figure(m["vol"], m["reference"], m["ref_name"], m["recons"], styles,
                             f"{m['dataset']} · {m['perturbation']}")
        save(fig, slug("montage", m["dataset"], m["perturbation"] if m["perturbation"] != "none" else ""),
             f"Slices of {m['dataset']} ({m['perturbation']}): reference χ, input field, each method's χ and its "
             "error on shared scales (ppm).", f"qsmbench.figures.montage_figure from {m['volume_dir']}")
    # robustness: one figure per axis, one row per (dataset, reference)
    axes, _ = stats.robustness_axes(set(df["perturbation"]))
    rob_metrics = [m for m in robustness_metrics if m in set(scored["metric"])]
    for axis, levels in axes.items():
        groups = [(d, r) for (d, r), s in scored.groupby(["dataset", "reference"], sort=True)
                  if set(s["level"]) & {lv for lv, _, _ in levels}]
        if not groups or not rob_metrics:
            continue
        plt = pyplot()
        fig, grid = plt.subplots(len(groups), len(rob_metrics), figsize=(4.2 * len(rob_metrics) + 1.8,
                                                                         3.0 * len(groups) + 0.4),
                                 layout="constrained", squeeze=False)
        fig.suptitle(f"Robustness: {axis.replace('+', ' + ')}", fontsize=11)
        for row, (dataset, reference) in enumerate(groups):
            s = scored[(scored["dataset"] == dataset) & (scored["reference"] == reference)]
            names = ["none", *[lv for lv, _, _ in levels]]
            methods = sorted(set(s["method"]))
            series = degradation_series(s, names, methods, rob_metrics)
            meta = {m: tuple(s.loc[s["metric"] == m, ["unit", "better"]].iloc[0]) for m in rob_metrics}
            _draw_degradation(grid[row], axis, ["none", *[lb for _, lb, _ in levels]], methods, rob_metrics,
                              series, meta, styles, f"{dataset} · reference {reference}", xlabel=row == len(groups) - 1)
        handles, names = grid[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside right center", fontsize=8, frameon=False,
                   title=f"line: mean\nband: {confidence:.0%} CI", title_fontsize=7)
        save(fig, slug("robustness", axis.replace("+", "_")),
             f"Robustness to {axis.replace('+', ' + ')}: {', '.join(rob_metrics)} against level, mean over seeds "
             f"with its {confidence:.0%} t-interval band.", f"qsmbench.figures (degradation curves) from {source}")
    ablation_rows = ablation_table(df, ablation, ablation_methods) if ablation else pd.DataFrame()
    if len(ablation_rows):
        for name, runs_of in ablation_runs(df, ablation_methods).items():
            for (dataset, reference), s in scored.groupby(["dataset", "reference"], sort=True):
                base = s[(s["level"] == "none") & s["method"].isin(runs_of)]
                dc = ablation_rows[(ablation_rows["dataset"] == dataset) & (ablation_rows["perturbation"] == "none")
                                   & (ablation_rows["method_name"] == name)]
                if not len(dc):
                    continue
                ab_metrics = [m for m in ABLATION_METRICS if m in set(base["metric"])]
                fig = ablation_figure(dc, base, runs_of, ab_metrics, styles,
                                      f"Ablation of {name} · {dataset} · reference {reference} · unperturbed",
                                      confidence)
                save(fig, slug("ablation", dataset, reference),
                     f"Ablation of {name} on {dataset} (reference {reference}), unperturbed: runs "
                     f"{', '.join(runs_of)}; data-consistency error under the full forward model (solid) and the "
                     f"patch model (hatched), and {', '.join(ab_metrics)}.",
                     f"qsmbench.figures.ablation_figure (qsmbench.consistency) from {source} and the reconstructions")
        ablation_path = out / "ablation.csv"
        results.atomic_write(ablation_path, lambda tmp: ablation_rows.to_csv(tmp, index=False, na_rep="NaN"))
        written.append(ablation_path)
        index.append(("ablation.csv", "Data-consistency errors (%) of every ablation run: full forward model "
                      "(dc_full) and patch model (dc_patch, with the patch geometry used).",
                      "qsmbench.figures.ablation_table (qsmbench.consistency)"))
    ranks = stats.rank_methods(df)
    for (dataset, reference), r in ranks.groupby(["dataset", "reference"], sort=True):
        order = [m for m in metrics if m in set(r["metric"])] or sorted(set(r["metric"]))
        fig = ranking_figure(r, order, styles, f"{dataset} · reference {reference}: mean rank over volumes")
        save(fig, slug("ranking", dataset, reference),
             f"Mean rank per metric on {dataset} (reference {reference}) over every perturbed volume (1 = best; "
             "a failed run ranks last).", f"qsmbench.stats.rank_methods from {source}")
    run_table = results.runs(df)
    ok = run_table[run_table["run_status"] == "ok"]
    if len(ok):
        save(cost_figure(ok, styles, "Reconstruction cost"), "runtime",
             "Reconstruction wall time (median, min–max over runs) and peak memory per method; the device is "
             "named under each method.", f"qsmbench.figures.cost_figure from {source}")
    summary_path = out / "summary.csv"
    io.atomic_write(summary_path, lambda tmp: summary.to_csv(tmp, index=False, na_rep="NaN"))
    comparisons = stats.compare_methods(df, correction=correction)
    comparisons_path = out / "comparisons.csv"
    io.atomic_write(comparisons_path, lambda tmp: comparisons.to_csv(tmp, index=False, na_rep="NaN"))
    written += [summary_path, comparisons_path]
    index.append(("summary.csv", f"Mean, sd, n and {confidence:.0%} t-interval over seeds per dataset, reference, "
                  "perturbation level, method and metric.", f"qsmbench.stats.summarise from {source}"))
    index.append(("comparisons.csv", f"Paired two-sided Wilcoxon signed-rank tests between methods over the same "
                  f"perturbed volumes, {correction}-corrected per (dataset, reference, metric).",
                  f"qsmbench.stats.compare_methods from {source}"))
    readme = out / "README.md"
    lines = ["# Paper figures", "", f"Regenerated by `snakemake paper_figures` (qsmbench.figures.paper_figures) "
             f"from {source}; figures as {', '.join(formats).upper()} ({dpi} dpi for raster).", "",
             "| file | shows | produced by |", "|---|---|---|"]
    for stem, what, produced in index:
        files = stem if "." in stem else ", ".join(f"`{stem}.{fmt}`" for fmt in formats)
        lines.append(f"| {files} | {what} | {produced} |")
    lines += paper_figure_map(index, formats, set(df["method"]), set(df["method_name"]))
    styles_used = {m: styles[m].__dict__ for m in sorted(styles)}
    lines += ["", "Method styles (the same in every figure):", "", "```json",
              json.dumps(styles_used, indent=1, ensure_ascii=False), "```", ""]
    io.atomic_write(readme, lambda tmp: Path(tmp).write_text("\n".join(lines), encoding="utf-8"))
    written.append(readme)
    return written


#: Figure kinds of the INR-QSM paper (Zhang et al., Medical Image Analysis 2024;95:103173):
#: (kind, file stems that regenerate it, what differs from the paper, why it can be missing).
PAPER_FIGURE_KINDS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("Method comparison per dataset (metrics of every method, unperturbed)",
     ("comparison-", "summary.csv", "comparisons.csv"),
     "Our data: the embedded MNI-anatomy phantom (a simulation of ours, not the paper's), the 2016 challenge's in-vivo "
     "data and RC2 Sim1/Sim2 when available; our metric implementations (challenge definitions, qsmbench.metrics). "
     "Every method is our reimplementation from its paper, not the authors' code: the unsupervised DL comparator is "
     "uQSM (not confirmed to be the paper's), the supervised DL comparator is QSMnet-style, trained on our phantoms.",
     "no unperturbed metric values"),
    ("Slice montages with error maps",
     ("montage-",),
     "Central axial, coronal and sagittal slices with one shared χ scale and one shared error scale; the paper shows "
     "selected slices and zoomed regions of its own data.",
     "no reconstruction of an unperturbed volume"),
    ("Robustness to noise, resolution and B0 orientation, against supervised and unsupervised DL",
     ("robustness-",),
     "Perturbations simulated by qsmbench.perturb (complex Gaussian noise at peak SNR with ideal unwrapping; k-space "
     "cropping to coarser or anisotropic voxels; the phantom regenerated with a tilted B0, challenge data re-simulated "
     "from their reference). Supervised DL = our QSMnet-style network trained on our phantoms with B0 along the last "
     "axis at one voxel size and no augmentation; unsupervised DL = uQSM; INR-QSM (paper profile) on a subset.",
     "no perturbations in this configuration"),
    ("Ablation: phase compensation (and the gradient-domain term)",
     ("ablation-", "ablation.csv"),
     "Runs of INR-QSM with phase compensation off (and without the gradient-domain term) next to the full method; the "
     "data-consistency panel (full zero-padded forward model vs the patch model, qsmbench.consistency) is our "
     "diagnostic of the non-local error that compensation targets, computed from the maps and their input fields.",
     "needs at least two runs of INR-QSM (config/paper.yaml: inr_qsm, inr_qsm_nocomp, inr_qsm_nograd)"),
    ("Runtime",
     ("runtime",),
     "Wall time and peak memory of our implementations on the machine that ran them (device named under each "
     "method); CPU runs of quick profiles are not comparable with the paper's GPU timings.",
     "no successful run"),
)


def paper_figure_map(index: Sequence[tuple[str, str, str]], formats: Sequence[str], run_ids=(),
                     method_names=()) -> list[str]:
    """README lines mapping each figure kind of the INR-QSM paper to the files of this folder."""
    stems = [stem for stem, _, _ in index]
    lines = ["", "## The INR-QSM paper's figures", "",
             "Zhang M et al., Medical Image Analysis 2024;95:103173 (doi:10.1016/j.media.2024.103173). Each figure "
             "kind of the paper, the files of this folder that regenerate it and what differs from the paper. "
             "Regenerate with `snakemake --cores all --configfile config/paper.yaml` (the full reproduction; "
             "`snakemake paper_figures` redraws this folder from existing results).", "",
             "| figure kind (paper) | files here | what differs from the paper |", "|---|---|---|"]
    for kind, prefixes, differs, missing in PAPER_FIGURE_KINDS:
        hits = [st for st in stems if any(st == p or (p.endswith("-") and st.startswith(p)) for p in prefixes)]
        files = ", ".join(f"`{st}`" if "." in st else f"`{st}.{formats[0]}`" for st in hits) if hits \
            else f"not produced in this run ({missing})"
        lines.append(f"| {kind} | {files} | {differs} |")
    names = set(method_names)
    notes = []
    if "qsmnet" not in names:
        notes.append("No supervised deep-learning baseline ran (method `qsmnet`): the robustness figures lack the "
                     "paper's supervised comparator.")
    if "uqsm" not in names:
        notes.append("No unsupervised deep-learning baseline ran (method `uqsm`).")
    if not names & {"inr_qsm", "inr_qsm_fast"}:
        notes.append("INR-QSM did not run.")
    extra = [st for st in stems if st.startswith("ranking-")]
    if extra:
        notes.append("Not in the paper: " + ", ".join(f"`{st}.{formats[0]}`" for st in extra)
                     + " (mean rank over every perturbed volume).")
    return lines + ([""] + [f"- {n}" for n in notes] if notes else [])


def _draw_degradation(axes_row, axis, labels, methods, metric_list, series, meta, styles, row_title="",
                      xlabel=False):
    """Draw the curves of :func:`degradation_figure` into one row of axes."""
    x = np.arange(len(labels))
    rotate = len(labels) > 4 or axis not in _AXIS_LABELS
    for ax, metric in zip(axes_row, metric_list, strict=False):
        for method in methods:
            data = np.array([list(s)[:4] for s in series[metric, method]], dtype=float).reshape(-1, 4)
            st = style_of(styles, method)
            ax.plot(x, data[:, 0], marker=st.marker, ms=4.5, lw=1.6, color=st.colour, label=st.label)
            ran = np.flatnonzero(np.isfinite(data[:, 0]))
            if len(ran) >= 2 and ran[-1] - ran[0] + 1 > len(ran):
                # a method limited to some levels (methods.<run>.perturbations): a dotted line joins
                # the levels it ran, across those it did not (no value is drawn there)
                ax.plot(x[ran], data[ran, 0], ls=":", lw=1.2, color=st.colour, label="_nolegend_")
            band = data[:, 3] > 1
            if band.any():
                ax.fill_between(x, np.where(band, data[:, 1], np.nan), np.where(band, data[:, 2], np.nan),
                                color=st.colour, alpha=0.18, linewidth=0)
        ax.set_xticks(x, labels, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
        if xlabel:
            ax.set_xlabel(_AXIS_LABELS.get(axis, "level") + " (least to most perturbed)", fontsize=9)
        unit, better = meta[metric]
        ax.set_ylabel(axis_label(metric, unit, better), fontsize=9)
        if row_title:
            ax.set_title(row_title, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)


__all__ = ["ABLATION_METHODS", "CHI_RANGE_PPM", "EXTRA_PALETTE", "KNOWN_METHODS", "MethodStyle", "ablation_figure",
           "ablation_runs", "ablation_table", "cost_figure", "degradation_figure", "degradation_series", "export",
           "load_montage", "method_styles", "metric_bars_figure", "montage_figure", "paper_figure_map", "paper_figures",
           "pyplot",
           "ranking_figure", "slug"]


# --------------------------------------------------------------------------- tuning
def lcurve_figure(selections: Sequence[Mapping[str, Any]], styles: Mapping[str, MethodStyle]):
    """L-curves of the tuning searches (:mod:`qsmbench.tuning`) of one (dataset, perturbation):
    log data misfit against log regulariser norm, one line per run through its candidates, the
    value each mode chose marked (star: L-curve corner, diamond: discrepancy, circle: oracle)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2), layout="constrained")
    marks = {"lcurve": ("*", 14), "discrepancy": ("D", 8), "oracle": ("o", 10)}
    by_run: dict[str, list[Mapping[str, Any]]] = {}
    for s in selections:
        by_run.setdefault(s["run_id"], []).append(s)
    for run, sels in sorted(by_run.items()):
        st = style_of(styles, run)
        pts = sorted((p for p in sels[0]["points"] if p.get("misfit") and p.get("regulariser")),
                     key=lambda p: p["value"])
        if not pts:
            continue
        ax.plot([p["misfit"] for p in pts], [p["regulariser"] for p in pts], "-", marker=".", color=st.colour,
                label=f"{st.label} ({sels[0]['parameter']})")
        modes_at: dict[int, list[str]] = {}
        for s in sels:
            if s.get("mode") in marks and s.get("index") is not None:
                modes_at.setdefault(s["index"], []).append(s["mode"])
        for p in pts:
            for mode in modes_at.get(p["index"], []):
                m, size = marks[mode]
                ax.plot(p["misfit"], p["regulariser"], m, ms=size, mfc="none", mew=1.6, color=st.colour)
            if p["index"] in modes_at:
                ax.annotate(f"{', '.join(modes_at[p['index']])}: {p['value']:.3g}", (p["misfit"], p["regulariser"]),
                            textcoords="offset points", xytext=(7, 3), fontsize=7, color=st.colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("data misfit ||M(D*χ − f)|| (ppm)")
    ax.set_ylabel("regulariser ||M ∇χ|| (ppm/mm)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("chosen: ☆ L-curve corner, ◇ discrepancy, ○ oracle (upper bound)", fontsize=8)
    return fig
