"""Statistics of the results table: confidence intervals, paired method comparisons, rankings.

Every statistic is computed from the tidy table of :mod:`qsmbench.results` with SciPy; this
module only decides *what* is paired, grouped and corrected.

Units of repetition
-------------------
A perturbation *level* is a perturbation id without its noise seed indices
(:func:`qsmbench.perturb.level_id`: ``noise-snr20-seed1`` and ``noise-snr20-seed2`` are two
seeds of the level ``noise-snr20``).  The "seeds" of a level are all its rows for one
(dataset, reference, method, metric): the noise realisations of the level times the method's
repetitions (the ``seed`` column).  Unparseable ids are their own level.

Mean and confidence interval (:func:`mean_ci`, :func:`summarise`)
    The mean over seeds with a two-sided Student-t interval,
    ``mean ± t(1 - (1 - confidence)/2, n - 1) · sd / sqrt(n)`` (``sd`` with ``n - 1``;
    :func:`scipy.stats.t.ppf`).  It assumes the seeds are independent draws of a roughly normal
    quantity; with ``n = 1`` there is no interval (NaN), with ``sd = 0`` it has zero width.

Paired comparisons (:func:`compare_methods`)
    Two methods are compared on the *same perturbed volumes*: a volume is one
    (dataset, perturbation id) — each noise seed is its own volume — and a method's value on it
    is the mean over its repetitions.  The test is the two-sided Wilcoxon signed-rank test
    (:func:`scipy.stats.wilcoxon`, ``zero_method="wilcox"``: volumes where the two methods tie
    exactly are dropped; exact null distribution for up to 50 pairs without ties, the normal
    approximation otherwise) over every volume of a (dataset, reference) where both methods have
    a value.  The p-values of one *family* — all method pairs of one (dataset, reference,
    metric) — are corrected for multiple comparisons with Holm's step-down method (controls the
    family-wise error rate; SciPy has no Holm, so it is the few lines of :func:`holm`), or with
    Benjamini-Hochberg (:func:`scipy.stats.false_discovery_control`) on request.  With ``n``
    non-tied pairs the smallest possible two-sided p-value is ``2 / 2**n``: below 6 pairs
    nothing can be significant at 0.05, and the result says so.

Rankings (:func:`rank_methods`)
    On every volume the methods are ranked by their value (1 = best in the metric's
    direction, ties share the mean rank; :func:`scipy.stats.rankdata`).  A method whose run
    *failed* on the volume takes the worst rank there, so failing on hard cases never helps; a
    method not run on the volume, or whose metric is not applicable, is left out of that volume.
    The result is the mean rank over volumes and the number of wins (rank 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

#: Default confidence level of the intervals.
CONFIDENCE = 0.95
#: Default significance level of the (corrected) paired comparisons.
ALPHA = 0.05
#: Multiple-comparison corrections of :func:`compare_methods`.
CORRECTIONS = ("holm", "bh", "none")
#: Two values closer than this (relative to their magnitude) count as an exact tie.
TIE_RTOL = 1e-12


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` finite values, their standard deviation and the t-interval ``[lo, hi]``."""

    mean: float
    lo: float
    hi: float
    sd: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2 if self.n > 1 else math.nan


