"""The sort task: data, the CTC loss and greedy decoding against the official functions, metrics, halting,
training through the CLI, resume, eval on other spreads, predict."""

from __future__ import annotations

import importlib
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from helpers import eval_json, run_cli
from safetensors.torch import load_file

import ctm
from ctm.runs import checkpoint as ckpt
from ctm.tasks import make_task
from ctm.tasks.sort.ctc import decode, element_hits, sequence_hits, sort_loss
from ctm.tasks.sort.halting import halting_ticks
from ctm.tasks.sort.task import TEST_SIZE, SortMetrics, sample_seed
from ctm.training import loop as tr

pytestmark = pytest.mark.usefixtures("one_thread")

# A sort CTM small enough to learn N = 4 in seconds on one thread.
SORT_MODEL = dict(iterations=8, d_model=64, memory_length=4, memory_hidden_dims=4, n_synch_out=16,
                  neuron_selection="random-pairing")
SORT_FLAGS = ["--ticks", "8", "--d-model", "64", "--memory-length", "4", "--memory-hidden-dims", "4",
              "--n-synch-out", "16", "--neuron-selection", "random-pairing"]
LEARN_FLAGS = ["--batch-size", "64", "--lr", "1e-2", "--warmup-steps", "50", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def official_sort_code():
    """The official `utils.losses` and `tasks.sort.utils` modules, imported from the reference folder."""
    from conftest import OFFICIAL_PATH

    if not (OFFICIAL_PATH / "utils" / "losses.py").is_file():
        pytest.skip(f"official CTM reference not found at {OFFICIAL_PATH}")
    sys.path.insert(0, str(OFFICIAL_PATH))
    try:
        return importlib.import_module("utils.losses"), importlib.import_module("tasks.sort.utils")
    finally:
        sys.path.remove(str(OFFICIAL_PATH))


# ------------------------------------------------------------------------------------------------- data


def test_data_are_deterministic_in_seed_and_index_and_targets_sort_them():
    task = make_task("sort", n=7)
    config = tr.make_train_config("sort", seed=3)
    train = task.load("train", config)
    x, y = train.batch(torch.tensor([5, 0, 9]))
    x2, y2 = task.load("train", config).batch(torch.tensor([9, 5]))
    assert torch.equal(x[[2, 0]], x2) and torch.equal(y[[2, 0]], y2)
    assert x.shape == (3, 7) and y.dtype == torch.long
    for row, order in zip(x.tolist(), y.tolist(), strict=True):
        assert order == sorted(range(7), key=lambda i: row[i])
    other = task.load("train", tr.make_train_config("sort", seed=4)).batch(torch.tensor([5]))[0]
    assert not torch.equal(other[0], x[0])
    test = task.load("test", config)
    assert len(test) == TEST_SIZE and not torch.equal(test.batch(torch.tensor([5]))[0][0], x[0])
    assert sample_seed(3, 5, False) % 2 == 0 and sample_seed(3, 5, True) % 2 == 1
    # the spread options scale and shift the same draws
    wide = make_task("sort", n=7, mean=2.0, std=3.0).load("train", config).batch(torch.tensor([5, 0, 9]))
    torch.testing.assert_close(wide[0], x * 3 + 2)
    assert torch.equal(wide[1], y)


@pytest.mark.parametrize("options, message", [
    (dict(n=1), "must be an integer >= 2"),
    (dict(n=10**6), "above 4,096"),
    (dict(std=0.0), "std must be above 0"),
    (dict(mean=float("inf")), "mean must be a finite number"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_task("sort", **options)


# ------------------------------------------------------------------------------------------- loss, decoding


def test_the_loss_is_the_official_sort_loss(official_sort_code):
    losses, _ = official_sort_code
    g = torch.Generator().manual_seed(0)
    for B, N, T in ((5, 4, 9), (3, 30, 50), (2, 6, 6)):
        predictions = torch.randn(B, N + 1, T, generator=g, dtype=torch.float64) * 3
        targets = torch.stack([torch.randperm(N, generator=g) for _ in range(B)])
        ours = sort_loss(predictions.clone().requires_grad_(), targets)
        theirs = losses.sort_loss(predictions, targets)
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-5, atol=1e-6)
        mine = predictions.clone().requires_grad_()
        reference = predictions.clone().requires_grad_()
        sort_loss(mine, targets).backward()
        losses.sort_loss(reference, targets).backward()
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-4, atol=1e-6)


def test_task_loss_is_the_official_loss_and_reads_the_last_tick(official_sort_code):
    losses, _ = official_sort_code
    predictions, targets = torch.randn(4, 6, 12), torch.stack([torch.randperm(5) for _ in range(4)])
    loss, tick = make_task("sort", n=5).loss(predictions, torch.rand(4, 2, 12), targets)
    torch.testing.assert_close(loss, losses.sort_loss(predictions, targets), rtol=1e-5, atol=1e-6)
    assert tick.tolist() == [11] * 4


def test_greedy_decoding_and_wait_times_are_the_official_ones(official_sort_code):
    _, utils = official_sort_code
    g = torch.Generator().manual_seed(1)
    for B, C, T in ((40, 5, 12), (20, 8, 30), (10, 31, 50)):
        # few classes and a heavy blank: repeats, repeats across blanks, empty outputs all come up
        predictions = torch.randn(B, C, T, generator=g)
        predictions[:, -1] += torch.rand(B, 1, generator=g) * 3
        theirs, their_waits = utils.decode_predictions(predictions, blank_label=C - 1, return_wait_times=True)
        d = decode(predictions)
        waits = d.waits()
        for b in range(B):
            k = int(d.count[b])
            assert d.order[b, :k].tolist() == theirs[b].tolist(), b
            assert (d.order[b, k:] == -1).all() and (d.ticks[b, k:] == -1).all()
            assert waits[b, :k].tolist() == their_waits[b].tolist(), b
            assert d.emitted[b].sum() == k and d.ticks[b, :k].tolist() == d.emitted[b].nonzero().flatten().tolist()


def test_decoding_hand_made_cases():
    blank = 3
    def logits(path):  # (1, 4, T) whose best path is `path`
        out = torch.zeros(1, 4, len(path))
        out[0, path, torch.arange(len(path))] = 5.0
        return out

    d = decode(logits([blank, 2, 2, blank, 2, 0, blank, 1]))
    assert d.order[0].tolist() == [2, 0, 1] and d.ticks[0].tolist() == [1, 5, 7]
    assert d.waits()[0].tolist() == [1, 3, 1]  # ticks 0 | 2, 3, 4 | 6 emit nothing
    d = decode(logits([blank, blank]), width=3)
    assert d.order.tolist() == [[-1, -1, -1]] and d.count.tolist() == [0]
    target = torch.tensor([[2, 0, 1]])
    d = decode(logits([2, 0, 1, 1, blank]))
    assert element_hits(d.order, target).all() and sequence_hits(d.order, d.count, target).all()
    d = decode(logits([2, 0, 1, 0]))  # one element too many: every place right, but not the order
    assert element_hits(d.order, target).all() and not sequence_hits(d.order, d.count, target).any()
    d = decode(logits([2, 1, blank, blank]), width=3)  # too few
    assert element_hits(d.order, target).tolist() == [[True, False, False]]


def test_metrics_count_places_sequences_and_wait_gaps():
    blank = 3
    config = ctm.CTMConfig(backbone="none", input_reader="direct", d_input=3, out_dims=4, iterations=6)
    paths = [[blank, 1, blank, blank, 0, 2],  # right, waits 1, 2, 0
             [1, 0, 2, blank, blank, blank],  # wrong in the first two places
             [1, 2, blank, blank, blank, blank]]  # two emitted, both right
    predictions = torch.zeros(3, 4, 6)
    for b, path in enumerate(paths):
        predictions[b, path, torch.arange(6)] = 5.0
    x = torch.tensor([[0.5, 0.0, 0.9], [0.0, 0.1, 0.2], [0.3, 0.0, 0.4]])
    y = x.argsort(1)  # [1, 0, 2], [0, 1, 2], [1, 0, 2]
    out = ctm.nn.outputs.CTMOutput(predictions, torch.rand(3, 2, 6), torch.zeros(3, 1))
    metrics = SortMetrics(config)
    metrics.update(out, y, torch.tensor(0.5), torch.full((3,), 5), x)
    r = metrics.result()
    assert r.n == 3 and r.loss == pytest.approx(0.5)
    assert r.accuracy == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert r.sequence_accuracy == pytest.approx(1 / 3) and r.complete == pytest.approx(2 / 3)
    assert r.per_position_accuracy == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert r.per_tick_emissions == pytest.approx([2 / 3, 1, 1 / 3, 0, 1 / 3, 1 / 3])
    # right neighbours: sample 0 (0 after 1: gap 0.5, wait 2; 2 after 0: gap 0.4, wait 0)
    by_gap = {w["gap"]: (w["wait"], w["n"]) for w in r.wait_by_gap if w["n"]}
    assert by_gap == {0.375: (0.0, 1), 0.5: (2.0, 1)}
    assert json.loads(json.dumps(r.to_dict()))["sequence_accuracy"] == pytest.approx(1 / 3)


def test_halting_stops_when_the_order_is_complete_and_certain():
    blank = 3
    paths = [[blank, 1, 0, 2, blank, blank], [1, 0, blank, blank, blank, blank]]
    predictions = torch.zeros(2, 4, 6)
    for b, path in enumerate(paths):
        predictions[b, path, torch.arange(6)] = 5.0
    certainty = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.95, 0.99], [0.99] * 6])
    assert halting_ticks(predictions, certainty, 3, 0.9).tolist() == [5, 6]  # complete at 4, certain at 5
    assert halting_ticks(predictions, certainty, 3, 0.3).tolist() == [4, 6]  # never complete: the last tick
    assert halting_ticks(predictions, certainty, 3, 0.3, max_ticks=3).tolist() == [3, 3]


