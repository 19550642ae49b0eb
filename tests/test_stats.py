"""Statistics of the results table, on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from qsmbench import results, stats


def row(perturbation, method, value, *, metric="nrmse", seed=1, dataset="ph", reference="chi", status="ok"):
    better, unit = {"nrmse": ("lower", "%"), "xsim": ("higher", "")}[metric]
    r = {c: "" for c in results.COLUMNS}
    r.update(dataset=dataset, reference=reference, perturbation=perturbation, method=method, seed=seed,
             metric=metric, value=value if status == "ok" else math.nan, status=status, better=better, unit=unit,
             run_status="failed" if status == "run_failed" else "ok", wall_s=1.0, cpu_s=1.0, prepare_s=0.0,
             peak_rss_mb=100.0, peak_gpu_mb=math.nan)
    if status == "run_failed":
        r.update(reference="", error="RuntimeError: boom", reason="RuntimeError: boom")
    return r


def table(rows) -> pd.DataFrame:
    return results.as_table(pd.DataFrame(rows, columns=list(results.COLUMNS)))


VOLUMES = ["none", *[f"noise-snr{s}-seed{k}" for s in (10, 20, 40) for k in (1, 2, 3)]]  # 10 volumes


# --------------------------------------------------------------------------- intervals
def test_mean_ci_is_the_student_t_interval():
    ci = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.182446...
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (ci.mean, ci.n) == (2.5, 4)
    assert ci.sd == pytest.approx(math.sqrt(5 / 3))
    assert (ci.lo, ci.hi) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)
    assert ci.half_width == pytest.approx(half)
    lo, hi = st.t.interval(0.95, 3, loc=2.5, scale=st.sem([1, 2, 3, 4]))
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi), rel=1e-12)
    # a 99 % interval is wider
    assert stats.mean_ci([1.0, 2.0, 3.0, 4.0], confidence=0.99).half_width > half


def test_mean_ci_edge_cases():
    one = stats.mean_ci([7.0])
    assert one.mean == 7.0 and one.n == 1 and math.isnan(one.lo) and math.isnan(one.half_width)
    none = stats.mean_ci([math.nan, math.inf])
    assert none.n == 0 and math.isnan(none.mean)
    flat = stats.mean_ci([3.0, 3.0, 3.0])
    assert (flat.lo, flat.hi, flat.sd) == (3.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="confidence"):
        stats.mean_ci([1.0, 2.0], confidence=95)


def test_summarise_groups_noise_seeds_and_repetitions_of_one_level():
    rows = [row("none", "tkd", 50.0)]
    for k, v in ((1, 59.0), (2, 60.0), (3, 61.0)):
        rows.append(row(f"noise-snr10-seed{k}", "tkd", v))
    rows += [row("orient-30", "tkd", 70.0, seed=1), row("orient-30", "tkd", 72.0, seed=2)]  # two repetitions
    rows += [row("none", "cfl2", math.nan, status="run_failed")]
    s = stats.summarise(table(rows)).set_index(["method", "level"])
    noise = s.loc[("tkd", "noise-snr10")]
    assert (noise["mean"], noise["n"]) == (60.0, 3)
    assert noise["ci_half"] == pytest.approx(st.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    assert s.loc[("tkd", "orient-30"), "n"] == 2 and s.loc[("tkd", "orient-30"), "mean"] == 71.0
    assert s.loc[("tkd", "none"), "n"] == 1 and math.isnan(s.loc[("tkd", "none"), "ci_lo"])
    failed = s.loc[("cfl2", "none")]  # kept, with no value
    assert failed["n"] == 0 and math.isnan(failed["mean"])


def test_robustness_axes_order_levels_and_notes():
    axes, notes = stats.robustness_axes(["none", "noise-snr10-seed2", "noise-snr40-seed1", "noise-snr10-seed1",
                                         "res-3x3x3", "res-2x2x4", "orient-30+noise-snr20-seed1", "blur-3"])
    assert list(axes) == ["resolution", "noise", "orientation+noise"]
    assert [lv for lv, _, _ in axes["noise"]] == ["noise-snr40", "noise-snr10"]
    assert axes["noise"][1] == ("noise-snr10", "SNR 10", ["noise-snr10-seed1", "noise-snr10-seed2"])
    assert [label for _, label, _ in axes["resolution"]] == ["2×2×4 mm", "3×3×3 mm"]
    assert len(notes) == 1 and "blur-3" in notes[0]


# --------------------------------------------------------------------------- corrections
def test_holm_matches_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, math.nan, 0.9]) == pytest.approx([1.0, math.nan, 1.0], nan_ok=True)
    assert stats.holm([]).size == 0
    assert stats.adjust(p, "none") == pytest.approx(p)
    # Benjamini-Hochberg through SciPy: 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4
    assert stats.adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    with pytest.raises(ValueError, match="unknown correction"):
        stats.adjust(p, "bonferroni-ish")


# --------------------------------------------------------------------------- paired comparisons
def test_identical_methods_are_not_significantly_different():
    rng = np.random.default_rng(0)
    values = 50 + 10 * rng.random(len(VOLUMES))
    rows = [row(p, m, v) for m in ("twin_a", "twin_b") for p, v in zip(VOLUMES, values, strict=True)]
    c = stats.compare_methods(table(rows))
    assert len(c) == 1
    r = c.iloc[0]
    assert (r["n"], r["n_untied"], r["p_value"], r["p_adjusted"]) == (10, 0, 1.0, 1.0)
    assert not r["significant"] and r["winner"] == "" and r["note"] == "identical on every volume"


def test_a_constant_improvement_is_significant_and_points_at_the_better_method():
    rng = np.random.default_rng(1)
    base = 50 + 10 * rng.random(len(VOLUMES))
    rows = [row(p, "worse", v) for p, v in zip(VOLUMES, base, strict=True)]
    rows += [row(p, "better", v - 2.0) for p, v in zip(VOLUMES, base, strict=True)]  # nrmse: lower is better
    rows += [row(p, "noise", v + rng.normal(0, 1.0)) for p, v in zip(VOLUMES, base, strict=True)]
    c = stats.compare_methods(table(rows)).set_index(["method_a", "method_b"])
    r = c.loc[("better", "worse")]
    assert r["median_diff"] == pytest.approx(-2.0) and (r["a_better"], r["b_better"]) == (10, 0)
    # all ten differences have the same sign: exact two-sided p = 2 / 2**10
    assert r["p_value"] == pytest.approx(2 / 2 ** 10)
    # Holm over the family of three pairs multiplies the smallest p by at most 3
    assert r["p_adjusted"] <= 3 * r["p_value"] + 1e-15 and r["significant"] and r["winner"] == "better"
    assert c.loc[("better", "noise"), "winner"] == "better"
    assert not c.loc[("noise", "worse"), "significant"]  # zero-mean noise: no difference
    assert set(c["dataset"]) == {"ph"} and set(c["metric"]) == {"nrmse"}


def test_higher_is_better_metrics_and_repetitions_are_averaged():
    rows = []
    for i, p in enumerate(VOLUMES):
        rows += [row(p, "a", 0.5 + 0.01 * i, metric="xsim"), row(p, "b", 0.6 + 0.01 * i, metric="xsim", seed=1),
                 row(p, "b", 0.62 + 0.01 * i, metric="xsim", seed=2)]
    r = stats.compare_methods(table(rows)).iloc[0]
    assert r["median_diff"] == pytest.approx(-0.11) and r["b_better"] == 10 and r["winner"] == "b"


def test_too_few_volumes_say_so_and_missing_pairs_have_no_p():
    rows = [row(p, "a", 10.0 + i) for i, p in enumerate(VOLUMES[:4])]
    rows += [row(p, "b", 20.0 + i) for i, p in enumerate(VOLUMES[:4])]
    rows += [row("none", "c", 1.0, dataset="other"), row("none", "d", math.nan, dataset="other", status="run_failed")]
    c = stats.compare_methods(table(rows)).set_index(["dataset", "method_a", "method_b"])
    few = c.loc[("ph", "a", "b")]
    assert few["p_value"] == pytest.approx(2 / 2 ** 4) and not few["significant"]
    assert "smallest possible p is 0.125" in few["note"]
    lonely = c.loc[("other", "c", "d")]
    assert lonely["n"] == 0 and math.isnan(lonely["p_value"]) and "no volume" in lonely["note"]


# --------------------------------------------------------------------------- rankings
def test_rankings_count_failures_as_worst_and_share_ties():
    rows = [row("none", "a", 10.0), row("none", "b", 20.0), row("none", "c", 10.0),
            row("noise-snr10-seed1", "a", 30.0), row("noise-snr10-seed1", "b", 20.0),
            row("noise-snr10-seed1", "c", math.nan, status="run_failed")]
    r = stats.rank_methods(table(rows)).set_index("method")
    # none: a and c tie for first (1.5 each), b third; noise: b 1, a 2, c failed -> 3
    assert r.loc["a", "mean_rank"] == pytest.approx((1.5 + 2) / 2)
    assert r.loc["b", "mean_rank"] == pytest.approx((3 + 1) / 2)
    assert r.loc["c", "mean_rank"] == pytest.approx((1.5 + 3) / 2)
    assert (r.loc["a", "wins"], r.loc["b", "wins"], r.loc["c", "wins"]) == (1, 1, 1)
    assert r.loc["c", "n_failed"] == 1 and set(r["n_volumes"]) == {2}
