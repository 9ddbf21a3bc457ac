"""ctm against the official CTM implementation (../shared/reference/official_ctm): official weights loaded with
`ctm.from_official_state_dict` give the same predictions, certainties, synchronisation, tracking and gradients,
over a grid that takes every official option value at least once; the options' config rules; the dispatch to
the fast engine."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

import ctm
from ctm.config import BACKBONES
from ctm.interop.official import ctm_name
from ctm.nn import engine
from ctm.nn.backbones import TruncatedResNet

BASE = dict(iterations=4, d_model=23, d_input=12, heads=2, n_synch_out=6, n_synch_action=5, synapse_depth=1,
            memory_length=5, deep_nlms=True, memory_hidden_dims=3, do_layernorm_nlm=False, out_dims=7,
            backbone_type="none", positional_embedding_type="none")


def _images(b, c, h, w):
    return lambda g: torch.rand(b, c, h, w, generator=g)


def _sequences(b, c, n):
    return lambda g: torch.randn(b, c, n, generator=g)


def _parity(b, n):
    return lambda g: (torch.randint(0, 2, (b, n), generator=g) * 2 - 1).float()


# name -> (official arguments over BASE, input); together every official option value at least once.
GRID = {
    "resnet18-2 fourier random-pairing": (dict(
        backbone_type="resnet18-2", positional_embedding_type="learnable-fourier", heads=3,
        neuron_select_type="random-pairing", n_random_pairing_self=2), _images(2, 1, 8, 8)),
    "resnet50-1 multi-fourier random unet": (dict(
        backbone_type="resnet50-1", positional_embedding_type="multi-learnable-fourier", d_input=15, heads=3,
        neuron_select_type="random", synapse_depth=3, deep_nlms=False, do_layernorm_nlm=True),
        _images(2, 3, 7, 9)),
    "shallow-wide rotational first-last positions": (dict(
        backbone_type="shallow-wide", positional_embedding_type="custom-rotational", heads=1, d_model=19,
        neuron_select_type="first-last", synapse_depth=2, out_dims=12, prediction_reshaper=[3, 4]),
        _images(2, 3, 6, 6)),
    "parity rotational-1d deep unet": (dict(
        backbone_type="parity_backbone", positional_embedding_type="custom-rotational-1d", d_input=8, heads=4,
        synapse_depth=4, out_dims=22, prediction_reshaper=[11, 2], dropout_nlm=0.0, memory_length=3,
        iterations=6), _parity(3, 11)),
    "no backbone first-last layernorm batch 1": (dict(
        backbone_type="none", neuron_select_type="first-last", d_model=17, n_synch_out=9, n_synch_action=4,
        do_layernorm_nlm=True, heads=1, iterations=3), _images(1, 5, 3, 4)),
    "no backbone sequence random n_synch > d_model": (dict(
        backbone_type="none", neuron_select_type="random", d_model=7, n_synch_out=9, n_synch_action=8, heads=3,
        d_input=9, synapse_depth=2), _sequences(2, 4, 9)),
    "resnet18-3 linear nlm": (dict(  # stage 4 of the ResNets: test_every_resnet_has_the_official_layout
        backbone_type="resnet18-3", heads=2, deep_nlms=False, out_dims=3, n_synch_out=3),
        _images(2, 2, 8, 8)),
}
TOL = dict(rtol=1e-5, atol=1e-5)
pytestmark = pytest.mark.usefixtures("isolated_rng")


def _official_model(official, kwargs, x):
    """The official model with every weight moved off its initial value (decays into (0.1, 2)), lazy layers
    initialised and non-trivial BatchNorm statistics."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its neuron selection
        model = official.ctm.ContinuousThoughtMachine(**kwargs)
    model.eval()
    with torch.no_grad():
        model(x)
        for name, p in model.named_parameters():
            moved = torch.rand_like(p) * 1.9 + 0.1 if name.startswith("decay_params") else p + 0.1 * torch.randn_like(p)
            p.copy_(moved)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2)
    return model


def _pair(official, name, **changes):
    overrides, make_input = GRID[name]
    kwargs = {**BASE, **overrides, **changes}
    g = torch.Generator().manual_seed(0)
    x = make_input(g)
    torch.manual_seed(0)
    theirs = _official_model(official, kwargs, x)
    ours = ctm.from_official_state_dict(theirs.state_dict(), **kwargs)
    return theirs, ours, x


