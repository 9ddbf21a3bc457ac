"""The LSTM baseline on QAMNIST (`ctm train --task qamnist --model lstm`): it reads the CTM's schedule (each digit
attended with a query from h_t, each index and operator token through kv_proj, blank ticks' zeros as they are),
which is the official QAMNIST LSTM baseline's function (`models/lstm_qamnist.py` `LSTMBaseline`, its weights
loaded into ctm's); shapes, gradients, learning, parameter matching; trained, evaluated and resumed through the
command line."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import eval_json, make_synthetic, run_cli

import ctm
from ctm.nn.lstm import LSTMBaseline, lstm_parameters, lstm_width_for
from ctm.nn.readers import Phase
from ctm.tasks.qamnist.data import MAX_DIGITS, N_TOKENS, schedule
from ctm.tasks.qamnist.loss import qamnist_loss

pytestmark = pytest.mark.usefixtures("isolated_rng", "one_thread")
TOL = dict(rtol=1e-5, atol=1e-5)


def qamnist_config(ticks: int = 12, **changes) -> ctm.CTMConfig:
    """A QAMNIST model at small sizes (the task's fields: the schedule reader, its 52 tokens, 10 answers)."""
    fields = dict(iterations=ticks, d_model=24, d_input=8, heads=2, memory_length=3, n_synch_out=4, n_synch_action=4,
                  memory_hidden_dims=2, out_dims=10, input_reader="schedule", input_tokens=N_TOKENS,
                  fixed_tokens=MAX_DIGITS)
    return ctm.CTMConfig(**{**fields, **changes})


def _questions(b: int, n_digits: int, n_operations: int, side: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    operators = torch.randint(0, 2, (b, n_operations), generator=g)
    operators[0] = torch.arange(n_operations) % 2  # both operators read
    return (torch.rand(b, n_digits, 1, side, side, generator=g),
            torch.randint(0, n_digits, (b, n_operations + 1), generator=g), operators)


def _theirs(images, indices, operators, repeats):
    """The official input (x, z): images per digit tick; index, (operator -1 '+' / -2 '-', index)..., per tick."""
    parts = [indices[:, 0]]
    for j in range(operators.shape[1]):
        parts += [-1 - operators[:, j], indices[:, j + 1]]
    return images.repeat_interleave(repeats, 1), torch.stack(parts, 1).repeat_interleave(repeats, 1)


# official LSTMBaseline name -> ctm's
_RENAMES = {"start_hidden_state": "start_hidden", "start_cell_state": "start_cell",
            "attention.in_proj_weight": "attention.in_proj.weight", "attention.in_proj_bias": "attention.in_proj.bias",
            "operator_backbone.embedding.weight": "token_table.learned"}


def _our_name(name: str) -> str:
    name = _RENAMES.get(name, name)
    for old, new in (("backbone_digit.layers.", "backbone."), ("lstm_cell.", "cell."),
                     ("output_projector.0.", "output_projector.")):
        name = name.replace(old, new) if name.startswith(old) else name
    return name


@pytest.mark.parametrize("repeats, answering", [(1, 1), (2, 3)])
def test_the_lstm_computes_the_official_qamnist_lstm_baseline(official, repeats, answering):
    path = str(Path(official.__file__).resolve().parents[1])
    sys.path.insert(0, path)
    try:
        Official = importlib.import_module("models.lstm_qamnist").LSTMBaseline
    finally:
        sys.path.remove(path)
    torch.manual_seed(0)
    d, H = 8, 20
    theirs = Official(iterations=1, d_model=H, d_input=d, heads=2, out_dims=10, iterations_per_digit=repeats,
                      iterations_per_question_part=repeats, iterations_for_answering=answering)
    with torch.no_grad():
        theirs(*_theirs(*_questions(3, 2, 1), repeats))  # the lazy layers
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2)
    ours = LSTMBaseline(qamnist_config(d_input=d), H)
    state = theirs.state_dict()
    torch.testing.assert_close(ours.token_table.fixed, state.pop("index_backbone.embedding"), rtol=0, atol=0)
    ours.load_state_dict({_our_name(k): v for k, v in state.items()})  # strict: every weight of ours is theirs
    for mode in ("train", "eval"):
        for n_digits, n_operations in ((1, 1), (3, 4)):
            ours.train(mode == "train")
            theirs.train(mode == "train")
            ours.zero_grad()
            theirs.zero_grad()
            images, indices, operators = _questions(4, n_digits, n_operations, seed=n_digits)
            got = ours(schedule(images, indices, operators, repeats, answering), track=True)
            expected = theirs(*_theirs(images, indices, operators, repeats))
            T = (n_digits + 2 * n_operations + 1) * repeats + answering
            assert got.predictions.shape == (4, 10, T) and got.tracking.attention.shape == (T, 4, 2, 9)
            for what, a, b in zip(("predictions", "certainties"), got[:2], expected[:2], strict=True):
                torch.testing.assert_close(a, b, **TOL, msg=lambda m, w=f"{mode} {what}": f"{w}: {m}")
            for out in (got, expected):
                (out[0].square().sum() + out[1][:, 1].sum()).backward()
            params = dict(ours.named_parameters())
            for n, p in theirs.named_parameters():
                scale = max(1.0, float(p.grad.abs().max()))
                torch.testing.assert_close(params[_our_name(n)].grad, p.grad, rtol=1e-4, atol=1e-5 * scale,
                                           msg=lambda m, n=f"{mode}: gradient of {n}": f"{n}: {m}")


def test_shapes_gradients_and_what_each_phase_feeds_the_cell():
    torch.manual_seed(3)
    model = LSTMBaseline(qamnist_config(), 10)
    assert model.reader.kind == "schedule" and model.token_table is not None
    assert "token_table.learned" in model.state_dict() and "token_table.fixed" not in model.state_dict()
    images, indices, operators = _questions(5, 2, 2)
    out = model(schedule(images, indices, operators, 1, 2), track=True)
    assert out.predictions.shape == (5, 10, 9) and out.certainties.shape == (5, 2, 9)
    tr = out.tracking
    assert tr.attention.shape == (9, 5, 2, 9) and tr.pre_activations.shape == (9, 5, 10)
    assert tr.attention[:2].sum(-1).allclose(torch.ones(2, 5, 2)) and not tr.attention[2:].any()  # digits only
    loss, _ = qamnist_loss(out.predictions, out.certainties, torch.randint(0, 10, (5,)), 2)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    # the plain loop: a token's row through kv_proj, blank zeros as they are
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([3, MAX_DIGITS + 1])
        out = model([Phase("token", ids, 2), Phase("blank", ids, 1), Phase("direct", torch.ones(2, 8), 1)])
        h, c = model.start_hidden.expand(2, -1), model.start_cell.expand(2, -1)
        logits = []
        for x in [model.kv_proj(model.token_table(ids))] * 2 + [torch.zeros(2, 8), torch.ones(2, 8)]:
            h, c = model.cell(x, (h, c))
            logits.append(model.output_projector(h))
    torch.testing.assert_close(out.predictions, torch.stack(logits, -1))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 52\)"):
        model([Phase("token", torch.tensor([52]), 1)])
    with pytest.raises(ValueError, match="think halts"):
        model.think([Phase("token", ids, 1)], 0.5)


