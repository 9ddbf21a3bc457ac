"""Your own images as a dataset: a folder with one subfolder per class of PNG, JPEG or BMP files.

Two layouts (``ctm train --dataset folder:PATH``)::

    PATH/train/<class>/*.png  and  PATH/test/<class>/*.png    split folders, the same classes in both
    PATH/<class>/*.png                                         a fixed-seed fraction of each class held out

Class names are the subfolder names, sorted; label i is the i-th name. Files are listed recursively inside a
class folder, in sorted order; other files (by extension) are skipped and counted, and so are FIFOs, sockets
and devices (never opened: reading one would block or never end). The whole folder becomes one
mode: greyscale ("L", 1 channel) when every file is greyscale (a palette of greys counts), else RGB
(3 channels); transparent pixels become black, as the zero padding of augmentation. Every image is resized
(bilinear) to one size, by default the most common size among the files, decoded once and kept as uint8
(N, C, H, W); batches are images / 255, like the IDX datasets.

A `FolderSpec` records all of this (path, layout, class names, mode, size, held-out fraction and its seed,
a fingerprint of the file list), so a run reloads the same images in the same order from its config.json.
Pillow is needed (the ``viz`` extra). Every problem is a `DataError` naming the file or folder.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .idx import DataError

__all__ = ["FOLDER_PREFIX", "FolderScan", "FolderSpec", "folder_path", "load_folder", "parse_image_size",
           "resolve_folder", "scan_folder", "split_size"]

FOLDER_PREFIX = "folder:"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_DIRS = ("train", "test")
HOLDOUT_SEED = 0  # the held-out files depend on this seed only (not on the training seed)
PROGRESS_MIN_FILES = 2000  # folders with more files than this show a progress bar while loading
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_KINDS = "PNG/JPEG/BMP"


def folder_path(name: str) -> Path | None:
    """The folder of dataset name ``folder:PATH``, or None for any other name."""
    if not name.startswith(FOLDER_PREFIX):
        return None
    text = name[len(FOLDER_PREFIX):]
    if not text:
        raise DataError("folder: needs a path, e.g. --dataset folder:~/pictures/shapes")
    return Path(text).expanduser()


def parse_image_size(text: str) -> tuple[int, int] | None:
    """``"HxW"`` or ``"N"`` (square) -> (H, W); ``""`` -> None (the most common size). ValueError otherwise."""
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
        h, w = (int(parts[0]), int(parts[-1]))
        if 1 <= h <= 4096 and 1 <= w <= 4096:
            return h, w
    raise ValueError(f"TrainConfig.image_size must be HxW or N in pixels (1 to 4096), e.g. 32x32 or 32, "
                     f"got {text!r}")


def _require_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("folder datasets read images with Pillow: pip install 'torch-ctm[viz]' (or pillow)") from None
    return Image


# ----------------------------------------------------------------------------------------------------------
# Listing the files
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderScan:
    """The image files of a folder dataset, by split: `files[split]` lists (path, label) in load order.

    In the held-out layout `files` has one entry, ``"all"``; `FolderSpec.split_files` divides it.
    """

    root: Path
    layout: str  # "split" or "holdout"
    class_names: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]
    skipped: int  # files without a PNG/JPEG/BMP extension
    special: int = 0  # FIFOs, sockets, devices (or links to them): never opened

    def fingerprint(self) -> str:
        """SHA-1 of every file's path (relative to the root) and label, in order: the same list, the same value."""
        h = hashlib.sha1()
        for group in sorted(self.files):
            for path, label in self.files[group]:
                h.update(f"{group}\0{path.relative_to(self.root).as_posix()}\0{label}\n".encode())
        return h.hexdigest()


