"""Evaluation of a CTM on a whole dataset: loss, accuracy at the most-certain and last tick, per tick.

A dataset is anything with `len()` and `batch(idx) -> (x, targets)`: targets (b,) of class indices, or
(b, P) with P output positions (`CTMConfig.out_positions`, e.g. the parity task's bits). With several
positions accuracy is per position (per bit), and the result adds whole-sequence accuracy and the accuracy
of each position at each tick.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from ..nn.model import ContinuousThoughtMachine

if TYPE_CHECKING:
    from ..tasks.base import Task
from .._text import printable
from ..config import CTMConfig
from .batches import eval_mode, to_device
from .distributed import DistInfo, all_reduce_sum
from .losses import certainty_loss, tick_hits

# Certainty thresholds of a halting sweep (`ctm eval --halt-sweep` without values, benchmarks/halting.py).
DEFAULT_HALT_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)


@dataclass
class EvalResult:
    """Metrics over n samples. Accuracies are fractions in [0, 1]; lists have one value per tick."""

    loss: float  # the task's loss, averaged over samples
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
    # The names of the classes (one output position), for to_dict and lines, and what a sample is (not metrics)
    class_names: list[str] | None = None
    noun: str = "samples"

    def to_dict(self) -> dict:
        """What `ctm eval --json` prints (with one output position, the class names too)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k not in ("class_names", "noun")}
        if self.per_class_n is not None:
            out["class_names"] = list(self.class_names or [str(i) for i in range(len(self.per_class_n))])
        return out

    def scalars(self) -> dict[str, float]:
        """The figures a metrics.jsonl row records (as test_<key>)."""
        out = {"loss": self.loss, "accuracy": self.accuracy, "accuracy_last_tick": self.accuracy_last_tick}
        if self.sequence_accuracy is not None:
            out["sequence_accuracy"] = self.sequence_accuracy
        return out

    def summary(self) -> str:
        """The accuracy phrase of `ctm train`'s last line."""
        per = " per position" if self.sequence_accuracy is not None else ""
        text = (f"Test accuracy{per} {self.accuracy:.4f} at the most-certain tick, {self.accuracy_last_tick:.4f} at "
                f"the last tick")
        if self.sequence_accuracy is not None:
            text += f"; whole sequences {self.sequence_accuracy:.4f} at the most-certain tick"
        return text + f" (loss {self.loss:.4f}, n={self.n})"

    def lines(self) -> list[str]:
        """What `ctm eval` prints under its header line."""
        per = self.sequence_accuracy is not None
        out = [f"  loss                      {self.loss:.4f}",
               f"  accuracy (most certain)   {self.accuracy:.4f}" + ("  (per position)" if per else ""),
               f"  accuracy (last tick)      {self.accuracy_last_tick:.4f}"]
        if per:
            out += [f"  sequence accuracy         {self.sequence_accuracy:.4f}  (every position right, most certain "
                    f"tick)",
                    f"  sequence acc. (last tick) {self.per_tick_sequence_accuracy[-1]:.4f}"]
        out.append("  tick  accuracy  certainty  most-certain" + ("  sequences" if per else ""))
        for t, (a, cert, h) in enumerate(zip(self.per_tick_accuracy, self.per_tick_certainty,
                                             self.most_certain_tick_histogram, strict=True)):
            out.append(f"  {t + 1:4d}  {a:8.4f}  {cert:9.4f}  {h:12d}" +
                       (f"  {self.per_tick_sequence_accuracy[t]:9.4f}" if per else ""))
        names = self.class_names or []
        if self.per_class_n is not None and names and names != [str(i) for i in range(len(names))]:
            shown = [printable(n) for n in names]
            width = max(5, *(len(n) for n in shown))
            out.append(f"  {'class':<{width}}  accuracy  {self.noun}")
            for name, a, n in zip(shown, self.per_class_accuracy, self.per_class_n, strict=True):
                out.append(f"  {name:<{width}}  {'-' if n == 0 else f'{a:8.4f}':>8}  {n:{max(6, len(self.noun))}d}")
        return out


