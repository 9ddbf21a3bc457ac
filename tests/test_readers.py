"""How a tick reads its input (`CTMConfig.input_reader`, ctm/nn/readers.py): the direct reader (the official sort
model's) and the schedule reader (the official QAMNIST model's) against a plain per-tick loop written here from
the model's weights, outputs and every gradient; against the official sort and QAMNIST models with their weights;
the attention reader keeps the state-dict names; old configs load; the combinations that make no sense are
refused in one line."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ctm
from ctm import Phase
from ctm.interop.official import ctm_name
from ctm.nn import engine
from ctm.nn.lstm import LSTMBaseline

pytestmark = pytest.mark.usefixtures("isolated_rng")
FIXTURES = Path(__file__).parent / "fixtures" / "runs"
TOL = dict(rtol=1e-5, atol=1e-5)

DIRECT = {  # sort-style: the input fed to the synapses at every tick
    "random-pairing temperature": dict(iterations=5, d_model=20, d_input=7, memory_length=4, n_synch_out=6,
                                       memory_hidden_dims=3, out_dims=8, backbone="none", input_reader="direct",
                                       neuron_selection="random-pairing", n_self_pairs=2, nlm_temperature=True),
    "first-last unet": dict(iterations=4, d_model=12, d_input=5, memory_length=3, n_synch_out=4, memory_hidden_dims=2,
                            out_dims=3, backbone="none", input_reader="direct", synapse_depth=3),
}
SCHEDULE = {  # QAMNIST-style: images attended one phase at a time, vectors fed directly, ticks to answer
    "first-last two heads": dict(iterations=9, d_model=24, d_input=8, heads=2, memory_length=3, n_synch_out=5,
                                 n_synch_action=4, memory_hidden_dims=3, out_dims=5, input_reader="schedule"),
    "random": dict(iterations=7, d_model=16, d_input=6, heads=3, memory_length=4, n_synch_out=4, n_synch_action=5,
                   memory_hidden_dims=2, out_dims=4, input_reader="schedule", neuron_selection="random"),
}


def _moved(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter off its initial value (zero biases would hide a missing term), decays in (0.1, 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) * 0.9 + 0.1 if name.startswith("decay") else p + 0.1 * torch.randn_like(p))
    return model


def _schedule(c: ctm.CTMConfig, B: int = 3) -> list[Phase]:
    """Two images of different sizes (4 and 9 tokens) attended, two vectors and zeros fed directly: 7 ticks."""
    return [Phase("attend", torch.rand(B, 1, 8, 8), 2), Phase("attend", torch.rand(B, 1, 12, 12), 1),
            Phase("direct", torch.randn(B, c.d_input), 2), Phase("direct", torch.randn(B, c.d_input), 1),
            Phase("direct", torch.zeros(B, c.d_input), 1)]


# ------------------------------------------------------------------------------ the reference: a plain loop


def _attend(model, query, tokens):
    """Multi-head attention of one query (B, d) over tokens (B, N, d), from the weights of `model.attention`."""
    W, b = model.attention.in_proj.weight, model.attention.in_proj.bias
    B, N, d = tokens.shape
    h = model.config.heads
    q = (query @ W[:d].T + b[:d]).view(B, h, 1, d // h)
    k = (tokens @ W[d:2 * d].T + b[d:2 * d]).view(B, N, h, d // h).transpose(1, 2)
    v = (tokens @ W[2 * d:].T + b[2 * d:]).view(B, N, h, d // h).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)  # (B, h, 1, N)
    return model.attention.out_proj((weights @ v).reshape(B, d))


def _reference(model, per_tick):
    """The CTM's ticks, one by one: per_tick[t] is ("direct", (B, d_input)) or ("attend", tokens (B, N, d))."""
    B = per_tick[0][1].shape[0]
    z = model.start_activated_state.expand(B, -1)
    trace = model.start_trace.expand(B, -1, -1)
    out_l, out_r = model.synch_out.left, model.synch_out.right
    r_out = torch.exp(-model.decay_params_out)  # decays in (0.1, 1): the clamp is the identity
    alpha_out, beta_out = z[:, out_l] * z[:, out_r], torch.ones(B, out_l.numel())
    alpha_act = beta_act = None
    predictions, certainties = [], []
    for kind, x in per_tick:
        if model.synch_action is not None:  # the action synchronisation goes on at every tick
            product = z[:, model.synch_action.left] * z[:, model.synch_action.right]
            r_act = torch.exp(-model.decay_params_action)
            alpha_act, beta_act = (product, torch.ones_like(product)) if alpha_act is None else (
                r_act * alpha_act + product, r_act * beta_act + 1)
        o = x if kind == "direct" else _attend(model, model.q_proj(alpha_act / beta_act.sqrt()), x)
        pre = model.synapses(torch.cat((o, z), dim=-1))
        trace = torch.cat((trace[:, :, 1:], pre.unsqueeze(-1)), dim=-1)
        z = model.neuron_level_models(trace)
        alpha_out, beta_out = r_out * alpha_out + z[:, out_l] * z[:, out_r], r_out * beta_out + 1
        logits = model.output_projector(alpha_out / beta_out.sqrt())
        p = torch.softmax(logits, -1)
        entropy = -(p * torch.log(p)).sum(-1) / math.log(logits.shape[-1])
        predictions.append(logits)
        certainties.append(torch.stack((entropy, 1 - entropy), -1))
    return torch.stack(predictions, -1), torch.stack(certainties, -1)


