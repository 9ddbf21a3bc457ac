"""Training and evaluation end to end: learning, resume equality, run directories, CLI errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_FLAGS, cli_error, make_synthetic
from safetensors.torch import load_file

import ctm
import ctm.tasks
from ctm.cli import main
from ctm.runs import checkpoint as ckpt
from ctm.tasks import base as task_base
from ctm.training import loop as tr


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def in_checkpoint(run_dir: Path, name: str) -> Path:
    """A file of the run's current checkpoint."""
    return ckpt.current_checkpoint(run_dir).path / name


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(in_checkpoint(run_dir, ckpt.MODEL_FILE)))


def test_tiny_ctm_learns_synthetic_task_through_cli(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    # The tutorial's loss alone (the default's tick loss asks tick 1 of 4 to find the blob already, which
    # this tiny model learns more slowly).
    rc = run_cli("train", "--data-dir", synthetic, "--out", out, "--steps", "150", "--batch-size", "32",
                 "--lr", "3e-3", "--warmup-steps", "10", "--eval-every", "75", "--no-progress",
                 "--tick-loss-weight", "0", *TINY_FLAGS)
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "Finished 150 steps" in stdout
    # The start-up block says what the run is about to do, before the first step.
    lines = stdout.splitlines()
    assert lines[0] == f"run directory: {out}"
    assert lines[1].startswith("data: mnist, 1200 train / 300 test images of 1x12x12, 10 classes (from ")
    assert lines[2].startswith(f"model: {ctm.CTM(TINY).num_parameters():,} parameters; 4 ticks, 24 neurons")
    assert lines[3].startswith("device: cpu, ")
    assert lines[4] == ("training: 150 steps (4.05 epochs) at batch 32, lr 0.003 (cosine, 10 warm-up steps); "
                        "evaluation every 75 steps on the 300 test images")
    assert lines[5].startswith("step 75: train loss ") and "(mean since last eval) | test loss" in lines[5]
    assert {p.name for p in out.iterdir()} == {"config.json", "checkpoint.json", "checkpoints", ".lock",
                                                "thinking.gif", "curves.png"}
    assert json.loads((out / "checkpoint.json").read_text()) == {"step": 150, "dir": "checkpoints/step-000000150"}
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-000000150"}
    assert {p.name for p in (out / "checkpoints" / "step-000000150").iterdir()} == {
        "model.safetensors", "trainer_state.pt", "metrics.jsonl"}
    from PIL import Image

    with Image.open(out / "thinking.gif") as gif:
        assert gif.n_frames == 4
    rows = ckpt.read_metrics(out)
    assert [r["step"] for r in rows] == [75, 150]
    assert set(rows[0]) >= {"step", "epoch", "train_loss", "train_tick_loss", "train_accuracy", "test_loss",
                            "test_accuracy", "lr", "elapsed_s"}
    # Chance is 0.1. At this budget float rounding alone (two exact formulas of one LayerNorm gradient) moves
    # the final accuracy between 0.887 and 0.91: the bar sits below that band.
    assert rows[-1]["test_accuracy"] >= 0.85, rows
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] or rows[0]["test_accuracy"] >= 0.9
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["d_model"] == 24 and config["train"]["steps"] == 150
    state = torch.load(in_checkpoint(out, "trainer_state.pt"), weights_only=True)
    assert state["step"] == 150

    capsys.readouterr()
    assert run_cli("eval", out, "--data-dir", synthetic, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "loss", "accuracy_last_tick", "per_tick_accuracy", "n"} <= set(result)
    assert result["n"] == 300 and len(result["per_tick_accuracy"]) == 4
    assert result["accuracy"] == pytest.approx(rows[-1]["test_accuracy"])
    assert sum(result["most_certain_tick_histogram"]) == 300

    assert run_cli("eval", out, "--data-dir", synthetic, "--plot") == 0
    assert (out / "ticks.png").is_file()
    assert run_cli("viz", out, "--data-dir", synthetic, "--label", "3", "--out", tmp_path / "t.gif") == 0
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 4
    capsys.readouterr()
    assert "index 5000 out of range" in cli_error(capsys, "viz", out, "--data-dir", synthetic, "--index", "5000")


