"""Trained weights that ship inside the package, so a fresh install can watch a CTM think.

Each bundled model is a folder next to this file:
  config.json         the run's config (model, train, dataset), as in a run directory
  model.safetensors   weights and buffers
  test_slice.safetensors  the first test images (uint8 (n, C, H, W)) and labels (uint8 (n,)); only for a task
                      whose test data are files (a task that generates its data, e.g. parity, ships none: its
                      slice is the first `slice_n` samples it generates)
  record.json         the command that trained it and its measured accuracy (full test set and slice)
No pickle: weights and samples are safetensors, the rest JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write, read_json
from ..config import CTMConfig
from ..nn.model import ContinuousThoughtMachine

BUNDLE_DIR = Path(__file__).resolve().parent
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
SLICE_FILE = "test_slice.safetensors"
RECORD_FILE = "record.json"


class PretrainedError(ValueError):
    """An unknown bundled model name or an incomplete bundle."""


@dataclass(frozen=True)
class PretrainedInfo:
    """What `list_pretrained` reports about one bundled model."""

    name: str
    path: Path
    dataset: str
    record: dict[str, Any]  # the contents of record.json

    @property
    def files(self) -> dict[str, int]:
        """Bundle file name -> size in bytes."""
        return {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}


def _bundle(name: str) -> Path:
    path = BUNDLE_DIR / name
    if not name or os.sep in name or "/" in name or not (path / CONFIG_FILE).is_file():
        known = ", ".join(i.name for i in list_pretrained()) or "none"
        raise PretrainedError(f"no bundled model named {name!r} (bundled: {known})")
    for file in (MODEL_FILE, RECORD_FILE):
        if not (path / file).is_file():
            raise PretrainedError(f"bundled model {name!r} is incomplete: {path / file} is missing")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    record = read_json(path, error=PretrainedError)
    if not isinstance(record, dict):
        raise PretrainedError(f"{path} must hold a JSON object; the bundle is damaged (reinstall ctm)")
    return record


def list_pretrained() -> list[PretrainedInfo]:
    """The bundled models, by name."""
    infos = []
    for path in sorted(p for p in BUNDLE_DIR.iterdir() if (p / CONFIG_FILE).is_file() and (p / RECORD_FILE).is_file()):
        config = _read_json(path / CONFIG_FILE)
        infos.append(PretrainedInfo(path.name, path, config["dataset"]["name"], _read_json(path / RECORD_FILE)))
    return infos


def pretrained_config(name: str) -> dict[str, Any]:
    """The bundled model's config.json (model, train and dataset sections)."""
    return _read_json(_bundle(name) / CONFIG_FILE)


def pretrained_record(name: str) -> dict[str, Any]:
    """The bundled model's record.json: the command that trained it and its measured accuracy."""
    return _read_json(_bundle(name) / RECORD_FILE)


def load_pretrained(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu", *,
                    pixel_range: str | None = None) -> ContinuousThoughtMachine:
    """A bundled model by name ("mnist"), the model of a run directory, or official weights in the Hugging Face
    layout, in eval mode on `device`.

    A string naming a bundled model means that model, even where a folder of that name exists; a Path, a
    string with a separator, or any other existing folder is a run directory, unless it holds an official model
    in the Hugging Face layout (config.json of the official constructor's arguments + model.safetensors, e.g. a
    download of SakanaAI/ctm-maze-large), which is converted (`ctm.interop.hub`). "hf:OWNER/NAME" downloads
    such a folder from the Hub (`pip install 'torch-ctm[hub]'`).

    An official maze model reads pictures in [-1, 1], as ctm's maze task feeds them: the published official maze
    checkpoints were trained on [0, 1] (legacy scaling), so by default (`pixel_range` None or "0..1") that range
    is folded into the model's first 1x1 convolution, which computes on x what the official model computes on
    (x + 1) / 2; `pixel_range="-1..1"` converts it as is (as `ctm convert-official --pixel-range`). ValueError
    for `pixel_range` given for anything but official maze weights in the Hugging Face layout.
    """
    from safetensors.torch import load_file

    from ..interop.hub import HF_PREFIX, is_hub_folder, load_hub_model

    text = str(name_or_path)
    is_name = not isinstance(name_or_path, os.PathLike) and "/" not in text and os.sep not in text
    if (isinstance(name_or_path, str) and text.startswith(HF_PREFIX)) or (
            not (is_name and (BUNDLE_DIR / text / CONFIG_FILE).is_file()) and is_hub_folder(text)):
        return load_hub_model(name_or_path, device, pixel_range)[0]
    if pixel_range is not None:
        raise ValueError(f"pixel_range applies to official maze weights in the Hugging Face layout; {text} is a "
                         f"ctm run or bundled model, which reads the pictures it was trained on")
    if not (is_name and (BUNDLE_DIR / text / CONFIG_FILE).is_file()) and (not is_name or Path(text).is_dir()):
        from ..runs.checkpoint import load_model

        model, _ = load_model(Path(name_or_path), device)
        return model.eval()
    from ..nn.kinds import build_model, run_model_kind, run_model_options

    path = _bundle(str(name_or_path))
    payload = _read_json(path / CONFIG_FILE)  # the model's kind and options as its run recorded them
    model = build_model(run_model_kind(payload), CTMConfig.from_dict(payload["model"]), **run_model_options(payload))
    model.load_state_dict(load_file(str(path / MODEL_FILE)))
    return model.to(device).eval()