class TickMetrics:
    """Accuracy of classification at one or several output positions: at the most-certain and last tick, per
    tick, per class (one position) or per position and whole sequence (several), with the mean certainty per
    tick and the histogram of most-certain ticks. The accumulator `Task.metrics` gives by default."""

    def __init__(self, config: CTMConfig, class_names: Sequence[str] | None = None, noun: str = "samples") -> None:
        self.T, self.P = config.iterations, config.out_positions
        self.noun = noun
        self.K = config.out_dims if self.P == 1 else 0  # classes
        self.class_names = list(class_names) if class_names else None
        # One float64 vector of sums: [loss, correct at most-certain tick, correct per tick (T), certainty per
        # tick (T), most-certain tick histogram (T), whole sequences right at the most-certain tick, per tick
        # (T), correct per position and tick (P x T), correct per class (K), samples per class (K), samples],
        # so ranks need a single all-reduce.
        T = self.T
        self._seq = 2 + 3 * T
        self._end = self._seq + 1 + T + self.P * T
        self.sums = torch.zeros(self._end + 2 * self.K + 1, dtype=torch.float64)

    def update(self, output, targets: torch.Tensor, loss: torch.Tensor, tick: torch.Tensor) -> None:
        T, K, seq, end = self.T, self.K, self._seq, self._end
        sums = self.sums = self.sums.to(targets.device)
        b = len(targets)
        hits = tick_hits(output.predictions, targets)  # (b, P, T)
        whole = hits.all(1)  # (b, T)
        rows = torch.arange(b, device=targets.device)
        sums[0] += loss.double() * b
        certain_hits = hits[rows, :, tick].double().mean(1)  # (b,)
        sums[1] += certain_hits.sum()
        sums[2:2 + T] += hits.double().mean(1).sum(0)
        sums[2 + T:2 + 2 * T] += output.certainties[:, 1].sum(0).double()
        sums[2 + 2 * T:seq] += torch.bincount(tick, minlength=T)
        sums[seq] += whole[rows, tick].sum()
        sums[seq + 1:seq + 1 + T] += whole.sum(0)
        sums[seq + 1 + T:end] += hits.sum(0).flatten()
        if K:
            sums[end:end + K] += torch.bincount(targets, weights=certain_hits, minlength=K)
            sums[end + K:end + 2 * K] += torch.bincount(targets, minlength=K)
        sums[-1] += b

    def to(self, device: torch.device | str) -> TickMetrics:
        """Keep the sums on `device` (a rank with no samples still all-reduces there)."""
        self.sums = self.sums.to(device)
        return self

    def reduce(self, dist_info: DistInfo) -> None:
        self.sums = all_reduce_sum(self.sums, dist_info)

    def result(self) -> EvalResult:
        T, P, K, seq, end = self.T, self.P, self.K, self._seq, self._end
        sums = self.sums.cpu()
        n = int(sums[-1].item())
        per_tick = (sums[2:2 + T] / n).tolist()
        return EvalResult(
            noun=self.noun,
            loss=sums[0].item() / n,
            accuracy=sums[1].item() / n,
            accuracy_last_tick=per_tick[-1],
            per_tick_accuracy=per_tick,
            per_tick_certainty=(sums[2 + T:2 + 2 * T] / n).tolist(),
            most_certain_tick_histogram=[int(v) for v in sums[2 + 2 * T:seq].tolist()],
            n=n,
            **(dict(per_class_accuracy=(sums[end:end + K] / sums[end + K:end + 2 * K]).tolist(),
                    per_class_n=[int(v) for v in sums[end + K:end + 2 * K].tolist()],
                    class_names=self.class_names) if P == 1 else dict(
                per_class_accuracy=None, per_class_n=None,
                sequence_accuracy=sums[seq].item() / n,
                per_tick_sequence_accuracy=(sums[seq + 1:seq + 1 + T] / n).tolist(),
                per_position_tick_accuracy=(sums[seq + 1 + T:end] / n).reshape(P, T).tolist())),
        )


