"""INR-QSM and INR-QSM-fast (methods/inr_qsm): physics, patches, phase compensation, fitting,
determinism and the warm-start cache.  CPU only, tiny volumes, a few steps."""

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qsmbench import physics, registry, seeds  # noqa: E402
from qsmbench.contract import contract_volume  # noqa: E402
from qsmbench.errors import ConfigError  # noqa: E402

# Small settings shared by the fitting tests (24x24x20 contract volume).
TINY = {"hidden_features": 32, "sine_layers": 2, "w0_first": 20.0, "w0_hidden": 20.0, "w0_last": 20.0,
        "chi0_method": "tkd", "patch_size": [16, 16, 12], "patch_stride_fraction": 1.0, "epochs": 3,
        "compensate_every": 1, "lr_start": 1e-3, "lr_end": 5e-4}
TINY_FAST = {"levels": 3, "grid_max_scale": 0.5, "max_steps": 20, "min_steps": 20, "plateau_window": 3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pkg(name="inr_qsm"):
    return registry.get_method_class(name).__module__


def _mod(sub):
    return importlib.import_module(f"{_pkg()}.{sub}")


def _sphere_volume(shape=(24, 20, 16), voxel=(1.0, 1.2, 1.5), b0=(0.0, 0.3, 1.0), seed=0):
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, voxel)], indexing="ij")
    r = np.sqrt(sum((g / (0.45 * n * v)) ** 2 for g, n, v in zip(grid, shape, voxel)))
    mask = r <= 1.0
    chi = (rng.normal(size=shape) * 0.05 * mask).astype(np.float32)
    return chi, mask, voxel, physics.unit_vector(b0)


# --------------------------------------------------------------------------- physics
def test_dipole_operator_equals_the_project_forward_model():
    chi, mask, voxel, b0 = _sphere_volume()
    common = _mod("common")
    op = common.DipoleOperator(chi.shape, voxel, b0, d0=0.0, pad_factor=2.0)
    ours = op(torch.from_numpy(chi)).numpy()
    ref = physics.forward_field(chi.astype(np.float64), voxel, b0, d0=0.0, pad_factor=2.0)
    assert ours.shape == chi.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6 * np.abs(ref).max() + 1e-8)
    # batched over leading axes, and D(0) honoured: a constant chi on an unpadded grid gives d0 * chi
    op1 = common.DipoleOperator((4, 4, 4), (1, 1, 1), (0, 0, 1), d0=1 / 3, pad_factor=1.0)
    out = op1(torch.full((2, 4, 4, 4), 0.3))
    np.testing.assert_allclose(out.numpy(), 0.1, atol=1e-6)


@pytest.mark.parametrize("shape, voxel, b0, pad", [
    ((9, 8, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), 2.0),
    ((6, 11, 10), (1.0, 1.5, 2.0), (0.3, -0.2, 0.93), 1.0),    # odd/even, anisotropic, oblique, unpadded
    ((2, 7, 6, 9), (1.2, 1.0, 0.8), (0.0, 0.6, 0.8), 1.5),     # batched
])
def test_dipole_operator_backward_is_its_adjoint(shape, voxel, b0, pad):
    """The operator's own backward (the operator again) against autograd through torch's FFTs,
    and <A x, y> = <x, A y> (self-adjoint), on grids where D(k) = D(-k) must hold at Nyquist too."""
    op = _mod("common").DipoleOperator(shape[-3:], voxel, b0, d0=1 / 3, pad_factor=pad)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen)
    w = torch.randn(shape, generator=gen)
    a = x.clone().requires_grad_(True)
    (op(a) * w).sum().backward()
    b = x.clone().requires_grad_(True)
    (op.apply_plain(b) * w).sum().backward()
    scale = float(b.grad.abs().max())
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=2e-6 * scale)
    assert not np.array_equal(a.grad.numpy(), np.zeros(shape))
    with torch.no_grad():   # forward values unchanged, with or without autograd
        np.testing.assert_array_equal(op(x).numpy(), op.apply_plain(x).numpy())
    lhs = float((op(x).double() * w.double()).sum())
    rhs = float((x.double() * op(w).double()).sum())
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + abs(rhs))


