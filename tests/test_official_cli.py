"""The official options through the command line: `ctm train` with the generated flags trains and resumes;
`ctm convert-official` writes a run directory whose eval, halting and viz answer as the official model does."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, make_synthetic
from safetensors.torch import load_file

from ctm.cli import main
from ctm.runs import checkpoint as ckpt

# Dropout stays off: training does not save the global RNG, so a resumed run draws other dropout masks.
OFFICIAL_FLAGS = ["--backbone", "resnet18-1", "--positional-embedding", "learnable-fourier",
                  "--neuron-selection", "random-pairing", "--n-self-pairs", "2", "--synapse-depth", "3",
                  "--no-deep-nlms", "--nlm-layernorm", "--nlm-temperature"]

pytestmark = pytest.mark.usefixtures("isolated_rng")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), n_train=256, n_test=60)


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def test_official_options_train_and_resume_through_the_cli(synthetic, tmp_path):
    common = ["--data-dir", synthetic, "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "0",
              "--schedule", "constant", "--eval-every", "4", "--no-progress", "--seed", "5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli("train", *common, *TINY_FLAGS, *OFFICIAL_FLAGS, "--steps", "8", "--out", straight) == 0
    assert run_cli("train", *common, *TINY_FLAGS, *OFFICIAL_FLAGS, "--steps", "4", "--out", resumed) == 0
    assert run_cli("train", "--resume", resumed, "--steps", "8", "--data-dir", synthetic, "--no-progress") == 0

    model = json.loads((resumed / "config.json").read_text())["model"]
    assert (model["backbone"], model["neuron_selection"], model["synapse_depth"], model["deep_nlms"]) == (
        "resnet18-1", "random-pairing", 3, False)
    a, b = (load_file(str(ckpt.current_checkpoint(run).path / ckpt.MODEL_FILE)) for run in (straight, resumed))
    assert a.keys() == b.keys() and "synch_out.left" in a  # the drawn pairs are saved with the weights
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert [r["step"] for r in ckpt.read_metrics(resumed)] == [4, 8]
    for r1, r2 in zip(ckpt.read_metrics(straight), ckpt.read_metrics(resumed), strict=True):
        assert r2["test_loss"] == pytest.approx(r1["test_loss"], abs=1e-6)


@pytest.mark.parametrize("flags", [["--backbone", "sign-embedding", "--positional-embedding", "custom-rotational-1d"],
                                   ["--out-positions", "2"]])
def test_ctm_train_refuses_the_sequence_options_in_one_line(synthetic, tmp_path, capsys, flags):
    assert run_cli("train", "--data-dir", synthetic, "--out", tmp_path / "run", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image classifiers" in err[0], err
    assert not (tmp_path / "run").exists()


OFFICIAL_ARGS = dict(iterations=4, d_model=21, d_input=12, heads=3, n_synch_out=6, n_synch_action=5,
                     synapse_depth=2, memory_length=4, deep_nlms=True, memory_hidden_dims=3, do_layernorm_nlm=False,
                     backbone_type="resnet18-1", positional_embedding_type="custom-rotational", out_dims=10,
                     neuron_select_type="random")


def test_convert_official_writes_a_run_that_eval_halting_and_viz_read(official, synthetic, tmp_path, capsys):
    from ctm.data.images import load_dataset
    from ctm.runs.checkpoint import load_model

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = official.ctm.ContinuousThoughtMachine(**OFFICIAL_ARGS).eval()
    test = load_dataset("mnist", "test", data_dir=synthetic)
    x, y = test.batch(torch.arange(len(test)))
    with torch.no_grad():
        predictions = theirs(x)[0]  # also initialises the lazy layers
    torch.save(theirs.state_dict(), tmp_path / "official.pt")
    (tmp_path / "args.json").write_text(json.dumps(OFFICIAL_ARGS))
    run = tmp_path / "run"
    capsys.readouterr()
    assert run_cli("convert-official", tmp_path / "official.pt", "--args", tmp_path / "args.json", "--out", run,
                   "--dataset", "mnist") == 0
    assert "Wrote" in capsys.readouterr().out

    assert run_cli("eval", run, "--data-dir", synthetic, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    expected = (predictions.argmax(1) == y.unsqueeze(1)).float().mean(0)  # accuracy per tick
    assert result["per_tick_accuracy"] == pytest.approx(expected.tolist())

    model, _ = load_model(run)
    model.eval()
    for tau, tick in ((2.0, -1), (0.0, 0)):  # never halts: the last tick; halts at once: the first
        assert torch.equal(model.think(x, tau).prediction, predictions[..., tick].argmax(1))
    assert run_cli("viz", run, "--data-dir", synthetic, "--out", tmp_path / "t.gif") == 0


def test_convert_official_names_what_it_cannot_convert(official, tmp_path, capsys):
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    (tmp_path / "args.json").write_text(json.dumps({**OFFICIAL_ARGS, "heads": 0, "lr": 1e-3}))
    capsys.readouterr()
    assert run_cli("convert-official", tmp_path / "sd.pt", "--args", tmp_path / "args.json", "--out",
                   tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown ['lr']" in err[0], err
    assert not (tmp_path / "run").exists()