def test_a_tiny_lstm_learns_a_batch_of_questions():
    torch.manual_seed(0)
    model = LSTMBaseline(qamnist_config(d_input=16), 32)
    images, indices, operators = _questions(16, 2, 1)
    answers = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(5))
    phases = schedule(images, indices, operators, 1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = model(phases)
        loss, _ = qamnist_loss(out.predictions, out.certainties, answers, 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]


@pytest.mark.parametrize("config", [qamnist_config(), qamnist_config(14, d_model=256, d_input=64, heads=4,
                                                                      n_synch_out=32, n_synch_action=32,
                                                                      memory_hidden_dims=16, neuron_selection="random",
                                                                      memory_length=3)])  # the qamnist recipe
def test_the_width_matches_the_qamnist_ctms_parameter_count(config):
    n_ctm = ctm.CTM(config).num_parameters()
    H = lstm_width_for(config)
    model = LSTMBaseline(config)
    assert model.hidden == H and model.num_parameters() == lstm_parameters(config, H)
    assert abs(model.num_parameters() - n_ctm) / n_ctm < 0.05
    # both hold the backbone, kv_proj, attention and the 2 learned operator rows; the 50 index rows are fixed
    shared = ("backbone.", "kv_proj.", "attention.", "token_table.")
    for name in shared:
        assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(name)) == sum(
            p.numel() for n, p in ctm.CTM(config).named_parameters() if n.startswith(name))