def _outputs_and_gradients(model, run, weights):
    """(predictions, certainties) of `run()` and the gradient of every parameter of a loss reading both."""
    model.zero_grad(set_to_none=True)
    predictions, certainties = run()
    ((weights[0] * predictions).sum() + (weights[1] * certainties).sum()).backward()
    return (predictions, certainties), {n: p.grad for n, p in model.named_parameters()}


def _compare(model, ours, reference, T):
    c, B = model.config, 3
    g = torch.Generator().manual_seed(1)
    weights = (torch.randn(B, c.out_dims, T, generator=g), torch.randn(B, 2, T, generator=g))
    out_ours, grads_ours = _outputs_and_gradients(model, ours, weights)
    out_ref, grads_ref = _outputs_and_gradients(model, reference, weights)
    assert out_ours[0].shape == (B, c.out_dims, T)
    for what, a, b in zip(("predictions", "certainties"), out_ours, out_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, what=what: f"{what}: {m}")
    assert set(grads_ours) == set(grads_ref)
    for name, grad in grads_ours.items():
        assert grad is not None and grads_ref[name] is not None, f"{name} has no gradient"
        torch.testing.assert_close(grad, grads_ref[name], **TOL, msg=lambda m, name=name: f"gradient of {name}: {m}")


# ------------------------------------------------------------------------------------ against the plain loop


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(DIRECT))
def test_direct_reader_is_the_plain_loop(name, mode):
    torch.manual_seed(0)
    model = _moved(ctm.CTM(ctm.CTMConfig(**DIRECT[name]))).train(mode == "train")
    assert not engine.applies(model) and not engine.covers(model.config, False)
    assert model.attention is model.q_proj is model.kv_proj is model.synch_action is model.decay_params_action is None
    x = torch.randn(3, model.config.d_input)
    T = model.config.iterations
    _compare(model, lambda: tuple(model(x))[:2], lambda: _reference(model, [("direct", x)] * T), T)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(SCHEDULE))
def test_schedule_reader_is_the_plain_loop(name, mode):
    torch.manual_seed(0)
    model = _moved(ctm.CTM(ctm.CTMConfig(**SCHEDULE[name]))).train(mode == "train")
    assert not engine.applies(model) and not engine.covers(model.config, False)
    schedule = _schedule(model.config)

    def reference():  # the backbone (train-mode BatchNorm) once per attend phase, as the model runs it
        per_tick = []
        for p in schedule:
            read = ("attend", model.compute_features(p.inputs)[0]) if p.kind == "attend" else ("direct", p.inputs)
            per_tick += [read] * p.ticks
        return _reference(model, per_tick)

    _compare(model, lambda: tuple(model(schedule))[:2], reference, 7)  # 7 ticks of the 9 or 7 the config allows


