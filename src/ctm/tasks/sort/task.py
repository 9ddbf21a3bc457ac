"""Sorting (the paper's appendix G.4): read N real numbers and emit, one per tick, the indices that sort them,
trained with CTC over the ticks (`ctm.tasks.sort.ctc`), so the model decides when to emit.

The data are generated on the fly: sample k of a stream is N draws from N(mean, std) made by its own
generator, seeded from (stream, k) (training seeds even, test seeds odd, as parity), so a batch depends only
on its indices and a resumed run sees what an uninterrupted one would. The target is the argsort (ascending).
The test set is the first `TEST_SIZE` samples of a fixed stream. `mean` and `std` are task options: evaluate a
run on another spread with `ctm eval RUN --task-option std=2` (the paper's generalisation figure).

The model is the official sort model as a CTM config: the input (B, N) fed to the synapses at every tick
(input_reader "direct": no backbone, no attention, no action synchronisation), out_dims N + 1 (the N indices
and the blank, class N). The prediction is the greedy decoding of all ticks; the certainty of a tick is the
usual 1 - normalised entropy of its output.

Halting: a sample stops at the first tick whose decoded order so far is complete (N elements emitted) and
whose certainty reaches the threshold; its answer is the order decoded up to that tick (`SortTask.halting`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...config import CTMConfig, option
from ...data.sampling import STREAM_EPOCH, StreamSampler, mix_seed
from ..base import Example, Preset, Task, register_task
from .ctc import decode, element_hits, sequence_hits, sort_loss

if TYPE_CHECKING:
    from ...inference import Run
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput
    from ...pictures.figures import TaskPanels
    from ...training.distributed import DistInfo
    from ...training.evaluate import HaltingResult
    from ...training.loop import TrainConfig

#: samples in the test set (and in `ctm eval --split train`, the first of the training stream)
TEST_SIZE = 10_000
#: the stream of the test set (its seeds are odd; training seeds are even)
TEST_STREAM = 0x50F7
#: the most numbers one sample may hold
MAX_N = 4096
#: the gap between an element and the previous one in the sorted order, binned for the wait-time figure
GAP_BIN = 0.025  # times the spread's std: the bins follow the numbers' scale (`ctm eval --task-option std=S`)
GAP_BINS = 24  # the last bin holds every gap from (GAP_BINS - 1) * GAP_BIN * std up
#: the thinking GIF picks among this many first test samples
GIF_POOL = 200


def sample_seed(stream: int, index: int, test: bool) -> int:
    """The generator seed of sample `index` of a stream: training seeds are even, test seeds odd."""
    return (mix_seed(stream, index) & ~1) | int(test)


def sort_inputs(stream: int, indices: Tensor, n: int, test: bool = False, mean: float = 0.0,
                std: float = 1.0) -> Tensor:
    """The inputs (b, n) float at `indices` (b,) of a stream: n draws from N(mean, std) each."""
    out = torch.empty(len(indices), n)
    g = torch.Generator()
    for row, k in enumerate(indices.tolist()):
        g.manual_seed(sample_seed(stream, k, test))
        out[row] = torch.randn(n, generator=g)
    return out.mul_(std).add_(mean)


class SortNumbers:
    """A stream of sorting problems: `batch(idx)` -> (x (b, N) float, targets (b, N) int64, the argsort of x),
    generated from (stream, index). The test set keeps its `n` samples in memory once drawn."""

    def __init__(self, size: int, n: int, stream: int, split: str, mean: float = 0.0, std: float = 1.0,
                 device: torch.device | str = "cpu") -> None:
        self.size, self.n, self.stream, self.split, self.mean, self.std = size, n, stream, split, mean, std
        self.device = torch.device(device)
        self.name, self.source = "sort", "generated"
        self._held: Tensor | None = None

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"SortNumbers(size={self.size}, n={self.n}, split={self.split!r}, mean={self.mean}, std={self.std})"

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.cpu()
        test = self.split == "test"
        if test:
            if self._held is None:  # draw the whole test set once
                self._held = sort_inputs(self.stream, torch.arange(self.n), self.size, True, self.mean, self.std)
            x = self._held[idx]
        else:
            x = sort_inputs(self.stream, idx, self.size, False, self.mean, self.std)
        x = x.to(self.device)
        return x, x.argsort(dim=1)

    def to(self, device: torch.device | str) -> SortNumbers:
        moved = SortNumbers(self.size, self.n, self.stream, self.split, self.mean, self.std, device)
        moved._held = self._held
        return moved


@dataclasses.dataclass(frozen=True)
class SortOptions:
    n: int = option(30, "sort: how many numbers each sample holds (the official N_to_sort)", min=2)
    mean: float = option(0.0, "sort: the mean of the normal the numbers are drawn from")
    std: float = option(1.0, "sort: the standard deviation of that normal, above 0 (evaluate other spreads with "
                              "ctm eval --task-option std=S)")

    def __post_init__(self) -> None:
        if isinstance(self.n, int) and self.n > MAX_N:
            raise ValueError(f"SortOptions.n {self.n} is above {MAX_N:,}; choose fewer numbers")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(f"SortOptions.{name} must be a finite number, got {value}")
        if isinstance(self.std, (int, float)) and self.std <= 0:
            raise ValueError(f"SortOptions.std must be above 0, got {self.std}")


# ----------------------------------------------------------------------------------------------- metrics


@dataclasses.dataclass
class SortResult:
    """Evaluation of sorting over n samples: the decoded order of all ticks against the argsort."""

    loss: float  # the CTC loss per element (the official sort_loss), averaged over samples
    accuracy: float  # elements in their right place
    sequence_accuracy: float  # samples whose whole decoded order is right
    complete: float  # samples that emitted exactly N elements
    mean_emitted: float  # elements emitted per sample
    mean_last_emission: float  # the tick (1-based) of a sample's last emission, over the samples that emitted
    per_position_accuracy: list[float]  # [i]: the i-th smallest element right
    per_tick_certainty: list[float]  # mean certainty at each tick
    per_tick_emissions: list[float]  # share of samples emitting at each tick
    wait_by_gap: list[dict]  # {"gap": bin start, "wait": mean ticks waited, "n": elements}, right elements only
    n: int
    noun: str = "samples"

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "noun"}

    def scalars(self) -> dict[str, float]:
        return {"loss": self.loss, "accuracy": self.accuracy, "sequence_accuracy": self.sequence_accuracy,
                "complete": self.complete}

    def summary(self) -> str:
        return (f"Test accuracy per element {self.accuracy:.4f}, whole sequences {self.sequence_accuracy:.4f} "
                f"(loss {self.loss:.4f}, n={self.n})")

    def lines(self) -> list[str]:
        out = [f"  loss (CTC per element)    {self.loss:.4f}",
               f"  accuracy (per element)    {self.accuracy:.4f}",
               f"  sequence accuracy         {self.sequence_accuracy:.4f}  (the whole order right)",
               f"  complete                  {self.complete:.4f}  (exactly N elements emitted)",
               f"  emitted per sample        {self.mean_emitted:.2f}, the last at tick "
               f"{self.mean_last_emission:.1f} of {len(self.per_tick_certainty)} on average",
               "  tick  certainty  emitting"]
        for t, (c, e) in enumerate(zip(self.per_tick_certainty, self.per_tick_emissions, strict=True)):
            out.append(f"  {t + 1:4d}  {c:9.4f}  {e:8.4f}")
        rows = [w for w in self.wait_by_gap if w["n"]]
        if rows:
            out.append("  gap to the previous value   mean ticks waited   elements")
            for w in rows:
                width = self.wait_by_gap[1]["gap"] - self.wait_by_gap[0]["gap"]
                last = w is self.wait_by_gap[-1]
                span = f">= {w['gap']:.3f}" if last else f"{w['gap']:.3f}-{w['gap'] + width:.3f}"
                out.append(f"  {span:>25}   {w['wait']:17.2f}   {w['n']:8d}")
        return out


class SortMetrics:
    """The sums behind `SortResult`, in one float64 vector (one all-reduce across ranks)."""

    needs_inputs = True  # `update` takes the batch's inputs too (the gaps between sorted values)

    def __init__(self, config: CTMConfig, noun: str = "samples", std: float = 1.0) -> None:
        self.T, self.N, self.noun = config.iterations, config.out_dims - 1, noun
        self.gap_bin = GAP_BIN * std  # the width of a gap bin in the numbers' units
        T, N = self.T, self.N
        # [loss, elements right, sequences right, complete, emitted, last emission, per position (N),
        #  certainty per tick (T), emitting per tick (T), wait sums per gap bin (G), elements per gap bin (G),
        #  samples that emitted anything, n]
        self._pos, self._cert, self._emit = 6, 6 + N, 6 + N + T
        self._wait, self._count = 6 + N + 2 * T, 6 + N + 2 * T + GAP_BINS
        self.sums = torch.zeros(self._count + GAP_BINS + 2, dtype=torch.float64)  # ..., samples that emitted, n

    def to(self, device: torch.device | str) -> SortMetrics:
        self.sums = self.sums.to(device)
        return self

    def update(self, output: CTMOutput, targets: Tensor, loss: Tensor, tick: Tensor, inputs: Tensor | None = None) \
            -> None:
        sums = self.sums = self.sums.to(targets.device)
        b, N = targets.shape
        d = decode(output.predictions, N)
        hits = element_hits(d.order, targets)  # (b, N)
        T = self.T
        sums[0] += loss.double() * b
        sums[1] += hits.double().mean(1).sum()
        sums[2] += sequence_hits(d.order, d.count, targets).sum()
        sums[3] += (d.count == N).sum()
        sums[4] += d.count.sum()
        sums[5] += (d.ticks.max(1).values + 1).clamp(min=0).sum()  # (0 for a sample that emitted nothing)
        sums[-2] += (d.count > 0).sum()
        sums[self._pos:self._pos + N] += hits.double().sum(0)
        sums[self._cert:self._cert + T] += output.certainties[:, 1].double().sum(0)
        sums[self._emit:self._emit + T] += d.emitted.double().sum(0)
        if inputs is not None:
            waits, gaps = wait_gaps(d, hits, inputs, targets)
            bins = (gaps / self.gap_bin).floor().long().clamp(0, GAP_BINS - 1)
            sums[self._wait:self._wait + GAP_BINS] += torch.bincount(bins, weights=waits.double(), minlength=GAP_BINS)
            sums[self._count:self._count + GAP_BINS] += torch.bincount(bins, minlength=GAP_BINS)
        sums[-1] += b

    def reduce(self, dist_info: DistInfo) -> None:
        from ...training.distributed import all_reduce_sum

        self.sums = all_reduce_sum(self.sums, dist_info)

    def result(self) -> SortResult:
        s = self.sums.cpu()
        n, T, N = int(s[-1].item()), self.T, self.N
        waits, counts = s[self._wait:self._wait + GAP_BINS], s[self._count:self._count + GAP_BINS]
        return SortResult(
            loss=s[0].item() / n, accuracy=s[1].item() / n, sequence_accuracy=s[2].item() / n,
            complete=s[3].item() / n, mean_emitted=s[4].item() / n,
            mean_last_emission=s[5].item() / max(s[-2].item(), 1),
            per_position_accuracy=(s[self._pos:self._pos + N] / n).tolist(),
            per_tick_certainty=(s[self._cert:self._cert + T] / n).tolist(),
            per_tick_emissions=(s[self._emit:self._emit + T] / n).tolist(),
            wait_by_gap=[{"gap": round(i * self.gap_bin, 6), "wait": (w / c).item() if c else None, "n": int(c)}
                         for i, (w, c) in enumerate(zip(waits, counts, strict=True))],
            n=n, noun=self.noun)


def wait_gaps(d: Any, hits: Tensor, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The ticks waited before each element placed right after the first, and the gap from its value to the
    previous one in the sorted order (both 1-d): the data of the paper's wait-time figure."""
    N = targets.shape[1]
    waits = d.waits()[:, :N]  # (b, N)
    values = inputs.gather(1, targets)  # (b, N) the sorted values
    gaps = values[:, 1:] - values[:, :-1]  # (b, N - 1)
    keep = hits[:, 1:] & hits[:, :-1]  # this element and the previous one right: the gap is what the model saw
    return waits[:, 1:][keep], gaps[keep]


