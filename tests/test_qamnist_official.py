"""The official QAMNIST model's weights (../shared/reference/official_ctm, `models/ctm_qamnist.py`
`ContinuousThoughtMachineQAMNIST`): `ctm convert-official` recognises them, from an official training checkpoint
(its `model_state_dict` and the training script's `args`) or a state dict with the constructor's arguments, and
writes a qamnist task run whose model computes the official forward's predictions and certainties on the same
questions; `ctm eval` of that run is the official model's accuracy and loss on the task's test questions; what
cannot be converted is refused in one line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_synthetic

import ctm
from ctm.cli import main
from ctm.interop.official import (
    config_from_official,
    detect_official_model,
    official_arguments,
    official_model,
    qamnist_arguments,
    qamnist_options,
)
from ctm.nn.readers import Phase
from ctm.runs.checkpoint import load_model
from ctm.tasks.qamnist.data import MAX_DIGITS, N_TOKENS, schedule
from ctm.tasks.qamnist.task import QAMNISTTask

pytestmark = pytest.mark.usefixtures("isolated_rng", "one_thread")
TOL = dict(rtol=1e-5, atol=1e-5)

# The official training script's arguments (tasks/qamnist/train.py) at tiny sizes, with some of its training and
# housekeeping ones (ignored by the conversion), as a checkpoint's 'args' holds them.
SCRIPT = dict(q_num_images=2, q_num_images_delta=1, q_num_repeats_per_input=1, q_num_operations=2,
              q_num_operations_delta=1, q_num_answer_steps=1, model_type="ctm", d_model=24, d_input=8, synapse_depth=1,
              heads=2, n_synch_out=5, n_synch_action=4, neuron_select_type="random", n_random_pairing_self=256,
              iterations=50, memory_length=3, deep_memory=True, memory_hidden_dims=3, dropout=0.0,
              do_normalisation=False, batch_size=64, lr=1e-4, training_iterations=300001, log_dir="logs/qamnist/run1",
              device=[0], use_amp=False, milestones=[0, 0, 0], out_dims=10, use_most_certain=True)
CASES = {
    "the official script's model": {},
    "repeats, answer ticks, first-last, U-Net, layernorm": dict(
        q_num_repeats_per_input=3, q_num_answer_steps=2, neuron_select_type="first-last", synapse_depth=2,
        do_normalisation=True, q_num_operations=3, q_num_operations_delta=2),
    "random-pairing self pairs, shallow NLMs": dict(
        neuron_select_type="random-pairing", n_random_pairing_self=2, deep_memory=False, q_num_images=3,
        q_num_images_delta=0, q_num_answer_steps=3),
}


def _official_module(official, module: str):
    path = str(Path(official.__file__).resolve().parents[1])
    sys.path.insert(0, path)
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(path)


def _constructor(script: dict) -> dict:
    """The constructor's arguments the official script passes (tasks/qamnist/utils.py prepare_model)."""
    s = script
    return dict(iterations=s["iterations"], d_model=s["d_model"], d_input=s["d_input"], heads=s["heads"],
                n_synch_out=s["n_synch_out"], n_synch_action=s["n_synch_action"], synapse_depth=s["synapse_depth"],
                memory_length=s["memory_length"], deep_nlms=s["deep_memory"],
                memory_hidden_dims=s["memory_hidden_dims"], do_layernorm_nlm=s["do_normalisation"],
                out_dims=s["out_dims"], prediction_reshaper=[-1], dropout=s["dropout"],
                neuron_select_type=s["neuron_select_type"], n_random_pairing_self=s["n_random_pairing_self"],
                iterations_per_digit=s["q_num_repeats_per_input"],
                iterations_per_question_part=s["q_num_repeats_per_input"],
                iterations_for_answering=s["q_num_answer_steps"])


def _official(official, name: str, **changes):
    """(the official QAMNIST model, the script's arguments): lazy layers initialised by one forward, every weight
    moved off its initial value, decays into (0.1, 2), BatchNorm running statistics away from (0, 1)."""
    script = {**SCRIPT, **CASES[name], **changes}
    torch.manual_seed(0)
    QAMNIST = _official_module(official, "models.ctm_qamnist").ContinuousThoughtMachineQAMNIST
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its neuron selection
        model = QAMNIST(**_constructor(script))
    x, z = _theirs(*_questions(2, 2, 1), script["q_num_repeats_per_input"])
    with torch.no_grad():
        model(x, z)  # the lazy layers
        for n, p in model.named_parameters():
            p.copy_(torch.rand_like(p) * 1.9 + 0.1 if n.startswith("decay_params") else p + 0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2)
    return model, script


