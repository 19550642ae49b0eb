"""Registry: folder discovery, entry points, duplicates, unknown and unavailable methods."""

import textwrap

import pytest

from qsmbench import registry
from qsmbench.errors import ConfigError, MethodError, MethodUnavailableError, UnknownMethodError
from qsmbench.method import Method

PLUGIN = '''
import numpy as np
from qsmbench.method import Method

class {cls}(Method):
    """A test plugin (reference: none)."""
    name = "{name}"
    parameters = {{"scale": 1.0}}
    requirements = {reqs}
    references = ["doi:10.0000/test"]

    def reconstruct(self, vol):
        return vol.field_ppm * 3.0 * self.params["scale"] * vol.mask
'''


def write_plugin(folder, fname, name, cls="Plugin", reqs="[]"):
    folder.mkdir(exist_ok=True)
    (folder / fname).write_text(PLUGIN.format(cls=cls, name=name, reqs=reqs))


def test_builtin_methods_are_found():
    names = registry.list_methods()
    assert {"tkd", "cfl2"} <= set(names)
    assert names == sorted(names)


def test_folder_plugin_via_environment(tmp_path, monkeypatch):
    write_plugin(tmp_path / "m", "mine.py", "mine")
    (tmp_path / "m" / "_helper.py").write_text("raise RuntimeError('helpers are not imported')")
    monkeypatch.setenv("QSMBENCH_METHODS_PATH", str(tmp_path / "m"))
    registry.clear_cache()
    assert "mine" in registry.list_methods()
    m = registry.get_method("mine", scale=2.0)
    assert m.params == {"scale": 2.0}


def test_duplicate_names_are_an_error_naming_both_files(tmp_path):
    write_plugin(tmp_path / "m", "a.py", "dup", cls="A")
    write_plugin(tmp_path / "m", "b.py", "dup", cls="B")
    with pytest.raises(MethodError, match=r"duplicate method name 'dup'.*a\.py.*b\.py"):
        registry.discover([tmp_path / "m"])


def test_duplicate_of_a_builtin_is_an_error(tmp_path):
    write_plugin(tmp_path / "m", "tkd2.py", "tkd")
    with pytest.raises(MethodError, match="duplicate method name 'tkd'"):
        registry.discover([tmp_path / "m"])


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownMethodError) as exc:
        registry.get_method("nope")
    assert "unknown method 'nope'" in str(exc.value)
    assert "tkd" in str(exc.value) and "cfl2" in str(exc.value)


def test_missing_requirement_marks_only_that_method_unavailable(tmp_path):
    write_plugin(tmp_path / "m", "needs.py", "needs", reqs='["a_module_that_does_not_exist_xyz"]')
    write_plugin(tmp_path / "m", "fine.py", "fine", cls="Fine")
    (tmp_path / "m" / "broken_import.py").write_text("import another_missing_module_xyz\n")
    infos = {i.name: i for i in registry.method_infos([tmp_path / "m"])}
    assert infos["fine"].available
    assert not infos["needs"].available
    assert "a_module_that_does_not_exist_xyz" in infos["needs"].reason
    assert not infos["broken_import"].available and "another_missing_module_xyz" in infos["broken_import"].reason
    assert "needs" not in registry.list_methods(extra_dirs=[tmp_path / "m"])
    assert "needs" in registry.list_methods(include_unavailable=True, extra_dirs=[tmp_path / "m"])
    with pytest.raises(MethodUnavailableError, match="a_module_that_does_not_exist_xyz"):
        registry.get_method("needs", extra_dirs=[tmp_path / "m"])


def test_file_without_method_is_an_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "empty.py").write_text("x = 1\n")
    with pytest.raises(MethodError, match="defines no subclass"):
        registry.discover([tmp_path / "m"])


def test_malformed_method_is_an_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bad.py").write_text(textwrap.dedent('''
        from qsmbench.method import Method
        class Bad(Method):
            name = "Bad Name"
    '''))
    with pytest.raises(MethodError, match="lowercase id"):
        registry.discover([tmp_path / "m"])


def test_entry_point_plugins(monkeypatch, tmp_path):
    class EP(Method):
        """Entry-point test method."""
        name = "ep_method"
        references = ["doi:10.0000/x"]

        def reconstruct(self, vol):
            return vol.field_ppm * vol.mask

    class FakeEP:
        name, value = "ep_method", "pkg.mod:EP"

        def load(self):
            return EP

    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: [FakeEP()] if group == registry.ENTRY_POINT_GROUP else [])
    found = registry.discover()
    assert found["ep_method"].available and "entry point" in found["ep_method"].source


def test_parameters_are_validated_and_coerced():
    cls = registry.get_method_class("cfl2")
    assert cls(lam="0.5").params["lam"] == 0.5  # strings from --param become floats
    assert cls(mask_field="true").params["mask_field"] is True
    with pytest.raises(ConfigError, match="no parameter 'lamda'.*lam"):
        cls(lamda=0.1)
    with pytest.raises(ConfigError, match="expects a float"):
        cls(lam="abc")
    with pytest.raises(ConfigError, match="no profile 'fancy'"):
        cls(profile="fancy")
