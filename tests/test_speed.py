"""The speed benchmark runs and reports what it promises; every fast path of the model computes the seed's
function (the default paths are also covered by test_seed_equivalence.py)."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_seed_equivalence import CONFIGS, TOL, make_seed_model, ours_name

import ctm
from ctm.cli import bench  # the command; it re-exports ctm.measure's format_table

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"mode", "batch", "impl", "samples_per_s", "samples_per_s_best", "ms_per_call", "ratio_to_seed",
            "ratio_to_seed_best", "peak_mb", "compile_s"}


# ------------------------------------------------------------------------------------------ benchmark


def test_speed_script_quick_json(seed):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--quick", "--json",
                          "--threads", "1"], capture_output=True, text=True, timeout=300, check=True).stdout
    result = json.loads(out)
    assert {"config", "options", "threads", "torch", "machine", "seed_reference", "memory_method", "results",
            "notes"} <= set(result)
    assert result["threads"] == 1
    assert result["config"]["iterations"] == 4 and result["config"]["d_model"] == 128
    rows = result["results"]
    assert {(r["mode"], r["batch"], r["impl"]) for r in rows} == {
        (m, b, i) for m in ("train", "eval") for b in (4, 8) for i in ("seed", "ctm")}
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert r["samples_per_s"] > 0 and r["ms_per_call"] > 0
        assert r["ratio_to_seed"] > 0
    assert all(r["ratio_to_seed"] == 1.0 for r in rows if r["impl"] == "seed")
    assert result["device"] == "cpu" and set(result["check"]) == {"ctm"}
    assert result["check"]["ctm"]["ok"] is True
    assert max(result["check"]["ctm"]["max_abs_diff"].values()) < 1e-4
    table = bench.format_table(result)
    assert "check ctm: equal to the seed" in table
    header = table.splitlines()[0].split()
    assert header[:4] == ["mode", "batch", "impl", "samples/s"] and "peak" in header
    assert len(table.splitlines()) >= 1 + len(rows)


def test_benchmark_without_seed_reference(monkeypatch, tmp_path):
    monkeypatch.delenv(bench.SEED_ENV, raising=False)
    result = bench.run_benchmark(bench.BenchOptions.quick(batch_sizes=(2,), modes=("eval",), memory="none"))
    assert result["seed_reference"] is None
    assert any("seed reference not found" in n for n in result["notes"])
    assert [(r["impl"], r["ratio_to_seed"]) for r in result["results"]] == [("ctm", None)]
    assert "not found" in bench.format_table(result)
    with pytest.raises(FileNotFoundError):
        bench.find_seed_reference(tmp_path / "missing.py")


OFFICIAL_CONFIG_FLAGS = ["--backbone", "resnet18-1", "--positional-embedding", "learnable-fourier",
                         "--neuron-selection", "random-pairing", "--n-self-pairs", "2", "--d-model", "24",
                         "--n-synch-out", "6", "--n-synch-action", "5"]


def test_benchmark_any_config_against_the_official_model(official, capsys):
    """`ctm bench` with config flags and --official: the official model built for that config gives ctm its
    weights, ctm is checked equal to it first, and both are timed (the config runs on ctm's fast engine)."""
    path = Path(official.ctm.__file__).resolve().parents[1]
    assert bench.main(["--quick", "--json", "--batch-sizes", "2", "--memory", "none", "--ticks", "3",
                       *OFFICIAL_CONFIG_FLAGS, "--official", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    c = result["config"]
    assert (c["iterations"], c["d_model"], c["backbone"], c["positional_embedding"], c["neuron_selection"],
            c["n_self_pairs"], c["nlm_temperature"]) == (3, 24, "resnet18-1", "learnable-fourier", "random-pairing",
                                                         2, True)
    assert result["reference"] == "official" and result["official_reference"] == str(path)
    assert [(r["mode"], r["impl"]) for r in result["results"]] == [
        ("train", "official"), ("train", "ctm"), ("eval", "official"), ("eval", "ctm")]
    assert all(r["ratio_to_seed"] == 1.0 for r in result["results"] if r["impl"] == "official")
    assert set(result["check"]) == {"ctm"} and result["check"]["ctm"]["ok"] is True
    assert any("fast engine" in n for n in result["notes"])
    table = bench.format_table(result)
    assert "x official" in table.splitlines()[0] and "check ctm: equal to the official" in table
    assert "neuron_selection='random-pairing'" in table


def test_benchmark_config_flags_without_a_reference(seed, monkeypatch, capsys):
    """A config beyond the tutorial's gets no seed row (the seed has only the tutorial's options); the
    official model has no tutorial backbone, which --official says in one line."""
    assert bench.main(["--quick", "--json", "--batch-sizes", "2", "--modes", "eval", "--memory", "none",
                       *OFFICIAL_CONFIG_FLAGS]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["impl"] for r in result["results"]] == ["ctm"] and result["check"] is None
    assert result["config"]["neuron_selection"] == "random-pairing"
    assert any("no seed row" in n for n in result["notes"])
    monkeypatch.setenv(bench.OFFICIAL_ENV, str(REPO / "missing"))
    assert bench.main(["--quick", "--official"]) == 2
    assert "official implementation not found" in capsys.readouterr().err
    assert bench.main(["--quick", "--n-self-pairs", "2"]) == 2
    assert "--n-self-pairs" in capsys.readouterr().err


def test_benchmark_amp_row_and_table_output(seed, capsys):
    assert bench.main(["--quick", "--amp", "--batch-sizes", "2", "--modes", "train", "--memory", "none"]) == 0
    table = capsys.readouterr().out
    assert [line.split()[2] for line in table.splitlines()[1:4]] == ["seed", "ctm", "ctm+amp"]


def test_check_against_seed_catches_a_difference(seed):
    opts = bench.BenchOptions.quick()
    models, module = bench.build_models(opts, bench.find_seed_reference())
    assert bench.check_against_seed(models, module, ["seed", "ctm"], opts)["ctm"]["ok"] is True
    with torch.no_grad():
        models["ctm"].neuron_level_models.first.b1.add_(0.1)
    result = bench.check_against_seed(models, module, ["seed", "ctm"], opts)["ctm"]
    assert result["ok"] is False and result["max_abs_diff"]["predictions"] > 1e-5
    assert "DIFFERS from the seed" in bench.format_table(
        {"results": [], "config": {"iterations": 4}, "torch": "", "threads": 1, "machine": "", "seed_reference": "",
         "memory_method": "", "notes": [], "check": {"ctm": result}})


class _GradScaled(torch.nn.Module):
    """The wrapped model's outputs (to float rounding), with the gradient reaching the input scaled by 0.99."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x * 0.99 + (x * 0.01).detach())


def test_check_against_seed_catches_a_wrong_input_gradient(seed, monkeypatch):
    opts = bench.BenchOptions.quick()
    models, module = bench.build_models(opts, bench.find_seed_reference())
    plain = bench._impl_model
    monkeypatch.setattr(bench, "_impl_model", lambda impl, ms: _GradScaled(plain(impl, ms)) if impl == "ctm"
                        else plain(impl, ms))
    result = bench.check_against_seed(models, module, ["seed", "ctm"], opts)["ctm"]
    assert result["max_abs_diff"]["predictions"] < 1e-5 and result["max_abs_diff"]["loss"] < 1e-5
    assert 5e-3 < result["grad_rel_err"] < 2e-2
    assert result["ok"] is False


def test_check_reports_a_variant_that_cannot_run_apart_from_a_difference(seed, monkeypatch):
    def no_compiler(*_args, **_kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    opts = bench.BenchOptions.quick()
    models, module = bench.build_models(opts, bench.find_seed_reference())
    check = bench.check_against_seed(models, module, ["seed", "ctm", "ctm+compile"], opts)
    assert check["ctm"]["ok"] is True
    assert check["ctm+compile"] == {"error": "RuntimeError: no C++ compiler found", "ok": None}
    table = bench.format_table(
        {"results": [], "config": {"iterations": 4}, "torch": "", "threads": 1, "machine": "", "seed_reference": "",
         "memory_method": "", "notes": [], "check": check})
    assert "check ctm+compile: could not run: RuntimeError: no C++ compiler found" in table
    assert "DIFFERS" not in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("with_seed", [True, False])
def test_benchmark_on_missing_cuda_is_one_clear_line(capsys, monkeypatch, tmp_path, with_seed):
    if not with_seed:  # the device is checked first: no "seed not found" line before the error
        monkeypatch.delenv(bench.SEED_ENV, raising=False)
    assert bench.main(["--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "--device cpu" in err[0]


def test_peak_memory_in_a_child_process():
    mb = bench.peak_memory_mb("ctm", "train", 4, bench.BenchOptions.quick(), None)
    assert mb is not None and 0 < mb < 2000


# ------------------------------------------------------------------------------------------ fast paths


def _pair(seed, name, gen):
    spec = CONFIGS[name]
    cfg = spec["cfg"]
    reference = make_seed_model(seed, cfg, spec["hw"], gen)
    model = ctm.from_seed_state_dict(reference.state_dict(), iterations=cfg.iterations, heads=cfg.heads)
    x = torch.rand(spec["batch"], cfg.in_channels, *spec["hw"], generator=gen)
    y = torch.randint(0, cfg.out_dims, (spec["batch"],), generator=gen)
    return reference, model, x, y


def _check_forward_and_grads(seed, reference, model, x, y):
    ref_pred, ref_cert, ref_synch = reference(x)
    out = model(x)
    torch.testing.assert_close(out.predictions, ref_pred, **TOL)
    torch.testing.assert_close(out.certainties, ref_cert, **TOL)
    torch.testing.assert_close(out.synchronisation_out, ref_synch, **TOL)
    seed.get_loss(ref_pred, ref_cert, y)[0].backward()
    ctm.certainty_loss(out.predictions, out.certainties, y)[0].backward()
    ours = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ours[ours_name(name)].grad, p.grad, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_inference_path_matches_seed(seed, name, mode):
    """The no-grad loop (inference_mode / no_grad), which saves nothing for a backward."""
    reference, model, x, _ = _pair(seed, name, torch.Generator().manual_seed(2))
    reference.train(mode == "train")
    model.train(mode == "train")
    with torch.no_grad():
        ref_pred, ref_cert, ref_synch = reference(x)
    with torch.inference_mode():
        out = model(x)
    torch.testing.assert_close(out.predictions, ref_pred, **TOL)
    torch.testing.assert_close(out.certainties, ref_cert, **TOL)
    torch.testing.assert_close(out.synchronisation_out, ref_synch, **TOL)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_autograd_path_matches_seed(seed, name, mode):
    """fast_backward = False: plain autograd through the same formulation (also what torch.compile traces)."""
    reference, model, x, y = _pair(seed, name, torch.Generator().manual_seed(3))
    model.fast_backward = False
    reference.train(mode == "train")
    model.train(mode == "train")
    _check_forward_and_grads(seed, reference, model, x, y)


@pytest.mark.parametrize("fast_backward", [True, False])
def test_fewer_ticks_than_memory_matches_seed(seed, fast_backward):
    """T < M: start-trace columns stay in the window for the whole forward."""
    cfg = ctm.CTMConfig(iterations=3, d_model=24, d_input=8, memory_length=7, heads=2, n_synch_out=5,
                        n_synch_action=6, memory_hidden_dims=3, out_dims=4)
    gen = torch.Generator().manual_seed(4)
    reference = make_seed_model(seed, cfg, (12, 12), gen).train()
    model = ctm.from_seed_state_dict(reference.state_dict(), iterations=3, heads=2).train()
    model.fast_backward = fast_backward
    x, y = torch.rand(3, 1, 12, 12, generator=gen), torch.randint(0, 4, (3,), generator=gen)
    _check_forward_and_grads(seed, reference, model, x, y)


def test_tracking_while_training_matches_seed(seed):
    cfg = ctm.CTMConfig(iterations=5, heads=2, d_input=16)
    gen = torch.Generator().manual_seed(5)
    reference = make_seed_model(seed, cfg, (16, 16), gen).eval()
    model = ctm.from_seed_state_dict(reference.state_dict(), iterations=5, heads=2).eval()
    x = torch.rand(3, 1, 16, 16, generator=gen)
    with torch.no_grad():
        _, _, (ref_so, ref_sa), ref_pre, ref_post, ref_attn = reference(x, track=True)
    for fast_backward in (True, False):
        model.fast_backward = fast_backward
        out = model(x, track=True)  # grad enabled: the tracked tensors come out of the training path
        t = out.tracking
        for ours, theirs in ((t.pre_activations, ref_pre), (t.post_activations, ref_post),
                             (t.attention, ref_attn.squeeze(3)), (t.synchronisation_out, ref_so),
                             (t.synchronisation_action, ref_sa)):
            assert not ours.requires_grad
            torch.testing.assert_close(ours, torch.from_numpy(theirs), **TOL)
        out.predictions.sum().backward()  # tracking does not get in the way of the backward


def test_training_steps_of_changing_batch_sizes_give_the_readable_paths_gradients():
    """Step after step, at changing batch sizes, the hand-written backward gives autograd's gradients."""
    cfg = ctm.CTMConfig(iterations=4, d_model=32, d_input=16, memory_length=5, heads=2, n_synch_out=8,
                        n_synch_action=6, memory_hidden_dims=4, out_dims=5)
    model = ctm.CTM(cfg)
    reference = copy.deepcopy(model)
    reference.fast_backward = False
    gen = torch.Generator().manual_seed(6)
    for batch in (4, 4, 3, 4, 3):
        x = torch.rand(batch, 1, 16, 16, generator=gen)
        y = torch.randint(0, 5, (batch,), generator=gen)
        grads = []
        for m in (model, reference):
            m.zero_grad()
            out = m(x)
            ctm.certainty_loss(out.predictions, out.certainties, y)[0].backward()
            grads.append([p.grad.clone() for p in m.parameters()])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_second_backward_through_one_forward_accumulates_the_same_gradients():
    """retain_graph: the hand-written backward keeps its buffers with the graph, so a second backward works."""
    model = ctm.CTM(ctm.CTMConfig(iterations=3, d_model=16, d_input=8, n_synch_out=4, n_synch_action=4))
    loss = model(torch.rand(2, 1, 8, 8)).predictions.sum()
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in model.parameters()]
    loss.backward()
    for p, g in zip(model.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)


def test_a_trained_model_copies_and_pickles():
    model = ctm.CTM(ctm.CTMConfig(iterations=3, d_model=16, d_input=8, n_synch_out=4, n_synch_action=4))
    model(torch.rand(2, 1, 8, 8)).predictions.sum().backward()
    twin = copy.deepcopy(model)
    x0 = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(twin(x0).predictions, model(x0).predictions)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).predictions, model(x).predictions)


