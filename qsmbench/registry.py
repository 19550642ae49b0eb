"""Method discovery: the ``methods/`` folder(s) plus the ``qsmbench.methods`` entry points.

* Every ``*.py`` file (or folder with ``__init__.py``) in a methods folder whose name does not
  start with ``_`` is imported and must define exactly the :class:`~qsmbench.method.Method`
  subclasses it wants registered (classes imported from elsewhere are ignored).
* Folders searched, in order: ``QSMBENCH_METHODS_PATH`` (``os.pathsep``-separated), the
  repository's ``methods/`` next to the ``qsmbench`` package, and any folders given explicitly.
* Installed packages register a class with the entry-point group ``qsmbench.methods``.
* Two methods with one name is an error naming both sources; an unknown name lists the valid
  ones; a method whose ``requirements`` cannot be imported (or whose file fails to import with
  an ImportError) is listed as unavailable, with the reason, and never breaks the others.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path

from .errors import MethodError, MethodUnavailableError, UnknownMethodError
from .method import Method, check_class

ENTRY_POINT_GROUP = "qsmbench.methods"
BUILTIN_METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"


@dataclasses.dataclass
class MethodInfo:
    name: str
    cls: type[Method] | None
    source: str
    available: bool
    reason: str = ""

    def as_dict(self) -> dict:
        cls = self.cls
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "source": self.source,
            "parameters": dict(cls.parameters) if cls else {},
            "profiles": sorted(cls.profiles) if cls else [],
            "uses": sorted(cls.uses) if cls else [],
            "requirements": list(cls.requirements) if cls else [],
            "references": list(cls.references) if cls else [],
        }


def method_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get("QSMBENCH_METHODS_PATH", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    if BUILTIN_METHODS_DIR.is_dir():
        dirs.append(BUILTIN_METHODS_DIR)
    dirs += [Path(p) for p in extra]
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def load_module_from_file(path: str | os.PathLike):
    """Import a method file (or package folder) under a private, stable module name."""
    path = Path(path).resolve()
    target = path / "__init__.py" if path.is_dir() else path
    mod_name = f"qsmbench_plugins.{path.stem}_{zlib.crc32(str(path).encode()):08x}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(
        mod_name, target, submodule_search_locations=[str(path)] if path.is_dir() else None)
    if spec is None or spec.loader is None:
        raise MethodError(f"cannot import method file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def classes_in_module(module) -> list[type[Method]]:
    """Method subclasses defined in ``module`` itself (not imported into it)."""
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Method) and obj is not Method and obj.__module__ == module.__name__
            and not obj.__name__.startswith("_")]


def _missing_requirements(cls: type[Method]) -> list[str]:
    missing = []
    for req in cls.requirements:
        try:
            if importlib.util.find_spec(req) is None:
                missing.append(req)
        except (ImportError, ValueError):
            missing.append(req)
    return missing


def _info_for_class(cls: type[Method], source: str) -> MethodInfo:
    problems = check_class(cls)
    if problems:
        raise MethodError(f"method class in {source} is malformed: " + "; ".join(problems))
    missing = _missing_requirements(cls)
    if missing:
        return MethodInfo(cls.name, cls, source, False,
                          f"missing requirement(s): {', '.join(missing)} (pip install {' '.join(missing)})")
    return MethodInfo(cls.name, cls, source, True)


def discover(extra_dirs: Iterable[str | os.PathLike] = (), *, entry_points: bool = True
             ) -> dict[str, MethodInfo]:
    """Find every method; returns ``{name: MethodInfo}`` sorted by name."""
    found: dict[str, MethodInfo] = {}

    def add(info: MethodInfo):
        if info.name in found:
            raise MethodError(f"duplicate method name '{info.name}': defined in {found[info.name].source} "
                              f"and in {info.source}")
        found[info.name] = info

    for folder in method_dirs(extra_dirs):
        if not folder.is_dir():
            raise MethodError(f"methods folder not found: {folder}")
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            is_pkg = entry.is_dir() and (entry / "__init__.py").exists()
            if not (is_pkg or (entry.is_file() and entry.suffix == ".py")):
                continue
            for info in _infos_from_file(entry):
                add(info)

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = f"entry point '{ep.name}' ({ep.value})"
            try:
                cls = ep.load()
            except ImportError as exc:
                add(MethodInfo(ep.name, None, source, False, f"import failed: {exc}"))
                continue
            add(_info_for_class(cls, source))
    return dict(sorted(found.items()))


def _infos_from_file(path: Path) -> list[MethodInfo]:
    try:
        module = load_module_from_file(path)
    except ImportError as exc:
        # A plugin whose dependency is absent is unavailable, not fatal.
        return [MethodInfo(path.stem, None, str(path), False, f"import failed: {exc}")]
    classes = classes_in_module(module)
    if not classes:
        raise MethodError(f"method file {path} defines no subclass of qsmbench.method.Method "
                          "(rename it with a leading '_' if it is a helper module)")
    return [_info_for_class(cls, str(path)) for cls in classes]


_CACHE: dict[tuple, dict[str, MethodInfo]] = {}


def _registry(extra_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, MethodInfo]:
    key = tuple(str(Path(d).resolve()) for d in extra_dirs) + (os.environ.get("QSMBENCH_METHODS_PATH", ""),)
    if key not in _CACHE:
        _CACHE[key] = discover(extra_dirs)
    return _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()


def method_infos(extra_dirs: Iterable[str | os.PathLike] = ()) -> list[MethodInfo]:
    return list(_registry(extra_dirs).values())


def list_methods(*, include_unavailable: bool = False,
                 extra_dirs: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Names of the registered methods (available ones unless asked otherwise)."""
    return [i.name for i in _registry(extra_dirs).values() if include_unavailable or i.available]


def get_method_class(name: str, *, extra_dirs: Iterable[str | os.PathLike] = ()) -> type[Method]:
    reg = _registry(extra_dirs)
    if name not in reg:
        raise UnknownMethodError(f"unknown method '{name}'; registered methods: {', '.join(reg) or '(none)'}")
    info = reg[name]
    if not info.available or info.cls is None:
        raise MethodUnavailableError(f"method '{name}' is unavailable: {info.reason}")
    return info.cls


def get_method(name: str, *, extra_dirs: Iterable[str | os.PathLike] = (), **kwargs) -> Method:
    """Instantiate a registered method; ``kwargs`` go to its constructor (profile, seed, params)."""
    return get_method_class(name, extra_dirs=extra_dirs)(**kwargs)
