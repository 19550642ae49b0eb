"""The HTML report: sections, numbers, failures, images, self-containment."""

from __future__ import annotations

import html
import math
import re

import pytest
from test_results import build_case  # tests/ is on sys.path under pytest's default import mode

from qsmbench import metrics, report, results
from qsmbench.errors import InputError

ERROR = "RuntimeError: solver diverged <at iteration 3>"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    paths, montages = build_case(root)
    table = results.collect(paths)
    results.write_table(table, root / "metrics.parquet")
    out = report.render_report(table, root / "report" / "index.html", montages=montages,
                               config={"datasets": ["alpha", "beta"], "methods": {"noisy": {"a": 1}}},
                               provenance={"snakemake": "9.27.1", "seeds": [1, 2]})
    return {"root": root, "table": table, "montages": montages, "html": out.read_text(encoding="utf-8"),
            "out": out}


def cells(page: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", page, flags=re.S)]


def test_report_has_every_section_method_and_the_failure(case):
    page = case["html"]
    assert case["out"].name == "index.html"
    assert not [p for p in case["out"].parent.iterdir() if p.name != "index.html"]  # no temp file left
    for heading in report.SECTIONS.values():
        assert f">{heading}</h2>" in page
    for method in ("exact", "noisy", "broken"):
        assert method in cells(page)
    assert html.escape(ERROR) in page and ERROR in cells(page)
    assert "<at iteration 3>" not in page  # autoescaped
    for dataset in ("alpha", "beta"):
        assert dataset in page
    values = cells(page)
    for row in metrics.metric_table():
        assert row["metric"] in values and row["definition"] in values


def test_report_embeds_images_and_loads_nothing(case):
    page = case["html"]
    # two montages and the run-time chart
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert "<style>" in page


def test_table_cells_never_show_nan(case):
    values = cells(case["html"])
    assert values
    assert not [v for v in values if re.search(r"\bnan\b", v, flags=re.I)]
    assert "n/a" in values


def test_metric_tables_one_per_dataset_reference_perturbation(case):
    page = case["html"]
    for title in ("alpha · reference chi · perturbation none",
                  "alpha · reference chi_cosmos · perturbation none",
                  "beta · reference chi · perturbation none"):
        assert title in page
    # units in headers, the direction as tooltip
    assert "nrmse (%)" in page and 'title="lower is better"' in page
    # the exact reconstruction is the best rmse on its own reference: a highlighted 0
    assert re.search(r'<td class="num best"[^>]*>0</td>', page)
    # psnr of the exact reconstruction is n/a with the metric's reason as tooltip
    assert re.search(r'<td class="na" title="[^"]*infinite[^"]*">n/a</td>', page)
    # the failed method keeps its row, marked failed, with the error as tooltip
    assert re.search(r'<td class="failed" title="' + re.escape(html.escape(ERROR)) + r'">failed</td>', page)
    # two seeds of 'noisy' on alpha: mean ± sd
    assert "±" in page
    # a metric not applicable for any method loses its column and is listed with its reason
    t = case["table"]
    here = t[(t["dataset"] == "alpha") & (t["reference"] == "chi")]
    never = sorted(set(here["metric"]) - set(here.loc[here["status"] == "ok", "metric"]))
    section = page[page.index('id="table-metrics-alpha-reference-chi-perturbation-none"'):]
    section = section[:section.index("</figure>")]
    for metric in never:
        assert f"<li>{metric}: not applicable on these data" in section
        assert f"<th title=\"lower is better\">{metric}" not in section


def test_caption_and_producer_note_for_every_table_and_figure(case):
    page = case["html"]
    n_figures = page.count("<figure")
    assert page.count("<figcaption>") == n_figures
    assert page.count("Produced by") == n_figures - 1  # the configuration box has no producer note
    first_caption = (report.REPORT_DIR / "captions" / "metrics.rst").read_text().split("**")[0].strip()
    assert first_caption and first_caption in page


def test_render_from_parquet_path_and_default_captions(case, tmp_path):
    empty = tmp_path / "no-captions"
    empty.mkdir()
    results.write_table(case["table"].assign(config_hash="c0ffee"), tmp_path / "t.parquet")
    out = report.render_report(tmp_path / "t.parquet", tmp_path / "r.html", montages=[],
                               captions_dir=empty)
    page = out.read_text(encoding="utf-8")
    assert "c0ffee" in cells(page)  # extra columns of the table show under Provenance
    assert report.DEFAULT_CAPTIONS["metrics"] in page
    assert "No montage was requested." in page
    assert page.count("data:image/png;base64,") == 1  # the run-time chart only


def test_rendering_is_deterministic(case, tmp_path):
    out = report.render_report(case["table"], tmp_path / "again.html", montages=case["montages"],
                               config={"datasets": ["alpha", "beta"], "methods": {"noisy": {"a": 1}}},
                               provenance={"snakemake": "9.27.1", "seeds": [1, 2]})
    assert out.read_text(encoding="utf-8") == case["html"]


def test_empty_table_renders(tmp_path):
    page = report.render_report(results.collect([]), tmp_path / "r.html", montages=[]).read_text()
    for heading in report.SECTIONS.values():
        assert f">{heading}</h2>" in page
    assert "No run failed." in page


def test_bad_montage_recon_is_an_input_error_naming_it(case, tmp_path):
    entry = dict(case["montages"][0], recons={"ghost": tmp_path / "ghost.nii.gz"})
    with pytest.raises(InputError, match="ghost.nii.gz"):
        report.render_report(case["table"], tmp_path / "r.html", montages=[entry])
    assert not (tmp_path / "r.html").exists()


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
    names = ["tkd", "ilsqr", "medi", "uqsm", "inr_qsm", "cfl2"]
    colours = report.method_colours(names)
    assert len(set(colours.values())) == len(names)
    assert colours == report.method_colours(list(reversed(names)))
