"""The image task's pictures: its panels of the thinking figure (`ctm.pictures.figures.ThinkingFigure`), the input,
the attention over it and the class probabilities, and which test image to show.

Tensors in the model, numpy in the panels: `image_panels`, `image_figure` and `thinking_frames` take numpy
arrays; `thinking_panels` reads them from a tracked forward (what `ImageTask.thinking_panels` gives
`Task.thinking_gif`), and `thinking_gif` draws one image of your own. `pick_example` is `ImageTask.pick_example`:
among the first test images, the one whose class probabilities change most over the ticks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..._text import printable
from ...pictures.figures import (
    BAR_COLOUR,
    NEUTRAL_TEXT,
    NOTE_TEXT,
    TARGET_COLOUR,
    WRONG_COLOUR,
    Panel,
    TaskPanels,
    ThinkingFigure,
    _colour_bar,
    save_gif,
)
from ...training.batches import eval_mode
from ..base import Example, tracked_forward

if TYPE_CHECKING:
    import torch

    from ...data.images import ImageDataset
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput

__all__ = ["AttentionPanel", "InputPanel", "ProbabilitiesPanel", "ThinkingPick", "image_figure", "image_panels",
           "pick_example", "pick_thinking_example", "select_example", "thinking_frames", "thinking_gif",
           "thinking_panels"]


def _softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) -> what imshow gets: (H, W) gray with a cmap, or (H, W, 3) RGB; values in [0, 1]."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {img.shape}")
    if img.shape[0] == 3:
        img = np.transpose(img, (1, 2, 0))
        cmap = None
    else:
        img = img[0] if img.shape[0] == 1 else img.mean(axis=0)
        cmap = "binary"  # ink dark on white, like the tutorial
    finite = img[np.isfinite(img)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):  # not in [0, 1]: stretch to it
        lo, hi = float(finite.min()), float(finite.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.clip(np.nan_to_num(img), 0.0, 1.0), cmap


def _extent(disp: np.ndarray) -> tuple[float, float, float, float]:
    h, w = disp.shape[:2]
    return -0.5, w - 0.5, h - 0.5, -0.5


# ----------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------


class InputPanel(Panel):
    """The input image (gray or RGB), the same every tick."""

    def __init__(self, image: Any) -> None:
        self.disp, self.cmap = _display_image(image)

    def setup(self, fig, area) -> None:
        ax = fig.add_subplot(area)
        ax.imshow(self.disp, cmap=self.cmap, vmin=0, vmax=1, extent=_extent(self.disp), interpolation="nearest")
        ax.set_title("Input", fontsize=12)
        ax.set_axis_off()
        ax.set_anchor("N")  # top-aligned, so the panel titles line up


class AttentionPanel(Panel):
    """The attention at this tick, (T, heads, H' * W') averaged over the heads, on the token grid stretched over
    the image it attends to, with a colour bar. `scale` "tick" spans the colours over each tick's weights,
    "sample" from 0 to the largest weight of all ticks."""

    def __init__(self, image: Any, attention: Any, token_grid: Any, scale: str = "tick") -> None:
        attention = np.asarray(attention, dtype=np.float64)
        if attention.ndim == 2:  # (T, N): a single head
            attention = attention[:, None]
        if attention.ndim != 3 or attention.shape[0] < 1:
            raise ValueError(f"attention must have shape (T, heads, tokens), got {attention.shape}")
        try:
            gh, gw = (int(v) for v in token_grid)
        except (TypeError, ValueError):
            raise ValueError(f"token_grid must be a pair (H', W'), got {token_grid!r}") from None
        T, heads, n_tokens = attention.shape
        if gh < 1 or gw < 1 or gh * gw != n_tokens:
            raise ValueError(f"token_grid {gh}x{gw} does not match the {n_tokens} attention tokens")
        if scale not in ("tick", "sample"):
            raise ValueError(f"attention_scale must be 'tick' (colours span each tick's range) or 'sample' (0 to "
                             f"the sample's largest weight, the same for every tick), got {scale!r}")
        self.disp, self.cmap = _display_image(image)
        self.attention = attention.mean(axis=1).reshape(T, gh, gw)  # mean over heads
        self.heads, self.scale = heads, scale
        self._fixed = (0.0, float(np.nanmax(self.attention)) or 1e-12)

    def setup(self, fig, area) -> None:
        disp, cmap, extent = self.disp, self.cmap, _extent(self.disp)
        ax = fig.add_subplot(area)
        h, w = disp.shape[:2]
        outline = cmap is not None and disp.max() - disp.min() > 0.2  # gray: outline the image on the map
        if not outline:  # colour (or flat) image: show it through a translucent map
            ax.imshow(disp, cmap=cmap, vmin=0, vmax=1, extent=extent, interpolation="nearest")
        self.image = ax.imshow(self.attention[0], cmap="inferno", extent=extent, alpha=None if outline else 0.7,
                               interpolation="nearest", vmin=0, vmax=1)
        self.artists = [self.image]
        if outline:  # drawn every frame, over the map
            level = 0.5 * (float(disp.min()) + float(disp.max()))
            self.artists.append(ax.contour(np.arange(w), np.arange(h), disp, levels=[level], colors="#7fdbff",
                                           linewidths=1.3))
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set_title("Attention" + (f" (mean of {self.heads} heads)" if self.heads > 1 else ""), fontsize=12)
        ax.set_axis_off()
        ax.set_anchor("N")
        # Colour bar under the map: the weights its darkest and brightest colours stand for.
        self.lo_text, self.hi_text = _colour_bar(ax, [0.12, -0.085, 0.76, 0.045], 0.02, 8.5)
        self.artists += [self.lo_text, self.hi_text]
        note = "colour range: this tick's" if self.scale == "tick" else "colour range: the whole sample's"
        if outline:
            note += "\ncyan line: the input's outline"
        ax.text(0.5, -0.12, note, transform=ax.transAxes, ha="center", va="top", fontsize=8, color=NOTE_TEXT)

    def update(self, t: int):
        att = self.attention[t]
        lo, hi = (float(np.nanmin(att)), float(np.nanmax(att))) if self.scale == "tick" else self._fixed
        self.image.set_data(att)
        self.image.set_clim(lo, hi if hi > lo else lo + 1e-12)
        self.lo_text.set_text(f"{lo:.3f}")
        self.hi_text.set_text(f"{hi:.3f}")
        return self.artists


class ProbabilitiesPanel(Panel):
    """The class probabilities at this tick, (classes, T) logits softmaxed, as horizontal bars (the target
    green, a wrong prediction red); its status is the prediction and whether it is right."""

    width = 1.15

    def __init__(self, predictions: Any, target: int | None = None, class_names: Sequence[str] | None = None) -> None:
        predictions = np.asarray(predictions, dtype=np.float64)
        if predictions.ndim != 2:
            raise ValueError(f"predictions must have shape (classes, ticks), got {predictions.shape}")
        n_classes, T = predictions.shape
        if T < 1 or n_classes < 2:
            raise ValueError(f"predictions must have at least 2 classes and 1 tick, got shape {predictions.shape}")
        if class_names is None:
            class_names = [str(i) for i in range(n_classes)]
        class_names = [printable(c) for c in class_names]  # a folder's name may hold control characters
        class_names = [c if len(c) <= 18 else c[:17] + "\u2026" for c in class_names]
        if len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
        if target is not None:
            target = int(target)
            if not 0 <= target < n_classes:
                raise ValueError(f"target {target} is not a class index in [0, {n_classes})")
        self.T, self.target, self.class_names = T, target, class_names
        self.probs = _softmax(predictions, axis=0)  # (C, T)
        self.predicted = np.argmax(predictions, axis=0)  # (T,)

    def setup(self, fig, area) -> None:
        ax = fig.add_subplot(area)
        n_classes = len(self.class_names)
        y = np.arange(n_classes)
        self.bars = list(ax.barh(y, np.zeros(n_classes), height=0.78, color=BAR_COLOUR, linewidth=0))
        ax.set_yticks(y)
        ax.set_yticklabels(self.class_names, fontsize=10 if n_classes <= 12 else max(5, 120 // n_classes))
        if self.target is not None:
            ax.get_yticklabels()[self.target].set_color(TARGET_COLOUR)
            ax.get_yticklabels()[self.target].set_fontweight("bold")
        ax.set_ylim(n_classes - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1])
        ax.tick_params(labelsize=9, length=2)
        ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_title("Class probabilities", fontsize=12)
        # Long class names: move the bars right until their labels clear the panel on the left.
        column = area.colspan.start
        if column > 0:
            renderer = fig.canvas.get_renderer()
            labels_x0 = ax.yaxis.get_tightbbox(renderer).x0 / fig.bbox.width
            room = area.get_gridspec().get_grid_positions(fig)[3][column - 1] + 0.012
            if labels_x0 < room:
                pos = ax.get_position()
                shift = min(room - labels_x0, pos.width - 0.12)
                ax.set_position([pos.x0 + shift, pos.y0, pos.width - shift, pos.height])
        self.text = ax.text(0, 0, "", fontsize=9, va="center", ha="left", color=NEUTRAL_TEXT)

    def update(self, t: int):
        p = self.probs[:, t]
        pred = int(self.predicted[t])
        for k, bar in enumerate(self.bars):
            bar.set_width(p[k])
            if k == self.target:
                bar.set_facecolor(TARGET_COLOUR)
            elif k == pred and self.target is not None:
                bar.set_facecolor(WRONG_COLOUR)
            else:
                bar.set_facecolor(BAR_COLOUR)
        self.text.set_text(f"{p[pred]:.2f}")
        self.text.set_position((min(p[pred], 0.84) + 0.02, pred))
        return [*self.bars, self.text]

    def status(self, t: int) -> tuple[str, str]:
        p = self.probs[:, t]
        pred = int(self.predicted[t])
        said = f"prediction: {self.class_names[pred]} (p = {p[pred]:.2f})"
        if self.target is None:
            return said, NEUTRAL_TEXT
        if pred == self.target:
            return said + "  \u2713 correct", TARGET_COLOUR
        return said + f"  \u2717 wrong, target {self.class_names[self.target]}", WRONG_COLOUR

    def bar_values(self) -> np.ndarray:
        """The plotted class probabilities (bar lengths) of the last update."""
        return np.array([bar.get_width() for bar in self.bars])


def image_panels(image: Any, predictions: Any, attention: Any, token_grid: Any, target: int | None = None,
                 class_names: Sequence[str] | None = None, attention_scale: str = "tick") -> TaskPanels:
    """The image task's panels of one sample (arrays as `thinking_frames` documents), with the right and wrong
    ticks marked on the certainty curve when the target is known."""
    probabilities = ProbabilitiesPanel(predictions, target, class_names)
    attention = AttentionPanel(image, attention, token_grid, attention_scale)
    T = probabilities.T
    if attention.attention.shape[0] != T:
        raise ValueError(f"attention must have shape ({T}, heads, tokens), got {np.shape(attention.attention)}")
    correct = None if target is None else probabilities.predicted == target
    summary = "" if target is None else f"label {target}" + (
        f" ({probabilities.class_names[target]})" if probabilities.class_names[target] != str(target) else "")
    return TaskPanels([InputPanel(image), attention, probabilities], ticks=T, correct=correct, summary=summary)


def image_figure(image: np.ndarray, predictions: np.ndarray, certainties: np.ndarray, pre_activations: np.ndarray,
                 post_activations: np.ndarray, attention: np.ndarray, token_grid: tuple[int, int],
                 target: int | None = None, n_neurons: int = 16, class_names: Sequence[str] | None = None,
                 fig_scale: float = 1.0, attention_scale: str = "tick", caption: str | None = None,
                 blit: bool = True) -> ThinkingFigure:
    """The thinking figure of one image (arrays as `thinking_frames` documents)."""
    panels = image_panels(image, predictions, attention, token_grid, target, class_names, attention_scale)
    return ThinkingFigure(panels, certainties, post_activations, pre_activations, n_neurons=n_neurons,
                          caption=caption, fig_scale=fig_scale, blit=blit)


def thinking_frames(image: np.ndarray, predictions: np.ndarray, certainties: np.ndarray,
                    pre_activations: np.ndarray, post_activations: np.ndarray, attention: np.ndarray,
                    token_grid: tuple[int, int], target: int | None = None, n_neurons: int = 16,
                    class_names: Sequence[str] | None = None, fig_scale: float = 1.0,
                    attention_scale: str = "tick", caption: str | None = None) -> list[np.ndarray]:
    """One RGB uint8 frame per tick of one image's thought, all the same size (900 x 1000 at scale 1).

    image (C, H, W) in [0, 1]: one channel is shown in gray, three as RGB, others as their mean.
    predictions (classes, T) logits; certainties (T,) (or the model's (2, T)); pre_activations and
    post_activations (T, D); attention (T, heads, N) (or (T, N)) with N = H' * W' tokens of `token_grid`.
    Each frame shows the input, the attention (mean over heads) stretched over it, the class
    probabilities (target green), the certainty curve with the current and the most certain tick, and
    the traces of the first `n_neurons` neurons. `attention_scale` "tick" spans the colours over each tick's
    weights, "sample" from 0 to the largest weight of all ticks (a near-uniform map then looks uniform);
    a colour bar gives the range either way. `caption`, when given, is a line under the header (say, why
    this sample was chosen).
    """
    return image_figure(image, predictions, certainties, pre_activations, post_activations, attention, token_grid,
                        target, n_neurons, class_names, fig_scale, attention_scale, caption).frames()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def thinking_panels(output: CTMOutput, inputs: torch.Tensor, targets: torch.Tensor,
                    class_names: Sequence[str] | None = None) -> TaskPanels:
    """The panels of sample 0 of a tracked forward `output` of images `inputs` (b, C, H, W) with labels
    `targets` (b,) (None: unknown)."""
    if output.tracking is None:
        raise ValueError("the output has no tracking: run the model with track=True")
    tr = output.tracking
    return image_panels(_numpy(inputs[0]), _numpy(output.predictions[0]), _numpy(tr.attention[:, 0]),
                        tr.token_grid, None if targets is None else int(targets[0]), class_names or None)


def thinking_gif(model: ContinuousThoughtMachine, image: torch.Tensor | np.ndarray, target: int | None = None,
                 path: str | os.PathLike[str] | None = None, fps: float = 5,
                 class_names: Sequence[str] | None = None, n_neurons: int = 16,
                 fig_scale: float = 1.0, attention_scale: str = "tick",
                 caption: str | None = None) -> list[np.ndarray]:
    """Run `model` on one image (C, H, W) in [0, 1] and draw its thought, one frame per tick.

    The model runs in eval mode under inference_mode on its own device (its mode is restored after).
    Writes a GIF to `path` when given. Returns the frames.
    """
    import torch

    x = torch.as_tensor(image)
    if x.dim() != 3:
        raise ValueError(f"thinking_gif takes one image of shape (C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point image in [0, 1], got {x.dtype} (use image.float() / 255)")
    out = tracked_forward(model, x.unsqueeze(0))
    tr = out.tracking
    panels = image_panels(_numpy(x), _numpy(out.predictions[0]), _numpy(tr.attention[:, 0]), tr.token_grid, target,
                          class_names, attention_scale)
    frames = ThinkingFigure(panels, _numpy(out.certainties[0]), _numpy(tr.post_activations[:, 0]),
                            _numpy(tr.pre_activations[:, 0]), n_neurons=n_neurons, caption=caption,
                            fig_scale=fig_scale).frames()
    if path is not None:
        save_gif(frames, path, fps=fps)
    return frames


# ----------------------------------------------------------------------------------------------------------
# Which image
# ----------------------------------------------------------------------------------------------------------


class ThinkingPick(NamedTuple):
    """A sample chosen by `pick_thinking_example`: its index, its score and why, in words."""

    index: int
    score: float  # total variation of the class probabilities over the ticks
    reason: str


def pick_thinking_example(model: ContinuousThoughtMachine, dataset: ImageDataset, limit: int = 500,
                          batch_size: int = 250) -> ThinkingPick:
    """Among the first `limit` samples, the one on which the model most uses its ticks.

    Score: the total variation of the class probabilities across ticks, sum_t 0.5 * |p_t - p_{t-1}|_1, which
    grows with every change of prediction and of certainty. Samples answered right at their most certain
    tick are preferred (a thought that ends well); the model runs in eval mode.
    """
    import torch

    n = min(int(limit), len(dataset))
    if n < 1:
        raise ValueError("pick_thinking_example needs at least one sample")
    device = next(model.parameters()).device
    probs, certainty = [], []
    with eval_mode(model), torch.inference_mode():
        for idx in torch.arange(n).split(batch_size):
            x, _ = dataset.batch(idx)
            out = model(x.to(device))
            probs.append(out.predictions.float().softmax(1).cpu().numpy())  # (b, C, T)
            certainty.append(out.certainties[:, 1].float().cpu().numpy())  # (b, T)
    p, c = np.concatenate(probs), np.concatenate(certainty)
    labels = np.asarray(dataset.labels[:n].cpu())
    score = 0.5 * np.abs(np.diff(p, axis=2)).sum(axis=(1, 2))  # (n,)
    most_certain = c.argmax(axis=1)
    right = p[np.arange(n), :, most_certain].argmax(axis=1) == labels
    pool = np.flatnonzero(right) if right.any() else np.arange(n)
    i = int(pool[np.argmax(score[pool])])
    path = [int(k) for k in p[i].argmax(axis=0)]
    steps = [path[0]] + [k for a, k in zip(path, path[1:], strict=False) if k != a]
    names = getattr(dataset, "class_names", ()) or tuple(map(str, range(p.shape[1])))
    shown = "\u2192".join(names[k] for k in steps[:8]) + ("\u2026" if len(steps) > 8 else "")
    name = f"{getattr(dataset, 'split', '') or 'dataset'} image"
    reason = (f"of the first {n} {name}s, its probabilities change most over the ticks (prediction {shown}; "
              f"certainty {c[i, 0]:.2f} at tick 1, {c[i].max():.2f} at tick {int(most_certain[i]) + 1})")
    return ThinkingPick(i, float(score[i]), reason)


def select_example(dataset: ImageDataset, index: int | None = None,
                   label: int | None = None) -> tuple[int, torch.Tensor, int]:
    """Pick one sample: by `index`, else the first with `label`, else the first. Returns
    (index, image (C, H, W) float in [0, 1], target). A bad index or an absent label is a ValueError.
    """
    name = " ".join(s for s in (getattr(dataset, "name", ""), getattr(dataset, "split", "")) if s) or "dataset"
    n = len(dataset)
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"index must be an integer, got {index!r}")
        index = int(index)
        if not 0 <= index < n:
            raise ValueError(f"index {index} out of range for {name} ({n} images)")
        target = int(dataset.labels[index])
        if label is not None and target != int(label):
            raise ValueError(f"image {index} of {name} has label {target}, not {label}")
    elif label is not None:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"label must be an integer, got {label!r}")
        hits = (dataset.labels == int(label)).nonzero()
        if len(hits) == 0:
            classes = getattr(dataset, "num_classes", None)
            known = f" (labels are 0..{classes - 1})" if classes else ""
            raise ValueError(f"no image with label {label} in {name}{known}")
        index = int(hits[0])
        target = int(label)
    else:
        if n == 0:
            raise ValueError(f"{name} has no images")
        index, target = 0, int(dataset.labels[0])
    image = dataset.images[index].float() / 255.0
    return index, image, target


def pick_example(model: ContinuousThoughtMachine, dataset: ImageDataset, index: int | None = None,
                 pool: int = 500) -> Example:
    """`ImageTask.pick_example`: image `index` (checked), else `pick_thinking_example` among the first `pool`."""
    if index is not None:
        return Example(select_example(dataset, index)[0], "")
    pick = pick_thinking_example(model, dataset, pool)
    return Example(pick.index, pick.reason)
