"""ctm.pictures.figures and the image task's pictures (ctm.tasks.image.pictures): the shared thinking figure and its
panels, a task's GIF through Task.thinking_gif, training-curve and per-tick plots, example selection."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import ctm
from ctm.data.images import ImageDataset

pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")

from ctm.pictures import figures as viz  # noqa: E402
from ctm.tasks import ImageTask, Task  # noqa: E402
from ctm.tasks.base import Example  # noqa: E402
from ctm.tasks.image import pictures as vi  # noqa: E402

TINY = dict(iterations=5, d_model=32, d_input=16, memory_length=4, heads=2, n_synch_out=8, n_synch_action=8,
            memory_hidden_dims=4)


def tiny_model(**overrides) -> ctm.CTM:
    torch.manual_seed(0)
    return ctm.CTM(ctm.CTMConfig(**{**TINY, **overrides}))


def random_sample(T=6, classes=10, D=20, heads=2, grid=(3, 7), image_shape=(1, 12, 28), seed=0):
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    att = rng.random((T, heads, n))
    return dict(
        image=rng.random(image_shape),
        predictions=rng.normal(size=(classes, T)) * 3,
        certainties=rng.random(T),
        pre_activations=rng.normal(size=(T, D)),
        post_activations=rng.normal(size=(T, D)),
        attention=att / att.sum(-1, keepdims=True),
        token_grid=grid,
    )


# ------------------------------------------------------------------------------------------ thinking frames


def test_thinking_gif_frames_and_file(tmp_path):
    model = tiny_model()
    model.train()
    path = tmp_path / "sub" / "think.gif"
    frames = vi.thinking_gif(model, torch.rand(1, 28, 28), target=3, path=path, fps=4)
    assert model.training  # mode restored
    assert len(frames) == 5
    assert all(f.shape == frames[0].shape and f.dtype == np.uint8 and f.shape[2] == 3 for f in frames)
    assert frames[0].shape[:2] == (1000, 900)
    assert not np.array_equal(frames[0], frames[-1])  # something moves
    with PIL_Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 5
        assert gif.size == (900, 1000)
        assert gif.info.get("loop") == 0
        assert gif.info.get("duration") == 250
    assert [p.name for p in path.parent.iterdir()] == ["think.gif"]  # no temp files left


def test_non_square_grid_several_heads_rgb_and_odd_channels():
    model = tiny_model()
    frames = vi.thinking_gif(model, torch.rand(1, 12, 28))  # token grid 3 x 7, two heads, no target
    assert len(frames) == 5 and len({f.shape for f in frames}) == 1
    for shape in ((3, 16, 20), (2, 20, 16)):
        sample = random_sample(image_shape=shape, grid=(5, 4), heads=4)
        frames = vi.thinking_frames(**sample, target=1, n_neurons=7, fig_scale=0.5)
        assert len(frames) == 6 and frames[0].shape == (500, 450, 3)


def test_plotted_probabilities_are_the_softmax():
    sample = random_sample(T=4, classes=7)
    fig = vi.image_figure(**sample, target=2, class_names=list("abcdefg"))
    bars = fig.panels[2]
    assert isinstance(bars, vi.ProbabilitiesPanel)
    for t in range(4):
        fig.render(t)
        p = bars.bar_values()
        assert p.sum() == pytest.approx(1.0)
        logits = sample["predictions"][:, t]
        expected = np.exp(logits - logits.max())
        np.testing.assert_allclose(p, expected / expected.sum())
        assert f"tick {t + 1}/4" == fig.tick_text.get_text()
        correct = np.argmax(logits) == 2
        assert ("correct" if correct else "wrong") in fig.status_text.get_text()
        assert fig.status_text.get_text().startswith(f"prediction: {'abcdefg'[np.argmax(logits)]} (p = ")
        assert bars.bars[2].get_facecolor()[:3] == pytest.approx((0x2C / 255, 0xA0 / 255, 0x2C / 255))
        # the certainty up to this tick, right ticks marked green and wrong ones red
        np.testing.assert_allclose(fig.c_line.get_ydata(), sample["certainties"][:t + 1])
        right = np.argmax(sample["predictions"][:, :t + 1], axis=0) == 2
        assert len(fig.marks[0].get_xdata()) == right.sum() and len(fig.marks[1].get_xdata()) == (~right).sum()


def test_blitted_frames_match_full_redraws():
    sample = random_sample(T=3)
    fast = vi.image_figure(**sample, target=0)
    slow = vi.image_figure(**sample, target=0, blit=False)
    for t in range(3):
        a, b = fast.render(t).astype(int), slow.render(t).astype(int)
        differs = np.abs(a - b).max(axis=-1) > 40
        assert differs.mean() < 0.002  # only where a cursor and a dashed line cross in the other order


class Answer(viz.Panel):
    """The module docstring's panel: the predicted class, written large."""

    def __init__(self, predicted):
        self.predicted = predicted
        self.shown = []

    def setup(self, fig, area):
        ax = fig.add_subplot(area)
        ax.set_axis_off()
        self.text = ax.text(0.5, 0.5, "", ha="center", va="center", fontsize=40)

    def update(self, t):
        self.shown.append(t)
        self.text.set_text(str(self.predicted[t]))
        return [self.text]

    def status(self, t):
        return f"says {self.predicted[t]}", "#123456"


