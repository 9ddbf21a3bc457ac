"""Mazes in the official CTM format: generated, read from images, walked.

A maze of n x n cells is a (2n+1) x (2n+1) picture, one pixel per cell or wall: walls black, floor white, the
start red, the goal green, and (in the official data sets' images) the route from red to green blue. Cell (i, j)
is pixel (2i+1, 2j+1); the pixel between two neighbouring cells is floor where they are joined.

A route is a sequence of moves pixel by pixel (`MOVES`: 0 up, 1 down, 2 left, 3 right; 4 is "wait", the padding
after the goal). The model sees the picture with the route whitened, as (3, H, W) floats in [-1, 1]
(`to_input`), and its target is the route's moves padded with waits to the route length L (`pad_route`).

Everything here works on numpy arrays or plain tensors and knows nothing of models: generation (`generate`),
rendering (`render`), reading the official format (`read_route`), walking a predicted route (`walk`) and the
rotations and flips of the official augmentation with their moves remapped (`transform`).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: move index -> (dy, dx); index 4 (WAIT) stays
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))
MOVE_NAMES = ("up", "down", "left", "right", "wait")
WAIT = 4
#: the colours of the official format, as RGB bytes
WALL, FLOOR, START, GOAL, PATH = (0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)


class MazeError(ValueError):
    """A maze picture that is not in the official format (no start, no goal, a route that does not connect)."""


@dataclass(frozen=True)
class Maze:
    """A maze: `floor` (H, W) bool (True where one may walk), `start` and `goal` as (row, column) pixels."""

    floor: np.ndarray
    start: tuple[int, int]
    goal: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.floor.shape  # type: ignore[return-value]


def route_length_for(cells: int) -> int:
    """The longest route (in moves) a perfect maze of cells x cells can have: every cell once, 2 moves each."""
    return 2 * (cells * cells - 1)


def generate(cells: int, seed: int) -> Maze:
    """A perfect maze (exactly one route between any two cells) of cells x cells by randomised depth-first
    search, with start and goal two different random cells; the same seed gives the same maze."""
    if cells < 2:
        raise ValueError(f"a maze needs at least 2 x 2 cells, got {cells}")
    rng = random.Random(seed)
    size = 2 * cells + 1
    floor = np.zeros((size, size), dtype=bool)
    first = (rng.randrange(cells), rng.randrange(cells))
    seen = np.zeros((cells, cells), dtype=bool)
    seen[first] = True
    floor[2 * first[0] + 1, 2 * first[1] + 1] = True
    stack = [first]
    while stack:
        i, j = stack[-1]
        nexts = [(i + di, j + dj) for di, dj in MOVES
                 if 0 <= i + di < cells and 0 <= j + dj < cells and not seen[i + di, j + dj]]
        if not nexts:
            stack.pop()
            continue
        ni, nj = nexts[rng.randrange(len(nexts))]
        seen[ni, nj] = True
        floor[2 * ni + 1, 2 * nj + 1] = True
        floor[i + ni + 1, j + nj + 1] = True  # the wall pixel between (i, j) and (ni, nj)
        stack.append((ni, nj))
    a, b = rng.sample(range(cells * cells), 2)
    start, goal = (2 * (a // cells) + 1, 2 * (a % cells) + 1), (2 * (b // cells) + 1, 2 * (b % cells) + 1)
    return Maze(floor, start, goal)


def solve(maze: Maze) -> list[int]:
    """The shortest route from start to goal through floor (breadth-first search), as moves; MazeError when the
    goal cannot be reached."""
    floor, (h, w) = maze.floor, maze.shape
    came: dict[tuple[int, int], tuple[tuple[int, int], int]] = {}
    queue = deque([maze.start])
    seen = {maze.start}
    while queue:
        y, x = queue.popleft()
        if (y, x) == maze.goal:
            break
        for move, (dy, dx) in enumerate(MOVES):
            p = (y + dy, x + dx)
            if 0 <= p[0] < h and 0 <= p[1] < w and floor[p] and p not in seen:
                seen.add(p)
                came[p] = ((y, x), move)
                queue.append(p)
    if maze.goal not in seen:
        raise MazeError("the goal cannot be reached from the start")
    moves, p = [], maze.goal
    while p != maze.start:
        p, move = came[p]
        moves.append(move)
    return moves[::-1]


def render(maze: Maze, route: list[int] | None = None) -> np.ndarray:
    """The official picture (H, W, 3) uint8: walls black, floor white, start red, goal green, and `route` (moves
    from the start) blue where given."""
    image = np.where(maze.floor[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=2)
    if route:
        for y, x in cells_visited(maze.start, route)[1:]:
            image[y, x] = PATH
    image[maze.start] = START
    image[maze.goal] = GOAL
    return image


def cells_visited(start: tuple[int, int], moves: list[int]) -> list[tuple[int, int]]:
    """The pixels a route passes through, the start first (waits add nothing; no walls are checked)."""
    out = [start]
    for move in moves:
        if move != WAIT:
            dy, dx = MOVES[move]
            out.append((out[-1][0] + dy, out[-1][1] + dx))
    return out


def find_pixel(image: np.ndarray, colour: tuple[int, int, int], name: str) -> tuple[int, int]:
    where = np.argwhere((image == colour).all(axis=2))
    if len(where) == 0:
        raise MazeError(f"no {name} pixel (pure {'red' if colour == START else 'green'} {colour})")
    if len(where) > 1:
        raise MazeError(f"{len(where)} {name} pixels; a maze has one")
    return int(where[0][0]), int(where[0][1])


def read_route(image: np.ndarray) -> tuple[Maze, list[int]]:
    """The maze of an official-format picture (H, W, 3) uint8 and its route, read from the blue path as the
    official `MazeImageFolder` does: from the red pixel, step to the blue (or green) neighbour, looking up,
    down, left, right in that order, never back, until the green pixel. MazeError when there is no start or no
    goal, or the blue path does not lead from one to the other."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MazeError(f"expected an RGB picture (H, W, 3) of bytes, got {image.dtype} {tuple(image.shape)}")
    start, goal = find_pixel(image, START, "start"), find_pixel(image, GOAL, "goal")
    path = (image == PATH).all(axis=2)
    walls = (image == WALL).all(axis=2)
    floor = ~walls
    h, w = path.shape
    moves: list[int] = []
    visited = {start}
    y, x = start
    while (y, x) != goal:
        steps = [(move, (y + dy, x + dx)) for move, (dy, dx) in enumerate(MOVES)]
        ahead = [(move, p) for move, p in steps
                 if 0 <= p[0] < h and 0 <= p[1] < w and p not in visited and (path[p] or p == goal)]
        if not ahead:
            raise MazeError(f"the blue route from the start at {start} does not reach the goal at {goal} (it stops "
                            f"at {(y, x)} after {len(moves)} moves)")
        move, p = ahead[0]  # the official order: up, down, left, right
        moves.append(move)
        visited.add(p)
        y, x = p
    return Maze(floor, start, goal), moves


