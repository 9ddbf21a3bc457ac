"""Cumulative parity (the paper's algorithmic task): read a sequence of +-1 values and say, at every
position i, whether the number of -1s among positions 0..i is even (0) or odd (1).

The data are generated on the fly. Sample k of a stream is drawn from its own generator, seeded from
(stream, k), so a batch depends only on its indices: a resumed run sees what an uninterrupted one would, and
any rank can draw any sample. Training sample k is seeded from (TrainConfig.seed, k) with the lowest seed bit
0; the test set is the first `TEST_SIZE` sequences of a fixed stream whose seeds have that bit 1, so no test
seed is a training seed and every run is evaluated on the same sequences. (With short sequences the same
sequence can still come up in both: length 16 has only 65,536.)

The model is the official parity setup: the `parity` backbone (an embedding of each +-1) plus the
`custom-rotational-1d` positional embedding make the L key/value tokens, and the output is L positions of 2
classes (out_dims = 2L). The loss is the certainty loss with the cross-entropy of a tick averaged over the
positions (one lowest-loss and one most-certain tick per sequence, as the official `parity_loss`), and the
model's certainty is the mean over the positions, so halting stops a whole sequence when that mean reaches
the threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...config import CTMConfig, option
from ...data.sampling import STREAM_EPOCH, StreamSampler, mix_seed
from ..base import Example, Preset, Task, register_task

if TYPE_CHECKING:
    from ...inference import Run
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput
    from ...pictures.figures import TaskPanels
    from ...training.evaluate import EvalResult
    from ...training.loop import TrainConfig

#: sequences in the test set (and in `ctm eval --split train`, the first of the training stream)
TEST_SIZE = 10_000
#: the stream of the test set (its seeds have the lowest bit 1; training seeds have it 0)
TEST_STREAM = 0x7E57
#: the longest sequence the task generates (the paper's parity is 64 long)
MAX_LENGTH = 2**16
#: the thinking GIF picks among this many first test sequences
GIF_POOL = 200


def sample_seed(stream: int, index: int, test: bool) -> int:
    """The generator seed of sample `index` of a stream: training seeds are even, test seeds odd."""
    return (mix_seed(stream, index) & ~1) | int(test)


def parity_targets(x: Tensor) -> Tensor:
    """Cumulative parity: x (B, L) of +-1 -> (B, L) int64, 1 where the -1s in positions 0..i are odd."""
    return torch.cumsum(x == -1, dim=1).remainder(2)


def parity_sequences(stream: int, indices: Tensor, length: int, test: bool = False) -> Tensor:
    """The sequences (b, L) float of +-1 at `indices` (b,) of a stream."""
    out = torch.empty(len(indices), length)
    g = torch.Generator()
    for row, k in enumerate(indices.tolist()):
        g.manual_seed(sample_seed(stream, k, test))
        out[row] = torch.randint(0, 2, (length,), generator=g).mul_(2).sub_(1)
    return out


class ParitySequences:
    """A stream of parity sequences: `batch(idx)` -> (x (b, L) float +-1, targets (b, L) int64), generated
    from (stream, index). The test set keeps its `n` sequences in memory once drawn."""

    num_classes = 2

    def __init__(self, length: int, n: int, stream: int, split: str, device: torch.device | str = "cpu") -> None:
        self.length, self.n, self.stream, self.split = length, n, stream, split
        self.device = torch.device(device)
        self.name, self.source = "parity", "generated"
        self._held: Tensor | None = None

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ParitySequences(length={self.length}, n={self.n}, split={self.split!r})"

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.cpu()
        if self.split == "test":
            if self._held is None:  # draw the whole test set once
                self._held = parity_sequences(self.stream, torch.arange(self.n), self.length, test=True)
            x = self._held[idx]
        else:
            x = parity_sequences(self.stream, idx, self.length)
        x = x.to(self.device)
        return x, parity_targets(x)

    def to(self, device: torch.device | str) -> ParitySequences:
        moved = ParitySequences(self.length, self.n, self.stream, self.split, device)
        moved._held = self._held
        return moved


@dataclasses.dataclass(frozen=True)
class ParityOptions:
    length: int = option(16, "parity: sequence length L (the model answers at every position)", min=2)

    def __post_init__(self) -> None:
        if isinstance(self.length, int) and self.length > MAX_LENGTH:
            raise ValueError(f"ParityOptions.length {self.length} is above {MAX_LENGTH:,}; choose a shorter sequence")


PRESETS: dict[str, Preset] = {
    # Cumulative parity of length 16 (docs/training.md, "Parity"): 20 ticks, 256 neurons with 32 random
    # pairs each way, a high learning rate and half the tick loss; 15000 steps fill 20 minutes of a 2-core CPU.
    "parity": Preset("parity", dict(dataset="parity", steps=15000, batch_size=64, lr=3e-3, adam_eps=1e-8,
                                    weight_decay=0.0, warmup_steps=200, schedule="cosine", min_lr_ratio=0.0,
                                    grad_clip=1.0, eval_every=1000, eval_batch_size=500, augment=False,
                                    tick_loss_weight=0.5),
                     dict(iterations=20, d_model=256, d_input=64, heads=4, memory_length=10, memory_hidden_dims=4,
                          n_synch_out=32, n_synch_action=32, neuron_selection="random-pairing"),
                     summary="the parity recipe (the default of --task parity)"),
}


@register_task
class ParityTask(Task):
    """Cumulative parity of +-1 sequences of length `length` (see the module docstring)."""

    name = "parity"
    Options = ParityOptions
    sample_noun = "sequences"
    endless_data = True
    fixed_fields = ("backbone", "positional_embedding", "in_channels", "out_positions", "out_dims")
    default_preset = "parity"
    presets = PRESETS

    @property
    def length(self) -> int:
        return self.options.length

    def load(self, split: str, train_config: TrainConfig, data_dir: str | None = None,
             recorded: Mapping[str, Any] | None = None) -> ParitySequences:
        if split == "train":
            return ParitySequences(self.length, STREAM_EPOCH, train_config.seed, "train")
        if split == "test":
            return ParitySequences(self.length, TEST_SIZE, TEST_STREAM, "test")
        raise ValueError(f"unknown split {split!r} for the parity task; expected train or test")

    def eval_data(self, split: str, train_config: TrainConfig, data_dir: str | None = None, *,
                  recorded: Mapping[str, Any] | None = None, dataset: str | None = None,
                  progress: bool = False) -> ParitySequences:
        for flag, value in (("--dataset", dataset), ("--data-dir", data_dir)):
            if value is not None:
                raise ValueError(f"{flag} does not apply to the parity task: its sequences are generated")
        data = self.load(split, train_config, data_dir)
        data.n = min(data.n, TEST_SIZE)
        return data

    def sampler(self, train_set: ParitySequences, train_config: TrainConfig, rank: int = 0,
                world_size: int = 1) -> StreamSampler:
        return StreamSampler(train_config.batch_size, rank, world_size)

    def dataset_name(self, train_config: TrainConfig) -> str:
        return "parity"

    def dataset_record(self, train_set: ParitySequences, data_dir: str | None) -> dict[str, Any]:
        return {"name": "parity", "source": "generated", "shape": [self.length], "num_classes": 2}

    def describe_data(self, train_set: ParitySequences, test_set: ParitySequences) -> str:
        return (f"data: parity of length {self.length}, training sequences generated on the fly / "
                f"{len(test_set)} test sequences, 2 classes at each of {self.length} positions")

    def model_fields(self, train_set: ParitySequences) -> dict[str, Any]:
        return {"backbone": "sign-embedding", "positional_embedding": "custom-rotational-1d", "in_channels": 1,
                "out_positions": self.length, "out_dims": 2 * self.length}

    def check_eval_data(self, model_config: CTMConfig, data: ParitySequences, name: str) -> None:
        if model_config.out_positions != self.length or model_config.out_dims != 2 * self.length:
            raise ValueError(f"the run's parity task has length {self.length}, but its model answers at "
                             f"{model_config.out_positions} positions (out_dims {model_config.out_dims}); a parity "
                             f"model reads the length it was built for (was config.json edited, or --task-option "
                             f"length given?)")

    def plot_eval(self, result: EvalResult, path: Path) -> None:
        from .pictures import save_accuracy_plot

        save_accuracy_plot(result.per_position_tick_accuracy, path, result.per_tick_sequence_accuracy)

    def pick_example(self, model: ContinuousThoughtMachine, data: ParitySequences, index: int | None = None,
                     label: int | None = None) -> Example:
        """Of the first GIF_POOL test sequences, one the model ends right on that it got most wrong at its first
        tick (it had to count)."""
        from .pictures import pick_example

        if label is not None:
            return super().pick_example(model, data, index, label)  # says why not
        return pick_example(model, data, index, GIF_POOL)

    def thinking_panels(self, output: CTMOutput, inputs: Tensor, targets: Tensor, data: ParitySequences) -> TaskPanels:
        """The sequence and its parity, the attention over the positions, the predicted parity
        (`ctm.tasks.parity.pictures`)."""
        from .pictures import thinking_panels

        return thinking_panels(output, inputs, targets)

    def viewer_data(self, model: ContinuousThoughtMachine, data: ParitySequences, n: int, *,
                    threshold: float) -> dict[str, Any]:
        from .viewer import dataset_viewer_data

        return dataset_viewer_data(model, data, n, threshold=threshold)

    def viewer_script(self) -> str:
        from .viewer import script

        return script()

    def parse_inputs(self, texts: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
        from .predict import parse_sequences

        return parse_sequences(texts, self.length)

    def describe_prediction(self, output: CTMOutput, row: int, name: str,
                            class_names: Sequence[str] | None = None, *, tick: int | None = None) -> str:
        from .predict import line

        return line(output, row, name, tick)

    def prediction_record(self, output: CTMOutput, row: int, name: str,
                          class_names: Sequence[str] | None = None, *, tick: int | None = None) -> dict[str, Any]:
        from .predict import record

        return record(output, row, name, tick)
