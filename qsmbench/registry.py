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

import ast
import dataclasses
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
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


def import_method_file(path: str | os.PathLike):
    """:func:`load_module_from_file`, with errors that name the file and the line.

    A syntax error, or any exception raised while the file is imported, becomes a
    :class:`~qsmbench.errors.MethodError` (no traceback needed to find it); an ``ImportError``
    (a missing dependency) is re-raised as is, for the caller to decide (the registry lists the
    method as unavailable).  Then the file's Method classes are checked for duplicates: a class
    defined twice (the second silently replaces the first) or two classes registering one name.
    """
    path = Path(path)
    try:
        module = load_module_from_file(path)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = (exc.text or "").strip()
        raise MethodError(f"method file {exc.filename or path} has a syntax error at {where}: {exc.msg}"
                          + (f" in: {text}" if text else "")) from None
    except ImportError:
        raise
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == _target(path)]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise MethodError(f"method file {path} fails when imported{where}: {type(exc).__name__}: {exc}") from None
    _check_duplicates(path, module)
    return module


def _target(path: Path) -> Path:
    path = path.resolve()
    return path / "__init__.py" if path.is_dir() else path


def _check_duplicates(path: Path, module) -> None:
    classes = classes_in_module(module)
    try:
        tree = ast.parse(_target(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        tree = None
    if tree is not None:
        lines: dict[str, list[int]] = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                lines.setdefault(node.name, []).append(node.lineno)
        for cls in classes:
            where = lines.get(cls.__name__, [])
            if len(where) > 1:
                raise MethodError(f"method file {path} defines the class {cls.__name__} {len(where)} times (lines "
                                  f"{', '.join(map(str, where))}); only the last one would count -- rename or "
                                  "remove the others")
    names: dict[str, str] = {}
    for cls in classes:
        if cls.name in names:
            raise MethodError(f"method file {path}: the classes {names[cls.name]} and {cls.__name__} both register "
                              f"the method name '{cls.name}'; method names must be unique")
        names[cls.name] = cls.__name__


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
        module = import_method_file(path)
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
