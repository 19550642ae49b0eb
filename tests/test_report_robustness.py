"""The report's Robustness section: one degradation plot (mean, t-interval band) and table per
(dataset, reference, axis)."""

from __future__ import annotations

import html
import math
import re

import pandas as pd
import pytest

from qsmbench import report, results


def row(perturbation, method, metric, value, *, seed=1, dataset="ph", reference="chi", status="ok"):
    better, unit = {"nrmse": ("lower", "%"), "xsim": ("higher", ""), "rmse": ("lower", "%")}[metric]
    r = {c: "" for c in results.COLUMNS}
    r.update(dataset=dataset, reference=reference, perturbation=perturbation, method=method, seed=seed,
             metric=metric, value=value if status == "ok" else math.nan, status=status, better=better, unit=unit,
             run_status="ok" if status != "run_failed" else "failed", wall_s=1.0, cpu_s=1.0, prepare_s=0.0,
             peak_rss_mb=100.0, peak_gpu_mb=math.nan)
    if status == "run_failed":
        r.update(reference="", error="RuntimeError: boom", reason="RuntimeError: boom")
    return r


def table(rows) -> pd.DataFrame:
    return results.as_table(pd.DataFrame(rows, columns=list(results.COLUMNS)))


def robustness_html(page: str) -> str:
    return page[page.index('<section id="robustness">'):page.index('<section id="montages">')]