def t_half_width(sd, n, confidence: float = CONFIDENCE):
    """Half width of the two-sided t-interval of a mean: ``t_{(1+c)/2, n-1} · sd / sqrt(n)``.

    Works element-wise on arrays; NaN where ``n < 2``.
    """
    sd = np.asarray(sd, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = _st.t.ppf(0.5 + confidence / 2, np.where(n > 1, n - 1, np.nan))
        return np.where(n > 1, q * sd / np.sqrt(n), np.nan)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Mean and two-sided Student-t confidence interval of the finite ``values``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    sd = float(v.std(ddof=1))
    half = float(t_half_width(sd, n, confidence))
    return Interval(mean, mean - half, mean + half, sd, n)


def level_of(perturbation: str) -> str:
    """The level (id without noise seed indices) of a perturbation id; unknown ids are their own level."""
    from . import perturb

    try:
        perturb.parse_slug(perturbation)
    except ValueError:
        return perturbation
    return perturb.level_id(perturbation)


def with_levels(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``level`` column (one parse per distinct perturbation id)."""
    levels = {p: level_of(p) for p in pd.unique(df["perturbation"])}
    return df.assign(level=df["perturbation"].map(levels).astype(str))


def robustness_axes(perturbations) -> tuple[dict[str, list[tuple[str, str, list[str]]]], list[str]]:
    """Group perturbation ids by axis and level, for degradation curves.

    Returns ``({axis: [(level, label, [ids])]}, notes)``: axes in the order of
    :data:`qsmbench.perturb.KINDS` (single kinds first, then combinations), each axis's levels
    from least to most perturbed (:func:`qsmbench.perturb.severity`), ``none`` excluded; ids
    that :mod:`qsmbench.perturb` cannot parse are left out with a note.
    """
    from . import perturb

    notes: list[str] = []
    by_axis: dict[str, dict[str, list[str]]] = {}
    for p in sorted(set(perturbations) - {"none"}):
        try:
            axis = perturb.axis_name(p)
        except ValueError as exc:
            notes.append(f"perturbation {p!r} is not shown: {exc}")
            continue
        by_axis.setdefault(axis, {}).setdefault(perturb.level_id(p), []).append(p)
    order = sorted(by_axis, key=lambda a: (a.count("+"), [perturb.KINDS.index(k) for k in a.split("+")]))
    out = {}
    for axis in order:
        levels = sorted(by_axis[axis], key=lambda lv: perturb.severity(by_axis[axis][lv][0]))
        out[axis] = [(lv, perturb.level_label(by_axis[axis][lv][0]), sorted(by_axis[axis][lv])) for lv in levels]
    return out, notes


def summarise(df: pd.DataFrame, *, by: Sequence[str] = ("dataset", "reference", "level", "method", "metric"),
              confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean, sd, n and t-interval over seeds of the 'ok' values, one row per ``by`` group.

    ``level`` in ``by`` is derived from ``perturbation`` (see the module docstring).  Groups
    without any 'ok' value are kept with ``n = 0`` (mean NaN), so a method that failed
    everywhere still has its row.  Also returned: ``better`` and ``unit`` of the metric.
    """
    by = list(by)
    if "level" in by and "level" not in df.columns:
        df = with_levels(df)
    ok = df["status"] == "ok"
    values = df["value"].where(ok & np.isfinite(df["value"]))
    g = df.assign(_v=values).groupby(by, sort=True, dropna=False)
    out = g["_v"].agg(mean="mean", sd="std", n="count")
    meta = g[["better", "unit"]].first()
    out = out.join(meta).reset_index()
    out["n"] = out["n"].astype(int)
    out.loc[out["n"] < 2, "sd"] = math.nan
    half = t_half_width(out["sd"].to_numpy(), out["n"].to_numpy(), confidence)
    out["ci_lo"] = out["mean"] - half
    out["ci_hi"] = out["mean"] + half
    out["ci_half"] = half
    return out


# --------------------------------------------------------------------------- multiple comparisons
def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979, Scand J Statist 6:65).

    With the m finite p-values sorted ascending, ``p_adj(i) = max_{j<=i} min(1, (m - j + 1) p(j))``
    (i, j from 1).  NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def adjust(p_values: Sequence[float] | np.ndarray, correction: str = "holm") -> np.ndarray:
    """Adjusted p-values: ``holm``, ``bh`` (Benjamini-Hochberg, SciPy) or ``none``; NaN kept."""
    p = np.asarray(p_values, dtype=float)
    if correction == "holm":
        return holm(p)
    if correction == "none":
        return p.copy()
    if correction == "bh":
        out = np.full(p.shape, np.nan)
        finite = np.isfinite(p)
        if finite.any():
            out[finite] = _st.false_discovery_control(p[finite], method="bh")
        return out
    raise ValueError(f"unknown correction {correction!r}; known: {', '.join(CORRECTIONS)}")


# --------------------------------------------------------------------------- paired comparisons
def volume_values(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One value per (dataset, reference, metric, perturbation, method): the mean over repetitions.

    Only 'ok' rows with a reference; ``metrics`` limits the metrics (default: all).
    """
    sel = (df["status"] == "ok") & (df["reference"] != "") & np.isfinite(df["value"])
    if metrics is not None:
        sel &= df["metric"].isin(list(metrics))
    keys = ["dataset", "reference", "metric", "perturbation", "method"]
    return df.loc[sel].groupby(keys, sort=True)["value"].mean().reset_index()


def paired_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of the paired values ``a`` and ``b`` (same volumes).

    Returns ``n`` (pairs), ``n_untied``, ``median_diff`` and ``mean_diff`` (a − b),
    ``statistic`` and ``p_value`` (1 when every pair ties; NaN without pairs) and
    ``min_p``, the smallest p-value possible with ``n_untied`` pairs (``2 / 2**n_untied``).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    d = a - b
    scale = np.maximum(np.abs(a), np.abs(b))
    d = np.where(np.abs(d) <= TIE_RTOL * scale, 0.0, d)
    n = int(d.size)
    untied = int(np.count_nonzero(d))
    out = {"n": n, "n_untied": untied,
           "median_diff": float(np.median(d)) if n else math.nan,
           "mean_diff": float(np.mean(d)) if n else math.nan,
           "min_p": min(1.0, 2.0 / 2.0 ** untied) if untied else 1.0}
    if n == 0:
        return {**out, "statistic": math.nan, "p_value": math.nan}
    if untied == 0:
        return {**out, "statistic": 0.0, "p_value": 1.0}
    res = _st.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    return {**out, "statistic": float(res.statistic), "p_value": float(res.pvalue)}


COMPARISON_COLUMNS = ("dataset", "reference", "metric", "better", "method_a", "method_b", "n", "n_untied",
                      "median_diff", "mean_diff", "a_better", "b_better", "statistic", "p_value",
                      "p_adjusted", "significant", "winner", "note")


def compare_methods(df: pd.DataFrame, *, metrics: Sequence[str] | None = None, correction: str = "holm",
                    alpha: float = ALPHA) -> pd.DataFrame:
    """Paired Wilcoxon comparisons of every pair of methods (see the module docstring).

    One row per (dataset, reference, metric, method_a < method_b) with :data:`COMPARISON_COLUMNS`:
    ``median_diff`` is a − b, ``a_better``/``b_better`` count the volumes each method wins (in
    the metric's direction), ``p_adjusted`` is corrected within the (dataset, reference, metric)
    family, ``significant`` is ``p_adjusted < alpha`` and ``winner`` the better method when
    significant ('' otherwise); ``note`` explains a missing or impossible result.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; known: {', '.join(CORRECTIONS)}")
    per_volume = volume_values(df, metrics)
    better_of = df.groupby("metric")["better"].first().to_dict()
    methods_of = df.groupby(["dataset"])["method"].unique().to_dict()
    rows = []
    for (dataset, reference, metric), group in per_volume.groupby(["dataset", "reference", "metric"], sort=True):
        wide = group.pivot(index="perturbation", columns="method", values="value")
        methods = sorted(set(methods_of.get(dataset, [])) | set(wide.columns))
        lower = better_of.get(metric, "lower") == "lower"
        family = []
        for a, b in itertools.combinations(methods, 2):
            if a in wide.columns and b in wide.columns:
                both = wide[[a, b]].dropna()
                va, vb = both[a].to_numpy(), both[b].to_numpy()
            else:
                va = vb = np.empty(0)
            res = paired_test(va, vb)
            diff = va - vb
            a_wins = int(np.sum(diff < 0) if lower else np.sum(diff > 0))
            b_wins = int(np.sum(diff > 0) if lower else np.sum(diff < 0))
            note = ""
            if res["n"] == 0:
                note = "no volume where both methods have a value"
            elif res["n_untied"] == 0:
                note = "identical on every volume"
            elif res["min_p"] >= alpha:
                note = (f"{res['n_untied']} untied volume{'s' if res['n_untied'] != 1 else ''}: the smallest "
                        f"possible p is {res['min_p']:.3g}, so no difference can be significant")
            family.append({"dataset": dataset, "reference": reference, "metric": metric,
                           "better": "lower" if lower else "higher", "method_a": a, "method_b": b,
                           "a_better": a_wins, "b_better": b_wins, "note": note,
                           **{k: res[k] for k in ("n", "n_untied", "median_diff", "mean_diff", "statistic",
                                                   "p_value")}})
        p_adj = adjust([r["p_value"] for r in family], correction)
        for r, q in zip(family, p_adj, strict=True):
            r["p_adjusted"] = float(q)
            r["significant"] = bool(np.isfinite(q) and q < alpha)
            if r["significant"]:
                a_is_better = (r["median_diff"] < 0) == lower if r["median_diff"] != 0 else \
                    (r["mean_diff"] < 0) == lower
                r["winner"] = r["method_a"] if a_is_better else r["method_b"]
            else:
                r["winner"] = ""
        rows += family
    out = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    return out.astype({"n": int, "n_untied": int, "a_better": int, "b_better": int, "significant": bool})


# --------------------------------------------------------------------------- rankings
RANK_COLUMNS = ("dataset", "reference", "metric", "method", "mean_rank", "n_volumes", "wins", "n_failed")


def rank_methods(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean rank of every method per (dataset, reference, metric) over the volumes (see the module docstring).

    ``n_volumes`` counts the volumes the method took part in, ``wins`` those where it ranked
    first (shared firsts count), ``n_failed`` those where its run failed (worst rank).
    """
    per_volume = volume_values(df, metrics)
    failed = df[df["run_status"] != "ok"][["dataset", "perturbation", "method"]].drop_duplicates()
    better_of = df.groupby("metric")["better"].first().to_dict()
    rows = []
    for (dataset, reference, metric), group in per_volume.groupby(["dataset", "reference", "metric"], sort=True):
        lower = better_of.get(metric, "lower") == "lower"
        failed_here = failed[failed["dataset"] == dataset]
        failed_by_volume = failed_here.groupby("perturbation")["method"].apply(set).to_dict()
        ranks: dict[str, list[float]] = {}
        wins: dict[str, int] = {}
        n_failed: dict[str, int] = {}
        volumes = sorted(set(group["perturbation"]) | set(failed_by_volume))
        by_volume = {p: g for p, g in group.groupby("perturbation")}
        for p in volumes:
            g = by_volume.get(p)
            names = list(g["method"]) if g is not None else []
            vals = g["value"].to_numpy(dtype=float) if g is not None else np.empty(0)
            fails = sorted(failed_by_volume.get(p, set()) - set(names))
            if len(names) + len(fails) < 2:
                continue
            r = _st.rankdata(vals if lower else -vals, method="average") if len(names) else np.empty(0)
            worst = len(names) + (len(fails) + 1) / 2  # failures share the last places
            for name, rank in zip(names, r, strict=True):
                ranks.setdefault(name, []).append(float(rank))
                wins[name] = wins.get(name, 0) + int(rank == r.min())  # shared firsts count
            for name in fails:
                ranks.setdefault(name, []).append(float(worst))
                n_failed[name] = n_failed.get(name, 0) + 1
        for name in sorted(ranks):
            rows.append({"dataset": dataset, "reference": reference, "metric": metric, "method": name,
                         "mean_rank": float(np.mean(ranks[name])), "n_volumes": len(ranks[name]),
                         "wins": wins.get(name, 0), "n_failed": n_failed.get(name, 0)})
    out = pd.DataFrame(rows, columns=list(RANK_COLUMNS))
    return out.astype({"n_volumes": int, "wins": int, "n_failed": int})


__all__ = ["ALPHA", "COMPARISON_COLUMNS", "CONFIDENCE", "CORRECTIONS", "Interval", "RANK_COLUMNS", "adjust",
           "compare_methods", "holm", "level_of", "mean_ci", "paired_test", "rank_methods", "robustness_axes",
           "summarise", "t_half_width", "volume_values", "with_levels"]
