"""`ctm predict` on an image run: image files in, one class per file out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from ...inference import Run
    from ...nn.outputs import CTMOutput


def parse_files(paths: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
    """PNG/JPEG/BMP files of any size -> a batch at the run's channels and input size, named by their paths.
    A missing path or one that is not a regular file (a folder, FIFO, socket or device) is refused unopened."""
    from ...data.convert import images_to_batch

    for path in paths:
        if not Path(path).exists():
            raise ValueError(f"{path}: no such file")
        if not Path(path).is_file():
            raise ValueError(f"{path}: not a regular file; give image files")
    if run.data.shape is None:
        raise ValueError(f"{run.path} does not record its input size; use ctm.predict(..., size=(H, W)) in Python")
    return images_to_batch(list(paths), run.config.in_channels, run.data.shape[1:]), list(paths)


def answer(output: CTMOutput, row: int, class_names: Sequence[str] | None, tick: int | None) -> dict[str, Any]:
    """The class of sample `row` at `tick` (default its most certain tick): label, class_name, probability,
    tick (1-based), certainty (as `ctm.predict`'s `Prediction`)."""
    if tick is None:
        tick = int(output.certainties[row, 1].argmax())
    logits = output.predictions[row, :, tick].float()
    label = int(logits.argmax())
    names = class_names or [str(c) for c in range(logits.shape[0])]
    return {"label": label, "class_name": names[label], "probability": float(logits.softmax(-1)[label]),
            "tick": tick + 1, "certainty": float(output.certainties[row, 1, tick])}


def record(output: CTMOutput, row: int, name: str, class_names: Sequence[str] | None,
           tick: int | None) -> dict[str, Any]:
    return {"file": name, **answer(output, row, class_names, tick)}


def line(output: CTMOutput, row: int, name: str, class_names: Sequence[str] | None, tick: int | None) -> str:
    a = answer(output, row, class_names, tick)
    return (f"{name}: {a['class_name']} (probability {a['probability']:.3f}, tick {a['tick']} of "
            f"{output.predictions.shape[-1]}, certainty {a['certainty']:.3f})")
