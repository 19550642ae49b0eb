"""INR-QSM-fast's fitting loop: feature grid + MLP against the exact full-volume forward model."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from qsmbench.errors import ConfigError
from qsmbench.progress import Progress

from .common import DipoleOperator, field_noise_ppm, forward_diff, half_extents, log, torch_device
from .inr import Problem
from .networks import GridINR, level_resolutions, seeded_build


def build_grid_inr(prob_shape, voxel_size_mm, p: Mapping[str, Any], seed: int) -> GridINR:
    ext = half_extents(prob_shape, voxel_size_mm)
    longest = max(int(n) for n in prob_shape) - 1
    max_cells = max(1, int(round(float(p["grid_max_scale"]) * longest)))
    min_cells = min(max(1, int(p["grid_min_cells"])), max_cells)
    res = level_resolutions(ext, int(p["levels"]), min_cells, max_cells)
    return seeded_build(seed, lambda: GridINR(extents=ext, resolutions=res, features=int(p["features_per_level"]),
                                              mlp_width=int(p["mlp_width"]), mlp_layers=int(p["mlp_layers"]),
                                              init_scale=float(p["grid_init_scale"]),
                                              output_scale=float(p["output_scale"])))


class FullVolumeLoss:
    """The three INR-QSM terms on the whole volume, divided by ``sum(m f^2)`` (dimensionless)::

        data   = |m (D*chi - f)|^2
        smooth = sum_j |WG_j grad_j chi|^2
        grad   = sum_j |WG_j (grad_j D*chi - grad_j f)|^2

    ``D*`` is the exact zero-padded full-volume convolution (no patches, so no non-local error to
    compensate).  Dividing every term by the field's energy makes the weights independent of the
    field's scale (the minimiser is then homogeneous of degree 1 in f).
    """

    def __init__(self, prob: Problem, op: DipoleOperator, lam_smooth: float, lam_grad: float):
        self.prob, self.op = prob, op
        self.lam_s, self.lam_g = float(lam_smooth), float(lam_grad)
        self.m = prob.mask.float()
        self.norm = float((prob.field.square() * self.m).sum().item()) or 1.0
        self.grad_f = [forward_diff(prob.field, a) for a in range(3)]

    def terms(self, chi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        phi = self.op(chi)
        data = ((phi - self.prob.field) * self.m).square().sum() / self.norm
        smooth = chi.new_zeros(())
        grad = chi.new_zeros(())
        for a in range(3):
            w = self.prob.wg[a]
            smooth = smooth + (w * forward_diff(chi, a)).square().sum() / self.norm
            grad = grad + (w * (forward_diff(phi, a) - self.grad_f[a])).square().sum() / self.norm
        return data, smooth, grad

    def __call__(self, chi):
        data, smooth, grad = self.terms(chi)
        return data + self.lam_s * smooth + self.lam_g * grad, (data, smooth, grad)


def scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    chi = torch.zeros(mask.shape, device=values.device, dtype=values.dtype)
    chi[mask] = values
    return chi


def loss_and_backward(net: GridINR, pts: torch.Tensor, mask: torch.Tensor, loss_fn: FullVolumeLoss,
                      chunk_points: int):
    """Loss on the full volume and the parameters' gradient.

    When the mask has more than ``chunk_points`` voxels, chi is first evaluated without a graph,
    the loss is differentiated with respect to chi, and the network is back-propagated chunk by
    chunk with that gradient: the same gradient as one pass, with memory bounded by the chunk.
    """
    if pts.shape[0] <= chunk_points:
        loss, terms = loss_fn(scatter(net(pts), mask))
        loss.backward()
        return loss, terms
    chunks = torch.split(pts, chunk_points)
    with torch.no_grad():
        vals = torch.cat([net(c) for c in chunks])
    vals.requires_grad_(True)
    loss, terms = loss_fn(scatter(vals, mask))
    loss.backward()
    for c, g in zip(chunks, torch.split(vals.grad, chunk_points)):
        net(c).backward(g)
    return loss.detach(), tuple(t.detach() for t in terms)


def effective_smoothness(prob: Problem, p: Mapping[str, Any]) -> tuple[float, float]:
    """``lambda_smooth + lambda_smooth_noise * nsr``, nsr = estimated noise variance / mean square
    of the field in the mask: a Wiener-like rule, the prior weighs more as the data get noisier."""
    field = prob.field.cpu().numpy()
    mask = prob.mask.cpu().numpy()
    power = float(np.mean(field[mask].astype(np.float64) ** 2)) if mask.any() else 0.0
    nsr = field_noise_ppm(field, mask) ** 2 / power if power > 0 else 0.0
    return float(p["lambda_smooth"]) + float(p["lambda_smooth_noise"]) * nsr, nsr


def level_weights(step: int, ramp_steps: int, levels: int) -> torch.Tensor | None:
    """Coarse-to-fine: level l fades in between ``l/L`` and ``(l+1)/L`` of ``ramp_steps``."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return None
    t = step / ramp_steps * levels
    return torch.tensor([min(max(t - lvl + 1.0, 0.0), 1.0) for lvl in range(levels)])


