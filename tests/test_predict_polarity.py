"""`ctm predict` on pictures drawn the other way round from the training data (a dark digit on white paper for
MNIST's light on dark): the one-line warning naming --invert, --invert itself, and its refusal for tasks whose
inputs are not such pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, make_synthetic

import ctm
from ctm.cli import main
from ctm.data.idx import read_idx
from ctm.data.polarity import border_median, dataset_border, opposite_polarity
from ctm.data.sources import TEST_IMAGES, TEST_LABELS, find_dataset
from ctm.pretrained import BUNDLE_DIR
from ctm.training import loop as tr

HINT = "predicting it inverted is likely what you want: add --invert"


@pytest.fixture(scope="module")
def mnist_test():
    """The real MNIST test images (uint8 (10000, 28, 28)) and labels, as ctm's own IDX reader reads them."""
    files = find_dataset("mnist", files=[TEST_IMAGES, TEST_LABELS])
    if files is None:
        pytest.skip("the MNIST test files are not here (set CTM_DATA_DIR)")
    return read_idx(files[TEST_IMAGES]), read_idx(files[TEST_LABELS])


def save(images, folder: Path, prefix: str) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{prefix}{i:03d}.png"))
        Image.fromarray(np.ascontiguousarray(image)).save(paths[-1])
    return paths


