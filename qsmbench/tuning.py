"""Parameter tuning: default, tuned-by-truth (oracle) and tuned-without-truth results side by side.

"Is method A better than B, or just better tuned?"  A method declares the search range of its
key regularisation parameter(s) on its class (:attr:`qsmbench.method.Method.tunable`, e.g.
``tunable = {"lam": LogRange(1e-3, 1.0, 7)}``) and the configuration asks for tuning modes
(``tuning: [default, oracle, lcurve, discrepancy]``, globally or per run):

``default``
    The method's own defaults (the ordinary benchmark).
``oracle``
    1-D search over the candidates of one tunable parameter, picking the value that minimises
    (or maximises, for higher-is-better metrics) ``tuning_metric`` (default NRMSE) against the
    ground truth.  Needs a truth; it is an **upper bound** on what any user can reach, and is
    labelled as such.
``lcurve``
    Truth-free: the corner (maximum curvature) of the L-curve ``(log ||data misfit||,
    log ||regulariser||)`` over the candidates, ordered from the least to the most regularised.
    The curvature at each interior candidate is the signed Menger curvature of it and its two
    neighbours (the circle through three consecutive points; Cultrera & Callegaro, IOP SciNotes
    2020, doi:10.1088/2633-1357/abad0d, after Hansen, SIAM Review 1992, doi:10.1137/1034115).
    The end points cannot be chosen; a curve without a convex bend picks its most convex point
    and says so.
``discrepancy``
    Truth-free: Morozov's discrepancy principle: the candidate whose data misfit is closest (in
    log) to ``tau`` times the expected norm of the field noise.  The noise is **known** when the
    volume's perturbation metadata records added noise (qsmbench's noise perturbation: per voxel
    ``sigma / |magnitude|`` rad, converted to ppm), else it is **estimated** from the field alone
    (1.4826 x median absolute value of the finest 3-D Haar detail (HHH) sub-band over the 2x2x2
    blocks inside the mask; Donoho & Johnstone, Biometrika 1994, doi:10.1093/biomet/81.3.425).
    Which one was used is recorded (``noise_source``).

The L-curve terms are, unless a method overrides :meth:`qsmbench.method.Method.lcurve_terms`:
data misfit ``||M (D*chi - f)||_2`` (ppm; ``D`` with D(0) = 0 and 2x zero padding, the residual
demeaned in the mask ``M`` because the field's mean is not determined by the D(0) conventions of
the methods) and regulariser ``||M grad chi||_2`` (forward differences, ppm/mm).

In the workflow (``workflow/rules/tune.smk``) each candidate value is one job (cached,
resumable), a selection job per (dataset, perturbation, run, mode) picks the value, and a final
run with the chosen value is scored like any other run, with ``tuning`` = the mode in the results
table.  ``tuned_on: {dataset, perturbation}`` applies the value chosen on another dataset
(transfer).  Tuning never changes a method's defaults: it is reported, not adopted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("default", "oracle", "lcurve", "discrepancy")
TUNED_MODES = MODES[1:]
#: What the report writes for a tuned mode of a run whose method declares no tunable parameter.
NOT_TUNABLE = "not tunable"
#: The oracle's default metric.
DEFAULT_METRIC = "nrmse"
#: Default number of candidates when a range does not say.
DEFAULT_CANDIDATES = 7
#: Discrepancy principle: target misfit = TAU x expected noise norm.
TAU = 1.0

MODE_LABELS = {
    "default": "default parameters",
    "oracle": "oracle (tuned against the truth: an upper bound)",
    "lcurve": "L-curve corner (truth-free)",
    "discrepancy": "discrepancy principle (truth-free)",
}


# --------------------------------------------------------------------------- search ranges
@dataclasses.dataclass(frozen=True)
class _Range:
    """``n`` candidates from ``lo`` to ``hi`` (both included); see :class:`LogRange`."""

    lo: float
    hi: float
    n: int = DEFAULT_CANDIDATES
    regularises: str = "up"
    #: parameters set together with the searched one, as ((name, value), ...): e.g. MEDI's
    #: ``lambda_rule`` must be ``fixed`` for a searched ``lam`` to be the lambda used
    fixed: tuple = ()

    def __post_init__(self):
        name = type(self).__name__
        if not (self.lo < self.hi) or not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise ValueError(f"{name} needs lo < hi, got lo={self.lo!r}, hi={self.hi!r}")
        if not (isinstance(self.n, int) and self.n >= 3):
            raise ValueError(f"{name} needs n >= 3 candidates, got {self.n!r}")
        if self.regularises not in ("up", "down"):
            raise ValueError(f"{name}.regularises must be 'up' or 'down', got {self.regularises!r}")


@dataclasses.dataclass(frozen=True)
class LogRange(_Range):
    """``n`` candidates log-spaced from ``lo`` to ``hi`` (both included, ``0 < lo < hi``).

    ``regularises``: ``"up"`` when a larger value regularises more (TKD's threshold, CFL2's
    lambda), ``"down"`` when a larger value regularises less (MEDI's data weight lambda); it
    orders the L-curve from the least to the most regularised candidate.
    """

    def __post_init__(self):
        if not self.lo > 0:
            raise ValueError(f"LogRange needs 0 < lo < hi, got lo={self.lo!r}, hi={self.hi!r}")
        super().__post_init__()

    def values(self, n: int | None = None) -> list[float]:
        return [float(v) for v in np.geomspace(self.lo, self.hi, int(n or self.n))]


@dataclasses.dataclass(frozen=True)
class LinRange(_Range):
    """``n`` candidates evenly spaced from ``lo`` to ``hi`` (see :class:`LogRange`)."""

    def values(self, n: int | None = None) -> list[float]:
        return [float(v) for v in np.linspace(self.lo, self.hi, int(n or self.n))]


RANGES = (LogRange, LinRange)


def check_tunable(cls) -> list[str]:
    """Problems with a Method subclass's ``tunable`` declaration (empty when it is well formed)."""
    tunable = getattr(cls, "tunable", {})
    if not isinstance(tunable, Mapping):
        return [f"{cls.__name__}.tunable must be a dict of parameter name -> LogRange/LinRange"]
    problems = []
    for name, rng in tunable.items():
        if name not in cls.parameters:
            problems.append(f"{cls.__name__}.tunable names '{name}', which is not one of its parameters")
        if not isinstance(rng, RANGES):
            problems.append(f"{cls.__name__}.tunable['{name}'] must be a LogRange or LinRange, got {rng!r}")
    return problems


# --------------------------------------------------------------------------- the plan
def _modes(value) -> list[str]:
    modes = [value] if isinstance(value, str) else list(value or ["default"])
    return list(dict.fromkeys(modes))


def run_plan(config: Mapping[str, Any], classes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{run_id: plan}`` for every configured run; ``classes`` maps method names to classes.

    A plan holds ``modes`` (requested, in order), ``tuned_modes`` (the tuned ones that will run:
    empty when the method is not tunable), ``tunable`` (bool), ``parameter``, ``candidates``
    (values), ``regularises``, ``metric`` (the oracle's) and ``tuned_on`` ({dataset,
    perturbation} or None).
    """
    plans = {}
    for run_id, spec in config["methods"].items():
        spec = spec or {}
        cls = classes.get(spec.get("method", run_id))
        modes = _modes(spec.get("tuning", config.get("tuning", "default")))
        tunable = dict(getattr(cls, "tunable", {}) or {})
        plan = {"modes": modes, "tunable": bool(tunable), "parameter": None, "candidates": [],
                "regularises": "up", "metric": config.get("tuning_metric", DEFAULT_METRIC),
                "tuned_on": None, "tuned_modes": []}
        if tunable:
            param = spec.get("tune_parameter") or next(iter(tunable))
            rng = tunable[param]
            plan.update(parameter=param, candidates=rng.values(spec.get("tune_candidates")),
                        regularises=rng.regularises, tuned_modes=[m for m in modes if m != "default"])
            if spec.get("tuned_on"):
                plan["tuned_on"] = {"dataset": spec["tuned_on"]["dataset"],
                                    "perturbation": spec["tuned_on"].get("perturbation", "none")}
        plans[run_id] = plan
    return plans


def tuned_jobs(jobs: Sequence[tuple[str, str, str]], plans: Mapping[str, Mapping[str, Any]],
               has_truth: Mapping[str, bool]) -> list[tuple[str, str, str, str]]:
    """(dataset, perturbation, run, mode) of every final tuned run.

    Oracle runs tuned on their own volume need a ground truth; a dataset without one gets no
    oracle run (the report shows no value there).
    """
    out = []
    for d, p, r in jobs:
        for mode in plans[r]["tuned_modes"]:
            src = plans[r]["tuned_on"] or {"dataset": d}
            if mode == "oracle" and not has_truth.get(src["dataset"], False):
                continue
            out.append((d, p, r, mode))
    return out


def selection_source(dataset: str, perturbation: str, plan: Mapping[str, Any]) -> tuple[str, str]:
    """The (dataset, perturbation) whose candidates choose the value of a run on (dataset, perturbation)."""
    src = plan.get("tuned_on")
    return (src["dataset"], src["perturbation"]) if src else (dataset, perturbation)


def check_config(config: Mapping[str, Any], infos: Mapping[str, Any], plan: Mapping[str, Mapping[str, Any]],
                 has_truth, source: str) -> None:
    """What the schema cannot check: tune_* keys against the method's ``tunable``, the oracle's
    metric, ``tuned_on`` against the datasets and perturbations.  Raises ConfigError."""
    from . import metrics  # noqa: PLC0415
    from .errors import ConfigError  # noqa: PLC0415

    metric = config.get("tuning_metric", DEFAULT_METRIC)
    known = [s["metric"] for s in metrics.metric_table()]
    if metric not in known:
        raise ConfigError(f"{source}: key 'tuning_metric': unknown metric {metric!r}; known: {', '.join(known)}")
    for run_id, spec in config["methods"].items():
        spec = spec or {}
        key = f"methods.{run_id}"
        info = infos.get(spec.get("method", run_id))
        cls = getattr(info, "cls", None)
        if cls is None:
            continue
        tunable = getattr(cls, "tunable", {}) or {}
        for k in ("tune_parameter", "tune_candidates", "tuned_on"):
            if k in spec and not tunable:
                raise ConfigError(f"{source}: key '{key}.{k}': method '{cls.name}' declares no tunable parameter "
                                  "(Method.tunable), so it cannot be tuned; in tuned modes it is reported as "
                                  f"'{NOT_TUNABLE}'")
        if spec.get("tune_parameter") and spec["tune_parameter"] not in tunable:
            raise ConfigError(f"{source}: key '{key}.tune_parameter': {spec['tune_parameter']!r} is not a tunable "
                              f"parameter of '{cls.name}'; tunable: {', '.join(tunable)}")
        src = spec.get("tuned_on")
        if src:
            d = src["dataset"]
            if d not in config["datasets"]:
                raise ConfigError(f"{source}: key '{key}.tuned_on.dataset': unknown dataset {d!r}; datasets: "
                                  f"{', '.join(config['datasets'])}")
            p = src.get("perturbation", "none")
            if p not in plan[d]:
                raise ConfigError(f"{source}: key '{key}.tuned_on.perturbation': {p!r} is not a perturbation of "
                                  f"dataset {d!r}; its perturbations: {', '.join(plan[d])}")
            modes = _modes(spec.get("tuning", config.get("tuning", "default")))
            if "oracle" in modes and not has_truth(d):
                raise ConfigError(f"{source}: key '{key}.tuned_on.dataset': oracle tuning needs a ground truth, and "
                                  f"dataset {d!r} has none (use a truth-free mode: lcurve or discrepancy)")


# --------------------------------------------------------------------------- L-curve terms and noise
def generic_lcurve_terms(vol, chi_ppm: np.ndarray) -> dict[str, float]:
    """``{"misfit": ||M (D*chi - f)||, "regulariser": ||M grad chi||}`` (see the module docstring)."""
    from . import operators, physics  # noqa: PLC0415

    mask = np.asarray(vol.mask, bool)
    chi = np.asarray(chi_ppm, np.float64) * mask
    field = physics.forward_field(chi, vol.voxel_size_mm, vol.b0_dir, d0=0.0, pad_factor=2.0)
    r = (field - np.asarray(vol.field_ppm, np.float64))[mask]
    r = r - r.mean()
    g = operators.grad(chi, vol.voxel_size_mm)
    return {"misfit": float(np.linalg.norm(r)), "regulariser": float(np.linalg.norm(g[:, mask]))}


def known_noise_ppm(vol) -> np.ndarray | None:
    """Per-voxel standard deviation (ppm) of the noise qsmbench's noise perturbation added, from the
    volume's metadata; None when the metadata record none.  Phase noise ``sigma / |m|`` rad at high
    SNR (|m| the noisy magnitude, or 1 without one), converted with the volume's B0 and TE."""
    from . import physics  # noqa: PLC0415

    comps = [c for c in ((vol.meta or {}).get("perturbation") or {}).get("components", [])
             if isinstance(c, Mapping) and c.get("kind") == "noise" and c.get("sigma") is not None]
    if not comps:
        return None
    var = np.zeros(vol.shape)
    mag = np.abs(np.asarray(vol.magnitude, np.float64)) if vol.magnitude is not None else np.ones(vol.shape)
    mag = np.maximum(mag, 1e-12)
    for c in comps:
        var += physics.rad_to_ppm(float(c["sigma"]) / mag, vol.b0_tesla, vol.te_s) ** 2
    return np.sqrt(var)


def estimate_noise_ppm(field_ppm: np.ndarray, mask: np.ndarray) -> float:
    """Truth-free estimate of the field's noise standard deviation (ppm): robust (MAD) scale of the
    finest 3-D Haar detail sub-band (HHH) over the 2x2x2 blocks that lie inside the mask.

    For white noise of standard deviation s the HHH coefficient ``sum(+-f) / sqrt(8)`` has standard
    deviation s; a smooth field contributes almost nothing (it is a third mixed difference).
    """
    f = np.asarray(field_ppm, np.float64)
    m = np.asarray(mask, bool)
    n = [s - s % 2 for s in f.shape]
    f = f[: n[0], : n[1], : n[2]].reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2)
    m = m[: n[0], : n[1], : n[2]].reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2)
    sign = np.array([1.0, -1.0])
    s = sign[:, None, None] * sign[None, :, None] * sign[None, None, :]
    d = np.einsum("aibjck,ijk->abc", f, s) / math.sqrt(8.0)
    inside = m.all(axis=(1, 3, 5))
    if not inside.any():
        return float("nan")
    return float(1.4826 * np.median(np.abs(d[inside])))