def test_bfloat16_autocast_keeps_the_tick_loop_in_float32():
    model = ctm.CTM(ctm.CTMConfig(iterations=4, d_model=32, d_input=16, n_synch_out=6, n_synch_action=6))
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        plain = model(x).predictions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.predictions.dtype == torch.float32 and out.certainties.dtype == torch.float32
    torch.testing.assert_close(out.predictions, plain, rtol=0.1, atol=0.1)  # only the backbone is bfloat16
    out.predictions.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_compiled_model_matches_seed(seed):
    """torch.compile traces the autograd formulation (minutes of compiling on a small CPU)."""
    cfg = ctm.CTMConfig(iterations=3, d_model=16, d_input=8, memory_length=4, heads=2, n_synch_out=4,
                        n_synch_action=5, memory_hidden_dims=2, out_dims=3)
    gen = torch.Generator().manual_seed(7)
    reference = make_seed_model(seed, cfg, (8, 8), gen).train()
    model = ctm.from_seed_state_dict(reference.state_dict(), iterations=3, heads=2).train()
    compiled = torch.compile(model)
    x, y = torch.rand(3, 1, 8, 8, generator=gen), torch.randint(0, 3, (3,), generator=gen)
    ref_pred, ref_cert, _ = reference(x)
    out = compiled(x)
    torch.testing.assert_close(out.predictions, ref_pred, **TOL)
    torch.testing.assert_close(out.certainties, ref_cert, **TOL)
    seed.get_loss(ref_pred, ref_cert, y)[0].backward()
    ctm.certainty_loss(out.predictions, out.certainties, y)[0].backward()
    ours = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ours[ours_name(name)].grad, p.grad, **TOL)
