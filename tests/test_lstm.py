"""The LSTM baseline (ctm.nn.lstm): shapes, gradients, parameter matching, halting, and learning parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY

from ctm.config import CTMConfig
from ctm.nn.lstm import LSTMBaseline, LSTMConfig, ctm_parameters, lstm_parameters, lstm_width_for, matching_summary
from ctm.nn.model import ContinuousThoughtMachine, Tracking
from ctm.training.losses import certainty_loss


def parity_config(length: int, ticks: int = 4, **changes) -> CTMConfig:
    """A parity model: +-1 embedding and 1-D positional embedding, 2 classes at each of `length` positions."""
    fields = dict(iterations=ticks, d_model=32, d_input=16, memory_length=4, n_synch_out=8, n_synch_action=8,
                  memory_hidden_dims=4, backbone="parity", positional_embedding="custom-rotational-1d",
                  out_dims=2 * length, out_positions=length)
    return CTMConfig(**{**fields, **changes})


def parity_targets(x: torch.Tensor) -> torch.Tensor:
    """Cumulative parity of the -1s, written as a plain loop: (B, L) of +-1 -> (B, L) of 0/1."""
    targets = torch.zeros(x.shape, dtype=torch.long)
    for b in range(x.shape[0]):
        odd = 0
        for i in range(x.shape[1]):
            odd ^= int(x[b, i] == -1)
            targets[b, i] = odd
    return targets


def random_sequences(B: int, L: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randint(0, 2, (B, L), generator=generator).float() * 2 - 1


def test_shapes_on_images_and_sequences():
    torch.manual_seed(0)
    model = LSTMBaseline(TINY, 20)
    out = model(torch.rand(3, 1, 28, 28), track=True)
    assert out.predictions.shape == (3, 10, 4) and out.certainties.shape == (3, 2, 4)
    assert out.synchronisation_out.shape == (3, 20)  # the last hidden state: no synchronisation
    tr = out.tracking
    assert isinstance(tr, Tracking) and tr.token_grid == (7, 7)
    assert tr.pre_activations.shape == tr.post_activations.shape == (4, 3, 20)
    assert tr.attention.shape == (4, 3, 1, 49)
    torch.testing.assert_close(tr.attention.sum(-1), torch.ones(4, 3, 1))
    # no synchronisation: the fields hold what plays its roles, the hidden state the query and the head read
    torch.testing.assert_close(tr.synchronisation_out, tr.post_activations)
    torch.testing.assert_close(tr.synchronisation_action[1:], tr.post_activations[:-1])
    torch.testing.assert_close(tr.synchronisation_action[0], model.start_hidden.detach().expand(3, -1))
    torch.testing.assert_close(tr.post_activations[-1], out.synchronisation_out)
    assert model(torch.rand(2, 1, 28, 28)).tracking is None

    seq = LSTMBaseline(parity_config(16, ticks=5, heads=2), 12)
    out = seq(random_sequences(4, 16), track=True)
    assert out.predictions.shape == (4, 32, 5) and out.certainties.shape == (4, 2, 5)
    assert out.tracking.attention.shape == (5, 4, 2, 16) and out.tracking.token_grid == (1, 16)


def test_every_parameter_gets_a_gradient():
    for config, x in ((TINY, torch.rand(4, 1, 16, 16)), (parity_config(8), random_sequences(4, 8))):
        torch.manual_seed(1)
        model = LSTMBaseline(config, 10)
        out = model(x)
        out.predictions.square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == []


@pytest.mark.parametrize("config", [CTMConfig(), TINY.replace(iterations=10),
                                    parity_config(16, ticks=50, d_model=256, d_input=64, heads=4,
                                                  memory_length=10, n_synch_out=32, n_synch_action=32)])
def test_width_matches_the_ctms_parameter_count(config):
    n_ctm = ContinuousThoughtMachine(config).num_parameters()
    assert ctm_parameters(config) == n_ctm
    H = lstm_width_for(config)
    n = LSTMBaseline(config, H).num_parameters()
    assert n == lstm_parameters(config, H)
    assert abs(n - n_ctm) / n_ctm < 0.02
    # the closest width: one wider and one narrower are no closer
    assert abs(n - n_ctm) <= abs(lstm_parameters(config, H + 1) - n_ctm)
    assert abs(n - n_ctm) <= abs(lstm_parameters(config, H - 1) - n_ctm)
    assert LSTMBaseline(config).hidden == H  # hidden omitted: the matched width
    assert f"hidden {H}" in matching_summary(config, H) and f"{n_ctm:,}" in matching_summary(config, H)


def test_lstm_width_for_an_explicit_target():
    config = TINY
    counts = {h: lstm_parameters(config, h) for h in range(1, 220)}  # up to ~140k parameters
    for target in (5_000, 20_000, 123_456):
        H = lstm_width_for(config, target)
        assert H == min(counts, key=lambda h: (abs(counts[h] - target), h))


def test_certainty_in_unit_interval_and_eval_is_deterministic():
    torch.manual_seed(2)
    for model, x in ((LSTMBaseline(TINY, 16), torch.rand(5, 1, 12, 12)),
                     (LSTMBaseline(parity_config(6), 16), random_sequences(5, 6))):
        model.eval()
        a, b = model(x), model(x)
        torch.testing.assert_close(a.predictions, b.predictions, rtol=0, atol=0)
        cert = a.certainties
        assert ((cert >= 0) & (cert <= 1 + 1e-6)).all()
        torch.testing.assert_close(cert.sum(1), torch.ones(5, model.config.iterations))


def test_per_position_certainty_is_the_mean_of_each_positions():
    model = LSTMBaseline(parity_config(3), 8)
    logits = torch.tensor([[5.0, -5.0, 0.0, 0.0, 2.0, -1.0]])  # positions: sure, uniform, in between
    p = torch.tensor([[5.0, -5.0], [0.0, 0.0], [2.0, -1.0]]).softmax(-1)
    entropy = -(p * p.log()).sum(-1) / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(model.certainty(logits)[0, 1], 1 - entropy.mean())


def test_the_certainty_loss_trains_it():
    torch.manual_seed(3)
    model = LSTMBaseline(TINY, 16)
    out = model(torch.rand(6, 1, 16, 16))
    loss, tick = certainty_loss(out.predictions, out.certainties, torch.randint(0, 10, (6,)))
    assert loss.dim() == 0 and torch.isfinite(loss) and tick.shape == (6,)
    loss.backward()
    assert model.cell.weight_hh.grad.abs().sum() > 0


def test_think_answers_as_the_full_forward_at_the_halting_tick():
    torch.manual_seed(4)
    model = LSTMBaseline(TINY.replace(iterations=6), 16).eval()
    x = torch.rand(9, 1, 16, 16)
    with torch.no_grad():
        full = model(x)
    for tau in (0.0, 0.1, 0.2, 2.0):
        out = model.think(x, tau)
        rows = torch.arange(9)
        torch.testing.assert_close(out.logits, full.predictions[rows, :, out.ticks - 1])
        torch.testing.assert_close(out.certainty, full.certainties[rows, 1, out.ticks - 1])
    assert (model.think(x, 2.0).ticks == 6).all() and (model.think(x, 0.0).ticks == 1).all()


def test_bad_input_is_named():
    model = LSTMBaseline(TINY, 8)
    with pytest.raises(ValueError, match=r"expected torch.float32 inputs .* got torch.float64"):
        model(torch.rand(2, 1, 12, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="add a batch dimension"):
        model(torch.rand(1, 12, 12))
    with pytest.raises(ValueError, match=r"sequences of \+-1 of shape \(B, L\)"):
        LSTMBaseline(parity_config(4), 8)(torch.ones(2, 4, 1))
    with pytest.raises(TypeError, match="config must be a CTMConfig"):
        LSTMBaseline({"iterations": 3}, 8)


def test_lstm_config_round_trip_and_validation():
    c = LSTMConfig(37)
    assert LSTMConfig.from_dict(c.to_dict()) == c
    assert LSTMConfig(0).resolved(TINY) == LSTMConfig(lstm_width_for(TINY))
    assert LSTMConfig(5).resolved(TINY) == LSTMConfig(5)
    with pytest.raises(ValueError, match=r"unknown LSTMConfig field\(s\) \['width'\]"):
        LSTMConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="LSTMConfig.hidden must be a non-negative integer, got -1"):
        LSTMConfig(-1)
    with pytest.raises(ValueError, match="LSTMConfig.hidden must be an integer, got True"):
        LSTMConfig(True)
    assert LSTMBaseline(TINY, 9).lstm_config == LSTMConfig(9)


def test_state_dict_round_trip():
    torch.manual_seed(5)
    a = LSTMBaseline(parity_config(5), 12).eval()
    b = LSTMBaseline(parity_config(5), 12).eval()
    b.load_state_dict(a.state_dict())
    x = random_sequences(3, 5)
    torch.testing.assert_close(a(x).predictions, b(x).predictions, rtol=0, atol=0)


def test_parity_targets_loop():
    x = torch.tensor([[1.0, -1.0, -1.0, 1.0, -1.0]])
    assert parity_targets(x).tolist() == [[0, 1, 0, 0, 1]]


def test_a_tiny_lstm_learns_length_4_parity():
    torch.manual_seed(0)
    L, T = 4, 4
    model = LSTMBaseline(parity_config(L, ticks=T), 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        x = random_sequences(64, L, gen)
        y = parity_targets(x)  # (B, L)
        logits = model(x).predictions[..., -1].unflatten(1, (L, 2))  # (B, L, 2) at the last tick
        loss = F.cross_entropy(logits.transpose(1, 2), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = random_sequences(512, L, torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = model(x).predictions[..., -1].unflatten(1, (L, 2)).argmax(-1)
    per_bit = (predicted == parity_targets(x)).float().mean().item()
    assert per_bit >= 0.98, per_bit


def test_evaluation_and_the_thinking_gif_take_it_like_a_ctm(tmp_path):
    pytest.importorskip("matplotlib")
    from ctm.data.images import ImageDataset
    from ctm.pictures.figures import thinking_gif
    from ctm.training.evaluate import evaluate

    torch.manual_seed(6)
    model = LSTMBaseline(TINY.replace(iterations=3), 12)
    images = torch.randint(0, 256, (20, 1, 12, 12), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,))
    result = evaluate(model, ImageDataset(images, labels, 10, name="random"), batch_size=8)
    assert len(result.per_tick_accuracy) == 3 and sum(result.most_certain_tick_histogram) == 20
    model.eval()
    with torch.no_grad():
        hits = model(images.float() / 255).predictions.argmax(1) == labels.unsqueeze(-1)  # (B, T)
    assert result.per_tick_accuracy == pytest.approx(hits.float().mean(0).tolist())
    frames = thinking_gif(model, images[0].float() / 255, target=int(labels[0]), path=tmp_path / "lstm.gif",
                          fig_scale=0.4)
    assert len(frames) == 3 and (tmp_path / "lstm.gif").stat().st_size > 0


# ----------------------------------------------------------------------------------- through ctm train


def _cli(*args) -> int:
    from ctm.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code


LSTM_RUN = ["train", "--task", "parity", "--model", "lstm", "--task-option", "length=4", "--ticks", "4",
            "--d-model", "24",
            "--d-input", "16", "--heads", "2", "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "0",
            "--schedule", "constant", "--eval-every", "4", "--threads", "1", "--no-progress"]


def test_ctm_train_model_lstm_records_its_width_and_resumes_as_a_straight_run(tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from ctm.runs import checkpoint as ckpt

    assert _cli(*LSTM_RUN, "--steps", "8", "--out", tmp_path / "straight") == 0
    out = capsys.readouterr().out
    payload = json.loads((tmp_path / "straight" / "config.json").read_text())
    config = CTMConfig.from_dict(payload["model"])
    width = lstm_width_for(config)
    assert payload["model_kind"] == "lstm" and payload["model_options"] == {"hidden": width}
    assert f"LSTM baseline, {lstm_parameters(config, width):,} parameters (width {width}; the CTM of these " \
           f"flags has {ctm_parameters(config):,})" in out
    model, _ = ckpt.load_model(tmp_path / "straight")
    assert isinstance(model, LSTMBaseline) and model.hidden == width

    # Stopped at step 4 (a shorter run), then extended to 8 with --resume: the straight run's weights.
    assert _cli(*LSTM_RUN, "--steps", "4", "--out", tmp_path / "resumed") == 0
    assert _cli("train", "--resume", tmp_path / "resumed", "--steps", "8", "--threads", "1", "--no-progress") == 0
    a = load_file(str(ckpt.current_checkpoint(tmp_path / "straight").path / ckpt.MODEL_FILE))
    b = load_file(str(ckpt.current_checkpoint(tmp_path / "resumed").path / ckpt.MODEL_FILE))
    assert a.keys() == b.keys() and "cell.weight_ih" in a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)

    capsys.readouterr()
    assert _cli("eval", tmp_path / "straight", "--json", "--threads", "1") == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["sequence_accuracy"] <= result["accuracy"]


@pytest.mark.parametrize("options", [{"hidden": "8"}, {"width": 8}, [8], {"hidden": -1}])
def test_a_bad_model_options_record_is_one_line(tmp_path, capsys, options):
    import json

    assert _cli(*LSTM_RUN, "--steps", "4", "--out", tmp_path / "run") == 0
    path = tmp_path / "run" / "config.json"
    payload = json.loads(path.read_text())
    payload["model_options"] = options
    path.write_text(json.dumps(payload))
    capsys.readouterr()
    assert _cli("eval", tmp_path / "run", "--threads", "1") == 2
    err = capsys.readouterr().err
    assert "'model_options' of model kind lstm must be an object of its options (hidden: a non-negative integer" \
        in err and "Traceback" not in err


# ------------------------------------------------------------------------- the direct reader (sorting)


def sort_config(n: int = 6, ticks: int = 7, **changes) -> CTMConfig:
    """The sort task's model at small sizes: n numbers fed directly at every tick, n indices and a blank out."""
    fields = dict(iterations=ticks, d_model=24, d_input=n, memory_length=4, n_synch_out=8, memory_hidden_dims=3,
                  out_dims=n + 1, backbone="none", input_reader="direct", neuron_selection="random-pairing")
    return CTMConfig(**{**fields, **changes})


