"""Halting for sorting: stop a sample once its decoded order is complete and certain (`SortTask.halting`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from ...training.batches import eval_mode, to_device
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


@torch.inference_mode()
def sort_halting(model: ContinuousThoughtMachine, data, halt_certainty: float, batch_size: int = 500,
                 max_ticks: int | None = None) -> HaltingResult:
    """`SortTask.halting` over every sample of `data`."""
    from ...training.evaluate import HaltingResult, _sync

    if len(data) == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({data!r})")
    device = next(model.parameters()).device
    T = model.config.iterations if max_ticks is None else max_ticks
    correct = whole = certainty = 0.0
    histogram = torch.zeros(T, dtype=torch.long)
    with eval_mode(model):
        _sync(device)
        start = time.perf_counter()
        for idx in torch.arange(len(data)).split(batch_size):
            x, y = to_device(data.batch(idx), device)
            out = model(x)
            N = y.shape[1]
            stop = halting_ticks(out.predictions, out.certainties[:, 1], N, halt_certainty, T)  # (b,)
            rows = torch.arange(len(idx), device=stop.device)
            # the order decoded up to the stop: ticks after it masked to the blank
            live = torch.arange(out.predictions.shape[-1], device=stop.device) < stop[:, None]  # (b, T_full)
            masked = out.predictions.clone()
            blank = torch.zeros(out.predictions.shape[1], device=masked.device, dtype=masked.dtype)
            blank[-1] = 1.0
            masked = torch.where(live[:, None, :], masked, blank[None, :, None])
            d = decode(masked, N)
            hits = element_hits(d.order, y)
            correct += hits.double().mean(1).sum().item()
            whole += sequence_hits(d.order, d.count, y).sum().item()
            certainty += out.certainties[rows, 1, stop - 1].double().sum().item()
            histogram += torch.bincount(stop - 1, minlength=T).cpu()
        _sync(device)
        wall = time.perf_counter() - start
    n = len(data)
    ticks = torch.arange(1, T + 1, dtype=torch.float64)
    return HaltingResult(halt_certainty=float(halt_certainty), accuracy=correct / n,
                         mean_ticks=(histogram.double() * ticks).sum().item() / n, ticks_histogram=histogram.tolist(),
                         mean_certainty=certainty / n, wall_s=wall, n=n, sequence_accuracy=whole / n)
