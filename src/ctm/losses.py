"""The certainty loss and accuracy of the CTM (the seed tutorial's definitions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def per_tick_cross_entropy(predictions: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy at every tick: predictions (B, C, T), targets (B,) -> (B, T)."""
    return F.cross_entropy(predictions, targets.unsqueeze(-1).expand(-1, predictions.shape[-1]),
                           reduction="none")


def certainty_loss(predictions: Tensor, certainties: Tensor, targets: Tensor,
                   use_most_certain: bool = True) -> tuple[Tensor, Tensor]:
    """Mean of the cross-entropy at each sample's lowest-loss tick and at its most-certain tick.

    predictions (B, C, T), certainties (B, 2, T), targets (B,). Returns the scalar loss and the tick
    used for the second term, (B,): the most-certain tick, or the last tick when
    `use_most_certain=False`.
    """
    if predictions.dim() != 3 or certainties.dim() != 3 or targets.dim() != 1:
        raise ValueError(
            "expected predictions (B, C, T), certainties (B, 2, T) and targets (B,), got shapes "
            f"{tuple(predictions.shape)}, {tuple(certainties.shape)}, {tuple(targets.shape)}"
        )
    losses = per_tick_cross_entropy(predictions, targets)  # (B, T)
    lowest_loss_tick = losses.argmin(dim=1)
    if use_most_certain:
        selected_tick = certainties[:, 1].argmax(dim=-1)
    else:
        selected_tick = torch.full_like(lowest_loss_tick, predictions.shape[-1] - 1)
    rows = torch.arange(predictions.shape[0], device=predictions.device)
    loss = (losses[rows, lowest_loss_tick].mean() + losses[rows, selected_tick].mean()) / 2
    return loss, selected_tick


def accuracy(predictions: Tensor, targets: Tensor, tick: Tensor | int) -> float:
    """Fraction of samples whose argmax at `tick` (an int, or one tick per sample (B,)) is the target."""
    rows = torch.arange(predictions.shape[0], device=predictions.device)
    if isinstance(tick, int):
        tick = torch.full_like(rows, tick)
    predicted = predictions.argmax(dim=1)[rows, tick.to(predictions.device)]
    return (predicted == targets.to(predicted.device)).float().mean().item()
