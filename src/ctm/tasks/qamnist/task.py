"""QAMNIST (the paper's appendix G.5): MNIST digits seen one at a time, then a question of index and operator
tokens, then ticks to answer its result modulo 10 (`ctm.tasks.qamnist.data`).

The model is the official QAMNIST model as a CTM config: input_reader "schedule" (`ctm.nn.readers`), each digit
attended through the tutorial's backbone (the official MNISTBackbone) for r ticks, each index token fed as its
sinusoidal embedding and each operator as a learned one (the model's token table: `input_tokens` 52 rows, the
first `fixed_tokens` 50 sinusoidal) for r ticks, then `answer_ticks` ticks of zeros. The loss is the certainty
loss over the answer ticks (the official `qamnist_loss`); the answer is read at the most certain answer tick.

The LSTM baseline (`ctm train --task qamnist --model lstm`, `ctm.nn.lstm`) reads the same schedule, as the official
QAMNIST LSTM does; `ctm convert-official` turns the official QAMNIST model's checkpoint into a run of this task
(`ctm.interop.official`).

Options: the official sampler's counts (`digits` +- `digits_delta`, `operations` +- `operations_delta`, the top
excluded), r (`repeats`) and `answer_ticks`. Evaluate beyond training with `ctm eval RUN --task-option
operations=6 --task-option operations_delta=1` (5 operations; a schedule may be longer than any trained on).
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
from .data import MAX_DIGITS, N_TOKENS, QuestionStream, schedule_ticks, shape_of
from .loss import answer_hits, qamnist_loss

if TYPE_CHECKING:
    from ...inference import Run
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput
    from ...training.distributed import DistInfo
    from ...training.evaluate import HaltingResult
    from ...training.loop import TrainConfig

#: questions in the test set at least (and in `ctm eval --split train`, the first of the training stream); as many
#: more as make every (digits, operations) of the ranges asked as often (`QAMNISTOptions.test_size`)
TEST_SIZE = 4_000
#: the test set's blocks: each one (digits, operations), taken in turn
TEST_BLOCK = 125
#: the stream of the test set (its seeds are odd; training seeds are even)
TEST_STREAM = 0x0A11
#: the image set the digits come from
IMAGES = "mnist"


@dataclasses.dataclass(frozen=True)
class QAMNISTOptions:
    digits: int = option(3, "qamnist: digits per question, centre of the range (the official q_num_images)", min=1)
    digits_delta: int = option(2, "qamnist: digits drawn from digits - delta up to digits + delta - 1 (the official "
                                  "sampler; 3 and 2: 1 to 4)", min=0)
    operations: int = option(3, "qamnist: operations per question, centre of the range", min=1)
    operations_delta: int = option(2, "qamnist: operations drawn from operations - delta up to operations + delta "
                                      "- 1 (3 and 2: 1 to 4)", min=0)
    repeats: int = option(1, "qamnist: ticks each digit and each question token is shown (the paper's 1 or 10)",
                          min=1)
    answer_ticks: int = option(1, "qamnist: ticks to answer after the question, the only ones the loss reads", min=1)
    curriculum: float = option(0.0, "qamnist: the fraction of the training steps over which the most digits and "
                                    "operations asked grow from the fewest to the most (0: the official uniform "
                                    "draw from the first step; the test set always asks the whole ranges)", min=0)

    def __post_init__(self) -> None:
        if isinstance(self.curriculum, (int, float)) and self.curriculum > 1:
            raise ValueError(f"QAMNISTOptions.curriculum is a fraction of the training steps, from 0 to 1, got "
                             f"{self.curriculum}")
        for name in ("digits", "operations"):
            n, delta = getattr(self, name), getattr(self, f"{name}_delta")
            if isinstance(n, int) and isinstance(delta, int) and n - delta < 1:
                raise ValueError(f"QAMNISTOptions.{name} - {name}_delta must be at least 1 (at least one {name[:-1]} "
                                 f"per question), got {n} - {delta}")
        if isinstance(self.digits, int) and isinstance(self.digits_delta, int) \
                and self.digits + max(self.digits_delta, 1) - 1 > MAX_DIGITS:
            raise ValueError(f"QAMNISTOptions.digits: at most {MAX_DIGITS} digits per question (the index tokens)")

    @property
    def digit_range(self) -> tuple[int, int]:
        """(fewest, most) digits per question; delta 0 means exactly `digits`."""
        return self.digits - self.digits_delta, self.digits + max(self.digits_delta, 1) - 1

    @property
    def operation_range(self) -> tuple[int, int]:
        return self.operations - self.operations_delta, self.operations + max(self.operations_delta, 1) - 1

    @property
    def shapes(self) -> int:
        """How many (digits, operations) the ranges hold."""
        (d0, d1), (o0, o1) = self.digit_range, self.operation_range
        return (d1 - d0 + 1) * (o1 - o0 + 1)

    @property
    def test_size(self) -> int:
        """Questions in the test set: at least TEST_SIZE, in whole rounds of TEST_BLOCK questions of each shape."""
        rounds = -(-TEST_SIZE // (TEST_BLOCK * self.shapes))
        return rounds * TEST_BLOCK * self.shapes

    @property
    def longest(self) -> int:
        """The ticks of the longest question."""
        return schedule_ticks(self.digit_range[1], self.operation_range[1], self.repeats, self.answer_ticks)


# ----------------------------------------------------------------------------------------------- metrics


@dataclasses.dataclass
class QAMNISTResult:
    """Evaluation of QAMNIST answers over n questions."""

    loss: float  # the QAMNIST loss (certainty loss over the answer ticks), averaged over questions
    accuracy: float  # the answer at the most certain answer tick right (the official figure)
    last_tick_accuracy: float  # the answer at the last tick right
    mean_certainty: float  # at the most certain answer tick
    by_shape: list[dict]  # {"digits", "operations", "accuracy", "n"} for each (D, O) measured
    by_operations: dict[str, float]  # accuracy by number of operations (keys are the counts, as text)
    by_digits: dict[str, float]
    n: int
    noun: str = "questions"

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "noun"}

    def scalars(self) -> dict[str, float]:
        return {"loss": self.loss, "accuracy": self.accuracy, "last_tick_accuracy": self.last_tick_accuracy}

    def summary(self) -> str:
        return f"Test accuracy {self.accuracy:.4f} (answers right; loss {self.loss:.4f}, n={self.n})"

    def lines(self) -> list[str]:
        out = [f"  loss                    {self.loss:.4f}",
               f"  accuracy                {self.accuracy:.4f}  (the answer at the most certain answer tick)",
               f"  accuracy at last tick   {self.last_tick_accuracy:.4f}",
               f"  mean certainty          {self.mean_certainty:.4f}",
               "  operations  accuracy"]
        out += [f"  {o:>10}  {a:8.4f}" for o, a in self.by_operations.items()]
        out.append("  digits  accuracy")
        out += [f"  {d:>6}  {a:8.4f}" for d, a in self.by_digits.items()]
        return out


class QAMNISTMetrics:
    """The sums behind `QAMNISTResult`, in one float64 vector (one all-reduce across ranks): loss, hits at the
    most certain and at the last tick, certainty, n, then (hits, n) for each (D, O) of the ranges."""

    needs_inputs = True  # `update` reads (D, O) off the batch's schedule

    def __init__(self, digits: tuple[int, int], operations: tuple[int, int], answer_ticks: int,
                 noun: str = "questions") -> None:
        self.digits, self.operations, self.answer_ticks, self.noun = digits, operations, answer_ticks, noun
        self.n_o = operations[1] - operations[0] + 1
        shapes = (digits[1] - digits[0] + 1) * self.n_o
        self.sums = torch.zeros(5 + 2 * shapes, dtype=torch.float64)

    def to(self, device: torch.device | str) -> QAMNISTMetrics:
        self.sums = self.sums.to(device)
        return self

    def _slot(self, d: int, o: int) -> int:
        return 5 + 2 * ((d - self.digits[0]) * self.n_o + (o - self.operations[0]))

    def update(self, output: CTMOutput, answers: Tensor, loss: Tensor, tick: Tensor, inputs: Any = None) -> None:
        sums = self.sums = self.sums.to(answers.device)
        b, T = answers.shape[0], output.predictions.shape[-1]
        hits = answer_hits(output.predictions, answers, tick)
        last = answer_hits(output.predictions, answers, torch.full_like(tick, T - 1))
        rows = torch.arange(b, device=answers.device)
        sums[0] += loss.double() * b
        sums[1] += hits.sum()
        sums[2] += last.sum()
        sums[3] += output.certainties[rows, 1, tick].double().sum()
        sums[4] += b
        if inputs is not None:
            d, o = shape_of(inputs)
            if self.digits[0] <= d <= self.digits[1] and self.operations[0] <= o <= self.operations[1]:
                slot = self._slot(d, o)
                sums[slot] += hits.sum()
                sums[slot + 1] += b

    def reduce(self, dist_info: DistInfo) -> None:
        from ...training.distributed import all_reduce_sum

        self.sums = all_reduce_sum(self.sums, dist_info)

    def result(self) -> QAMNISTResult:
        s = self.sums.cpu().tolist()
        n = max(int(s[4]), 1)
        shapes, by_o, by_d = [], {}, {}
        for d in range(self.digits[0], self.digits[1] + 1):
            for o in range(self.operations[0], self.operations[1] + 1):
                hits, count = s[self._slot(d, o)], int(s[self._slot(d, o) + 1])
                if count:
                    shapes.append({"digits": d, "operations": o, "accuracy": hits / count, "n": count})
                    for key, table in ((str(o), by_o), (str(d), by_d)):
                        h, c = table.get(key, (0.0, 0))
                        table[key] = (h + hits, c + count)
        return QAMNISTResult(loss=s[0] / n, accuracy=s[1] / n, last_tick_accuracy=s[2] / n, mean_certainty=s[3] / n,
                             by_shape=shapes, by_operations={k: h / c for k, (h, c) in sorted(by_o.items(), key=_num)},
                             by_digits={k: h / c for k, (h, c) in sorted(by_d.items(), key=_num)}, n=int(s[4]),
                             noun=self.noun)


def _num(item: tuple[str, Any]) -> int:
    return int(item[0])


# ----------------------------------------------------------------------------------------------- presets

_MODEL = dict(d_input=64, heads=4, n_synch_out=32, n_synch_action=32, synapse_depth=1, memory_hidden_dims=16,
              deep_nlms=True, nlm_layernorm=False, dropout=0.0, neuron_selection="random", backbone="tutorial")

PRESETS: dict[str, Preset] = {
    # docs/training.md, "QAMNIST": the official model at a quarter of its width, its digits read by the tutorial's
    # backbone at half resolution (tutorial-s2d) 32 wide, lr 3e-3, and a curriculum over the first 40% of the
    # steps (the shortest questions first); the steps fill 30 minutes of one core of a 2-core CPU.
    "qamnist": Preset("qamnist", dict(dataset="qamnist", steps=9000, batch_size=64, lr=3e-3, adam_eps=1e-8,
                                      weight_decay=0.0, warmup_steps=200, schedule="cosine", min_lr_ratio=0.0,
                                      grad_clip=1.0, eval_every=1500, eval_batch_size=125, augment=False,
                                      tick_loss_weight=0.0),
                      dict(_MODEL, d_model=256, memory_length=3, d_input=32, backbone="tutorial-s2d"),
                      summary="the QAMNIST recipe for 30 minutes of a 2-core CPU (the default of --task qamnist)",
                      task_options=dict(curriculum=0.4)),
    # The official tasks/qamnist/scripts/train_ctm_1.sh (300k iterations on a GPU there): for reference.
    "qamnist-official": Preset("qamnist", dict(dataset="qamnist", steps=300001, batch_size=64, lr=1e-4, adam_eps=1e-8,
                                               weight_decay=0.0, warmup_steps=500, schedule="cosine", min_lr_ratio=0.0,
                                               grad_clip=0.0, eval_every=1000, eval_batch_size=125, augment=False,
                                               tick_loss_weight=0.0),
                               dict(_MODEL, d_model=1024, memory_length=3),
                               summary="the official QAMNIST model and schedule (d_model 1024, r = 1)"),
}


@register_task
class QAMNISTTask(Task):
    """Answer arithmetic over MNIST digits seen one by one (module docstring)."""

    name = "qamnist"
    Options = QAMNISTOptions
    sample_noun = "questions"
    endless_data = True
    fixed_fields = ("input_reader", "input_tokens", "fixed_tokens", "out_dims", "in_channels", "iterations")
    default_preset = "qamnist"
    presets = PRESETS
    predict_flags = ("digits", "question")

    # ----------------------------------------------------------------------------------------------- data

    def _images(self, split: str, data_dir: str | None):
        from ...data.images import load_dataset

        return load_dataset(IMAGES, split, data_dir=data_dir)

    def _stream(self, images, split: str, size: int, stream: int, block: int, curriculum: int = 0
                ) -> QuestionStream:
        o = self.options
        return QuestionStream(images, size, stream, split, block, o.digit_range, o.operation_range, o.repeats,
                              o.answer_ticks, curriculum=curriculum)

    def load(self, split: str, train_config: TrainConfig, data_dir: str | None = None,
             recorded: Mapping[str, Any] | None = None) -> QuestionStream:
        if split == "train":  # a training block is a step: the curriculum's blocks are its steps
            return self._stream(self._images("train", data_dir), "train", STREAM_EPOCH, train_config.seed,
                                train_config.batch_size, round(self.options.curriculum * train_config.steps))
        if split == "test":
            return self._stream(self._images("test", data_dir), "test", self.options.test_size, TEST_STREAM,
                                TEST_BLOCK)
        raise ValueError(f"unknown split {split!r} for the qamnist task; expected train or test")

    def eval_data(self, split: str, train_config: TrainConfig, data_dir: str | None = None, *,
                  recorded: Mapping[str, Any] | None = None, dataset: str | None = None,
                  progress: bool = False) -> QuestionStream:
        if dataset is not None:
            raise ValueError("--dataset does not apply to the qamnist task: its questions are generated from MNIST")
        data = self.load(split, train_config, data_dir)
        data.n = min(data.n, self.options.test_size)
        data.curriculum = 0  # the training stream's questions, asked over the whole ranges
        return data

    def sampler(self, train_set: QuestionStream, train_config: TrainConfig, rank: int = 0,
                world_size: int = 1) -> StreamSampler:
        return StreamSampler(train_config.batch_size, rank, world_size)

    def dataset_record(self, train_set: QuestionStream, data_dir: str | None) -> dict[str, Any]:
        from ..image.task import DATA_DIR_ENV, env_data_dir

        found = None if data_dir else env_data_dir(train_set.images)
        return {"name": "qamnist", "source": train_set.source, "images": IMAGES,
                "shape": [int(n) for n in train_set.images.shape],  # (C, H, W): what ctm predict resizes to
                "data_dir": str(Path(data_dir).resolve()) if data_dir else found,
                **({"data_dir_from": DATA_DIR_ENV} if found else {}), "num_classes": 10}

    def check_dataset_record(self, record: Mapping[str, Any]) -> None:
        from ..image.task import DATA_DIR_ENV

        super().check_dataset_record(record)
        for name in ("data_dir", "images"):
            if name in record and not isinstance(record[name], (str, type(None))):
                raise ValueError(f"'dataset.{name}' must be str or null, got {type(record[name]).__name__}")
        if "data_dir_from" in record and record["data_dir_from"] != DATA_DIR_ENV:
            raise ValueError(f"'dataset.data_dir_from' must be {DATA_DIR_ENV!r} where present, got "
                             f"{record['data_dir_from']!r}")

    def describe_data(self, train_set: QuestionStream, test_set: QuestionStream) -> str:
        o = self.options
        (d0, d1), (o0, o1) = o.digit_range, o.operation_range
        return (f"data: QAMNIST, {d0} to {d1} MNIST digits and {o0} to {o1} operations (+, - modulo 10) per "
                f"question, each input shown for {o.repeats} tick{'s' if o.repeats > 1 else ''}, "
                f"{o.answer_ticks} tick{'s' if o.answer_ticks > 1 else ''} to answer"
                + (f" (the ranges grow over the first {train_set.curriculum:,} step"
                   f"{'s' if train_set.curriculum > 1 else ''})" if train_set.curriculum else "")
                + "; training questions from "
                f"the {len(train_set.images):,} training images on the fly / {len(test_set):,} test questions "
                f"from the {len(test_set.images):,} test images")

    # ---------------------------------------------------------------------------------------------- model

    def model_fields(self, train_set: QuestionStream) -> dict[str, Any]:
        return {"input_reader": "schedule", "input_tokens": N_TOKENS, "fixed_tokens": MAX_DIGITS, "out_dims": 10,
                "in_channels": train_set.images.shape[0], "iterations": self.options.longest}

    def check_eval_data(self, model_config: CTMConfig, data: QuestionStream, name: str) -> None:
        if model_config.input_reader != "schedule" or model_config.input_tokens != N_TOKENS \
                or model_config.out_dims != 10:
            raise ValueError("the model does not read QAMNIST questions (input_reader 'schedule' with the "
                             f"{N_TOKENS} tokens, 10 answers); was config.json edited?")

    # ------------------------------------------------------------------------------------ loss, metrics

    def loss(self, predictions: Tensor, certainties: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return qamnist_loss(predictions, certainties, targets, self.options.answer_ticks)

    def tick_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The mean cross-entropy over the answer ticks (the ticks before read the question)."""
        from ...training.losses import per_tick_cross_entropy

        return per_tick_cross_entropy(predictions[..., -self.options.answer_ticks:], targets).mean()

    def batch_accuracy(self, predictions: Tensor, targets: Tensor, tick: Tensor) -> float:
        return answer_hits(predictions.detach(), targets, tick).float().mean().item()

    def metrics(self, model_config: CTMConfig) -> QAMNISTMetrics:
        o = self.options
        return QAMNISTMetrics(o.digit_range, o.operation_range, o.answer_ticks, noun=self.sample_noun)

    def halting(self, model: ContinuousThoughtMachine, data: QuestionStream, halt_certainty: float,
                batch_size: int = 500, max_ticks: int | None = None) -> HaltingResult:
        raise ValueError("halting does not apply to the qamnist task: the question takes its ticks, and the answer "
                         "comes after it (raise --task-option answer_ticks to give the model more time)")

    def halt_ticks(self, output: CTMOutput, halt_certainty: float) -> list[int]:
        self.halting(None, None, halt_certainty)  # says why
        return []

    # ---------------------------------------------------------------------------------------- pictures

    def pick_example(self, model: ContinuousThoughtMachine, data: QuestionStream, index: int | None = None,
                     label: int | None = None) -> Example:
        """Among the first questions of every shape, the longest one answered right
        (`ctm.tasks.qamnist.pictures.pick_example`)."""
        from .pictures import pick_example

        if label is not None:
            return super().pick_example(model, data, index, label)  # says why not
        return pick_example(model, data, index)

    def thinking_gif(self, model: ContinuousThoughtMachine, data: QuestionStream, path: Path,
                     index: int | None = None, fps: float = 5, *, example: Example | None = None) -> str:
        """The question's digits and tokens with the input of each tick, the attention over the digit read, the
        answer decoded at each tick against the true running value, in the shared figure
        (`ctm.tasks.qamnist.pictures`; the panels need the question's labels, so this task draws its GIF itself
        rather than through `thinking_panels`)."""
        from .pictures import thinking_gif

        if example is None:
            example = self.pick_example(model, data, index)
        return thinking_gif(model, data, example, path, fps=fps)

    def viewer_data(self, model: ContinuousThoughtMachine, data: QuestionStream, n: int, *,
                    threshold: float) -> dict[str, Any]:
        from .viewer import dataset_viewer_data

        return dataset_viewer_data(model, data, n, threshold=threshold)

    def viewer_script(self) -> str:
        from .viewer import script

        return script()

    def plot_eval(self, result: QAMNISTResult, path: Path) -> None:
        """`ctm eval --plot`: accuracy by number of operations, by number of digits and by both."""
        from .pictures import save_eval_plot

        save_eval_plot(result, path)

    # ---------------------------------------------------------------------------------------- predict

    def parse_inputs(self, texts: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
        raise ValueError(_PREDICT_USAGE)

    def predict(self, run: Run, texts: Sequence[str], *, halt_certainty: float | None = None,
                digits: Sequence[str] | None = None, question: Sequence[str] | str | None = None
                ) -> list[Prediction]:
        """`ctm predict RUN --digits IMG ... --question "1 + 0 - 1"`: each question (repeat --question for more)
        about the digit images answered at its most certain answer tick, with the running values decoded
        (`ctm.tasks.qamnist.predict`)."""
        from .predict import predict_questions

        if texts:
            raise ValueError(f"a qamnist run reads its digit images from --digits and its question from --question, "
                             f"not INPUT arguments (got {texts[0][:40]!r}): e.g. --digits 3.png 7.png --question "
                             f"\"1 + 0\"")
        if halt_certainty is not None:
            self.halting(None, None, halt_certainty)  # says why not
        questions = [question] if isinstance(question, str) else list(question or [])
        if not digits or not questions:
            missing = " and ".join(f for f, v in (("--digits", digits), ("--question", questions)) if not v)
            raise ValueError(f"no {missing}: {_PREDICT_USAGE}")
        o = self.options
        return [Prediction(name, text, record)
                for name, text, record in predict_questions(run, digits, questions, o.repeats, o.answer_ticks)]


_PREDICT_USAGE = ("a qamnist run answers a question about digit images: pass --digits IMG [IMG ...] and --question "
                  "\"0 + 1\" (indices into the images, 0-based, joined by + and -)")
