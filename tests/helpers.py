"""Shared test helpers: a tiny CTM configuration, a synthetic MNIST-shaped dataset, a folder of drawn shapes, the
CLI run in-process (`run_cli`, `eval_json`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import ctm
from ctm.data.idx import write_idx

# TINY through `ctm train`: every field the default preset sets is given (so the run's model is TINY, the
# tutorial's architecture at tiny sizes), and no augmentation (as the tutorial's recipe).
TINY_FLAGS = ["--ticks", "4", "--d-model", "24", "--d-input", "16", "--memory-length", "4", "--n-synch-out", "8",
              "--n-synch-action", "8", "--memory-hidden-dims", "4", "--heads", "1", "--positional-embedding", "none",
              "--backbone", "tutorial", "--no-augment"]
TINY = ctm.CTMConfig(iterations=4, d_model=24, d_input=16, memory_length=4, n_synch_out=8, n_synch_action=8,
                     memory_hidden_dims=4)


def make_synthetic(folder: Path, n_train: int = 1200, n_test: int = 300, seed: int = 0) -> Path:
    """A 10-class task with MNIST's file names: class k is a bright 3x3 blob at spot k of a 12x12 image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 12, 12)).astype(np.uint8)
        for i, k in enumerate(labels):
            r, c = 1 + 4 * (k // 3) if k < 9 else 9, 1 + 4 * (k % 3) if k < 9 else 5
            images[i, r:r + 3, c:c + 3] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


SHAPES = ("circle", "square", "triangle")
KINDS = (".png", ".jpg", ".bmp")


def draw(shape: str, size: tuple[int, int], rng: np.random.Generator):
    """One shape (bright, random size and place) on a dark background, greyscale, `size` (H, W)."""
    from PIL import Image, ImageDraw

    h, w = size
    im = Image.new("L", (w, h), int(rng.integers(0, 40)))
    d = ImageDraw.Draw(im)
    r = min(h, w) * rng.uniform(0.22, 0.38)
    cx, cy = w / 2 + rng.uniform(-0.12, 0.12) * w, h / 2 + rng.uniform(-0.12, 0.12) * h
    fill = int(rng.integers(170, 256))
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def make_shapes(root: Path, n: int = 60, colour: bool = True, seed: int = 0, shapes=SHAPES) -> Path:
    """`root`/<shape>/NNNN.{png,jpg,bmp}: mostly 16x16 (every 4th 20x24), PNG/JPEG/BMP in turn; with `colour`
    every 5th is RGB (a tinted shape) and every 7th PNG a palette image, else all greyscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for shape in shapes:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = draw(shape, (16, 16) if i % 4 else (20, 24), rng)
            ext = KINDS[i % 3]
            if colour and i % 5 == 0:
                im = Image.merge("RGB", (im, im.point(lambda v: v * 0.8), im.point(lambda v: v * 0.5)))
            elif i % 7 == 0 and ext == ".png":
                im = im.convert("P") if colour else im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
            im.save(root / shape / f"{i:04d}{ext}")
    return root


def cli_error(capsys, *args) -> str:
    """The one line `ctm ARGS` prints when it refuses them with exit code 2 (and no traceback)."""
    from ctm.cli import main

    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def run_cli(*args) -> int:
    """`ctm` with these arguments, in this process: its exit code (argparse's refusals included)."""
    from ctm.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse's refusals
        return e.code


def eval_json(run: Path, *flags, capsys) -> dict:
    """`ctm eval RUN --json` (one thread, with `flags`): its JSON object."""
    import json

    capsys.readouterr()
    assert run_cli("eval", run, "--json", "--threads", "1", *flags) == 0
    return json.loads(capsys.readouterr().out)
