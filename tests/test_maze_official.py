"""Official maze weights in the Hugging Face layout (SakanaAI/ctm-maze-large: config.json of the constructor's
arguments + model.safetensors, as PyTorchModelHubMixin writes them): `ctm convert-official FOLDER`,
`ctm.load_pretrained(FOLDER)` and `hf:OWNER/NAME` (download monkeypatched: no network in the tests) give a maze
task model computing what the official model computes. The published maze checkpoints read pictures in [0, 1], the
maze task feeds [-1, 1]: by default the range is folded in, and the converted model on x computes what the official
model computes on (x + 1) / 2."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import eval_json, run_cli
from safetensors.torch import save_model

import ctm
from ctm.interop import hub

pytestmark = pytest.mark.usefixtures("isolated_rng")

# tasks/mazes/scripts/train_ctm.sh: the maze-large model (mazes of 99x99 pixels, routes of 100 steps)
MAZE_LARGE = dict(iterations=75, d_model=2048, d_input=512, heads=16, n_synch_out=64, n_synch_action=32,
                  synapse_depth=8, memory_length=25, deep_nlms=True, memory_hidden_dims=32, do_layernorm_nlm=False,
                  backbone_type="resnet34-2", positional_embedding_type="none", out_dims=500,
                  prediction_reshaper=[100, 5], dropout=0.1, neuron_select_type="first-last")
# the same kind of model, small: random-pairing, a U-Net of depth 4, 6 route steps on 15x15 pictures
MAZE_SMALL = dict(iterations=5, d_model=48, d_input=16, heads=2, n_synch_out=12, n_synch_action=8, synapse_depth=4,
                  memory_length=4, deep_nlms=True, memory_hidden_dims=4, do_layernorm_nlm=False,
                  backbone_type="resnet18-1", positional_embedding_type="none", out_dims=30,
                  prediction_reshaper=[6, 5], dropout=0.1, neuron_select_type="random-pairing",
                  n_random_pairing_self=2)
#: what the mixin records besides the arguments given: the constructor's other defaults
DEFAULTS = dict(prediction_reshaper=[-1], dropout=0, dropout_nlm=None, neuron_select_type="random-pairing",
                n_random_pairing_self=0)


def maze_like(b: int, side: int, seed: int = 1) -> torch.Tensor:
    """Random pictures in [-1, 1] with walls (-1), floor (1), a red start and a green goal."""
    g = torch.Generator().manual_seed(seed)
    floor = (torch.rand(b, 1, side, side, generator=g) < 0.6).float() * 2 - 1
    x = floor.repeat(1, 3, 1, 1)
    x[:, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])
    x[:, :, side - 2, side - 2] = torch.tensor([-1.0, 1.0, -1.0])
    return x


def official_hub_folder(official, folder: Path, arguments: dict, side: int, extra: dict | None = None):
    """An official model published as the mixin does: built, a dummy forward on (1, 3, side, side) (its lazy
    layers; the mixin's _from_pretrained does the same), BatchNorm statistics moved off their start, then
    config.json + model.safetensors (`save_model`: shared tensors stored once). Returns the model in eval mode."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its neuron selection
        model = official.ctm.ContinuousThoughtMachine(**arguments)
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**DEFAULTS, **arguments, **(extra or {})}, indent=2))
    save_model(model, str(folder / "model.safetensors"))
    return model


