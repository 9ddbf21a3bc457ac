"""Watch it calculate: the thinking GIF of one QAMNIST question, tick by tick, which question to show, and
`ctm eval --plot` (accuracy by operations and digits).

The GIF is the thinking figure every task shares (`ctm.pictures.figures.ThinkingFigure`: the tick, the certainty
curve up to this tick, neuron traces) with the QAMNIST panels on top (`qamnist_panels`):
  * the question: its digits' images in a row and its tokens (index, operator, ..., answer) under them, the input
    of this tick boxed, and the arithmetic over the digits' labels ("2 + 0 - 1: 7 + 3 - 1 = 9");
  * the input of this tick: the digit with the attention over its tokens (digit ticks), else the token as text
    ("index 2", "+", "-", "answer");
  * the answer at every tick so far: the probability of each of 0-9 as shade, the decoded answer (argmax) as a
    dot (green where it equals the true running value known at that tick, red where not) and the true running
    value (the first operand's, then after each operation) as a faint step line, so intermediate results show;
with each tick marked right or wrong on the certainty curve from the first index on. The header's status is the
tick's decoded value against the true one; the answer is judged at the most certain answer tick, as
evaluation reads it.

`question_arrays` turns one sample of a tracked forward into numpy arrays and `qamnist_panels` draws them;
`thinking_gif` is `QAMNISTTask.thinking_gif`, `pick_example` `QAMNISTTask.pick_example` and `save_eval_plot`
`ctm eval --plot`. Matplotlib is imported lazily.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ...pictures.figures import (
    BAR_COLOUR,
    CURSOR_COLOUR,
    MOST_CERTAIN_COLOUR,
    NEUTRAL_TEXT,
    NOTE_TEXT,
    TARGET_COLOUR,
    TRAIN_COLOUR,
    WRONG_COLOUR,
    Panel,
    TaskPanels,
    _colour_bar,
    _new_figure,
    _style_axes,
    _tick_positions,
    save_figure,
)
from ..base import Example, tracked_forward
from .data import MODULUS, Question, TickPlan, tick_plan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput
    from .data import QuestionStream

__all__ = ["AnswerRaster", "InputPanel", "QuestionArrays", "QuestionPanel", "answer_tick", "eval_figure",
           "pick_example", "qamnist_panels", "question_arrays", "save_eval_plot", "thinking_gif"]

FRAME_SIZE_IN = (12.0, 8.6)  # inches; 1200 x 860 pixels at fig_scale 1
NOW_COLOUR = MOST_CERTAIN_COLOUR  # the box round this tick's input
TRUTH_COLOUR = "#2ca02c"
UNJUDGED_COLOUR = "#7f7f7f"  # a decoded value before there is a running value to compare it with
DIGIT_BAND = "#ececec"  # the digit ticks on the answer raster
ANSWER_BAND = "#fff1cc"  # the answer ticks


class QuestionArrays(NamedTuple):
    """One question's thought over T ticks, as numpy arrays."""

    question: Question
    images: np.ndarray  # (D, C, H, W) the digits' images in [0, 1]
    plan: TickPlan  # what each tick reads, and the running value known then
    decoded: np.ndarray  # (T,) the answer decoded at each tick (argmax)
    probabilities: np.ndarray  # (T, 10)
    certainty: np.ndarray  # (T,)
    attention: np.ndarray  # (T, N) over the attended digit's tokens, mean over heads (zeros on token ticks)
    token_grid: tuple[int, int]
    answer_ticks: int

    @property
    def ticks(self) -> int:
        return len(self.decoded)

    def truth(self) -> np.ndarray:
        """(T,) the true running value known at each tick, -1 before the first index is read."""
        running = np.asarray(self.question.running)
        known = np.asarray(self.plan.known)
        return np.where(known >= 0, running[np.maximum(known, 0)], -1)

    def judged(self) -> np.ndarray:
        """(T,) bool: the ticks that have a running value to compare the decoded one with."""
        return np.asarray(self.plan.known) >= 0

    def correct(self) -> np.ndarray:
        """(T,) bool: the decoded value is the true running value (False before there is one)."""
        return (self.decoded == self.truth()) & self.judged()

    @property
    def answer_tick(self) -> int:
        """The most certain answer tick (0-based): where the answer is read."""
        return answer_tick(self.certainty, self.answer_ticks)

    @property
    def right(self) -> bool:
        return int(self.decoded[self.answer_tick]) == self.question.answer