def _class_dirs(where: Path) -> list[Path]:
    return sorted((p for p in where.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def shown_path(path: Path) -> str:
    """`path` as text that prints anywhere: bytes that are not UTF-8 shown as escapes (\\xff)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_name(path: Path, what: str) -> None:
    """A path that is not UTF-8 cannot be recorded in the run (the file list's fingerprint, the class names)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{shown_path(path)}: the {what}'s path is not valid UTF-8; rename it (a run records "
                        f"its data's names as UTF-8)") from None


def _list_class(folder: Path, label: int) -> tuple[list[tuple[Path, int]], int, int]:
    """The image files under `folder` (label `label`), the other files and the special files (not opened)."""
    found, skipped, special = [], 0, 0
    for p in sorted(folder.rglob("*")):
        if p.is_dir() or any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]):
            continue
        if not p.is_file():  # a FIFO, socket or device (or a link to one, or a broken link)
            special += 1
        elif p.suffix.lower() in EXTENSIONS and not p.name.startswith("."):
            _check_name(p, "file")
            found.append((p, label))
        else:
            skipped += 1
    if not found:
        raise DataError(f"class folder {folder} holds no {_KINDS} files; add images or remove the folder")
    return found, skipped, special


def scan_folder(path: str | os.PathLike[str]) -> FolderScan:
    """List the classes and image files under `path` (either layout); `DataError` naming what is wrong."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"folder dataset {root} does not exist")
    if not root.is_dir():
        raise DataError(f"folder dataset {root} is a file; give a folder with one subfolder per class")
    root = root.resolve()
    present = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if present and len(present) < len(SPLIT_DIRS):
        missing = next(s for s in SPLIT_DIRS if s not in present)
        raise DataError(f"folder dataset {root} has {present[0]}/ but no {missing}/ folder; add {root / missing} "
                        f"with the same class folders, or put the class folders directly in {root} to hold out "
                        f"a fraction for testing")
    skipped = sum(1 for p in root.iterdir() if p.is_file())  # stray files beside the class or split folders
    if present:
        dirs = {s: _class_dirs(root / s) for s in SPLIT_DIRS}
        names = {s: [d.name for d in dirs[s]] for s in SPLIT_DIRS}
        if names["train"] != names["test"]:
            only = [f"only in {s}/: {', '.join(sorted(set(names[s]) - set(names[o])))}"
                    for s, o in (("train", "test"), ("test", "train")) if set(names[s]) - set(names[o])]
            raise DataError(f"folder dataset {root}: train/ and test/ have different class folders ("
                            f"{'; '.join(only)}); give both the same classes")
        class_names = tuple(names["train"])
        groups = {s: dirs[s] for s in SPLIT_DIRS}
        skipped += sum(1 for s in SPLIT_DIRS for p in (root / s).iterdir() if p.is_file())
    else:
        class_dirs = _class_dirs(root)
        class_names = tuple(d.name for d in class_dirs)
        groups = {"all": class_dirs}
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise DataError(f"folder dataset {root} has {len(class_names)} class folder(s) ({found}); a classifier "
                        f"needs at least 2: one subfolder per class of {_KINDS} files")
    files: dict[str, list[tuple[Path, int]]] = {}
    special = 0
    for group, class_dirs in groups.items():
        files[group] = []
        for label, d in enumerate(class_dirs):
            _check_name(d, "class folder")
            found, n, n_special = _list_class(d, label)
            files[group].extend(found)
            skipped += n
            special += n_special
    return FolderScan(root, "split" if present else "holdout", class_names, files, skipped, special)


# ----------------------------------------------------------------------------------------------------------
# What the dataset is: recorded in the run
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderSpec:
    """How a folder becomes a dataset. `to_record` is what a run's config.json keeps (its 'dataset' section);
    `from_record` reads it back, so evaluation and resume need no flags."""

    path: str  # absolute
    layout: str  # "split" (train/ and test/ folders) or "holdout"
    class_names: tuple[str, ...]
    mode: str  # "L" (1 channel) or "RGB" (3)
    image_size: tuple[int, int]  # (H, W)
    holdout: float | None = None  # fraction of each class held out for testing (layout "holdout")
    holdout_seed: int | None = None
    fingerprint: str = ""  # FolderScan.fingerprint() of the files it was made from
    skipped: int = 0
    special: int = 0

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def to_record(self) -> dict[str, Any]:
        return {"kind": "folder", "path": self.path, "layout": self.layout, "class_names": list(self.class_names),
                "mode": self.mode, "image_size": list(self.image_size), "holdout": self.holdout,
                "holdout_seed": self.holdout_seed, "files_sha1": self.fingerprint, "skipped": self.skipped,
                "special": self.special}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str = "the run's config.json") -> FolderSpec:
        """The spec a run recorded; `DataError` naming `where` when a field is missing or of the wrong kind."""
        def bad(field: str, what: str) -> DataError:
            return DataError(f"{where}: 'dataset.{field}' must be {what}, got {record.get(field)!r}")

        path, layout, names = record.get("path"), record.get("layout"), record.get("class_names")
        size, mode, holdout, seed = (record.get("image_size"), record.get("mode"), record.get("holdout"),
                                     record.get("holdout_seed"))
        if not isinstance(path, str) or not path:
            raise bad("path", "the folder's path")
        if layout not in ("split", "holdout"):
            raise bad("layout", "'split' or 'holdout'")
        if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
            raise bad("class_names", "a list of at least 2 names")
        if mode not in ("L", "RGB"):
            raise bad("mode", "'L' or 'RGB'")
        if not (isinstance(size, list) and len(size) == 2 and all(type(n) is int and n > 0 for n in size)):
            raise bad("image_size", "[H, W]")
        if layout == "holdout":
            if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
                raise bad("holdout", "a fraction between 0 and 1")
            if type(seed) is not int or seed < 0:
                raise bad("holdout_seed", "a non-negative integer")
        fingerprint = record.get("files_sha1", "")
        return cls(path, layout, tuple(names), mode, (size[0], size[1]), holdout, seed,
                   fingerprint if isinstance(fingerprint, str) else "", _count(record.get("skipped")),
                   _count(record.get("special")))

    def split_files(self, scan: FolderScan, split: str) -> list[tuple[Path, int]]:
        """The (path, label) pairs of `split` ('train' or 'test') in `scan`, in load order.

        Held out: in each class, round(holdout x n) files (at least 1, at most n - 1) chosen by a permutation
        seeded from (holdout_seed, label) are the test split, the rest the train split.
        """
        if split not in SPLIT_DIRS:
            raise DataError(f"unknown split {split!r} for a folder dataset; expected train or test")
        if scan.layout == "split":
            return scan.files[split]
        from .sampling import mix_seed

        by_class: dict[int, list[tuple[Path, int]]] = {}
        for item in scan.files["all"]:
            by_class.setdefault(item[1], []).append(item)
        chosen = []
        for label, items in sorted(by_class.items()):
            if len(items) < 2:
                raise DataError(f"class folder {items[0][0].parent} has 1 image: too few to hold out a test image; "
                                f"add images, or use train/ and test/ folders")
            n_test = min(len(items) - 1, max(1, round(self.holdout * len(items))))
            g = torch.Generator().manual_seed(mix_seed(self.holdout_seed, label))
            test = set(torch.randperm(len(items), generator=g)[:n_test].tolist())
            chosen.extend(item for i, item in enumerate(items) if (i in test) == (split == "test"))
        return chosen


def _count(value: Any) -> int:
    """A recorded count of skipped files: a non-negative integer, else 0 (it is only shown)."""
    return value if type(value) is int and value >= 0 else 0


def split_size(path: str | os.PathLike[str], split: str, holdout: float = 0.1) -> int:
    """How many images `split` of the folder at `path` has (listing files only, decoding none)."""
    scan = scan_folder(path)
    spec = FolderSpec(str(scan.root), scan.layout, scan.class_names, "L", (1, 1), holdout, HOLDOUT_SEED)
    return len(spec.split_files(scan, split))


def _is_grey(im) -> bool:
    """From the header alone: a greyscale mode, or a palette of greys."""
    if im.mode in _GREY_MODES:
        return True
    if im.mode in ("P", "PA"):
        palette = im.getpalette() or []
        return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
    return False


def _read_header(path: Path) -> tuple[bool, tuple[int, int]]:
    """(greyscale?, (H, W)) of an image file, reading its header only."""
    Image = _require_pillow()
    try:
        with Image.open(path) as im:
            return _is_grey(im), (im.height, im.width)
    except Exception as e:  # Pillow raises many kinds for a bad file; each is this file's problem
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}); fix or remove the file") from None


def resolve_folder(path: str | os.PathLike[str], image_size: tuple[int, int] | None = None,
                   holdout: float = 0.1, *, progress: bool = False) -> tuple[FolderSpec, FolderScan]:
    """Scan a folder and decide its mode (from every file's header) and size (`image_size`, else the most common).

    The most common size wins ties by the larger area, then the larger height.
    """
    if not 0 < holdout < 1:
        raise DataError(f"holdout is the fraction of each class held out for testing, between 0 and 1, got {holdout}")
    scan = scan_folder(path)
    every = [p for group in scan.files.values() for p, _ in group]
    headers = [_read_header(p) for p in _bar(every, progress, "reading image headers")]
    grey = all(g for g, _ in headers)
    if image_size is None:
        counts = Counter(size for _, size in headers)
        image_size = max(counts, key=lambda s: (counts[s], s[0] * s[1], s[0]))
    spec = FolderSpec(str(scan.root), scan.layout, scan.class_names, "L" if grey else "RGB", image_size,
                      holdout if scan.layout == "holdout" else None,
                      HOLDOUT_SEED if scan.layout == "holdout" else None, scan.fingerprint(), scan.skipped,
                      scan.special)
    return spec, scan


# ----------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------


def _bar(items: list, progress: bool, desc: str):
    if not progress or len(items) <= PROGRESS_MIN_FILES:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="file", leave=False)


def flatten_image(im, mode: str | None = None):
    """A PIL image as mode "L" or "RGB" (`mode`; default: "L" for greyscale kinds, else "RGB"); transparent
    pixels become black, 16-bit greys are scaled to 8 bits."""
    Image = _require_pillow()
    if mode is None:
        mode = "L" if _is_grey(im) else "RGB"
    if im.mode.startswith("I;16"):
        im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
    elif im.mode in ("I", "F"):  # int32 or float32 pixels, clipped in their own type (no float64 copy)
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8))
    has_alpha = im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode in ("P", "L", "RGB")
                                                                  and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", im.size)  # black
        flat.paste(rgba, mask=rgba.getchannel("A"))
        im = flat
    return im if im.mode == mode else im.convert(mode)


def draft_jpeg(im, mode: str, size: tuple[int, int]) -> None:
    """Let an opened, not yet decoded JPEG decode at a reduced scale (1/2 to 1/8) still at least `size` (H, W)."""
    h, w = size
    if im.format == "JPEG" and (im.width > w or im.height > h):
        im.draft(mode if im.mode in ("L", "RGB") else None, (w, h))


def fit_image(im, mode: str, size: tuple[int, int]) -> np.ndarray:
    """A PIL image as uint8 (H, W, C) pixels of `mode` ("L" or "RGB", `flatten_image`) at `size` (H, W), resized
    bilinearly in 8 bits: what a folder dataset holds of each file, and what `ctm.predict` feeds the model."""
    Image = _require_pillow()
    h, w = size
    im = flatten_image(im, mode)
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).reshape(h, w, 1 if mode == "L" else 3)


def _decode(path: Path, spec: FolderSpec, out: np.ndarray) -> None:
    """Decode one file into `out` (H, W, C) uint8: the spec's mode and size."""
    Image = _require_pillow()
    try:
        with Image.open(path) as im:
            draft_jpeg(im, spec.mode, spec.image_size)  # decode at a reduced scale
            out[...] = fit_image(im, spec.mode, spec.image_size)
    except Exception as e:  # any decoder failure is this file's problem
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}); fix or remove the file") from None


