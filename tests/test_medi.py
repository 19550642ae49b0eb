"""MEDI (methods/medi.py): edge mask, cost and its gradient, Gauss-Newton, units, options."""

import dataclasses
import inspect

import numpy as np
import pytest

from qsmbench import operators, physics, registry, seeds
from qsmbench.contract import contract_volume
from qsmbench.errors import ConfigError

medi = inspect.getmodule(registry.get_method_class("medi"))
MEDI = medi.MEDI


def _run(vol, **params):
    """MEDI with the toolbox's fixed lambda unless ``lambda_rule`` is given (the solver's semantics)."""
    params.setdefault("lambda_rule", "fixed")
    m = MEDI(**params)
    chi = m.reconstruct(vol.for_method())
    return chi, m


def _ellipsoid(shape, frac=0.4):
    grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (frac * n) for n in shape], indexing="ij")
    return sum(g * g for g in grid) <= 1.0


def _smooth_random(rng, shape, sigma=1.5):
    from scipy import ndimage
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) + 1.0


def _toolbox_threshold_loop(g, n_mask, percentage, tau0):
    """The percentage rule written literally: multiply tau by 1.05 / 0.95 one step at a time."""
    tau = tau0
    if np.count_nonzero(g > tau) / n_mask > percentage:
        while np.count_nonzero(g > tau) / n_mask > percentage:
            tau *= 1.05
    else:
        while np.count_nonzero(g > tau) / n_mask < percentage:
            tau *= 0.95
    return tau


# --------------------------------------------------------------------------- edge mask
@pytest.mark.parametrize("percentage", [0.05, 0.3, 0.9, 1.6])
def test_edge_mask_hits_the_requested_edge_fraction(rng, percentage):
    shape, vs = (22, 20, 18), (1.0, 1.2, 0.9)
    mask = _ellipsoid(shape)
    mag = _smooth_random(rng, shape).astype(np.float32)
    em = medi.edge_mask(mag, mask, vs, percentage)
    g = np.abs(operators.grad(mag * mask, vs))
    target = percentage * mask.sum()
    assert em.n_mask == mask.sum()
    assert em.n_edges == np.count_nonzero(g > em.tau)
    np.testing.assert_array_equal(em.wg, (g <= em.tau).astype(np.float32))
    # the threshold is the one the toolbox's step-by-step loop ends on
    assert em.tau0 == pytest.approx(0.01 * mag.max())
    assert em.tau == pytest.approx(_toolbox_threshold_loop(g, mask.sum(), percentage, em.tau0), rel=1e-9)
    # ... which brackets the requested number of edges within one step
    if em.steps > 0:
        assert np.count_nonzero(g > em.tau) <= target < np.count_nonzero(g > em.tau / 1.05)
    else:
        assert np.count_nonzero(g > em.tau) >= target > np.count_nonzero(g > em.tau / 0.95)
    if percentage >= 0.3:   # below that the mask boundary's jumps (all alike) dominate the top values
        assert em.edge_fraction == pytest.approx(percentage, rel=0.2)


def test_edge_mask_both_search_directions_occur(rng):
    shape = (22, 20, 18)
    mask = _ellipsoid(shape)
    mag = _smooth_random(rng, shape).astype(np.float32)
    assert medi.edge_mask(mag, mask, (1, 1, 1), 0.9).steps > 0      # tau raised from 0.01 max
    flat = (1.0 + 0.01 * (mag - 1.0)).astype(np.float32)             # gradients well below 0.01 max
    em = medi.edge_mask(flat, mask, (1, 1, 1), 0.9)
    assert em.steps < 0                                               # tau lowered
    g = np.abs(operators.grad(flat * mask))
    assert em.tau == pytest.approx(_toolbox_threshold_loop(g, mask.sum(), 0.9, em.tau0), rel=1e-9)


def test_edge_mask_of_a_constant_magnitude_keeps_only_the_mask_boundary():
    shape = (16, 16, 16)
    mask = _ellipsoid(shape)
    em = medi.edge_mask(np.ones(shape, np.float32), mask, (1, 1, 1), 0.9)
    g = np.abs(operators.grad(mask.astype(np.float32)))
    assert em.tau == 0.0            # too few non-zero gradients to reach 0.9 per voxel
    np.testing.assert_array_equal(em.wg, (g == 0).astype(np.float32))


