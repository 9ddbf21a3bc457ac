"""The fast engine's tick loops in C++ (`ctm/csrc/ticks.cpp`), built on first use.

A training step of the tutorial's model at batch 64 runs ~40 ATen calls per tick; from Python each costs a
few microseconds of interpreter and argument parsing on top of its kernel, which at the seed's sizes is
about as long as the kernels of a tick. `ticks.cpp` makes the same calls from C++ (a few steps fused into one
pass per row; tests/test_native.py holds it to the Python loops), entered once per forward and once per
backward: a training step 13-15% faster (2 threads, the seed's sizes, timed alternating in one process).

It is compiled with torch's C++ extension builder (a C++ compiler and ninja: `pip install torch-ctm[native]`)
into `$CTM_NATIVE_DIR` (default `~/.cache/ctm/native`), one folder per source, torch and Python version, once
per machine (~20 s on 2 cores); later processes load the built library directly. When it cannot be built,
the engine runs its Python loops (the same results to rounding) and `ops()` warns once, naming the reason.
`CTM_NATIVE=0` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).parent / "csrc" / "ticks.cpp"
NAME = "ctm_native"

_state: dict[str, Any] = {"tried": False, "ops": None, "error": None}


def build_directory() -> Path:
    """Where the library is built: one folder per source, torch and Python version."""
    root = Path(os.environ.get("CTM_NATIVE_DIR") or Path.home() / ".cache" / "ctm" / "native")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    tag = f"torch{torch.__version__.replace('+', '-')}-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"
    return root.expanduser() / tag


def is_built() -> bool:
    """Whether the library is built, and no build is under way (so `ops()` only loads it)."""
    folder = build_directory()
    return (folder / f"{NAME}.so").is_file() and not (folder / "lock").exists()


def enabled() -> bool:
    return os.environ.get("CTM_NATIVE", "1") != "0"


def ops() -> Any | None:
    """`torch.ops.ctm_native` (tick_loop_train, tick_loop_backward), built or loaded on the first call; None
    when turned off (CTM_NATIVE=0) or when it cannot be built (a warning names why, once)."""
    if not enabled():
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            folder = build_directory()
            if is_built():
                torch.ops.load_library(str(folder / f"{NAME}.so"))
            else:
                from torch.utils.cpp_extension import load

                _ninja_on_path()
                folder.mkdir(parents=True, exist_ok=True)
                load(name=NAME, sources=[str(SOURCE)], extra_cflags=["-O3"], build_directory=str(folder),
                     is_python_module=False, verbose=False)
            _state["ops"] = torch.ops.ctm_native
        except Exception as e:  # no compiler, no ninja, no headers, an unwritable folder: run the Python loops
            lines = str(e).strip().splitlines() or [""]
            reason = next((line.strip() for line in lines if "error:" in line), lines[-1])  # the compiler's first
            _state["error"] = f"{type(e).__name__}: {reason}"
            warnings.warn(f"ctm: the C++ tick loop could not be built ({_state['error']}); the Python loops run "
                          f"instead (same results, slower). CTM_NATIVE=0 turns it off without this warning.",
                          RuntimeWarning, stacklevel=2)
    return _state["ops"]


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the PyPI package (`pip install ninja`, in the `native` and `dev`
    extras) keeps its binary beside itself, outside PATH when the environment is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def status() -> str:
    """One line for reports: whether the tick loops run in C++."""
    if not enabled():
        return "tick loops: Python (CTM_NATIVE=0)"
    if _state["ops"] is not None:
        return "tick loops: C++ (ctm/csrc/ticks.cpp)"
    if _state["error"]:
        return f"tick loops: Python (the C++ loop did not build: {_state['error']})"
    return "tick loops: C++ once built (ctm/csrc/ticks.cpp)"
