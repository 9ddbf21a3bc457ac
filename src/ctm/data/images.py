"""Image data in memory: the labelled dataset and augmentation (sampling: `ctm.data.sampling`).

`load_dataset` finds a dataset's IDX files (see `ctm.datasets` for where it looks and the verified
download), or the images of a folder (``folder:PATH``, see `ctm.folders`), and holds one split as two
tensors. The module is quiet: it never prints; every problem with data files is a `DataError` (a
`ValueError`) whose message names the file or folder and what is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .folders import FolderSpec, folder_path, load_folder, resolve_folder, scan_folder
from .idx import DataError, idx_shape, read_idx
from .sampling import EpochSampler
from .sources import DOWNLOAD_TIMEOUT_S, dataset_spec, locate_dataset, verify_dataset

__all__ = ["DataError", "EpochSampler", "ImageDataset", "load_dataset", "load_splits", "random_affine"]


# ----------------------------------------------------------------------------------------------------------
# In-memory dataset
# ----------------------------------------------------------------------------------------------------------


class ImageDataset:
    """A labelled image set held as two tensors: `images` uint8 (N, C, H, W) and `labels` int64 (N,).

    `batch(idx)` converts only the selected rows to float in [0, 1] (images / 255, nothing else).
    Indexing one sample (``ds[i]``) gives the same for a single image, like a TensorDataset.
    `class_names` names the labels (empty: unnamed); `record` is what a run keeps of where the images came
    from beyond the dataset's name (a folder's `FolderSpec.to_record()`; empty for the IDX datasets).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        name: str = "",
        split: str = "",
        source: str = "",
        class_names: Sequence[str] = (),
        record: dict | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"{source or name}: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataError(f"{source or name}: labels must be int64 (N,), got {labels.dtype} {tuple(labels.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{source or name}: {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataError(
                f"{source or name}: labels must lie in [0, {num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        self.images = images  # (N, C, H, W) uint8
        self.labels = labels  # (N,) int64
        self.num_classes = num_classes
        self.name = name
        self.split = split
        self.source = source
        self.class_names = tuple(class_names)
        self.record = dict(record or {})
        if self.class_names and len(self.class_names) != num_classes:
            raise DataError(f"{source or name}: {len(self.class_names)} class names for {num_classes} classes")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].float().div_(255.0), self.labels[i]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, num_classes={self.num_classes}, source={self.source!r})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (b, C, H, W) float in [0, 1] and labels (b,) int64 for index tensor `idx` (b,)."""
        idx = idx.to(self.images.device)
        return self.images[idx].float().div_(255.0), self.labels[idx]

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with both tensors on `device` (e.g. keep all of MNIST on the GPU)."""
        return ImageDataset(
            self.images.to(device), self.labels.to(device), self.num_classes, self.name, self.split, self.source,
            self.class_names, self.record,
        )


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    mirrors: Sequence[str] | None = None,
    verify: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    recorded: dict | None = None,
    image_size: tuple[int, int] | None = None,
    holdout: float = 0.1,
    progress: bool = False,
) -> ImageDataset:
    """Load split ``'train'`` or ``'test'`` of dataset `name` ('mnist', 'fashion-mnist', 'folder:PATH') into memory.

    IDX files are looked up as described in the module docstring and downloaded when absent (unless
    `download` is False or `data_dir` is given). Downloads are always MD5-checked; files found locally
    are checked only with `verify=True`.

    A folder is read as `recorded` describes it (a run's config.json 'dataset' section: its size, mode, class
    names and held-out files), else with `image_size` (default: the most common) and `holdout`
    (see `ctm.folders`); `progress` shows a bar on large folders.
    """
    if folder_path(name) is not None:
        return load_splits(name, (split,), data_dir, recorded=recorded, image_size=image_size, holdout=holdout,
                           progress=progress)[0]
    spec = dataset_spec(name)
    if split not in spec.splits:
        raise DataError(f"unknown split {split!r} for dataset {name!r}; expected one of {', '.join(spec.splits)}")
    img_name, lbl_name = spec.splits[split]
    paths = locate_dataset(name, data_dir, download, mirrors, timeout, files=(img_name, lbl_name))
    img_path, lbl_path = paths[img_name], paths[lbl_name]
    if verify:
        verify_dataset(name, {img_name: img_path, lbl_name: lbl_path})
    # Both headers are checked against each other before any data is read: a file declaring more than the
    # other agrees to is refused, not inflated.
    dims = idx_shape(img_path)
    if len(dims) != 3:
        raise DataError(f"{img_path}: expected images of shape (N, H, W), got {dims}")
    n_labels = idx_shape(lbl_path)
    if len(n_labels) != 1:
        raise DataError(f"{lbl_path}: expected labels of shape (N,), got {n_labels}")
    if dims[0] != n_labels[0]:
        raise DataError(
            f"image/label count mismatch: {img_path} has {dims[0]} images but {lbl_path} has {n_labels[0]} labels"
        )
    images = read_idx(img_path, shape=dims)  # (N, H, W)
    labels = read_idx(lbl_path, shape=n_labels)  # (N,)
    if labels.size and int(labels.max()) >= spec.num_classes:
        raise DataError(
            f"{lbl_path}: label {int(labels.max())} out of range for {spec.num_classes} classes of {name!r}"
        )
    return ImageDataset(
        torch.from_numpy(images).unsqueeze(1),  # (N, 1, H, W) uint8
        torch.from_numpy(labels).long(),  # (N,) int64
        spec.num_classes,
        name=name,
        split=split,
        source=str(img_path.parent),
        class_names=spec.class_names,
    )


def load_splits(name: str, splits: Sequence[str] = ("train", "test"), data_dir: str | os.PathLike[str] | None = None,
                *, recorded: dict | None = None, image_size: tuple[int, int] | None = None, holdout: float = 0.1,
                check_files: bool = False, progress: bool = False) -> list[ImageDataset]:
    """The `splits` of dataset `name`, each file read once; for a folder, one scan serves every split and
    `check_files` refuses a file list other than the recorded one (resume). See `load_dataset`."""
    root = folder_path(name)
    if root is None:
        return [load_dataset(name, s, data_dir=data_dir) for s in splits]
    if data_dir is not None:
        raise DataError(f"--data-dir is for the IDX datasets; a folder dataset is read from its own path ({root})")
    if recorded and recorded.get("kind") == "folder":
        spec = FolderSpec.from_record(recorded)
        scan = scan_folder(root)
        spec = dataclasses.replace(spec, path=str(scan.root))
    else:
        spec, scan = resolve_folder(root, image_size, holdout, progress=progress)
    out = []
    for split in splits:
        images, labels = load_folder(spec, split, scan, check_files=check_files, progress=progress)
        # The record names the files read (this scan's files_sha1), to compare with a run's.
        record = {**spec.to_record(), "files_sha1": scan.fingerprint()}
        out.append(ImageDataset(images, labels, len(spec.class_names), name=f"folder:{spec.path}", split=split,
                                source=spec.path, class_names=spec.class_names, record=record))
    return out


# ----------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    max_rotation_deg: float = 10.0,
    max_translate: float = 2.0 / 28.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """Rotate, scale and shift each image of a float batch (B, C, H, W) by its own random amount.

    Per sample: rotation uniform in ±max_rotation_deg degrees, translation uniform in ±max_translate
    as a fraction of the width/height (default 2 px of 28), scale uniform in scale_range; areas moved
    in from outside the image are zero. Randomness comes only from `generator` (drawn on its device),
    so a seeded generator gives the same result. Zero ranges (and scale (1, 1)) leave images unchanged.
    """
    if images.dim() != 4:
        raise ValueError(f"random_affine expects images of shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"random_affine expects a float batch, got {images.dtype}; convert with batch() first")
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    if max_rotation_deg < 0 or max_translate < 0:
        raise ValueError("max_rotation_deg and max_translate must be >= 0")
    b, _, h, w = images.shape
    u = torch.rand(b, 4, generator=generator, device=generator.device, dtype=torch.float64)  # (B, 4)
    u = u.to(images.device)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_rotation_deg)  # (B,)
    tx = (u[:, 1] * 2 - 1) * max_translate  # (B,) fraction of width
    ty = (u[:, 2] * 2 - 1) * max_translate  # (B,) fraction of height
    scale = lo + u[:, 3] * (hi - lo)  # (B,)

    # affine_grid maps output coordinates to where to sample the input, so build the inverse of
    # "scale, rotate, then shift". In pixel units the inverse linear part is R(-angle) / scale; in
    # normalised [-1, 1] units (x by W/2, y by H/2) the off-diagonal terms pick up the aspect ratio.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    a00, a01 = cos, sin * (h / w)
    a10, a11 = -sin * (w / h), cos
    sx, sy = 2 * tx, 2 * ty  # shift in normalised units (the image spans 2)
    theta = torch.stack(
        [
            torch.stack([a00, a01, -(a00 * sx + a01 * sy)], dim=1),
            torch.stack([a10, a11, -(a10 * sx + a11 * sy)], dim=1),
        ],
        dim=1,
    ).to(images.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