def test_direct_reader_feeds_the_input_to_the_cell_at_every_tick():
    torch.manual_seed(7)
    model = LSTMBaseline(sort_config(), 10)
    assert model.q_proj is model.attention is model.kv_proj is model.positional_embedding is None
    assert not any(k.startswith(("q_proj", "attention", "kv_proj")) for k in model.state_dict())
    with torch.no_grad():  # no zero bias hides a missing term
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 6)
    out = model(x, track=True)
    assert out.predictions.shape == (3, 7, 7) and out.certainties.shape == (3, 2, 7)
    assert out.tracking.attention.shape == (7, 3, 1, 0) and out.tracking.pre_activations.shape == (7, 3, 10)
    # the plain loop: (h, c) <- cell(x, (h, c)); logits <- head(h)
    h, c = model.start_hidden.expand(3, -1), model.start_cell.expand(3, -1)
    logits = []
    for _ in range(7):
        h, c = model.cell(x, (h, c))
        logits.append(model.output_projector(h))
    torch.testing.assert_close(out.predictions, torch.stack(logits, -1))
    torch.testing.assert_close(out.synchronisation_out, h)

    from ctm.tasks.sort import sort_loss

    sort_loss(out.predictions, x.argsort(1)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    with pytest.raises(ValueError, match=r"input_reader 'direct' takes vectors of shape \(B, 6\)"):
        model(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"input_reader 'direct' takes torch.float32 vectors"):
        model(torch.randn(3, 6, dtype=torch.float64))
    model.eval()
    with torch.no_grad():
        full = model(x)
    thought = model.think(x, 2.0)  # never certain enough: the last tick
    torch.testing.assert_close(thought.logits, full.predictions[..., -1])


@pytest.mark.parametrize("config", [sort_config(),
                                    sort_config(30, ticks=40, d_model=256, memory_length=10, memory_hidden_dims=4,
                                                n_synch_out=32),  # the sort task's recipe
                                    sort_config(30, ticks=50, d_model=512, synapse_depth=4, memory_length=25,
                                                memory_hidden_dims=4, n_synch_out=32,
                                                nlm_temperature=True)])  # the official sort model
def test_direct_width_matches_the_direct_ctms_parameter_count(config):
    n_ctm = ContinuousThoughtMachine(config).num_parameters()
    H = lstm_width_for(config)
    model = LSTMBaseline(config)
    assert model.hidden == H and model.num_parameters() == lstm_parameters(config, H)
    assert abs(model.num_parameters() - n_ctm) / n_ctm < 0.03
    # the cell reads the d_input numbers, not an attention output: 4H (d_input + H) + 8H, a head, h_0 and c_0
    d, C = config.d_input, config.out_dims
    assert model.num_parameters() == 4 * H * (d + H) + 8 * H + (H + 1) * C + 2 * H


def test_ctm_train_task_sort_model_lstm_trains_and_evaluates_from_the_command_line(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"

    def ctm(*args):
        done = subprocess.run([sys.executable, "-m", "ctm", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = ctm("train", "--task", "sort", "--task-option", "n=4", "--ticks", "8", "--model", "lstm", "--steps", "50",
              "--threads", "1", "--no-progress", "--out", run)
    assert "model: LSTM baseline" in out and "Finished 50 steps" in out
    payload = json.loads((run / "config.json").read_text())
    assert payload["model_kind"] == "lstm" and payload["task"] == {"name": "sort", "n": 4, "mean": 0.0, "std": 1.0}
    assert payload["model"]["input_reader"] == "direct" and payload["model"]["d_input"] == 4
    result = json.loads(ctm("eval", run, "--json", "--threads", "1"))
    assert result["n"] == 10_000 and 0 <= result["sequence_accuracy"] <= result["accuracy"] <= 1
    assert len(result["per_tick_certainty"]) == 8 and result["loss"] > 0
    answer = json.loads(ctm("predict", run, "0.5 -1 2 0.1", "--json", "--threads", "1"))
    assert answer["numbers"] == [0.5, -1.0, 2.0, 0.1] and answer["ticks"] == 8


SORT_LSTM_RUN = ["train", "--task", "sort", "--model", "lstm", "--task-option", "n=3", "--ticks", "5", "--d-model",
                 "16", "--memory-length", "3", "--n-synch-out", "6", "--memory-hidden-dims", "2", "--batch-size", "16",
                 "--lr", "3e-3", "--warmup-steps", "0", "--schedule", "constant", "--eval-every", "4",
                 "--eval-batch-size", "2000", "--threads", "1", "--no-progress"]


def test_a_sort_lstm_run_resumes_as_a_straight_run(tmp_path):
    from safetensors.torch import load_file

    from ctm.runs import checkpoint as ckpt

    assert _cli(*SORT_LSTM_RUN, "--steps", "8", "--out", tmp_path / "straight") == 0
    assert _cli(*SORT_LSTM_RUN, "--steps", "4", "--out", tmp_path / "resumed") == 0
    assert _cli("train", "--resume", tmp_path / "resumed", "--steps", "8", "--threads", "1", "--no-progress") == 0
    a = load_file(str(ckpt.current_checkpoint(tmp_path / "straight").path / ckpt.MODEL_FILE))
    b = load_file(str(ckpt.current_checkpoint(tmp_path / "resumed").path / ckpt.MODEL_FILE))
    assert a.keys() == b.keys() and "cell.weight_ih" in a and not any(k.startswith("q_proj") for k in a)
    assert a["cell.weight_ih"].shape[1] == 3  # the cell reads the 3 numbers
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    rows = [ckpt.read_metrics(run) for run in (tmp_path / "straight", tmp_path / "resumed")]
    assert [r["step"] for r in rows[1]] == [4, 8]
    assert rows[1][-1]["test_loss"] == pytest.approx(rows[0][-1]["test_loss"], abs=1e-6)