def _run(model, x, weights):
    """Outputs and gradients of a loss that reads every output."""
    x = x.clone().requires_grad_(x.is_floating_point() and x.dim() > 2)  # parity's +-1 are indices
    predictions, certainties, synch = tuple(model(x))[:3]
    loss = sum((w * t).sum() for w, t in zip(weights, (predictions, certainties, synch), strict=True))
    loss.backward()
    return (predictions, certainties, synch), x.grad


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(GRID))
def test_official_weights_compute_the_same_function(official, name, mode):
    theirs, ours, x = _pair(official, name)
    # "resnet18-2 fourier random-pairing" runs on the fast engine, the others on the readable path
    assert engine.applies(ours) == (name == "resnet18-2 fourier random-pairing")
    theirs.train(mode == "train")
    ours.train(mode == "train")
    c, B = ours.config, x.shape[0]
    shapes = [(B, c.out_dims, c.iterations), (B, 2, c.iterations), (B, c.synch_size_out)]
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(s, generator=g) for s in shapes]
    out_theirs, dx_theirs = _run(theirs, x, weights)
    out_ours, dx_ours = _run(ours, x, weights)
    for what, a, b in zip(("predictions", "certainties", "synchronisation"), out_ours, out_theirs, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, what=what: f"{what}: {m}")
    if dx_theirs is not None:  # relative to the gradient's scale (train-mode BatchNorm on 2 values amplifies)
        torch.testing.assert_close(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5 * float(dx_theirs.abs().max()))
    params = dict(ours.named_parameters())
    for n, p in theirs.named_parameters():
        scale = max(1.0, float(p.grad.abs().max()))
        torch.testing.assert_close(params[ctm_name(n)].grad, p.grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, n=n: f"gradient of {n}: {m}")
    if mode == "train":  # BatchNorm running statistics moved the same way
        buffers = dict(ours.named_buffers())
        for n, b in theirs.named_buffers():
            if n.endswith("running_mean") or n.endswith("running_var"):
                torch.testing.assert_close(buffers[ctm_name(n)], b, **TOL)


@pytest.mark.parametrize("name", ["parity rotational-1d deep unet", "resnet18-2 fourier random-pairing"])
def test_official_dropout_maps_and_is_off_in_eval_mode(official, name):
    theirs, ours, x = _pair(official, name, dropout=0.3, dropout_nlm=0.2)
    assert (ours.config.dropout, ours.config.nlm_dropout) == (0.3, 0.2)
    ours.eval()
    with torch.no_grad():
        for a, b in zip(tuple(ours(x))[:3], theirs(x), strict=True):
            torch.testing.assert_close(a, b, **TOL)
    ours.train()
    with torch.no_grad():  # in training mode the masks differ from tick to tick and run to run
        assert not torch.equal(ours(x).predictions, ours(x).predictions)


@pytest.mark.parametrize("name", list(GRID))
def test_official_tracking_is_the_same(official, name):
    theirs, ours, x = _pair(official, name)
    ours.eval()
    with torch.no_grad():
        (synch_out, synch_action), pre, post, attention = theirs(x, track=True)[2:]
        tracking = ours(x, track=True).tracking
    pairs = {"synchronisation_out": synch_out, "synchronisation_action": synch_action,
             "pre_activations": pre, "post_activations": post, "attention": attention.squeeze(3)}
    for field, expected in pairs.items():
        torch.testing.assert_close(getattr(tracking, field), torch.from_numpy(expected), **TOL,
                                   msg=lambda m, field=field: f"{field}: {m}")


