"""ctm.tasks.maze's pictures and predict: the thinking GIF (its panels in the shared figure, one frame per tick), which
moves of a predicted route are wrong, the example picker, `ctm eval --plot`, the viewer's data, and `ctm predict` on
official-format pictures (with and without the blue route, larger than trained, --json, --out, bad files)."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import run_cli

pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")

from ctm.pictures import viewer as view  # noqa: E402
from ctm.pictures.figures import ThinkingFigure  # noqa: E402
from ctm.tasks import make_task  # noqa: E402
from ctm.tasks.maze import pictures as mp  # noqa: E402
from ctm.tasks.maze.mazes import WAIT, Maze, from_input, generate, pad_route, render, solve  # noqa: E402
from ctm.tasks.maze.predict import read_maze, solve_mazes  # noqa: E402
from ctm.training.loop import TrainConfig  # noqa: E402

TICKS = 4
TRAIN = ["train", "--task", "maze", "--task-option", "cells=2", "--steps", "30", "--ticks", str(TICKS), "--d-model",
         "24", "--d-input", "16", "--heads", "1", "--memory-length", "4", "--n-synch-out", "8", "--n-synch-action", "8",
         "--memory-hidden-dims", "4", "--backbone", "resnet18-1", "--batch-size", "16", "--eval-every", "30",
         "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny maze run: 2 x 2-cell mazes (5 x 5 pictures), routes of 6 moves, 4 ticks, 30 steps."""
    out = tmp_path_factory.mktemp("maze") / "run"
    assert run_cli(*TRAIN, "--out", out) == 0
    return out


def load(run):
    from ctm.inference import load_run

    return load_run(run, "cpu")


def write_png(path, image):
    PIL_Image.fromarray(image).save(path)
    return path


