"""QAMNIST questions: MNIST digits seen one at a time, then a question of index and operator tokens, answered
modulo 10 (the paper's appendix G.5; the official `QAMNISTDataset`).

A question about D digits with O operations reads: the digits' images, each for r ticks; then the index of the
first operand, and O pairs (operator, index), each token for r ticks ("take digit 2, add digit 0, subtract
digit 1": 2 + 0 - 1); then `answer_ticks` ticks with nothing to read. The answer is the arithmetic done left to
right with each intermediate result taken modulo 10, as the official generator does.

Sample k of a stream is drawn by its own generator seeded from (stream, k) (training seeds even, test seeds odd):
the images (uniform over the split's images, with replacement), the first index, and each operator and index.
All samples of a block of consecutive indices share (D, O), so a block is one schedule; a training block is one
global batch, and its (D, O) is drawn from (stream, block) uniformly over the ranges the task's options give
(the official sampler's `randint(n - delta, n + delta)`, its top excluded: 3 +- 2 means 1 to 4). The test set's
blocks take every (D, O) of the ranges in turn, so each is measured on as many questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ...data.sampling import mix_seed
from ...nn.readers import Phase

#: the index tokens: rows 0 .. MAX_DIGITS - 1 of the token table, the sinusoidal embeddings of the index (fixed)
MAX_DIGITS = 50
#: the operators, token MAX_DIGITS + i for OPERATORS[i] (learned embeddings)
OPERATORS = ("+", "-")
#: rows of the model's token table: the index tokens, then the operators
N_TOKENS = MAX_DIGITS + len(OPERATORS)
MODULUS = 10


class Question(NamedTuple):
    """One question, readable: the images (their rows in the split), their labels, the operand indices (O + 1),
    the operators (O, 0 plus, 1 minus), the running value after each operation (O + 1, the first the first
    operand's) and the answer (the last)."""

    images: list[int]
    digits: list[int]
    indices: list[int]
    operators: list[int]
    running: list[int]

    @property
    def answer(self) -> int:
        return self.running[-1]

    def text(self) -> str:
        """The question in the notation `ctm predict --question` takes: "2 + 0 - 1" (operand indices)."""
        parts = [str(self.indices[0])]
        for op, i in zip(self.operators, self.indices[1:], strict=True):
            parts += [OPERATORS[op], str(i)]
        return " ".join(parts)


def evaluate_question(digits: Sequence[int], indices: Sequence[int], operators: Sequence[int]) -> list[int]:
    """The running values of a question over `digits`: the first operand, then after each operation, each taken
    modulo 10 (the last is the answer)."""
    value = digits[indices[0]] % MODULUS
    running = [value]
    for op, i in zip(operators, indices[1:], strict=True):
        value = (value + digits[i] if op == 0 else value - digits[i]) % MODULUS
        running.append(value)
    return running


def sample_seed(stream: int, index: int, test: bool) -> int:
    """The generator seed of sample `index` of a stream: training seeds are even, test seeds odd."""
    return (mix_seed(stream, index) & ~1) | int(test)


def block_shape(stream: int, block: int, digits: tuple[int, int], operations: tuple[int, int],
                cycle: bool, curriculum: int = 0) -> tuple[int, int]:
    """(D, O) of a block: drawn uniformly over the ranges [lo, hi] from (stream, block), or with `cycle` every
    combination in turn (the test set's). With a `curriculum` of C blocks (training steps), block b draws from
    the ranges cut at lo + (hi - lo) (b + 1) / C, rounded: the shortest questions first, the whole ranges from
    block C - 1 on."""
    if curriculum and not cycle:
        grown = min(1.0, (block + 1) / curriculum)
        digits = digits[0], digits[0] + round((digits[1] - digits[0]) * grown)
        operations = operations[0], operations[0] + round((operations[1] - operations[0]) * grown)
    n_d, n_o = digits[1] - digits[0] + 1, operations[1] - operations[0] + 1
    k = block % (n_d * n_o) if cycle else mix_seed(stream ^ 0x0A4D, block) % (n_d * n_o)
    return digits[0] + k // n_o, operations[0] + k % n_o


def draw_questions(stream: int, indices: Tensor, n_images: int, labels: Tensor, n_digits: int, n_operations: int,
                   test: bool) -> list[Question]:
    """The questions at `indices` (b,) of a stream over a split of `n_images` images labelled `labels`."""
    out = []
    g = torch.Generator()
    for k in indices.tolist():
        g.manual_seed(sample_seed(stream, k, test))
        images = torch.randint(n_images, (n_digits,), generator=g).tolist()
        picks = torch.randint(n_digits, (n_operations + 1,), generator=g).tolist()
        ops = torch.randint(len(OPERATORS), (n_operations,), generator=g).tolist()
        digits = [int(labels[i]) for i in images]
        out.append(Question(images, digits, picks, ops, evaluate_question(digits, picks, ops)))
    return out


def schedule(images: Tensor, indices: Tensor, operators: Tensor, repeats: int, answer_ticks: int) -> list[Phase]:
    """The schedule of a batch of questions: images (b, D, C, H, W) in [0, 1], operand indices (b, O + 1) and
    operators (b, O) int64; each input for `repeats` ticks, then `answer_ticks` blank ticks."""
    phases = [Phase("attend", images[:, i], repeats) for i in range(images.shape[1])]
    phases.append(Phase("token", indices[:, 0], repeats))
    for j in range(operators.shape[1]):
        phases += [Phase("token", MAX_DIGITS + operators[:, j], repeats), Phase("token", indices[:, j + 1], repeats)]
    phases.append(Phase("blank", indices[:, 0], answer_ticks))
    return phases


def schedule_ticks(n_digits: int, n_operations: int, repeats: int, answer_ticks: int) -> int:
    """The ticks of a question's schedule: D + 2 O + 1 inputs of `repeats` ticks each, then the answer ticks."""
    return (n_digits + 2 * n_operations + 1) * repeats + answer_ticks


class TickPlan(NamedTuple):
    """What each tick of a question's schedule reads (`tick_plan`): the inputs in order, and per tick (T,) the
    input it reads and which running value is known by then."""

    labels: list[str]  # each input: "digit 0" .. "digit D-1", "index i", "+" or "-", ..., then "answer"
    kinds: list[str]  # each input's kind: "digit", "index", "operator" or "answer"
    reads: list[int]  # (T,) the input (a position in labels) tick t reads
    known: list[int]  # (T,) the running value known at tick t (a position in Question.running), -1 before any
    value_ticks: list[int]  # (O + 1,) the last tick of each index input: where running value j is first known

    @property
    def ticks(self) -> int:
        return len(self.reads)

    def digit_of(self, t: int) -> int:
        """The digit tick t attends to, -1 on a token or answer tick."""
        return self.reads[t] if self.kinds[self.reads[t]] == "digit" else -1


def tick_plan(n_digits: int, indices: Sequence[int], operators: Sequence[int], repeats: int,
              answer_ticks: int) -> TickPlan:
    """The `TickPlan` of a question about `n_digits` digits (as `schedule` lays it out): running value j (the
    first operand's, then after operation j) is known from the first tick that reads index j on, through the
    operator after it, until the next index is read; `value_ticks[j]` is the last tick reading index j."""
    labels = [f"digit {i}" for i in range(n_digits)] + [f"index {indices[0]}"]
    kinds = ["digit"] * n_digits + ["index"]
    for op, i in zip(operators, indices[1:], strict=True):
        labels += [OPERATORS[op], f"index {i}"]
        kinds += ["operator", "index"]
    labels.append("answer")
    kinds.append("answer")
    reads = [k for k in range(len(labels) - 1) for _ in range(repeats)] + [len(labels) - 1] * answer_ticks
    known, value_ticks, value = [], [], -1
    for t, k in enumerate(reads):
        if kinds[k] == "index" and (t == 0 or reads[t - 1] != k):  # the index's first tick: its value known
            value += 1
        if kinds[k] == "index" and reads[t + 1] != k:  # its last (an answer tick always follows)
            value_ticks.append(t)
        known.append(value)
    return TickPlan(labels, kinds, reads, known, value_ticks)


def shape_of(phases: Sequence[Phase]) -> tuple[int, int]:
    """(D, O) of a schedule `schedule` made."""
    n_digits = sum(p.kind == "attend" for p in phases)
    return n_digits, (sum(p.kind == "token" for p in phases) - 1) // 2


class QuestionStream:
    """QAMNIST questions over one split of an image set: `batch(idx)` -> (the schedule, answers (b,) int64) for
    indices of one block (`split_batches` cuts a set of indices so). `question(k)` is sample k, readable."""

    def __init__(self, images, size: int, stream: int, split: str, block: int, digits: tuple[int, int],
                 operations: tuple[int, int], repeats: int, answer_ticks: int,
                 device: torch.device | str = "cpu", curriculum: int = 0) -> None:
        self.images = images  # an ImageDataset: uint8 (N, C, H, W) and labels (N,)
        self.n, self.stream, self.split, self.block = size, stream, split, block
        self.digits, self.operations, self.repeats, self.answer_ticks = digits, operations, repeats, answer_ticks
        self.device = torch.device(device)
        self.curriculum = curriculum  # blocks over which the ranges grow (`block_shape`); the test set has none
        self.name, self.source = "qamnist", images.source
        self.class_names = tuple(str(i) for i in range(MODULUS))

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"QuestionStream(split={self.split!r}, n={self.n}, digits={self.digits}, operations="
                f"{self.operations}, repeats={self.repeats}, answer_ticks={self.answer_ticks})")

    @property
    def test(self) -> bool:
        return self.split == "test"

    def shape_of_block(self, block: int) -> tuple[int, int]:
        return block_shape(self.stream, block, self.digits, self.operations, cycle=self.test,
                           curriculum=self.curriculum)

    def questions(self, idx: Tensor) -> list[Question]:
        blocks = torch.div(idx, self.block, rounding_mode="floor").unique()
        if len(blocks) != 1:
            raise ValueError(f"a QAMNIST batch takes indices of one block of {self.block} (one schedule), got "
                             f"blocks {blocks.tolist()[:4]}; cut index sets with split_batches")
        d, o = self.shape_of_block(int(blocks[0]))
        return draw_questions(self.stream, idx, len(self.images), self.images.labels, d, o, self.test)

    def question(self, k: int) -> Question:
        return self.questions(torch.tensor([k]))[0]

    def batch(self, idx: Tensor) -> tuple[list[Phase], Tensor]:
        idx = idx.cpu()
        qs = self.questions(idx)
        rows = torch.tensor([q.images for q in qs])  # (b, D)
        images = self.images.images[rows.to(self.images.images.device)].float().div_(255.0)  # (b, D, C, H, W)
        indices = torch.tensor([q.indices for q in qs])  # (b, O + 1)
        operators = torch.tensor([q.operators for q in qs], dtype=torch.long).reshape(len(qs), -1)  # (b, O)
        answers = torch.tensor([q.answer for q in qs])  # (b,)
        phases = schedule(images.to(self.device), indices.to(self.device), operators.to(self.device),
                          self.repeats, self.answer_ticks)
        return phases, answers.to(self.device)

    def split_batches(self, idx: Tensor, batch_size: int) -> list[Tensor]:
        """`idx` (ascending) cut into batches of at most `batch_size` indices, each within one block."""
        out = []
        blocks = torch.div(idx, self.block, rounding_mode="floor")
        for block in blocks.unique_consecutive():
            out += list(idx[blocks == block].split(batch_size))
        return out

    def to(self, device: torch.device | str) -> QuestionStream:
        return QuestionStream(self.images.to(device), self.n, self.stream, self.split, self.block, self.digits,
                              self.operations, self.repeats, self.answer_ticks, device, self.curriculum)