def cells(fragment: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", fragment, flags=re.S)]


@pytest.fixture(scope="module")
def sweep():
    rows = []
    for method, base in (("tkd", 50.0), ("cfl2", 60.0)):
        rows += [row("none", method, "nrmse", base), row("none", method, "xsim", 0.6)]
        for snr, extra in ((40, 1.0), (10, 10.0)):
            for k, jitter in ((1, -1.0), (2, 0.0), (3, 1.0)):
                pid = f"noise-snr{snr}-seed{k}"
                rows += [row(pid, method, "nrmse", base + extra + jitter), row(pid, method, "xsim", 0.5)]
        rows += [row("res-2x2x4", method, "nrmse", base + 2), row("res-3x3x3", method, "nrmse", base + 3),
                 row("orient-30", method, "nrmse", base + 4), row("orient-30+noise-snr20-seed1", method, "nrmse", 70)]
    # cfl2 failed at 15 degrees; rmse is not a robustness metric (not plotted)
    rows += [row("orient-15", "tkd", "nrmse", 51.0), row("orient-15", "cfl2", "nrmse", math.nan, status="run_failed"),
             row("none", "tkd", "rmse", 80.0)]
    return table(rows)


@pytest.fixture(scope="module")
def page(sweep, tmp_path_factory):
    out = report.render_report(sweep, tmp_path_factory.mktemp("rob") / "index.html")
    return out.read_text(encoding="utf-8")


def test_one_plot_and_table_per_axis_in_kind_order(page):
    section = robustness_html(page)
    titles = re.findall(r"<h3>(ph · reference chi · [^<]+)</h3>", section)
    assert titles == ["ph · reference chi · orientation", "ph · reference chi · resolution",
                      "ph · reference chi · noise", "ph · reference chi · orientation + noise"]
    assert section.count('src="data:image/png;base64,') == 4
    assert ">Robustness</h2>" in page and 'href="#robustness"' in page


def test_levels_run_from_none_to_most_perturbed(page):
    section = robustness_html(page)
    heads = [re.findall(r"<th[^>]*>([^<]*)</th>", t) for t in re.findall(r"<thead>(.*?)</thead>", section, re.S)]
    assert heads[0] == ["method", "metric", "none", "15°", "30°"]
    assert heads[1] == ["method", "metric", "none", "2×2×4 mm", "3×3×3 mm"]  # by voxel volume
    assert heads[2] == ["method", "metric", "none", "SNR 40", "SNR 10"]  # decreasing SNR
    assert heads[3] == ["method", "metric", "none", "30° · SNR 20"]


def test_values_are_means_and_sd_over_seeds(page):
    noise = robustness_html(page).split("<h3>ph · reference chi · noise</h3>")[1].split("<h3>")[0]
    values = cells(noise)
    # rows: cfl2 nrmse, cfl2 xsim, tkd nrmse, tkd xsim; seeds at SNR 10 give base + 10 + (-1, 0, 1):
    # mean 60, sd 1, 95 % t-interval half width t(0.975, 2) · 1 / √3 = 4.3027 / 1.7321 = 2.484
    i = values.index("TKD")
    assert values[i:i + 5] == ["TKD", "nrmse (%)", "50.00", "51.00 ± 2.48", "60.00 ± 2.48"]
    assert values[i + 5:i + 10] == ["TKD", "xsim", "0.6000", "0.5000 ± 0.0000", "0.5000 ± 0.0000"]
    assert 'title="mean of 3 seeds ± half width of the 95 % t-interval"' in noise


def test_failed_level_is_a_dash_and_other_metrics_are_not_plotted(page):
    orientation = robustness_html(page).split("<h3>ph · reference chi · orientation</h3>")[1].split("<h3>")[0]
    values = cells(orientation)
    i = values.index("CFL2")
    assert values[i:i + 5] == ["CFL2", "nrmse (%)", "60.00", "—", "64.00"]
    assert "rmse (%)" not in values
    # only nrmse exists on this axis: one panel, no xsim row
    assert "xsim" not in values


def test_unknown_ids_are_listed_and_no_perturbation_gives_a_message(tmp_path):
    df = table([row("none", "tkd", "nrmse", 50.0), row("blur-3", "tkd", "nrmse", 55.0)])
    page = report.render_report(df, tmp_path / "a.html").read_text(encoding="utf-8")
    section = robustness_html(page)
    assert "perturbation &#39;blur-3&#39; is not shown" in section
    assert "No perturbed volume was scored" in section
    df = table([row("none", "tkd", "nrmse", 50.0)])
    section = robustness_html(report.render_report(df, tmp_path / "b.html").read_text(encoding="utf-8"))
    assert "No perturbed volume was scored" in section and "<img" not in section


def test_robustness_metrics_are_configurable(sweep, tmp_path):
    page = report.render_report(sweep, tmp_path / "c.html", robustness_metrics=("xsim",)).read_text(encoding="utf-8")
    noise = robustness_html(page).split("<h3>ph · reference chi · noise</h3>")[1].split("<h3>")[0]
    assert "xsim" in cells(noise) and "nrmse (%)" not in cells(noise)


def test_a_big_grid_keeps_one_main_metric_table_and_collapses_the_rest(tmp_path):
    levels = ([f"noise-snr{s}-seed{k}" for s in (5, 10, 20, 40, 80) for k in (1, 2, 3)]
              + [f"orient-{a}" for a in (10, 20, 30, 40, 50)] + [f"res-{v}x{v}x{v}" for v in (2, 3, 4, 5, 6)])
    rows = []
    for i, method in enumerate(("tkd", "cfl2", "ilsqr", "medi", "mine")):
        for j, p in enumerate(["none", *levels]):
            rows += [row(p, method, "nrmse", 40.0 + 5 * i + j), row(p, method, "xsim", 0.9 - 0.05 * i - 0.01 * j)]
    page = report.render_report(table(rows), tmp_path / "big.html").read_text(encoding="utf-8")
    results_section = page[page.index('<section id="results">'):page.index('<section id="robustness">')]
    assert results_section.count('id="table-metrics-') == 1  # 'none' only, not one table per perturbation
    assert results_section.count("<table>") == 4  # metrics, ranks, paired comparisons, every level
    assert results_section.count("<details>") == 3  # all but the main table collapsed
    assert "every perturbation level: 16 levels × 5 methods" in results_section
    # 10 pairs × 2 metrics; each method is consistently ordered on all 26 volumes: every pair significant
    assert "paired comparisons of nrmse, xsim: 20 pairs, 20 significant at α = 0.05 (holm)" in results_section
    assert robustness_html(page).count("<img ") == 3


def test_a_dataset_without_reference_is_explained_not_scored(tmp_path):
    rows = [row("none", "tkd", "nrmse", 50.0)]
    rows += [row("none", "tkd", m, math.nan, dataset="mine", reference="", status="not_applicable")
             for m in ("nrmse", "xsim")]
    page = report.render_report(table(rows), tmp_path / "own.html").read_text(encoding="utf-8")
    results_section = page[page.index('<section id="results">'):page.index('<section id="robustness">')]
    assert "<h3>Dataset mine</h3>" in results_section
    assert "Nothing was scored on this dataset: it has no reference χ." in results_section
    assert "nan" not in " ".join(cells(page)).lower().split()
