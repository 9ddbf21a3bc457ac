"""The certainty loss and accuracy of the CTM (the seed tutorial's definitions), over one or several output
positions.

With P output positions (`CTMConfig.out_positions`) predictions (B, P x C, T) hold C classes per position and
targets are (B, P); the cross-entropy of a tick is the mean over the positions, so each sample still has one
lowest-loss tick and one most-certain tick (the official code's `parity_loss`). With one position targets
are (B,), as in the tutorial.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def per_position_logits(predictions: Tensor, targets: Tensor) -> Tensor:
    """predictions (B, P x C, T) as (B, C, P, T) for targets (B, P); (B, C, 1, T) for targets (B,)."""
    positions = 1 if targets.dim() == 1 else targets.shape[1]
    B, PC, T = predictions.shape
    return predictions.reshape(B, positions, PC // positions, T).transpose(1, 2)


def _targets_per_position(targets: Tensor) -> Tensor:
    return targets.unsqueeze(1) if targets.dim() == 1 else targets  # (B, P)


def per_tick_cross_entropy(predictions: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy at every tick, averaged over the output positions: predictions (B, C, T) with targets
    (B,), or (B, P x C, T) with targets (B, P) -> (B, T)."""
    logits = per_position_logits(predictions, targets)  # (B, C, P, T)
    y = _targets_per_position(targets).unsqueeze(-1).expand(-1, -1, predictions.shape[-1])  # (B, P, T)
    return F.cross_entropy(logits, y, reduction="none").mean(1)


def certainty_loss(predictions: Tensor, certainties: Tensor, targets: Tensor,
                   use_most_certain: bool = True) -> tuple[Tensor, Tensor]:
    """Mean of the cross-entropy at each sample's lowest-loss tick and at its most-certain tick.

    predictions (B, C, T), certainties (B, 2, T), targets (B,); or, with P output positions, predictions
    (B, P x C, T) and targets (B, P) (the cross-entropy of a tick is then the mean over the positions).
    Returns the scalar loss and the tick used for the second term, (B,): the most-certain tick, or the last
    tick when `use_most_certain=False`.
    """
    if predictions.dim() != 3 or certainties.dim() != 3 or targets.dim() not in (1, 2) \
            or predictions.shape[1] % (1 if targets.dim() == 1 else targets.shape[1]):
        raise ValueError(
            "expected predictions (B, C, T), certainties (B, 2, T) and targets (B,), or predictions "
            "(B, P x C, T) with targets (B, P), got shapes "
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


def tick_hits(predictions: Tensor, targets: Tensor) -> Tensor:
    """Whether each position's argmax is its target, at every tick: (B, P, T) bool (P = 1 for targets (B,))."""
    predicted = per_position_logits(predictions, targets).argmax(dim=1)  # (B, P, T)
    return predicted == _targets_per_position(targets).to(predicted.device).unsqueeze(-1)


def accuracy(predictions: Tensor, targets: Tensor, tick: Tensor | int) -> float:
    """Fraction of samples whose argmax at `tick` (an int, or one tick per sample (B,)) is the target; with
    several output positions, the fraction of positions (per-bit accuracy)."""
    rows = torch.arange(predictions.shape[0], device=predictions.device)
    if isinstance(tick, int):
        tick = torch.full_like(rows, tick)
    hits = tick_hits(predictions, targets)[rows, :, tick.to(predictions.device)]  # (B, P)
    return hits.float().mean().item()
