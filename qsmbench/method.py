"""The contract every reconstruction method implements.

A method is one :class:`Method` subclass in one file of ``methods/`` (or in an installed package
exposing the ``qsmbench.methods`` entry-point group).  The class attributes describe it; the two
methods do the work:

``prepare(train)``
    Untimed.  Training, weight caching, compilation.  ``train`` holds volumes the method may
    learn from (never the test volume's truth).  Most methods do nothing here.
``reconstruct(vol)``
    Timed.  Receives :meth:`qsmbench.volume.Volume.for_method` -- the local field **in ppm**, the
    brain mask, voxel size (mm), unit B0 direction in array coordinates, B0 (T), TE (s) and the
    magnitude when the dataset has one -- and returns chi **in ppm** on the same grid, multiplied
    by the mask, as a finite 3-D array.

A method never reads files and never computes metrics: the runner does I/O, timing, seeding and
validation of the output.  Every tunable number is an entry of ``parameters`` (name -> default),
overridable from the config file or ``--param KEY=VALUE``.  Randomness must come from
``self.rng`` (a :class:`numpy.random.Generator` seeded by the runner from the job's identity) or
from ``self.seed``.

Class attributes
----------------
name : str
    Short lowercase id (``tkd``, ``cfl2``, ``ilsqr``, ``inr_qsm``) used in config and results.
parameters : dict
    Defaults of every parameter.  Values must be JSON-serialisable.
requirements : list[str]
    Importable module names (e.g. ``["torch"]``); when one is missing the method is listed as
    unavailable with the reason instead of breaking the others.
uses : set[str]
    Subset of ``{"magnitude", "chi_init", "gpu", "gpu_optional", "training"}``: inputs and
    resources it can use.  ``"gpu"``: a GPU-first method (deep learning): ``device: auto`` puts
    it on a CUDA device when there is one, and the workflow runs it in the deep-learning
    environment with a GPU request.  ``"gpu_optional"``: a method that runs with numpy on the CPU
    and has a torch path (:mod:`qsmbench.backend`) used only when a CUDA device is asked for
    explicitly (``device: cuda`` / ``cuda:N``); with ``auto`` or ``cpu`` it stays on the CPU in the
    core environment, without torch (:func:`qsmbench.runner.method_device`).
references : list[str]
    Citations, with DOI.
parameter_types : dict[str, type]
    The type of each parameter whose default is ``None``.
profiles : dict[str, dict]
    Named parameter sets (e.g. ``{"quick": {...}, "paper": {...}}``) layered on the defaults.
tuned_on : dict or None
    How the defaults were chosen when they were tuned on data (``None``: taken from the paper).
    E.g. ``{"what": "regularisation weights", "phantom_model": "mni", "seeds": [2000017, ...]}``
    -- the seeds must come from the reserved tuning range (:mod:`qsmbench.seeds`).  Copied into
    every ``run.json`` and shown in the report's method table.
symmetry : str or None
    What the method guarantees, with its default parameters, about sign and scale of the field (checked by
    ``tests/test_symmetry.py``, which picks the check from this value; one of :data:`SYMMETRIES`):

    * ``"linear"`` -- ``chi(a f) = a chi(f)`` for every real ``a`` (odd and homogeneous of degree
      one), up to float rounding: methods linear in the field by design (TKD, CFL2) and those
      whose data-dependent weights are scale- and sign-invariant (iLSQR).
    * ``"odd"`` -- ``chi(-f) = -chi(f)`` up to float rounding, but not homogeneous (MEDI: its
      cost in radians is odd-symmetric, while the nonlinear data term and the fixed lambda make
      the result depend on the field's scale).
    * ``None`` (default) -- nothing is guaranteed (e.g. learned methods); such a method is not
      checked.
tunable : dict[str, LogRange | LinRange]
    The key regularisation parameter(s) a tuning search may vary, with their search range
    (:mod:`qsmbench.tuning`), e.g. ``{"lam": LogRange(1e-3, 1.0, 7)}``; the first is searched
    unless the config names another (``methods.<run>.tune_parameter``).  Empty (default): the
    method is reported as "not tunable" in tuned modes.  Tuning never changes ``parameters``.
timeout_s : dict[str, float]
    Wall-clock limit (s) of one isolated workflow run by profile (``"default"`` for the others);
    the base class gives 30 min for ``quick`` and 6 h otherwise.  A method that needs more (or
    should be stopped sooner) overrides it; the config's ``methods.<run>.timeout_s`` wins.

Instance attributes set by a method
-----------------------------------
trained_on : dict or None
    Set in ``prepare`` by a method that learns across subjects: what it was trained on, e.g.
    ``{"phantom_model": "mni", "phantom_version": "2", "seeds": [...], "volumes": [...]}`` (seeds from
    the reserved training range).  Copied into ``run.json`` and shown in the report.
notes : list[str]
    Free-form remarks copied into ``run.json``.
info : dict
    Extra facts of the last reconstruction (JSON-serialisable numbers/strings, e.g. MEDI's chosen
    lambda and noise estimate), copied into ``run.json``'s ``info``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError
from .volume import Volume

USES = frozenset({"magnitude", "chi_init", "gpu", "gpu_optional", "training"})
#: Values of ``Method.symmetry`` besides None (see the module docstring).
SYMMETRIES = ("linear", "odd")


class Method:
    """Base class of all reconstruction methods (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Any]] = {}
    requirements: ClassVar[list[str]] = []
    uses: ClassVar[set[str]] = set()
    references: ClassVar[list[str]] = []
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Types of parameters whose default is ``None`` (e.g. "take the variant's value").
    parameter_types: ClassVar[dict[str, type]] = {}
    #: How the defaults were tuned on data (None: from the paper); see the module docstring.
    tuned_on: ClassVar[dict[str, Any] | None] = None
    #: What the method guarantees under f -> a f ("linear", "odd" or None); see the module docstring.
    symmetry: ClassVar[str | None] = None
    #: Wall-clock limit (s) of one isolated workflow run -- process start-up, ``prepare`` and
    #: ``reconstruct`` -- by profile; ``"default"`` serves the profiles not listed.  Past it the
    #: run is killed with status ``timeout``.  The config's ``methods.<run>.timeout_s`` overrides.
    timeout_s: ClassVar[dict[str, float]] = {"quick": 1800.0, "default": 6 * 3600.0}
    #: Tunable parameters and their search ranges (qsmbench.tuning); see the module docstring.
    tunable: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, profile: str | None = None, seed: int = 0, device: str = "cpu",
                 **params: Any):
        self.params = self.resolve_parameters(params, profile=profile)
        self.profile = profile
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.device = device
        #: Free-form remarks the runner copies into run.json (e.g. "no magnitude: plain TV").
        self.notes: list[str] = []
        #: Extra facts of the last reconstruction (JSON-serialisable, e.g. a chosen lambda), copied
        #: into run.json's "info".
        self.info: dict[str, Any] = {}
        #: What ``prepare`` trained on (seeds, phantom model, volumes); None for untrained methods.
        self.trained_on: dict[str, Any] | None = None

    # ------------------------------------------------------------------ parameters
    @classmethod
    def resolve_parameters(cls, overrides: Mapping[str, Any] | None = None, *,
                           profile: str | None = None) -> dict[str, Any]:
        """Defaults, then the profile, then ``overrides``; unknown names are a ConfigError."""
        params = copy.deepcopy(dict(cls.parameters))
        layers: list[tuple[str, Mapping[str, Any]]] = []
        if profile is not None:
            if profile not in cls.profiles:
                if profile in ("quick", "default"):
                    layers = []  # every method has an implicit quick/default profile = defaults
                else:
                    raise ConfigError(f"method '{cls.name}' has no profile '{profile}'; "
                                      f"known: {', '.join(sorted(cls.profiles)) or '(none)'}")
            else:
                layers.append((f"profile '{profile}'", cls.profiles[profile]))
        layers.append(("parameters", overrides or {}))
        for where, layer in layers:
            for key, value in layer.items():
                if key not in params:
                    raise ConfigError(f"method '{cls.name}' has no parameter '{key}' ({where}); "
                                      f"known: {', '.join(sorted(params)) or '(none)'}")
                default = params[key] if cls.parameters[key] is not None else \
                    cls.parameter_types.get(key, type(None))()
                params[key] = _coerce_like(default, value, f"{cls.name}.{key}")
        return params

    @classmethod
    def timeout_for(cls, profile: str | None = None) -> float:
        """The wall-clock limit (s) of a run with ``profile`` (see :attr:`timeout_s`)."""
        limits = {**Method.timeout_s, **cls.timeout_s}
        return float(limits.get(profile or "default", limits["default"]))

    # ------------------------------------------------------------------ the contract
    def prepare(self, train: Sequence[Volume]) -> None:
        """Untimed preparation (training, caching).  Default: nothing."""

    def reconstruct(self, vol: Volume) -> np.ndarray:
        """Return chi in ppm on ``vol``'s grid, multiplied by ``vol.mask``."""
        raise NotImplementedError

    def lcurve_terms(self, vol: Volume, chi_ppm: np.ndarray) -> dict[str, float]:
        """``{"misfit", "regulariser"}`` norms of ``chi_ppm`` for the L-curve (truth-free tuning).

        Default: :func:`qsmbench.tuning.generic_lcurve_terms` (``||M (D*chi - f)||`` and
        ``||M grad chi||``, ppm); a method may return its own data term and regulariser instead.
        """
        from .tuning import generic_lcurve_terms  # noqa: PLC0415

        return generic_lcurve_terms(vol, chi_ppm)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