@pytest.mark.parametrize("augment", [False, True])
def test_resume_equals_uninterrupted_run(synthetic, tmp_path, augment):
    flags = dict(steps=24, batch_size=32, lr=3e-3, warmup_steps=5, schedule="cosine", grad_clip=1.0,
                 eval_every=10, augment=augment, seed=3)
    cfg = tr.make_train_config("default", **flags)
    straight = tmp_path / "straight"
    tr.train(straight, TINY, cfg, data_dir=str(synthetic))

    resumed = tmp_path / "resumed"
    first = tr.train(resumed, TINY, cfg, data_dir=str(synthetic), stop=lambda step: step == 13)
    assert first.interrupted and first.step == 13
    assert torch.load(in_checkpoint(resumed, ckpt.STATE_FILE), weights_only=True)["step"] == 13
    assert run_cli("train", "--resume", resumed, "--data-dir", synthetic, "--no-progress") == 0

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert [r["step"] for r in ckpt.read_metrics(resumed)] == [10, 20, 24]
    for r1, r2 in zip(ckpt.read_metrics(straight), ckpt.read_metrics(resumed), strict=True):
        assert r1["test_accuracy"] == r2["test_accuracy"]


def test_resume_with_more_steps_extends_constant_schedule(synthetic, tmp_path):
    common = ["--data-dir", synthetic, "--batch-size", "32", "--schedule", "constant", "--warmup-steps", "0",
              "--eval-every", "100", "--no-progress", *TINY_FLAGS]
    assert run_cli("train", "--out", tmp_path / "a", "--steps", "20", *common) == 0
    assert run_cli("train", "--out", tmp_path / "b", "--steps", "10", *common) == 0
    assert run_cli("train", "--resume", tmp_path / "b", "--steps", "20", "--data-dir", synthetic,
                   "--no-progress") == 0
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["steps"] == 20


