"""`ctm predict` on a parity run: sequences of + and - in, the cumulative parity at every position out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .viewer import bits

if TYPE_CHECKING:
    from ...nn.outputs import CTMOutput

SIGNS = {"+": 1.0, "-": -1.0}


def parse_sequences(texts: Sequence[str], length: int) -> tuple[Tensor, list[str]]:
    """Sequences written with + (+1) and - (-1), `length` characters each (surrounding blanks ignored) ->
    a batch (B, length) of +-1 and the sequences as their names; a ValueError names the first bad one."""
    rows, names = [], []
    for i, text in enumerate(texts, 1):
        seq = text.strip()
        where = f"sequence {i} ({seq!r})" if len(texts) > 1 else f"sequence {seq!r}"
        bad = next(((k, c) for k, c in enumerate(seq) if c not in SIGNS), None)
        if bad is not None:
            raise ValueError(f"{where}: {bad[1]!r} at position {bad[0] + 1} is not + or -; write a sequence as "
                             f"{length} characters + (+1) and - (-1), e.g. {'+-' * (length // 2)}{'+' * (length % 2)}")
        if len(seq) != length:
            raise ValueError(f"{where} has {len(seq)} positions; this run reads sequences of length {length}")
        rows.append([SIGNS[c] for c in seq])
        names.append(seq)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), length), names


def answer(output: CTMOutput, row: int, tick: int | None) -> dict[str, Any]:
    """The parity at every position of sample `row` at `tick` (default its most certain tick)."""
    if tick is None:
        tick = int(output.certainties[row, 1].argmax())
    pairs = output.predictions[row, :, tick].float().reshape(-1, 2)  # (L, 2): positions x (even, odd)
    return {"parity": bits(pairs.argmax(-1).tolist()), "tick": tick + 1,
            "certainty": float(output.certainties[row, 1, tick]),
            "odd_probability": [round(float(p), 4) for p in pairs.softmax(-1)[:, 1]]}


def record(output: CTMOutput, row: int, name: str, tick: int | None) -> dict[str, Any]:
    return {"sequence": name, **answer(output, row, tick)}


def line(output: CTMOutput, row: int, name: str, tick: int | None) -> str:
    a = answer(output, row, tick)
    return (f"{name}: parity {a['parity']} (tick {a['tick']} of {output.predictions.shape[-1]}, certainty "
            f"{a['certainty']:.3f})")
