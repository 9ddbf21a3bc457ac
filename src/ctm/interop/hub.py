"""Official CTM weights in the Hugging Face Hub layout, e.g. `SakanaAI/ctm-maze-large`.

The official `ContinuousThoughtMachine` (with `PyTorchModelHubMixin`, official commit 4a6c9c3) publishes a model
as a folder of two files:
  config.json         the constructor's keyword arguments as the mixin records them (iterations, d_model, ...,
                      prediction_reshaper, dropout, neuron_select_type, ...); Hub bookkeeping keys may sit beside
                      them (`HUB_BOOKKEEPING`, ignored); any other key is refused, naming it
  model.safetensors   the state dict (the mixin's `save_model`: a tensor shared by two names is stored once, e.g.
                      the first-last selection's left and right neuron indices)
A ctm run directory (or a bundled model) has a config.json too, but with a "model" section (and "train",
"dataset"); `is_run_config` tells them apart.

`load_hub_model(source)` converts such a folder, or `hf:OWNER/NAME` (both files downloaded with huggingface_hub:
`pip install 'torch-ctm[hub]'`), into a ctm model and the config.json payload a run of it records: a model whose
prediction_reshaper is [L, 5] with attention over 3 input channels is the maze task's (route_length L; the maze
size from the model's name where it says, else `DEFAULT_CELLS`); others record no task (the image task's).
The published official maze checkpoints were trained on pictures in [0, 1] (legacy scaling, which the official
analysis assumes), ctm's maze task feeds [-1, 1]: a maze model's pixel range (`PIXEL_RANGES`, "0..1" unless
told) is folded into its first convolution (`fold_pixel_range`), so the converted model reads the task's
pictures and computes what the official model computed on the same pictures in [0, 1]; "-1..1" converts as is.
`ctm convert-official FOLDER --out RUN` writes that run directory, `ctm.load_pretrained(FOLDER or "hf:...")`
returns the model, and `--pretrained hf:OWNER/NAME` reads it in ctm eval, viz and view.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .official import OFFICIAL_ARGUMENTS, fold_pixel_range, from_official_state_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HF_PREFIX = "hf:"
INSTALL_HINT = "pip install 'torch-ctm[hub]'"
#: keys a Hub config.json may hold besides the official constructor's arguments: what PyTorchModelHubMixin,
#: the Hub and transformers-style tools write for bookkeeping. Ignored; any other unknown key is refused.
HUB_BOOKKEEPING = frozenset({
    "_name_or_path", "_commit_hash", "architectures", "model_type", "library_name", "transformers_version",
    "huggingface_hub_version", "torch_dtype", "dtype", "tags", "license", "pipeline_tag", "repo_url", "docs_url",
    "paper_url", "language", "datasets", "metrics", "base_model", "model_card_template", "model_name",
})
#: maze size (cells a side) recorded when the model's name does not say (the maze task's default, 15x15 pixels)
DEFAULT_CELLS = 7
#: the maze pictures each official maze dataset holds, by the word in the model's name (`tasks/mazes/train.py`:
#: 39x39 for mazes-small and mazes-medium, 99x99 for mazes-large, the size the mixin's dummy forward uses)
MAZE_SIDES = {"large": 99, "medium": 39, "small": 39}
#: the pixel ranges an official maze model may have been trained on; the first, the published checkpoints'
#: legacy range, is folded into the model so that it reads the maze task's pictures in [-1, 1]
PIXEL_RANGES = ("0..1", "-1..1")
MAZE_PIXEL_RANGE = PIXEL_RANGES[0]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class HubError(ValueError):
    """A Hub-layout folder or hf: name that does not load, in one line."""


def is_run_config(payload: Any) -> bool:
    """Whether a config.json payload is ctm's own (a run directory or bundle: it has a "model" section) rather
    than the official mixin's constructor arguments."""
    return isinstance(payload, dict) and isinstance(payload.get("model"), dict)


def _read_config(folder: Path) -> Any:
    from .._io import read_json

    return read_json(folder / CONFIG_FILE, error=HubError)