@torch.inference_mode()
def evaluate(model: ContinuousThoughtMachine, dataset, batch_size: int = 500,
             device: torch.device | str | None = None, dist_info: DistInfo | None = None,
             task: Task | None = None, progress: bool = False):
    """Run the model in eval mode over every sample of `dataset` (in order) and summarise with `task`'s loss and
    metrics (`Task.loss`, `Task.metrics`; without a task: the certainty loss and `TickMetrics`).

    With `dist_info` of several ranks, each rank evaluates a contiguous shard and the sums are
    all-reduced, so every rank returns the result for the whole dataset. `progress`: a progress bar (on stderr)
    over the batches, for an evaluation of more than one.
    """
    dist_info = dist_info or DistInfo()
    if len(dataset) == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({dataset!r})")
    device = next(model.parameters()).device if device is None else torch.device(device)
    loss_fn = task.loss if task is not None else certainty_loss
    metrics = task.metrics(model.config) if task is not None else TickMetrics(model.config)
    if callable(getattr(metrics, "to", None)):
        metrics.to(device)
    if getattr(metrics, "class_names", "absent") is None and getattr(dataset, "class_names", None):
        metrics.class_names = list(dataset.class_names)
    if getattr(metrics, "needs_model", False):  # e.g. a maze re-applies the model where its route stopped short
        metrics.model = model
    shard = torch.tensor_split(torch.arange(len(dataset)), dist_info.world_size)[dist_info.rank]
    # A dataset whose samples come in blocks that share a structure (QAMNIST: a block's questions have one schedule)
    # says how to batch them; the rest are cut every batch_size samples.
    batches = dataset.split_batches(shard, batch_size) if hasattr(dataset, "split_batches") \
        else shard.split(batch_size)
    if progress and len(batches) > 1:
        from tqdm.auto import tqdm

        noun = getattr(metrics, "noun", "samples")
        batches = tqdm(batches, desc=f"evaluating {len(shard)} {noun}", unit="batch", leave=False,
                       dynamic_ncols=True)
    with eval_mode(model):
        for idx in batches:
            x, y = to_device(dataset.batch(idx), device)
            out = model(x)
            loss, tick = loss_fn(out.predictions, out.certainties, y)
            if getattr(metrics, "needs_inputs", False):  # e.g. sorting's wait times against the input's gaps
                metrics.update(out, y, loss, tick, x)
            else:
                metrics.update(out, y, loss, tick)
    metrics.reduce(dist_info)
    return metrics.result()


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

    def header(self, full: EvalResult, wall_full: float) -> list[str]:
        """The table head `ctm eval --halt-*` prints above the rows of a sweep (`row`)."""
        per = self.sequence_accuracy is not None
        ticks = len(full.per_tick_certainty)  # (every task's result has it; sorting's has no per-tick accuracy)
        if isinstance(full, EvalResult):  # answers read at each sample's most certain tick
            what = f"accuracy (most certain) {full.accuracy:.4f}" + (" per position" if per else "")
        else:  # a task's own result (sorting: its decoded order)
            what = f"accuracy {full.accuracy:.4f}" + (" per element" if per else "")
        return [f"n={full.n}, full run: {ticks} ticks, {what}"
                + (f", {full.sequence_accuracy:.4f} whole sequences" if per else "")
                + f", {wall_full:.2f} s",
                "  threshold  accuracy  vs full (pp)  mean ticks  wall s  wall / full" + ("  sequences" if per else "")]

    def row(self, full: EvalResult, wall_full: float) -> str:
        return (f"  {self.halt_certainty:9.4g}  {self.accuracy:8.4f}  {100 * (self.accuracy - full.accuracy):+12.2f}  "
                f"{self.mean_ticks:10.2f}  {self.wall_s:6.2f}  {self.wall_s / wall_full:11.2f}" +
                (f"  {self.sequence_accuracy:9.4f}" if self.sequence_accuracy is not None else ""))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate_halting(model: ContinuousThoughtMachine, dataset, halt_certainty: float,
                     batch_size: int = 500, device: torch.device | str | None = None,
                     max_ticks: int | None = None, answer=None) -> HaltingResult:
    """Run `model.think(x, halt_certainty, max_ticks)` in eval mode over every sample of `dataset`.

    With several output positions a sample halts as one: when the model's certainty (the mean over its
    positions, `model.certainty`) reaches the threshold. `answer(model, x, y, halt_certainty, max_ticks)` replaces
    `model.think` for a task's own halting rule (`Task.halting`): it returns each sample's hits (b, P) bool, whether
    it is wholly right (b,) bool, its certainty (b,) and the tick it stopped at (b,), 1-based."""
    if len(dataset) == 0:
        raise ValueError(f"cannot evaluate on an empty dataset ({dataset!r})")
    device = next(model.parameters()).device if device is None else torch.device(device)
    T = model.config.iterations if max_ticks is None else max_ticks
    answer = answer or _think_answer
    correct = certainty = whole = 0.0
    positions = 1
    histogram = torch.zeros(T, dtype=torch.long)
    with eval_mode(model):
        _sync(device)
        start = time.perf_counter()
        for idx in torch.arange(len(dataset)).split(batch_size):
            x, y = to_device(dataset.batch(idx), device)
            hits, right, reached, stopped = answer(model, x, y, halt_certainty, max_ticks)  # (b, P), (b,) x 3
            positions = hits.shape[1]
            correct += hits.double().mean(1).sum().item()
            whole += right.sum().item()
            certainty += reached.double().sum().item()
            histogram += torch.bincount(stopped - 1, minlength=T).cpu()
        _sync(device)
        wall = time.perf_counter() - start
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
        sequence_accuracy=whole / n if positions > 1 else None,
    )


def _think_answer(model: ContinuousThoughtMachine, x, y, halt_certainty: float, max_ticks: int | None):
    """`evaluate_halting`'s default: each sample's answer where `model.think` stops it."""
    out = model.think(x, halt_certainty, max_ticks)
    hits = (out.prediction == y).reshape(len(y), -1)  # (b, P)
    return hits, hits.all(1), out.certainty, out.ticks


def timed_evaluate(model: ContinuousThoughtMachine, dataset, batch_size: int = 500,
                   device: torch.device | str | None = None, task: Task | None = None) -> tuple[EvalResult, float]:
    """`evaluate` and its wall time in seconds, timed like `evaluate_halting`."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    _sync(device)
    start = time.perf_counter()
    result = evaluate(model, dataset, batch_size, device, task=task)
    _sync(device)
    return result, time.perf_counter() - start
