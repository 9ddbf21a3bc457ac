"""ctm.tasks.parity.pictures: the parity GIF (its panels in the shared thinking figure, one frame per tick), its stills,
grids of any length, the example picker, the accuracy plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")

from ctm.config import CTMConfig  # noqa: E402
from ctm.nn.lstm import LSTMBaseline  # noqa: E402
from ctm.pictures.figures import save_figure  # noqa: E402
from ctm.tasks.parity import pictures as vp  # noqa: E402


def sample(L=16, T=5, heads=2, N=10, seed=0):
    rng = np.random.default_rng(seed)
    sequence = rng.choice([-1.0, 1.0], L)
    attention = rng.random((T, heads, L))
    p_odd = rng.random((T, L, 1))
    return dict(sequence=sequence, targets=np.cumsum(sequence == -1) % 2,
                attention=attention / attention.sum(-1, keepdims=True),
                probabilities=np.concatenate([1 - p_odd, p_odd], -1), certainty=rng.random(T),
                traces=rng.normal(size=(T, N)))


def test_the_gif_has_one_frame_per_tick(tmp_path):
    arrays = sample(T=7)
    path = vp.parity_gif(tmp_path / "count.gif", **arrays, fps=4, fig_scale=0.5)
    with PIL_Image.open(path) as gif:
        assert gif.n_frames == 7
        assert gif.size == (500, 400)
        assert gif.info["duration"] == 250


def test_frames_change_with_the_tick_and_match_the_still(tmp_path):
    arrays = sample(T=4)
    frames = vp.parity_frames(**arrays, fig_scale=0.5)
    assert len(frames) == 4 and all(f.shape == (400, 500, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1])
    fig = vp.parity_tick_figure(**arrays, tick=2, fig_scale=0.5)
    fig.canvas.draw()
    still = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    assert still.shape == frames[2].shape
    assert np.mean(np.abs(still.astype(int) - frames[2].astype(int)) > 0) < 0.01  # the same picture
    path = save_figure(fig, tmp_path / "still.png")
    with PIL_Image.open(path) as png:
        assert png.size == (500, 400)


@pytest.mark.parametrize("L, grid", [(5, (2, 3)), (7, (3, 3)), (16, (4, 4)), (64, (8, 8)), (1, (1, 1)),
                                     (17, (4, 5)), (100, (10, 10))])
def test_any_length_lays_out(L, grid):
    assert vp.parity_grid(L) == grid
    rows, cols = grid
    assert rows * cols >= L > (rows - 1) * cols
    if L in (5, 7, 64):
        frames = vp.parity_frames(**sample(L=L, T=2, heads=1, N=3), fig_scale=0.4)
        assert len(frames) == 2 and frames[0].shape == (320, 400, 3)


def test_cells_past_the_end_are_empty():
    cells = vp._on_grid(np.arange(5.0), 5)
    assert cells.shape == (2, 3)
    assert cells[0].tolist() == [0.0, 1.0, 2.0] and cells[1, :2].tolist() == [3.0, 4.0] and np.isnan(cells[1, 2])


def test_wrong_positions_are_marked():
    arrays = sample(L=6, T=2)
    arrays["probabilities"][1] = np.eye(2)[arrays["targets"]]  # tick 2: all right
    arrays["probabilities"][0] = np.eye(2)[1 - arrays["targets"]]  # tick 1: all wrong but position 0
    arrays["probabilities"][0, 0] = np.eye(2)[arrays["targets"][0]]
    fig = vp.parity_figure(**arrays)
    predicted = fig.panels[3]
    assert isinstance(predicted, vp.PredictedParity)
    fig.update(0)
    assert [b.get_visible() for b in predicted.wrong_boxes] == [False] + [True] * 5
    assert fig.status_text.get_text() == "1/6 bits right"
    fig.update(1)
    assert not any(b.get_visible() for b in predicted.wrong_boxes)
    assert fig.status_text.get_text().startswith("6/6 bits right") and "sequence correct" in fig.status_text.get_text()
    assert [t.get_text() for t in predicted.texts] == [str(b) for b in arrays["targets"]]
    np.testing.assert_allclose(fig.curve_lines[0].get_ydata(), [1 / 6, 1])  # per-bit accuracy up to this tick
    assert fig.parts.summary == "right at 1 of 6 positions at tick 1, 6 at tick 2"


def test_per_position_certainty_and_one_head_attention_are_accepted():
    arrays = sample(L=4, T=3)
    arrays["certainty"] = np.tile(np.array([[0.2], [0.4], [0.6]]), (1, 4)) + np.array([0.0, 0.1, -0.1, 0.0])
    arrays["attention"] = arrays["attention"][:, 0]
    fig = vp.parity_figure(**arrays)
    np.testing.assert_allclose(fig.certainty, [0.2, 0.4, 0.6])
    fig.update(1)
    np.testing.assert_allclose(fig.c_line.get_ydata(), [0.2, 0.4])  # the curve up to this tick


@pytest.mark.parametrize("field, value, message", [
    ("sequence", np.array([1.0, 0.0, -1.0]), r"sequence must be a non-empty \(L,\) array of \+-1"),
    ("targets", np.zeros(3), r"targets must be \(16,\) of 0/1"),
    ("probabilities", np.zeros((5, 16, 3)), r"probabilities must have shape \(T, 16, 2\)"),
    ("attention", np.zeros((4, 2, 16)), r"attention must have shape \(5, heads, 16\) or \(5, 16\)"),
    ("certainty", np.zeros(4), r"certainty must have shape \(5,\) or \(5, 16\)"),
    ("traces", np.zeros((5,)), r"traces must have shape \(5, neurons\)"),
])
def test_bad_arrays_are_named(field, value, message):
    arrays = sample()
    arrays[field] = value
    with pytest.raises(ValueError, match=message):
        vp.parity_frames(**arrays)


def test_arrays_from_a_tracked_forward(tmp_path):
    L, T = 6, 3
    config = CTMConfig(iterations=T, d_model=16, d_input=8, memory_length=3, n_synch_out=4, n_synch_action=4,
                       memory_hidden_dims=2, backbone="parity", positional_embedding="custom-rotational-1d",
                       out_dims=2 * L, out_positions=L)
    torch.manual_seed(0)
    model = LSTMBaseline(config, 12).eval()
    x = torch.randint(0, 2, (2, L)).float() * 2 - 1
    with torch.no_grad():
        out = model(x, track=True)
    targets = (torch.cumsum((x[1] == -1).long(), 0) % 2).numpy()
    a = vp.parity_arrays(out, x[1].numpy(), targets, sample=1)
    assert a.probabilities.shape == (T, L, 2) and a.attention.shape == (T, 1, L) and a.traces.shape == (T, 12)
    np.testing.assert_allclose(a.probabilities.sum(-1), 1, rtol=1e-6)
    # class 1 of position 2 at tick 3 is logit 2 * 2 + 1 of the last tick
    logits = out.predictions[1, 4:6, 2]
    np.testing.assert_allclose(a.probabilities[2, 2], logits.softmax(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(a.certainty, out.certainties[1, 1].numpy())
    assert len(vp.parity_frames(*a, fig_scale=0.4)) == T
    with pytest.raises(ValueError, match="track=True"):
        vp.parity_arrays(model(x), x[0].numpy(), targets)


def test_accuracy_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    path = vp.save_accuracy_plot(rng.random((16, 25)), tmp_path / "acc.png", sequence_accuracy=rng.random(25))
    with PIL_Image.open(path) as png:
        assert png.format == "PNG" and png.size == (900, 750)
    fig = vp.accuracy_figure(np.array([[1.0, 0.5], [0.0, 0.5]]))
    heat, curve = fig.axes[:2]  # then the colour bar
    np.testing.assert_allclose(heat.images[0].get_array(), [[100, 50], [0, 50]])
    np.testing.assert_allclose(curve.lines[0].get_ydata(), [50, 50])  # per-bit: the mean over positions
    with pytest.raises(ValueError, match=r"accuracy must have shape \(positions, ticks\)"):
        vp.accuracy_figure(np.zeros(4))
    with pytest.raises(ValueError, match=r"sequence_accuracy must have shape \(2,\)"):
        vp.accuracy_figure(np.zeros((3, 2)), np.zeros(3))


def test_the_task_picks_a_sequence_and_draws_its_gif(tmp_path):
    from ctm.nn.kinds import build_model
    from ctm.tasks import ParityTask
    from ctm.tasks.base import Example
    from ctm.training.losses import tick_hits

    task = ParityTask(length=6)
    config = CTMConfig(iterations=4, d_model=16, d_input=8, memory_length=3, n_synch_out=4, n_synch_action=4,
                       memory_hidden_dims=2, heads=2, **task.model_fields(None))
    torch.manual_seed(0)
    model = build_model("ctm", config)
    data = task.load("test", None)
    data.n = 30
    pick = task.pick_example(model, data)
    x, y = data.batch(torch.arange(30))
    model.eval()
    with torch.no_grad():
        hits = tick_hits(model(x).predictions, y).sum(1)
    score = hits[:, -1] * 7 - hits[:, 0]
    assert pick.index == int(score.argmax())
    assert pick.reason == "of the first 30 test sequences, the one the model ends right on after the most wrong start"
    assert task.pick_example(model, data, 29) == Example(29, "")
    with pytest.raises(ValueError, match=r"index 30 out of range for parity test \(30 sequences\)"):
        task.pick_example(model, data, 30)
    what = task.thinking_gif(model, data, tmp_path / "count.gif", 3, fps=2)
    assert what == (f"test sequence 3, right at {int(hits[3, 0])} of 6 positions at tick 1, {int(hits[3, -1])} "
                    f"at tick 4")
    with PIL_Image.open(tmp_path / "count.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (1000, 800) and gif.info["duration"] == 500
