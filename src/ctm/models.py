"""Model construction by kind: the one place a run's recorded model kind becomes a module.

A run's config.json records `"model_kind"` (absent in runs written before it: "ctm"). `build_model(kind,
config, **extra)` builds it; a new kind (e.g. an LSTM baseline taking the same CTMConfig and returning the same
`CTMOutput`) registers a builder in `MODEL_KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .config import CTMConfig

DEFAULT_KIND = "ctm"


def _ctm(config: CTMConfig) -> nn.Module:
    from .model import ContinuousThoughtMachine

    return ContinuousThoughtMachine(config)


#: model kind -> builder(config, **extra)
MODEL_KINDS: dict[str, Callable[..., nn.Module]] = {"ctm": _ctm}


def build_model(kind: str, config: CTMConfig, **extra: Any) -> nn.Module:
    """The model of kind `kind` ("ctm", ...) for `config`; extra keyword arguments go to its builder."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(sorted(MODEL_KINDS))}")
    return MODEL_KINDS[kind](config, **extra)


def run_model_kind(payload: dict[str, Any]) -> str:
    """The model kind a run's config.json payload records ("ctm" when it records none)."""
    return payload.get("model_kind", DEFAULT_KIND)