def test_normalised_coordinates_are_isotropic_in_mm():
    coords = _mod("common").normalised_coords((5, 3, 2), (1.0, 2.0, 1.0))
    assert coords.shape == (5, 3, 2, 3)
    # longest half extent: axis 0 (4 * 1 / 2 = 2 mm) and axis 1 (2 * 2 / 2 = 2 mm) -> both span [-1, 1]
    np.testing.assert_allclose(coords[:, 0, 0, 0], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(coords[0, :, 0, 1], [-1, 0, 1])
    np.testing.assert_allclose(coords[0, 0, :, 2], [-0.25, 0.25])
    # one step is voxel_size / 2 mm along every axis
    assert np.isclose(coords[1, 0, 0, 0] - coords[0, 0, 0, 0], 1.0 / 2.0)
    assert np.isclose(coords[0, 1, 0, 1] - coords[0, 0, 0, 1], 2.0 / 2.0)


def test_edge_weights_ramp_between_p50_and_p70_per_axis():
    # chi0 varies along axis 0 only, with steps 0..9 (ten differences per line) inside a full mask
    steps = np.arange(10, dtype=float)
    chi0 = np.broadcast_to(np.concatenate([[0.0], np.cumsum(steps)])[:, None, None], (11, 2, 2)).copy()
    mask = np.ones_like(chi0, bool)
    wg = _mod("common").edge_weights(chi0, mask, low_percentile=50, high_percentile=70, pooled=False)
    assert [w.shape for w in wg] == [(10, 2, 2), (11, 1, 2), (11, 2, 1)]
    lo, hi = np.percentile(steps, [50, 70])  # 4.5, 6.3
    expected = np.clip((hi - steps) / (hi - lo), 0, 1)
    np.testing.assert_allclose(wg[0][:, 0, 0], expected, rtol=1e-6)
    assert wg[0][0, 0, 0] == 1.0 and wg[0][-1, 0, 0] == 0.0
    # no variation along the other axes: all differences equal their percentiles -> weight 1
    assert np.all(wg[1] == 1.0) and np.all(wg[2] == 1.0)
    # a difference that leaves the mask gets weight 0
    mask[5] = False
    wg = _mod("common").edge_weights(chi0, mask, pooled=False)
    assert np.all(wg[0][4] == 0) and np.all(wg[0][5] == 0) and np.all(wg[1][5] == 0)


def test_edge_weights_pool_the_percentiles_over_the_three_directions():
    """The authors' preprocessing: one (p50, p70) pair over |grad chi0| of all directions.

    Same chi0 as above: 40 differences along axis 0 (steps 0..9, four of each) and 44 zero
    differences along axes 1 and 2.  Sorted, the 84 values are 48 zeros, then 1 x4, 2 x4, 3 x4...;
    p50 (position 41.5) = 0 and p70 (position 58.1) = 3, so the weight along axis 0 is
    (3 - step) / 3 clipped: 1, 2/3, 1/3, 0, ... -- much stricter than per axis (p50 4.5, p70 6.3).
    """
    steps = np.arange(10, dtype=float)
    chi0 = np.broadcast_to(np.concatenate([[0.0], np.cumsum(steps)])[:, None, None], (11, 2, 2)).copy()
    mask = np.ones_like(chi0, bool)
    common = _mod("common")
    wg = common.edge_weights(chi0, mask, low_percentile=50, high_percentile=70)   # pooled by default
    np.testing.assert_allclose(wg[0][:, 0, 0], [1, 2 / 3, 1 / 3, 0, 0, 0, 0, 0, 0, 0], atol=1e-6)
    assert np.all(wg[1] == 1.0) and np.all(wg[2] == 1.0)
    per_axis = common.edge_weights(chi0, mask, pooled=False)
    assert not np.allclose(per_axis[0], wg[0])
    # the methods pool by default and switch with edge_pooling
    for name in ("inr_qsm", "inr_qsm_fast"):
        assert registry.get_method_class(name).parameters["edge_pooling"] == "pooled"
    with pytest.raises(ConfigError, match="edge_pooling"):
        registry.get_method("inr_qsm", edge_pooling="sideways")


def test_bad_edge_percentiles_are_rejected():
    with pytest.raises(ConfigError, match="percentiles"):
        _mod("common").edge_weights(np.zeros((3, 3, 3)), np.ones((3, 3, 3), bool), low_percentile=70,
                                    high_percentile=50)


# --------------------------------------------------------------------------- patches
def test_patch_tiling_covers_the_mask_and_keeps_brainy_patches():
    patches_mod = _mod("patches")
    assert patches_mod.axis_starts(20, 8, 3) == [0, 3, 6, 9, 12]  # 12 = 20 - 8: flush with the edge
    assert patches_mod.axis_starts(10, 16, 5) == [0]               # patch clipped to the axis
    _, mask, _, _ = _sphere_volume(shape=(30, 26, 20))
    mask = mask.copy()
    mask[0:2, 0:2, 0:2] = True   # a stray corner blob: only low-brain patches contain it
    patches = patches_mod.make_patches(mask, (12, 12, 9), stride_fraction=1 / 3, min_brain_fraction=0.3)
    cover = patches_mod.coverage(mask.shape, patches)
    assert np.all(cover[mask] >= 1)
    assert all(p.size == (12, 12, 9) for p in patches)
    assert all(s % 4 == 0 or s + 12 == 30 for p in patches for s in p.start[:1])   # stride 4 along axis 0
    low = [p for p in patches if p.brain_fraction < 0.3]
    assert 1 <= len(low) <= 2  # only what the corner blob needs is added back
    without = patches_mod.make_patches(mask, (12, 12, 9), ensure_coverage=False)
    assert all(p.brain_fraction >= 0.3 for p in without)
    assert np.any(patches_mod.coverage(mask.shape, without)[mask] == 0)
    # patches larger than the matrix are clipped to it: one patch, the whole volume
    whole = patches_mod.make_patches(mask, (96, 96, 48))
    assert len(whole) == 1 and whole[0].size == mask.shape


# --------------------------------------------------------------------------- phase compensation
def test_phase_compensation_targets_are_the_direct_full_volume_computation():
    inr, patches_mod, common = _mod("inr"), _mod("patches"), _mod("common")
    chi_true, mask, voxel, b0 = _sphere_volume()
    field = physics.forward_field(chi_true.astype(np.float64), voxel, b0, d0=0.0, pad_factor=2.0) * mask
    wg = common.edge_weights(chi_true, mask)
    prob = inr.Problem.build(field, mask, voxel, b0, wg, "cpu")
    patches = patches_mod.make_patches(mask, (12, 10, 8))
    assert len(patches) > 4
    chi_hat = (np.random.default_rng(1).normal(size=mask.shape) * 0.03 * mask).astype(np.float32)
    op_full = common.DipoleOperator(mask.shape, voxel, b0, d0=0.0, pad_factor=2.0)
    outside = inr.outside_fields(torch.from_numpy(chi_hat), patches, op_full)
    for patch, out in zip(patches, outside):
        target = inr.compensated_target(prob, patch, out).numpy()
        ind = np.zeros(mask.shape)
        ind[patch.slices] = 1.0
        direct = field - physics.forward_field(chi_hat * (1.0 - ind), voxel, b0, d0=0.0, pad_factor=2.0)
        np.testing.assert_allclose(target, direct[patch.slices].astype(np.float32), atol=2e-6)
        assert not np.allclose(target, field[patch.slices], atol=1e-4)   # it did change the target
    # with the true chi as estimate, the target is the field of the patch's own sources alone
    outside = inr.outside_fields(torch.from_numpy(chi_true), patches, op_full)
    for patch, out in zip(patches, outside):
        own = chi_true * 0
        own[patch.slices] = chi_true[patch.slices]
        expected = physics.forward_field(own.astype(np.float64), voxel, b0, d0=0.0, pad_factor=2.0)
        got = inr.compensated_target(prob, patch, out).numpy()
        m = mask[patch.slices]
        np.testing.assert_allclose(got[m], expected[patch.slices][m], atol=2e-6)
    # before any compensation the target is the measured field
    assert torch.equal(inr.compensated_target(prob, patches[0], None), prob.field[patches[0].slices])


def test_fit_uses_compensated_targets_only_when_switched_on(small_volume):
    cls = registry.get_method_class("inr_qsm")
    on = cls(seed=3, **{**TINY, "patch_size": [12, 12, 10]})
    off = cls(seed=3, **{**TINY, "patch_size": [12, 12, 10], "phase_compensation": False})
    assert len(_mod("patches").make_patches(small_volume.mask, (12, 12, 10), stride_fraction=1.0)) == 8
    a = on.reconstruct(small_volume.for_method())
    b = off.reconstruct(small_volume.for_method())
    assert [r["compensated"] for r in on.history] == [False, True, True]
    assert not any(r["compensated"] for r in off.history)
    # identical first epoch (same seed, same targets), then the targets differ
    assert on.history[0]["loss"] == off.history[0]["loss"]
    assert not np.allclose(a, b)


# --------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("min_steps", [0, 3, 4, 12])
def test_min_steps_adds_epochs_when_there_are_few_patches(small_volume, min_steps):
    """epochs x patches per epoch below min_steps: the epoch count rises to reach it (never falls);
    the learning rate still decays from lr_start to lr_end over the epochs."""
    vol = small_volume.for_method()
    m = registry.get_method("inr_qsm", seed=0, **{**TINY, "epochs": 3, "min_steps": min_steps,
                                                  "patch_size": [24, 24, 20], "hidden_features": 8,
                                                  "phase_compensation": False})
    m.reconstruct(vol)
    assert m.n_patches == 1   # one patch: one optimiser step per epoch
    assert len(m.history) == max(3, min_steps)
    lrs = [r["lr"] for r in m.history]
    assert lrs[0] == pytest.approx(TINY["lr_start"]) and lrs[-1] == pytest.approx(TINY["lr_end"])


def test_quick_profile_asks_for_the_steps_it_was_tuned_with():
    """27 patches x 20 epochs on the 80 x 96 x 80 tuning phantoms (see INRQSM.tuned_on)."""
    p = registry.get_method_class("inr_qsm").resolve_parameters(profile="quick")
    assert p["min_steps"] == 27 * p["epochs"] == 540
    assert registry.get_method_class("inr_qsm").resolve_parameters()["min_steps"] == 0   # paper: off


def test_inr_qsm_loss_decreases_and_output_is_chi_in_ppm(small_volume):
    vol = small_volume.for_method()
    m = registry.get_method("inr_qsm", seed=0, **{**TINY, "epochs": 8, "phase_compensation": False})
    chi = m.reconstruct(vol)
    losses = [r["loss"] for r in m.history]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert chi.shape == vol.shape and chi.dtype == np.float32
    assert np.all(chi[~vol.mask] == 0)
    truth = small_volume.references["chi"][vol.mask]
    assert np.corrcoef(chi[vol.mask], truth)[0, 1] > 0.5
    scale = np.dot(chi[vol.mask], truth) / np.dot(truth, truth)
    assert 0.3 < scale < 3.0


def test_inr_qsm_fast_loss_decreases_and_output_is_chi_in_ppm(small_volume):
    vol = small_volume.for_method()
    m = registry.get_method("inr_qsm_fast", seed=0, **TINY_FAST)
    chi = m.reconstruct(vol)
    data = [r["data"] for r in m.history]
    assert len(data) == 20 and data[-1] < 0.5 * data[0]
    assert chi.shape == vol.shape and np.all(chi[~vol.mask] == 0)
    truth = small_volume.references["chi"][vol.mask]
    assert np.corrcoef(chi[vol.mask], truth)[0, 1] > 0.5


def test_fast_stops_early_on_a_plateau():
    fast = _mod("fast")
    assert fast.plateaued([5, 4, 3, 2, 2, 2, 2], window=3, tol=0.01)
    assert not fast.plateaued([5, 4, 3, 2, 1.5, 1.2, 1.0], window=3, tol=0.01)
    assert not fast.plateaued([2, 2, 2], window=3, tol=0.01)   # too short to judge
    # the optional coarse-to-fine schedule: coarse level first, all levels on at the end
    assert fast.level_weights(0, 8, 4).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert fast.level_weights(4, 8, 4).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert fast.level_weights(8, 8, 4) is None and fast.level_weights(3, 0, 4) is None
    m = registry.get_method("inr_qsm_fast", seed=0, **{**TINY_FAST, "max_steps": 200, "min_steps": 5,
                                                        "plateau_window": 5, "plateau_tol": 0.2})
    m.reconstruct(contract_volume().for_method())
    assert m.steps < 200 and "stopped early" in m.notes[-1]


def test_chunked_backward_gives_the_same_gradient(small_volume):
    fast, init = _mod("fast"), importlib.import_module(_pkg("inr_qsm_fast"))
    m = registry.get_method("inr_qsm_fast", seed=0, **TINY_FAST)
    prob = init._problem(m, small_volume.for_method())
    op = fast.DipoleOperator(prob.shape, prob.voxel_size_mm, prob.b0_dir, d0=0.0, pad_factor=2.0)
    loss_fn = fast.FullVolumeLoss(prob, op, 1.0, 1.0)
    pts = prob.coords[prob.mask]
    grads = []
    for chunk in (10**9, 257):
        net = fast.build_grid_inr(prob.shape, prob.voxel_size_mm, m.params, seed=0)
        with torch.no_grad():
            for g in net.grids:
                g.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        loss, _ = fast.loss_and_backward(net, pts, prob.mask, loss_fn, chunk)
        grads.append((loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()])))
    assert np.isclose(grads[0][0], grads[1][0], rtol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name,params", [("inr_qsm", TINY), ("inr_qsm_fast", TINY_FAST)])
def test_deterministic_with_a_fixed_seed(name, params, small_volume):
    vol = small_volume.for_method()
    a = registry.get_method(name, seed=11, **params).reconstruct(vol)
    b = registry.get_method(name, seed=11, **params).reconstruct(vol)
    c = registry.get_method(name, seed=12, **params).reconstruct(vol)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_missing_chi0_method_falls_back_to_tkd(small_volume):
    m = registry.get_method("inr_qsm_fast", seed=0, **{**TINY_FAST, "chi0_method": "no_such_method",
                                                       "max_steps": 2, "min_steps": 2})
    m.reconstruct(small_volume.for_method())
    assert any("no_such_method" in n and "TKD" in n for n in m.notes)


def test_mixed_precision_is_only_used_on_cuda():
    common = _mod("common")
    assert common.amp_settings(torch.device("cpu"), True, "float16") == (False, torch.float16)
    with pytest.raises(ConfigError, match="amp_dtype"):
        common.amp_settings(torch.device("cpu"), True, "float8")


def test_siren_under_autocast_keeps_sine_arguments_in_float32():
    # the CUDA code path, exercised with CPU autocast (bfloat16): same function to bf16 accuracy
    net = _mod("inr").build_siren({"hidden_features": 32, "sine_layers": 3, "w0_first": 40.0, "w0_hidden": 40.0,
                                   "w0_last": 40.0, "output_scale": 1.0}, seed=0)
    x = torch.rand(500, 3) * 2 - 1
    ref = net(x)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = net(x)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


# --------------------------------------------------------------------------- warm start
def test_warm_start_cache_round_trips(tmp_path, monkeypatch, small_volume):
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    params = {**TINY, "warm_start": "phantom", "warm_start_shape": [20, 20, 16], "warm_start_epochs": 1,
              "warm_start_phantoms": 2, "cache_dir": str(tmp_path), "epochs": 1}
    first = registry.get_method("inr_qsm", seed=5, **params)
    first.prepare([])
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and first.warm_start_file == files[0]
    assert "fitted on phantom" in first.notes[-1] and loads == []
    # what it was fitted to: two phantoms of the reserved training range, recorded for run.json
    on = first.trained_on
    assert on["seeds"] == seeds.draw("train", 2, "inr_qsm") and all(seeds.role_of(x) == "train" for x in on["seeds"])
    assert on["phantom_model"] == "mni" and on["phantom_version"] and on["shapes"] == [[20, 20, 16]]
    assert on["lr"] == [params.get("warm_start_lr_start", 1e-4), params.get("warm_start_lr_end", 1e-5)]
    # another job (seed), another number of epochs or fine-tuning rate: the same warm start
    second = registry.get_method("inr_qsm", seed=6, **{**params, "epochs": 2, "lr_start": 5e-4})
    second.prepare([])
    assert "loaded from cache" in second.notes[-1] and loads == [True]
    assert second.warm_start_file == first.warm_start_file and second.trained_on == on
    assert first.init_state.keys() == second.init_state.keys()
    for k in first.init_state:
        assert torch.equal(first.init_state[k], second.init_state[k])
    # the warm-started fit starts from the cached weights and compensates at epoch 0
    second.reconstruct(small_volume.for_method())
    assert second.history[0]["compensated"] and "warm start" in second.notes[-1]
    # another configuration of the weights -> another cache entry
    third = registry.get_method("inr_qsm", seed=5, **{**params, "lambda_smooth": 0.3})
    third.prepare([])
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # the switch: no warm start, no weights, nothing trained on
    off = registry.get_method("inr_qsm", seed=5, **{**params, "warm_start": "none"})
    off.prepare([])
    assert off.init_state is None and off.trained_on is None
    # fitting on the training volumes needs some
    with pytest.raises(ConfigError, match="training volume"):
        registry.get_method("inr_qsm", **{**params, "warm_start": "train"}).prepare([])
    trained = registry.get_method("inr_qsm", **{**params, "warm_start": "train"})
    trained.prepare([small_volume])
    assert "fitted on train" in trained.notes[-1] and trained.trained_on["volumes"][0]["name"] == small_volume.name


def test_warm_start_cache_key_changes_with_the_code_version(monkeypatch):
    pkg = importlib.import_module(_pkg())
    m = registry.get_method("inr_qsm", **{**TINY, "warm_start": "phantom", "warm_start_shape": [20, 20, 16]})
    source = m.warm_start_source([])
    key = m.warm_start_key(source)
    assert m.warm_start_key(source) == key                   # deterministic
    monkeypatch.setattr(pkg, "WARM_START_CODE_VERSION", pkg.WARM_START_CODE_VERSION + "-next")
    assert m.warm_start_key(source) != key
    monkeypatch.undo()
    other = registry.get_method("inr_qsm", **{**TINY, "warm_start": "phantom", "warm_start_shape": [20, 20, 16],
                                              "warm_start_lr_start": 3e-4})
    assert other.warm_start_key(other.warm_start_source([])) != key   # the warm start's own rate counts


def test_paper_profile_warm_starts_at_a_higher_rate_than_it_fine_tunes():
    p = registry.get_method_class("inr_qsm").resolve_parameters(profile="paper")
    assert p["warm_start"] == "phantom" and p["warm_start_lr_start"] > p["warm_start_lr_end"] >= p["lr_start"]
    assert p["lr_start"] == 1e-5 and p["lr_end"] == 2e-7 and p["epochs"] == 50
    assert registry.get_method_class("inr_qsm").resolve_parameters(profile="quick")["warm_start"] == "none"


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="warm_start"):
        registry.get_method("inr_qsm", warm_start="yesterday")
    with pytest.raises(ConfigError, match="patch_size"):
        registry.get_method("inr_qsm", **{**TINY, "patch_size": [16, 16]}).reconstruct(contract_volume().for_method())


