"""Shared test helpers: a tiny CTM configuration and a synthetic MNIST-shaped dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import ctm
from ctm.idx import write_idx

TINY_FLAGS = ["--ticks", "4", "--d-model", "24", "--d-input", "16", "--memory-length", "4", "--n-synch-out", "8",
              "--n-synch-action", "8", "--memory-hidden-dims", "4"]
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