def assert_same(theirs, ours, x, rtol=1e-4, atol=1e-4, folded=True):
    """The official model on x in [0, 1] ((x + 1) / 2 of the picture x in [-1, 1], `folded`: the published
    checkpoints' legacy range, which conversion folds in by default) or on x itself, and ctm's on x."""
    with torch.no_grad():
        predictions, certainties, _ = theirs((x + 1) / 2 if folded else x)
        out = ours(x)
    scale = predictions.abs().max().item()
    torch.testing.assert_close(out.predictions, predictions, rtol=rtol, atol=atol * max(1.0, scale))
    torch.testing.assert_close(out.certainties, certainties, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def small_folder(official, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "ctm-maze-small-test"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = official_hub_folder(official, folder, MAZE_SMALL, 15, extra={"_name_or_path": "x"})
    return folder, model


def test_load_pretrained_of_a_hub_folder_computes_what_the_official_maze_model_does(small_folder):
    folder, theirs = small_folder
    ours = ctm.load_pretrained(folder)
    assert not ours.training and ours.config.out_positions == 6 and ours.config.in_channels == 3
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert_same(theirs, ours, maze_like(3, 15))
    assert_same(theirs, ctm.load_pretrained(str(folder)), maze_like(2, 15, seed=2))  # a str path too


def test_convert_official_of_a_hub_folder_writes_a_maze_run(small_folder, tmp_path, capsys):
    folder, theirs = small_folder
    run = tmp_path / "run"
    capsys.readouterr()
    assert run_cli("convert-official", folder, "--out", run) == 0
    out = capsys.readouterr().out
    assert "maze task: routes of 6 steps" in out and "mazes of 19x19 cells" in out  # "small": 39x39 pictures
    assert "pixel range 0..1 folded" in out
    payload = json.loads((run / "config.json").read_text())
    assert payload["official"]["pixel_range"] == "0..1" and payload["official"]["folded"] is True
    assert payload["task"]["name"] == "maze" and payload["task"]["route_length"] == 6
    assert payload["task"]["cells"] == 19 and payload["dataset"]["route_length"] == 6
    assert payload["official"]["arguments"]["prediction_reshaper"] == [6, 5]
    assert "_name_or_path" not in payload["official"]["arguments"]
    from ctm.runs.checkpoint import load_model

    model, _ = load_model(run)
    assert_same(theirs, model.eval(), maze_like(2, 15))
    # the run evaluates as a maze run: on generated mazes of its size, and larger ones
    result = eval_json(run, "--task-option", "reapply=1", "--task-option", "cells=7", capsys=capsys)
    assert result["n"] == 1000 and 0 <= result["solve_rate"] <= 1
    # a run directory is not the Hub layout: refused, and read as a run by load_pretrained
    assert run_cli("convert-official", run, "--out", tmp_path / "again") == 2
    assert "is a ctm run directory already" in capsys.readouterr().err
    assert ctm.load_pretrained(run).config == model.config


def test_a_model_without_maze_outputs_records_no_task(official, tmp_path, capsys):
    arguments = {**MAZE_SMALL, "out_dims": 10, "prediction_reshaper": [-1]}
    torch.manual_seed(0)
    official_hub_folder(official, tmp_path / "classifier", arguments, 15)
    assert run_cli("convert-official", tmp_path / "classifier", "--out", tmp_path / "run", "--dataset", "mnist") == 0
    payload = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "task" not in payload and payload["dataset"] == {"name": "mnist"}


def test_hub_folders_that_do_not_convert_are_named_in_one_line(small_folder, tmp_path, capsys):
    folder, _ = small_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "maze_size": 15}))
    with pytest.raises(ValueError, match=r"unknown key 'maze_size' \(neither an argument"):
        ctm.load_pretrained(bad)
    capsys.readouterr()
    assert run_cli("convert-official", bad, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'maze_size'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    (bad / "config.json").write_text(json.dumps(config))  # bookkeeping keys are fine; --args is refused
    assert run_cli("convert-official", bad, "--args", bad / "config.json", "--out", tmp_path / "r") == 2
    assert "--args does not apply" in capsys.readouterr().err
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        ctm.load_pretrained(bad)
    assert run_cli("convert-official", tmp_path / "r.pt", "--out", tmp_path / "r") == 2
    assert "needs --args" in capsys.readouterr().err


def test_hf_names_need_the_hub_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ValueError, match=r"pip install 'torch-ctm\[hub\]'"):
        ctm.load_pretrained("hf:SakanaAI/ctm-maze-large")
    assert run_cli("eval", "--pretrained", "hf:SakanaAI/ctm-maze-large", "--json") == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'torch-ctm[hub]'" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="expected hf:OWNER/NAME"):
        ctm.load_pretrained("hf:no-owner")


