"""IDX files (the MNIST format): read, write and checksum them.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the rank), one big-endian uint32 per
dimension, then the data in C order; only uint8 data is supported. Files may be gzipped, which is detected
by their first two bytes. Every problem is a `DataError` (a `ValueError`) naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write

__all__ = ["DataError", "IDX_LIMIT", "content_md5", "idx_shape", "read_idx", "write_idx"]

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

# IDX data type codes (third byte of the magic number); only uint8 is supported.
_IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


class DataError(ValueError):
    """A data file or dataset is missing, corrupt, or could not be fetched."""


# No deflate stream inflates to more than about 1032 times its size: the bound on what a gzip file can hold.
_GZIP_MAX_RATIO = 1032
#: The most data bytes an IDX file may declare: 16 GiB, 30 times EMNIST's largest file (MNIST's is 47 MB).
IDX_LIMIT = 16 * 2**30


def _physical_memory() -> int | None:
    """This machine's memory in bytes, where the system says."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def read_idx(path: str | os.PathLike[str], shape: tuple[int | str, ...] | None = None) -> np.ndarray:
    """Read a uint8 IDX file, raw or gzipped (detected by its magic bytes), into a writable array.

    The file is read as a stream: its header is checked first, against `shape` when given (an int where the
    size is known, a name such as "N" where any size will do) and against what the file can hold, this
    machine's memory and `IDX_LIMIT`; then exactly the size it declares is read (and inflated), into memory
    taken as the data arrives, so a small gzip file that declares or inflates to gigabytes is refused after a
    few bytes. Raises `DataError` naming `path` for a bad magic number, unsupported type, bad rank, a shape
    other than `shape`, truncated header or data, or trailing bytes.
    """
    return _open_idx(path, lambda f, size, most: _read_idx_stream(f, path, size, most, shape))


def idx_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The shape an IDX file's header declares (checked as `read_idx` checks it), reading the header only."""
    return _open_idx(path, lambda f, size, most: _read_header(f, Path(path), size, most)[0])


def _open_idx(path: str | os.PathLike[str], read):
    """`read(stream, size, most)` of the IDX file at `path`, raw or gzipped (see `_read_header`)."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            gz = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if not gz:
                return read(raw, size, None)
            try:
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    return read(f, None, _GZIP_MAX_RATIO * size + 1024)
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}: corrupt gzip data ({e})") from e
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a directory, not an IDX file") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _read_header(f, path: Path, size: int | None, most: int | None,
                 shape: tuple[int | str, ...] | None = None) -> tuple[tuple[int, ...], int]:
    """The dims and header length of the IDX stream `f`, checked: `size` is the content length when known
    (a raw file), else `most` bounds it (a gzip file); `shape` is what the caller expects (see `read_idx`)."""
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(head)} bytes; the magic number needs 4)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{head.hex()} (must start with two zero bytes); not an IDX file"
        )
    code, rank = head[2], head[3]
    if code != 0x08:
        known = _IDX_TYPES.get(code)
        what = f"type 0x{code:02x} ({known})" if known else f"unknown type code 0x{code:02x}"
        raise DataError(f"{path}: unsupported IDX data {what}; only 0x08 (uint8) is supported")
    if not 1 <= rank <= 4:
        raise DataError(f"{path}: IDX rank byte is {rank}; expected 1 to 4 dimensions")
    header = 4 + 4 * rank
    dims_bytes = f.read(4 * rank)
    if len(dims_bytes) < 4 * rank:
        raise DataError(
            f"{path}: IDX header truncated: {rank} dimensions need {header} header bytes, file has "
            f"{4 + len(dims_bytes)}"
        )
    dims = struct.unpack(f">{rank}I", dims_bytes)
    expected = header + math.prod(dims)
    if shape is not None and (len(dims) != len(shape) or any(
            isinstance(want, int) and have != want for have, want in zip(dims, shape, strict=False))):
        wanted = f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"
        raise DataError(f"{path}: the header declares shape {dims}; expected {wanted}")
    if size is not None and size != expected:
        if size < expected:
            raise DataError(
                f"{path}: truncated: header says shape {dims} ({expected} bytes in all) but the content is "
                f"{size} bytes"
            )
        raise DataError(
            f"{path}: {size - expected} trailing bytes after the data of shape {dims} "
            f"(expected exactly {expected} bytes)"
        )
    if most is not None and expected > most:
        raise DataError(
            f"{path}: truncated: header says shape {dims} ({expected} bytes in all), more than this gzip file "
            f"can hold (at most {most} bytes)"
        )
    memory = _physical_memory()
    if expected - header > min(IDX_LIMIT, memory or IDX_LIMIT):
        where = (f"more than this machine's memory ({memory / 2**30:.1f} GiB)" if memory and memory < IDX_LIMIT
                 else f"more than ctm reads from one file ({IDX_LIMIT // 2**30} GiB)")
        raise DataError(f"{path}: the header declares shape {dims}, {(expected - header) / 2**30:.1f} GiB of "
                        f"data, {where}; is it the right file?")
    return dims, header


def _read_idx_stream(f, path: Path, size: int | None, most: int | None = None,
                     shape: tuple[int | str, ...] | None = None) -> np.ndarray:
    """The array of the IDX stream `f` (see `_read_header`), its data read in chunks into memory that is
    only committed as the chunks arrive: a header that promises more than the stream holds costs nothing."""
    dims, header = _read_header(f, path, size, most, shape)
    expected = header + math.prod(dims)
    try:
        data = np.empty(expected - header, dtype=np.uint8)  # pages untouched until written
    except MemoryError:
        raise DataError(f"{path}: its data of shape {dims} ({expected - header} bytes) does not fit in "
                        f"memory") from None
    view, filled = memoryview(data), 0
    while filled < len(data) and (n := f.readinto(view[filled:filled + _CHUNK])):
        filled += n
    if filled < len(data):
        raise DataError(
            f"{path}: truncated: header says shape {dims} ({expected} bytes in all) but the content is "
            f"{header + filled} bytes"
        )
    rest = len(f.read(_CHUNK + 1))  # never more: a stream of trailing bytes is not inflated whole
    if rest:
        count = f"{rest}" if rest <= _CHUNK else f"more than {_CHUNK}"
        raise DataError(
            f"{path}: {count} trailing bytes after the data of shape {dims} (expected exactly {expected} bytes)"
        )
    return data.reshape(dims)


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