def answer_tick(certainty: np.ndarray, answer_ticks: int) -> int:
    """The most certain of the last `answer_ticks` ticks of `certainty` (T,), 0-based over all T."""
    T = len(certainty)
    return T - answer_ticks + int(np.argmax(certainty[T - answer_ticks:]))


def question_arrays(output: CTMOutput, schedule: Sequence[Any], question: Question, repeats: int,
                    answer_ticks: int, sample: int = 0) -> QuestionArrays:
    """The arrays the panels draw, for sample `sample` of a tracked forward `output` of a QAMNIST `schedule`
    (`QuestionStream.batch`) asking `question`."""
    if output.tracking is None:
        raise ValueError("the output has no tracking: run the model with track=True")
    D = len(question.digits)
    images = np.stack([p.inputs[sample].detach().float().cpu().numpy() for p in schedule[:D]])  # (D, C, H, W)
    plan = tick_plan(D, question.indices, question.operators, repeats, answer_ticks)
    logits = output.predictions[sample].detach().float().cpu().numpy().T  # (T, 10)
    if logits.shape[0] != plan.ticks:
        raise ValueError(f"the forward ran {logits.shape[0]} ticks, the question's schedule has {plan.ticks}")
    e = np.exp(logits - logits.max(1, keepdims=True))
    tr = output.tracking
    grid = tuple(int(v) for v in tr.token_grid)
    attention = tr.attention[:, sample].detach().float().mean(1).cpu().numpy()[:, :grid[0] * grid[1]]  # (T, N)
    return QuestionArrays(question, images, plan, logits.argmax(1), e / e.sum(1, keepdims=True),
                          output.certainties[sample, 1].detach().float().cpu().numpy(), attention, grid,
                          answer_ticks)


def arithmetic(question: Question) -> str:
    """The question over its digits' labels: "2 + 0 - 1: 7 + 3 - 1 = 9"."""
    from .data import OPERATORS

    values = [str(question.digits[question.indices[0]])]
    for op, i in zip(question.operators, question.indices[1:], strict=True):
        values += [OPERATORS[op], str(question.digits[i])]
    return f"{question.text()}: {' '.join(values)} = {question.answer} (mod {MODULUS})"


# ----------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------