# ----------------------------------------------------------------------------------------------- presets

PRESETS: dict[str, Preset] = {
    # docs/training.md, "Sorting": 5744 steps filled 30 minutes of one core of a 2-core CPU (one thread is faster
    # than two for this model there) beside the LSTM run on the other.
    "sort": Preset("sort", dict(dataset="sort", steps=5744, batch_size=64, lr=2e-2, adam_eps=1e-8,
                                weight_decay=0.0, warmup_steps=200, schedule="cosine", min_lr_ratio=0.0,
                                grad_clip=1.0, eval_every=1000, eval_batch_size=1000, augment=False,
                                tick_loss_weight=0.0),
                   dict(iterations=40, d_model=256, memory_length=10, memory_hidden_dims=4, n_synch_out=256,
                        neuron_selection="random-pairing"),
                   summary="the sorting recipe (the default of --task sort)"),
    # The official tasks/sort/train.py defaults (100k iterations on a GPU there): for reference and conversion.
    "sort-official": Preset("sort", dict(dataset="sort", steps=100000, batch_size=32, lr=1e-3, adam_eps=1e-8,
                                         weight_decay=0.0, warmup_steps=5000, schedule="cosine", min_lr_ratio=0.0,
                                         grad_clip=0.0, eval_every=1000, eval_batch_size=500, augment=False,
                                         tick_loss_weight=0.0),
                            dict(iterations=50, d_model=512, synapse_depth=4, memory_length=25, memory_hidden_dims=4,
                                 n_synch_out=32, neuron_selection="random-pairing", nlm_temperature=True),
                            summary="the official sort model and schedule (d_model 512, 50 ticks, U-Net synapses)"),
}


