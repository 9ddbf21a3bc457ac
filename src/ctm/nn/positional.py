"""Positional embeddings added to the backbone's features before they become key/value tokens.

Each maps features (B, C, *grid) to an embedding that broadcasts against them:
* `learnable-fourier`: random Fourier features of the (x, y) coordinates in [0, 1] through a small MLP
  (Li et al. 2021, "Learnable Fourier Features for Multi-Dimensional Spatial Positional Encoding");
* `multi-learnable-fourier`: ten of those with frequency scales from 1 to 0.1, mixed by softmax weights;
* `custom-rotational`: a learnable 2-d vector rotated by 0..180 degrees across the columns; position (a, b)
  of a square W x W grid is the rotations of column a and of column b, projected;
* `custom-rotational-1d`: the same for a sequence, one rotation per position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

N_FOURIER_SCALES = 10


def build_positional_embedding(kind: str, channels: int) -> nn.Module | None:
    """The embedding `kind` (`CTMConfig.positional_embedding`) for `channels` feature channels; None for none."""
    return {"none": lambda: None, "learnable-fourier": lambda: LearnableFourier(channels),
            "multi-learnable-fourier": lambda: MultiLearnableFourier(channels),
            "custom-rotational": lambda: Rotational2d(channels),
            "custom-rotational-1d": lambda: Rotational1d(channels)}[kind]()


def _linspace(start: float, stop: float, n: int) -> list[float]:
    """n evenly spaced floats from start to stop, computed as numpy.linspace does."""
    step = (stop - start) / (n - 1) if n > 1 else 0.0
    return [start + i * step for i in range(n - 1)] + [stop]


class LearnableFourier(nn.Module):
    """Fourier features of the grid coordinates, [cos, sin](coords W_r) / sqrt(F), through an MLP with a GLU."""

    def __init__(self, channels: int, n_features: int = 256, hidden: int = 128, gamma: float = 1 / 2.5) -> None:
        super().__init__()
        self.frequencies = nn.Linear(2, n_features // 2, bias=False)
        nn.init.normal_(self.frequencies.weight, std=gamma ** -2)
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.GLU(), nn.Linear(hidden // 2, channels),
                                 nn.LayerNorm(channels))

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, H, W) -> (1, C, H, W)."""
        H, W = features.shape[-2:]
        kw = dict(dtype=_coordinate_dtype(features), device=features.device)
        x = (torch.arange(W, **kw) / (W - 1)).expand(H, W)  # each column's coordinate, 0 .. 1
        y = (torch.arange(H, **kw) / (H - 1)).unsqueeze(1).expand(H, W)
        projected = self.frequencies(torch.stack((x, y), dim=-1))  # (H, W, F/2)
        fourier = torch.cat((projected.cos(), projected.sin()), dim=-1) / math.sqrt(2 * projected.shape[-1])
        return self.mlp(fourier).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)


class MultiLearnableFourier(nn.Module):
    """A softmax-weighted sum of `LearnableFourier` embeddings initialised at different frequency scales."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scales = nn.ModuleList(LearnableFourier(channels, gamma=g)
                                    for g in _linspace(1.0, 0.1, N_FOURIER_SCALES))
        self.mix = nn.Parameter(torch.ones(N_FOURIER_SCALES))

    def forward(self, features: Tensor) -> Tensor:
        embeddings = torch.stack([scale(features) for scale in self.scales])  # (S, 1, C, H, W)
        return (embeddings * self.mix.softmax(-1).view(-1, 1, 1, 1, 1)).sum(0)


def _coordinate_dtype(features: Tensor) -> torch.dtype:
    """Positions in float32, or float64 for float64 features (never in a low precision under autocast)."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def _rotations(n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of n angles evenly spaced over 0 .. 180 degrees."""
    theta = torch.deg2rad(torch.linspace(0, 180, n, dtype=_coordinate_dtype(like), device=like.device))
    return theta.cos(), theta.sin()


class Rotational2d(nn.Module):
    """Square grids: column a's rotation of a learnable start vector, next to column b's, projected."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.tensor([0.0, 1.0]))
        self.projection = nn.Linear(4, channels)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, W, W) -> (1, C, W, W)."""
        H, W = features.shape[-2:]
        if H != W:
            raise ValueError(f"the custom-rotational positional embedding needs a square feature map, got {H}x{W}")
        cos, sin = _rotations(W, features)
        s0, s1 = self.start
        rotated = torch.stack((cos * s0 - sin * s1, sin * s0 + cos * s1), dim=-1)  # (W, 2)
        grid = torch.cat((rotated.unsqueeze(1).expand(W, W, 2), rotated.unsqueeze(0).expand(W, W, 2)), dim=-1)
        return self.projection(grid).permute(2, 0, 1).unsqueeze(0)  # (1, C, W, W)


class Rotational1d(nn.Module):
    """Sequences: position l is the vector (0, 1) rotated by l / (L - 1) x 180 degrees, projected."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.projection = nn.Linear(2, channels)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, L) -> (1, C, L)."""
        cos, sin = _rotations(features.shape[2], features)
        return self.projection(torch.stack((-sin, cos), dim=-1)).t().unsqueeze(0)  # (1, C, L)
