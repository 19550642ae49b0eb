"""The generic contract, parametrised over every registered method (plugins included)."""

import pytest

from qsmbench import contract, registry

# imported maps (type precomputed) have no reconstruction to test; tests/test_plugins.py covers them
#: Known defects, open in issue 12.
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}   # (method, check) -> why it fails today (strict xfail)


@pytest.mark.parametrize("name", [n for n in registry.list_methods()
                                  if not getattr(registry.get_method_class(n), "imported", False)])
@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
def test_every_method_fulfils_the_contract(name, check, request):
    if (name, check.__name__) in KNOWN_DEFECTS:
        # strict: the test turns red the day the defect is fixed
        request.applymarker(pytest.mark.xfail(reason=KNOWN_DEFECTS[name, check.__name__], strict=True))
    check(registry.get_method_class(name))


def test_contract_catches_a_method_in_the_wrong_units():
    from qsmbench.method import Method

    class Hz(Method):
        """Returns chi in ppb (wrong units)."""
        name = "wrong_units"
        references = ["none"]

        def reconstruct(self, vol):
            tkd = registry.get_method("tkd")
            return tkd.reconstruct(vol) * 1000.0

    rows = dict((n, (ok, msg)) for n, ok, msg in contract.run_contract(Hz))
    assert rows["check_recovers_spheres"][0] is False
    assert "units" in rows["check_recovers_spheres"][1]


def test_contract_catches_unmasked_output():
    from qsmbench.method import Method

    class Leaky(Method):
        """Forgets the mask."""
        name = "leaky"
        references = ["none"]

        def reconstruct(self, vol):
            return vol.field_ppm + 1.0

    with pytest.raises(contract.ContractFailure, match="outside the mask"):
        contract.check_output_shape_finite_masked(Leaky)