def test_schedule_tracking_and_forward_tokens():
    torch.manual_seed(0)
    model = _moved(ctm.CTM(ctm.CTMConfig(**SCHEDULE["first-last two heads"]))).eval()
    schedule = _schedule(model.config)
    out = model(schedule, track=True)
    tr = out.tracking
    assert tr.attention.shape == (7, 3, 2, 9) and tr.synchronisation_action.shape == (7, 3, 10)
    assert tr.token_grid == (1, 9)  # the phases' grids differ (2x2 and 3x3)
    torch.testing.assert_close(tr.attention[:2, ..., :4].sum(-1), torch.ones(2, 3, 2))
    assert not tr.attention[:2, ..., 4:].any() and not tr.attention[3:].any()
    torch.testing.assert_close(tr.attention[2].sum(-1), torch.ones(3, 2))
    encoded = [p._replace(inputs=model.compute_features(p.inputs)[0]) if p.kind == "attend" else p for p in schedule]
    again = model.forward_tokens(encoded)
    torch.testing.assert_close(again.predictions, out.predictions, rtol=0, atol=0)
    same_grid = [Phase("attend", torch.rand(3, 1, 8, 8), 1), Phase("attend", torch.rand(3, 1, 8, 8), 2)]
    assert model(same_grid, track=True).tracking.token_grid == (2, 2)


def test_direct_tracking_and_think():
    torch.manual_seed(0)
    model = _moved(ctm.CTM(ctm.CTMConfig(**DIRECT["random-pairing temperature"]))).eval()
    x = torch.randn(6, model.config.d_input)
    out = model(x, track=True)
    assert out.tracking.attention.shape == (5, 6, 1, 0) and out.tracking.synchronisation_action.shape == (5, 6, 0)
    threshold = float(out.certainties[:, 1].detach().median())
    thought = model.think(x, threshold)  # the readable stepper, halted rows dropped on the way
    assert 1 < len(set(thought.ticks.tolist()))
    at = thought.ticks - 1
    torch.testing.assert_close(thought.logits, out.predictions[torch.arange(6), :, at], **TOL)


# ------------------------------------------------------------------------------------ against the official


def _official_class(official, module: str, name: str):
    path = str(Path(official.__file__).resolve().parents[1])
    sys.path.insert(0, path)
    try:
        return getattr(importlib.import_module(f"models.{module}"), name)
    finally:
        sys.path.remove(path)


def _our_name(name: str) -> str:
    """ctm's name of an official weight; the QAMNIST model's digit backbone is ctm's tutorial backbone."""
    return ctm_name(name.replace("backbone_digit.layers.", "backbone."))


def _load_official(ours, theirs, skip=()):
    """Copy the official model's weights into ours (random pairs as ctm's pairs; first-last has none to copy)."""
    assert ours.config.neuron_selection in ("first-last", "random-pairing")
    state = {}
    for name, tensor in theirs.state_dict().items():
        if name.startswith(skip):
            continue
        if name.startswith(("out_neuron_indices", "action_neuron_indices")):
            if tensor.numel() and ours.config.neuron_selection == "random-pairing":
                side, which = name.split("_")[0], name.rsplit("_", 1)[1]
                state[f"synch_{side}.{which}"] = tensor.long()
            continue
        state[_our_name(name)] = tensor
    ours.load_state_dict(state)  # strict: every weight of ours came from theirs


def _grads_match(ours, theirs, skip=()):
    params = dict(ours.named_parameters())
    for n, p in theirs.named_parameters():
        if n.startswith(skip):
            continue
        scale = max(1.0, float(p.grad.abs().max()))
        torch.testing.assert_close(params[_our_name(n)].grad, p.grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, n=n: f"gradient of {n}: {m}")


def test_direct_reader_is_the_official_sort_model(official):
    Sort = _official_class(official, "ctm_sort", "ContinuousThoughtMachineSORT")
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its neuron selection
        theirs = Sort(iterations=5, d_model=20, d_input=7, heads=0, n_synch_out=6, n_synch_action=0, synapse_depth=1,
                      memory_length=4, deep_nlms=True, memory_hidden_dims=3, do_layernorm_nlm=False,
                      backbone_type="none", positional_embedding_type="none", out_dims=8, n_random_pairing_self=2)
    x = torch.randn(4, 7)
    with torch.no_grad():
        theirs(x)  # the lazy layers
    _moved(theirs)
    ours = ctm.CTM(ctm.CTMConfig(**DIRECT["random-pairing temperature"]))
    _load_official(ours, theirs)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [model(xi)[:3] for model, xi in ((ours, xs[0]), (theirs, xs[1]))]
    for what, a, b in zip(("predictions", "certainties", "synchronisation"), *outs, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, what=what: f"{what}: {m}")
    for out in outs:
        (out[0].square().sum() + out[1][:, 1].sum() + out[2].sum()).backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, **TOL)
    _grads_match(ours, theirs)


