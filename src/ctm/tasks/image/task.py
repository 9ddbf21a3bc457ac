"""Image classification: MNIST, Fashion-MNIST, or any source `ctm.data.load_dataset` knows, one label per
image. The task of every run that records none (all runs written before tasks existed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ...config import CTMConfig
from ..base import Example, Prediction, Preset, Task, register_task

if TYPE_CHECKING:
    from torch import Tensor

    from ...data.images import ImageDataset
    from ...inference import Run
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput
    from ...pictures.figures import TaskPanels
    from ...training.loop import TrainConfig


# The tutorial's architecture trained by the best recipe we found for it on a 2-core CPU (98.1% MNIST in
# ten minutes; docs/training.md).
_TUTORIAL_RECIPE = dict(steps=5000, batch_size=128, lr=4e-3, adam_eps=1e-8, weight_decay=0.01, warmup_steps=300,
                        schedule="cosine", min_lr_ratio=0.0, grad_clip=1.0, eval_every=1000, augment=False,
                        tick_loss_weight=1.0)

PRESETS: dict[str, Preset] = {
    "seed": Preset("image", dict(steps=2000, batch_size=64, lr=1e-4, adam_eps=1e-8, weight_decay=0.01,
                                 warmup_steps=0, schedule="constant", grad_clip=0.0, eval_every=100, augment=False),
                   summary="the seed tutorial's model and recipe exactly"),
    "tutorial": Preset("image", _TUTORIAL_RECIPE,
                       summary="the tutorial's model with the best recipe we found for it (98.1% MNIST in 10 "
                               "minutes on a 2-core CPU)"),
    # The best image model and recipe we found for ten minutes of a 2-core CPU (docs/training.md, "The
    # default image model"): the tutorial's backbone twice as wide after a space-to-depth (its first block at
    # half resolution: a step takes ~0.75 of the time) with a positional embedding, so the attention knows
    # where each token is; 4 heads; 5 ticks (MNIST is decided in the first); augmentation; 6000 steps.
    "default": Preset("image", {**_TUTORIAL_RECIPE, "steps": 6000, "augment": True},
                      dict(iterations=5, d_input=64, heads=4, memory_length=5, backbone="tutorial-s2d",
                           positional_embedding="learnable-fourier"),
                      summary="the best image model and recipe we found for 10 minutes on a 2-core CPU "
                              "(99.5% MNIST)"),
}


#: the environment variable a dataset's parent folder may come from (`ctm.data.sources`)
DATA_DIR_ENV = "CTM_DATA_DIR"


def env_data_dir(data: ImageDataset) -> str | None:
    """The folder `data`'s files were read from when $CTM_DATA_DIR led there ($CTM_DATA_DIR/<name>), else None."""
    env = os.environ.get(DATA_DIR_ENV)
    if not env or data.record.get("kind") == "folder" or not data.source:
        return None
    source = Path(data.source).resolve()
    return str(source) if source == (Path(env) / data.name).resolve() else None


