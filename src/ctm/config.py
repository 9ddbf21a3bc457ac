"""`CTMConfig`: the architecture of a Continuous Thought Machine, validated on construction."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class CTMConfig:
    """Sizes of a CTM. Defaults are the seed tutorial's MNIST model.

    iterations is T (internal ticks), d_model is D (neurons), memory_length is M (the length of each
    neuron's pre-activation trace), d_input the width of the attention output and of the backbone.
    """

    iterations: int = 30
    d_model: int = 128
    d_input: int = 32
    memory_length: int = 15
    heads: int = 1
    n_synch_out: int = 16
    n_synch_action: int = 16
    memory_hidden_dims: int = 8
    out_dims: int = 10
    in_channels: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # bool is an int subclass; a size of True is a bug, not a 1.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"CTMConfig.{f.name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"CTMConfig.{f.name} must be a positive integer, got {value}")
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