def test_schedule_reader_is_the_official_qamnist_model(official):
    QAMNIST = _official_class(official, "ctm_qamnist", "ContinuousThoughtMachineQAMNIST")
    per_digit, per_part, answering, B, d = 2, 2, 3, 3, 8
    torch.manual_seed(0)
    theirs = QAMNIST(iterations=1, d_model=24, d_input=d, heads=2, n_synch_out=5, n_synch_action=4, synapse_depth=1,
                     memory_length=3, deep_nlms=True, memory_hidden_dims=3, do_layernorm_nlm=False, out_dims=5,
                     iterations_per_digit=per_digit, iterations_per_question_part=per_part,
                     iterations_for_answering=answering)
    digits = torch.rand(B, 3, 1, 12, 12)  # three digits, each shown for per_digit ticks
    x = digits.repeat_interleave(per_digit, dim=1)  # (B, 6, 1, 12, 12): the image of each digit tick
    # the question: index, operator, index, operator (per_part ticks each); operators are -1 (plus), -2 (minus)
    parts = [torch.randint(0, 3, (B,)), -1 - torch.randint(0, 2, (B,)), torch.randint(0, 3, (B,)),
             -1 - torch.randint(0, 2, (B,))]
    z = torch.stack(parts, 1).repeat_interleave(per_part, dim=1)  # (B, 8)
    with torch.no_grad():
        theirs(x, z)  # the lazy layers
    _moved(theirs)
    for m in theirs.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2)
    T = x.shape[1] + z.shape[1] + answering
    ours = ctm.CTM(ctm.CTMConfig(**{**SCHEDULE["first-last two heads"], "iterations": T, "nlm_temperature": True}))
    embeddings = ("index_backbone", "operator_backbone")  # the task's, outside the CTM: they make the vectors
    _load_official(ours, theirs, skip=embeddings)
    for mode in ("train", "eval"):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        theirs.zero_grad()
        ours.zero_grad()
        schedule = [Phase("attend", digits[:, i], per_digit) for i in range(3)]
        for i, part in enumerate(parts):
            embed = theirs.index_backbone if i % 2 == 0 else theirs.operator_backbone
            schedule.append(Phase("direct", embed(part).detach(), per_part))
        schedule.append(Phase("direct", torch.zeros(B, d), answering))
        out_ours, out_theirs = ours(schedule)[:3], theirs(x, z)[:3]
        for what, a, b in zip(("predictions", "certainties", "synchronisation"), out_ours, out_theirs, strict=True):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, what=f"{mode} {what}": f"{what}: {m}")
        for out in (out_ours, out_theirs):
            (out[0].square().sum() + out[1][:, 1].sum() + out[2].sum()).backward()
        _grads_match(ours, theirs, skip=embeddings)


# ------------------------------------------------------------------------------ attention, configs, errors


def test_attention_reader_keeps_the_state_dict_and_the_engine():
    model = ctm.CTM(ctm.CTMConfig(iterations=3, d_model=16, d_input=8, n_synch_out=4, n_synch_action=4))
    assert model.config.input_reader == "attention" and model.reader.kind == "attention"
    assert engine.applies(model) and engine.covers(model.config, True)
    names = set(model.state_dict())
    assert not any(n.startswith("reader") for n in names)
    assert {"q_proj.weight", "attention.in_proj.weight", "attention.out_proj.bias", "kv_proj.0.weight",
            "decay_params_action"} <= names
    assert model.reader.parts == (model.q_proj, model.attention)  # the model's modules, not copies
    for reader in ("direct", "schedule"):
        assert not engine.covers(ctm.CTMConfig(input_reader=reader, **(
            dict(backbone="none") if reader == "direct" else {})), False)


