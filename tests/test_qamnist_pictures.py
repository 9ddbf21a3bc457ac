"""ctm.tasks.qamnist's pictures and predict ("watch it calculate"): what each tick reads, the thinking GIF (its panels
in the shared figure, one frame per tick of the question's own schedule), the example picker, the viewer's data,
`ctm eval --plot` (accuracy by operations and digits), and `ctm predict --digits ... --question ...` (its parse
errors, its line, --json, and the same answer as the question read from the data set)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import make_synthetic, run_cli

pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")

import ctm  # noqa: E402
from ctm.nn.readers import Phase  # noqa: E402
from ctm.pictures.figures import ThinkingFigure  # noqa: E402
from ctm.tasks import make_task  # noqa: E402
from ctm.tasks.base import on_model, tracked_forward  # noqa: E402
from ctm.tasks.qamnist import pictures as qp  # noqa: E402
from ctm.tasks.qamnist.data import schedule, schedule_ticks, tick_plan  # noqa: E402
from ctm.tasks.qamnist.predict import parse_question  # noqa: E402
from ctm.tasks.qamnist.viewer import qamnist_viewer_data, spread_indices  # noqa: E402
from ctm.training.loop import TrainConfig  # noqa: E402

OPTIONS = {"digits": 2, "digits_delta": 1, "operations": 2, "operations_delta": 1}  # 1-2 digits, 1-2 operations
MODEL = ["--d-model", "24", "--d-input", "16", "--heads", "1", "--memory-length", "3", "--n-synch-out", "8",
         "--n-synch-action", "8", "--memory-hidden-dims", "4"]
TRAIN = ["train", "--task", "qamnist", *[f for k, v in OPTIONS.items() for f in ("--task-option", f"{k}={v}")],
         "--steps", "30", *MODEL, "--batch-size", "16", "--eval-every", "30", "--threads", "1", "--no-progress"]


def tiny_run(root):
    """A tiny QAMNIST run (30 steps) over MNIST-shaped synthetic digits of 12x12 pixels (tests/helpers.py):
    the run directory and its data folder."""
    data = make_synthetic(root / "data", n_train=300, n_test=100)
    out = root / "run"
    assert run_cli(*TRAIN, "--data-dir", data, "--out", out) == 0
    return out, data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("qamnist"))


def qamnist_test_set(data_dir):
    return make_task("qamnist", **OPTIONS).load("test", TrainConfig(dataset="qamnist"), str(data_dir))


def model_of(run_dir):
    from ctm.inference import load_run

    return load_run(run_dir, "cpu").model


# ------------------------------------------------------------------------------------- what a tick reads


def test_tick_plan_says_what_each_tick_reads_and_which_running_value_is_known():
    # digits 7 3 1, question "2 + 0 - 1": 1 + 7 - 3 = 5; each input 2 ticks, then 2 answer ticks
    plan = tick_plan(3, [2, 0, 1], [0, 1], repeats=2, answer_ticks=2)
    assert plan.labels == ["digit 0", "digit 1", "digit 2", "index 2", "+", "index 0", "-", "index 1", "answer"]
    assert plan.kinds == ["digit"] * 3 + ["index", "operator", "index", "operator", "index", "answer"]
    assert plan.reads == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    assert plan.ticks == schedule_ticks(3, 2, 2, 2) == 18
    # the first operand's value from the first tick reading index 2, through the "+", then after each operation
    assert plan.known == [-1] * 6 + [0] * 4 + [1] * 4 + [2] * 4
    assert plan.value_ticks == [7, 11, 15]  # the last tick reading each index
    assert [plan.digit_of(t) for t in range(6)] == [0, 0, 1, 1, 2, 2] and plan.digit_of(6) == -1
    one = tick_plan(1, [0, 0], [1], repeats=1, answer_ticks=1)
    assert one.reads == [0, 1, 2, 3, 4] and one.known == [-1, 0, 0, 1, 1] and one.value_ticks == [1, 3]


def test_tracked_forward_takes_a_schedule_token_ids_staying_integers():
    task = make_task("qamnist", **OPTIONS)
    fields = {"input_reader": "schedule", "input_tokens": 52, "fixed_tokens": 50, "out_dims": 10, "in_channels": 1,
              "iterations": 8}
    torch.manual_seed(0)
    model = ctm.CTM(ctm.CTMConfig(d_model=16, d_input=16, heads=1, memory_length=3, n_synch_out=8, n_synch_action=8,
                                  memory_hidden_dims=4, **fields)).double()
    phases = schedule(torch.rand(2, 2, 1, 12, 12), torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0], [1]]), 1, 1)
    moved = on_model(phases, model)
    assert all(isinstance(p, Phase) for p in moved)
    assert moved[0].inputs.dtype == torch.float64 and moved[2].inputs.dtype == torch.int64
    model.train()
    out = tracked_forward(model, phases)
    assert model.training  # its mode restored
    assert out.predictions.shape == (2, 10, 6) and out.tracking.attention.shape[:2] == (6, 2)
    assert task.predict_flags == ("digits", "question")


# ------------------------------------------------------------------------------------------------ GIF


def test_the_run_draws_a_thinking_gif_of_a_question(run):
    run_dir, _ = run
    gif = run_dir / "thinking.gif"  # ctm train draws it at the end
    assert gif.is_file()
    with PIL_Image.open(gif) as im:
        assert 5 <= im.n_frames <= 8  # one frame per tick of the question shown: (D + 2 O + 1) + 1 ticks


def test_ctm_viz_draws_the_question_asked_one_frame_per_tick(run, tmp_path, capsys):
    run_dir, data_dir = run
    data = qamnist_test_set(data_dir)
    k = next(k for k in range(0, len(data), data.block) if data.shape_of_block(k // data.block) == (2, 2))
    out = tmp_path / "q.gif"
    capsys.readouterr()
    assert run_cli("viz", run_dir, "--index", k, "--out", out, "--threads", "1") == 0
    said = capsys.readouterr().out
    q = data.question(k)
    ticks = schedule_ticks(2, 2, 1, 1)
    assert f"Wrote {out}: {ticks} frames (test question {k}, {q.text()} over digits " in said
    with PIL_Image.open(out) as im:
        assert im.n_frames == ticks
    assert run_cli("viz", run_dir, "--label", "3", "--threads", "1") == 2  # no class per question: refused
    assert "--label picks a sample by its class" in capsys.readouterr().err


def test_the_panels_judge_each_running_value_and_star_the_answer_tick(run):
    run_dir, data_dir = run
    data, model = qamnist_test_set(data_dir), model_of(run_dir)
    k = 3 * data.block + 5  # a block of 2 digits and 2 operations
    q = data.question(k)
    phases, answers = data.batch(torch.tensor([k]))
    out = tracked_forward(model, phases)
    a = qp.question_arrays(out, phases, q, data.repeats, data.answer_ticks)
    assert a.ticks == 8 and a.images.shape == (2, 1, 12, 12) and a.attention.shape[0] == 8
    truth = a.truth()
    assert list(truth[:2]) == [-1, -1] and truth[2] == q.running[0] and truth[-1] == q.answer == int(answers[0])
    assert list(a.judged()) == [False, False] + [True] * 6
    assert list(a.correct()) == list((a.decoded == truth) & a.judged())
    assert a.answer_tick == 7 and a.right == (int(a.decoded[7]) == q.answer)
    assert np.allclose(a.attention[2:], 0)  # token and answer ticks attend to nothing
    panels = qp.qamnist_panels(a)
    assert panels.starred == 7 and q.text() in panels.summary
    figure = ThinkingFigure(panels, a.certainty, out.tracking.post_activations[:, 0].numpy())
    frames = [figure.render(t) for t in (0, 3, 7)]
    assert frames[0].shape == frames[2].shape and frames[0].shape[2] == 3
    assert len({f.tobytes() for f in frames}) == 3
    assert figure.parts.judged is not None
    assert qp.arithmetic(q).startswith(f"{q.text()}: ") and qp.arithmetic(q).endswith(f"= {q.answer} (mod 10)")


def test_pick_example_prefers_the_longest_question_answered_right(run):
    run_dir, data_dir = run
    data, model = qamnist_test_set(data_dir), model_of(run_dir)
    ex = qp.pick_example(model, data, pool=32)
    q = data.question(ex.index)
    assert ex.reason.startswith("of 32 test questions (4 shapes of digits and operations)")
    if "none is answered right" not in ex.reason:
        d, o = len(q.digits), len(q.operators)
        assert f"the longest ({d} digit{'s' if d > 1 else ''}, {o} operation{'s' if o > 1 else ''};" in ex.reason
    assert qp.pick_example(model, data, 7) == (7, "")
    with pytest.raises(ValueError, match="index 4000 out of range for 4000 test questions"):
        qp.pick_example(model, data, 4000)


# ---------------------------------------------------------------------------------------------- viewer


def test_viewer_data_spreads_the_questions_over_the_shapes_each_with_its_ticks(run):
    run_dir, data_dir = run
    data, model = qamnist_test_set(data_dir), model_of(run_dir)
    indices = spread_indices(data, 6)
    assert indices == [0, 1, 125, 126, 250, 375]  # the first of each shape's block, then the second ...
    page = qamnist_viewer_data(model, data, indices, threshold=0.5)
    assert page["kind"] == "qamnist" and page["image_size"] == [12, 12] and page["threshold"] == 0.5
    samples = page["samples"]
    assert [s["index"] for s in samples] == indices
    assert sorted({s["ticks"] for s in samples}) == [5, 6, 7, 8] and page["ticks"] == 8
    for s in samples:
        q = data.question(s["index"])
        T = s["ticks"]
        plan = tick_plan(len(q.digits), q.indices, q.operators, 1, 1)
        assert s["reads"] == plan.reads and s["labels"] == plan.labels and s["text"] == q.text()
        assert len(s["certainty"]) == len(s["decoded"]) == len(s["truth"]) == len(s["traces"]) == T
        assert s["answer_tick"] == T - 1 and s["right"] == (s["decoded"][T - 1] == q.answer)
        assert s["truth"][-1] == q.answer and s["truth"][:len(q.digits)] == [-1] * len(q.digits)
        assert s["attention_max"][len(q.digits):] == [-1] * (T - len(q.digits))
        assert min(s["attention_max"][:len(q.digits)]) >= 0


def test_ctm_view_writes_the_page_with_its_renderer(run, capsys):
    run_dir, _ = run
    assert run_cli("view", run_dir, "--samples", "5", "--threads", "1") == 0
    html = (run_dir / "viewer.html").read_text(encoding="utf-8")
    assert "CTM.renderers.qamnist" in html and '"kind":"qamnist"' in html
    assert "5 samples of QAMNIST test questions" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- eval --plot


def test_eval_plot_draws_accuracy_by_operations_and_digits(run, capsys):
    run_dir, _ = run
    capsys.readouterr()
    assert run_cli("eval", run_dir, "--json", "--plot", "--threads", "1") == 0
    result = json.loads(capsys.readouterr().out)
    plot = run_dir / "ticks.png"
    assert result["plot"] == str(plot) and plot.is_file()
    with PIL_Image.open(plot) as im:
        assert im.size[0] > im.size[1] > 300
    fig = qp.eval_figure(result)
    titles = [ax.get_title() for ax in fig.axes]
    assert "Accuracy by number of operations" in titles and "Accuracy by number of digits" in titles
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert np.allclose(bars, [result["by_operations"][k] * 100 for k in ("1", "2")])
    with pytest.raises(ValueError, match="by_shape is empty"):
        qp.eval_figure({**result, "by_shape": []})


# ---------------------------------------------------------------------------------------------- predict


@pytest.mark.parametrize("text, n, expected", [
    ("1 + 0 - 1", 2, ([1, 0, 1], [0, 1])),
    ("  2+0-1 ", 3, ([2, 0, 1], [0, 1])),
    ("0 - 0", 1, ([0, 0], [1])),
])
def test_parse_question(text, n, expected):
    assert parse_question(text, n) == expected


@pytest.mark.parametrize("text, n, said", [
    ("1 + 2", 2, "index 2 is out of range: --digits gives 2 images (indices 0 to 1)"),
    ("0 + 1", 1, "index 1 is out of range: --digits gives 1 image (indices 0 to 0)"),
    ("1 * 0", 2, "'*' is not an index or an operator: the operators are + and -"),
    ("1 + + 0", 2, "two operators in a row (+ +); put an index between them"),
    ("1 0", 2, "two indices in a row (1 0); put + or - between them"),
    ("- 1", 2, "starts with the operator -; a question starts with an index"),
    ("1 + 0 -", 2, "ends with the operator -; give the index it applies to"),
    ("1", 2, "no operation; a question has at least one"),
    ("   ", 2, "empty; give indices into --digits joined by + and -"),
    ("\u0661 + 0", 2, "is not an index or an operator"),  # an Arabic-Indic one: indices are 0-9
])
def test_parse_question_names_the_mistake_in_one_line(text, n, said):
    with pytest.raises(ValueError) as e:
        parse_question(text, n)
    assert said in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("--question ")


def write_digits(data, k, folder):
    """Question k's digit images as PNG files (the uint8 pixels as they are): their paths."""
    q = data.question(k)
    paths = []
    for i, row in enumerate(q.images):
        path = folder / f"digit{i}.png"
        PIL_Image.fromarray(data.images.images[row, 0].numpy()).save(path)
        paths.append(path)
    return q, paths