def test_the_package_imports_without_torch():
    # the registry imports methods/inr_qsm/__init__.py; torch must load only when a method runs
    import subprocess
    import sys

    path = registry.BUILTIN_METHODS_DIR / "inr_qsm"
    code = ("import sys; from qsmbench.registry import load_module_from_file, classes_in_module; "
            f"m = load_module_from_file({str(path)!r}); "
            "print(sorted(c.name for c in classes_in_module(m)), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['inr_qsm',", "'inr_qsm_fast']", "False"]
    for name in ("inr_qsm", "inr_qsm_fast"):
        cls = registry.get_method_class(name)
        assert cls.requirements == ["torch"] and "gpu" in cls.uses


# --------------------------------------------------------------------------- the losses against numpy
class _Analytic(torch.nn.Module):
    """A coordinate 'network' with a closed form, evaluated identically in numpy (its one
    parameter, an amplitude of 1, gives Adam something to step)."""

    def __init__(self):
        super().__init__()
        self.amp = torch.nn.Parameter(torch.ones(()))

    def forward(self, c):
        return self.amp * (0.05 * torch.sin(5 * c[:, 0]) * torch.cos(3 * c[:, 1]) + 0.02 * c[:, 2] + 0.01)

    @staticmethod
    def numpy(c):
        return 0.05 * np.sin(5 * c[..., 0]) * np.cos(3 * c[..., 1]) + 0.02 * c[..., 2] + 0.01


