"""Shared fixtures: the seed reference (../shared/reference/seed_ctm.py) when it is there, and Chromium under
Playwright for the page tests (`browser`: skipped with the reason when either is missing; `CTM_CHROMIUM` names
the executable)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED_PATH = Path(os.environ.get("CTM_SEED_REFERENCE", REPO.parent / "shared" / "reference" / "seed_ctm.py"))
if SEED_PATH.is_file():  # `ctm bench` (also in child processes) finds the seed only through the flag or this
    os.environ.setdefault("CTM_SEED_REFERENCE", str(SEED_PATH))


def load_seed_module():
    """Import the seed reference, or None when it is absent."""
    if not SEED_PATH.is_file():
        return None
    if "imageio" not in sys.modules:
        try:
            import imageio  # noqa: F401  (only its GIF writer uses it)
        except ImportError:
            sys.modules["imageio"] = types.ModuleType("imageio")
    spec = importlib.util.spec_from_file_location("seed_ctm_reference", SEED_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def seed():
    module = load_seed_module()
    if module is None:
        pytest.skip(f"seed reference not found at {SEED_PATH} (set CTM_SEED_REFERENCE)")
    return module


OFFICIAL_PATH = Path(os.environ.get("CTM_OFFICIAL_REFERENCE", REPO.parent / "shared" / "reference" / "official_ctm"))


@pytest.fixture(scope="session")
def official():
    """The official implementation's `models` package (../shared/reference/official_ctm), imported from its
    folder; skips when it is absent."""
    if not (OFFICIAL_PATH / "models" / "ctm.py").is_file():
        pytest.skip(f"official CTM reference not found at {OFFICIAL_PATH} (set CTM_OFFICIAL_REFERENCE)")
    sys.path.insert(0, str(OFFICIAL_PATH))
    try:
        import models.ctm
        import models.resnet
    finally:
        sys.path.remove(str(OFFICIAL_PATH))
    return models


@pytest.fixture
def isolated_rng():
    """Leave torch's and numpy's global generators as the test found them (the official code draws its
    neuron selections from numpy's), so later tests see the same random state whether or not it ran."""
    import numpy as np
    import torch

    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        yield
    np.random.set_state(numpy_state)


@pytest.fixture(scope="module")
def one_thread():
    """A module's tests compute on one thread (numbers recorded, or runs compared, on one); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _task_registry():
    """Tasks a test module registers (`register_task`, `--task module:Class`) leave with it: the next
    module sees the built-in tasks only."""
    from ctm.tasks import TASKS

    before = dict(TASKS)
    yield
    TASKS.clear()
    TASKS.update(before)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (or $CTM_CHROMIUM) under Playwright, for the viewer pages' tests."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    chromium = os.environ.get("CTM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no Chromium executable (apt-get install chromium, or set CTM_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        except Exception as e:  # a broken install: say why instead of erroring every test
            pytest.skip(f"Chromium at {chromium} does not start under Playwright: {str(e).splitlines()[0]}")
        yield b
        b.close()