def expected_misfit(vol) -> tuple[float, str, float]:
    """(expected noise norm in the mask (ppm), ``"known"`` or ``"estimated"``, typical sd (ppm))."""
    mask = np.asarray(vol.mask, bool)
    sd = known_noise_ppm(vol)
    if sd is not None:
        return float(np.sqrt(np.sum(sd[mask] ** 2))), "known", float(np.sqrt(np.mean(sd[mask] ** 2)))
    est = estimate_noise_ppm(vol.field_ppm, mask)
    return float(est * math.sqrt(mask.sum())), "estimated", est


# --------------------------------------------------------------------------- one candidate
def score_candidate(run_record: Mapping[str, Any], chi_ppm: np.ndarray | None, vol, *, method_cls,
                    metric: str = DEFAULT_METRIC) -> dict[str, Any]:
    """What the selection needs of one candidate: its oracle metric (and NRMSE) against the truth
    when the volume has one, the L-curve terms and the expected noise norm."""
    from . import metrics  # noqa: PLC0415

    out: dict[str, Any] = {"status": run_record["status"], "error": run_record.get("error"), "scores": {},
                           "reference": None, "misfit": None, "regulariser": None}
    noise, noise_source, noise_sd = expected_misfit(vol)
    out.update(expected_misfit=noise, noise_source=noise_source, noise_sd_ppm=noise_sd)
    if run_record["status"] != "ok" or chi_ppm is None:
        return out
    if vol.references:
        ref = "chi" if "chi" in vol.references else sorted(vol.references)[0]
        names = list(dict.fromkeys([metric, "nrmse"]))
        res = metrics.evaluate(chi_ppm, vol.references[ref], vol.eval_mask, labels=vol.labels,
                               voxel_size_mm=vol.voxel_size_mm, metrics=names,
                               extras=vol.meta.get("metric_extras", {}))
        out["reference"] = ref
        out["scores"] = {r.metric: r.value for r in res if r.status == "ok"}
    instance = method_cls(**run_record.get("parameters", {})) if method_cls is not None else None
    terms = instance.lcurve_terms(vol.for_method(), chi_ppm) if instance is not None else \
        generic_lcurve_terms(vol.for_method(), chi_ppm)
    out.update(misfit=float(terms["misfit"]), regulariser=float(terms["regulariser"]))
    return out


