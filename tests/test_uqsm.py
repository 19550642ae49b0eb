"""uQSM: the unsupervised loss, scaling/units, the weights cache, inference and determinism.

Tiny settings on CPU; every test uses its own temporary cache ($QSMBENCH_CACHE), never the
user's.
"""

import importlib

import numpy as np
import pytest

from qsmbench import physics, registry, seeds
from qsmbench.contract import contract_volume
from qsmbench.physics import dipole_kernel, ppm_to_rad

torch = pytest.importorskip("torch")

TINY = {"width": 2, "levels": 3, "patch_size": 16, "batch_size": 1, "epochs": 2, "steps_per_epoch": 2,
        "lr": 1e-3, "train_phantoms": 1, "train_shape_min": 24, "train_shape_max": 28, "train_oversample": 1}


@pytest.fixture
def uqsm(tmp_path, monkeypatch):
    """(method class, its package, its torch engine) with a private, empty weights cache."""
    monkeypatch.setenv("QSMBENCH_CACHE", str(tmp_path / "cache"))
    cls = registry.get_method_class("uqsm")
    pkg = importlib.import_module(cls.__module__)
    engine = importlib.import_module(cls.__module__ + "._engine")
    pkg._MEMORY.clear()
    yield cls, pkg, engine
    pkg._MEMORY.clear()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(cls, seed=0, **kw):
    return cls(profile="quick", seed=seed, device="cpu", **{**TINY, **kw})


# --------------------------------------------------------------------------- loss and units
def test_data_term_is_zero_for_a_chi_whose_field_equals_the_input(uqsm):
    _, _, engine = uqsm
    rng = np.random.default_rng(0)
    # odd sizes: with an oblique B0, full and half-spectrum FFTs differ on even Nyquist planes
    shape, voxel, b0 = (15, 17, 13), (1.0, 1.2, 0.9), (0.2, 0.1, 1.0)
    b0_t, te = 7.0, 0.012
    field_scale, kernel_scale = 100.0, 3.0
    chi_ppm = rng.normal(size=shape) * 0.05
    grid = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    mask = sum(g**2 for g in grid) < 6.0**2
    # the measured field of the masked chi on the patch grid (circular, D(0) = 0), in numpy;
    # chi outside the mask is not a source of the local field (the model masks o too)
    d = dipole_kernel(shape, voxel, b0, d0=0.0)
    field_ppm = np.fft.ifftn(d * np.fft.fftn(chi_ppm * mask)).real
    phase = torch.tensor(ppm_to_rad(field_ppm, b0_t, te), dtype=torch.float32)[None, None]
    # the network output that represents chi: o = 100 chi / 3
    o = torch.tensor(chi_ppm * field_scale / kernel_scale, dtype=torch.float32)[None, None]
    kernel = engine.patch_kernel(shape, voxel, b0, kernel_scale)
    rad_per_unit = torch.tensor([ppm_to_rad(1.0, b0_t, te) / field_scale])
    m = torch.tensor(mask, dtype=torch.float32)[None, None]
    w = torch.ones_like(o)  # the phase must match everywhere, outside the mask too
    assert engine.data_term(o, phase, w, m, kernel, rad_per_unit).item() < 1e-9
    # and clearly positive for another chi
    assert engine.data_term(0.5 * o, phase, w, m, kernel, rad_per_unit).item() > 1e-3


def test_data_term_of_a_constant_phase_offset_is_two_minus_two_cos(uqsm):
    _, _, engine = uqsm
    shape = (8, 8, 8)
    o = torch.zeros((1, 1, *shape))
    kernel = engine.patch_kernel(shape, (1, 1, 1), (0, 0, 1), 3.0)
    delta = 0.7
    phase = torch.full_like(o, delta)
    w = torch.full_like(o, 0.5)
    value = engine.data_term(o, phase, w, torch.ones_like(o), kernel, torch.tensor([0.2])).item()
    assert value == pytest.approx(0.25 * (2 - 2 * np.cos(delta)), rel=1e-6)


