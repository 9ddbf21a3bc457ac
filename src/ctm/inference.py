"""Use a trained CTM from Python: load a run directory, turn images into predictions.

    run = ctm.load_run("runs/mnist-20261129-101500")
    for p in ctm.predict(run, ["seven.png", "two.jpg"]):
        print(p.class_name, p.probability, p.tick)

Images may be file paths, PIL images, numpy arrays or tensors, of any size: each is converted to the run's
channels (greyscale or RGB) and resized to its input size, with values in [0, 1] as in training. A dark drawing on
a light background, for a model trained on light on dark (MNIST), goes in with `invert=True`;
`check_polarity(run, images)` says which images look that way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .config import CTMConfig
from .data.convert import images_to_batch
from .runs.checkpoint import RunDirError, load_model

if TYPE_CHECKING:
    from .nn.model import ContinuousThoughtMachine
    from .training.loop import TrainConfig


class DataInfo(NamedTuple):
    """What a run was trained on."""

    name: str | None  # dataset name, e.g. "mnist"
    class_names: tuple[str, ...]
    shape: tuple[int, int, int] | None  # (C, H, W) of the training images; None when the run does not say
    data_dir: str | None  # the --data-dir it was trained with, if any
    # the median of its training images' border pixels in [0, 1] (ctm.data.polarity): ~0 a dark background, as
    # MNIST's, ~1 a light one; None when the run does not say
    border: float | None = None


class Run(NamedTuple):
    """A trained run: its model (in eval mode), configs and data description."""

    model: ContinuousThoughtMachine
    config: CTMConfig
    train_config: TrainConfig | None
    data: DataInfo
    path: Path


class Prediction(NamedTuple):
    """One image's answer."""

    label: int  # predicted class index
    class_name: str
    probability: float  # softmax probability of that class at the answering tick
    tick: int  # the answering tick, 1-based: the most certain one, or the halting tick with halt_certainty
    certainty: float  # 1 - normalised entropy at that tick


def _known_shape(path: Path, dataset: str | None) -> tuple[int, int, int] | None:
    """The input size of a run that does not record one (a bundled model, a converted official run): the images
    of a bundle's shipped test slice, else that of the IDX datasets ctm knows (MNIST and Fashion-MNIST: 1x28x28)."""
    from .data.sources import DATASETS
    from .pretrained import SLICE_FILE

    slice_file = path / SLICE_FILE
    if slice_file.is_file() and not slice_file.is_symlink():
        from safetensors import safe_open

        try:
            with safe_open(str(slice_file), "pt") as f:
                shape = f.get_slice("images").get_shape()
            if len(shape) == 4 and all(isinstance(n, int) and n > 0 for n in shape[1:]):
                return tuple(shape[1:])  # type: ignore[return-value]
        except Exception:  # a damaged slice: fall through to what the dataset's name says
            pass
    return (1, 28, 28) if dataset in DATASETS else None


def _known_border(path: Path, dataset: str | None) -> float | None:
    """The training background of a run that does not record one: that of a bundle's shipped test slice, else
    that of the IDX datasets ctm knows (MNIST and Fashion-MNIST: black, 0)."""
    from .data.polarity import BORDER_SAMPLE, dataset_border
    from .data.sources import DATASETS
    from .pretrained import SLICE_FILE

    slice_file = path / SLICE_FILE
    if slice_file.is_file() and not slice_file.is_symlink():
        from safetensors import safe_open

        try:
            with safe_open(str(slice_file), "pt") as f:
                images = f.get_slice("images")[:BORDER_SAMPLE]
            if images.dtype == torch.uint8 and images.dim() == 4:
                return dataset_border(images)
        except Exception:  # a damaged slice: fall through to what the dataset's name says
            pass
    return 0.0 if dataset in DATASETS else None