def searched_params(run: Mapping[str, Any], parameter: str, value: float, extra_dirs=()) -> dict[str, Any]:
    """The parameters of a run with ``parameter = value``: the run's own, the range's ``fixed``
    companions (e.g. MEDI's ``lambda_rule: fixed``), then the searched value."""
    from .registry import get_method_class  # noqa: PLC0415

    rng = (getattr(get_method_class(run["method"], extra_dirs=extra_dirs), "tunable", None) or {}).get(parameter)
    return {**run.get("params", {}), **dict(getattr(rng, "fixed", ()) or ()), parameter: value}


def candidate_job(volume_dir, run_json, score_json, *, run_id: str, run: Mapping[str, Any], parameter: str,
                  value: float, index: int, metric: str = DEFAULT_METRIC, dataset: str = "",
                  perturbation: str = "none", **job_kwargs) -> dict[str, Any]:
    """One candidate of the search (rule ``tune_candidate``): run the method with ``parameter =
    value`` (isolated, as :func:`qsmbench.runner.run_job`; the seed is the run's, so candidates
    differ only by the value) and write its score record."""
    from .io import load_volume, read_nifti, write_json  # noqa: PLC0415
    from .registry import get_method_class  # noqa: PLC0415
    from .runner import CHI_FILE, run_job  # noqa: PLC0415

    params = searched_params(run, parameter, value, job_kwargs.get("extra_dirs", ()))
    record = run_job(volume_dir, run_json, run_id=run_id, method=run["method"], params=params,
                     profile=run.get("profile"), dataset=dataset, perturbation=perturbation, **job_kwargs)
    vol = load_volume(volume_dir)
    chi = read_nifti(Path(run_json).parent / CHI_FILE, role="reconstruction")[0] if record["status"] == "ok" \
        else None
    cls = get_method_class(run["method"], extra_dirs=job_kwargs.get("extra_dirs", ()))
    score = score_candidate(record, chi, vol, method_cls=cls, metric=metric)
    score.update(run_id=run_id, dataset=dataset, perturbation=perturbation, parameter=parameter, value=value,
                 index=int(index), seed=record.get("seed"), parameters=record.get("parameters"))
    write_json(score_json, score)
    return score


