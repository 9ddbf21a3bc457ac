"""Your own images: folder datasets (folder:PATH) built here from drawn shapes, trained and evaluated through the
CLI, their mode and size decisions, the held-out split, resume, and one clear line for every bad folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import KINDS, SHAPES, TINY, TINY_FLAGS, cli_error, draw, make_shapes
from PIL import Image
from safetensors.torch import load_file

from ctm.cli import main
from ctm.data import folders
from ctm.data.idx import DataError
from ctm.data.images import load_dataset, load_splits
from ctm.runs import checkpoint as ckpt
from ctm.training import loop as tr


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.current_checkpoint(run_dir).path / ckpt.MODEL_FILE))


LEARN = ["--steps", "150", "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "10", "--eval-every", "75",
         "--tick-loss-weight", "0", "--no-progress", "--threads", "1", *TINY_FLAGS]


def test_a_folder_of_drawn_shapes_trains_through_the_cli_and_eval_names_the_classes(tmp_path, capsys):
    data = make_shapes(tmp_path / "shapes", n=80)
    (data / "notes.txt").write_text("not an image")
    (data / "circle" / "Thumbs.db").write_bytes(b"\0\1")
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", f"folder:{data}", "--out", out, *LEARN) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (f"data: {data}: 216 train / 24 test images, RGB, resized to 3x16x16; 3 classes: circle, "
                        f"square, triangle; test split: 0.1 of each class held out for testing (seed 0); 2 other "
                        f"files skipped (not PNG/JPEG/BMP)")
    rows = ckpt.read_metrics(out)
    assert rows[-1]["test_accuracy"] >= 0.8, rows  # chance is 1/3
    section = json.loads((out / "config.json").read_text())["dataset"]
    assert section == {**section, "name": f"folder:{data}", "kind": "folder", "path": str(data), "layout": "holdout",
                       "class_names": ["circle", "square", "triangle"], "mode": "RGB", "image_size": [16, 16],
                       "holdout": 0.1, "holdout_seed": 0, "shape": [3, 16, 16], "num_classes": 3, "skipped": 2}
    assert json.loads((out / "config.json").read_text())["model"]["in_channels"] == 3

    assert run_cli("eval", out, "--threads", "1") == 0
    text = capsys.readouterr().out
    assert text.startswith(f"folder:{data} test: n=24\n")
    table = text[text.index("  class"):].splitlines()
    assert table[0].split() == ["class", "accuracy", "images"]
    assert [row.split()[0] for row in table[1:]] == ["circle", "square", "triangle"]
    assert [int(row.split()[2]) for row in table[1:]] == [8, 8, 8]
    assert run_cli("eval", out, "--json", "--threads", "1") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["class_names"] == ["circle", "square", "triangle"] and result["per_class_n"] == [8, 8, 8]
    assert result["per_class_accuracy"][0] == pytest.approx(float(table[1].split()[1]), abs=1e-4)
    assert sum(a * 8 for a in result["per_class_accuracy"]) / 24 == pytest.approx(result["accuracy"])

    # The GIF's probability bars and the viewer are labelled with the names; predict answers with them.
    assert run_cli("viz", out, "--index", "0", "--threads", "1") == 0
    assert "label 0 (circle)" in capsys.readouterr().out
    assert run_cli("viz", out, "--threads", "1") == 0  # the image it picks is explained in names too
    assert re.search(r"label \d \((circle|square|triangle)\).*\(prediction (circle|square|triangle)",
                     capsys.readouterr().out)
    assert run_cli("view", out, "--samples", "6", "--threads", "1") == 0
    assert '"classes":["circle","square","triangle"]' in (out / "viewer.html").read_text()
    capsys.readouterr()
    assert run_cli("predict", out, data / "square" / "0001.jpg", "--json", "--threads", "1") == 0
    assert json.loads(capsys.readouterr().out)["class_name"] in SHAPES

    # Files added since training: the held-out split is no longer the one trained around, and eval says so.
    draw("circle", (16, 16), np.random.default_rng(9)).save(data / "circle" / "new.png")
    assert run_cli("eval", out, "--threads", "1") == 0
    assert capsys.readouterr().err == (f"note: the files of {data} changed since the run was trained: its held-out "
                                       f"test images may now include training images\n")
    (data / "circle" / "new.png").unlink()

    # The folder moved: eval says how to point at it, and --dataset folder:NEW works with the same classes.
    moved = data.rename(tmp_path / "moved")
    line = cli_error(capsys, "eval", out)
    assert line == (f"ctm eval: error: the run was trained on the image folder {data}, which is gone; if it moved, "
                    f"pass --dataset folder:NEWPATH")
    assert run_cli("eval", out, "--dataset", f"folder:{moved}", "--json", "--threads", "1") == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == result["accuracy"]
    split = tmp_path / "split"
    make_shapes(split / "train", n=3)
    make_shapes(split / "test", n=3)
    assert cli_error(capsys, "eval", out, "--dataset", f"folder:{split}") == (
        f"ctm eval: error: folder dataset {split} has train/ and test/ folders, but the run was trained on class "
        f"folders at the top (a held-out test split); give a folder laid out the same way")
    (moved / "square").rename(moved / "box")
    assert cli_error(capsys, "eval", out, "--dataset", f"folder:{moved}") == (
        f"ctm eval: error: folder dataset {moved} has classes box, circle, triangle, but the run was trained on "
        f"circle, square, triangle; give a folder with the same class folders")


def test_split_folders_give_the_train_and_test_splits(tmp_path, capsys):
    root = tmp_path / "split"
    make_shapes(root / "train", n=30, seed=1)
    make_shapes(root / "test", n=9, seed=2)
    train, test = load_splits(f"folder:{root}")
    assert (len(train), len(test)) == (90, 27)
    assert train.labels.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    assert test.record["layout"] == "split" and test.record["holdout"] is None
    assert train.class_names == test.class_names == SHAPES
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", f"folder:{root}", "--out", out, "--steps", "6", "--batch-size", "16",
                   "--eval-every", "6", "--no-progress", "--threads", "1", *TINY_FLAGS) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith(f"data: {root}: 90 train / 27 test images, RGB, resized to 3x16x16; 3 classes")
    assert line.endswith("test split: its train/ and test/ folders")


def test_holdout_is_a_fixed_per_class_fraction(tmp_path):
    root = make_shapes(tmp_path / "shapes", n=23, colour=False)
    train, test = load_splits(f"folder:{root}")
    assert test.labels.bincount().tolist() == [2, 2, 2]  # round(0.1 x 23) of each class
    assert train.labels.bincount().tolist() == [21, 21, 21]
    again_train, again_test = load_splits(f"folder:{root}")
    assert torch.equal(again_train.images, train.images) and torch.equal(again_test.images, test.images)
    # Train and test are disjoint and together are every file.
    everything = {tuple(img.flatten().tolist()) for img in torch.cat([train.images, test.images])}
    assert len(everything) == 69
    train30, test30 = load_splits(f"folder:{root}", holdout=0.3)
    assert test30.labels.bincount().tolist() == [7, 7, 7] and len(train30) == 48
    assert folders.split_size(root, "train", 0.3) == 48


def test_mode_is_greyscale_only_when_every_file_is(tmp_path):
    grey = make_shapes(tmp_path / "grey", n=14, colour=False)  # L files and grey palette PNGs
    assert Image.open(grey / "circle" / "0000.png").mode == "P"
    train, _ = load_splits(f"folder:{grey}")
    assert train.shape == (1, 16, 16) and train.record["mode"] == "L"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(grey / "square" / "red.png")  # one colour file
    train, _ = load_splits(f"folder:{grey}")
    assert train.shape == (3, 16, 16) and train.record["mode"] == "RGB"
    # A grey file in an RGB folder has three equal planes.
    i = next(k for k in range(len(train)) if train.labels[k] == 0)
    assert torch.equal(train.images[i, 0], train.images[i, 1]) and torch.equal(train.images[i, 1], train.images[i, 2])


def test_transparent_pixels_become_black_and_colour_palettes_count_as_colour(tmp_path):
    root = tmp_path / "alpha"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        im = Image.new("RGBA", (8, 8), (255, 255, 255, 0))  # transparent white
        im.paste((255, 255, 255, 255), (2, 2, 6, 6))
        im.save(root / name / "x.png")
        im.save(root / name / "y.png")
    train, test = load_splits(f"folder:{root}")
    image = torch.cat([train.images, test.images])[0]  # (3, 8, 8)
    assert image.shape == (3, 8, 8) and image[:, 0, 0].tolist() == [0, 0, 0] and image[:, 3, 3].tolist() == [255] * 3
    pal = tmp_path / "palette"
    for name in ("a", "b"):
        (pal / name).mkdir(parents=True)
        for f in ("x", "y"):
            blue = Image.new("RGB", (8, 8), (0, 0, 200)).convert("P", palette=Image.Palette.ADAPTIVE)
            blue.save(pal / name / f"{f}.png")
    train, _ = load_splits(f"folder:{pal}")
    assert train.shape == (3, 8, 8) and train.images[0, :, 0, 0].tolist() == [0, 0, 200]


def test_default_size_is_the_most_common_and_image_size_overrides_it(tmp_path, capsys):
    root = make_shapes(tmp_path / "shapes", n=12, colour=False)  # 9 of 12 are 16x16, 3 are 20x24
    for i in (1, 2, 3):  # now 6 of 12 are 20x24: a tie, won by the larger size
        draw("circle", (20, 24), np.random.default_rng(i)).save(root / "circle" / f"{i:04d}.png")
        (root / "circle" / f"{i:04d}{KINDS[i % 3]}").unlink(missing_ok=i % 3 == 0)
    train, _ = load_splits(f"folder:{root}")
    assert train.shape == (1, 16, 16)
    train, _ = load_splits(f"folder:{root}", image_size=(12, 20))
    assert train.shape == (1, 12, 20)
    assert folders.parse_image_size("32") == (32, 32) and folders.parse_image_size("24x40") == (24, 40)
    assert folders.parse_image_size("") is None
    for bad in ("0", "32x", "axb", "5000", "3x4x5"):
        with pytest.raises(ValueError, match="image_size must be HxW or N"):
            folders.parse_image_size(bad)
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", f"folder:{root}", "--image-size", "10", "--out", out, "--steps", "2",
                   "--batch-size", "8", "--eval-every", "2", "--no-progress", "--threads", "1", *TINY_FLAGS) == 0
    assert json.loads((out / "config.json").read_text())["dataset"]["image_size"] == [10, 10]
    assert json.loads((out / "config.json").read_text())["train"]["image_size"] == "10"
    assert "greyscale, resized to 1x10x10" in capsys.readouterr().out


def test_resume_on_a_folder_equals_an_uninterrupted_run(tmp_path, capsys):
    root = make_shapes(tmp_path / "shapes", n=20)
    cfg = tr.make_train_config("default", dataset=f"folder:{root}", steps=16, batch_size=8, lr=3e-3,
                               warmup_steps=3, eval_every=5, augment=True, seed=2)
    straight = tmp_path / "straight"
    tr.train(straight, TINY, cfg)
    resumed = tmp_path / "resumed"
    first = tr.train(resumed, TINY, cfg, stop=lambda step: step == 7)
    assert first.interrupted and first.step == 7
    assert run_cli("train", "--resume", resumed, "--no-progress", "--threads", "1") == 0
    a, b = weights(straight), weights(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    for r1, r2 in zip(ckpt.read_metrics(straight), ckpt.read_metrics(resumed), strict=True):
        assert r1["test_accuracy"] == r2["test_accuracy"]
    # A folder whose files changed since the run started would not give the same order: refused.
    capsys.readouterr()
    assert run_cli("train", "--resume", straight, "--steps", "20", "--no-progress", "--threads", "1") == 0
    (root / "square" / "0002.bmp").unlink()
    line = cli_error(capsys, "train", "--resume", straight, "--steps", "24")
    assert line.startswith(f"ctm train: error: the files in folder dataset {root} changed since the run started")
    assert line.endswith("restore them to resume")


def test_bad_folders_get_one_line_each(tmp_path, capsys):
    def error(path: Path, *flags) -> str:
        return cli_error(capsys, "train", "--dataset", f"folder:{path}", "--out", tmp_path / "run", *flags)

    prefix = "ctm train: error: "
    assert error(tmp_path / "nope") == f"{prefix}folder dataset {tmp_path / 'nope'} does not exist"
    (tmp_path / "file.png").write_bytes(b"x")
    assert error(tmp_path / "file.png") == (f"{prefix}folder dataset {tmp_path / 'file.png'} is a file; give a "
                                            f"folder with one subfolder per class")
    one = make_shapes(tmp_path / "one", n=3, shapes=("circle",))
    assert error(one) == (f"{prefix}folder dataset {one} has 1 class folder(s) (only 'circle'); a classifier needs at "
                          f"least 2: one subfolder per class of PNG/JPEG/BMP files")
    (tmp_path / "none").mkdir()
    assert "has 0 class folder(s) (none)" in error(tmp_path / "none")

    empty = make_shapes(tmp_path / "empty", n=3, shapes=("circle", "square"))
    (empty / "triangle").mkdir()
    (empty / "triangle" / "notes.txt").write_text("hi")
    assert error(empty) == (f"{prefix}class folder {empty / 'triangle'} holds no PNG/JPEG/BMP files; add images "
                            f"or remove the folder")

    corrupt = make_shapes(tmp_path / "corrupt", n=6)
    (corrupt / "square" / "bad.png").write_bytes(b"this is not a PNG")
    line = error(corrupt)
    assert line.startswith(f"{prefix}{corrupt / 'square' / 'bad.png'}: not a readable image (")
    assert line.endswith("; fix or remove the file")
    truncated = make_shapes(tmp_path / "truncated", n=6)
    whole = (truncated / "circle" / "0000.png").read_bytes()
    (truncated / "circle" / "0000.png").write_bytes(whole[: len(whole) // 2])
    assert error(truncated).startswith(f"{prefix}{truncated / 'circle' / '0000.png'}: not a readable image (")

    half = tmp_path / "half"
    make_shapes(half / "train", n=3)
    assert error(half) == (f"{prefix}folder dataset {half} has train/ but no test/ folder; add {half / 'test'} with "
                           f"the same class folders, or put the class folders directly in {half} to hold out a "
                           f"fraction for testing")
    differ = tmp_path / "differ"
    make_shapes(differ / "train", n=3)
    make_shapes(differ / "test", n=3, shapes=("circle", "square", "star"))
    assert error(differ) == (f"{prefix}folder dataset {differ}: train/ and test/ have different class folders "
                             f"(only in train/: triangle; only in test/: star); give both the same classes")
    single = make_shapes(tmp_path / "single", n=1)
    assert error(single) == (f"{prefix}class folder {single / 'circle'} has 1 image: too few to hold out a test "
                             f"image; add images, or use train/ and test/ folders")

    good = make_shapes(tmp_path / "good", n=6)
    assert error(good, "--holdout", "1") == (f"{prefix}--holdout is the fraction of each class held out for "
                                             f"testing, between 0 and 1 (e.g. 0.1), got 1.0")
    assert error(good, "--image-size", "12by12") == (f"{prefix}--image-size must be HxW or N in pixels (1 to "
                                                     f"4096), e.g. 32x32 or 32, got '12by12'")
    assert error(good, "--data-dir", tmp_path) == (f"{prefix}--data-dir is for the IDX datasets; a folder dataset "
                                                   f"is read from its own path ({good})")
    assert cli_error(capsys, "train", "--image-size", "32", "--out", tmp_path / "run") == (
        f"{prefix}--image-size applies to folder datasets (folder:PATH); mnist keeps its own size")
    assert not (tmp_path / "run").exists()


def test_large_folders_show_a_progress_bar(tmp_path, monkeypatch, capsys):
    root = make_shapes(tmp_path / "shapes", n=10)
    monkeypatch.setattr(folders, "PROGRESS_MIN_FILES", 5)
    load_dataset(f"folder:{root}", "train", progress=True)
    err = capsys.readouterr().err
    assert "reading image headers" in err and "decoding train images" in err and "/27" in err
    load_dataset(f"folder:{root}", "train")
    assert capsys.readouterr().err == ""


def test_recorded_spec_round_trips_and_bad_records_are_named(tmp_path):
    root = make_shapes(tmp_path / "shapes", n=10)
    spec, _ = folders.resolve_folder(root)
    assert folders.FolderSpec.from_record(json.loads(json.dumps(spec.to_record()))) == spec
    with pytest.raises(DataError, match=r"'dataset.mode' must be 'L' or 'RGB', got 'CMYK'"):
        folders.FolderSpec.from_record({**spec.to_record(), "mode": "CMYK"})
    with pytest.raises(DataError, match=r"'dataset.image_size' must be \[H, W\]"):
        folders.FolderSpec.from_record({**spec.to_record(), "image_size": [16]})
