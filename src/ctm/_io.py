"""Atomic file writes, used by checkpoints, datasets and pictures."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None],
                 before_replace: Callable[[], None] | None = None) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, fsync, then rename it over `path`.

    `before_replace()` is called between the fsync and the rename (tests inject faults there).

    A failure at any point leaves the old file (if any) in place and no temp file behind. Nothing runs after
    SIGKILL: the temp file, .NAME.PID.XXXXXXXX.tmp, names its writer's PID, and the next writer of `path`
    removes those of writers no longer running.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files (and writers may recreate the file)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Remove the temp files `atomic_write`s of `path` killed mid-write left beside it: regular files (not
    links) named .NAME.PID.XXXXXXXX.tmp whose PID is no longer running (a live writer's stays)."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[a-z0-9_]+\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        with contextlib.suppress(OSError):
            if match and entry.is_file(follow_symlinks=False) and not pid_running(int(match[1])):
                os.unlink(entry.path)


def pid_running(pid: int) -> bool:
    """Whether process `pid` exists on this machine (True when that cannot be told)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or a number no process can have
        return False
    except OSError:  # another user's process (EPERM)
        return True
    return True


# Bounds on what ctm reads into memory from a file it is handed (a run directory may come from someone else).
JSON_LIMIT = 16 * 2**20  # config.json, --args, pretrained records: far above any real one
POINTER_LIMIT = 4096  # checkpoint.json


def read_bounded(path: str | os.PathLike[str], limit: int, error: type[Exception] = ValueError, *,
                 in_run: bool = False) -> bytes:
    """The bytes of `path`, refused with `error` (one line naming the file) when there are more than `limit`.

    `in_run`: a file inside a run directory: a symbolic link is refused, not followed (O_NOFOLLOW), and so is
    anything but a regular file (a FIFO would block, a device never end). Otherwise any readable file works
    (a pipe, a process substitution), still bounded: `/dev/zero` is refused after `limit` bytes.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if in_run:
        flags |= os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if in_run and e.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link; ctm does not follow links inside a run directory "
                        f"(replace it by the file itself)") from None
        raise
    try:
        if in_run and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path} is not a regular file; a run directory holds plain files")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise error(f"{path} is larger than {_size(limit)}, more than any file ctm reads there; is it the "
                    f"right file?")
    return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n:,} bytes"


def parse_json(data: bytes, path: str | os.PathLike[str], error: type[Exception] = ValueError) -> Any:
    """`data` (read from `path`) as JSON; malformed, non-UTF-8 or too deeply nested text is `error`."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path} nests too deeply to be a ctm file") from None


def read_json(path: str | os.PathLike[str], limit: int = JSON_LIMIT, error: type[Exception] = ValueError, *,
              in_run: bool = False) -> Any:
    """A JSON file read with `read_bounded` and `parse_json`."""
    return parse_json(read_bounded(path, limit, error, in_run=in_run), path, error)


def no_links_below(root: str | os.PathLike[str], path: str | os.PathLike[str],
                   error: type[Exception] = ValueError) -> Path:
    """`path` (under `root`), refused with `error` when it or a folder between `root` and it is a symbolic
    link (`root` itself may be one: the user chose it). Missing components are fine."""
    root, path = Path(root), Path(path)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise error(f"{current} is a symbolic link; ctm does not follow links inside a run directory "
                        f"(replace it by what it points to, or remove it)")
    return path