# --------------------------------------------------------------------------- operators, cost
def test_fused_laplacian_is_grad_adjoint_of_weighted_grad(rng):
    x = rng.normal(size=(7, 8, 9))
    w = rng.random((3, 7, 8, 9))
    vs = (1.0, 0.5, 2.0)
    expected = operators.grad_adjoint(w * operators.grad(x, vs), vs)
    np.testing.assert_allclose(medi.weighted_laplacian(x, w, vs), expected, rtol=1e-12, atol=1e-12)


def _problem(rng, shape=(10, 11, 9), vs=(1.0, 1.2, 0.8), dtype=np.float64, csf=False):
    mask = _ellipsoid(shape, 0.45)
    wg = (rng.random((3, *shape)) > 0.3).astype(dtype)
    return medi.MEDIProblem(
        rdf=(rng.normal(size=shape) * mask).astype(dtype), w2=mask.astype(dtype), wg=wg,
        kernel=physics.dipole_kernel(shape, vs, (0.1, 0.3, 1.0), d0=0.0, rfft=True, dtype=dtype),
        voxel_size_mm=vs, lam=50.0, eps=1e-2, csf_mask=_ellipsoid(shape, 0.15) if csf else None,
        lam_csf=7.0)


@pytest.mark.parametrize("csf", [False, True])
def test_hessian_is_symmetric(rng, csf):
    prob = _problem(rng, csf=csf)
    x = rng.normal(size=prob.rdf.shape)
    apply = prob.hessian_operator(prob.reg_weights(x))
    u, v = rng.normal(size=(2, *x.shape))
    assert np.vdot(apply(u), v) == pytest.approx(np.vdot(u, apply(v)), rel=1e-10)
    assert np.vdot(apply(u), u) > 0


@pytest.mark.parametrize("csf", [False, True])
def test_gradient_matches_finite_differences_of_the_smoothed_cost(rng, csf):
    prob = _problem(rng, csf=csf)
    x = 0.3 * rng.normal(size=prob.rdf.shape)
    grad = prob.gradient(x, prob.dconv(x), prob.reg_weights(x))
    for _ in range(3):
        v = rng.normal(size=x.shape)
        h = 1e-5
        fd = (prob.smoothed_cost(x + h * v) - prob.smoothed_cost(x - h * v)) / (2 * h)
        assert np.vdot(grad, v) == pytest.approx(fd, rel=1e-6)


def test_cost_equals_the_complex_exponential_form(rng):
    # odd sizes: no Nyquist planes, so the complex FFT and the real-to-complex FFT agree exactly
    prob = _problem(rng, shape=(11, 9, 7))
    x = rng.normal(size=prob.rdf.shape)
    dx = np.real(np.fft.ifftn(physics.dipole_kernel(x.shape, prob.voxel_size_mm, (0.1, 0.3, 1.0), d0=0.0)
                              * np.fft.fftn(x)))
    w = np.sqrt(prob.w2)
    data = prob.lam * np.sum(np.abs(w * (np.exp(1j * dx) - np.exp(1j * prob.rdf))) ** 2)
    reg = np.sum(np.abs(prob.wg * operators.grad(x, prob.voxel_size_mm)))
    c = prob.cost(x)
    assert c["data"] == pytest.approx(data, rel=1e-10)
    assert c["reg"] == pytest.approx(reg, rel=1e-10)
    assert c["total"] == pytest.approx(data + reg, rel=1e-10)


def test_conjugate_gradient_solves_an_spd_system(rng):
    a = rng.normal(size=(30, 30))
    a = a @ a.T + 30 * np.eye(30)
    b = rng.normal(size=30)
    x, res, n = medi.conjugate_gradient(lambda v: a @ v, b, tol=1e-8, max_iter=200)
    assert res <= 1e-8 and n <= 60
    np.testing.assert_allclose(a @ x, b, atol=1e-6)
    x2, res2, n2 = medi.conjugate_gradient(lambda v: a @ v, b, tol=1e-8, max_iter=3)
    assert n2 == 3 and res2 > 1e-8


# --------------------------------------------------------------------------- the solver
def test_gauss_newton_decreases_the_cost(small_volume):
    vol = small_volume
    rdf = physics.ppm_to_rad(vol.field_ppm, vol.b0_tesla, vol.te_s)
    res = medi.medi_l1(rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir, magnitude=vol.magnitude)
    totals = [res.initial_cost["total"]] + [h["total"] for h in res.history]
    assert len(res.history) >= 2
    assert all(b < a for a, b in zip(totals, totals[1:])), totals
    assert res.history[0]["norm_ratio"] == np.inf        # ||dx||/||x|| with x = 0 before the step
    assert res.converged == (res.history[-1]["norm_ratio"] < 0.1)
    assert all(h["cg_iterations"] <= 100 for h in res.history)
    # medi_cost on the (unmasked) solution is what the history records
    assert medi.medi_cost(np.zeros_like(rdf), rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir,
                          magnitude=vol.magnitude)["total"] == pytest.approx(res.initial_cost["total"], rel=1e-5)


