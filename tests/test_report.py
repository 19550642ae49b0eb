"""The HTML report: sections, numbers, statistics, failures, images, figure files, self-containment."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from test_results import build_case  # tests/ is on sys.path under pytest's default import mode

from qsmbench import figures, io, metrics, report, results
from qsmbench.errors import InputError

ERROR = "RuntimeError: solver diverged <at iteration 3>"
CONFIG = {"datasets": ["alpha", "beta"], "methods": {"noisy": {"a": 1}}}
#: Perturbations added to dataset alpha: two noise levels with three seeds, one voxel size, one tilt.
SWEEP = [f"noise-snr{s}-seed{k}" for s in (40, 10) for k in (1, 2, 3)] + ["res-2x2x4", "orient-30"]


def with_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus perturbed copies of alpha's rows, each a little worse than the last."""
    base = table[table["dataset"] == "alpha"]
    rng = np.random.default_rng(0)
    parts = [table]
    for k, pid in enumerate(SWEEP, start=1):
        t = base.copy()
        t["perturbation"] = pid
        worse = np.where(t["better"] == "lower", 1 + 0.04 * k, 1 - 0.02 * k)
        t["value"] = t["value"] * worse + 0.01 * rng.standard_normal(len(t)) * (t["method"] != "exact")
        parts.append(t)
    return results.as_table(pd.concat(parts, ignore_index=True))


def render_case(root, **kwargs):
    """build_case (two datasets, three methods, one failing) plus a perturbation sweep, rendered."""
    paths, montages = build_case(root)
    table = with_sweep(results.collect(paths))
    results.write_table(table, root / "metrics.parquet")
    meta = io.read_json(root / "data" / "alpha" / io.META)
    meta["checksums"] = {"phs_tissue.nii": "9f431db2b1b6c7caf373fe6dd6c48e30eadef37c95ee882376f2aa68f5c7942d"}
    io.write_json(root / "data" / "alpha" / io.META, meta)
    out = report.render_report(table, root / "report" / "index.html", montages=montages, config=CONFIG,
                               provenance={"snakemake": "9.27.1", "seeds": [1, 2]},
                               figures_dir=root / "report" / "figures",
                               data_dirs={"alpha": root / "data" / "alpha", "beta": root / "data" / "beta"}, **kwargs)
    return {"root": root, "table": table, "montages": montages, "html": out.read_text(encoding="utf-8"), "out": out}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return render_case(tmp_path_factory.mktemp("case"))


def cells(page: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", page, flags=re.S)]


def section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}">')
    return page[start:page.index("</section>", start)]


