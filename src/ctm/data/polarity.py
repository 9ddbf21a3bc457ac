"""Light on dark or dark on light: whether a picture's background is the opposite of a model's training data.

MNIST's digits are light strokes on a black background; a digit drawn with a pen on white paper is the
reverse, and a model trained on MNIST predicts it confidently wrong. The background is told by the median of
an image's border pixels (a ring 1/14 of its side wide, channels averaged), in [0, 1]: ~0 a dark background,
~1 a light one. A run records its training images' (the median of their border medians, `dataset_border`);
`opposite_polarity` names each picture whose border is clearly on the other side of 0.5.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["border_median", "dataset_border", "describe", "opposite_polarity"]

# The training data's background counts as dark at or below this border median, light at or above 1 - it;
# between the two (natural photos, mixed backgrounds) nothing is said.
SURE_TRAINING = 0.25
# A picture's background is the opposite of a dark training background from this border median on (and of a
# light one up to 1 - it): clearly past the middle, so a grey or uneven background says nothing.
SURE_PICTURE = 0.6
# dataset_border looks at this many images at most, spread over the set.
BORDER_SAMPLE = 1000


def border_median(images: Tensor) -> Tensor:
    """(B, C, H, W) images, float in [0, 1] or uint8 -> (B,) float: the median of each one's border pixels (a ring
    max(1, min(H, W) // 14) pixels wide: 2 at 28x28), its channels averaged, in [0, 1]."""
    if images.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    k = max(1, min(h, w) // 14)
    ring = torch.ones(h, w, dtype=torch.bool, device=images.device)
    ring[k:h - k, k:w - k] = False
    grey = images[:, :, ring].float().mean(1)  # (B, ring pixels): only the border is converted
    if images.dtype == torch.uint8:
        grey = grey / 255
    if grey.shape[0] == 0:
        return grey.new_zeros(0)
    return grey.median(dim=1).values


def dataset_border(images: Tensor) -> float | None:
    """A training set's background: the median of its images' border medians (at most BORDER_SAMPLE images,
    spread evenly), rounded to 3 decimals; None for no images."""
    n = images.shape[0]
    if n == 0:
        return None
    step = max(1, -(-n // BORDER_SAMPLE))
    sample = images[::step][:BORDER_SAMPLE]
    medians = torch.cat([border_median(sample[i:i + 100]) for i in range(0, sample.shape[0], 100)])
    return round(float(medians.median()), 3)


def _side(value: float) -> str:
    return "light" if value >= 0.5 else "dark"


def describe(border: float) -> str:
    """A background's polarity in words: "light on dark" (a dark background) or "dark on light"."""
    return "dark on light" if _side(border) == "light" else "light on dark"


def opposite_polarity(images: Tensor, training_border: float | None) -> list[str | None]:
    """For each of `images` ((B, C, H, W) in [0, 1]) whose background is clearly the opposite of the training
    data's (`training_border`, `dataset_border`), what it is in words (e.g. "dark on a light background, the
    opposite of the training data (light on dark)"); None for the others. All None when the training data's
    background is unknown (None) or neither clearly dark nor clearly light."""
    if training_border is None or SURE_TRAINING < training_border < 1 - SURE_TRAINING:
        return [None] * images.shape[0]
    dark_training = training_border <= SURE_TRAINING
    out: list[str | None] = []
    for b in border_median(images).tolist():
        opposite = b >= SURE_PICTURE if dark_training else b <= 1 - SURE_PICTURE
        out.append(f"{'dark on a light' if dark_training else 'light on a dark'} background, the opposite of the "
                   f"training data ({describe(training_border)})" if opposite else None)
    return out