def test_iteration_limits_are_respected(small_volume):
    vol = small_volume
    rdf = physics.ppm_to_rad(vol.field_ppm, vol.b0_tesla, vol.te_s)
    res = medi.medi_l1(rdf, vol.mask, vol.voxel_size_mm, magnitude=vol.magnitude, max_iter=2, cg_max_iter=5,
                       tol_norm_ratio=0.0)
    assert len(res.history) == 2 and not res.converged
    assert [h["cg_iterations"] for h in res.history] == [5, 5]


def test_without_magnitude_equals_the_tv_mode(small_volume):
    vol = small_volume
    no_mag = dataclasses.replace(vol, magnitude=None)
    chi_plain, m_plain = _run(no_mag)
    chi_tv, m_tv = _run(vol, edge_weighting=False, data_weighting="uniform")   # no magnitude: W = mask too
    chi_medi, _ = _run(vol)
    np.testing.assert_array_equal(chi_plain, chi_tv)
    assert "no magnitude: plain TV (wG = 1)" in m_plain.notes
    assert "no magnitude: uniform data weight (W = mask)" in m_plain.notes
    assert m_plain.result.edges is None
    assert any("plain TV" in n for n in m_tv.notes)
    assert not np.allclose(chi_plain, chi_medi)     # the edge mask does change the result


# --------------------------------------------------------------------------- units
def test_only_the_phase_matters_b0_and_te_enter_through_their_product(small_volume):
    vol = small_volume
    a, _ = _run(dataclasses.replace(vol, b0_tesla=3.0, te_s=0.02))
    b, _ = _run(dataclasses.replace(vol, b0_tesla=1.5, te_s=0.04))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max())


def test_same_phase_in_radians_gives_chi_scaled_like_the_field(small_volume):
    # half the field (ppm) at twice TE is the same phase: x in radians is the same, chi in ppm halves
    vol = small_volume
    a, _ = _run(vol)
    b, _ = _run(dataclasses.replace(vol, field_ppm=vol.field_ppm / 2, te_s=vol.te_s * 2))
    np.testing.assert_allclose(b, a / 2, rtol=1e-4, atol=1e-6 * np.abs(a).max())


def test_output_is_the_radian_solution_converted_by_physics(small_volume):
    vol = small_volume
    chi, m = _run(vol)
    rdf = physics.ppm_to_rad(vol.field_ppm.astype(np.float64), vol.b0_tesla, vol.te_s).astype(np.float32)
    res = medi.medi_l1(rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir, magnitude=vol.magnitude)
    np.testing.assert_allclose(chi, physics.rad_to_ppm(res.x_rad, vol.b0_tesla, vol.te_s), rtol=1e-6, atol=1e-9)
    assert "20.06" not in m.notes[0] and "rad/ppm" in m.notes[0]   # 3 T, 20 ms: 16.05 rad/ppm


def test_lambda_acts_in_radians(small_volume):
    """Longer TE at the same field = proportionally larger lambda (small phases, eps scaled too).

    With phases << 1 rad the data term is ||W (D x - RDF)||^2; scaling RDF by s and x by s turns
    ``(lam, eps)`` into ``(s lam, s^2 eps)`` up to the factor s of the whole cost, so
    ``chi(TE s, lam, eps) = chi(TE, s lam, s^2 eps)``; at equal lam the two differ.
    """
    field = small_volume.field_ppm * 0.01            # phases of a few hundredths of a radian
    noise = np.random.default_rng(0).normal(size=field.shape).astype(np.float32)
    field = field + 0.3 * np.abs(field).max() * noise * small_volume.mask   # noise: lam matters
    vol = dataclasses.replace(small_volume, field_ppm=field)
    s = 2.0
    longer_te, _ = _run(dataclasses.replace(vol, te_s=vol.te_s * s), eps=1e-8 * s * s)
    larger_lam, _ = _run(vol, lam=1000.0 * s, eps=1e-8)
    same_lam, _ = _run(vol, eps=1e-8)
    scale = np.abs(larger_lam).max()
    assert np.abs(longer_te - larger_lam).max() < 1e-3 * scale
    assert np.abs(longer_te - same_lam).max() > 1e-2 * scale


def test_reference_acquisition_is_noted(small_volume):
    vol = dataclasses.replace(small_volume, b0_tesla=physics.REFERENCE_B0_TESLA, te_s=physics.REFERENCE_TE_S)
    _, m = _run(vol)
    assert "reference values" in m.notes[0]


