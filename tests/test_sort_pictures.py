"""ctm.tasks.sort's pictures: the thinking GIF (its panels in the shared figure, one frame per tick), the example
picker, `ctm eval --plot`'s wait-time figure, the viewer's data, and its panel in a real browser."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")

import ctm  # noqa: E402
from ctm.pictures import viewer as view  # noqa: E402
from ctm.pictures.figures import TARGET_COLOUR, WRONG_COLOUR, ThinkingFigure  # noqa: E402
from ctm.tasks import make_task  # noqa: E402
from ctm.tasks.sort import SortNumbers, decode  # noqa: E402
from ctm.tasks.sort import pictures as sp  # noqa: E402
from ctm.tasks.sort.task import SortMetrics  # noqa: E402
from ctm.training.loop import TrainConfig  # noqa: E402


def tiny(N=5, T=8, seed=0, sharpen=0.0):
    """A tiny random sort CTM; `sharpen` scales its output layer so its most likely class changes over ticks
    (a random model otherwise answers one class at every tick)."""
    torch.manual_seed(seed)
    model = ctm.CTM(ctm.CTMConfig(backbone="none", input_reader="direct", d_input=N, out_dims=N + 1, iterations=T,
                                  d_model=16, memory_length=3, n_synch_out=8, memory_hidden_dims=2))
    if sharpen:
        with torch.no_grad():
            model.output_projector.weight.mul_(sharpen)
            model.output_projector.bias.zero_()
    return model


def sort_test_set(N):
    return make_task("sort", n=N).load("test", TrainConfig())


def logits_for(best, N):
    """Predictions (1, N + 1, T) whose most likely class at tick t is best[t] (N: the blank)."""
    out = torch.zeros(1, N + 1, len(best))
    for t, c in enumerate(best):
        out[0, c, t] = 5.0
    return out


# --------------------------------------------------------------------------------------------- the GIF


def test_the_thinking_gif_has_one_frame_per_tick(tmp_path):
    task, T = make_task("sort", n=5), 7
    path = tmp_path / "thinking.gif"
    what = task.thinking_gif(tiny(5, T), sort_test_set(5), path, fps=4)
    assert what.startswith("test sample ") and "placed right" in what and "why this sample" in what
    with PIL_Image.open(path) as gif:
        assert gif.n_frames == T
        assert gif.size == (1100, 840)
        assert gif.info["duration"] == 250


def test_the_panels_follow_the_decoding():
    # x sorts as [2, 0, 1, 3]; ticks: blank, 2, 2 (a repeat: nothing new), 0, 3 (wrong: 1 comes third), blank
    x = torch.tensor([[0.1, 0.5, -1.0, 2.0]])
    y = x.argsort(1)
    a = sp.sort_arrays(SimpleNamespace(predictions=logits_for([4, 2, 2, 0, 3, 4], 4)), x, y)
    assert a.order.tolist() == [2, 0, 3] and a.ticks.tolist() == [1, 3, 4]
    assert a.right.tolist() == [True, True, False]
    assert a.emitted_by().tolist() == [0, 1, 1, 2, 3, 3] and a.right_by().tolist() == [0, 1, 1, 2, 2, 2]
    assert a.probabilities.shape == (6, 5) and np.allclose(a.probabilities.sum(1), 1)
    panels = sp.sort_panels(a)
    bars, raster, done = panels.panels
    fig = ThinkingFigure(panels, np.linspace(0, 1, 6), np.random.default_rng(0).normal(size=(6, 8)), fig_scale=0.4)
    fig.update(4)
    colours = [tuple(b.get_facecolor()[:3]) for b in bars.bars]
    from matplotlib.colors import to_rgb

    assert colours[2] == colours[0] == to_rgb(TARGET_COLOUR) and colours[3] == to_rgb(WRONG_COLOUR)
    assert colours[1] != colours[0] and colours[1] != colours[3]  # not emitted yet
    assert bars.outline.get_visible() and bars.text.get_text() == "tick 5 emits index 3 (2): not its place"
    assert done.status(4) == ("2 of 4 placed right, 1 not", WRONG_COLOUR)
    assert done.right_marks.get_xdata().tolist() == [0, 1] and done.wrong_marks.get_xdata().tolist() == [2]
    assert raster.right_marks.get_xdata().tolist() == [2, 4] and raster.wrong_marks.get_xdata().tolist() == [5]
    shown = raster.image.get_array()
    blank = np.ma.getmaskarray(shown) | np.isnan(np.ma.getdata(shown))
    assert not blank[:, :5].any() and blank[:, 5].all()  # the ticks so far only
    assert shown[4, 0] == pytest.approx(a.probabilities[0, 4])  # the blank row on top
    assert shown[0, 3] == pytest.approx(a.probabilities[3, 2])  # row 0: the smallest (index 2)
    fig.update(2)
    assert bars.text.get_text() == "tick 3 repeats index 2: nothing new" and not bars.outline.get_visible()
    fig.update(0)
    assert bars.text.get_text() == "tick 1 emits nothing (blank)"
    assert fig.status_text.get_text() == "0 of 4 placed right"
    assert panels.summary == "2 of 4 placed right (3 emitted)"


def test_a_sorted_sample_says_so():
    x = torch.tensor([[0.3, -0.2, 0.9]])
    a = sp.sort_arrays(SimpleNamespace(predictions=logits_for([3, 1, 3, 0, 2], 3)), x, x.argsort(1))
    panels = sp.sort_panels(a)
    assert panels.panels[2].status(4) == ("3 of 3 placed right  \u2713 sorted", TARGET_COLOUR)
    assert panels.summary == "sorted right, the last of 3 emitted at tick 5 of 5"
    assert [c.values.tolist() for c in panels.curves] == [[0, 1 / 3, 1 / 3, 2 / 3, 1]] * 2


@pytest.mark.parametrize("N, T", [(4, 4), (64, 100)])
def test_any_size_lays_out_and_blits(N, T):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(1, N))).float()
    best = rng.integers(0, N + 1, T).tolist()
    a = sp.sort_arrays(SimpleNamespace(predictions=logits_for(best, N)), x, x.argsort(1))
    fig = ThinkingFigure(sp.sort_panels(a), rng.random(T), rng.normal(size=(T, 8)), fig_scale=0.4)
    first = fig.update(0)
    assert [id(p) for p in fig.update(T - 1)] == [id(p) for p in first]  # the same artists every tick
    frames = [fig.render(t) for t in (0, T // 2, T - 1)]
    assert all(f.shape == (336, 440, 3) for f in frames) and not np.array_equal(frames[0], frames[2])


# ------------------------------------------------------------------------------------------ which sample


class Sorter(torch.nn.Module):
    """Emits each sample's argsort, sample b waiting b % 3 ticks before every second element (sample 1: nothing)."""

    def __init__(self, N, T):
        super().__init__()
        self.N, self.T, self.w = N, T, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, track=False):
        out = torch.zeros(x.shape[0], self.N + 1, self.T)
        out[:, self.N] = 1.0
        for b, order in enumerate(x.argsort(1).tolist()):
            if b == 1:
                continue  # sample 1 emits nothing
            t = -1
            for k, i in enumerate(order):
                t += 1 + (b % 3) * (k % 2)
                out[b, :, t] = 0
                out[b, i, t] = 1.0
        return SimpleNamespace(predictions=out)


