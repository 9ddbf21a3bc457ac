"""`ctm predict` on an image run: image files in, one class per file out."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from ...inference import Run
    from ...nn.outputs import CTMOutput


def expand(paths: Sequence[str]) -> list[str]:
    """The image files `paths` name: a file as given; a folder, its PNG/JPEG/BMP files (sorted, not descending into
    subfolders); a glob pattern that names no file itself (`digits/*.png`, quoted so the shell leaves it), its
    matches (sorted). A missing path, an empty folder or pattern, or a path that is neither a regular file nor a
    folder (a FIFO, socket or device) is refused unopened, in one line."""
    from ...data.folders import EXTENSIONS

    out: list[str] = []
    for path in paths:
        p = Path(path)
        if not p.exists() and glob.has_magic(path):
            matches = sorted(m for m in glob.glob(path) if Path(m).is_file())
            if not matches:
                raise ValueError(f"{path}: the pattern matches no file")
            out += matches
        elif p.is_dir():
            files = sorted(str(f) for f in p.iterdir()
                           if f.suffix.lower() in EXTENSIONS and not f.name.startswith(".") and f.is_file())
            if not files:
                raise ValueError(f"{path}: a folder with no PNG/JPEG/BMP files in it")
            out += files
        elif not p.exists():
            raise ValueError(f"{path}: no such file")
        elif not p.is_file():
            raise ValueError(f"{path}: not a regular file; give image files or folders of them")
        else:
            out.append(path)
    return out


def parse_files(paths: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
    """PNG/JPEG/BMP files of any size (folders and glob patterns of them: `expand`) -> a batch at the run's
    channels and input size, named by their paths."""
    from ...data.convert import images_to_batch

    paths = expand(paths)
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


def invert_batch(batch: Tensor) -> Tensor:
    """Each picture's light and dark swapped: 1 - x, pixels in [0, 1] (`ctm predict --invert`)."""
    return 1 - batch


def polarity_warnings(batch: Tensor, names: Sequence[str], training_border: float | None, *,
                      inverted: bool = False) -> list[str | None]:
    """For each picture of `batch` (as the model gets it) whose background is clearly the opposite of the training
    data's (`ctm.data.polarity`), the line `ctm predict` prints on stderr, naming the fix: add --invert, or, for a
    picture that --invert turned the wrong way round, drop it; None for the others."""
    from ...data.polarity import opposite_polarity

    out: list[str | None] = []
    for name, what in zip(names, opposite_polarity(batch, training_border), strict=True):
        if what is None:
            out.append(None)
        elif inverted:
            out.append(f"{name}: --invert made it {what}; predict it without --invert")
        else:
            out.append(f"{name}: {what}; predicting it inverted is likely what you want: add --invert")
    return out
