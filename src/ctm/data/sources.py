"""The datasets `ctm` knows (MNIST, Fashion-MNIST): where their files are looked for, and their verified download.

Where a dataset is looked for, in order (the first folder holding all four IDX files wins):

1. ``data_dir`` if given -- used alone, with no fallback and no download;
2. ``$CTM_DATA_DIR/<name>/``;
3. ``$XDG_CACHE_HOME/ctm/<name>/`` (or ``~/.cache/ctm/<name>/`` when XDG_CACHE_HOME is unset);
4. ``/usr/share/datasets/<name>/`` (where Debian's ``dataset-fashion-mnist`` package puts its files).

If none has the files, they are downloaded into the cache folder (3), each checked against the MD5 of
its uncompressed content before it gets its final name. Every problem is a `DataError`.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .idx import _CHUNK, GZIP_MAGIC, DataError, content_md5

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "cache_dir",
    "dataset_spec",
    "download_dataset",
    "find_dataset",
    "locate_dataset",
    "search_dirs",
    "verify_dataset",
]

SYSTEM_DATASETS_DIR = Path("/usr/share/datasets")
DOWNLOAD_TIMEOUT_S = 30.0


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


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of dataset `name`; `DataError` listing the known ones when there is none."""
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


def find_dataset(name: str, data_dir: str | os.PathLike[str] | None = None,
                 files: Sequence[str] | None = None) -> dict[str, Path] | None:
    """Paths of the IDX files of dataset `name` (default all four; `files` names a subset, e.g. one split's),
    or None when no searched folder has all of them.

    With `data_dir`, only that folder is looked at and missing files raise `DataError`.
    """
    spec = dataset_spec(name)
    files = tuple(spec.files if files is None else files)
    if data_dir is not None:
        directory = Path(data_dir)
        found, missing = _locate_files(directory, files)
        if missing:
            raise DataError(f"data directory {directory} does not hold dataset {name!r}: missing {', '.join(missing)}")
        return found
    for directory in search_dirs(name):
        found, missing = _locate_files(directory, files)
        if not missing:
            return found
    return None


def verify_dataset(name: str, paths: Mapping[str, str | os.PathLike[str]]) -> None:
    """Check each file's uncompressed MD5 against the registry; `paths` maps canonical name -> path."""
    spec = dataset_spec(name)
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
    files: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Download the IDX files of `name` (default all four, or the canonical names in `files`) into `dest_dir`
    (default: `cache_dir(name)`).

    Each file is fetched as ``<mirror><file>.gz`` from the mirrors in order (default: the registry's),
    its uncompressed MD5 checked, and only then moved to its final name; a file already complete in
    `dest_dir` is kept. Raises `DataError` with every mirror's failure when a file can't be had.
    Returns canonical name -> path.
    """
    spec = dataset_spec(name)
    dest = Path(dest_dir) if dest_dir is not None else cache_dir(name)
    mirrors = tuple(spec.mirrors if mirrors is None else mirrors)
    if not mirrors:
        raise DataError(f"no mirrors to download dataset {name!r} from")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create download folder {dest} for dataset {name!r} ({e})") from e
    files = tuple(spec.files if files is None else files)
    found, _ = _locate_files(dest, files)
    failures: list[str] = []
    for f in files:
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


def locate_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    files: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Paths of the IDX files of `name` (default all four, or those in `files`): found (see the module
    docstring) or else downloaded, only those that are needed.

    Raises `DataError` listing the folders searched and how to provide the files.
    """
    spec = dataset_spec(name)
    found = find_dataset(name, data_dir, files)
    if found is not None:
        return found
    searched = "\n  ".join(str(d) for d in search_dirs(name))
    if not download:
        raise DataError(
            f"dataset {name!r} not found (download disabled). Searched:\n  {searched}\n{_how_to_provide(spec)}"
        )
    try:
        return download_dataset(name, mirrors=mirrors, timeout=timeout, files=files)
    except DataError as e:
        raise DataError(
            f"dataset {name!r} not found and the download failed. Searched:\n  {searched}\n{e}\n{_how_to_provide(spec)}"
        ) from e