# --------------------------------------------------------------------------- options
def test_smv_option_erodes_the_mask_and_runs(small_volume):
    vol = small_volume
    chi, m = _run(vol, smv=True, smv_radius_mm=2.0)
    out = m.result.mask_out
    assert out.sum() < vol.mask.sum() and not np.any(out & ~vol.mask)
    assert np.all(chi[~out] == 0) and np.isfinite(chi).all() and np.abs(chi[out]).max() > 0


def test_smv_kernel_is_a_normalised_sphere():
    k = medi.smv_kernel((20, 20, 20), (1.0, 1.0, 1.0), 3.0)
    assert k[0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    sphere = np.fft.fftshift(physics.irfftn(k, s=(20, 20, 20)))
    assert sphere.sum() == pytest.approx(1.0, abs=1e-5)
    r = np.sqrt(sum(g * g for g in np.meshgrid(*[np.arange(20) - 10] * 3, indexing="ij")))
    assert np.all(np.abs(sphere[r > 3 + np.sqrt(3) / 2]) < 1e-6)          # nothing beyond the sphere
    full = sphere[r < 3 - np.sqrt(3) / 2]                                  # voxels wholly inside: equal
    np.testing.assert_allclose(full, full.max(), rtol=1e-4)
    assert sphere.sum() / full.max() == pytest.approx(4 / 3 * np.pi * 27, rel=0.02)   # its volume


def test_merit_downweights_outlier_voxels(small_volume):
    vol = small_volume
    field = vol.field_ppm.copy()
    inside = np.argwhere(vol.mask)
    spikes = inside[:: max(1, len(inside) // 6)][:6]
    field[tuple(spikes.T)] += 0.1                         # about 1.6 rad phase errors
    _, m = _run(dataclasses.replace(vol, field_ppm=field), merit=True)
    assert m.result.history[0]["merit_voxels"] > 0


def test_zero_padding_keeps_the_grid(small_volume):
    vol = small_volume
    chi, _ = _run(vol, pad_factor=1.5, max_iter=2)
    assert chi.shape == vol.shape and np.all(chi[~vol.mask] == 0) and np.isfinite(chi).all()


def test_csf_term_makes_the_csf_uniform(rng):
    vol = contract_volume()
    rdf = physics.ppm_to_rad(vol.field_ppm, vol.b0_tesla, vol.te_s)
    rdf = rdf + 0.3 * rng.normal(size=rdf.shape).astype(np.float32) * vol.mask
    csf = _ellipsoid(vol.shape, 0.15) & (vol.references["chi"] == 0)
    plain = medi.medi_l1(rdf, vol.mask, vol.voxel_size_mm, magnitude=vol.magnitude).x_rad
    zero = medi.medi_l1(rdf, vol.mask, vol.voxel_size_mm, magnitude=vol.magnitude, csf_mask=csf,
                        lam_csf=1e4).x_rad
    assert np.std(zero[csf]) < 0.5 * np.std(plain[csf])


def test_bad_parameters_are_config_errors(small_volume):
    with pytest.raises(ConfigError, match="R2"):
        _run(small_volume, medi0=True)
    with pytest.raises(ConfigError, match="lam"):
        _run(small_volume, lam=-1.0)
    with pytest.raises(ConfigError, match="data_weighting"):
        _run(small_volume, data_weighting="noise")
    with pytest.raises(ConfigError, match="te_source"):
        _run(small_volume, te_source="first")
    with pytest.raises(ConfigError, match="percentage"):
        medi.edge_mask(small_volume.magnitude, small_volume.mask, (1, 1, 1), 0.0)


# --------------------------------------------------------------------------- data weight, CG, SMV, TE
def test_magnitude_data_weight_is_the_normalised_magnitude(small_volume):
    """W = mask / N_std with N_std = 1/magnitude, normalised to mean 1 in the mask."""
    vol = small_volume
    _, m = _run(vol)
    mag, mask = vol.magnitude.astype(np.float64), vol.mask
    expected = np.where(mask, mag / mag[mask].mean(), 0.0)
    np.testing.assert_allclose(m.result.weight, expected, rtol=1e-5, atol=1e-7)
    assert m.result.weight[mask].mean() == pytest.approx(1.0, rel=1e-5)
    _, u = _run(vol, data_weighting="uniform")
    np.testing.assert_array_equal(u.result.weight, mask.astype(np.float32))
    # a voxel of zero magnitude gets zero weight (the toolbox zeroes non-finite weights)
    zero = mag.copy()
    inside = tuple(np.argwhere(mask)[0])
    zero[inside] = 0.0
    w = medi.data_weight(medi.magnitude_noise_std(zero, mask), mask)
    assert w[inside] == 0.0 and w[mask].mean() == pytest.approx(1.0, rel=1e-6)


def test_magnitude_weighting_helps_under_magnitude_dependent_noise():
    """qsmbench's noise makes the phase noise sigma/|S|: the toolbox's default inverse-noise-std
    weighting must then beat the uniform one (here half the brain has a fifth of the magnitude)."""
    from qsmbench import perturb
    from qsmbench.phantom import make_phantom

    vol = make_phantom((32, 32, 32), seed=3)
    mag = vol.magnitude.copy()
    mag[:16] *= 0.2
    vol = perturb.add_noise(dataclasses.replace(vol, magnitude=mag), 20, seed=1)
    y, mask = vol.references["chi"], vol.mask

    def nrmse(x):
        a, b = x[mask] - x[mask].mean(), y[mask] - y[mask].mean()
        return 100 * np.linalg.norm(a - b) / np.linalg.norm(b)

    weighted = nrmse(_run(vol)[0])
    uniform = nrmse(_run(vol, data_weighting="uniform")[0])
    assert weighted < 0.7 * uniform, (weighted, uniform)     # about 113 % vs 230 % when written


def _cg_iterates(a, b, n):
    """Textbook CG from zero (numpy), every iterate and its relative residual."""
    x, r = np.zeros_like(b), b.copy()
    d = r.copy()
    out = []
    for _ in range(n):
        q = a @ d
        alpha = (r @ r) / (d @ q)
        x = x + alpha * d
        r_new = r - alpha * q
        d = r_new + (r_new @ r_new) / (r @ r) * d
        r = r_new
        out.append((x.copy(), np.linalg.norm(b - a @ x) / np.linalg.norm(b)))
    return out


def test_conjugate_gradient_returns_the_last_iterate_as_the_toolbox():
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    a = q @ np.diag(np.logspace(0, 2, 40)) @ q.T      # CG residuals are not monotone here
    b = rng.normal(size=40)
    its = _cg_iterates(a, b, 12)
    res = [r for _, r in its]
    assert any(r1 > r0 for r0, r1 in zip(res, res[1:]))
    last, best_res, n = medi.conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iter=12)
    # the starting point x = 0 (relative residual 1) is a candidate too, as in cgsolve
    candidates = [(np.zeros_like(b), 1.0), *its]
    k = int(np.argmin([r for _, r in candidates]))
    assert 0 < k < len(candidates) - 1          # the best iterate is neither the start nor the last
    assert n == 12 and best_res == pytest.approx(candidates[k][1], rel=1e-6)
    np.testing.assert_allclose(last, its[-1][0], rtol=1e-8, atol=1e-10)
    best, _, _ = medi.conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iter=12, return_best=True)
    np.testing.assert_allclose(best, candidates[k][0], rtol=1e-8, atol=1e-10)
    assert not np.allclose(best, last)


def test_smv_noise_map_is_masked_by_the_input_mask_then_smoothed(small_volume):
    """As MEDI_L1: N_std masked by the *input* mask, sqrt(SMV(N^2) + N^2), W on the eroded mask."""
    vol = small_volume
    r = 2.0
    _, m = _run(vol, smv=True, smv_radius_mm=r)
    sphere = medi.smv_kernel(vol.shape, vol.voxel_size_mm, r)
    eroded = m.result.mask_out
    mag = vol.magnitude.astype(np.float64)

    def smv(a):
        return np.fft.irfftn(np.fft.rfftn(a) * sphere, s=vol.shape, axes=(0, 1, 2))

    n = np.divide(1.0, mag, out=np.zeros_like(mag), where=vol.mask)
    smoothed = np.sqrt(np.maximum(smv(n * n), 0) + n * n)
    expected = np.divide(1.0, smoothed, out=np.zeros_like(smoothed), where=eroded)
    expected /= expected[eroded].mean()
    np.testing.assert_allclose(m.result.weight, expected, rtol=1e-4, atol=1e-6)
    # masking by the eroded mask instead (the old reading) gives another weight near the edge
    n2 = np.divide(1.0, mag, out=np.zeros_like(mag), where=eroded)
    other = np.sqrt(np.maximum(smv(n2 * n2), 0) + n2 * n2)
    other = np.divide(1.0, other, out=np.zeros_like(other), where=eroded)
    other /= other[eroded].mean()
    assert np.abs(other - expected).max() > 1e-3


def test_echo_spacing_sets_the_time_of_the_radians(small_volume):
    """Multi-echo data (RC2): the Cornell field map is phase per echo spacing, so MEDI converts
    with the recorded spacing, not the first TE; te_source='te' keeps the TE."""
    vol = dataclasses.replace(small_volume, te_s=0.004, meta={"echo_spacing_s": 0.008})
    spaced, m = _run(vol)
    as_te, _ = _run(dataclasses.replace(vol, te_s=0.008, meta={}))
    np.testing.assert_array_equal(spaced, as_te)
    assert "echo spacing = 8 ms" in m.notes[0]
    first_te, m_te = _run(vol, te_source="te")
    np.testing.assert_array_equal(first_te, _run(dataclasses.replace(vol, meta={}))[0])
    assert "TE = 4 ms" in m_te.notes[0] and not np.allclose(first_te, spaced)


def test_defaults_are_the_published_ones():
    p = MEDI.parameters
    assert (p["data_weighting"], p["cg_return"], p["te_source"]) == ("magnitude", "last", "echo_spacing")
    assert (p["lam"], p["percentage"], p["eps"], p["max_iter"], p["tol_norm_ratio"], p["cg_max_iter"],
            p["cg_tol"], p["smv_radius_mm"], p["merit_sigma"], p["lam_csf"], p["d0"]) == \
        (1000.0, 0.9, 1e-6, 10, 0.1, 100, 0.01, 5.0, 6.0, 100.0, 0.0)
    assert not (p["smv"] or p["merit"] or p["medi0"]) and p["pad_factor"] == 1.0 and p["edge_weighting"]
    # our choice (issue 12): lambda by the discrepancy principle, starting from the toolbox's 1000
    assert (p["lambda_rule"], p["discrepancy_tau"]) == ("discrepancy", 0.5)
    assert all(seeds.role_of(s) == "tune" for s in MEDI.tuned_on["seeds"])


# --------------------------------------------------------------------------- lambda by the discrepancy principle
def _smooth_field(shape):
    """A smooth field (rad): a quadratic plus a slow sine, whose 7-point Laplacian is tiny."""
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return 0.5 * g[0] ** 2 - 0.3 * g[1] * g[2] + 0.2 * np.sin(1.5 * g[2])


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.4])
def test_noise_estimate_is_calibrated_on_white_noise(sigma):
    shape = (40, 40, 40)
    mask = _ellipsoid(shape, 0.45)
    noise = np.random.default_rng(7).normal(size=shape)
    est = medi.estimate_phase_noise(_smooth_field(shape) + sigma * noise, mask, mask.astype(np.float32))
    assert est.sigma_w == pytest.approx(sigma, rel=0.04)
    assert est.n_data == mask.sum() and 0.7 * mask.sum() < est.n_used < mask.sum()
    # the expected residual of Gaussian phase noise: sum 2 (1 - exp(-sigma^2/2)) ~ N sigma^2 when small
    assert est.expected_residual == pytest.approx(mask.sum() * 2 * (1 - np.exp(-est.sigma_w ** 2 / 2)), rel=1e-9)
    if sigma <= 0.1:
        assert est.expected_residual == pytest.approx(mask.sum() * est.sigma_w ** 2, rel=0.01)


