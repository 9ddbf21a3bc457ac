"""Evaluation of a CTM on a whole dataset: loss, accuracy at the most-certain and last tick, per tick."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from .data import ImageDataset
from .distributed import DistInfo, all_reduce_sum
from .losses import certainty_loss
from .model import ContinuousThoughtMachine

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
    per_class_accuracy: list[float] = field(default_factory=list)  # at the most-certain tick; NaN without samples
    per_class_n: list[int] = field(default_factory=list)  # samples of each class

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate(model: ContinuousThoughtMachine, dataset: ImageDataset, batch_size: int = 500,
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
    T = model.config.iterations
    K = dataset.num_classes
    # One float64 vector of sums: [loss, correct at most-certain tick, correct per tick (T),
    # certainty per tick (T), most-certain tick histogram (T), correct per class (K), samples per class (K)],
    # so ranks need a single all-reduce.
    sums = torch.zeros(2 + 3 * T + 2 * K, dtype=torch.float64, device=device)
    end = 2 + 3 * T
    shard = torch.tensor_split(torch.arange(len(dataset)), dist_info.world_size)[dist_info.rank]
    try:
        for idx in shard.split(batch_size):
            x, y = dataset.batch(idx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss, tick = certainty_loss(out.predictions, out.certainties, y)
            hits = out.predictions.argmax(dim=1) == y.unsqueeze(-1)  # (b, T)
            sums[0] += loss.double() * len(idx)
            certain_hits = hits.gather(1, tick.unsqueeze(1)).squeeze(1)  # (b,)
            sums[1] += certain_hits.sum()
            sums[end:end + K] += torch.bincount(y, weights=certain_hits.double(), minlength=K)
            sums[end + K:] += torch.bincount(y, minlength=K)
            sums[2:2 + T] += hits.sum(0)
            sums[2 + T:2 + 2 * T] += out.certainties[:, 1].sum(0).double()
            sums[2 + 2 * T:end] += torch.bincount(tick, minlength=T)
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
        most_certain_tick_histogram=[int(v) for v in sums[2 + 2 * T:end].tolist()],
        n=n,
        per_class_accuracy=(sums[end:end + K] / sums[end + K:]).tolist(),
        per_class_n=[int(v) for v in sums[end + K:].tolist()],
    )


@dataclass
class HaltingResult:
    """Adaptive-computation evaluation (`model.think`) at one certainty threshold, over n samples."""

    halt_certainty: float
    accuracy: float  # of each sample's answer at the tick it halted
    mean_ticks: float
    ticks_histogram: list[int]  # ticks_histogram[t]: samples that stopped after t + 1 ticks
    mean_certainty: float  # at the halting tick
    wall_s: float  # wall time of the whole pass (data, backbone, ticks)
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate_halting(model: ContinuousThoughtMachine, dataset: ImageDataset, halt_certainty: float,
                     batch_size: int = 500, device: torch.device | str | None = None,
                     max_ticks: int | None = None) -> HaltingResult:
    """Run `model.think(x, halt_certainty, max_ticks)` in eval mode over every sample of `dataset`."""
    if len(dataset) == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({dataset!r})")
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    T = model.config.iterations if max_ticks is None else max_ticks
    correct = certainty = 0.0
    histogram = torch.zeros(T, dtype=torch.long)
    try:
        _sync(device)
        start = time.perf_counter()
        for idx in torch.arange(len(dataset)).split(batch_size):
            x, y = dataset.batch(idx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model.think(x, halt_certainty, max_ticks)
            correct += (out.prediction == y).sum().item()
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
    )


def timed_evaluate(model: ContinuousThoughtMachine, dataset: ImageDataset, batch_size: int = 500,
                   device: torch.device | str | None = None) -> tuple[EvalResult, float]:
    """`evaluate` and its wall time in seconds, timed like `evaluate_halting`."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    _sync(device)
    start = time.perf_counter()
    result = evaluate(model, dataset, batch_size, device)
    _sync(device)
    return result, time.perf_counter() - start