def test_hf_names_download_the_two_files(small_folder, monkeypatch, tmp_path, capsys):
    folder, theirs = small_folder
    asked = []

    def fake_download(repo_id, filename):
        asked.append((repo_id, filename))
        if repo_id != "SakanaAI/ctm-maze-small-test":
            raise OSError(f"404 Client Error: Repository Not Found for url: https://huggingface.co/{repo_id}")
        return str(folder / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.ModuleType("huggingface_hub"))
    monkeypatch.setattr(hub, "_hf_hub_download", fake_download)
    ours = ctm.load_pretrained("hf:SakanaAI/ctm-maze-small-test")
    assert sorted(asked) == [("SakanaAI/ctm-maze-small-test", "config.json"),
                             ("SakanaAI/ctm-maze-small-test", "model.safetensors")]
    assert_same(theirs, ours, maze_like(2, 15))
    with pytest.raises(ValueError, match="hf:Sakana/wrong: cannot download config.json .OSError: 404"):
        ctm.load_pretrained("hf:Sakana/wrong")
    # --pretrained hf:... in the commands: a maze model evaluates on generated mazes of its size
    capsys.readouterr()
    assert run_cli("eval", "--pretrained", "hf:SakanaAI/ctm-maze-small-test", "--json", "--threads", "1",
                   "--task-option", "reapply=1", "--task-option", "cells=5") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1000 and "solve_rate" in result
    run = tmp_path / "run"
    assert run_cli("convert-official", "hf:SakanaAI/ctm-maze-small-test", "--out", run) == 0
    payload = json.loads((run / "config.json").read_text())
    assert payload["official"]["hub"] == "hf:SakanaAI/ctm-maze-small-test" and payload["task"]["cells"] == 19
    assert run_cli("convert-official", "hf:Sakana/wrong", "--out", tmp_path / "r2") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot download" in err and len(err.splitlines()) == 1 and not (tmp_path / "r2").exists()


def test_maze_names_give_the_maze_size():
    assert hub.maze_cells("ctm-maze-large") == 49
    assert hub.maze_cells("ctm-maze-medium") == 19
    assert hub.maze_cells("my-model") == hub.DEFAULT_CELLS == 7


def test_the_legacy_pixel_range_folds_into_the_first_convolution_exactly(small_folder):
    """In float64: the official model on (x + 1) / 2 and the converted model (folded by default) on x agree to
    rounding; the 1x1 rgb convolution holds W / 2 and b + (W / 2) summed over the input channels."""
    from ctm.interop.official import fold_pixel_range

    folder, theirs = small_folder
    ours, plain = ctm.load_pretrained(folder), ctm.load_pretrained(folder, pixel_range="-1..1")
    w, b = plain.backbone.rgb.weight, plain.backbone.rgb.bias
    torch.testing.assert_close(ours.backbone.rgb.weight, w / 2, rtol=0, atol=0)
    torch.testing.assert_close(ours.backbone.rgb.bias, b + w.sum(dim=(1, 2, 3)) / 2)
    folded = fold_pixel_range(plain.state_dict())  # a state dict too: a new one
    assert torch.equal(folded["backbone.rgb.weight"], ours.backbone.rgb.weight)
    assert torch.equal(plain.backbone.rgb.weight, w)
    x = maze_like(3, 15).double()
    theirs64 = copy.deepcopy(theirs).double()
    with torch.no_grad():
        predictions, certainties, _ = theirs64((x + 1) / 2)
        out = ours.double()(x)
        unfolded = plain.double()(x)
    predictions, certainties = predictions.double(), certainties.double()  # computed in float64, stored in float32
    torch.testing.assert_close(out.predictions, predictions, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.certainties, certainties, rtol=0, atol=1e-5)
    assert (unfolded.predictions - predictions).abs().max() > 1e-4  # the range matters, unfolded