def test_noise_estimate_follows_the_magnitude_weighting():
    """Noise sigma/|m| (qsmbench's perturbation) weighted by W = m / mean(m) is white with std
    sigma / mean(m): the estimate returns that, and sigma_i = sigma_w / W_i per voxel."""
    shape = (40, 40, 40)
    mask = _ellipsoid(shape, 0.45)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mag = 1.0 + 0.5 * np.sin(2 * g[0]) * np.cos(g[1])          # slowly varying, 0.5 .. 1.5
    sigma = 0.05
    field = _smooth_field(shape) + sigma / mag * np.random.default_rng(8).normal(size=shape)
    w = medi.data_weight(medi.magnitude_noise_std(mag, mask), mask)
    est = medi.estimate_phase_noise(field, mask, w)
    assert est.sigma_w == pytest.approx(sigma / mag[mask].mean(), rel=0.05)
    # expected residual = sum W^2 2 (1 - exp(-(sigma_w/W)^2/2)), computed independently
    wm = w[mask].astype(np.float64)
    s_i = est.sigma_w / wm
    assert est.expected_residual == pytest.approx(np.sum(wm ** 2 * 2 * (1 - np.exp(-s_i ** 2 / 2))), rel=1e-9)


def test_discrepancy_search_finds_the_root_of_a_known_curve():
    calls = []

    def residual(lam):               # a power law in lam, as MEDI's residual roughly is
        calls.append(lam)
        return 5.0 * lam ** -0.6

    target = 5.0 * 37.0 ** -0.6
    s = medi.discrepancy_search(residual, target, 1000.0, lam_min=1.0, lam_max=1e5, tol=0.02)
    assert s.converged and s.lam == pytest.approx(37.0, rel=0.05) and len(calls) <= 4
    assert [t["lam"] for t in s.trace] == calls and abs(np.log(s.trace[-1]["ratio"])) <= np.log(1.02)
    # a target below what lam_max reaches: stop at the bound, say so
    low = medi.discrepancy_search(residual, 5.0 * 1e6 ** -0.6, 1000.0, lam_min=1.0, lam_max=1e5, max_evals=10)
    assert low.bound == "lam_max" and low.lam == 1e5 and not low.converged
    # a curve that is not a power law (steeper, then flatter): still bracketed and solved
    s2 = medi.discrepancy_search(lambda v: 1.0 / (1 + v) + 1e-3, 0.02, 1000.0, lam_min=1.0, lam_max=1e5, tol=0.05,
                                 max_evals=10)
    assert s2.converged and 1.0 / (1 + s2.lam) + 1e-3 == pytest.approx(0.02, rel=0.05)