def load_run(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Run:
    """Load the run directory at `path`: the model in eval mode on `device`, its configs and data description."""
    from .data.sources import DATASETS
    from .training.loop import TrainConfig

    path = Path(path)
    model, payload = load_model(path, device)
    model.eval()
    train = payload.get("train")
    try:
        train_config = TrainConfig.from_dict(train) if isinstance(train, dict) else None
    except (TypeError, ValueError):
        train_config = None  # weights and model config are what inference needs
    dataset = payload.get("dataset") if isinstance(payload.get("dataset"), dict) else {}
    name = dataset.get("name") if isinstance(dataset.get("name"), str) else None
    c = model.config
    names = dataset.get("class_names")
    if not (isinstance(names, list) and len(names) == c.out_dims and all(isinstance(n, str) for n in names)):
        spec = DATASETS.get(name) if name else None
        names = spec.class_names if spec is not None and len(spec.class_names) == c.out_dims else None
    shape = dataset.get("shape")  # (C, H, W), recorded by ctm train
    shape = tuple(shape) if isinstance(shape, list) and len(shape) == 3 and all(
        isinstance(n, int) and n > 0 for n in shape) else _known_shape(path, name)
    data_dir = dataset.get("data_dir") if isinstance(dataset.get("data_dir"), str) else None
    border = dataset.get("border")  # recorded by ctm train
    border = float(border) if isinstance(border, (int, float)) and not isinstance(border, bool) and \
        0 <= border <= 1 else _known_border(path, name)
    data = DataInfo(name, tuple(names) if names else tuple(str(i) for i in range(c.out_dims)), shape, data_dir,
                    border)
    return Run(model, c, train_config, data, path)


@torch.no_grad()
def predict(run_or_model: Run | ContinuousThoughtMachine, images: Any, *, halt_certainty: float | None = None,
            size: tuple[int, int] | None = None, class_names: tuple[str, ...] | None = None,
            invert: bool = False) -> list[Prediction]:
    """Classify images (paths, PIL images, arrays or tensors, any size) with a run or a model.

    The answer of each image is taken at its most certain tick, or with `halt_certainty` at the first tick
    whose certainty reaches it (adaptive computation, `ctm.think`). `size` (H, W) is the input size;
    a run knows it, a bare model needs it unless the images already have the size wanted. `invert` swaps
    light and dark first (1 - x, pixels in [0, 1]): for dark drawings on a light background given to a model
    trained on light on dark, as MNIST's (`check_polarity` says which images look inverted).
    """
    if isinstance(run_or_model, Run):
        model, names = run_or_model.model, class_names or run_or_model.data.class_names
        shape = run_or_model.data.shape
        size = size or (tuple(shape[1:]) if shape else None)
    else:
        model, names = run_or_model, class_names
    c = model.config
    if size is None:
        raise ValueError("predict needs the input size (H, W): pass size=, or a Run that records it")
    names = names or tuple(str(i) for i in range(c.out_dims))
    device = next(model.parameters()).device
    x = images_to_batch(images, c.in_channels, size).to(device=device, dtype=model.start_trace.dtype)
    if invert:
        x = 1 - x
    model.eval()
    if halt_certainty is not None:
        out = model.think(x, halt_certainty)
        probs = out.logits.softmax(-1)
        ticks, labels, certainty = out.ticks, out.prediction, out.certainty
        p = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    else:
        result = model(x)
        tick = result.certainties[:, 1].argmax(-1)  # (B,) the most certain tick
        rows = torch.arange(x.shape[0], device=device)
        logits = result.predictions[rows, :, tick]  # (B, C)
        labels = logits.argmax(-1)
        p = logits.softmax(-1).gather(1, labels.unsqueeze(1)).squeeze(1)
        ticks, certainty = tick + 1, result.certainties[rows, 1, tick]
    return [Prediction(int(lab), names[int(lab)], float(pr), int(t), float(ce))
            for lab, pr, t, ce in zip(labels, p, ticks, certainty, strict=True)]


def check_polarity(run: Run, images: Any) -> list[str | None]:
    """For each image (as `predict` takes them) whose background is clearly the opposite of the run's training
    data's (a dark drawing on a light background for MNIST's light on dark), what it is in words; None for the
    others, and for all when the run does not know its training background (`DataInfo.border`). Such an image
    is most likely predicted right with `predict(..., invert=True)`."""
    from .data.polarity import opposite_polarity

    shape = run.data.shape
    if shape is None:
        raise ValueError("check_polarity needs the run's input size, which it does not record")
    return opposite_polarity(images_to_batch(images, run.config.in_channels, tuple(shape[1:])), run.data.border)


__all__ = ["DataInfo", "Prediction", "Run", "RunDirError", "check_polarity", "images_to_batch", "load_run",
           "predict"]
