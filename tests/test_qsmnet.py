"""QSMnet (supervised baseline): loss terms against numpy, standardisation, the weights cache,
training provenance, B0 handling, parameter checks and accuracy on an unseen phantom.

Tiny settings on CPU with private caches, except the accuracy test, which trains the quick profile
into the session's test cache ($QSMBENCH_CACHE, tests/conftest.py) -- the contract tests reuse it.
"""

import importlib
import json

import numpy as np
import pytest

from qsmbench import registry, seeds
from qsmbench.contract import contract_volume
from qsmbench.errors import ConfigError
from qsmbench.physics import dipole_kernel

torch = pytest.importorskip("torch")

TINY = {"width": 2, "levels": 2, "kernel_size": 3, "patch_size": 16, "batch_size": 1, "epochs": 1,
        "steps_per_epoch": 2, "train_phantoms": 1, "train_model": "analytic", "train_shape": [20, 20, 16],
        "train_voxel_size_mm": [2.0, 2.0, 2.0], "train_oversample": 1}


@pytest.fixture
def qsmnet(tmp_path, monkeypatch):
    """(method class, its package, its torch engine) with a private, empty weights cache."""
    monkeypatch.setenv("QSMBENCH_CACHE", str(tmp_path / "cache"))
    cls = registry.get_method_class("qsmnet")
    pkg = importlib.import_module(cls.__module__)
    engine = importlib.import_module(cls.__module__ + "._engine")
    saved = dict(pkg._MEMORY)
    pkg._MEMORY.clear()
    yield cls, pkg, engine
    pkg._MEMORY.clear()
    pkg._MEMORY.update(saved)


def tiny(cls, **kw):
    return cls(profile="quick", seed=0, device="cpu", **{**TINY, **kw})


def _t(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))[None, None]


# --------------------------------------------------------------------------- loss terms vs numpy
def test_each_loss_term_matches_an_independent_numpy_computation(qsmnet):
    _, _, engine = qsmnet
    rng = np.random.default_rng(1)
    # odd sizes: with an oblique B0 the full and half-spectrum FFTs agree (no Nyquist planes)
    shape, voxel, b0 = (9, 11, 7), (1.0, 1.3, 0.8), (0.2, -0.1, 1.0)
    pred_ppm = rng.normal(0, 0.05, shape)
    field = rng.normal(0, 0.01, shape)
    mask = rng.uniform(size=shape) > 0.3
    label = rng.normal(0, 1, shape)
    pred = rng.normal(0, 1, shape)
    # model loss: circular convolution on the patch grid, D(0) = 0, masked L1 mean in ppm
    d = dipole_kernel(shape, voxel, b0, d0=0.0)
    model = np.fft.ifftn(d * np.fft.fftn(pred_ppm)).real
    expected_model = np.mean(np.abs(mask * (model - field)))
    kernel = engine.uqsm_engine().patch_kernel(shape, voxel, b0, 1.0)
    got = engine.model_loss(_t(pred_ppm), _t(field), _t(mask), kernel).item()
    assert got == pytest.approx(expected_model, rel=1e-4)
    # chi L1
    assert engine.chi_loss(_t(pred), _t(label)).item() == pytest.approx(np.mean(np.abs(pred - label)), rel=1e-5)
    # gradient difference loss: | |grad pred| - |grad label| | per axis, averaged, summed over axes
    gdl = sum(np.mean(np.abs(np.abs(np.diff(pred, axis=a)) - np.abs(np.diff(label, axis=a)))) for a in range(3))
    l1 = sum(np.mean(np.abs(np.diff(pred, axis=a) - np.diff(label, axis=a))) for a in range(3))
    assert engine.gradient_loss(_t(pred), _t(label), "gdl").item() == pytest.approx(gdl, rel=1e-5)
    assert engine.gradient_loss(_t(pred), _t(label), "l1").item() == pytest.approx(l1, rel=1e-5)
    assert gdl < l1  # the two readings differ (a sign flip of a gradient costs nothing in the GDL)


def test_model_loss_is_zero_for_the_true_chi_and_catches_a_sign_flip(qsmnet):
    _, _, engine = qsmnet
    rng = np.random.default_rng(2)
    shape = (12, 12, 12)
    chi = rng.normal(0, 0.05, shape)
    field = np.fft.ifftn(dipole_kernel(shape, (1, 1, 1), (0, 0, 1), d0=0.0) * np.fft.fftn(chi)).real
    mask = np.ones(shape)
    kernel = engine.uqsm_engine().patch_kernel(shape, (1, 1, 1), (0, 0, 1), 1.0)
    assert engine.model_loss(_t(chi), _t(field), _t(mask), kernel).item() < 1e-7
    flipped = engine.model_loss(_t(-chi), _t(field), _t(mask), kernel).item()
    assert flipped == pytest.approx(2 * np.mean(np.abs(field)), rel=1e-4)