def test_a_maze_model_trained_on_minus_one_to_one_converts_as_is(small_folder, tmp_path, capsys):
    from ctm.runs.checkpoint import load_model

    folder, theirs = small_folder
    assert_same(theirs, ctm.load_pretrained(folder, pixel_range="-1..1"), maze_like(2, 15), folded=False)
    run = tmp_path / "run"
    capsys.readouterr()
    assert run_cli("convert-official", folder, "--out", run, "--pixel-range", "-1..1") == 0
    assert "folded" not in capsys.readouterr().out
    payload = json.loads((run / "config.json").read_text())
    assert payload["official"]["pixel_range"] == "-1..1" and payload["official"]["folded"] is False
    model, _ = load_model(run)
    assert_same(theirs, model.eval(), maze_like(2, 15), folded=False)
    assert run_cli("convert-official", folder, "--out", tmp_path / "r2", "--pixel-range", "0..1") == 0
    assert_same(theirs, ctm.load_pretrained(tmp_path / "r2"), maze_like(2, 15))  # the default, said
    with pytest.raises(ValueError, match="pixel range '0..255': choose '0..1' or '-1..1'"):
        ctm.load_pretrained(folder, pixel_range="0..255")


def test_the_pixel_range_is_refused_for_anything_but_a_maze_model(official, tmp_path, capsys):
    from ctm.interop.official import fold_pixel_range

    arguments = {**MAZE_SMALL, "out_dims": 10, "prediction_reshaper": [-1]}
    torch.manual_seed(0)
    official_hub_folder(official, tmp_path / "classifier", arguments, 15)
    capsys.readouterr()
    for given in ("0..1", "-1..1"):
        assert run_cli("convert-official", tmp_path / "classifier", "--out", tmp_path / "run",
                       "--pixel-range", given) == 2
        err = capsys.readouterr().err.strip()
        assert "applies to official maze models only" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="applies to official maze models only"):
        ctm.load_pretrained(tmp_path / "classifier", pixel_range="0..1")
    assert ctm.load_pretrained(tmp_path / "classifier").config.out_dims == 10  # not given: converted as is
    assert run_cli("convert-official", tmp_path / "sd.pt", "--args", tmp_path / "a.json", "--out", tmp_path / "run",
                   "--pixel-range", "0..1") == 2
    err = capsys.readouterr().err.strip()
    assert "--pixel-range applies to official maze models in the Hugging Face layout" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="pixel_range applies to official maze weights"):
        ctm.load_pretrained("mnist", pixel_range="0..1")
    # a maze model without a ResNet backbone: no 1x1 input convolution to fold into, named in one line
    official_hub_folder(official, tmp_path / "maze-none", {**MAZE_SMALL, "backbone_type": "none"}, 15)
    with pytest.raises(ValueError, match="cannot be folded.*pixel range '-1..1'"):
        ctm.load_pretrained(tmp_path / "maze-none")
    assert ctm.load_pretrained(tmp_path / "maze-none", pixel_range="-1..1").config.backbone == "none"
    for target in (ctm.ContinuousThoughtMachine(ctm.CTMConfig(backbone="none")), {"w": torch.zeros(1)}):
        with pytest.raises(ValueError, match="cannot be folded") as e:
            fold_pixel_range(target)
        assert len(str(e.value).splitlines()) == 1


def test_the_official_maze_large_model_converts_and_computes_the_same(official, tmp_path, one_thread):
    """The full maze-large configuration (32 M parameters, 75 ticks; about 5 s a forward on one core)."""
    torch.manual_seed(0)
    folder = tmp_path / "ctm-maze-large"
    theirs = official_hub_folder(official, folder, MAZE_LARGE, 99)
    run = tmp_path / "run"
    assert run_cli("convert-official", folder, "--out", run) == 0
    payload = json.loads((run / "config.json").read_text())
    assert payload["task"]["name"] == "maze" and payload["task"]["cells"] == 49
    assert payload["task"]["route_length"] == 100 and payload["dataset"]["route_length"] == 100
    assert payload["dataset"]["shape"] == [3, 99, 99]
    model = ctm.load_pretrained(run)
    c = model.config
    assert (c.iterations, c.d_model, c.d_input, c.heads, c.synapse_depth, c.memory_length, c.backbone,
            c.neuron_selection, c.out_positions, c.out_dims, c.in_channels) == (
        75, 2048, 512, 16, 8, 25, "resnet34-2", "first-last", 100, 500, 3)
    assert model.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert json.loads((run / "config.json").read_text())["official"]["pixel_range"] == "0..1"
    assert_same(theirs, model, maze_like(1, 99))  # the official model on (x + 1) / 2: the legacy range folded
