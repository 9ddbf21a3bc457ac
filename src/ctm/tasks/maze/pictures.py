"""Watch it solve a maze: the thinking GIF of one maze, tick by tick, `ctm eval --plot` and which maze to show.

The GIF is the thinking figure every task shares (`ctm.pictures.figures.ThinkingFigure`: the tick, the certainty
curve up to this tick, neuron traces) with the maze task's panels on top (`maze_panels`):
  * the maze (walls black, floor white, start red, goal green) with its true route faint;
  * the attention at this tick over the maze: the weights over the backbone's feature grid stretched over the
    picture, as the image task draws them (`ctm.tasks.image.pictures.AttentionPanel`);
  * the route the tick predicts, walked from the start up to its first wait: blue while it follows the true
    route, orange from the first move that leaves it (or enters a wall, crossed), the header saying whether it
    solves the maze;
with the share of the true route predicted right (its correct prefix) drawn with the certainty, and each tick
marked solved (green) or not (red).

`route_marks` (a pure helper: which moves of a predicted route are wrong) and `maze_arrays` (one sample of a
tracked forward as numpy arrays) are what the panels draw; `thinking_panels` is `MazeTask.thinking_panels`,
`pick_example` `MazeTask.pick_example` and `save_eval_plot` `ctm eval --plot`. Matplotlib is imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
    _new_figure,
    _style_axes,
    _tick_positions,
    save_figure,
)
from ..base import Example, tracked_forward
from .mazes import MOVES, WAIT, Maze, from_input, render, solve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput

__all__ = ["MazeArrays", "MazePanel", "RouteMarks", "RoutePanel", "eval_figure", "maze_arrays", "maze_panels",
           "pick_example", "route_marks", "save_eval_plot", "thinking_panels"]

FRAME_SIZE_IN = (11.0, 8.4)  # inches; 1100 x 840 pixels at fig_scale 1
ROUTE_COLOUR = "#1f5fbf"  # a move on the true route
OFF_ROUTE_COLOUR = "#ff7f0e"  # a wrong move (not red: the start is red)
TRUE_ROUTE_FAINT = "#9ecae1"  # the true route under the maze's picture


class RouteMarks(NamedTuple):
    """A predicted route walked from the start (`route_marks`): `cells` the pixels it passes, the start first and
    one per move drawn (a move into a wall included: its wall pixel); `wrong` one per move drawn, whether it is
    wrong (it enters a wall, or it or a move before it left the true route); `wall` the index of the move that
    entered a wall (the last drawn), else None; `solved` whether it ends on the goal without entering a wall (as
    `mazes.walk` and evaluation count it; a detour that still ends there solves the maze)."""

    cells: list[tuple[int, int]]
    wrong: list[bool]
    wall: int | None
    solved: bool

    @property
    def right(self) -> int:
        """How many moves are right before the first wrong one (the correct prefix)."""
        return next((i for i, w in enumerate(self.wrong) if w), len(self.wrong))


def route_marks(maze: Maze, moves: Sequence[int], true_moves: Sequence[int] | None = None) -> RouteMarks:
    """Walk `moves` from the maze's start up to the first wait, marking each wrong move: one that enters a wall
    or leaves the picture (the walk stops there; a move off the picture is not drawn), and every move from the
    first that differs from `true_moves` (the true route, its waits ignored; default: `solve(maze)`), so a route
    that overshoots the goal is wrong from its first move past it."""
    if true_moves is None:
        true_moves = solve(maze)
    true = [int(m) for m in true_moves if int(m) != WAIT]
    (h, w), floor = maze.shape, maze.floor
    cells, wrong = [maze.start], []
    left, wall = False, None
    for i, move in enumerate(int(m) for m in moves):
        if move == WAIT:
            break
        dy, dx = MOVES[move]
        y, x = cells[-1][0] + dy, cells[-1][1] + dx
        left = left or i >= len(true) or move != true[i]
        if not (0 <= y < h and 0 <= x < w):
            break  # nowhere to draw it: the walk ends here
        if not floor[y, x]:
            cells.append((y, x))
            wrong.append(True)
            wall = i
            break
        cells.append((y, x))
        wrong.append(left)
    solved = wall is None and cells[-1] == maze.goal  # as evaluation counts it (`mazes.walk`)
    return RouteMarks(cells, wrong, wall, solved)


class MazeArrays(NamedTuple):
    """One maze's thought over T ticks (L route steps)."""

    maze: Maze
    true_moves: list[int]  # the true route (no waits)
    moves: np.ndarray  # (T, L) the most likely move of every step at every tick
    attention: np.ndarray  # (T, heads, N) over the token grid
    token_grid: tuple[int, int]
    marks: list[RouteMarks]  # (T,) the route of each tick walked

    @property
    def ticks(self) -> int:
        return len(self.moves)

    def right_share(self) -> np.ndarray:
        """(T,) the share of the true route each tick predicts right (its correct prefix, at most 1)."""
        n = max(len(self.true_moves), 1)
        return np.array([min(m.right, n) / n for m in self.marks])

    def solved(self) -> np.ndarray:
        return np.array([m.solved for m in self.marks], dtype=bool)


