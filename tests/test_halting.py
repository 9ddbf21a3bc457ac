"""Adaptive computation: `model.think` against the full forward, `evaluate_halting`, `ctm eval --halt-*`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, make_synthetic

import ctm
from ctm.cli import main
from ctm.data.images import ImageDataset
from ctm.training.evaluate import evaluate, evaluate_halting

CONFIG = ctm.CTMConfig(iterations=9, d_model=32, d_input=16, memory_length=5, heads=2, n_synch_out=8,
                       n_synch_action=6, memory_hidden_dims=4)


def spread_model(config: ctm.CTMConfig = CONFIG, seed: int = 0) -> ctm.CTM:
    """An untrained model in eval mode whose certainties vary widely over ticks (large output weights);
    fed `images`, whose contrast varies over samples, thresholds split a batch at many different ticks."""
    torch.manual_seed(seed)
    model = ctm.CTM(config).eval()
    with torch.no_grad():
        model.output_projector.weight.mul_(3000)
        model.start_activated_state.mul_(0.1)
        model.decay_params_out.uniform_(0, 2)
        model.decay_params_action.uniform_(0, 2)
    return model


def images(n: int, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, h, w, generator=g) * torch.empty(n, 1, 1, 1).uniform_(0.1, 4, generator=g)


def full_forward(model, x):
    with torch.no_grad():
        out = model(x)
    return out.predictions, out.certainties[:, 1]  # (B, C, T), (B, T)


def halting_ticks(certainty: torch.Tensor, tau: float, max_ticks: int) -> torch.Tensor:
    """0-based tick at which each sample halts, from the full forward's certainties (B, T)."""
    hit = certainty[:, :max_ticks] >= tau
    hit[:, -1] = True
    return hit.int().argmax(1)


def safe_threshold(certainty: torch.Tensor, quantile: float, max_ticks: int | None = None,
                   distinct_ticks: int = 1) -> float:
    """A threshold near `quantile` of all certainties (B, T), in a gap between observed values (so that
    rounding differences between two code paths cannot move a sample across it), at which samples halt at
    `distinct_ticks` or more different ticks."""
    T = max_ticks or certainty.shape[1]
    values = certainty[:, :T].flatten().sort().values
    mids = (values[1:] + values[:-1]) / 2
    usable = ((values[1:] - values[:-1]) > 1e-4).nonzero().squeeze(1)
    start = int(quantile * (len(values) - 1))
    for i in sorted(usable.tolist(), key=lambda i: abs(i - start)):
        tau = float(mids[i])
        if len(halting_ticks(certainty, tau, T).unique()) >= distinct_ticks:
            return tau
    raise AssertionError("the test model's certainties give no usable threshold")


