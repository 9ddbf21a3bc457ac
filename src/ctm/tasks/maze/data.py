"""Maze data sets: generated from (stream, index), or read from a folder of official-format pictures.

Both give batches (x (b, 3, H, W) float in [-1, 1], the route whitened; targets (b, L) int64, the moves padded
with waits), as `ctm.tasks.maze.mazes` defines them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...data.sampling import mix_seed
from .mazes import MazeError, generate, pad_route, read_route, solve, to_input

#: the largest picture side a maze file may have (pixels), and the largest file read
MAX_SIDE = 1024
MAX_FILE_BYTES = 16 * 2**20


def sample_seed(stream: int, index: int, test: bool) -> int:
    """The seed of maze `index` of a stream: training seeds are even, test seeds odd."""
    return (mix_seed(stream, index) & ~1) | int(test)


def generated_batch(stream: int, indices: Tensor, cells: int, route_length: int, test: bool = False) \
        -> tuple[Tensor, Tensor]:
    """The mazes at `indices` of a stream: (inputs (b, 3, 2n+1, 2n+1), targets (b, L))."""
    xs, ys = [], []
    for k in indices.tolist():
        maze = generate(cells, sample_seed(stream, k, test))
        xs.append(to_input(maze))
        ys.append(pad_route(solve(maze), route_length))
    side = 2 * cells + 1
    x = torch.stack(xs) if xs else torch.empty(0, 3, side, side)
    return x, torch.tensor(ys, dtype=torch.long).reshape(len(ys), route_length)


class GeneratedMazes:
    """A stream of generated mazes of cells x cells (`batch(idx)` as `generated_batch`); the test set keeps its
    `n` mazes in memory once drawn."""

    def __init__(self, cells: int, route_length: int, n: int, stream: int, split: str,
                 device: torch.device | str = "cpu") -> None:
        self.cells, self.route_length, self.n, self.stream, self.split = cells, route_length, n, stream, split
        self.device = torch.device(device)
        self.name, self.source = "maze", "generated"
        self._held: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"GeneratedMazes(cells={self.cells}, route_length={self.route_length}, n={self.n}, split={self.split!r})"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, 2 * self.cells + 1, 2 * self.cells + 1)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.cpu()
        if self.split == "test":
            if self._held is None:
                self._held = generated_batch(self.stream, torch.arange(self.n), self.cells, self.route_length, True)
            x, y = self._held[0][idx], self._held[1][idx]
        else:
            x, y = generated_batch(self.stream, idx, self.cells, self.route_length)
        return x.to(self.device), y.to(self.device)

    def to(self, device: torch.device | str) -> GeneratedMazes:
        moved = GeneratedMazes(self.cells, self.route_length, self.n, self.stream, self.split, device)
        moved._held = self._held
        return moved


def list_pngs(root: Path) -> list[Path]:
    """Every .png file under `root` (recursively, in sorted order), never following a link out of it."""
    root = Path(root)
    if not root.is_dir():
        raise MazeError(f"maze folder {root} does not exist or is not a folder")
    found = []
    for folder, dirs, files in os.walk(root):  # os.walk does not descend into linked folders
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if name.lower().endswith(".png") and not path.is_symlink() and path.is_file():
                found.append(path)
    if not found:
        raise MazeError(f"maze folder {root} holds no .png files")
    return found


def read_picture(path: Path) -> np.ndarray:
    """A maze file as (H, W, 3) bytes (alpha dropped); MazeError naming the file when it is not a readable
    picture of at most MAX_SIDE pixels a side."""
    from ...data.folders import _require_pillow

    Image = _require_pillow()
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise MazeError(f"{path}: {size:,} bytes is too large for a maze picture")
    try:
        with Image.open(path) as image:
            if max(image.size) > MAX_SIDE:
                raise MazeError(f"{path}: {image.size[0]}x{image.size[1]} pixels is larger than a maze picture may "
                                f"be ({MAX_SIDE} a side)")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except MazeError:
        raise
    except Exception as e:  # Pillow raises many kinds on a broken file
        raise MazeError(f"{path}: not a readable picture ({e})") from None


class MazeImages:
    """Maze pictures in the official format, read once: inputs with the route whitened and its moves as targets
    (`read_route`), cut or padded to `route_length`. Every picture must have the same size."""

    def __init__(self, files: list[Path], route_length: int, split: str, source: str,
                 device: torch.device | str = "cpu", progress: bool = False) -> None:
        self.files, self.route_length, self.split, self.source = list(files), route_length, split, source
        self.name, self.device = "maze", torch.device(device)
        xs, ys = [], []
        bar = None
        if progress and len(files) > 200:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(files), desc="reading mazes", unit="maze", leave=False)
        for path in files:
            try:
                maze, moves = read_route(read_picture(path))
            except MazeError as e:
                raise MazeError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
            x = to_input(maze)
            if xs and x.shape != xs[0].shape:
                raise MazeError(f"{path}: {x.shape[1]}x{x.shape[2]} pixels, but {files[0]} is "
                                f"{xs[0].shape[1]}x{xs[0].shape[2]}; the mazes of one data set have one size")
            xs.append(x)
            ys.append(pad_route(moves, route_length))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        self.x = torch.stack(xs)
        self.y = torch.tensor(ys, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return f"MazeImages({len(self)} mazes of {tuple(self.shape[1:])} from {self.source}, split={self.split!r})"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def cells(self) -> int:
        return (self.x.shape[-1] - 1) // 2

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.cpu()
        return self.x[idx].to(self.device), self.y[idx].to(self.device)

    def to(self, device: torch.device | str) -> MazeImages:
        moved = object.__new__(MazeImages)
        moved.__dict__.update(self.__dict__)
        moved.device = torch.device(device)
        return moved
