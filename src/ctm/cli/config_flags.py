"""Command-line flags generated from the config dataclasses, and the field-to-flag names in messages.

Every field of `CTMConfig` and `TrainConfig` gets a flag: its name with dashes (or the name in FLAG_NAMES),
its help and choices from the field's metadata (see `ctm.config.option`), its type from the field's type
(int, float, str; bool as --x/--no-x), and the value is checked by the same rules the dataclass applies.
A flag not given parses to None, so the preset (or the run, on resume) decides its value.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from .._text import printable
from ..config import CTMConfig, field_types, value_problem

# Config field -> flag name, where the flag is not the field's name with dashes.
FLAG_NAMES = {"iterations": "ticks"}


def flag_for(name: str) -> str:
    """The flag that sets config field `name`: ``iterations`` -> ``--ticks``, ``batch_size`` -> ``--batch-size``."""
    return "--" + FLAG_NAMES.get(name, name).replace("_", "-")


def _config_classes() -> dict[str, type]:
    from ..training.loop import TrainConfig

    return {"CTMConfig": CTMConfig, "TrainConfig": TrainConfig}


def with_flag_names(message: str) -> str:
    """`message` with each ``CTMConfig.<field>`` or ``TrainConfig.<field>`` written as the field's flag."""
    classes = _config_classes()

    def flag(match: re.Match) -> str:
        cls, name = classes[match[1]], match[2]
        return flag_for(name) if name in {f.name for f in dataclasses.fields(cls)} else match[0]

    return re.sub(r"\b(CTMConfig|TrainConfig)\.(\w+)", flag, message)


def _parse(f: dataclasses.Field, kind: type):
    """The argparse type of field `f`: text -> value, refused at parse time when it breaks the field's rules."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        problem = value_problem(f, kind, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def add_config_flags(group: Any, cls: type, defaults: Mapping[str, str],
                     groups: Mapping[str, Any] | None = None) -> None:
    """Add one flag per field of config dataclass `cls` to `group` (an argparse parser or group).

    `defaults` maps a field to the text of its default shown in the help; `groups` puts a field's flag in
    another group (e.g. a mutually exclusive one). The flag's dest is the field's name.
    """
    kinds = field_types(cls)
    for f in dataclasses.fields(cls):
        kind = kinds[f.name]
        if kind not in (int, float, bool, str):
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a field of type {kind}; add one to "
                            f"ctm.cli.config_flags")
        help_text = f.metadata.get("help", "")
        if f.name in defaults:
            help_text += f" (default {defaults[f.name]})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=None, help=help_text)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _parse(f, kind)
            if f.metadata.get("choices") is not None:
                kwargs["choices"] = f.metadata["choices"]
            else:
                kwargs["metavar"] = f.metadata.get("metavar") or {int: "N", float: "X", str: "NAME"}[kind]
        (groups or {}).get(f.name, group).add_argument(flag_for(f.name), **kwargs)


def shown(value: Any) -> str:
    """A default value as the help shows it: booleans as on/off."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` whose flags were given on the command line, with their values."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}


class OneLineParser(argparse.ArgumentParser):
    """Flag errors as one line, like the command's own checks (argparse prints its whole usage block). Flags are
    never abbreviated: `--step 100` is an error, not `--steps 100`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")
