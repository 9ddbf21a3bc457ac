"""Shapes, gradients, input checks and configuration of the CTM."""

from __future__ import annotations

import json

import pytest
import torch

import ctm
from ctm.nn.model import MAX_DECAY

SMALL = ctm.CTMConfig(iterations=4, d_model=32, d_input=16, memory_length=5, heads=2, n_synch_out=8,
                      n_synch_action=6, memory_hidden_dims=4, out_dims=5)


def test_output_shapes_and_unpacking():
    model = ctm.CTM(SMALL)
    out = model(torch.rand(3, 1, 28, 28))
    predictions, certainties, synch = out  # the seed's 3-tuple unpacking
    assert predictions.shape == (3, 5, 4)
    assert certainties.shape == (3, 2, 4)
    assert synch.shape == (3, SMALL.synch_size_out)
    assert out.tracking is None
    torch.testing.assert_close(certainties.sum(1), torch.ones(3, 4))
    assert ((certainties >= 0) & (certainties <= 1 + 1e-6)).all()


@pytest.mark.parametrize("hw", [(28, 28), (16, 40), (9, 5)])
def test_track_shapes_and_same_predictions(hw):
    cfg = SMALL.replace(in_channels=3)
    model = ctm.CTM(cfg).eval()
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        plain = model(x)
        tracked = model(x, track=True)
    torch.testing.assert_close(plain.predictions, tracked.predictions, rtol=0, atol=0)
    t = tracked.tracking
    grid = (hw[0] // 4, hw[1] // 4)
    assert t.token_grid == grid
    assert t.pre_activations.shape == (4, 2, 32)
    assert t.post_activations.shape == (4, 2, 32)
    assert t.attention.shape == (4, 2, 2, grid[0] * grid[1])
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(4, 2, 2))
    assert t.synchronisation_out.shape == (4, 2, cfg.synch_size_out)
    assert t.synchronisation_action.shape == (4, 2, cfg.synch_size_action)
    assert not t.pre_activations.requires_grad


def test_batch_of_n_equals_n_batches_of_one():
    model = ctm.CTM(SMALL).eval()
    x = torch.rand(4, 1, 20, 20)
    with torch.no_grad():
        whole = model(x).predictions
        single = torch.cat([model(x[i:i + 1]).predictions for i in range(4)])
    torch.testing.assert_close(whole, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(28, 28), (13, 10)])
