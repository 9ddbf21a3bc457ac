"""Using a trained run from Python (`ctm.load_run`, `ctm.predict`) and `ctm predict` on image files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, make_synthetic

import ctm
from ctm.cli import main
from ctm.data.images import load_dataset
from ctm.training import loop as tr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    data = make_synthetic(tmp_path_factory.mktemp("synthetic"))
    run = tmp_path_factory.mktemp("runs") / "run"
    cfg = tr.TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=150, tick_loss_weight=0)
    tr.train(run, TINY, cfg, data_dir=str(data))
    return run, data


def test_load_run_gives_the_model_its_configs_and_data(trained):
    run_dir, data = trained
    run = ctm.load_run(run_dir)
    assert not run.model.training and run.config == run.model.config and run.config.d_model == TINY.d_model
    assert run.train_config.steps == 150 and run.train_config.lr == 3e-3
    assert run.data.name == "mnist" and run.data.shape == (1, 12, 12)
    assert run.data.class_names == tuple(str(i) for i in range(10))
    assert run.data.data_dir == str(Path(data).resolve()) and run.path == run_dir


def test_predict_on_tensors_equals_the_forward_at_the_most_certain_tick(trained):
    run_dir, data = trained
    run = ctm.load_run(run_dir)
    test = load_dataset("mnist", "test", data_dir=str(data))
    x, y = test.batch(torch.arange(40))
    preds = ctm.predict(run, x)
    with torch.no_grad():
        out = run.model(x)
    tick = out.certainties[:, 1].argmax(-1)
    expected = out.predictions[torch.arange(40), :, tick].argmax(-1)
    assert [p.label for p in preds] == expected.tolist()
    assert [p.tick for p in preds] == (tick + 1).tolist()
    assert all(0 < p.probability <= 1 and 0 <= p.certainty <= 1 and p.class_name == str(p.label) for p in preds)
    assert np.mean([p.label == t for p, t in zip(preds, y.tolist(), strict=True)]) >= 0.9
    halted = ctm.predict(run, x, halt_certainty=0.0)  # every sample answers at tick 1
    assert {p.tick for p in halted} == {1}
    assert [p.label for p in halted] == out.predictions[:, :, 0].argmax(-1).tolist()


def test_predict_on_files_arrays_and_pil_images_of_other_sizes(trained, tmp_path):
    from PIL import Image

    run_dir, data = trained
    run = ctm.load_run(run_dir)
    test = load_dataset("mnist", "test", data_dir=str(data))
    images = test.images[:20, 0].numpy()  # (20, 12, 12) uint8
    labels = test.labels[:20].tolist()
    direct = [p.label for p in ctm.predict(run, torch.from_numpy(images).float().div(255).unsqueeze(1))]
    paths = []
    for i, im in enumerate(images):  # 3x larger, RGB: converted back to 12x12 greyscale
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.repeat(np.kron(im, np.ones((3, 3), np.uint8))[..., None], 3, -1)).save(path)
        paths.append(path)
    from_files = [p.label for p in ctm.predict(run, paths)]
    assert np.mean([a == b for a, b in zip(from_files, direct, strict=True)]) >= 0.9
    assert np.mean([a == b for a, b in zip(from_files, labels, strict=True)]) >= 0.85
    assert [p.label for p in ctm.predict(run, list(images))] == direct  # uint8 arrays at the right size
    assert [p.label for p in ctm.predict(run, [Image.fromarray(im) for im in images])] == direct
    assert ctm.predict(run, images[0])[0].label == direct[0]  # one image alone


def test_predict_bad_inputs_say_what_is_wrong(trained, tmp_path):
    run = ctm.load_run(trained[0])
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(ValueError, match="notes.png: not a readable image"):
        ctm.predict(run, [not_image])
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        ctm.predict(run, np.full((12, 12), 3.0, np.float32))
    with pytest.raises(ValueError, match="shape"):
        ctm.predict(run, np.zeros((4, 5, 1, 1), np.uint8))
    with pytest.raises(TypeError, match="image path, PIL image"):
        ctm.predict(run, [42])
    with pytest.raises(ValueError, match="needs the input size"):
        ctm.predict(run.model, np.zeros((12, 12), np.uint8))


def test_ctm_predict_command(trained, tmp_path, capsys):
    from PIL import Image

    run_dir, data = trained
    test = load_dataset("mnist", "test", data_dir=str(data))
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(paths[-1])
    assert main(["predict", str(run_dir), *map(str, paths), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in paths]
    assert [r["label"] for r in rows] == [p.label for p in ctm.predict(ctm.load_run(run_dir), paths)]
    assert {"class_name", "probability", "tick", "certainty"} <= set(rows[0])
    assert main(["predict", str(run_dir), str(paths[0]), "--halt-certainty", "0"]) == 0
    out = capsys.readouterr().out
    assert str(paths[0]) in out and "tick 1" in out
    assert main(["predict", str(run_dir), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(paths[0]), "--halt-certainty", "80"]) == 2
    assert "a fraction" in capsys.readouterr().err


def test_viz_without_matplotlib_is_one_line_naming_the_extra(trained, monkeypatch, capsys):
    from ctm.pictures import figures as viz

    def missing():
        raise ImportError("ctm.pictures.figures needs matplotlib: pip install 'torch-ctm[viz]'")

    monkeypatch.setattr(viz, "_require_matplotlib", missing)
    run_dir, data = trained
    assert main(["viz", str(run_dir), "--out", str(run_dir.parent / "x.gif")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["ctm viz: error: ctm.pictures.figures needs matplotlib: pip install 'torch-ctm[viz]'"]


def _bundled_run(folder: Path) -> Path:
    """A run directory holding the bundled MNIST model (28x28 greyscale): predict needs no training or data."""
    from ctm.runs.checkpoint import save_weights, write_config

    model = ctm.load_pretrained("mnist")
    write_config(folder, model.config, {"dataset": {"name": "mnist", "shape": [1, 28, 28]}})
    save_weights(folder, model, step=0)
    return folder


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG file whose header says `width` x `height` greyscale and whose data is a few bytes: what a
    decompression bomb shows before it is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _peak_rss_mb(*argv) -> float:
    """Peak RSS (MiB) of a fresh Python process running `ctm` with `argv` (which must succeed)."""
    import subprocess
    import sys

    code = ("import resource, sys; from ctm.cli import main; code = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.splitlines()[-1]) / 1024  # Linux reports KiB


def test_predict_on_a_large_image_holds_the_8bit_image_not_a_float_copy(tmp_path):
    from PIL import Image

    run = _bundled_run(tmp_path / "run")
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("L", (28, 28)).save(small)
    im = Image.new("L", (8000, 8000))  # 64 MB decoded, a few KB on disk
    im.paste(255, (3000, 1000, 5000, 7000))
    im.save(large)
    del im
    base = _peak_rss_mb("predict", run, small, "--threads", "1")
    big = _peak_rss_mb("predict", run, large, "--threads", "1")
    # The decoded image is 61 MiB; converting it to float at full size took 4-8 times that (643 MiB more).
    assert big - base < 3 * 8000 * 8000 / 2**20, (base, big)


def test_predict_refuses_an_image_too_large_to_decode_in_one_line(tmp_path, capsys):
    from PIL import Image

    run = _bundled_run(tmp_path / "run")
    limit = Image.MAX_IMAGE_PIXELS
    above = _png_header_only(tmp_path / "above.png", 10000, 10000)  # over the limit, under Pillow's error
    assert 10000 * 10000 > limit
    bomb = _png_header_only(tmp_path / "bomb.png", 60000, 60000)  # a decompression bomb for Pillow too
    for path, size in ((above, "10000x10000"), (bomb, "")):
        assert main(["predict", str(run), str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ctm predict: error: {path}: the image is too large"), err
        assert size in err[0] and f"at most {limit:,} pixels" in err[0]
        with pytest.raises(ValueError, match="too large to decode"):
            ctm.predict(ctm.load_run(run), [path])


def test_predict_refuses_nan_like_infinity(trained):
    run = ctm.load_run(trained[0])
    for bad in (np.nan, np.inf):
        image = np.full((12, 12), 0.5, np.float32)
        image[3, 4] = bad
        with pytest.raises(ValueError, match=r"values in \[0, 1\].*1 NaN or infinite"):
            ctm.predict(run, image)
        batch = torch.full((2, 1, 12, 12), 0.5)
        batch[1, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            ctm.predict(run, batch)


def test_predict_never_opens_a_fifo(trained, tmp_path, capsys):
    import os
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer for ever
    done = threading.Event()

    def unblock():  # a reader stuck on the FIFO gets end-of-file after a while: the test fails, it does not hang
        while not done.wait(10):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # nobody reading: as it should be

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    try:
        with pytest.raises(ValueError, match="pipe.png: not a regular file"):
            ctm.predict(ctm.load_run(trained[0]), [fifo])
        assert main(["predict", str(trained[0]), str(fifo)]) == 2
        assert capsys.readouterr().err.strip() == (f"ctm predict: error: {fifo}: not a regular file; give image files "
                                                   f"or folders of them")
    finally:
        done.set()
        watchdog.join()


def test_predict_takes_folders_and_globs_and_names_swapped_arguments(trained, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    run = str(trained[0])
    assert main(["predict", run, str(folder), "--json"]) == 0
    by_folder = [json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()]
    assert by_folder == [str(folder / f"{i}.png") for i in range(3)]  # sorted, the text file left out
    assert main(["predict", run, str(folder / "[01].png"), "--json"]) == 0  # a pattern the shell did not expand
    assert [json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()] == by_folder[:2]
    for argv, message in (([str(folder / "0.png"), run], "the run directory comes first, ctm predict RUN_DIR INPUT"),
                          ([run, str(folder / "9*.png")], "the pattern matches no file"),
                          ([run, str(tmp_path)], "a folder with no PNG/JPEG/BMP files in it")):
        assert main(["predict", *argv]) == 2
        assert message in capsys.readouterr().err