def _np_dipole(x, voxel, pad_factor=2.0):
    """Zero-padded full-spectrum FFT convolution with D (B0 along z, D(0) = 0), cropped back."""
    pshape = physics.padded_shape(x.shape, pad_factor)
    d = physics.dipole_kernel(pshape, voxel, (0.0, 0.0, 1.0), d0=0.0)
    y = np.fft.ifftn(d * np.fft.fftn(x, s=pshape, axes=(0, 1, 2))).real
    return y[: x.shape[0], : x.shape[1], : x.shape[2]]


def _np_terms(chi, phi, target, m, wg, n, norm):
    """The three INR-QSM terms, written out in numpy (sums over voxels / (n * norm))."""
    data = np.sum((m * (phi - target)) ** 2) / n / norm
    smooth = sum(np.sum((wg[a] * np.diff(chi, axis=a)) ** 2) for a in range(3)) / n / norm
    grad = sum(np.sum((wg[a] * (np.diff(phi, axis=a) - np.diff(target, axis=a))) ** 2) for a in range(3)) / n / norm
    return data, smooth, grad


def _loss_problem(seed=0):
    rng = np.random.default_rng(seed)
    shape, voxel = (14, 12, 10), (1.0, 1.2, 1.5)
    grid = np.meshgrid(*[np.arange(k) - (k - 1) / 2 for k in shape], indexing="ij")
    mask = sum((g / (0.45 * k)) ** 2 for g, k in zip(grid, shape)) <= 1.0
    field = (rng.normal(size=shape) * 0.03 * mask).astype(np.float32)
    # random edge weights in [0, 1] (not symmetric under w -> 1 - w), zero outside the mask pairs
    pairs = _mod("common").pair_masks(mask)
    wg = [(rng.random(p.shape) * p).astype(np.float32) for p in pairs]
    prob = _mod("inr").Problem.build(field, mask, voxel, (0.0, 0.0, 1.0), wg, "cpu")
    return prob, field, mask, voxel, wg