TINY_QAMNIST = ["train", "--task", "qamnist", "--model", "lstm", "--task-option", "digits=2", "--task-option",
                "digits_delta=1", "--task-option", "operations=2", "--task-option", "operations_delta=1",
                "--task-option", "repeats=2", "--d-model", "16", "--d-input", "8", "--heads", "2", "--memory-length",
                "3", "--n-synch-out", "4", "--n-synch-action", "4", "--memory-hidden-dims", "2", "--batch-size", "8",
                "--lr", "3e-3", "--warmup-steps", "0", "--schedule", "constant", "--eval-every", "4",
                "--threads", "1", "--no-progress"]


def test_ctm_train_task_qamnist_model_lstm_trains_evaluates_and_resumes(tmp_path, capsys):
    from safetensors.torch import load_file

    from ctm.runs import checkpoint as ckpt

    data = make_synthetic(tmp_path / "digits", n_train=200, n_test=100)
    flags = [*TINY_QAMNIST, "--data-dir", data]
    with contextlib.redirect_stderr(io.StringIO()):
        assert run_cli(*flags, "--steps", "8", "--out", tmp_path / "straight") == 0
        out = capsys.readouterr().out
        assert "model: LSTM baseline" in out and "Finished 8 steps" in out
        assert run_cli(*flags, "--steps", "4", "--out", tmp_path / "resumed") == 0
        assert run_cli("train", "--resume", tmp_path / "resumed", "--steps", "8", "--threads", "1",
                       "--no-progress") == 0
    payload = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert payload["model_kind"] == "lstm" and payload["task"]["name"] == "qamnist"
    assert payload["model"]["input_reader"] == "schedule" and payload["model"]["input_tokens"] == N_TOKENS
    assert payload["model"]["iterations"] == (2 + 2 * 2 + 1) * 2 + 1  # the longest question: 2 digits, 2 operations
    a = load_file(str(ckpt.current_checkpoint(tmp_path / "straight").path / ckpt.MODEL_FILE))
    b = load_file(str(ckpt.current_checkpoint(tmp_path / "resumed").path / ckpt.MODEL_FILE))
    assert a.keys() == b.keys() and {"cell.weight_ih", "token_table.learned", "q_proj.weight"} <= set(a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    rows = [ckpt.read_metrics(run) for run in (tmp_path / "straight", tmp_path / "resumed")]
    assert [r["step"] for r in rows[1]] == [4, 8]
    assert rows[1][-1]["test_loss"] == pytest.approx(rows[0][-1]["test_loss"], abs=1e-6)
    result = eval_json(tmp_path / "straight", capsys=capsys)
    assert result["n"] == 4000 and 0 <= result["accuracy"] <= 1 and result["loss"] > 0
    assert result["loss"] == pytest.approx(rows[0][-1]["test_loss"], rel=1e-5)
    assert sum(s["n"] for s in result["by_shape"]) == 4000
    # more operations than trained on: a longer schedule through the same LSTM
    longer = eval_json(tmp_path / "straight", "--task-option", "operations=4", "--task-option", "operations_delta=0",
                       capsys=capsys)
    assert list(longer["by_operations"]) == ["4"] and longer["n"] == 4000
    model = ctm.load_pretrained(tmp_path / "straight")
    assert type(model).__name__ == "LSTMBaseline" and model.reader.kind == "schedule"