def test_non_finite_loss_stops_and_keeps_checkpoint(synthetic, tmp_path, monkeypatch, capsys):
    real = task_base.certainty_loss
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        loss, tick = real(*args, **kwargs)
        if torch.is_inference_mode_enabled():  # evaluation asks the task's loss too
            return loss, tick
        calls["n"] += 1
        return (loss * math.nan if calls["n"] == 7 else loss), tick

    monkeypatch.setattr(task_base, "certainty_loss", exploding)
    out = tmp_path / "run"
    rc = run_cli("train", "--data-dir", synthetic, "--out", out, "--steps", "20", "--batch-size", "32",
                 "--eval-every", "5", "--no-progress", *TINY_FLAGS)
    err = capsys.readouterr().err
    assert rc == 1
    assert "became nan at step 7" in err and "last good checkpoint (step 5)" in err
    assert ckpt.weights_step(out) == 5
    assert torch.load(in_checkpoint(out, ckpt.STATE_FILE), weights_only=True)["step"] == 5


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from ctm._io import atomic_write

    (tmp_path / "f").write_text("old")

    def broken(tmp: str) -> None:
        Path(tmp).write_text("half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "f", broken)
    assert (tmp_path / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_lr_schedule():
    cfg = tr.TrainConfig(steps=110, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert tr.lr_at(0, cfg) == pytest.approx(0.1)
    assert tr.lr_at(9, cfg) == pytest.approx(1.0)
    assert tr.lr_at(10, cfg) == pytest.approx(1.0)
    assert tr.lr_at(60, cfg) == pytest.approx(0.55)
    assert tr.lr_at(110, cfg) == pytest.approx(0.1)
    seed = tr.make_train_config("seed")
    assert {tr.lr_at(s, seed) for s in (0, 500, 1999)} == {1e-4}
    assert (seed.steps, seed.batch_size, seed.adam_eps, seed.eval_every, seed.augment) == (2000, 64, 1e-8, 100,
                                                                                           False)


@pytest.mark.parametrize("changes, message", [
    (dict(steps=0), "TrainConfig.steps must be a positive integer"),
    (dict(lr=-1.0), "TrainConfig.lr must be a finite number >= 0"),
    (dict(schedule="linear"), "schedule must be 'constant' or 'cosine'"),
    (dict(batch_size=30, grad_accum=4), r"batch_size \(30\) must be divisible by grad_accum \(4\)"),
    (dict(tick_loss_weight=-0.5), "TrainConfig.tick_loss_weight must be a finite number >= 0"),
])
def test_train_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        tr.TrainConfig(**changes)


def test_tick_loss_weight_adds_the_mean_cross_entropy_over_ticks(synthetic):
    data = ctm.data.images.load_dataset("mnist", "train", data_dir=synthetic)
    idx = torch.arange(32)
    x, y = data.batch(idx)
    losses, ticks, grads = {}, {}, {}
    for w in (0.0, 0.7):
        torch.manual_seed(0)
        model = ctm.CTM(TINY)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        losses[w], ticks[w], _ = tr._train_step(model, opt, ctm.tasks.make_task("image"), data, idx, 0,
                                                           tr.TrainConfig(tick_loss_weight=w))
        grads[w] = model.output_projector.weight.grad.clone()
    torch.manual_seed(0)
    model = ctm.CTM(TINY)
    out = model(x)
    mean_ce = ctm.per_tick_cross_entropy(out.predictions, y).mean()
    # Both report the certainty loss (comparable with the test loss) and the tick loss apart.
    assert losses[0.7] == pytest.approx(losses[0.0], rel=1e-6)
    assert ticks[0.7] == pytest.approx(mean_ce.item(), rel=1e-5) and ticks[0.0] == pytest.approx(ticks[0.7])
    mean_ce.backward()
    torch.testing.assert_close(grads[0.7] - grads[0.0], 0.7 * model.output_projector.weight.grad,
                               rtol=1e-4, atol=1e-6)


def test_cli_errors(synthetic, tmp_path, capsys):
    assert "unknown dataset 'cifar'" in cli_error(capsys, "train", "--dataset", "cifar", "--out", tmp_path / "x")
    assert "--n-synch-out (500) must not exceed d_model (128)" in cli_error(
        capsys, "train", "--data-dir", synthetic, "--n-synch-out", "500", "--out", tmp_path / "x")
    assert "does not exist" in cli_error(capsys, "train", "--resume", tmp_path / "nope")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hi")
    assert "not a ctm run directory" in cli_error(capsys, "train", "--resume", tmp_path / "foreign")
    assert "not a ctm run directory" in cli_error(capsys, "eval", tmp_path / "foreign")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in cli_error(capsys, "train", "--data-dir", empty, "--out", tmp_path / "x")

    run = tmp_path / "run"
    assert run_cli("train", "--data-dir", synthetic, "--out", run, "--steps", "4", "--batch-size", "32",
                   "--eval-every", "4", "--no-progress", *TINY_FLAGS) == 0
    capsys.readouterr()
    assert "cannot resume with --d-model=64: the run was trained with d_model=24" in cli_error(
        capsys, "train", "--resume", run, "--d-model", "64", "--steps", "8")
    assert "cannot resume with --lr=1.0: the run uses lr=0.004; only --steps and --eval-every may change" in cli_error(
        capsys, "train", "--resume", run, "--lr", "1", "--steps", "8")
    assert "already ran 4 of 4 steps" in cli_error(capsys, "train", "--resume", run, "--data-dir", synthetic)
    assert "already holds a run" in cli_error(capsys, "train", "--data-dir", synthetic, "--out", run,
                                               *TINY_FLAGS)
    in_checkpoint(run, ckpt.MODEL_FILE).unlink()
    assert "model.safetensors" in cli_error(capsys, "eval", run, "--data-dir", synthetic)
    (run / ckpt.POINTER_FILE).unlink()  # a checkpoint folder is left: named, never deleted
    assert "has no checkpoint.json, but holds 1 checkpoint folder" in cli_error(capsys, "eval", run, "--data-dir",
                                                                              synthetic)
    shutil.rmtree(run / ckpt.CHECKPOINTS_DIR)
    assert "has no checkpoint yet" in cli_error(capsys, "eval", run, "--data-dir", synthetic)


def test_cli_errors_leave_what_is_written_as_it_was(synthetic, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--data-dir", synthetic, "--out", run, "--steps", "4", "--batch-size", "32",
                   "--eval-every", "4", "--no-progress", *TINY_FLAGS) == 0
    capsys.readouterr()
    files = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert in_checkpoint(run, ckpt.MODEL_FILE).stat().st_mode & 0o777 == \
        (run / ckpt.CONFIG_FILE).stat().st_mode & 0o777

    # A resume that fails does not rewrite config.json (its steps stay 4).
    state = in_checkpoint(run, ckpt.STATE_FILE).read_bytes()
    in_checkpoint(run, ckpt.STATE_FILE).write_bytes(b"garbage")
    line = cli_error(capsys, "train", "--resume", run, "--steps", "8", "--data-dir", synthetic)
    assert "trainer_state.pt is corrupt or not a ctm trainer state" in line and "weights_only" not in line
    in_checkpoint(run, ckpt.STATE_FILE).write_bytes(state)
    assert "already ran 4 of 2 steps" in cli_error(capsys, "train", "--resume", run, "--steps", "2",
                                                    "--data-dir", synthetic)
    # viz never writes over the run's files; a file given as the run is named as such.
    assert "must end in .gif" in cli_error(capsys, "viz", run, "--out", run / ckpt.MODEL_FILE,
                                            "--data-dir", synthetic)
    assert "is a file" in cli_error(capsys, "eval", run / ckpt.CONFIG_FILE)
    # New runs never write into a folder holding other files, or over a file.
    assert "already holds a run" in cli_error(capsys, "train", "--data-dir", synthetic, "--out", run)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == files

    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("mine\n")
    assert "is not empty" in cli_error(capsys, "train", "--data-dir", synthetic, "--out", other, *TINY_FLAGS)
    assert (other / "metrics.jsonl").read_text() == "mine\n"
    assert "is a file" in cli_error(capsys, "train", "--data-dir", synthetic, "--out", other / "metrics.jsonl")

    # A config.json edited to other sizes is named, not a size-mismatch traceback.
    payload = json.loads((run / ckpt.CONFIG_FILE).read_text())
    payload["model"]["d_model"] += 8
    (run / ckpt.CONFIG_FILE).write_text(json.dumps(payload))
    assert "does not match the sizes in config.json" in cli_error(capsys, "eval", run, "--data-dir", synthetic)


def test_cli_reuses_a_folder_left_by_a_start_that_failed_before_its_first_checkpoint(synthetic, tmp_path,
                                                                                      monkeypatch, capsys):
    out = tmp_path / "run"
    real = task_base.certainty_loss
    monkeypatch.setattr(task_base, "certainty_loss", lambda *a, **k: (real(*a, **k)[0] * math.nan, real(*a, **k)[1]))
    assert run_cli("train", "--data-dir", synthetic, "--out", out, "--steps", "4", "--batch-size", "32",
                   "--eval-every", "4", "--no-progress", *TINY_FLAGS) == 1
    assert {p.name for p in out.iterdir()} == {ckpt.CONFIG_FILE, ckpt.LOCK_FILE}
    monkeypatch.setattr(task_base, "certainty_loss", real)
    assert run_cli("train", "--data-dir", synthetic, "--out", out, "--steps", "4", "--batch-size", "32",
                   "--eval-every", "4", "--no-progress", *TINY_FLAGS) == 0
    assert ckpt.weights_step(out) == 4


def test_resume_eval_and_viz_use_the_data_dir_the_run_was_trained_on(tmp_path, capsys):
    data = make_synthetic(tmp_path / "data", n_train=128, n_test=48)
    run = tmp_path / "run"
    assert run_cli("train", "--data-dir", data, "--out", run, "--steps", "2", "--batch-size", "32",
                   "--eval-every", "2", "--no-progress", *TINY_FLAGS) == 0
    capsys.readouterr()
    assert run_cli("eval", run, "--json") == 0  # no --data-dir: the run's own files, not $CTM_DATA_DIR
    assert json.loads(capsys.readouterr().out)["n"] == 48
    assert run_cli("train", "--resume", run, "--steps", "3", "--no-progress") == 0
    assert ckpt.weights_step(run) == 3
    capsys.readouterr()
    data.rename(tmp_path / "moved")
    for argv in (["eval", run], ["viz", run], ["train", "--resume", run, "--steps", "4"]):
        assert "which is gone; pass --data-dir" in cli_error(capsys, *argv)
    assert run_cli("eval", run, "--json", "--data-dir", tmp_path / "moved") == 0


def test_cli_flag_errors_are_one_line(capsys):
    for argv in (["train", "--batch-size", "0"], ["train", "--steps", "3", "--epochs", "1"], ["bench", "--bogus"]):
        with pytest.raises(SystemExit) as e:
            run_cli(*argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ctm {argv[0]}: error:") and "--help" in err[0], err
    assert "--threads 100000 is far more" in cli_error(capsys, "train", "--threads", "100000")
    assert "--dist-timeout must be a positive" in cli_error(capsys, "train", "--dist-timeout", "0")
    assert "--fps must be between" in cli_error(capsys, "viz", "nowhere", "--fps", "0.001")
    # flags are never abbreviated: --step is not --steps
    for argv, flag in ((["train", "--step", "100"], "--step 100"), (["eval", "nowhere", "--jso"], "--jso")):
        with pytest.raises(SystemExit) as e:
            run_cli(*argv)
        assert e.value.code == 2 and f"unrecognized arguments: {flag} " in capsys.readouterr().err


def test_the_startup_line_says_when_an_epoch_leaves_much_of_a_small_set_out(synthetic, tmp_path, capsys):
    assert run_cli("train", "--data-dir", synthetic, "--out", tmp_path / "run", "--steps", "2", "--batch-size",
                   "700", "--eval-every", "2", "--no-progress", *TINY_FLAGS) == 0
    out = capsys.readouterr().out  # the synthetic set has 1200 training images
    assert "(2.00 epochs of 1 step: each uses 700 of the 1200 training samples, the rest wait for a later epoch; " \
           "a batch size that divides 1200 uses them all)" in out, out


def test_ctm_bench_takes_the_benchmark_flags(capsys):
    assert run_cli("bench", "--quick", "--batch-sizes", "2", "--modes", "eval", "--memory", "none",
                   "--no-check", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in result["results"]] and {r["batch"] for r in result["results"]} == {2}
    assert "positive integers" in cli_error(capsys, "bench", "--batch-sizes", "-4")
    assert "--repeats must be at least 1" in cli_error(capsys, "bench", "--repeats", "0")


def test_cli_subprocess_exit_code_and_help(tmp_path):
    env = {**os.environ, "CTM_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "ctm", "train", "--dataset", "nope"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ctm train: error: unknown dataset 'nope'") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ctm", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--d-model" in proc.stdout


def test_real_mnist_smoke(tmp_path, capsys):
    data_root = os.environ.get("CTM_DATA_DIR")
    if not data_root or not (Path(data_root) / "mnist").is_dir():
        pytest.skip("CTM_DATA_DIR with mnist/ is not set (CI sets it to ../shared/data)")
    out = tmp_path / "mnist"
    assert run_cli("train", "--out", out, "--steps", "100", "--batch-size", "64", "--eval-every", "100",
                   "--lr", "1e-2", "--warmup-steps", "10", "--no-progress", *TINY_FLAGS) == 0
    rows = ckpt.read_metrics(out)
    assert rows[-1]["step"] == 100
    assert rows[-1]["test_accuracy"] > 0.3  # well above chance (0.1) after 100 steps of a tiny CTM
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["shape"] == [1, 28, 28] and config["dataset"]["num_classes"] == 10


def test_progress_bar_names_its_figures_and_says_when_it_evaluates(synthetic, tmp_path, capsys):
    cfg = tr.TrainConfig(steps=6, batch_size=32, lr=1e-3, eval_every=3)
    tr.train(tmp_path / "run", TINY, cfg, data_dir=str(synthetic), progress=True)
    err = capsys.readouterr().err
    assert "evaluating on 300 test images" in err
    assert "train loss" in err and "(mean since last eval)" in err and "| test loss" in err


def test_presets_carry_their_model_and_task(synthetic, tmp_path, capsys):
    # The tutorial presets are the tutorial's architecture; the default is the wider model with positions.
    assert tr.make_model_config("seed") == tr.make_model_config("tutorial") == ctm.CTMConfig()
    default = tr.make_model_config("default")
    assert (default.positional_embedding, default.d_input, default.heads, default.iterations) == \
        ("learnable-fourier", 64, 4, 5)
    assert tr.make_model_config("default", iterations=7, heads=None).iterations == 7
    assert tr.make_train_config("default").augment and not tr.make_train_config("tutorial").augment
    with pytest.raises(ValueError, match="unknown preset 'best'; choose one of"):
        tr.make_model_config("best")
    # Through the CLI: flags over the preset's model, recorded in the run.
    out = tmp_path / "run"
    assert run_cli("train", "--data-dir", synthetic, "--out", out, "--steps", "2", "--batch-size", "16",
                   "--eval-every", "2", "--d-model", "24", "--no-progress", "--threads", "1") == 0
    recorded = json.loads((out / "config.json").read_text())["model"]
    assert recorded["positional_embedding"] == "learnable-fourier" and recorded["d_model"] == 24
    assert recorded["iterations"] == 5
    # A preset is for one task.
    capsys.readouterr()
    assert main(["train", "--task", "parity", "--preset", "default", "--out", str(tmp_path / "p")]) == 2
    assert "--preset default is a recipe for the image task, not for parity; leave --preset out for parity's " \
           "own (parity)" in capsys.readouterr().err


def test_bf16_training_runs_the_backbone_in_bfloat16_and_records_it(synthetic, tmp_path, monkeypatch):
    # The backbone's first convolution sees bfloat16 under --bf16 (autocast), float32 without; the run records it.
    seen = []
    original = torch.nn.Conv2d._conv_forward

    def spy(self, x, weight, bias):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype)
        return original(self, x, weight, bias)

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", spy)
    for flag, name in (("--bf16", "bf16"), ("--no-bf16", "fp32")):
        seen.clear()
        out = tmp_path / name
        assert run_cli("train", "--data-dir", synthetic, "--out", out, "--steps", "3", "--batch-size", "16",
                       "--eval-every", "3", "--no-progress", "--threads", "1", flag, *TINY_FLAGS) == 0
        assert json.loads((out / "config.json").read_text())["train"]["bf16"] is (flag == "--bf16")
        trained = [d for d in seen[:2]]  # the first training step's two convolutions
        assert trained == [torch.bfloat16 if flag == "--bf16" else torch.float32] * 2
        assert all(torch.isfinite(t).all() for t in weights(out).values())


def test_a_run_records_data_found_through_ctm_data_dir_so_its_commands_work_in_a_new_shell(tmp_path, monkeypatch,
                                                                                          capsys):
    parent = tmp_path / "shared"
    make_synthetic(parent / "mnist", n_train=128, n_test=48)
    run = tmp_path / "run"
    monkeypatch.setenv("CTM_DATA_DIR", str(parent))
    assert run_cli("train", "--dataset", "mnist", "--out", run, "--steps", "2", "--batch-size", "32",
                   "--eval-every", "2", "--no-progress", *TINY_FLAGS) == 0
    record = json.loads((run / ckpt.CONFIG_FILE).read_text())["dataset"]
    assert record["data_dir"] == str((parent / "mnist").resolve()) and record["data_dir_from"] == "CTM_DATA_DIR"
    monkeypatch.delenv("CTM_DATA_DIR")  # a new shell: resume and eval find the same files
    capsys.readouterr()
    assert run_cli("eval", run, "--json") == 0 and json.loads(capsys.readouterr().out)["n"] == 48
    assert run_cli("train", "--resume", run, "--steps", "3", "--no-progress") == 0
    assert ckpt.weights_step(run) == 3
    # the data moved and the variable follows them: found again where a new run would look, not "gone"
    parent.rename(tmp_path / "moved")
    monkeypatch.setenv("CTM_DATA_DIR", str(tmp_path / "moved"))
    capsys.readouterr()
    assert run_cli("eval", run, "--json") == 0 and json.loads(capsys.readouterr().out)["n"] == 48
    # with --data-dir the record stays what the user chose, and no "data_dir_from"
    run2 = tmp_path / "run2"
    assert run_cli("train", "--data-dir", tmp_path / "moved" / "mnist", "--out", run2, "--steps", "2",
                   "--batch-size", "32", "--eval-every", "2", "--no-progress", *TINY_FLAGS) == 0
    assert "data_dir_from" not in json.loads((run2 / ckpt.CONFIG_FILE).read_text())["dataset"]


@pytest.mark.parametrize("command", ["eval", "viz", "predict", "view"])
def test_every_command_that_runs_a_model_says_when_it_first_builds_the_cpp_loops(command, monkeypatch, capsys):
    from ctm.nn import native

    built = []
    monkeypatch.setattr(native, "enabled", lambda: True)
    monkeypatch.setattr(native, "is_built", lambda: False)
    monkeypatch.setattr(native, "ops", lambda: built.append(True))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([command, "no-such-run", *(["x.png"] if command == "predict" else [])]) == 2
    err = capsys.readouterr().err
    assert built == [True] and err.startswith("building ctm's C++ tick loop (once per machine, about 20 s)...\n")


def test_model_preset_is_the_model_ctm_train_builds(synthetic, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--data-dir", synthetic, "--out", run, "--steps", "1", "--eval-every", "1",
                   "--batch-size", "16", "--no-progress") == 0  # no model flags: the default preset
    trained = ctm.CTMConfig.from_dict(json.loads((run / ckpt.CONFIG_FILE).read_text())["model"])
    assert ctm.model_preset() == trained == ctm.model_preset("default", out_dims=10)
    assert ctm.model_preset("tutorial") == ctm.CTMConfig()  # CTMConfig() is the tutorial's model
    assert ctm.model_preset("maze", out_dims=480, out_positions=96, in_channels=3).backbone == "resnet18-1"
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose one of default, maze,"):
        ctm.model_preset("nope")


def test_ctm_eval_shows_progress_over_its_batches_on_a_terminal(synthetic, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--data-dir", synthetic, "--out", run, "--steps", "1", "--eval-every", "1",
                   "--batch-size", "16", "--no-progress", *TINY_FLAGS) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run_cli("eval", run, "--batch-size", "100", "--json") == 0
    captured = capsys.readouterr()
    assert "evaluating 300 images" in captured.err and json.loads(captured.out)["n"] == 300
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert run_cli("eval", run, "--batch-size", "100", "--json") == 0
    assert capsys.readouterr().err == ""  # no bar in a log