LINE = re.compile(r"^(?P<q>\d+( [+-] \d+)+) = (?P<a>\d) \(certainty (?P<c>[01]\.\d{3}) at tick (?P<t>\d+) of "
                  r"(?P<T>\d+), probability (?P<p>[01]\.\d{3}); running values decoded (?P<r>\d(, \d)*)\)$")


def test_predict_answers_a_question_about_your_digits_as_the_data_set_asks_it(run, tmp_path, capsys):
    run_dir, data_dir = run
    data, model = qamnist_test_set(data_dir), model_of(run_dir)
    k = 3 * data.block + 2
    q, paths = write_digits(data, k, tmp_path)
    capsys.readouterr()
    assert run_cli("predict", run_dir, "--digits", *paths, "--question", q.text(), "--question", "0 - 0", "--json",
                   "--threads", "1") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["question"] for r in records] == [q.text(), "0 - 0"]
    r = records[0]
    assert r["digits"] == [str(p) for p in paths] and r["indices"] == q.indices
    assert r["operators"] == ["+-"[o] for o in q.operators] and r["ticks"] == 8
    # the same question read from the data set: the same answer, at the same tick
    phases, _ = data.batch(torch.tensor([k]))
    out = tracked_forward(model, phases, track=False)
    tick = 7  # one answer tick: the last
    assert r["tick"] == tick + 1 and r["answer"] == int(out.predictions[0, :, tick].argmax())
    assert r["certainty"] == pytest.approx(float(out.certainties[0, 1, tick]), abs=1e-5)
    assert r["running"] == [int(out.predictions[0, :, t].argmax()) for t in (2, 4, 6)]
    assert r["running_ticks"] == [3, 5, 7]
    # the printed line
    assert run_cli("predict", run_dir, "--digits", *paths, "--question", f" {q.text()} ", "--threads", "1") == 0
    line = capsys.readouterr().out.strip()
    m = LINE.match(line)
    assert m, line
    assert m["q"] == q.text() and int(m["a"]) == r["answer"] and int(m["t"]) == r["tick"] and m["T"] == "8"
    assert m["r"] == ", ".join(map(str, r["running"]))


