"""What ctm refuses in one line instead of a traceback or a machine brought down: sizes too large to build,
official files that are not state dicts or hold indices of neurons the model lacks, --args files read whole."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_FLAGS, make_synthetic
from safetensors.torch import load_file, save_file

import ctm
from ctm.cli import main
from ctm.nn.lstm import LSTMConfig
from ctm.runs import checkpoint as ckpt

HUGE = 10**12


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=64, n_test=32)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    assert run_cli("train", "--data-dir", data, "--out", run, "--steps", "2", "--batch-size", "16", "--eval-every",
                   "2", "--no-progress", "--threads", "1", *TINY_FLAGS) == 0
    return run


# ---------------------------------------------------------------------------------------------- model sizes


@pytest.mark.parametrize("changes, fields", [
    (dict(d_model=HUGE), "CTMConfig.d_model=1000000000000, CTMConfig.d_input=32"),
    (dict(d_input=HUGE + 1, heads=2), "CTMConfig.d_input=1000000000001"),  # before d_input's divisors are listed
    (dict(memory_length=HUGE), "CTMConfig.memory_length=1000000000000"),
    (dict(n_synch_out=10**7, neuron_selection="random"), "CTMConfig.n_synch_out=10000000"),
    (dict(iterations=10**18), "CTMConfig.iterations=1000000000000000000"),
])
def test_a_config_too_large_to_build_names_its_sizes(changes, fields):
    with pytest.raises(ValueError, match="too large to build") as e:
        ctm.CTMConfig(**changes)
    assert fields in str(e.value) and "choose smaller sizes" in str(e.value)
    with pytest.raises(ValueError, match="LSTMConfig.hidden=1000000000000 makes the LSTM cell too large"):
        LSTMConfig(HUGE)
    ctm.CTMConfig(d_model=100_000)  # large, but buildable on a large machine
    LSTMConfig(100_000)


def test_train_with_a_model_too_large_to_build_is_one_line(data, tmp_path, capsys):
    assert run_cli("train", "--data-dir", data, "--out", tmp_path / "run", "--d-model", HUGE) == 2
    line = one_line(capsys)
    assert line.startswith("ctm train: error: --d-model=1000000000000") and "too large to build" in line, line
    assert not (tmp_path / "run").exists()


def test_a_run_whose_config_is_too_large_to_build_is_one_line(trained, data, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    payload = json.loads((run / ckpt.CONFIG_FILE).read_text())
    payload["model"]["d_model"] = HUGE
    (run / ckpt.CONFIG_FILE).write_text(json.dumps(payload))
    for argv in (["eval", run, "--data-dir", data], ["train", "--resume", run, "--data-dir", data, "--steps", "4"],
                 ["predict", run, tmp_path / "x.png"]):
        (tmp_path / "x.png").write_bytes(b"")
        assert run_cli(*argv) == 2
        line = one_line(capsys)
        assert "d_model=1000000000000" in line.replace("--d-model", "d_model") and "too large to build" in line, line
    payload["model"]["d_model"] = 24
    payload.update(model_kind="lstm", model_options={"hidden": HUGE})  # the LSTM's width in a run
    (run / ckpt.CONFIG_FILE).write_text(json.dumps(payload))
    assert run_cli("eval", run, "--data-dir", data) == 2
    assert "LSTMConfig.hidden=1000000000000 makes the LSTM cell too large" in one_line(capsys)


def test_convert_official_with_sizes_too_large_to_build_is_one_line(tmp_path, capsys):
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    args = dict(iterations=4, d_model=HUGE, d_input=8, heads=2, n_synch_out=4, n_synch_action=4, synapse_depth=1,
                memory_length=4, deep_nlms=True, memory_hidden_dims=2, do_layernorm_nlm=False,
                backbone_type="parity_backbone", positional_embedding_type="none", out_dims=4)
    (tmp_path / "args.json").write_text(json.dumps(args))
    assert run_cli("convert-official", tmp_path / "sd.pt", "--args", tmp_path / "args.json", "--out",
                   tmp_path / "run") == 2
    line = one_line(capsys)
    assert "CTMConfig.d_model=1000000000000" in line and "too large to build" in line, line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- convert-official


def test_convert_official_refuses_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    (tmp_path / "args.json").write_text("{}")
    (tmp_path / "text.pt").write_text("hello, not a tensor file\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("text.pt", "empty.pt"):
        assert run_cli("convert-official", tmp_path / name, "--args", tmp_path / "args.json", "--out",
                       tmp_path / "run") == 2
        line = one_line(capsys)
        assert f"{tmp_path / name} is not a PyTorch state dict file" in line, line


@pytest.mark.parametrize("content, message", [
    (None, "larger than 16 MiB"),  # /dev/zero: refused after 16 MiB, not read for ever
    ("[" * 100_000, "nests too deeply"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
])
def test_convert_official_reads_args_bounded_and_refuses_bad_json_in_one_line(tmp_path, capsys, content, message):
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    args = Path("/dev/zero") if content is None else tmp_path / "args.json"
    if isinstance(content, bytes):
        args.write_bytes(content)
    elif content is not None:
        args.write_text(content)
    assert run_cli("convert-official", tmp_path / "sd.pt", "--args", args, "--out", tmp_path / "run") == 2
    line = one_line(capsys)
    assert line.startswith(f"ctm convert-official: error: --args {args}") and message in line, line


OFFICIAL_ARGS = dict(iterations=3, d_model=21, d_input=12, heads=3, n_synch_out=6, n_synch_action=5,
                     synapse_depth=1, memory_length=4, deep_nlms=True, memory_hidden_dims=3, do_layernorm_nlm=False,
                     backbone_type="resnet18-1", positional_embedding_type="none", out_dims=10)


def _official_state_dict(official, **changes) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its neuron selection
        model = official.ctm.ContinuousThoughtMachine(**{**OFFICIAL_ARGS, **changes}).eval()
    with torch.no_grad():
        model(torch.rand(1, 1, 12, 12))  # initialises the lazy layers
    return model.state_dict()


@pytest.mark.usefixtures("isolated_rng")
@pytest.mark.parametrize("selection", ["random", "random-pairing", "first-last"])
@pytest.mark.parametrize("buffer, change", [
    ("out_neuron_indices_left", lambda t: t.index_fill(0, torch.tensor([1]), 21)),  # d_model is 21
    ("action_neuron_indices_right", lambda t: t.index_fill(0, torch.tensor([0]), -1)),
    ("out_neuron_indices_right", lambda t: t.float()),
])
def test_convert_official_checks_the_neuron_indices(official, tmp_path, capsys, selection, buffer, change):
    state = _official_state_dict(official, neuron_select_type=selection)
    state[buffer] = change(state[buffer])
    torch.save(state, tmp_path / "sd.pt")
    (tmp_path / "args.json").write_text(json.dumps({**OFFICIAL_ARGS, "neuron_select_type": selection}))
    assert run_cli("convert-official", tmp_path / "sd.pt", "--args", tmp_path / "args.json", "--out",
                   tmp_path / "run") == 2
    line = one_line(capsys)
    assert f"official state dict: {buffer}" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("isolated_rng")
def test_a_converted_run_with_indices_out_of_range_is_one_line(official, data, tmp_path, capsys):
    torch.save(_official_state_dict(official, neuron_select_type="random-pairing"), tmp_path / "sd.pt")
    (tmp_path / "args.json").write_text(json.dumps({**OFFICIAL_ARGS, "neuron_select_type": "random-pairing"}))
    run = tmp_path / "run"
    assert run_cli("convert-official", tmp_path / "sd.pt", "--args", tmp_path / "args.json", "--out", run,
                   "--dataset", "mnist") == 0
    capsys.readouterr()
    weights = ckpt.current_checkpoint(run).path / ckpt.MODEL_FILE
    tensors = load_file(str(weights))
    tensors["synch_out.left"][2] = 1000
    save_file(tensors, str(weights), metadata={"step": "0"})
    assert run_cli("eval", run, "--data-dir", data) == 2
    line = one_line(capsys)
    assert "synch_out.left holds neuron index 1000, outside 0..20" in line, line
    assert str(weights) in line  # names the file
    with pytest.raises(ValueError, match="synch_out.left holds neuron index 1000"):
        ctm.load_run(run)


# ---------------------------------------------------------------------------------------------- folder datasets


def test_special_files_in_a_class_folder_are_skipped_never_opened(tmp_path, capsys):
    import errno
    import os
    import threading

    from helpers import make_shapes

    from ctm.data import folders

    root = make_shapes(tmp_path / "shapes", n=6)
    fifos = [root / "circle" / "pipe.png", root / "square" / "pipe"]
    for fifo in fifos:
        os.mkfifo(fifo)
    done = threading.Event()

    def unblock():  # a reader stuck on a FIFO gets end-of-file after a while: the test fails, it does not hang
        while not done.wait(10):
            for fifo in fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError as e:
                    assert e.errno == errno.ENXIO  # nobody reading: as it should be

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    try:
        spec, scan = folders.resolve_folder(root)
        images, _ = folders.load_folder(spec, "train", scan)
        assert scan.special == spec.special == 2 and spec.to_record()["special"] == 2
        assert all(p not in fifos for group in scan.files.values() for p, _ in group)
        assert len(images) == len(spec.split_files(scan, "train"))
        assert run_cli("train", "--dataset", f"folder:{root}", "--out", tmp_path / "run", "--steps", "1",
                       "--batch-size", "4", "--eval-every", "1", "--no-progress", "--threads", "1", *TINY_FLAGS) == 0
        assert "; 2 special files skipped (FIFO, socket or device)" in capsys.readouterr().out
    finally:
        done.set()
        watchdog.join()


def test_a_file_name_that_is_not_utf8_is_named_in_the_error(tmp_path, capsys):
    import os
    import shutil

    from helpers import make_shapes

    from ctm.data import folders
    from ctm.data.idx import DataError

    root = make_shapes(tmp_path / "shapes", n=6)
    shutil.copy(root / "circle" / "0000.png", root / "circle" / os.fsdecode(b"caf\xe9.png"))  # Latin-1
    shown = f"{root / 'circle'}/caf\\xe9.png"
    with pytest.raises(DataError, match=re.escape(f"{shown}: the file's path is not valid UTF-8; rename it")):
        folders.resolve_folder(root)
    assert run_cli("train", "--dataset", f"folder:{root}", "--out", tmp_path / "run") == 2
    assert one_line(capsys) == (f"ctm train: error: {shown}: the file's path is not valid UTF-8; rename it (a run "
                                f"records its data's names as UTF-8)")
    os.rename(root / "square", root / os.fsdecode(b"carr\xe9"))
    os.remove(root / "circle" / os.fsdecode(b"caf\xe9.png"))
    with pytest.raises(DataError, match=re.escape(f"{root}/carr\\xe9: the class folder's path is not valid UTF-8")):
        folders.resolve_folder(root)


# ---------------------------------------------------------------------------------------------- IDX files

PEAK_RSS_KIB = "int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"


def _idx_header(*dims: int) -> bytes:
    import struct

    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _gzip_of_zeros(path: Path, header: bytes, mib: int) -> None:
    """A gzip file of `header` then `mib` MiB of zeros, about 1 KiB per MiB (one deflated MiB repeated)."""
    import zlib

    deflate, zeros = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
    start = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + start + block * mib + deflate.flush()
                + crc.to_bytes(4, "little") + ((len(header) + mib * len(zeros)) % 2**32).to_bytes(4, "little"))


def _grown_kib(code: str, *argv) -> tuple[str, int]:
    """(what `code` prints, the peak memory growth in KiB while it runs) in a fresh Python process that has
    imported ctm's data modules (and torch) before."""
    import subprocess
    import sys

    wrapped = (f"import sys\nimport ctm.data.images\nimport ctm.data.idx\nbefore = {PEAK_RSS_KIB}\n{code}\n"
               f"print({PEAK_RSS_KIB} - before)\n")
    proc = subprocess.run([sys.executable, "-c", wrapped, *map(str, argv)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    *printed, grown = proc.stdout.strip().splitlines()
    return "\n".join(printed), int(grown)


READ = ("from ctm.data.idx import DataError, read_idx\ntry:\n    read_idx(sys.argv[1])\nexcept DataError as e:\n"
        "    print(e)")


def test_an_idx_file_holding_less_than_its_header_declares_costs_what_it_holds(tmp_path):
    import gzip

    path = tmp_path / "train-images-idx3-ubyte.gz"
    n = 600_000  # 470 MB declared; 600 KB of incompressible data: a file that could hold it, as far as size goes
    path.write_bytes(gzip.compress(_idx_header(n, 28, 28) + os.urandom(600_000), compresslevel=1))
    message, grown = _grown_kib(READ, path)
    assert str(path) in message and "truncated" in message, message
    assert grown < 64 * 1024, grown  # KiB: the data there is, not the 470 MB promised


def test_image_and_label_counts_are_compared_before_the_images_are_inflated(tmp_path):
    import gzip

    from ctm.data import sources as datasets

    _gzip_of_zeros(tmp_path / f"{datasets.TRAIN_IMAGES}.gz", _idx_header(716_800, 32, 32), 700)  # 700 MiB, exactly
    (tmp_path / f"{datasets.TRAIN_LABELS}.gz").write_bytes(gzip.compress(_idx_header(10) + bytes(10)))
    code = ("from ctm.data.images import load_dataset\nfrom ctm.data.idx import DataError\ntry:\n"
            "    load_dataset('mnist', 'train', data_dir=sys.argv[1])\nexcept DataError as e:\n    print(e)")
    message, grown = _grown_kib(code, tmp_path)
    assert "mismatch" in message and "716800 images" in message and "10 labels" in message, message
    assert grown < 64 * 1024, grown


def test_an_idx_header_is_checked_against_the_expected_shape_and_the_bounds(tmp_path, monkeypatch):
    from ctm.data import idx
    from ctm.data.idx import DataError, read_idx

    path = tmp_path / "images.gz"
    idx.write_idx(path, np.zeros((5, 4, 3), np.uint8))
    assert read_idx(path, shape=("N", 4, 3)).shape == (5, 4, 3)
    with pytest.raises(DataError, match=re.escape(f"{path}: the header declares shape (5, 4, 3); expected (N,)")):
        read_idx(path, shape=("N",))
    with pytest.raises(DataError, match=re.escape("expected (6, H, W)")):
        read_idx(path, shape=(6, "H", "W"))
    monkeypatch.setattr(idx, "IDX_LIMIT", 50)
    with pytest.raises(DataError, match="the header declares shape .5, 4, 3., 0.0 GiB of data, more than ctm reads"):
        read_idx(path)
    monkeypatch.setattr(idx, "IDX_LIMIT", 2**30)
    monkeypatch.setattr(idx, "_physical_memory", lambda: 50)
    with pytest.raises(DataError, match="more than this machine's memory"):
        read_idx(path)
