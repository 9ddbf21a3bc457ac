"""Model construction by kind: the one place a run's recorded model kind becomes a module.

A run's config.json records `"model_kind"` (absent in runs written before it: "ctm") and, for kinds with
sizes of their own, `"model_options"` (the LSTM's width). `build_model(kind, config, **options)` builds it; a
new kind taking the same CTMConfig and returning the same `CTMOutput` registers a builder in `MODEL_KINDS`,
and its module says what to record with a `model_options()` method.

* `ctm`: the Continuous Thought Machine (`ctm.model`);
* `lstm`: the paper's LSTM baseline (`ctm.lstm`): the same tokens (with input_reader "direct", the same input
  vector at every tick; with "schedule", the same phases) and ticks, its width matched to the CTM's parameter
  count unless `hidden` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import CTMConfig

DEFAULT_KIND = "ctm"


def _ctm(config: CTMConfig) -> nn.Module:
    from .model import ContinuousThoughtMachine

    return ContinuousThoughtMachine(config)


def _lstm(config: CTMConfig, hidden: int = 0) -> nn.Module:
    from .lstm import LSTMBaseline

    return LSTMBaseline(config, hidden or None)


#: model kind -> builder(config, **options)
MODEL_KINDS: dict[str, Callable[..., nn.Module]] = {"ctm": _ctm, "lstm": _lstm}


def build_model(kind: str, config: CTMConfig, **extra: Any) -> nn.Module:
    """The model of kind `kind` ("ctm", ...) for `config`; extra keyword arguments go to its builder."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(sorted(MODEL_KINDS))}")
    return MODEL_KINDS[kind](config, **extra)


#: model kind -> its builder options and what each must be (kinds without options have none)
MODEL_OPTIONS: dict[str, dict[str, str]] = {"lstm": {"hidden": "a non-negative integer width (0: matched)"}}


def check_model_options(kind: str, options: Any) -> None:
    """ValueError naming what is wrong with a run's recorded `model_options` for model kind `kind`."""
    known = MODEL_OPTIONS.get(kind, {})
    if not isinstance(options, dict) or not set(options) <= set(known) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in options.values()):
        wanted = ", ".join(f"{k}: {what}" for k, what in known.items()) or "none"
        raise ValueError(f"'model_options' of model kind {kind} must be an object of its options ({wanted}), got "
                         f"{options!r}")


def run_model_kind(payload: dict[str, Any]) -> str:
    """The model kind a run's config.json payload records ("ctm" when it records none)."""
    return payload.get("model_kind", DEFAULT_KIND)


def run_model_options(payload: dict[str, Any]) -> dict[str, Any]:
    """The builder options a run's config.json payload records (none for the CTM)."""
    return dict(payload.get("model_options", {}))


def model_options(model: nn.Module) -> dict[str, Any]:
    """What a run records to rebuild `model` exactly besides its CTMConfig (its `model_options()`, if any)."""
    record = getattr(model, "model_options", None)
    return dict(record()) if callable(record) else {}


#: The CTMConfig fields that size a model's parameters.
SIZE_FIELDS = ("d_model", "d_input", "memory_length", "memory_hidden_dims", "n_synch_out", "n_synch_action")


def parameter_count(kind: str, config: CTMConfig, **extra: Any) -> int:
    """The parameters of `build_model(kind, config, **extra)`, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(kind, config, **extra).parameters())


def largest_size_field(kind: str, config: CTMConfig, **extra: Any) -> str | None:
    """The field of SIZE_FIELDS that accounts for the most of the model's parameters: the one whose value set
    to 1 removes the most (with the fields it bounds lowered alike). None when none removes any."""
    total, best, removed = parameter_count(kind, config, **extra), None, 0
    attends = config.input_reader != "direct"  # the direct reader keeps n_synch_action at its default
    for name in SIZE_FIELDS if attends else (f for f in SIZE_FIELDS if f != "n_synch_action"):
        small: dict[str, Any] = {name: 1}
        if name == "d_model":  # first-last takes the synchronised neurons among d_model's
            small.update(n_synch_out=1, **({"n_synch_action": 1} if attends else {}))
        if name == "d_input":
            small["heads"] = 1
        if name in ("d_model", "n_synch_out", "n_synch_action"):
            small["n_self_pairs"] = 0
        try:
            fewer = total - parameter_count(kind, config.replace(**small), **extra)
        except ValueError:  # no valid model with that field at 1
            continue
        if fewer > removed:
            best, removed = name, fewer
    return best
