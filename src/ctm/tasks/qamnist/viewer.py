"""The QAMNIST task's part of the tick viewer (kind "qamnist"): the question's digits and tokens along the ticks
with the input of the tick boxed, the digit attended with the attention over it, and the answer decoded at each
tick against the true running value. The renderer is viewer.js here.

Questions differ in length (digits and operations), so each sample says its own tick count, "ticks" (the page's
"ticks" is the longest). Per sample, besides what every task has (`ctm.pictures.tracking`): "text" (the question,
"2 + 0 - 1"), "arithmetic" (over the digits' labels), "digits" (the labels), "answer", "images" (base64 uint8
(D, H, W), grey), "labels" and "kinds" (each input in order, as `ctm.tasks.qamnist.data.tick_plan` names them:
"digit 0", ..., "index 2", "+", ..., "answer"), "reads" ((T,) the input each tick reads), "truth" ((T,) the true
running value known at each tick, -1 before the first index), "decoded" ((T,) the answer at each tick, argmax),
"probs" (base64 uint8 (T, 10): each value's probability times 255), "attention" (base64 uint8 (T, N), each digit
tick scaled so its largest weight is 255, zeros on the others), "attention_max" ((T,) the most-attended token,
-1 off digit ticks), "answer_tick" (the most certain answer tick, where the answer is read) and "right" (the
answer read there is right: what `ctm eval` counts). At the top: "token_grid" ([H', W']) and "image_size"
([H, W]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...pictures.tracking import DEFAULT_NEURONS, DEFAULT_THRESHOLD, FORMAT, b64, scaled_u8
from ..base import tracked_forward
from .pictures import QuestionArrays, arithmetic, question_arrays

if TYPE_CHECKING:
    from ...nn.model import ContinuousThoughtMachine
    from .data import QuestionStream

SCRIPT = Path(__file__).resolve().with_name("viewer.js")


def spread_indices(data: QuestionStream, n: int) -> list[int]:
    """`n` questions of `data` spread over its blocks, each block one shape of digits and operations: the first
    question of every block, then the second, ...; ascending. The test set takes every shape in turn: its first
    blocks, one of each shape, are those read."""
    (d0, d1), (o0, o1) = data.digits, data.operations
    blocks = math.ceil(len(data) / data.block)
    if data.test:
        blocks = min(blocks, (d1 - d0 + 1) * (o1 - o0 + 1))
    out: list[int] = []
    for j in range(data.block):
        for b in range(blocks):
            k = b * data.block + j
            if len(out) < n and k < len(data):
                out.append(k)
        if len(out) >= n:
            break
    return sorted(out)


def _grey_u8(images: np.ndarray) -> np.ndarray:
    """(D, C, H, W) in [0, 1] -> (D, H, W) uint8, the channels averaged."""
    return np.clip(np.round(images.mean(axis=1) * 255), 0, 255).astype(np.uint8)


def qamnist_viewer_data(model: ContinuousThoughtMachine, data: QuestionStream, indices: Sequence[int], *,
                        title: str = "CTM", source: str = "", n_neurons: int = DEFAULT_NEURONS,
                        threshold: float = DEFAULT_THRESHOLD, batch_size: int = 50) -> dict[str, Any]:
    """What the viewer page shows for questions `indices` of `data`: each run with tracking (the questions of one
    block together, in batches of `batch_size`); the `n_neurons` neurons whose post-activations vary most over
    ticks (the mean over questions) are traced."""
    indices = [int(k) for k in indices]
    if not indices:
        raise ValueError("need at least one question to show")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a certainty in [0, 1], got {threshold}")
    for k in indices:
        if not 0 <= k < len(data):
            raise ValueError(f"question {k} out of range for {len(data)} {data.split} questions")
    groups: dict[int, list[int]] = {}
    for k in indices:
        groups.setdefault(k // data.block, []).append(k)
    found: dict[int, tuple[QuestionArrays, np.ndarray]] = {}
    for group in groups.values():
        for part in torch.tensor(group).split(batch_size):
            schedule, _ = data.batch(part)
            output = tracked_forward(model, schedule)
            post = output.tracking.post_activations.float().permute(1, 0, 2).cpu().numpy()  # (b, T, D)
            for row, (k, q) in enumerate(zip(part.tolist(), data.questions(part), strict=True)):
                a = question_arrays(output, schedule, q, data.repeats, data.answer_ticks, sample=row)
                found[k] = (a, post[row].astype(np.float64))
    spread = np.mean([post.var(axis=0) for _, post in found.values()], axis=0)  # (D,) over questions
    neurons = np.sort(np.argsort(-spread, kind="stable")[:max(1, min(n_neurons, spread.size))])
    samples = []
    grid = (1, 1)
    for k in indices:
        a, post = found[k]
        grid = a.token_grid
        digit_ticks = np.array([a.plan.digit_of(t) >= 0 for t in range(a.ticks)])
        attention = np.where(digit_ticks[:, None], a.attention, 0.0)
        probs = np.clip(np.round(a.probabilities * 255), 0, 255).astype(np.uint8)
        samples.append({
            "index": k,
            "ticks": a.ticks,
            "certainty": np.round(a.certainty.astype(np.float64), 4).tolist(),
            "traces": np.round(post[:, neurons], 3).tolist(),  # (T, K)
            "most_certain_tick": int(np.argmax(a.certainty)),
            "answer_tick": a.answer_tick,
            "right": a.right,
            "answer": a.question.answer,
            "text": a.question.text(),
            "arithmetic": arithmetic(a.question),
            "digits": list(a.question.digits),
            "images": b64(_grey_u8(a.images)),
            "labels": a.plan.labels,
            "kinds": a.plan.kinds,
            "reads": a.plan.reads,
            "truth": a.truth().tolist(),
            "decoded": a.decoded.tolist(),
            "probs": b64(probs),
            "attention": b64(scaled_u8(attention)),
            "attention_max": np.where(digit_ticks, attention.argmax(axis=1), -1).tolist(),
        })
    first = found[indices[0]][0]
    return {
        "format": FORMAT,
        "kind": "qamnist",
        "title": title,
        "source": source,
        "ticks": max(s["ticks"] for s in samples),
        "neurons": neurons.tolist(),
        "threshold": float(threshold),
        "samples": samples,
        "token_grid": [int(v) for v in grid],
        "image_size": [int(v) for v in first.images.shape[-2:]],
    }


def dataset_viewer_data(model: ContinuousThoughtMachine, data: QuestionStream, n: int, *,
                        threshold: float) -> dict[str, Any]:
    """The page's data for `n` questions of `data` spread over its shapes (`QAMNISTTask.viewer_data`)."""
    indices = spread_indices(data, n)
    (d0, d1), (o0, o1) = data.digits, data.operations
    return qamnist_viewer_data(model, data, indices, threshold=threshold,
                               source=f"QAMNIST {data.split} questions ({d0} to {d1} digits, {o0} to {o1} "
                                      f"operations)")


def script() -> str:
    """The page's renderer of kind "qamnist" (viewer.js)."""
    return SCRIPT.read_text(encoding="utf-8")