@pytest.mark.parametrize("flags, said", [
    (["--question", "0 + 1"], "no --digits: a qamnist run answers a question about digit images: pass --digits IMG"),
    (["--digits", "{d}"], "no --question: a qamnist run answers"),
    (["--digits", "{d}", "--question", "0 + 1"], "--question '0 + 1': index 1 is out of range: --digits gives 1 "
                                                  "image (indices 0 to 0)"),
    (["{d}", "--digits", "{d}", "--question", "0 + 0"], "a qamnist run reads its digit images from --digits and its "
                                                       "question from --question, not INPUT arguments"),
    (["--digits", "{d}", "--question", "0 + 0", "--halt-certainty", "0.5"], "halting does not apply to the qamnist "
                                                                             "task"),
    (["--digits", "missing.png", "--question", "0 + 0"], "missing.png: no such file"),
])
def test_predict_refuses_in_one_line(run, tmp_path, capsys, flags, said):
    run_dir, _ = run
    digit = tmp_path / "d.png"
    PIL_Image.fromarray(np.zeros((12, 12), np.uint8)).save(digit)
    capsys.readouterr()
    assert run_cli("predict", run_dir, *[f.format(d=digit) for f in flags], "--threads", "1") == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1


def test_digits_and_question_are_refused_for_other_tasks(tmp_path, capsys):
    digit = tmp_path / "d.png"
    PIL_Image.fromarray(np.zeros((28, 28), np.uint8)).save(digit)
    capsys.readouterr()
    assert run_cli("predict", "--pretrained", "mnist", digit, "--digits", digit, "--question", "0 + 0") == 2
    err = capsys.readouterr().err.strip()
    assert "--digits is for a qamnist run; this run's task is image" in err and len(err.splitlines()) == 1
    assert run_cli("predict", "--pretrained", "parity", "++--++--", "--question", "0 + 0") == 2
    assert "--question is for a qamnist run; this run's task is parity" in capsys.readouterr().err
