"""Sign and scale symmetries each method declares (``Method.symmetry``), checked on a phantom.

A method declares what it guarantees (see :mod:`qsmbench.method`): ``"linear"`` --
``chi(a f) = a chi(f)`` for every real ``a``; ``"odd"`` -- ``chi(-f) = -chi(f)``; ``None`` --
nothing, and it is not checked here.  The check is picked from the declaration, so a new method
only sets the attribute.  The volume is a 32^3 embedded phantom from a test-range seed that is
not the benchmark's (0).
"""

import numpy as np
import pytest

from qsmbench import registry
from qsmbench.method import SYMMETRIES, Method

#: relative tolerance of "equal up to float rounding" (float32 solvers, percentiles, FFTs)
REL_TOL = 1e-4
#: scale factors of the homogeneity check (negative ones test oddness and scale together)
FACTORS = (-1.0, 2.5, -0.3)
#: classical methods and what they must declare (a regression test of the declarations)
EXPECTED = {"tkd": "linear", "cfl2": "linear", "ilsqr": "linear", "medi": "odd"}
#: extra parameter sets whose symmetry is checked too (the TKD variants are both in use)
VARIANTS = {"tkd": [{"variant": "shmueli"}]}


@pytest.fixture(scope="module")
def phantom():
    from qsmbench.phantom import make_phantom

    return make_phantom((32, 32, 32), (1.0, 1.0, 1.0), seed=5)


def _cases():
    out = []
    for name in registry.list_methods():
        cls = registry.get_method_class(name)
        if cls.symmetry is None:
            continue
        for params in [{}, *VARIANTS.get(name, [])]:
            label = name + "".join(f"-{k}={v}" for k, v in params.items())
            out.append(pytest.param(name, params, id=label))
    return out


def _recon(cls, vol, field, **params):
    v = vol.for_method()
    v.field_ppm = np.ascontiguousarray(field, dtype=np.float32)
    m = cls(profile="quick", seed=0, device="cpu", **params)
    m.prepare([])
    return np.asarray(m.reconstruct(v), dtype=np.float64)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_symmetry(cls, vol, params=None) -> dict[str, float]:
    """Relative errors of the symmetries ``cls`` declares; raises AssertionError on a violation."""
    params = params or {}
    f = vol.field_ppm.astype(np.float32)
    chi = _recon(cls, vol, f, **params)
    assert np.linalg.norm(chi) > 0, f"{cls.name} returned zeros: nothing to check"
    errors = {}
    if cls.symmetry == "odd":
        errors["odd"] = _rel(_recon(cls, vol, -f, **params), -chi)
    elif cls.symmetry == "linear":
        for a in FACTORS:
            errors[f"a={a:g}"] = _rel(_recon(cls, vol, np.float32(a) * f, **params), a * chi)
    else:
        raise AssertionError(f"{cls.name}: unknown symmetry {cls.symmetry!r}; known: {SYMMETRIES}")
    bad = {k: e for k, e in errors.items() if not e <= REL_TOL}
    assert not bad, f"{cls.name} {params} declares symmetry {cls.symmetry!r} but breaks it: {bad}"
    return errors


@pytest.mark.parametrize("name, params", _cases())
def test_declared_symmetry_holds(phantom, name, params):
    check_symmetry(registry.get_method_class(name), phantom, params)


@pytest.mark.parametrize("name, symmetry", sorted(EXPECTED.items()))
def test_classical_methods_declare_their_symmetry(name, symmetry):
    assert registry.get_method_class(name).symmetry == symmetry


def test_medi_is_odd_but_not_homogeneous(phantom):
    """MEDI's lambda is a fixed weight in radians: scaling the field changes the data/TV balance."""
    cls = registry.get_method_class("medi")
    f = phantom.field_ppm
    chi = _recon(cls, phantom, f)
    assert _rel(_recon(cls, phantom, 0.25 * f), 0.25 * chi) > 10 * REL_TOL


def test_the_check_catches_a_broken_declaration(phantom):
    """A method that is linear except for a sign-dependent step must fail its declaration."""
    tkd = registry.get_method_class("tkd")

    class Clipped(Method):
        """TKD followed by a sign-dependent clip: neither odd nor homogeneous."""
        name = "clipped"
        references = ["none"]
        symmetry = "linear"

        def reconstruct(self, vol):
            chi = tkd().reconstruct(vol)
            return np.maximum(chi, -0.01) * vol.mask

    with pytest.raises(AssertionError, match="breaks it"):
        check_symmetry(Clipped, phantom)
    Clipped.symmetry = "odd"
    with pytest.raises(AssertionError, match="breaks it"):
        check_symmetry(Clipped, phantom)