def is_hub_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder in the Hub layout: config.json (official arguments, not a ctm run's config)
    and model.safetensors."""
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        return False
    try:
        payload = _read_config(folder)
    except (HubError, OSError):
        return False
    return isinstance(payload, dict) and not is_run_config(payload) and any(k in payload for k in OFFICIAL_ARGUMENTS)


def hub_arguments(payload: Any, where: str) -> dict[str, Any]:
    """The official constructor's arguments in a Hub config.json payload, bookkeeping keys dropped; HubError for
    a payload that is not an object, a ctm run's config, or one with a key of neither kind."""
    if is_run_config(payload):
        raise HubError(f"{where} is a ctm run's config (it has a 'model' section), not an official model's; give the "
                       f"run directory to ctm directly")
    if not isinstance(payload, dict):
        raise HubError(f"{where} must hold a JSON object of the official ContinuousThoughtMachine's arguments")
    unknown = [k for k in payload if k not in OFFICIAL_ARGUMENTS and k not in HUB_BOOKKEEPING]
    if unknown:
        raise HubError(f"{where}: unknown key {unknown[0]!r} (neither an argument of the official "
                       f"ContinuousThoughtMachine nor Hub bookkeeping)")
    return {k: v for k, v in payload.items() if k in OFFICIAL_ARGUMENTS}


def read_hub_folder(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(official arguments, state dict) of a Hub-layout folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise HubError(f"{folder} has no {name}: an official model in the Hub layout is config.json and "
                           f"model.safetensors")
    arguments = hub_arguments(_read_config(folder), str(folder / CONFIG_FILE))
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise HubError(f"{folder / WEIGHTS_FILE} is not a safetensors file ({first})") from None
    return arguments, state


def hub_repo_id(spec: str) -> str:
    """OWNER/NAME of "hf:OWNER/NAME"; HubError for anything else after the prefix."""
    repo = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    if not _REPO_ID.fullmatch(repo) or ".." in repo:
        raise HubError(f"{spec!r}: expected hf:OWNER/NAME, e.g. hf:SakanaAI/ctm-maze-large")
    return repo


def _hf_hub_download(repo_id: str, filename: str) -> str:
    """huggingface_hub's download of one file of a model repository (its local path, cached)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename)


def download(spec: str) -> Path:
    """The local folder holding config.json and model.safetensors of `hf:OWNER/NAME` (downloaded into the
    Hugging Face cache); HubError without huggingface_hub, or when the download fails (network, wrong name)."""
    repo = hub_repo_id(spec)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise HubError(f"{spec} needs huggingface_hub to download: {INSTALL_HINT}") from None
    paths = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            paths[name] = Path(_hf_hub_download(repo, name))
        except Exception as e:  # network, missing repository or file, offline mode: all huggingface_hub's own
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise HubError(f"{spec}: cannot download {name} ({type(e).__name__}{': ' + text if text else ''})") \
                from None
    if paths[CONFIG_FILE].parent != paths[WEIGHTS_FILE].parent:  # not the Hub cache's snapshot layout
        raise HubError(f"{spec}: config.json and model.safetensors were downloaded into different folders")
    return paths[CONFIG_FILE].parent


def hub_folder(source: str | os.PathLike[str]) -> tuple[Path, str]:
    """(local folder, the model's name) of a Hub-layout folder or "hf:OWNER/NAME"."""
    text = os.fspath(source)
    if isinstance(source, str) and text.startswith(HF_PREFIX):
        return download(text), hub_repo_id(text)
    return Path(text), Path(text).resolve().name


def maze_cells(name: str) -> int:
    """The maze size (cells a side) a model's name says (`MAZE_SIDES`: ...-maze-large is 49), else
    `DEFAULT_CELLS`."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    if "maze" in words or "mazes" in words:
        for word, side in MAZE_SIDES.items():
            if word in words:
                return (side - 1) // 2
    return DEFAULT_CELLS


def is_maze_model(config) -> bool:
    """Whether a converted official model is a maze model: L > 1 route steps of 5 moves each, read with
    attention from 3 channels."""
    return (config.out_positions > 1 and config.out_dims == 5 * config.out_positions
            and config.input_reader == "attention" and config.in_channels == 3)


def maze_records(config, cells: int) -> dict[str, Any]:
    """config.json's "task" and "dataset" of a converted official maze model: generated mazes of `cells` a side,
    routes of the model's L steps."""
    from ..tasks.maze import MazeTask
    from ..training.loop import TrainConfig

    task = MazeTask(cells=cells, route_length=config.out_positions)
    test = task.load("test", TrainConfig(dataset="maze"))  # nothing generated until read
    return {"task": task.record(), "dataset": task.dataset_record(test, None)}


def convert_hub(source: str | os.PathLike[str], pixel_range: str | None = None):
    """(ctm model, the extra sections of its run's config.json) of a Hub-layout folder or "hf:OWNER/NAME": the
    "official" record (arguments and where they came from), and for a maze model "task" and "dataset".

    `pixel_range` is the range of the pictures a maze model was trained on (`PIXEL_RANGES`; None: "0..1", the
    published checkpoints' legacy range): "0..1" is folded into the model (`fold_pixel_range`) so that it reads
    the maze task's pictures in [-1, 1], "-1..1" converts as is; the "official" record notes it. HubError for a
    pixel_range given for a model that is not a maze model."""
    if pixel_range is not None and pixel_range not in PIXEL_RANGES:
        raise HubError(f"pixel range {pixel_range!r}: choose " + " or ".join(repr(r) for r in PIXEL_RANGES))
    folder, name = hub_folder(source)
    arguments, state = read_hub_folder(folder)
    model = from_official_state_dict(state, "ctm", **arguments)
    where = os.fspath(source) if str(source).startswith(HF_PREFIX) else str(folder.resolve())
    extra: dict[str, Any] = {"official": {"arguments": arguments, "hub": where}}
    if is_maze_model(model.config):
        trained = pixel_range or MAZE_PIXEL_RANGE
        if trained == "0..1":
            try:
                fold_pixel_range(model)
            except ValueError as e:
                raise HubError(f"{where}: a maze model read as trained on pictures in [0, 1] (the default), but {e}; "
                               f"convert a model trained on [-1, 1] with pixel range '-1..1'") from None
        extra["official"].update(pixel_range=trained, folded=trained == "0..1")
        extra.update(maze_records(model.config, maze_cells(name)))
    elif pixel_range is not None:
        raise HubError(f"a pixel range applies to official maze models only (prediction_reshaper [L, 5] over 3 "
                       f"channels), which ctm's maze task feeds [-1, 1]; {where} is not one")
    return model, extra


def load_hub_model(source: str | os.PathLike[str], device="cpu", pixel_range: str | None = None):
    """(model in eval mode on `device`, the config.json payload a run of it records) of a Hub-layout folder or
    "hf:OWNER/NAME"; a maze model's `pixel_range` is folded as `convert_hub` says."""
    from .. import __version__

    model, extra = convert_hub(source, pixel_range)
    payload = {"ctm_version": __version__, "model": model.config.to_dict(), **extra}
    return model.to(device).eval(), payload