def test_total_variation_of_a_ramp(uqsm):
    _, _, engine = uqsm
    n = (6, 5, 4)
    ramp = torch.arange(n[0], dtype=torch.float32).view(1, 1, n[0], 1, 1).expand(1, 1, *n) * 0.3
    # forward differences: 0.3 on (n0 - 1) * n1 * n2 voxel pairs along axis 0, zero elsewhere
    assert engine.total_variation(ramp).item() == pytest.approx(0.3 * 5 * 5 * 4 / (6 * 5 * 4))


def test_magnitude_weight_is_normalised_inside_the_mask(uqsm):
    _, _, engine = uqsm
    mag = np.array([[[1.0, 4.0, 9.0]]])
    mask = np.array([[[True, True, False]]])
    np.testing.assert_allclose(engine.magnitude_weight(mag, mask), [[[0.25, 1.0, 0.0]]])
    np.testing.assert_array_equal(engine.magnitude_weight(None, mask), mask.astype(np.float32))


def test_patches_hold_more_than_half_brain(uqsm):
    _, _, engine = uqsm
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5:15, 5:15] = True  # 1000 voxels; an 8^3 patch (512) > 50 % brain near the centre
    corners, frac = engine.patch_corners(mask, 8, 0.5)
    assert frac > 0.5 and len(corners)
    for c in corners:
        box = tuple(slice(int(i), int(i) + 8) for i in c)
        assert mask[box].mean() > 0.5
    # brute force: every position above 50 % is listed
    n_ok = sum(mask[i:i + 8, j:j + 8, k:k + 8].mean() > 0.5
               for i in range(13) for j in range(13) for k in range(13))
    assert n_ok == len(corners)


