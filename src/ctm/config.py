"""`CTMConfig`: the architecture of a Continuous Thought Machine, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any


def option(default: Any, help: str, **rules: Any) -> Any:
    """A config field whose metadata holds its help and value rules: `min` (a lower bound) and `choices`
    (and, for the command line only, a `metavar`).

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


BACKBONES = ("tutorial", "tutorial-s2d",
             *(f"resnet{depth}-{stages}" for depth in (18, 34, 50, 101, 152) for stages in (1, 2, 3, 4)),
             "shallow-wide", "sign-embedding", "none")
# Backbone names of earlier versions -> today's (a config.json that records one loads as today's)
BACKBONE_ALIASES = {"parity": "sign-embedding"}
POSITIONAL_EMBEDDINGS = ("none", "learnable-fourier", "multi-learnable-fourier", "custom-rotational",
                         "custom-rotational-1d")
NEURON_SELECTIONS = ("first-last", "random", "random-pairing")
#: How a tick reads its input (`ctm.nn.readers`).
INPUT_READERS = ("attention", "direct", "schedule")
#: The fields the direct reader has no use for (no attention, no action synchronisation, no image channels):
#: they must keep their defaults.
DIRECT_UNUSED = ("heads", "n_synch_action", "in_channels")
#: The most values one part of a model may hold (its parameters, or the predictions of one sample over its
#: ticks): 2^40, 4 TiB of float32, beyond any machine's memory and far below sizes whose byte counts overflow.
MAX_PART_SIZE = 2**40
#: The fields beyond the tutorial's model: at their defaults a config is the tutorial's architecture.
OFFICIAL_OPTIONS = ("backbone", "positional_embedding", "neuron_selection", "n_self_pairs", "synapse_depth",
                    "deep_nlms", "nlm_layernorm", "nlm_temperature", "dropout", "nlm_dropout", "out_positions",
                    "input_reader", "input_tokens", "fixed_tokens")


