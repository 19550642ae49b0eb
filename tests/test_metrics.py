"""Metrics against hand-computed / closed-form values on small arrays (GitHub issue 3).

Each official metric is checked on identical images, a constant offset, a pure scaling, a
single-voxel error, a linear trend and a synthetic calcification; XSIM and the 2016 SSIM are
compared with scikit-image and with a brute-force window sum; bad input gives clear errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from qsmbench import metrics
from qsmbench.errors import InputError

N = 20
CENTRE = (10, 10, 10)

OFFICIAL = {"rmse", "nrmse", "hfen", "ssim2016", "xsim", "roi_error_gm", "roi_error_wm", "dnrmse",
            "dnrmse_tissue", "dnrmse_blood", "dnrmse_dgm", "slope_error", "calc_streak",
            "calc_moment_error", "pearson", "psnr"}


# --------------------------------------------------------------------------- fixtures
def brain_mask(n=N):
    m = np.zeros((n, n, n), dtype=bool)
    m[2:-2, 2:-2, 2:-2] = True
    return m


def smooth_truth(n=N, seed=0):
    """A smooth random map, zero outside the mask (as the challenges' references are)."""
    rng = np.random.default_rng(seed)
    y = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 1.5)
    y *= 0.1 / y.std()
    return y * brain_mask(n)


def rc2_labels(n=N):
    """RC2 numbering: WM filling the mask, GM rim, six DGM blocks, a vein, a calcification."""
    lab = np.zeros((n, n, n), dtype=np.int32)
    m = brain_mask(n)
    lab[m] = 8
    lab[m & ~ndimage.binary_erosion(m)] = 9
    for k in range(6):
        i = 4 + 2 * (k % 3) * 2
        j = 4 if k < 3 else 11
        lab[i:i + 3, j:j + 3, 4:7] = k + 1
    lab[4:16, 15, 13] = 11
    lab[12:14, 12:14, 12:14] = 16
    return lab


