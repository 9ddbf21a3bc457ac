"""The QAMNIST loss: the certainty loss over the answer ticks only (the official `qamnist_loss` on the last
`answer_ticks` ticks)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...training.losses import certainty_loss


def qamnist_loss(predictions: Tensor, certainties: Tensor, answers: Tensor, answer_ticks: int
                 ) -> tuple[Tensor, Tensor]:
    """predictions (B, 10, T), certainties (B, 2, T), answers (B,) -> (the mean of the cross-entropy at each
    sample's lowest-loss answer tick and at its most certain answer tick, that tick (B,) counted from 0 over all
    T ticks). The ticks before the last `answer_ticks` read the question: they are not scored."""
    T = predictions.shape[-1]
    if not 1 <= answer_ticks <= T:
        raise ValueError(f"answer_ticks must be between 1 and the {T} ticks of the predictions, got {answer_ticks}")
    loss, tick = certainty_loss(predictions[..., T - answer_ticks:], certainties[..., T - answer_ticks:], answers)
    return loss, tick + (T - answer_ticks)


def answer_hits(predictions: Tensor, answers: Tensor, tick: Tensor) -> Tensor:
    """(B,) bool: the answer read at each sample's `tick` (B,) is right."""
    rows = torch.arange(predictions.shape[0], device=predictions.device)
    return predictions[rows, :, tick].argmax(-1) == answers