def test_inference_backbone_equals_the_autograd_path(hw):
    # In inference the engine's backbone folds BatchNorm and pools by elementwise maxima; with autograd on
    # it uses max_pool2d. BatchNorm statistics are set so that it does something.
    model = ctm.CTM(SMALL).eval()
    with torch.no_grad():
        for bn in (model.backbone[1], model.backbone[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(150, 1, *hw)
    with torch.no_grad():
        fast, grid = model.compute_features(x)
        out = model(x).predictions
    slow, grid_slow = model.compute_features(x)
    assert grid == grid_slow == (hw[0] // 4, hw[1] // 4)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, model(x).predictions.detach(), rtol=1e-5, atol=1e-5)


def test_inference_backbone_keeps_batch_statistics_whole():
    # A BatchNorm without running statistics normalises with the statistics of the whole batch even in
    # eval mode: chunking the batch would change the answer, so it must not happen.
    model = ctm.CTM(SMALL).eval()
    bn = model.backbone[1]
    bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    x = torch.rand(150, 1, 28, 28)
    with torch.no_grad():
        fast, _ = model.compute_features(x)
    slow, _ = model.compute_features(x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    model = ctm.CTM(SMALL)
    with torch.no_grad():  # away from the clamp bounds, where a gradient could legitimately be zero
        model.decay_params_out.uniform_(0.5, 2)
        model.decay_params_action.uniform_(0.5, 2)
    out = model(torch.rand(4, 1, 28, 28))
    loss, _ = ctm.certainty_loss(out.predictions, out.certainties, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_decay_params_stay_clamped_under_large_steps(direction):
    model = ctm.CTM(SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=50.0)
    model.attach_decay_clamp(opt)
    for _ in range(3):
        out = model(torch.rand(2, 1, 12, 12))
        # Push the decay rates hard in one direction through the real forward.
        loss = direction * (model.decay_params_out.sum() + model.decay_params_action.sum()) + out.predictions.sum() * 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        for p in (model.decay_params_out, model.decay_params_action):
            assert p.min() >= 0 and p.max() <= MAX_DECAY
    bound = 0.0 if direction > 0 else MAX_DECAY
    assert torch.all(model.decay_params_out == bound)


def test_forward_does_not_write_parameters():
    model = ctm.CTM(SMALL)
    with torch.no_grad():
        model.decay_params_out.fill_(-3.0)
    model(torch.rand(1, 1, 8, 8))
    assert torch.all(model.decay_params_out == -3.0)


def test_forward_clamps_rates():
    model = ctm.CTM(SMALL).eval()
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        model.decay_params_out.fill_(40.0)
        model.decay_params_action.fill_(-7.0)
        high = model(x).predictions
        model.decay_params_out.fill_(MAX_DECAY)
        model.decay_params_action.fill_(0.0)
        clamped = model(x).predictions
    torch.testing.assert_close(high, clamped, rtol=0, atol=0)


def test_repr_shows_parameter_count():
    assert "parameters=99,658" in repr(ctm.CTM(ctm.CTMConfig()))


def test_config_defaults_are_the_seeds():
    c = ctm.CTMConfig()
    assert (c.iterations, c.d_model, c.d_input, c.memory_length, c.heads, c.n_synch_out, c.n_synch_action,
            c.memory_hidden_dims, c.out_dims, c.in_channels) == (30, 128, 32, 15, 1, 16, 16, 8, 10, 1)


def test_config_round_trip():
    assert ctm.CTMConfig.from_dict(SMALL.to_dict()) == SMALL
    assert ctm.CTMConfig.from_json(SMALL.to_json()) == SMALL
    assert json.loads(SMALL.to_json())["heads"] == 2


@pytest.mark.parametrize("changes, message", [
    (dict(d_model=0), "CTMConfig.d_model must be a positive integer, got 0"),
    (dict(iterations=-2), "CTMConfig.iterations must be a positive integer"),
    (dict(memory_length=2.5), "CTMConfig.memory_length must be an integer, got 2.5"),
    (dict(heads=True), "CTMConfig.heads must be an integer"),
    (dict(n_synch_out=200), r"n_synch_out \(200\) must not exceed d_model \(128\)"),
    (dict(n_synch_action=129), r"n_synch_action \(129\) must not exceed d_model"),
    (dict(heads=5), r"d_input \(32\) must be divisible by heads \(5\); try heads in \[1, 2, 4, 8, 16, 32\]"),
    (dict(out_dims=1), "out_dims must be at least 2"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        ctm.CTMConfig(**changes)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown CTMConfig field\(s\) \['ticks'\]"):
        ctm.CTMConfig.from_dict({"ticks": 3})


@pytest.mark.parametrize("x, message", [
    (torch.rand(1, 28, 28), r"expected input of shape \(B, 1, H, W\), got shape \(1, 28, 28\) \(add a batch"),
    (torch.rand(2, 3, 28, 28), r"expected 1 input channel\(s\) \(CTMConfig.in_channels\), got 3"),
    (torch.rand(2, 1, 3, 28), "images must be at least 4x4"),
    (torch.rand(0, 1, 28, 28), "at least one image"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), r"floating-point .* x.float\(\) / 255"),
    (torch.rand(2, 1, 28, 28, dtype=torch.float64), r"expected torch.float32 inputs .* got torch.float64; use x.to"),
    (torch.rand(2, 1, 28, 28).half(), r"expected torch.float32 inputs .* got torch.float16"),
    (torch.rand(2, 1, 28, 28).bfloat16(), r"expected torch.float32 inputs .* got torch.bfloat16"),
])
def test_wrong_input_errors(x, message):
    with pytest.raises(ValueError, match=message):
        ctm.CTM(SMALL)(x)


def test_a_double_model_takes_double_input():
    model = ctm.CTM(SMALL).double()
    assert model(torch.rand(2, 1, 28, 28, dtype=torch.float64)).predictions.dtype == torch.float64


def test_non_tensor_input():
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        ctm.CTM(SMALL)([[0.0]])


def test_accuracy_and_loss_basics():
    preds = torch.zeros(2, 3, 4)
    preds[0, 1, :] = 5.0  # sample 0 says 1 at every tick
    preds[1, 2, 3] = 5.0  # sample 1 says 2 only at the last tick
    targets = torch.tensor([1, 2])
    assert ctm.accuracy(preds, targets, 3) == 1.0
    assert ctm.accuracy(preds, targets, 0) == 0.5
    assert ctm.accuracy(preds, targets, torch.tensor([0, 3])) == 1.0
    certs = torch.stack([torch.stack((ctm.normalised_entropy(preds[:, :, t]),
                                      1 - ctm.normalised_entropy(preds[:, :, t])), -1) for t in range(4)], -1)
    loss, tick = ctm.certainty_loss(preds, certs, targets)
    assert tick.tolist() == [0, 3]
    assert loss.item() > 0
    with pytest.raises(ValueError, match="expected predictions"):
        ctm.certainty_loss(preds[0], certs, targets)