@pytest.mark.parametrize("backbone", [b for b in BACKBONES if b.startswith("resnet")])
def test_every_resnet_has_the_official_layout(official, backbone):
    depth, stages = backbone[len("resnet"):].split("-")
    with torch.device("meta"):
        theirs = official.resnet.prepare_resnet_backbone(backbone)
        ours = TruncatedResNet(3, int(depth), int(stages))
    expected = {ctm_name(f"backbone.{k}"): tuple(v.shape) for k, v in theirs.state_dict().items()}
    expected.update({"backbone.rgb.weight": (3, 3, 1, 1), "backbone.rgb.bias": (3,)})
    assert {f"backbone.{k}": tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    features = ours(torch.empty(1, 3, 32, 32, device="meta"))
    assert features.shape[1] == ctm.CTMConfig(backbone=backbone).d_backbone


def test_official_arguments_ctm_does_not_support_are_named_in_one_line(official):
    state = _pair(official, "no backbone first-last layernorm batch 1")[0].state_dict()
    kwargs = {**BASE, **GRID["no backbone first-last layernorm batch 1"][0]}
    for bad, words in ((dict(heads=0), "heads=0"), (dict(temperature=2), "unknown ['temperature']"),
                       (dict(prediction_reshaper=[5, 3]), "prediction_reshaper")):
        with pytest.raises(ValueError, match=r"^[^\n]*$") as e:
            ctm.from_official_state_dict(state, **{**kwargs, **bad})
        assert words in str(e.value)
    with pytest.raises(ValueError, match="missing"):
        ctm.from_official_state_dict(state, **{k: v for k, v in kwargs.items() if k != "iterations"})


def test_the_default_config_is_the_tutorials_and_runs_on_the_engine():
    model = ctm.CTM(ctm.CTMConfig(iterations=2))
    assert ctm.CTMConfig().tutorial_options and engine.applies(model)
    assert not any(k.startswith(("synch_", "positional")) for k in model.state_dict())  # no new weights
    for change in (dict(backbone="resnet18-1"), dict(positional_embedding="learnable-fourier"),
                   dict(neuron_selection="random"), dict(neuron_selection="random-pairing", n_self_pairs=3),
                   dict(out_positions=2), dict(nlm_temperature=True)):
        assert engine.applies(ctm.CTM(ctm.CTMConfig(iterations=2, **change))), change
    for change in (dict(synapse_depth=2), dict(deep_nlms=False), dict(nlm_layernorm=True), dict(dropout=0.1),
                   dict(nlm_dropout=0.1)):
        assert not engine.applies(ctm.CTM(ctm.CTMConfig(iterations=2, **change))), change
    for change in (dict(dropout=0.1), dict(nlm_dropout=0.1)):  # dropout is the identity in eval mode
        assert engine.applies(ctm.CTM(ctm.CTMConfig(iterations=2, **change)).eval()), change


def test_a_config_json_without_the_new_fields_loads_as_the_tutorial():
    old = {k: v for k, v in ctm.CTMConfig(d_model=40).to_dict().items() if k in (
        "iterations", "d_model", "d_input", "memory_length", "heads", "n_synch_out", "n_synch_action",
        "memory_hidden_dims", "out_dims", "in_channels")}
    config = ctm.CTMConfig.from_dict(old)
    assert config.d_model == 40 and config.tutorial_options and config.backbone == "tutorial"


@pytest.mark.parametrize("change, field", [
    (dict(n_self_pairs=2), "n_self_pairs"),
    (dict(neuron_selection="random-pairing", n_self_pairs=16), "n_self_pairs"),
    (dict(backbone="none", positional_embedding="learnable-fourier"), "positional_embedding"),
    (dict(backbone="parity", positional_embedding="custom-rotational"), "positional_embedding"),
    (dict(positional_embedding="custom-rotational-1d"), "positional_embedding"),
    (dict(out_positions=3), "out_positions"),
    (dict(dropout=1.0), "dropout"),
    (dict(backbone="resnet18-5"), "backbone"),
])
def test_option_combinations_are_validated_naming_the_field(change, field):
    with pytest.raises(ValueError, match=rf"CTMConfig\.{field}\b"):
        ctm.CTMConfig(**change)


@pytest.mark.parametrize("change", [dict(neuron_selection="random-pairing", n_self_pairs=3),
                                    dict(backbone="parity", positional_embedding="custom-rotational-1d",
                                         out_dims=8, out_positions=4)])
def test_official_options_keep_batch_independence(change):
    """Random pairs are saved with the weights, and in eval mode a sample's answer ignores the batch."""
    torch.manual_seed(0)
    config = ctm.CTMConfig(iterations=3, d_model=20, d_input=8, memory_length=4, n_synch_out=5, n_synch_action=4,
                           memory_hidden_dims=2, **change)
    model = ctm.CTM(config).eval()
    x = (torch.randint(0, 2, (3, 7)) * 2 - 1).float() if config.backbone == "sign-embedding" else torch.rand(3, 1, 8, 8)
    twin = ctm.CTM(config).eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        full = model(x).predictions
        torch.testing.assert_close(twin(x).predictions, full)
        for i in range(3):
            torch.testing.assert_close(model(x[i:i + 1]).predictions, full[i:i + 1], **TOL)


def test_halting_with_several_output_positions_answers_per_position():
    torch.manual_seed(0)
    config = ctm.CTMConfig(iterations=4, d_model=20, d_input=8, memory_length=4, n_synch_out=5, n_synch_action=4,
                           memory_hidden_dims=2, backbone="parity", positional_embedding="custom-rotational-1d",
                           out_dims=12, out_positions=6)
    model = ctm.CTM(config).eval()
    x = (torch.randint(0, 2, (5, 6)) * 2 - 1).float()
    with torch.no_grad():
        out = model(x)
    logits = out.predictions.unflatten(1, (6, 2))  # (B, positions, classes, T)
    entropy = -(logits.log_softmax(2).exp() * logits.log_softmax(2)).sum(2) / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(out.certainties[:, 1], 1 - entropy.mean(1))  # certainty: mean over positions
    for tau, tick in ((2.0, 3), (0.0, 0)):
        thought = model.think(x, tau)
        assert torch.equal(thought.prediction, logits[..., tick].argmax(2)) and (thought.ticks == tick + 1).all()


@pytest.mark.parametrize("embedding", ["learnable-fourier", "multi-learnable-fourier", "custom-rotational",
                                       "custom-rotational-1d"])
def test_positional_embeddings_follow_the_models_precision(embedding):
    torch.manual_seed(0)
    one_d = embedding.endswith("1d")
    config = ctm.CTMConfig(iterations=2, d_model=12, d_input=8, memory_length=3, n_synch_out=4, n_synch_action=4,
                           memory_hidden_dims=2, positional_embedding=embedding,
                           backbone="parity" if one_d else "tutorial")
    model = ctm.CTM(config).eval()
    x = (torch.randint(0, 2, (2, 5)) * 2 - 1).float() if one_d else torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        single = model(x).predictions
        double = model.double()(x.double() if not one_d else x).predictions
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-5)