def test_a_panel_of_ones_own_in_the_shared_figure(tmp_path):
    rng = np.random.default_rng(0)
    T = 5
    answer = Answer(rng.integers(0, 10, T))
    curve = viz.Curve("half", np.full(T, 0.5))
    parts = viz.TaskPanels([answer], ticks=T, correct=np.arange(T) % 2 == 0, curves=[curve], size=(6.0, 6.0),
                           n_neurons=3)
    fig = viz.ThinkingFigure(parts, rng.random(T), rng.normal(size=(T, 9)), caption="a caption", title="a title",
                             fig_scale=0.5)
    frames = fig.frames()
    assert len(frames) == T and {f.shape for f in frames} == {(300, 300, 3)}
    assert answer.shown == list(range(T)) and answer.text.get_text() == str(answer.predicted[-1])
    assert fig.status_text.get_text() == f"says {answer.predicted[-1]}" and fig.status_text.get_color() == "#123456"
    assert fig.tick_text.get_text() == f"tick {T}/{T}"
    np.testing.assert_allclose(fig.curve_lines[0].get_ydata(), np.full(T, 0.5))
    texts = [t.get_text() for t in fig.figure.texts]
    assert "a caption" in texts and "a title" in texts and "Neuron traces" in texts
    assert len(fig.trace_dots) == 3  # n_neurons of the panels, and no pre-activation axes
    assert len(fig.figure.axes) == 1 + 1 + 3
    assert not np.array_equal(frames[0], frames[-1])
    still = fig.still(1)  # all drawn in one pass: the same picture as frame 1
    still.canvas.draw()
    drawn = np.asarray(still.canvas.buffer_rgba())[..., :3]
    assert np.mean(np.abs(drawn.astype(int) - frames[1].astype(int)).max(-1) > 40) < 0.002
    # a plain list of panels takes the defaults; no panels at all leaves the shared parts
    assert len(viz.ThinkingFigure([answer], rng.random(T), rng.normal(size=(T, 2)), fig_scale=0.3).frames()) == T
    assert viz.ThinkingFigure([], rng.random((2, T)), rng.normal(size=(T, 2)), fig_scale=0.3).render(0).shape == \
        (300, 270, 3)


T_BAD = 4


