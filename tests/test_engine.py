"""The fast engine (`ctm.nn.engine`) against the readable model (`fast_backward = False`), without the seed:
outputs, every gradient, the input gradient, BatchNorm statistics, tracking, adaptive computation; a float64
gradcheck of the hand-written backward; the private aten ops the engine relies on; the dispatch itself."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import ctm
from ctm.nn import engine

# Odd sizes; several heads with colour non-square input; fewer ticks than memory with batch 1; random pairs
# with self pairs; a ResNet with a positional embedding and random selection; a rotational embedding with
# two output positions and NLM temperatures.
CONFIGS = {
    "odd": (ctm.CTMConfig(iterations=5, d_model=23, d_input=12, memory_length=6, heads=3, n_synch_out=5,
                          n_synch_action=7, memory_hidden_dims=3, out_dims=4), 5, (13, 11)),
    "heads-colour": (ctm.CTMConfig(iterations=6, d_model=40, d_input=16, memory_length=4, heads=4, n_synch_out=9,
                                   n_synch_action=6, memory_hidden_dims=5, out_dims=7, in_channels=3), 4, (20, 12)),
    "short-batch1": (ctm.CTMConfig(iterations=3, d_model=18, d_input=8, memory_length=7, heads=2, n_synch_out=18,
                                   n_synch_action=4, memory_hidden_dims=2, out_dims=3), 1, (9, 16)),
    "random-pairing": (ctm.CTMConfig(iterations=4, d_model=21, d_input=12, memory_length=5, heads=3, n_synch_out=7,
                                     n_synch_action=6, memory_hidden_dims=3, out_dims=5,
                                     neuron_selection="random-pairing", n_self_pairs=2), 3, (10, 9)),
    "resnet-fourier-random": (ctm.CTMConfig(iterations=3, d_model=17, d_input=8, memory_length=4, heads=2,
                                            n_synch_out=4, n_synch_action=3, memory_hidden_dims=2, out_dims=4,
                                            in_channels=3, backbone="resnet18-1",
                                            positional_embedding="learnable-fourier", neuron_selection="random"),
                              2, (8, 8)),
    "rotational-positions-temperature": (ctm.CTMConfig(
        iterations=4, d_model=19, d_input=8, memory_length=3, heads=1, n_synch_out=5, n_synch_action=4,
        memory_hidden_dims=2, out_dims=6, out_positions=2, positional_embedding="custom-rotational",
        nlm_temperature=True), 2, (12, 12)),
    "s2d-fourier": (ctm.CTMConfig(iterations=3, d_model=20, d_input=8, memory_length=4, heads=2, n_synch_out=5,
                                  n_synch_action=4, memory_hidden_dims=3, out_dims=5, in_channels=2,
                                  backbone="tutorial-s2d", positional_embedding="learnable-fourier"), 3, (14, 10)),
}
TOL = dict(rtol=1e-5, atol=1e-5)


def _twins(name: str, seed: int = 0) -> tuple[ctm.CTM, ctm.CTM, torch.Tensor, torch.Tensor]:
    cfg, batch, hw = CONFIGS[name]
    torch.manual_seed(seed)
    fast = ctm.CTM(cfg)
    with torch.no_grad():  # decays away from 0 and the clamp bounds; non-trivial BatchNorm statistics
        fast.decay_params_out.uniform_(0.1, 2)
        fast.decay_params_action.uniform_(0.1, 2)
        for name, p in fast.named_parameters():
            if name.endswith("temperature"):
                p.uniform_(0.5, 2)
        for bn in (m for m in fast.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2)
    assert engine.applies(fast)
    readable = copy.deepcopy(fast)
    readable.fast_backward = False
    x = torch.rand(batch, cfg.in_channels, *hw)
    y = torch.randint(0, cfg.out_dims, (batch,))
    return fast, readable, x, y


def _run(model: ctm.CTM, x: torch.Tensor, y: torch.Tensor, track: bool = False):
    x = x.clone().requires_grad_(True)
    out = model(x, track=track)
    loss, _ = ctm.certainty_loss(out.predictions, out.certainties, y)
    # every output reaches the loss: all ticks' logits, certainties and the final synchronisation
    (loss + out.predictions.mean() + out.certainties[:, 1].mean() + out.synchronisation_out.pow(2).mean()).backward()
    return out, x.grad


def assert_same_runs(model: ctm.CTM, run, other: ctm.CTM, other_run) -> None:
    """Two `_run`s agree: every output, the input gradient, every parameter's gradient."""
    (out, dx), (out_other, dx_other) = run, other_run
    for a, b in zip(out, out_other, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(dx, dx_other, **TOL)
    theirs = dict(other.named_parameters())
    for n, p in model.named_parameters():
        assert p.grad is not None and theirs[n].grad is not None, n
        torch.testing.assert_close(p.grad, theirs[n].grad, **TOL, msg=lambda m, n=n: f"grad of {n}: {m}")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_matches_readable_path(name, mode):
    fast, readable, x, y = _twins(name)
    fast.train(mode == "train")
    readable.train(mode == "train")
    assert_same_runs(fast, _run(fast, x, y), readable, _run(readable, x, y))
    for (n, a), (_, b) in zip(fast.named_buffers(), readable.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=n: f"buffer {n}: {m}")


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_tracking_matches_readable_path(name, grad):
    fast, readable, x, _ = _twins(name, seed=1)
    fast.eval()
    readable.eval()
    with torch.set_grad_enabled(grad):
        a, b = fast(x, track=True).tracking, readable(x, track=True).tracking
    assert a.token_grid == b.token_grid
    for field in a._fields[:-1]:
        ours, theirs = getattr(a, field), getattr(b, field)
        assert ours.shape == theirs.shape and not ours.requires_grad, field
        torch.testing.assert_close(ours, theirs, **TOL, msg=lambda m, f=field: f"{f}: {m}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_think_is_the_same_on_both_engines(name):
    fast, readable, x, _ = _twins(name, seed=2)
    x = torch.rand(24, *x.shape[1:])  # enough rows for several compactions
    fast.eval()
    readable.eval()
    for tau in (0.0, 0.2, 0.3, 0.5, 2.0):
        a, b = fast.think(x, tau), readable.think(x, tau)
        assert torch.equal(a.ticks, b.ticks) and torch.equal(a.prediction, b.prediction), tau
        torch.testing.assert_close(a.logits, b.logits, **TOL)
        torch.testing.assert_close(a.certainty, b.certainty, **TOL)


def _refuse_the_engine(monkeypatch) -> list:
    """Make the engine's forward and stepper fail; returns a list that grows by one per readable model.tick."""

    def refuse(*_a, **_k):
        raise AssertionError("the fast engine ran")

    monkeypatch.setattr(engine, "forward", refuse)
    monkeypatch.setattr(engine, "Stepper", refuse)
    calls = []
    plain_tick = ctm.CTM.tick
    monkeypatch.setattr(ctm.CTM, "tick", lambda self, *a: calls.append(1) or plain_tick(self, *a))
    return calls


def test_readable_path_really_runs_when_fast_backward_is_off(monkeypatch):
    """fast_backward = False: neither the engine's forward nor its stepper runs; model.tick does, T times."""
    fast, readable, x, y = _twins("odd")
    calls = _refuse_the_engine(monkeypatch)
    _run(readable, x, y)
    assert len(calls) == readable.config.iterations
    readable.eval().think(x, 0.5)
    with pytest.raises(AssertionError, match="fast engine ran"):
        fast(x)
    with pytest.raises(AssertionError, match="fast engine ran"):
        fast.eval().think(x, 0.5)


# What the engine does not compute: each runs the readable path (dropout only in training).
NOT_ON_THE_ENGINE = [dict(synapse_depth=2), dict(deep_nlms=False), dict(nlm_layernorm=True),
                     dict(dropout=0.1), dict(nlm_dropout=0.1)]


@pytest.mark.parametrize("change", NOT_ON_THE_ENGINE, ids=lambda c: "-".join(map(str, c.items())))
def test_options_the_engine_does_not_cover_run_the_readable_path(change, monkeypatch):
    cfg = CONFIGS["odd"][0].replace(**change)
    torch.manual_seed(0)
    model = ctm.CTM(cfg).train()
    assert not engine.applies(model)
    calls = _refuse_the_engine(monkeypatch)
    x = torch.rand(2, 1, 13, 11)
    _run(model, x, torch.randint(0, cfg.out_dims, (2,)))
    assert len(calls) == cfg.iterations
    if not any("dropout" in k for k in change):  # in eval mode dropout is the identity and the engine runs
        model.eval().think(x, 0.5)  # halting takes the readable steps too
        assert len(calls) > cfg.iterations


def test_dropout_runs_on_the_engine_in_eval_mode():
    """Dropout is the identity in eval mode, so the engine runs there and agrees with the readable path."""
    cfg = CONFIGS["odd"][0].replace(dropout=0.2, nlm_dropout=0.1)
    torch.manual_seed(0)
    fast = ctm.CTM(cfg).eval()
    readable = copy.deepcopy(fast)
    readable.fast_backward = False
    assert engine.applies(fast) and not engine.applies(fast.train()) and not engine.applies(readable.eval())
    fast.eval()
    x = torch.rand(3, 1, 13, 11)
    with torch.no_grad():
        for a, b in zip(fast(x), readable(x), strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_double_backward_and_forward_mode_ad_on_the_readable_path():
    _, readable, x, _ = _twins("short-batch1")
    x = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(readable(x).predictions.pow(2).sum(), x, create_graph=True)
    gx.sum().backward()  # a second backward through the first one's graph
    assert readable.q_proj.weight.grad is not None and torch.isfinite(readable.q_proj.weight.grad).all()
    import torch.autograd.forward_ad as fwAD

    with torch.no_grad(), fwAD.dual_level():
        tangent = torch.randn_like(x)
        out = readable(fwAD.make_dual(x.detach(), tangent)).predictions
        jvp = fwAD.unpack_dual(out).tangent
    eps = 1e-3
    with torch.no_grad():
        numeric = (readable(x.detach() + eps * tangent).predictions - readable(x.detach() - eps * tangent)
                   .predictions) / (2 * eps)
    torch.testing.assert_close(jvp, numeric, rtol=1e-2, atol=1e-3)


def test_hand_written_backward_gradcheck_float64():
    """torch.autograd.gradcheck of the tick loop's backward against finite differences, every input."""
    cfg = ctm.CTMConfig(iterations=3, d_model=6, d_input=4, memory_length=3, heads=2, n_synch_out=3,
                        n_synch_action=3, memory_hidden_dims=2, out_dims=3)
    torch.manual_seed(0)
    model = ctm.CTM(cfg).double()
    with torch.no_grad():
        model.decay_params_action.uniform_(0.2, 1)
    tokens = torch.randn(2, 5, cfg.d_input, dtype=torch.float64)
    rate_action, _ = model.decay_rates()
    p, _ = engine.fold(model, tokens, rate_action, cfg.iterations)
    na = cfg.n_synch_action
    leaves = [t.detach().clone().requires_grad_(True) for t in p]

    def ticks(*tensors):
        # The engine's action accumulators are symmetric by construction (fold): keep A and r so.
        q = engine.TickParams(*tensors)
        A = q.A.view(cfg.iterations, -1, na, na)
        A = (0.5 * (A + A.transpose(-1, -2))).reshape(q.A.shape)
        r = q.r.view(na, na)
        q = q._replace(A=A, r=(0.5 * (r + r.t())).reshape(-1))
        return engine._TickFunction.apply(model.synapses[2].eps, cfg.heads, False, *q)

    assert torch.autograd.gradcheck(ticks, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_hand_written_backward_gradcheck_float64_random_pairing():
    """The same gradcheck with one accumulator per pair (`engine.action_pairs`), self pairs among them."""
    cfg = ctm.CTMConfig(iterations=3, d_model=6, d_input=4, memory_length=3, heads=2, n_synch_out=3,
                        n_synch_action=4, memory_hidden_dims=2, out_dims=3, neuron_selection="random-pairing",
                        n_self_pairs=1)
    torch.manual_seed(0)
    model = ctm.CTM(cfg).double()
    with torch.no_grad():
        model.decay_params_action.uniform_(0.2, 1)
    pairs = engine.action_pairs(model)
    assert pairs is not None and pairs.shape == (2, 4) and pairs[0, 0] == pairs[1, 0]
    tokens = torch.randn(2, 5, cfg.d_input, dtype=torch.float64)
    rate_action, _ = model.decay_rates()
    p, _ = engine.fold(model, tokens, rate_action, cfg.iterations)
    assert p.A.shape[-1] == p.r.shape[0] == 4
    leaves = [t.detach().clone().requires_grad_(True) for t in p]

    def ticks(*tensors):
        return engine._TickFunction.apply(model.synapses[2].eps, cfg.heads, False, *tensors, pairs)

    assert torch.autograd.gradcheck(ticks, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_private_aten_op_computes_what_the_engine_assumes():
    """The engine calls aten.glu.out directly: if a torch upgrade changes its signature or meaning, this fails
    (then replace it with the public F.glu and a copy: see ctm.nn.engine._glu_into)."""
    torch.manual_seed(0)
    x = torch.randn(5, 8, 3)
    out = torch.empty(5, 4, 3)
    torch.ops.aten.glu.out(x, 1, out=out)
    torch.testing.assert_close(out, F.glu(x, 1), rtol=0, atol=0)


def test_layer_norm_backward_formula():
    g = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    gamma, beta = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    dy = torch.randn(6, 10, dtype=torch.float64)
    (expected,) = torch.autograd.grad(F.layer_norm(g, (10,), gamma, beta, 1e-5), g, dy)
    _, mean, rstd = torch.native_layer_norm(g.detach(), (10,), gamma, beta, 1e-5)
    torch.testing.assert_close(engine._layer_norm_backward(dy, g.detach(), mean, rstd, gamma), expected)


@pytest.mark.parametrize("backbone, hw, grid", [("tutorial", (15, 17), (3, 4)), ("tutorial-s2d", (16, 22), (4, 5))])
def test_engine_backbone_matches_the_plain_backbone(backbone, hw, grid):
    """The engine's inference backbone (BatchNorm folded, chunked, pooling by maxima) against model.backbone."""
    cfg = ctm.CTMConfig(iterations=2, d_input=8, backbone=backbone)
    model = ctm.CTM(cfg).eval()
    with torch.no_grad():
        for bn in engine._batch_norms(model.backbone):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(engine.INFERENCE_CHUNK + 5, 1, *hw)  # more than one chunk, odd sizes
    with torch.no_grad():
        fast, grid_fast = engine.features(model, x)
        plain, grid_plain = model.compute_features(x)
    assert grid_fast == grid_plain == grid
    torch.testing.assert_close(fast, plain, **TOL)


def test_s2d_backbone_refuses_odd_images():
    model = ctm.CTM(ctm.CTMConfig(iterations=2, d_input=8, backbone="tutorial-s2d"))
    with pytest.raises(ValueError, match="even height and width, got 15x16"):
        model(torch.rand(2, 1, 15, 16))
