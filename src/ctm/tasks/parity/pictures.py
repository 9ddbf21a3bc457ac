"""Watch it count: pictures of a model solving cumulative parity, tick by tick.

The parity task's input is a sequence of L values +-1; the target at position i is the parity of the -1s
among positions 0..i (1: odd). A sequence of L positions is drawn as a grid of `parity_grid(L)` cells, read
left to right, top to bottom (4 x 4 for L = 16; the last row may be partly empty).

The GIF is the thinking figure every task shares (`ctm.pictures.figures.ThinkingFigure`: the tick, the certainty
curve up to this tick, neuron traces) with the parity task's panels on top (`parity_panels`):
  * the input sequence (+1 and -1 coloured) and the true cumulative parity,
  * the attention over the positions at this tick (mean over heads; colour bar: this tick's range),
  * the predicted parity per position at this tick (colour: probability of odd; wrong ones marked), whose
    status in the header is the number of bits right,
and the per-bit accuracy drawn with the certainty (the mean over the positions).

Tensors in the model, numpy in the visualiser: `parity_frames`, `parity_tick_figure` and `accuracy_figure`
take numpy arrays, so they do not depend on how a task wires its model; `parity_arrays` turns one sample
of a tracked forward (`CTMOutput` with `.tracking`) into those arrays, and `thinking_panels` into the panels
`ParityTask.thinking_panels` gives `Task.thinking_gif`. `pick_example` is `ParityTask.pick_example`.
Matplotlib and Pillow are imported lazily, and the frames are written by `ctm.pictures.figures.save_gif`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ...pictures.figures import (
    CERTAINTY_COLOUR,
    NEUTRAL_TEXT,
    NOTE_TEXT,
    TARGET_COLOUR,
    TRAIN_COLOUR,
    WRONG_COLOUR,
    Curve,
    Panel,
    TaskPanels,
    ThinkingFigure,
    _colour_bar,
    _new_figure,
    _style_axes,
    _tick_positions,
    save_figure,
    save_gif,
)
from ..base import Example, tracked_forward

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...nn.model import ContinuousThoughtMachine, CTMOutput

__all__ = ["AttentionGrid", "InputGrid", "ParityArrays", "ParityGrid", "PredictedParity", "accuracy_figure",
           "parity_arrays", "parity_figure", "parity_frames", "parity_gif", "parity_grid", "parity_panels",
           "parity_tick_figure", "pick_example", "save_accuracy_plot", "thinking_panels"]

PLUS_COLOUR = "#d9e7f5"  # +1 cells
MINUS_COLOUR = "#e8833a"  # -1 cells (the ones that flip the parity)
EVEN_COLOUR, ODD_COLOUR = "#f4f4f4", "#3b3b3b"  # parity 0 and 1
FRAME_SIZE_IN = (10.0, 8.0)  # inches; 1000 x 800 pixels at fig_scale 1


def parity_grid(length: int) -> tuple[int, int]:
    """(rows, columns) of the grid a sequence of `length` positions is drawn on: as square as it gets,
    columns = ceil(sqrt(L)); 16 -> (4, 4), 5 -> (2, 3), 7 -> (3, 3), 64 -> (8, 8)."""
    if length < 1:
        raise ValueError(f"a sequence needs at least one position, got length {length}")
    cols = math.ceil(math.sqrt(length))
    return math.ceil(length / cols), cols


def _on_grid(values: np.ndarray, length: int) -> np.ndarray:
    """(..., L) -> (..., rows, cols), cells past the end NaN (drawn empty)."""
    rows, cols = parity_grid(length)
    padded = np.full(values.shape[:-1] + (rows * cols,), np.nan)
    padded[..., :length] = values
    return padded.reshape(values.shape[:-1] + (rows, cols))


class ParityArrays(NamedTuple):
    """One sample's thought on a parity sequence, as numpy arrays (T ticks, L positions, N neurons)."""

    sequence: np.ndarray  # (L,) +-1
    targets: np.ndarray  # (L,) 0/1 cumulative parity
    attention: np.ndarray  # (T, heads, L)
    probabilities: np.ndarray  # (T, L, 2)
    certainty: np.ndarray  # (T,) the model's certainty (1 - mean normalised entropy over the positions)
    traces: np.ndarray  # (T, N) post-activations


