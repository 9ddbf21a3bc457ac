"""The maze loss (the official `maze_loss`): the certainty loss over the route's moves with an automatic
curriculum, so that a sample is trained on the moves it already gets right plus a few beyond.

predictions (B, L x 5, T) hold the 5 move classes of each of the L route steps at every tick; targets (B, L).
For each sample, the longest correct prefix of the route over all ticks decides how far the loss reaches: the
steps up to `lookahead` beyond the end of that prefix (the whole route once it is all right). The cross-entropy
of a tick is the mean over those steps, and the loss is the mean of the lowest-loss tick's and the most-certain
tick's, as `ctm.training.losses.certainty_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...training.losses import per_position_logits

#: how many steps beyond the correct prefix the curriculum trains (the official cirriculum_lookahead)
LOOKAHEAD = 5


def correct_prefix(predictions: Tensor, targets: Tensor) -> Tensor:
    """How many of the route's first steps are right at each tick: (B, L x 5, T), (B, L) -> (B, T) int64."""
    hits = per_position_logits(predictions, targets).argmax(1) == targets.unsqueeze(-1)  # (B, L, T)
    return hits.long().cumprod(1).sum(1)


def curriculum_reach(predictions: Tensor, targets: Tensor, lookahead: int = LOOKAHEAD) -> Tensor:
    """How many route steps the loss covers for each sample, (B,): `lookahead` past the last step of the longest
    correct prefix at any tick (the first step counts as that last step when no prefix is right), at most L."""
    last = (correct_prefix(predictions, targets) - 1).clamp(min=0).amax(1)  # (B,)
    return (last + lookahead).clamp(max=targets.shape[1])


def maze_loss(predictions: Tensor, certainties: Tensor, targets: Tensor, lookahead: int = LOOKAHEAD,
              use_most_certain: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The loss, the tick of its second term (B,) (most certain, or the last with `use_most_certain=False`) and
    the curriculum's reach (B,) (`curriculum_reach`)."""
    if predictions.dim() != 3 or targets.dim() != 2 or predictions.shape[1] != 5 * targets.shape[1]:
        raise ValueError(f"maze_loss expects predictions (B, L x 5, T) and targets (B, L), got "
                         f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
    B, L, T = targets.shape[0], targets.shape[1], predictions.shape[-1]
    with torch.no_grad():
        reach = curriculum_reach(predictions, targets, lookahead)
        mask = (torch.arange(L, device=targets.device) < reach[:, None]).to(predictions.dtype)  # (B, L)
    logits = per_position_logits(predictions, targets)  # (B, 5, L, T)
    ce = F.cross_entropy(logits, targets.unsqueeze(-1).expand(B, L, T), reduction="none")  # (B, L, T)
    losses = (ce * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, T)
    lowest = losses.argmin(1)
    chosen = certainties[:, 1].argmax(-1) if use_most_certain else torch.full_like(lowest, T - 1)
    rows = torch.arange(B, device=targets.device)
    loss = ((losses[rows, lowest] + losses[rows, chosen]) / 2).mean()
    return loss, chosen, reach