def _questions(b: int, n_digits: int, n_operations: int, side: int = 12, seed: int = 1):
    """Random questions: images (b, D, 1, side, side), operand indices (b, O + 1), operators (b, O) (0 '+')."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n_digits, 1, side, side, generator=g),
            torch.randint(0, n_digits, (b, n_operations + 1), generator=g),
            torch.randint(0, 2, (b, n_operations), generator=g))


def _theirs(images, indices, operators, repeats):
    """The official model's input (x, z): each digit's image at each of its ticks (b, D r, 1, H, W); the question
    (b, (2 O + 1) r): index, then (operator, index) pairs, operators encoded -1 ('+') and -2 ('-'), each for r."""
    parts = [indices[:, 0]]
    for j in range(operators.shape[1]):
        parts += [-1 - operators[:, j], indices[:, j + 1]]
    return images.repeat_interleave(repeats, 1), torch.stack(parts, 1).repeat_interleave(repeats, 1)


def _checkpoint(path: Path, model, script) -> Path:
    """An official training checkpoint as tasks/qamnist/train.py saves it (its args an argparse.Namespace)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=script["lr"])
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "iteration": 10, "train_losses": [2.3, 2.2], "args": argparse.Namespace(**script),
                "torch_rng_state": torch.get_rng_state(), "numpy_rng_state": np.random.get_state(),
                "random_rng_state": random.getstate()}, path)
    return path


