"""Gradient operators: exact adjoints, boundary conditions, voxel scaling."""

import numpy as np
import pytest

from qsmbench import operators, physics


@pytest.mark.parametrize("bc", operators.BOUNDARIES)
def test_grad_adjoint_is_exact(bc, rng):
    x = rng.normal(size=(7, 8, 9))
    g = rng.normal(size=(3, 7, 8, 9))
    vs = (1.0, 0.5, 2.0)
    lhs = np.vdot(operators.grad(x, vs, bc=bc), g)
    rhs = np.vdot(x, operators.grad_adjoint(g, vs, bc=bc))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_grad_of_a_linear_ramp():
    x = np.arange(6.0)[:, None, None] * np.ones((6, 4, 5)) * 3.0
    g = operators.grad(x, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(g[0, :-1], 1.5)  # 3 per voxel / 2 mm
    np.testing.assert_allclose(g[0, -1], 0.0)  # Neumann: no difference across the last sample
    np.testing.assert_allclose(g[1:], 0.0)


def test_periodic_grad_matches_the_kspace_difference_kernel(rng):
    x = rng.normal(size=(6, 7, 8))
    g = operators.grad(x, bc="periodic")
    energy = np.sum(g**2)
    spec = np.fft.fftn(x)
    expected = np.sum(np.abs(spec) ** 2 * physics.difference_kernel_sq(x.shape)) / x.size
    assert energy == pytest.approx(expected, rel=1e-10)


def test_bad_boundary():
    with pytest.raises(ValueError, match="boundary"):
        operators.grad(np.zeros((3, 3, 3)), bc="mirror")


# --------------------------------------------------------------------------- against naive references
def _naive_grad(x, vs, bc):
    """Forward differences written out with np.roll (periodic) or a zero last difference (Neumann)."""
    out = []
    for axis in range(3):
        d = (np.roll(x, -1, axis=axis) - x) / vs[axis]
        if bc == "neumann":
            idx = [slice(None)] * 3
            idx[axis] = -1
            d[tuple(idx)] = 0
        out.append(d)
    return np.stack(out)


def _naive_grad_adjoint(g, vs, bc):
    """The adjoint as a loop over samples: (D^T g)[i] = g[i-1] - g[i] along each axis."""
    out = np.zeros(g.shape[1:])
    for axis in range(3):
        n = g.shape[axis + 1]
        ga = np.moveaxis(g[axis], axis, 0) / vs[axis]
        acc = np.zeros_like(ga)
        for i in range(n):
            if bc == "periodic":
                acc[i] = ga[i - 1] - ga[i]
            else:
                acc[i] = (ga[i - 1] if i >= 1 else 0) - (ga[i] if i <= n - 2 else 0)
        out += np.moveaxis(acc, 0, axis)
    return out


@pytest.mark.parametrize("bc", operators.BOUNDARIES)
def test_grad_pair_equals_the_naive_one(bc, rng):
    x = rng.normal(size=(6, 7, 5))
    g = rng.normal(size=(3, 6, 7, 5))   # non-zero last slices: the adjoint must ignore them (Neumann)
    vs = (1.0, 0.7, 1.6)
    np.testing.assert_allclose(operators.grad(x, vs, bc=bc), _naive_grad(x, vs, bc), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(operators.grad_adjoint(g, vs, bc=bc), _naive_grad_adjoint(g, vs, bc),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(operators.divergence(g, vs, bc=bc), -_naive_grad_adjoint(g, vs, bc),
                               rtol=1e-12, atol=1e-12)
    out = np.full((3, 6, 7, 5), np.nan)
    assert operators.grad(x, vs, bc=bc, out=out) is out        # the out= buffer is filled in place
    np.testing.assert_allclose(out, _naive_grad(x, vs, bc), rtol=1e-13, atol=1e-13)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 elements, so that small arrays exercise the blocked, threaded code paths."""
    from qsmbench import backend

    monkeypatch.setattr(backend, "BLOCK", 64)
    return backend


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_weighted_laplacian_is_grad_adjoint_of_weighted_grad(small_blocks, rng, workers, monkeypatch):
    monkeypatch.setattr(physics, "_FFT_WORKERS", workers)
    x = rng.normal(size=(9, 8, 7))
    w = rng.random((3, 9, 8, 7))
    vs = (1.0, 0.5, 2.0)
    expected = operators.grad_adjoint(w * operators.grad(x, vs), vs)
    prepared = operators.prepare_laplacian_weights(w, vs)
    out = np.empty_like(x)
    operators.weighted_laplacian(x, prepared, out)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    acc = np.ones_like(x)
    operators.weighted_laplacian(x, prepared, acc, accumulate=True)
    np.testing.assert_allclose(acc, expected + 1, rtol=1e-12, atol=1e-12)


def test_fused_updates_equal_the_naive_ones_for_any_thread_count(small_blocks, monkeypatch):
    from qsmbench.backend import NumpyBackend

    be = NumpyBackend()
    results = []
    for workers in (1, 2, 5):
        monkeypatch.setattr(physics, "_FFT_WORKERS", workers)
        rng = np.random.default_rng(7)   # the same arrays for every thread count
        x, y, v, w = (rng.normal(size=(5, 6, 7)).astype(np.float32) for _ in range(4))
        x0, y0, v0, w0 = x.copy(), y.copy(), v.copy(), w.copy()
        assert be.dot(x, y) == pytest.approx(float(np.dot(x0.ravel().astype(float), y0.ravel())), rel=1e-6)
        n = be.axpy_norm(0.3, x, y)
        np.testing.assert_allclose(y, y0 + np.float32(0.3) * x0, rtol=1e-6)
        assert n == pytest.approx(np.linalg.norm(y0 + 0.3 * x0.astype(float)), rel=1e-6)
        be.axpy_xpby(0.5, w, x, v, -2.0)
        np.testing.assert_allclose(x, x0 + 0.5 * w0, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(w, v0 - 2.0 * w0, rtol=1e-6, atol=1e-6)
        q, r = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
        r0 = r.copy()
        x1 = x.copy()
        rr = be.cg_step(0.25, v, q, x, r)
        np.testing.assert_allclose(x, x1 + 0.25 * v, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(r, r0 - 0.25 * q, rtol=1e-6, atol=1e-6)
        assert rr == pytest.approx(float(np.sum(r.astype(float) ** 2)), rel=1e-6)
        be.xpby(r, 3.0, v)
        np.testing.assert_allclose(v, r + 3.0 * v0, rtol=1e-6, atol=1e-5)
        results.append((n, rr, x.copy(), w.copy(), v.copy()))
    for other in results[1:]:   # bit-identical whatever the number of threads
        assert other[0] == results[0][0] and other[1] == results[0][1]
        for a, b in zip(other[2:], results[0][2:]):
            np.testing.assert_array_equal(a, b)


def test_fused_updates_on_complex_half_spectra(small_blocks, rng):
    from qsmbench.backend import NumpyBackend

    be = NumpyBackend()
    shape = (6, 5, 8)
    x = physics.rfftn(rng.normal(size=shape))
    y = physics.rfftn(rng.normal(size=shape))
    y0 = y.copy()
    assert be.dot(x, y) == pytest.approx(float(np.vdot(x, y).real), rel=1e-12)
    be.axpy(-0.7, x, y)
    np.testing.assert_allclose(y, y0 - 0.7 * x, rtol=1e-12)
    k = rng.random((6, 5, 5))
    s = x.copy()
    be.kmul(s, be.prepare_kernel(k, np.float64))
    np.testing.assert_allclose(s, x * k, rtol=1e-12)
    # the half-spectrum norm is the image-space norm
    img = rng.normal(size=shape)
    assert operators.half_spectrum_norm(physics.rfftn(img), shape[2]) == pytest.approx(
        np.linalg.norm(img) * np.sqrt(img.size), rel=1e-12)


def test_kspace_filter_on_the_numpy_backend_is_physics_kspace_filter(rng):
    x = rng.normal(size=(10, 12, 9)).astype(np.float32)

    def k(shape):
        return physics.dipole_kernel(shape, (1, 1, 1), (0, 0.3, 1), d0=0.0, rfft=True, dtype=np.float32)

    for pad in (1.0, 1.5):
        np.testing.assert_allclose(operators.kspace_filter(x, k, pad_factor=pad, backend=operators.get_backend()),
                                   physics.kspace_filter(x, k, pad_factor=pad), rtol=1e-6, atol=1e-7)