def table_html(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    return page[start:page.index("</figure>", start)]


# --------------------------------------------------------------------------- structure
def test_report_has_every_section_method_and_the_failure(case):
    page = case["html"]
    assert case["out"].name == "index.html"
    assert sorted(p.name for p in case["out"].parent.iterdir()) == ["figures", "index.html"]  # no temp file left
    assert case["out"].stat().st_mode & 0o777 == 0o644
    headings = re.findall(r"<h2>([^<]+)</h2>", page)
    assert headings == [html.escape(h) for h in report.SECTIONS.values()]
    for method in ("exact", "noisy", "broken"):
        assert method in cells(page)
    failures = section(page, "failures")
    assert html.escape(ERROR) in failures and ERROR in cells(failures)
    assert "<at iteration 3>" not in page  # autoescaped
    for dataset in ("alpha", "beta"):
        assert f"<h3>Dataset {dataset}</h3>" in page
    values = cells(page)
    for row in metrics.metric_table():
        assert row["metric"] in values and row["definition"] in values


def test_every_failed_run_is_in_the_failure_table(case):
    failures = section(case["html"], "failures")
    # broken fails on alpha at none and every perturbation, and on beta at none
    assert cells(failures).count(ERROR) == 2 + len(SWEEP)
    assert f"{2 + len(SWEEP)} failed runs" not in failures  # short enough: shown, not collapsed


def test_table_cells_never_show_nan(case):
    page = case["html"]
    values = cells(page.replace(section(page, "definitions"), ""))  # definitions are prose
    assert values
    assert not [v for v in values if re.search(r"\b(nan|inf)\b", v, flags=re.I)]
    assert "n/a" in values
    assert not re.search(r">\s*nan\s*<", case["html"], flags=re.I)


def test_report_embeds_images_and_loads_nothing(case):
    page = case["html"]
    # 2 montages + 3 rankings (alpha chi, alpha chi_cosmos, beta chi) + 2 × 3 robustness axes + 1 cost
    assert page.count('src="data:image/png;base64,') == page.count("<img ") == 2 + 3 + 6 + 1
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "<style>" in page


def test_figures_are_written_as_png_and_svg_by_kind(case):
    folder = case["root"] / "report" / "figures"
    names = {kind: sorted(p.name for p in (folder / kind).iterdir()) for kind in report.FIGURE_KINDS}
    assert names["montage"] == ["alpha-none.png", "alpha-none.svg", "beta-none.png", "beta-none.svg"]
    assert names["cost"] == ["runtime.png", "runtime.svg"]
    assert len(names["robustness"]) == 12 and "alpha-chi_cosmos-noise.svg" in names["robustness"]
    assert len(names["ranking"]) == 6
    svg = (folder / "cost" / "runtime.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and "<dc:date>" not in svg


# --------------------------------------------------------------------------- numbers and statistics
def test_main_metric_table_per_dataset_and_reference_only(case):
    page = case["html"]
    titles = re.findall(r"<h4>([^<]*· perturbation[^<]*)</h4>", page)
    assert titles == ["alpha · reference chi · perturbation none", "alpha · reference chi_cosmos · perturbation none",
                      "beta · reference chi · perturbation none"]
    # the perturbation levels are one collapsed table per (dataset, reference), not one table each
    levels = table_html(page, "table-levels-alpha-chi")
    assert "<details><summary>every perturbation level: 5 levels × 2 methods</summary>" in levels
    for label in ("SNR 40", "SNR 10", "2×2×4 mm", "30°"):
        assert label in cells(levels)


def test_metric_table_values_highlights_and_reasons(case):
    page = case["html"]
    t = table_html(page, "table-metrics-alpha-reference-chi-perturbation-none")
    assert "nrmse (%)" in t and 'title="lower is better"' in t
    # the exact reconstruction is the best rmse on its own reference: a highlighted 0
    assert re.search(r'<td class="num best"[^>]*>0</td>', t)
    # psnr of the exact reconstruction is n/a with the metric's reason as tooltip
    assert re.search(r'<td class="na" title="[^"]*infinite[^"]*">n/a</td>', t)
    # the failed method keeps its row, marked failed, with the error as tooltip
    assert re.search(r'<td class="failed" title="' + re.escape(html.escape(ERROR)) + r'">failed</td>', t)
    # a metric not applicable for any method loses its column and is listed with its reason
    tb = case["table"]
    here = tb[(tb["dataset"] == "alpha") & (tb["reference"] == "chi") & (tb["perturbation"] == "none")]
    never = sorted(set(here["metric"]) - set(here.loc[here["status"] == "ok", "metric"]))
    assert never
    for metric in never:
        assert f"<li>{metric}: not applicable on these data" in t
        assert f"<th title=\"lower is better\">{metric}" not in t


def test_two_seeds_show_the_t_interval(case):
    tb = case["table"]
    v = tb[(tb["dataset"] == "alpha") & (tb["reference"] == "chi") & (tb["perturbation"] == "none")
           & (tb["method"] == "noisy") & (tb["metric"] == "rmse")]["value"].to_numpy()
    assert len(v) == 2
    half = st.t.ppf(0.975, 1) * v.std(ddof=1) / math.sqrt(2)  # 12.706 · sd / √2
    mean_text = report.format_number(v.mean())
    t = table_html(case["html"], "table-metrics-alpha-reference-chi-perturbation-none")
    expected = f"{mean_text} ± {report._format_like(half, mean_text)}"
    assert expected in cells(t)
    assert "t-interval" in t


def test_paired_comparisons_name_the_better_method(case):
    t = table_html(case["html"], "table-comparisons-alpha-chi")
    values = cells(t)
    # exact beats noisy on all 9 volumes of alpha: exact p = 2/2^9, significant after Holm
    assert "exact better" in values
    assert report.format_number(2 / 2 ** 9) in values
    assert "holm" in t and "Wilcoxon" in t or "wilcoxon" in t
    # the failed method has no pair with values: not compared
    assert "not compared" in values
    # beta has one volume only: nothing can be significant there
    beta_html = table_html(case["html"], "table-comparisons-beta-chi")
    beta = cells(beta_html)
    assert "exact better" not in beta and "no significant difference" in beta
    assert "<li>nrmse: with at most 1 untied volume the smallest possible p-value is 1" in beta_html


def test_ranking_and_headline(case):
    page = case["html"]
    ranking = cells(table_html(page, "table-ranking-alpha-chi"))
    # exact is first on every metric that ranks it; broken failed everywhere: last (3.00)
    i = ranking.index("exact")
    assert ranking[i + 1] == "1.00"
    j = ranking.index("broken")
    assert set(ranking[j + 1:j + 4]) == {"3.00"}
    best = cells(table_html(page, "table-headline"))
    assert "alpha · chi" in best and "exact (0)" in best


def test_overview_status_and_parameters(case):
    page = case["html"]
    status = cells(table_html(page, "table-run-status"))
    assert status[:3] == ["broken", "0/9 ok", "0/1 ok"]
    assert "9/9 ok" in status or "18/18 ok" in status
    params = cells(section(page, "parameters"))
    assert 'a=0.19, b=2' in params and "exact" in params


def test_caption_and_producer_note_for_every_table_and_figure(case):
    page = case["html"]
    n_figures = page.count("<figure")
    assert page.count("<figcaption>") == n_figures
    assert page.count("Produced by") == n_figures - 1  # the configuration box has no producer note
    first_caption = (report.REPORT_DIR / "captions" / "metrics.rst").read_text().split("**")[0].strip()
    assert first_caption and html.escape(first_caption) in page
    # every caption key used has its .rst file in the repository
    for key in report.DEFAULT_CAPTIONS:
        assert (report.REPORT_DIR / "captions" / f"{key}.rst").is_file(), key


def test_provenance_lists_versions_hardware_and_checksums(case):
    prov = cells(section(case["html"], "provenance"))
    for item in ("scipy", "report machine", "statistics", "snakemake", "9.27.1"):
        assert item in prov
    digests = set(case["table"]["data_sha256"])
    assert len(digests) == 2 and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)
    for d in digests:
        assert d in prov
    assert "9f431db2b1b6c7caf373fe6dd6c48e30eadef37c95ee882376f2aa68f5c7942d" in prov  # alpha's source file


def test_method_display_names_and_colours_are_consistent(tmp_path):
    paths, montages = build_case(tmp_path)
    table = results.collect(paths)
    table = results.as_table(pd.concat([table, table.assign(method="tkd_shmueli"), table.assign(method="tkd")]))
    page = report.render_report(table, tmp_path / "r.html").read_text(encoding="utf-8")
    styles = figures.method_styles(sorted(set(table["method"])))
    assert styles["tkd"].label == "TKD" and styles["tkd_shmueli"].label == "TKD (Shmueli)"
    for name, style in styles.items():
        swatches = set(re.findall(r'<span class="swatch" style="background: (#[0-9A-Fa-f]{6})"></span>'
                                  + re.escape(html.escape(style.label)) + "<", page))
        assert swatches == {style.colour}, name
    assert 'title="run id tkd_shmueli"' in page


# --------------------------------------------------------------------------- inputs and options
def test_render_from_parquet_path_and_default_captions(case, tmp_path):
    empty = tmp_path / "no-captions"
    empty.mkdir()
    results.write_table(case["table"].assign(config_hash="c0ffee"), tmp_path / "t.parquet")
    out = report.render_report(tmp_path / "t.parquet", tmp_path / "r.html", montages=[], captions_dir=empty,
                               title="My <benchmark>")
    page = out.read_text(encoding="utf-8")
    assert "c0ffee" in cells(page)  # extra columns of the table show under Provenance
    assert report.DEFAULT_CAPTIONS["comparisons"] in page
    assert "No montage was requested." in page
    assert "<title>My &lt;benchmark&gt;</title>" in page


def test_rendering_is_deterministic(case, tmp_path):
    again = render_case(tmp_path)
    assert again["html"] == case["html"]
    a = (case["root"] / "report" / "figures" / "robustness" / "alpha-chi-noise.svg").read_bytes()
    b = (tmp_path / "report" / "figures" / "robustness" / "alpha-chi-noise.svg").read_bytes()
    assert a == b


def test_stale_figures_are_removed(case, tmp_path):
    folder = tmp_path / "figs"
    (folder / "robustness").mkdir(parents=True)
    (folder / "robustness" / "old-axis.png").write_bytes(b"x")
    report.render_report(case["table"][case["table"]["dataset"] == "beta"], tmp_path / "r.html", figures_dir=folder)
    assert not (folder / "robustness" / "old-axis.png").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(report.FIGURE_KINDS)


def test_empty_table_renders(tmp_path):
    page = report.render_report(results.collect([]), tmp_path / "r.html", montages=[]).read_text()
    for heading in report.SECTIONS.values():
        assert f">{html.escape(heading)}</h2>" in page
    assert "No run failed." in page and "No metric was computed" in page


def test_bad_inputs_are_input_errors(case, tmp_path):
    entry = dict(case["montages"][0], recons={"ghost": tmp_path / "ghost.nii.gz"})
    with pytest.raises(InputError, match="ghost.nii.gz"):
        report.render_report(case["table"], tmp_path / "r.html", montages=[entry])
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(InputError, match="unknown correction"):
        report.render_report(case["table"], tmp_path / "r.html", correction="tukey")
    with pytest.raises(InputError, match="lacks the column"):
        report.render_report(pd.DataFrame({"dataset": ["x"]}), tmp_path / "r.html")


def test_montages_from_runs_match_the_runs(case):
    root = case["root"]
    run_jsons = sorted(root.glob("recon/*/none/*/*/run.json"))  # seed 2 of noisy last, as in the case
    entries = report.montages_from_runs(run_jsons, {"alpha": root / "data" / "alpha",
                                                    ("beta", "none"): root / "data" / "beta"})
    assert [(e["dataset"], e["perturbation"]) for e in entries] == [("alpha", "none"), ("beta", "none")]
    for entry, expected in zip(entries, case["montages"], strict=True):
        assert entry["volume_dir"] == expected["volume_dir"]
        assert entry["recons"] == expected["recons"]
    assert report.montages_from_runs(run_jsons, {"alpha": root / "data" / "alpha"},
                                     perturbations=["noise-snr20"]) == []


def test_format_number():
    assert report.format_number(float("nan")) == "n/a"
    assert report.format_number(None) == "n/a"
    assert report.format_number(math.inf) == "n/a"
    assert report.format_number(0.0) == "0"
    assert report.format_number(0.987654) == "0.9877"
    assert report.format_number(45.678) == "45.68"
    assert report.format_number(1234.4) == "1234"
    assert report.format_number(-0.0123456) == "-0.01235"
    assert report.format_number(1.5e-5) == "1.500e-05"


def test_method_colours_are_deterministic_and_distinct():
    assert report.method_colour("tkd") == report.method_colour("tkd")
    assert re.fullmatch(r"#[0-9A-Fa-f]{6}", report.method_colour("anything"))
    names = ["tkd", "ilsqr", "medi", "uqsm", "inr_qsm", "cfl2", "mine", "yours"]
    colours = report.method_colours(names)
    assert len(set(colours.values())) == len(names)
    assert colours == report.method_colours(list(reversed(names)))
    # a built-in method keeps its colour whatever else is in the report
    assert report.method_colours(["tkd"])["tkd"] == colours["tkd"] == figures.KNOWN_METHODS["tkd"][1]


def test_data_checksums_are_of_the_uncompressed_volume_files(case):
    import gzip
    import hashlib

    folder = case["root"] / "data" / "alpha"
    sums = results.volume_checksums(folder)
    assert sorted(sums) == sorted(p.name for p in folder.glob("*.nii.gz"))
    field = hashlib.sha256(gzip.decompress((folder / io.FIELD).read_bytes())).hexdigest()
    assert sums[io.FIELD] == field
    text = "".join(f"{k} {sums[k]}\n" for k in sorted(sums))
    assert results.digest_of(sums) == hashlib.sha256(text.encode()).hexdigest()
    tb = case["table"]
    assert set(tb.loc[tb["dataset"] == "alpha", "data_sha256"]) == {results.digest_of(sums)}
    assert results.digest_of({}) == ""


def test_method_table_says_what_each_run_was_trained_and_tuned_on(tmp_path):
    paths, _ = build_case(tmp_path)
    table = results.collect(paths)
    learned = table[table["method"] == "noisy"].assign(
        method="uqsm", trained_on='{"phantom_model": "mni", "phantom_version": "2", "seeds": [1000003, 1000017]}')
    tuned = table[table["method"] == "exact"].assign(
        method="inr_qsm_fast",
        tuned_on='{"what": "regularisation weights", "phantom_model": "mni", "seeds": [2000011]}')
    page = report.render_report(results.as_table(pd.concat([table, learned, tuned])), tmp_path / "r.html") \
        .read_text(encoding="utf-8")
    def texts(fragment, tag):
        return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
                for c in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", fragment, re.S)]

    params = section(page, "parameters")
    rows = {t[1]: t for t in (texts(r, "td") for r in re.findall(r"<tr>(.*?)</tr>", params, re.S)) if len(t) > 2}
    header = texts(params, "th")
    i, j = header.index("trained on"), header.index("tuned on")
    assert rows["uqsm"][i] == "phantom mni v2; 2 seeds 1000003–1000017 (train range)" and rows["uqsm"][j] == "—"
    assert rows["inr_qsm_fast"][j] == "regularisation weights; phantom mni; 1 seed 2000011 (tune range)"
    assert rows["exact"][i] == "—" and rows["exact"][j] == "—"
    assert report.provenance_text(None) == "—" and report.provenance_text("") == "—"


def test_not_run_datasets_and_profile_reasons(tmp_path):
    """Datasets skipped at start-up are listed under "Not run"; the parameter table says which
    profile each method ran with and why (run.json's profile_reason)."""
    paths, _ = build_case(tmp_path)
    table = results.collect(paths)
    table["profile"] = "quick"
    table["profile_reason"] = "auto → quick: no CUDA device"
    why = "dataset 'rc2_sim1snr1' is gated (...); 'qsmbench fetch rc2_sim1snr1' explains how to get access"
    page = report.render_report(table, tmp_path / "r.html", not_run={"rc2_sim1snr1": why}).read_text()
    not_run = cells(table_html(page, "table-not-run"))
    assert not_run == ["rc2_sim1snr1", why]
    assert "rc2_sim1snr1 (see Not run below)" in html.unescape(section(page, "overview"))
    params = cells(section(page, "parameters"))
    assert "quick (auto → quick: no CUDA device)" in params
    # without skipped datasets there is no such table, and a plain requested profile shows alone
    table["profile_reason"] = "requested"
    page = report.render_report(table, tmp_path / "r2.html").read_text()
    assert "table-not-run" not in page and "quick" in cells(section(page, "parameters"))
