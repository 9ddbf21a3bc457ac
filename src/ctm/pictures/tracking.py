"""What the tick viewer shows of every task: a tracked forward, and the part of the page's data all tasks share.

`track` runs the model with tracking on a batch of inputs (images, sequences, whatever the model reads) and
returns the page's common part — certainty per tick, the traces of the neurons that move most, the most
certain tick — together with the raw per-tick arrays (logits, attention), from which a task builds its own
panels' data (`Task.viewer_data`). Numbers are rounded so 100 samples stay a few hundred KB.

The page's data (the JSON `ctm.pictures.viewer.viewer_html` inlines) is::

    {"format": 2, "kind": <the renderer's name: its task's>, "title": str, "source": str,
     "ticks": T, "neurons": [K neuron indices], "threshold": float,
     "samples": [{"index": int, "certainty": [T], "traces": [T][K], "most_certain_tick": int,
                  "right": bool (optional: its answer at the most certain tick is right), ...the task's fields}],
     ...the task's fields}

This module imports no task, so the tasks' own viewer code can build on it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ..training.batches import eval_mode

if TYPE_CHECKING:
    from ..nn.model import ContinuousThoughtMachine

__all__ = ["DEFAULT_NEURONS", "DEFAULT_THRESHOLD", "FORMAT", "Tracked", "b64", "scaled_u8", "track"]

DEFAULT_THRESHOLD = 0.9
DEFAULT_NEURONS = 8
#: the version of the page's data layout (2: a "kind" names the renderer of the task's panels)
FORMAT = 2


class Tracked(NamedTuple):
    """The per-tick arrays of a tracked forward, samples first (float64 numpy)."""

    logits: np.ndarray  # (B, T, O) the output logits per tick
    certainty: np.ndarray  # (B, T) 1 - normalised entropy
    attention: np.ndarray  # (B, T, N) attention weights over the N tokens, mean over heads
    post: np.ndarray  # (B, T, D) post-activations
    token_grid: tuple[int, int]  # (H', W'): token n is (n // W', n % W'); (1, L) for a sequence


def b64(a: np.ndarray) -> str:
    """Bytes of a uint8 array as base64 text (the page decodes it with `CTM.decode`)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def scaled_u8(a: np.ndarray) -> np.ndarray:
    """`a` (..., N) >= 0 scaled so each row's largest value is 255 (an all-zero row stays 0), as uint8."""
    peak = a.max(axis=-1, keepdims=True)
    return np.clip(a / np.where(peak > 0, peak, 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


@torch.inference_mode()
def _forward(model: ContinuousThoughtMachine, inputs: torch.Tensor, batch_size: int) -> Tracked:
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"logits": [], "certainty": [], "attention": [], "post": []}
    grid = (1, 1)
    with eval_mode(model):
        for x in inputs.split(batch_size):
            out = model(x.to(device=device, dtype=torch.float32), track=True)
            tr = out.tracking
            grid = tuple(int(v) for v in tr.token_grid)
            parts["logits"].append(out.predictions.float().permute(0, 2, 1).cpu().numpy())
            parts["certainty"].append(out.certainties[:, 1].float().cpu().numpy())
            parts["attention"].append(tr.attention.float().mean(2).permute(1, 0, 2).cpu().numpy())
            parts["post"].append(tr.post_activations.float().permute(1, 0, 2).cpu().numpy())
    # float64 before rounding: a rounded float32 prints as 0.09300000220537186 in JSON.
    arrays = {k: np.concatenate(v).astype(np.float64) for k, v in parts.items()}
    return Tracked(arrays["logits"], arrays["certainty"], arrays["attention"], arrays["post"], grid)


def track(model: ContinuousThoughtMachine, inputs: torch.Tensor, kind: str, *,
          indices: Sequence[int] | None = None, title: str = "CTM", source: str = "",
          threshold: float = DEFAULT_THRESHOLD, n_neurons: int = DEFAULT_NEURONS,
          batch_size: int = 50) -> tuple[dict[str, Any], Tracked]:
    """Run `model` with tracking on `inputs` (B, ...) in eval mode (its mode is restored) and return the
    page's common part for renderer `kind` (see the module docstring) and the arrays a task draws from.

    `indices` are the samples' numbers in their dataset (shown in the picker; default 0..B-1). The
    `n_neurons` neurons whose post-activations vary most over ticks (the same for every sample, so traces
    compare across samples) are traced.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind names the page's renderer (a task name), got {kind!r}")
    B = int(inputs.shape[0])
    indices = list(range(B)) if indices is None else [int(i) for i in indices]
    if B == 0 or len(indices) != B:
        raise ValueError(f"need at least one sample and one index per sample, got {B} samples, "
                         f"{len(indices)} indices")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a certainty in [0, 1], got {threshold}")
    tracked = _forward(model, inputs, batch_size)
    post = tracked.post
    neurons = np.argsort(-post.var(axis=1).mean(axis=0), kind="stable")[:max(1, min(n_neurons, post.shape[2]))]
    neurons = np.sort(neurons)
    most_certain = tracked.certainty.argmax(axis=1)  # (B,) the tick `ctm eval` reads each answer at
    traces = post[:, :, neurons]  # (B, T, K)
    samples = [{
        "index": indices[b],
        "certainty": np.round(tracked.certainty[b], 4).tolist(),
        "traces": np.round(traces[b], 3).tolist(),  # (T, K)
        "most_certain_tick": int(most_certain[b]),
    } for b in range(B)]
    page = {
        "format": FORMAT,
        "kind": kind,
        "title": title,
        "source": source,
        "ticks": int(tracked.logits.shape[1]),
        "neurons": neurons.tolist(),
        "threshold": float(threshold),
        "samples": samples,
    }
    return page, tracked
