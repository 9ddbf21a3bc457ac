"""Halting for sorting: stop a sample once its decoded order is complete and certain (`SortTask.halting`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .ctc import decode, element_hits, sequence_hits

if TYPE_CHECKING:
    from ...nn.model import ContinuousThoughtMachine
    from ...training.evaluate import HaltingResult


def halting_ticks(predictions: torch.Tensor, certainty: torch.Tensor, n: int, halt_certainty: float,
                  max_ticks: int | None = None) -> torch.Tensor:
    """(B,) the tick (1-based) each sample stops at: the first tick t whose decoded order up to t holds n
    elements and whose certainty (B, T) reaches `halt_certainty`; `max_ticks` (default T) when none does."""
    B, _, T = predictions.shape
    T = T if max_ticks is None else max_ticks
    emitted = decode(predictions[..., :T]).emitted.cumsum(1)  # (B, T) elements emitted up to tick t
    ready = (emitted >= n) & (certainty[:, :T] >= halt_certainty)
    ready[:, -1] = True
    return ready.int().argmax(1) + 1  # the first True


def sort_answer(model: ContinuousThoughtMachine, x: torch.Tensor, y: torch.Tensor, halt_certainty: float,
                max_ticks: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's answers where `halting_ticks` stops them (`evaluate_halting`'s `answer`): the hits of the order
    decoded up to the stop (b, N), whether that order is the whole target (b,), the certainty there (b,) and the
    stop (b,), 1-based."""
    out = model(x)
    N = y.shape[1]
    stop = halting_ticks(out.predictions, out.certainties[:, 1], N, halt_certainty, max_ticks)  # (b,)
    # the order decoded up to the stop: the ticks after it read as the blank
    live = torch.arange(out.predictions.shape[-1], device=stop.device) < stop[:, None]  # (b, T)
    blank = torch.zeros(out.predictions.shape[1], device=stop.device, dtype=out.predictions.dtype)
    blank[-1] = 1.0
    d = decode(torch.where(live[:, None, :], out.predictions, blank[None, :, None]), N)
    rows = torch.arange(len(y), device=stop.device)
    return (element_hits(d.order, y), sequence_hits(d.order, d.count, y), out.certainties[rows, 1, stop - 1],
            stop)


def sort_halting(model: ContinuousThoughtMachine, data, halt_certainty: float, batch_size: int = 500,
                 max_ticks: int | None = None) -> HaltingResult:
    """`SortTask.halting` over every sample of `data`."""
    from ...training.evaluate import evaluate_halting

    return evaluate_halting(model, data, halt_certainty, batch_size, max_ticks=max_ticks, answer=sort_answer)