def qsm2016_labels(n=N):
    lab = np.zeros((n, n, n), dtype=np.int32)
    for k in range(11):
        i = 3 + 3 * (k % 5)
        j = 3 + 5 * (k // 5)
        lab[i:i + 2, j:j + 3, 8:11] = k + 1
    return lab


def values(results):
    return {r.metric: r.value for r in results}


def result(results, name):
    return next(r for r in results if r.metric == name)


def run(x, y, m=None, **kw):
    return values(metrics.evaluate(x, y, brain_mask() if m is None else m, **kw))


def correlate_reference(a, kernel):
    return ndimage.correlate(a, kernel, mode="constant", cval=0.0)


def doc_log_kernel():
    """The HFEN kernel written out independently from DATA_AND_METRICS.md."""
    r = np.arange(-7, 8, dtype=float)
    x, y, z = np.meshgrid(r, r, r, indexing="ij")
    r2 = x**2 + y**2 + z**2
    g = np.exp(-r2 / (2 * 1.5**2))
    g = g / g.sum()
    k = g * (r2 / 1.5**4 - 3 / 1.5**2)
    return k - k.sum() / k.size


def brute_force_ssim_map(x, y, c1, c2, radius, pad_mode, sigma=1.5):
    """SSIM map by explicit window sums over every offset (no gaussian_filter)."""
    r = np.arange(-radius, radius + 1, dtype=float)
    w = np.exp(-(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) / (2 * sigma**2))
    w /= w.sum()
    kw = {"mode": "edge"} if pad_mode == "replicate" else {"mode": "constant", "constant_values": 0}
    stats = [np.zeros(x.shape) for _ in range(5)]
    planes = [np.pad(a, radius, **kw) for a in (x, y, x * x, y * y, x * y)]
    n0, n1, n2 = x.shape
    for a in range(2 * radius + 1):
        for b in range(2 * radius + 1):
            for c in range(2 * radius + 1):
                for s, p in zip(stats, planes, strict=True):
                    s += w[a, b, c] * p[a:a + n0, b:b + n1, c:c + n2]
    mx, my, exx, eyy, exy = stats
    vx, vy, cxy = exx - mx**2, eyy - my**2, exy - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


# --------------------------------------------------------------------------- registry
def test_registry_holds_the_official_set_with_documentation():
    assert set(metrics.list_metrics()) == OFFICIAL
    for row in metrics.metric_table():
        assert row["better"] in ("lower", "higher")
        assert len(row["definition"]) > 30 and row["source"]
    table = {row["metric"]: row for row in metrics.metric_table()}
    assert "doi:10.1002/mrm.26830" in table["hfen"]["source"]
    assert "doi:10.1002/mrm.28754" in table["calc_streak"]["source"]
    assert "0.001" in table["xsim"]["definition"] and "7×7×7" in table["xsim"]["definition"]
    assert table["ssim2016"]["better"] == "higher" and table["dnrmse"]["better"] == "lower"


def test_every_metric_is_reported_once_for_every_reconstruction():
    y = smooth_truth()
    lab = rc2_labels()
    y[lab == 16] = -1.0
    x = y + 0.01 * np.random.default_rng(1).standard_normal(y.shape)
    res = metrics.evaluate(x, y, brain_mask(), labels=lab)
    assert [r.metric for r in res] == metrics.list_metrics()
    for r in res:
        assert r.status in ("ok", "not_applicable")
        assert (r.value is None) == (r.status == "not_applicable")
        assert r.status == "ok" or r.reason
    assert {r.metric for r in res if r.status != "ok"} == {"roi_error_gm", "roi_error_wm"}


# --------------------------------------------------------------------------- hand-computed cases
def test_identical_images():
    y = smooth_truth()
    lab = rc2_labels()
    y[lab == 16] = -1.0
    v = run(y, y, labels=lab)
    for name in ("rmse", "hfen", "nrmse", "dnrmse", "dnrmse_tissue", "dnrmse_blood", "dnrmse_dgm",
                 "slope_error", "calc_streak", "calc_moment_error"):
        assert v[name] == pytest.approx(0.0, abs=1e-9), name
    for name in ("ssim2016", "xsim", "pearson"):
        assert v[name] == pytest.approx(1.0, abs=1e-12), name
    assert v["psnr"] is None
    psnr = result(metrics.evaluate(y, y, brain_mask()), "psnr")
    assert "infinite" in psnr.reason
    v16 = run(y, y, labels=qsm2016_labels(), extras={"label_scheme": "qsm2016"})
    assert v16["roi_error_gm"] == 0.0 and v16["roi_error_wm"] == 0.0


def test_constant_offset():
    m = brain_mask()
    y = smooth_truth()
    c = 0.05
    x = (y + c) * m
    lab16 = qsm2016_labels()
    v = run(x, y, labels=lab16, extras={"label_scheme": "qsm2016"})
    # ‖M·x − y‖ = c·sqrt(|M|); the demeaned metrics do not see an offset at all.
    assert v["rmse"] == pytest.approx(100 * c * math.sqrt(m.sum()) / np.linalg.norm(y), rel=1e-12)
    assert v["nrmse"] == pytest.approx(0.0, abs=1e-9)
    assert v["dnrmse"] == pytest.approx(0.0, abs=1e-9)
    assert v["pearson"] == pytest.approx(1.0, abs=1e-12)
    ptp = np.ptp(y[m])
    assert v["psnr"] == pytest.approx(10 * math.log10(ptp**2 / c**2), rel=1e-12)
    assert v["roi_error_gm"] == pytest.approx(c, rel=1e-12)
    assert v["roi_error_wm"] == pytest.approx(c, rel=1e-12)
    k = doc_log_kernel()
    hfen = 100 * np.linalg.norm(correlate_reference(c * m.astype(float), k)) / np.linalg.norm(
        correlate_reference(y, k))
    assert v["hfen"] == pytest.approx(hfen, rel=1e-9)
    vr = run(x, y, labels=rc2_labels())
    assert vr["slope_error"] == pytest.approx(0.0, abs=1e-9)
    assert vr["dnrmse_tissue"] == pytest.approx(0.0, abs=1e-9)


def test_pure_scaling():
    y = smooth_truth()
    a = 1.3
    x = a * y
    lab16 = qsm2016_labels()
    v = run(x, y, labels=lab16, extras={"label_scheme": "qsm2016"})
    # Every metric that is linear in x − y reports |a − 1| of the reference's norm.
    assert v["rmse"] == pytest.approx(100 * (a - 1), rel=1e-12)
    assert v["hfen"] == pytest.approx(100 * (a - 1), rel=1e-9)
    assert v["nrmse"] == pytest.approx(100 * (a - 1), rel=1e-12)
    assert v["dnrmse"] == pytest.approx(0.0, abs=1e-9)
    assert v["pearson"] == pytest.approx(1.0, abs=1e-12)
    gm = np.isin(lab16, range(1, 7))
    assert v["roi_error_gm"] == pytest.approx((a - 1) * np.abs(y[gm]).mean(), rel=1e-12)
    vm = run(x, y, labels=lab16, extras={"label_scheme": "qsm2016", "roi_error_mode": "roi_means"})
    expected = np.mean([(a - 1) * abs(y[lab16 == r].mean()) for r in range(7, 12)])
    assert vm["roi_error_wm"] == pytest.approx(expected, rel=1e-12)
    vr = run(x, y, labels=rc2_labels())
    assert vr["slope_error"] == pytest.approx(a - 1, rel=1e-9)
    for name in ("dnrmse_tissue", "dnrmse_blood", "dnrmse_dgm"):
        assert vr[name] == pytest.approx(0.0, abs=1e-9), name
    assert v["xsim"] < 1.0 and v["ssim2016"] < 1.0


def test_single_voxel_error():
    m = brain_mask()
    y = smooth_truth()
    d = 0.2
    x = y.copy()
    x[CENTRE] += d
    lab16 = qsm2016_labels()
    lab16[CENTRE] = 1
    v = run(x, y, labels=lab16, extras={"label_scheme": "qsm2016"})
    n = m.sum()
    assert v["rmse"] == pytest.approx(100 * d / np.linalg.norm(y), rel=1e-12)
    # Demeaning spreads the error: ‖δ(e − 1/N)‖ = δ·sqrt(1 − 1/N) over the mask.
    yt = (y - y[m].mean()) * m
    assert v["nrmse"] == pytest.approx(100 * d * math.sqrt(1 - 1 / n) / np.linalg.norm(yt), rel=1e-12)
    # The voxel lies ≥ 7 voxels from every border, so LoG(δ·e) is the whole kernel times δ.
    k = doc_log_kernel()
    expected = 100 * d * np.linalg.norm(k) / np.linalg.norm(correlate_reference(y, k))
    assert v["hfen"] == pytest.approx(expected, rel=1e-9)
    assert v["psnr"] == pytest.approx(10 * math.log10(np.ptp(y[m]) ** 2 * n / d**2), rel=1e-12)
    assert v["roi_error_gm"] == pytest.approx(d / np.count_nonzero(np.isin(lab16, range(1, 7))), rel=1e-12)
    assert v["roi_error_wm"] == pytest.approx(0.0, abs=1e-15)
    # SSIM is local: the voxel disturbs only its 7³ (XSIM) neighbourhood.
    smap = metrics.ssim_map(x, y, c1=1e-4, c2=1e-6, sigma=1.5, radius=3, mode="nearest")
    far = np.ones_like(m)
    far[7:14, 7:14, 7:14] = False
    assert np.allclose(smap[far], 1.0, atol=1e-12) and smap[CENTRE] < 1.0


def test_linear_trend_is_removed_by_dnrmse_only():
    m = brain_mask()
    y = smooth_truth()
    x = (2.0 * y + 0.3) * m
    lab = rc2_labels()
    for fit in ("recon_to_truth", "truth_to_recon"):
        v = run(x, y, labels=lab, extras={"dnrmse_fit": fit})
        # Demeaned, x̃ = 2ỹ exactly: NRMSE = 100·‖2ỹ − ỹ‖/‖ỹ‖ = 100 %, the fit removes it all.
        assert v["nrmse"] == pytest.approx(100.0, rel=1e-12)
        for name in ("dnrmse", "dnrmse_tissue", "dnrmse_blood", "dnrmse_dgm"):
            assert v[name] == pytest.approx(0.0, abs=1e-9), (fit, name)
        assert v["slope_error"] == pytest.approx(1.0, rel=1e-9)


def test_dnrmse_closed_form_with_noise_in_both_fit_directions():
    """With ρ the Pearson correlation in the region, recon→truth gives 100·sqrt(1 − ρ²) and
    truth→recon gives 100·sqrt(1/ρ² − 1) (direct algebra of the least-squares fits)."""
    m = brain_mask()
    y = smooth_truth()
    x = (0.7 * y + 0.03 * np.random.default_rng(2).standard_normal(y.shape)) * m
    rho = np.corrcoef(x[m], y[m])[0, 1]
    v1 = run(x, y, labels=rc2_labels())
    v2 = run(x, y, labels=rc2_labels(), extras={"dnrmse_fit": "truth_to_recon"})
    assert v1["dnrmse"] == pytest.approx(100 * math.sqrt(1 - rho**2), rel=1e-10)
    assert v2["dnrmse"] == pytest.approx(100 * math.sqrt(1 / rho**2 - 1), rel=1e-10)
    assert v1["pearson"] == pytest.approx(rho, rel=1e-12)
    # Regional: the same formula on erode(M ∩ labels 7-9) by a 3×3×3 cube (the official order).
    lab = rc2_labels()
    tissue = ndimage.binary_erosion(np.isin(lab, (7, 8, 9)) & m, structure=np.ones((3, 3, 3)))
    rho_t = np.corrcoef(x[tissue], y[tissue])[0, 1]
    assert v1["dnrmse_tissue"] == pytest.approx(100 * math.sqrt(1 - rho_t**2), rel=1e-10)


def test_dnrmse_of_a_constant_reconstruction():
    m = brain_mask()
    y = smooth_truth()
    x = 0.1 * m.astype(float)
    assert run(x, y)["dnrmse"] == pytest.approx(100.0)
    r = result(metrics.evaluate(x, y, m, extras={"dnrmse_fit": "truth_to_recon"}), "dnrmse")
    assert r.status == "not_applicable" and "uncorrelated" in r.reason


def test_regions_are_eroded_and_dilated_by_one_voxel():
    m = brain_mask()
    lab = rc2_labels()
    y = smooth_truth()
    tissue = np.isin(lab, (7, 8, 9))
    # Errors on the outer voxel layer of the tissue are removed by the one-voxel erosion.
    x = y.copy()
    x[tissue & ~metrics.erode(tissue)] += 0.5
    v = run(x, y, labels=lab)
    assert v["dnrmse_tissue"] == pytest.approx(0.0, abs=1e-9) and v["dnrmse"] > 1.0
    dgm = np.isin(lab, range(1, 7))
    x = y.copy()
    x[dgm & ~metrics.erode(dgm)] += 0.5
    assert run(x, y, labels=lab)["dnrmse_dgm"] == pytest.approx(0.0, abs=1e-9)
    # The blood region includes the one-voxel shell around the vein, and nothing beyond.
    blood = lab == 11
    shell1 = metrics.dilate(blood) & ~blood
    shell2 = metrics.dilate(metrics.dilate(blood)) & ~metrics.dilate(blood)
    x = y.copy()
    x[shell2] += 0.5
    assert run(x, y, labels=lab)["dnrmse_blood"] == pytest.approx(0.0, abs=1e-9)
    x = y.copy()
    x[shell1 & m] += 0.5
    assert run(x, y, labels=lab)["dnrmse_blood"] > 1.0


def _dnrmse_by_hand(x, y, box):
    """dNRMSE (recon→truth fit) over an explicitly listed box of voxels."""
    xt, yt = x[box].ravel(), y[box].ravel()
    xt, yt = xt - xt.mean(), yt - yt.mean()
    a = np.dot(xt, yt) / np.dot(xt, xt)
    return 100 * np.linalg.norm(a * xt - yt) / np.linalg.norm(yt)


def test_regions_follow_the_official_order_mask_first_then_morphology():
    """RC2's usage script: R = erode/dilate(M ∩ labels), the dilated blood region not re-masked.

    Hand-built 9³ case where the scoring mask M cuts the labelled tissue and the vein, so the
    official order and the other one (erode/dilate(labels) ∩ M) select different voxels.
    """
    rng = np.random.default_rng(7)
    y = rng.standard_normal((9, 9, 9))
    x = y + 0.3 * rng.standard_normal((9, 9, 9))
    lab = np.zeros((9, 9, 9), dtype=np.int32)
    lab[1:8, 1:8, 1:8] = 8                       # white matter: a 7³ block
    # Tissue: M stops at z = 5 (inclusive).  Official: erode(M ∩ WM) = [2:7, 2:7, 2:5]
    # (the plane z = 5 is on the edge of M ∩ WM); the other order keeps z = 5: [2:7, 2:7, 2:6].
    m = np.zeros((9, 9, 9), dtype=bool)
    m[1:8, 1:8, 1:6] = True
    x[:, :, 5] += 2.0 * rng.standard_normal((9, 9))   # large errors on the plane the orders disagree on
    v = run(x, y, m, labels=lab, metrics=["dnrmse_tissue"])
    official = (slice(2, 7), slice(2, 7), slice(2, 5))
    other = (slice(2, 7), slice(2, 7), slice(2, 6))
    assert v["dnrmse_tissue"] == pytest.approx(_dnrmse_by_hand(x, y, official), rel=1e-12)
    assert abs(_dnrmse_by_hand(x, y, official) - _dnrmse_by_hand(x, y, other)) > 5.0
    # Blood: a vein along the first axis (x = 1..7 at y = z = 4) and M = x 1..4 only.
    # Official: dilate(M ∩ vein) = x 0..5, y 3..5, z 3..5 -- including the slabs x = 0 and
    # x = 5 outside M; the other order gives x 1..4 only (and would include in-M voxels next to
    # out-of-M vein, none here).
    lab[1:8, 4, 4] = 11
    m = np.zeros((9, 9, 9), dtype=bool)
    m[1:5, 1:8, 1:8] = True
    x = y + 0.3 * rng.standard_normal((9, 9, 9))
    x[5] += 2.0 * rng.standard_normal((9, 9))          # large errors on the out-of-M shell
    v = run(x, y, m, labels=lab, metrics=["dnrmse_blood"])
    official = (slice(0, 6), slice(3, 6), slice(3, 6))
    other = (slice(1, 5), slice(3, 6), slice(3, 6))
    assert v["dnrmse_blood"] == pytest.approx(_dnrmse_by_hand(x, y, official), rel=1e-12)
    assert abs(_dnrmse_by_hand(x, y, official) - _dnrmse_by_hand(x, y, other)) > 5.0


def test_erode_and_dilate_match_scipy_binary_morphology():
    rng = np.random.default_rng(3)
    region = ndimage.gaussian_filter(rng.standard_normal((12, 13, 14)), 1) > 0
    cube = np.ones((3, 3, 3), dtype=bool)
    assert np.array_equal(metrics.erode(region), ndimage.binary_erosion(region, cube))
    assert np.array_equal(metrics.dilate(region), ndimage.binary_dilation(region, cube))


def test_slope_error_uses_all_voxels_of_each_label():
    y = smooth_truth()
    lab = rc2_labels()
    chi = {1: 0.06, 2: 0.15, 3: 0.05, 4: 0.10, 5: 0.09, 6: 0.12}
    got = {1: 0.05, 2: 0.11, 3: 0.06, 4: 0.07, 5: 0.08, 6: 0.10}
    x = y.copy()
    for r in chi:
        y[lab == r] = chi[r]
        x[lab == r] = got[r]
    s = np.polyfit(list(chi.values()), list(got.values()), 1)[0]
    assert run(x, y, labels=lab)["slope_error"] == pytest.approx(abs(1 - s), rel=1e-10)
    # One boundary voxel changes the label mean: no erosion is applied.
    corner = tuple(np.argwhere(lab == 2)[0])
    x[corner] += 0.27
    got[2] += 0.27 / np.count_nonzero(lab == 2)
    s = np.polyfit(list(chi.values()), list(got.values()), 1)[0]
    assert run(x, y, labels=lab)["slope_error"] == pytest.approx(abs(1 - s), rel=1e-10)
    lab1 = np.where(np.isin(lab, range(2, 7)), 8, lab)
    r = result(metrics.evaluate(x, y, brain_mask(), labels=lab1), "slope_error")
    assert r.status == "not_applicable" and "at least two" in r.reason


# --------------------------------------------------------------------------- calcification
def calc_case(n=24):
    """A 3³ calcification of −2 ppm at 10:13 in positive, streak-free surroundings."""
    m = np.zeros((n, n, n), dtype=bool)
    m[1:-1, 1:-1, 1:-1] = True
    lab = np.where(m, 8, 0).astype(np.int32)
    lab[10:13, 10:13, 10:13] = 16
    i = np.indices((n, n, n)).astype(float)
    y = (0.05 + 0.02 * np.sin(i[0] / 3) * np.cos(i[1] / 4) + 0.001 * i[2]) * m
    y[lab == 16] = -2.0
    return y, m, lab


def calc_values(x, y, m, lab, **extras):
    return values(metrics.evaluate(x, y, m, labels=lab, metrics=["calc_streak", "calc_moment_error"],
                                   extras=extras))


def test_calcification_known_moment_and_streak_free_surroundings():
    y, m, lab = calc_case()
    v = calc_values(y, y, m, lab)
    assert v["calc_streak"] == pytest.approx(0.0, abs=1e-12)
    assert v["calc_moment_error"] == 0.0
    # Known ground-truth moment 27 voxels × −2 ppm; a half-strength calcification misses half.
    x = y.copy()
    x[lab == 16] = -1.0
    v = calc_values(x, y, m, lab, calc_moment_gt=-54.0)
    assert v["calc_moment_error"] == pytest.approx(27.0, rel=1e-12)
    assert calc_values(x, y, m, lab)["calc_moment_error"] == pytest.approx(27.0, rel=1e-12)
    # A scaled and offset copy of the surroundings is absorbed by the fit x ≈ p1·y + p2.
    x = np.where(lab == 16, -2.0, 1.5 * y + 0.02) * m
    assert calc_values(x, y, m, lab)["calc_streak"] == pytest.approx(0.0, abs=1e-10)


def test_calc_streak_value_from_the_fit_residual():
    y, m, lab = calc_case()
    rng = np.random.default_rng(4)
    x = y + 0.01 * rng.standard_normal(y.shape) * (lab != 16)
    x[lab == 16] = -1.6
    b3 = np.zeros_like(m)
    b3[7:16, 7:16, 7:16] = True
    b7 = np.zeros_like(m)
    b7[3:20, 3:20, 3:20] = True
    ring = b7 & ~b3
    p = np.polyfit(y[ring], x[ring], 1)
    res = x[ring] - np.polyval(p, y[ring])
    b11_shell = ~b3          # B11 = 10-11 ± 11 covers the whole 24³ volume here
    t = next(t for t in -np.arange(151) / 100 if not np.any((x * m)[b11_shell] < t))
    s = b3 & (x * m < t)
    expected = np.std(res, ddof=1) / abs(x[s].mean())
    assert calc_values(x, y, m, lab)["calc_streak"] == pytest.approx(expected, rel=1e-9)


def test_calc_threshold_follows_the_surroundings():
    y, m, lab = calc_case()
    x = y.copy()
    x[9, 11, 11] = -0.055      # in B3, outside the label (partial volume)
    x[11, 9, 11] = -0.07       # in B3
    # Streak-free surroundings: t = 0, every negative voxel of B3 counts.
    assert calc_values(x, y, m, lab)["calc_moment_error"] == pytest.approx(0.125, rel=1e-12)
    # A shell voxel at −0.053 ppm moves t to −0.06: −0.055 drops out of S, −0.07 stays.
    x[3, 3, 3] = -0.053
    assert metrics.calc_threshold(np.array([-0.053, 0.1])) == pytest.approx(-0.06)
    assert calc_values(x, y, m, lab)["calc_moment_error"] == pytest.approx(0.07, rel=1e-12)
    # No threshold qualifies (a shell voxel below −1.5 ppm): the search stops at −1.5 ppm.
    x[3, 3, 3] = -2.5
    assert metrics.calc_threshold(np.array([-2.5])) == -1.5
    assert calc_values(x, y, m, lab)["calc_moment_error"] == pytest.approx(0.0, abs=1e-12)
    assert metrics.calc_threshold(np.array([0.0, 0.2])) == 0.0


def test_calcification_missing_or_not_depicted():
    y, m, lab = calc_case()
    x = np.where(lab == 16, 0.05, y)        # the reconstruction misses the calcification
    res = metrics.evaluate(x, y, m, labels=lab)
    assert result(res, "calc_streak").status == "not_applicable"
    assert "not depicted" in result(res, "calc_streak").reason
    assert result(res, "calc_moment_error").value == pytest.approx(54.0)
    res = metrics.evaluate(y, y, m, labels=np.where(lab == 16, 8, lab))
    for name in ("calc_streak", "calc_moment_error"):
        assert "no calcification label" in result(res, name).reason
    # A calcification in a corner: the boxes are clipped to the volume.
    lab2 = np.where(lab == 16, 8, lab)
    lab2[1:3, 1:3, 1:3] = 16
    y2 = np.where(lab2 == 16, -2.0, y)
    assert calc_values(y2, y2, m, lab2) == pytest.approx({"calc_streak": 0.0, "calc_moment_error": 0.0})


# --------------------------------------------------------------------------- SSIM / XSIM
def test_xsim_matches_a_brute_force_window_sum():
    """Our XSIM (scipy gaussian_filter, radius 3, mode 'nearest') equals an explicit 7³ weighted
    sum with edge replication, to rounding."""
    rng = np.random.default_rng(5)
    y = smooth_truth(16, seed=6)
    x = 0.8 * y + 0.02 * rng.standard_normal(y.shape)
    m = brain_mask(16)
    ref = brute_force_ssim_map(x * m, y * m, 1e-4, 1e-6, 3, "replicate")
    assert run(x, y, m)["xsim"] == pytest.approx(ref[m].mean(), abs=1e-12)
    y[5:8, 5:8, 5:8] = 0.0
    sup = (y * m) != 0
    ref = brute_force_ssim_map(x * m, y * m, 1e-4, 1e-6, 3, "replicate")
    got = run(x, y, m, extras={"xsim_mask": "reference_support"})["xsim"]
    assert got == pytest.approx(ref[sup].mean(), abs=1e-12)
    assert got != pytest.approx(ref[m].mean(), abs=1e-6)


def test_ssim_map_agrees_with_scikit_image():
    """scikit-image's SSIM (gaussian_weights=True, sigma=1.5, use_sample_covariance=False) uses
    truncate=3.5, i.e. an 11³ window, and 'reflect' padding, and averages over the interior
    cropped by 5 voxels.  XSIM uses a 7³ window with replicate padding over the mask, so the
    official numbers differ on purpose; we compare the shared SSIM formula by running our map
    with radius 5 against skimage's full map on the interior voxels, where padding plays no
    role, with XSIM's and the 2016 SSIM's constants.  Tolerance 1e-10 (rounding only)."""
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(7)
    y = ndimage.gaussian_filter(rng.standard_normal((22, 22, 22)), 1.2) * 0.1
    x = 0.9 * y + 0.02 * rng.standard_normal(y.shape) + 0.01
    inner = (slice(5, -5),) * 3
    for k1, k2, L, scale in ((0.01, 0.001, 1.0, 1.0), (0.01, 0.03, 255.0, 1000.0)):
        xs, ys = x * scale, y * scale
        _, ref = skm.structural_similarity(xs, ys, data_range=L, K1=k1, K2=k2, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False, full=True)
        ours = metrics.ssim_map(xs, ys, c1=(k1 * L) ** 2, c2=(k2 * L) ** 2, sigma=1.5, radius=5,
                                mode="reflect")
        assert np.max(np.abs(ours[inner] - ref[inner])) < 1e-10


def test_ssim2016_rescaling_and_window():
    """The 2016 SSIM: both maps through the reference's 0-255 affine map, 3³ Gaussian window,
    zero padding (convn 'same'), K = (0.01, 0.03), L = 255, mean over M."""
    m = brain_mask(16)
    y = smooth_truth(16, seed=8)
    x = 1.2 * y + 0.01 * np.random.default_rng(9).standard_normal(y.shape) * m
    lo, hi = y[m].min(), y[m].max()
    xs, ys = 255 * (x * m - lo) / (hi - lo), 255 * (y * m - lo) / (hi - lo)
    ref = brute_force_ssim_map(xs, ys, (0.01 * 255) ** 2, (0.03 * 255) ** 2, 1, "zero")
    assert run(x, y, m)["ssim2016"] == pytest.approx(ref[m].mean(), abs=1e-12)
    # Per-image rescaling (the alternative reading) hides a pure scaling almost entirely.
    shared = run(2 * y, y, m)["ssim2016"]
    own = run(2 * y, y, m, extras={"ssim2016_rescale": "per_image"})["ssim2016"]
    assert shared < 0.95 < own


def test_hfen_kernel_and_fft_correlation():
    k = metrics.log_kernel()
    assert k.shape == (15, 15, 15)
    assert np.allclose(k, doc_log_kernel(), rtol=0, atol=1e-15)
    assert abs(k.sum()) < 1e-12 and k[7, 7, 7] < 0
    rng = np.random.default_rng(10)
    a = rng.standard_normal((18, 20, 23))
    got, _ = metrics.correlate_same_zero_pad(a, k)
    assert np.allclose(got, correlate_reference(a, k), rtol=0, atol=1e-12)
    # A non-symmetric kernel checks that this is correlation (not convolution) and centred.
    asym = rng.standard_normal((5, 3, 7))
    got, _ = metrics.correlate_same_zero_pad(a, asym)
    assert np.allclose(got, correlate_reference(a, asym), rtol=0, atol=1e-12)


def test_filters_on_the_mask_box_equal_the_whole_volume():
    """HFEN, XSIM and the 2016 SSIM filter only the mask's bounding box (grown by the filter
    radius); with a small off-centre mask this must equal filtering the whole volume."""
    n = 26
    rng = np.random.default_rng(11)
    m = np.zeros((n, n, n), dtype=bool)
    m[3:12, 9:20, 14:24] = True
    y = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 1.5)
    x = 0.9 * y + 0.05 * rng.standard_normal(y.shape)
    xm, ym = x * m, y * m
    v = run(x, y, m)
    k = doc_log_kernel()
    hfen = 100 * np.linalg.norm(correlate_reference(xm - ym, k)) / np.linalg.norm(correlate_reference(ym, k))
    assert v["hfen"] == pytest.approx(hfen, rel=1e-10)
    xsim_full = metrics.ssim_map(xm, ym, c1=1e-4, c2=1e-6, sigma=1.5, radius=3, mode="nearest")
    assert v["xsim"] == pytest.approx(xsim_full[m].mean(), abs=1e-12)
    lo, hi = y[m].min(), y[m].max()
    xs, ys = 255 * (xm - lo) / (hi - lo), 255 * (ym - lo) / (hi - lo)
    ssim_full = metrics.ssim_map(xs, ys, c1=(0.01 * 255) ** 2, c2=(0.03 * 255) ** 2, sigma=1.5, radius=1,
                                 mode="constant")
    assert v["ssim2016"] == pytest.approx(ssim_full[m].mean(), abs=1e-12)


