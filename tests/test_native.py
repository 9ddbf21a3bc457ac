"""The C++ tick loops (`ctm.nn.native`, ctm/csrc/ticks.cpp) against the engine's Python loops (the same computation;
three steps summed in another order, so equal to rounding), a float64 gradcheck of the C++ backward, and the
fallback when the library cannot be built."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from test_engine import TOL, _run, _twins, assert_same_runs

import ctm
from ctm.nn import engine, native


def _record_calls(monkeypatch) -> list[str]:
    """Wrap the library's ops so that each call is recorded (by name) in the returned list."""
    ops, calls = native.ops(), []

    class Recorded:
        def __getattr__(self, op):
            return lambda *a: calls.append(op) or getattr(ops, op)(*a)

    monkeypatch.setitem(native._state, "ops", Recorded())
    return calls


def _python_loops(monkeypatch):
    monkeypatch.setenv("CTM_NATIVE", "0")
    assert native.ops() is None


@pytest.mark.parametrize("name", ["odd", "heads-colour", "short-batch1", "random-pairing",
                                  "rotational-positions-temperature"])
def test_native_loops_match_the_python_loops(name, monkeypatch):
    fast, _, x, y = _twins(name)
    assert native.ops() is not None, native.status()  # it builds here: a failure to build is a failure
    calls = _record_calls(monkeypatch)
    python = copy.deepcopy(fast)
    fast.train()
    python.train()
    run_c = _run(fast, x, y)
    assert calls == ["tick_loop_train", "tick_loop_backward"]
    monkeypatch.undo()
    with monkeypatch.context() as m:
        _python_loops(m)
        run_p = _run(python, x, y)
    assert_same_runs(fast, run_c, python, run_p)


@pytest.mark.parametrize("selection", ["first-last", "random-pairing"])
def test_native_backward_gradcheck_float64(selection):
    """gradcheck of the tick loop with both loops in C++ (float64): the fused steps' derivatives too."""
    cfg = ctm.CTMConfig(iterations=3, d_model=6, d_input=4, memory_length=3, heads=2, n_synch_out=3,
                        n_synch_action=4, memory_hidden_dims=2, out_dims=3, neuron_selection=selection,
                        n_self_pairs=1 if selection == "random-pairing" else 0)
    assert native.ops() is not None, native.status()
    torch.manual_seed(0)
    model = ctm.CTM(cfg).double()
    with torch.no_grad():
        model.decay_params_action.uniform_(0.2, 1)
    pairs = engine.action_pairs(model)
    tokens = torch.randn(2, 5, cfg.d_input, dtype=torch.float64)
    p, _ = engine.fold(model, tokens, model.decay_rates()[0], cfg.iterations)
    leaves = [t.detach().clone().requires_grad_(True) for t in p]
    na = cfg.n_synch_action

    def ticks(*tensors):
        q = engine.TickParams(*tensors)
        if pairs is None:  # first-last accumulators are symmetric by construction (fold): keep A and r so
            A = q.A.view(cfg.iterations, -1, na, na)
            r = q.r.view(na, na)
            q = q._replace(A=(0.5 * (A + A.transpose(-1, -2))).reshape(q.A.shape), r=(0.5 * (r + r.t())).reshape(-1))
        return engine._TickFunction.apply(model.synapses[2].eps, cfg.heads, False, *q,
                                          *(() if pairs is None else (pairs,)))

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


def test_a_built_library_loads_without_the_builder():
    """Once built, a new process loads the library directly (milliseconds), without torch's builder."""
    assert native.ops() is not None and native.is_built(), native.status()
    code = ("import sys; from ctm import native; ops = native.ops(); "
            "print(ops is not None, 'torch.utils.cpp_extension' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["True", "False"], out


@pytest.mark.parametrize("name", ["odd", "heads-colour", "random-pairing", "s2d-fourier"])
def test_native_inference_loop_matches_the_python_loop(name, monkeypatch):
    """Inference (no gradient): the C++ loop with one reused slot per buffer against the Python loop."""
    fast, _, x, _ = _twins(name)
    fast.eval()
    assert native.ops() is not None, native.status()
    with torch.no_grad():
        with monkeypatch.context() as m:
            calls = _record_calls(m)
            ours = fast(x)
        assert calls == ["tick_loop_train"]
        with monkeypatch.context() as m:
            _python_loops(m)
            theirs = fast(x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOL)
