"""Watch it sort: pictures of a model emitting, tick by tick, the indices that sort N numbers.

The GIF is the thinking figure every task shares (`ctm.pictures.figures.ThinkingFigure`: the tick, the certainty
curve up to this tick, neuron traces) with the sort task's panels on top (`sort_panels`):
  * the numbers as bars (index on x, value on y): those already emitted green where they sit at their place in
    the sorted order, red where not, the one emitted at this tick outlined;
  * the output over the ticks so far: the probability of every class at every tick (rows: the indices from the
    smallest value at the bottom to the largest, then the blank on top), the emitted classes marked, so a
    right order climbs as a staircase;
  * the sorted list decoded so far (the emitted values in emitted order against the true sorted values, faint),
    whose status in the header is how many are placed right;
with the share of the order emitted and placed right drawn with the certainty.

Decoding is `ctm.tasks.sort.ctc.decode` (greedy: a tick emits its most likely class unless it is the blank or the
class emitted last), so the order at tick t is the one `ctm predict --tick t` prints.

`sort_arrays` turns one sample of a tracked forward into numpy arrays; `sort_panels` draws them;
`thinking_panels` is `SortTask.thinking_panels`, `pick_example` `SortTask.pick_example` and `save_eval_plot`
`ctm eval --plot` (the paper's wait-time figure). Matplotlib is imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ...pictures.figures import (
    BAR_COLOUR,
    CERTAINTY_COLOUR,
    CURSOR_COLOUR,
    MOST_CERTAIN_COLOUR,
    NEUTRAL_TEXT,
    NOTE_TEXT,
    TARGET_COLOUR,
    TRAIN_COLOUR,
    WRONG_COLOUR,
    Curve,
    Panel,
    TaskPanels,
    _new_figure,
    _style_axes,
    _tick_positions,
    save_figure,
)
from ..base import Example, tracked_forward

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput

__all__ = ["EmittedRaster", "NumberBars", "SortArrays", "SortedSoFar", "eval_figure", "pick_example",
           "save_eval_plot", "sort_arrays", "sort_panels", "thinking_panels"]

FRAME_SIZE_IN = (11.0, 8.4)  # inches; 1100 x 840 pixels at fig_scale 1
TARGET_FAINT = "#d9d9d9"  # the true sorted values behind the emitted ones
PAPER_CLAIM = "the paper: the CTM waits longer before an element whose value is close to the previous one"


class SortArrays(NamedTuple):
    """One sample's thought on N numbers over T ticks, as numpy arrays (K: the elements it emitted)."""

    numbers: np.ndarray  # (N,) the input
    targets: np.ndarray  # (N,) the argsort of the input: targets[r] is the index of the r-th smallest
    probabilities: np.ndarray  # (T, N + 1) every class at every tick, the blank last
    best: np.ndarray  # (T,) the most likely class at each tick
    order: np.ndarray  # (K,) the emitted indices, in order
    ticks: np.ndarray  # (K,) the tick (0-based) each was emitted at

    @property
    def right(self) -> np.ndarray:
        """(K,) whether each emitted element sits at its place in the sorted order."""
        n = len(self.targets)
        k = np.arange(len(self.order))
        return (k < n) & (self.order == self.targets[np.minimum(k, n - 1)])

    def emitted_by(self) -> np.ndarray:
        """(T,) how many elements are emitted up to and at each tick."""
        T = len(self.best)
        return np.searchsorted(self.ticks, np.arange(T), side="right")

    def right_by(self) -> np.ndarray:
        """(T,) how many elements are placed right up to and at each tick."""
        return np.concatenate([[0], np.cumsum(self.right)])[self.emitted_by()]