def test_total_loss_weights_each_term_and_destandardises_chi_for_the_model_term(qsmnet):
    cls, _, engine = qsmnet
    p = tiny(cls, w_chi=0.7, w_model=3.0, w_grad=0.2).params
    torch.manual_seed(0)
    net = engine.build_net(p)
    net.chi_mean.fill_(0.01)
    net.chi_std.fill_(0.04)
    net.eval()
    rng = np.random.default_rng(3)
    shape = (8, 8, 8)
    batch = {"input": _t(rng.normal(size=shape)), "label": _t(rng.normal(size=shape)),
             "field": _t(rng.normal(0, 0.01, shape)), "mask": _t(rng.uniform(size=shape) > 0.5),
             "kernel": engine.uqsm_engine().patch_kernel(shape, (2, 2, 2), (0, 0, 1), 1.0)[None, None]}
    with torch.no_grad():
        total, l_chi, l_model, l_grad = engine.loss_terms(net, batch, p)
        out = net(batch["input"]).numpy()[0, 0]
    label = batch["label"].numpy()[0, 0]
    chi_ppm = out * 0.04 + 0.01
    d = dipole_kernel(shape, (2, 2, 2), (0, 0, 1), d0=0.0)
    # even size, B0 along an axis: the kernel is symmetric, full and half spectra agree
    model = np.fft.ifftn(d * np.fft.fftn(chi_ppm)).real
    m = batch["mask"].numpy()[0, 0]
    expected_model = np.mean(np.abs(m * (model - batch["field"].numpy()[0, 0])))
    expected_chi = np.mean(np.abs(out - label))
    assert l_model.item() == pytest.approx(expected_model, rel=1e-4)
    assert l_chi.item() == pytest.approx(expected_chi, rel=1e-5)
    assert total.item() == pytest.approx(0.7 * l_chi.item() + 3.0 * l_model.item() + 0.2 * l_grad.item(), rel=1e-6)


# --------------------------------------------------------------------------- inference
def test_inference_destandardises_pads_crops_and_masks(qsmnet):
    cls, _, engine = qsmnet
    net = engine.build_net(tiny(cls).params)
    for prm in net.parameters():
        prm.data.zero_()
    net.out.bias.data.fill_(2.0)  # the output is the constant 2 (standardised units)
    net.chi_mean.fill_(0.01)
    net.chi_std.fill_(0.05)
    field = np.random.default_rng(0).normal(size=(7, 9, 5)).astype(np.float32)
    mask = np.zeros(field.shape, bool)
    mask[1:6, 2:8, 1:4] = True
    chi = engine.infer(net, field, mask, device="cpu")
    assert chi.shape == field.shape and chi.dtype == np.float32
    np.testing.assert_allclose(chi[mask], 2.0 * 0.05 + 0.01, rtol=1e-6)
    assert not chi[~mask].any()


