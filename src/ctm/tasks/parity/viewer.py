"""The parity task's part of the tick viewer (kind "parity"): the sequence, the attention over its positions,
and the predicted parity against the truth at every position, tick by tick. The renderer is viewer.js here.

Per sample, besides what every task has (`ctm.pictures.tracking`): "sequence" (L characters + and -),
"target" (the true cumulative parity, L characters 0 and 1), "prediction" (the predicted parity at the most
certain tick), "right" (every position right there), "right_positions" (how many), "odd" (base64 uint8
(T, L): the probability of odd at each tick and position times 255, at least 128 exactly where the model
answers odd), "attention" (base64 uint8 (T, N), each tick scaled so its largest weight is 255),
"attention_max" ((T,) the most-attended position) and "attention_peak" ((T,) its weight). At the top:
"length" (L) and "tokens" (N, the positions attended over: L for the parity backbone).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...pictures.tracking import DEFAULT_NEURONS, DEFAULT_THRESHOLD, b64, scaled_u8, track

if TYPE_CHECKING:
    from ...nn.model import ContinuousThoughtMachine

SCRIPT = Path(__file__).resolve().with_name("viewer.js")


def bits(values: Any) -> str:
    """0/1 values -> "0110..."."""
    return "".join("1" if int(v) else "0" for v in values)


def signs(values: Any) -> str:
    """+-1 values -> "+-+..."."""
    return "".join("-" if float(v) < 0 else "+" for v in values)


def odd_probabilities(logits: np.ndarray) -> np.ndarray:
    """Logits (..., 2L) laid out positions x classes -> the probability of odd (..., L)."""
    pairs = logits.reshape(*logits.shape[:-1], -1, 2)
    return 1.0 / (1.0 + np.exp(pairs[..., 0] - pairs[..., 1]))


def parity_viewer_data(model: ContinuousThoughtMachine, sequences: torch.Tensor, targets: torch.Tensor,
                       indices: list[int] | None = None, *, title: str = "CTM", source: str = "",
                       n_neurons: int = DEFAULT_NEURONS, threshold: float = DEFAULT_THRESHOLD,
                       batch_size: int = 50) -> dict[str, Any]:
    """What the viewer page shows for parity sequences (B, L) of +-1 with their targets (B, L) of 0/1."""
    sequences, targets = torch.as_tensor(sequences), torch.as_tensor(targets)
    if sequences.dim() != 2 or targets.shape != sequences.shape:
        raise ValueError(f"sequences (B, L) and targets (B, L) of the same shape, got {tuple(sequences.shape)} and "
                         f"{tuple(targets.shape)}")
    L = sequences.shape[1]
    if model.config.out_dims != 2 * L:
        raise ValueError(f"the model answers {model.config.out_dims // 2} positions, the sequences have {L}")
    page, tracked = track(model, sequences.float(), "parity", indices=indices, title=title, source=source,
                          threshold=threshold, n_neurons=n_neurons, batch_size=batch_size)
    odd = odd_probabilities(tracked.logits)  # (B, T, L)
    pairs = tracked.logits.reshape(*tracked.logits.shape[:2], L, 2)
    answers = pairs.argmax(-1)  # (B, T, L): exactly what the loss and evaluation read
    odd_u8 = np.clip(np.round(odd * 255), 0, 255).astype(np.uint8)
    odd_u8 = np.where(answers == 1, np.maximum(odd_u8, 128), np.minimum(odd_u8, 127)).astype(np.uint8)
    attention = tracked.attention
    x, y = sequences.cpu().numpy(), targets.cpu().numpy()
    for b, s in enumerate(page["samples"]):
        answer = answers[b, s["most_certain_tick"]]
        hits = int((answer == y[b]).sum())
        s.update({
            "sequence": signs(x[b]),
            "target": bits(y[b]),
            "prediction": bits(answer),
            "right": hits == L,
            "right_positions": hits,
            "odd": b64(odd_u8[b]),
            "attention": b64(scaled_u8(attention[b])),
            "attention_max": attention[b].argmax(axis=1).tolist(),
            "attention_peak": np.round(attention[b].max(axis=1), 4).tolist(),
        })
    page.update({"length": int(L), "tokens": int(attention.shape[2])})
    return page


def dataset_viewer_data(model: ContinuousThoughtMachine, data: Any, n: int, *, threshold: float) -> dict[str, Any]:
    """The page's data for the first `n` sequences of `data` (`ParityTask.viewer_data`)."""
    n = min(n, len(data))
    x, y = data.batch(torch.arange(n))
    return parity_viewer_data(model, x, y, source=f"parity {data.split} sequences of length {x.shape[1]}",
                              threshold=threshold)


def script() -> str:
    """The page's renderer of kind "parity" (viewer.js)."""
    return SCRIPT.read_text(encoding="utf-8")