def test_a_config_without_the_field_loads_as_attention():
    fields = ctm.CTMConfig().to_dict()
    del fields["input_reader"]
    assert ctm.CTMConfig.from_dict(fields).input_reader == "attention"
    old = json.loads((FIXTURES / "old-version" / "config.json").read_text())["model"]
    assert "input_reader" not in old and ctm.CTMConfig.from_dict(old).input_reader == "attention"
    direct = ctm.CTMConfig(**DIRECT["first-last unet"])
    assert ctm.CTMConfig.from_json(direct.to_json()) == direct


@pytest.mark.parametrize("changes, field", [
    (dict(input_reader="direct"), "backbone"),  # the tutorial's backbone: the direct input is not an image
    (dict(input_reader="direct", backbone="none", heads=2), "heads"),
    (dict(input_reader="direct", backbone="none", n_synch_action=8), "n_synch_action"),
    (dict(input_reader="direct", backbone="none", in_channels=3), "in_channels"),
    (dict(input_reader="reading"), "input_reader"),
])
def test_what_a_reader_has_no_use_for_is_refused_in_one_line(changes, field):
    with pytest.raises(ValueError, match=rf"^CTMConfig\.{field} ") as e:
        ctm.CTMConfig(**changes)
    assert "\n" not in str(e.value)


def test_direct_ignores_the_action_sizes_it_does_not_use():
    # n_synch_action 16 (its default) exceeds d_model 8 and n_self_pairs; no action synchronisation is built
    config = ctm.CTMConfig(d_model=8, n_synch_out=4, backbone="none", input_reader="direct",
                           neuron_selection="random-pairing", n_self_pairs=3)
    assert ctm.CTM(config)(torch.randn(2, 32)).predictions.shape == (2, 10, 30)


@pytest.mark.parametrize("schedule, error, match", [
    (lambda x, v: x, TypeError, "a non-empty list of Phase"),
    (lambda x, v: [], TypeError, "a non-empty list of Phase"),
    (lambda x, v: [Phase("look", x, 1)], ValueError, "phase 0: kind must be one of attend, direct, token, blank"),
    (lambda x, v: [Phase("attend", x, 0)], ValueError, "phase 0: ticks must be a positive integer"),
    (lambda x, v: [Phase("attend", x, 2), Phase("direct", v[:, :3], 1)], ValueError, r"phase 1 .* \(B, 8\)"),
    (lambda x, v: [Phase("attend", x, 2), Phase("direct", v[:2], 1)], ValueError, "phase 1 has a batch of 2"),
    (lambda x, v: [Phase("token", torch.zeros(3, dtype=torch.long), 1)], ValueError,
     r"phase 0 \('token'\) reads the token table, and this model has none \(CTMConfig.input_tokens is 0\)"),
    (lambda x, v: [Phase("blank", 3, 1)], ValueError, r"phase 0 \('blank'\) takes a tensor \(B, ...\)"),
    (lambda x, v: [Phase("attend", x[:, 0], 1)], ValueError, "expected input of shape"),
])
def test_a_bad_schedule_is_refused_in_one_line(schedule, error, match):
    model = ctm.CTM(ctm.CTMConfig(**SCHEDULE["first-last two heads"]))
    with pytest.raises(error, match=match) as e:
        model(schedule(torch.rand(3, 1, 8, 8), torch.randn(3, 8)))
    assert "\n" not in str(e.value)


TOKENS = dict(SCHEDULE["first-last two heads"], input_tokens=7, fixed_tokens=5)


@pytest.mark.parametrize("ids, match", [
    (torch.tensor([0, 7, 1]), r"ids must lie in \[0, 7\) \(CTMConfig.input_tokens\), got \[0, 7\]"),
    (torch.tensor([-1, 0, 1]), r"ids must lie in \[0, 7\)"),
    (torch.zeros(3), r"takes integer ids of shape \(B,\), got torch.float32 \(3,\)"),
    (torch.zeros(3, 1, dtype=torch.long), r"takes integer ids of shape \(B,\), got torch.int64 \(3, 1\)"),
])
def test_bad_token_ids_are_refused_in_one_line(ids, match):
    model = ctm.CTM(ctm.CTMConfig(**TOKENS))
    with pytest.raises(ValueError, match=match) as e:
        model([Phase("attend", torch.rand(3, 1, 8, 8), 1), Phase("token", ids, 1)])
    assert "\n" not in str(e.value)