@pytest.fixture(scope="module")
def noisy_phantoms():
    from qsmbench import perturb
    from qsmbench.phantom import make_phantom

    vol = make_phantom((32, 32, 32), (2.0, 2.0, 2.0), model="analytic", seed=5)
    return vol, {snr: perturb.add_noise(vol, snr, seed=1) for snr in (40, 10)}


def _nrmse(x, vol):
    m, y = vol.mask, vol.references["chi"]
    a, b = x[m] - x[m].mean(), y[m] - y[m].mean()
    return 100 * np.linalg.norm(a - b) / np.linalg.norm(b)


def test_discrepancy_meets_its_criterion_and_lambda_falls_with_the_noise(noisy_phantoms):
    _, noisy = noisy_phantoms
    lams = {}
    for snr, vol in noisy.items():
        chi, m = _run(vol, lambda_rule="discrepancy")
        info = m.info
        lams[snr] = info["lam"]
        assert info["lambda_rule"] == "discrepancy" and info["search_converged"] and info["search_bound"] is None
        # Morozov at the chosen lambda: the full solve's residual is within 25 % of tau * E||W(e^{in}-1)||^2
        assert info["target_residual"] == pytest.approx(info["expected_residual"] * info["discrepancy_tau"])
        assert 0.75 < info["final_residual"] / info["target_residual"] < 1.33, info
        assert info["final_residual"] == pytest.approx(m.result.residual)
        # ... which is what medi_cost computes for the masked solution's data term (independent check)
        rdf = physics.ppm_to_rad(vol.field_ppm.astype(np.float64), vol.b0_tesla, vol.te_s)
        data = medi.medi_cost(m.result.x_work, rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir,
                              magnitude=vol.magnitude, lam=1.0)["data"]
        assert data == pytest.approx(info["final_residual"], rel=1e-3)
        assert any("discrepancy principle" in n for n in m.notes)
        # the noise estimate is at least the noise actually added (weighted, radians), and close to
        # it where the noise dominates the field's own voxel-scale structure (SNR 10; at SNR 40 the
        # coarse analytic phantom's edges leak in, about 2x)
        w = medi.data_weight(medi.magnitude_noise_std(vol.magnitude, vol.mask), vol.mask)
        clean = noisy_phantoms[0]
        true_sd = np.std((w * physics.ppm_to_rad(vol.field_ppm - clean.field_ppm, vol.b0_tesla, vol.te_s))[vol.mask])
        assert info["noise_sigma_w_rad"] > 0.9 * true_sd
        if snr == 10:
            assert info["noise_sigma_w_rad"] == pytest.approx(true_sd, rel=0.2)
    # more noise: more regularisation (a smaller data weight); at SNR 40 this coarse phantom's edges
    # dominate the noise estimate, hence the modest ratio (19.6 vs 25.6 when written)
    assert lams[10] < 0.85 * lams[40], lams


