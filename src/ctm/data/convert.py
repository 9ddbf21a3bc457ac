"""Images of any kind and size -> a model's input batch: file paths, PIL images, numpy arrays or tensors, each
converted to the model's channels (greyscale or RGB) and resized to its input size, with values in [0, 1] as
in training. What `ctm.predict` and `ctm predict` on an image run read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["images_to_batch"]


def _read_image(path: str | os.PathLike[str], mode: str, size: tuple[int, int]) -> np.ndarray:
    """The image file at `path` as uint8 (H, W, C) of `mode` at `size`: decoded as a folder dataset's files are
    (a JPEG at a reduced scale where it can be), so what it holds at once is at most the decoded 8-bit image.

    An image of more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (Pillow's guard against decompression bombs) is
    refused from its header, before anything is decoded.
    """
    import warnings

    from PIL import Image

    from .folders import draft_jpeg, fit_image

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
        from .folders import fit_image

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
