"""The maze task: generated mazes, reading the official picture format, the official augmentation and loss against
the official code, walking predicted routes, re-application, metrics, and training / evaluation through the CLI
(generated and folder data)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import cli_error, eval_json, run_cli
from safetensors.torch import load_file

import ctm
from ctm.runs import checkpoint as ckpt
from ctm.tasks import make_task
from ctm.tasks.maze import Maze, MazeError, generate, read_route, render, solve, walk
from ctm.tasks.maze.data import GeneratedMazes, MazeImages, list_pngs
from ctm.tasks.maze.loss import maze_loss
from ctm.tasks.maze.mazes import WAIT, from_input, maze_tensors, pad_route, to_input, transform, walk_batch
from ctm.tasks.maze.solving import reapply
from ctm.tasks.maze.task import TEST_SIZE, TEST_STREAM, MazeMetrics

pytestmark = pytest.mark.usefixtures("one_thread")

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
STEPS = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}

# A maze CTM small enough to learn 2 x 2-cell mazes in seconds on one thread.
MAZE_FLAGS = ["--task", "maze", "--task-option", "cells=2", "--ticks", "6", "--d-model", "64", "--d-input", "32",
              "--heads", "2", "--memory-length", "4", "--memory-hidden-dims", "4", "--n-synch-out", "16",
              "--n-synch-action", "16", "--backbone", "tutorial", "--batch-size", "32", "--threads", "1",
              "--no-progress"]


def _load_official(name: str, relative: str, stubs: dict[str, types.ModuleType] | None = None):
    """One official module, loaded from its file under a name of its own (with `stubs` standing in for the
    packages it imports but the tested functions never use)."""
    from conftest import OFFICIAL_PATH

    path = OFFICIAL_PATH / relative
    if not path.is_file():
        pytest.skip(f"official CTM reference not found at {OFFICIAL_PATH}")
    stubs = stubs or {}
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture(scope="module")
def official_losses():
    return _load_official("official_ctm_losses", "utils/losses.py")


@pytest.fixture(scope="module")
def official_datasets():
    """The official `data.custom_datasets` (MazeImageFolder). Its torchvision and Hugging Face imports serve other
    data sets; modules of the same names without them stand in where they are not installed."""
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.ModuleType("torchvision.datasets")
    torchvision.datasets.ImageFolder = type("ImageFolder", (), {})
    hf = types.ModuleType("datasets")
    hf.load_dataset = None
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        stubs.update({"torchvision": torchvision, "torchvision.datasets": torchvision.datasets})
    if importlib.util.find_spec("datasets") is None:
        stubs["datasets"] = hf
    return _load_official("official_ctm_custom_datasets", "data/custom_datasets.py", stubs)


def official_maze_folder(module, pictures: list[np.ndarray], paths: list[list[int]] | None = None,
                         route_length: int = 100):
    """An official MazeImageFolder over `pictures` (H, W, 3) bytes, built without reading a folder: its samples
    are the pictures as floats / 255 (what its _preload makes), its routes `paths` (else none yet)."""
    folder = object.__new__(module.MazeImageFolder)
    folder.maze_route_length, folder.which_set, folder.augment_p, folder.expand_range = route_length, "train", 0.5, True
    folder.preloaded_samples = [p.astype(np.float32) / 255 for p in pictures]
    folder.all_paths = {i: np.array(p) for i, p in enumerate(paths or [])}
    return folder


def maze_from(rows: list[str]) -> Maze:
    """A hand-drawn maze: '#' wall, '.' floor, 'S' start, 'G' goal."""
    chars = np.array([list(r) for r in rows])
    (start,), (goal,) = np.argwhere(chars == "S"), np.argwhere(chars == "G")
    return Maze(chars != "#", tuple(int(v) for v in start), tuple(int(v) for v in goal))


def tree_path(maze: Maze) -> list[int]:
    """The moves from start to goal found by depth-first search (in a perfect maze the only route)."""
    parent = {maze.start: None}
    stack = [maze.start]
    while stack:
        p = stack.pop()
        for move, (dy, dx) in STEPS.items():
            q = (p[0] + dy, p[1] + dx)
            if maze.floor[q] and q not in parent:
                parent[q] = (p, move)
                stack.append(q)
    moves, p = [], maze.goal
    while parent[p] is not None:
        p, move = parent[p]
        moves.append(move)
    return moves[::-1]


def logits_for(moves: torch.Tensor) -> torch.Tensor:
    """Predictions (B, L x 5, T) whose argmax is `moves` (B, L, T)."""
    B, L, T = moves.shape
    return (F.one_hot(moves, 5).permute(0, 1, 3, 2) * 5.0).reshape(B, L * 5, T)


# ---------------------------------------------------------------------------------------------- generation


def test_the_generator_is_deterministic_in_its_seed():
    a, b = generate(5, 11), generate(5, 11)
    assert np.array_equal(a.floor, b.floor) and a.start == b.start and a.goal == b.goal
    drawn = {(generate(5, s).floor.tobytes(), generate(5, s).start, generate(5, s).goal) for s in range(20)}
    assert len(drawn) == 20
    with pytest.raises(ValueError, match="at least 2 x 2 cells"):
        generate(1, 0)


@pytest.mark.parametrize("cells", [2, 3, 6, 11])
def test_generated_mazes_are_perfect_and_solve_finds_their_route(cells):
    side = 2 * cells + 1
    for seed in range(12):
        maze = generate(cells, seed)
        floor = maze.floor
        assert maze.shape == (side, side)
        assert floor[1::2, 1::2].all() and not floor[::2, ::2].any()  # cells floor, wall corners wall
        assert not (floor[0].any() or floor[-1].any() or floor[:, 0].any() or floor[:, -1].any())
        openings = floor[1::2, 2:-1:2].sum() + floor[2:-1:2, 1::2].sum()
        assert openings == cells * cells - 1  # a tree: n cells, n - 1 edges ...
        reached, stack = {maze.start}, [maze.start]
        while stack:
            y, x = stack.pop()
            for dy, dx in STEPS.values():
                if floor[y + dy, x + dx] and (y + dy, x + dx) not in reached:
                    reached.add((y + dy, x + dx))
                    stack.append((y + dy, x + dx))
        assert len(reached) == floor.sum()  # ... and connected
        assert maze.start != maze.goal and all(v % 2 == 1 for v in maze.start + maze.goal)
        route = solve(maze)
        w = walk(maze, route)
        assert w.solved and w.wall is None and w.moves == route and w.end == maze.goal
        assert all(floor[p] for p in w.cells) and len(set(w.cells)) == len(w.cells)
        assert route == tree_path(maze) and len(route) <= make_task("maze", cells=cells).route_length


@pytest.mark.parametrize("options, message", [
    (dict(cells=1), "cells must be an integer >= 2"),
    (dict(cells=300), "cells 300 is above 255"),
    (dict(lookahead=0), "lookahead must be a positive integer"),
    (dict(reapply=-1), "reapply must be a non-negative integer"),
    (dict(route_length=-1), "route_length must be a non-negative integer"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_task("maze", **options)
    assert make_task("maze", cells=4).route_length == 30 and make_task("maze", route_length=9).route_length == 9


def test_solve_refuses_a_goal_behind_walls():
    with pytest.raises(MazeError, match="cannot be reached"):
        solve(maze_from(["#####", "#S#G#", "#####"]))


def test_generated_data_are_deterministic_and_train_and_test_differ():
    train = GeneratedMazes(3, 16, 10**6, stream=5, split="train")
    x, y = train.batch(torch.tensor([4, 0, 7]))
    x2, y2 = GeneratedMazes(3, 16, 10**6, stream=5, split="train").batch(torch.tensor([7, 4]))
    assert torch.equal(x[[2, 0]], x2) and torch.equal(y[[2, 0]], y2)
    assert x.shape == (3, 3, 7, 7) and y.shape == (3, 16) and y.dtype == torch.long
    for xi, yi in zip(x, y, strict=True):
        assert walk(from_input(xi), yi).solved
    test = GeneratedMazes(3, 16, 50, TEST_STREAM, "test")
    tx, ty = test.batch(torch.arange(50))
    assert not any(torch.equal(tx[i], x[0]) for i in range(50))
    assert torch.equal(test.batch(torch.tensor([3]))[0][0], tx[3])
    # routes longer than L are cut, shorter ones padded with waits
    cut = GeneratedMazes(3, 4, 10**6, stream=5, split="train").batch(torch.tensor([4, 0, 7]))[1]
    assert torch.equal(cut, y[:, :4])
    assert all(row[len(solve(from_input(xi))):].eq(WAIT).all() for xi, row in zip(x, y, strict=True))


# ------------------------------------------------------------------------------------------- reading pictures


@pytest.mark.parametrize("cells", [2, 4, 7])
def test_read_route_gives_back_what_render_drew(cells):
    for seed in range(8):
        maze = generate(cells, seed)
        route = solve(maze)
        picture = render(maze, route)
        assert picture.dtype == np.uint8 and picture.shape == (2 * cells + 1, 2 * cells + 1, 3)
        assert (picture == (0, 0, 255)).all(2).sum() == len(route) - 1  # the goal is green, not blue
        read, moves = read_route(picture)
        assert moves == route and np.array_equal(read.floor, maze.floor)
        assert (read.start, read.goal) == (maze.start, maze.goal)
        assert torch.equal(to_input(read), to_input(maze)) and to_input(maze).shape == (3, 2 * cells + 1,
                                                                                        2 * cells + 1)


def _picture() -> np.ndarray:
    maze = generate(4, 3)
    return render(maze, solve(maze))


def _without(picture, colour, replace=(255, 255, 255)):
    out = picture.copy()
    out[(out == colour).all(2)] = replace
    return out


def _with_second(picture, colour):
    out = picture.copy()
    y, x = np.argwhere((out == (255, 255, 255)).all(2))[0]
    out[y, x] = colour
    return out


def _broken_route(picture):
    out = picture.copy()
    blue = np.argwhere((out == (0, 0, 255)).all(2))
    out[tuple(blue[len(blue) // 2])] = (255, 255, 255)
    return out


@pytest.mark.parametrize("make, message", [
    (lambda p: _without(p, (255, 0, 0)), r"no start pixel \(pure red"),
    (lambda p: _without(p, (0, 255, 0)), r"no goal pixel \(pure green"),
    (lambda p: _with_second(p, (255, 0, 0)), "2 start pixels; a maze has one"),
    (lambda p: _with_second(p, (0, 255, 0)), "2 goal pixels; a maze has one"),
    (_broken_route, "the blue route from the start at .* does not reach the goal"),
    (lambda p: _without(p, (0, 0, 255)), "does not reach the goal .* after 0 moves"),
    (lambda p: p.astype(np.float32), "expected an RGB picture"),
    (lambda p: p[..., 0], "expected an RGB picture"),
])
def test_read_route_names_what_is_wrong_with_a_picture(make, message):
    with pytest.raises(MazeError, match=message):
        read_route(make(_picture()))


def test_read_route_follows_the_official_rule(official_datasets):
    """The moves MazeImageFolder.get_solution reads from the same pictures (as floats / 255), full or cut to a
    route length; and a blue route with a loop in it, where the official order up, down, left, right decides."""
    pictures = [render(m, solve(m)) for m in (generate(c, s) for c in (2, 3, 5, 9) for s in range(6))]
    # a blue loop: at (3, 3) both up and right are blue, and up comes first (the long way round); at (3, 5)
    # the goal below comes before the blue pixel left
    loop = np.full((6, 7, 3), 255, np.uint8)
    for y, x in [(3, 2), (3, 3), (2, 3), (1, 3), (1, 4), (1, 5), (2, 5), (3, 5), (3, 4)]:
        loop[y, x] = (0, 0, 255)
    loop[3, 1], loop[4, 5], loop[5, 0] = (255, 0, 0), (0, 255, 0), (0, 0, 0)
    pictures.append(loop)
    for picture in pictures:
        _, moves = read_route(picture)
        for length in (len(moves), len(moves) + 7, max(len(moves) - 3, 1)):
            theirs = official_maze_folder(official_datasets, [picture], route_length=length)
            assert theirs.get_solution(theirs.preloaded_samples[0]).tolist() == pad_route(moves, length)
    assert read_route(loop)[1] == [RIGHT, RIGHT, UP, UP, RIGHT, RIGHT, DOWN, DOWN, DOWN]


# ------------------------------------------------------------------------------------------------ augmentation


TRANSFORMS = [(r, h, v) for r in (-1, 0, 1) for h in (False, True) for v in (False, True)]


@pytest.mark.parametrize("rotation, hflip, vflip", TRANSFORMS)
def test_transformed_moves_solve_the_transformed_maze_as_the_official_augmentation(official_datasets, monkeypatch,
                                                                                   rotation, hflip, vflip):
    L = 24
    mazes = [generate(4, s) for s in range(6)]
    folder = official_maze_folder(official_datasets, [render(m, solve(m)) for m in mazes],
                                  [pad_route(solve(m), L) for m in mazes])
    for i, maze in enumerate(mazes):
        x, y = to_input(maze), torch.tensor(pad_route(solve(maze), L))
        x2, y2 = transform(x, y, rotation, hflip, vflip)
        assert x2.shape == x.shape and y2.shape == y.shape
        moved = from_input(x2)
        assert walk(moved, y2).solved and y2.tolist() == pad_route(solve(moved), L)
        floor, start, goal = maze_tensors(x2[None])
        assert torch.equal(floor[0], torch.from_numpy(moved.floor)) and tuple(start[0].tolist()) == moved.start
        assert walk_batch(floor, start, goal, y2[None]).solved.item()
        if rotation == 0 and not hflip and not vflip:
            assert torch.equal(x2, x) and torch.equal(y2, y)
        # the official __getitem__ with its random draws forced: rotate?, which way, flip left-right?, top-bottom?
        draws = iter([0.0 if rotation else 0.9, 0.0 if hflip else 0.9, 0.0 if vflip else 0.9])
        monkeypatch.setattr(official_datasets, "random", types.SimpleNamespace(
            random=draws.__next__, choice=lambda options: rotation))
        their_x, their_y = folder[i]
        assert torch.equal(their_x.float(), x2) and their_y.tolist() == y2.tolist()


def test_augment_batch_is_deterministic_in_its_seed_and_keeps_every_maze_solved():
    task = make_task("maze", cells=5)
    x, y = GeneratedMazes(5, task.route_length, 10**6, stream=1, split="train").batch(torch.arange(48))
    xa, ya = task.augment_batch(x, y, seed=7)
    xb, yb = task.augment_batch(x, y, seed=7)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = task.augment_batch(x, y, seed=8)
    assert not torch.equal(xa, xc)
    changed = sum(not torch.equal(xa[i], x[i]) for i in range(48))
    assert 30 <= changed < 48  # each maze is left as it is with probability (1 - 1/2)^3
    assert walk_batch(*maze_tensors(xa), ya).solved.all()
    assert torch.equal((ya == WAIT), (y == WAIT))
    # pictures that are not square are only flipped
    wide = to_input(maze_from(["#######", "#S....#", "#.###.#", "#....G#", "#######"]))[None].repeat(16, 1, 1, 1)
    target = torch.tensor([[DOWN, DOWN, RIGHT, RIGHT, RIGHT, RIGHT, WAIT]]).repeat(16, 1)
    xw, yw = task.augment_batch(wide, target, seed=3)
    assert xw.shape == wide.shape and walk_batch(*maze_tensors(xw), yw).solved.all()
    assert len({xw[i].numpy().tobytes() for i in range(16)}) == 4  # the four flips, no turn


# ---------------------------------------------------------------------------------------------------- the loss


def _prefix_predictions(B, L, T, g, targets):
    """Random logits (B, L x 5, T) where each tick gets a random prefix of the route right and the next step
    wrong, so that the curriculum's reach varies between samples."""
    logits = torch.randn(B, L, 5, T, generator=g, dtype=torch.float64)
    prefix = torch.randint(0, L + 1, (B, T), generator=g)
    prefix[0] = 0  # one sample right nowhere, one right everywhere
    prefix[1, 0] = L
    for b in range(B):
        for t in range(T):
            k = int(prefix[b, t])
            logits[b, torch.arange(k), targets[b, :k], t] += 10.0
            if k < L:
                logits[b, k, targets[b, k], t] -= 10.0
    return logits.reshape(B, L * 5, T)


