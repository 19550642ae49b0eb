"""Figures (matplotlib, PNG + SVG) and the paper figure set."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_results import build_case

from qsmbench import figures, results, stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- styles
def test_method_styles_are_stable_unique_and_named():
    s = figures.method_styles(["zeta", "tkd", "alpha", "medi"])
    assert (s["tkd"].label, s["tkd"].colour) == ("TKD", figures.KNOWN_METHODS["tkd"][1])
    assert s["medi"].label == "MEDI"
    # other ids take the extra palette in sorted order
    assert (s["alpha"].colour, s["zeta"].colour) == figures.EXTRA_PALETTE[:2]
    assert s["alpha"].label == "alpha"
    # the same method keeps its style in another report
    assert figures.method_styles(["tkd"])["tkd"] == s["tkd"]
    colours = [st.colour for st in figures.method_styles([f"m{i}" for i in range(30)] + ["tkd"]).values()]
    assert len(set(colours[:len(figures.EXTRA_PALETTE)])) == len(figures.EXTRA_PALETTE)
    # display names stay unique: a clash falls back to the run ids
    clash = figures.method_styles(["tkd", "TKD"])
    assert {clash["tkd"].label, clash["TKD"].label} == {"tkd", "TKD"}
    assert figures.method_styles(["tkd"], labels={"tkd": "Truncated"})["tkd"].label == "Truncated"


def test_export_writes_png_and_svg_deterministically(tmp_path):
    plt = figures.pyplot()

    def make():
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        ax.set_title("χ (ppm)")
        return fig

    png = figures.export(make(), folder=tmp_path / "a", stem="line")
    assert png.startswith(PNG_MAGIC)
    assert (tmp_path / "a" / "line.png").read_bytes() == png
    svg = (tmp_path / "a" / "line.svg").read_text()
    assert "<svg" in svg and "χ (ppm)" in svg  # text kept as text
    figures.export(make(), folder=tmp_path / "b", stem="line")
    for ext in ("png", "svg"):
        assert (tmp_path / "a" / f"line.{ext}").read_bytes() == (tmp_path / "b" / f"line.{ext}").read_bytes()
    assert plt.get_fignums() == []  # figures are closed
    with pytest.raises(ValueError, match="stem"):
        figures.export(make(), folder=tmp_path)


def test_slug():
    assert figures.slug("ranking", "QSM 2016", "chi_33") == "ranking-qsm_2016-chi_33"
    assert figures.slug("orient-30+noise-snr20") == "orient-30_noise-snr20"


# --------------------------------------------------------------------------- montage
@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    paths, montages = build_case(root)
    return {"root": root, "table": results.collect(paths), "montages": montages}


def test_montage_rows_scales_and_failed_method(case):
    m = figures.load_montage(case["montages"][0])
    assert sorted(m["recons"]) == ["broken", "exact", "noisy"] and m["recons"]["broken"] is None
    styles = figures.method_styles(list(m["recons"]))
    fig = figures.montage_figure(m["vol"], m["reference"], m["ref_name"], m["recons"], styles, "alpha")
    image_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(image_axes) == (1 + 3) * 6  # reference row + one row per method, 3 views × (χ, error)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "failed" in texts
    # the exact method's error is zero: the shared error scale is set by 'noisy' alone
    err_images = [im for ax in image_axes[6:] for im in ax.get_images() if im.cmap.name.startswith("RdBu")]
    lims = {tuple(np.round(im.get_clim(), 12)) for im in err_images}
    assert len(lims) == 1
    lo, hi = lims.pop()
    noisy_err = m["recons"]["noisy"] - m["reference"]
    expected = np.percentile(np.abs(np.concatenate([noisy_err[m["vol"].mask], 0 * noisy_err[m["vol"].mask]])), 99)
    assert hi == pytest.approx(expected) and lo == pytest.approx(-expected)
    colourbar_labels = {ax.get_xlabel() or ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"}
    assert {"χ (ppm)", "χ − reference (ppm), shared by every method", "field (ppm)"} <= colourbar_labels
    assert figures.export(fig).startswith(PNG_MAGIC)


def test_montage_without_reference_has_no_error_panels(case):
    m = figures.load_montage(case["montages"][1])
    fig = figures.montage_figure(m["vol"], None, None, {"exact": m["reference"]}, {}, "")
    cmaps = {im.cmap.name for ax in fig.axes for im in ax.get_images()}
    assert not any(c.startswith("RdBu") for c in cmaps)
    figures.export(fig)


# --------------------------------------------------------------------------- curves, cost, ranking, bars
def sweep_table():
    rows = []
    for method, base in (("tkd", 50.0), ("cfl2", 60.0)):
        rows.append(dict(perturbation="none", method=method, value=base, seed=1))
        for k, jitter in ((1, -1.0), (2, 0.0), (3, 1.0)):
            rows.append(dict(perturbation=f"noise-snr10-seed{k}", method=method, value=base + 10 + jitter, seed=1))
    df = pd.DataFrame(rows)
    for c in results.COLUMNS:
        if c not in df:
            df[c] = ""
    df = df.assign(dataset="ph", reference="chi", metric="nrmse", status="ok", better="lower", unit="%",
                   run_status="ok", wall_s=[0.1, 0.2, 0.3, 0.4] * 2, cpu_s=1.0, prepare_s=0.0, peak_rss_mb=100.0,
                   peak_gpu_mb=math.nan, device="cpu (x86_64, 2 logical cores)")
    return results.as_table(df)


def test_degradation_series_and_bands():
    df = sweep_table()
    s = stats.summarise(df)
    series = figures.degradation_series(s, ["none", "noise-snr10", "orient-30"], ["cfl2", "tkd"], ["nrmse"])
    mean, lo, hi, n = series["nrmse", "tkd"][1]
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) · sd / √n with sd = 1
    assert (mean, n) == (60.0, 3) and (lo, hi) == pytest.approx((60 - half, 60 + half))
    assert series["nrmse", "tkd"][0][3] == 1 and math.isnan(series["nrmse", "tkd"][2][0])  # level not run
    styles = figures.method_styles(["cfl2", "tkd"])
    fig = figures.degradation_figure("t", "noise", ["none", "SNR 10", "30°"], ["cfl2", "tkd"], ["nrmse"], series,
                                     {"nrmse": ("%", "lower")}, styles)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["CFL2", "TKD"]
    assert [line.get_color() for line in ax.get_lines()] == [styles["cfl2"].colour, styles["tkd"].colour]
    assert len(ax.collections) == 2  # one CI band per method
    assert ax.get_ylabel() == "nrmse (%), lower is better"
    figures.export(fig)
    # a method that skipped the middle level: markers where it ran, a dotted join across the gap
    gap = dict(series)
    gap["nrmse", "cfl2"] = [series["nrmse", "cfl2"][0], (math.nan, math.nan, math.nan, 0), (70.0, 70.0, 70.0, 1)]
    fig = figures.degradation_figure("t", "noise", ["none", "SNR 10", "30°"], ["cfl2", "tkd"], ["nrmse"], gap,
                                     {"nrmse": ("%", "lower")}, styles)
    lines = fig.axes[0].get_lines()
    dotted = [ln for ln in lines if ln.get_linestyle() == ":"]
    assert len(dotted) == 1 and dotted[0].get_color() == styles["cfl2"].colour
    assert list(dotted[0].get_xdata()) == [0, 2] and list(dotted[0].get_ydata()) == [60.0, 70.0]
    assert [ln.get_label() for ln in lines if not ln.get_label().startswith("_")] == ["CFL2", "TKD"]
    figures.export(fig)


def test_cost_figure_names_the_device_and_shows_gpu_memory():
    runs = results.runs(sweep_table())
    fig = figures.cost_figure(runs, figures.method_styles(["cfl2", "tkd"]))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["CFL2\ncpu (x86_64, 2 logical cores)", "TKD\ncpu (x86_64, 2 logical cores)"]
    assert len(fig.axes) == 2
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == pytest.approx([0.25, 0.25])  # median of 0.1, 0.2, 0.3, 0.4
    figures.export(fig)
    gpu = runs.assign(peak_gpu_mb=512.0, device="cuda:0 (NVIDIA H100 80GB HBM3)")
    fig = figures.cost_figure(gpu, {})
    assert len(fig.axes) == 3 and "GPU" in fig.axes[2].get_xlabel()
    assert "cuda:0 (NVIDIA H100 80GB HBM3)" in fig.axes[0].get_yticklabels()[0].get_text()
    figures.export(fig)


def test_ranking_figure_orders_methods_by_mean_rank():
    ranks = pd.DataFrame({"dataset": "d", "reference": "r", "method": ["a", "b", "a", "b"],
                          "metric": ["rmse", "rmse", "xsim", "xsim"], "mean_rank": [2.0, 1.0, 1.5, 1.5],
                          "n_volumes": 2, "wins": 1, "n_failed": 0})
    fig = figures.ranking_figure(ranks, ["rmse", "xsim", "absent"], figures.method_styles(["a", "b"]))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["rmse", "xsim"]
    assert sorted(t.get_text() for t in ax.texts) == ["1.0", "1.5", "1.5", "2.0"]
    figures.export(fig)


def test_metric_bars_skip_metrics_without_any_value():
    df = sweep_table()
    extra = df[df["perturbation"] == "none"].assign(metric="psnr", status="not_applicable", value=math.nan)
    s = stats.summarise(results.as_table(pd.concat([df, extra])))
    base = s[s["level"] == "none"]
    fig = figures.metric_bars_figure(base, ["nrmse", "psnr"], ["cfl2", "tkd"], figures.method_styles(["cfl2", "tkd"]))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["nrmse (%)"]
    assert [p.get_width() for p in visible[0].patches] == [60.0, 50.0]
    figures.export(fig)


# --------------------------------------------------------------------------- paper figures
def test_paper_figures_writes_every_figure_table_and_an_index(case, tmp_path):
    df = pd.concat([case["table"], sweep_table().assign(dataset="alpha", reference="chi", method="noisy",
                                                        perturbation=lambda d: d["perturbation"].where(
                                                            d["perturbation"] != "none", "orient-30"),
                                                        seed=lambda d: np.arange(len(d)) + 100)])
    out = tmp_path / "paper"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    written = figures.paper_figures(results.as_table(df), out, montages=case["montages"][:1], dpi=60)
    names = sorted(p.name for p in out.iterdir())
    assert "stale.png" not in names
    assert sorted(p.name for p in written) == names
    for stem in ("comparison-alpha-chi", "comparison-beta-chi", "montage-alpha", "robustness-noise",
                 "robustness-orientation", "ranking-alpha-chi", "runtime"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names, stem
        assert (out / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
    readme = (out / "README.md").read_text()
    assert "robustness-noise.svg" in readme and "Wilcoxon" in readme and '"label": "noisy"' in readme
    summary = pd.read_csv(out / "summary.csv")
    assert {"mean", "ci_lo", "ci_hi", "n", "level"} <= set(summary.columns)
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert list(comparisons.columns) == list(stats.COMPARISON_COLUMNS)
