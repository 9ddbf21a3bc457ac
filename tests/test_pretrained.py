"""Bundled weights: listing, loading, the shipped test slice, and the CLI with no data and no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, make_synthetic

import ctm
from ctm.cli import main
from ctm.pretrained import BUNDLE_DIR, PretrainedError, pretrained_config, pretrained_record, pretrained_test_slice
from ctm.training.evaluate import evaluate


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A working folder where no dataset can be found (and none downloaded)."""
    monkeypatch.setenv("CTM_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("ctm.data.sources.SYSTEM_DATASETS_DIR", tmp_path / "no-system-data")
    monkeypatch.setattr("ctm.data.sources.download_dataset", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_mnist_is_bundled_small_and_pickle_free():
    infos = {i.name: i for i in ctm.list_pretrained()}
    assert "mnist" in infos
    info = infos["mnist"]
    assert info.dataset == "mnist"
    assert set(info.files) == {"config.json", "model.safetensors", "test_slice.safetensors", "record.json"}
    assert sum(info.files.values()) < 2_000_000  # a few MB at most for everything bundled
    assert info.files["test_slice.safetensors"] < 500_000
    for path in BUNDLE_DIR.rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc"):
            assert path.suffix in (".json", ".safetensors"), path
    record = info.record
    assert record["command"].startswith("ctm train")
    assert 0.97 <= record["test_accuracy"] <= 1 and record["test_n"] == 10000
    assert record["slice_n"] == 500


def test_load_pretrained_gives_the_trained_model_in_eval_mode():
    model = ctm.load_pretrained("mnist")
    assert isinstance(model, ctm.ContinuousThoughtMachine) and not model.training
    config = json.loads((BUNDLE_DIR / "mnist" / "config.json").read_text())
    assert model.config == ctm.CTMConfig.from_dict(config["model"])
    data = pretrained_test_slice("mnist")
    assert data.images.dtype == torch.uint8 and tuple(data.images.shape) == (500, 1, 28, 28)
    assert data.labels.tolist()[:10] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # MNIST's first test labels


def test_slice_accuracy_matches_the_record():
    """Re-measure the bundled model on the shipped slice against what record.json says."""
    record = pretrained_record("mnist")
    result = evaluate(ctm.load_pretrained("mnist"), pretrained_test_slice("mnist"))
    assert result.n == record["slice_n"]
    # Exact on the machine that made the record; one sample of slack for another CPU's float rounding.
    assert abs(result.accuracy - record["slice_accuracy"]) <= 1 / result.n + 1e-12
    assert abs(result.accuracy_last_tick - record["slice_accuracy_last_tick"]) <= 1 / result.n + 1e-12


def test_unknown_name_lists_what_is_bundled(tmp_path):
    with pytest.raises(PretrainedError, match="bundled: .*mnist"):
        ctm.load_pretrained("imagenet")
    with pytest.raises(ValueError, match="does not exist"):  # a path is a run directory, never a bundle
        ctm.load_pretrained(tmp_path / "mnist")


def test_load_pretrained_takes_a_run_directory(tmp_path, monkeypatch):
    data = make_synthetic(tmp_path / "data", n_train=200, n_test=40)
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(data), "--out", str(run), "--steps", "2", "--batch-size", "16",
                 "--no-progress", *TINY_FLAGS]) == 0
    model = ctm.load_pretrained(run)
    assert not model.training and model.config.d_model == 24
    assert ctm.load_pretrained(str(run)).config == model.config
    (tmp_path / "mnist").symlink_to(run)  # a bundled name stays the bundle, even beside a folder of that name
    monkeypatch.chdir(tmp_path)
    bundled = ctm.CTMConfig.from_dict(pretrained_config("mnist")["model"])
    assert ctm.load_pretrained("mnist").config == bundled != model.config
    assert ctm.load_pretrained("run").config == model.config


def test_cli_lists_the_bundled_models(capsys):
    assert main(["pretrained"]) == 0
    out = capsys.readouterr().out
    record = pretrained_record("mnist")
    assert out.startswith("maze: maze") and "\nmnist: mnist" in out  # sorted by name
    assert record["command"] in out and f"{record['test_accuracy']:.4f}" in out


