"""Image classification: MNIST, Fashion-MNIST, or any source `ctm.data.load_dataset` knows, one label per
image. The task of every run that records none (all runs written before tasks existed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import CTMConfig
from ..base import Example, Task, register_task

if TYPE_CHECKING:
    from torch import Tensor

    from ...data.images import ImageDataset
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput
    from ...pictures.figures import TaskPanels
    from ...training.loop import TrainConfig


@register_task
class ImageTask(Task):
    """Classify images of `TrainConfig.dataset`; the model's in_channels and out_dims come from the data."""

    name = "image"
    sample_noun = "images"
    fixed_fields = ("in_channels", "out_dims")

    def load(self, split: str, train_config: TrainConfig, data_dir: str | None = None,
             recorded: Mapping[str, Any] | None = None) -> ImageDataset:
        from ...data.folders import parse_image_size
        from ...data.images import load_dataset

        return load_dataset(train_config.dataset, split, data_dir=data_dir, recorded=recorded,
                            image_size=parse_image_size(train_config.image_size), holdout=train_config.holdout)

    def model_fields(self, train_set: ImageDataset) -> dict[str, Any]:
        return {"in_channels": train_set.shape[0], "out_dims": train_set.num_classes}

    def check_config(self, model_config: CTMConfig, train_config: TrainConfig) -> None:
        if model_config.backbone == "parity" or model_config.out_positions != 1:
            raise ValueError("the image task trains image classifiers: CTMConfig.backbone 'parity' and "
                             "CTMConfig.out_positions above 1 are for sequence tasks (train them with --task "
                             "parity, or from Python with ctm.CTM(config).forward_tokens)")

    def dataset_record(self, train_set: ImageDataset, data_dir: str | None) -> dict[str, Any]:
        return {"name": train_set.name, "source": train_set.source,
                "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
                "shape": list(train_set.shape), "num_classes": train_set.num_classes, **train_set.record}

    def load_splits(self, train_config: TrainConfig, data_dir: str | None = None, *,
                    recorded: Mapping[str, Any] | None = None, resume: bool = False,
                    progress: bool = False) -> tuple[ImageDataset, ImageDataset]:
        from ...data.folders import parse_image_size
        from ...data.images import load_splits

        # A folder dataset on resume is read as the run recorded it, and must hold the same files (the same order).
        train_set, test_set = load_splits(train_config.dataset, data_dir=data_dir, recorded=recorded,
                                          image_size=parse_image_size(train_config.image_size),
                                          holdout=train_config.holdout, check_files=resume, progress=progress)
        if train_set.shape != test_set.shape:
            raise ValueError(f"train images {train_set.shape} and test images {test_set.shape} differ in shape")
        return train_set, test_set

    def describe_data(self, train_set: ImageDataset, test_set: ImageDataset) -> str:
        shape = "x".join(str(n) for n in train_set.shape)
        rec = train_set.record
        if rec.get("kind") != "folder":
            return (f"data: {train_set.name}, {len(train_set)} train / {len(test_set)} test images of {shape}, "
                    f"{train_set.num_classes} classes (from {train_set.source})")
        split = ("its train/ and test/ folders" if rec["layout"] == "split" else
                 f"{rec['holdout']:g} of each class held out for testing (seed {rec['holdout_seed']})")
        return (f"data: {train_set.source}: {len(train_set)} train / {len(test_set)} test images, "
                f"{'greyscale' if rec['mode'] == 'L' else 'RGB'}, resized to {shape}; {train_set.num_classes} "
                f"classes: {', '.join(train_set.class_names)}; test split: {split}"
                + (f"; {rec['skipped']} other file{'s' if rec['skipped'] > 1 else ''} skipped (not PNG/JPEG/BMP)"
                   if rec["skipped"] else "")
                + (f"; {rec['special']} special file{'s' if rec['special'] > 1 else ''} skipped (FIFO, socket or "
                   f"device)" if rec.get("special") else ""))

    def pick_example(self, model: ContinuousThoughtMachine, data: ImageDataset, index: int | None = None) -> Example:
        """Among the first THOUGHTFUL_POOL test images, the one whose probabilities change most over the ticks."""
        from .pictures import pick_example

        return pick_example(model, data, index, THOUGHTFUL_POOL)

    def thinking_panels(self, output: CTMOutput, inputs: Tensor, targets: Tensor, data: ImageDataset) -> TaskPanels:
        """The input with the attention over it and the class probabilities (`ctm.tasks.image.pictures`)."""
        from .pictures import thinking_panels

        return thinking_panels(output, inputs, targets, data.class_names)


# thinking.gif picks among this many first test images (as `ctm viz` does without --index).
THOUGHTFUL_POOL = 500
