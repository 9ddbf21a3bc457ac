"""The sort task's part of the tick viewer (kind "sort"): the numbers, the class emitted at each tick, the sorted
list decoded up to the selected tick, right and wrong. The renderer is viewer.js here.

Per sample, besides what every task has (`ctm.pictures.tracking`): "numbers" (the N inputs, rounded),
"target" (their argsort: the index of the smallest first), "best" ((T,) the most likely class at each tick, N
the blank), "order" (the indices emitted over all ticks, in order, as `ctm.tasks.sort.ctc.decode` reads them),
"emitted_at" (the tick, 0-based, each was emitted at), "placed" (how many sit at their place in the sorted
order), "right" (the whole order right: what `ctm eval` counts, from all ticks) and "probs" (base64 uint8
(T, N + 1): every class's probability at every tick times 255, the blank last). At the top: "n" (N).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...pictures.tracking import DEFAULT_NEURONS, DEFAULT_THRESHOLD, b64, track
from .ctc import decode

if TYPE_CHECKING:
    from ...nn.model import ContinuousThoughtMachine

SCRIPT = Path(__file__).resolve().with_name("viewer.js")


def sort_viewer_data(model: ContinuousThoughtMachine, numbers: torch.Tensor, indices: list[int] | None = None, *,
                     title: str = "CTM", source: str = "", n_neurons: int = DEFAULT_NEURONS,
                     threshold: float = DEFAULT_THRESHOLD, batch_size: int = 50) -> dict[str, Any]:
    """What the viewer page shows for numbers (B, N) to sort (the targets are their argsort)."""
    numbers = torch.as_tensor(numbers)
    if numbers.dim() != 2 or numbers.shape[1] < 1:
        raise ValueError(f"numbers (B, N) to sort, got shape {tuple(numbers.shape)}")
    N = numbers.shape[1]
    if model.config.out_dims != N + 1:
        raise ValueError(f"the model emits {model.config.out_dims} classes, {N} numbers need {N + 1} (the blank "
                         f"last)")
    page, tracked = track(model, numbers.float(), "sort", indices=indices, title=title, source=source,
                          threshold=threshold, n_neurons=n_neurons, batch_size=batch_size)
    logits = tracked.logits  # (B, T, N + 1)
    d = decode(torch.from_numpy(logits).permute(0, 2, 1), N)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    probs = np.clip(np.round(z / z.sum(-1, keepdims=True) * 255), 0, 255).astype(np.uint8)
    x = numbers.float().cpu()
    targets = x.argsort(dim=1)
    for b, s in enumerate(page["samples"]):
        k = int(d.count[b])
        order = d.order[b, :k].tolist()
        placed = sum(1 for i, c in enumerate(order[:N]) if c == int(targets[b, i]))
        s.update({
            "numbers": np.round(x[b].double().numpy(), 4).tolist(),
            "target": targets[b].tolist(),
            "best": d.best[b].tolist(),
            "order": order,
            "emitted_at": d.ticks[b, :k].tolist(),
            "placed": placed,
            "right": placed == N and k == N,
            "probs": b64(probs[b]),
        })
    page["n"] = int(N)
    return page


def dataset_viewer_data(model: ContinuousThoughtMachine, data: Any, n: int, *, threshold: float) -> dict[str, Any]:
    """The page's data for the first `n` samples of `data` (`SortTask.viewer_data`)."""
    n = min(n, len(data))
    x, _ = data.batch(torch.arange(n))
    return sort_viewer_data(model, x, source=f"sort {data.split} samples of {x.shape[1]} numbers",
                            threshold=threshold)


def script() -> str:
    """The page's renderer of kind "sort" (viewer.js)."""
    return SCRIPT.read_text(encoding="utf-8")