@register_task
class SortTask(Task):
    """Sort N numbers drawn from N(mean, std), emitting their argsort over the ticks (module docstring)."""

    name = "sort"
    Options = SortOptions
    sample_noun = "samples"
    endless_data = True
    fixed_fields = ("backbone", "input_reader", "d_input", "out_positions", "out_dims")
    default_preset = "sort"
    presets = PRESETS

    @property
    def size(self) -> int:
        return self.options.n

    def load(self, split: str, train_config: TrainConfig, data_dir: str | None = None,
             recorded: Mapping[str, Any] | None = None) -> SortNumbers:
        o = self.options
        if split == "train":
            return SortNumbers(o.n, STREAM_EPOCH, train_config.seed, "train", o.mean, o.std)
        if split == "test":
            return SortNumbers(o.n, TEST_SIZE, TEST_STREAM, "test", o.mean, o.std)
        raise ValueError(f"unknown split {split!r} for the sort task; expected train or test")

    def eval_data(self, split: str, train_config: TrainConfig, data_dir: str | None = None, *,
                  recorded: Mapping[str, Any] | None = None, dataset: str | None = None,
                  progress: bool = False) -> SortNumbers:
        for flag, value in (("--dataset", dataset), ("--data-dir", data_dir)):
            if value is not None:
                raise ValueError(f"{flag} does not apply to the sort task: its numbers are generated")
        data = self.load(split, train_config, data_dir)
        data.n = min(data.n, TEST_SIZE)
        return data

    def sampler(self, train_set: SortNumbers, train_config: TrainConfig, rank: int = 0,
                world_size: int = 1) -> StreamSampler:
        return StreamSampler(train_config.batch_size, rank, world_size)

    def dataset_record(self, train_set: SortNumbers, data_dir: str | None) -> dict[str, Any]:
        return {"name": "sort", "source": "generated", "shape": [self.size], "num_classes": self.size + 1}

    def describe_data(self, train_set: SortNumbers, test_set: SortNumbers) -> str:
        o = self.options
        return (f"data: sorting {o.n} numbers from N({o.mean:g}, {o.std:g}^2), training samples generated on the fly "
                f"/ {len(test_set)} test samples; {o.n} indices and a blank emitted over the ticks (CTC)")

    def model_fields(self, train_set: SortNumbers) -> dict[str, Any]:
        return {"backbone": "none", "input_reader": "direct", "d_input": self.size, "out_positions": 1,
                "out_dims": self.size + 1}

    def check_config(self, model_config: CTMConfig, train_config: TrainConfig) -> None:
        super().check_config(model_config, train_config)
        self.check_ticks(model_config)

    def check_ticks(self, model_config: CTMConfig) -> None:
        """ValueError unless the model has a tick for every number (CTC emits at most one index per tick)."""
        if model_config.iterations < self.size:
            raise ValueError(f"CTMConfig.iterations ({model_config.iterations}) is below the {self.size} numbers to "
                             f"sort: CTC emits at most one index per tick; give at least {self.size} ticks")

    def check_eval_data(self, model_config: CTMConfig, data: SortNumbers, name: str) -> None:
        if model_config.d_input != self.size or model_config.out_dims != self.size + 1:
            raise ValueError(f"the run's sort task has n={self.size}, but its model reads {model_config.d_input} "
                             f"numbers and emits {model_config.out_dims} classes; a sort model sorts the N it was "
                             f"built for (was config.json edited, or --task-option n given?)")
        self.check_ticks(model_config)

    # ------------------------------------------------------------------------------------ loss, metrics

    def loss(self, predictions: Tensor, certainties: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The official sort_loss (CTC over all ticks per element, averaged); the tick read is the last (the
        decoding reads them all)."""
        last = torch.full((targets.shape[0],), predictions.shape[-1] - 1, dtype=torch.long, device=targets.device)
        return sort_loss(predictions, targets), last

    def tick_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The CTC loss already reads every tick: the same loss (`TrainConfig.tick_loss_weight` scales it)."""
        return sort_loss(predictions, targets)

    def batch_accuracy(self, predictions: Tensor, targets: Tensor, tick: Tensor) -> float:
        """Elements in their right place in the decoded order."""
        d = decode(predictions.detach(), targets.shape[1])
        return element_hits(d.order, targets).float().mean().item()

    def metrics(self, model_config: CTMConfig) -> SortMetrics:
        return SortMetrics(model_config, noun=self.sample_noun, std=self.options.std)

    def halting(self, model: ContinuousThoughtMachine, data: SortNumbers, halt_certainty: float,
                batch_size: int = 500, max_ticks: int | None = None) -> HaltingResult:
        """Adaptive computation for sorting: a sample stops at the first tick whose decoded order is complete
        (N elements) and whose certainty reaches `halt_certainty` (at `max_ticks` at the latest); its answer is
        the order decoded up to there. The ticks after a sample's stop never change its earlier outputs, so
        this reads the stops off one full forward: the mean ticks are exact, the wall time is the full pass's."""
        from .halting import sort_halting

        return sort_halting(model, data, halt_certainty, batch_size, max_ticks)

    def halt_ticks(self, output: CTMOutput, halt_certainty: float) -> list[int]:
        """The tick (0-based) each sample stops at by `halting`'s rule."""
        from .halting import halting_ticks

        n = output.predictions.shape[1] - 1
        return (halting_ticks(output.predictions, output.certainties[:, 1], n, halt_certainty) - 1).tolist()

    # ---------------------------------------------------------------------------------------- predict

    def parse_inputs(self, texts: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
        from .predict import parse_numbers

        return parse_numbers(texts, self.size)

    def describe_prediction(self, output: CTMOutput, row: int, name: str,
                            class_names: Sequence[str] | None = None, *, tick: int | None = None) -> str:
        from .predict import line

        return line(output, row, name, tick)

    def prediction_record(self, output: CTMOutput, row: int, name: str,
                          class_names: Sequence[str] | None = None, *, tick: int | None = None) -> dict[str, Any]:
        from .predict import record

        return record(output, row, name, tick)

    def plot_eval(self, result: SortResult, path: Path) -> None:
        """`ctm eval --plot`: the wait-time figure (ticks waited before an element against the gap to the
        previous value) and emissions and certainty per tick."""
        from .pictures import save_eval_plot

        save_eval_plot(result, path)

    # ---------------------------------------------------------------------------------------- pictures

    def pick_example(self, model: ContinuousThoughtMachine, data: SortNumbers, index: int | None = None,
                     label: int | None = None) -> Example:
        """Of the first GIF_POOL test samples, one sorted right whose waits between emissions vary most, else
        the one with the most elements placed right."""
        from .pictures import pick_example

        if label is not None:
            return super().pick_example(model, data, index, label)  # says why not
        return pick_example(model, data, index, GIF_POOL)

    def thinking_panels(self, output: CTMOutput, inputs: Tensor, targets: Tensor, data: SortNumbers) -> TaskPanels:
        """The numbers, the class emitted at each tick so far, the sorted list decoded so far
        (`ctm.tasks.sort.pictures`)."""
        from .pictures import thinking_panels

        return thinking_panels(output, inputs, targets)

    def viewer_data(self, model: ContinuousThoughtMachine, data: SortNumbers, n: int, *,
                    threshold: float) -> dict[str, Any]:
        from .viewer import dataset_viewer_data

        return dataset_viewer_data(model, data, n, threshold=threshold)

    def viewer_script(self) -> str:
        from .viewer import script

        return script()