# A hand-made 2 x 2-cell maze: S at (1, 1), G at (3, 1); the route goes right, right, down, down, left, left.
#   #####
#   #S..#
#   ###.#
#   #G..#
#   #####
HAND = Maze(np.array([[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=bool),
            (1, 1), (3, 1))
R, L, D, U = 3, 2, 1, 0


# ------------------------------------------------------------------------------------- wrong moves


def test_route_marks_on_a_hand_made_maze():
    assert solve(HAND) == [R, R, D, D, L, L]
    right = mp.route_marks(HAND, [R, R, D, D, L, L, WAIT, R])
    assert right.wrong == [False] * 6 and right.solved and right.wall is None and right.right == 6
    assert right.cells == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
    # into a wall at the fourth move: drawn up to the wall pixel, wrong, and the walk ends there
    wall = mp.route_marks(HAND, [R, R, D, L, L, L])
    assert wall.wrong == [False, False, False, True] and wall.wall == 3 and wall.cells[-1] == (2, 2)
    assert not wall.solved and wall.right == 3
    # leaving the true route: that move and every one after it are wrong, even back on it
    detour = mp.route_marks(HAND, [R, L, R, R, D, D, L, L])
    assert detour.wrong == [False, True, True, True, True, True, True, True] and detour.right == 1
    assert detour.solved  # it still ends on the goal without a wall: solved, as evaluation counts it
    # past the goal: wrong; the first move up, into the border wall
    assert mp.route_marks(HAND, [R, R, D, D, L, L, R]).wrong == [False] * 6 + [True]
    up = mp.route_marks(HAND, [U, R])
    assert up.wrong == [True] and up.wall == 0 and up.cells == [(1, 1), (0, 1)]
    none = mp.route_marks(HAND, [WAIT, R])
    assert none.wrong == [] and none.cells == [(1, 1)] and not none.solved
    # against a given true route (a target with waits)
    assert mp.route_marks(HAND, [R, R], [R, D, WAIT]).wrong == [False, True]


def fake_output(moves_per_tick, L, certain=-1, attention_tokens=9):
    """An output whose most likely moves at tick t are moves_per_tick[t] (padded with waits to L)."""
    T = len(moves_per_tick)
    predictions = torch.zeros(1, 5 * L, T)
    for t, moves in enumerate(moves_per_tick):
        for i, m in enumerate(pad_route(moves, L)):
            predictions[0, 5 * i + m, t] = 5.0
    certainties = torch.zeros(1, 2, T)
    certainties[0, 1, certain] = 1.0
    tracking = SimpleNamespace(attention=torch.rand(T, 1, 1, attention_tokens), token_grid=(3, 3))
    return SimpleNamespace(predictions=predictions, certainties=certainties, tracking=tracking)


def test_the_route_panel_marks_wrong_moves_tick_by_tick():
    from ctm.tasks.maze.mazes import to_input

    x = to_input(HAND).unsqueeze(0)
    y = torch.tensor([pad_route(solve(HAND), 6)])
    output = fake_output([[WAIT], [R, R, D, L], [R, R, D, D, L, L]], 6)
    a = mp.maze_arrays(output, x, y)
    assert a.maze.start == HAND.start and a.true_moves == [R, R, D, D, L, L]
    assert a.solved().tolist() == [False, False, True]
    assert a.right_share().tolist() == pytest.approx([0, 3 / 6, 1])
    panels = mp.maze_panels(a)
    assert panels.ticks == 3 and panels.correct.tolist() == [False, False, True] and "solved" in panels.summary
    route = panels.panels[2].panel
    fig = ThinkingFigure(panels, [0.1, 0.2, 0.9], np.random.default_rng(0).normal(size=(3, 8)), fig_scale=0.5)
    fig.render(1)
    assert len(route.lines.get_segments()) == 4
    colours = [tuple(np.round(c[:3], 3)) for c in route.lines.get_colors()]
    from matplotlib.colors import to_rgb

    blue, orange = tuple(np.round(to_rgb(mp.ROUTE_COLOUR), 3)), tuple(np.round(to_rgb(mp.OFF_ROUTE_COLOUR), 3))
    assert colours == [blue, blue, blue, orange]
    assert list(route.wall_mark.get_xdata()) == [2] and list(route.wall_mark.get_ydata()) == [2]
    assert route.status(1)[0].startswith("3 of 6 moves right")
    fig.render(2)
    assert route.status(2)[0].startswith("solved") and len(route.wall_mark.get_xdata()) == 0


# ----------------------------------------------------------------------------------------- the GIF


def test_the_thinking_gif_has_one_frame_per_tick(run, tmp_path, capsys):
    path = tmp_path / "thinking.gif"
    assert run_cli("viz", run, "--out", path, "--threads", "1") == 0
    out = capsys.readouterr().out
    assert f"Wrote {path}: {TICKS} frames (test maze " in out and "why this maze: of the first 200 test mazes" in out
    with PIL_Image.open(path) as gif:
        assert gif.n_frames == TICKS and gif.size == (1100, 840)


def test_pick_example_prefers_a_solved_maze_with_a_long_route():
    task = make_task("maze", cells=3)
    data = task.load("test", TrainConfig(dataset="maze"))
    data.n = 20  # the first 20 test mazes
    x, y = data.batch(torch.arange(20))

    class Oracle(torch.nn.Module):  # solves mazes 4 and 9 only
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, inputs, track=False):
            B, Lr = inputs.shape[0], y.shape[1]
            predictions = torch.zeros(B, 5 * Lr, 2)
            for b in range(B):
                moves = y[b].tolist() if b in (4, 9) else [y[b, 0].item()] + [WAIT] * (Lr - 1)
                for i, m in enumerate(moves):
                    predictions[b, 5 * i + m] = 5.0
            return SimpleNamespace(predictions=predictions, certainties=torch.ones(B, 2, 2))

    pick = task.pick_example(Oracle(), data, None)
    longer = 4 if (y[4] != WAIT).sum() >= (y[9] != WAIT).sum() else 9
    assert pick.index == longer and "2 are solved" in pick.reason and "longest route" in pick.reason
    assert pick.reason.startswith("of the first 20 test mazes")
    assert task.pick_example(Oracle(), data, 7).index == 7
    with pytest.raises(ValueError, match="out of range"):
        task.pick_example(Oracle(), data, 5000)


# ------------------------------------------------------------------------------------- eval --plot


def test_eval_plot_writes_the_per_tick_figure(run, capsys):
    assert run_cli("eval", run, "--plot", "--threads", "1") == 0
    with PIL_Image.open(run / "ticks.png") as image:
        assert image.size == (900, 700)
    result = {"per_tick_accuracy": [0.1, 0.5], "per_tick_solve_rate": [0.0, 0.2], "per_tick_certainty": [0.3, 0.9],
              "accuracy": 0.5, "solve_rate": 0.2, "reapplied_solve_rate": 0.4, "reapply": 5, "n": 10}
    fig = mp.eval_figure(result)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "solved re-applying up to 5 times: 40.0%" in labels
    with pytest.raises(ValueError, match="one length"):
        mp.eval_figure({**result, "per_tick_solve_rate": [0.1]})


# ------------------------------------------------------------------------------------------ viewer


def test_viewer_data_holds_each_tick_s_route(run):
    r = load(run)
    task = make_task("maze", cells=2)
    data = task.load("test", TrainConfig(dataset="maze"))
    payload = task.viewer_data(r.model, data, 6, threshold=0.5)
    assert payload["kind"] == "maze" and payload["ticks"] == TICKS and payload["route_length"] == 6
    assert len(payload["samples"]) == 6 and payload["token_grid"] == [3, 3]
    x, y = data.batch(torch.arange(6))
    for b, s in enumerate(payload["samples"]):
        maze = from_input(x[b])
        codes = np.frombuffer(base64.b64decode(s["maze"]), np.uint8).reshape(5, 5)
        assert (codes > 0).tolist() == maze.floor.tolist() and codes[maze.start] == 2 and codes[maze.goal] == 3
        moves = np.frombuffer(base64.b64decode(s["moves"]), np.uint8).reshape(TICKS, 6)
        assert s["true"] == solve(maze)
        for t in range(TICKS):
            m = mp.route_marks(maze, moves[t].tolist(), s["true"])
            assert (s["drawn"][t], s["prefix"][t], s["wall"][t], s["solved"][t]) == \
                (len(m.wrong), m.right, m.wall is not None, m.solved)
        assert s["right"] == s["solved"][s["most_certain_tick"]]
    assert "CTM.renderers.maze" in task.viewer_script() and view.task_script("maze") == task.viewer_script()


# ----------------------------------------------------------------------------------------- predict


def test_read_maze_takes_pictures_with_and_without_a_route():
    maze = generate(3, 5)
    route = solve(maze)
    got, given = read_maze(render(maze, route))
    assert given == route and got.start == maze.start and (got.floor == maze.floor).all()
    got, given = read_maze(render(maze))
    assert given is None and got.goal == maze.goal and (got.floor == maze.floor).all()
    from ctm.tasks.maze import MazeError

    no_goal = render(maze)
    no_goal[maze.goal] = 255
    with pytest.raises(MazeError, match="no goal"):
        read_maze(no_goal)
    broken = render(maze, route[:1])
    with pytest.raises(MazeError, match="remove the blue pixels"):
        read_maze(broken)


class Oracle(torch.nn.Module):
    """Outputs the first `L` moves of each maze's shortest route (as a model trained on small mazes would)."""

    def __init__(self, L):
        super().__init__()
        self.p, self.L = torch.nn.Parameter(torch.zeros(1)), L

    def forward(self, x, track=False):
        B = x.shape[0]
        predictions = torch.zeros(B, 5 * self.L, 2)
        for b in range(B):
            for i, m in enumerate(pad_route(solve(from_input(x[b])), self.L)):
                predictions[b, 5 * i + m] = 5.0
        return SimpleNamespace(predictions=predictions, certainties=torch.ones(B, 2, 2))


def test_re_application_solves_mazes_larger_than_the_output():
    mazes = [generate(4, s) for s in range(4)] + [generate(2, 1)]  # two sizes: two batches
    answers = solve_mazes(Oracle(6), mazes, 20)
    for maze, a in zip(mazes, answers, strict=True):
        route = solve(maze)
        assert a["solved"] and a["moves"] == route and a["applications"] == -(-len(route) // 6)
        assert a["cells"][0] == list(maze.start) and a["cells"][-1] == list(maze.goal)
    long = max(range(4), key=lambda i: len(solve(mazes[i])))
    assert solve_mazes(Oracle(6), [mazes[long]], 1)[0]["solved"] is False  # once: too short a route


def test_predict_prints_moves_cells_and_solved(run, tmp_path, capsys):
    small, big = generate(2, 3), generate(4, 3)  # 5 x 5 as trained, and 9 x 9, larger
    a = write_png(tmp_path / "small.png", render(small, solve(small)))
    b = write_png(tmp_path / "big.png", render(big))  # no blue route
    capsys.readouterr()
    assert run_cli("predict", run, a, b, "--threads", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    start = "({},{})".format(*small.start)
    assert lines[0].startswith(f"{a}: ") and "5x5 maze" in lines[0] and f"; cells {start}" in lines[0]
    assert lines[1].startswith(f"{b}: ") and "9x9 maze" in lines[1]
    for line in lines:
        assert (" solved in " in line) or (" not solved in " in line)
        assert " application" in line
    assert run_cli("predict", run, a, b, "--json", "--threads", "1") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for record, maze, path in zip(records, (small, big), (a, b), strict=True):
        assert record["file"] == str(path) and record["size"] == list(maze.shape)
        assert all(m in (0, 1, 2, 3) for m in record["moves"]) and record["steps"] == len(record["moves"])
        assert isinstance(record["solved"], bool) and 1 <= record["applications"] <= 20
        assert record["cells"][0] == list(maze.start) and len(record["cells"]) == len(record["moves"]) + 1
    assert records[0]["picture_route"] == solve(small) and "picture_route" not in records[1]


def test_predict_with_an_oracle_reports_the_walked_route(tmp_path):
    task = make_task("maze", cells=2)
    big = generate(5, 2)
    path = write_png(tmp_path / "big.png", render(big))
    [p] = task.predict(SimpleNamespace(model=Oracle(6)), [str(path)])
    route = solve(big)
    assert p.record["solved"] and p.record["moves"] == route and p.record["applications"] == -(-len(route) // 6)
    assert p.line.startswith(f"{path}: solved in {len(route)} moves, {p.record['applications']} applications (11x11")
    assert "".join("UDLR"[m] for m in route) in p.line
    assert (p.picture == render(big, route)).all()
    with pytest.raises(ValueError, match="--halt-certainty does not apply"):
        task.predict(SimpleNamespace(model=Oracle(6)), [str(path)], halt_certainty=0.5)


def test_predict_out_writes_the_maze_with_its_route(run, tmp_path, capsys):
    maze = generate(3, 8)
    a = write_png(tmp_path / "a.png", render(maze))
    b = write_png(tmp_path / "b.png", render(generate(2, 8)))
    out = tmp_path / "route.png"
    capsys.readouterr()
    assert run_cli("predict", run, a, "--out", out, "--threads", "1") == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    with PIL_Image.open(out) as image:
        drawn = np.asarray(image.convert("RGB"))
    got, _ = read_maze(np.where((drawn == (0, 0, 255)).all(2, keepdims=True), 255, drawn).astype(np.uint8))
    assert (got.floor == maze.floor).all() and got.start == maze.start and got.goal == maze.goal
    folder = tmp_path / "routes"
    assert run_cli("predict", run, a, b, "--out", folder, "--json", "--threads", "1") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["out"] for r in records] == [str(folder / "a-route.png"), str(folder / "b-route.png")]
    assert all((folder / n).is_file() for n in ("a-route.png", "b-route.png"))
    assert run_cli("predict", run, a, b, "--out", tmp_path / "one.png", "--threads", "1") == 2
    assert "is one file, for one input" in capsys.readouterr().err


@pytest.mark.parametrize("content, why", [(b"not a picture", "not a readable picture"), (None, "no goal pixel"),
                                          ("missing", "no such file")])
def test_predict_on_a_bad_file_names_it_in_one_line(run, tmp_path, capsys, content, why):
    path = tmp_path / "bad.png"
    if content is None:
        image = render(generate(2, 1))
        image[(image == (0, 255, 0)).all(2)] = 255
        write_png(path, image)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    good = write_png(tmp_path / "good.png", render(generate(2, 1)))
    capsys.readouterr()
    assert run_cli("predict", run, good, path, "--threads", "1") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ctm predict: error: {path}: ") and why in err[0]


def test_other_tasks_keep_the_default_predict_and_draw_nothing_for_out():
    from ctm.cli import CLIError, _prediction_outs
    from ctm.tasks.base import Prediction, Task

    assert type(make_task("parity", length=8)).predict is Task.predict
    assert Prediction("a", "b", {}).picture is None
    with pytest.raises(CLIError, match="the parity task draws none"):
        _prediction_outs("x.png", [Prediction("a", "b", {})], "parity", ["a"])