def test_pick_example_takes_a_sorted_sample_whose_waits_vary_most():
    data = SortNumbers(4, 7, 0x50F7, "test")
    example = make_task("sort", n=4).pick_example(Sorter(4, 12), data)
    assert example.index == 2  # waits 0, 2, 0, 2 (sample 5 too, but later)
    assert "7 are sorted right" not in example.reason and "6 are sorted right" in example.reason
    assert "0 to 2 ticks" in example.reason
    assert make_task("sort", n=4).pick_example(Sorter(4, 12), data, index=3).index == 3
    with pytest.raises(ValueError, match="out of range"):
        make_task("sort", n=4).pick_example(Sorter(4, 12), data, index=7)
    with pytest.raises(ValueError, match="--label picks a sample by its class"):
        make_task("sort", n=4).pick_example(Sorter(4, 12), data, label=1)


def test_pick_example_without_a_sorted_sample_takes_the_most_placed_right():
    example = sp.pick_example(tiny(5, 8), sort_test_set(5), pool=50)
    assert 0 <= example.index < 50 and "none is sorted right" in example.reason


# ---------------------------------------------------------------------------------------- ctm eval --plot


def metrics_of(model, N):
    data = sort_test_set(N)
    x, y = data.batch(torch.arange(64))
    with torch.no_grad():
        out = model(x)
    metrics = SortMetrics(model.config)
    task = make_task("sort", n=N)
    loss, tick = task.loss(out.predictions, out.certainties, y)
    metrics.update(out, y, loss, tick, x)
    return metrics.result()


def test_save_eval_plot_writes_the_wait_time_figure(tmp_path):
    result = metrics_of(tiny(4, 10, sharpen=40), 4)
    path = sp.save_eval_plot(result, tmp_path / "ticks.png")
    with PIL_Image.open(path) as png:
        assert png.size == (1000, 800)
    fig = sp.eval_figure(result.to_dict())  # its dict too
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sp.PAPER_CLAIM in texts
    make_task("sort", n=4).plot_eval(result, tmp_path / "task.png")
    assert (tmp_path / "task.png").stat().st_size > 0


def test_the_eval_plot_says_when_there_are_no_waits(tmp_path):
    result = metrics_of(tiny(4, 6), 4)  # a random model: nothing placed right
    result.wait_by_gap = [{**w, "wait": None, "n": 0} for w in result.wait_by_gap]
    fig = sp.eval_figure(result)
    assert any("no waits to show" in t.get_text() for t in fig.axes[0].texts)
    sp.save_eval_plot(result, tmp_path / "empty.png")


# ------------------------------------------------------------------------------------------------ viewer


