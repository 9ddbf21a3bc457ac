"""Modules that moved into subpackages in ctm 0.2: the old import paths keep working, as aliases.

`import ctm.checkpoint` (or `from ctm.view import write_viewer`) gives the module at its new path
(`ctm.runs.checkpoint`, `ctm.pictures.viewer`), the same module object, with a DeprecationWarning naming that
path. New code imports the new paths. Names that moved out of a module (`MOVED_NAMES`) are found there the same
way, through the module's `__getattr__`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

# old name under ctm -> new name under ctm
MOVED = {
    "model": "nn.model", "models": "nn.kinds", "lstm": "nn.lstm", "backbones": "nn.backbones",
    "positional": "nn.positional", "synapses": "nn.synapses", "engine": "nn.engine", "native": "nn.native",
    "halting": "nn.halting",
    "idx": "data.idx", "datasets": "data.sources", "folders": "data.folders",
    "checkpoint": "runs.checkpoint",
    "train": "training.loop", "evaluate": "training.evaluate", "losses": "training.losses",
    "distributed": "training.distributed",
    "seed": "interop.tutorial", "official": "interop.official",
    "viz": "pictures.figures", "view": "pictures.viewer", "viz_parity": "tasks.parity.pictures",
    "bench": "measure",
}

# names that moved out of a module: module under ctm -> {name: the module under ctm that holds it now}
MOVED_NAMES = {
    "pictures.figures": dict.fromkeys(("thinking_gif", "thinking_frames", "pick_thinking_example", "select_example",
                                       "ThinkingPick"), "tasks.image.pictures"),
    # ctm.data was a module (now the package ctm.data): its names
    "data": {**dict.fromkeys(("ImageDataset", "load_dataset", "load_splits", "random_affine", "DataError"),
                             "data.images"), **dict.fromkeys(("EpochSampler", "mix_seed"), "data.sampling")},
}


def moved_to(old: str) -> str | None:
    """The new dotted path of `ctm.<old>`, or None when it did not move."""
    new = MOVED.get(old)
    return None if new is None else f"ctm.{new}"


def moved_name(module: str, name: str):
    """Attribute `name` of `module` (its full dotted name) that moved to another module: that module's, with a
    DeprecationWarning naming it; AttributeError for any other name (a module's `__getattr__` calls this)."""
    new = MOVED_NAMES.get(module.removeprefix("ctm."), {}).get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{module}.{name} moved to ctm.{new}; import it from there", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(f"ctm.{new}"), name)


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system sets the alias's spec on it: put its own back
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith("ctm.") or fullname.count(".") != 1:
            return None
        new = moved_to(fullname[4:])
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
