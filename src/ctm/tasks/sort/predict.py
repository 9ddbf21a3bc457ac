"""`ctm predict` on a sort run: numbers in, the order that sorts them out, with the ticks waited before each."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .ctc import decode

if TYPE_CHECKING:
    from ...nn.outputs import CTMOutput

_SEPARATORS = re.compile(r"[\s,;]+")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def parse_numbers(texts: Sequence[str], n: int) -> tuple[Tensor, list[str]]:
    """Each text one sample: `n` numbers separated by blanks or commas -> a batch (B, n) float and each
    sample's numbers as its name; a ValueError names the first bad one."""
    rows, names = [], []
    for i, text in enumerate(texts, 1):
        parts = [p for p in _SEPARATORS.split(text.strip()) if p]
        where = f"sample {i}" if len(texts) > 1 else "the numbers"
        values = []
        for p in parts:
            try:
                v = float(p)
            except ValueError:
                raise ValueError(f"{where}: {p[:40]!r} is not a number; give {n} numbers, e.g. --numbers 0.3 -1.2 "
                                 f"...") from None
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                raise ValueError(f"{where}: {p[:40]!r} is not a finite float32 number (at most {FLOAT32_MAX:.3g} in "
                                 f"size)")
            values.append(v)
        if len(values) != n:
            hint = (" (give one sample's numbers together: --numbers X X ..., or quoted, \"X X ...\")"
                    if len(values) == 1 and len(texts) == n else "")
            raise ValueError(f"{where}: {len(values)} numbers given; this run sorts {n} at a time{hint}")
        rows.append(values)
        names.append(" ".join(parts))
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), n), names


def answer(output: CTMOutput, row: int, tick: int | None) -> dict[str, Any]:
    """The order decoded from sample `row`'s ticks up to `tick` (0-based; default all), the ticks each element
    was emitted at and waited before it."""
    predictions = output.predictions[row:row + 1].float()
    T = predictions.shape[-1]
    end = T if tick is None else tick + 1
    d = decode(predictions[..., :end])
    count = int(d.count[0])
    n = predictions.shape[1] - 1
    order = d.order[0, :count].tolist()
    return {"order": order, "complete": sorted(order) == list(range(n)),
            "emitted_at": [t + 1 for t in d.ticks[0, :count].tolist()], "waits": d.waits()[0, :count].tolist(),
            "ticks": end, "certainty": float(output.certainties[row, 1, end - 1])}


def record(output: CTMOutput, row: int, name: str, tick: int | None) -> dict[str, Any]:
    return {"numbers": [float(v) for v in name.split()], **answer(output, row, tick)}


def line(output: CTMOutput, row: int, name: str, tick: int | None) -> str:
    a = answer(output, row, tick)
    numbers = name.split()
    values = " ".join(numbers[i] for i in a["order"])
    state = "" if a["complete"] else f"; not a full order: {len(a['order'])} indices, some missing or repeated"
    return (f"order {a['order']} -> {values} (waits {a['waits']}; {a['ticks']} ticks, certainty "
            f"{a['certainty']:.3f}{state})")
