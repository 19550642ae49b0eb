"""The report's Robustness section: one degradation plot and table per (dataset, reference, axis)."""

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
    # rows: cfl2 nrmse, cfl2 xsim, tkd nrmse, tkd xsim; seeds at SNR 10 give base + 10 + (-1, 0, 1)
    i = values.index("tkd")
    assert values[i:i + 5] == ["tkd", "nrmse (%)", "50.00", "51.00 ± 1.00", "60.00 ± 1.00"]
    assert values[i + 5:i + 10] == ["tkd", "xsim", "0.6000", "0.5000 ± 0.0000", "0.5000 ± 0.0000"]
    assert 'title="3 values"' in noise


def test_failed_level_is_a_dash_and_other_metrics_are_not_plotted(page):
    orientation = robustness_html(page).split("<h3>ph · reference chi · orientation</h3>")[1].split("<h3>")[0]
    values = cells(orientation)
    i = values.index("cfl2")
    assert values[i:i + 5] == ["cfl2", "nrmse (%)", "60.00", "—", "64.00"]
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
