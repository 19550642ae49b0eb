"""Array backends (qsmbench.backend): the torch path of the classical methods agrees with numpy.

The torch backend runs here on the CPU (no GPU in the tests); on a CUDA device it runs the same
code.  Stated tolerances (relative L2 difference of chi, torch vs numpy, same float32 inputs):

* TKD, CFL2 (one FFT filter): 1e-5 -- the two FFT libraries round differently.
* iLSQR (two early-stopped Krylov solves): 1e-4, and the same iteration counts.
* MEDI (Gauss-Newton with inner CG, nonlinear): 1e-3, and the same iteration counts.

That rounding, amplified by the iterations, is the only difference: both backends compute the
same mathematics in the same order.
"""

import inspect
import subprocess
import sys

import numpy as np
import pytest

from qsmbench import operators, physics, registry
from qsmbench.backend import NumpyBackend, for_method, get_backend

TOL = {"tkd": 1e-5, "cfl2": 1e-5, "ilsqr": 1e-4, "medi": 1e-3}


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    return get_backend("cpu", kind="torch")


@pytest.fixture(scope="module")
def phantom():
    from qsmbench.phantom import make_phantom

    return make_phantom((32, 32, 32), (1.0, 1.0, 1.0), seed=7)


def test_backend_choice_follows_the_device():
    assert isinstance(get_backend("cpu"), NumpyBackend)
    with pytest.raises(ValueError, match="numpy backend runs on the CPU"):
        get_backend("cuda", kind="numpy")
    with pytest.raises(ValueError, match="unknown array backend"):
        get_backend("cpu", kind="jax")

    class M:
        device = "cpu"

    m = M()
    assert isinstance(for_method(m), NumpyBackend)
    m.backend = "forced"
    assert for_method(m) == "forced"


