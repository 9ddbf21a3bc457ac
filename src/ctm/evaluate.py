"""Evaluation of a CTM on a whole dataset: loss, accuracy at the most-certain and last tick, per tick."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .data import ImageDataset
from .losses import certainty_loss
from .model import ContinuousThoughtMachine


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

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate(model: ContinuousThoughtMachine, dataset: ImageDataset, batch_size: int = 500,
             device: torch.device | str | None = None) -> EvalResult:
    """Run the model in eval mode over every sample of `dataset` (in order) and summarise."""
    if len(dataset) == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({dataset!r})")
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    T = model.config.iterations
    loss_sum = 0.0
    correct_certain = 0
    correct_per_tick = torch.zeros(T, dtype=torch.long)
    certainty_sum = torch.zeros(T, dtype=torch.float64)
    histogram = torch.zeros(T, dtype=torch.long)
    try:
        for start in range(0, len(dataset), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(dataset)))
            x, y = dataset.batch(idx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss, tick = certainty_loss(out.predictions, out.certainties, y)
            loss_sum += loss.item() * len(idx)
            hits = out.predictions.argmax(dim=1) == y.unsqueeze(-1)  # (b, T)
            correct_per_tick += hits.sum(0).cpu()
            correct_certain += int(hits.gather(1, tick.unsqueeze(1)).sum())
            certainty_sum += out.certainties[:, 1].sum(0).double().cpu()
            histogram += torch.bincount(tick.cpu(), minlength=T)
    finally:
        model.train(was_training)
    n = len(dataset)
    per_tick = (correct_per_tick.double() / n).tolist()
    return EvalResult(
        loss=loss_sum / n,
        accuracy=correct_certain / n,
        accuracy_last_tick=per_tick[-1],
        per_tick_accuracy=per_tick,
        per_tick_certainty=(certainty_sum / n).tolist(),
        most_certain_tick_histogram=histogram.tolist(),
        n=n,
    )