def _coerce_like(default: Any, value: Any, key: str) -> Any:
    """Convert a config/CLI value to the type of the default (numbers, bools, strings)."""
    if value is None:
        return value
    if default is None:
        # Optional parameter: accept numbers written as strings on the command line.
        if isinstance(value, str):
            for parse in (int, float):
                try:
                    return parse(value)
                except ValueError:
                    pass
            if value.lower() in ("true", "false"):
                return value.lower() == "true"
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool):
                raise ValueError(value)
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError(value)
            return int(as_float)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if isinstance(default, (list, tuple)):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"parameter '{key}' expects a {type(default).__name__}, got {value!r}") from None
    return value


def check_class(cls: type) -> list[str]:
    """Problems with a Method subclass's declaration (empty list when it is well formed)."""
    problems = []
    if not isinstance(cls, type) or not issubclass(cls, Method):
        return [f"{cls!r} is not a subclass of qsmbench.method.Method"]
    if not cls.name or not isinstance(cls.name, str) or cls.name != cls.name.lower() \
            or not cls.name.replace("_", "").isalnum():
        problems.append(f"{cls.__name__}.name must be a short lowercase id, got {cls.name!r}")
    if not isinstance(cls.parameters, dict):
        problems.append(f"{cls.__name__}.parameters must be a dict")
    if not isinstance(cls.requirements, (list, tuple)):
        problems.append(f"{cls.__name__}.requirements must be a list")
    unknown = set(cls.uses) - USES
    if unknown:
        problems.append(f"{cls.__name__}.uses has unknown entries {sorted(unknown)}; allowed: {sorted(USES)}")
    if cls.symmetry is not None and cls.symmetry not in SYMMETRIES:
        problems.append(f"{cls.__name__}.symmetry must be None or one of {list(SYMMETRIES)}, got {cls.symmetry!r}")
    if not cls.references:
        problems.append(f"{cls.__name__}.references must cite the method's paper")
    if cls.reconstruct is Method.reconstruct:
        problems.append(f"{cls.__name__} does not implement reconstruct()")
    limits = getattr(cls, "timeout_s", None)
    if not isinstance(limits, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in limits.values()):
        problems.append(f"{cls.__name__}.timeout_s must map profile names to positive numbers of seconds")
    from .tuning import check_tunable  # noqa: PLC0415

    problems += check_tunable(cls)
    for pname, prof in cls.profiles.items():
        unknown_p = set(prof) - set(cls.parameters)
        if unknown_p:
            problems.append(f"{cls.__name__}.profiles['{pname}'] sets unknown parameters {sorted(unknown_p)}")
    return problems
