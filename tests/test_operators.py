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