@dataclasses.dataclass
class FastResult:
    chi: np.ndarray
    history: list[dict[str, Any]]
    steps: int
    stopped_early: bool
    lambda_smooth: float      # the weight used (after the noise adaptation)
    noise_to_signal: float    # estimated sigma^2 / mean(m f^2)


def fit_fast(prob: Problem, p: Mapping[str, Any], *, device: torch.device | str, seed: int) -> FastResult:
    """Fit the feature grid + MLP to one subject (``p``: the method's parameters) until the data
    term plateaus or ``max_steps``; returns chi (ppm, masked) and the per-step history."""
    device = torch_device(str(device))
    max_steps, min_steps = int(p["max_steps"]), int(p["min_steps"])
    window, tol = int(p["plateau_window"]), float(p["plateau_tol"])
    if max_steps < 1 or window < 1:
        raise ConfigError("inr_qsm_fast: max_steps and plateau_window must be >= 1")
    if not (p["lr"] > 0 and p["lr_end"] > 0):
        raise ConfigError("inr_qsm_fast: lr and lr_end must be positive")
    net = build_grid_inr(prob.shape, prob.voxel_size_mm, p, seed).to(device)
    op = DipoleOperator(prob.shape, prob.voxel_size_mm, prob.b0_dir, d0=p["d0"], pad_factor=p["pad_factor"],
                        device=device)
    lam_s, nsr = effective_smoothness(prob, p)
    loss_fn = FullVolumeLoss(prob, op, lam_s, p["lambda_grad"])
    pts = prob.coords[prob.mask]
    chunk = max(1, int(p["chunk_points"]))
    opt = torch.optim.Adam(net.parameters(), lr=p["lr"])
    gamma = (p["lr_end"] / p["lr"]) ** (1.0 / max(max_steps - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    ramp = int(p["coarse_to_fine_steps"])
    log.info("inr_qsm_fast: estimated noise-to-signal ratio of the field %.3g -> lambda_smooth %.3g", nsr, lam_s)
    log.info("inr_qsm_fast: %d levels %s..%s x %d features, MLP %dx%d, %d mask voxels, padded FFT %s, on %s",
             net.levels, tuple(net.grids[0].shape[2:]), tuple(net.grids[-1].shape[2:]), int(p["features_per_level"]),
             int(p["mlp_layers"]), int(p["mlp_width"]), pts.shape[0], op.pshape, device)
    history: list[dict[str, Any]] = []
    data_hist: list[float] = []
    stopped = False
    t_start = time.perf_counter()
    step = 0
    progress = Progress(max_steps, "inr_qsm_fast fit", logger=log)
    for step in range(1, max_steps + 1):
        lw = level_weights(step - 1, ramp, net.levels)
        net.level_weights = None if lw is None else lw.to(device)
        opt.zero_grad(set_to_none=True)
        loss, (data, smooth, grad) = loss_and_backward(net, pts, prob.mask, loss_fn, chunk)
        opt.step()
        sched.step()
        row = {"step": step, "loss": loss.item(), "data": data.item(), "smooth": smooth.item(),
               "grad": grad.item(), "seconds": time.perf_counter() - t_start}
        history.append(row)
        data_hist.append(row["data"])
        progress.update(1, {"loss": row["loss"]})
        if step % max(1, int(p["log_every"])) == 0 or step == 1:
            log.info("inr_qsm_fast step %d/%d  loss %.4g (data %.4g, smooth %.4g, grad %.4g)  %.1f s", step,
                     max_steps, row["loss"], row["data"], row["smooth"], row["grad"], row["seconds"])
        if step >= max(min_steps, ramp, 2 * window) and plateaued(data_hist, window, tol):
            stopped = True
            log.info("inr_qsm_fast: data term plateaued at step %d (best of the last %d steps improved "
                     "< %.3g relative); stopping", step, window, tol)
            break
    progress.total = step  # an early stop ends the bar where it stopped
    progress.close()
    net.level_weights = None
    net.eval()
    with torch.no_grad():
        vals = torch.cat([net(c) for c in torch.split(pts, chunk)])
    chi = scatter(vals, prob.mask)
    log.info("inr_qsm_fast: %d steps in %.1f s", step, time.perf_counter() - t_start)
    return FastResult(chi.cpu().numpy().astype(np.float32), history, step, stopped, lam_s, nsr)


def plateaued(values, window: int, tol: float) -> bool:
    """True when the best value of the last ``window`` steps improves on the best before them by
    less than ``tol`` (relative)."""
    if len(values) < 2 * window:
        return False
    before = min(values[:-window])
    recent = min(values[-window:])
    return (before - recent) <= tol * abs(before)