def _grey(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W), for a digit shown ink-dark on white."""
    from ..image.pictures import _display_image

    disp, cmap = _display_image(image)
    return disp if cmap is not None else disp.mean(axis=2)


def _token_text(label: str) -> str:
    """An input as the question row writes it: an index by its number, an operator as itself."""
    if label.startswith("index "):
        return label[len("index "):]
    return "= ?" if label == "answer" else label


class QuestionPanel(Panel):
    """The question: the digits in a row (their index under each), the tokens under them, the input of this
    tick boxed; under it, the arithmetic over the digits' labels."""

    width = 1.45

    def __init__(self, a: QuestionArrays) -> None:
        self.a = a
        self.D = len(a.question.digits)
        self.tokens = [k for k, kind in enumerate(a.plan.kinds) if kind != "digit"]  # positions in plan.labels

    def setup(self, fig, area) -> None:
        from matplotlib.patches import Rectangle

        a, D = self.a, self.D
        rows = area.subgridspec(3, 1, height_ratios=[1.0, 0.42, 0.3], hspace=0.08)
        ax = fig.add_subplot(rows[0])
        H, W = a.images.shape[-2:]
        gap = max(1, W // 6)
        strip = np.zeros((H, D * (W + gap) - gap))  # blank (white) between the digits
        for i in range(D):
            strip[:, i * (W + gap):i * (W + gap) + W] = _grey(a.images[i])
        ax.imshow(strip, cmap="binary", vmin=0, vmax=1, interpolation="nearest",
                  extent=(-0.5, strip.shape[1] - 0.5, H - 0.5, -0.5))
        for i in range(D):
            ax.text(i * (W + gap) + (W - 1) / 2, H + 0.5, f"digit {i}" if D <= 6 else str(i), ha="center",
                    va="top", fontsize=9 if D <= 6 else 7, color=NOTE_TEXT)
        ax.set_xlim(-0.5 - gap / 2, strip.shape[1] - 0.5 + gap / 2)
        ax.set_ylim(H - 0.5 + H * 0.25, -0.5 - 1)
        ax.set_axis_off()
        ax.set_title("The question", fontsize=12)
        self.digit_box = ax.add_patch(Rectangle((0, 0), W + 1, H + 1, fill=False, edgecolor=NOW_COLOUR,
                                                linewidth=3, visible=False, zorder=4))
        self.step, self.W, self.H = W + gap, W, H

        tx = fig.add_subplot(rows[1])
        n = len(self.tokens)
        tx.set_xlim(0, n)
        tx.set_ylim(0, 1)
        tx.set_axis_off()
        size = 13 if n <= 12 else max(6, int(150 / n))
        for j, k in enumerate(self.tokens):
            label = a.plan.labels[k]
            tx.text(j + 0.5, 0.5, _token_text(label), ha="center", va="center", fontsize=size,
                    color=NEUTRAL_TEXT, fontweight="bold" if a.plan.kinds[k] == "operator" else "normal")
        self.token_box = tx.add_patch(Rectangle((0.05, 0.08), 0.9, 0.84, fill=False, edgecolor=NOW_COLOUR,
                                                linewidth=3, visible=False, zorder=4))
        nx = fig.add_subplot(rows[2])
        nx.set_axis_off()
        nx.text(0.5, 0.9, arithmetic(a.question), ha="center", va="top", fontsize=9.5, color=NOTE_TEXT,
                transform=nx.transAxes)
        self.reading = nx.text(0.5, 0.25, "", ha="center", va="top", fontsize=9.5, color=NEUTRAL_TEXT,
                               transform=nx.transAxes)

    def update(self, t: int):
        a = self.a
        k = a.plan.reads[t]
        digit = a.plan.digit_of(t)
        self.digit_box.set_visible(digit >= 0)
        self.token_box.set_visible(digit < 0)
        if digit >= 0:
            self.digit_box.set_xy((digit * self.step - 1, -1))
            self.reading.set_text(f"tick {t + 1} reads digit {digit} (a {a.question.digits[digit]})")
        else:
            self.token_box.set_x(self.tokens.index(k) + 0.05)
            label = a.plan.labels[k]
            if label.startswith("index "):
                i = int(label[len("index "):])
                what = f"index {i}: digit {i} is a {a.question.digits[i]}"
            elif label == "answer":
                what = "nothing: it answers"
            else:
                what = f"the operator {label}"
            self.reading.set_text(f"tick {t + 1} reads {what}")
        return [self.digit_box, self.token_box, self.reading]


class InputPanel(Panel):
    """The input of this tick: the digit with the attention over its tokens stretched over it (digit ticks), else
    the token as text ("index 2", "+", "-", "answer")."""

    width = 0.9

    def __init__(self, a: QuestionArrays) -> None:
        self.a = a
        gh, gw = a.token_grid
        T = a.ticks
        self.maps = a.attention.reshape(T, gh, gw) if gh * gw == a.attention.shape[1] else None

    def setup(self, fig, area) -> None:
        a = self.a
        ax = fig.add_subplot(area.subgridspec(2, 1, height_ratios=[1.0, 0.22], hspace=0.0)[0])
        H, W = a.images.shape[-2:]
        extent = (-0.5, W - 0.5, H - 0.5, -0.5)
        self.digit = ax.imshow(_grey(a.images[0]), cmap="binary", vmin=0, vmax=1, extent=extent,
                               interpolation="nearest")
        first = self.maps[0] if self.maps is not None else np.zeros((1, 1))
        self.map = ax.imshow(first, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest", vmin=0,
                             vmax=1)
        self.token = ax.text(0.5, 0.5, "", transform=ax.transAxes, ha="center", va="center", fontsize=30,
                             color=NEUTRAL_TEXT, fontweight="bold")
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#d9d9d9")
        ax.set_title("Input at this tick", fontsize=12)
        ax.set_anchor("N")
        self.lo_text, self.hi_text = _colour_bar(ax, [0.12, -0.085, 0.76, 0.045], 0.02, 8.5)
        self.note = ax.text(0.5, -0.12, "", transform=ax.transAxes, ha="center", va="top", fontsize=8,
                            color=NOTE_TEXT)

    def update(self, t: int):
        a = self.a
        digit = a.plan.digit_of(t)
        on = digit >= 0
        self.digit.set_visible(on)
        self.map.set_visible(on and self.maps is not None)
        self.token.set_visible(not on)
        if on:
            self.digit.set_data(_grey(a.images[digit]))
            if self.maps is not None:
                att = self.maps[t]
                lo, hi = float(att.min()), float(att.max())
                self.map.set_data(att)
                self.map.set_clim(lo, hi if hi > lo else lo + 1e-12)
                self.lo_text.set_text(f"{lo:.3f}")
                self.hi_text.set_text(f"{hi:.3f}")
            self.note.set_text(f"digit {digit}: attention over its {a.attention.shape[1]} tokens (this tick's "
                               f"colour range)")
        else:
            label = a.plan.labels[a.plan.reads[t]]
            self.token.set_text(label)
            self.lo_text.set_text("")
            self.hi_text.set_text("")
            self.note.set_text("no image at this tick: the question's token" if label != "answer"
                               else "nothing to read: the answer ticks")
        return [self.digit, self.map, self.token, self.lo_text, self.hi_text, self.note]


class AnswerRaster(Panel):
    """The answer at every tick so far: each value's probability as shade (0 at the bottom, 9 at the top), the
    decoded value a dot (green: the true running value of that tick, red: not, grey: no value yet), the true
    running value a faint step line; digit ticks and answer ticks banded. Its status is this tick's value."""

    width = 1.35

    def __init__(self, a: QuestionArrays) -> None:
        self.a = a
        self.truth = a.truth()
        self.judged = a.judged()
        self.correct = a.correct()
        T = a.ticks
        self.x = np.arange(1, T + 1)

    def setup(self, fig, area) -> None:
        import matplotlib as mpl

        a, T = self.a, self.a.ticks
        ax = fig.add_subplot(area.subgridspec(2, 1, height_ratios=[1.0, 0.22], hspace=0.0)[0])
        D = len(a.question.digits)
        digit_end = max((t for t in range(T) if a.plan.digit_of(t) >= 0), default=-1) + 1
        ax.axvspan(0.5, digit_end + 0.5, color=DIGIT_BAND, zorder=0, linewidth=0)
        ax.axvspan(T - a.answer_ticks + 0.5, T + 0.5, color=ANSWER_BAND, zorder=0, linewidth=0)
        from matplotlib.colors import ListedColormap

        colours = mpl.colormaps["Blues"](np.linspace(0, 1, 256))
        colours[:, 3] = np.linspace(0, 1, 256) ** 0.5  # an unlikely value nearly clear: the bands show through
        cmap = ListedColormap(colours).with_extremes(bad=(1, 1, 1, 0))
        self.image = ax.imshow(np.full((MODULUS, T), np.nan), cmap=cmap, vmin=0, vmax=1, origin="lower",
                               aspect="auto", interpolation="nearest", extent=(0.5, T + 0.5, -0.5, MODULUS - 0.5),
                               zorder=1)
        known = self.judged
        steps = np.where(known, self.truth, np.nan).astype(np.float64)
        (self.truth_line,) = ax.step(self.x, steps, where="mid", color=TRUTH_COLOUR, alpha=0.45, linewidth=4,
                                     zorder=2, label="true running value")
        size = max(3.0, min(7.0, 160 / T))
        (self.right_dots,) = ax.plot([], [], "o", color=TARGET_COLOUR, markersize=size, zorder=3,
                                     label="decoded: right")
        (self.wrong_dots,) = ax.plot([], [], "X", color=WRONG_COLOUR, markersize=size * 1.1, zorder=3,
                                     label="wrong")
        (self.free_dots,) = ax.plot([], [], "o", color=UNJUDGED_COLOUR, markersize=size * 0.8, zorder=3,
                                    label="no value yet")
        self.cursor = ax.axvline(1, color=CURSOR_COLOUR, linewidth=1.2, alpha=0.7, zorder=4)
        ax.axvline(a.answer_tick + 1, color=MOST_CERTAIN_COLOUR, linestyle=":", linewidth=2, zorder=1,
                   label="answer read")
        ax.set_xlim(0.5, T + 0.5)
        ax.set_ylim(-0.5, MODULUS - 0.5)
        ax.set_yticks(range(MODULUS))
        ax.set_xticks(_tick_positions(T))
        ax.tick_params(labelsize=8, length=2)
        ax.set_xlabel(f"tick (grey: the {D} digit{'s' if D > 1 else ''}, yellow: answering)", fontsize=8.5,
                      labelpad=1)
        ax.set_ylabel("value", fontsize=9, labelpad=1)
        ax.set_title("Answer at each tick (shade: probability)", fontsize=12)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7.5, frameon=False,
                  handletextpad=0.2, columnspacing=0.9)

    def update(self, t: int):
        shown = np.full((MODULUS, self.a.ticks), np.nan)
        shown[:, :t + 1] = self.a.probabilities[:t + 1].T
        self.image.set_data(shown)
        upto = self.x <= t + 1
        d = self.a.decoded
        wrong = upto & self.judged & ~self.correct
        for line, mask in ((self.right_dots, upto & self.correct), (self.wrong_dots, wrong),
                           (self.free_dots, upto & ~self.judged)):
            line.set_data(self.x[mask], d[mask])
        self.cursor.set_xdata([t + 1, t + 1])
        # the truth line is returned to stay over the shade, which each frame redraws
        return [self.image, self.truth_line, self.right_dots, self.wrong_dots, self.free_dots, self.cursor]

    def status(self, t: int) -> tuple[str, str]:
        a, value = self.a, int(self.a.decoded[t])
        if not self.judged[t]:
            return f"decodes {value}; no running value yet", NEUTRAL_TEXT
        truth, ok = int(self.truth[t]), bool(self.correct[t])
        what = "answer" if a.plan.kinds[a.plan.reads[t]] == "answer" else "running value"
        mark = "\u2713" if ok else "\u2717"
        return f"{what} {value}, true {truth}  {mark}", TARGET_COLOUR if ok else WRONG_COLOUR