@pytest.mark.parametrize("change, message", [
    (dict(certainty=np.zeros((T_BAD, 2))), r"certainties must have shape \(T,\)"),
    (dict(ticks=5), r"certainties must have shape \(5,\) \(one per tick\)"),
    (dict(post=np.zeros(4)), r"post_activations must have shape \(4, neurons\)"),
    (dict(pre=np.zeros((4, 3))), r"pre_activations \(4, 3\) and post_activations \(4, 6\) differ"),
    (dict(correct=np.ones(3, bool)), r"correct must have shape \(4,\)"),
    (dict(curves=[viz.Curve("x", np.zeros(5))]), r"curve 'x' must have shape \(4,\)"),
    (dict(n_neurons=0), "n_neurons must be at least 1"),
])
def test_the_shared_figure_names_a_bad_input(change, message):
    args = dict(certainty=np.zeros(T_BAD), post=np.zeros((T_BAD, 6)), pre=None, n_neurons=None)
    parts = {k: change.pop(k) for k in ("ticks", "correct", "curves") if k in change}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        viz.ThinkingFigure(viz.TaskPanels([], **parts), args["certainty"], args["post"], args["pre"],
                           n_neurons=args["n_neurons"])


class Numbers:
    """Images of one constant grey each, label = its index mod 10."""

    name, split, source = "numbers", "test", "memory"

    def __len__(self):
        return 12

    def batch(self, idx):
        return (idx.float() / 12).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous(), idx % 10


def test_a_task_of_ones_own_gets_the_shared_gif_from_its_panels(tmp_path):
    class Thinker(Task):
        name = "thinker-test"  # not registered: thinking_gif needs no registry
        sample_noun = "images"

        def thinking_panels(self, output, inputs, targets, data):
            self.seen = (tuple(inputs.shape), targets.tolist(), output.tracking is not None)
            self.panel = Answer(output.predictions[0].argmax(0).numpy())
            return [self.panel]

    model = tiny_model()
    model.train()
    task = Thinker()
    assert task.pick_example(model, Numbers()) == Example(0, "")
    with pytest.raises(ValueError, match="index 12 out of range for 12 test images"):
        task.pick_example(model, Numbers(), 12)
    path = tmp_path / "mine.gif"
    what = task.thinking_gif(model, Numbers(), path, index=7, fps=10)
    assert what == "test image 7" and model.training
    assert task.seen == ((1, 1, 28, 28), [7], True) and task.panel.shown[-5:] == list(range(5))
    with PIL_Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (900, 1000) and gif.info["duration"] == 100
    # a picked example's reason is the caption and ends the description
    what = task.thinking_gif(model, Numbers(), tmp_path / "why.gif", example=Example(3, "it is grey"))
    assert what == "test image 3; why this image: it is grey"
    # a task without panels draws nothing
    assert Task().thinking_gif(model, Numbers(), tmp_path / "none.gif") is None
    assert not (tmp_path / "none.gif").exists()


def test_the_image_task_picks_and_draws(tmp_path):
    model = tiny_model(out_dims=3)
    data = ImageDataset(torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8), torch.arange(30) % 3, 3,
                        name="shapes", split="test", class_names=("circle", "square", "star"))
    task = ImageTask()
    pick = task.pick_example(model, data)
    assert pick == Example(vi.pick_thinking_example(model, data, 500).index,
                           vi.pick_thinking_example(model, data, 500).reason)
    assert pick.reason.startswith("of the first 30 test images, its probabilities change most over the ticks")
    assert task.pick_example(model, data, 4) == Example(4, "")
    with pytest.raises(ValueError, match=r"index 30 out of range for shapes test \(30 images\)"):
        task.pick_example(model, data, 30)
    what = task.thinking_gif(model, data, tmp_path / "t.gif", 5)
    assert what == "test image 5, label 2 (star)"
    what = task.thinking_gif(model, data, tmp_path / "t.gif", example=pick)
    assert what.startswith(f"test image {pick.index}, label ") and what.endswith(f"; why this image: {pick.reason}")
    with PIL_Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 5


def test_the_old_names_lead_to_the_image_task_with_a_warning():
    with pytest.warns(DeprecationWarning, match="ctm.pictures.figures.thinking_gif moved to ctm.tasks.image.pictures"):
        assert viz.thinking_gif is vi.thinking_gif
    with pytest.warns(DeprecationWarning):
        from ctm.pictures.figures import pick_thinking_example
    assert pick_thinking_example is vi.pick_thinking_example
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        viz.nothing  # noqa: B018


