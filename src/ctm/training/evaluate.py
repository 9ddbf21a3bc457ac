"""Evaluation of a CTM on a whole dataset: loss, accuracy at the most-certain and last tick, per tick.

A dataset is anything with `len()` and `batch(idx) -> (x, targets)`: targets (b,) of class indices, or
(b, P) with P output positions (`CTMConfig.out_positions`, e.g. the parity task's bits). With several
positions accuracy is per position (per bit), and the result adds whole-sequence accuracy and the accuracy
of each position at each tick.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..nn.model import ContinuousThoughtMachine
from .distributed import DistInfo, all_reduce_sum
from .losses import certainty_loss, tick_hits

# Certainty thresholds of a halting sweep (`ctm eval --halt-sweep` without values, benchmarks/halting.py).
DEFAULT_HALT_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)


@dataclass
class EvalResult:
    """Metrics over n samples. Accuracies are fractions in [0, 1]; lists have one value per tick."""

    loss: float  # certainty loss, averaged over samples
    accuracy: float  # at each sample's most-certain tick
    accuracy_last_tick: float
    per_tick_accuracy: list[float]
    per_tick_certainty: list[float]  # mean certainty (1 - normalised entropy) per tick
    most_certain_tick_histogram: list[int]  # samples whose most-certain tick is t
    n: int
    # With one output position (else None, and left out of to_dict):
    per_class_accuracy: list[float] | None = field(default_factory=list)  # at the most-certain tick; NaN: no samples
    per_class_n: list[int] | None = field(default_factory=list)  # samples of each class
    # With several output positions (else None, and left out of to_dict):
    sequence_accuracy: float | None = None  # samples right at every position, at the most-certain tick
    per_tick_sequence_accuracy: list[float] | None = None
    per_position_tick_accuracy: list[list[float]] | None = None  # [position][tick]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@torch.inference_mode()
def evaluate(model: ContinuousThoughtMachine, dataset, batch_size: int = 500,
             device: torch.device | str | None = None, dist_info: DistInfo | None = None) -> EvalResult:
    """Run the model in eval mode over every sample of `dataset` (in order) and summarise.

    With `dist_info` of several ranks, each rank evaluates a contiguous shard and the sums are
    all-reduced, so every rank returns the result for the whole dataset.
    """
    dist_info = dist_info or DistInfo()
    if len(dataset) == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({dataset!r})")
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    T, P = model.config.iterations, model.config.out_positions
    K = model.config.out_dims if P == 1 else 0  # classes
    # One float64 vector of sums: [loss, correct at most-certain tick, correct per tick (T),
    # certainty per tick (T), most-certain tick histogram (T), whole sequences right at the most-certain
    # tick, per tick (T), correct per position and tick (P x T), correct per class (K), samples per class
    # (K)], so ranks need a single all-reduce.
    seq = 2 + 3 * T
    end = seq + 1 + T + P * T
    sums = torch.zeros(end + 2 * K, dtype=torch.float64, device=device)
    shard = torch.tensor_split(torch.arange(len(dataset)), dist_info.world_size)[dist_info.rank]
    try:
        for idx in shard.split(batch_size):
            x, y = dataset.batch(idx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss, tick = certainty_loss(out.predictions, out.certainties, y)
            hits = tick_hits(out.predictions, y)  # (b, P, T)
            whole = hits.all(1)  # (b, T)
            rows = torch.arange(len(idx), device=device)
            sums[0] += loss.double() * len(idx)
            certain_hits = hits[rows, :, tick].double().mean(1)  # (b,)
            sums[1] += certain_hits.sum()
            sums[2:2 + T] += hits.double().mean(1).sum(0)
            sums[2 + T:2 + 2 * T] += out.certainties[:, 1].sum(0).double()
            sums[2 + 2 * T:seq] += torch.bincount(tick, minlength=T)
            sums[seq] += whole[rows, tick].sum()
            sums[seq + 1:seq + 1 + T] += whole.sum(0)
            sums[seq + 1 + T:end] += hits.sum(0).flatten()
            if K:
                sums[end:end + K] += torch.bincount(y, weights=certain_hits, minlength=K)
                sums[end + K:] += torch.bincount(y, minlength=K)
    finally:
        model.train(was_training)
    sums = all_reduce_sum(sums, dist_info).cpu()
    n = len(dataset)
    per_tick = (sums[2:2 + T] / n).tolist()
    return EvalResult(
        loss=sums[0].item() / n,
        accuracy=sums[1].item() / n,
        accuracy_last_tick=per_tick[-1],
        per_tick_accuracy=per_tick,
        per_tick_certainty=(sums[2 + T:2 + 2 * T] / n).tolist(),
        most_certain_tick_histogram=[int(v) for v in sums[2 + 2 * T:seq].tolist()],
        n=n,
        **(dict(per_class_accuracy=(sums[end:end + K] / sums[end + K:]).tolist(),
                per_class_n=[int(v) for v in sums[end + K:].tolist()]) if P == 1 else dict(
            per_class_accuracy=None, per_class_n=None,
            sequence_accuracy=sums[seq].item() / n,
            per_tick_sequence_accuracy=(sums[seq + 1:seq + 1 + T] / n).tolist(),
            per_position_tick_accuracy=(sums[seq + 1 + T:end] / n).reshape(P, T).tolist())),
    )


@dataclass
class HaltingResult:
    """Adaptive-computation evaluation (`model.think`) at one certainty threshold, over n samples."""

    halt_certainty: float
    accuracy: float  # of each sample's answer at the tick it halted (per position with several positions)
    mean_ticks: float
    ticks_histogram: list[int]  # ticks_histogram[t]: samples that stopped after t + 1 ticks
    mean_certainty: float  # at the halting tick
    wall_s: float  # wall time of the whole pass (data, backbone, ticks)
    n: int
    sequence_accuracy: float | None = None  # with several output positions: samples right at every one

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate_halting(model: ContinuousThoughtMachine, dataset, halt_certainty: float,
                     batch_size: int = 500, device: torch.device | str | None = None,
                     max_ticks: int | None = None) -> HaltingResult:
    """Run `model.think(x, halt_certainty, max_ticks)` in eval mode over every sample of `dataset`.

    With several output positions a sample halts as one: when the model's certainty (the mean over its
    positions, `model.certainty`) reaches the threshold."""
    if len(dataset) == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({dataset!r})")
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    T = model.config.iterations if max_ticks is None else max_ticks
    correct = certainty = whole = 0.0
    histogram = torch.zeros(T, dtype=torch.long)
    try:
        _sync(device)
        start = time.perf_counter()
        for idx in torch.arange(len(dataset)).split(batch_size):
            x, y = dataset.batch(idx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model.think(x, halt_certainty, max_ticks)
            hits = (out.prediction == y).reshape(len(idx), -1)  # (b, P)
            correct += hits.double().mean(1).sum().item()
            whole += hits.all(1).sum().item()
            certainty += out.certainty.double().sum().item()
            histogram += torch.bincount(out.ticks - 1, minlength=T).cpu()
        _sync(device)
        wall = time.perf_counter() - start
    finally:
        model.train(was_training)
    n = len(dataset)
    ticks = torch.arange(1, T + 1, dtype=torch.float64)
    return HaltingResult(
        halt_certainty=float(halt_certainty),
        accuracy=correct / n,
        mean_ticks=(histogram.double() * ticks).sum().item() / n,
        ticks_histogram=histogram.tolist(),
        mean_certainty=certainty / n,
        wall_s=wall,
        n=n,
        sequence_accuracy=whole / n if model.config.out_positions > 1 else None,
    )


def timed_evaluate(model: ContinuousThoughtMachine, dataset, batch_size: int = 500,
                   device: torch.device | str | None = None) -> tuple[EvalResult, float]:
    """`evaluate` and its wall time in seconds, timed like `evaluate_halting`."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    _sync(device)
    start = time.perf_counter()
    result = evaluate(model, dataset, batch_size, device)
    _sync(device)
    return result, time.perf_counter() - start