@pytest.mark.parametrize("lookahead, most_certain", [(5, True), (2, False), (1, True)])
def test_the_loss_is_the_official_maze_loss(official_losses, lookahead, most_certain):
    g = torch.Generator().manual_seed(lookahead)
    for B, L, T in ((6, 12, 7), (4, 30, 5), (3, 3, 4)):
        targets = torch.randint(0, 5, (B, L), generator=g)
        predictions = _prefix_predictions(B, L, T, g, targets)
        certainties = torch.rand(B, 2, T, generator=g, dtype=torch.float64)
        mine, reference = predictions.clone().requires_grad_(), predictions.clone().requires_grad_()
        loss, tick, reach = maze_loss(mine, certainties, targets, lookahead, most_certain)
        their_loss, their_tick, their_reach = official_losses.maze_loss(
            reference.reshape(B, L, 5, T), certainties, targets, lookahead, most_certain)
        torch.testing.assert_close(loss, their_loss, rtol=1e-12, atol=1e-12)
        assert tick.tolist() == (their_tick % T).tolist() and reach.tolist() == their_reach.tolist()
        assert len(set(reach.tolist())) > 1 or L <= lookahead
        loss.backward()
        their_loss.backward()
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-10, atol=1e-12)
    task_loss, task_tick = make_task("maze", cells=2, lookahead=lookahead).loss(predictions, certainties, targets)
    torch.testing.assert_close(task_loss, maze_loss(predictions, certainties, targets, lookahead)[0])
    assert torch.equal(task_tick, certainties[:, 1].argmax(-1))