def test_discrepancy_does_not_explode_at_low_snr(noisy_phantoms):
    """The issue-12 failure: the fixed lambda = 1000 fits the noise at peak SNR 10; the discrepancy
    rule must stay far below it and at least as good as TKD."""
    _, noisy = noisy_phantoms
    vol = noisy[10]
    fixed = _nrmse(_run(vol, lambda_rule="fixed")[0], vol)
    disc = _nrmse(_run(vol, lambda_rule="discrepancy")[0], vol)
    tkd = _nrmse(registry.get_method("tkd").reconstruct(vol.for_method()), vol)
    assert disc < 0.6 * fixed and disc <= tkd, (disc, fixed, tkd)


def test_discrepancy_solves_each_lambda_once_and_reuses_a_converged_search_solve(noisy_phantoms, monkeypatch):
    """The search proposes exp(ln lam): the start comes back as 999.99..., which must not be solved
    again; and when the search's solve at the chosen lambda stopped by its convergence test, it is
    the final solve (a full solve from the same warm start would repeat it exactly)."""
    _, noisy = noisy_phantoms
    vol = noisy[40]
    rdf = physics.ppm_to_rad(vol.field_ppm, vol.b0_tesla, vol.te_s)
    calls = []
    real = medi.medi_l1

    def counting(*args, **kw):
        result = real(*args, **kw)
        calls.append({"lam": kw["lam"], "max_iter": kw.get("max_iter"), "x0": kw.get("x0"), "result": result})
        return result

    monkeypatch.setattr(medi, "medi_l1", counting)
    final, search, _ = medi.medi_discrepancy(rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir,
                                             magnitude=vol.magnitude, lam_start=1000.0, tau=0.5)
    assert calls[0]["lam"] == 1000.0 and calls[0]["x0"] is None and calls[0]["max_iter"] is None
    assert search.trace[0]["residual"] == calls[0]["result"].residual
    # one solve per evaluated lambda (the start is not solved again) ...
    searched = [c for c in calls if c["max_iter"] is not None]
    assert len(searched) == len(search.trace) - 1
    assert all(abs(np.log(c["lam"] / calls[0]["lam"])) > 1e-6 for c in searched)
    at_chosen = [c for c in searched if c["lam"] == pytest.approx(search.lam, rel=1e-9)]
    # ... and no extra solve when the search's solve at the chosen lambda converged (here it does,
    # in one Gauss-Newton step): it is bitwise what a full solve from its warm start gives
    assert search.converged and len(at_chosen) == 1 and at_chosen[0]["result"].converged
    assert final is at_chosen[0]["result"] and len(calls) == len(search.trace)
    again = real(rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir, magnitude=vol.magnitude, lam=search.lam,
                 x0=at_chosen[0]["x0"])
    np.testing.assert_array_equal(again.x_rad, final.x_rad)
    # a search solve stopped by its iteration limit is not final: the full solve follows, warm-started
    calls.clear()
    final, search, _ = medi.medi_discrepancy(rdf, vol.mask, vol.voxel_size_mm, vol.b0_dir, magnitude=vol.magnitude,
                                             lam_start=1000.0, tau=0.5, search_max_iter=1, tol_norm_ratio=1e-9,
                                             max_iter=3)
    assert not calls[-2]["result"].converged and calls[-2]["max_iter"] == 1
    assert calls[-1]["max_iter"] == 3 and final is calls[-1]["result"]      # the solver's own limit
    assert calls[-1]["x0"] is not None and len(calls) == len(search.trace) + 1


