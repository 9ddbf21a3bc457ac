"""Tests of ctm.data.idx, ctm.data.sources and ctm.data.images: IDX files, dataset lookup and download (against a
local server), sampling, augmentation."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ctm.data import idx
from ctm.data import sources as datasets
from ctm.data.idx import DataError, read_idx, write_idx
from ctm.data.images import EpochSampler, ImageDataset, load_dataset, random_affine
from ctm.data.sources import DATASETS

FILES = datasets.DATASETS["mnist"].files  # the four canonical names


# ----------------------------------------------------------------------------------------------------------
# Helpers and fixtures
# ----------------------------------------------------------------------------------------------------------


def tiny_arrays(n_train: int = 12, n_test: int = 5, size: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Small IDX contents under the canonical MNIST file names."""
    rng = np.random.default_rng(seed)
    return {
        datasets.TRAIN_IMAGES: rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        datasets.TRAIN_LABELS: (np.arange(n_train) % 10).astype(np.uint8),
        datasets.TEST_IMAGES: rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        datasets.TEST_LABELS: (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_dataset(directory: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(directory / (name + ".gz" if gz else name), arr)
    return directory


def raw_md5(arr: np.ndarray) -> str:
    """MD5 of the uncompressed IDX encoding of a uint8 array."""
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return hashlib.md5(header + arr.tobytes()).hexdigest()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No CTM_DATA_DIR, HOME and system datasets folder inside tmp_path, XDG_CACHE_HOME unset."""
    monkeypatch.delenv("CTM_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets, "SYSTEM_DATASETS_DIR", tmp_path / "system")
    return tmp_path


@pytest.fixture
def tiny_md5(monkeypatch):
    """Point the mnist MD5 table at the tiny test arrays; returns those arrays."""
    arrays = tiny_arrays()
    for name, arr in arrays.items():
        monkeypatch.setitem(DATASETS["mnist"].md5, name, raw_md5(arr))
    return arrays


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def http_root(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving tmp_path/www; yields (root folder, base URL, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ----------------------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 3, 1, 4), (0, 28, 28)])
def test_idx_round_trip(tmp_path, suffix, shape):
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"x-idx{suffix}"
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable
    assert idx.content_md5(path) == raw_md5(arr)
    assert leftovers(tmp_path) == [path.name]  # no temp file left by the atomic write


def test_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "a.gz", arr)
    os.replace(tmp_path / "a.gz", tmp_path / "plain-name")
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), arr)


def test_write_idx_accepts_tensor_and_rejects_bad_input(tmp_path):
    write_idx(tmp_path / "t", torch.arange(4, dtype=torch.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / "t"), np.arange(4))
    with pytest.raises(DataError, match="uint8"):
        write_idx(tmp_path / "f", np.zeros(3, dtype=np.float32))
    with pytest.raises(DataError, match="dimensions"):
        write_idx(tmp_path / "r", np.zeros((1, 1, 1, 1, 1), dtype=np.uint8))


def _header(rank: int, dims, code: int = 8) -> bytes:
    return bytes([0, 0, code, rank]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x08\x03\x00\x00" + b"\x00" * 12, "magic"),
        (_header(1, (3,), code=0x0D) + b"\x00" * 12, "unsupported IDX data type 0x0d"),
        (_header(1, (3,), code=0x42) + b"\x00" * 3, "unknown type code 0x42"),
        (_header(0, ()), "rank byte is 0"),
        (_header(5, (1, 1, 1, 1, 1)) + b"\x00", "rank byte is 5"),
        (_header(3, (2, 2, 2))[:10], "header truncated"),
        (_header(3, (2, 2, 2)) + b"\x00" * 7, "truncated"),
        (_header(2, (2, 2)) + b"\x00" * 6, "2 trailing bytes"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_corruption_errors_name_the_file(tmp_path, content, message, gz):
    path = tmp_path / "corrupt-idx-file"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(DataError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_corrupt_gzip_and_missing_file(tmp_path):
    good = gzip.compress(_header(1, (100,)) + bytes(range(100)))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    with pytest.raises(DataError, match="not found") as e:
        read_idx(tmp_path / "nope")
    assert "nope" in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# Loading and lookup
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_data_dir(isolated, gz):
    arrays = tiny_arrays()
    d = write_dataset(isolated / "d", arrays, gz=gz)
    ds = load_dataset("mnist", "train", data_dir=d)
    assert isinstance(ds, ImageDataset)
    assert len(ds) == 12 and ds.images.shape == (12, 1, 4, 4) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.num_classes == 10
    assert (ds.name, ds.split, ds.source) == ("mnist", "train", str(d))
    x, y = ds.batch(torch.tensor([3, 0, 7]))
    assert x.shape == (3, 1, 4, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], torch.from_numpy(arrays[datasets.TRAIN_IMAGES][[3, 0, 7]]).float() / 255)
    assert y.tolist() == [3, 0, 7]
    x0, y0 = ds[3]
    torch.testing.assert_close(x0, x[0])
    assert int(y0) == 3
    test = load_dataset("mnist", "test", data_dir=d, verify=False)
    assert len(test) == 5 and test.split == "test"


def test_data_dir_is_used_alone(isolated, monkeypatch, http_root):
    write_dataset(isolated / "env" / "mnist", tiny_arrays())
    monkeypatch.setenv("CTM_DATA_DIR", str(isolated / "env"))
    _, url, requests = http_root
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="missing") as e:
        load_dataset("mnist", data_dir=empty, mirrors=[url])
    assert str(empty) in str(e.value)
    assert requests == []  # no download either


def test_lookup_order(isolated, monkeypatch):
    # Each place holds a different number of training images, so `len` tells which one was used.
    write_dataset(isolated / "system" / "mnist", tiny_arrays(n_train=4))
    assert len(load_dataset("mnist", download=False)) == 4

    write_dataset(isolated / "home" / ".cache" / "ctm" / "mnist", tiny_arrays(n_train=5))
    assert len(load_dataset("mnist", download=False)) == 5

    write_dataset(isolated / "xdg" / "ctm" / "mnist", tiny_arrays(n_train=6))
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "xdg"))
    assert datasets.cache_dir("mnist") == isolated / "xdg" / "ctm" / "mnist"
    assert len(load_dataset("mnist", download=False)) == 6

    env = write_dataset(isolated / "env" / "mnist", tiny_arrays(n_train=7))
    monkeypatch.setenv("CTM_DATA_DIR", str(isolated / "env"))
    ds = load_dataset("mnist", download=False)
    assert len(ds) == 7 and ds.source == str(env)
    assert datasets.search_dirs("mnist") == [env, isolated / "xdg" / "ctm" / "mnist", isolated / "system" / "mnist"]

    # A folder missing a file the split needs is skipped (one missing only another split's file is not).
    (env / (datasets.TEST_LABELS + ".gz")).unlink()
    assert len(load_dataset("mnist", download=False)) == 7
    (env / (datasets.TRAIN_LABELS + ".gz")).unlink()
    assert len(load_dataset("mnist", download=False)) == 6


def test_not_found_without_download_lists_places(isolated, monkeypatch):
    monkeypatch.setenv("CTM_DATA_DIR", str(isolated / "env"))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", download=False)
    msg = str(e.value)
    for d in datasets.search_dirs("fashion-mnist"):
        assert str(d) in msg
    assert "--data-dir" in msg and "CTM_DATA_DIR" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_unknown_dataset_and_split(isolated):
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*fashion-mnist, mnist"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val", data_dir=isolated)


def test_count_mismatch_names_both_files(isolated):
    arrays = tiny_arrays()
    arrays[datasets.TRAIN_LABELS] = arrays[datasets.TRAIN_LABELS][:-1]
    d = write_dataset(isolated / "d", arrays)
    with pytest.raises(DataError, match="mismatch") as e:
        load_dataset("mnist", data_dir=d)
    assert datasets.TRAIN_IMAGES in str(e.value) and datasets.TRAIN_LABELS in str(e.value)


def test_label_out_of_range_and_bad_rank(isolated):
    arrays = tiny_arrays()
    arrays[datasets.TRAIN_LABELS] = arrays[datasets.TRAIN_LABELS].copy()
    arrays[datasets.TRAIN_LABELS][2] = 10
    d = write_dataset(isolated / "d", arrays)
    with pytest.raises(DataError, match="label 10 out of range") as e:
        load_dataset("mnist", data_dir=d)
    assert datasets.TRAIN_LABELS in str(e.value)

    arrays = tiny_arrays()
    arrays[datasets.TEST_IMAGES] = arrays[datasets.TEST_IMAGES].reshape(5, 16)
    d = write_dataset(isolated / "d2", arrays)
    with pytest.raises(DataError, match=r"\(N, H, W\)") as e:
        load_dataset("mnist", "test", data_dir=d)
    assert datasets.TEST_IMAGES in str(e.value)


def test_verify_detects_wrong_content(isolated, tiny_md5):
    d = write_dataset(isolated / "d", tiny_md5)
    assert len(load_dataset("mnist", data_dir=d, verify=True)) == 12
    other = write_dataset(isolated / "o", tiny_arrays(seed=1))
    with pytest.raises(DataError, match="MD5") as e:
        load_dataset("mnist", data_dir=other, verify=True)
    assert str(other) in str(e.value)


def test_image_dataset_validates():
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.long), 10)
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 10)
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        ImageDataset(torch.zeros(1, 1, 3, 3, dtype=torch.uint8), torch.tensor([10]), 10)


# ----------------------------------------------------------------------------------------------------------
# Download (local server only)
# ----------------------------------------------------------------------------------------------------------


def test_download_good_checksum(isolated, tiny_md5, http_root):
    root, url, requests = http_root
    write_dataset(root / "m1", tiny_md5)
    ds = load_dataset("mnist", "train", mirrors=[url + "m1/"], timeout=5)
    cache = isolated / "home" / ".cache" / "ctm" / "mnist"
    assert ds.source == str(cache) and len(ds) == 12
    # final names only, no temp files; only the split asked for
    assert leftovers(cache) == sorted([datasets.TRAIN_IMAGES + ".gz", datasets.TRAIN_LABELS + ".gz"])
    assert len(requests) == 2
    # The test split fetches its two files; then both splits are found in the cache, nothing fetched.
    assert len(load_dataset("mnist", "test", mirrors=[url + "m1/"])) == 5
    assert len(requests) == 4
    assert len(load_dataset("mnist", "train", mirrors=[url + "m1/"])) == 12
    assert len(load_dataset("mnist", "test", mirrors=[url + "m1/"])) == 5
    assert len(requests) == 4


def test_download_bad_checksum_leaves_nothing(isolated, tiny_md5, http_root):
    root, url, _ = http_root
    bad = tiny_arrays(seed=99)  # same shapes, other bytes in every file
    bad[datasets.TRAIN_LABELS] = (bad[datasets.TRAIN_LABELS] + 1) % 10
    bad[datasets.TEST_LABELS] = (bad[datasets.TEST_LABELS] + 1) % 10
    write_dataset(root / "m1", bad)
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_dataset("mnist", mirrors=[url + "m1/"], timeout=5)
    assert "--data-dir" in str(e.value)
    assert leftovers(isolated / "home" / ".cache" / "ctm" / "mnist") == []


def test_download_404_falls_through_to_next_mirror(isolated, tiny_md5, http_root):
    root, url, requests = http_root
    (root / "empty").mkdir()
    write_dataset(root / "m2", tiny_md5)
    paths = datasets.download_dataset("mnist", mirrors=[url + "empty/", url + "m2/"], timeout=5)
    assert set(paths) == set(FILES)
    assert sum(r.startswith("/empty/") for r in requests) == 4
    assert sum(r.startswith("/m2/") for r in requests) == 4


def test_loading_one_split_downloads_only_its_two_files(isolated, tiny_md5, http_root):
    root, url, requests = http_root
    write_dataset(root / "m", tiny_md5)
    test = load_dataset("mnist", "test", mirrors=[url + "m/"], timeout=5)
    assert sorted(r.rsplit("/", 1)[1] for r in requests) == sorted(
        [datasets.TEST_IMAGES + ".gz", datasets.TEST_LABELS + ".gz"])
    assert len(test) == len(tiny_md5[datasets.TEST_LABELS])
    assert leftovers(datasets.cache_dir("mnist")) == sorted(
        [datasets.TEST_IMAGES + ".gz", datasets.TEST_LABELS + ".gz"])


def test_download_all_mirrors_fail(isolated, tiny_md5, http_root, monkeypatch):
    root, url, _ = http_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "xdg"))
    (root / "empty").mkdir()
    refused = closed_port_url()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", mirrors=[url + "empty/", refused], timeout=5)
    msg = str(e.value)
    assert "HTTP 404" in msg and refused in msg
    assert url + "empty/" + datasets.TRAIN_IMAGES + ".gz" in msg
    for d in datasets.search_dirs("mnist"):
        assert str(d) in msg
    assert "CTM_DATA_DIR" in msg and "--data-dir" in msg
    assert leftovers(isolated / "xdg" / "ctm" / "mnist") == []


def test_download_keeps_completed_files_and_serves_raw(isolated, tiny_md5, http_root):
    root, url, requests = http_root
    cache = datasets.cache_dir("mnist")
    write_dataset(cache, {datasets.TRAIN_IMAGES: tiny_md5[datasets.TRAIN_IMAGES]})
    # The mirror sends uncompressed bytes under the .gz URL: kept under the raw name.
    (root / "m").mkdir()
    for name, arr in tiny_md5.items():
        write_idx(root / "m" / "tmp", arr)
        os.replace(root / "m" / "tmp", root / "m" / (name + ".gz"))
    datasets.download_dataset("mnist", mirrors=[url + "m/"], timeout=5)
    assert len(requests) == 3
    assert leftovers(cache) == sorted(
        [datasets.TRAIN_IMAGES + ".gz", datasets.TRAIN_LABELS, datasets.TEST_IMAGES, datasets.TEST_LABELS]
    )
    assert len(load_dataset("mnist", download=False, verify=True)) == 12


def test_fashion_download_failure_hints_apt(isolated):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", mirrors=[closed_port_url()], timeout=2)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------


def test_sampler_is_deterministic_and_resumable():
    s = EpochSampler(103, 10, seed=5)
    assert len(s) == 11
    torch.testing.assert_close(s.permutation(3), EpochSampler(103, 10, seed=5).permutation(3))
    assert not torch.equal(s.permutation(3), s.permutation(4))
    assert not torch.equal(s.permutation(3), EpochSampler(103, 10, seed=6).permutation(3))
    batches = list(s.batches(2))
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(103))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    resumed = list(EpochSampler(103, 10, seed=5).batches(2, start=4))
    assert len(resumed) == 7 and all(torch.equal(a, b) for a, b in zip(resumed, batches[4:], strict=True))
    assert [len(b) for b in EpochSampler(103, 10, drop_last=True).batches(0)] == [10] * 10
    assert torch.equal(torch.cat(list(EpochSampler(7, 3, shuffle=False))), torch.arange(7))


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_are_disjoint_and_cover_each_batch(drop_last):
    n, b, world = 50, 12, 4
    glob = list(EpochSampler(n, b, seed=1, drop_last=drop_last).batches(7))
    shards = [
        list(EpochSampler(n, b, seed=1, drop_last=drop_last, rank=r, world_size=world).batches(7)) for r in range(world)
    ]
    assert all(len(s) == len(glob) for s in shards)
    for step, g in enumerate(glob):
        parts = [s[step] for s in shards]
        if len(g) == b:
            assert all(len(p) == b // world for p in parts)
        assert torch.equal(torch.cat(parts), g)  # contiguous chunks in rank order
        assert len(set(torch.cat(parts).tolist())) == len(g)


def test_sampler_rejects_bad_args():
    with pytest.raises(ValueError, match="divisible"):
        EpochSampler(10, 5, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        EpochSampler(10, 0)


# ----------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------


def test_random_affine_shape_dtype_determinism():
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = random_affine(x, torch.Generator().manual_seed(3))
    b = random_affine(x, torch.Generator().manual_seed(3))
    c = random_affine(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    # One transform per sample: two copies of an image come out different.
    same = x[:1].expand(2, -1, -1, -1)
    y = random_affine(same, torch.Generator().manual_seed(0))
    assert not torch.equal(y[0], y[1])
    assert random_affine(x.double(), torch.Generator().manual_seed(3)).dtype == torch.float64


def test_random_affine_identity_and_zero_fill():
    x = torch.rand(3, 2, 9, 13)
    y = random_affine(x, torch.Generator().manual_seed(0), max_rotation_deg=0, max_translate=0, scale_range=(1, 1))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    # Shrinking pulls zeros in at the border; the centre stays bright.
    ones = torch.ones(1, 1, 28, 28)
    z = random_affine(ones, torch.Generator().manual_seed(0), 0, 0, scale_range=(0.5, 0.5))
    assert z[0, 0, 0, 0] == 0 and z[0, 0, 14, 14] == 1


def test_random_affine_rejects_bad_input():
    g = torch.Generator()
    with pytest.raises(TypeError, match="float"):
        random_affine(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), g)
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_affine(torch.zeros(4, 4), g)


# ----------------------------------------------------------------------------------------------------------
# Real data (skipped where absent)
# ----------------------------------------------------------------------------------------------------------


def _check_real(name: str, directory: Path) -> None:
    spec = DATASETS[name]
    paths, missing = datasets._locate_files(directory, spec.files)
    if missing:
        pytest.skip(f"{name} not found in {directory} (missing {', '.join(missing)})")
    datasets.verify_dataset(name, paths)
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load_dataset(name, split, data_dir=directory)
        assert len(ds) == n and ds.images.shape == (n, 1, 28, 28)
        assert sorted(ds.labels.unique().tolist()) == list(range(10))


def test_real_mnist():
    root = os.environ.get("CTM_DATA_DIR")
    if not root:
        pytest.skip("CTM_DATA_DIR is not set (export CTM_DATA_DIR=/work/shared/data to run)")
    _check_real("mnist", Path(root) / "mnist")


def test_real_fashion_mnist():
    _check_real("fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
