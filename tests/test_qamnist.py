"""The QAMNIST task: generated questions against a plain evaluation written here from the images' labels, their
schedules, the splits their images come from, determinism, the (digits, operations) distribution and the test
set's blocks, the loss against the official `qamnist_loss`, and training, evaluation, resume and refused options
through the CLI."""

from __future__ import annotations

import collections
import importlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli_error, eval_json, run_cli
from safetensors.torch import load_file

from ctm.data.idx import read_idx
from ctm.runs import checkpoint as ckpt
from ctm.tasks import make_task
from ctm.tasks.qamnist import qamnist_loss
from ctm.training import loop as tr

pytestmark = pytest.mark.usefixtures("one_thread")

PLUS, MINUS = 50, 51  # the operator tokens: the rows after the 50 index rows of the token table

# A QAMNIST CTM small enough to train in seconds on one thread (the task fixes its ticks and token table).
def tiny_flags(d_model: int = 32, d_input: int = 16) -> list[str]:
    return ["--d-model", str(d_model), "--d-input", str(d_input), "--heads", "1", "--n-synch-out", "8",
            "--n-synch-action", "8", "--memory-length", "4", "--memory-hidden-dims", "4", "--positional-embedding",
            "none", "--backbone", "tutorial", "--threads", "1", "--no-progress"]


ONE_AND_ONE = ["--task", "qamnist", "--task-option", "digits=1", "--task-option", "digits_delta=0", "--task-option",
               "operations=1", "--task-option", "operations_delta=0"]


