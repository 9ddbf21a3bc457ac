"""Continuous Thought Machines in PyTorch.

The public names below are imported on first use, so `import ctm` (and the `ctm` command's help) does not
pay for importing torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _moved

_moved.install()  # modules that moved into subpackages in 0.2 keep their old import paths

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "CTMConfig": "config",
    "CTM": "nn.model", "ContinuousThoughtMachine": "nn.model", "CTMOutput": "nn.model", "Tracking": "nn.model",
    "certainty": "nn.model", "normalised_entropy": "nn.model",
    "accuracy": "training.losses", "certainty_loss": "training.losses", "per_tick_cross_entropy": "training.losses",
    "ThinkOutput": "nn.halting", "think": "nn.halting", "Phase": "nn.readers",
    "Prediction": "inference", "Run": "inference", "load_run": "inference", "predict": "inference",
    "check_polarity": "inference",
    "list_pretrained": "pretrained", "load_pretrained": "pretrained", "model_preset": "tasks.base",
    "config_from_seed_state_dict": "interop.tutorial", "from_seed_state_dict": "interop.tutorial",
    "config_from_official": "interop.official", "from_official_state_dict": "interop.official",
}
__all__ = [
    "CTM", "CTMConfig", "CTMOutput", "ContinuousThoughtMachine", "Phase", "Prediction", "Run", "ThinkOutput",
    "Tracking",
    "accuracy", "certainty", "certainty_loss", "check_polarity", "config_from_official", "config_from_seed_state_dict",
    "from_official_state_dict", "from_seed_state_dict", "list_pretrained", "load_pretrained", "load_run",
    "model_preset", "normalised_entropy", "per_tick_cross_entropy", "predict", "think",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if _moved.moved_to(name):  # `ctm.view` after `import ctm`: the module at its new path
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'ctm' has no attribute {name!r}")


assert sorted(__all__) == sorted(_EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .config import CTMConfig
    from .inference import Prediction, Run, check_polarity, load_run, predict
    from .interop.official import config_from_official, from_official_state_dict
    from .interop.tutorial import config_from_seed_state_dict, from_seed_state_dict
    from .nn.halting import ThinkOutput, think
    from .nn.model import CTM, ContinuousThoughtMachine, CTMOutput, Tracking, certainty, normalised_entropy
    from .nn.readers import Phase
    from .pretrained import list_pretrained, load_pretrained
    from .tasks.base import model_preset
    from .training.losses import accuracy, certainty_loss, per_tick_cross_entropy
