"""The image task's part of the tick viewer: the input with its attention, and the class probabilities.

`image_viewer_data` builds the page's data (kind "image") for images (B, C, H, W) in [0, 1] with their
targets; `ctm.pictures.viewer.viewer_data` is this function. The renderer of the page is viewer.js here.
Per sample, besides what every task has (`ctm.pictures.tracking`): "target", "prediction" (at the most
certain tick), "right", "image" (base64 uint8 (C, H, W)), "probs" ((T, C) per mille), "attention" (base64
uint8 (T, N), each tick scaled so its largest weight is 255), "attention_max" ((T,) the most-attended
token), "attention_peak" ((T,) its weight). At the top: "classes", "input" ({"kind": "image", "shape":
[C, H, W]}) and "token_grid" ([H', W']).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...pictures.tracking import DEFAULT_NEURONS, DEFAULT_THRESHOLD, b64, scaled_u8, track

if TYPE_CHECKING:
    from ...data.images import ImageDataset
    from ...nn.model import ContinuousThoughtMachine

SCRIPT = Path(__file__).resolve().with_name("viewer.js")


def image_viewer_data(model: ContinuousThoughtMachine, images: torch.Tensor, targets: Sequence[int],
                      indices: Sequence[int] | None = None, *, title: str = "CTM", source: str = "",
                      class_names: Sequence[str] | None = None, n_neurons: int = DEFAULT_NEURONS,
                      threshold: float = DEFAULT_THRESHOLD, batch_size: int = 50) -> dict[str, Any]:
    """What the viewer page shows for images (B, C, H, W) in [0, 1] with their targets.

    `indices` are the samples' numbers in their dataset (shown in the picker; default 0..B-1). The
    `n_neurons` neurons whose post-activations vary most over ticks are traced. Returns a JSON-ready dict.
    """
    images = torch.as_tensor(images)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, C, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
    B = images.shape[0]
    targets = [int(t) for t in targets]
    if B == 0 or len(targets) != B or (indices is not None and len(indices) != B):
        raise ValueError(f"need at least one image and one target and index per image, got {B} images, "
                         f"{len(targets)} targets, {B if indices is None else len(indices)} indices")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a certainty in [0, 1], got {threshold}")
    C = model.config.out_dims
    if class_names is None:
        class_names = [str(c) for c in range(C)]
    if len(class_names) != C:
        raise ValueError(f"{len(class_names)} class names for {C} classes")
    if any(not 0 <= t < C for t in targets):
        raise ValueError(f"targets must be class indices in [0, {C})")
    page, tracked = track(model, images, "image", indices=indices, title=title, source=source,
                          threshold=threshold, n_neurons=n_neurons, batch_size=batch_size)
    logits = tracked.logits
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs = e / e.sum(axis=2, keepdims=True)  # (B, T, C)
    attention = tracked.attention
    pixels = np.clip(images.detach().float().cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
    attn_u8 = scaled_u8(attention)
    for b, s in enumerate(page["samples"]):
        prediction = int(probs[b, s["most_certain_tick"]].argmax())
        s.update({
            "target": targets[b],
            "prediction": prediction,
            "right": prediction == targets[b],
            "image": b64(pixels[b]),
            "probs": np.round(probs[b] * 1000).astype(int).tolist(),  # (T, C) per mille
            "attention": b64(attn_u8[b]),  # (T, N) scaled so each tick's largest weight is 255
            "attention_max": attention[b].argmax(axis=1).tolist(),  # (T,) the exact most-attended token
            "attention_peak": np.round(attention[b].max(axis=1), 4).tolist(),
        })
    page.update({
        "classes": list(map(str, class_names)),
        "input": {"kind": "image", "shape": list(map(int, images.shape[1:]))},
        "token_grid": [int(v) for v in tracked.token_grid],
    })
    return page


def dataset_viewer_data(model: ContinuousThoughtMachine, data: ImageDataset, n: int, *,
                        threshold: float) -> dict[str, Any]:
    """The page's data for the first `n` images of `data` (`ImageTask.viewer_data`)."""
    n = min(n, len(data))
    images, labels = data.batch(torch.arange(n))
    return image_viewer_data(model, images, labels.tolist(), source=f"{data.name} {data.split}",
                             threshold=threshold, class_names=data.class_names or None)


def script() -> str:
    """The page's renderer of kind "image" (viewer.js)."""
    return SCRIPT.read_text(encoding="utf-8")