# --------------------------------------------------------------------------- schemes and bad input
def test_label_schemes_select_the_metrics():
    y = smooth_truth()
    res = metrics.evaluate(y, y, brain_mask(), labels=qsm2016_labels(), extras={"label_scheme": "qsm2016"})
    for name in ("dnrmse_tissue", "dnrmse_blood", "dnrmse_dgm", "slope_error", "calc_streak"):
        r = result(res, name)
        assert r.status == "not_applicable" and "'rc2'" in r.reason, name
    assert result(res, "roi_error_gm").status == "ok"
    res = metrics.evaluate(y, y, brain_mask(), labels=rc2_labels())
    assert "'qsm2016'" in result(res, "roi_error_wm").reason
    res = metrics.evaluate(y, y, brain_mask())
    for name in ("roi_error_gm", "dnrmse_blood", "slope_error", "calc_moment_error"):
        assert "no label map" in result(res, name).reason, name


def test_missing_label_regions_are_not_applicable():
    y = smooth_truth()
    lab = rc2_labels()
    res = metrics.evaluate(y, y, brain_mask(), labels=np.where(lab == 11, 8, lab))
    assert "blood" in result(res, "dnrmse_blood").reason
    res = metrics.evaluate(y, y, brain_mask(), labels=np.where(np.isin(lab, range(1, 7)), 8, lab))
    assert "deep grey matter" in result(res, "dnrmse_dgm").reason


