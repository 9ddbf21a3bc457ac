"""The maze task's part of the tick viewer (kind "maze"): the maze with the attention of the tick over it, and the
route the tick predicts walked from the start, its wrong moves marked. The renderer is viewer.js here.

Per sample, besides what every task has (`ctm.pictures.tracking`): "size" ([H, W]), "maze" (base64 uint8 (H, W):
0 wall, 1 floor, 2 start, 3 goal), "start" and "goal" ([row, column]), "true" (the true route's moves, 0 up 1 down
2 left 3 right), "moves" (base64 uint8 (T, L): the most likely move of every route step at every tick, 4 wait),
and per tick, as `ctm.tasks.maze.pictures.route_marks` walks that route: "drawn" (the moves drawn, up to the first
wait, a move into a wall included), "prefix" (how many are right before the first wrong one), "wall" (whether the
last drawn enters a wall) and "solved"; "right" (solved at the most certain tick: what `ctm eval` counts as
solve rate), "attention" (base64 uint8 (T, N), each tick scaled so its largest weight is 255) and
"attention_max" ((T,) the most-attended token). At the top: "token_grid" ([H', W']) and "route_length" (L).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...pictures.tracking import DEFAULT_NEURONS, DEFAULT_THRESHOLD, b64, scaled_u8, track
from .mazes import WAIT, from_input, solve
from .pictures import route_marks

if TYPE_CHECKING:
    from ...nn.model import ContinuousThoughtMachine

SCRIPT = Path(__file__).resolve().with_name("viewer.js")


def maze_codes(maze) -> np.ndarray:
    """(H, W) uint8: 0 wall, 1 floor, 2 start, 3 goal."""
    codes = maze.floor.astype(np.uint8)
    codes[maze.start] = 2
    codes[maze.goal] = 3
    return codes


def maze_viewer_data(model: ContinuousThoughtMachine, inputs: torch.Tensor, targets: torch.Tensor | None = None,
                     indices: list[int] | None = None, *, title: str = "CTM", source: str = "",
                     n_neurons: int = DEFAULT_NEURONS, threshold: float = DEFAULT_THRESHOLD,
                     batch_size: int = 50) -> dict[str, Any]:
    """What the viewer page shows for mazes `inputs` (B, 3, H, W) in [-1, 1] (as the maze data sets give them)
    whose routes are `targets` (B, L) (None: each maze's shortest route)."""
    inputs = torch.as_tensor(inputs)
    if inputs.dim() != 4 or inputs.shape[1] != 3:
        raise ValueError(f"mazes (B, 3, H, W) in [-1, 1], got shape {tuple(inputs.shape)}")
    page, tracked = track(model, inputs.float(), "maze", indices=indices, title=title, source=source,
                          threshold=threshold, n_neurons=n_neurons, batch_size=batch_size)
    B, T, LC = tracked.logits.shape
    L = LC // 5
    moves = tracked.logits.reshape(B, T, L, 5).argmax(-1).astype(np.uint8)  # (B, T, L)
    attention = tracked.attention
    attn_u8 = scaled_u8(attention)
    x = inputs.detach().cpu()
    for b, s in enumerate(page["samples"]):
        maze = from_input(x[b])
        true = solve(maze) if targets is None else [int(m) for m in targets[b].tolist() if int(m) != WAIT]
        marks = [route_marks(maze, moves[b, t], true) for t in range(T)]
        s.update({
            "size": [int(v) for v in maze.shape],
            "maze": b64(maze_codes(maze)),
            "start": list(maze.start),
            "goal": list(maze.goal),
            "true": true,
            "moves": b64(moves[b]),
            "drawn": [len(m.wrong) for m in marks],
            "prefix": [m.right for m in marks],
            "wall": [m.wall is not None for m in marks],
            "solved": [m.solved for m in marks],
            "right": marks[s["most_certain_tick"]].solved,
            "attention": b64(attn_u8[b]),
            "attention_max": attention[b].argmax(axis=1).tolist(),
        })
    page.update({"token_grid": [int(v) for v in tracked.token_grid], "route_length": int(L)})
    return page


def dataset_viewer_data(model: ContinuousThoughtMachine, data: Any, n: int, *, threshold: float) -> dict[str, Any]:
    """The page's data for the first `n` mazes of `data` (`MazeTask.viewer_data`)."""
    n = min(n, len(data))
    x, y = data.batch(torch.arange(n))
    H, W = x.shape[-2:]
    return maze_viewer_data(model, x, y, source=f"maze {data.split} mazes of {H}x{W} pixels", threshold=threshold)


def script() -> str:
    """The page's renderer of kind "maze" (viewer.js)."""
    return SCRIPT.read_text(encoding="utf-8")
