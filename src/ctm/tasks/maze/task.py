"""Mazes (the paper's section 4): read a maze picture and output the route from the red start to the green goal
as a sequence of moves, with no positional embedding: the attention walks the route tick by tick.

The data are perfect mazes of `cells` x `cells` generated on the fly from (stream, index) (training seeds even,
test seeds odd; `TEST_SIZE` fixed test mazes), or official-format pictures read from a folder
(`--dataset folder:PATH`: PATH/train and PATH/test, or any folder of .png files for `ctm eval`). The target is
the route's moves (0 up, 1 down, 2 left, 3 right) padded with waits (4) to `route_length` L; the model has L
output positions of 5 classes, and the loss is the official `maze_loss` with its curriculum
(`ctm.tasks.maze.loss`).

Solve rate: the moves of the most certain tick, walked from the start up to the first wait, never enter a wall and
end on the goal. Mazes larger than the model was trained on (`ctm eval RUN --task-option cells=15`) are solved by
re-application as in the official analysis: walk the predicted route, move the start to where it ended, run the
model again, up to `reapply` times (`reapplied_solve_rate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...config import CTMConfig, option
from ...data.sampling import STREAM_EPOCH, StreamSampler
from ..base import Example, Prediction, Preset, Task, register_task
from .data import GeneratedMazes, MazeImages, list_pngs
from .loss import LOOKAHEAD, maze_loss
from .mazes import WAIT, MazeError, maze_tensors, route_length_for, transform, walk_batch
from .solving import reapply

if TYPE_CHECKING:
    from ...inference import Run
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput
    from ...pictures.figures import TaskPanels
    from ...training.distributed import DistInfo
    from ...training.loop import TrainConfig

#: mazes in the generated test set (and in `ctm eval --split train`, the first of the training stream)
TEST_SIZE = 1000
#: the stream of the test set (its seeds are odd; training seeds are even)
TEST_STREAM = 0x3A2E
#: the largest maze the task generates (cells a side)
MAX_CELLS = 255
#: how many applications re-application allows by default on mazes larger than those trained on
AUTO_REAPPLY = 20
#: the test mazes `ctm viz` and thinking.gif pick among
GIF_POOL = 200
#: the probability of each of the official augmentation's transforms (a quarter turn, each flip)
AUGMENT_P = 0.5


@dataclasses.dataclass(frozen=True)
class MazeOptions:
    cells: int = option(7, "maze: cells a side of the generated mazes (pictures of 2 cells + 1 pixels a side: 7 is "
                           "the official small 15x15 size); evaluate larger ones with ctm eval --task-option "
                           "cells=N", min=2)
    route_length: int = option(0, "maze: the route steps L the model outputs (0: every route of a generated maze "
                                  "fits, 2 cells^2 - 2); longer routes are cut, as the official code does", min=0)
    lookahead: int = option(LOOKAHEAD, "maze: how many steps beyond the correct prefix the curriculum trains "
                                       "(the official cirriculum_lookahead)", min=1)
    reapply: int = option(0, "maze: the most times evaluation and predict apply the model to one maze, moving the "
                             "start to where the last route ended (the official analysis); 0: once on mazes of the "
                             f"size trained on, up to {AUTO_REAPPLY} times on larger ones", min=0)

    def __post_init__(self) -> None:
        if isinstance(self.cells, int) and self.cells > MAX_CELLS:
            raise ValueError(f"MazeOptions.cells {self.cells} is above {MAX_CELLS}; choose a smaller maze")

    @property
    def length(self) -> int:
        return self.route_length or route_length_for(self.cells)


# ----------------------------------------------------------------------------------------------- metrics


@dataclasses.dataclass
class MazeResult:
    """Evaluation of maze solving over n mazes, each read at its most certain tick."""

    loss: float  # the maze loss (with its curriculum), averaged over mazes
    accuracy: float  # route steps right, the waits after the goal included
    route_accuracy: float  # steps right among those before the goal
    solve_rate: float  # mazes whose predicted route, walked from the start, ends on the goal (one application)
    reapplied_solve_rate: float  # the same, re-applying the model up to `reapply` times
    mean_applications: float  # applications per maze in that evaluation
    wall_rate: float  # mazes whose route (one application) walks into a wall
    mean_correct_prefix: float  # route steps right before the first mistake
    per_tick_accuracy: list[float]  # route-step accuracy at each tick
    per_tick_solve_rate: list[float]  # solve rate if every maze were read at that tick
    per_tick_certainty: list[float]  # mean certainty at each tick
    reapply: int
    n: int
    noun: str = "mazes"

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "noun"}

    def scalars(self) -> dict[str, float]:
        return {"loss": self.loss, "accuracy": self.accuracy, "route_accuracy": self.route_accuracy,
                "solve_rate": self.solve_rate, "reapplied_solve_rate": self.reapplied_solve_rate}

    def summary(self) -> str:
        return (f"Test solve rate {self.solve_rate:.4f}, route steps {self.route_accuracy:.4f} (loss {self.loss:.4f}, "
                f"n={self.n})")

    def lines(self) -> list[str]:
        out = [f"  loss (maze, curriculum)   {self.loss:.4f}",
               f"  accuracy (every step)     {self.accuracy:.4f}",
               f"  route accuracy            {self.route_accuracy:.4f}  (the steps before the goal)",
               f"  correct prefix            {self.mean_correct_prefix:.2f} steps on average",
               f"  solve rate                {self.solve_rate:.4f}  (the route walked from the start ends on the goal)",
               f"  into a wall               {self.wall_rate:.4f}"]
        if self.reapply > 1:
            out.append(f"  solve rate, re-applied    {self.reapplied_solve_rate:.4f}  (up to {self.reapply} "
                       f"applications, {self.mean_applications:.2f} on average)")
        out.append("  tick  accuracy  solve rate  certainty")
        for t, (a, s, c) in enumerate(zip(self.per_tick_accuracy, self.per_tick_solve_rate, self.per_tick_certainty,
                                          strict=True)):
            out.append(f"  {t + 1:4d}  {a:8.4f}  {s:10.4f}  {c:9.4f}")
        return out


class MazeMetrics:
    """The sums behind `MazeResult`, in one float64 vector (one all-reduce across ranks)."""

    needs_inputs = True  # the walls, start and goal come from the inputs
    needs_model = True  # re-application runs the model again (`reapply` > 1)

    def __init__(self, config: CTMConfig, reapply: int = 0, trained_side: int | None = None,
                 noun: str = "mazes") -> None:
        self.T, self.reapply, self.trained_side, self.noun = config.iterations, reapply, trained_side, noun
        self.reapply_times = max(reapply, 1)  # the most applications any batch was allowed (MazeResult.reapply)
        self.model: ContinuousThoughtMachine | None = None
        # [loss, steps right, route steps right, route steps, solved, reapplied solved, applications, wall,
        #  correct prefix, per-tick accuracy (T), per-tick solved (T), per-tick certainty (T), n]
        self.sums = torch.zeros(9 + 3 * self.T + 1, dtype=torch.float64)

    def to(self, device: torch.device | str) -> MazeMetrics:
        self.sums = self.sums.to(device)
        return self

    def update(self, output: CTMOutput, targets: Tensor, loss: Tensor, tick: Tensor, inputs: Tensor | None = None) \
            -> None:
        sums = self.sums = self.sums.to(targets.device)
        B, L = targets.shape
        T = self.T
        preds = output.predictions.reshape(B, L, 5, -1).argmax(2)  # (B, L, T)
        hits = preds == targets.unsqueeze(-1)  # (B, L, T)
        chosen = output.certainties[:, 1].argmax(-1)
        rows = torch.arange(B, device=targets.device)
        hit = hits[rows, :, chosen]  # (B, L)
        on_route = targets != WAIT
        sums[0] += loss.double() * B
        sums[1] += hit.double().mean(1).sum()
        sums[2] += (hit & on_route).sum()
        sums[3] += on_route.sum()
        sums[8] += hit.long().cumprod(1).sum()
        sums[9:9 + T] += hits.double().mean(1).sum(0)
        sums[9 + 2 * T:9 + 3 * T] += output.certainties[:, 1].double().sum(0)
        if inputs is not None:
            floor, start, goal = maze_tensors(inputs)
            w = walk_batch(floor, start, goal, preds[rows, :, chosen])
            sums[4] += w.solved.sum()
            sums[7] += w.wall.sum()
            # every tick: B x T walkers
            every = preds.permute(0, 2, 1).reshape(B * T, L)
            per = walk_batch(floor.repeat_interleave(T, 0), start.repeat_interleave(T, 0),
                             goal.repeat_interleave(T, 0), every)
            sums[9 + T:9 + 2 * T] += per.solved.reshape(B, T).double().sum(0)
            times = self.times(inputs.shape[-1])
            self.reapply_times = max(self.reapply_times, times)
            if times > 1 and self.model is not None:
                solved, applications, _ = reapply(self.model, inputs, times, output)
                sums[5] += solved.sum()
                sums[6] += applications.sum()
            else:
                sums[5] += w.solved.sum()
                sums[6] += B
        sums[-1] += B

    def times(self, side: int) -> int:
        """How many applications a maze picture `side` pixels wide gets (`MazeOptions.reapply`)."""
        if self.reapply:
            return self.reapply
        return AUTO_REAPPLY if self.trained_side is not None and side > self.trained_side else 1

    def reduce(self, dist_info: DistInfo) -> None:
        from ...training.distributed import all_reduce_sum

        self.sums = all_reduce_sum(self.sums, dist_info)

    def result(self) -> MazeResult:
        s = self.sums.cpu()
        n, T = int(s[-1].item()), self.T
        return MazeResult(
            loss=s[0].item() / n, accuracy=s[1].item() / n, route_accuracy=s[2].item() / max(s[3].item(), 1),
            solve_rate=s[4].item() / n, reapplied_solve_rate=s[5].item() / n, mean_applications=s[6].item() / n,
            wall_rate=s[7].item() / n, mean_correct_prefix=s[8].item() / n,
            per_tick_accuracy=(s[9:9 + T] / n).tolist(), per_tick_solve_rate=(s[9 + T:9 + 2 * T] / n).tolist(),
            per_tick_certainty=(s[9 + 2 * T:9 + 3 * T] / n).tolist(), reapply=self.reapply_times, n=n,
            noun=self.noun)


# ----------------------------------------------------------------------------------------------- presets

PRESETS: dict[str, Preset] = {
    # docs/training.md, "Mazes": 6948 steps filled 30 minutes of one core of a 2-core CPU beside the LSTM run on
    # the other (python benchmarks/maze.py).
    "maze": Preset("maze", dict(dataset="maze", steps=6948, batch_size=64, lr=1e-3, adam_eps=1e-8,
                                weight_decay=0.0, warmup_steps=200, schedule="cosine", min_lr_ratio=0.0,
                                grad_clip=1.0, eval_every=1000, eval_batch_size=250, augment=False,
                                tick_loss_weight=0.0),
                   dict(iterations=30, d_model=256, d_input=64, heads=4, memory_length=10, memory_hidden_dims=4,
                        n_synch_out=1024, n_synch_action=64, neuron_selection="random-pairing",
                        backbone="resnet18-1", positional_embedding="none"),
                   summary="the maze recipe (the default of --task maze)"),
    # The official small maze run (tasks/mazes/README.md; 12-24 hours without a GPU there).
    "maze-official": Preset("maze", dict(dataset="maze", steps=100000, batch_size=64, lr=1e-4, adam_eps=1e-8,
                                         weight_decay=0.0, warmup_steps=0, schedule="constant", min_lr_ratio=0.0,
                                         grad_clip=0.0, eval_every=2000, eval_batch_size=32, augment=True,
                                         tick_loss_weight=0.0),
                            dict(iterations=50, d_model=1024, d_input=256, heads=4, memory_length=25,
                                 memory_hidden_dims=32, n_synch_out=128, n_synch_action=128, synapse_depth=8,
                                 neuron_selection="random-pairing", backbone="resnet18-1",
                                 positional_embedding="none", nlm_temperature=True),
                            summary="the official small maze model and schedule (d_model 1024, 50 ticks)"),
}


@register_task
class MazeTask(Task):
    """Solve mazes: output the route from the red start to the green goal as moves (module docstring)."""

    name = "maze"
    Options = MazeOptions
    sample_noun = "mazes"
    endless_data = True  # generated mazes; with --dataset folder:PATH too, steps count (not epochs)
    fixed_fields = ("in_channels", "out_positions", "out_dims")
    default_preset = "maze"
    presets = PRESETS

    @property
    def cells(self) -> int:
        return self.options.cells

    @property
    def route_length(self) -> int:
        return self.options.length

    # ------------------------------------------------------------------------------------------ data

    @staticmethod
    def folder_of(dataset: str | None) -> Path | None:
        if dataset and dataset.startswith("folder:"):
            return Path(dataset[len("folder:"):])
        return None

    #: the picture side the model was trained on (from the run's dataset record, else this task's size)
    _trained: int | None = None

    @property
    def trained_side(self) -> int:
        return self._trained or 2 * self.cells + 1

    def _route_length(self, recorded: Mapping[str, Any] | None) -> int:
        shape = (recorded or {}).get("shape")
        if isinstance(shape, list) and len(shape) == 3 and isinstance(shape[-1], int):
            self._trained = shape[-1]
        if recorded and isinstance(recorded.get("route_length"), int):
            return recorded["route_length"]
        return self.route_length

    def load(self, split: str, train_config: TrainConfig, data_dir: str | None = None,
             recorded: Mapping[str, Any] | None = None) -> GeneratedMazes | MazeImages:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r} for the maze task; expected train or test")
        folder = self.folder_of(train_config.dataset)
        if folder is not None:
            where = folder / split
            if not where.is_dir():
                raise MazeError(f"maze folder {folder} has no {split}/ folder: training reads PATH/train and "
                                f"PATH/test (ctm eval --dataset folder:PATH reads every .png under PATH)")
            return MazeImages(list_pngs(where), self._route_length(recorded), split, f"folder:{where}")
        if train_config.dataset not in (None, "", "maze"):
            raise ValueError(f"the maze task reads generated mazes (--dataset maze) or official-format pictures "
                             f"(--dataset folder:PATH), not {train_config.dataset!r}")
        L = self._route_length(recorded)
        if split == "train":
            return GeneratedMazes(self.cells, L, STREAM_EPOCH, train_config.seed, "train")
        return GeneratedMazes(self.cells, L, TEST_SIZE, TEST_STREAM, "test")

    def eval_data(self, split: str, train_config: TrainConfig, data_dir: str | None = None, *,
                  recorded: Mapping[str, Any] | None = None, dataset: str | None = None,
                  progress: bool = False) -> GeneratedMazes | MazeImages:
        L = self._route_length(recorded)
        folder = self.folder_of(dataset)
        if folder is not None:
            return MazeImages(list_pngs(folder), L, split, f"folder:{folder}", progress=progress)
        if dataset not in (None, "maze"):
            raise ValueError(f"--dataset for a maze run is folder:PATH (official-format maze pictures), got "
                             f"{dataset!r}")
        if dataset is None and self.folder_of(train_config.dataset) is not None:
            return self.load(split, train_config, data_dir, recorded)
        if split == "train":
            return GeneratedMazes(self.cells, L, TEST_SIZE, train_config.seed, "train")
        return GeneratedMazes(self.cells, L, TEST_SIZE, TEST_STREAM, "test")

    def sampler(self, train_set: GeneratedMazes | MazeImages, train_config: TrainConfig, rank: int = 0,
                world_size: int = 1):
        if isinstance(train_set, GeneratedMazes):
            return StreamSampler(train_config.batch_size, rank, world_size)
        return super().sampler(train_set, train_config, rank, world_size)

    def dataset_name(self, train_config: TrainConfig) -> str:
        return train_config.dataset if self.folder_of(train_config.dataset) else "maze"

    def dataset_record(self, train_set: GeneratedMazes | MazeImages, data_dir: str | None) -> dict[str, Any]:
        return {"name": self.dataset_name_of(train_set), "source": train_set.source, "shape": list(train_set.shape),
                "num_classes": 5, "route_length": train_set.route_length}

    @staticmethod
    def dataset_name_of(data: GeneratedMazes | MazeImages) -> str:
        return "maze" if isinstance(data, GeneratedMazes) else data.source

    def check_dataset_record(self, record: Mapping[str, Any]) -> None:
        super().check_dataset_record(record)
        value = record.get("route_length")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError("'dataset.route_length' must be a positive integer")

    def describe_data(self, train_set: GeneratedMazes | MazeImages, test_set: GeneratedMazes | MazeImages) -> str:
        shape = "x".join(map(str, train_set.shape[1:]))
        if isinstance(train_set, GeneratedMazes):
            what = f"mazes of {self.cells}x{self.cells} cells ({shape} pixels), training mazes generated on the fly"
        else:
            what = f"{len(train_set)} mazes of {shape} pixels from {train_set.source}"
        return (f"data: {what} / {len(test_set)} test mazes; routes of up to {train_set.route_length} moves (up, "
                f"down, left, right, wait)")

    def model_fields(self, train_set: GeneratedMazes | MazeImages) -> dict[str, Any]:
        L = train_set.route_length
        return {"in_channels": 3, "out_positions": L, "out_dims": 5 * L}

    def check_config(self, model_config: CTMConfig, train_config: TrainConfig) -> None:
        if model_config.input_reader != "attention":
            raise ValueError(f"the maze task reads pictures with attention; CTMConfig.input_reader "
                             f"{model_config.input_reader!r} does not apply (leave it at attention)")

    def check_eval_data(self, model_config: CTMConfig, data: GeneratedMazes | MazeImages, name: str) -> None:
        if self.options.route_length not in (0, model_config.out_positions):
            raise ValueError(f"the run's model outputs {model_config.out_positions} route steps; --task-option "
                             f"route_length={self.options.route_length} cannot change that (longer routes are cut)")
        if model_config.out_positions != data.route_length or model_config.out_dims != 5 * data.route_length:
            raise ValueError(f"the model outputs {model_config.out_positions} route steps, but {name} has routes of "
                             f"{data.route_length}")

    # ------------------------------------------------------------------------------------ loss, metrics

    def loss(self, predictions: Tensor, certainties: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        loss, tick, _ = maze_loss(predictions, certainties, targets, self.options.lookahead)
        return loss, tick

    def tick_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The mean cross-entropy over every tick and route step (what TrainConfig.tick_loss_weight adds)."""
        from ...training.losses import per_tick_cross_entropy

        return per_tick_cross_entropy(predictions, targets).mean()

    def batch_accuracy(self, predictions: Tensor, targets: Tensor, tick: Tensor) -> float:
        """Route steps before the goal right at each maze's chosen tick."""
        B, L = targets.shape
        preds = predictions.detach().reshape(B, L, 5, -1)[torch.arange(B), :, :, tick].argmax(-1)  # (B, L)
        on_route = targets != WAIT
        return ((preds == targets) & on_route).sum().item() / max(on_route.sum().item(), 1)

    def metrics(self, model_config: CTMConfig) -> MazeMetrics:
        return MazeMetrics(model_config, self.options.reapply, self.trained_side, noun=self.sample_noun)

    def augment_batch(self, inputs: Tensor, targets: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """The official augmentation: each maze turned a quarter (either way) with probability 1/2, then flipped
        left-right and top-bottom with probability 1/2 each, its moves remapped (`mazes.transform`); drawn from
        generator seed `seed`. Pictures that are not square are only flipped."""
        g = torch.Generator().manual_seed(seed)
        B = inputs.shape[0]
        draws = torch.rand(B, 4, generator=g)
        xs, ys = [], []
        square = inputs.shape[-1] == inputs.shape[-2]
        for b in range(B):
            rotation = (1 if draws[b, 1] < 0.5 else -1) if square and draws[b, 0] < AUGMENT_P else 0
            x, y = transform(inputs[b], targets[b].cpu(), rotation, bool(draws[b, 2] < AUGMENT_P),
                             bool(draws[b, 3] < AUGMENT_P))
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys).to(targets.device)

    # ---------------------------------------------------------------------------------------- predict

    def parse_inputs(self, texts: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
        """Official-format maze pictures (.png; a blue route optional) of one size as one batch, named by their
        paths (`ctm.tasks.maze.predict`)."""
        from .predict import parse_files

        return parse_files(texts)

    def predict(self, run: Run, texts: Sequence[str], *, halt_certainty: float | None = None) -> list[Prediction]:
        """`ctm predict`: each maze picture (any size; a blue route optional) solved with re-application, up to
        the task's `reapply` applications (so mazes larger than trained are solved as the official analysis does);
        its line, its record (moves, cells, solved, applications) and the maze with the route drawn (`--out`)."""
        from .predict import line, picture, read_files, record, solve_mazes

        if halt_certainty is not None:
            raise ValueError("--halt-certainty does not apply to the maze task: each application reads its most "
                             "certain tick, as evaluation does")
        read = read_files(texts)
        answers = solve_mazes(run.model, [m for m, _ in read], self.options.reapply or AUTO_REAPPLY)
        return [Prediction(name, line(name, maze, given, a), record(name, maze, given, a), picture(maze, a))
                for name, (maze, given), a in zip(texts, read, answers, strict=True)]

    def plot_eval(self, result: MazeResult, path: Path) -> None:
        """`ctm eval --plot`: route-step accuracy, solve rate and certainty per tick."""
        from .pictures import save_eval_plot

        save_eval_plot(result, path)

    # ---------------------------------------------------------------------------------------- pictures

    def pick_example(self, model: ContinuousThoughtMachine, data: GeneratedMazes | MazeImages,
                     index: int | None = None, label: int | None = None) -> Example:
        """Of the first GIF_POOL test mazes, one solved with the longest route, else the one with the longest
        correct prefix."""
        from .pictures import pick_example

        if label is not None:
            return super().pick_example(model, data, index, label)  # says why not
        return pick_example(model, data, index, GIF_POOL)

    def thinking_panels(self, output: CTMOutput, inputs: Tensor, targets: Tensor,
                        data: GeneratedMazes | MazeImages) -> TaskPanels:
        """The maze, the attention over it, the route predicted at each tick with its wrong moves marked
        (`ctm.tasks.maze.pictures`)."""
        from .pictures import thinking_panels

        return thinking_panels(output, inputs, targets)

    def viewer_data(self, model: ContinuousThoughtMachine, data: GeneratedMazes | MazeImages, n: int, *,
                    threshold: float) -> dict[str, Any]:
        from .viewer import dataset_viewer_data

        return dataset_viewer_data(model, data, n, threshold=threshold)

    def viewer_script(self) -> str:
        from .viewer import script

        return script()