@pytest.mark.parametrize("scheme, bad", [("rc2", 17), ("qsm2016", 12), ("qsm2016", 16)])
def test_unexpected_labels_are_an_input_error(scheme, bad):
    y = smooth_truth()
    lab = rc2_labels()
    lab[CENTRE] = bad
    with pytest.raises(InputError, match=rf"label values {bad}\b.*{scheme}"):
        metrics.evaluate(y, y, brain_mask(), labels=lab, extras={"label_scheme": scheme})


@pytest.mark.parametrize("extras, match", [
    ({"label_scheme": "rc1"}, "label_scheme"),
    ({"dnrmse_fit": "both"}, "dnrmse_fit"),
    ({"xsim_mask": "brain"}, "xsim_mask"),
    ({"ssim2016_rescale": "none"}, "ssim2016_rescale"),
    ({"ssim2016_halfwidth": 0}, "ssim2016_halfwidth"),
    ({"calc_moment_gt": float("nan")}, "calc_moment_gt"),
    ({"calc_moment_gt": "big"}, "calc_moment_gt"),
])
def test_bad_options_are_an_input_error(extras, match):
    y = smooth_truth()
    with pytest.raises(InputError, match=match):
        metrics.evaluate(y, y, brain_mask(), extras=extras)


def test_bad_input_gives_clear_errors():
    y = smooth_truth()
    m = brain_mask()
    with pytest.raises(InputError, match=r"reference has shape \(19, 20, 20\)"):
        metrics.evaluate(y, y[1:], m)
    with pytest.raises(InputError, match="mask is empty"):
        metrics.evaluate(y, y, np.zeros_like(m))
    x = y.copy()
    x[CENTRE] = np.nan
    with pytest.raises(InputError, match="reconstruction contains non-finite"):
        metrics.evaluate(x, y, m)
    with pytest.raises(InputError, match="reference contains non-finite"):
        metrics.evaluate(y, np.where(m, np.inf, 0.0), m)
    with pytest.raises(InputError, match="must be 3-D"):
        metrics.evaluate(y[0], y[0], m[0])
    with pytest.raises(InputError, match="non-negative integers"):
        metrics.evaluate(y, y, m, labels=rc2_labels() - 1)
    with pytest.raises(InputError, match="non-negative integers"):
        metrics.evaluate(y, y, m, labels=rc2_labels() + 0.5)
    with pytest.raises(InputError, match="labels has shape"):
        metrics.evaluate(y, y, m, labels=rc2_labels()[:, :, 1:])
    with pytest.raises(InputError, match="unknown metric 'ssim'"):
        metrics.evaluate(y, y, m, metrics=["ssim"])


def test_degenerate_data_is_not_applicable_not_a_crash():
    m = brain_mask()
    const = 0.1 * m.astype(float)
    res = metrics.evaluate(const, const, m, labels=rc2_labels())
    by = {r.metric: r for r in res}
    for name in ("nrmse", "dnrmse", "pearson", "psnr", "ssim2016", "dnrmse_tissue"):
        assert by[name].status == "not_applicable" and by[name].reason, name
    assert by["rmse"].value == 0.0 and by["xsim"].value == pytest.approx(1.0)
    zero = np.zeros(m.shape)
    res = metrics.evaluate(zero, zero, m)
    assert all(r.status == "not_applicable" or r.value is not None for r in res)
    assert "zero" in next(r for r in res if r.metric == "rmse").reason