@dataclass(frozen=True)
class CTMConfig:
    """Sizes and options of a CTM. Defaults are the seed tutorial's MNIST model.

    iterations is T (internal ticks), d_model is D (neurons), memory_length is M (the length of each
    neuron's pre-activation trace), d_input the width of the attention output (and of the tutorial's
    backbone). The fields after in_channels are the official implementation's options.
    """

    iterations: int = option(30, "internal ticks T (input_reader schedule: the ticks of the longest schedule "
                             "trained on; a schedule may take any number)", min=1)
    d_model: int = option(128, "neurons D", min=1)
    d_input: int = option(32, "width of what a tick reads (the attention output, or the direct "
                          "reader's input) and of the backbone", min=1)
    memory_length: int = option(15, "length M of each neuron's pre-activation trace", min=1)
    heads: int = option(1, "attention heads (must divide d_input)", min=1)
    n_synch_out: int = option(16, "neurons in the output synchronisation", min=1)
    n_synch_action: int = option(16, "neurons in the action synchronisation", min=1)
    memory_hidden_dims: int = option(8, "hidden units of each neuron-level model", min=1)
    out_dims: int = option(10, "classes (outputs per tick); training takes it from the data", min=1)
    in_channels: int = option(1, "channels of the input images; training takes it from the data", min=1)
    # The official implementation's options (README "The official CTM's options and weights"); the defaults
    # are the tutorial's (`tutorial_options`). The fast engine runs most of them (`engine.covers`).
    backbone: str = option("tutorial", "input backbone: the tutorial's two conv blocks, tutorial-s2d (the same "
                           "at half resolution after a 2x2 space-to-depth), a truncated ResNet "
                           "(resnet<depth>-<stages>), shallow-wide, sign-embedding (an embedding of each +-1 of a "
                           "sequence) or none (the input's channels are the features)", choices=BACKBONES)
    positional_embedding: str = option("none", "positional embedding added to the backbone's features",
                                       choices=POSITIONAL_EMBEDDINGS)
    neuron_selection: str = option("first-last", "which neurons synchronise: first-last (output pairs among "
                                   "the first n_synch_out, action among the last n_synch_action), random "
                                   "(all pairs of two random selections) or random-pairing (n random pairs)",
                                   choices=NEURON_SELECTIONS)
    n_self_pairs: int = option(0, "with random-pairing: how many of the pairs join a neuron with itself", min=0)
    synapse_depth: int = option(1, "synapse layers: 1 is Linear-GLU-LayerNorm, more is a U-Net", min=1)
    deep_nlms: bool = option(True, "two-layer neuron-level models (off: one linear layer and a GLU)")
    nlm_layernorm: bool = option(False, "LayerNorm over each neuron's trace before its model")
    nlm_temperature: bool = option(False, "a learnable temperature dividing each neuron-level model layer")
    dropout: float = option(0.0, "dropout on the synapses and the attention weights", min=0)
    nlm_dropout: float = option(0.0, "dropout on the neuron-level models' inputs", min=0)
    out_positions: int = option(1, "output positions: out_dims is positions x classes, and certainty is the "
                                "mean over the positions", min=1)
    input_reader: str = option("attention", "how a tick reads its input (ctm.nn.readers): attention (a query "
                               "from the action synchronisation attends over the input's tokens, the same at "
                               "every tick), direct (a (B, d_input) vector goes to the synapses at every tick: "
                               "the official sort model) or schedule (inputs that change over ticks, phase by "
                               "phase attended or fed directly: the official QAMNIST model)",
                               choices=INPUT_READERS)
    input_tokens: int = option(0, "input_reader schedule: rows of the token table a Phase('token', ids) reads "
                               "(0: none)", min=0)
    fixed_tokens: int = option(0, "the first fixed_tokens rows of the token table are the sinusoidal embeddings "
                               "of their index, not trained (the official QAMNIST index embeddings); the rest "
                               "are learned", min=0)

    def __post_init__(self) -> None:
        if self.backbone in BACKBONE_ALIASES:  # a name of earlier versions
            object.__setattr__(self, "backbone", BACKBONE_ALIASES[self.backbone])
        check_fields(self)  # a size of True is a bug, not a 1: bool is refused where an int is expected
        self._check_size()  # first: the checks below may compute with the sizes
        if self.out_dims < 2:
            raise ValueError(
                f"CTMConfig.out_dims must be at least 2 (certainty is a normalised entropy over the "
                f"classes), got {self.out_dims}"
            )
        if self.out_dims % self.out_positions or self.out_dims // self.out_positions < 2:
            raise ValueError(
                f"CTMConfig.out_positions ({self.out_positions}) must divide out_dims ({self.out_dims}) into "
                f"positions of at least 2 classes each"
            )
        for name in ("dropout", "nlm_dropout"):
            if getattr(self, name) >= 1:
                raise ValueError(f"CTMConfig.{name} must be below 1 (a probability), got {getattr(self, name)}")
        self._check_options()
        for name in ("n_synch_out", "n_synch_action")[:1 if self.input_reader == "direct" else 2]:
            # random selections draw with replacement, so only first-last needs that many neurons
            if getattr(self, name) > self.d_model and self.neuron_selection == "first-last":
                raise ValueError(
                    f"CTMConfig.{name} ({getattr(self, name)}) must not exceed d_model ({self.d_model}): "
                    f"synchronisation pairs are taken from the model's own neurons"
                )
        if self.d_input % self.heads != 0:
            raise ValueError(
                f"CTMConfig.d_input ({self.d_input}) must be divisible by heads ({self.heads}); "
                f"try heads in {_divisors(self.d_input)}"
            )

    def _check_size(self) -> None:
        """ValueError naming the fields of the first part of the model too large to build (`MAX_PART_SIZE`),
        computed from the sizes alone: a model of 10^12 neurons is refused here, not by torch's arithmetic."""
        D, d, M, C = self.d_model, self.d_input, self.memory_length, self.in_channels
        first_layer = 3 * C if self.backbone.startswith("resnet") else {  # weights reading the input channels
            "tutorial": 9 * C * d, "tutorial-s2d": 36 * C * d, "shallow-wide": 9 * C * 4096, "sign-embedding": 0,
            "none": C * d}[self.backbone]
        parts = (  # (what, fields, values): each part's largest weights, plus its per-pair decays and indices
            ("the synapses", ("d_model", "d_input"), (d + D) * D * (2 if self.synapse_depth == 1 else 1)),
            ("the neuron-level models", ("d_model", "memory_length", "memory_hidden_dims"),
             D * M * (2 * self.memory_hidden_dims if self.deep_nlms else 2)),
            ("the output synchronisation", ("n_synch_out", "out_dims"), self.synch_size_out * (self.out_dims + 3)),
            ("the action synchronisation", ("n_synch_action", "d_input"), self.synch_size_action * (d + 3)),
            ("the attention", ("d_input",), 4 * d * d),
            ("the backbone's first layer", ("in_channels", "d_input"), first_layer),
            ("the predictions of one sample", ("out_dims", "iterations"), self.out_dims * self.iterations),
            ("the token table", ("input_tokens", "d_input"), self.input_tokens * d),
        )
        for what, names, size in parts:
            if size > MAX_PART_SIZE:
                given = ", ".join(f"CTMConfig.{n}={getattr(self, n)}" for n in names)
                raise ValueError(f"{given} make {what} too large to build ({size:.3g} values; ctm builds at most "
                                 f"2^40 = {MAX_PART_SIZE:.3g}, 4 TiB of float32, beyond any machine's memory); "
                                 f"choose smaller sizes")

    def _check_options(self) -> None:
        """The combinations of the official options that make a model."""
        self._check_reader()
        if self.neuron_selection == "random-pairing":
            for name in ("n_synch_out", "n_synch_action")[:1 if self.input_reader == "direct" else 2]:
                if self.n_self_pairs >= getattr(self, name):
                    raise ValueError(
                        f"CTMConfig.n_self_pairs ({self.n_self_pairs}) must be below {name} "
                        f"({getattr(self, name)}): it counts pairs among them")
        elif self.n_self_pairs:
            raise ValueError(f"CTMConfig.n_self_pairs ({self.n_self_pairs}) applies only to "
                             f"neuron_selection 'random-pairing', not {self.neuron_selection!r}")
        one_d = self.positional_embedding == "custom-rotational-1d"
        if self.positional_embedding != "none" and self.backbone == "none":
            raise ValueError(f"CTMConfig.positional_embedding {self.positional_embedding!r} needs a backbone "
                             f"(backbone 'none' has no feature map to embed positions of)")
        if self.backbone == "sign-embedding" and self.positional_embedding not in ("none", "custom-rotational-1d"):
            raise ValueError(f"CTMConfig.positional_embedding {self.positional_embedding!r} is for image "
                             f"features; the sign-embedding backbone's sequence takes 'custom-rotational-1d' or "
                             f"'none'")
        if one_d and self.backbone != "sign-embedding":
            raise ValueError(f"CTMConfig.positional_embedding 'custom-rotational-1d' is for sequences; "
                             f"backbone {self.backbone!r} makes image features (use a 2-d embedding)")
        if self.in_channels != 1 and self.backbone == "sign-embedding":
            raise ValueError(f"CTMConfig.in_channels must be 1 with the sign-embedding backbone (its input is one "
                             f"sequence of +-1 per sample), got {self.in_channels}")

    def _check_reader(self) -> None:
        """The direct reader feeds its input (B, d_input) to the synapses as it is: no backbone, no attention.
        Only a schedule reads tokens."""
        if self.input_tokens and self.input_reader != "schedule":
            raise ValueError(f"CTMConfig.input_tokens ({self.input_tokens}) applies to input_reader 'schedule' (its "
                             f"token phases), not {self.input_reader!r}; leave it at 0")
        if self.fixed_tokens > self.input_tokens:
            raise ValueError(f"CTMConfig.fixed_tokens ({self.fixed_tokens}) counts rows of the token table, so it "
                             f"must not exceed input_tokens ({self.input_tokens})")
        if self.input_reader != "direct":
            return
        if self.backbone != "none":
            raise ValueError(f"CTMConfig.backbone must be 'none' with input_reader 'direct' (its input (B, d_input) "
                             f"goes to the synapses as it is), got {self.backbone!r}")
        defaults = {f.name: f.default for f in fields(self)}
        for name in DIRECT_UNUSED:
            if getattr(self, name) != defaults[name]:
                raise ValueError(f"CTMConfig.{name} ({getattr(self, name)}) does not apply with input_reader "
                                 f"'direct' (no attention, no action synchronisation, no image channels); "
                                 f"leave it at {defaults[name]}")

    @property
    def tutorial_options(self) -> bool:
        """Whether every official option is at the tutorial's choice (what the fast engine covers)."""
        return all(getattr(self, f.name) == f.default for f in fields(self) if f.name in OFFICIAL_OPTIONS)

    @property
    def synch_size_out(self) -> int:
        """Length of the output synchronisation vector: pairs of the n_synch_out selected neurons."""
        return _synch_size(self.neuron_selection, self.n_synch_out)

    @property
    def synch_size_action(self) -> int:
        """Length of the action synchronisation vector: pairs of the n_synch_action selected neurons."""
        return _synch_size(self.neuron_selection, self.n_synch_action)

    @property
    def d_backbone(self) -> int:
        """Channels of the backbone's features (what the key/value projection takes)."""
        if self.backbone.startswith("resnet"):
            depth, stages = self.backbone[len("resnet"):].split("-")
            return (64 if depth in ("18", "34") else 256) * 2 ** (int(stages) - 1)
        return {"tutorial": self.d_input, "tutorial-s2d": self.d_input, "sign-embedding": self.d_input,
                "shallow-wide": 2048, "none": self.in_channels}[self.backbone]

    def to_dict(self) -> dict[str, Any]:
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
        """Rebuild from `to_json()` output; malformed or too deeply nested JSON is a ValueError."""
        from ._io import parse_json

        return cls.from_dict(parse_json(text.encode("utf-8", "surrogatepass"), "the CTMConfig JSON"))

    def replace(self, **changes: Any) -> CTMConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _synch_size(selection: str, n: int) -> int:
    """n random pairs, or all pairs i <= j of n neurons."""
    return n if selection == "random-pairing" else n * (n + 1) // 2


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]