def predict_json(capsys, *argv: str) -> tuple[list[dict], list[str]]:
    assert main(["predict", *argv, "--json", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err.splitlines()


def test_a_dark_digit_on_light_paper_is_named_with_the_fix_and_invert_predicts_it_as_the_light_one(
        mnist_test, tmp_path, capsys):
    images, labels = mnist_test
    light = save(images[:4], tmp_path, "light")  # MNIST's own: light strokes on black
    dark = save(255 - images[:4], tmp_path, "dark")  # the same digits drawn dark on white
    plain, err = predict_json(capsys, "--pretrained", "mnist", *light)
    assert err == [] and [r["label"] for r in plain] == labels[:4].tolist()
    assert all(r["inverted"] is False for r in plain)

    # as given, the dark digits are warned of, one line each on stderr, after the answers; stdout stays JSON
    as_given, err = predict_json(capsys, "--pretrained", "mnist", light[0], *dark)
    assert len(as_given) == 5 and len(err) == 4
    for line, path in zip(err, dark, strict=True):
        assert line == (f"{path}: dark on a light background, the opposite of the training data (light on dark); "
                        f"{HINT}")

    # --invert: the prediction of the original light-on-dark digit, said in the JSON; no warning
    inverted, err = predict_json(capsys, "--pretrained", "mnist", *dark, "--invert")
    assert err == []
    for got, want in zip(inverted, plain, strict=True):
        assert got["inverted"] is True and (got["label"], got["tick"]) == (want["label"], want["tick"])
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
    # the same from Python
    run = ctm.load_run(BUNDLE_DIR / "mnist")
    assert ctm.check_polarity(run, dark + light) == [
        "dark on a light background, the opposite of the training data (light on dark)"] * 4 + [None] * 4
    assert [p.label for p in ctm.predict(run, dark, invert=True)] == labels[:4].tolist()

    # --invert on a normal digit turns it the wrong way round, and says so
    assert main(["predict", "--pretrained", "mnist", light[0], "--invert", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"{light[0]}: --invert made it dark on a light background, the opposite of the "
                            f"training data (light on dark); predict it without --invert\n")


def test_no_warning_on_real_mnist_test_digits(mnist_test, tmp_path, capsys):
    images, _ = mnist_test
    folder = tmp_path / "digits"
    save(images[:200], folder, "digit")
    rows, err = predict_json(capsys, "--pretrained", "mnist", str(folder))
    assert len(rows) == 200 and err == []
    # all of them inverted: three in full, then how many more
    assert main(["predict", "--pretrained", "mnist", str(folder), "--invert", "--threads", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all("predict it without --invert" in line for line in err[:3])
    assert err[3] == "... and 197 more inputs with the same warning"
    # nor on the rest of the test set (border statistics alone: no model needed)
    batch = torch.from_numpy(images).unsqueeze(1)
    assert opposite_polarity(batch.float() / 255, 0.0) == [None] * len(images)
    assert opposite_polarity(1 - batch.float() / 255, 0.0).count(None) == 0


def test_invert_is_refused_for_tasks_whose_inputs_are_not_pictures_to_invert(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from ctm.tasks.maze import generate, render

    monkeypatch.chdir(tmp_path)
    Image.fromarray(render(generate(7, seed=3))).save("maze.png")
    for argv, task in ((["--pretrained", "maze", "maze.png"], "maze"), (["--pretrained", "parity", "++--"], "parity")):
        assert main(["predict", *argv, "--invert", "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert err == (f"ctm predict: error: --invert swaps light and dark of an image classifier's pictures; the "
                       f"bundled model {argv[1]} is a {task} run, whose inputs are not such pictures: drop "
                       f"--invert\n")
    assert main(["predict", "--pretrained", "maze", "maze.png", "--threads", "1"]) == 0  # without it, as before


def test_the_help_says_what_invert_does(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--invert an image run: swap light and dark of each picture (1 - x, pixels in [0, 1])" in text
    assert "ctm predict --pretrained mnist seven.png --invert" in text


def test_a_trained_run_records_its_background_and_an_unknown_one_says_nothing(tmp_path, capsys):
    data = make_synthetic(tmp_path / "data", n_train=64, n_test=16)  # bright blobs on dark noise (0-60)
    run = tmp_path / "run"
    tr.train(run, TINY, tr.TrainConfig(steps=1, batch_size=16, eval_every=1), data_dir=str(data))
    config = json.loads((run / "config.json").read_text())
    border = config["dataset"]["border"]
    assert 0.05 < border < 0.2 and ctm.load_run(run).data.border == border
    light = 255 - read_idx(data / "t10k-images-idx3-ubyte.gz")[:2]
    paths = save(light, tmp_path / "light", "x")
    assert main(["predict", str(run), *paths, "--threads", "1"]) == 0
    assert capsys.readouterr().err.count(HINT) == 2
    # a run that does not say (no record, a dataset ctm does not know, no slice): no warning, --invert still works
    config["dataset"] = {"name": "folder:/elsewhere", "shape": [1, 12, 12]}
    (run / "config.json").write_text(json.dumps(config))
    assert ctm.load_run(run).data.border is None
    assert main(["predict", str(run), *paths, "--invert", "--json", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and all(json.loads(line)["inverted"] for line in captured.out.splitlines())
    # a damaged record is refused by name
    config["dataset"]["border"] = "dark"
    (run / "config.json").write_text(json.dumps(config))
    assert main(["predict", str(run), *paths, "--threads", "1"]) == 2
    assert "'dataset.border' must be a number in [0, 1]" in capsys.readouterr().err


def test_border_statistics():
    dark = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    dark[:, :, 8:20, 8:20] = 255  # a light square inside the 2-pixel ring: the border stays dark
    assert border_median(dark).tolist() == [0.0] * 3 and dataset_border(dark) == 0.0
    assert border_median(255 - dark).tolist() == [1.0] * 3
    rgb = torch.full((1, 3, 10, 10), 0.9)
    assert border_median(rgb).item() == pytest.approx(0.9)
    assert dataset_border(dark[:0]) is None
    # a light training set: dark pictures are the opposite; grey or mixed training data: nothing is said
    assert opposite_polarity(dark.float() / 255, 0.9) == [
        "light on a dark background, the opposite of the training data (dark on light)"] * 3
    assert opposite_polarity(1 - dark.float() / 255, 0.5) == [None] * 3
    assert opposite_polarity(torch.full((1, 1, 8, 8), 0.55), 0.0) == [None]  # a grey background: not sure
