"""Pictures of a CTM: the per-tick "thinking" figure every task's GIF is drawn in, training curves and per-tick
evaluation plots.

Tensors in the model, numpy in the visualiser: everything here takes numpy arrays and plain data and knows no
task. The module is quiet (it never prints) and needs the optional dependencies matplotlib and Pillow
(``pip install 'torch-ctm[viz]'``), which are imported only when a picture is drawn. Figures are drawn with
matplotlib's Agg canvas directly (no pyplot), so nothing global changes and no window ever opens.

Ticks are shown 1-based ("tick 1/30" is the first internal tick).

The thinking figure
-------------------
`ThinkingFigure` draws one sample's thought, one frame per tick. It lays out what every task shares: a header
(the tick counter on the left, a status on the right, an optional caption under it), the certainty curve up to
the current tick (faint for the ticks still to come, the most certain one starred) and the traces of a few
neurons with the current tick marked; the row on top belongs to the task's panels. A `Panel` is a small object:

* ``setup(fig, area)`` draws what never changes in ``area`` (a matplotlib ``SubplotSpec``: ``fig.add_subplot(area)``
  makes its axes, ``area.subgridspec(...)`` several) and keeps the artists that will change;
* ``update(t)`` points those at tick ``t`` (0-based) and returns them, the same ones every tick;
* ``status(t)`` (optional) is the header's right-hand text at tick ``t`` and its colour, e.g.
  ``("prediction: 7", TARGET_COLOUR)`` (the first panel that gives one is shown);
* ``width`` is its share of the row (default 1).

A panel that writes the predicted class, in a GIF with the shared parts::

    class Answer(Panel):
        def __init__(self, predicted):  # (T,) class indices
            self.predicted = predicted

        def setup(self, fig, area):
            ax = fig.add_subplot(area)
            ax.set_axis_off()
            self.text = ax.text(0.5, 0.5, "", ha="center", va="center", fontsize=40)

        def update(self, t):
            self.text.set_text(str(self.predicted[t]))
            return [self.text]

    frames = ThinkingFigure([Answer(predicted)], certainty, post_activations).frames()  # (T,), (T, D)
    save_gif(frames, "answer.gif")

A task gives its panels from `Task.thinking_panels`, as a list or as `TaskPanels` (which adds per-tick curves
and right/wrong marks to the certainty panel, a summary line and its own layout), and the generic
`Task.thinking_gif` does the rest: the sample from `Task.pick_example`, a tracked forward, this figure, `save_gif`.

The figure is laid out once. The first frame draws everything but the artists the panels return (and the shared
cursors) and caches that picture; each frame then restores it and draws only those artists over it, so a
30-tick GIF takes a second or two. ``blit=False`` redraws the whole figure each frame (slower; the same
picture up to the stacking order of a few lines).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .._text import printable

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure
    from matplotlib.gridspec import SubplotSpec

__all__ = [
    "Curve",
    "Panel",
    "TaskPanels",
    "ThinkingFigure",
    "curves_figure",
    "halting_figure",
    "save_curves",
    "save_figure",
    "save_gif",
    "save_halting_plot",
    "save_ticks_plot",
    "ticks_figure",
]

# Colours.
TARGET_COLOUR = "#2ca02c"  # the target class's bar, "correct"
WRONG_COLOUR = "#d62728"  # a wrong prediction's bar, "wrong"
BAR_COLOUR = "#9bb0c9"  # every other bar
POST_COLOUR = "#1f4e79"  # post-activation traces (red and green mean wrong and right elsewhere)
PRE_COLOUR = "#8c8c8c"  # pre-activation traces (dashed)
CERTAINTY_COLOUR = "#4b3b8f"
CURSOR_COLOUR = "#333333"
MOST_CERTAIN_COLOUR = "#ff9f1c"
NEUTRAL_TEXT = "#222222"
NOTE_TEXT = "#555555"
TRAIN_COLOUR = "#1f77b4"
TEST_COLOUR = "#ff7f0e"

FRAME_SIZE_IN = (9.0, 10.0)  # inches; at fig_scale 1 (100 dpi) a frame is 900 x 1000 pixels
BASE_DPI = 100


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ctm.viz needs matplotlib: pip install 'torch-ctm[viz]'") from e


def _require_pillow():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ctm.viz needs Pillow to write GIFs: pip install 'torch-ctm[viz]'") from e
    return Image


def _new_figure(figsize: tuple[float, float], dpi: float) -> Figure:
    """A Figure with its own Agg canvas: no pyplot, no global state, no window."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _padded_limits(values: np.ndarray, frac: float = 0.08) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        pad = max(abs(lo) * 0.1, 1e-3)
    else:
        pad = (hi - lo) * frac
    return lo - pad, hi + pad


