"""INR-QSM's fitting loop: patches, the three-term loss, phase compensation (Zhang et al. 2024)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from qsmbench.errors import ConfigError
from qsmbench.progress import Progress

from .common import DipoleOperator, amp_settings, forward_diff, int_list, log, normalised_coords, torch_device
from .networks import Siren, seeded_build
from .patches import Patch, make_patches


@dataclasses.dataclass
class Problem:
    """One subject on the device: field, mask, coordinates and edge weights as tensors."""

    field: torch.Tensor          # (X, Y, Z) ppm
    mask: torch.Tensor           # (X, Y, Z) bool
    coords: torch.Tensor         # (X, Y, Z, 3)
    wg: list[torch.Tensor]       # per axis, shape of the forward difference along it
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]

    @classmethod
    def build(cls, field, mask, voxel_size_mm, b0_dir, wg, device) -> Problem:
        mask = np.asarray(mask, bool)
        return cls(field=torch.from_numpy(np.asarray(field, np.float32) * mask).to(device),
                   mask=torch.from_numpy(mask).to(device),
                   coords=torch.from_numpy(normalised_coords(mask.shape, voxel_size_mm)).to(device),
                   wg=[torch.from_numpy(np.asarray(w, np.float32)).to(device) for w in wg],
                   voxel_size_mm=tuple(voxel_size_mm), b0_dir=tuple(b0_dir))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.field.shape)  # type: ignore[return-value]


def build_siren(p: Mapping[str, Any], seed: int) -> Siren:
    return seeded_build(seed, lambda: Siren(hidden_features=int(p["hidden_features"]),
                                            sine_layers=int(p["sine_layers"]), w0_first=p["w0_first"],
                                            w0_hidden=p["w0_hidden"], w0_last=p["w0_last"],
                                            output_scale=p["output_scale"],
                                            zero_output_bias=bool(p.get("zero_output_bias", True))))


def loss_normaliser(prob: Problem, normalise: bool) -> float:
    """``mean(f^2)`` over the mask (ppm^2) when ``normalise``, else 1: every term of the loss is
    divided by it, so the loss is O(1) whatever the field's scale (its gradients stay far above
    Adam's eps) and the minimiser is unchanged."""
    if not normalise:
        return 1.0
    m = prob.mask
    power = float(prob.field[m].double().square().mean().item()) if bool(m.any()) else 0.0
    return power if power > 0 else 1.0


def predict(net: torch.nn.Module, prob: Problem, *, mask_chi: bool, chunk_points: int) -> torch.Tensor:
    """The network on the full grid (no gradient), in chunks; zero outside the mask if ``mask_chi``."""
    pts = prob.coords[prob.mask] if mask_chi else prob.coords.reshape(-1, 3)
    with torch.no_grad():
        vals = torch.cat([net(c).float() for c in torch.split(pts, max(1, int(chunk_points)))])
    if not mask_chi:
        return vals.view(prob.shape)
    chi = torch.zeros(prob.shape, device=vals.device)
    chi[prob.mask] = vals
    return chi


def outside_fields(chi_hat: torch.Tensor, patches: Sequence[Patch], op_full: DipoleOperator) -> list[torch.Tensor]:
    """Phase compensation: per patch, ``R_p[F^-1 D F(chi_hat (1 - 1_p))]``, the field that the
    current estimate *outside* the patch induces inside it, on the full zero-padded grid."""
    out = []
    with torch.no_grad():
        for p in patches:
            x = chi_hat.clone()
            x[p.slices] = 0
            out.append(op_full(x)[p.slices].clone())
    return out


def compensated_target(prob: Problem, patch: Patch, outside: torch.Tensor | None) -> torch.Tensor:
    """``f~_p = R_p[f] - R_p[F^-1 D F(chi_hat (1 - 1_p))]`` (just ``R_p[f]`` before compensation)."""
    target = prob.field[patch.slices]
    return target if outside is None else target - outside


def diff_slices(patch: Patch, axis: int) -> tuple[slice, slice, slice]:
    """The patch's slice into a forward-difference array along ``axis`` (one shorter there)."""
    sl = list(patch.slices)
    s = sl[axis]
    sl[axis] = slice(s.start, s.stop - 1)
    return tuple(sl)  # type: ignore[return-value]


