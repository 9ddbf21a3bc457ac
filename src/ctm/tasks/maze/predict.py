"""`ctm predict` on a maze run: official-format maze pictures in, the route the model walks out.

A picture is read as the official format says (walls black, the start red, the goal green; `read_maze`): with a
blue route from start to goal (`mazes.read_route`, the route then recorded as the picture's) or without one, the
floor being every pixel that is not black. The model is applied with re-application (`task.reapply`, up to the
task's `reapply` times): it walks the most certain tick's route from the start, and where that does not end on
the goal but got somewhere, it is applied again from there; so mazes larger than the run was trained on, whose
routes are longer than its output, are solved too. Pictures of different sizes go through the model in groups
of one size.

Each maze's answer (`answer`): the moves walked over all applications (0 up, 1 down, 2 left, 3 right), the
pixels visited from the start, whether the walk ends on the goal, the applications made; `picture` is the maze
with that route drawn in blue, in the official format (what `ctm predict --out` writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .mazes import GOAL, PATH, START, WALL, Maze, MazeError, cells_visited, find_pixel, read_route, render, to_input

#: a move's letter in the printed line
LETTERS = "UDLR"


def read_maze(image: np.ndarray) -> tuple[Maze, list[int] | None]:
    """The maze of an official-format picture (H, W, 3) uint8 and the route drawn in it (None where it has no
    blue pixel): start and goal from the one red and the one green pixel, the floor every pixel that is not
    black. MazeError when there is no start or goal, more than one, or a blue route that does not lead from one
    to the other."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MazeError(f"expected an RGB picture (H, W, 3) of bytes, got {image.dtype} {tuple(image.shape)}")
    if min(image.shape[:2]) < 3:
        raise MazeError(f"{image.shape[1]}x{image.shape[0]} pixels is too small for a maze (3x3 at least)")
    if (image == PATH).all(axis=2).any():
        try:
            return read_route(image)
        except MazeError as e:
            raise MazeError(f"{e}; remove the blue pixels to predict on the maze alone") from None
    start, goal = find_pixel(image, START, "start"), find_pixel(image, GOAL, "goal")
    return Maze(~(image == WALL).all(axis=2), start, goal), None


def read_files(paths: Sequence[str]) -> list[tuple[Maze, list[int] | None]]:
    """Each file's maze and the route drawn in it; a ValueError names the file, in one line."""
    from .data import read_picture

    out = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise ValueError(f"{name}: no such file")
        if not path.is_file():
            raise ValueError(f"{name}: not a regular file; give maze pictures (.png)")
        try:
            out.append(read_maze(read_picture(path)))
        except MazeError as e:
            text = str(e)
            raise ValueError(text if text.startswith(str(path)) else f"{name}: {text}") from None
    return out


def parse_files(paths: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """`MazeTask.parse_inputs`: the pictures as one batch of model inputs (B, 3, H, W), named by their paths
    (ValueError when they differ in size; `solve_files` takes any sizes)."""
    mazes = read_files(paths)
    shapes = {m.shape for m, _ in mazes}
    if len(shapes) > 1:
        raise ValueError(f"the mazes differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(shapes))}); one batch "
                         f"holds one size")
    return torch.stack([to_input(m) for m, _ in mazes]), list(paths)


def solve_mazes(model: Any, mazes: Sequence[Maze], times: int) -> list[dict[str, Any]]:
    """Apply `model` to each maze with re-application (up to `times` applications, `task.reapply`), the mazes of
    one size in one batch; each maze's answer: moves, cells, solved, applications."""
    from ...training.batches import eval_mode
    from .solving import reapply

    answers: list[dict[str, Any] | None] = [None] * len(mazes)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, maze in enumerate(mazes):
        groups.setdefault(maze.shape, []).append(i)
    parameter = next(model.parameters())
    for rows in groups.values():
        x = torch.stack([to_input(mazes[i]) for i in rows]).to(device=parameter.device, dtype=parameter.dtype)
        with eval_mode(model), torch.inference_mode():
            solved, applications, routes = reapply(model, x, times)
        for k, i in enumerate(rows):
            moves = [int(m) for part in routes[k] for m in part.tolist()]
            answers[i] = {"moves": moves, "solved": bool(solved[k]), "applications": int(applications[k]),
                          "cells": [list(c) for c in cells_visited(mazes[i].start, moves)]}
    return answers  # type: ignore[return-value]


def record(name: str, maze: Maze, given: list[int] | None, a: dict[str, Any]) -> dict[str, Any]:
    """What `ctm predict --json` prints for one maze."""
    out = {"file": name, "size": list(maze.shape), "start": list(maze.start), "goal": list(maze.goal),
           "moves": a["moves"], "steps": len(a["moves"]), "solved": a["solved"],
           "applications": a["applications"], "cells": a["cells"]}
    if given is not None:
        out["picture_route"] = given
        out["matches_picture_route"] = a["moves"] == given
    return out


def line(name: str, maze: Maze, given: list[int] | None, a: dict[str, Any]) -> str:
    """The line `ctm predict` prints for one maze."""
    moves, n = a["moves"], a["applications"]
    state = "solved" if a["solved"] else "not solved"
    where = "" if a["solved"] else f", stops at {tuple(a['cells'][-1])}, the goal is at {maze.goal}"
    applied = f"{n} application{'s' if n != 1 else ''}"
    route = "".join(LETTERS[m] for m in moves) or "(no move)"
    cells = " ".join(f"({y},{x})" for y, x in a["cells"])
    same = "" if given is None else ("; the picture's route" if moves == given else "; not the picture's route")
    return (f"{name}: {state} in {len(moves)} moves, {applied} ({maze.shape[0]}x{maze.shape[1]} maze{where}{same}): "
            f"{route}; cells {cells}")


def picture(maze: Maze, a: dict[str, Any]) -> np.ndarray:
    """The maze with the walked route drawn in blue, in the official format (H, W, 3) uint8."""
    return render(maze, a["moves"])
