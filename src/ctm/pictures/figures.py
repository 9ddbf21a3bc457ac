"""Pictures of a CTM: the "thinking" GIF of one sample, training curves and per-tick evaluation plots.

Tensors in the model, numpy in the visualiser: the drawing functions take numpy arrays and plain data;
only `thinking_gif` and `select_example` touch the model or a dataset. The module is quiet (it never
prints) and needs the optional dependencies matplotlib and Pillow (``pip install 'torch-ctm[viz]'``),
which are imported only when a picture is drawn. Figures are drawn with matplotlib's Agg canvas directly
(no pyplot), so nothing global changes and no window ever opens.

Ticks are shown 1-based ("tick 1/30" is the first internal tick).

The thinking figure is laid out once; each frame then only updates the artists that change (attention
map, probability bars, cursors, texts) and redraws them over a cached background, so a 30-tick GIF
takes a second or two.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .._text import printable

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from ..data.images import ImageDataset
    from ..nn.model import ContinuousThoughtMachine

__all__ = [
    "curves_figure",
    "halting_figure",
    "save_curves",
    "save_figure",
    "save_gif",
    "save_halting_plot",
    "save_ticks_plot",
    "select_example",
    "thinking_frames",
    "thinking_gif",
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


def _softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


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


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) -> what imshow gets: (H, W) gray with a cmap, or (H, W, 3) RGB; values in [0, 1]."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {img.shape}")
    if img.shape[0] == 3:
        img = np.transpose(img, (1, 2, 0))
        cmap = None
    else:
        img = img[0] if img.shape[0] == 1 else img.mean(axis=0)
        cmap = "binary"  # ink dark on white, like the tutorial
    finite = img[np.isfinite(img)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):  # not in [0, 1]: stretch to it
        lo, hi = float(finite.min()), float(finite.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.clip(np.nan_to_num(img), 0.0, 1.0), cmap


# ----------------------------------------------------------------------------------------------------------
# The thinking figure
# ----------------------------------------------------------------------------------------------------------


class _ThinkingFigure:
    """The figure of one sample, laid out once; `render(t)` returns tick t's frame as RGB uint8.

    With `blit` (the default) the static parts are drawn once and cached; each frame restores that
    background and draws only the changing artists. `blit=False` redraws the whole figure each frame
    (slower; the same picture up to the stacking order of a few lines).
    """

    def __init__(self, image, predictions, certainties, pre_activations, post_activations, attention,
                 token_grid, target=None, n_neurons=16, class_names=None, fig_scale=1.0, blit=True,
                 attention_scale="tick", caption=None):
        predictions = np.asarray(predictions, dtype=np.float64)
        if predictions.ndim != 2:
            raise ValueError(f"predictions must have shape (classes, ticks), got {predictions.shape}")
        n_classes, T = predictions.shape
        if T < 1 or n_classes < 2:
            raise ValueError(f"predictions must have at least 2 classes and 1 tick, got shape {predictions.shape}")
        certainties = np.asarray(certainties, dtype=np.float64)
        if certainties.ndim == 2 and certainties.shape[0] == 2:  # the model's (2, T): [entropy, certainty]
            certainties = certainties[1]
        if certainties.shape != (T,):
            raise ValueError(f"certainties must have shape ({T},) (one per tick), got {certainties.shape}")
        pre = np.asarray(pre_activations, dtype=np.float64)
        post = np.asarray(post_activations, dtype=np.float64)
        for name, a in (("pre_activations", pre), ("post_activations", post)):
            if a.ndim != 2 or a.shape[0] != T:
                raise ValueError(f"{name} must have shape ({T}, neurons), got {a.shape}")
        if pre.shape != post.shape:
            raise ValueError(f"pre_activations {pre.shape} and post_activations {post.shape} differ in shape")
        attention = np.asarray(attention, dtype=np.float64)
        if attention.ndim == 2:  # (T, N): a single head
            attention = attention[:, None]
        if attention.ndim != 3 or attention.shape[0] != T:
            raise ValueError(f"attention must have shape ({T}, heads, tokens), got {attention.shape}")
        try:
            gh, gw = (int(v) for v in token_grid)
        except (TypeError, ValueError):
            raise ValueError(f"token_grid must be a pair (H', W'), got {token_grid!r}") from None
        heads, n_tokens = attention.shape[1:]
        if gh < 1 or gw < 1 or gh * gw != n_tokens:
            raise ValueError(f"token_grid {gh}x{gw} does not match the {n_tokens} attention tokens")
        if class_names is None:
            class_names = [str(i) for i in range(n_classes)]
        class_names = [printable(c) for c in class_names]  # a folder's name may hold control characters
        class_names = [c if len(c) <= 18 else c[:17] + "\u2026" for c in class_names]
        if len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
        if target is not None:
            target = int(target)
            if not 0 <= target < n_classes:
                raise ValueError(f"target {target} is not a class index in [0, {n_classes})")
        if fig_scale <= 0:
            raise ValueError(f"fig_scale must be positive, got {fig_scale}")
        if attention_scale not in ("tick", "sample"):
            raise ValueError(f"attention_scale must be 'tick' (colours span each tick's range) or 'sample' (0 to "
                             f"the sample's largest weight, the same for every tick), got {attention_scale!r}")
        self.attention_scale = attention_scale
        n_neurons = min(int(n_neurons), pre.shape[1])
        if n_neurons < 1:
            raise ValueError("n_neurons must be at least 1")

        self.T = T
        self.target = target
        self.class_names = class_names
        self.probs = _softmax(predictions, axis=0)  # (C, T)
        self.predicted = np.argmax(predictions, axis=0)  # (T,)
        self.certainties = certainties
        self.most_certain = int(np.argmax(np.nan_to_num(certainties, nan=-np.inf)))
        self.attention = attention.mean(axis=1).reshape(T, gh, gw)  # mean over heads
        self.blit = blit
        self._build(image, pre[:, :n_neurons], post[:, :n_neurons], heads, fig_scale, caption)

    # ------------------------------------------------------------------ layout (once)

    def _build(self, image, pre, post, heads, fig_scale, caption=None):
        fig = self.figure = _new_figure(FRAME_SIZE_IN, BASE_DPI * fig_scale)
        self.canvas = fig.canvas
        T, ticks = self.T, np.arange(1, self.T + 1)
        animated: list = []

        def anim(artist):
            artist.set_animated(self.blit)
            animated.append(artist)
            return artist

        # Header: tick number on the left, prediction (and verdict) on the right.
        self.tick_text = anim(fig.text(0.035, 0.968, "", fontsize=17, fontweight="bold", va="center",
                                       color=NEUTRAL_TEXT))
        self.pred_text = anim(fig.text(0.965, 0.968, "", fontsize=14, ha="right", va="center"))
        if caption:  # why this sample was chosen, under the header
            import textwrap

            fig.text(0.035, 0.948, textwrap.fill("Why this image: " + printable(caption), 140), fontsize=8.5, va="top",
                     color="#555555")

        outer = fig.add_gridspec(3, 1, height_ratios=[3.3, 1.55, 4.2], left=0.035, right=0.965,
                                 top=0.89 if caption else 0.925,
                                 bottom=0.035, hspace=0.3)
        top = outer[0].subgridspec(1, 3, width_ratios=[1.0, 1.0, 1.15], wspace=0.28)

        # Input image.
        disp, cmap = _display_image(image)
        h, w = disp.shape[:2]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        ax_img = fig.add_subplot(top[0])
        ax_img.imshow(disp, cmap=cmap, vmin=0, vmax=1, extent=extent, interpolation="nearest")
        ax_img.set_title("Input", fontsize=12)
        ax_img.set_axis_off()
        ax_img.set_anchor("N")  # top-aligned, so the three panel titles line up

        # Attention (mean over heads) on the token grid, stretched over the image it attends to.
        ax_att = fig.add_subplot(top[1])
        outline = cmap is not None and disp.max() - disp.min() > 0.2  # gray: outline the image on the map
        if not outline:  # colour (or flat) image: show it through a translucent map
            ax_att.imshow(disp, cmap=cmap, vmin=0, vmax=1, extent=extent, interpolation="nearest")
        self.att_image = anim(ax_att.imshow(self.attention[0], cmap="inferno", extent=extent,
                                            alpha=None if outline else 0.7, interpolation="nearest", vmin=0, vmax=1))
        if outline:
            level = 0.5 * (float(disp.min()) + float(disp.max()))
            anim(ax_att.contour(np.arange(w), np.arange(h), disp, levels=[level], colors="#7fdbff",
                                linewidths=1.3))
        ax_att.set_xlim(extent[:2])
        ax_att.set_ylim(extent[2:])
        ax_att.set_title("Attention" + (f" (mean of {heads} heads)" if heads > 1 else ""), fontsize=12)
        ax_att.set_axis_off()
        ax_att.set_anchor("N")
        # Colour bar under the map: the weights its darkest and brightest colours stand for.
        self.cb_lo, self.cb_hi = (anim(t) for t in _colour_bar(ax_att, [0.12, -0.085, 0.76, 0.045], 0.02, 8.5))
        note = "colour range: this tick's" if self.attention_scale == "tick" else "colour range: the whole sample's"
        if outline:
            note += "\ncyan line: the input's outline"
        ax_att.text(0.5, -0.12, note, transform=ax_att.transAxes, ha="center", va="top", fontsize=8,
                    color="#555555")
        self._att_fixed = (0.0, float(np.nanmax(self.attention)) or 1e-12)

        # Class probabilities at this tick, horizontal bars so long class names fit.
        ax_p = fig.add_subplot(top[2])
        n_classes = len(self.class_names)
        y = np.arange(n_classes)
        self.bars = [anim(b) for b in ax_p.barh(y, np.zeros(n_classes), height=0.78, color=BAR_COLOUR,
                                                          linewidth=0)]
        ax_p.set_yticks(y)
        ax_p.set_yticklabels(self.class_names, fontsize=10 if n_classes <= 12 else max(5, 120 // n_classes))
        if self.target is not None:
            ax_p.get_yticklabels()[self.target].set_color(TARGET_COLOUR)
            ax_p.get_yticklabels()[self.target].set_fontweight("bold")
        ax_p.set_ylim(n_classes - 0.5, -0.5)
        ax_p.set_xlim(0, 1)
        ax_p.set_xticks([0, 0.5, 1])
        ax_p.tick_params(labelsize=9, length=2)
        ax_p.grid(axis="x", color="#e5e5e5", linewidth=0.8)
        ax_p.set_axisbelow(True)
        for side in ("top", "right"):
            ax_p.spines[side].set_visible(False)
        ax_p.set_title("Class probabilities", fontsize=12)
        # Long class names: move the bars right until their labels clear the attention panel.
        renderer = self.canvas.get_renderer()
        labels_x0 = ax_p.yaxis.get_tightbbox(renderer).x0 / fig.bbox.width
        room = top[1].get_position(fig).x1 + 0.012
        if labels_x0 < room:
            pos = ax_p.get_position()
            shift = min(room - labels_x0, pos.width - 0.12)
            ax_p.set_position([pos.x0 + shift, pos.y0, pos.width - shift, pos.height])
        self.prob_text = anim(ax_p.text(0, 0, "", fontsize=9, va="center", ha="left", color=NEUTRAL_TEXT))

        # Certainty over all ticks, the current tick and the most certain one marked.
        ax_c = fig.add_subplot(outer[1])
        ax_c.plot(ticks, self.certainties, color=CERTAINTY_COLOUR, linewidth=2, zorder=2)
        if self.target is not None:
            right = self.predicted == self.target
            ax_c.scatter(ticks[right], self.certainties[right], s=16, color=TARGET_COLOUR, zorder=3,
                         label="correct")
            ax_c.scatter(ticks[~right], self.certainties[~right], s=16, color=WRONG_COLOUR, zorder=3,
                         label="wrong")
        mc = self.most_certain
        ax_c.scatter([mc + 1], [self.certainties[mc]], s=170, marker="*", color=MOST_CERTAIN_COLOUR,
                     edgecolor="#7a4a00", linewidth=0.6, zorder=4, label=f"most certain (tick {mc + 1})")
        ax_c.set_xlim(0.5, T + 0.5)
        ax_c.set_ylim(-0.03, 1.1)
        ax_c.set_yticks([0, 0.5, 1])
        ax_c.set_xticks(_tick_positions(T))
        ax_c.tick_params(labelsize=9, length=2)
        ax_c.set_ylabel("certainty", fontsize=10)
        ax_c.set_xlabel("tick", fontsize=10, labelpad=1)
        ax_c.grid(color="#ececec", linewidth=0.8)
        ax_c.set_axisbelow(True)
        for side in ("top", "right"):
            ax_c.spines[side].set_visible(False)
        ax_c.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=9, ncol=3, frameon=False,
                    borderpad=0.1, handletextpad=0.3, columnspacing=1.2, scatterpoints=1)
        ax_c.set_title("Certainty (1 - normalised entropy)", fontsize=12, loc="left")
        self.c_cursor = anim(ax_c.axvline(1, color=CURSOR_COLOUR, linewidth=1.2, alpha=0.6, zorder=1))
        (self.c_dot,) = ax_c.plot([1], [self.certainties[0]], "o", markersize=7, markerfacecolor="white",
                                  markeredgecolor=CERTAINTY_COLOUR, markeredgewidth=2, zorder=5)
        anim(self.c_dot)

        # Neuron traces: post-activations solid (one colour), pre-activations dashed grey on a twin y-axis,
        # each with a cursor at the current tick and its neuron index left of the panel.
        n = post.shape[1]
        cols = min(4, n)
        rows = math.ceil(n / cols)
        grid = outer[2].subgridspec(rows, cols, hspace=0.12, wspace=0.12)
        self.trace_cursors, self.trace_dots = [], []
        self._post = post
        for i in range(n):
            ax = fig.add_subplot(grid[i // cols, i % cols])
            ax_pre = ax.twinx()
            ax_pre.plot(ticks, pre[:, i], color=PRE_COLOUR, linestyle="--", linewidth=1, alpha=0.8)
            colour = POST_COLOUR
            ax.plot(ticks, post[:, i], color=colour, linewidth=1.8, marker="." if T == 1 else None)
            ax.set_zorder(ax_pre.get_zorder() + 1)  # post trace above the dashed pre trace
            ax.patch.set_visible(False)
            _bare_trace_axes(ax_pre, pre[:, i])
            cursor, dot = _trace_panel(ax, post[:, i], i, colour)
            self.trace_cursors.append(anim(cursor))
            self.trace_dots.append(anim(dot))
        title_y = outer[2].get_position(fig).y1 + 0.008
        fig.text(0.035, title_y, "Neuron traces", fontsize=12, va="bottom")
        fig.text(0.965, title_y, "solid: post-activation    dashed: pre-activation (own scale)    "
                 "#: neuron index", fontsize=9, ha="right", va="bottom", color="#555555")

        self._animated = animated
        self._background = None

    # ------------------------------------------------------------------ per frame

    def update(self, t: int) -> None:
        """Point every changing artist at tick t (0-based)."""
        T = self.T
        if not 0 <= t < T:
            raise IndexError(f"tick {t} out of range for {T} ticks")
        self.tick_text.set_text(f"tick {t + 1}/{T}")
        p = self.probs[:, t]
        pred = int(self.predicted[t])
        name = self.class_names[pred]
        if self.target is None:
            self.pred_text.set_text(f"prediction: {name} (p = {p[pred]:.2f})")
            self.pred_text.set_color(NEUTRAL_TEXT)
        elif pred == self.target:
            self.pred_text.set_text(f"prediction: {name} (p = {p[pred]:.2f})  \u2713 correct")
            self.pred_text.set_color(TARGET_COLOUR)
        else:
            self.pred_text.set_text(f"prediction: {name} (p = {p[pred]:.2f})  \u2717 wrong, "
                                    f"target {self.class_names[self.target]}")
            self.pred_text.set_color(WRONG_COLOUR)

        att = self.attention[t]
        if self.attention_scale == "tick":
            lo, hi = float(np.nanmin(att)), float(np.nanmax(att))
        else:
            lo, hi = self._att_fixed
        self.att_image.set_data(att)
        self.att_image.set_clim(lo, hi if hi > lo else lo + 1e-12)
        self.cb_lo.set_text(f"{lo:.3f}")
        self.cb_hi.set_text(f"{hi:.3f}")

        for k, bar in enumerate(self.bars):
            bar.set_width(p[k])
            if k == self.target:
                bar.set_facecolor(TARGET_COLOUR)
            elif k == pred and self.target is not None:
                bar.set_facecolor(WRONG_COLOUR)
            else:
                bar.set_facecolor(BAR_COLOUR)
        self.prob_text.set_text(f"{p[pred]:.2f}")
        self.prob_text.set_position((min(p[pred], 0.84) + 0.02, pred))

        x = t + 1
        self.c_cursor.set_xdata([x, x])
        self.c_dot.set_data([x], [self.certainties[t]])
        for i, (cursor, dot) in enumerate(zip(self.trace_cursors, self.trace_dots, strict=True)):
            cursor.set_xdata([x, x])
            dot.set_data([x], [self._post[t, i]])

    def bar_values(self) -> np.ndarray:
        """The plotted class probabilities (bar lengths) of the last update."""
        return np.array([bar.get_width() for bar in self.bars])

    def render(self, t: int) -> np.ndarray:
        """Tick t's frame, (height, width, 3) uint8."""
        self.update(t)
        if not self.blit:
            self.canvas.draw()
        else:
            if self._background is None:
                self.canvas.draw()  # everything static; animated artists are skipped
                self._background = self.canvas.copy_from_bbox(self.figure.bbox)
            self.canvas.restore_region(self._background)
            for artist in self._animated:
                self.figure.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


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