def shipped_data_found(name: str) -> bool:
    """Whether the files of the test split a bundled model was trained on are on this machine (else commands
    fall back to the samples shipped with it)."""
    from ..data.sources import DATASETS, find_dataset

    path = _bundle(name)
    if not (path / SLICE_FILE).is_file():  # its task generates its data: found anywhere
        return True
    dataset = (_read_json(path / CONFIG_FILE).get("dataset") or {}).get("name")
    spec = DATASETS.get(dataset)
    return spec is not None and find_dataset(dataset, files=spec.splits["test"]) is not None


def pretrained_test_slice(name: str):
    """The test samples shipped with a bundled model, as an `ImageDataset` (split "test-slice"); for a task
    that generates its data, the first `slice_n` samples of its test data (record.json)."""
    from safetensors.torch import load_file

    from ..data.images import ImageDataset

    path = _bundle(name)
    config = _read_json(path / CONFIG_FILE)
    if not (path / SLICE_FILE).is_file():
        from ..tasks import task_from_record
        from ..training.loop import TrainConfig

        task = task_from_record(config)
        data = task.eval_data("test", TrainConfig.from_dict(config["train"]))
        return First(data, int(_read_json(path / RECORD_FILE).get("slice_n", 500)))
    tensors = load_file(str(path / SLICE_FILE))
    return ImageDataset(tensors["images"], tensors["labels"].long(), int(config["model"]["out_dims"]),
                        name=config["dataset"]["name"], split="test-slice", source=str(path / SLICE_FILE))


def slice_description(name: str, task) -> str:
    """What `pretrained_test_slice(name)` holds, in words."""
    if (_bundle(name) / SLICE_FILE).is_file():
        return f"the test slice shipped with {name}"
    return f"the first test {task.sample_noun} of the {task.name} task"


class First:
    """The first `n` samples of a dataset (split "test-slice"), for a bundle whose task generates its data."""

    def __init__(self, data, n: int) -> None:
        self.data, self.n = data, min(int(n), len(data))
        self.name, self.source, self.split = data.name, data.source, "test-slice"
        self.class_names = getattr(data, "class_names", ())

    def __len__(self) -> int:
        return self.n

    def batch(self, idx):
        return self.data.batch(idx)

    def to(self, device) -> First:
        return First(self.data.to(device), self.n)


def save_bundle(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], test_data, n_slice: int,
                record: dict[str, Any]) -> Path:
    """Make a bundle folder from a run directory: its config and weights, the first `n_slice` samples of
    `test_data` (an `ImageDataset`; None for a task that generates its data) and `record` (written as
    record.json). Returns the folder."""
    from safetensors.torch import save_file

    from ..runs.checkpoint import load_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, payload = load_model(run_dir)
    if test_data is not None and int(test_data.labels.max()) > 255:
        raise ValueError("labels above 255 do not fit the slice's uint8 labels")
    payload = {k: v for k, v in payload.items() if k != "dataset"} | {
        "dataset": {"name": payload["dataset"]["name"]}}  # no machine-specific data paths
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out_dir / MODEL_FILE, lambda tmp: save_file(state, tmp))
    if test_data is not None:
        sample = {"images": test_data.images[:n_slice].contiguous(),
                  "labels": test_data.labels[:n_slice].to(torch.uint8).contiguous()}
        atomic_write(out_dir / SLICE_FILE, lambda tmp: save_file(sample, tmp))
    write_json(out_dir / CONFIG_FILE, payload)
    write_json(out_dir / RECORD_FILE, record)
    return out_dir


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """`payload` as indented JSON, written atomically."""
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
