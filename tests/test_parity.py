"""The parity task: data, targets, the loss per position, training through the CLI, resume, eval, halting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, eval_json, run_cli
from safetensors.torch import load_file

import ctm
from ctm.nn import engine
from ctm.runs import checkpoint as ckpt
from ctm.tasks import make_task
from ctm.tasks.parity.task import TEST_SIZE, TEST_STREAM, parity_targets, sample_seed
from ctm.training import loop as tr

# A parity CTM small enough to learn length 4 in seconds on one thread (every PRESETS["parity"].model key is
# given, so the CLI and PARITY_CONFIG build the same model).
PARITY_MODEL = dict(iterations=6, d_model=32, d_input=16, heads=2, memory_length=4, memory_hidden_dims=4,
                    n_synch_out=16, n_synch_action=16, neuron_selection="random-pairing")
PARITY_FLAGS = ["--ticks", "6", "--d-model", "32", "--d-input", "16", "--heads", "2", "--memory-length", "4",
                "--memory-hidden-dims", "4", "--n-synch-out", "16", "--n-synch-action", "16",
                "--neuron-selection", "random-pairing"]
LEARN_FLAGS = ["--batch-size", "64", "--lr", "1e-3", "--warmup-steps", "0", "--schedule", "constant",
               "--threads", "1", "--no-progress"]


def test_targets_are_the_cumulative_parity_of_the_minus_ones():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 2, (50, 9), generator=g).float() * 2 - 1
    expected = []
    for row in x.tolist():
        count, bits = 0, []
        for v in row:
            count += v == -1
            bits.append(count % 2)
        expected.append(bits)
    assert parity_targets(x).tolist() == expected
    assert parity_targets(torch.tensor([[1.0, -1.0, -1.0, 1.0, -1.0]])).tolist() == [[0, 1, 0, 0, 1]]


def test_data_are_deterministic_in_seed_and_index_and_train_and_test_are_disjoint():
    task = make_task("parity", length=12)
    train = task.load("train", tr.TrainConfig(seed=5))
    x1, y1 = train.batch(torch.tensor([7, 123456789012, 3]))
    x2, _ = train.batch(torch.tensor([3, 7]))
    assert torch.equal(x1[0], x2[1]) and torch.equal(x1[2], x2[0])  # a sample depends on its index only
    assert x1.shape == (3, 12) and y1.shape == (3, 12) and y1.dtype == torch.int64
    assert set(x1.unique().tolist()) <= {-1.0, 1.0} and torch.equal(y1, parity_targets(x1))
    other_seed, _ = task.load("train", tr.TrainConfig(seed=6)).batch(torch.tensor([7, 3]))
    assert not torch.equal(other_seed, x2.flip(0))
    test = task.load("test", tr.TrainConfig(seed=5))
    assert len(test) == TEST_SIZE
    a, _ = test.batch(torch.arange(20))
    b, _ = make_task("parity", length=12).load("test", tr.TrainConfig(seed=99)).batch(torch.arange(20))
    assert torch.equal(a, b)  # one fixed test set, whatever the training seed
    train_seeds = {sample_seed(5, k, test=False) for k in range(20_000)}
    test_seeds = {sample_seed(TEST_STREAM, k, test=True) for k in range(TEST_SIZE)}
    assert len(train_seeds) == 20_000 and not train_seeds & test_seeds
    # the sampler walks the stream: global batch s is indices s*B .. (s+1)*B - 1, split across ranks
    s0 = task.sampler(train, tr.TrainConfig(batch_size=8), rank=0, world_size=2)
    s1 = task.sampler(train, tr.TrainConfig(batch_size=8), rank=1, world_size=2)
    assert next(s0.batches(0, 3)).tolist() == [24, 25, 26, 27] and next(s1.batches(0, 3)).tolist() == [28, 29, 30, 31]


def test_the_loss_averages_the_cross_entropy_over_positions_at_one_tick_per_sequence():
    torch.manual_seed(0)
    B, P, T = 5, 3, 4
    predictions, targets = torch.randn(B, 2 * P, T), torch.randint(0, 2, (B, P))
    certainties = torch.rand(B, 2, T)
    ce = torch.stack([torch.stack([torch.nn.functional.cross_entropy(predictions[b, 2 * p:2 * p + 2, t],
                                                                     targets[b, p]) for p in range(P)]).mean()
                      for b in range(B) for t in range(T)]).reshape(B, T)
    loss, tick = ctm.certainty_loss(predictions, certainties, targets)
    rows = torch.arange(B)
    expected = (ce.min(1).values.mean() + ce[rows, certainties[:, 1].argmax(-1)].mean()) / 2
    torch.testing.assert_close(loss, expected)
    assert torch.equal(tick, certainties[:, 1].argmax(-1))
    # the extra term of tick_loss_weight is the mean over ticks of the same per-position mean
    torch.testing.assert_close(ctm.per_tick_cross_entropy(predictions, targets), ce)


def test_the_parity_model_runs_on_the_fast_engine_and_equals_the_readable_path():
    task = make_task("parity", length=5)
    config = ctm.CTMConfig(**PARITY_MODEL, **task.model_fields(None))
    assert config.out_dims == 10 and config.out_positions == 5 and config.backbone == "sign-embedding"
    assert engine.covers(config, training=True) and engine.covers(config, training=False)
    torch.manual_seed(0)
    model = ctm.CTM(config).eval()
    x, _ = task.load("test", tr.TrainConfig()).batch(torch.arange(7))
    fast = model(x)
    model.fast_backward = False
    plain = model(x)
    torch.testing.assert_close(fast.predictions, plain.predictions, rtol=1e-4, atol=1e-5)
    assert fast.predictions.shape == (7, 10, 6)


def test_a_tiny_parity_ctm_learns_length_4_through_the_cli(tmp_path, capsys):
    run = tmp_path / "parity"
    assert run_cli("train", "--task", "parity", "--task-option", "length=4", *PARITY_FLAGS, *LEARN_FLAGS,
                   "--steps", "400", "--eval-every", "200", "--out", run) == 0
    out = capsys.readouterr().out
    assert "data: parity of length 4" in out and "whole sequences" in out
    payload = json.loads((run / "config.json").read_text())
    assert payload["task"] == {"name": "parity", "length": 4} and payload["train"]["dataset"] == "parity"
    assert payload["model"]["out_positions"] == 4 and payload["model"]["backbone"] == "sign-embedding"
    result = eval_json(run, capsys=capsys)
    assert result["n"] == TEST_SIZE and result["accuracy"] >= 0.95 and result["sequence_accuracy"] >= 0.8
    assert len(result["per_position_tick_accuracy"]) == 4 and len(result["per_position_tick_accuracy"][0]) == 6
    metrics = ckpt.read_metrics(run)
    assert metrics[-1]["test_sequence_accuracy"] == pytest.approx(result["sequence_accuracy"])
    # eval --plot draws the accuracy per position and tick
    capsys.readouterr()
    assert run_cli("eval", run, "--plot", "--threads", "1") == 0
    assert (run / "ticks.png").stat().st_size > 1000
    assert capsys.readouterr().out.splitlines()[-1] == f"Wrote {run / 'ticks.png'}"  # it says where
    assert eval_json(run, "--plot", capsys=capsys)["plot"] == str(run / "ticks.png")
    # halting: a sequence stops when its certainty (the mean over positions) reaches the threshold
    halted = eval_json(run, "--halt-certainty", "0.5", capsys=capsys)
    assert 1 <= halted["mean_ticks"] < 6 and halted["sequence_accuracy_full"] == result["sequence_accuracy"]
    assert 0 <= halted["sequence_accuracy"] <= halted["accuracy"] <= 1
    never = eval_json(run, "--halt-certainty", "1.0", capsys=capsys)
    assert never["mean_ticks"] == 6 and never["accuracy"] == pytest.approx(result["accuracy_last_tick"])
    assert never["sequence_accuracy"] == pytest.approx(result["per_tick_sequence_accuracy"][-1])
    sweep = eval_json(run, "--halt-sweep", "0.3", "0.9", capsys=capsys)
    assert [r["halt_certainty"] for r in sweep["sweep"]] == [0.3, 0.9] and "sequence_accuracy" in sweep["sweep"][0]
    # the parity GIF: one frame per tick
    from PIL import Image

    assert (run / "thinking.gif").is_file()  # written by ctm train
    assert run_cli("viz", run, "--index", "3", "--threads", "1") == 0
    with Image.open(run / "thinking-test-3.gif") as gif:
        assert gif.n_frames == 6
    assert "test sequence 3, right at " in capsys.readouterr().out
    train_split = eval_json(run, "--split", "train", capsys=capsys)  # the first 10,000 training sequences
    assert train_split["split"] == "train" and train_split["n"] == TEST_SIZE and train_split["accuracy"] >= 0.95
    assert run_cli("eval", run, "--dataset", "mnist") == 2
    assert "--dataset does not apply to the parity task" in capsys.readouterr().err


def test_a_parity_run_resumed_after_a_stop_equals_a_straight_run(tmp_path):
    flags = ["--task", "parity", "--task-option", "length=4", *PARITY_FLAGS, *LEARN_FLAGS, "--steps", "12",
             "--eval-every", "4"]
    assert run_cli("train", *flags, "--out", tmp_path / "straight") == 0
    torch.set_num_threads(1)
    resumed = tmp_path / "resumed"
    config = tr.make_train_config("parity", batch_size=64, lr=1e-3, warmup_steps=0, schedule="constant",
                                  steps=12, eval_every=4)
    first = tr.train(resumed, ctm.CTMConfig(**PARITY_MODEL), config, task=make_task("parity", length=4),
                     stop=lambda step: step == 6)
    assert first.interrupted and first.step == 6
    assert run_cli("train", "--resume", resumed, "--threads", "1", "--no-progress") == 0
    a = load_file(str(ckpt.current_checkpoint(tmp_path / "straight").path / ckpt.MODEL_FILE))
    b = load_file(str(ckpt.current_checkpoint(resumed).path / ckpt.MODEL_FILE))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert json.loads((resumed / "config.json").read_text()) == json.loads(
        (tmp_path / "straight" / "config.json").read_text())


@pytest.mark.parametrize("flags, message", [
    (["--task", "parity", "--task-option", "length=1"], "--task-option length=1: must be an integer >= 2, got 1"),
    (["--task-option", "length=8"], "--task-option length: the image task has no such option (its options: none)"),
    (["--task", "parity", "--task-option", "size=8"], "the parity task has no such option (its options: length)"),
    (["--task", "parity", "--task-option", "length"], "--task-option 'length': expected KEY=VALUE"),
    (["--task", "nosuch"], "unknown task 'nosuch'; choose one of "),
    (["--task", "os:path"], "task 'os:path' is not a ctm.tasks.Task subclass with a name"),
    (["--task", "no_such_module_here:Task"], "cannot import no_such_module_here"),
    (["--task", "parity", "--backbone", "tutorial"], "--backbone=tutorial contradicts the parity task"),
    (["--task", "parity", "--augment"], "--augment distorts images; the parity task has none"),
    (["--task", "parity", "--epochs", "2"], "the parity task's training data are an endless stream: use --steps"),
])
def test_parity_flags_that_make_no_sense_are_refused_in_one_line(tmp_path, capsys, flags, message):
    steps = [] if "--epochs" in flags else ["--steps", "1"]
    assert run_cli("train", *flags, *steps, "--out", tmp_path / "run", "--threads", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_resume_refuses_another_task_or_length(tmp_path, capsys):
    run = tmp_path / "run"
    tr.train(run, ctm.CTMConfig(**PARITY_MODEL), tr.make_train_config("parity", steps=2, eval_every=2,
                                                                       batch_size=8),
             task=make_task("parity", length=3))
    for flags, message in ((["--task-option", "length=5"],
                            "cannot resume with --task-option length=5: the run's parity task has length=3"),
                           (["--task", "image"], "cannot resume with --task image")):
        assert run_cli("train", "--resume", run, "--steps", "4", *flags) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot resume"):
        tr.train(run, ctm.CTMConfig(**PARITY_MODEL), tr.resume_configs(run)[1], task=make_task("parity", length=5),
                 resume=True)
    assert TINY.out_positions == 1  # the image runs' model is untouched by the task


@pytest.fixture(scope="module")
def parity8(tmp_path_factory) -> Path:
    """A parity run of length 8 trained for 4 steps through the CLI."""
    run = tmp_path_factory.mktemp("parity8") / "run"
    assert run_cli("train", "--task", "parity", "--task-option", "length=8", *PARITY_FLAGS, *LEARN_FLAGS,
                   "--steps", "4", "--eval-every", "4", "--out", run) == 0
    return run


def test_view_on_a_parity_run_writes_its_page(parity8, capsys):
    import re

    capsys.readouterr()
    assert run_cli("view", parity8, "--samples", "9", "--threshold", "0.5", "--threads", "1") == 0
    out = capsys.readouterr().out
    page = parity8 / "viewer.html"
    assert out.startswith(f"Wrote {page} (") and "9 samples of parity test sequences of length 8" in out
    html = page.read_text()
    data = json.loads(re.search(r'<script id="ctm-data" type="application/json">(.*?)</script>', html, re.S).group(1))
    assert data["kind"] == "parity" and data["length"] == 8 and data["title"] == "ctm view: run"
    assert data["threshold"] == 0.5 and data["ticks"] == 6 and len(data["samples"]) == 9
    test_x, _ = make_task("parity", length=8).load("test", tr.TrainConfig()).batch(torch.arange(9))
    assert [s["sequence"] for s in data["samples"]] == ["".join("-" if v < 0 else "+" for v in row)
                                                         for row in test_x.tolist()]  # the test sequences
    assert "CTM.renderers.parity" in html


def test_predict_on_a_parity_run_reads_sequences(parity8, tmp_path, capsys):
    seqs = ["++-+--+-", "-+-+-+-+", "++++++++"]
    run = ctm.load_run(parity8)
    x = torch.tensor([[1.0 if c == "+" else -1.0 for c in seq] for seq in seqs])
    with torch.inference_mode():
        out = run.model(x)
    tick = out.certainties[:, 1].argmax(-1)
    answers = out.predictions.reshape(3, 8, 2, 6).argmax(2)  # (B, L, T)
    expected = ["".join(map(str, answers[b, :, tick[b]].tolist())) for b in range(3)]
    capsys.readouterr()
    # a sequence as an argument, one that starts with - in --sequence=, more in a file
    (tmp_path / "seqs.txt").write_text(f"# my sequences\n\n  {seqs[2]}  \n")
    assert run_cli("predict", parity8, seqs[0], f"--sequence={seqs[1]}", "--sequence-file", tmp_path / "seqs.txt",
                   "--threads", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for b, line in enumerate(lines):
        assert line == (f"{seqs[b]}: parity {expected[b]} (tick {int(tick[b]) + 1} of 6, certainty "
                        f"{float(out.certainties[b, 1, tick[b]]):.3f})")
    assert run_cli("predict", parity8, "--sequence", seqs[0], "--json", "--halt-certainty", "0") == 0
    row = json.loads(capsys.readouterr().out)
    assert row["sequence"] == seqs[0] and row["tick"] == 1 and len(row["odd_probability"]) == 8
    assert row["parity"] == "".join(map(str, answers[0, :, 0].tolist()))
    for argv, message in (([seqs[0], "++x+--+-"], "sequence 2 ('++x+--+-'): 'x' at position 3 is not + or -"),
                          (["++-"], "sequence '++-' has 3 positions; this run reads sequences of length 8"),
                          ([], "nothing to predict")):
        assert run_cli("predict", parity8, *argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ctm predict: error: ") and message in err, err


def test_a_task_record_that_contradicts_the_model_is_one_line(parity8, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(parity8, run)
    payload = json.loads((run / "config.json").read_text())
    payload["task"]["length"] = 16  # the model answers at 8 positions
    (run / "config.json").write_text(json.dumps(payload))
    capsys.readouterr()
    assert run_cli("eval", run, "--threads", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parity task has length 16, but its model answers at 8 positions" in err[0], err
    payload["task"]["length"] = 10**30
    (run / "config.json").write_text(json.dumps(payload))
    assert run_cli("eval", run, "--threads", "1") == 2
    assert "is above 65,536" in capsys.readouterr().err