@register_task
class ImageTask(Task):
    """Classify images of `TrainConfig.dataset`; the model's in_channels and out_dims come from the data."""

    name = "image"
    sample_noun = "images"
    fixed_fields = ("in_channels", "out_dims")
    fixes_fields_from = "the data"
    presets = PRESETS
    invertible = True

    def load(self, split: str, train_config: TrainConfig, data_dir: str | None = None,
             recorded: Mapping[str, Any] | None = None) -> ImageDataset:
        from ...data.folders import parse_image_size
        from ...data.images import load_dataset

        return load_dataset(train_config.dataset, split, data_dir=data_dir, recorded=recorded,
                            image_size=parse_image_size(train_config.image_size), holdout=train_config.holdout)

    def dataset_name(self, train_config: TrainConfig) -> str:
        return train_config.dataset

    def augment(self, inputs: Tensor, seed: int) -> Tensor:
        """A small random rotation, scale and shift of each image (`ctm.data.images.random_affine`)."""
        import torch

        from ...data.images import random_affine

        return random_affine(inputs, torch.Generator(device=inputs.device).manual_seed(seed))

    def eval_data(self, split: str, train_config: TrainConfig, data_dir: str | None = None, *,
                  recorded: Mapping[str, Any] | None = None, dataset: str | None = None,
                  progress: bool = False) -> ImageDataset:
        """The run's dataset split; `dataset` (`ctm eval --dataset`) names another (e.g. the folder:NEWPATH a
        moved image folder now is at)."""
        from ...data.images import load_dataset

        recorded = recorded or {}
        if dataset is None and recorded.get("kind") == "folder" and not Path(str(recorded.get("path"))).is_dir():
            raise ValueError(f"the run was trained on the image folder {recorded.get('path')}, which is gone; if it "
                             f"moved, pass --dataset folder:NEWPATH")
        name = dataset or recorded.get("name") or train_config.dataset
        data = load_dataset(name, split, data_dir=data_dir, recorded=recorded or None, progress=progress)
        if (data.record.get("layout") == "holdout" and recorded.get("files_sha1")
                and data.record["files_sha1"] != recorded["files_sha1"]):
            data.notes = [f"the files of {data.source} changed since the run was trained: its held-out test images "
                          f"may now include training images"]
        return data

    def check_eval_data(self, model_config: CTMConfig, data: ImageDataset, name: str) -> None:
        if data.shape[0] != model_config.in_channels or data.num_classes != model_config.out_dims:
            raise ValueError(f"{name} has {data.shape[0]} channel(s) and {data.num_classes} classes, but the model "
                             f"expects {model_config.in_channels} and {model_config.out_dims}")

    def model_fields(self, train_set: ImageDataset) -> dict[str, Any]:
        return {"in_channels": train_set.shape[0], "out_dims": train_set.num_classes}

    def check_config(self, model_config: CTMConfig, train_config: TrainConfig) -> None:
        if model_config.backbone == "sign-embedding" or model_config.out_positions != 1:
            raise ValueError("the image task trains image classifiers: CTMConfig.backbone 'sign-embedding' and "
                             "CTMConfig.out_positions above 1 are for sequence tasks (train them with --task "
                             "parity, or from Python with ctm.CTM(config).forward_tokens)")

    def dataset_record(self, train_set: ImageDataset, data_dir: str | None) -> dict[str, Any]:
        """config.json's "dataset" section. `data_dir` is --data-dir; without it, files found through $CTM_DATA_DIR
        are recorded too ("data_dir_from": "CTM_DATA_DIR"), so that the commands the run prints (resume, eval)
        find the same files in a shell without that variable.
        `border` is the training images' background (`ctm.data.polarity.dataset_border`), by which `ctm predict`
        tells a picture drawn the other way round (dark on light for MNIST)."""
        from ...data.polarity import dataset_border

        found = None if data_dir else env_data_dir(train_set)
        border = dataset_border(train_set.images)
        return {"name": train_set.name, "source": train_set.source,
                "data_dir": str(Path(data_dir).resolve()) if data_dir else found,
                **({"data_dir_from": DATA_DIR_ENV} if found else {}),
                "shape": list(train_set.shape), "num_classes": train_set.num_classes,
                **({"border": border} if border is not None else {}), **train_set.record}

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

    def check_dataset_record(self, record: Mapping[str, Any]) -> None:
        super().check_dataset_record(record)
        if "data_dir" in record and not isinstance(record["data_dir"], (str, type(None))):
            raise ValueError(f"'dataset.data_dir' must be str or null, got {type(record['data_dir']).__name__}")
        if "data_dir_from" in record and record["data_dir_from"] != DATA_DIR_ENV:
            raise ValueError(f"'dataset.data_dir_from' must be {DATA_DIR_ENV!r} where present, got "
                             f"{record['data_dir_from']!r}")
        border = record.get("border")
        if "border" in record and not (isinstance(border, (int, float)) and not isinstance(border, bool)
                                       and 0 <= border <= 1):
            raise ValueError(f"'dataset.border' must be a number in [0, 1] where present, got {border!r}")

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

    def pick_example(self, model: ContinuousThoughtMachine, data: ImageDataset, index: int | None = None,
                     label: int | None = None) -> Example:
        """Among the first THOUGHTFUL_POOL test images, the one whose probabilities change most over the ticks
        (`label`: the first image of that class)."""
        from .pictures import pick_example, select_example

        if label is not None:
            return Example(select_example(data, index, label)[0], "")
        return pick_example(model, data, index, THOUGHTFUL_POOL)

    def thinking_panels(self, output: CTMOutput, inputs: Tensor, targets: Tensor, data: ImageDataset) -> TaskPanels:
        """The input with the attention over it and the class probabilities (`ctm.tasks.image.pictures`)."""
        from .pictures import thinking_panels

        return thinking_panels(output, inputs, targets, data.class_names)

    def viewer_data(self, model: ContinuousThoughtMachine, data: ImageDataset, n: int, *,
                    threshold: float) -> dict[str, Any]:
        from .viewer import dataset_viewer_data

        return dataset_viewer_data(model, data, n, threshold=threshold)

    def viewer_script(self) -> str:
        from .viewer import script

        return script()

    def parse_inputs(self, texts: Sequence[str], run: Run) -> tuple[Tensor, list[str]]:
        from .predict import parse_files

        return parse_files(texts, run)

    def predict(self, run: Run, texts: Sequence[str], *, halt_certainty: float | None = None,
                invert: bool = False) -> list[Prediction]:
        """`Task.predict`, with `invert`: each picture's light and dark swapped (1 - x, pixels in [0, 1]) before
        the model sees it; its record says "inverted". A picture that goes in with its background the opposite of
        the training data's gets a warning naming the fix (`ctm.tasks.image.predict.polarity_warnings`)."""
        from .predict import invert_batch, polarity_warnings

        batch, names = self.parse_inputs(texts, run)
        if invert:
            batch = invert_batch(batch)
        warnings = polarity_warnings(batch, names, run.data.border, inverted=invert)
        return [p._replace(record={**p.record, "inverted": invert}, warning=warning)
                for p, warning in zip(self.predict_batch(run, batch, names, halt_certainty=halt_certainty),
                                      warnings, strict=True)]

    def describe_prediction(self, output: CTMOutput, row: int, name: str,
                            class_names: Sequence[str] | None = None, *, tick: int | None = None) -> str:
        from .predict import line

        return line(output, row, name, class_names, tick)

    def prediction_record(self, output: CTMOutput, row: int, name: str,
                          class_names: Sequence[str] | None = None, *, tick: int | None = None) -> dict[str, Any]:
        from .predict import record

        return record(output, row, name, class_names, tick)


# thinking.gif picks among this many first test images (as `ctm viz` does without --index).
THOUGHTFUL_POOL = 500
