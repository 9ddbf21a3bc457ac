"""Use a trained CTM from Python: load a run directory, turn images into predictions.

    run = ctm.load_run("runs/mnist-20261129-101500")
    for p in ctm.predict(run, ["seven.png", "two.jpg"]):
        print(p.class_name, p.probability, p.tick)

Images may be file paths, PIL images, numpy arrays or tensors, of any size: each is converted to the run's
channels (greyscale or RGB) and resized to its input size, with values in [0, 1] as in training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .config import CTMConfig
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
        isinstance(n, int) and n > 0 for n in shape) else None
    data_dir = dataset.get("data_dir") if isinstance(dataset.get("data_dir"), str) else None
    data = DataInfo(name, tuple(names) if names else tuple(str(i) for i in range(c.out_dims)), shape, data_dir)
    return Run(model, c, train_config, data, path)


def _read_image(path: str | os.PathLike[str], mode: str, size: tuple[int, int]) -> np.ndarray:
    """The image file at `path` as uint8 (H, W, C) of `mode` at `size`: decoded as a folder dataset's files are
    (a JPEG at a reduced scale where it can be), so what it holds at once is at most the decoded 8-bit image.

    An image of more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (Pillow's guard against decompression bombs) is
    refused from its header, before anything is decoded.
    """
    import warnings

    from PIL import Image

    from .data.folders import draft_jpeg, fit_image

    if os.path.exists(path) and not os.path.isfile(path):  # reading a FIFO or a device would block or never end
        raise ValueError(f"{path}: not a regular file (a folder, FIFO, socket or device); give an image file")
    limit = Image.MAX_IMAGE_PIXELS
    bound = f"at most {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS); shrink it first"
    try:
        with warnings.catch_warnings():  # refused below, with the file named
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:  # Pillow's own limit: twice MAX_IMAGE_PIXELS
        raise ValueError(f"{path}: the image is too large to decode: {bound}") from None
    except Exception as e:  # Pillow raises many kinds for a file it cannot read
        raise ValueError(f"{path}: not a readable image file ({type(e).__name__}: {e})") from None
    with im:
        if limit and im.width * im.height > limit:
            raise ValueError(f"{path}: the image is too large to decode ({im.width}x{im.height} = "
                             f"{im.width * im.height:,} pixels): {bound}")
        try:
            draft_jpeg(im, mode, size)
            return fit_image(im, mode, size)
        except MemoryError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: not a readable image file ({type(e).__name__}: {e})") from None


def _image_array(image: Any, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as float32 (H, W, C) in [0, 1] of `mode` ("L" or "RGB") at `size` (H, W).

    Files, PIL images and uint8 arrays are converted and resized in 8 bits (`ctm.folders.fit_image`, as a
    folder dataset is); float arrays in [0, 1] are converted and resized as float32.
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return _read_image(image, mode, size).astype(np.float32) / 255
    if type(image).__module__.startswith("PIL."):
        from .data.folders import fit_image

        return fit_image(image, mode, size).astype(np.float32) / 255
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an image path, PIL image, numpy array or tensor, got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image of shape (H, W), (H, W, C) or (C, H, W), got shape {a.shape}")
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        return _image_array(Image.fromarray(np.ascontiguousarray(a)), mode, size)
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ValueError(f"a float image must hold values in [0, 1]; this one has {bad} NaN or infinite "
                         f"value(s)")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"a float image must hold values in [0, 1] (got {a.min():.3g} to {a.max():.3g}); "
                         f"pass uint8 pixels or divide by 255")
    if mode == "L" and a.ndim == 3:
        a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L"
    elif mode == "RGB" and a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    planes = a[..., None] if a.ndim == 2 else a
    if planes.shape[:2] != tuple(size):
        h, w = size
        planes = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c]))
                                      .resize((w, h), Image.Resampling.BILINEAR))
                           for c in range(planes.shape[-1])], -1)
    return planes


def images_to_batch(images: Any, channels: int, size: tuple[int, int]) -> Tensor:
    """Images of any kind and size -> a float batch (B, channels, H, W) in [0, 1] at `size` (H, W).

    A batch tensor (B, C, H, W) of the right shape passes through unchanged (refused if it holds NaN or
    infinities). Other images become `channels` 1 (greyscale) or 3 (RGB).
    """
    if isinstance(images, Tensor) and images.dim() == 4:
        if images.shape[1] == channels and tuple(images.shape[2:]) == tuple(size) and images.is_floating_point():
            if not bool(torch.isfinite(images).all()):
                raise ValueError("a float image must hold values in [0, 1]; this batch has NaN or infinite "
                                 "values")
            return images
        images = list(images)
    if isinstance(images, (str, os.PathLike, np.ndarray, Tensor)) or type(images).__module__.startswith("PIL."):
        images = [images]
    if channels not in (1, 3):
        raise ValueError(f"images convert to 1 (greyscale) or 3 (RGB) channels, but this model takes {channels}; "
                         f"pass a float tensor (B, {channels}, {size[0]}, {size[1]})")
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(images), channels, *size), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = _image_array(image, mode, size).transpose(2, 0, 1)
    return torch.from_numpy(out)


@torch.no_grad()
def predict(run_or_model: Run | ContinuousThoughtMachine, images: Any, *, halt_certainty: float | None = None,
            size: tuple[int, int] | None = None, class_names: tuple[str, ...] | None = None) -> list[Prediction]:
    """Classify images (paths, PIL images, arrays or tensors, any size) with a run or a model.

    The answer of each image is taken at its most certain tick, or with `halt_certainty` at the first tick
    whose certainty reaches it (adaptive computation, `ctm.think`). `size` (H, W) is the input size;
    a run knows it, a bare model needs it unless the images already have the size wanted.
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


__all__ = ["DataInfo", "Prediction", "Run", "RunDirError", "images_to_batch", "load_run", "predict"]