# ------------------------------------------------------------------------------------------ the command line


def test_a_tiny_model_learns_to_sort_four_numbers_and_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--task", "sort", "--task-option", "n=4", *SORT_FLAGS, *LEARN_FLAGS, "--steps", "600",
                   "--eval-every", "600", "--out", run) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["task"] == {"name": "sort", "n": 4, "mean": 0.0, "std": 1.0}
    assert record["model"]["input_reader"] == "direct" and record["model"]["out_dims"] == 5
    r = eval_json(run, capsys=capsys)
    assert r["n"] == TEST_SIZE and r["sequence_accuracy"] >= 0.8 and r["accuracy"] >= 0.9, r
    assert set(r) >= {"accuracy", "sequence_accuracy", "complete", "wait_by_gap", "per_tick_emissions"}
    # the spread generalisation: the same run on numbers ten times wider and shifted
    wide = eval_json(run, "--task-option", "std=10", "--task-option", "mean=5", capsys=capsys)
    assert wide["n"] == TEST_SIZE and wide["accuracy"] != r["accuracy"]
    assert wide["task"] == {"name": "sort", "n": 4, "mean": 5.0, "std": 10.0} and r["task"]["std"] == 1.0
    assert wide["wait_by_gap"][1]["gap"] == pytest.approx(0.25)  # the gap bins follow the spread
    # halting: sequences that stop once complete and certain
    halted = eval_json(run, "--halt-certainty", "0.5", capsys=capsys)
    assert halted["mean_ticks"] <= 8 and 0 <= halted["sequence_accuracy"] <= 1
    capsys.readouterr()
    assert run_cli("eval", run, "--halt-sweep", "0.5", "0.9", "--threads", "1") == 0
    assert "full run: 8 ticks" in capsys.readouterr().out and (run / "halting.png").is_file()
    # predict: the order of numbers given on the command line
    capsys.readouterr()
    assert run_cli("predict", run, "--numbers", "0.5", "-1.5", "2", "0", "--json", "--threads", "1") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["numbers"] == [0.5, -1.5, 2.0, 0.0] and answer["order"] == [1, 3, 0, 2] and answer["complete"]
    assert len(answer["waits"]) == len(answer["emitted_at"]) == 4
    assert run_cli("predict", run, "--numbers", "1", "2", "3", "1e39", "--threads", "1") == 2
    assert "'1e39' is not a finite float32 number" in capsys.readouterr().err
    assert run_cli("predict", run, "1", "2", "3", "4", "--threads", "1") == 2  # each its own sample: hint
    assert "give one sample's numbers together: --numbers X X ..." in capsys.readouterr().err
    assert run_cli("predict", run, "--numbers", "1", "2", "--threads", "1") == 2
    assert "the numbers: 2 numbers given; this run sorts 4 at a time" in capsys.readouterr().err
    assert run_cli("eval", run, "--task-option", "n=5", "--threads", "1") == 2
    assert "sorts the N it was built for" in capsys.readouterr().err
    # a reader that stops early (`| head`) ends the command quietly, not with a path error
    import subprocess
    proc = subprocess.run(f"{shlex.quote(sys.executable)} -m ctm eval {shlex.quote(str(run))} --threads 1 | head -1",
                          shell=True, capture_output=True, text=True)
    assert proc.stdout.startswith("sort test: n=10000") and proc.stderr == "", proc.stderr