def thinking_frames(image: np.ndarray, predictions: np.ndarray, certainties: np.ndarray,
                    pre_activations: np.ndarray, post_activations: np.ndarray, attention: np.ndarray,
                    token_grid: tuple[int, int], target: int | None = None, n_neurons: int = 16,
                    class_names: Sequence[str] | None = None, fig_scale: float = 1.0,
                    attention_scale: str = "tick", caption: str | None = None) -> list[np.ndarray]:
    """One RGB uint8 frame per tick of one sample's thought, all the same size (900 x 1000 at scale 1).

    image (C, H, W) in [0, 1]: one channel is shown in gray, three as RGB, others as their mean.
    predictions (classes, T) logits; certainties (T,) (or the model's (2, T)); pre_activations and
    post_activations (T, D); attention (T, heads, N) (or (T, N)) with N = H' * W' tokens of `token_grid`.
    Each frame shows the input, the attention (mean over heads) stretched over it, the class
    probabilities (target green), the certainty curve with the current and the most certain tick, and
    the traces of the first `n_neurons` neurons. `attention_scale` "tick" spans the colours over each tick's
    weights, "sample" from 0 to the largest weight of all ticks (a near-uniform map then looks uniform);
    a colour bar gives the range either way. `caption`, when given, is a line under the header (say, why
    this sample was chosen).
    """
    fig = _ThinkingFigure(image, predictions, certainties, pre_activations, post_activations, attention,
                          token_grid, target=target, n_neurons=n_neurons, class_names=class_names,
                          fig_scale=fig_scale, attention_scale=attention_scale, caption=caption)
    return [fig.render(t) for t in range(fig.T)]


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
# Model and data
# ----------------------------------------------------------------------------------------------------------