def pad_route(moves: list[int], length: int) -> list[int]:
    """The moves cut or padded with waits to `length` (the target the model is trained on)."""
    return (list(moves) + [WAIT] * length)[:length]


def to_input(maze: Maze) -> Tensor:
    """What the model sees: the picture without the route, (3, H, W) float32 in [-1, 1] (the official
    expand_range)."""
    image = torch.from_numpy(render(maze)).permute(2, 0, 1).float()
    return image.div_(127.5).sub_(1.0)


def from_input(x: Tensor) -> Maze:
    """The maze of a model input (3, H, W) in [-1, 1] (as `to_input` makes, or a re-application's moved start)."""
    image = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    start, goal = find_pixel(image, START, "start"), find_pixel(image, GOAL, "goal")
    return Maze(~(image == WALL).all(axis=2), start, goal)


@dataclass(frozen=True)
class Walk:
    """A predicted route walked from the start: `solved` (it ends on the goal without entering a wall),
    `cells` the pixels it visited (the start first; the move into a wall is not taken), `wall` (the index of the
    move that entered a wall, else None) and `moves` (the moves taken, up to the first wait or wall; a walk goes
    on past the goal)."""

    solved: bool
    cells: list[tuple[int, int]]
    wall: int | None
    moves: list[int]

    @property
    def end(self) -> tuple[int, int]:
        return self.cells[-1]