def maze_arrays(output: CTMOutput, inputs: Any, targets: Any = None, sample: int = 0) -> MazeArrays:
    """The arrays the panels draw, for sample `sample` of a tracked forward `output` of maze inputs (B, 3, H, W)
    whose routes are `targets` (B, L) (None: the maze's shortest route)."""
    if output.tracking is None:
        raise ValueError("the output has no tracking: run the model with track=True")
    maze = from_input(inputs[sample])
    predictions = output.predictions[sample].detach().float().cpu()  # (L x 5, T)
    LC, T = predictions.shape
    moves = predictions.reshape(LC // 5, 5, T).argmax(1).T.numpy()  # (T, L)
    if targets is None:
        true_moves = solve(maze)
    else:
        true_moves = [int(m) for m in targets[sample].tolist() if int(m) != WAIT]
    tr = output.tracking
    attention = tr.attention[:, sample].detach().float().cpu().numpy()  # (T, heads, N)
    marks = [route_marks(maze, moves[t], true_moves) for t in range(T)]
    return MazeArrays(maze, true_moves, moves, attention, tuple(int(v) for v in tr.token_grid), marks)


# ----------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------


def maze_image(maze: Maze) -> np.ndarray:
    """The maze's picture (3, H, W) in [0, 1] (walls black, floor white, start red, goal green)."""
    return render(maze).astype(np.float64).transpose(2, 0, 1) / 255.0


def _maze_axes(fig, area, maze: Maze, title: str):
    ax = fig.add_subplot(area)
    h, w = maze.shape
    ax.imshow(render(maze), extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title, fontsize=12)
    ax.set_axis_off()
    ax.set_anchor("N")
    return ax


def _line_width(maze: Maze) -> float:
    return max(1.0, min(5.0, 90.0 / max(maze.shape)))


class MazePanel(Panel):
    """The maze, the same every tick, its true route faint."""

    def __init__(self, maze: Maze, true_moves: Sequence[int]) -> None:
        self.maze, self.true_moves = maze, list(true_moves)

    def setup(self, fig, area) -> None:
        from .mazes import cells_visited

        ax = _maze_axes(fig, area, self.maze, "The maze")
        cells = np.array(cells_visited(self.maze.start, self.true_moves))
        ax.plot(cells[:, 1], cells[:, 0], color=TRUE_ROUTE_FAINT, linewidth=_line_width(self.maze), zorder=2,
                solid_capstyle="round")
        ax.text(0.5, -0.04, "red: start, green: goal; faint blue: the true route", transform=ax.transAxes,
                ha="center", va="top", fontsize=8, color=NOTE_TEXT)


class RoutePanel(Panel):
    """The route the tick predicts, walked from the start: blue while it follows the true route, orange from the
    first move that leaves it; a move into a wall crossed. Its status says whether it solves the maze."""

    def __init__(self, a: MazeArrays) -> None:
        self.a = a

    def setup(self, fig, area) -> None:
        from matplotlib.collections import LineCollection

        maze = self.a.maze
        ax = _maze_axes(fig, area, maze, "Route at this tick")
        self.lines = LineCollection([], linewidths=_line_width(maze), capstyle="round", zorder=3)
        ax.add_collection(self.lines)
        size = max(6.0, min(16.0, 200.0 / max(maze.shape)))
        (self.wall_mark,) = ax.plot([], [], "x", color=OFF_ROUTE_COLOUR, markersize=size, markeredgewidth=2.5, zorder=4)
        (self.end_mark,) = ax.plot([], [], "o", markerfacecolor="none", markeredgecolor=NEUTRAL_TEXT,
                                   markersize=size * 0.8, markeredgewidth=1.5, zorder=4)
        self.text = ax.text(0.5, -0.04, "", transform=ax.transAxes, ha="center", va="top", fontsize=9,
                            color=NEUTRAL_TEXT)

    def update(self, t: int):
        m = self.a.marks[t]
        cells = [(x, y) for y, x in m.cells]
        self.lines.set_segments([[cells[i], cells[i + 1]] for i in range(len(cells) - 1)])
        self.lines.set_color([OFF_ROUTE_COLOUR if w else ROUTE_COLOUR for w in m.wrong])
        if m.wall is not None:
            self.wall_mark.set_data([cells[-1][0]], [cells[-1][1]])
        else:
            self.wall_mark.set_data([], [])
        end = cells[-2] if m.wall is not None else cells[-1]
        self.end_mark.set_data([end[0]], [end[1]])
        n = len(m.wrong)
        into = "; the last into a wall" if m.wall is not None else ""
        self.text.set_text(f"{n} moves, the first {m.right} right{into}" if any(m.wrong)
                           else f"{n} moves, all on the true route")
        return [self.lines, self.wall_mark, self.end_mark, self.text]

    def status(self, t: int) -> tuple[str, str]:
        m, n = self.a.marks[t], len(self.a.true_moves)
        if m.solved:
            return f"solved: {n} moves  \u2713", TARGET_COLOUR
        colour = WRONG_COLOUR if any(m.wrong) else NEUTRAL_TEXT
        return f"{min(m.right, n)} of {n} moves right  \u2717 not solved", colour


class _RoomBelow(Panel):
    """`panel` drawn in the top of its area, the bottom share `room` left for the lines of text under it."""

    def __init__(self, panel: Panel, room: float = 0.2) -> None:
        self.panel, self.room, self.width = panel, room, panel.width

    def setup(self, fig, area) -> None:
        self.panel.setup(fig, area.subgridspec(2, 1, height_ratios=[1.0, self.room], hspace=0.0)[0])

    def update(self, t: int):
        return self.panel.update(t)

    def status(self, t: int):
        return self.panel.status(t)


def maze_panels(a: MazeArrays) -> TaskPanels:
    """The maze task's panels of one maze (`MazeArrays`): the maze, the attention over it, the route of the tick;
    the share of the route right with the certainty, and each tick marked solved or not."""
    from ..image.pictures import AttentionPanel

    solved = a.solved()
    n = len(a.true_moves)
    if solved.any():
        summary = f"solved ({n} moves) from tick {int(np.argmax(solved)) + 1} of {a.ticks}"
    else:
        summary = f"not solved, at best {max(min(m.right, n) for m in a.marks)} of {n} moves right"
    panels = [MazePanel(a.maze, a.true_moves), AttentionPanel(maze_image(a.maze), a.attention, a.token_grid),
              RoutePanel(a)]
    return TaskPanels(
        [_RoomBelow(p) for p in panels],
        ticks=a.ticks, correct=solved, curves=[Curve("route right (share of its moves)", a.right_share())],
        summary=summary, size=FRAME_SIZE_IN, row_height=3.6, gap=0.25, n_neurons=8)


def thinking_panels(output: CTMOutput, inputs: Any, targets: Any = None) -> TaskPanels:
    """`MazeTask.thinking_panels`: the panels of sample 0 of a tracked forward `output` of mazes `inputs`
    (b, 3, H, W) whose routes are `targets` (b, L)."""
    return maze_panels(maze_arrays(output, inputs, targets))


# ----------------------------------------------------------------------------------------------------------
# Which maze
# ----------------------------------------------------------------------------------------------------------


def pick_example(model: ContinuousThoughtMachine, data: Any, index: int | None = None, pool: int = 200) -> Example:
    """`MazeTask.pick_example`: maze `index` (checked), else of the first `pool` test mazes the one solved (at its
    most certain tick) with the longest route, else the one with the longest correct prefix (the longer route
    on a tie)."""
    import torch

    from .mazes import maze_tensors, walk_batch
    from .solving import chosen_moves

    if index is not None:
        if not 0 <= index < len(data):
            raise ValueError(f"index {index} out of range for maze {data.split} ({len(data)} mazes)")
        return Example(int(index), "")
    n = min(pool, len(data))
    if n == 0:
        raise ValueError(f"no {data.split} mazes to pick from")
    x, y = data.batch(torch.arange(n))
    output = tracked_forward(model, x, track=False)
    moves = chosen_moves(output).cpu()
    x, y = x.cpu(), y.cpu()
    floor, start, goal = maze_tensors(x)
    solved = walk_batch(floor, start, goal, moves).solved
    length = (y != WAIT).sum(1)
    prefix = (moves == y).long().cumprod(1).sum(1).clamp(max=length)
    where = f"of the first {n} {data.split} mazes"
    if bool(solved.any()):
        pick = int(torch.where(solved, length, -1).argmax())
        return Example(pick, f"{where}, {int(solved.sum())} are solved; this one has the longest route "
                             f"({int(length[pick])} moves)")
    score = prefix * (int(length.max()) + 1) + length
    pick = int(score.argmax())
    return Example(pick, f"{where}, none is solved; this one gets the most of its route right ({int(prefix[pick])} "
                         f"of {int(length[pick])} moves)")


# ----------------------------------------------------------------------------------------------------------
# ctm eval --plot
# ----------------------------------------------------------------------------------------------------------


def _get(result: Any, key: str) -> Any:
    if isinstance(result, dict):
        return result[key]
    return getattr(result, key)


def eval_figure(result: Any) -> Figure:
    """The maze evaluation (`MazeResult` or its `to_dict()`): route-step accuracy and solve rate at each tick,
    with the figures read at each maze's most certain tick as levels (top), and the mean certainty (bottom)."""
    acc = np.asarray(_get(result, "per_tick_accuracy"), dtype=np.float64) * 100
    solve_rate = np.asarray(_get(result, "per_tick_solve_rate"), dtype=np.float64) * 100
    certainty = np.asarray(_get(result, "per_tick_certainty"), dtype=np.float64)
    T, n = certainty.size, int(_get(result, "n"))
    if T == 0 or acc.size != T or solve_rate.size != T:
        raise ValueError(f"per-tick lists must be non-empty and of one length, got {acc.size}, {solve_rate.size} "
                         f"and {T}")
    ticks = np.arange(1, T + 1)
    marker = {"marker": "o", "markersize": 3.5} if T <= 40 else {}
    fig = _new_figure((9.0, 7.0), 100)
    ax_a, ax_c = fig.subplots(2, 1, sharex=True, height_ratios=[1.4, 1.0])
    ax_a.plot(ticks, acc, color=TRAIN_COLOUR, linewidth=2, label="route steps right at each tick", **marker)
    ax_a.plot(ticks, solve_rate, color=TARGET_COLOUR, linewidth=2, label="mazes solved at each tick", **marker)
    for key, colour, label in (("accuracy", TRAIN_COLOUR, "steps right"), ("solve_rate", TARGET_COLOUR, "solved")):
        level = float(_get(result, key)) * 100
        ax_a.axhline(level, color=colour, linestyle="--", linewidth=1.1,
                     label=f"{label} at each maze's most certain tick: {level:.1f}%")
    reapply = int(result.get("reapply", 1) if isinstance(result, dict) else getattr(result, "reapply", 1))
    if reapply > 1:
        level = float(_get(result, "reapplied_solve_rate")) * 100
        ax_a.axhline(level, color="#8c564b", linestyle=":", linewidth=1.3,
                     label=f"solved re-applying up to {reapply} times: {level:.1f}%")
    ax_a.set_ylim(-3, 105)
    ax_a.set_ylabel("%", fontsize=10)
    ax_a.set_title(f"Route steps right and mazes solved per tick ({n:,} mazes)", fontsize=12)
    ax_a.legend(fontsize=8.5, loc="best", frameon=True, framealpha=0.85)
    _style_axes(ax_a)
    ax_c.plot(ticks, certainty, color=CERTAINTY_COLOUR, linewidth=2, **marker)
    ax_c.set_ylim(-0.03, 1.05)
    ax_c.set_ylabel("mean certainty", fontsize=10)
    ax_c.set_xlabel("tick", fontsize=10)
    ax_c.set_title("Mean certainty per tick (1 - normalised entropy)", fontsize=12)
    ax_c.set_xlim(0.5, T + 0.5)
    ax_c.set_xticks(_tick_positions(T))
    _style_axes(ax_c)
    fig.tight_layout()
    return fig


def save_eval_plot(result: Any, path: str | os.PathLike[str]) -> Path:
    """Write `eval_figure(result)` as a PNG, atomically; returns the path (`ctm eval --plot` on a maze run)."""
    return save_figure(eval_figure(result), path)
