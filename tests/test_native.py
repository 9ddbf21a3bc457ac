"""The C++ tick loops (`ctm.native`, ctm/csrc/ticks.cpp) against the engine's Python loops: the same ATen calls
in the same order, so the same outputs and gradients; and the fallback when the library cannot be built."""

from __future__ import annotations

import copy

import pytest
import torch
from test_engine import _run, _twins

import ctm
from ctm import engine, native


def _python_loops(monkeypatch):
    monkeypatch.setenv("CTM_NATIVE", "0")
    assert native.ops() is None


@pytest.mark.parametrize("name", ["odd", "heads-colour", "short-batch1", "random-pairing",
                                  "rotational-positions-temperature"])
def test_native_loops_match_the_python_loops(name, monkeypatch):
    fast, _, x, y = _twins(name)
    assert native.ops() is not None, native.status()  # it builds here: a failure to build is a failure
    calls = []

    ops = native.ops()

    class Recorded:  # the library's ops, each call recorded
        def __getattr__(self, op):
            return lambda *a: calls.append(op) or getattr(ops, op)(*a)

    monkeypatch.setitem(native._state, "ops", Recorded())
    python = copy.deepcopy(fast)
    fast.train()
    python.train()
    out_c, dx_c = _run(fast, x, y)
    assert calls == ["tick_loop_train", "tick_loop_backward"]
    monkeypatch.undo()
    with monkeypatch.context() as m:
        _python_loops(m)
        out_p, dx_p = _run(python, x, y)
    exact = dict(rtol=0, atol=0)
    for a, b in zip(out_c, out_p, strict=True):
        torch.testing.assert_close(a, b, **exact)
    torch.testing.assert_close(dx_c, dx_p, **exact)
    theirs = dict(python.named_parameters())
    for n, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, theirs[n].grad, **exact, msg=lambda msg, n=n: f"grad of {n}: {msg}")


def test_native_backward_gradcheck_float64():
    """gradcheck of the tick loop with both loops in C++ (float64), one accumulator per pair."""
    cfg = ctm.CTMConfig(iterations=3, d_model=6, d_input=4, memory_length=3, heads=2, n_synch_out=3,
                        n_synch_action=4, memory_hidden_dims=2, out_dims=3, neuron_selection="random-pairing",
                        n_self_pairs=1)
    assert native.ops() is not None, native.status()
    torch.manual_seed(0)
    model = ctm.CTM(cfg).double()
    with torch.no_grad():
        model.decay_params_action.uniform_(0.2, 1)
    pairs = engine.action_pairs(model)
    tokens = torch.randn(2, 5, cfg.d_input, dtype=torch.float64)
    p, _ = engine.fold(model, tokens, model.decay_rates()[0], cfg.iterations)
    leaves = [t.detach().clone().requires_grad_(True) for t in p]

    def ticks(*tensors):
        return engine._TickFunction.apply(model.synapses[2].eps, cfg.heads, False, *tensors, pairs)

    assert torch.autograd.gradcheck(ticks, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_a_library_that_cannot_be_built_warns_once_and_the_python_loops_run(tmp_path, monkeypatch):
    broken = tmp_path / "ticks.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setenv("CTM_NATIVE_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(native, "_state", {"tried": False, "ops": None, "error": None})
    fast, readable, x, y = _twins("odd")
    fast.train()
    readable.train()
    with pytest.warns(RuntimeWarning, match="C\\+\\+ tick loop could not be built"):
        out, _ = _run(fast, x, y)
    assert "did not build" in native.status()
    out_r, _ = _run(readable, x, y)
    torch.testing.assert_close(out.predictions, out_r.predictions, rtol=1e-5, atol=1e-5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        _run(fast, x, y)


def test_build_directory_names_source_torch_and_python(monkeypatch, tmp_path):
    monkeypatch.setenv("CTM_NATIVE_DIR", str(tmp_path))
    folder = native.build_directory()
    assert folder.parent == tmp_path and "torch" in folder.name and "py3" in folder.name