def test_bad_inputs_are_clear():
    sample = random_sample()
    with pytest.raises(ValueError, match="does not match the 21 attention tokens"):
        vi.thinking_frames(**{**sample, "token_grid": (4, 5)})
    with pytest.raises(ValueError, match="certainties must have shape"):
        vi.thinking_frames(**{**sample, "certainties": np.zeros(3)})
    with pytest.raises(ValueError, match="class names"):
        vi.thinking_frames(**sample, class_names=["a", "b"])
    with pytest.raises(ValueError, match="target 10"):
        vi.thinking_frames(**sample, target=10)
    with pytest.raises(ValueError, match=r"shape \(C, H, W\)"):
        vi.thinking_gif(tiny_model(), torch.rand(1, 1, 28, 28))


def test_save_gif_checks_frames(tmp_path):
    frame = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="no frames"):
        viz.save_gif([], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="all frames must match"):
        viz.save_gif([frame, np.zeros((10, 13, 3), np.uint8)], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="uint8"):
        viz.save_gif([frame.astype(float)], tmp_path / "a.gif")
    assert not (tmp_path / "a.gif").exists()
    out = viz.save_gif([frame, frame + 200], tmp_path / "b.gif", fps=10, loop=None)
    with PIL_Image.open(out) as gif:
        assert gif.n_frames == 2 and "loop" not in gif.info


def test_render_time_30_ticks(tmp_path):
    torch.manual_seed(0)
    model = ctm.CTM(ctm.CTMConfig())  # the default: 30 ticks, 128 neurons
    start = time.perf_counter()
    frames = vi.thinking_gif(model, torch.rand(1, 28, 28), target=7, path=tmp_path / "t.gif")
    elapsed = time.perf_counter() - start
    size = (tmp_path / "t.gif").stat().st_size
    print(f"\n30-tick thinking GIF: {elapsed:.2f} s, {size / 1e6:.2f} MB")
    assert len(frames) == 30
    assert elapsed < 30
    assert size < 3e6


# ------------------------------------------------------------------------------------------ examples


def make_dataset(labels) -> ImageDataset:
    labels = torch.tensor(labels, dtype=torch.int64)
    images = torch.arange(len(labels) * 16, dtype=torch.uint8).reshape(len(labels), 1, 4, 4)
    return ImageDataset(images, labels, num_classes=10, name="mnist", split="test")


def test_select_example():
    ds = make_dataset([3, 1, 4, 1, 5])
    index, image, target = vi.select_example(ds, index=2)
    assert (index, target) == (2, 4)
    assert image.shape == (1, 4, 4) and image.dtype == torch.float32
    torch.testing.assert_close(image, ds.images[2].float() / 255)
    assert vi.select_example(ds, label=1)[:1] == (1,)
    assert vi.select_example(ds)[0] == 0
    assert vi.select_example(ds, index=3, label=1)[0] == 3
    with pytest.raises(ValueError, match=r"index 5 out of range for mnist test \(5 images\)"):
        vi.select_example(ds, index=5)
    with pytest.raises(ValueError, match="out of range"):
        vi.select_example(ds, index=-1)
    with pytest.raises(ValueError, match="no image with label 7 in mnist test"):
        vi.select_example(ds, label=7)
    with pytest.raises(ValueError, match="has label 4, not 1"):
        vi.select_example(ds, index=2, label=1)


# ------------------------------------------------------------------------------------------ curves, ticks


def metric_rows(n):
    return [{"step": 100 * (i + 1), "epoch": 0.1 * (i + 1), "train_loss": 2.0 / (i + 1),
             "train_accuracy": 0.5 + 0.04 * i, "test_loss": 2.1 / (i + 1), "test_accuracy": 0.45 + 0.05 * i}
            for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 40])
def test_curves(tmp_path, n):
    fig = viz.curves_figure(metric_rows(n))
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 4
    if n == 1:
        assert all(line.get_linestyle() == "None" and line.get_marker() == "o" for line in lines)
    path = viz.save_curves(metric_rows(n), tmp_path / "curves.png")
    with PIL_Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1000, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