def test_token_and_blank_phases_are_the_direct_phases_of_their_vectors():
    torch.manual_seed(0)
    model = ctm.CTM(ctm.CTMConfig(**TOKENS))
    x, ids = torch.rand(3, 1, 8, 8), torch.tensor([0, 6, 3])
    table = torch.cat((model.token_table.fixed, model.token_table.learned))  # (7, d_input)
    ours = model([Phase("attend", x, 2), Phase("token", ids, 2), Phase("blank", ids, 3)])
    direct = model([Phase("attend", x, 2), Phase("direct", table[ids].detach(), 2),
                    Phase("direct", torch.zeros(3, TOKENS["d_input"]), 3)])
    torch.testing.assert_close(ours.predictions, direct.predictions)
    assert ours.predictions.shape == (3, 5, 7)  # any number of ticks: iterations is 9, and 7 or 12 run
    assert model([Phase("attend", x, 6), Phase("blank", ids, 6)]).predictions.shape == (3, 5, 12)
    ours.predictions.square().sum().backward()
    grad = model.token_table.learned.grad  # (2, d_input): the learned rows 5 and 6; id 6 was read, id 5 not
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0
    assert set(model.state_dict()) >= {"token_table.learned"} and "token_table.fixed" not in model.state_dict()
    with pytest.raises(ValueError, match=r"^CTMConfig.input_tokens \(3\) applies to input_reader 'schedule'"):
        ctm.CTMConfig(input_tokens=3)
    with pytest.raises(ValueError, match=r"^CTMConfig.fixed_tokens \(8\) counts rows of the token table"):
        ctm.CTMConfig(**dict(TOKENS, fixed_tokens=8))


def test_fixed_tokens_are_the_official_index_embeddings(official):
    modules = _official_class(official, "modules", "QAMNISTIndexEmbeddings")
    for d in (8, 64):
        theirs = modules(50, d)
        ours = ctm.CTM(ctm.CTMConfig(**dict(TOKENS, d_input=d, heads=1, input_tokens=52, fixed_tokens=50)))
        ids = torch.arange(50)
        torch.testing.assert_close(ours.token_table(ids), theirs(ids), rtol=0, atol=0)


def test_what_cannot_read_other_inputs_refuses_them():
    direct = ctm.CTM(ctm.CTMConfig(**DIRECT["first-last unet"]))
    for x in (torch.randn(2, 6), torch.randn(2, 5).double(), torch.rand(2, 1, 5, 5)):
        with pytest.raises(ValueError, match="input_reader 'direct' takes"):
            direct(x)
    schedule = ctm.CTM(ctm.CTMConfig(**SCHEDULE["random"]))
    with pytest.raises(ValueError, match="think halts .* input_reader 'schedule'"):
        schedule.think([Phase("direct", torch.randn(2, 6), 3)], 0.5)
    with pytest.raises(TypeError, match="input_reader 'schedule' takes a non-empty list of Phase"):
        LSTMBaseline(ctm.CTMConfig(**SCHEDULE["random"]), 8)(torch.randn(2, 6))  # the LSTM reads schedules too


def test_readers_take_double_backward():
    """The readable path's plain autograd: a second derivative through the direct and schedule readers."""
    torch.manual_seed(0)
    for config, x in ((DIRECT["first-last unet"], lambda c: torch.randn(2, c.d_input)),
                      (SCHEDULE["random"], lambda c: [Phase("attend", torch.rand(2, 1, 8, 8), 2),
                                                      Phase("direct", torch.randn(2, c.d_input), 2)])):
        model = ctm.CTM(ctm.CTMConfig(**config)).eval()
        first = model.output_projector.weight
        (g,) = torch.autograd.grad(F.softplus(model(x(model.config)).predictions).sum(), first, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), first)
        assert torch.isfinite(gg).all() and gg.abs().sum() > 0


def test_the_command_line_trains_and_benches_the_attention_reader_only(capsys, tmp_path):
    from ctm.cli import main

    assert main(["train", "--input-reader", "direct", "--out", str(tmp_path / "run")]) == 2
    assert "--input-reader direct: the image task feeds its inputs to the attention reader" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["bench", "--input-reader", "schedule"]) == 2
    assert "--input-reader schedule: ctm bench feeds random images" in capsys.readouterr().err
