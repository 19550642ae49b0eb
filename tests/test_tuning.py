"""Parameter tuning (qsmbench.tuning): oracle, L-curve, discrepancy, 'not tunable', config errors."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from qsmbench import io, perturb, phantom, tuning
from qsmbench.config import validate_config
from qsmbench.errors import ConfigError
from qsmbench.method import Method, check_class
from qsmbench.registry import get_method_class
from qsmbench.runner import run_method


@pytest.fixture(scope="module")
def noisy():
    """A tiny analytic phantom (24^3, 2 mm) with noise at peak SNR 20: an interior optimum exists."""
    vol = phantom.make_phantom((24, 24, 24), (2.0, 2.0, 2.0), model="analytic", seed=3, oversample=2)
    return perturb.add_noise(vol, snr=20, seed=7)


def independent_nrmse(x, y, m):
    """NRMSE (%) of the 2019 challenge, computed here with numpy: demeaned in the mask."""
    a, b = x[m] - x[m].mean(), y[m] - y[m].mean()
    return 100 * np.sqrt(np.sum((a - b) ** 2) / np.sum(b**2))


def scores_over(vol, name, param, values, metric="nrmse"):
    cls = get_method_class(name)
    out = []
    for i, v in enumerate(values):
        res = run_method(name, vol, params={param: v}, seed=1)
        s = tuning.score_candidate(res.record, res.chi_ppm, vol, method_cls=cls, metric=metric)
        s.update(index=i, value=v)
        out.append(s)
    return out


@pytest.mark.parametrize("name, param", [("cfl2", "lam"), ("tkd", "threshold")])
def test_oracle_recovers_the_best_value_of_a_brute_force_sweep(noisy, name, param):
    values = get_method_class(name).tunable[param].values(9)
    chosen = tuning.select(scores_over(noisy, name, param, values), "oracle", metric="nrmse", better="lower")
    # brute force, independently: the method called directly, NRMSE by hand
    m = noisy.eval_mask
    brute = [independent_nrmse(get_method_class(name)(**{param: v}).reconstruct(noisy.for_method()),
                               noisy.references["chi"], m) for v in values]
    best = int(np.argmin(brute))
    assert 0 < best < len(values) - 1, "the sweep must have an interior optimum for the test to mean something"
    assert chosen["index"] == best and chosen["value"] == pytest.approx(values[best])
    assert chosen["upper_bound"] is True
    assert chosen["criterion"][str(best)] == pytest.approx(brute[best], rel=1e-4)


def hansen_curvature(t, x, y):
    """Curvature of the parametric curve (x(t), y(t)) by finite differences (Hansen 1992)."""
    dx, dy = np.gradient(x, t), np.gradient(y, t)
    ddx, ddy = np.gradient(dx, t), np.gradient(dy, t)
    return (dx * ddy - ddx * dy) / (dx**2 + dy**2) ** 1.5


def test_lcurve_corner_of_cfl2_within_one_grid_step(noisy):
    cfl2 = get_method_class("cfl2")
    vol = noisy.for_method()
    # the known corner: maximum curvature of the densely sampled L-curve
    dense = np.geomspace(1e-4, 10.0, 81)
    terms = [tuning.generic_lcurve_terms(vol, cfl2(lam=v).reconstruct(vol)) for v in dense]
    x = np.log([t["misfit"] for t in terms])
    y = np.log([t["regulariser"] for t in terms])
    k = hansen_curvature(np.log(dense), x, y)
    j = int(np.argmax(k[2:-2])) + 2
    assert k[j] > 0 and 2 < j < len(dense) - 3, "the dense L-curve must have an interior convex corner"
    corner = dense[j]
    # the coarse search the workflow runs
    coarse = list(np.geomspace(1e-4, 10.0, 9))
    chosen = tuning.select(scores_over(noisy, "cfl2", "lam", coarse), "lcurve", regularises="up")
    step = math.log(coarse[1] / coarse[0])
    assert abs(math.log(chosen["value"] / corner)) <= step + 1e-9
    assert chosen["convex_corner"] is True


def test_lcurve_corner_of_an_analytic_l_shape():
    # two straight legs meeting at (0, 0): a vertical one, then a horizontal one
    x = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    y = np.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    j, k, convex = tuning.lcurve_corner(np.exp(x), np.exp(y))
    assert j == 3 and convex
    assert np.allclose(k[[1, 2, 4, 5]], 0.0)
    # traversed the other way (wrong 'regularises'), the bend is concave: no convex corner
    _, _, convex_back = tuning.lcurve_corner(np.exp(x[::-1]), np.exp(y[::-1]))
    assert not convex_back


def test_discrepancy_uses_known_noise_and_estimates_it_without(noisy):
    sd = tuning.known_noise_ppm(noisy)
    assert sd is not None
    mask = noisy.mask
    # known: sigma / |m| rad in ppm, as the perturbation added it
    comp = noisy.meta["perturbation"]["components"][-1]
    from qsmbench import physics

    expect = physics.rad_to_ppm(comp["sigma"] / np.abs(noisy.magnitude[mask]), noisy.b0_tesla, noisy.te_s)
    assert np.allclose(sd[mask], expect)
    # the truth-free estimate recovers white noise on a smooth field
    rng = np.random.default_rng(0)
    z = np.linspace(-1, 1, 32)
    smooth = 0.05 * np.add.outer(np.add.outer(z**2, z), np.sin(z))
    field = smooth + 0.01 * rng.standard_normal(smooth.shape)
    est = tuning.estimate_noise_ppm(field, np.ones(field.shape, bool))
    assert est == pytest.approx(0.01, rel=0.08)
    # selection: the misfit closest (in log) to the target
    scores = [{"index": i, "value": v, "status": "ok", "misfit": mf, "expected_misfit": 2.0,
               "noise_source": "known", "noise_sd_ppm": 0.1}
              for i, (v, mf) in enumerate([(1, 0.5), (2, 1.7), (3, 4.0)])]
    chosen = tuning.select(scores, "discrepancy")
    assert chosen["index"] == 1 and chosen["noise_source"] == "known" and chosen["target_misfit"] == 2.0


class Plain(Method):
    """A method without tunable parameters (TKD through the base class)."""

    name = "plain"
    references = ["none"]

    def reconstruct(self, vol):
        return np.zeros(vol.shape, np.float32)


def test_method_without_tunable_is_reported_not_tunable():
    cfg = {"methods": {"plain": {}, "cfl2": {}}, "tuning": ["default", "oracle", "lcurve"]}
    plans = tuning.run_plan(cfg, {"plain": Plain, "cfl2": get_method_class("cfl2")})
    assert plans["plain"]["tunable"] is False and plans["plain"]["tuned_modes"] == []
    assert plans["cfl2"]["tuned_modes"] == ["oracle", "lcurve"] and plans["cfl2"]["parameter"] == "lam"
    assert tuning.tuned_jobs([("d", "none", "plain"), ("d", "none", "cfl2")], plans, {"d": True}) == [
        ("d", "none", "cfl2", "oracle"), ("d", "none", "cfl2", "lcurve")]
    rows = []
    for method, mode, value, tv in [("plain", "default", 50.0, ""), ("cfl2", "default", 40.0, ""),
                                    ("cfl2", "oracle", 30.0, '{"lam": 0.01}'),
                                    ("cfl2", "lcurve", 35.0, '{"lam": 0.1}')]:
        rows.append({"dataset": "d", "perturbation": "none", "method": method, "metric": "nrmse", "status": "ok",
                     "value": value, "tuning": mode, "tuned_value": tv, "reference": "chi", "better": "lower"})
    table, modes = tuning.side_by_side(pd.DataFrame(rows), plans)
    assert modes == ["default", "oracle", "lcurve"]
    plain = table[table.method == "plain"].iloc[0]
    assert plain["default"] == 50.0 and plain["oracle"] == tuning.NOT_TUNABLE and plain["lcurve"] == tuning.NOT_TUNABLE
    cfl2 = table[table.method == "cfl2"].iloc[0]
    assert (cfl2["default"], cfl2["oracle"], cfl2["lcurve"]) == (40.0, 30.0, 35.0)
    assert json.loads(cfl2["oracle_value"]) == {"lam": 0.01}
    # rankings per mode, never mixed: plain only in the default ranking
    ranks = tuning.rankings(pd.DataFrame(rows))
    assert set(ranks[ranks.tuning == "oracle"].method) == {"cfl2"}
    assert ranks[(ranks.tuning == "default")].set_index("method")["rank"].to_dict() == {"cfl2": 1, "plain": 2}


def test_declared_ranges_are_checked():
    assert check_class(get_method_class("cfl2")) == []

    class Bad(Plain):
        name = "bad"
        tunable = {"nope": tuning.LogRange(0.1, 1.0)}

    assert any("nope" in p for p in check_class(Bad))
    with pytest.raises(ValueError, match="0 < lo < hi"):
        tuning.LogRange(0.0, 1.0)
    with pytest.raises(ValueError, match="n >= 3"):
        tuning.LinRange(0.0, 1.0, 2)
    assert tuning.LogRange(1e-3, 1e-1, 3).values() == pytest.approx([1e-3, 1e-2, 1e-1])


def test_transfer_applies_the_value_chosen_on_another_dataset(tmp_path, noisy):
    src = tmp_path / "sel.json"
    io.write_json(src, {"status": "ok", "parameter": "lam", "value": 0.02, "candidates": [0.01, 0.02, 0.05],
                        "dataset": "other", "perturbation": "none", "seed": 5, "mode": "lcurve", "notes": []})
    io.save_volume(noisy, tmp_path / "vol")
    record = tuning.tuned_run_job(tmp_path / "vol", tmp_path / "out" / "run.json", src, run_id="cfl2",
                                  run={"method": "cfl2", "params": {}, "profile": None}, mode="lcurve",
                                  dataset="tiny", perturbation="none", isolate=False)
    assert record["status"] == "ok" and record["parameters"]["lam"] == 0.02
    t = json.loads((tmp_path / "out" / "run.json").read_text())["tuning"]
    assert t["transferred"] is True and t["selected_on"] == {"dataset": "other", "perturbation": "none", "seed": 5}
    assert t["mode"] == "lcurve" and t["candidates"] == [0.01, 0.02, 0.05]
    assert get_method_class("cfl2").parameters["lam"] == 0.09  # tuning never changes a default


def base_config(**extra):
    cfg = {"datasets": {"tiny": {"type": "phantom", "model": "analytic", "shape": [16, 16, 16]}},
           "perturbations": ["none"], "methods": {"tkd": {}, "cfl2": {}}}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("change, message", [
    ({"tuning": "orcale"}, r"key 'tuning': 'orcale' is not one of \['default', 'oracle', 'lcurve', 'discrepancy'\]"),
    ({"tuning": ["default", "best"]}, r"key 'tuning.1': 'best' is not one of"),
    ({"methods": {"tkd": {"tuning": 3}}}, r"key 'methods.tkd.tuning'"),
    ({"methods": {"tkd": {"tune_candidates": 2}}}, r"'methods.tkd.tune_candidates': 2 is less than the minimum of 3"),
    ({"methods": {"tkd": {"tune_parameter": "lam"}}}, r"'lam' is not a tunable parameter of 'tkd'; tunable: threshold"),
    ({"methods": {"cfl2": {"tuned_on": {"dataset": "nowhere"}}}}, r"cfl2.tuned_on.dataset': unknown dataset"),
    ({"methods": {"cfl2": {"tuned_on": {"dataset": "tiny", "perturbation": "orient-9"}}}},
     r"'orient-9' is not a perturbation of dataset 'tiny'"),
    ({"methods": {"uqsm": {"tune_candidates": 5}}}, r"method 'uqsm' declares no tunable parameter"),
    ({"tuning_metric": "nrmsee"}, r"key 'tuning_metric': unknown metric 'nrmsee'"),
])
def test_bad_tuning_config_gives_clear_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(base_config(**change), source="my.yaml")


def test_good_tuning_config_validates():
    cfg = validate_config(base_config(tuning=["default", "oracle", "lcurve"], tuning_metric="xsim",
                                      methods={"tkd": {"tune_candidates": 4},
                                               "cfl2": {"tuning": "lcurve", "tuned_on": {"dataset": "tiny"}}}))
    assert cfg["methods"]["cfl2"]["tuned_on"] == {"dataset": "tiny"}


def test_medi_lambda_is_searched_with_the_fixed_rule():
    """MEDI's default picks lambda by the discrepancy principle; a searched lam must be the lambda used."""
    from qsmbench.tuning import searched_params

    params = searched_params({"method": "medi", "params": {"max_iter": 3}}, "lam", 10.0)
    assert params == {"max_iter": 3, "lambda_rule": "fixed", "lam": 10.0}
    assert searched_params({"method": "cfl2"}, "lam", 0.1) == {"lam": 0.1}