def sort_page(N=5, T=10, n=6):
    task = make_task("sort", n=N)
    return task.viewer_data(tiny(N, T, sharpen=40), sort_test_set(N), n, threshold=0.5), task


def test_viewer_data_holds_the_decoding():
    payload, task = sort_page()
    N, T = 5, 10
    assert payload["kind"] == "sort" and payload["n"] == N and payload["ticks"] == T
    assert len(payload["samples"]) == 6 and payload["source"] == "sort test samples of 5 numbers"
    x, y = sort_test_set(N).batch(torch.arange(6))
    model = tiny(N, T, sharpen=40)
    with torch.no_grad():
        d = decode(model(x).predictions)
    assert sum(int(c) for c in d.count) > 0  # something to show
    for b, s in enumerate(payload["samples"]):
        assert {"index", "certainty", "traces", "most_certain_tick", "numbers", "target", "best", "order",
                "emitted_at", "placed", "right", "probs"} <= set(s)
        k = int(d.count[b])
        assert s["order"] == d.order[b, :k].tolist() and s["emitted_at"] == d.ticks[b, :k].tolist()
        assert s["best"] == d.best[b].tolist() and s["target"] == y[b].tolist()
        assert s["numbers"] == pytest.approx(x[b].tolist(), abs=1e-4)
        probs = np.frombuffer(base64.b64decode(s["probs"]), np.uint8).reshape(T, N + 1)
        assert (np.abs(probs.astype(int).sum(1) - 255) <= N + 1).all()
        assert s["placed"] == sum(c == t for c, t in zip(s["order"][:N], s["target"], strict=False))
        assert s["right"] is (s["placed"] == N and k == N)
    assert "CTM.renderers.sort" in task.viewer_script()
    assert view.task_script("sort") == task.viewer_script()
    with pytest.raises(ValueError, match="classes"):
        from ctm.tasks.sort.viewer import sort_viewer_data

        sort_viewer_data(tiny(4, 6), torch.randn(2, 5))


# ----------------------------------------------------------------------------------------- in a browser


def test_the_sort_page_shows_the_order_tick_by_tick(browser, tmp_path):
    payload, task = sort_page()
    payload["title"] = "sort <b>title</b>"
    path = view.write_viewer(payload, tmp_path / "viewer.html", task.viewer_script())
    N, T = payload["n"], payload["ticks"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        page.wait_for_selector("#samples li")
        assert page.locator("#samples li").count() == 6 and page.text_content("#title") == "sort <b>title</b>"
        shown = [p for p, s in enumerate(payload["samples"]) if len(s["order"]) >= 2][:2] or [0]
        for pos in shown:
            page.click(f"#samples li[data-pos='{pos}']")
            s = payload["samples"][pos]
            for t in range(T):
                page.eval_on_selector("#tick-slider", f"(e) => {{ e.value = {t + 1}; "
                                      "e.dispatchEvent(new Event('input')); }")
                assert page.text_content("#tick-label") == f"tick {t + 1} / {T}"
                k = sum(1 for at in s["emitted_at"] if at <= t)
                order = s["order"][:k]
                right = sum(1 for j, c in enumerate(order) if j < N and c == s["target"][j])
                text = " ".join(map(str, order)) if order else "nothing yet"
                assert page.text_content("#sort-order") == \
                    f"order so far: {text} ({k} emitted, {right} of {N} placed right)"
                assert page.locator("#sorted .sorted-dot").count() == k
                assert page.locator("#sorted .sorted-dot[data-right='1']").count() == right
                assert page.locator("#numbers rect.num-bar").count() == N
                assert f"{N} numbers · tick {t + 1}: {right} of {N} placed right" in page.text_content("#sample-title")
                now = s["order"][s["emitted_at"].index(t)] if t in s["emitted_at"] else -1
                assert int(page.get_attribute("#sort-tick", "data-now")) == now
            assert page.locator("#emitted .raster-mark").count() == len(s["order"])
            # sorting halts once the order is complete and certain (SortTask.halting), not on certainty alone
            tau = payload["threshold"]
            halt = next((t for t in range(T) if sum(1 for at in s["emitted_at"] if at <= t) >= N
                         and s["certainty"][t] >= tau), T - 1)
            assert page.text_content("#halt-info").startswith(f"halts at tick {halt + 1}")
        assert "wrong after all ticks" in page.text_content("#meta")
        # its right/wrong reads the whole order: the list and the heading name the last tick
        s = payload["samples"][shown[-1]]
        mark = "\u2713" if s["right"] else "\u2717"
        assert page.get_attribute(f"#samples li[data-pos='{shown[-1]}']", "title").startswith(
            f"sample {s['index']}: {s['placed']}/{N} placed {mark} after all ticks (tick {T});")
        assert page.text_content("#sample-title").endswith(f" · judged after all ticks (tick {T}): {mark}")
        page.select_option("#filter", "wrong")
        assert page.locator("#samples li").count() == sum(1 for s in payload["samples"] if not s["right"]) or \
            page.text_content("#samples li") == "no sample matches"
    finally:
        page.close()
    assert errors == []
