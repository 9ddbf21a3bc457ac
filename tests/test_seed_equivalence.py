"""ctm computes the seed tutorial's function: same predictions, certainties, loss and gradients."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

import ctm
from ctm.interop.tutorial import _RENAMES

TOL = dict(rtol=1e-5, atol=1e-5)

CONFIGS = {
    "seed-defaults": dict(cfg=ctm.CTMConfig(iterations=12), batch=6, hw=(28, 28)),
    "small-3heads-colour-nonsquare": dict(
        cfg=ctm.CTMConfig(iterations=7, d_model=48, d_input=24, memory_length=5, heads=3, n_synch_out=9,
                          n_synch_action=11, memory_hidden_dims=4, out_dims=7, in_channels=3),
        batch=5, hw=(20, 36)),
    "4heads-full-synch-batch1-odd": dict(
        cfg=ctm.CTMConfig(iterations=5, d_model=20, d_input=16, memory_length=3, heads=4, n_synch_out=20,
                          n_synch_action=20, memory_hidden_dims=2, out_dims=3, in_channels=2),
        batch=1, hw=(13, 10)),
}


def make_seed_model(seed, cfg: ctm.CTMConfig, hw, gen):
    """A seed-tutorial model with its lazy layers built and every tensor randomised."""
    with contextlib.redirect_stdout(io.StringIO()):  # the seed prints its synch sizes
        model = seed.ContinuousThoughtMachine(
            iterations=cfg.iterations, d_model=cfg.d_model, d_input=cfg.d_input,
            memory_length=cfg.memory_length, heads=cfg.heads, n_synch_out=cfg.n_synch_out,
            n_synch_action=cfg.n_synch_action, out_dims=cfg.out_dims, memory_hidden_dims=cfg.memory_hidden_dims)
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, cfg.in_channels, *hw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("decay_params"):
                # Some outside [0, 15], to check that both clamp the same way.
                p.copy_(torch.rand(p.shape, generator=gen) * 19 - 2)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model


def ours_name(seed_name: str) -> str:
    return _RENAMES.get(seed_name, seed_name)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_seed(seed, name, mode):
    spec = CONFIGS[name]
    cfg, hw = spec["cfg"], spec["hw"]
    gen = torch.Generator().manual_seed(0)
    reference = make_seed_model(seed, cfg, hw, gen)
    model = ctm.from_seed_state_dict(reference.state_dict(), iterations=cfg.iterations, heads=cfg.heads)
    assert model.config == cfg
    # Train-mode BatchNorm normalises with batch statistics, which need more than one value per channel.
    x = torch.rand(spec["batch"], cfg.in_channels, *hw, generator=gen)
    y = torch.randint(0, cfg.out_dims, (spec["batch"],), generator=gen)
    reference.train(mode == "train")
    model.train(mode == "train")

    ref_pred, ref_cert, ref_synch = reference(x)
    out = model(x)
    torch.testing.assert_close(out.predictions, ref_pred, **TOL)
    torch.testing.assert_close(out.certainties, ref_cert, **TOL)
    torch.testing.assert_close(out.synchronisation_out, ref_synch, **TOL)

    for use_most_certain in (True, False):
        ref_loss, ref_tick = seed.get_loss(ref_pred, ref_cert, y, use_most_certain=use_most_certain)
        loss, tick = ctm.certainty_loss(out.predictions, out.certainties, y, use_most_certain=use_most_certain)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        assert torch.equal(tick, ref_tick % cfg.iterations)
        assert ctm.accuracy(out.predictions, y, tick) == pytest.approx(
            seed.calculate_accuracy(ref_pred, y, ref_tick))

    ref_loss, _ = seed.get_loss(ref_pred, ref_cert, y)
    loss, _ = ctm.certainty_loss(out.predictions, out.certainties, y)
    ref_loss.backward()
    loss.backward()
    ours = dict(model.named_parameters())
    compared = 0
    for seed_name, p in reference.named_parameters():
        q = ours[ours_name(seed_name)]
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=lambda m, n=seed_name: f"grad of {n}: {m}")
        compared += 1
    assert compared == len(ours)
    if mode == "train":  # BatchNorm running statistics moved the same way
        ref_buffers = dict(reference.named_buffers())
        for name, b in model.named_buffers():
            if "running" in name:
                torch.testing.assert_close(b, ref_buffers[name], **TOL)


def test_track_matches_seed(seed):
    cfg = ctm.CTMConfig(iterations=6, heads=2, d_input=16, in_channels=3)
    gen = torch.Generator().manual_seed(1)
    reference = make_seed_model(seed, cfg, (12, 20), gen)
    model = ctm.from_seed_state_dict(reference.state_dict(), iterations=6, heads=2).eval()
    x = torch.rand(4, 3, 12, 20, generator=gen)
    with torch.no_grad():
        _, _, (ref_so, ref_sa), ref_pre, ref_post, ref_attn = reference(x, track=True)
        t = model(x, track=True).tracking
    assert t.token_grid == (3, 5)
    for ours, theirs in ((t.pre_activations, ref_pre), (t.post_activations, ref_post),
                         (t.attention, ref_attn.squeeze(3)), (t.synchronisation_out, ref_so),
                         (t.synchronisation_action, ref_sa)):
        torch.testing.assert_close(ours, torch.from_numpy(theirs), **TOL)


def test_default_parameter_count_matches_seed(seed):
    gen = torch.Generator().manual_seed(0)
    reference = make_seed_model(seed, ctm.CTMConfig(), (28, 28), gen)
    assert sum(p.numel() for p in reference.parameters()) == 99_658
    assert ctm.CTM(ctm.CTMConfig()).num_parameters() == 99_658


def test_seed_state_dict_errors(seed):
    gen = torch.Generator().manual_seed(0)
    sd = make_seed_model(seed, ctm.CTMConfig(iterations=3), (28, 28), gen).state_dict()
    with pytest.raises(ValueError, match="missing"):
        ctm.from_seed_state_dict({k: v for k, v in sd.items() if k != "start_trace"}, iterations=3, heads=1)
    with pytest.raises(ValueError, match="unexpected keys.*extra"):
        ctm.from_seed_state_dict({**sd, "extra.weight": torch.zeros(1)}, iterations=3, heads=1)
    bad = dict(sd)
    bad["synapses.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="synapses.0.weight has shape"):
        ctm.from_seed_state_dict(bad, iterations=3, heads=1)
    bad = dict(sd)
    bad["decay_params_out"] = torch.zeros(7)
    with pytest.raises(ValueError, match="not n\\(n\\+1\\)/2"):
        ctm.from_seed_state_dict(bad, iterations=3, heads=1)
    with pytest.raises(ValueError, match="divisible by heads"):
        ctm.from_seed_state_dict(sd, iterations=3, heads=5)
