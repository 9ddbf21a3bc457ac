"""The task interface and registry: what a task brings to the one CTM core.

A task supplies its data (a train stream and a test set), the `CTMConfig` fields its input encoder and output
shape fix (backbone, positional embedding, out_dims, out_positions, in_channels), its loss and metrics, and
what its pictures draw. Training, evaluation, halting and the CLI ask the task; they never name one. A run
records its task in config.json (`"task": {"name": ..., **options}`); a run without that record is an image
classification run (every run written before tasks existed, and the bundled model).

A new task is a subclass registered with `register_task`; nothing else changes::

    @register_task
    class Copy(Task):
        name = "copy"
        ...
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor

from ..config import CTMConfig, check_fields
from ..training.losses import certainty_loss

if TYPE_CHECKING:
    from ..inference import Run
    from ..nn.model import ContinuousThoughtMachine
    from ..nn.outputs import CTMOutput
    from ..training.distributed import DistInfo
    from ..training.evaluate import EvalResult, HaltingResult
    from ..training.loop import TrainConfig


class Dataset(Protocol):
    """What training and evaluation read: `len()`, and `batch(idx)` -> (inputs, targets) for index tensor idx
    (targets (b,) of class indices, or (b, P) with P output positions); `to(device)` moves it."""

    name: str
    split: str
    source: str

    def __len__(self) -> int: ...

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]: ...

    def to(self, device: torch.device | str) -> Dataset: ...


class Sampler(Protocol):
    """Index batches: `len()` is the steps per epoch; `batches(epoch, start)` this rank's index tensors of
    epoch `epoch` from global batch `start` on, the same whenever asked (so resume equals a straight run)."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tensor]: ...


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named recipe: the task it is for, its TrainConfig values and its model's CTMConfig values (fields it
    does not name keep CTMConfig's defaults, the tutorial's architecture), and task options (`ctm train
    --task-option` overrides them)."""

    task: str
    train: Mapping[str, Any]
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    summary: str = ""
    task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)



def model_preset(name: str = "default", **changes: Any) -> CTMConfig:
    """The model of the recipe `ctm train --preset NAME` trains (default: "default", the model `ctm train` builds
    without flags; `CTMConfig()` is the seed tutorial's model, the "tutorial" preset), with `changes`. The fields a
    task's data fix (out_dims, in_channels, out_positions, ...) keep CTMConfig's defaults unless given."""
    found = {n: p for task in TASKS.values() for n, p in task.presets.items()}
    if name not in found:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(found))}")
    return CTMConfig(**{**found[name].model, **changes})


class Example(NamedTuple):
    """A test sample a task shows (`Task.pick_example`): its index in the test set and why it was picked."""

    index: int
    reason: str


class Prediction(NamedTuple):
    """One input's answer in `ctm predict` (`Task.predict`): the name it is printed under, the line printed, the
    `--json` object and, for a task that draws its answer, that picture (H, W, 3) uint8 RGB (what `--out`
    writes; None: the task draws none); `warning`, one line about the input that `ctm predict` prints on stderr
    (e.g. a picture that looks inverted), or None."""

    name: str
    line: str
    record: dict[str, Any]
    picture: Any = None
    warning: str | None = None


class Metrics(Protocol):
    """One evaluation's accumulator: `update` with every batch, `reduce` once across ranks, then `result`.

    The result has `loss` (the task's own loss, averaged over samples), `accuracy` (the headline figure the
    progress line shows) and `n`; `to_dict()` (what `ctm eval --json` prints), `scalars()` (the figures a
    metrics.jsonl row records, as test_<key>), `lines()` (what `ctm eval` prints) and `summary()` (the end of
    `ctm train`'s last line). An accumulator with `needs_inputs = True` gets the batch's inputs too,
    `update(output, targets, loss, tick, inputs)`."""

    def update(self, output: CTMOutput, targets: Any, loss: Tensor, tick: Tensor) -> None: ...

    def reduce(self, dist_info: DistInfo) -> None: ...

    def result(self) -> Any: ...


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A task without options."""


class Task:
    """One kind of problem for the CTM. Subclasses set `name` (and `Options`, a frozen dataclass of
    `ctm.config.option` fields, which become `ctm train` flags and the run's task record) and implement
    `load`, `model_fields` and `describe_data`; the rest have defaults that fit classification."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    #: what the startup and evaluation lines call one sample
    sample_noun: ClassVar[str] = "samples"
    #: the recipe (of `presets`) `ctm train --task NAME` uses without --preset
    default_preset: ClassVar[str] = "default"
    #: whether the training data are an endless stream (no epochs)
    endless_data: ClassVar[bool] = False
    #: the CTMConfig fields `model_fields` sets (a flag giving one must agree with it)
    fixed_fields: ClassVar[tuple[str, ...]] = ()
    #: what those fields come from, as an error names it (default: "the NAME task")
    fixes_fields_from: ClassVar[str | None] = None
    #: the recipes `ctm train --preset NAME` offers for this task (`default_preset` among them)
    presets: ClassVar[Mapping[str, Preset]] = {}
    #: whether `ctm predict --invert` applies (its `predict` takes `invert=True`): pictures whose light and dark
    #: can be swapped, as an image classifier's
    invertible: ClassVar[bool] = False
    #: the `ctm predict` flags (beyond its INPUT arguments) whose values this task's `predict` takes by name,
    #: e.g. ("digits", "question"); the command refuses them for every other task
    predict_flags: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)
        check_fields(self.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.record().items() if k != 'name')})"

    def record(self) -> dict[str, Any]:
        """What config.json stores under "task"; `task_from_record` rebuilds the task from it. A task from outside
        ctm records where it comes from ("import": "module:Class"), so eval and resume find it again."""
        cls = type(self)
        importable = cls.__module__.split(".")[0] != "ctm" and "<locals>" not in cls.__qualname__
        where = {"import": f"{cls.__module__}:{cls.__qualname__}"} if importable else {}
        return {"name": self.name, **where, **dataclasses.asdict(self.options)}

    # ---------------------------------------------------------------------------------------------- data

    def load(self, split: str, train_config: TrainConfig, data_dir: str | None = None,
             recorded: Mapping[str, Any] | None = None) -> Dataset:
        """Split "train" (what training samples from) or "test" (what evaluation reads). `recorded` is the run's
        config.json "dataset" section, when there is a run."""
        raise NotImplementedError

    def load_splits(self, train_config: TrainConfig, data_dir: str | None = None, *,
                    recorded: Mapping[str, Any] | None = None, resume: bool = False,
                    progress: bool = False) -> tuple[Dataset, Dataset]:
        """(train, test), what training reads (`resume`: a resumed run's, read as `recorded` says)."""
        return (self.load("train", train_config, data_dir, recorded),
                self.load("test", train_config, data_dir, recorded))

    def eval_data(self, split: str, train_config: TrainConfig, data_dir: str | None = None, *,
                  recorded: Mapping[str, Any] | None = None, dataset: str | None = None,
                  progress: bool = False) -> Dataset:
        """What `ctm eval --split SPLIT` reads (default: `load`; a stream task gives a finite part). `dataset`
        is `ctm eval --dataset` (the task says what it means: default, none), `recorded` the run's "dataset"
        section. A dataset may carry `notes`, lines the command line prints."""
        if dataset is not None:
            raise ValueError(f"--dataset does not apply to the {self.name} task: its data come from the task")
        return self.load(split, train_config, data_dir, recorded)

    def check_eval_data(self, model_config: CTMConfig, data: Dataset, name: str) -> None:
        """ValueError when `data` (named `name`) does not fit the model (default: nothing to check)."""

    def sampler(self, train_set: Dataset, train_config: TrainConfig, rank: int = 0, world_size: int = 1) -> Sampler:
        """The order of training samples (default: a fresh permutation of the train set each epoch)."""
        from ..data.sampling import EpochSampler

        return EpochSampler(len(train_set), train_config.batch_size, seed=train_config.seed, drop_last=True,
                            rank=rank, world_size=world_size)

    def dataset_name(self, train_config: TrainConfig) -> str:
        """The name the run records as its dataset (TrainConfig.dataset, and the default run directory; default:
        the task's name, its data being its own)."""
        return self.name

    def dataset_record(self, train_set: Dataset, data_dir: str | None) -> dict[str, Any]:
        """config.json's "dataset" section."""
        return {"name": train_set.name, "source": train_set.source}

    def check_dataset_record(self, record: Mapping[str, Any]) -> None:
        """ValueError naming the field when a run's "dataset" section (`dataset_record`, as read back from
        config.json) has a field of the wrong type (default: the fields every task records)."""
        fields = {"name": (str,), "source": (str,), "shape": (list,), "num_classes": (int,)}
        for name, types in fields.items():
            if name in record and (not isinstance(record[name], types) or isinstance(record[name], bool)):
                raise ValueError(f"'dataset.{name}' must be {' or '.join(t.__name__ for t in types)}, got "
                                 f"{type(record[name]).__name__}")
        if "shape" in record and not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                         for d in record["shape"]):
            raise ValueError("'dataset.shape' must be a list of positive integers")
        names = record.get("class_names", [])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError("'dataset.class_names' must be a list of strings")

    def describe_data(self, train_set: Dataset, test_set: Dataset) -> str:
        """The "data: ..." line printed before training."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------- model

    def model_fields(self, train_set: Dataset) -> dict[str, Any]:
        """The CTMConfig fields the task (and its data) fix, e.g. out_dims; the rest come from the flags."""
        raise NotImplementedError

    def check_config(self, model_config: CTMConfig, train_config: TrainConfig) -> None:
        """ValueError naming the field when a config does not fit the task (default: TrainConfig.augment needs
        the task's `augment`)."""
        if train_config.augment and type(self).augment is Task.augment \
                and type(self).augment_batch is Task.augment_batch:
            self.augment(None, 0)  # says why, in one line

    # ------------------------------------------------------------------------------------ loss, metrics

    def loss(self, predictions: Tensor, certainties: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss and the tick it reads each sample at, (B,): the certainty loss (one tick per
        sample; with several output positions its cross-entropy is the mean over the positions)."""
        return certainty_loss(predictions, certainties, targets)

    def augment(self, inputs: Any, seed: int) -> Any:
        """A training batch's inputs distorted from generator seed `seed` (`TrainConfig.augment`; default:
        the task has no augmentation)."""
        raise ValueError(f"TrainConfig.augment distorts images; the {self.name} task has none (leave it off)")

    def augment_batch(self, inputs: Any, targets: Any, seed: int) -> tuple[Any, Any]:
        """A training batch distorted from generator seed `seed` (`TrainConfig.augment`), inputs and targets
        together (default: `augment` on the inputs; a task whose targets follow the distortion, such as a maze's
        moves under a rotation, overrides this)."""
        return self.augment(inputs, seed), targets

    def tick_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The mean loss over ticks (and samples): what `TrainConfig.tick_loss_weight` adds to the objective,
        and what training logs as `train_tick_loss` (default: the mean per-tick cross-entropy)."""
        from ..training.losses import per_tick_cross_entropy

        return per_tick_cross_entropy(predictions, targets).mean()

    def batch_accuracy(self, predictions: Tensor, targets: Tensor, tick: Tensor) -> float:
        """The training batch's accuracy read at each sample's `tick` (B,), for the progress line and
        `train_accuracy` (default: classification accuracy, per position with several positions)."""
        from ..training.losses import accuracy

        return accuracy(predictions.detach(), targets, tick)

    def metrics(self, model_config: CTMConfig) -> Metrics:
        """A fresh accumulator of this task's evaluation metrics (default: accuracy at the most-certain and
        last tick, per tick, per class, and per position and whole sequence with several positions)."""
        from ..training.evaluate import TickMetrics

        return TickMetrics(model_config, noun=self.sample_noun)

    def halting(self, model: ContinuousThoughtMachine, data: Dataset, halt_certainty: float,
                batch_size: int = 500, max_ticks: int | None = None) -> HaltingResult:
        """`ctm eval --halt-*` at one threshold: adaptive computation as this task defines it (default:
        `model.think`, each sample stopping once its certainty reaches the threshold)."""
        from ..training.evaluate import evaluate_halting

        return evaluate_halting(model, data, halt_certainty, batch_size, max_ticks=max_ticks)

    def halt_ticks(self, output: CTMOutput, halt_certainty: float) -> list[int]:
        """The tick (0-based) each sample of a full forward's `output` answers at when halting at
        `halt_certainty` (`ctm predict --halt-certainty`; default: as `model.think`, the first tick whose
        certainty reaches it, else the last)."""
        reached = output.certainties[:, 1] >= halt_certainty  # (B, T)
        last = reached.shape[1] - 1
        return [int(row.nonzero()[0]) if row.any() else last for row in reached]

    # ---------------------------------------------------------------------------------------- pictures

    def pick_example(self, model: ContinuousThoughtMachine, data: Dataset,
                     index: int | None = None, label: int | None = None) -> Example:
        """The test sample worth showing and why, in words (`index` given: that one, checked, with no reason;
        `label`, `ctm viz --label`: the first of that class, for tasks with one class per sample); the GIF and
        `ctm viz` draw it. Default: the first."""
        if label is not None:
            raise ValueError(f"--label picks a sample by its class; the {self.name} task has no single class per "
                             f"sample (use --index)")
        if index is None:
            index = 0
        if not 0 <= index < len(data):
            raise ValueError(f"index {index} out of range for {len(data)} test {self.sample_noun}")
        return Example(index, "")

    def thinking_panels(self, output: CTMOutput, inputs: Any, targets: Any, data: Dataset) -> Any:
        """This task's panels of the thinking figure for one sample: `output` is the tracked forward
        (`track=True`) of `inputs`, a batch of one from `data.batch`, whose targets are `targets`. A list of
        `ctm.pictures.figures.Panel`s, or a `TaskPanels` (curves and marks on the certainty panel, a summary, the
        layout); None (the default): the task draws no GIF."""
        return None

    def thinking_gif(self, model: ContinuousThoughtMachine, data: Dataset, path: Path, index: int | None = None,
                     fps: float = 5, *, example: Example | None = None) -> str | None:
        """Write the thinking GIF of one test sample to `path` and return what it shows, in words (None: the task
        has no `thinking_panels`). The sample is `example` (already picked), else `pick_example(model, data,
        index)`; the model runs it with tracking (in eval mode), and its panels go into the figure every task
        shares (`ctm.pictures.figures.ThinkingFigure`: the tick, the certainty, neuron traces), one frame a tick."""
        if type(self).thinking_panels is Task.thinking_panels:
            return None
        from ..pictures import figures

        figures._require_matplotlib()
        if example is None:
            example = self.pick_example(model, data, index)
        inputs, targets = data.batch(torch.tensor([example.index]))
        output = tracked_forward(model, inputs)
        panels = self.thinking_panels(output, inputs, targets, data)
        if panels is None:
            return None
        noun = self.sample_noun[:-1] if self.sample_noun.endswith("s") else self.sample_noun
        tracking = output.tracking

        def numpy(t: Tensor):
            return t.detach().float().cpu().numpy()

        figure = figures.ThinkingFigure(panels, numpy(output.certainties[0]), numpy(tracking.post_activations[:, 0]),
                                        numpy(tracking.pre_activations[:, 0]),
                                        caption=f"Why this {noun}: {example.reason}" if example.reason else None)
        figures.save_gif(figure.frames(), path, fps=fps)
        summary = getattr(panels, "summary", "")
        return (f"{getattr(data, 'split', 'test')} {noun} {example.index}" + (f", {summary}" if summary else "")
                + (f"; why this {noun}: {example.reason}" if example.reason else ""))

    # ------------------------------------------------------------------------------------------ viewer

    def viewer_data(self, model: ContinuousThoughtMachine, data: Dataset, n: int, *,
                    threshold: float) -> dict[str, Any]:
        """What `ctm view` shows of the first `n` samples of `data`: a JSON-ready dict whose "kind" names the
        renderer of `viewer_script` (and whose "samples" the page lists), with the per-tick certainty and
        neuron traces the page draws for every task (`ctm.pictures.viewer.track`)."""
        raise ValueError(f"the {self.name} task has no viewer panel")

    def viewer_script(self) -> str:
        """JavaScript that registers the renderer of this task's `viewer_data` kind in the page
        (`CTM.renderers[kind] = {...}`; see ctm/pictures/assets/viewer.js)."""
        return ""

    # ----------------------------------------------------------------------------------------- predict

    def parse_inputs(self, texts: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
        """`ctm predict`'s arguments (file paths, or the task's own notation) as one input batch for `run` (a
        `ctm.inference.Run`: the model, its configs and what it was trained on), with the name each is printed
        under. A ValueError names what is wrong in one line."""
        raise ValueError(f"ctm predict does not read inputs of the {self.name} task")

    def describe_prediction(self, output: CTMOutput, row: int, name: str,
                            class_names: Sequence[str] | None = None, *, tick: int | None = None) -> str:
        """The line `ctm predict` prints for sample `row` of `output` (a forward of `parse_inputs`'s batch),
        answering at `tick` (0-based; default: the sample's most certain tick)."""
        raise NotImplementedError

    def prediction_record(self, output: CTMOutput, row: int, name: str,
                          class_names: Sequence[str] | None = None, *, tick: int | None = None) -> dict[str, Any]:
        """What `ctm predict --json` prints for that sample: one JSON-ready dict (default: the name and
        `describe_prediction`'s line)."""
        return {"input": name, "prediction": self.describe_prediction(output, row, name, class_names, tick=tick)}

    def predict(self, run: Run, texts: Sequence[str], *, halt_certainty: float | None = None,
                **flags: Any) -> list[Prediction]:
        """`ctm predict`: the answers to its inputs `texts` for `run`, one `Prediction` each. Default: one forward
        of `parse_inputs`'s batch, each row answered at its most certain tick (at `halt_ticks` with
        `halt_certainty`), printed as `describe_prediction` and `prediction_record` say. A task whose answer
        needs more than one forward (a maze's re-application) or draws a picture overrides this. `flags` are the
        `ctm predict` flags of `predict_flags` given (by name, e.g. digits=[...]); only a task that names them
        gets them."""
        if flags:
            self.check_predict_flags(flags)
        batch, names = self.parse_inputs(texts, run)
        return self.predict_batch(run, batch, names, halt_certainty=halt_certainty)

    def predict_batch(self, run: Run, batch: Tensor, names: Sequence[str], *,
                      halt_certainty: float | None = None) -> list[Prediction]:
        """`predict` on a batch `parse_inputs` made: one forward, each row answered at its most certain tick (at
        `halt_ticks` with `halt_certainty`)."""
        model = run.model
        with torch.inference_mode():
            output = model(on_model(batch, model))
        ticks: list[int | None] = [None] * len(names)
        if halt_certainty is not None:  # the task's halting rule (by default ctm.think's)
            ticks = list(self.halt_ticks(output, halt_certainty))
        class_names = run.data.class_names
        return [Prediction(name, self.describe_prediction(output, row, name, class_names, tick=tick),
                           self.prediction_record(output, row, name, class_names, tick=tick))
                for row, (name, tick) in enumerate(zip(names, ticks, strict=True))]

    def check_predict_flags(self, flags: Mapping[str, Any]) -> None:
        """ValueError, in one line, naming a `ctm predict` flag given that this task does not read (one of
        another task's `predict_flags`) and the task that reads it."""
        for name in flags:
            if name not in self.predict_flags:
                takers = sorted(n for n, cls in TASKS.items() if name in cls.predict_flags)
                option = "--" + name.replace("_", "-")
                where = f"{' and '.join(takers)} run{'s' if len(takers) > 1 else ''}" if takers else "another task"
                raise ValueError(f"{option} is for a {where}; this run's task is {self.name} (ctm predict --help "
                                 f"says what each task reads)")

    def plot_eval(self, result: EvalResult, path: Path) -> None:
        """`ctm eval --plot`: accuracy and certainty per tick."""
        from ..pictures.figures import save_ticks_plot

        save_ticks_plot(result, path)


def on_model(inputs: Any, model: ContinuousThoughtMachine) -> Any:
    """`inputs` (a tensor, or a schedule: a list of `ctm.nn.readers.Phase`, or any nesting of tuples, lists and
    dicts of tensors) on the model's device, floating tensors in its dtype (token ids stay integers)."""
    from ..training.batches import to_device

    parameter = next(model.parameters())
    moved = to_device(inputs, parameter.device, non_blocking=False)

    def cast(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.to(parameter.dtype) if x.is_floating_point() else x
        if isinstance(x, dict):
            return {k: cast(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            parts = [cast(v) for v in x]
            return type(x)(*parts) if hasattr(x, "_fields") else type(x)(parts)
        return x

    return cast(moved)


def tracked_forward(model: ContinuousThoughtMachine, inputs: Any, track: bool = True) -> CTMOutput:
    """`model(inputs, track=track)` in eval mode under inference_mode, on the model's device (floating inputs in
    its dtype; `inputs` a tensor or a schedule, `on_model`); the model's mode is restored after."""
    inputs = on_model(inputs, model)
    from ..training.batches import eval_mode

    with eval_mode(model), torch.inference_mode():
        return model(inputs, track=track)


#: task name -> Task subclass
TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Make `cls` available by its name (`ctm train --task NAME`, run records); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"register_task takes a Task subclass with a name, got {cls!r}")
    if TASKS.get(cls.name, cls) is not cls:
        raise ValueError(f"a task named {cls.name!r} is already registered ({TASKS[cls.name].__name__})")
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **options: Any) -> Task:
    """The registered task `name` with its options (ValueError naming the task or the option)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    known = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {unknown}" + (
            f"; its options are {sorted(known)}" if known else ""))
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}") from None


#: the task of `ctm train` without --task, and of every run that records none (runs before tasks existed)
DEFAULT_TASK = "image"
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def resolve_task(spec: str) -> type[Task]:
    """The Task class `spec` names: a registered task's name, or "module:Class" of any importable package
    (imported, checked to be a Task subclass with a name, and registered under that name)."""
    if spec in TASKS:
        return TASKS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown task {spec!r}; choose one of {', '.join(sorted(TASKS))}, or give a task of your "
                         f"own package as module:Class")
    if not _IMPORT_PATH.fullmatch(spec):
        raise ValueError(f"task {spec!r}: expected module:Class, e.g. mypackage.tasks:MyTask")
    module_name, _, attribute = spec.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"task {spec!r}: cannot import {module_name} ({e}); is its package installed, or its "
                         f"folder on PYTHONPATH?") from None
    for part in attribute.split("."):
        value = getattr(value, part, None)
    if not (isinstance(value, type) and issubclass(value, Task) and isinstance(getattr(value, "name", None), str)):
        raise ValueError(f"task {spec!r} is not a ctm.tasks.Task subclass with a name")
    return register_task(value)


def task_from_record(payload: Mapping[str, Any]) -> Task:
    """The task of a run's config.json payload: its "task" record, or the default (image) task when it has none.
    A record naming a task from outside ctm ("import": "module:Class") imports that class."""
    record = payload.get("task")
    if record is None:
        return make_task(DEFAULT_TASK)
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise ValueError(f"config.json: 'task' must be an object with a 'name', got {record!r}")
    where = record.get("import")
    if where is not None:
        # A run may come from someone else: the code it names is imported only when the user says so (`--task
        # module:Class`, or `resolve_task` from Python), never because a config.json asks.
        if not isinstance(where, str):
            raise ValueError(f"config.json: 'task.import' must be a string module:Class, got {where!r}")
        cls = TASKS.get(record["name"])
        if cls is None:
            raise ValueError(f"the run's task {record['name']!r} comes from {where}, and ctm imports no code a run "
                             f"names: pass --task {where} (from Python, ctm.tasks.resolve_task({where!r}) first)")
        if f"{cls.__module__}:{cls.__qualname__}" != where:
            raise ValueError(f"the run's task {record['name']!r} comes from {where}, but the task of that name here "
                             f"is {cls.__module__}:{cls.__qualname__}")
    return make_task(record["name"], **{k: v for k, v in record.items() if k not in ("name", "import")})