def walk(maze: Maze, moves: list[int] | Tensor) -> Walk:
    """Walk `moves` from the start, stopping at the first wait or at a move into a wall or off the picture.
    Solved when the walk ends on the goal without entering a wall: a route that stops short, or goes on past the
    goal, is not."""
    if isinstance(moves, Tensor):
        moves = moves.tolist()
    (h, w), floor = maze.shape, maze.floor
    cells, taken = [maze.start], []
    for i, move in enumerate(moves):
        if move == WAIT:
            break
        dy, dx = MOVES[move]
        y, x = cells[-1][0] + dy, cells[-1][1] + dx
        if not (0 <= y < h and 0 <= x < w and floor[y, x]):
            return Walk(False, cells, i, taken)
        cells.append((y, x))
        taken.append(move)
    return Walk(cells[-1] == maze.goal, cells, None, taken)


def transform(image: Tensor, moves: Tensor, rotation: int, hflip: bool, vflip: bool) -> tuple[Tensor, Tensor]:
    """The official augmentation of one maze: `image` (C, H, W) rotated by `rotation` quarter turns (-1: clockwise,
    1: counter-clockwise, 0: none), then flipped left-right (`hflip`) and top-bottom (`vflip`); `moves` (L,) remapped
    so that they walk the same route in the transformed picture."""
    remap = torch.arange(5)
    if rotation:
        # numpy's rot90 by +1 (counter-clockwise): up -> left, down -> right, left -> down, right -> up
        turn = torch.tensor([2, 3, 1, 0, 4]) if rotation == 1 else torch.tensor([3, 2, 0, 1, 4])
        image, remap = torch.rot90(image, rotation, dims=(1, 2)), turn[remap]
    if hflip:
        image, remap = image.flip(2), torch.tensor([0, 1, 3, 2, 4])[remap]
    if vflip:
        image, remap = image.flip(1), torch.tensor([1, 0, 2, 3, 4])[remap]
    return image, remap[moves]


# ------------------------------------------------------------------------------------------ batched tensors

#: move index -> (dy, dx) as a tensor, the wait (4) staying in place
_STEPS = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]])


def maze_tensors(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The mazes of a batch of model inputs (B, 3, H, W) in [-1, 1]: floor (B, H, W) bool, start and goal
    (B, 2) int64 (row, column; (-1, -1) where a picture has none)."""
    x = x.detach()
    floor = ~(x <= -0.5).all(1)  # (B, H, W): a wall is black in every channel
    red = (x[:, 0] > 0.5) & (x[:, 1] < -0.5) & (x[:, 2] < -0.5)
    green = (x[:, 0] < -0.5) & (x[:, 1] > 0.5) & (x[:, 2] < -0.5)

    def first(mask: Tensor) -> Tensor:
        flat = mask.flatten(1)
        index = flat.float().argmax(1)
        rc = torch.stack([index // mask.shape[2], index % mask.shape[2]], 1)
        return torch.where(flat.any(1, keepdim=True), rc, torch.full_like(rc, -1))

    return floor, first(red), first(green)


@dataclass(frozen=True)
class Walks:
    """Routes walked in a batch (`walk_batch`): `solved` (B,) bool, `end` (B, 2) the last pixel reached,
    `steps` (B,) the moves taken before the first wait or wall, `wall` (B,) whether a move entered a wall."""

    solved: Tensor
    end: Tensor
    steps: Tensor
    wall: Tensor


def walk_batch(floor: Tensor, start: Tensor, goal: Tensor, moves: Tensor) -> Walks:
    """`walk` for a batch: floor (B, H, W) bool, start and goal (B, 2), moves (B, L) -> `Walks`, one loop over
    the L steps for the whole batch."""
    B, H, W = floor.shape
    steps_table = _STEPS.to(moves.device)
    pos, rows = start.clone(), torch.arange(B, device=moves.device)
    active = torch.ones(B, dtype=torch.bool, device=moves.device)
    wall = torch.zeros_like(active)
    taken = torch.zeros(B, dtype=torch.long, device=moves.device)
    for step in range(moves.shape[1]):
        move = moves[:, step]
        active &= move != WAIT
        if not active.any():
            break
        new = pos + steps_table[move]
        inside = (new[:, 0] >= 0) & (new[:, 0] < H) & (new[:, 1] >= 0) & (new[:, 1] < W)
        ok = inside & floor[rows, new[:, 0].clamp(0, H - 1), new[:, 1].clamp(0, W - 1)]
        wall |= active & ~ok
        active &= ok
        pos = torch.where(active[:, None], new, pos)
        taken += active
    solved = ~wall & (pos == goal).all(1) & (start >= 0).all(1)
    return Walks(solved, pos, taken, wall)