def qamnist_panels(a: QuestionArrays) -> TaskPanels:
    """The QAMNIST panels of one question (`QuestionArrays`): the question, the input of the tick with its
    attention, the answer at each tick against the true running value; right and wrong marked on the certainty
    curve from the first index on."""
    q, at = a.question, a.answer_tick
    verdict = "right" if a.right else f"wrong (decodes {int(a.decoded[at])})"
    summary = (f"{q.text()} over digits {', '.join(map(str, q.digits))} = {q.answer}: {verdict} at tick {at + 1} "
               f"(the most certain answer tick)")
    return TaskPanels([QuestionPanel(a), InputPanel(a), AnswerRaster(a)], ticks=a.ticks, correct=a.correct(),
                      judged=a.judged(), starred=at, starred_label=f"answer read (tick {at + 1})", summary=summary,
                      size=FRAME_SIZE_IN, row_height=3.7, gap=0.3, n_neurons=8)


def thinking_gif(model: ContinuousThoughtMachine, data: QuestionStream, example: Example,
                 path: str | os.PathLike[str], fps: float = 5) -> str:
    """`QAMNISTTask.thinking_gif`: question `example.index` of `data` run with tracking and drawn, one frame a
    tick (the shared figure with `qamnist_panels`), written to `path`; returns what it shows, in words."""
    import torch

    from ...pictures import figures

    figures._require_matplotlib()
    question = data.question(example.index)
    schedule, _ = data.batch(torch.tensor([example.index]))
    output = tracked_forward(model, schedule)
    a = question_arrays(output, schedule, question, data.repeats, data.answer_ticks)
    panels = qamnist_panels(a)
    tracking = output.tracking

    def numpy(t):
        return t.detach().float().cpu().numpy()

    figure = figures.ThinkingFigure(panels, a.certainty, numpy(tracking.post_activations[:, 0]),
                                    numpy(tracking.pre_activations[:, 0]),
                                    caption=f"Why this question: {example.reason}" if example.reason else None)
    figures.save_gif(figure.frames(), path, fps=fps)
    return (f"{data.split} question {example.index}, {panels.summary}"
            + (f"; why this question: {example.reason}" if example.reason else ""))