def __getattr__(name: str) -> Any:  # names that moved to a task's pictures (ctm/_moved.py)
    from ctm._moved import moved_name  # absolute: the import system probes this while an alias is set up

    return moved_name(__name__, name)


# ----------------------------------------------------------------------------------------------------------
# The thinking figure
# ----------------------------------------------------------------------------------------------------------


class Panel:
    """A task's part of the thinking figure (see the module docstring): `setup` once, `update` every tick."""

    #: its share of the width of the panels' row
    width: float = 1.0

    def setup(self, fig: Figure, area: SubplotSpec) -> None:
        """Draw what never changes in `area` and keep the artists `update` changes."""
        raise NotImplementedError

    def update(self, t: int) -> Iterable[Artist]:
        """Show tick t (0-based); return the artists that change, the same ones every tick (default: none)."""
        return ()

    def status(self, t: int) -> tuple[str, str] | None:
        """The header's right-hand text at tick t and its colour (default: None, nothing to say)."""
        return None


class Curve(NamedTuple):
    """A per-tick series in [0, 1] drawn with the certainty, up to the current tick (e.g. per-bit accuracy)."""

    label: str
    values: Any  # (T,)
    colour: str = TARGET_COLOUR
    linestyle: str = "--"


@dataclasses.dataclass
class TaskPanels:
    """What a task draws of one sample: its panels (the top row, left to right) and what it adds to the shared
    parts. Only `panels` is needed; the rest has defaults."""

    panels: Sequence[Panel]
    #: the ticks the panels show (checked against the certainty's); None: not checked
    ticks: int | None = None
    #: (T,) bool, whether the answer at tick t is right: green and red marks on the certainty curve
    correct: Any = None
    #: (T,) bool, the ticks `correct` judges (default: every tick): the others get no mark (e.g. ticks before
    #: there is anything to answer)
    judged: Any = None
    #: more per-tick series on the certainty axes
    curves: Sequence[Curve] = ()
    #: the tick (0-based) starred on the certainty curve and its legend label, e.g. where the task reads its
    #: answer (default: the most certain tick, "most certain (tick k)")
    starred: int | None = None
    starred_label: str | None = None
    certainty_title: str = "Certainty (1 - normalised entropy)"
    #: a few words about the sample ("label 7"), for the line that reports the GIF
    summary: str = ""
    #: the figure's size in inches at fig_scale 1 (100 dots per inch)
    size: tuple[float, float] = FRAME_SIZE_IN
    #: the panels' row height, against the certainty's 1.55 and about 1.05 per row of four neuron traces
    row_height: float = 3.3
    #: the space between panels, a share of their mean width (matplotlib's wspace)
    gap: float = 0.28
    #: neuron traces drawn (at most)
    n_neurons: int = 16


