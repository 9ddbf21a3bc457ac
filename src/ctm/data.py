"""Datasets for CTM training: IDX files, MNIST / Fashion-MNIST lookup and download, sampling, augmentation.

The module is quiet: it never prints; every problem with data files is a `DataError` (a `ValueError`)
whose message names the file or folder and what is wrong.

Where a dataset is looked for, in order (the first folder holding all four IDX files wins):

1. ``data_dir`` if given -- used alone, with no fallback and no download;
2. ``$CTM_DATA_DIR/<name>/``;
3. ``$XDG_CACHE_HOME/ctm/<name>/`` (or ``~/.cache/ctm/<name>/`` when XDG_CACHE_HOME is unset);
4. ``/usr/share/datasets/<name>/`` (where Debian's ``dataset-fashion-mnist`` package puts its files).

If none has the files, they are downloaded into the cache folder (3), each checked against the MD5 of
its uncompressed content before it gets its final name.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._io import atomic_write

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "EpochSampler",
    "ImageDataset",
    "cache_dir",
    "content_md5",
    "download_dataset",
    "find_dataset",
    "load_dataset",
    "random_affine",
    "read_idx",
    "search_dirs",
    "verify_dataset",
    "write_idx",
]

GZIP_MAGIC = b"\x1f\x8b"
SYSTEM_DATASETS_DIR = Path("/usr/share/datasets")
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20

# IDX data type codes (third byte of the magic number); only uint8 is supported.
_IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


class DataError(ValueError):
    """A data file or dataset is missing, corrupt, or could not be fetched."""


# ----------------------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes | bytearray:
    """The content of `path`, gunzipped when it starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == GZIP_MAGIC:
                try:
                    with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                        return gz.read()
                except (OSError, EOFError, zlib.error) as e:
                    raise DataError(f"{path}: corrupt gzip data ({e})") from e
            buf = bytearray(os.fstat(f.fileno()).st_size)
            n = f.readinto(buf)
            return buf[:n] if n != len(buf) else buf
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a directory, not an IDX file") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _parse_idx(data: bytes | bytearray, path: Path) -> np.ndarray:
    """Validate an IDX buffer and return its array (a view of `data`)."""
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes; the magic number needs 4)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{bytes(data[:4]).hex()} (must start with two zero bytes); not an IDX file"
        )
    code, rank = data[2], data[3]
    if code != 0x08:
        known = _IDX_TYPES.get(code)
        what = f"type 0x{code:02x} ({known})" if known else f"unknown type code 0x{code:02x}"
        raise DataError(f"{path}: unsupported IDX data {what}; only 0x08 (uint8) is supported")
    if not 1 <= rank <= 4:
        raise DataError(f"{path}: IDX rank byte is {rank}; expected 1 to 4 dimensions")
    header = 4 + 4 * rank
    if len(data) < header:
        raise DataError(
            f"{path}: IDX header truncated: {rank} dimensions need {header} header bytes, file has {len(data)}"
        )
    dims = struct.unpack(f">{rank}I", bytes(data[4:header]))
    expected = header + math.prod(dims)
    if len(data) < expected:
        raise DataError(
            f"{path}: truncated: header says shape {dims} ({expected} bytes in all) but the content is "
            f"{len(data)} bytes"
        )
    if len(data) > expected:
        raise DataError(
            f"{path}: {len(data) - expected} trailing bytes after the data of shape {dims} "
            f"(expected exactly {expected} bytes)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a uint8 IDX file, raw or gzipped (detected by its magic bytes), into a writable array.

    Raises `DataError` naming `path` for a bad magic number, unsupported type, bad rank, truncated
    header or data, or trailing bytes.
    """
    path = Path(path)
    data = _read_bytes(path)
    arr = _parse_idx(data, path)
    # A view of a bytearray is already writable; one of immutable bytes (gunzipped) needs a copy.
    return arr if arr.flags.writeable else arr.copy()


def write_idx(path: str | os.PathLike[str], array: np.ndarray | torch.Tensor) -> None:
    """Write a uint8 array of rank 1..4 as an IDX file, gzipped when `path` ends in ``.gz``.

    The file is written to a temporary name in the same folder and moved into place atomically.
    """
    path = Path(path)
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: write_idx supports uint8 arrays only, got dtype {arr.dtype}")
    if not 1 <= arr.ndim <= 4:
        raise DataError(f"{path}: write_idx supports 1 to 4 dimensions, got shape {arr.shape}")
    if any(d >= 2**32 for d in arr.shape):
        raise DataError(f"{path}: dimension too large for IDX in shape {arr.shape}")
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = np.ascontiguousarray(arr).tobytes()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            _write_idx_bytes(f)

    def _write_idx_bytes(f) -> None:
        if path.name.endswith(".gz"):
            # mtime=0 and no file name: the same array always gives the same bytes.
            with gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
                gz.write(header)
                gz.write(payload)
        else:
            f.write(header)
            f.write(payload)

    atomic_write(path, write)


def content_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file's uncompressed content (gunzipped when it starts with the gzip magic bytes)."""
    path = Path(path)
    h = hashlib.md5()
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            try:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            finally:
                if gz:
                    f.close()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Dataset registry
# ----------------------------------------------------------------------------------------------------------

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
SPLITS: dict[str, tuple[str, str]] = {
    "train": (TRAIN_IMAGES, TRAIN_LABELS),
    "test": (TEST_IMAGES, TEST_LABELS),
}


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: its four IDX files, where to download them, and their checksums.

    `md5` maps each canonical file name (without ``.gz``) to the MD5 of its *uncompressed* content, so a
    raw file and a gzipped one are checked the same way. Mirrors are base URLs ending in ``/``; the file
    ``<mirror><file>.gz`` is fetched from each in turn.
    """

    name: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    install_hint: str = ""
    splits: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(SPLITS))

    @property
    def files(self) -> tuple[str, ...]:
        """Canonical file names (without ``.gz``): images and labels of each split."""
        return tuple(f for pair in self.splits.values() for f in pair)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        md5={
            TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
            TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
            TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
            TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
        },
        class_names=tuple(str(i) for i in range(10)),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # Uncompressed content of the published files (the .gz files' own MD5s are 8d4fb7e6..., 25c81989...,
        # bef4ecab..., bb300cfd...; Debian's package holds the same content, recompressed).
        md5={
            TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
            TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
            TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
        },
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        install_hint="apt-get install dataset-fashion-mnist (installs to /usr/share/datasets/fashion-mnist/)",
    ),
}


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}") from None


def cache_dir(name: str) -> Path:
    """The download folder for dataset `name`: ``$XDG_CACHE_HOME/ctm/<name>`` or ``~/.cache/ctm/<name>``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ctm" / name


def search_dirs(name: str) -> list[Path]:
    """Folders searched for dataset `name` when no ``data_dir`` is given, in order."""
    dirs = []
    env = os.environ.get("CTM_DATA_DIR")
    if env:
        dirs.append(Path(env) / name)
    dirs.append(cache_dir(name))
    dirs.append(SYSTEM_DATASETS_DIR / name)
    return dirs


def _locate_files(directory: Path, files: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """Map each canonical file name to ``NAME`` (preferred: no gunzip) or ``NAME.gz`` in `directory`."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for f in files:
        for candidate in (directory / f, directory / f"{f}.gz"):
            if candidate.is_file():
                found[f] = candidate
                break
        else:
            missing.append(f"{f}[.gz]")
    return found, missing


def find_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path] | None:
    """Paths of the four IDX files of dataset `name`, or None when no searched folder has all of them.

    With `data_dir`, only that folder is looked at and missing files raise `DataError`.
    """
    spec = _spec(name)
    if data_dir is not None:
        directory = Path(data_dir)
        found, missing = _locate_files(directory, spec.files)
        if missing:
            raise DataError(f"data directory {directory} does not hold dataset {name!r}: missing {', '.join(missing)}")
        return found
    for directory in search_dirs(name):
        found, missing = _locate_files(directory, spec.files)
        if not missing:
            return found
    return None


def verify_dataset(name: str, paths: Mapping[str, str | os.PathLike[str]]) -> None:
    """Check each file's uncompressed MD5 against the registry; `paths` maps canonical name -> path."""
    spec = _spec(name)
    for f, p in paths.items():
        want = spec.md5.get(f)
        if want is None:
            raise DataError(f"{p}: no MD5 known for file {f!r} of dataset {name!r}")
        got = content_md5(p)
        if got != want:
            raise DataError(f"{p}: MD5 of the uncompressed content is {got}, expected {want} for {name} {f}")


# ----------------------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------------------


def _fetch(url: str, dest_dir: Path, file: str, md5: str, timeout: float) -> Path:
    """Download `url` into `dest_dir`, check the uncompressed MD5, and give it its final name.

    The final name is ``<file>.gz`` when the body is gzipped, else ``<file>``. Nothing is left under
    either name, nor as a temp file, when anything fails.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{file}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
        got = content_md5(tmp)
        if got != md5:
            raise DataError(f"checksum mismatch: uncompressed MD5 {got}, expected {md5}")
        with open(tmp, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
        final = dest_dir / (f"{file}.gz" if gz else file)
        os.replace(tmp, final)
        return final
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download_dataset(
    name: str,
    dest_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> dict[str, Path]:
    """Download the four IDX files of `name` into `dest_dir` (default: `cache_dir(name)`).

    Each file is fetched as ``<mirror><file>.gz`` from the mirrors in order (default: the registry's),
    its uncompressed MD5 checked, and only then moved to its final name; a file already complete in
    `dest_dir` is kept. Raises `DataError` with every mirror's failure when a file can't be had.
    Returns canonical name -> path.
    """
    spec = _spec(name)
    dest = Path(dest_dir) if dest_dir is not None else cache_dir(name)
    mirrors = tuple(spec.mirrors if mirrors is None else mirrors)
    if not mirrors:
        raise DataError(f"no mirrors to download dataset {name!r} from")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create download folder {dest} for dataset {name!r} ({e})") from e
    found, _ = _locate_files(dest, spec.files)
    failures: list[str] = []
    for f in spec.files:
        if f in found:  # only ever written under its final name after its checksum matched
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + f + ".gz"
            try:
                found[f] = _fetch(url, dest, f, spec.md5[f], timeout)
                break
            except urllib.error.HTTPError as e:
                errors.append(f"{url}: HTTP {e.code} {e.reason}")
                e.close()
            except urllib.error.URLError as e:
                errors.append(f"{url}: {e.reason}")
            except (OSError, http.client.HTTPException, DataError) as e:
                errors.append(f"{url}: {e}")
        else:
            failures.extend(errors)
    if failures:
        raise DataError(f"could not download dataset {name!r} into {dest}:\n  " + "\n  ".join(failures))
    return found


def _how_to_provide(spec: DatasetSpec) -> str:
    files = ", ".join(f"{f}[.gz]" for f in spec.files)
    hints = [
        f"pass --data-dir / data_dir=FOLDER holding {files}",
        f"or set CTM_DATA_DIR=PARENT with the files in PARENT/{spec.name}/",
        f"or put them in {cache_dir(spec.name)}/",
    ]
    if spec.install_hint:
        hints.append(f"or {spec.install_hint}")
    return "To provide the files: " + "; ".join(hints) + "."


def _resolve(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    mirrors: Sequence[str] | None,
    timeout: float,
) -> dict[str, Path]:
    spec = _spec(name)
    found = find_dataset(name, data_dir)
    if found is not None:
        return found
    searched = "\n  ".join(str(d) for d in search_dirs(name))
    if not download:
        raise DataError(
            f"dataset {name!r} not found (download disabled). Searched:\n  {searched}\n{_how_to_provide(spec)}"
        )
    try:
        return download_dataset(name, mirrors=mirrors, timeout=timeout)
    except DataError as e:
        raise DataError(
            f"dataset {name!r} not found and the download failed. Searched:\n  {searched}\n{e}\n{_how_to_provide(spec)}"
        ) from e


# ----------------------------------------------------------------------------------------------------------
# In-memory dataset
# ----------------------------------------------------------------------------------------------------------


class ImageDataset:
    """A labelled image set held as two tensors: `images` uint8 (N, C, H, W) and `labels` int64 (N,).

    `batch(idx)` converts only the selected rows to float in [0, 1] (images / 255, nothing else).
    Indexing one sample (``ds[i]``) gives the same for a single image, like a TensorDataset.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        name: str = "",
        split: str = "",
        source: str = "",
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
            self.images.to(device), self.labels.to(device), self.num_classes, self.name, self.split, self.source
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
) -> ImageDataset:
    """Load split ``'train'`` or ``'test'`` of dataset `name` ('mnist', 'fashion-mnist') into memory.

    Files are looked up as described in the module docstring and downloaded when absent (unless
    `download` is False or `data_dir` is given). Downloads are always MD5-checked; files found locally
    are checked only with `verify=True`.
    """
    spec = _spec(name)
    if split not in spec.splits:
        raise DataError(f"unknown split {split!r} for dataset {name!r}; expected one of {', '.join(spec.splits)}")
    paths = _resolve(name, data_dir, download, mirrors, timeout)
    img_name, lbl_name = spec.splits[split]
    img_path, lbl_path = paths[img_name], paths[lbl_name]
    if verify:
        verify_dataset(name, {img_name: img_path, lbl_name: lbl_path})
    images = read_idx(img_path)  # (N, H, W)
    labels = read_idx(lbl_path)  # (N,)
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected images of shape (N, H, W), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected labels of shape (N,), got {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"image/label count mismatch: {img_path} has {images.shape[0]} images but {lbl_path} has "
            f"{labels.shape[0]} labels"
        )
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
    )


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------


def _mix_seed(seed: int, epoch: int) -> int:
    """A well-spread 63-bit seed from (seed, epoch) (splitmix64 finaliser), so nearby pairs don't collide."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


class EpochSampler:
    """Index batches for each epoch, deterministic in (seed, epoch) and shardable across ranks.

    The permutation of epoch ``e`` is ``torch.randperm(N)`` drawn from a fresh generator seeded from
    (seed, e), so it does not depend on what came before: training resumes mid-epoch with
    ``batches(epoch, start=k)``, which yields exactly what ``batches(epoch)`` would from its k-th batch on.

    `batch_size` is the *global* batch size B. With ``world_size > 1`` each global batch (a contiguous
    run of B indices of the permutation) is split into world_size contiguous chunks of B // world_size,
    and rank r takes chunk r: the ranks' shards of one step are disjoint and together make the global
    batch, and every rank sees the same number of steps. B must be divisible by world_size. With
    ``drop_last=False`` the last, short global batch is split as evenly as possible (sizes differ by at
    most one; a rank may get an empty batch when fewer samples than ranks remain), so prefer
    ``drop_last=True`` for distributed training.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} must be divisible by world_size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size

    @property
    def local_batch_size(self) -> int:
        """Indices per rank in a full global batch: batch_size // world_size."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        """Steps (global batches) per epoch, the same on every rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The whole epoch's order, (N,) int64; the identity when shuffle is False."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """This rank's index tensors for epoch `epoch`, from global batch number `start` on."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        perm = self.permutation(epoch)  # (N,)
        b, local = self.batch_size, self.local_batch_size
        for step in range(start, len(self)):
            chunk = perm[step * b : (step + 1) * b]  # (<= B,)
            if chunk.numel() == b:
                yield chunk[self.rank * local : (self.rank + 1) * local]
            else:
                yield torch.tensor_split(chunk, self.world_size)[self.rank]

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Batches of epoch 0 (use `batches(epoch)` to choose the epoch)."""
        return self.batches(0)


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