def test_b0_closest_to_another_axis_is_an_exact_axis_permutation(qsmnet):
    cls, _, _ = qsmnet
    m = tiny(cls)
    vol_z = contract_volume(magnitude=False)
    chi_z = m.reconstruct(vol_z.for_method())
    # the same object with B0 along array axis 0: axes (2, 0, 1) of the B0-along-z arrays
    import dataclasses

    perm = (2, 0, 1)
    vol_x = dataclasses.replace(vol_z, field_ppm=np.ascontiguousarray(np.transpose(vol_z.field_ppm, perm)),
                                mask=np.ascontiguousarray(np.transpose(vol_z.mask, perm)),
                                voxel_size_mm=tuple(vol_z.voxel_size_mm[i] for i in perm), b0_dir=(1.0, 0.0, 0.0),
                                references={})
    chi_x = m.reconstruct(vol_x.for_method())
    np.testing.assert_allclose(chi_x, np.transpose(chi_z, perm), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- cache and provenance
def test_weights_are_cached_by_training_configuration_and_loaded_weights_only(qsmnet, monkeypatch):
    cls, pkg, _ = qsmnet
    first = tiny(cls)
    first.prepare([])
    path = first.weights_path()
    assert first.training_record["trained"] and path.is_file() and path.with_suffix(".json").is_file()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config"]["training_code_version"] == pkg.TRAINING_CODE_VERSION
    assert sidecar["trained_on"]["seeds"] == first.trained_on["seeds"]
    pkg._MEMORY.clear()
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    second = tiny(cls)
    second.prepare([])
    assert not second.training_record["trained"] and loads == [True]
    vol = contract_volume().for_method()
    np.testing.assert_array_equal(first.reconstruct(vol), second.reconstruct(vol))
    # any training parameter (and the code version) changes the file; the job seed does not
    assert tiny(cls, lr=5e-4).weights_path() != path
    assert tiny(cls, augment_noise_snr=[20]).weights_path() != path
    assert cls(profile="quick", seed=7, **TINY).weights_path() == path
    monkeypatch.setattr(pkg, "TRAINING_CODE_VERSION", "test-bump")
    assert tiny(cls).weights_path() != path


def test_trained_on_records_reserved_training_seeds_and_the_phantom(qsmnet):
    cls, _, _ = qsmnet
    m = tiny(cls, train_phantoms=3)
    specs = m.phantom_specs()
    subjects = [s["seed"] for s in specs]
    assert len(set(subjects)) == 3 and all(seeds.role_of(s) == "train" for s in subjects)
    assert subjects == seeds.draw("train", 3, "qsmnet-0")
    assert all(s["b0_dir"] == (0.0, 0.0, 1.0) and s["noise_snr"] is None for s in specs)  # no augmentation
    m.prepare([])
    t = m.trained_on
    assert t["seeds"] == subjects and t["phantom_model"] == "analytic" and t["phantom_version"]
    assert "along the last array axis" in t["b0"] and "noise_snr" not in t
    assert any("supervised on qsmbench phantoms" in n for n in m.notes)


def test_augmentation_switches_tilt_b0_and_add_noisy_copies(qsmnet):
    cls, _, _ = qsmnet
    m = tiny(cls, train_phantoms=6, augment_max_tilt_deg=30.0, augment_noise_snr=[10, 40])
    specs = m.phantom_specs()
    tilts = [np.degrees(np.arccos(abs(s["b0_dir"][2]))) for s in specs]
    assert max(tilts) <= 30.0 + 1e-9 and min(tilts) > 0.0
    assert {s["noise_snr"] for s in specs} <= {10.0, 40.0}
    pairs = m._training_pairs()
    assert len(pairs) == 12  # each phantom once clean, once noisy
    clean, noisy = pairs[0], pairs[1]
    np.testing.assert_array_equal(clean.chi_ppm, noisy.chi_ppm)  # same label
    assert not np.array_equal(clean.field_ppm, noisy.field_ppm)
    assert "tilted up to 30" in m._trained_on()["b0"] and m._trained_on()["noise_snr"] == [10.0, 40.0]


@pytest.mark.parametrize("bad", [{"kernel_size": 4}, {"patch_size": 18, "levels": 3}, {"gradient_loss": "l2"},
                                 {"optimizer": "sgd"}, {"train_model": "brainweb"}, {"augment_max_tilt_deg": 120},
                                 {"augment_noise_snr": [0]}, {"train_shape": [80, 96]}, {"w_model": -1.0},
                                 {"train_calcification_prob": 1.5}])
def test_bad_parameters_are_config_errors(qsmnet, bad):
    cls, _, _ = qsmnet
    with pytest.raises(ConfigError, match="qsmnet"):
        tiny(cls, **bad)


def test_profiles_the_paper_network_and_a_small_quick_one():
    cls = registry.get_method_class("qsmnet")
    paper = cls.resolve_parameters(profile="paper")
    assert (paper["width"], paper["levels"], paper["kernel_size"], paper["patch_size"], paper["batch_size"],
            paper["epochs"]) == (32, 5, 5, 64, 12, 25)
    assert (paper["w_chi"], paper["w_model"], paper["w_grad"]) == (1.0, 1.0, 0.1)
    assert paper["augment_max_tilt_deg"] == 0 and paper["augment_noise_snr"] == []
    quick = cls.resolve_parameters(profile="quick")
    assert quick["train_voxel_size_mm"] == [2.0, 2.0, 2.0] and quick["train_shape"] == [80, 96, 80]
    assert quick["epochs"] * quick["steps_per_epoch"] * quick["batch_size"] * quick["patch_size"] ** 3 < \
        paper["epochs"] * paper["steps_per_epoch"] * paper["batch_size"] * paper["patch_size"] ** 3 / 100


# --------------------------------------------------------------------------- accuracy
def test_quick_profile_beats_tkd_on_an_unseen_test_phantom():
    """Quick profile (trained on training seeds) on test seed 7 (no method trains or tunes on it)."""
    from qsmbench.phantom import make_phantom

    seed = 7
    assert seeds.role_of(seed) == "test"
    vol = make_phantom((80, 96, 80), (2.0, 2.0, 2.0), seed=seed, calcification=True)
    cls = registry.get_method_class("qsmnet")
    m = cls(profile="quick", seed=0, device="cpu")
    m.prepare([])
    assert seed not in m.trained_on["seeds"]
    truth, mask = vol.references["chi"], vol.mask
    chi = m.reconstruct(vol.for_method())
    tkd = registry.get_method("tkd").reconstruct(vol.for_method())

    def nrmse(x):
        return np.linalg.norm((x - truth)[mask]) / np.linalg.norm(truth[mask])

    assert nrmse(chi) < nrmse(tkd)
    assert np.corrcoef(chi[mask], truth[mask])[0, 1] > 0.8
