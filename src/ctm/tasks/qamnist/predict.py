"""`ctm predict` on a QAMNIST run: your digit images and a question about them in, the answer out.

    ctm predict RUN --digits three.png seven.png --question "1 + 0 - 1"

The images (`--digits`, any size, read as the image task reads pictures: greyscale at the run's image size, values
in [0, 1]; ink bright on dark, as MNIST) are the question's digits, in order; the question's numbers are indices
into them (0-based, as the official task), joined by + and -, left to right, modulo 10. The model reads the digits
and the question as training did (each input for the task's `repeats` ticks, then its `answer_ticks`), and answers
at its most certain answer tick; the running values decoded are its answer at the last tick of each index read
(the first operand, then after each operation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .data import MAX_DIGITS, OPERATORS, schedule, tick_plan

if TYPE_CHECKING:
    from ...inference import Run

#: a question's pieces: a number, an operator, or anything else (refused)
_PIECES = re.compile(r"[0-9]+|[+\-]|[^\s0-9+\-]+")
EXAMPLE = '--question "0 + 1 - 0"'


def parse_question(text: str, n_digits: int) -> tuple[list[int], list[int]]:
    """A question over `n_digits` digit images, "1 + 0 - 1" (blanks optional) -> (operand indices, operators
    0 plus / 1 minus). A ValueError names the mistake in one line: an index out of range, an operator other
    than + or -, two indices or two operators in a row, a question that starts or ends with an operator, or one
    with no operation."""
    where = f"--question {text.strip()[:60]!r}"
    pieces = _PIECES.findall(text)
    if not pieces:
        raise ValueError(f"{where}: empty; give indices into --digits joined by + and -, e.g. {EXAMPLE}")
    indices: list[int] = []
    operators: list[int] = []
    for k, piece in enumerate(pieces):
        want_index = k % 2 == 0
        if piece.isascii() and piece.isdigit():
            if not want_index:
                raise ValueError(f"{where}: two indices in a row ({pieces[k - 1]} {piece}); put + or - between them")
            i = int(piece)
            if i >= n_digits:
                raise ValueError(f"{where}: index {i} is out of range: --digits gives {n_digits} image"
                                 f"{'s' if n_digits != 1 else ''} (indices 0 to {n_digits - 1})")
            indices.append(i)
        elif piece in OPERATORS:
            if k == 0:
                raise ValueError(f"{where} starts with the operator {piece}; a question starts with an index, e.g. "
                                 f"{EXAMPLE}")
            if want_index:
                raise ValueError(f"{where}: two operators in a row ({pieces[k - 1]} {piece}); put an index between "
                                 f"them")
            operators.append(OPERATORS.index(piece))
        else:
            raise ValueError(f"{where}: {piece[:20]!r} is not an index or an operator: the operators are + and -, "
                             f"the indices whole numbers from 0")
    if len(pieces) % 2 == 0:
        raise ValueError(f"{where} ends with the operator {pieces[-1]}; give the index it applies to")
    if not operators:
        raise ValueError(f"{where}: no operation; a question has at least one, e.g. {EXAMPLE}")
    return indices, operators


def read_digits(paths: Sequence[str], run: Run, in_channels: int) -> tuple[torch.Tensor, list[str]]:
    """The `--digits` images (files, folders and glob patterns of them, as `ctm predict` reads an image run's) as
    (D, C, H, W) in [0, 1] at the run's image size, and their paths in order."""
    from ...data.convert import images_to_batch
    from ..image.predict import expand

    if not paths:
        raise ValueError("--digits names no image")
    files = expand(paths)
    if len(files) > MAX_DIGITS:
        raise ValueError(f"--digits gives {len(files)} images; a question reads at most {MAX_DIGITS}")
    shape = run.data.shape or (in_channels, 28, 28)  # a run that records none: MNIST's size
    return images_to_batch(list(files), in_channels, tuple(shape[1:])), list(files)


def answer(predictions: torch.Tensor, certainties: torch.Tensor, plan_value_ticks: Sequence[int],
           answer_ticks: int) -> dict[str, Any]:
    """A question's answer from its forward's predictions (10, T) and certainties (2, T): the value at the most
    certain answer tick, its probability and certainty, that tick (1-based) and the running values decoded at
    `plan_value_ticks` (0-based)."""
    T = predictions.shape[-1]
    tick = T - answer_ticks + int(certainties[1, T - answer_ticks:].argmax())
    logits = predictions[:, tick].float()
    value = int(logits.argmax())
    running = [int(predictions[:, t].argmax()) for t in plan_value_ticks]
    return {"answer": value, "probability": float(logits.softmax(-1)[value]),
            "certainty": float(certainties[1, tick]), "tick": tick + 1, "ticks": T, "running": running,
            "running_ticks": [t + 1 for t in plan_value_ticks]}


def line(text: str, a: dict[str, Any]) -> str:
    """The line `ctm predict` prints for one question: "1 + 0 - 1 = 7 (certainty 0.912 at tick 9 of 9,
    probability 0.950; running values decoded 3, 1, 7)"."""
    running = ", ".join(map(str, a["running"]))
    return (f"{text} = {a['answer']} (certainty {a['certainty']:.3f} at tick {a['tick']} of {a['ticks']}, "
            f"probability {a['probability']:.3f}; running values decoded {running})")


def predict_questions(run: Run, digits: Sequence[str], questions: Sequence[str], repeats: int,
                      answer_ticks: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Each question about the `digits` images answered by `run`'s model: (its text, the line printed, the
    record `--json` prints)."""
    from ...training.batches import eval_mode
    from ..base import on_model

    model = run.model
    images, files = read_digits(digits, run, run.config.in_channels)
    parsed = [parse_question(q, len(files)) for q in questions]  # every question checked before any forward
    out = []
    for indices, operators in parsed:
        phases = schedule(images.unsqueeze(0), torch.tensor([indices]), torch.tensor([operators]), repeats,
                          answer_ticks)
        with eval_mode(model), torch.inference_mode():
            output = model(on_model(phases, model))
        plan = tick_plan(len(files), indices, operators, repeats, answer_ticks)
        a = answer(output.predictions[0].cpu(), output.certainties[0].cpu(), plan.value_ticks, answer_ticks)
        name = " ".join([str(indices[0])] + [f"{OPERATORS[o]} {i}" for o, i in zip(operators, indices[1:],
                                                                                    strict=True)])
        record = {"question": name, "digits": files, "indices": indices,
                  "operators": [OPERATORS[o] for o in operators], **a}
        out.append((name, line(name, a), record))
    return out