def patch_terms(net: torch.nn.Module, prob: Problem, patch: Patch, target: torch.Tensor, op_patch: DipoleOperator,
                *, mask_chi: bool, norm: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data, smoothness, gradient consistency) of one patch, each a sum divided by the patch's
    voxel count (a mean, as ``mse_loss`` would give) and by ``norm`` (:func:`loss_normaliser`)::

        data   = |m (D*chi_p - f~_p)|^2
        smooth = sum_j |WG_j grad_j chi_p|^2
        grad   = sum_j |WG_j (grad_j D*chi_p - grad_j f~_p)|^2
    """
    sl = patch.slices
    m = prob.mask[sl]
    if mask_chi:
        chi = torch.zeros(patch.size, device=prob.field.device)
        chi[m] = net(prob.coords[sl][m]).float()
    else:
        chi = net(prob.coords[sl].reshape(-1, 3)).float().view(patch.size)
    phi = op_patch(chi)
    n = float(np.prod(patch.size)) * float(norm)
    data = ((phi - target) * m).square().sum() / n
    smooth = chi.new_zeros(())
    grad = chi.new_zeros(())
    for axis in range(3):
        w = prob.wg[axis][diff_slices(patch, axis)]
        smooth = smooth + (w * forward_diff(chi, axis)).square().sum() / n
        grad = grad + (w * (forward_diff(phi, axis) - forward_diff(target, axis))).square().sum() / n
    return data, smooth, grad


def train_step(net, opt, scaler, prob: Problem, batch: Sequence[Patch], outside: Sequence[torch.Tensor | None],
               op_patch: DipoleOperator, lam_s: float, lam_g: float, *, mask_chi: bool,
               amp: tuple[bool, torch.dtype] = (False, torch.float16), norm: float = 1.0) -> np.ndarray:
    """One Adam step on a batch of patches; returns the summed (loss, data, smooth, grad)."""
    use_amp, amp_dtype = amp
    device_type = prob.field.device.type
    opt.zero_grad(set_to_none=True)
    total, sums = None, np.zeros(4)
    for patch, out in zip(batch, outside):
        target = compensated_target(prob, patch, out)
        with torch.autocast(device_type=device_type, dtype=amp_dtype, enabled=use_amp):
            data, smooth, grad = patch_terms(net, prob, patch, target, op_patch, mask_chi=mask_chi, norm=norm)
        loss = data + lam_s * smooth + lam_g * grad
        total = loss if total is None else total + loss
        sums += [loss.item(), data.item(), smooth.item(), grad.item()]
    scaler.scale(total).backward()
    scaler.step(opt)
    scaler.update()
    return sums


@dataclasses.dataclass
class FitResult:
    chi: np.ndarray                     # ppm, masked
    history: list[dict[str, Any]]      # one row per epoch
    state: dict[str, torch.Tensor]     # network weights (CPU)
    patches: list[Patch]
    norm: float = 1.0                  # the loss normaliser (ppm^2), see loss_normaliser


def fit(prob: Problem, p: Mapping[str, Any], *, device: torch.device | str, seed: int, epochs: int | None = None,
        init_state: Mapping[str, torch.Tensor] | None = None, label: str = "inr_qsm fit",
        on_epoch: Callable[[dict[str, Any], torch.nn.Module, Problem], None] | None = None) -> FitResult:
    """Fit a SIREN to one subject with INR-QSM's patch loss; ``p`` holds the method parameters
    (``epochs`` overrides ``p["epochs"]``); progress goes to a bar or the log (``label``).
    ``on_epoch(row, net, prob)`` is called after each epoch (benchmarks trace the error with it)."""
    device = torch_device(str(device))
    epochs = int(p["epochs"] if epochs is None else epochs)
    if epochs < 1:
        raise ConfigError(f"inr_qsm: epochs must be >= 1, got {epochs}")
    if not (p["lr_start"] > 0 and p["lr_end"] > 0):
        raise ConfigError("inr_qsm: lr_start and lr_end must be positive")
    norm = loss_normaliser(prob, bool(p.get("normalise_loss", True)))
    every = int(p["compensate_every"])
    if p["phase_compensation"] and every < 1:
        raise ConfigError(f"inr_qsm: compensate_every must be >= 1, got {every}")
    mask_np = prob.mask.cpu().numpy()
    patches = make_patches(mask_np, int_list(p["patch_size"], "patch_size"),
                           stride_fraction=float(p["patch_stride_fraction"]),
                           min_brain_fraction=float(p["min_brain_fraction"]))
    if not patches:
        raise ConfigError("inr_qsm: no patch contains brain voxels")
    batch = max(1, int(p["patches_per_step"]))
    steps_per_epoch = math.ceil(len(patches) / batch)
    min_steps = int(p.get("min_steps", 0))
    if epochs * steps_per_epoch < min_steps:   # a volume of few patches: more epochs, same schedule shape
        log.info("inr_qsm: %d patch(es) -> %d epochs instead of %d, for at least %d optimiser steps",
                 len(patches), math.ceil(min_steps / steps_per_epoch), epochs, min_steps)
        epochs = math.ceil(min_steps / steps_per_epoch)
    op_patch = DipoleOperator(patches[0].size, prob.voxel_size_mm, prob.b0_dir, d0=p["d0"],
                              pad_factor=p["patch_pad_factor"], device=device)
    op_full = DipoleOperator(prob.shape, prob.voxel_size_mm, prob.b0_dir, d0=p["d0"],
                             pad_factor=p["volume_pad_factor"], device=device)
    net = build_siren(p, seed)
    if init_state is not None:
        net.load_state_dict(init_state)
    net = net.to(device)
    use_amp, amp_dtype = amp_settings(device, p["mixed_precision"], p["amp_dtype"])
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    opt = torch.optim.Adam(net.parameters(), lr=p["lr_start"])
    gamma = (p["lr_end"] / p["lr_start"]) ** (1.0 / max(epochs - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    gen = torch.Generator().manual_seed(int(seed))
    lam_s, lam_g = float(p["lambda_smooth"]), float(p["lambda_grad"])
    outside: list[torch.Tensor | None] = [None] * len(patches)
    history: list[dict[str, Any]] = []
    log.info("inr_qsm: %d patches of %s, SIREN %dx%d, %d epochs on %s%s", len(patches), patches[0].size,
             int(p["sine_layers"]), int(p["hidden_features"]), epochs, device,
             ", mixed precision" if use_amp else "")
    t_start = time.perf_counter()
    progress = Progress(epochs * len(patches), label, unit="patch step", logger=log)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        compensated = bool(p["phase_compensation"]) and epoch % every == 0 and (epoch > 0 or init_state is not None)
        if compensated:
            net.eval()
            chi_hat = predict(net, prob, mask_chi=p["mask_chi"], chunk_points=p["chunk_points"])
            outside = list(outside_fields(chi_hat, patches, op_full))
            del chi_hat
        net.train()
        sums = np.zeros(4)
        order = torch.randperm(len(patches), generator=gen).tolist()
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            sums += train_step(net, opt, scaler, prob, [patches[i] for i in idx], [outside[i] for i in idx],
                               op_patch, lam_s, lam_g, mask_chi=p["mask_chi"], amp=(use_amp, amp_dtype), norm=norm)
            progress.update(len(idx), {"epoch": epoch + 1})
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "compensated": compensated,
               "seconds": time.perf_counter() - t0,
               **dict(zip(("loss", "data", "smooth", "grad"), (sums / len(patches)).tolist()))}
        history.append(row)
        sched.step()
        log.info("inr_qsm epoch %d/%d  loss %.4g (data %.4g, smooth %.4g, grad %.4g)  lr %.3g%s  %.2f s",
                 epoch + 1, epochs, row["loss"], row["data"], row["smooth"], row["grad"], row["lr"],
                 "  [phase compensation]" if compensated else "", row["seconds"])
        if on_epoch is not None:
            on_epoch(row, net, prob)
    progress.close()
    net.eval()
    chi = predict(net, prob, mask_chi=p["mask_chi"], chunk_points=p["chunk_points"]) * prob.mask
    log.info("inr_qsm: done in %.1f s (final loss %.4g)", time.perf_counter() - t_start, history[-1]["loss"])
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return FitResult(chi.cpu().numpy().astype(np.float32), history, state, patches, norm)