def test_curves_draw_the_training_loss_between_evaluations_smoothed():
    rows = metric_rows(2)
    rows[0]["train_loss_trace"] = [[10 * k, 3.0 - 0.02 * k] for k in range(1, 11)]
    rows[1]["train_loss_trace"] = [[100 + 10 * k, 2.0 - 0.01 * k] for k in range(1, 11)] + [[5, "bad"], "x"]
    fig = viz.curves_figure(rows)
    loss_lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert {"train (smoothed)", "test (evaluations)"} <= set(loss_lines) and "train" not in loss_lines
    smoothed = loss_lines["train (smoothed)"]
    assert list(smoothed.get_xdata()) == [10 * k for k in range(1, 21)]  # the malformed points left out
    ys = smoothed.get_ydata()
    assert ys[0] == pytest.approx(2.98) and all(ys[1:] < ys[:-1])  # debiased, falling
    assert list(loss_lines["test (evaluations)"].get_xdata()) == [100, 200]


def test_training_logs_the_loss_trace_in_each_metrics_row(tmp_path):
    from ctm.runs.checkpoint import read_metrics
    from ctm.training import loop as tr

    run = tmp_path / "run"
    cfg = tr.TrainConfig(dataset="parity", steps=8, batch_size=8, eval_every=4, eval_batch_size=64)
    tr.train(run, ctm.CTMConfig(iterations=2, d_model=16, d_input=8, memory_length=2, n_synch_out=4,
                                n_synch_action=4, memory_hidden_dims=2),
             cfg, task=ctm.tasks.make_task("parity", length=4))
    rows = read_metrics(run)
    assert [[p[0] for p in r["train_loss_trace"]] for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert all(r["train_loss"] == pytest.approx(sum(p[1] for p in r["train_loss_trace"]) / 4, rel=1e-4)
               for r in rows)


def test_curves_errors():
    with pytest.raises(ValueError, match="no metrics"):
        viz.curves_figure([])
    with pytest.raises(ValueError, match="no numeric 'step'"):
        viz.curves_figure([{"train_loss": 1.0}])
    with pytest.raises(ValueError, match="no row has"):
        viz.curves_figure([{"step": 1, "lr": 0.1}])


def test_ticks_plot(tmp_path):
    from ctm.training.evaluate import EvalResult

    T = 30
    result = EvalResult(loss=0.3, accuracy=0.97, accuracy_last_tick=0.96,
                        per_tick_accuracy=list(np.linspace(0.1, 0.96, T)),
                        per_tick_certainty=list(np.linspace(0.0, 0.9, T)),
                        most_certain_tick_histogram=[0] * 20 + [5] * 10, n=50)
    for r in (result, result.to_dict()):
        path = viz.save_ticks_plot(r, tmp_path / "ticks.png")
        with PIL_Image.open(path) as im:
            assert im.format == "PNG"
    fig = viz.ticks_figure(result)
    heights = [p.get_height() for p in fig.axes[2].patches]
    assert heights == pytest.approx([0] * 20 + [10] * 10)  # percent of the 50 samples
    # Each quantity on an axis scaled to its own data: changes of a point or two stay visible.
    flat = EvalResult(loss=0.1, accuracy=0.981, accuracy_last_tick=0.98,
                      per_tick_accuracy=list(np.linspace(0.970, 0.980, T)),
                      per_tick_certainty=list(np.linspace(0.95, 0.99, T)), most_certain_tick_histogram=[1] * T, n=T)
    ax_acc, ax_cert = viz.ticks_figure(flat).axes[:2]
    lo, hi = ax_acc.get_ylim()
    assert 96 < lo < 97.0 and 98.1 < hi < 99
    lo, hi = ax_cert.get_ylim()
    assert 0.9 < lo < 0.95 and 0.99 < hi < 1.0
    with pytest.raises(ValueError, match="per_tick_certainty"):
        viz.ticks_figure({"per_tick_accuracy": [0.5]})
    with pytest.raises(ValueError, match="one length"):
        viz.ticks_figure({"per_tick_accuracy": [0.5], "per_tick_certainty": [], "most_certain_tick_histogram": [1]})