# ----------------------------------------------------------------------------------------------------------
# Which question
# ----------------------------------------------------------------------------------------------------------


def pick_example(model: ContinuousThoughtMachine, data: QuestionStream, index: int | None = None,
                 pool: int = 256, max_blocks: int = 32) -> Example:
    """`QAMNISTTask.pick_example`: question `index` (checked), else among about `pool` questions, the first of
    each block (the test set: one block of every shape of digits and operations, as it takes them in turn; the
    training stream: up to `max_blocks` blocks of random shapes), one answered right at its most certain answer
    tick with the most digits and operations together (then the most operations, then the most running values
    decoded right); none right: the one with the most running values decoded right."""
    import torch

    if index is not None:
        if not 0 <= index < len(data):
            raise ValueError(f"index {index} out of range for {len(data)} {data.split} questions")
        return Example(int(index), "")
    if len(data) == 0:
        raise ValueError(f"no {data.split} questions to pick from")
    (d0, d1), (o0, o1) = data.digits, data.operations
    shapes = (d1 - d0 + 1) * (o1 - o0 + 1)
    blocks = min(max(shapes, math.ceil(pool / data.block)) if data.test else max_blocks,
                 math.ceil(len(data) / data.block))
    per_block = min(data.block, max(1, math.ceil(pool / blocks)))  # a batch holds one block
    rows = []  # (index, right, operations, running right, digits)
    for b in range(blocks):
        idx = torch.arange(b * data.block, min(b * data.block + per_block, len(data)))
        schedule, answers = data.batch(idx)
        output = tracked_forward(model, schedule, track=False)
        decoded = output.predictions.float().argmax(1).cpu().numpy()  # (b, T)
        certainty = output.certainties[:, 1].float().cpu().numpy()
        for k, q in zip(idx.tolist(), data.questions(idx), strict=True):
            row = k - int(idx[0])
            plan = tick_plan(len(q.digits), q.indices, q.operators, data.repeats, data.answer_ticks)
            at = answer_tick(certainty[row], data.answer_ticks)
            running = sum(int(decoded[row, t]) == v for t, v in zip(plan.value_ticks, q.running, strict=True))
            rows.append((k, int(decoded[row, at]) == q.answer, len(q.operators), running, len(q.digits)))
    n = len(rows)
    seen = len({(r[2], r[4]) for r in rows})
    where = f"of {n} {data.split} questions ({seen} shape{'s' if seen > 1 else ''} of digits and operations)"
    right = [r for r in rows if r[1]]
    if right:  # the longest question answered right: the most digits and operations, then operations
        k, _, o, running, d = max(right, key=lambda r: (r[2] + r[4], r[2], r[3], -r[0]))
        return Example(k, f"{where}, {len(right)} are answered right; this one is the longest ({d} digit"
                          f"{'s' if d > 1 else ''}, {o} operation{'s' if o > 1 else ''}; {running} of its {o + 1} "
                          f"running values decoded right)")
    k, _, o, running, d = max(rows, key=lambda r: (r[3], r[2], -r[0]))
    return Example(k, f"{where}, none is answered right; this one decodes the most running values right ({running} "
                      f"of {o + 1})")


