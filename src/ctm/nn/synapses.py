"""Synapses: the model that mixes [attention output, post-activations z_t] into pre-activations a_t (B, D).

`synapse_depth` 1 is one layer, Linear -> GLU -> LayerNorm (the tutorial's); a larger depth is a U-Net of
that many widths from D down to 16, with LayerNorm-ed skip connections.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

UNET_MIN_WIDTH = 16


def build_synapses(d_in: int, d_model: int, depth: int, dropout: float) -> nn.Module:
    return SynapseLayer(d_in, d_model, dropout) if depth == 1 else SynapseUNet(d_in, d_model, depth, dropout)


class SynapseLayer(nn.Sequential):
    """Dropout -> Linear (d_in -> 2D) -> GLU -> LayerNorm(D); indexable as [linear, glu, norm]."""

    def __init__(self, d_in: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(d_in, 2 * d_model), nn.GLU(), nn.LayerNorm(d_model))
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        if self.dropout:
            x = F.dropout(x, self.dropout, self.training)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}" if self.dropout else ""


def _block(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    """Dropout -> Linear -> LayerNorm -> SiLU."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.SiLU())


class SynapseUNet(nn.Module):
    """A U-Net over widths w_0 = D > ... > w_{depth-1} = 16 (evenly spaced, truncated to integers).

    The input is projected to w_0; `down[i]` maps w_i -> w_{i+1}; on the way back `up[i]` maps w_{i+1} -> w_i
    and the result is added to the way down's activation of width w_i and normalised (`skip_norms[i]`).
    """

    def __init__(self, d_in: int, d_model: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        step = (UNET_MIN_WIDTH - d_model) / (depth - 1)
        widths = [int(d_model + i * step) for i in range(depth - 1)] + [UNET_MIN_WIDTH]
        self.first = nn.Sequential(nn.Linear(d_in, widths[0]), nn.LayerNorm(widths[0]), nn.SiLU())
        self.down = nn.ModuleList(_block(a, b, dropout) for a, b in zip(widths, widths[1:], strict=False))
        self.up = nn.ModuleList(_block(b, a, dropout) for a, b in zip(widths, widths[1:], strict=False))
        self.skip_norms = nn.ModuleList(nn.LayerNorm(w) for w in widths[:-1])

    def forward(self, x: Tensor) -> Tensor:
        down = [self.first(x)]  # widths w_0 .. w_{depth-1}
        for layer in self.down:
            down.append(layer(down[-1]))
        h = down[-1]
        for i in reversed(range(len(self.up))):
            h = self.skip_norms[i](self.up[i](h) + down[i])
        return h  # (B, D)
