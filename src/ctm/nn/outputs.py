"""What a CTM returns: logits and certainties per tick (`CTMOutput`), the per-tick internals a tracked forward
keeps (`Tracking`), and certainty as 1 - normalised entropy."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["CTMOutput", "Tracking", "certainty", "normalised_entropy"]


class Tracking(NamedTuple):
    """Per-tick internals for visualisation; tensors on the model's device, ticks first."""

    pre_activations: Tensor  # (T, B, D) the newest trace entry a_t
    post_activations: Tensor  # (T, B, D) z_{t+1}
    attention: Tensor  # (T, B, heads, N) attention weights per head (readers: direct N = 0, schedule zero-padded)
    synchronisation_out: Tensor  # (T, B, synch_size_out)
    synchronisation_action: Tensor  # (T, B, synch_size_action)
    token_grid: tuple[int, int]  # (H', W'): attention[..., n] is token (n // W', n % W'); (1, L) for a sequence


class _CTMOutputBase(NamedTuple):
    predictions: Tensor  # (B, C, T) logits per tick
    certainties: Tensor  # (B, 2, T) [normalised entropy, 1 - normalised entropy]
    synchronisation_out: Tensor  # (B, synch_size_out) at the last tick


class CTMOutput(_CTMOutputBase):
    """`(predictions, certainties, synchronisation_out)`, unpackable like the seed's 3-tuple.

    `.tracking` holds a `Tracking` when the forward ran with `track=True`, else None.
    """

    tracking: Tracking | None

    def __new__(cls, predictions: Tensor, certainties: Tensor, synchronisation_out: Tensor,
                tracking: Tracking | None = None) -> CTMOutput:
        self = super().__new__(cls, predictions, certainties, synchronisation_out)
        self.tracking = tracking
        return self


def normalised_entropy(logits: Tensor, dim: int = -1) -> Tensor:
    """Entropy of softmax(logits) over `dim`, divided by log(C): 0 is one-hot, 1 is uniform."""
    log_p = torch.log_softmax(logits, dim=dim)
    return -(log_p.exp() * log_p).sum(dim=dim) / math.log(logits.shape[dim])


def certainty(logits: Tensor, dim: int = -1) -> Tensor:
    """[normalised entropy, 1 - normalised entropy] of the classes on `dim`, stacked on that dim:
    (B, C) -> (B, 2); (B, C, T) with dim=1 -> (B, 2, T)."""
    ne = normalised_entropy(logits, dim)
    return torch.stack((ne, 1 - ne), dim)


# ---------------------------------------------------------------------------------------------- modules