def load_folder(spec: FolderSpec, split: str, scan: FolderScan | None = None, *, check_files: bool = False,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, C, H, W) and labels int64 (N,) of `split` of the folder `spec` describes.

    `scan` defaults to scanning `spec.path`; its class names must be the spec's. With `check_files` the file
    list must also be the one the spec was made from (what resume needs to see the same data in the same order).
    Files are decoded on a few threads (Pillow releases the GIL while decoding).
    """
    scan = scan or scan_folder(spec.path)
    if scan.layout != spec.layout:
        how = {"split": "train/ and test/ folders", "holdout": "class folders at the top (a held-out test split)"}
        raise DataError(f"folder dataset {scan.root} has {how[scan.layout]}, but the run was trained on "
                        f"{how[spec.layout]}; give a folder laid out the same way")
    if scan.class_names != spec.class_names:
        raise DataError(f"folder dataset {scan.root} has classes {', '.join(scan.class_names)}, but the run was "
                        f"trained on {', '.join(spec.class_names)}; give a folder with the same class folders")
    if check_files and spec.fingerprint and scan.fingerprint() != spec.fingerprint:
        raise DataError(f"the files in folder dataset {scan.root} changed since the run started (files_sha1 "
                        f"{scan.fingerprint()[:12]}, recorded {spec.fingerprint[:12]}); restore them to resume")
    files = spec.split_files(scan, split)
    h, w = spec.image_size
    try:
        pixels = np.empty((len(files), h, w, spec.channels), dtype=np.uint8)  # (N, H, W, C)
    except MemoryError:
        raise DataError(f"{len(files)} {split} images of {spec.channels}x{h}x{w} need "
                        f"{len(files) * h * w * spec.channels / 2**30:.1f} GiB of memory, more than this machine "
                        f"gives; choose a smaller image size (--image-size)") from None
    workers = max(1, min(4, os.cpu_count() or 1, len(files) // 64))
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda i: _decode(files[i][0], spec, pixels[i]), range(len(files)))
        for _ in _bar(list(range(len(files))), progress, f"decoding {split} images"):
            next(jobs)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)  # (N,)
    return images, labels