def thinking_gif(model: ContinuousThoughtMachine, image: torch.Tensor | np.ndarray, target: int | None = None,
                 path: str | os.PathLike[str] | None = None, fps: float = 5,
                 class_names: Sequence[str] | None = None, n_neurons: int = 16,
                 fig_scale: float = 1.0, attention_scale: str = "tick",
                 caption: str | None = None) -> list[np.ndarray]:
    """Run `model` on one image (C, H, W) in [0, 1] and draw its thought, one frame per tick.

    The model runs in eval mode under inference_mode on its own device (its mode is restored after).
    Writes a GIF to `path` when given. Returns the frames.
    """
    import torch

    x = torch.as_tensor(image)
    if x.dim() != 3:
        raise ValueError(f"thinking_gif takes one image of shape (C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point image in [0, 1], got {x.dtype} (use image.float() / 255)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(x.unsqueeze(0).to(device=device, dtype=next(model.parameters()).dtype), track=True)
    finally:
        model.train(was_training)
    tr = out.tracking

    def np1(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    frames = thinking_frames(
        np1(x), np1(out.predictions[0]), np1(out.certainties[0, 1]), np1(tr.pre_activations[:, 0]),
        np1(tr.post_activations[:, 0]), np1(tr.attention[:, 0]), tr.token_grid, target=target,
        n_neurons=n_neurons, class_names=class_names, fig_scale=fig_scale, attention_scale=attention_scale,
        caption=caption,
    )
    if path is not None:
        save_gif(frames, path, fps=fps)
    return frames


class ThinkingPick(NamedTuple):
    """A sample chosen by `pick_thinking_example`: its index, its score and why, in words."""

    index: int
    score: float  # total variation of the class probabilities over the ticks
    reason: str


def pick_thinking_example(model: ContinuousThoughtMachine, dataset: ImageDataset, limit: int = 500,
                          batch_size: int = 250) -> ThinkingPick:
    """Among the first `limit` samples, the one on which the model most uses its ticks.

    Score: the total variation of the class probabilities across ticks, sum_t 0.5 * |p_t - p_{t-1}|_1, which
    grows with every change of prediction and of certainty. Samples answered right at their most certain
    tick are preferred (a thought that ends well); the model runs in eval mode.
    """
    import torch

    n = min(int(limit), len(dataset))
    if n < 1:
        raise ValueError("pick_thinking_example needs at least one sample")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, certainty = [], []
    try:
        with torch.inference_mode():
            for idx in torch.arange(n).split(batch_size):
                x, _ = dataset.batch(idx)
                out = model(x.to(device))
                probs.append(out.predictions.float().softmax(1).cpu().numpy())  # (b, C, T)
                certainty.append(out.certainties[:, 1].float().cpu().numpy())  # (b, T)
    finally:
        model.train(was_training)
    p, c = np.concatenate(probs), np.concatenate(certainty)
    labels = np.asarray(dataset.labels[:n].cpu())
    score = 0.5 * np.abs(np.diff(p, axis=2)).sum(axis=(1, 2))  # (n,)
    most_certain = c.argmax(axis=1)
    right = p[np.arange(n), :, most_certain].argmax(axis=1) == labels
    pool = np.flatnonzero(right) if right.any() else np.arange(n)
    i = int(pool[np.argmax(score[pool])])
    path = [int(k) for k in p[i].argmax(axis=0)]
    steps = [path[0]] + [k for a, k in zip(path, path[1:], strict=False) if k != a]
    names = getattr(dataset, "class_names", ()) or tuple(map(str, range(p.shape[1])))
    shown = "\u2192".join(names[k] for k in steps[:8]) + ("\u2026" if len(steps) > 8 else "")
    name = f"{getattr(dataset, 'split', '') or 'dataset'} image"
    reason = (f"of the first {n} {name}s, its probabilities change most over the ticks (prediction {shown}; "
              f"certainty {c[i, 0]:.2f} at tick 1, {c[i].max():.2f} at tick {int(most_certain[i]) + 1})")
    return ThinkingPick(i, float(score[i]), reason)


def select_example(dataset: ImageDataset, index: int | None = None,
                   label: int | None = None) -> tuple[int, torch.Tensor, int]:
    """Pick one sample: by `index`, else the first with `label`, else the first. Returns
    (index, image (C, H, W) float in [0, 1], target). A bad index or an absent label is a ValueError.
    """
    name = " ".join(s for s in (getattr(dataset, "name", ""), getattr(dataset, "split", "")) if s) or "dataset"
    n = len(dataset)
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"index must be an integer, got {index!r}")
        index = int(index)
        if not 0 <= index < n:
            raise ValueError(f"index {index} out of range for {name} ({n} images)")
        target = int(dataset.labels[index])
        if label is not None and target != int(label):
            raise ValueError(f"image {index} of {name} has label {target}, not {label}")
    elif label is not None:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"label must be an integer, got {label!r}")
        hits = (dataset.labels == int(label)).nonzero()
        if len(hits) == 0:
            classes = getattr(dataset, "num_classes", None)
            known = f" (labels are 0..{classes - 1})" if classes else ""
            raise ValueError(f"no image with label {label} in {name}{known}")
        index = int(hits[0])
        target = int(label)
    else:
        if n == 0:
            raise ValueError(f"{name} has no images")
        index, target = 0, int(dataset.labels[0])
    image = dataset.images[index].float() / 255.0
    return index, image, target


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
    for ax, kind, scale in ((ax_loss, "loss", 1.0), (ax_acc, "accuracy", 100.0)):
        for split, colour in (("train", TRAIN_COLOUR), ("test", TEST_COLOUR)):
            xs, ys = _series(metrics, f"{split}_{kind}")
            if xs.size == 0:
                continue
            plotted = True
            style = {"linestyle": "none", "marker": "o", "markersize": 7} if xs.size == 1 else \
                {"linewidth": 1.8, "marker": "o" if xs.size <= 25 else None, "markersize": 3.5}
            ax.plot(xs, ys * scale, color=colour, label=split, **style)
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
        T = len(full["per_tick_accuracy"])
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
