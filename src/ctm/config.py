"""`CTMConfig`: the architecture of a Continuous Thought Machine, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any


def option(default: Any, help: str, **rules: Any) -> Any:
    """A config field whose metadata holds its help and value rules: `min` (a lower bound) and `choices`.

    The rules are checked by the config (`check_field`) and the command line builds its flags from them.
    """
    return field(default=default, metadata={"help": help, **rules})


def field_types(cls: type) -> dict[str, type]:
    """Each field's type (int, float, bool or str) of config dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def value_problem(f: dataclasses.Field, kind: type, value: Any) -> str | None:
    """What is wrong with `value` for field `f` of type `kind` under its metadata's rules, or None."""
    low, choices = f.metadata.get("min"), f.metadata.get("choices")
    if kind is bool:
        return None if isinstance(value, bool) else f"must be True or False, got {value!r}"
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if low is not None and value < low:
            return {0: "must be a non-negative integer", 1: "must be a positive integer"}.get(
                low, f"must be an integer >= {low}") + f", got {value!r}"
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number{'' if low is None else f' >= {low}'}, got {value!r}"
        if low is not None and value < low:
            return f"must be a finite number >= {low}, got {value!r}"
    elif kind is str and not isinstance(value, str):
        return f"must be a string, got {value!r}"
    if choices is not None and value not in choices:
        names = [repr(c) for c in choices]
        listed = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
        return f"must be {listed}, got {value!r}"
    return None


def check_fields(config: Any) -> None:
    """ValueError naming `Class.field` for the first field of `config` whose value breaks its type or rules."""
    kinds = field_types(type(config))
    for f in fields(config):
        problem = value_problem(f, kinds[f.name], getattr(config, f.name))
        if problem:
            raise ValueError(f"{type(config).__name__}.{f.name} {problem}")


@dataclass(frozen=True)
class CTMConfig:
    """Sizes of a CTM. Defaults are the seed tutorial's MNIST model.

    iterations is T (internal ticks), d_model is D (neurons), memory_length is M (the length of each
    neuron's pre-activation trace), d_input the width of the attention output and of the backbone.
    """

    iterations: int = option(30, "internal ticks T", min=1)
    d_model: int = option(128, "neurons D", min=1)
    d_input: int = option(32, "width of the attention output and of the backbone", min=1)
    memory_length: int = option(15, "length M of each neuron's pre-activation trace", min=1)
    heads: int = option(1, "attention heads (must divide d_input)", min=1)
    n_synch_out: int = option(16, "neurons in the output synchronisation", min=1)
    n_synch_action: int = option(16, "neurons in the action synchronisation", min=1)
    memory_hidden_dims: int = option(8, "hidden units of each neuron-level model", min=1)
    out_dims: int = option(10, "classes (outputs per tick); training takes it from the data", min=1)
    in_channels: int = option(1, "channels of the input images; training takes it from the data", min=1)

    def __post_init__(self) -> None:
        check_fields(self)  # a size of True is a bug, not a 1: bool is refused where an int is expected
        if self.out_dims < 2:
            raise ValueError(
                f"CTMConfig.out_dims must be at least 2 (certainty is a normalised entropy over the "
                f"classes), got {self.out_dims}"
            )
        for name in ("n_synch_out", "n_synch_action"):
            if getattr(self, name) > self.d_model:
                raise ValueError(
                    f"CTMConfig.{name} ({getattr(self, name)}) must not exceed d_model ({self.d_model}): "
                    f"synchronisation pairs are taken from the model's own neurons"
                )
        if self.d_input % self.heads != 0:
            raise ValueError(
                f"CTMConfig.d_input ({self.d_input}) must be divisible by heads ({self.heads}); "
                f"try heads in {_divisors(self.d_input)}"
            )

    @property
    def synch_size_out(self) -> int:
        """Length of the output synchronisation vector: all pairs i <= j of n_synch_out neurons."""
        return self.n_synch_out * (self.n_synch_out + 1) // 2

    @property
    def synch_size_action(self) -> int:
        """Length of the action synchronisation vector: all pairs i <= j of n_synch_action neurons."""
        return self.n_synch_action * (self.n_synch_action + 1) // 2

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CTMConfig:
        """Rebuild from `to_dict()` output; unknown keys are an error, missing keys take defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"CTMConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CTMConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> CTMConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> CTMConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]