# --------------------------------------------------------------------------- selection rules
def menger_curvature(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Signed curvature of the circle through each point and its two neighbours (NaN at the ends).

    Positive where the curve, traversed in order, turns counter-clockwise -- the L-curve's corner
    when it runs from the least regularised (top left) to the most regularised (bottom right).
    """
    p = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    k = np.full(len(p), np.nan)
    for j in range(1, len(p) - 1):
        a, b, c = p[j - 1], p[j], p[j + 1]
        cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        den = np.linalg.norm(b - a) * np.linalg.norm(c - b) * np.linalg.norm(c - a)
        k[j] = 2.0 * cross / den if den > 0 else 0.0
    return k


def lcurve_corner(misfit: Sequence[float], regulariser: Sequence[float]) -> tuple[int, np.ndarray, bool]:
    """Index of the L-curve corner of points ordered from the least to the most regularised.

    Returns (index, curvature per point, whether a convex corner exists).  The curve is taken in
    log-log; the corner is the interior point of maximum signed Menger curvature.
    """
    x, y = np.log(np.asarray(misfit, float)), np.log(np.asarray(regulariser, float))
    if len(x) < 3:
        raise ValueError(f"the L-curve needs at least 3 candidates, got {len(x)}")
    k = menger_curvature(x, y)
    j = int(np.nanargmax(k))
    return j, k, bool(k[j] > 0)


def select(scores: Sequence[Mapping[str, Any]], mode: str, *, metric: str = DEFAULT_METRIC,
           better: str = "lower", regularises: str = "up", tau: float = TAU) -> dict[str, Any]:
    """Choose one candidate by ``mode`` from their score records (:func:`score_candidate`).

    Returns ``{"value", "index", "criterion": [per candidate], "notes": [...], ...}``; candidates
    whose run failed are left out (a note says so).  Raises ValueError when nothing usable is left.
    """
    if mode not in TUNED_MODES:
        raise ValueError(f"unknown tuning mode {mode!r}; tuned modes: {', '.join(TUNED_MODES)}")
    ok = [s for s in scores if s["status"] == "ok"]
    notes = [f"candidate {s['value']:g} failed ({s.get('error')}) and was left out" for s in scores
             if s["status"] != "ok"]
    out: dict[str, Any] = {"mode": mode, "notes": notes, "upper_bound": mode == "oracle"}
    if mode == "oracle":
        usable = [s for s in ok if metric in s.get("scores", {})]
        if not usable:
            raise ValueError(f"oracle tuning: no candidate has a '{metric}' score against a truth")
        vals = np.array([s["scores"][metric] for s in usable])
        j = int(np.argmin(vals) if better == "lower" else np.argmax(vals))
        out.update(metric=metric, better=better, criterion={str(s["index"]): float(v) for s, v in zip(usable, vals)})
        chosen = usable[j]
    elif mode == "lcurve":
        usable = sorted((s for s in ok if s.get("misfit") and s.get("regulariser")),
                        key=lambda s: s["value"], reverse=regularises == "down")
        j, k, convex = lcurve_corner([s["misfit"] for s in usable], [s["regulariser"] for s in usable])
        if not convex:
            notes.append("the L-curve has no convex corner over these candidates: its most convex point was taken")
        out.update(criterion={str(s["index"]): (None if not np.isfinite(v) else float(v)) for s, v in zip(usable, k)},
                   convex_corner=convex)
        chosen = usable[j]
    else:
        usable = [s for s in ok if s.get("misfit")]
        if not usable:
            raise ValueError("discrepancy principle: no candidate has a data misfit")
        target = tau * float(usable[0]["expected_misfit"])
        if not target > 0:
            raise ValueError("discrepancy principle: the expected noise norm is zero or unknown")
        dist = [abs(math.log(s["misfit"] / target)) for s in usable]
        j = int(np.argmin(dist))
        out.update(target_misfit=target, tau=tau, noise_source=usable[0]["noise_source"],
                   noise_sd_ppm=usable[0]["noise_sd_ppm"],
                   criterion={str(s["index"]): float(s["misfit"] / target) for s in usable})
        if j in (0, len(usable) - 1):
            notes.append("the misfit closest to the noise level is at an end of the candidate range")
        chosen = usable[j]
    out.update(value=chosen["value"], index=int(chosen["index"]))
    return out


def select_job(score_jsons: Sequence[str | os.PathLike], out_json, *, mode: str, plan: Mapping[str, Any],
               run_id: str, dataset: str, perturbation: str) -> dict[str, Any]:
    """Rule ``select_tuning``: read the candidates' scores, choose, write the selection record."""
    from . import metrics  # noqa: PLC0415
    from .io import read_json, write_json  # noqa: PLC0415

    scores = sorted((read_json(p) for p in score_jsons), key=lambda s: s["index"])
    metric = plan["metric"]
    better = metrics.get_metric(metric).better
    record = {"run_id": run_id, "dataset": dataset, "perturbation": perturbation, "parameter": plan["parameter"],
              "candidates": [s["value"] for s in scores], "regularises": plan["regularises"],
              "seed": scores[0].get("seed") if scores else None,
              "points": [{k: s.get(k) for k in ("index", "value", "status", "misfit", "regulariser", "scores",
                                               "expected_misfit", "noise_source")} for s in scores]}
    try:
        record.update(select(scores, mode, metric=metric, better=better, regularises=plan["regularises"]),
                      status="ok", error=None)
    except ValueError as exc:
        record.update(mode=mode, status="failed", error=str(exc), value=None, index=None, notes=[],
                      upper_bound=mode == "oracle")
    write_json(out_json, record)
    return record


# --------------------------------------------------------------------------- the final tuned run
def tuned_run_job(volume_dir, run_json, selection_json, *, run_id: str, run: Mapping[str, Any], mode: str,
                  dataset: str = "", perturbation: str = "none", **job_kwargs) -> dict[str, Any]:
    """Rule ``reconstruct_tuned``: run the method with the chosen value and record how it was chosen
    (``tuning`` in run.json: mode, parameter, value, candidates, where it was chosen, seed)."""
    from .io import read_json, write_json  # noqa: PLC0415
    from .runner import RunResult, _base_record, write_run  # noqa: PLC0415

    sel = read_json(selection_json)
    tuning = {"mode": mode, "label": MODE_LABELS[mode], "upper_bound": mode == "oracle",
              "parameter": sel.get("parameter"), "value": sel.get("value"), "candidates": sel.get("candidates"),
              "selected_on": {"dataset": sel.get("dataset"), "perturbation": sel.get("perturbation"),
                              "seed": sel.get("seed")},
              "transferred": (sel.get("dataset"), sel.get("perturbation")) != (dataset, perturbation),
              "selection_status": sel.get("status"), "notes": sel.get("notes", [])}
    for k in ("metric", "noise_source", "target_misfit", "convex_corner"):
        if k in sel:
            tuning[k] = sel[k]
    if sel.get("status") != "ok":
        from .io import load_volume  # noqa: PLC0415
        vol = load_volume(volume_dir)
        identity = {"run_id": run_id, "dataset": dataset, "perturbation": perturbation, "repetition": 0}
        record = _base_record(run["method"], identity, run.get("params", {}), run.get("profile"), 0, "", vol)
        record.update(status="failed", error=f"TuningError: no value was chosen: {sel.get('error')}", tuning=tuning)
        write_run(RunResult("failed", None, record), Path(run_json).parent, vol.affine)
        return record
    from .runner import run_job  # noqa: PLC0415

    params = searched_params(run, sel["parameter"], sel["value"], job_kwargs.get("extra_dirs", ()))
    run_job(volume_dir, run_json, run_id=run_id, method=run["method"], params=params,
            profile=run.get("profile"), dataset=dataset, perturbation=perturbation, **job_kwargs)
    record = read_json(run_json)  # as written (with its output file)
    record["tuning"] = tuning
    write_json(run_json, record)
    return record


# --------------------------------------------------------------------------- results and report
def tuned_value_text(tuning: Mapping[str, Any] | None) -> str:
    """The results table's ``tuned_value``: ``{"lam": 0.05}`` as JSON, '' for default runs."""
    if not tuning or tuning.get("value") is None:
        return ""
    return json.dumps({tuning["parameter"]: tuning["value"]}, sort_keys=True)


def side_by_side(df, plans: Mapping[str, Mapping[str, Any]] | None, metric: str = "nrmse"):
    """Per (dataset, perturbation, run): the default score and each tuned mode's score with its
    chosen value (mean over seeds), as a DataFrame with one column pair per mode.  Runs whose
    method is not tunable read :data:`NOT_TUNABLE` in their tuned columns."""
    import pandas as pd  # noqa: PLC0415

    rows = df[(df["metric"] == metric) & (df["status"] == "ok")]
    if "reference" in rows and len(rows):
        refs = sorted(set(rows["reference"]))
        rows = rows[rows["reference"] == ("chi" if "chi" in refs else refs[0])]
    modes = [m for m in MODES if m == "default" or m in set(df["tuning"])
             or any(m in (p or {}).get("modes", []) for p in (plans or {}).values())]
    keys = sorted({(d, p, r) for d, p, r in zip(df["dataset"], df["perturbation"], df["method"], strict=True)})
    out = []
    for d, p, r in keys:
        plan = (plans or {}).get(r, {})
        row: dict[str, Any] = {"dataset": d, "perturbation": p, "method": r}
        sub = rows[(rows["dataset"] == d) & (rows["perturbation"] == p) & (rows["method"] == r)]
        for mode in modes:
            g = sub[sub["tuning"] == mode]
            if mode != "default" and plans is not None and mode in plan.get("modes", []) and not plan.get("tunable"):
                row[mode], row[f"{mode}_value"] = NOT_TUNABLE, ""
                continue
            row[mode] = float(g["value"].mean()) if len(g) else None
            vals = sorted(set(g["tuned_value"])) if mode != "default" else []
            row[f"{mode}_value"] = "; ".join(v for v in vals if v)
        out.append(row)
    return pd.DataFrame(out), modes


def rankings(df, metric: str = "nrmse"):
    """Mean ``metric`` per run over all scored volumes, ranked **separately per tuning mode** (never
    mixing modes).  DataFrame: tuning, dataset, method, mean, n, rank."""
    import pandas as pd  # noqa: PLC0415

    rows = df[(df["metric"] == metric) & (df["status"] == "ok")]
    if rows.empty:
        return pd.DataFrame(columns=["tuning", "dataset", "method", "mean", "n", "rank"])
    better = str(rows["better"].iloc[0])
    g = rows.groupby(["tuning", "dataset", "method"])["value"].agg(["mean", "count"]).reset_index()
    g = g.rename(columns={"count": "n"})
    g["rank"] = g.groupby(["tuning", "dataset"])["mean"].rank(ascending=better != "higher", method="min")
    order = {m: i for i, m in enumerate(MODES)}
    g["_o"] = g["tuning"].map(order)
    return g.sort_values(["_o", "dataset", "rank"]).drop(columns="_o").reset_index(drop=True)


__all__ = ["DEFAULT_METRIC", "MODES", "NOT_TUNABLE", "TUNED_MODES", "LinRange", "LogRange", "candidate_job",
           "check_config", "check_tunable", "estimate_noise_ppm", "expected_misfit", "generic_lcurve_terms",
           "known_noise_ppm", "lcurve_corner", "menger_curvature", "rankings", "run_plan", "score_candidate",
           "select", "select_job", "selection_source", "side_by_side", "tuned_jobs", "tuned_run_job",
           "tuned_value_text"]
