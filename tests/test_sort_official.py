"""The official sort model's weights (../shared/reference/official_ctm, `models/ctm_sort.py`
`ContinuousThoughtMachineSORT`): `from_official_state_dict(..., model="sort")` and `ctm convert-official
--model sort` give a ctm model (input_reader "direct") that computes the official forward's predictions,
certainties and gradients, in a run directory whose eval and predict read it as a sort task run; what cannot
be converted is refused in one line."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

import ctm
from ctm.cli import main
from ctm.interop.official import config_from_official, official_arguments, official_model
from ctm.runs.checkpoint import load_model
from ctm.tasks.sort import decode

pytestmark = pytest.mark.usefixtures("isolated_rng", "one_thread")
TOL = dict(rtol=1e-5, atol=1e-5)

# The official sort script's constructor call: d_input = out_dims - 1 = N; heads, n_synch_action and the
# positional embedding are passed but ignored by the sort class (here the script's defaults: 4, 32, 'none').
BASE = dict(iterations=8, d_model=20, d_input=4, heads=4, n_synch_out=6, n_synch_action=32, synapse_depth=1,
            memory_length=4, deep_nlms=True, memory_hidden_dims=3, do_layernorm_nlm=False, backbone_type="none",
            positional_embedding_type="none", out_dims=5)
CASES = {
    # the official sort script's option defaults at tiny sizes: a depth-4 U-Net, deep NLMs of 4 hidden
    # units, random-pairing without self pairs, no normalisation, no dropout (dropout_nlm None: dropout's)
    "official defaults": dict(synapse_depth=4, memory_hidden_dims=4, neuron_select_type="random-pairing",
                              n_random_pairing_self=0, dropout=0.0, dropout_nlm=None),
    "linear synapses random-pairing self pairs": dict(n_random_pairing_self=2),
    "unet first-last layernorm shallow nlm": dict(synapse_depth=2, neuron_select_type="first-last",
                                                  do_layernorm_nlm=True, deep_nlms=False, heads=0,
                                                  n_synch_action=0),
    "random selection n_synch_out > d_model": dict(neuron_select_type="random", d_model=5, n_synch_out=7,
                                                   synapse_depth=3, d_input=6, out_dims=7, iterations=10),
}


def _sort_class(official):
    path = str(Path(official.__file__).resolve().parents[1])
    sys.path.insert(0, path)
    try:
        return importlib.import_module("models.ctm_sort").ContinuousThoughtMachineSORT
    finally:
        sys.path.remove(path)


def _official(official, name, **changes):
    """(the official sort model, its arguments): lazy layers initialised by one forward, every weight moved
    off its initial value (zero biases would hide a missing term), decays into (0.1, 2)."""
    kwargs = {**BASE, **CASES[name], **changes}
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its neuron selection
        model = _sort_class(official)(**kwargs)
    with torch.no_grad():
        model(torch.randn(2, kwargs["d_input"]))
        for n, p in model.named_parameters():
            p.copy_(torch.rand_like(p) * 1.9 + 0.1 if n.startswith("decay_params") else p + 0.1 * torch.randn_like(p))
    return model, kwargs


def _convert(tmp_path, state, kwargs, *flags) -> int:
    torch.save(state, tmp_path / "sort.pt")
    (tmp_path / "args.json").write_text(json.dumps(kwargs))
    return main(["convert-official", str(tmp_path / "sort.pt"), "--args", str(tmp_path / "args.json"),
                 "--out", str(tmp_path / "run"), *flags])


def _numbers(n, b=5, seed=1):
    return torch.randn(b, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CASES))
def test_the_converted_run_computes_the_official_forward(official, name, tmp_path, capsys):
    theirs, kwargs = _official(official, name)
    theirs.eval()
    assert _convert(tmp_path, theirs.state_dict(), kwargs, "--model", "sort") == 0
    assert "sorts" in capsys.readouterr().out
    ours, payload = load_model(tmp_path / "run")
    ours.eval()
    N = kwargs["d_input"]
    assert payload["task"] == {"name": "sort", "n": N, "mean": 0.0, "std": 1.0}
    assert payload["official"]["model"] == "sort" and payload["dataset"]["name"] == "sort"
    c = ours.config
    assert (c.input_reader, c.backbone, c.d_input, c.out_dims) == ("direct", "none", N, N + 1)
    x = _numbers(N)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    for what, a, b in zip(("predictions", "certainties", "synchronisation"), got[:3], expected, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, what=what: f"{what}: {m}")

    # ctm predict decodes the official predictions' greedy order
    texts = [" ".join(f"{v:.6f}" for v in row) for row in x.tolist()]
    assert main(["predict", str(tmp_path / "run"), *texts, "--json", "--threads", "1"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rounded = torch.tensor([[float(f"{v:.6f}") for v in row] for row in x.tolist()])
    with torch.no_grad():
        d = decode(theirs(rounded)[0])
    assert [a["order"] for a in answers] == [d.order[i, :d.count[i]].tolist() for i in range(len(texts))]


def test_eval_of_the_converted_run_is_the_official_loss_on_the_test_set(official, tmp_path, capsys):
    from ctm.tasks.sort.task import TEST_SIZE, TEST_STREAM, sort_inputs

    path = str(Path(official.__file__).resolve().parents[1])
    sys.path.insert(0, path)
    try:
        official_loss = importlib.import_module("utils.losses").sort_loss
    finally:
        sys.path.remove(path)
    theirs, kwargs = _official(official, "linear synapses random-pairing self pairs")
    theirs.eval()
    assert _convert(tmp_path, theirs.state_dict(), kwargs, "--model", "sort") == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    x = sort_inputs(TEST_STREAM, torch.arange(TEST_SIZE), kwargs["d_input"], test=True)
    with torch.no_grad():
        predictions, certainties, _ = theirs(x)
    assert result["n"] == TEST_SIZE
    assert result["loss"] == pytest.approx(official_loss(predictions, x.argsort(1)).item(), rel=1e-4)
    assert result["per_tick_certainty"] == pytest.approx(certainties[:, 1].mean(0).tolist(), rel=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(CASES))
def test_converted_weights_give_the_official_gradients(official, name, mode):
    theirs, kwargs = _official(official, name)
    ours = ctm.from_official_state_dict(theirs.state_dict(), model="sort", **kwargs)
    theirs.train(mode == "train")
    ours.train(mode == "train")
    x = _numbers(kwargs["d_input"], b=3)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [tuple(model(xi))[:3] for model, xi in ((ours, xs[0]), (theirs, xs[1]))]
    for what, a, b in zip(("predictions", "certainties", "synchronisation"), *outs, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, what=what: f"{what}: {m}")
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, generator=g) for t in outs[0]]
    for out in outs:
        sum((w * t).sum() for w, t in zip(weights, out, strict=True)).backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, **TOL)
    from ctm.interop.official import ctm_name

    params = dict(ours.named_parameters())
    theirs_params = dict(theirs.named_parameters())
    assert {ctm_name(n) for n in theirs_params} == set(params)
    for n, p in theirs_params.items():
        scale = max(1.0, float(p.grad.abs().max()))
        torch.testing.assert_close(params[ctm_name(n)].grad, p.grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, n=n: f"gradient of {n}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_official_arguments_of_a_direct_config_build_the_official_sort_model(official, name):
    theirs, kwargs = _official(official, name)
    ours = ctm.from_official_state_dict(theirs.state_dict(), model="sort", **kwargs)
    assert official_model(ours.config) == "sort"
    arguments = official_arguments(ours.config)
    assert (arguments["heads"], arguments["n_synch_action"], arguments["backbone_type"]) == (0, 0, "none")
    with contextlib.redirect_stdout(io.StringIO()):
        rebuilt = _sort_class(official)(**arguments)
    with torch.no_grad():
        rebuilt(torch.zeros(1, ours.config.d_input))
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert config_from_official(theirs.state_dict(), "sort", **arguments) == ours.config
    with pytest.raises(ValueError, match="QAMNIST"):
        official_arguments(ctm.CTMConfig(input_reader="schedule"))


def _one_line(capsys, code, words, tmp_path):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, words", [
    (dict(lr=1e-3), "unknown ['lr']"),
    (dict(d_input=128), "d_input=128, but the weights read 4 numbers"),
    (dict(out_dims=6), "output_projector.weight (5, 6) (the arguments give (6, 6))"),
    (dict(synapse_depth=2), "no synapses.first_projection.0.weight"),
])
def test_wrong_sort_arguments_are_one_line(official, tmp_path, capsys, change, words):
    theirs, kwargs = _official(official, "linear synapses random-pairing self pairs")
    _one_line(capsys, _convert(tmp_path, theirs.state_dict(), {**kwargs, **change}, "--model", "sort"), words,
              tmp_path)


def test_a_sort_model_that_is_not_a_sort_task_run_is_one_line(official, tmp_path, capsys):
    theirs, kwargs = _official(official, "linear synapses random-pairing self pairs", out_dims=9)
    ours = ctm.from_official_state_dict(theirs.state_dict(), model="sort", **kwargs)  # fine in Python
    assert ours.config.out_dims == 9
    _one_line(capsys, _convert(tmp_path, theirs.state_dict(), kwargs, "--model", "sort"),
              "emits out_dims=5 classes", tmp_path)


def test_missing_and_foreign_weights_are_one_line(official, tmp_path, capsys):
    theirs, kwargs = _official(official, "linear synapses random-pairing self pairs")
    state = theirs.state_dict()
    missing = {k: v for k, v in state.items() if k != "decay_params_out"}
    _one_line(capsys, _convert(tmp_path, missing, kwargs, "--model", "sort"), "missing keys ['decay_params_out']",
              tmp_path)
    _one_line(capsys, _convert(tmp_path, {k: v for k, v in state.items() if k != "out_neuron_indices_right"}, kwargs,
                               "--model", "sort"), "out_neuron_indices_right is missing", tmp_path)
    # the sort weights without --model sort: the converter says what they look like
    _one_line(capsys, _convert(tmp_path, state, kwargs), "--model sort", tmp_path)
    _one_line(capsys, _convert(tmp_path, state, kwargs, "--model", "sort", "--dataset", "mnist"),
              "--dataset does not apply", tmp_path)
    # an official ContinuousThoughtMachine's weights with --model sort
    with contextlib.redirect_stdout(io.StringIO()):
        attending = official.ctm.ContinuousThoughtMachine(**{**kwargs, "heads": 2, "n_synch_action": 4})
    with torch.no_grad():
        attending(torch.rand(1, 3, 4, 4))
    _one_line(capsys, _convert(tmp_path, attending.state_dict(), kwargs, "--model", "sort"),
              "not the sort model's", tmp_path)
    with pytest.raises(ValueError, match=r"^unknown official model 'lstm'[^\n]*'qamnist'[^\n]*$"):
        ctm.from_official_state_dict(state, model="lstm", **kwargs)
    with pytest.raises(ValueError, match=r"^official state dict has no operator_backbone[^\n]*model='sort'"):
        ctm.from_official_state_dict(state, model="qamnist", **kwargs)  # the sort weights are not QAMNIST's