def sort_arrays(output: CTMOutput, inputs: Any, targets: Any, sample: int = 0) -> SortArrays:
    """The arrays the panels draw, for sample `sample` of a forward of numbers `inputs` (B, N) whose argsort
    is `targets` (B, N); predictions (B, N + 1, T)."""
    from .ctc import decode

    logits = output.predictions[sample:sample + 1].detach().float().cpu()
    d = decode(logits)
    count = int(d.count[0])
    z = logits[0].numpy().T  # (T, N + 1)
    e = np.exp(z - z.max(1, keepdims=True))
    numbers = np.asarray(inputs.detach().float().cpu() if hasattr(inputs, "detach") else inputs,
                         dtype=np.float64).reshape(-1, z.shape[1] - 1)[sample]
    targets = np.asarray(targets.cpu() if hasattr(targets, "cpu") else targets,
                         dtype=np.int64).reshape(-1, z.shape[1] - 1)[sample]
    return SortArrays(numbers, targets, e / e.sum(1, keepdims=True), d.best[0].numpy(),
                      d.order[0, :count].numpy(), d.ticks[0, :count].numpy())


# ----------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------


def _value_limits(values: np.ndarray) -> tuple[float, float]:
    """y limits for bars from 0 to each value: 0 always in, a little room above and below."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    pad = 0.08 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _axes_with_room_below(fig, area, room: float = 0.24):
    """Axes in the top of `area`, the bottom share `room` left for the line of text or legend under them."""
    inner = area.subgridspec(2, 1, height_ratios=[1.0, room], hspace=0.0)
    return fig.add_subplot(inner[0])


def _index_ticks(n: int) -> list[int]:
    """Readable x ticks for indices 0..n-1."""
    if n <= 12:
        return list(range(n))
    step = next(s for s in (2, 4, 5, 8, 10, 16, 20, 25, 50, 100, 250, 500, 1000) if n / s <= 10)
    return list(range(0, n, step))


class NumberBars(Panel):
    """The numbers as bars (index on x, value on y): grey until emitted, then green where placed right and red
    where not; the index emitted at this tick outlined, and named under the axes."""

    width = 1.0

    def __init__(self, a: SortArrays) -> None:
        N, T = len(a.numbers), len(a.best)
        self.a, self.N, self.T = a, N, T
        rank = np.empty(N, dtype=np.int64)
        rank[a.targets] = np.arange(N)
        # state[t, i]: 0 not emitted by tick t, 1 placed right, 2 emitted but not at its place
        state = np.zeros((T, N), dtype=np.int8)
        right = a.right
        for k, (i, tick) in enumerate(zip(a.order, a.ticks, strict=True)):
            state[tick:, i] = np.where(right[k] | (state[tick:, i] == 1), 1, 2)
        self.state = state
        self.now = np.full(T, -1, dtype=np.int64)  # the index emitted at tick t, -1 none
        self.now[a.ticks] = a.order
        self.rank = rank

    def setup(self, fig, area) -> None:
        from matplotlib.patches import Rectangle

        a, N = self.a, self.N
        ax = _axes_with_room_below(fig, area)
        self.bars = list(ax.bar(np.arange(N), a.numbers, width=0.8, color=BAR_COLOUR, linewidth=0))
        ax.axhline(0, color="#999999", linewidth=0.8)
        ax.set_xlim(-0.7, N - 0.3)
        ax.set_ylim(*_value_limits(a.numbers))
        ax.set_xticks(_index_ticks(N))
        ax.set_xlabel("index", fontsize=9, labelpad=1)
        ax.set_title(f"The {N} numbers", fontsize=11.5)
        _style_axes(ax)
        ax.tick_params(labelsize=8, length=2)
        self.outline = ax.add_patch(Rectangle((0, 0), 0.8, 0, fill=False, edgecolor=MOST_CERTAIN_COLOUR,
                                              linewidth=2.4, zorder=4, visible=False))
        self.text = ax.text(0.5, -0.25, "", transform=ax.transAxes, ha="center", va="top", fontsize=9,
                            color=NEUTRAL_TEXT)

    def update(self, t: int):
        colours = (BAR_COLOUR, TARGET_COLOUR, WRONG_COLOUR)
        for bar, s in zip(self.bars, self.state[t], strict=True):
            bar.set_facecolor(colours[s])
        i = int(self.now[t])
        self.outline.set_visible(i >= 0)
        if i >= 0:
            v = float(self.a.numbers[i])
            self.outline.set_bounds(i - 0.45, min(0.0, v), 0.9, abs(v))
            place = "its place" if self.state[t, i] == 1 else "not its place"
            self.text.set_text(f"tick {t + 1} emits index {i} ({v:.3g}): {place}")
        else:
            self.text.set_text(f"tick {t + 1} emits nothing (blank)" if self.a.best[t] == self.N
                               else f"tick {t + 1} repeats index {int(self.a.best[t])}: nothing new")
        return [*self.bars, self.outline, self.text]


class EmittedRaster(Panel):
    """The output over the ticks so far: every class's probability at every tick (rows: the indices from the
    smallest value at the bottom to the largest, the blank on top), emitted classes marked (green: placed right,
    red: not), a cursor at this tick."""

    width = 1.35

    def __init__(self, a: SortArrays) -> None:
        N, T = len(a.numbers), len(a.best)
        self.a, self.N, self.T = a, N, T
        rank = np.empty(N, dtype=np.int64)
        rank[a.targets] = np.arange(N)
        rows = np.concatenate([a.targets, [N]])  # row r: the class of rank r, then the blank
        self.grid = a.probabilities[:, rows].T  # (N + 1, T)
        self.row_of = np.concatenate([rank, [N]])  # class -> row
        right = a.right
        self.marks_x = a.ticks + 1
        self.marks_y = self.row_of[a.order] if len(a.order) else np.zeros(0, dtype=np.int64)
        self.marks_right = right

    def setup(self, fig, area) -> None:
        import matplotlib as mpl

        N, T = self.N, self.T
        ax = _axes_with_room_below(fig, area)
        cmap = mpl.colormaps["Blues"].with_extremes(bad="white")
        self.image = ax.imshow(np.full_like(self.grid, np.nan), cmap=cmap, vmin=0, vmax=1, origin="lower",
                               aspect="auto", interpolation="nearest", extent=(0.5, T + 0.5, -0.5, N + 0.5))
        ax.axhline(N - 0.5, color="#888888", linewidth=0.8)
        size = max(3.0, min(6.0, 150 / max(N, T)))
        (self.right_marks,) = ax.plot([], [], "o", color=TARGET_COLOUR, markersize=size, markeredgewidth=0,
                                      label="emitted: at its place")
        (self.wrong_marks,) = ax.plot([], [], "X", color=WRONG_COLOUR, markersize=size * 1.1, markeredgewidth=0,
                                      label="not")
        self.cursor = ax.axvline(1, color=CURSOR_COLOUR, linewidth=1.2, alpha=0.7)
        ax.set_xlim(0.5, T + 0.5)
        ax.set_ylim(-0.5, N + 0.5)
        ax.set_xticks(_tick_positions(T))
        if N <= 12:
            ax.set_yticks(list(range(N + 1)), [str(i) for i in self.a.targets] + ["blank"])
        else:  # too many to name: the blank only
            ax.set_yticks([N], ["blank"])
        ax.tick_params(labelsize=8, length=2)
        ax.set_xlabel("tick", fontsize=9, labelpad=1)
        ax.set_ylabel("index, smallest value lowest", fontsize=9, labelpad=1)
        ax.set_title("Output at each tick (shade: probability)", fontsize=11.5)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False,
                  handletextpad=0.2, columnspacing=1.0)

    def update(self, t: int):
        shown = np.full_like(self.grid, np.nan)
        shown[:, :t + 1] = self.grid[:, :t + 1]
        self.image.set_data(shown)
        upto = self.marks_x <= t + 1
        ok = upto & self.marks_right
        bad = upto & ~self.marks_right
        self.right_marks.set_data(self.marks_x[ok], self.marks_y[ok])
        self.wrong_marks.set_data(self.marks_x[bad], self.marks_y[bad])
        self.cursor.set_xdata([t + 1, t + 1])
        return [self.image, self.right_marks, self.wrong_marks, self.cursor]


class SortedSoFar(Panel):
    """The sorted list decoded up to this tick: the emitted values in emitted order (green: placed right, red:
    not) against the true sorted values (faint bars); its status is the count placed right."""

    width = 1.0

    def __init__(self, a: SortArrays) -> None:
        self.a, self.N, self.T = a, len(a.numbers), len(a.best)
        self.values = a.numbers[a.order] if len(a.order) else np.zeros(0)
        self.emitted = a.emitted_by()
        self.placed = a.right_by()

    def setup(self, fig, area) -> None:
        a, N = self.a, self.N
        ax = _axes_with_room_below(fig, area)
        sorted_values = a.numbers[a.targets]
        width = max(N, len(a.order))
        ax.bar(np.arange(N), sorted_values, width=0.8, color=TARGET_FAINT, linewidth=0, label="true")
        ax.axhline(0, color="#999999", linewidth=0.8)
        size = max(2.5, min(7.0, 180 / width))
        (self.path,) = ax.plot([], [], color="#888888", linewidth=0.9, zorder=2)
        (self.right_marks,) = ax.plot([], [], "o", color=TARGET_COLOUR, markersize=size, zorder=3,
                                      label="at its place")
        (self.wrong_marks,) = ax.plot([], [], "X", color=WRONG_COLOUR, markersize=size * 1.15, zorder=3,
                                      label="not")
        ax.set_xlim(-0.7, width - 0.3)
        ax.set_ylim(*_value_limits(a.numbers))
        ax.set_xticks(_index_ticks(width))
        ax.set_xlabel("place in the sorted order", fontsize=9, labelpad=1)
        ax.set_title("Sorted so far", fontsize=11.5)
        _style_axes(ax)
        ax.tick_params(labelsize=8, length=2)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False,
                  handletextpad=0.2, columnspacing=1.0)

    def update(self, t: int):
        k = int(self.emitted[t])
        x, y, right = np.arange(k), self.values[:k], self.a.right[:k]
        self.path.set_data(x, y)
        self.right_marks.set_data(x[right], y[right])
        self.wrong_marks.set_data(x[~right], y[~right])
        return [self.path, self.right_marks, self.wrong_marks]

    def status(self, t: int) -> tuple[str, str]:
        N, k, right = self.N, int(self.emitted[t]), int(self.placed[t])
        wrong = k - right
        if right == N and k == N:
            return f"{N} of {N} placed right  \u2713 sorted", TARGET_COLOUR
        more = f", {wrong} not" if wrong else ""
        return f"{right} of {N} placed right{more}", WRONG_COLOUR if wrong else NEUTRAL_TEXT


def sort_panels(a: SortArrays) -> TaskPanels:
    """The sort task's panels of one sample (`SortArrays`), with the share of the order emitted and placed
    right drawn with the certainty."""
    N, T = len(a.numbers), len(a.best)
    emitted, placed = a.emitted_by(), a.right_by()
    k, right = len(a.order), int(placed[-1])
    if right == N and k == N:
        summary = f"sorted right, the last of {N} emitted at tick {int(a.ticks[-1]) + 1} of {T}"
    else:
        summary = f"{right} of {N} placed right ({k} emitted)"
    return TaskPanels(
        [NumberBars(a), EmittedRaster(a), SortedSoFar(a)], ticks=T,
        curves=[Curve("emitted (share of N)", np.minimum(emitted / N, 1.0), TRAIN_COLOUR, ":"),
                Curve("placed right (share of N)", placed / N)],
        summary=summary, size=FRAME_SIZE_IN, row_height=3.5, gap=0.3, n_neurons=8)


def thinking_panels(output: CTMOutput, inputs: Any, targets: Any) -> TaskPanels:
    """`SortTask.thinking_panels`: the panels of sample 0 of a tracked forward `output` of numbers `inputs`
    (b, N) with targets (b, N) (their argsort)."""
    return sort_panels(sort_arrays(output, inputs, targets))


# ----------------------------------------------------------------------------------------------------------
# Which sample
# ----------------------------------------------------------------------------------------------------------


def pick_example(model: ContinuousThoughtMachine, data: Any, index: int | None = None, pool: int = 200) -> Example:
    """`SortTask.pick_example`: sample `index` (checked), else of the first `pool` test samples, one sorted
    entirely right whose waits between emissions vary most (the model takes its time where it must), else the
    one with the most elements placed right."""
    import torch

    from .ctc import decode, element_hits, sequence_hits

    if index is not None:
        if not 0 <= index < len(data):
            raise ValueError(f"index {index} out of range for sort {data.split} ({len(data)} samples)")
        return Example(int(index), "")
    n = min(pool, len(data))
    if n == 0:
        raise ValueError(f"no {data.split} samples to pick from")
    x, y = data.batch(torch.arange(n))
    predictions = tracked_forward(model, x, track=False).predictions.float().cpu()
    y = y.cpu()
    N = y.shape[1]
    d = decode(predictions, N)
    whole = sequence_hits(d.order, d.count, y)  # (n,)
    hits = element_hits(d.order, y).sum(1)  # (n,)
    where = f"of the first {n} {data.split} samples"
    if bool(whole.any()):
        waits = d.waits()[:, :N].double()
        spread = torch.where(whole, waits.std(1) if N > 1 else waits[:, 0], -1.0)
        pick = int(spread.argmax())
        w = waits[pick]
        return Example(pick, f"{where}, {int(whole.sum())} are sorted right; this one waits most unevenly "
                             f"between emissions ({int(w.min())} to {int(w.max())} ticks)")
    # none whole: the most placed right, then the fewest extra emissions
    score = hits * (d.order.shape[1] + 1) - (d.count - N).abs()
    pick = int(score.argmax())
    return Example(pick, f"{where}, none is sorted right; this one places the most right ({int(hits[pick])} of {N})")


# ----------------------------------------------------------------------------------------------------------
# ctm eval --plot
# ----------------------------------------------------------------------------------------------------------


def _get(result: Any, key: str) -> Any:
    if isinstance(result, dict):
        return result[key]
    return getattr(result, key)


def eval_figure(result: Any) -> Figure:
    """The sort evaluation (`SortResult` or its `to_dict()`): the paper's wait-time figure (mean ticks waited
    before an element against the gap from its value to the previous one in the sorted order, elements placed
    right after a right one), the share of samples emitting and the mean certainty at each tick, and the
    accuracy at each place of the sorted order."""
    bins = [float(w["gap"]) for w in _get(result, "wait_by_gap")]
    bin_width = bins[1] - bins[0] if len(bins) > 1 else 0.025  # the bins' width (`ctm.tasks.sort.task.GAP_BIN`)
    rows = [w for w in _get(result, "wait_by_gap") if w.get("n") and w.get("wait") is not None]
    emissions = np.asarray(_get(result, "per_tick_emissions"), dtype=np.float64)
    certainty = np.asarray(_get(result, "per_tick_certainty"), dtype=np.float64)
    places = np.asarray(_get(result, "per_position_accuracy"), dtype=np.float64)
    T, N, n = certainty.size, places.size, int(_get(result, "n"))
    if T == 0 or emissions.size != T:
        raise ValueError(f"per-tick lists must be non-empty and of one length, got {emissions.size} and {T}")
    fig = _new_figure((10.0, 8.0), 100)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.15, 1.0], width_ratios=[1.5, 1.0])
    ax_w = fig.add_subplot(grid[0, :])
    ax_t = fig.add_subplot(grid[1, 0])
    ax_p = fig.add_subplot(grid[1, 1])

    last_bin = max(bins, default=0.0)
    if rows:
        gaps = np.asarray([w["gap"] + bin_width / 2 for w in rows])
        waits = np.asarray([w["wait"] for w in rows], dtype=np.float64)
        counts = np.asarray([w["n"] for w in rows], dtype=np.float64)
        ax_w.plot(gaps, waits, color=TRAIN_COLOUR, linewidth=1.5, zorder=2)
        ax_w.scatter(gaps, waits, s=12 + 120 * np.sqrt(counts / counts.max()), color=TRAIN_COLOUR,
                     edgecolor="white", linewidth=0.6, zorder=3)
        ax_w.set_xlim(0, last_bin + bin_width)
        ax_w.set_ylim(0, max(1.0, float(waits.max())) * 1.3)  # room for the notes above the points
        if any(w["gap"] >= last_bin - 1e-9 for w in rows):
            ax_w.annotate(f"\u2265 {last_bin:g}", (last_bin + bin_width / 2, float(waits[-1])),
                          textcoords="offset points", xytext=(-8, 4), ha="right", fontsize=8, color=NOTE_TEXT)
        note = f"{int(counts.sum()):,} elements placed right after a right one; dot area: elements in its bin"
    else:
        ax_w.text(0.5, 0.5, "no element was placed right after a right one: no waits to show", ha="center",
                  va="center", transform=ax_w.transAxes, fontsize=10, color=NOTE_TEXT)
        ax_w.set_xlim(0, last_bin + bin_width)
        note = ""
    ax_w.set_xlabel("gap from the value to the previous one in the sorted order", fontsize=10)
    ax_w.set_ylabel("mean ticks waited before it", fontsize=10)
    ax_w.set_title(f"Waiting before an element ({n:,} samples)", fontsize=12)
    ax_w.text(0.01, 0.97, PAPER_CLAIM, transform=ax_w.transAxes, ha="left", va="top", fontsize=8.5,
              color=NOTE_TEXT, style="italic")
    if note:
        ax_w.text(0.01, 0.89, note, transform=ax_w.transAxes, ha="left", va="top", fontsize=8.5, color=NOTE_TEXT)
    _style_axes(ax_w)

    ticks = np.arange(1, T + 1)
    marker = {"marker": "o", "markersize": 3} if T <= 40 else {}
    ax_t.plot(ticks, emissions, color=TRAIN_COLOUR, linewidth=1.8, label="samples emitting", **marker)
    ax_t.plot(ticks, certainty, color=CERTAINTY_COLOUR, linewidth=1.8, label="mean certainty", **marker)
    ax_t.set_xlim(0.5, T + 0.5)
    ax_t.set_ylim(-0.03, 1.05)
    ax_t.set_xticks(_tick_positions(T))
    ax_t.set_xlabel("tick", fontsize=10)
    ax_t.set_title("Emitting and certainty per tick", fontsize=12)
    ax_t.legend(fontsize=8.5, frameon=True, framealpha=0.85, loc="best")
    _style_axes(ax_t)

    places_x = np.arange(1, N + 1)
    ax_p.bar(places_x, places * 100, width=0.8, color=TARGET_COLOUR, linewidth=0)
    ax_p.set_xlim(0.4, N + 0.6)
    ax_p.set_ylim(0, 105)
    ax_p.set_xticks([p + 1 for p in _index_ticks(N)] if N > 12 else list(places_x))
    ax_p.set_xlabel("place in the sorted order (1: smallest)", fontsize=10)
    ax_p.set_ylabel("right (%)", fontsize=10)
    acc, seq = float(_get(result, "accuracy")), float(_get(result, "sequence_accuracy"))
    ax_p.set_title(f"Right per place: {acc * 100:.1f}% (whole: {seq * 100:.1f}%)", fontsize=11)
    _style_axes(ax_p)
    fig.tight_layout()
    return fig


def save_eval_plot(result: Any, path: str | os.PathLike[str]) -> Path:
    """Write `eval_figure(result)` as a PNG, atomically; returns the path (`ctm eval --plot` on a sort run)."""
    return save_figure(eval_figure(result), path)