def test_a_sort_run_resumed_after_a_stop_equals_a_straight_run(tmp_path):
    flags = ["--task", "sort", "--task-option", "n=4", *SORT_FLAGS, *LEARN_FLAGS, "--steps", "12",
             "--warmup-steps", "5", "--eval-every", "4", "--eval-batch-size", "2000"]
    assert run_cli("train", *flags, "--out", tmp_path / "straight") == 0
    resumed = tmp_path / "resumed"
    config = tr.make_train_config("sort", batch_size=64, lr=1e-2, warmup_steps=5, steps=12, eval_every=4,
                                  eval_batch_size=2000)
    first = tr.train(resumed, ctm.CTMConfig(**SORT_MODEL), config, task=make_task("sort", n=4),
                     stop=lambda step: step == 6)
    assert first.interrupted and first.step == 6
    assert run_cli("train", "--resume", resumed, "--threads", "1", "--no-progress") == 0
    a = load_file(str(ckpt.current_checkpoint(tmp_path / "straight").path / ckpt.MODEL_FILE))
    b = load_file(str(ckpt.current_checkpoint(resumed).path / ckpt.MODEL_FILE))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("flags, message", [
    (["--task-option", "n=1"], "--task-option n=1: must be an integer >= 2, got 1"),
    (["--ticks", "3", "--task-option", "n=4"], "--ticks (3) is below the 4 numbers to sort"),
    (["--backbone", "tutorial"], "--backbone=tutorial contradicts the sort task"),
    (["--input-reader", "attention"], "--input-reader=attention contradicts the sort task"),
    (["--augment"], "--augment distorts images; the sort task has none"),
])
def test_sort_flags_that_make_no_sense_are_refused_in_one_line(tmp_path, capsys, flags, message):
    assert run_cli("train", "--task", "sort", *flags, "--steps", "1", "--out", tmp_path / "run", "--threads",
                   "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_a_model_with_fewer_ticks_than_numbers_is_refused_at_evaluation(tmp_path, capsys):
    """CTC cannot place N indices in fewer ticks: such a model (built from Python, or edited) is refused in one
    line instead of evaluated with an impossible loss."""
    run = tmp_path / "run"
    config = tr.make_train_config("sort", batch_size=8, lr=1e-3, warmup_steps=0, steps=1, eval_every=1,
                                  eval_batch_size=2000)
    tr.train(run, ctm.CTMConfig(**{**SORT_MODEL, "iterations": 6}), config, task=make_task("sort", n=4))
    payload = json.loads((run / "config.json").read_text())
    payload["model"]["iterations"] = 3
    (run / "config.json").write_text(json.dumps(payload))
    assert run_cli("eval", run, "--threads", "1") == 2
    assert "CTMConfig.iterations (3) is below the 4 numbers to sort" in capsys.readouterr().err


def test_the_benchmark_script_runs_the_sort_task_for_both_models():
    """benchmarks/sort.py --dry-run: the commands it would run (the benchmark itself takes an hour)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "sort.py"
    proc = subprocess.run([sys.executable, str(script), "--dry-run", "--steps", "600", "--n", "8"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    trains = [line for line in lines if " train " in line]
    assert len(trains) == 2 and all("--task sort" in t and "--task-option n=8" in t and "--steps 600" in t
                                    and "--eval-every 100" in t and "--threads 1" in t for t in trains)
    assert "--model ctm" in trains[0] and "--model lstm" in trains[1]
    assert sum(" eval " in line and "--plot" in line for line in lines) == 2
    bad = subprocess.run([sys.executable, str(script), "--dry-run", "--budget-s", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--budget-s must be positive" in bad.stderr