class ThinkingFigure:
    """One sample's thought, laid out once: `render(t)` is tick t's frame as RGB uint8, `frames()` all of them,
    `still(t)` tick t as a Figure (for `save_figure`).

    `panels` is a `TaskPanels` or a sequence of `Panel`s; certainty (T,) (or the model's (2, T): [entropy,
    certainty]); post_activations (T, D) and optionally pre_activations (T, D) (dashed, on their own scale) of
    which the first `n_neurons` (default: the panels') are drawn. `caption` is a wrapped line under the header
    (say, why this sample), `title` a line in its middle.
    """

    def __init__(self, panels: TaskPanels | Sequence[Panel], certainty: Any, post_activations: Any,
                 pre_activations: Any = None, *, n_neurons: int | None = None, caption: str | None = None,
                 title: str | None = None, fig_scale: float = 1.0, blit: bool = True) -> None:
        parts = panels if isinstance(panels, TaskPanels) else TaskPanels(list(panels))
        certainty = np.asarray(certainty, dtype=np.float64)
        if certainty.ndim == 2 and certainty.shape[0] == 2:  # the model's (2, T): [entropy, certainty]
            certainty = certainty[1]
        if certainty.ndim != 1 or certainty.size < 1:
            raise ValueError(f"certainties must have shape (T,) (one per tick), got {certainty.shape}")
        T = certainty.size
        if parts.ticks is not None and T != parts.ticks:
            raise ValueError(f"certainties must have shape ({parts.ticks},) (one per tick), got {certainty.shape}")
        post = np.asarray(post_activations, dtype=np.float64)
        pre = None if pre_activations is None else np.asarray(pre_activations, dtype=np.float64)
        for name, a in (("post_activations", post), ("pre_activations", pre)):
            if a is not None and (a.ndim != 2 or a.shape[0] != T or a.shape[1] < 1):
                raise ValueError(f"{name} must have shape ({T}, neurons), got {a.shape}")
        if pre is not None and pre.shape != post.shape:
            raise ValueError(f"pre_activations {pre.shape} and post_activations {post.shape} differ in shape")
        n_neurons = parts.n_neurons if n_neurons is None else int(n_neurons)
        if n_neurons < 1:
            raise ValueError(f"n_neurons must be at least 1, got {n_neurons}")
        if not fig_scale > 0:
            raise ValueError(f"fig_scale must be positive, got {fig_scale}")
        correct = None if parts.correct is None else np.asarray(parts.correct, dtype=bool)
        if correct is not None and correct.shape != (T,):
            raise ValueError(f"correct must have shape ({T},) (one per tick), got {correct.shape}")
        judged = np.ones(T, dtype=bool) if parts.judged is None else np.asarray(parts.judged, dtype=bool)
        if judged.shape != (T,):
            raise ValueError(f"judged must have shape ({T},) (one per tick), got {judged.shape}")
        curves = [c._replace(values=np.asarray(c.values, dtype=np.float64)) for c in parts.curves]
        for c in curves:
            if c.values.shape != (T,):
                raise ValueError(f"curve {c.label!r} must have shape ({T},) (one per tick), got {c.values.shape}")

        self.T = T
        self.panels = list(parts.panels)
        self.parts = parts
        self.certainty = certainty
        self.most_certain = int(np.argmax(np.nan_to_num(certainty, nan=-np.inf)))
        if parts.starred is not None and not 0 <= int(parts.starred) < T:
            raise ValueError(f"starred tick {parts.starred} out of range for {T} ticks")
        self.correct = correct
        self.judged = judged
        self.curves = curves
        self.blit = blit
        self._post = post[:, :n_neurons]
        self._background = None
        self._build(pre if pre is None else pre[:, :n_neurons], fig_scale, caption, title)

    # ------------------------------------------------------------------ layout (once)

    def _build(self, pre, fig_scale, caption, title):
        parts = self.parts
        width, height = parts.size
        fig = self.figure = _new_figure(parts.size, BASE_DPI * fig_scale)
        self.canvas = fig.canvas
        left, right = 0.33 / width, 1 - 0.33 / width
        header = 1 - 0.32 / height

        # Header: tick number on the left, the panels' status on the right, the title between them.
        self.tick_text = fig.text(left, header, "", fontsize=17, fontweight="bold", va="center", color=NEUTRAL_TEXT)
        self.status_text = fig.text(right, header, "", fontsize=14, ha="right", va="center", color=NEUTRAL_TEXT)
        if title:
            fig.text(0.5, header, printable(title), fontsize=11, ha="center", va="center", color=NOTE_TEXT)
        if caption:
            import textwrap

            fig.text(left, 1 - 0.52 / height, textwrap.fill(printable(caption), int(15.5 * width)), fontsize=8.5,
                     va="top", color=NOTE_TEXT)
        top = 1 - (0.75 + (0.35 if caption else 0.0)) / height

        n = self._post.shape[1]
        cols = min(4, n)
        rows = math.ceil(n / cols)
        heights = ([parts.row_height] if self.panels else []) + [1.55, 1.05 * rows]
        outer = fig.add_gridspec(len(heights), 1, height_ratios=heights, left=left, right=right, top=top,
                                 bottom=0.35 / height, hspace=0.3)
        if self.panels:
            row = outer[0].subgridspec(1, len(self.panels), width_ratios=[p.width for p in self.panels],
                                       wspace=parts.gap)
            for i, panel in enumerate(self.panels):
                panel.setup(fig, row[0, i])
        self._certainty_axes(fig.add_subplot(outer[-2]))
        self._traces(fig, outer[-1], pre, cols, rows, left, right)

    def _certainty_axes(self, ax):
        T, ticks, certainty = self.T, np.arange(1, self.T + 1), self.certainty
        ax.plot(ticks, certainty, color=CERTAINTY_COLOUR, linewidth=1.2, alpha=0.25, zorder=1)  # ticks to come
        (self.c_line,) = ax.plot([], [], color=CERTAINTY_COLOUR, linewidth=2, zorder=2, label="certainty")
        self.curve_lines = [ax.plot([], [], color=c.colour, linestyle=c.linestyle, linewidth=1.5, zorder=2,
                                    label=c.label)[0] for c in self.curves]
        self.marks = []
        if self.correct is not None:
            self.marks = [ax.plot([], [], "o", markersize=4, color=colour, zorder=3, label=label)[0]
                          for colour, label in ((TARGET_COLOUR, "correct"), (WRONG_COLOUR, "wrong"))]
        mc = self.most_certain if self.parts.starred is None else int(self.parts.starred)
        label = self.parts.starred_label or f"most certain (tick {mc + 1})"
        ax.scatter([mc + 1], [certainty[mc]], s=170, marker="*", color=MOST_CERTAIN_COLOUR, edgecolor="#7a4a00",
                   linewidth=0.6, zorder=4, label=printable(label))
        self.c_cursor = ax.axvline(1, color=CURSOR_COLOUR, linewidth=1.2, alpha=0.6, zorder=1)
        (self.c_dot,) = ax.plot([1], [certainty[0]], "o", markersize=7, markerfacecolor="white",
                                markeredgecolor=CERTAINTY_COLOUR, markeredgewidth=2, zorder=5)
        ax.set_xlim(0.5, T + 0.5)
        ax.set_ylim(-0.03, 1.1)
        ax.set_yticks([0, 0.5, 1])
        ax.set_xticks(_tick_positions(T))
        ax.tick_params(labelsize=9, length=2)
        ax.set_ylabel("certainty", fontsize=10)
        ax.set_xlabel("tick", fontsize=10, labelpad=1)
        _style_axes(ax)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=9, ncol=len(handles),
                  frameon=False, borderpad=0.1, handletextpad=0.3, columnspacing=1.2, scatterpoints=1)
        ax.set_title(printable(self.parts.certainty_title), fontsize=12, loc="left")
        self._shared = [self.c_line, *self.curve_lines, *self.marks, self.c_cursor, self.c_dot]

    def _traces(self, fig, area, pre, cols, rows, left, right):
        """Post-activations solid (one colour), pre-activations (when given) dashed grey on a twin y-axis, each
        with a cursor at the current tick and its neuron index left of the panel."""
        T, post = self.T, self._post
        ticks = np.arange(1, T + 1)
        grid = area.subgridspec(rows, cols, hspace=0.12, wspace=0.12)
        self.trace_cursors, self.trace_dots = [], []
        for i in range(post.shape[1]):
            ax = fig.add_subplot(grid[i // cols, i % cols])
            if pre is not None:
                ax_pre = ax.twinx()
                ax_pre.plot(ticks, pre[:, i], color=PRE_COLOUR, linestyle="--", linewidth=1, alpha=0.8)
                ax.set_zorder(ax_pre.get_zorder() + 1)  # post trace above the dashed pre trace
                ax.patch.set_visible(False)
                _bare_trace_axes(ax_pre, pre[:, i])
            ax.plot(ticks, post[:, i], color=POST_COLOUR, linewidth=1.8, marker="." if T == 1 else None)
            cursor, dot = _trace_panel(ax, post[:, i], i, POST_COLOUR)
            self.trace_cursors.append(cursor)
            self.trace_dots.append(dot)
        title_y = area.get_position(fig).y1 + 0.008
        fig.text(left, title_y, "Neuron traces", fontsize=12, va="bottom")
        legend = ("solid: post-activation    dashed: pre-activation (own scale)" if pre is not None else
                  "post-activations")
        fig.text(right, title_y, legend + "    #: neuron index", fontsize=9, ha="right", va="bottom",
                 color=NOTE_TEXT)
        self._shared += [*self.trace_cursors, *self.trace_dots]

    # ------------------------------------------------------------------ per frame

    def update(self, t: int) -> list:
        """Point every changing artist at tick t (0-based); returns them, in the order they are drawn."""
        T = self.T
        if not 0 <= t < T:
            raise IndexError(f"tick {t} out of range for {T} ticks")
        self.tick_text.set_text(f"tick {t + 1}/{T}")
        changed = [self.tick_text, self.status_text]
        status = None
        for panel in self.panels:
            changed.extend(panel.update(t))
            if status is None:
                status = panel.status(t)
        text, colour = status if status is not None else ("", NEUTRAL_TEXT)
        self.status_text.set_text(text)
        self.status_text.set_color(colour)

        x = t + 1
        upto = np.arange(1, t + 2)
        self.c_line.set_data(upto, self.certainty[:x])
        for line, curve in zip(self.curve_lines, self.curves, strict=True):
            line.set_data(upto, curve.values[:x])
        if self.marks:
            right, judged = self.correct[:x], self.judged[:x]
            self.marks[0].set_data(upto[right & judged], self.certainty[:x][right & judged])
            self.marks[1].set_data(upto[~right & judged], self.certainty[:x][~right & judged])
        self.c_cursor.set_xdata([x, x])
        self.c_dot.set_data([x], [self.certainty[t]])
        for i, (cursor, dot) in enumerate(zip(self.trace_cursors, self.trace_dots, strict=True)):
            cursor.set_xdata([x, x])
            dot.set_data([x], [self._post[t, i]])
        return changed + self._shared

    def render(self, t: int) -> np.ndarray:
        """Tick t's frame, (height, width, 3) uint8."""
        changed = self.update(t)
        if not self.blit:
            self.canvas.draw()
        else:
            fresh = [a for a in changed if not a.get_animated()]
            for artist in fresh:  # kept out of the cached background
                artist.set_animated(True)
            if fresh or self._background is None:
                self.canvas.draw()  # everything static; animated artists are skipped
                self._background = self.canvas.copy_from_bbox(self.figure.bbox)
            self.canvas.restore_region(self._background)
            for artist in changed:
                self.figure.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()

    def frames(self) -> list[np.ndarray]:
        """Every tick's frame, all the same size."""
        return [self.render(t) for t in range(self.T)]

    def still(self, t: int = -1) -> Figure:
        """Tick t (0-based; negative from the end) as a Figure drawn in one pass, for `save_figure`."""
        for artist in self.update(self.T + t if t < 0 else t):
            artist.set_animated(False)
        self._background = None
        return self.figure


def _colour_bar(ax, box: list[float], gap: float, fontsize: float):
    """An inferno colour bar in `box` (axes coordinates of `ax`) with two empty texts, left and right of it,
    for the values its ends stand for; returns the texts."""
    ax_cb = ax.inset_axes(box)
    ax_cb.imshow(np.linspace(0, 1, 256)[None, :], cmap="inferno", aspect="auto", extent=(0, 1, 0, 1))
    ax_cb.set_axis_off()
    return tuple(ax_cb.text(x, 0.5, "", transform=ax_cb.transAxes, ha=ha, va="center", fontsize=fontsize,
                            color="#333333") for x, ha in ((-gap, "right"), (1 + gap, "left")))


def _bare_trace_axes(ax, values: np.ndarray) -> None:
    """Limits for a trace over ticks 1..T, no ticks, light spines."""
    ax.set_xlim(0.5, values.size + 0.5)
    ax.set_ylim(*_padded_limits(values))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#d9d9d9")


def _trace_panel(ax, values: np.ndarray, index: int, colour: str):
    """A neuron's trace panel (its trace already plotted): bare axes, its index on the left, and a cursor and
    a dot at tick 1 for the frames to move; returns (cursor, dot)."""
    _bare_trace_axes(ax, values)
    ax.text(-0.015, 0.5, f"#{index}", transform=ax.transAxes, fontsize=7.5, ha="right", va="center",
            color="#444444")
    cursor = ax.axvline(1, color=CURSOR_COLOUR, linewidth=1, alpha=0.5)
    (dot,) = ax.plot([1], [values[0]], "o", markersize=4, color=colour)
    return cursor, dot


def _tick_positions(T: int) -> list[int]:
    """Readable x ticks for ticks 1..T: 1 and multiples of a round step."""
    if T <= 12:
        return list(range(1, T + 1))
    step = next(s for s in (2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000) if T / s <= 12) if T <= 12000 else T // 10
    return [1] + list(range(step, T + 1, step))



# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


def _atomic(path: str | os.PathLike[str], write) -> Path:
    from .._io import atomic_write

    return atomic_write(path, write)


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike[str], fps: float = 5,
             loop: int | None = 0) -> Path:
    """Write RGB uint8 frames (H, W, 3) as an animated GIF, atomically; returns the path.

    All frames share one adaptive 256-colour palette (no dithering), so unchanged regions compress to
    nothing between frames. `loop=0` repeats forever, `loop=None` plays once.
    """
    Image = _require_pillow()
    if len(frames) == 0:
        raise ValueError("no frames to write")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    arrays = [np.asarray(f) for f in frames]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
            raise ValueError(f"frame {i} must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
        if a.shape != shape:
            raise ValueError(f"frame {i} has shape {a.shape}, frame 0 has {shape}: all frames must match")
    arrays = [np.ascontiguousarray(a[..., :3]) for a in arrays]
    # One palette for all frames, from a sample of them (every other pixel is plenty for flat plots).
    sample = arrays[:: max(1, len(arrays) // 8)]
    mosaic = Image.fromarray(np.concatenate([a[::2, ::2] for a in sample], axis=0))
    palette = mosaic.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    images = [Image.fromarray(a).quantize(palette=palette, dither=Image.Dither.NONE) for a in arrays]
    options: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": round(1000 / fps),
                               "disposal": 1}
    if loop is not None:
        options["loop"] = int(loop)
    return _atomic(path, lambda tmp: images[0].save(tmp, format="GIF", **options))


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: float | None = None) -> Path:
    """Write a Figure as PNG, atomically; returns the path."""
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi or fig.dpi, facecolor="white"))


