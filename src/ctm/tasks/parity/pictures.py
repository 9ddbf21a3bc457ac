"""Watch it count: pictures of a model solving cumulative parity, tick by tick.

The parity task's input is a sequence of L values +-1; the target at position i is the parity of the -1s
among positions 0..i (1: odd). A sequence of L positions is drawn as a grid of `parity_grid(L)` cells, read
left to right, top to bottom (4 x 4 for L = 16; the last row may be partly empty).

Tensors in the model, numpy in the visualiser: `parity_frames`, `parity_tick_figure` and `accuracy_figure`
take numpy arrays, so they do not depend on how a task wires its model; `parity_arrays` turns one sample
of a tracked forward (`CTMOutput` with `.tracking`) into those arrays. Each frame shows
  * the input sequence (+1 and -1 coloured) and the true cumulative parity,
  * the attention over the positions at this tick (mean over heads; colour bar: this tick's range),
  * the predicted parity per position at this tick (colour: probability of odd; wrong ones marked),
  * the certainty curve up to this tick (mean over the positions), with the per-bit accuracy,
  * the post-activations of a few neurons over all ticks, with the current tick marked.
Matplotlib and Pillow are imported lazily (through `ctm.viz`), and the frames are written by its GIF writer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ...pictures.figures import (
    BASE_DPI,
    CERTAINTY_COLOUR,
    CURSOR_COLOUR,
    NEUTRAL_TEXT,
    POST_COLOUR,
    TARGET_COLOUR,
    TRAIN_COLOUR,
    WRONG_COLOUR,
    _colour_bar,
    _new_figure,
    _style_axes,
    _ThinkingFigure,
    _tick_positions,
    _trace_panel,
    save_figure,
    save_gif,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...nn.model import CTMOutput

__all__ = ["ParityArrays", "accuracy_figure", "parity_arrays", "parity_frames", "parity_gif", "parity_grid",
           "parity_tick_figure", "save_accuracy_plot"]

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


class _ParityFigure:
    """The figure of one sequence, laid out once; `render(t)` returns tick t's frame as RGB uint8.

    The static parts are drawn once and cached; each frame restores that background and draws only the
    artists that change (the `ctm.viz` thinking figure does the same).
    """

    def __init__(self, sequence, targets, attention, probabilities, certainty, traces, n_neurons=8,
                 fig_scale=1.0, title=None):
        (self.sequence, self.targets, self.attention, self.probabilities, self.certainty,
         traces) = _checked(sequence, targets, attention, probabilities, certainty, traces)
        if fig_scale <= 0:
            raise ValueError(f"fig_scale must be positive, got {fig_scale}")
        if n_neurons < 1:
            raise ValueError(f"n_neurons must be at least 1, got {n_neurons}")
        self.T, self.L = self.probabilities.shape[:2]
        self.predicted = self.probabilities.argmax(-1)  # (T, L)
        self.bit_accuracy = (self.predicted == self.targets).mean(1)  # (T,)
        self.traces = traces[:, :n_neurons]
        self._build(fig_scale, title)

    # ------------------------------------------------------------------ layout (once)

    def _grid_axes(self, ax, title):
        rows, cols = parity_grid(self.L)
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=11.5)
        ax.set_anchor("N")
        return rows, cols

    def _cell_texts(self, ax, values, colours=None, animated=False):
        """A label in each cell (small sequences only: past 64 cells they would be unreadable)."""
        rows, cols = parity_grid(self.L)
        if self.L > 64:
            return []
        size = 11 if cols <= 4 else 8 if cols <= 6 else 6.5
        texts = []
        for i in range(self.L):
            colour = colours[i] if colours is not None else NEUTRAL_TEXT
            text = ax.text(i % cols, i // cols, values[i], ha="center", va="center", fontsize=size, color=colour)
            text.set_animated(animated)
            texts.append(text)
        return texts

    def _build(self, fig_scale, title):
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Rectangle

        fig = self.figure = _new_figure(FRAME_SIZE_IN, BASE_DPI * fig_scale)
        self.canvas = fig.canvas
        T, L = self.T, self.L
        animated: list = []

        def anim(artist):
            artist.set_animated(True)
            animated.append(artist)
            return artist

        self.tick_text = anim(fig.text(0.03, 0.965, "", fontsize=16, fontweight="bold", va="center",
                                       color=NEUTRAL_TEXT))
        self.score_text = anim(fig.text(0.97, 0.965, "", fontsize=13, ha="right", va="center"))
        if title:
            fig.text(0.5, 0.965, title, fontsize=11, ha="center", va="center", color="#555555")
        outer = fig.add_gridspec(3, 1, height_ratios=[3.0, 1.4, 2.2], left=0.04, right=0.96, top=0.915,
                                 bottom=0.035, hspace=0.32)
        top = outer[0].subgridspec(1, 4, wspace=0.12)
        two = ListedColormap([MINUS_COLOUR, PLUS_COLOUR])  # -1, +1
        bits = ListedColormap([EVEN_COLOUR, ODD_COLOUR])

        ax = fig.add_subplot(top[0])
        self._grid_axes(ax, f"Input ({L} values)")
        ax.imshow(_on_grid((self.sequence > 0).astype(float), L), cmap=two, vmin=0, vmax=1)
        self._cell_texts(ax, ["+1" if v > 0 else "\u22121" for v in self.sequence])

        ax = fig.add_subplot(top[1])
        self._grid_axes(ax, "True parity")
        ax.imshow(_on_grid(self.targets.astype(float), L), cmap=bits, vmin=0, vmax=1)
        self._cell_texts(ax, [str(b) for b in self.targets], [ODD_COLOUR if b == 0 else "white"
                                                               for b in self.targets])

        ax = fig.add_subplot(top[2])
        self._grid_axes(ax, "Attention")
        self.att_image = anim(ax.imshow(_on_grid(self.attention[0], L), cmap="inferno", vmin=0, vmax=1))
        self.cb_lo, self.cb_hi = (anim(t) for t in _colour_bar(ax, [0.12, -0.09, 0.76, 0.05], 0.03, 8))
        ax.text(0.5, -0.17, "colour range: this tick's", transform=ax.transAxes, ha="center", va="top",
                fontsize=8, color="#555555")

        ax = fig.add_subplot(top[3])
        rows, cols = self._grid_axes(ax, "Predicted parity")
        self.pred_image = anim(ax.imshow(_on_grid(self.probabilities[0, :, 1], L), cmap="Greys", vmin=0, vmax=1))
        self.pred_texts = self._cell_texts(ax, ["0"] * L, animated=True)
        animated.extend(self.pred_texts)
        self.wrong_boxes = [anim(ax.add_patch(Rectangle((i % cols - 0.45, i // cols - 0.45), 0.9, 0.9,
                                                        fill=False, edgecolor=WRONG_COLOUR, linewidth=2.2)))
                            for i in range(L)]
        ax.text(0.5, -0.05, "shade: p(odd); red box: wrong", transform=ax.transAxes, ha="center", va="top",
                fontsize=8, color="#555555")

        # Certainty (mean over positions) and per-bit accuracy up to this tick.
        ax_c = fig.add_subplot(outer[1])
        ticks = np.arange(1, T + 1)
        (self.c_line,) = ax_c.plot([], [], color=CERTAINTY_COLOUR, linewidth=2, label="certainty")
        (self.a_line,) = ax_c.plot([], [], color=TARGET_COLOUR, linewidth=1.5, linestyle="--",
                                   label="per-bit accuracy")
        anim(self.c_line)
        anim(self.a_line)
        self.c_cursor = anim(ax_c.axvline(1, color=CURSOR_COLOUR, linewidth=1.2, alpha=0.6))
        (self.c_dot,) = ax_c.plot([1], [self.certainty[0]], "o", markersize=7, markerfacecolor="white",
                                  markeredgecolor=CERTAINTY_COLOUR, markeredgewidth=2, zorder=5)
        anim(self.c_dot)
        ax_c.set_xlim(0.5, T + 0.5)
        ax_c.set_ylim(-0.03, 1.08)
        ax_c.set_yticks([0, 0.5, 1])
        ax_c.set_xticks(_tick_positions(T))
        ax_c.set_xlabel("tick", fontsize=10, labelpad=1)
        _style_axes(ax_c)
        ax_c.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=9, ncol=2, frameon=False)
        ax_c.set_title("Certainty (1 - normalised entropy, mean over positions)", fontsize=11.5, loc="left")

        # Neuron traces over all ticks, the current tick marked.
        n = self.traces.shape[1]
        cols_n = min(4, n)
        grid = outer[2].subgridspec(math.ceil(n / cols_n), cols_n, hspace=0.15, wspace=0.1)
        self.trace_cursors, self.trace_dots = [], []
        for i in range(n):
            ax = fig.add_subplot(grid[i // cols_n, i % cols_n])
            ax.plot(ticks, self.traces[:, i], color=POST_COLOUR, linewidth=1.6, marker="." if T == 1 else None)
            cursor, dot = _trace_panel(ax, self.traces[:, i], i, POST_COLOUR)
            self.trace_cursors.append(anim(cursor))
            self.trace_dots.append(anim(dot))
        fig.text(0.04, outer[2].get_position(fig).y1 + 0.01, "Neuron traces (post-activations)", fontsize=11.5,
                 va="bottom")
        self._animated = animated
        self._background = None
        self.blit = True

    # ------------------------------------------------------------------ per frame

    def update(self, t: int) -> None:
        """Point every changing artist at tick t (0-based)."""
        if not 0 <= t < self.T:
            raise IndexError(f"tick {t} out of range for {self.T} ticks")
        L = self.L
        self.tick_text.set_text(f"tick {t + 1}/{self.T}")
        right = self.predicted[t] == self.targets
        n_right = int(right.sum())
        whole = n_right == L
        self.score_text.set_text(f"{n_right}/{L} bits right" + ("  \u2713 sequence correct" if whole else ""))
        self.score_text.set_color(TARGET_COLOUR if whole else WRONG_COLOUR if n_right < L / 2 else NEUTRAL_TEXT)
        att = self.attention[t]
        lo, hi = float(att.min()), float(att.max())
        self.att_image.set_data(_on_grid(att, L))
        self.att_image.set_clim(lo, hi if hi > lo else lo + 1e-12)
        self.cb_lo.set_text(f"{lo:.3f}")
        self.cb_hi.set_text(f"{hi:.3f}")
        p_odd = self.probabilities[t, :, 1]
        self.pred_image.set_data(_on_grid(p_odd, L))
        for i, text in enumerate(self.pred_texts):
            text.set_text(str(self.predicted[t, i]))
            text.set_color("white" if p_odd[i] > 0.5 else ODD_COLOUR)
        for box, ok in zip(self.wrong_boxes, right, strict=True):
            box.set_visible(not ok)
        x = np.arange(1, t + 2)
        self.c_line.set_data(x, self.certainty[:t + 1])
        self.a_line.set_data(x, self.bit_accuracy[:t + 1])
        self.c_cursor.set_xdata([t + 1, t + 1])
        self.c_dot.set_data([t + 1], [self.certainty[t]])
        for i, (cursor, dot) in enumerate(zip(self.trace_cursors, self.trace_dots, strict=True)):
            cursor.set_xdata([t + 1, t + 1])
            dot.set_data([t + 1], [self.traces[t, i]])

    #: The thinking figure's frame: the cached background and this tick's artists over it.
    render = _ThinkingFigure.render


def parity_frames(sequence: np.ndarray, targets: np.ndarray, attention: np.ndarray, probabilities: np.ndarray,
                  certainty: np.ndarray, traces: np.ndarray, n_neurons: int = 8, fig_scale: float = 1.0,
                  title: str | None = None) -> list[np.ndarray]:
    """One RGB uint8 frame per tick (1000 x 800 at scale 1) of one parity sequence's thought.

    sequence (L,) of +-1; targets (L,) of 0/1; attention (T, heads, L) or (T, L); probabilities (T, L, 2)
    (class 1: odd); certainty (T,) or per position (T, L) (drawn as the mean); traces (T, N)
    post-activations, of which the first `n_neurons` are drawn. `title`, when given, heads the frame.
    """
    fig = _ParityFigure(sequence, targets, attention, probabilities, certainty, traces, n_neurons, fig_scale,
                        title)
    return [fig.render(t) for t in range(fig.T)]


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
    fig = _ParityFigure(sequence, targets, attention, probabilities, certainty, traces, n_neurons, fig_scale,
                        title)
    t = fig.T + tick if tick < 0 else tick
    fig.update(t)
    for artist in fig._animated:  # a still draws everything in one pass
        artist.set_animated(False)
    return fig.figure


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
