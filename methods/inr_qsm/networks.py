"""The two coordinate networks: SIREN (INR-QSM) and a multiresolution feature grid + MLP (fast).

Both map normalised coordinates ``(N, 3)`` (see :func:`.common.normalised_coords`) to chi in
ppm ``(N,)``.  Initialisation is seeded through :func:`seeded_build` and done on the CPU, so a
seed gives the same initial weights on every device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def seeded_build(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with torch's global RNG seeded by ``seed``, without disturbing it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


class Siren(nn.Module):
    """SIREN (Sitzmann et al., NeurIPS 2020): ``sine_layers`` sine layers and a linear output.

    ``h1 = sin(w0_first (W1 x + b1))``, ``h(k+1) = sin(w0_hidden (Wk hk + bk))``,
    ``chi = output_scale * (W_out h + b_out)``.  Weights are uniform in ``+-1/n_in`` (first layer)
    and ``+-sqrt(6/n_in)/w0`` (the others, with ``w0_last`` for the output layer); the sine
    layers' biases keep PyTorch's default ``+-1/sqrt(n_in)``, as the original SIREN code.  The
    output bias starts at zero when ``zero_output_bias`` (qsmbench's choice, not the paper's: with
    the default ``+-1/sqrt(n_in)`` a fresh network starts from a random constant chi of up to
    0.125 ppm for 64 hidden features -- an NRMSE of about 100 % before the first step -- which the
    fit must first unlearn).

    Under CUDA autocast the matrix products run in half precision but the first layer and every
    sine argument stay in float32 (``sin(40 z)`` loses too much in float16).
    """

    def __init__(self, *, hidden_features: int = 512, sine_layers: int = 10, w0_first: float = 40.0,
                 w0_hidden: float = 40.0, w0_last: float = 40.0, output_scale: float = 1.0,
                 zero_output_bias: bool = True):
        super().__init__()
        if sine_layers < 1 or hidden_features < 1:
            raise ValueError("a SIREN needs at least one sine layer of width >= 1")
        self.w0_first, self.w0_hidden, self.output_scale = float(w0_first), float(w0_hidden), float(output_scale)
        widths = [3] + [hidden_features] * sine_layers
        self.sines = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(hidden_features, 1)
        with torch.no_grad():
            for i, lin in enumerate(self.sines):
                n_in = lin.in_features
                bound = 1.0 / n_in if i == 0 else math.sqrt(6.0 / n_in) / self.w0_hidden
                lin.weight.uniform_(-bound, bound)
            bound = math.sqrt(6.0 / hidden_features) / float(w0_last)
            self.out.weight.uniform_(-bound, bound)
            if zero_output_bias:
                self.out.bias.zero_()

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        first = self.sines[0]
        ctx = (torch.autocast(device_type=coords.device.type, enabled=False)
               if torch.is_autocast_enabled(coords.device.type) else contextlib.nullcontext())
        with ctx:
            h = torch.sin(self.w0_first * first(coords.float()))
        for lin in self.sines[1:]:
            h = torch.sin(self.w0_hidden * lin(h).float())
        return self.out(h).float()[:, 0] * self.output_scale


def level_resolutions(extents: Sequence[float], levels: int, min_cells: int, max_cells: int
                      ) -> list[tuple[int, int, int]]:
    """Nodes per axis of each grid level: cells grow geometrically from ``min_cells`` to
    ``max_cells`` across the longest axis (extent 1); shorter axes get proportionally fewer."""
    if levels < 1 or min_cells < 1 or max_cells < min_cells:
        raise ValueError(f"need levels >= 1 and 1 <= min_cells <= max_cells, got {levels}, {min_cells}, "
                         f"{max_cells}")
    growth = (max_cells / min_cells) ** (1.0 / max(levels - 1, 1))
    out = []
    for level in range(levels):
        cells = min_cells * growth ** level
        out.append(tuple(max(1, int(round(cells * e))) + 1 for e in extents))
    return out


class GridINR(nn.Module):
    """Dense multiresolution feature grid (trilinear, pure PyTorch) followed by a small MLP.

    Level ``l`` is a grid of ``features`` channels with ``resolutions[l]`` nodes spanning the
    volume's extent (corner nodes on the outermost voxel centres); a point's encoding is the
    concatenation of the trilinearly interpolated features of all levels, optionally multiplied
    by per-level weights (coarse-to-fine schedule).  The MLP (ReLU, ``mlp_layers`` hidden layers
    of ``mlp_width``) maps it to chi in ppm; the last bias starts at zero so chi starts near zero.
    The representation is continuous in the coordinates, like Instant-NGP's dense-grid variant
    (Mueller et al., ACM TOG 2022), without the hash table: at the volume sizes of QSM a dense
    grid fits in memory and avoids hash collisions.
    """

    def __init__(self, *, extents: Sequence[float], resolutions: Sequence[Sequence[int]], features: int = 2,
                 mlp_width: int = 32, mlp_layers: int = 2, init_scale: float = 1e-4, output_scale: float = 1.0):
        super().__init__()
        self.grids = nn.ParameterList(
            nn.Parameter(torch.empty(1, features, *map(int, r)).uniform_(-init_scale, init_scale))
            for r in resolutions)
        # grid_sample takes (x, y, z) = (last, middle, first) array axis, each in [-1, 1]
        self.register_buffer("inv_extent", torch.tensor([1.0 / e for e in extents][::-1], dtype=torch.float32))
        self.output_scale = float(output_scale)
        width_in = features * len(self.grids)
        layers: list[nn.Module] = []
        for _ in range(mlp_layers):
            layers += [nn.Linear(width_in, mlp_width), nn.ReLU()]
            width_in = mlp_width
        last = nn.Linear(width_in, 1)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.mlp = nn.Sequential(*layers)
        self.level_weights: torch.Tensor | None = None

    @property
    def levels(self) -> int:
        return len(self.grids)

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        g = (coords.float().flip(-1) * self.inv_extent).view(1, -1, 1, 1, 3)
        feats = []
        for level, grid in enumerate(self.grids):
            f = F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True)
            f = f.view(grid.shape[1], -1)
            if self.level_weights is not None:
                f = f * self.level_weights[level]
            feats.append(f)
        return torch.cat(feats, 0).t()

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(coords))[:, 0] * self.output_scale