def test_inr_qsm_patch_terms_match_an_independent_numpy_computation():
    """Data, L2 edge-weighted smoothness and gradient consistency of one patch (and the total
    with the lambdas), against numpy: dropping a term, flipping a sign or inverting the edge
    weights fails."""
    inr, patches_mod, common = _mod("inr"), _mod("patches"), _mod("common")
    prob, field, mask, voxel, wg = _loss_problem()
    patch = patches_mod.Patch((2, 1, 1), (10, 9, 8), 0.0)
    sl = patch.slices
    rng = np.random.default_rng(1)
    target = (field[sl] + rng.normal(size=patch.size) * 0.01 * mask[sl]).astype(np.float32)
    op = common.DipoleOperator(patch.size, voxel, (0.0, 0.0, 1.0), d0=0.0, pad_factor=2.0)
    norm = inr.loss_normaliser(prob, True)
    assert norm == pytest.approx(float(np.mean(field[mask].astype(np.float64) ** 2)), rel=1e-6)
    assert inr.loss_normaliser(prob, False) == 1.0
    data, smooth, grad = inr.patch_terms(_Analytic(), prob, patch, torch.from_numpy(target), op, mask_chi=True,
                                         norm=norm)
    coords = common.normalised_coords(mask.shape, voxel)[sl]
    chi = _Analytic.numpy(coords.astype(np.float64)) * mask[sl]
    phi = _np_dipole(chi, voxel)
    wg_p = [wg[a][inr.diff_slices(patch, a)] for a in range(3)]
    ref = _np_terms(chi, phi, target, mask[sl], wg_p, np.prod(patch.size), norm)
    for got, want in zip((data, smooth, grad), ref):
        assert got.item() == pytest.approx(want, rel=2e-4)
        assert want > 1e-3                       # every term is alive in this example
    # the total of a training step: data + lambda_s * smooth + lambda_g * grad
    net = _Analytic()
    opt = torch.optim.Adam(net.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    sums = inr.train_step(net, opt, scaler, prob, [patch], [torch.from_numpy(field[sl] - target)], op, 0.15, 1.0,
                          mask_chi=True, norm=norm)
    # the compensated target is R_p[f] - outside = target
    np.testing.assert_allclose(sums[1:], ref, rtol=2e-4)
    assert sums[0] == pytest.approx(ref[0] + 0.15 * ref[1] + 1.0 * ref[2], rel=2e-4)


def test_inr_qsm_fast_terms_match_an_independent_numpy_computation():
    fast = _mod("fast")
    prob, field, mask, voxel, wg = _loss_problem(seed=2)
    op = fast.DipoleOperator(mask.shape, voxel, (0.0, 0.0, 1.0), d0=0.0, pad_factor=2.0)
    loss_fn = fast.FullVolumeLoss(prob, op, 0.15, 0.3)
    coords = _mod("common").normalised_coords(mask.shape, voxel).astype(np.float64)
    chi = _Analytic.numpy(coords) * mask
    loss, terms = loss_fn(torch.from_numpy(chi.astype(np.float32)))
    phi = _np_dipole(chi, voxel)
    norm = float(np.sum(mask * field.astype(np.float64) ** 2))   # sum(m f^2): the fast variant's scale
    ref = _np_terms(chi, phi, field * mask, mask, wg, 1.0, norm)
    for got, want in zip(terms, ref):
        assert got.item() == pytest.approx(want, rel=2e-4) and want > 1e-3
    assert loss.item() == pytest.approx(ref[0] + 0.15 * ref[1] + 0.3 * ref[2], rel=2e-4)


def test_siren_output_bias_starts_at_zero():
    p = {"hidden_features": 64, "sine_layers": 3, "w0_first": 30.0, "w0_hidden": 30.0, "w0_last": 30.0,
         "output_scale": 1.0}
    inr = _mod("inr")
    x = torch.rand(4000, 3) * 2 - 1
    means, legacy_means = [], []
    for seed in range(8):
        net = inr.build_siren(p, seed=seed)
        legacy = inr.build_siren({**p, "zero_output_bias": False}, seed=seed)
        assert torch.count_nonzero(net.out.bias) == 0
        with torch.no_grad():
            start, old = net(x), legacy(x)
        # the same network but for the output bias (PyTorch's default: uniform in +-1/sqrt(64))
        torch.testing.assert_close(start, old - legacy.out.bias, rtol=0, atol=1e-6)
        means.append(float(start.mean()))
        legacy_means.append(float(old.mean()))
    # a fresh network starts near chi = 0 rather than at a random constant of up to 0.125 ppm
    assert np.sqrt(np.mean(np.square(means))) < 0.03 < np.sqrt(np.mean(np.square(legacy_means)))
    assert registry.get_method_class("inr_qsm").parameters["zero_output_bias"] is True


def test_overlapping_patches_of_the_quick_profile_cover_the_mask():
    """The quick profile's patches overlap (stride < size along every axis) and together cover
    every mask voxel of a default-run-sized head; no patch is a lone octant."""
    from qsmbench.phantom import make_phantom

    p = registry.get_method_class("inr_qsm").resolve_parameters(profile="quick")
    vol = make_phantom((80, 96, 80), (2.0, 2.0, 2.0), seed=0, oversample=1)
    patches_mod = _mod("patches")
    patches = patches_mod.make_patches(vol.mask, p["patch_size"], stride_fraction=p["patch_stride_fraction"],
                                       min_brain_fraction=p["min_brain_fraction"])
    cover = patches_mod.coverage(vol.shape, patches)
    assert np.all(cover[vol.mask] >= 1)
    assert len(patches) > 8
    for axis in range(3):
        starts = sorted({q.start[axis] for q in patches})
        assert max(np.diff(starts)) < patches[0].size[axis]          # neighbours overlap
    # most brain voxels are seen by several patches (the field near a patch edge is fitted in
    # another patch where that voxel is interior)
    assert np.mean(cover[vol.mask] >= 2) > 0.8


def test_warm_start_phantoms_are_of_the_model_asked_for(tmp_path, monkeypatch):
    """The warm start builds its phantoms with ``model=warm_start_model`` (default "mni")."""
    from qsmbench import phantom

    class Stop(Exception):
        pass

    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("model"))
        raise Stop

    monkeypatch.setattr(phantom, "make_phantom", spy)
    cls = registry.get_method_class("inr_qsm")
    assert cls.parameters["warm_start_model"] == "mni"
    params = {**TINY, "warm_start": "phantom", "warm_start_shape": [20, 20, 16], "cache_dir": str(tmp_path)}
    for model in ("analytic", "mni"):
        with pytest.raises(Stop):
            registry.get_method("inr_qsm", **params, warm_start_model=model).prepare([])
    assert asked == ["analytic", "mni"]
    keys = set()
    for model in ("analytic", "mni"):
        m = registry.get_method("inr_qsm", **params, warm_start_model=model)
        keys.add(m.warm_start_key(m.warm_start_source([])))
    assert len(keys) == 2
    with pytest.raises(ConfigError, match="warm_start_model"):
        registry.get_method("inr_qsm", warm_start_model="brainweb")