def test_eval_pretrained_without_data_uses_the_slice_and_says_so(no_data, capsys):
    assert main(["eval", "--pretrained", "mnist", "--json"]) == 0
    captured = capsys.readouterr()
    assert "no mnist files found here; evaluating on the 500 test images shipped" in captured.err
    result = json.loads(captured.out)
    assert result["n"] == 500 and result["split"] == "test-slice"
    assert abs(result["accuracy"] - pretrained_record("mnist")["slice_accuracy"]) <= 1 / 500 + 1e-12
    assert main(["eval", "--pretrained", "mnist", "--slice", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["n"] == 500


def test_viz_and_view_pretrained_work_without_data(no_data, capsys):
    pytest.importorskip("matplotlib")
    assert main(["viz", "--pretrained", "mnist"]) == 0
    out = capsys.readouterr().out
    gifs = list(Path(no_data).glob("thinking-mnist-*.gif"))
    T = ctm.load_pretrained("mnist").config.iterations
    assert len(gifs) == 1 and f"Wrote {gifs[0].name}: {T} frames (test-slice image" in out
    assert "why this image: of the first 500 test-slice images, its probabilities change most" in out
    assert main(["viz", "--pretrained", "mnist", "--index", "3", "--out", "three.gif"]) == 0
    assert "test-slice image 3, label 0" in capsys.readouterr().out
    assert main(["view", "--pretrained", "mnist", "--samples", "12"]) == 0
    out = capsys.readouterr().out
    page = Path(no_data) / "ctm-view-mnist.html"
    assert out.startswith(f"Wrote {page.name} (") and "12 samples of the test slice shipped with mnist" in out
    assert '"title":"ctm view: mnist"' in page.read_text()


def test_run_dir_and_pretrained_are_exclusive(tmp_path, capsys):
    for argv in (["view"], ["viz"], ["eval"], ["view", str(tmp_path), "--pretrained", "mnist"]):
        assert main(argv) == 2
        assert "give a run directory or --pretrained NAME" in capsys.readouterr().err
    assert main(["view", "--pretrained", "nope"]) == 2
    assert "no bundled model named 'nope'" in capsys.readouterr().err


def test_the_wheel_takes_the_bundles_and_the_viewer_assets():
    """Every bundle and asset file matches a [tool.setuptools.package-data] pattern (so it ships)."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ctm"]
    package = root / "src" / "ctm"
    data_files = [p for folder in ("pretrained", "pictures/assets", "nn/csrc", "tasks")
                  for p in (package / folder).rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert len(data_files) >= 9 and package / "tasks" / "parity" / "viewer.js" in data_files
    for path in data_files:
        assert any(path.relative_to(package).match(pattern) for pattern in patterns), path


def test_the_bundled_maze_model_solves_what_its_record_says_and_shows_its_thinking(no_data, capsys):
    """The maze bundle ships no data (its task generates mazes): eval, view and viz work anywhere, and its solve rate
    on the first test mazes is the record's."""
    record = pretrained_record("maze")
    assert record["command"].startswith("ctm train --task maze") and record["slice_n"] == 200
    assert ctm.load_pretrained("maze").config.out_positions == 96  # 7 x 7 cells: every route fits
    assert main(["eval", "--pretrained", "maze", "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == record["test_n"] == 1000 and result["task"]["name"] == "maze"  # the mazes are generated
    assert result["solve_rate"] == pytest.approx(record["test_solve_rate"], abs=1 / 1000 + 1e-12)
    assert result["route_accuracy"] == pytest.approx(record["test_route_accuracy"], abs=1e-3)
    assert main(["eval", "--pretrained", "maze", "--slice", "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 200 and result["solve_rate"] == pytest.approx(record["slice_solve_rate"], abs=1 / 200 + 1e-12)
    assert main(["view", "--pretrained", "maze", "--samples", "8", "--threads", "1"]) == 0
    assert "8 samples of the first test mazes of the maze task" in capsys.readouterr().out
    assert '"kind":"maze"' in (Path(no_data) / "ctm-view-maze.html").read_text()
    main(["pretrained"])
    assert "maze: maze, 860780 parameters, solve rate 0.2640, route steps 0.5230 (n=1000)" in capsys.readouterr().out


def test_predict_takes_a_bundled_model(no_data, capsys):
    from PIL import Image

    from ctm.tasks.maze import generate, render

    data = pretrained_test_slice("mnist")
    images, _ = data.batch(torch.arange(3))
    for i in range(3):  # the shipped test images as PNG files: predicted as the bundled model sees them directly
        Image.fromarray((images[i, 0] * 255).round().to(torch.uint8).numpy()).save(f"digit{i}.png")
    assert main(["predict", "--pretrained", "mnist", "digit0.png", "digit1.png", "digit2.png", "--json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["file"] for g in got] == ["digit0.png", "digit1.png", "digit2.png"]
    model = ctm.load_pretrained("mnist")
    for g, image in zip(got, images, strict=True):
        out = model(image[None])
        tick = int(out.certainties[0, 1].argmax())
        assert g["label"] == int(out.predictions[0, :, tick].argmax()) and g["tick"] == tick + 1
    Image.fromarray(render(generate(7, seed=3))).save("maze.png")
    assert main(["predict", "--pretrained", "maze", "maze.png", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["file"] == "maze.png" and record["applications"] >= 1 and isinstance(record["solved"], bool)
    assert main(["predict", "--pretrained", "nope", "x.png"]) == 2
    assert "no bundled model named 'nope' (bundled: maze, mnist, parity)" in capsys.readouterr().err