# ----------------------------------------------------------------------------------------------------------
# ctm eval --plot
# ----------------------------------------------------------------------------------------------------------


def _get(result: Any, key: str) -> Any:
    if isinstance(result, dict):
        return result[key]
    return getattr(result, key)


def _counts(shapes: Sequence[dict], key: str) -> dict[int, tuple[float, int]]:
    """(hits, n) per value of `key` ("digits" or "operations") over the by-shape rows."""
    out: dict[int, tuple[float, int]] = {}
    for s in shapes:
        h, c = out.get(int(s[key]), (0.0, 0))
        out[int(s[key])] = (h + s["accuracy"] * s["n"], c + int(s["n"]))
    return dict(sorted(out.items()))


def eval_figure(result: Any) -> Figure:
    """The QAMNIST evaluation (`QAMNISTResult` or its `to_dict()`): accuracy by number of operations and by number
    of digits (bars, with the questions of each), and by both (a table of shades), each answer read at its most
    certain answer tick; the overall accuracy and chance (1 in 10) as levels."""
    shapes = list(_get(result, "by_shape"))
    if not shapes:
        raise ValueError("the evaluation has no accuracy by shape (by_shape is empty): nothing to plot")
    for s in shapes:
        if not all(k in s for k in ("digits", "operations", "accuracy", "n")):
            raise ValueError(f"a by_shape row lacks digits, operations, accuracy or n: {s!r}")
    acc, n = float(_get(result, "accuracy")) * 100, int(_get(result, "n"))
    fig = _new_figure((13.0, 4.6), 100)
    ax_o, ax_d, ax_s = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.1])
    for ax, key, noun in ((ax_o, "operations", "operations"), (ax_d, "digits", "digits")):
        counts = _counts(shapes, key)
        xs = np.array(list(counts))
        ys = np.array([h / c * 100 for h, c in counts.values()])
        bars = ax.bar(xs, ys, width=0.7, color=TRAIN_COLOUR if key == "operations" else BAR_COLOUR,
                      edgecolor="#1f3b5a", linewidth=0.5)
        for bar, (_, c), y in zip(bars, counts.values(), ys, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, min(y + 2, 101), f"{y:.1f}%\nn={c:,}", ha="center",
                    va="bottom", fontsize=7.5, color=NEUTRAL_TEXT)
        ax.axhline(acc, color=TARGET_COLOUR, linestyle="--", linewidth=1.2, label=f"all: {acc:.1f}%")
        ax.axhline(100 / MODULUS, color="#999999", linestyle=":", linewidth=1.1, label="chance: 10%")
        ax.set_xticks(xs)
        ax.set_ylim(0, 128)
        ax.set_yticks([0, 20, 40, 60, 80, 100])
        ax.set_xlabel(f"{noun} per question", fontsize=10)
        ax.set_ylabel("answers right (%)", fontsize=10)
        ax.set_title(f"Accuracy by number of {noun}", fontsize=12)
        ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=True, framealpha=0.85)
        _style_axes(ax)
    ds = sorted({int(s["digits"]) for s in shapes})
    os_ = sorted({int(s["operations"]) for s in shapes})
    grid = np.full((len(ds), len(os_)), np.nan)
    for s in shapes:
        grid[ds.index(int(s["digits"])), os_.index(int(s["operations"]))] = s["accuracy"] * 100
    image = ax_s.imshow(grid, cmap="viridis", vmin=0, vmax=100, origin="lower", aspect="auto")
    for i in range(len(ds)):
        for j in range(len(os_)):
            if np.isfinite(grid[i, j]):
                ax_s.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                          color="white" if grid[i, j] < 60 else "black")
    ax_s.set_xticks(range(len(os_)), [str(o) for o in os_])
    ax_s.set_yticks(range(len(ds)), [str(d) for d in ds])
    ax_s.set_xlabel("operations", fontsize=10)
    ax_s.set_ylabel("digits", fontsize=10)
    ax_s.set_title("Accuracy (%) by digits and operations", fontsize=12)
    ax_s.tick_params(labelsize=9)
    fig.colorbar(image, ax=ax_s, fraction=0.05, pad=0.03).ax.tick_params(labelsize=8)
    fig.suptitle(f"QAMNIST: {n:,} questions, each answer read at its most certain answer tick", fontsize=11,
                 color=NOTE_TEXT)
    fig.tight_layout()
    return fig


def save_eval_plot(result: Any, path: str | os.PathLike[str]) -> Path:
    """Write `eval_figure(result)` as a PNG, atomically; returns the path (`ctm eval --plot` on a QAMNIST run)."""
    return save_figure(eval_figure(result), path)