def test_classical_methods_do_not_import_torch_on_the_cpu():
    """The registry, the method classes and a CPU run of all four need no torch."""
    code = (
        "import sys\n"
        "from qsmbench import registry\n"
        "from qsmbench.contract import contract_volume\n"
        "vol = contract_volume()\n"
        "for name in ('tkd', 'cfl2', 'ilsqr', 'medi'):\n"
        "    cls = registry.get_method_class(name)\n"
        "    assert 'gpu_optional' in cls.uses and 'gpu' not in cls.uses, cls.uses\n"
        "    registry.get_method(name, **({'max_iter': 1, 'cg_max_iter': 3} if name == 'medi' else {}))"
        ".reconstruct(vol.for_method())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_operators_agree(torch_backend, rng):
    be = torch_backend
    x = rng.normal(size=(9, 10, 8)).astype(np.float32)
    g = rng.normal(size=(3, 9, 10, 8)).astype(np.float32)
    w = rng.random((3, 9, 10, 8)).astype(np.float32)
    vs = (1.0, 0.8, 1.3)
    for bc in operators.BOUNDARIES:
        np.testing.assert_allclose(be.to_numpy(operators.grad(be.asarray(x), vs, bc=bc, backend=be)),
                                   operators.grad(x, vs, bc=bc), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(be.to_numpy(operators.grad_adjoint(be.asarray(g), vs, bc=bc, backend=be)),
                                   operators.grad_adjoint(g, vs, bc=bc), rtol=1e-5, atol=1e-5)
    prep_np = operators.prepare_laplacian_weights(w, vs)
    ref = operators.weighted_laplacian(x, prep_np, np.empty_like(x))
    prep = operators.prepare_laplacian_weights(be.asarray(w), vs, be)
    out = be.zeros(x.shape)
    operators.weighted_laplacian(be.asarray(x), prep, out, backend=be)
    np.testing.assert_allclose(be.to_numpy(out), ref, rtol=1e-5, atol=1e-5)
    k = physics.dipole_kernel(x.shape, vs, (0.1, 0.2, 1.0), d0=0.0, rfft=True, dtype=np.float32)
    np.testing.assert_allclose(
        be.to_numpy(operators.fft_filter(be.asarray(x), be.prepare_kernel(k), be)),
        operators.fft_filter(x, NumpyBackend().prepare_kernel(k), NumpyBackend()), rtol=1e-5, atol=1e-5)


def test_fused_updates_agree(torch_backend, rng):
    be, nb = torch_backend, NumpyBackend()
    arrays = [rng.normal(size=(4, 5, 6)).astype(np.float32) for _ in range(4)]
    t = [be.asarray(a) for a in arrays]
    n = [a.copy() for a in arrays]
    assert be.dot(t[0], t[1]) == pytest.approx(nb.dot(n[0], n[1]), rel=1e-6)
    assert be.axpy_norm(0.3, t[0], t[1]) == pytest.approx(nb.axpy_norm(0.3, n[0], n[1]), rel=1e-6)
    be.axpy_xpby(0.5, t[2], t[0], t[3], -1.5)
    nb.axpy_xpby(0.5, n[2], n[0], n[3], -1.5)
    assert be.cg_step(0.2, t[0], t[1], t[2], t[3]) == pytest.approx(nb.cg_step(0.2, n[0], n[1], n[2], n[3]), rel=1e-6)
    be.xpby(t[1], 2.0, t[0])
    nb.xpby(n[1], 2.0, n[0])
    for a, b in zip(t, n):
        np.testing.assert_allclose(be.to_numpy(a), b, rtol=1e-6, atol=1e-6)
    spec = physics.rfftn(arrays[0])
    assert operators.half_spectrum_norm(be.asarray(spec), 6, be) == pytest.approx(
        operators.half_spectrum_norm(spec, 6), rel=1e-6)


@pytest.mark.parametrize("name, params", [("tkd", {}), ("tkd", {"variant": "shmueli", "pad_factor": 1.5}),
                                          ("cfl2", {}), ("ilsqr", {}), ("medi", {})])
def test_methods_agree_with_numpy(torch_backend, phantom, name, params):
    vol = phantom.for_method()
    ref = registry.get_method(name, **params)
    chi_np = ref.reconstruct(vol)
    m = registry.get_method(name, **params)
    m.backend = torch_backend
    with physics.count_ffts() as c:
        chi_t = m.reconstruct(vol)
    assert isinstance(chi_t, np.ndarray) and chi_t.shape == chi_np.shape
    assert c["n"] > 0                                       # the torch FFTs are counted too
    assert _rel(chi_t, chi_np) < TOL[name], (name, _rel(chi_t, chi_np))
    if name == "ilsqr":
        assert ref.notes == m.notes or ref.notes[0].split("relres")[0] == m.notes[0].split("relres")[0]
    if name == "medi":
        # the same path: the lambda search's steps and the Gauss-Newton iterations; CG stops where its
        # relative residual crosses cg_tol, which float32 rounding in two FFT libraries moves by a few
        # iterations (here 80 vs 78 of at most 100), so CG counts agree to within 5 %
        assert [t["lam"] for t in m.info["search_trace"]] == \
            pytest.approx([t["lam"] for t in ref.info["search_trace"]], rel=1e-5)
        assert len(ref.result.history) == len(m.result.history)
        for a, b in zip(ref.result.history, m.result.history, strict=True):
            assert abs(a["cg_iterations"] - b["cg_iterations"]) <= 0.05 * a["cg_iterations"], (a, b)


def test_ilsqr_steps_agree(torch_backend, phantom):
    mod = inspect.getmodule(registry.get_method_class("ilsqr"))
    args = (phantom.field_ppm, phantom.mask, phantom.voxel_size_mm, phantom.b0_dir)
    chi_np, d_np = mod.ilsqr(*args)
    chi_t, d_t = mod.ilsqr(*args, backend=torch_backend)
    assert d_np["lsqr"]["iterations"] == d_t["lsqr"]["iterations"]
    assert d_np["streak"]["iterations"] == d_t["streak"]["iterations"]
    assert _rel(d_t["chi_lsqr"], d_np["chi_lsqr"]) < TOL["ilsqr"]
    assert _rel(d_t["chi_sa"], d_np["chi_sa"]) < TOL["ilsqr"]
    # single precision too (step 1's vectors in float32)
    chi_np1, _ = mod.ilsqr(*args, lsqr_precision="single")
    chi_t1, _ = mod.ilsqr(*args, lsqr_precision="single", backend=torch_backend)
    assert _rel(chi_t1, chi_np1) < TOL["ilsqr"]