# ----------------------------------------------------------------------------------------------------------
# Training curves and per-tick evaluation
# ----------------------------------------------------------------------------------------------------------


def _series(metrics: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for row in metrics:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(row["step"])
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def _trace(metrics: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The (step, training loss) points the rows' "train_loss_trace" lists hold, in step order; malformed points
    (a run directory may come from anyone) are left out."""
    points = []
    for row in metrics:
        trace = row.get("train_loss_trace")
        if not isinstance(trace, list):
            continue
        for p in trace[:10_000]:
            if (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            and math.isfinite(v) for v in p)):
                points.append((float(p[0]), float(p[1])))
    points.sort()
    return np.asarray([p[0] for p in points]), np.asarray([p[1] for p in points])


def _smoothed(values: np.ndarray, weight: float = 0.8) -> np.ndarray:
    """An exponential moving average, debiased at the start (as TensorBoard's smoothing)."""
    out, average = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        average = weight * average + (1 - weight) * v
        out[i] = average / (1 - weight ** (i + 1))
    return out


def _style_axes(ax) -> None:
    ax.grid(color="#e8e8e8", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=9)


def curves_figure(metrics: Sequence[Mapping[str, Any]]) -> Figure:
    """Train and test loss (left) and accuracy (right) against the step, from metrics.jsonl rows."""
    if not metrics:
        raise ValueError("no metrics to plot: metrics.jsonl is empty or missing (no evaluation has run yet)")
    for i, row in enumerate(metrics):
        if not isinstance(row, Mapping) or not isinstance(row.get("step"), (int, float)):
            raise ValueError(f"metrics row {i} has no numeric 'step': {row!r}")
    metrics = sorted(metrics, key=lambda r: r["step"])
    fig = _new_figure((10.0, 4.0), 100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    plotted = False
    steps, losses = _trace(metrics)
    if steps.size >= 2:  # the training loss between evaluations: faint as logged, bold smoothed
        ax_loss.plot(steps, losses, color=TRAIN_COLOUR, alpha=0.25, linewidth=0.8)
        ax_loss.plot(steps, _smoothed(losses), color=TRAIN_COLOUR, linewidth=1.6, label="train (smoothed)")
        plotted = True
    for ax, kind, scale in ((ax_loss, "loss", 1.0), (ax_acc, "accuracy", 100.0)):
        for split, colour in (("train", TRAIN_COLOUR), ("test", TEST_COLOUR)):
            xs, ys = _series(metrics, f"{split}_{kind}")
            if xs.size == 0:
                continue
            plotted = True
            style = {"linestyle": "none", "marker": "o", "markersize": 7} if xs.size == 1 else \
                {"linewidth": 1.8, "marker": "o" if xs.size <= 25 else None, "markersize": 3.5}
            if kind == "loss" and split == "train" and steps.size >= 2:
                continue  # the trace draws it (a row's mean since the last evaluation is the trace's mean there)
            label = "test (evaluations)" if split == "test" else split
            ax.plot(xs, ys * scale, color=colour, label=label, zorder=3, **style)
        _style_axes(ax)
        ax.set_xlim(left=0)
        ax.set_xlabel("step", fontsize=10)
        ax.set_title(kind.capitalize(), fontsize=12)
    ax_loss.set_ylabel("certainty loss", fontsize=10)
    ax_acc.set_ylabel("accuracy (%)", fontsize=10)
    xs, ys = _series(metrics, "test_accuracy")
    if xs.size:  # the run keeps the last step's weights: mark that point; the highest only as a level
        ax_acc.scatter([xs[-1]], [ys[-1] * 100], s=160, marker="*", color=MOST_CERTAIN_COLOUR,
                       edgecolor="#7a4a00", linewidth=0.6, zorder=4,
                       label=f"final test {ys[-1] * 100:.2f}% (step {xs[-1]}, the saved weights)")
        best = int(np.argmax(ys))
        if ys[best] > ys[-1]:
            ax_acc.axhline(ys[best] * 100, color="#999999", linestyle=":", linewidth=1, zorder=1,
                           label=f"highest test {ys[best] * 100:.2f}% (step {xs[best]}, not kept)")
    if not plotted:
        raise ValueError("no metrics to plot: no row has train/test loss or accuracy")
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def save_curves(metrics: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write `curves_figure(metrics)` as a PNG, atomically; returns the path."""
    return save_figure(curves_figure(metrics), path)


def ticks_figure(result: Mapping[str, Any] | Any) -> Figure:
    """Per-tick accuracy and mean certainty (top) and the histogram of most-certain ticks (bottom), from
    an `EvalResult` or its `to_dict()`.
    """
    if not isinstance(result, Mapping):
        result = result.to_dict() if hasattr(result, "to_dict") else vars(result)
    try:
        acc = np.asarray(result["per_tick_accuracy"], dtype=np.float64) * 100
        cert = np.asarray(result["per_tick_certainty"], dtype=np.float64)
        hist = np.asarray(result["most_certain_tick_histogram"], dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"evaluation result lacks {e.args[0]!r}") from None
    T = acc.size
    if T == 0 or cert.size != T or hist.size != T:
        raise ValueError(f"per-tick lists must be non-empty and of one length, got {acc.size}, {cert.size}, "
                         f"{hist.size}")
    ticks = np.arange(1, T + 1)
    fig = _new_figure((9.0, 8.0), 100)
    # Accuracy and certainty each on its own axis, scaled to its data: 97-98 % and certainties of 0.95-1
    # would lie flat along the top of a 0-100 % axis.
    ax_a, ax_c, ax_h = fig.subplots(3, 1, sharex=True, height_ratios=[1.0, 1.0, 1.0])
    marker = {"marker": "o", "markersize": 3.5} if T <= 40 else {}
    ax_a.plot(ticks, acc, color=TRAIN_COLOUR, linewidth=2, label="accuracy at each tick", **marker)
    shown_acc = acc
    if isinstance(result.get("accuracy"), (int, float)):
        best = result["accuracy"] * 100
        ax_a.axhline(best, color=TARGET_COLOUR, linestyle="--", linewidth=1.2,
                     label=f"at each sample's most certain tick: {best:.2f}%")
        shown_acc = np.append(acc, best)
    ax_a.set_ylim(*_padded_limits(shown_acc))
    ax_a.set_ylabel("accuracy (%)", fontsize=10)
    ax_a.legend(fontsize=9, loc="best", frameon=True, framealpha=0.85)
    n = result.get("n")
    ax_a.set_title("Accuracy per tick" + (f" ({n} samples)" if n else ""), fontsize=12)
    _style_axes(ax_a)
    ax_c.plot(ticks, cert, color=CERTAINTY_COLOUR, linewidth=2, **marker)
    ax_c.set_ylim(*_padded_limits(cert))
    ax_c.set_ylabel("mean certainty", fontsize=10)
    ax_c.set_title("Mean certainty per tick (1 - normalised entropy)", fontsize=12)
    _style_axes(ax_c)

    total = hist.sum()
    share = hist / total * 100 if total > 0 else hist
    ax_h.bar(ticks, share, color=MOST_CERTAIN_COLOUR, edgecolor="#7a4a00", linewidth=0.4, width=0.8)
    ax_h.set_ylabel("samples (%)" if total > 0 else "samples", fontsize=10)
    ax_h.set_xlabel("tick", fontsize=10)
    ax_h.set_title("Most certain tick", fontsize=12)
    ax_h.set_xlim(0.4, T + 0.6)
    ax_h.set_xticks(_tick_positions(T))
    _style_axes(ax_h)
    fig.tight_layout()
    return fig


def save_ticks_plot(result: Mapping[str, Any] | Any, path: str | os.PathLike[str]) -> Path:
    """Write `ticks_figure(result)` as a PNG, atomically; returns the path."""
    return save_figure(ticks_figure(result), path)


def _as_dict(result: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    return result.to_dict() if hasattr(result, "to_dict") else vars(result)


def halting_figure(sweep: Sequence[Mapping[str, Any] | Any], full: Mapping[str, Any] | Any,
                   wall_s_full: float | None = None) -> Figure:
    """Adaptive computation: accuracy against mean ticks used, one point per halting threshold, with the
    full-T run (most-certain accuracy at T ticks) marked (left); wall time as a share of the full run's
    (right, when wall times are known). `sweep` holds `HaltingResult`s (or dicts), `full` an `EvalResult`.
    """
    rows = sorted((_as_dict(r) for r in sweep), key=lambda r: r["mean_ticks"])
    full = _as_dict(full)
    if not rows:
        raise ValueError("no halting results to plot: the sweep is empty")
    try:
        ticks = np.asarray([r["mean_ticks"] for r in rows], dtype=np.float64)
        acc = np.asarray([r["accuracy"] for r in rows], dtype=np.float64) * 100
        taus = [float(r["halt_certainty"]) for r in rows]
        T = len(full.get("per_tick_accuracy") or full["per_tick_certainty"])
        acc_full = float(full["accuracy"]) * 100
    except KeyError as e:
        raise ValueError(f"halting or evaluation result lacks {e.args[0]!r}") from None
    walls = [r.get("wall_s") for r in rows]
    show_wall = wall_s_full is not None and wall_s_full > 0 and all(isinstance(w, (int, float)) for w in walls)
    fig = _new_figure((11.0, 4.6) if show_wall else (6.5, 4.6), 100)
    axes = fig.subplots(1, 2 if show_wall else 1)
    ax = axes[0] if show_wall else axes
    ax.axhspan(acc_full - 0.1, acc_full + 0.1, color=TARGET_COLOUR, alpha=0.12, linewidth=0,
               label="full run \u00b1 0.1 pp")
    ax.plot(ticks, acc, color=TRAIN_COLOUR, linewidth=1.8, marker="o", markersize=5,
            label="halting at certainty \u03c4")
    for i, (x, y, tau) in enumerate(zip(ticks, acc, taus, strict=True)):  # labels alternate below/above
        ax.annotate(f"\u03c4={tau:g}", (x, y), textcoords="offset points", xytext=(0, -13 if i % 2 == 0 else 8),
                    ha="center", fontsize=7.5, color="#555555")
    ax.scatter([T], [acc_full], s=170, marker="*", color=MOST_CERTAIN_COLOUR, edgecolor="#7a4a00", zorder=4,
               label=f"full run: {T} ticks, {acc_full:.2f}%")
    ax.axvline(T / 4, color="#999999", linestyle=":", linewidth=1, label=f"T / 4 = {T / 4:g} ticks")
    lo = min(acc.min(), acc_full - 0.3)
    ax.set_ylim(max(0.0, lo - 0.2 * (100 - lo)), min(100.5, max(acc.max(), acc_full) + 0.3))
    _log_ticks_axis(ax, T)
    ax.set_xlabel("mean ticks used (log scale)", fontsize=10)
    ax.set_ylabel("test accuracy (%)", fontsize=10)
    n = full.get("n")
    ax.set_title("Accuracy against thinking time" + (f" ({n} samples)" if n else ""), fontsize=12)
    _style_axes(ax)
    ax.legend(fontsize=8.5, loc="lower right", frameon=True, framealpha=0.85)
    if show_wall:
        ax_w = axes[1]
        share = np.asarray(walls, dtype=np.float64) / wall_s_full * 100
        ax_w.plot(ticks, share, color=CERTAINTY_COLOUR, linewidth=1.8, marker="o", markersize=5,
                  label="halting run")
        line = np.linspace(1, T, 50)
        ax_w.plot(line, line / T * 100, color="#999999", linestyle="--", linewidth=1, label="proportional to ticks")
        ax_w.scatter([T], [100], s=170, marker="*", color=MOST_CERTAIN_COLOUR, edgecolor="#7a4a00", zorder=4,
                     label=f"full run: {wall_s_full:.2f} s")
        _log_ticks_axis(ax_w, T)
        ax_w.set_ylim(0, max(105.0, share.max() + 5))
        ax_w.set_xlabel("mean ticks used (log scale)", fontsize=10)
        ax_w.set_ylabel("wall time (% of the full run)", fontsize=10)
        ax_w.set_title("Evaluation wall time", fontsize=12)
        _style_axes(ax_w)
        ax_w.legend(fontsize=8.5, loc="lower right", frameon=True, framealpha=0.85)
    fig.tight_layout()
    return fig


def _log_ticks_axis(ax, T: int) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.set_xlim(0.85, T * 1.2)
    ax.xaxis.set_major_locator(FixedLocator([t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500) if t <= T]
                                            + ([T] if T not in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500) else [])))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def save_halting_plot(sweep: Sequence[Mapping[str, Any] | Any], full: Mapping[str, Any] | Any,
                      wall_s_full: float | None, path: str | os.PathLike[str]) -> Path:
    """Write `halting_figure(...)` as a PNG, atomically; returns the path."""
    return save_figure(halting_figure(sweep, full, wall_s_full), path)