def test_the_loss_refuses_predictions_of_another_route_length():
    with pytest.raises(ValueError, match=r"maze_loss expects predictions \(B, L x 5, T\)"):
        maze_loss(torch.zeros(2, 24, 3), torch.zeros(2, 2, 3), torch.zeros(2, 6, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------- walking

CORRIDOR = ["#######",
            "#S..#.#",
            "###.#.#",
            "#...#G#",
            "#.###.#",
            "#.....#",
            "#######"]
ROUTE = [RIGHT, RIGHT, DOWN, DOWN, LEFT, LEFT, DOWN, DOWN, RIGHT, RIGHT, RIGHT, RIGHT, UP, UP]


@pytest.mark.parametrize("moves, solved, wall, end", [
    (ROUTE, True, None, (3, 5)),
    (ROUTE + [WAIT, WAIT, UP], True, None, (3, 5)),  # after the first wait nothing counts
    ([RIGHT, RIGHT, RIGHT], False, 2, (1, 3)),  # into the wall
    ([DOWN] + ROUTE, False, 0, (1, 1)),
    (ROUTE[:-1] + [WAIT], False, None, (4, 5)),  # stops short of the goal
    (ROUTE[:-1], False, None, (4, 5)),
    (ROUTE + [UP], False, None, (2, 5)),  # goes on past the goal
    (ROUTE + [DOWN], False, None, (4, 5)),  # ... and back
    ([WAIT] + ROUTE, False, None, (1, 1)),
    ([], False, None, (1, 1)),
])
def test_walking_hand_made_routes(moves, solved, wall, end):
    maze = maze_from(CORRIDOR)
    w = walk(maze, moves)
    assert (w.solved, w.wall, w.end) == (solved, wall, end)
    taken = moves[:wall] if wall is not None else moves[:moves.index(WAIT)] if WAIT in moves else moves
    assert w.moves == taken and len(w.cells) == len(taken) + 1
    assert walk(maze, torch.tensor(moves, dtype=torch.long)) == w
    x = to_input(maze)[None]
    b = walk_batch(*maze_tensors(x), torch.tensor([moves + [WAIT]]))
    assert (b.solved.item(), b.wall.item(), tuple(b.end[0].tolist()), b.steps.item()) == \
        (solved, wall is not None, end, len(taken))


def test_a_move_off_the_picture_is_a_wall():
    maze = maze_from([".S.", "...", "G.."])
    assert walk(maze, [UP, DOWN]) .wall == 0 and not walk(maze, [UP, DOWN]).solved
    assert walk(maze, [LEFT, DOWN, DOWN]).solved and walk(maze, [LEFT, LEFT]).wall == 1
    x = to_input(maze)[None].repeat(3, 1, 1, 1)
    b = walk_batch(*maze_tensors(x), torch.tensor([[UP, DOWN, DOWN], [LEFT, DOWN, DOWN], [RIGHT, RIGHT, DOWN]]))
    assert b.solved.tolist() == [False, True, False] and b.wall.tolist() == [True, False, True]
    assert b.end.tolist() == [[0, 1], [2, 0], [0, 2]]


def test_walk_batch_equals_walk_maze_by_maze():
    g = torch.Generator().manual_seed(0)
    cells, L, B = 4, 30, 300
    mazes = [generate(cells, 1000 + i) for i in range(B)]
    moves = torch.randint(0, 5, (B, L), generator=g)
    for i, maze in enumerate(mazes):  # the true route with a random tail from a random step on
        route = torch.tensor(pad_route(solve(maze), L))
        keep = int(torch.randint(0, L + 1, (1,), generator=g)) if i % 3 else L
        moves[i, :keep] = route[:keep]
        if i % 5 == 0:
            moves[i, keep:] = WAIT
    b = walk_batch(*maze_tensors(torch.stack([to_input(m) for m in mazes])), moves)
    for i, maze in enumerate(mazes):
        w = walk(maze, moves[i])
        assert (bool(b.solved[i]), tuple(b.end[i].tolist()), int(b.steps[i]), bool(b.wall[i])) == \
            (w.solved, w.end, len(w.moves), w.wall is not None), i
    assert 0.2 < b.solved.float().mean() < 0.8 and b.wall.any() and (~b.wall & ~b.solved).any()


def test_maze_tensors_of_a_batch():
    mazes = [generate(3, s) for s in range(5)]
    x = torch.stack([to_input(m) for m in mazes])
    x[4, :, mazes[4].start[0], mazes[4].start[1]] = 1.0  # no start: white
    floor, start, goal = maze_tensors(x)
    assert torch.equal(floor, torch.from_numpy(np.stack([m.floor for m in mazes])))
    assert start.tolist() == [list(m.start) for m in mazes[:4]] + [[-1, -1]]
    assert goal.tolist() == [list(m.goal) for m in mazes]
    assert not walk_batch(floor, start, goal, torch.tensor([pad_route(solve(m), 8) for m in mazes])).solved[4]


# ------------------------------------------------------------------------------------------ re-application


class RouteModel:
    """A stand-in model: at every tick, the first `k` moves of the true route from the picture's current start
    (after `first` when given: a move to put before them), the last tick the most certain."""

    def __init__(self, L: int, k: int, T: int = 3, first=None):
        self.L, self.k, self.T, self.first, self.calls = L, k, T, first, 0

    def __call__(self, x):
        self.calls += 1
        rows = []
        for picture in x:
            maze = from_input(picture)
            route = solve(maze)[:self.k]
            rows.append(pad_route(([self.first(maze)] if self.first else []) + route, self.L))
        moves = torch.tensor(rows).unsqueeze(-1).expand(-1, -1, self.T)
        certainties = torch.zeros(len(x), 2, self.T)
        certainties[:, 1, -1] = 1.0
        return types.SimpleNamespace(predictions=logits_for(moves), certainties=certainties)


def _into_a_wall(maze: Maze) -> int:
    return next(m for m, (dy, dx) in STEPS.items() if not maze.floor[maze.start[0] + dy, maze.start[1] + dx])


def test_reapplication_goes_on_from_where_the_route_stopped():
    mazes = [m for m in (generate(8, s) for s in range(40)) if len(solve(m)) >= 20][:4]
    lengths = [len(solve(m)) for m in mazes]
    x = torch.stack([to_input(m) for m in mazes])
    for k in (3, 7):
        model = RouteModel(L=10, k=k)
        solved, applications, routes = reapply(model, x, times=30)
        assert solved.all() and applications.tolist() == [math.ceil(n / k) for n in lengths]
        for maze, parts in zip(mazes, routes, strict=True):
            assert torch.cat(parts).tolist() == solve(maze) and all(len(p) == k for p in parts[:-1])
        assert model.calls == max(applications)  # one batch per round, the solved mazes left out
    # too few applications allowed
    solved, applications, _ = reapply(RouteModel(L=10, k=3), x, times=4)
    assert not solved.any() and applications.tolist() == [4] * 4
    # the output of the first application may be given; the input is left as it was
    model, before = RouteModel(L=10, k=5), x.clone()
    solved, applications, _ = reapply(model, x, times=30, output=model(x))
    assert solved.all() and model.calls == max(applications) and torch.equal(x, before)


def test_reapplication_gives_up_where_a_route_gets_nowhere():
    mazes = [generate(6, s) for s in range(4)]
    x = torch.stack([to_input(m) for m in mazes])
    solved, applications, routes = reapply(RouteModel(L=12, k=12, first=_into_a_wall), x, times=20)
    assert not solved.any() and applications.tolist() == [1] * 4
    assert all(len(r) == 1 and len(r[0]) == 0 for r in routes)
    x[1, :, mazes[1].goal[0], mazes[1].goal[1]] = 1.0  # no goal: not tried at all
    solved, applications, _ = reapply(RouteModel(L=12, k=2), x, times=20)
    assert solved.tolist() == [True, False, True, True] and applications[1] == 0


# ----------------------------------------------------------------------------------------------------- metrics


def test_metrics_count_solved_short_wall_and_per_tick():
    mazes = [m for m in (generate(3, s) for s in range(30)) if len(solve(m)) >= 3][:4]
    L, T = make_task("maze", cells=3).route_length, 3
    routes = [pad_route(solve(m), L) for m in mazes]
    n = [len(solve(m)) for m in mazes]
    y = torch.tensor(routes)
    moves = y.unsqueeze(-1).repeat(1, 1, T)  # (B, L, T): maze 0 right at every tick
    moves[1, n[1] - 1] = WAIT  # maze 1 stops one move short
    moves[2, 0] = _into_a_wall(mazes[2])  # maze 2 walks into a wall
    moves[3, :, 1:] = WAIT  # maze 3 right at the first tick only, waits at the most certain one
    certainties = torch.zeros(4, 2, T)
    certainties[:, 1, -1] = 1.0
    x = torch.stack([to_input(m) for m in mazes])
    out = ctm.nn.outputs.CTMOutput(logits_for(moves), certainties, torch.zeros(4, 1))
    config = ctm.CTMConfig(iterations=T)
    metrics = MazeMetrics(config, reapply=5)
    metrics.model = RouteModel(L=L, k=L)
    metrics.update(out, y, torch.tensor(0.25), torch.full((4,), T - 1), x)
    r = metrics.result()
    assert r.n == 4 and r.loss == pytest.approx(0.25)
    assert r.solve_rate == 0.25 and r.wall_rate == 0.25
    assert r.per_tick_solve_rate == [0.5, 0.25, 0.25]
    assert r.route_accuracy == pytest.approx((n[0] + n[1] - 1 + n[2] - 1) / sum(n))
    assert r.accuracy == pytest.approx((1 + 2 * (L - 1) / L + (L - n[3]) / L) / 4)
    assert r.mean_correct_prefix == pytest.approx((L + n[1] - 1) / 4)
    assert r.per_tick_accuracy[0] == pytest.approx((2 + 2 * (L - 1) / L) / 4)
    assert r.per_tick_certainty == [0.0, 0.0, 1.0]
    # re-applied: maze 1 goes on from one move short; the wall and the waits get nowhere
    assert r.reapplied_solve_rate == 0.5 and r.mean_applications == pytest.approx(5 / 4)
    assert json.loads(json.dumps(r.to_dict()))["solve_rate"] == 0.25
    once = MazeMetrics(config)
    once.update(out, y, torch.tensor(0.25), torch.full((4,), T - 1), x)
    assert once.result().reapplied_solve_rate == 0.25 and once.result().mean_applications == 1


# ---------------------------------------------------------------------------------------------- command line


def _write_pictures(folder: Path, mazes: list[Maze], broken: int | None = None) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, maze in enumerate(mazes):
        picture = render(maze, solve(maze))
        if i == broken:
            picture = _without(picture, (0, 255, 0))
        Image.fromarray(picture).save(folder / f"maze-{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on 2 x 2-cell mazes (a few seconds on one thread)."""
    run = tmp_path_factory.mktemp("maze") / "run"
    assert run_cli("train", *MAZE_FLAGS, "--steps", "300", "--lr", "3e-3", "--warmup-steps", "30",
                   "--eval-every", "300", "--out", run) == 0
    return run


def test_a_tiny_model_learns_two_by_two_mazes(trained, capsys):
    record = json.loads((trained / "config.json").read_text())
    assert record["task"] == {"name": "maze", "cells": 2, "route_length": 0, "lookahead": 5, "reapply": 0}
    assert record["dataset"]["route_length"] == 6 and record["dataset"]["shape"] == [3, 5, 5]
    assert record["model"]["out_positions"] == 6 and record["model"]["out_dims"] == 30
    r = eval_json(trained, capsys=capsys)
    # An untrained model solves none; the most common route of 2 x 2 mazes solves 14% (one move right).
    assert r["n"] == TEST_SIZE and r["solve_rate"] >= 0.6 and r["route_accuracy"] >= 0.8, r
    assert r["accuracy"] >= r["route_accuracy"] and r["reapplied_solve_rate"] >= r["solve_rate"]
    assert r["task"]["cells"] == 2 and len(r["per_tick_solve_rate"]) == 6


def test_evaluating_larger_mazes_keeps_the_runs_route_length(trained, capsys):
    r0 = eval_json(trained, capsys=capsys)
    r = eval_json(trained, "--task-option", "cells=3", capsys=capsys)
    assert r["n"] == TEST_SIZE and r["task"]["cells"] == 3
    test = GeneratedMazes(3, 6, TEST_SIZE, TEST_STREAM, "test")
    x, y = test.batch(torch.arange(TEST_SIZE))
    short = sum(len(solve(from_input(xi))) <= 6 for xi in x) / TEST_SIZE
    assert 0 < r["solve_rate"] <= short < 1  # one application of 6 moves reaches no goal further away
    assert r["reapplied_solve_rate"] > r["solve_rate"] and r["mean_applications"] > 1
    assert r["reapply"] == 20
    assert eval_json(trained, "--task-option", "route_length=6", capsys=capsys)["solve_rate"] == r0["solve_rate"]
    line = cli_error(capsys, "eval", trained, "--task-option", "route_length=10", "--threads", "1")
    assert "the run's model outputs 6 route steps; --task-option route_length=10 cannot change that" in line


def test_folder_data_give_the_same_evaluation_as_the_generated_test_set(trained, tmp_path, capsys):
    test = GeneratedMazes(2, 6, TEST_SIZE, TEST_STREAM, "test")
    x, y = test.batch(torch.arange(TEST_SIZE))
    folder = _write_pictures(tmp_path / "pictures", [from_input(xi) for xi in x])
    read = MazeImages(list_pngs(folder), 6, "test", "folder")
    assert torch.equal(read.x, x) and torch.equal(read.y, y)
    generated = eval_json(trained, capsys=capsys)
    pictures = eval_json(trained, "--dataset", f"folder:{folder}", capsys=capsys)
    assert pictures["n"] == generated["n"] == TEST_SIZE
    for key in ("solve_rate", "reapplied_solve_rate", "accuracy", "route_accuracy", "wall_rate"):
        assert pictures[key] == generated[key], key
    assert pictures["loss"] == pytest.approx(generated["loss"], rel=1e-6)
    # one picture without a goal: refused in one line naming it
    bad = _write_pictures(tmp_path / "bad", [from_input(xi) for xi in x[:5]], broken=3)
    line = cli_error(capsys, "eval", trained, "--dataset", f"folder:{bad}", "--threads", "1")
    assert "maze-0003.png" in line and "no goal pixel" in line
    mixed = _write_pictures(tmp_path / "mixed", [generate(2, 0), generate(3, 0)])
    line = cli_error(capsys, "eval", trained, "--dataset", f"folder:{mixed}", "--threads", "1")
    assert "maze-0001.png: 7x7 pixels" in line and "the mazes of one data set have one size" in line
    (tmp_path / "empty").mkdir()
    line = cli_error(capsys, "eval", trained, "--dataset", f"folder:{tmp_path / 'empty'}", "--threads", "1")
    assert "holds no .png files" in line


def test_training_on_a_folder_of_pictures(tmp_path, capsys):
    root = tmp_path / "mazes"
    _write_pictures(root / "train", [generate(2, 2 * i) for i in range(40)])
    _write_pictures(root / "test", [generate(2, 2 * i + 1) for i in range(12)])
    run = tmp_path / "run"
    assert run_cli("train", *MAZE_FLAGS, "--dataset", f"folder:{root}", "--steps", "3", "--warmup-steps", "0",
                   "--eval-every", "3", "--out", run) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["dataset"]["name"] == f"folder:{root / 'train'}" and record["dataset"]["route_length"] == 6
    r = eval_json(run, capsys=capsys)
    assert r["n"] == 12  # the run's own test folder
    # a folder without train/ and test/ is refused in one line
    line = cli_error(capsys, "train", *MAZE_FLAGS, "--dataset", f"folder:{root / 'train'}", "--steps", "3",
                     "--out", tmp_path / "other")
    assert "has no train/ folder" in line


def test_a_maze_run_resumed_equals_a_straight_run(tmp_path):
    flags = [*MAZE_FLAGS, "--lr", "3e-3", "--warmup-steps", "0", "--schedule", "constant", "--augment",
             "--eval-every", "6", "--eval-batch-size", "500"]
    assert run_cli("train", *flags, "--steps", "12", "--out", tmp_path / "straight") == 0
    assert run_cli("train", *flags, "--steps", "6", "--out", tmp_path / "resumed") == 0
    assert run_cli("train", "--resume", tmp_path / "resumed", "--steps", "12", "--threads", "1", "--no-progress") == 0
    a, b = (ckpt.current_checkpoint(tmp_path / name).path for name in ("straight", "resumed"))
    weights_a, weights_b = load_file(str(a / ckpt.MODEL_FILE)), load_file(str(b / ckpt.MODEL_FILE))
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=0, msg=name)
    last_a, last_b = (json.loads((p / ckpt.METRICS_FILE).read_text().splitlines()[-1]) for p in (a, b))
    last_a.pop("elapsed_s")
    last_b.pop("elapsed_s")
    assert last_a == last_b and last_a["step"] == 12 and "test_solve_rate" in last_a