def _data_dir() -> Path:
    folder = os.environ.get("CTM_DATA_DIR")
    if not folder or not (Path(folder) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("MNIST not found: set CTM_DATA_DIR to a folder holding mnist/ (the four IDX files)")
    return Path(folder)


@pytest.fixture(scope="module")
def mnist():
    """MNIST read here straight from $CTM_DATA_DIR/mnist: {split: (images uint8 (N, 28, 28), labels (N,))}."""
    folder = _data_dir() / "mnist"
    return {split: (torch.from_numpy(read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")),
                    torch.from_numpy(read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")).long())
            for split, prefix in (("train", "train"), ("test", "t10k"))}


def _streams(batch_size: int = 64, seed: int = 3, **options):
    _data_dir()
    task = make_task("qamnist", **options)
    config = tr.make_train_config("qamnist", batch_size=batch_size, seed=seed)
    return task.load("train", config), task.load("test", config)


@pytest.fixture(scope="module")
def streams():
    """(train, test) question streams with the default options (1 to 4 digits, 1 to 4 operations)."""
    return _streams()


# ------------------------------------------------------------------------------------------- questions


def _answer(labels: list[int], first: int, steps: list[tuple[int, int]]) -> int:
    """The answer written out: the first operand's label, then each (operator token, index token) applied left to
    right, the result taken modulo 10 after every operation."""
    value = labels[first] % 10
    for op, i in steps:
        assert op in (PLUS, MINUS)
        value = value + labels[i] if op == PLUS else value - labels[i]
        value %= 10
    return value


def _check_block(stream, idx: torch.Tensor, split_images: torch.Tensor, repeats: int, answer_ticks: int) -> tuple:
    """Check the questions of one block against the schedule `batch` gives and the plain evaluation; (D, O)."""
    phases, answers = stream.batch(idx)
    questions = stream.questions(idx)
    b = len(idx)
    attend = [p for p in phases if p.kind == "attend"]
    D = len(attend)
    O = (len(phases) - D - 2) // 2
    # D attend phases, the first index, (operator, index) x O, then the blank answer phase
    assert [p.kind for p in phases] == ["attend"] * D + ["token"] * (2 * O + 1) + ["blank"]
    assert all(p.ticks == repeats for p in phases[:-1]) and phases[-1].ticks == answer_ticks
    tokens = torch.stack([p.inputs for p in phases[D:-1]], 1)  # (b, 2 O + 1)
    assert tokens.dtype == torch.long and tokens.shape == (b, 2 * O + 1)
    assert ((tokens[:, 0::2] >= 0) & (tokens[:, 0::2] < D)).all()  # operand indices name one of the D digits
    assert ((tokens[:, 1::2] == PLUS) | (tokens[:, 1::2] == MINUS)).all()
    assert answers.shape == (b,) and answers.dtype == torch.long
    labels = stream.images.labels  # the dataset's own labels
    for j, q in enumerate(questions):
        assert len(q.images) == D and len(q.operators) == O
        rows = torch.tensor(q.images)
        for i, p in enumerate(attend):  # the pixels shown are the question's rows of the split, / 255
            assert p.inputs.dtype == torch.float32 and p.inputs.shape[1:] == (1, 28, 28)
            torch.testing.assert_close(p.inputs[j, 0], split_images[rows[i]].float() / 255, rtol=0, atol=0)
        row_labels = [int(labels[r]) for r in q.images]
        t = tokens[j].tolist()
        expected = _answer(row_labels, t[0], list(zip(t[1::2], t[2::2], strict=True)))
        assert int(answers[j]) == expected == q.answer, (q, t)
        # the readable question: the tokens, the operators as + and -
        words = [str(t[0])] + [w for op, i in zip(t[1::2], t[2::2], strict=True) for w in ("+-"[op - PLUS], str(i))]
        assert q.text() == " ".join(words)
        assert q.indices == t[0::2] and q.operators == [op - PLUS for op in t[1::2]] and q.digits == row_labels
    return D, O


@pytest.mark.parametrize("options", [{}, {"repeats": 2, "answer_ticks": 3}])
def test_questions_are_answered_as_written_out_from_the_image_labels(mnist, options):
    train, test = _streams(batch_size=32, **options)
    repeats, answer_ticks = options.get("repeats", 1), options.get("answer_ticks", 1)
    shapes = set()
    for block in (0, 1, 7, 1000, 123456789):  # 5 training blocks of 32: 160 questions
        idx = torch.arange(block * 32, block * 32 + 32)
        shapes.add(_check_block(train, idx, mnist["train"][0], repeats, answer_ticks))
    for block in range(16):  # every (D, O) of the test set, 12 questions each (192)
        idx = torch.arange(block * 125 + 50, block * 125 + 62)
        shapes.add(_check_block(test, idx, mnist["test"][0], repeats, answer_ticks))
    assert {(d, o) for d in range(1, 5) for o in range(1, 5)} <= shapes


def test_a_question_text_reads_plus_and_minus():
    from ctm.tasks.qamnist import Question

    q = Question(images=[7, 8, 9], digits=[3, 5, 9], indices=[2, 0, 1, 1], operators=[0, 1, 1], running=[9, 2, 7, 2])
    assert q.text() == "2 + 0 - 1 - 1" and q.answer == 2
    assert Question([4], [6], [0], [], [6]).text() == "0"


# ------------------------------------------------------------------------------------ splits, determinism


def test_test_questions_show_test_images_and_training_questions_training_images(mnist, streams):
    train, test = streams
    for stream, split in ((train, "train"), (test, "test")):
        images, labels = mnist[split]
        assert torch.equal(stream.images.images[:, 0], images) and torch.equal(stream.images.labels, labels)
    assert len(test.images) == 10_000 and len(train.images) == 60_000
    assert len(test) == 4000
    # a drawn test batch's pixels are the test split's rows
    idx = torch.arange(125 * 3, 125 * 3 + 40)
    phases, _ = test.batch(idx)
    rows = torch.tensor([q.images for q in test.questions(idx)])
    assert int(rows.max()) < 10_000
    for i, p in enumerate(p for p in phases if p.kind == "attend"):
        assert torch.equal(p.inputs[:, 0], mnist["test"][0][rows[:, i]].float() / 255)


def test_questions_depend_only_on_their_stream_and_index(streams):
    train, test = streams
    for stream, idx in ((train, torch.tensor([64 * 5 + 3, 64 * 5 + 40, 64 * 5 + 9])), (test, torch.tensor([255, 300]))):
        phases, answers = stream.batch(idx)
        again, answers_again = stream.batch(idx)
        assert torch.equal(answers, answers_again) and len(phases) == len(again)
        for p, q in zip(phases, again, strict=True):
            assert p.kind == q.kind and p.ticks == q.ticks and torch.equal(p.inputs, q.inputs)
        # each sample alone (or in another order, with other samples of its block) is the same question
        bigger = torch.cat([idx.flip(0), idx.min().div(stream.block, rounding_mode="floor") * stream.block
                            + torch.arange(2)])
        phases_big, answers_big = stream.batch(bigger)
        for j, k in enumerate(idx.tolist()):
            alone, answer = stream.batch(torch.tensor([k]))
            jb = len(idx) - 1 - j
            assert int(answer[0]) == int(answers[j]) == int(answers_big[jb])
            for p, a, big in zip(phases, alone, phases_big, strict=True):
                assert torch.equal(a.inputs[0], p.inputs[j]) and torch.equal(big.inputs[jb], p.inputs[j])
    # another training seed is another stream; the test stream is not a training stream
    other, _ = _streams(seed=4)
    first = torch.arange(64)
    assert [q.images for q in other.questions(first)] != [q.images for q in train.questions(first)]
    assert train.questions(torch.arange(8)) != test.questions(torch.arange(8))
    # the samples of a block are questions of their own (each drawn from its own seed)
    assert len({tuple(q.images) for q in train.questions(torch.arange(64, 128))}) == 64


# ------------------------------------------------------------------------------------------- distribution


def test_training_blocks_draw_each_shape_of_the_official_ranges_about_equally(streams):
    train, _ = streams
    counts = collections.Counter(train.shape_of_block(b) for b in range(4000))
    assert set(counts) == {(d, o) for d in range(1, 5) for o in range(1, 5)}  # 3 +- 2: 1 to 4, the top excluded
    # 250 expected each; 4000 draws with p = 1/16 have a standard deviation of about 15.3
    assert all(180 < n < 320 for n in counts.values()), counts
    # the blocks' questions are of their block's shape
    for b in (0, 1, 2, 3, 99):
        D, O = train.shape_of_block(b)
        q = train.question(b * 64 + 17)
        assert (len(q.images), len(q.operators), len(q.indices)) == (D, O, O + 1)
    # other ranges come from the options
    narrow, _ = _streams(digits=5, digits_delta=1, operations=2, operations_delta=0)
    assert {narrow.shape_of_block(b) for b in range(200)} == {(4, 2), (5, 2)}


def test_the_test_set_asks_250_questions_of_each_shape(streams):
    _, test = streams
    idx = torch.arange(len(test))
    batches = test.split_batches(idx, 500)
    assert torch.equal(torch.cat(batches), idx)  # every index once, in order
    counts = collections.Counter()
    for batch in batches:
        blocks = batch.div(125, rounding_mode="floor").unique()
        assert len(blocks) == 1 and len(batch) <= 125
        for q in test.questions(batch):
            counts[len(q.images), len(q.operators)] += 1
    assert counts == {(d, o): 250 for d in range(1, 5) for o in range(1, 5)}


def test_a_curriculum_asks_the_shortest_questions_first_and_the_whole_ranges_after():
    task = make_task("qamnist", curriculum=0.3)  # over 30% of the training steps: 600 of 2000
    config = tr.make_train_config("qamnist", batch_size=64, seed=3, steps=2000)
    train, test = task.load("train", config), task.load("test", config)
    assert train.curriculum == 600 and test.curriculum == 0
    shapes = [train.shape_of_block(b) for b in range(1200)]
    assert set(shapes[:99]) == {(1, 1)}  # below 1/6 of the way the cut rounds to the fewest
    for b, (d, o) in enumerate(shapes):
        cut = 1 + round(3 * min(1.0, (b + 1) / 600))
        assert d <= cut and o <= cut, (b, d, o)
    assert set(shapes[599:]) == {(d, o) for d in range(1, 5) for o in range(1, 5)}
    # the questions of a block are of its shape; the test set keeps every shape in turn
    assert {(len(q.digits), len(q.operators)) for q in train.questions(torch.arange(64))} == {(1, 1)}
    assert [test.shape_of_block(b) for b in range(16)] == [(d, o) for d in range(1, 5) for o in range(1, 5)]
    asked = task.eval_data("train", config)  # ctm eval --split train
    assert len({asked.shape_of_block(b) for b in range(40)}) > 8


@pytest.mark.parametrize("options, size, each", [
    (dict(digits=4, digits_delta=3, operations=6, operations_delta=1), 4500, 375),  # 6 x 2 shapes
    (dict(digits=4, digits_delta=3, operations=4, operations_delta=3), 4500, 125),  # 6 x 6: more than 32 blocks
    (dict(digits=2, digits_delta=0, operations=3, operations_delta=0), 4000, 4000),  # one shape
])
def test_every_shape_of_other_ranges_is_asked_as_often(options, size, each):
    _, test = _streams(**options)
    assert len(test) == size
    counts = collections.Counter(test.shape_of_block(b) for b in range(size // 125))
    assert set(counts.values()) == {each // 125}


def test_split_batches_keeps_to_blocks_and_a_batch_across_blocks_is_refused(streams):
    train, test = streams
    idx = torch.tensor(sorted(torch.randperm(700, generator=torch.Generator().manual_seed(0))[:300].tolist()))
    for stream in (train, test):
        batches = stream.split_batches(idx, 20)
        assert torch.equal(torch.cat(batches), idx)
        assert all(len(b) <= 20 and len(b.div(stream.block, rounding_mode="floor").unique()) == 1 for b in batches)
        for b in batches[:3]:
            stream.batch(b)
        with pytest.raises(ValueError) as e:
            stream.batch(torch.tensor([stream.block - 1, stream.block]))
        assert "\n" not in str(e.value) and "one block" in str(e.value) and "split_batches" in str(e.value)


# ---------------------------------------------------------------------------------------------------- loss


@pytest.fixture(scope="module")
def official_losses():
    """The official `utils.losses` module, imported from the reference folder."""
    from conftest import OFFICIAL_PATH

    if not (OFFICIAL_PATH / "utils" / "losses.py").is_file():
        pytest.skip(f"official CTM reference not found at {OFFICIAL_PATH}")
    sys.path.insert(0, str(OFFICIAL_PATH))
    try:
        return importlib.import_module("utils.losses")
    finally:
        sys.path.remove(str(OFFICIAL_PATH))


@pytest.mark.parametrize("answer_ticks", [1, 3])
def test_qamnist_loss_is_the_official_on_the_answer_ticks(official_losses, answer_ticks):
    g = torch.Generator().manual_seed(answer_ticks)
    B, T = 16, 9
    predictions = torch.randn(B, 10, T, generator=g, dtype=torch.float64) * 3
    c = torch.rand(B, T, generator=g, dtype=torch.float64)
    certainties = torch.stack([1 - c, c], 1)
    answers = torch.randint(10, (B,), generator=g)
    loss, tick = qamnist_loss(predictions, certainties, answers, answer_ticks)
    theirs, their_tick = official_losses.qamnist_loss(predictions[:, :, -answer_ticks:],
                                                      certainties[:, :, -answer_ticks:], answers)
    torch.testing.assert_close(loss, theirs, rtol=1e-12, atol=0)
    assert torch.equal(tick, their_tick + T - answer_ticks) and int(tick.min()) >= T - answer_ticks
    if answer_ticks == 3:
        assert len(tick.unique()) > 1  # the ticks differ between samples: the comparison reads them
    # the ticks before the answer ticks are not scored
    changed = predictions.clone()
    changed[..., :T - answer_ticks] = torch.randn(B, 10, T - answer_ticks, generator=g, dtype=torch.float64)
    assert torch.equal(qamnist_loss(changed, certainties, answers, answer_ticks)[0], loss)
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match=r"^answer_ticks must be between 1 and the 9 ticks[^\n]*$"):
            qamnist_loss(predictions, certainties, answers, bad)


# ---------------------------------------------------------------------------------------------------- CLI


def _digit_blind_accuracy(test) -> float:
    """The best accuracy on the test set without reading the digits: for each operator its most common answer
    (with one digit and one operation, 'x - x' is always 0 and 'x + x' is 2x mod 10)."""
    by_op = collections.defaultdict(collections.Counter)
    for batch in test.split_batches(torch.arange(len(test)), 125):
        for q in test.questions(batch):
            by_op[tuple(q.operators)][q.answer] += 1
    return sum(max(c.values()) for c in by_op.values()) / len(test)


def test_a_tiny_model_learns_one_digit_and_one_operation_through_the_cli(tmp_path, capsys):
    _data_dir()
    run = tmp_path / "run"
    assert run_cli("train", *ONE_AND_ONE, *tiny_flags(), "--batch-size", "32", "--lr", "1e-2", "--warmup-steps", "10",
                   "--steps", "300", "--eval-every", "300", "--eval-batch-size", "1000", "--out", run) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["model"]["iterations"] == 5  # digit, index, operator, index, one answer tick
    r = eval_json(run, capsys=capsys)
    _, test = _streams(digits=1, digits_delta=0, operations=1, operations_delta=0)
    blind = _digit_blind_accuracy(test)  # about 0.6: the model must read the digit to beat it
    assert 0.5 < blind < 0.7
    assert r["n"] == 4000 and r["accuracy"] > blind + 0.05, (r["accuracy"], blind)
    assert r["by_shape"] == [{"digits": 1, "operations": 1, "accuracy": r["accuracy"], "n": 4000}]
    assert r["by_operations"] == {"1": r["accuracy"]} and r["by_digits"] == {"1": r["accuracy"]}
    assert r["task"]["operations"] == 1
    # more operations than trained on: a longer schedule than any the model saw
    more = eval_json(run, "--task-option", "operations=2", capsys=capsys)
    assert more["task"]["operations"] == 2 and more["n"] == 4000
    assert list(more["by_operations"]) == ["2"] and 0 <= more["by_operations"]["2"] <= 1
    assert more["by_shape"] == [{"digits": 1, "operations": 2, "accuracy": more["accuracy"], "n": 4000}]


def test_a_qamnist_run_resumed_equals_a_straight_run(tmp_path):
    _data_dir()
    # 1 or 2 digits, 1 or 2 operations: blocks of four schedules (up to 8 ticks)
    options = [a for o in ("digits=2", "digits_delta=1", "operations=2", "operations_delta=1")
               for a in ("--task-option", o)]
    flags = ["--task", "qamnist", *options, *tiny_flags(16, 8), "--batch-size", "8", "--lr", "3e-3", "--warmup-steps",
             "2", "--schedule", "constant", "--eval-every", "4", "--eval-batch-size", "1000"]
    assert run_cli("train", *flags, "--steps", "8", "--out", tmp_path / "straight") == 0
    assert run_cli("train", *flags, "--steps", "4", "--out", tmp_path / "resumed") == 0
    assert run_cli("train", "--resume", tmp_path / "resumed", "--steps", "8", "--threads", "1", "--no-progress") == 0
    a, b = (ckpt.current_checkpoint(tmp_path / name).path for name in ("straight", "resumed"))
    weights_a, weights_b = load_file(str(a / ckpt.MODEL_FILE)), load_file(str(b / ckpt.MODEL_FILE))
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=0, msg=name)
    last_a, last_b = (json.loads((p / ckpt.METRICS_FILE).read_text().splitlines()[-1]) for p in (a, b))
    last_a.pop("elapsed_s")
    last_b.pop("elapsed_s")
    assert last_a == last_b and last_a["step"] == 8 and "test_accuracy" in last_a


@pytest.mark.parametrize("options, message", [
    (["digits=1", "digits_delta=1"], "digits - digits_delta must be at least 1"),
    (["operations=2", "operations_delta=2"], "operations - operations_delta must be at least 1"),
    (["colour=red"], "--task-option colour: the qamnist task has no such option"),
    (["answer_ticks=0"], "--task-option answer_ticks=0"),
    (["repeats=0"], "--task-option repeats=0"),
    (["digits=50", "digits_delta=2"], "at most 50 digits per question"),
])
def test_bad_qamnist_options_are_refused_in_one_line(tmp_path, capsys, options, message):
    flags = [a for o in options for a in ("--task-option", o)]
    line = cli_error(capsys, "train", "--task", "qamnist", *flags, *tiny_flags(), "--steps", "1", "--out",
                     tmp_path / "run")
    assert message in line, line
    assert not (tmp_path / "run").exists()


def test_the_recipe_s_curriculum_is_a_task_option_a_flag_overrides(tmp_path):
    _data_dir()
    short = ["--steps", "1", "--eval-every", "1", "--batch-size", "8", "--warmup-steps", "1"]
    for extra, expected in (([], 0.4), (["--task-option", "curriculum=0"], 0.0)):
        run = tmp_path / f"run{expected}"
        assert run_cli("train", "--task", "qamnist", *extra, *tiny_flags(), *short, "--out", run) == 0
        assert json.loads((run / "config.json").read_text())["task"]["curriculum"] == expected
    assert tr.PRESETS["qamnist"].task_options == {"curriculum": 0.4}
    assert not tr.PRESETS["qamnist-official"].task_options  # the official uniform draw