def parity_arrays(output: CTMOutput, sequence: Any, targets: Any, sample: int = 0) -> ParityArrays:
    """The arrays `parity_frames` draws, for sample `sample` of a forward run with `track=True` on
    sequences (B, L): predictions (B, 2L, T) are positions x classes, as `CTMConfig.out_positions` lays them."""
    if output.tracking is None:
        raise ValueError("the output has no tracking: run the model with track=True")
    tr = output.tracking

    def np1(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    logits = np1(output.predictions[sample])  # (2L, T)
    length = logits.shape[0] // 2
    logits = logits.reshape(length, 2, -1).transpose(2, 0, 1)  # (T, L, 2)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return ParityArrays(np.asarray(sequence, dtype=np.float64).reshape(-1),
                        np.asarray(targets, dtype=np.int64).reshape(-1), np1(tr.attention[:, sample]),
                        e / e.sum(-1, keepdims=True), np1(output.certainties[sample, 1]),
                        np1(tr.post_activations[:, sample]))


def _checked(sequence, targets, attention, probabilities, certainty, traces):
    """The arrays as float/int numpy with the shapes `parity_frames` documents, or a ValueError naming one."""
    sequence = np.asarray(sequence, dtype=np.float64).reshape(-1)
    L = sequence.size
    if L < 1 or not np.isin(sequence, (-1, 1)).all():
        raise ValueError(f"sequence must be a non-empty (L,) array of +-1, got {sequence[:8]}...")
    targets = np.asarray(targets).reshape(-1)
    if targets.shape != (L,) or not np.isin(targets, (0, 1)).all():
        raise ValueError(f"targets must be ({L},) of 0/1 (the cumulative parity), got shape {targets.shape}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 3 or probabilities.shape[1:] != (L, 2) or probabilities.shape[0] < 1:
        raise ValueError(f"probabilities must have shape (T, {L}, 2), got {probabilities.shape}")
    T = probabilities.shape[0]
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim == 2:  # (T, L): one head
        attention = attention[:, None]
    if attention.ndim != 3 or attention.shape[0] != T or attention.shape[2] != L:
        raise ValueError(f"attention must have shape ({T}, heads, {L}) or ({T}, {L}), got {attention.shape}")
    certainty = np.asarray(certainty, dtype=np.float64)
    if certainty.ndim == 2 and certainty.shape == (T, L):  # per position: the curve is their mean
        certainty = certainty.mean(1)
    if certainty.shape != (T,):
        raise ValueError(f"certainty must have shape ({T},) or ({T}, {L}), got {certainty.shape}")
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 2 or traces.shape[0] != T or traces.shape[1] < 1:
        raise ValueError(f"traces must have shape ({T}, neurons), got {traces.shape}")
    return sequence, targets.astype(np.int64), attention.mean(1), probabilities, certainty, traces


# ----------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------


class ParityGrid(Panel):
    """A grid of the L positions (`parity_grid`) with a title; subclasses fill its cells."""

    def __init__(self, length: int, title: str) -> None:
        self.L, self.title = length, title

    def _axes(self, fig, area):
        ax = fig.add_subplot(area)
        rows, cols = parity_grid(self.L)
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(self.title, fontsize=11.5)
        ax.set_anchor("N")
        return ax

    def _cell_texts(self, ax, values, colours=None):
        """A label in each cell (small sequences only: past 64 cells they would be unreadable)."""
        if self.L > 64:
            return []
        cols = parity_grid(self.L)[1]
        size = 11 if cols <= 4 else 8 if cols <= 6 else 6.5
        return [ax.text(i % cols, i // cols, values[i], ha="center", va="center", fontsize=size,
                        color=NEUTRAL_TEXT if colours is None else colours[i]) for i in range(self.L)]


class InputGrid(ParityGrid):
    """The input sequence, +1 and -1 cells coloured."""

    def __init__(self, sequence: np.ndarray) -> None:
        super().__init__(len(sequence), f"Input ({len(sequence)} values)")
        self.sequence = sequence

    def setup(self, fig, area) -> None:
        from matplotlib.colors import ListedColormap

        ax = self._axes(fig, area)
        ax.imshow(_on_grid((self.sequence > 0).astype(float), self.L), cmap=ListedColormap([MINUS_COLOUR, PLUS_COLOUR]),
                  vmin=0, vmax=1)
        self._cell_texts(ax, ["+1" if v > 0 else "\u22121" for v in self.sequence])


class TrueParityGrid(ParityGrid):
    """The true cumulative parity."""

    def __init__(self, targets: np.ndarray) -> None:
        super().__init__(len(targets), "True parity")
        self.targets = targets

    def setup(self, fig, area) -> None:
        from matplotlib.colors import ListedColormap

        ax = self._axes(fig, area)
        ax.imshow(_on_grid(self.targets.astype(float), self.L), cmap=ListedColormap([EVEN_COLOUR, ODD_COLOUR]),
                  vmin=0, vmax=1)
        self._cell_texts(ax, [str(b) for b in self.targets], [ODD_COLOUR if b == 0 else "white" for b in self.targets])


class AttentionGrid(ParityGrid):
    """The attention over the positions at this tick, (T, L) (the mean over heads), colours spanning this tick's
    range."""

    def __init__(self, attention: np.ndarray) -> None:
        super().__init__(attention.shape[1], "Attention")
        self.attention = attention

    def setup(self, fig, area) -> None:
        ax = self._axes(fig, area)
        self.image = ax.imshow(_on_grid(self.attention[0], self.L), cmap="inferno", vmin=0, vmax=1)
        self.lo_text, self.hi_text = _colour_bar(ax, [0.12, -0.09, 0.76, 0.05], 0.03, 8)
        ax.text(0.5, -0.17, "colour range: this tick's", transform=ax.transAxes, ha="center", va="top", fontsize=8,
                color=NOTE_TEXT)

    def update(self, t: int):
        att = self.attention[t]
        lo, hi = float(att.min()), float(att.max())
        self.image.set_data(_on_grid(att, self.L))
        self.image.set_clim(lo, hi if hi > lo else lo + 1e-12)
        self.lo_text.set_text(f"{lo:.3f}")
        self.hi_text.set_text(f"{hi:.3f}")
        return [self.image, self.lo_text, self.hi_text]


class PredictedParity(ParityGrid):
    """The predicted parity at this tick, (T, L, 2) probabilities: shade p(odd), the predicted bit written in,
    wrong cells boxed red; its status is the number of bits right."""

    def __init__(self, probabilities: np.ndarray, targets: np.ndarray) -> None:
        super().__init__(len(targets), "Predicted parity")
        self.probabilities, self.targets = probabilities, targets
        self.predicted = probabilities.argmax(-1)  # (T, L)

    def setup(self, fig, area) -> None:
        from matplotlib.patches import Rectangle

        ax = self._axes(fig, area)
        cols = parity_grid(self.L)[1]
        self.image = ax.imshow(_on_grid(self.probabilities[0, :, 1], self.L), cmap="Greys", vmin=0, vmax=1)
        self.texts = self._cell_texts(ax, ["0"] * self.L)
        self.wrong_boxes = [ax.add_patch(Rectangle((i % cols - 0.45, i // cols - 0.45), 0.9, 0.9, fill=False,
                                                   edgecolor=WRONG_COLOUR, linewidth=2.2)) for i in range(self.L)]
        ax.text(0.5, -0.05, "shade: p(odd); red box: wrong", transform=ax.transAxes, ha="center", va="top",
                fontsize=8, color=NOTE_TEXT)

    def update(self, t: int):
        p_odd = self.probabilities[t, :, 1]
        self.image.set_data(_on_grid(p_odd, self.L))
        for i, text in enumerate(self.texts):
            text.set_text(str(self.predicted[t, i]))
            text.set_color("white" if p_odd[i] > 0.5 else ODD_COLOUR)
        for box, ok in zip(self.wrong_boxes, self.predicted[t] == self.targets, strict=True):
            box.set_visible(not ok)
        return [self.image, *self.texts, *self.wrong_boxes]

    def status(self, t: int) -> tuple[str, str]:
        L = self.L
        n_right = int((self.predicted[t] == self.targets).sum())
        whole = n_right == L
        colour = TARGET_COLOUR if whole else WRONG_COLOUR if n_right < L / 2 else NEUTRAL_TEXT
        return f"{n_right}/{L} bits right" + ("  \u2713 sequence correct" if whole else ""), colour


def parity_panels(sequence: np.ndarray, targets: np.ndarray, attention: np.ndarray,
                  probabilities: np.ndarray) -> TaskPanels:
    """The parity task's panels of one sequence: sequence (L,) of +-1, targets (L,) of 0/1, attention (T, L) (the
    mean over heads), probabilities (T, L, 2); with the per-bit accuracy drawn with the certainty."""
    predicted = PredictedParity(probabilities, targets)
    right = predicted.predicted == targets  # (T, L)
    T, L = right.shape
    return TaskPanels(
        [InputGrid(sequence), TrueParityGrid(targets), AttentionGrid(attention), predicted], ticks=T,
        curves=[Curve("per-bit accuracy", right.mean(1))],
        certainty_title="Certainty (1 - normalised entropy, mean over positions)",
        summary=f"right at {int(right[0].sum())} of {L} positions at tick 1, {int(right[-1].sum())} at tick {T}",
        size=FRAME_SIZE_IN, row_height=3.0, gap=0.12, n_neurons=8)


def parity_figure(sequence: np.ndarray, targets: np.ndarray, attention: np.ndarray, probabilities: np.ndarray,
                  certainty: np.ndarray, traces: np.ndarray, n_neurons: int = 8, fig_scale: float = 1.0,
                  title: str | None = None, blit: bool = True) -> ThinkingFigure:
    """The thinking figure of one parity sequence (arrays as `parity_frames` documents)."""
    sequence, targets, attention, probabilities, certainty, traces = _checked(
        sequence, targets, attention, probabilities, certainty, traces)
    return ThinkingFigure(parity_panels(sequence, targets, attention, probabilities), certainty, traces,
                          n_neurons=n_neurons, title=title, fig_scale=fig_scale, blit=blit)


def parity_frames(sequence: np.ndarray, targets: np.ndarray, attention: np.ndarray, probabilities: np.ndarray,
                  certainty: np.ndarray, traces: np.ndarray, n_neurons: int = 8, fig_scale: float = 1.0,
                  title: str | None = None) -> list[np.ndarray]:
    """One RGB uint8 frame per tick (1000 x 800 at scale 1) of one parity sequence's thought.

    sequence (L,) of +-1; targets (L,) of 0/1; attention (T, heads, L) or (T, L); probabilities (T, L, 2)
    (class 1: odd); certainty (T,) or per position (T, L) (drawn as the mean); traces (T, N)
    post-activations, of which the first `n_neurons` are drawn. `title`, when given, heads the frame.
    """
    return parity_figure(sequence, targets, attention, probabilities, certainty, traces, n_neurons, fig_scale,
                         title).frames()


def parity_gif(path: str | os.PathLike[str], sequence: np.ndarray, targets: np.ndarray, attention: np.ndarray,
               probabilities: np.ndarray, certainty: np.ndarray, traces: np.ndarray, fps: float = 5,
               **options: Any) -> Path:
    """Write `parity_frames(...)` (`options`: n_neurons, fig_scale, title) as a GIF, one frame per tick."""
    frames = parity_frames(sequence, targets, attention, probabilities, certainty, traces, **options)
    return save_gif(frames, path, fps=fps)


def parity_tick_figure(sequence: np.ndarray, targets: np.ndarray, attention: np.ndarray,
                       probabilities: np.ndarray, certainty: np.ndarray, traces: np.ndarray, tick: int = -1,
                       n_neurons: int = 8, fig_scale: float = 1.0, title: str | None = None) -> Figure:
    """One still: the frame of tick `tick` (0-based; -1 the last) as a Figure, for `ctm.viz.save_figure`."""
    return parity_figure(sequence, targets, attention, probabilities, certainty, traces, n_neurons, fig_scale,
                         title).still(tick)


# ----------------------------------------------------------------------------------------------------------
# The task's GIF: which sequence, its panels
# ----------------------------------------------------------------------------------------------------------


def thinking_panels(output: CTMOutput, inputs: Any, targets: Any) -> TaskPanels:
    """`ParityTask.thinking_panels`: the panels of sample 0 of a tracked forward `output` of sequences `inputs`
    (b, L) with targets (b, L)."""
    a = parity_arrays(output, inputs[0].cpu().numpy(), targets[0].cpu().numpy())
    sequence, targets, attention, probabilities, _, _ = _checked(*a)
    return parity_panels(sequence, targets, attention, probabilities)


def pick_example(model: ContinuousThoughtMachine, data: Any, index: int | None = None, pool: int = 200) -> Example:
    """`ParityTask.pick_example`: sequence `index` (checked), else of the first `pool` test sequences, one the
    model ends right on that it got most wrong at its first tick (it had to count)."""
    import torch

    from ...training.losses import tick_hits

    if index is not None:
        if not 0 <= index < len(data):
            raise ValueError(f"index {index} out of range for parity {data.split} ({len(data)} sequences)")
        return Example(int(index), "")
    n = min(pool, len(data))
    x, y = data.batch(torch.arange(n))
    predictions = tracked_forward(model, x, track=False).predictions
    hits = tick_hits(predictions, y.to(predictions.device)).sum(1).cpu()  # (b, T): right positions per tick
    length = x.shape[1]
    score = hits[:, -1] * (length + 1) - hits[:, 0]  # right at the end first, then wrong at the start
    pick = int(score.argmax())
    return Example(pick, f"of the first {n} {data.split} sequences, the one the model ends right on after the most "
                         f"wrong start")


def accuracy_figure(accuracy: np.ndarray, sequence_accuracy: np.ndarray | None = None) -> Figure:
    """Accuracy per position and per tick: a heat map (position x tick) over the per-tick curve (the mean
    over positions: per-bit accuracy; and whole-sequence accuracy when given), from accuracy (L, T) in [0, 1]
    and sequence_accuracy (T,)."""
    acc = np.asarray(accuracy, dtype=np.float64)
    if acc.ndim != 2 or min(acc.shape) < 1:
        raise ValueError(f"accuracy must have shape (positions, ticks), got {acc.shape}")
    L, T = acc.shape
    fig = _new_figure((9.0, 7.5), 100)
    ax_h, ax_c = fig.subplots(2, 1, height_ratios=[1.5, 1.0])
    image = ax_h.imshow(acc * 100, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest",
                        extent=(0.5, T + 0.5, L - 0.5, -0.5))
    colour_bar = fig.colorbar(image, ax=ax_h, fraction=0.04, pad=0.02)
    colour_bar.set_label("accuracy (%)", fontsize=9)
    ax_h.set_ylabel("position", fontsize=10)
    ax_h.set_xticks(_tick_positions(T))
    ax_h.set_title("Accuracy per position and tick", fontsize=12)
    ticks = np.arange(1, T + 1)
    marker = {"marker": "o", "markersize": 3.5} if T <= 40 else {}
    ax_c.plot(ticks, acc.mean(0) * 100, color=TRAIN_COLOUR, linewidth=2, label="per bit", **marker)
    if sequence_accuracy is not None:
        seq = np.asarray(sequence_accuracy, dtype=np.float64)
        if seq.shape != (T,):
            raise ValueError(f"sequence_accuracy must have shape ({T},), got {seq.shape}")
        ax_c.plot(ticks, seq * 100, color=CERTAINTY_COLOUR, linewidth=2, label="whole sequence", **marker)
        ax_c.legend(fontsize=9, frameon=False)
    ax_c.set_xlim(0.5, T + 0.5)
    ax_c.set_ylim(-2, 102)
    ax_c.set_xticks(_tick_positions(T))
    ax_c.set_xlabel("tick", fontsize=10)
    ax_c.set_ylabel("accuracy (%)", fontsize=10)
    ax_c.set_title("Accuracy per tick", fontsize=12)
    _style_axes(ax_c)
    fig.tight_layout()
    return fig


def save_accuracy_plot(accuracy: np.ndarray, path: str | os.PathLike[str],
                       sequence_accuracy: np.ndarray | None = None) -> Path:
    """Write `accuracy_figure(...)` as a PNG, atomically; returns the path."""
    return save_figure(accuracy_figure(accuracy, sequence_accuracy), path)