def test_loss_decreases_over_a_few_steps(uqsm):
    cls, _, engine = uqsm
    m = tiny(cls)
    p = m.params
    volumes = m._training_volumes([])
    torch.manual_seed(0)
    net = engine.build_net(p)
    sampler = engine.PatchSampler(volumes, p["patch_size"], p["field_scale"], p["kernel_scale"],
                                  np.random.default_rng(0))
    batch = sampler.batch(2, "cpu")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, _, _ = engine.loss_terms(net, batch, p["tv_weight"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# --------------------------------------------------------------------------- inference
class _Identity(torch.nn.Module):
    multiple = 16

    def forward(self, x):
        assert all(n % 16 == 0 for n in x.shape[-3:])
        return x


def test_inference_scaling_shape_and_mask(uqsm):
    """With an identity network, chi = kernel_scale * (field_scale * f) / field_scale = 3 f in the mask."""
    cls, _, _ = uqsm
    m = tiny(cls)
    m._net = _Identity()
    vol = contract_volume()  # 24 x 24 x 20: padded to 32^3 and cropped back
    chi = m.reconstruct(vol.for_method())
    assert chi.shape == vol.shape and chi.dtype == np.float32
    np.testing.assert_allclose(chi, 3.0 * vol.field_ppm * vol.mask, rtol=1e-6, atol=1e-9)
    assert not chi[~vol.mask].any()


@pytest.mark.parametrize("which", ["uqsm", "qsmnet"])
def test_networks_run_channels_last_on_a_cpu_with_the_same_output(uqsm, which):
    """on_device lays the convolution weights out channels-last on a CPU (the speed-up measured in
    its docstring); the network computes the same function, to float rounding."""
    cls = registry.get_method_class(which)
    engine = importlib.import_module(cls.__module__ + "._engine")
    p = cls.resolve_parameters(profile="quick")
    torch.manual_seed(3)
    plain = engine.build_net(p).eval()
    moved = engine.on_device(engine.build_net(p), "cpu").eval()
    moved.load_state_dict(plain.state_dict())
    convs = [m for m in moved.modules() if isinstance(m, torch.nn.Conv3d)]
    # (with one input channel or a 1x1x1 kernel both layouts are the same strides)
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)
    assert all(not m.weight.is_contiguous() for m in convs if m.in_channels > 1 and m.kernel_size != (1, 1, 1))
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        a, b = plain(x), moved(x)
    assert a.shape == b.shape == x.shape
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_b0_axis_permutation_moves_b0_last_and_back(uqsm):
    _, pkg, _ = uqsm
    assert pkg.b0_axis_permutation((0, 0, 1)) == (0, 1, 2)
    assert pkg.b0_axis_permutation((0.9, 0.1, 0.3)) == (1, 2, 0)
    assert pkg.b0_axis_permutation((0.1, -0.9, 0.3)) == (0, 2, 1)
    x = np.arange(24).reshape(2, 3, 4)
    perm = pkg.b0_axis_permutation((1, 0, 0))
    assert np.transpose(x, perm).shape == (3, 4, 2)
    np.testing.assert_array_equal(np.transpose(np.transpose(x, perm), np.argsort(perm)), x)


def test_trained_reconstruction_is_masked_finite_ppm(uqsm):
    cls, _, _ = uqsm
    m = tiny(cls)
    m.prepare([])
    vol = contract_volume()
    chi = m.reconstruct(vol.for_method())
    assert chi.shape == vol.shape and np.all(np.isfinite(chi))
    assert not chi[~vol.mask].any()
    assert np.abs(chi).max() < 10.0  # ppm, not ppb or network units


# --------------------------------------------------------------------------- cache and determinism
def test_cache_is_reused_on_a_second_prepare(uqsm, monkeypatch):
    cls, pkg, engine = uqsm
    first = tiny(cls)
    first.prepare([])
    assert first.training_record["trained"]
    path = first.weights_path()
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert str(path).startswith(str(pkg.cache_dir()))

    pkg._MEMORY.clear()  # force the disk cache

    def no_training(*a, **k):
        raise AssertionError("trained again although the weights are cached")

    monkeypatch.setattr(engine, "train", no_training)
    second = tiny(cls, seed=123)  # another job seed: same training configuration
    second.prepare([])
    assert not second.training_record["trained"]
    assert any("from the cache" in n for n in second.notes)
    vol = contract_volume().for_method()
    np.testing.assert_array_equal(first.reconstruct(vol), second.reconstruct(vol))


def test_training_configuration_changes_the_cache_key(uqsm):
    cls, _, _ = uqsm
    base = tiny(cls).weights_path()
    assert tiny(cls, seed=5).weights_path() == base  # the job seed does not matter
    assert tiny(cls, train_seed=1).weights_path() != base
    assert tiny(cls, width=3).weights_path() != base
    assert tiny(cls, phase_scale=100.0).weights_path() != base
    vol = contract_volume()
    assert tiny(cls).weights_path([vol]) != base  # volumes given to prepare() count


def test_cache_key_changes_with_the_training_code_version(uqsm, monkeypatch):
    cls, pkg, _ = uqsm
    base = tiny(cls).weights_path()
    monkeypatch.setattr(pkg, "TRAINING_CODE_VERSION", pkg.TRAINING_CODE_VERSION + "-next")
    assert tiny(cls).weights_path() != base


def test_unreadable_cache_file_is_retrained(uqsm):
    cls, pkg, _ = uqsm
    m = tiny(cls)
    path = m.weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    m.prepare([])
    assert m.training_record["trained"]
    assert any("unreadable" in n for n in m.notes)
    pkg._MEMORY.clear()
    again = tiny(cls)
    again.prepare([])
    assert not again.training_record["trained"]


def test_deterministic_with_a_fixed_seed(uqsm):
    cls, _, _ = uqsm
    vol = contract_volume().for_method()
    outs = []
    for _ in range(2):
        m = tiny(cls, cache=False)
        m.prepare([])
        assert m.training_record["trained"]
        outs.append(m.reconstruct(vol))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_training_phantoms_use_reserved_training_seeds(uqsm):
    cls, _, _ = uqsm
    specs = tiny(cls, train_phantoms=20, train_max_tilt_deg=20.0).phantom_specs()
    assert len({s["seed"] for s in specs}) == 20
    assert all(seeds.role_of(s["seed"]) == "train" for s in specs)
    assert [s["seed"] for s in specs] == seeds.draw("train", 20, "uqsm")
    assert [s["seed"] for s in tiny(cls, train_phantoms=3, train_seed=7).phantom_specs()] == \
        seeds.draw("train", 3, "uqsm-7")
    tilts = [np.degrees(np.arccos(abs(s["b0_dir"][2]))) for s in specs]
    assert max(tilts) <= 20.0 + 1e-9 and max(tilts) > 1.0
    assert all(24 <= n <= 28 for s in specs for n in s["shape"])


def test_bad_parameters_are_config_errors(uqsm):
    cls, _, _ = uqsm
    from qsmbench.errors import ConfigError

    with pytest.raises(ConfigError, match="patch_size"):
        tiny(cls, patch_size=18)  # levels 3: multiples of 4
    with pytest.raises(ConfigError, match="train_voxel_size_mm"):
        tiny(cls, train_voxel_size_mm=[1.0, 0.0, 1.0])
    with pytest.raises(ConfigError, match="train_voxel_size_mm"):
        tiny(cls, train_voxel_size_mm=[[1.0, 1.0, 1.0], [2.0, 2.0]])


def test_training_voxel_sizes_cycle_over_the_phantoms(uqsm):
    """One triple: every phantom; a list of triples: phantom i takes entry i mod n (recorded)."""
    cls, _, _ = uqsm
    one = tiny(cls, train_phantoms=3, train_voxel_size_mm=[1.5, 1.5, 2.0])
    assert [s["voxel_size_mm"] for s in one.phantom_specs()] == [[1.5, 1.5, 2.0]] * 3
    mixed = tiny(cls, train_phantoms=5, train_voxel_size_mm=[[1, 1, 1], [2, 2, 2]])
    assert [s["voxel_size_mm"][0] for s in mixed.phantom_specs()] == [1.0, 2.0, 1.0, 2.0, 1.0]
    assert mixed.describe_training()["voxel_size_mm"] == [[1.0] * 3, [2.0] * 3, [1.0] * 3, [2.0] * 3, [1.0] * 3]
    # the sizes are part of the cache key
    assert one.training_config()["params"]["train_voxel_size_mm"] != \
        tiny(cls, train_phantoms=3, train_voxel_size_mm=[[1.5, 1.5, 2.0], [2, 2, 2]]).training_config()["params"][
            "train_voxel_size_mm"]


# --------------------------------------------------------------------------- the loss against numpy
class _Fixed(torch.nn.Module):
    """A 'network' whose output is a given array (it records its input)."""

    def __init__(self, o):
        super().__init__()
        self.o = torch.tensor(o, dtype=torch.float32)[None, None]
        self.seen = None

    def forward(self, x):
        self.seen = x
        return self.o.expand(x.shape[0], 1, *self.o.shape[-3:])


def _numpy_loss(o, field_ppm, mask, magnitude, voxel, b0, rad_per_ppm, tv_weight, field_scale=100.0,
                kernel_scale=3.0):
    """uQSM's loss computed independently: complex exponentials, full-spectrum FFT, np.diff TV."""
    m = mask.astype(float)
    w = m * magnitude / magnitude[mask].max()
    d = dipole_kernel(o.shape, voxel, b0, d0=0.0)
    # o is chi in network units: chi_ppm = kernel_scale * o / field_scale
    model_ppm = np.fft.ifftn(d * np.fft.fftn(kernel_scale * m * o)).real / field_scale
    residual = np.exp(1j * rad_per_ppm * field_ppm * m) - np.exp(1j * rad_per_ppm * model_ppm)
    data = np.mean(np.abs(w * residual) ** 2)
    tv = sum(np.abs(np.diff(m * o, axis=a)).sum() for a in range(3)) / o.size
    return data + tv_weight * tv, data, tv


@pytest.mark.parametrize("phase_scale", [None, 100.0])
def test_loss_terms_match_an_independent_numpy_computation(uqsm, phase_scale):
    """Data term and TV of one whole-volume patch, through the training path (sampler, scaling),
    against numpy: dropping a term, flipping a sign, masking differently or scaling the phase
    otherwise fails."""
    _, _, engine = uqsm
    rng = np.random.default_rng(3)
    # odd size: with an oblique B0 the half-spectrum kernel differs from the full one on even
    # Nyquist planes
    n, voxel, b0 = 15, (1.0, 1.0, 1.0), physics.unit_vector((0.0, 0.2, 1.0))
    b0_t, te = 3.0, 0.025
    grid = np.meshgrid(*[np.arange(n) - 7.0] * 3, indexing="ij")
    mask = sum(g**2 for g in grid) < 7.0**2   # ~ 84 % of the cube: the only patch has > 50 % brain
    chi_true = rng.normal(size=(n,) * 3) * 0.02
    field = np.fft.ifftn(dipole_kernel((n,) * 3, voxel, b0, d0=0.0) * np.fft.fftn(chi_true * mask)).real
    field = (field + rng.normal(size=field.shape) * 0.002) * mask
    magnitude = 0.5 + rng.random(field.shape)
    o = rng.normal(size=(n,) * 3) * 0.5 + 100.0 / 3.0 * chi_true   # near the truth, not at it
    tv_weight = 1e-3
    tvol, _ = engine.as_train_volume(field, mask, magnitude, voxel, b0, b0_t, te, patch=n, min_fraction=0.5,
                                     phase_scale=phase_scale)
    sampler = engine.PatchSampler([tvol], n, 100.0, 3.0, np.random.default_rng(0))
    batch = sampler.batch(1, "cpu")
    net = _Fixed(o)
    loss, data, tv = engine.loss_terms(net, batch, tv_weight)
    # the network sees 100 f inside the mask
    np.testing.assert_allclose(net.seen[0, 0].numpy(), 100.0 * field * mask, rtol=1e-5, atol=1e-6)
    s = ppm_to_rad(1.0, b0_t, te) if phase_scale is None else phase_scale
    ref_loss, ref_data, ref_tv = _numpy_loss(o, field, mask, magnitude, voxel, b0, s, tv_weight)
    assert data.item() == pytest.approx(ref_data, rel=2e-4)
    assert tv.item() == pytest.approx(ref_tv, rel=1e-5)
    assert loss.item() == pytest.approx(ref_loss, rel=2e-4)
    # each term is far above the tolerance, so dropping either would show
    assert min(ref_data, tv_weight * ref_tv) > 0.01 * ref_loss
    # TV of the *masked* output: values outside the mask do not count
    o_out = o + 50.0 * (~mask)
    _, _, tv_out = engine.loss_terms(_Fixed(o_out), batch, tv_weight)
    assert tv_out.item() == pytest.approx(ref_tv, rel=1e-5)


def test_the_loss_prefers_chi_to_minus_chi(uqsm):
    """The training objective's sign: on a phantom patch, the network output that represents the
    true chi has a far lower loss than its negative (a sign error anywhere in the data term would
    make uQSM learn -chi)."""
    cls, _, engine = uqsm
    from qsmbench.phantom import make_phantom

    vol = make_phantom((32, 32, 32), (1.5, 1.5, 1.5), seed=seeds.draw("train", 1, "test-uqsm-sign")[0])
    m = tiny(cls, patch_size=32)
    tvol, _ = engine.as_train_volume(vol.field_ppm, vol.mask, vol.magnitude, vol.voxel_size_mm, vol.b0_dir,
                                     vol.b0_tesla, vol.te_s, patch=32, min_fraction=0.3)
    batch = engine.PatchSampler([tvol], 32, 100.0, 3.0, np.random.default_rng(0)).batch(1, "cpu")
    o = vol.references["chi"] * 100.0 / 3.0
    plus = engine.loss_terms(_Fixed(o), batch, m.params["tv_weight"])[1].item()
    minus = engine.loss_terms(_Fixed(-o), batch, m.params["tv_weight"])[1].item()
    zero = engine.loss_terms(_Fixed(0 * o), batch, m.params["tv_weight"])[1].item()
    assert plus < 0.2 * zero < 0.2 * minus


# --------------------------------------------------------------------------- a quick-trained network
SMALL = {"width": 4, "levels": 3, "patch_size": 24, "batch_size": 1, "epochs": 2, "steps_per_epoch": 15,
         "lr": 3e-3, "train_phantoms": 2, "train_shape_min": 32, "train_shape_max": 36, "train_oversample": 1,
         "train_voxel_size_mm": [1.5, 1.5, 1.5]}


@pytest.fixture(scope="module")
def small_trained():
    """uQSM trained for a few seconds on training-range phantoms (weights in the test session's
    cache), and a test-range phantom it never saw."""
    from qsmbench.phantom import make_phantom

    cls = registry.get_method_class("uqsm")
    m = cls(profile="quick", seed=0, device="cpu", **SMALL)
    m.prepare([])
    vol = make_phantom((48, 48, 48), (1.5, 1.5, 1.5), seed=5)
    return m, vol


def _recovers_chi(chi, vol):
    """The sanity check a learned inversion must pass: positively correlated with the truth and
    of the right sign and order of magnitude (slope of chi on the truth)."""
    truth = vol.references["chi"][vol.mask]
    est = chi[vol.mask]
    r = np.corrcoef(est, truth)[0, 1]
    slope = np.dot(est, truth) / np.dot(truth, truth)
    return r > 0.5 and 0.2 < slope < 3.0, (r, slope)


def test_a_quick_trained_network_recovers_chi_and_records_its_training(small_trained):
    m, vol = small_trained
    chi = m.reconstruct(vol.for_method())
    ok, (r, slope) = _recovers_chi(chi, vol)
    assert ok, f"r = {r:.3f}, slope = {slope:.3f}"
    on = m.trained_on
    assert on["seeds"] == seeds.draw("train", 2, "uqsm") and all(seeds.role_of(s) == "train" for s in on["seeds"])
    assert on["phantom_model"] and on["phantom_version"] and len(on["shapes"]) == 2 and on["volumes"] == []


def test_a_network_that_learned_minus_chi_fails_the_check(small_trained):
    m, vol = small_trained
    flipped = registry.get_method_class("uqsm")(profile="quick", seed=0, device="cpu", **SMALL)
    flipped.prepare([])
    with torch.no_grad():  # the output layer is linear: negating it makes the network output -o
        flipped._net.out.weight.neg_()
        flipped._net.out.bias.neg_()
    chi = flipped.reconstruct(vol.for_method())
    np.testing.assert_allclose(chi, -m.reconstruct(vol.for_method()), rtol=1e-5, atol=1e-7)
    ok, (r, slope) = _recovers_chi(chi, vol)
    assert not ok and r < 0 and slope < 0


def test_training_shows_progress_in_the_log(uqsm, caplog, monkeypatch):
    cls, _, _ = uqsm
    import logging

    from qsmbench import progress

    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO):
        tiny(cls, cache=False).prepare([])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("uqsm training:")]
    assert lines and "4/4 steps (100 %)" in lines[-1]