def test_threshold_above_one_is_the_full_forward():
    model = spread_model()
    x = images(13, 20, 16)
    logits, certainty = full_forward(model, x)
    out = model.think(x, halt_certainty=1.5)
    T = CONFIG.iterations
    assert torch.equal(out.ticks, torch.full((13,), T))
    torch.testing.assert_close(out.logits, logits[:, :, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.certainty, certainty[:, -1], rtol=1e-5, atol=1e-5)
    assert torch.equal(out.prediction, logits[:, :, -1].argmax(1))


def test_threshold_zero_stops_every_sample_after_the_first_tick():
    model = spread_model()
    x = images(11, 16, 16)
    logits, certainty = full_forward(model, x)
    out = model.think(x, 0.0)
    assert torch.equal(out.ticks, torch.ones(11, dtype=torch.long))
    torch.testing.assert_close(out.logits, logits[:, :, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.certainty, certainty[:, 0], rtol=1e-5, atol=1e-5)


def test_threshold_zero_stops_even_a_uniform_prediction():
    # Uniform logits over 7 classes: the normalised entropy can round a hair above 1 (a certainty just below
    # 0, depending on the CPU's float rounding); tau = 0 must still stop every sample.
    model = spread_model(dataclasses.replace(CONFIG, out_dims=7))
    with torch.no_grad():
        model.output_projector.weight.zero_()
        model.output_projector.bias.zero_()
    x = images(5, 16, 16)
    out = model.think(x, 0.0)
    assert torch.equal(out.ticks, torch.ones(5, dtype=torch.long))
    assert out.certainty.abs().max() < 1e-6


def test_think_in_eval_mode_leaves_batchnorm_statistics_alone():
    model = spread_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.think(images(7, 16, 16), 0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_think_in_train_mode_updates_batchnorm_statistics_as_forward_does():
    model = spread_model().train()
    twin = spread_model().train()
    x = images(7, 16, 16)
    think = model.think(x, 2.0)  # every tick: its answers are the forward's last tick, batch statistics
    logits, _, _ = twin(x)
    for (name, a), b in zip(model.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert any("running_mean" in name and not torch.equal(a, spread_model().state_dict()[name])
               for name, a in model.named_buffers())
    torch.testing.assert_close(think.logits, logits[:, :, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantile", [0.3, 0.6, 0.85])
@pytest.mark.parametrize("max_ticks", [None, 6])
def test_each_sample_gets_the_full_forward_output_at_its_halting_tick(quantile, max_ticks):
    model = spread_model()
    x = images(40, 16, 20)
    logits, certainty = full_forward(model, x)
    T = max_ticks or CONFIG.iterations
    tau = safe_threshold(certainty, quantile, T, distinct_ticks=3)
    expected = halting_ticks(certainty, tau, T)  # samples stop at 3+ different ticks: several compactions
    out = model.think(x, tau, max_ticks=max_ticks)
    assert torch.equal(out.ticks, expected + 1)
    rows = torch.arange(40)
    torch.testing.assert_close(out.logits, logits[rows, :, expected], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.certainty, certainty[rows, expected], rtol=1e-5, atol=1e-5)
    assert torch.equal(out.prediction, out.logits.argmax(1))
    assert bool((out.certainty[out.ticks < T] >= tau).all())


def test_few_halted_rows_ride_along_until_compaction():
    # A few of 64 samples halt first: too few to gather the batch for, so they ride along (their later
    # ticks are computed and ignored); the next halts make an eighth and the batch is compacted.
    model = spread_model()
    x = images(64, 16, 16, seed=3)
    logits, certainty = full_forward(model, x)
    tau = safe_threshold(certainty, 0.95, distinct_ticks=3)
    expected = halting_ticks(certainty, tau, CONFIG.iterations)
    counts = expected.bincount()
    first, second = counts.nonzero().squeeze(1)[:2].tolist()
    assert 0 < counts[first] < 64 / 8 <= counts[first] + counts[second] < 64, counts.tolist()
    out = model.think(x, tau)
    assert torch.equal(out.ticks, expected + 1)
    rows = torch.arange(64)
    torch.testing.assert_close(out.logits, logits[rows, :, expected], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.certainty, certainty[rows, expected], rtol=1e-5, atol=1e-5)


def test_no_leakage_between_samples_batch_one_equals_batch():
    model = spread_model(CONFIG.replace(heads=4))
    x = images(9, 16, 16)
    _, certainty = full_forward(model, x)
    tau = safe_threshold(certainty, 0.5, distinct_ticks=2)
    batched = model.think(x, tau)
    assert len(batched.ticks.unique()) >= 2
    for i in range(9):
        single = model.think(x[i:i + 1], tau)
        assert single.ticks.shape == (1,)
        assert single.ticks.item() == batched.ticks[i].item()
        torch.testing.assert_close(single.logits[0], batched.logits[i], rtol=1e-5, atol=1e-5)


def test_every_sample_halting_at_once_at_max_ticks():
    model = spread_model()
    x = images(7, 16, 16)
    logits, _ = full_forward(model, x)
    out = model.think(x, 2.0, max_ticks=3)
    assert torch.equal(out.ticks, torch.full((7,), 3))
    torch.testing.assert_close(out.logits, logits[:, :, 2], rtol=1e-5, atol=1e-5)


def test_think_does_not_track_gradients_and_keeps_training_mode():
    model = spread_model().train()
    out = model.think(images(3, 16, 16), 0.5)
    assert not out.logits.requires_grad
    assert model.training


@pytest.mark.parametrize("kwargs, message", [
    (dict(halt_certainty=float("nan")), "halt_certainty must be a number"),
    (dict(halt_certainty="0.5"), "halt_certainty must be a number"),
    (dict(halt_certainty=0.5, max_ticks=0), r"max_ticks must be an integer in \[1, 9\]"),
    (dict(halt_certainty=0.5, max_ticks=10), r"max_ticks must be an integer in \[1, 9\]"),
])
def test_think_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spread_model().think(images(2, 16, 16), **kwargs)


def test_think_checks_its_input():
    with pytest.raises(ValueError, match="add a batch dimension"):
        spread_model().think(torch.rand(1, 16, 16), 0.5)


def test_evaluate_halting_matches_thresholding_the_full_forward():
    model = spread_model()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (70, 1, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (70,), generator=g)
    data = ImageDataset(images, labels, 10, "random", "test", "memory")
    x, y = data.batch(torch.arange(70))
    logits, certainty = full_forward(model, x)
    tau = safe_threshold(certainty, 0.5, distinct_ticks=2)
    ticks = halting_ticks(certainty, tau, CONFIG.iterations)
    result = evaluate_halting(model, data, tau, batch_size=32)
    rows = torch.arange(70)
    assert result.n == 70
    assert result.accuracy == pytest.approx((logits[rows, :, ticks].argmax(1) == y).float().mean().item())
    assert result.mean_ticks == pytest.approx((ticks + 1).float().mean().item())
    assert result.ticks_histogram == torch.bincount(ticks, minlength=CONFIG.iterations).tolist()
    assert result.wall_s > 0
    # Above 1 nothing halts early: the accuracy is the last tick's of the full evaluation.
    full = evaluate(model, data, batch_size=32)
    never = evaluate_halting(model, data, 1.01, batch_size=32)
    assert never.mean_ticks == CONFIG.iterations
    assert never.accuracy == pytest.approx(full.accuracy_last_tick)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = make_synthetic(tmp_path_factory.mktemp("synthetic"), n_train=600, n_test=200)
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data-dir", str(data), *TINY_FLAGS, "--steps", "40", "--batch-size", "32",
                 "--lr", "3e-3", "--eval-every", "40", "--no-progress", "--out", str(run)]) == 0
    return run, data


def test_cli_halt_certainty_json(tiny_run, capsys):
    run, data = tiny_run
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(data), "--halt-certainty", "0.2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "loss", "accuracy_last_tick", "per_tick_accuracy", "n", "mean_ticks",
                "ticks_histogram", "wall_s", "wall_s_full", "accuracy_full", "halt_certainty"):
        assert key in result, key
    assert len(result["ticks_histogram"]) == 4 and sum(result["ticks_histogram"]) == result["n"] == 200
    assert 1 <= result["mean_ticks"] <= 4
    assert result["wall_s"] > 0 and result["wall_s_full"] > 0
    # `accuracy` is the halted accuracy; the full run's stays under `accuracy_full`.
    from ctm.data.images import load_dataset
    from ctm.runs.checkpoint import load_model

    model, _ = load_model(run)
    test = load_dataset("mnist", "test", data_dir=data)
    halted = evaluate_halting(model, test, 0.2)
    assert result["accuracy"] == pytest.approx(halted.accuracy)
    assert result["mean_ticks"] == pytest.approx(halted.mean_ticks)
    assert result["accuracy_full"] == pytest.approx(evaluate(model, test).accuracy)


def test_cli_halt_sweep_table_and_plot(tiny_run, capsys):
    from PIL import Image

    run, data = tiny_run
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(data), "--halt-sweep", "0", "0.3", "2"]) == 0
    out = capsys.readouterr().out
    assert "mean ticks" in out and "halting.png" in out
    lines = [line.split() for line in out.splitlines() if line.strip().startswith(("0 ", "0.3 ", "2 "))]
    assert [float(row[3]) for row in lines][::2] == [1.0, 4.0]  # tau 0: one tick; tau 2: all four
    with Image.open(run / "halting.png") as im:
        assert im.size[0] > 500


@pytest.mark.parametrize("args, message", [
    (["--max-ticks", "2"], "--max-ticks only applies with --halt-certainty or --halt-sweep"),
    (["--halt-certainty", "0.5", "--max-ticks", "9"], "--max-ticks 9 exceeds the model's 4 ticks"),
    (["--halt-certainty", "-1"], "halting thresholds are certainties"),
    (["--halt-certainty", "80"], "--halt-certainty 80: halting thresholds are certainties in [0, 1], a fraction"),
    (["--halt-certainty", "1.5"], "a fraction, e.g. 0.8"),
    (["--halt-certainty", "0.8", "--plot"], "does not combine with --halt-certainty or --halt-sweep"),
])
def test_cli_halting_errors(tiny_run, capsys, args, message):
    run, data = tiny_run
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(data), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_halting_benchmark_runs(tiny_run):
    run, data = tiny_run
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "halting.py"
    (run / "halting.png").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(script), str(run), "--data-dir", str(data), "--taus", "0", "2",
                           "--repeats", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [r["mean_ticks"] for r in result["sweep"]] == [1.0, 4.0]
    assert result["wall_s_full"] > 0 and (run / "halting.png").exists()