def _same_outputs(ours, theirs, script, shapes, side=12):
    r, answering = script["q_num_repeats_per_input"], script["q_num_answer_steps"]
    for mode in ("eval", "train"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        for n_digits, n_operations in shapes:
            images, indices, operators = _questions(4, n_digits, n_operations, side, seed=n_digits + 7 * n_operations)
            with torch.no_grad():
                got = ours(schedule(images, indices, operators, r, answering))
                expected = theirs(*_theirs(images, indices, operators, r))
            assert got.predictions.shape[-1] == (n_digits + 2 * n_operations + 1) * r + answering
            for what, a, b in zip(("predictions", "certainties"), got[:2], expected[:2], strict=True):
                torch.testing.assert_close(a, b, **TOL, msg=lambda m, w=f"{mode} {what} {n_digits} digits "
                                           f"{n_operations} operations": f"{w}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_a_checkpoint_converts_to_a_qamnist_run_that_computes_the_official_forward(official, name, tmp_path,
                                                                                      capsys):
    theirs, script = _official(official, name)
    assert main(["convert-official", str(_checkpoint(tmp_path / "checkpoint_10.pt", theirs, script)), "--out",
                 str(tmp_path / "run")]) == 0  # no --args, no --model: both read from the checkpoint
    out = capsys.readouterr().out
    assert "qamnist task" in out and "note: the official script trained it on MNIST resized" in out
    ours, payload = load_model(tmp_path / "run")
    options = {"digits": script["q_num_images"], "digits_delta": script["q_num_images_delta"],
               "operations": script["q_num_operations"], "operations_delta": script["q_num_operations_delta"],
               "repeats": script["q_num_repeats_per_input"], "answer_ticks": script["q_num_answer_steps"]}
    assert payload["task"] == {"name": "qamnist", **options, "curriculum": 0.0}  # the official draw
    assert payload["official"]["model"] == "qamnist" and payload["official"]["arguments_from"] == "checkpoint"
    assert payload["official"]["arguments"]["lr"] == script["lr"] and payload["dataset"]["name"] == "qamnist"
    c = ours.config
    assert (c.input_reader, c.backbone, c.input_tokens, c.fixed_tokens, c.out_dims) == (
        "schedule", "tutorial", N_TOKENS, MAX_DIGITS, 10)
    task = QAMNISTTask(**options)
    assert c.iterations == task.options.longest  # the official `iterations` argument (50) is not the ticks
    # the operator rows: official row 0 is '+' (encoded -1), row 1 '-' (-2): ctm's tokens 50 and 51
    torch.testing.assert_close(ours.token_table.learned, theirs.operator_backbone.embedding.weight, rtol=0, atol=0)
    (d0, d1), (o0, o1) = task.options.digit_range, task.options.operation_range
    _same_outputs(ours, theirs, script, sorted({(d0, o0), (d1, o1), (d1, o1 + 1)}))


def test_a_bare_state_dict_with_the_constructors_arguments_converts_too(official, tmp_path, capsys):
    theirs, script = _official(official, "random-pairing self pairs, shallow NLMs")
    torch.save(theirs.state_dict(), tmp_path / "qamnist.pt")
    (tmp_path / "args.json").write_text(json.dumps(_constructor(script)))
    assert main(["convert-official", str(tmp_path / "qamnist.pt"), "--args", str(tmp_path / "args.json"), "--out",
                 str(tmp_path / "run")]) == 0
    ours, payload = load_model(tmp_path / "run")
    # the constructor's arguments say r and the answer ticks; digits and operations are the task's defaults
    assert payload["task"] == {"name": "qamnist", "digits": 3, "digits_delta": 2, "operations": 3,
                               "operations_delta": 2, "repeats": 1, "answer_ticks": 3, "curriculum": 0.0}
    assert "arguments_from" not in payload["official"]
    _same_outputs(ours, theirs, script, [(1, 1), (4, 4)], side=16)


def test_the_python_api_reads_either_form_of_the_arguments(official):
    theirs, script = _official(official, "repeats, answer ticks, first-last, U-Net, layernorm")
    state = theirs.state_dict()
    from_script = ctm.from_official_state_dict(state, model="qamnist", **script)
    from_constructor = ctm.from_official_state_dict(state, model="qamnist", **_constructor(script))
    assert from_script.config == config_from_official(state, "qamnist", **script)
    # the constructor does not say the digits and operations: the task's defaults (3 +- 2) give the longest question
    assert from_constructor.config == from_script.config.replace(iterations=(4 + 2 * 4 + 1) * 3 + 2)
    for a, b in zip(from_script.state_dict().values(), from_constructor.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    constructor, options = qamnist_arguments(script)
    assert constructor == _constructor(script)
    assert options == {"digits": 2, "digits_delta": 1, "operations": 3, "operations_delta": 2, "repeats": 3,
                       "answer_ticks": 2}
    assert qamnist_options(script) == {**options, "curriculum": 0.0}  # the official draw
    assert detect_official_model(state) == detect_official_model({}, script) == "qamnist"
    assert detect_official_model({}, _constructor(script)) == "qamnist"
    assert detect_official_model({"attention.in_proj_weight": torch.zeros(1)}, {"d_model": 4}) == "ctm"
    assert official_model(from_script.config) == "qamnist"
    with pytest.raises(ValueError, match=r"^the official QAMNIST model's arguments hold its schedule[^\n]*$"):
        official_arguments(from_script.config)
    with pytest.raises(ValueError, match=r"^no official model reads this schedule[^\n]*$"):
        official_model(from_script.config.replace(input_tokens=3, fixed_tokens=1))
    # the converted model takes any schedule of its tokens, e.g. one read by hand
    out = from_script.eval()([Phase("attend", torch.rand(2, 1, 12, 12), 2), Phase("token", torch.tensor([0, 1])),
                              Phase("token", torch.tensor([50, 51])), Phase("blank", torch.zeros(2), 2)])
    assert out.predictions.shape == (2, 10, 6)


def test_eval_of_the_converted_run_is_the_official_accuracy_and_loss(official, tmp_path, capsys):
    from ctm.training.loop import TrainConfig

    official_loss = _official_module(official, "utils.losses").qamnist_loss
    theirs, script = _official(official, "repeats, answer ticks, first-last, U-Net, layernorm")
    theirs.eval()
    assert main(["convert-official", str(_checkpoint(tmp_path / "c.pt", theirs, script)), "--out",
                 str(tmp_path / "run")]) == 0
    data_dir = make_synthetic(tmp_path / "digits", n_train=50, n_test=200)  # MNIST's files: 12x12 digits
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(data_dir), "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    _, payload = load_model(tmp_path / "run")
    task = QAMNISTTask(**{k: v for k, v in payload["task"].items() if k != "name"})
    data = task.eval_data("test", TrainConfig(dataset="qamnist"), str(data_dir))
    r, answering = script["q_num_repeats_per_input"], script["q_num_answer_steps"]
    hits = loss = 0.0
    for idx in data.split_batches(torch.arange(len(data)), 500):
        questions = data.questions(idx)
        images = data.images.images[torch.tensor([q.images for q in questions])].float() / 255
        indices = torch.tensor([q.indices for q in questions])
        operators = torch.tensor([q.operators for q in questions]).reshape(len(questions), -1)
        answers = torch.tensor([q.answer for q in questions])
        with torch.no_grad():
            predictions, certainties, _ = theirs(*_theirs(images, indices, operators, r))
        batch_loss, tick = official_loss(predictions[..., -answering:], certainties[..., -answering:], answers)
        loss += float(batch_loss) * len(idx)
        hits += float((predictions[..., -answering:][torch.arange(len(idx)), :, tick].argmax(1) == answers).sum())
    assert result["n"] == len(data) == 4000
    assert result["accuracy"] == pytest.approx(hits / len(data), abs=1e-9)
    assert result["loss"] == pytest.approx(loss / len(data), rel=1e-5)


def _one_line(capsys, code, words, tmp_path):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "run").exists()


def test_what_cannot_be_converted_is_one_line(official, tmp_path, capsys):
    theirs, script = _official(official, "the official script's model")
    state = theirs.state_dict()

    def convert(payload, *flags, args=None):
        torch.save(payload, tmp_path / "c.pt")
        if args is not None:
            (tmp_path / "args.json").write_text(json.dumps(args))
            flags = (*flags, "--args", str(tmp_path / "args.json"))
        return main(["convert-official", str(tmp_path / "c.pt"), "--out", str(tmp_path / "run"), *flags])

    capsys.readouterr()
    wrong_index = {**state, "index_backbone.embedding": state["index_backbone.embedding"] + 0.01}
    _one_line(capsys, convert(wrong_index, args=script), "is not the sinusoidal index embeddings", tmp_path)
    without_index = {k: v for k, v in state.items() if k != "index_backbone.embedding"}
    _one_line(capsys, convert(without_index, args=script), "missing keys ['index_backbone.embedding']", tmp_path)
    _one_line(capsys, convert(state, args={**script, "model_type": "lstm"}), "not its LSTM baseline", tmp_path)
    _one_line(capsys, convert(state, args={**_constructor(script), "iterations_per_question_part": 2}),
              "iterations_per_digit=1 and iterations_per_question_part=2 differ", tmp_path)
    _one_line(capsys, convert(state, args={**_constructor(script), "backbone_type": "none"}),
              "unknown ['backbone_type']", tmp_path)
    _one_line(capsys, convert(state, args={**script, "deep_nlms": True}), "mix the training script's", tmp_path)
    _one_line(capsys, convert(state, args={**script, "q_num_images": 3, "q_num_images_delta": 3}),
              "digits - digits_delta must be at least 1", tmp_path)
    _one_line(capsys, convert(state, args={**script, "d_input": 16}), "index embeddings of d_input=16", tmp_path)
    _one_line(capsys, convert(state, args={**script, "d_model": 30}), "the arguments give", tmp_path)
    _one_line(capsys, convert(state, "--dataset", "mnist", args=script), "--dataset does not apply", tmp_path)
    _one_line(capsys, convert(state, "--model", "sort", args=script), "convert it with model='qamnist'", tmp_path)
    _one_line(capsys, convert(state, "--model", "ctm", args=script), "convert it with model='qamnist'", tmp_path)
    _one_line(capsys, convert({**state, "output_projector.0.weight": state["output_projector.0.weight"][:5],
                               "output_projector.0.bias": state["output_projector.0.bias"][:5]},
                              args={**script, "out_dims": 5}), "reads 10 answers", tmp_path)
    # the official QAMNIST LSTM baseline's weights
    LSTM = _official_module(official, "models.lstm_qamnist").LSTMBaseline
    lstm = LSTM(iterations=1, d_model=12, d_input=8, heads=2, out_dims=10, iterations_per_digit=1,
                iterations_per_question_part=1, iterations_for_answering=1)
    with torch.no_grad():
        lstm(*_theirs(*_questions(2, 2, 1), 1))
    _one_line(capsys, convert(lstm.state_dict(), args=script), "official QAMNIST LSTM baseline's", tmp_path)
    # an official ContinuousThoughtMachine's weights with --model qamnist, and a checkpoint's args for it
    with contextlib.redirect_stdout(io.StringIO()):
        attending = official.ctm.ContinuousThoughtMachine(
            iterations=2, d_model=12, d_input=8, heads=2, n_synch_out=4, n_synch_action=4, synapse_depth=1,
            memory_length=3, deep_nlms=True, memory_hidden_dims=2, do_layernorm_nlm=False, backbone_type="none",
            positional_embedding_type="none", out_dims=10)
    with torch.no_grad():
        attending(torch.rand(1, 3, 4, 4))
    _one_line(capsys, convert(attending.state_dict(), "--model", "qamnist", args=script),
              "not the QAMNIST model's", tmp_path)
    _one_line(capsys, convert({"model_state_dict": attending.state_dict(), "args": argparse.Namespace(lr=1e-3)}),
              "which ctm reads for the QAMNIST model only", tmp_path)
    # a bare state dict without --args; a QAMNIST checkpoint (its args inside) under another --model
    _one_line(capsys, convert(state), "needs --args ARGS.json", tmp_path)
    _one_line(capsys, convert({"model_state_dict": state, "args": argparse.Namespace(**script)}, "--model", "sort"),
              "convert it with model='qamnist'", tmp_path)