def test_phase_scale_must_be_positive(uqsm):
    cls, _, _ = uqsm
    from qsmbench.errors import ConfigError

    with pytest.raises(ConfigError, match="phase_scale"):
        tiny(cls, phase_scale=0.0)
    assert cls.resolve_parameters(profile="paper")["phase_scale"] == 100.0
    assert cls.resolve_parameters(profile="quick")["phase_scale"] is None
    assert cls.parameters["leaky_slope"] == 0.01


class _Stop(Exception):
    pass


def test_training_phantoms_are_of_the_model_asked_for(uqsm, monkeypatch):
    """The training phantoms are built with ``model=train_model`` (default "mni", the workflow's
    default phantom), never with whatever make_phantom's default happens to be; it is recorded."""
    cls, pkg, _ = uqsm
    from qsmbench.errors import ConfigError

    assert cls.parameters["train_model"] == "mni"
    assert tiny(cls).describe_training()["phantom_model"] == "mni"
    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("model"))
        raise _Stop

    monkeypatch.setattr(pkg, "make_phantom", spy)
    for model in ("analytic", "mni"):
        with pytest.raises(_Stop):
            tiny(cls, train_model=model, cache=False).prepare([])
    assert asked == ["analytic", "mni"]
    assert tiny(cls, train_model="analytic").weights_path() != tiny(cls).weights_path()
    with pytest.raises(ConfigError, match="train_model"):
        tiny(cls, train_model="brainweb")