def test_discrepancy_keeps_odd_symmetry(noisy_phantoms):
    _, noisy = noisy_phantoms
    vol = noisy[40]
    a, ma = _run(vol, lambda_rule="discrepancy")
    b, mb = _run(dataclasses.replace(vol, field_ppm=-vol.field_ppm), lambda_rule="discrepancy")
    assert ma.info["lam"] == mb.info["lam"]
    np.testing.assert_allclose(b, -a, atol=1e-5 * np.abs(a).max())


def test_chosen_lambda_reaches_run_json(small_volume):
    from qsmbench import runner

    res = runner.run_method("medi", small_volume, params={"search_max_evals": 3})
    info = res.record["info"]
    assert res.status == "ok" and info["lambda_rule"] == "discrepancy"
    assert info["lam"] > 0 and info["noise_sigma_w_rad"] > 0 and len(info["search_trace"]) <= 3
    fixed = runner.run_method("medi", small_volume, params={"lambda_rule": "fixed"})
    assert fixed.record["info"] == {"lambda_rule": "fixed", "lam": 1000.0}
    assert runner.run_method("tkd", small_volume).record["info"] == {}


def test_bad_lambda_rule_parameters_are_config_errors(small_volume):
    for params in ({"lambda_rule": "lcurve"}, {"discrepancy_tau": 0.0}, {"lam_min": 10.0, "lam_max": 5.0}):
        with pytest.raises(ConfigError):
            _run(small_volume, **params)
