"""Run directories: a checkpoint is one folder, published by one atomic replace of a pointer file.

A run directory holds
  config.json              {"ctm_version", "model": CTMConfig, "train": TrainConfig, "dataset": {...}}
  checkpoint.json          {"step": N, "dir": "checkpoints/step-00000000N"}: names the current checkpoint
  checkpoints/step-N/      model.safetensors   weights and buffers; metadata records the step
                           trainer_state.pt    optimiser state, step, epoch (weights_only-loadable)
                           metrics.jsonl       one JSON object per evaluation, every row up to step N
  .lock                    held (fcntl.flock) by the one process that trains the run; holds its PID

`save_checkpoint` writes every file of step N into checkpoints/.step-N.tmp, fsyncs them and the folder,
renames it to step-N, then replaces checkpoint.json (write, fsync, os.replace) and only then removes the
previous checkpoint. A kill at any instant leaves checkpoint.json naming a complete checkpoint, and readers
only ever open the folder it names; the next writer removes what a kill left behind.

Runs written before this layout (model.safetensors, trainer_state.pt and metrics.jsonl at the top level,
no checkpoint.json) still load and resume; their next checkpoint replaces those files.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import __version__, _io
from .._io import _UMASK, JSON_LIMIT, POINTER_LIMIT, atomic_write, no_links_below, read_bounded, read_json
from ..config import CTMConfig
from ..nn.model import ContinuousThoughtMachine

CONFIG_FILE = "config.json"
POINTER_FILE = "checkpoint.json"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".lock"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"

# The instants of `save_checkpoint`, in order; tests kill or fail the process at each through `_fault_hook`.
SAVE_POINTS = ("tmp-dir-made", "model-written", "state-written", "metrics-written", "dir-synced",
               "dir-renamed", "pointer-written", "pointer-replaced", "previous-removed")
_fault_hook: Callable[[str], None] | None = None

_CHECKPOINT_NAME = re.compile(r"step-(\d{9,})")
_TMP_NAME = re.compile(r"\.step-(\d{9,})\.tmp")
# safetensors' dtype names of the tensors a model's state_dict may hold.
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8"}


class RunDirError(ValueError):
    """A run directory that is missing, incomplete, malformed or not a ctm run."""


class CheckpointWriteError(RunDirError):
    """A checkpoint could not be written (full disk, I/O error); the previous one is intact."""


class RunLockedError(RunDirError):
    """Another process is training the run."""


class RunFinishedError(RunDirError):
    """`train(resume=True)` of a run that already ran all its steps; `step` is the step it saved."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class Checkpoint(NamedTuple):
    """A complete checkpoint: its folder and step (None for a run in the old layout, the step is in the weights)."""

    path: Path
    step: int | None


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` says an allocation failed (Python's MemoryError, or torch's on CPU or GPU), or could not even
    be sized (more bytes than int64 counts)."""
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in (
            "out of memory", "can't allocate memory", "Storage size calculation overflowed")))


def build_model(config: CTMConfig, where: str, kind: str = "ctm",
                options: dict[str, Any] | None = None) -> ContinuousThoughtMachine:
    """The model of `config` (of `kind` with builder `options`, see `ctm.models`); a model too large for this
    machine is a ValueError naming `where` its sizes came from, not an out-of-memory error blamed on the batch."""
    from ..nn.kinds import build_model as build

    try:
        return build(kind, config, **(options or {}))
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise ValueError(f"the model {where} {'describe' if where == 'the flags' else 'describes'} does not fit in "
                         f"memory ({_too_large(config, kind, options or {})}); choose smaller sizes") from None


def _too_large(config: CTMConfig, kind: str, options: dict[str, Any]) -> str:
    """What makes the model of `config` large: its parameter count and the size field most of them come from."""
    from ..nn.kinds import SIZE_FIELDS, largest_size_field, parameter_count

    name = largest_size_field(kind, config, **options)
    if name is None:
        return ", ".join(f"CTMConfig.{n}={getattr(config, n)}" for n in SIZE_FIELDS)
    count = parameter_count(kind, config, **options)
    return f"{count:,} parameters, {count * 4 / 2**30:,.1f} GiB; most of them from CTMConfig.{name}=" \
           f"{getattr(config, name)}"


def _fault(point: str) -> None:
    if _fault_hook is not None:
        _fault_hook(point)


# ----------------------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def write_config(run_dir: Path, model_config: CTMConfig, extra: dict[str, Any]) -> None:
    payload = {"ctm_version": __version__, "model": model_config.to_dict(), **extra}
    atomic_write_text(Path(run_dir) / CONFIG_FILE, json.dumps(payload, indent=2) + "\n")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_config(payload: Any, path: Path) -> None:
    """Types of every section and field ctm reads from config.json (the dataclasses check their own)."""
    if not isinstance(payload, dict) or "model" not in payload:
        hub = isinstance(payload, dict) and "d_model" in payload and "iterations" in payload
        raise RunDirError(f"{path} is not a ctm run config: it has no 'model' section" + (
            "; it holds an official model's arguments (the Hugging Face layout): use --pretrained "
            f"{path.parent} or ctm convert-official {path.parent} --out RUN_DIR" if hub else ""))
    for section in ("model", "train", "dataset"):
        if section in payload and not isinstance(payload[section], dict):
            raise RunDirError(f"{path}: '{section}' must be an object, got {type(payload[section]).__name__}")
    try:
        CTMConfig.from_dict(payload["model"])
    except (TypeError, ValueError) as e:
        raise RunDirError(f"{path}: invalid model config: {e}") from None
    if "train" in payload and not isinstance(payload["train"].get("dataset", ""), str):
        raise RunDirError(f"{path}: 'train.dataset' must be a string, got "
                          f"{type(payload['train']['dataset']).__name__}")
    if "model_kind" in payload:
        from ..nn.kinds import MODEL_KINDS

        if not isinstance(payload["model_kind"], str):
            raise RunDirError(f"{path}: 'model_kind' must be a string, got {type(payload['model_kind']).__name__}")
        if payload["model_kind"] not in MODEL_KINDS:
            raise RunDirError(f"{path}: unknown 'model_kind' {payload['model_kind']!r}; this ctm builds "
                              f"{', '.join(sorted(MODEL_KINDS))}")
    if "model_options" in payload:
        from ..nn.kinds import check_model_options

        try:
            check_model_options(payload.get("model_kind", "ctm"), payload["model_options"])
        except ValueError as e:
            raise RunDirError(f"{path}: {e}") from None
    from ..tasks import task_from_record

    try:
        task = task_from_record(payload)
    except ValueError as e:
        raise RunDirError(f"{path}: invalid task record: {e}") from None
    try:
        task.check_dataset_record(payload.get("dataset", {}))
    except ValueError as e:
        raise RunDirError(f"{path}: {e}") from None
    if "world_size" in payload and not (_is_int(payload["world_size"]) and payload["world_size"] >= 1):
        raise RunDirError(f"{path}: 'world_size' must be a positive integer, got {payload['world_size']!r}")


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, checked to be a ctm run with fields of the right types."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file; pass the run directory (the folder holding {CONFIG_FILE})")
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    path = run_dir / CONFIG_FILE
    if not os.path.lexists(path):
        raise RunDirError(f"{run_dir} is not a ctm run directory: it has no {CONFIG_FILE}")
    payload = read_json(path, JSON_LIMIT, RunDirError, in_run=True)
    _check_config(payload, path)
    return payload


def run_dataset_name(payload: dict[str, Any]) -> str | None:
    """The dataset a run was trained on, from a checked config.json payload (None when it records none)."""
    return payload.get("dataset", {}).get("name") or payload.get("train", {}).get("dataset")


# ----------------------------------------------------------------------------------------------------------
# Finding the current checkpoint
# ----------------------------------------------------------------------------------------------------------


def _checkpoints_dir(run_dir: Path) -> Path:
    """RUN/checkpoints, refused when it is a symbolic link (it would lead reads, writes and clean-up out of
    the run)."""
    return no_links_below(run_dir, run_dir / CHECKPOINTS_DIR, RunDirError)


def _read_pointer(run_dir: Path) -> tuple[int, str]:
    """(step, folder name) from checkpoint.json, a regular file of at most POINTER_LIMIT bytes."""
    pointer = run_dir / POINTER_FILE
    try:
        payload = read_json(pointer, POINTER_LIMIT, RunDirError, in_run=True)
    except RunDirError as e:
        raise RunDirError(f"{e}. Nothing was changed; once {pointer} is removed, `ctm train --resume {run_dir}` "
                          f"recovers the newest complete checkpoint") from None
    if not isinstance(payload, dict):
        raise RunDirError(f"{pointer} must hold a JSON object, got {type(payload).__name__}")
    step, where = payload.get("step"), payload.get("dir")
    if not (_is_int(step) and step >= 0):
        raise RunDirError(f"{pointer}: 'step' must be a non-negative integer, got {step!r}")
    parts = where.split("/") if isinstance(where, str) else []
    if len(parts) != 2 or parts[0] != CHECKPOINTS_DIR or not _CHECKPOINT_NAME.fullmatch(parts[1]):
        raise RunDirError(f"{pointer}: 'dir' must name a folder {CHECKPOINTS_DIR}/step-N, got {where!r}")
    return step, parts[1]


def current_checkpoint(run_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """The complete checkpoint readers should use, or None when the run has saved none yet.

    A run whose checkpoint.json is missing while complete checkpoint folders remain (a partial copy, a
    deleted pointer) is a RunDirError naming the newest; `recover_pointer` (what `ctm train --resume` does)
    publishes it again. Nothing here follows a symbolic link inside the run.
    """
    run_dir = Path(run_dir)
    checkpoints = _checkpoints_dir(run_dir)
    if os.path.lexists(run_dir / POINTER_FILE):
        seen = None
        for _ in range(5):  # a writer may publish a newer checkpoint and remove this one meanwhile
            step, name = _read_pointer(run_dir)
            path = checkpoints / name
            if path.is_symlink():
                raise RunDirError(f"{path} is a symbolic link; ctm does not follow links inside a run directory "
                                  f"(replace it by the folder itself)")
            if path.is_dir():
                return Checkpoint(path, step)
            if (step, name) == seen:
                break
            seen = (step, name)
        raise RunDirError(f"{run_dir / POINTER_FILE} names {CHECKPOINTS_DIR}/{seen[1]}, which is missing; the run's "
                          f"checkpoint was deleted")
    folders = _step_folders(checkpoints)  # before the old layout: a migrated run may keep its old files
    if not folders and os.path.lexists(run_dir / MODEL_FILE):  # the old layout: files at the top level
        return Checkpoint(run_dir, None)
    if folders:
        step, path = folders[-1]
        raise RunDirError(f"{run_dir} has no {POINTER_FILE}, but holds {len(folders)} checkpoint folder"
                          f"{'s' if len(folders) > 1 else ''} (the newest {CHECKPOINTS_DIR}/{path.name}); nothing "
                          f"was changed: `ctm train --resume {run_dir}` recovers the newest complete one")
    return None


def _step_folders(checkpoints: Path) -> list[tuple[int, Path]]:
    """The folders checkpoints/step-N (real folders, not links), oldest first."""
    if not checkpoints.is_dir() or checkpoints.is_symlink():
        return []
    found = []
    for entry in checkpoints.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def recover_pointer(run_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """When checkpoint.json is missing but checkpoint folders remain: publish the newest complete one again
    (its three files present, its weights matching config.json and recording its step) and return it; None
    when there is nothing to recover. Deletes nothing. Only the run's writer (holding its lock) may call this.
    """
    run_dir = Path(run_dir)
    if os.path.lexists(run_dir / POINTER_FILE):
        return None
    folders = _step_folders(_checkpoints_dir(run_dir))  # (a run of the old layout's files has none)
    if not folders:
        return None
    from ..nn.kinds import run_model_kind, run_model_options

    payload = read_config(run_dir)
    config, kind, options = CTMConfig.from_dict(payload["model"]), run_model_kind(payload), run_model_options(payload)
    problems = []
    for step, path in reversed(folders):
        files = [path / name for name in (MODEL_FILE, STATE_FILE, METRICS_FILE)]
        missing = [f.name for f in files if f.is_symlink() or not f.is_file()]
        if missing:
            problems.append(f"{path.name} lacks {', '.join(missing)}")
            continue
        try:
            recorded = _check_weights_header(path / MODEL_FILE, config, kind, options)
        except RunDirError as e:
            problems.append(f"{path.name}: {e}")
            continue
        if recorded != step:
            problems.append(f"{path.name} holds the weights of step {recorded}")
            continue
        _publish(run_dir, step, path.name)
        return Checkpoint(path, step)
    raise RunDirError(f"{run_dir} has no {POINTER_FILE} and none of its checkpoint folders is complete "
                      f"({'; '.join(problems[:3])}); nothing was changed or deleted")


def _require_checkpoint(run_dir: Path) -> Checkpoint:
    found = current_checkpoint(run_dir)
    if found is None:
        raise RunDirError(f"{run_dir} has no checkpoint yet ({POINTER_FILE} or {MODEL_FILE}): "
                          f"training has not saved one")
    return found


def _reading(run_dir: Path, read: Callable[[Checkpoint], Any]) -> Any:
    """read(current checkpoint), again if a writer replaced and removed that checkpoint meanwhile (whatever
    the failure said: safetensors reports a vanished file as a RuntimeError). Never reads a half checkpoint:
    a folder is complete before the pointer names it."""
    for _ in range(5):
        found = _require_checkpoint(run_dir)
        try:
            return read(found)
        except (OSError, RuntimeError, RunDirError):
            try:
                moved = current_checkpoint(run_dir) != found
            except RunDirError:
                moved = True
            if not moved:
                raise
    return read(_require_checkpoint(run_dir))


def checkpoint_step(run_dir: str | os.PathLike[str]) -> int | None:
    """The step of the run's current checkpoint, or None when it has none."""
    run_dir = Path(run_dir)
    found = current_checkpoint(run_dir)
    if found is None:
        return None
    return found.step if found.step is not None else weights_step(run_dir)


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------


def save_weights(run_dir: Path, model: ContinuousThoughtMachine, step: int) -> None:
    """Weights alone, at the top level of `run_dir` (a run of the old layout, e.g. exported weights)."""
    data = _safetensors_bytes(model, step)
    atomic_write(Path(run_dir) / MODEL_FILE, lambda tmp: Path(tmp).write_bytes(data))


def _safetensors_bytes(model: ContinuousThoughtMachine, step: int) -> bytes:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save(tensors, metadata={"step": str(step), "ctm_version": __version__})


def _check_weights_header(path: Path, config: CTMConfig, kind: str = "ctm",
                          options: dict[str, Any] | None = None) -> int:
    """Names, shapes and dtypes in the safetensors header against the model (of `kind`) `config` describes,
    before anything is allocated (the expected model is built on the meta device). Returns the recorded step."""
    from safetensors import SafetensorError, safe_open

    from ..nn.kinds import build_model as build

    with torch.device("meta"):
        expected = build(kind, config, **(options or {})).state_dict()
    _check_size(path, _state_bytes(expected) + _HEADER_SLACK)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise RunDirError(f"{path} could not be read: {e}") from None
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise RunDirError(f"{path} does not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [f"{k} {shape} (config.json implies {tuple(expected[k].shape)})"
             for k, (shape, _) in header.items() if shape != tuple(expected[k].shape)]
    if wrong:
        raise RunDirError(f"{path} does not match the sizes in config.json: {wrong[0]}"
                          f"{f' and {len(wrong) - 1} more' if len(wrong) > 1 else ''}; was config.json edited? "
                          f"Restore it, or train a new run with the sizes you want")
    for k, (_, dtype) in header.items():
        want = _SAFETENSORS_DTYPES.get(expected[k].dtype)
        if dtype != want:
            raise RunDirError(f"{path}: tensor {k} is stored as {dtype}, but the model holds {want}; "
                              f"these are not ctm weights (ctm stores float32 weights)")
    step = metadata.get("step", "-1")
    if not re.fullmatch(r"-?\d{1,18}", step):
        raise RunDirError(f"{path}: metadata field 'step' must be an integer, got {step!r}")
    return int(step)


# Room for a file's header beside its tensors (safetensors' header, torch.save's pickle and zip records).
_HEADER_SLACK = 16 * 2**20
# metrics.jsonl: one row per evaluation, each well under a few KB
METRICS_LIMIT = 256 * 2**20


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _check_size(path: Path, limit: int) -> None:
    """A file of a checkpoint: a regular file (not a link) of at most `limit` bytes, before a reader maps it."""
    info = os.lstat(path)  # FileNotFoundError stays one: a writer may have removed it (see `_reading`)
    if stat.S_ISLNK(info.st_mode):
        raise RunDirError(f"{path} is a symbolic link; ctm does not follow links inside a run directory "
                          f"(replace it by the file itself)")
    if not stat.S_ISREG(info.st_mode):
        raise RunDirError(f"{path} is not a regular file; a checkpoint holds plain files")
    if info.st_size > limit:
        raise RunDirError(f"{path} holds {info.st_size:,} bytes, more than the model of config.json can need "
                          f"({limit:,}); it is not this run's file")


def load_model(run_dir: Path, device: str | torch.device = "cpu") -> tuple[ContinuousThoughtMachine, dict[str, Any]]:
    """Rebuild the model of a run directory from its config.json and its current checkpoint's weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..nn.kinds import run_model_kind, run_model_options

    run_dir = Path(run_dir)
    payload = read_config(run_dir)
    config, kind = CTMConfig.from_dict(payload["model"]), run_model_kind(payload)
    options = run_model_options(payload)

    read_from: list[Path] = []

    def read(found: Checkpoint) -> dict[str, torch.Tensor]:
        path = found.path / MODEL_FILE
        read_from.append(path)
        _check_weights_header(path, config, kind, options)
        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError) as e:
            raise RunDirError(f"{path} could not be read: {e}") from None

    state = _reading(run_dir, read)
    model = build_model(config, str(run_dir / CONFIG_FILE), kind, options)
    try:
        model.load_state_dict(state)
    except ValueError as e:  # e.g. neuron indices outside the model (`Synchronisation` checks them)
        raise RunDirError(f"{read_from[-1]}: {e}") from None
    return model.to(device), payload


def weights_step(run_dir: Path) -> int:
    """The step recorded in the current checkpoint's model.safetensors metadata."""
    from ..nn.kinds import run_model_kind, run_model_options

    payload = read_config(run_dir)
    config = CTMConfig.from_dict(payload["model"])
    return _reading(Path(run_dir), lambda found: _check_weights_header(
        found.path / MODEL_FILE, config, run_model_kind(payload), run_model_options(payload)))


# ----------------------------------------------------------------------------------------------------------
# Trainer state and metrics
# ----------------------------------------------------------------------------------------------------------


def _check_trainer_state(state: Any, path: Path) -> dict[str, Any]:
    def bad(what: str) -> RunDirError:
        return RunDirError(f"{path}: {what}; the run cannot be resumed (its weights still load for eval/viz)")

    if not isinstance(state, dict):
        raise bad(f"expected a dict, got {type(state).__name__}")
    if not (_is_int(state.get("step")) and state["step"] >= 0):
        raise bad(f"field 'step' must be a non-negative integer, got {state.get('step')!r}")
    elapsed = state.get("elapsed_s", 0.0)
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed):
        raise bad(f"field 'elapsed_s' must be a finite number, got {elapsed!r}")
    rng = state.get("rng_state", {"cpu": torch.empty(0, dtype=torch.uint8)})
    if not (isinstance(rng, dict) and "cpu" in rng and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1
            for k, v in rng.items())):
        raise bad("field 'rng_state' must map 'cpu' (and a device) to a random generator's state (a 1-d uint8 "
                  "tensor)")
    if "optimizer" not in state:
        raise bad("it has no field 'optimizer'")
    opt = state["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) \
            or not isinstance(opt.get("param_groups"), list) \
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"]):
        raise bad(f"field 'optimizer' is not an optimiser state (a dict with 'state' and 'param_groups'), "
                  f"got {type(opt).__name__}")
    return state


def check_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Refuse an optimiser state written for other parameters (another model's) before loading it."""
    def bad(what: str) -> RunDirError:
        return RunDirError(f"{path}: field 'optimizer' {what}; it belongs to another model")

    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise bad(f"has {len(groups)} parameter groups, this model's optimiser {len(optimizer.param_groups)}")
    for i, (g_saved, g) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        if len(g_saved["params"]) != len(g["params"]):
            raise bad(f"group {i} holds {len(g_saved['params'])} parameters, this model has {len(g['params'])}")
        for pid, p in zip(g_saved["params"], g["params"], strict=True):
            entry = saved["state"].get(pid, {})
            if not isinstance(entry, dict):
                raise bad(f"state of parameter {pid!r} is a {type(entry).__name__}, not a dict")
            for name, v in entry.items():
                if not isinstance(v, torch.Tensor):
                    raise bad(f"state {name!r} of parameter {pid!r} is not a tensor")
                if v.dim() > 0 and (v.shape != p.shape or not v.is_floating_point()):
                    raise bad(f"state {name!r} of parameter {pid!r} is {v.dtype} {tuple(v.shape)}, the "
                              f"parameter {p.dtype} {tuple(p.shape)}")


def load_trainer_state(run_dir: Path) -> dict[str, Any]:
    """The current checkpoint's trainer state, checked field by field (torch.load with weights_only)."""
    from ..nn.kinds import build_model as build
    from ..nn.kinds import run_model_kind, run_model_options

    payload = read_config(run_dir)
    with torch.device("meta"):
        weight_bytes = _state_bytes(build(run_model_kind(payload), CTMConfig.from_dict(payload["model"]),
                                          **run_model_options(payload)).state_dict())

    def read(found: Checkpoint) -> dict[str, Any]:
        path = found.path / STATE_FILE
        if not os.path.lexists(path):
            raise RunDirError(f"{found.path} has no {STATE_FILE}: it cannot be resumed")
        # The optimiser holds two tensors per parameter (AdamW's moments), the RNG states a few KB.
        data = read_bounded(path, 3 * weight_bytes + _HEADER_SLACK, RunDirError, in_run=True)
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # a corrupt or foreign file: torch raises many kinds, some with long advice
            first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]  # not torch's unpickling advice
            reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
            raise RunDirError(f"{path} is corrupt or not a ctm trainer state ({reason}); the weights in "
                              f"{MODEL_FILE} are still usable for eval/viz, but the run cannot be resumed") from None
        return _check_trainer_state(state, path)

    return _reading(Path(run_dir), read)


#: the metrics row field holding the training loss between evaluations ([step, loss] pairs; curves.png draws them)
TRACE_FIELD = "train_loss_trace"
MAX_TRACE_POINTS = 10_000


def _is_trace(value: Any) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return isinstance(value, list) and len(value) <= MAX_TRACE_POINTS and all(
        isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and number(p[1]) for p in value)


def _parse_metrics(text: str, path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path} line {number} is not JSON ({e.msg}); fix or delete that line") from None
        except RecursionError:
            raise RunDirError(f"{path} line {number} nests too deeply; fix or delete that line") from None
        if not isinstance(row, dict):
            raise RunDirError(f"{path} line {number} is a {type(row).__name__}, not a JSON object; fix or delete "
                              f"that line")
        if not (_is_int(row.get("step")) and row["step"] >= 0):
            raise RunDirError(f"{path} line {number}: field 'step' must be a non-negative integer, got "
                              f"{row.get('step')!r}; fix or delete that line")
        for key, value in row.items():
            if key == TRACE_FIELD:
                if not _is_trace(value):
                    raise RunDirError(f"{path} line {number}: field {key!r} must be a list of at most "
                                      f"{MAX_TRACE_POINTS:,} [step, loss] pairs of numbers; fix or delete that line")
            elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RunDirError(f"{path} line {number}: field {key!r} must be a number, got {value!r}")
        rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows of the current checkpoint (none before the first)."""
    run_dir = Path(run_dir)
    if current_checkpoint(run_dir) is None:
        return []

    def read(found: Checkpoint) -> list[dict[str, Any]]:
        path = found.path / METRICS_FILE
        if found.step is None and not os.path.lexists(path):  # old layout: written after the weights
            return []
        try:
            return _parse_metrics(read_bounded(path, METRICS_LIMIT, RunDirError, in_run=True).decode("utf-8"), path)
        except UnicodeDecodeError:
            raise RunDirError(f"{path} is not UTF-8 text") from None

    return _reading(run_dir, read)


# ----------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike[str], model: ContinuousThoughtMachine, trainer_state: dict[str, Any],
                    metrics: list[dict[str, Any]]) -> Path:
    """Write a complete checkpoint of step trainer_state["step"] and publish it (see the module docstring).

    Raises `CheckpointWriteError` when the disk is full or a write fails; the previous checkpoint stays.
    The caller must hold the run's lock (`lock_run`).
    """
    run_dir = Path(run_dir)
    step = int(trainer_state["step"])
    name = f"step-{step:09d}"
    checkpoints = run_dir / CHECKPOINTS_DIR
    tmp, final = checkpoints / f".{name}.tmp", checkpoints / name
    previous = current_checkpoint(run_dir)  # refuses a linked checkpoints/ folder, a pointer not a file
    if previous is not None and previous.path == final:
        raise CheckpointWriteError(f"{final} is the current checkpoint already; step {step} was saved before")
    for stale in (tmp, final):  # left by a kill before the pointer moved: never published
        if os.path.lexists(stale) and not _remove_checkpoint_folder(stale):
            raise CheckpointWriteError(f"{stale} is in the way of step {step}'s checkpoint and holds what ctm did "
                                       f"not write there (or is a link); move it out of the run and resume")
    published: list[bool] = []  # set once the pointer names the new checkpoint
    try:
        # Everything is serialised first, so a failure to write is an OSError of our own writes.
        weights = _safetensors_bytes(model, step)
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        rows = "".join(json.dumps(r) + "\n" for r in metrics).encode("utf-8")
        checkpoints.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        _fault("tmp-dir-made")
        _write_synced(tmp / MODEL_FILE, weights)
        _fault("model-written")
        _write_synced(tmp / STATE_FILE, buffer.getvalue())
        _fault("state-written")
        _write_synced(tmp / METRICS_FILE, rows)
        _fault("metrics-written")
        for path in (tmp / MODEL_FILE, tmp / STATE_FILE, tmp / METRICS_FILE):
            os.chmod(path, 0o666 & ~_UMASK)
        _fsync_dir(tmp)
        _fault("dir-synced")
        os.replace(tmp, final)
        _fsync_dir(checkpoints)
        _fault("dir-renamed")
        _publish(run_dir, step, name, before_replace=lambda: _fault("pointer-written"), published=published)
        _fault("pointer-replaced")
    except OSError as e:
        _remove_checkpoint_folder(tmp)
        if published:  # the pointer names it: a failure after the replace (syncing the folder) keeps it
            raise CheckpointWriteError(f"the checkpoint of step {step} in {run_dir} is published, but syncing "
                                       f"{run_dir} failed ({e.strerror or e}); it may not survive a power "
                                       f"loss") from None
        _remove_checkpoint_folder(final)
        kept = (f"the previous checkpoint (step {checkpoint_step(run_dir)}) is intact and resumable"
                if previous is not None else "no checkpoint was saved before")
        reason = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise CheckpointWriteError(f"could not save the checkpoint of step {step} in {run_dir}: {reason}; "
                                   f"{kept}") from None
    # Only now that the pointer names the new checkpoint: remove the previous one and any leftovers.
    remove_leftovers(run_dir)
    _fault("previous-removed")
    return final


def _publish(run_dir: Path, step: int, name: str, before_replace: Callable[[], None] | None = None,
             published: list[bool] | None = None) -> None:
    """Make checkpoint.json name checkpoints/`name` (atomic replace, then the folder synced); `published` gets a
    True once the replace is done."""
    pointer = json.dumps({"step": step, "dir": f"{CHECKPOINTS_DIR}/{name}"}) + "\n"
    atomic_write(run_dir / POINTER_FILE, lambda t: Path(t).write_text(pointer, encoding="utf-8"),
                 before_replace=before_replace)
    if published is not None:
        published.append(True)
    _fsync_dir(run_dir)


def _unlink_regular(path: Path) -> bool:
    """Remove `path` if it is a regular file (never a link, a folder or anything else); whether it is gone."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        path.unlink()
    except FileNotFoundError:
        pass
    return True


def _remove_checkpoint_folder(path: Path) -> bool:
    """Remove a checkpoint folder ctm wrote: the files ctm writes there, then the folder if that emptied it.
    A link, a file or a folder holding anything else keeps what ctm did not write. Whether it is gone."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        for entry in path.iterdir():
            if entry.name in (MODEL_FILE, STATE_FILE, METRICS_FILE):
                _unlink_regular(entry)
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def remove_leftovers(run_dir: str | os.PathLike[str]) -> None:
    """Remove what saves killed part-way left: temp folders and files, checkpoint folders the pointer no
    longer (or never) named, and the old layout's files once a checkpoint folder replaced them. Only what ctm
    writes, by name, and never through a link; a run whose pointer is missing or not a plain file loses
    nothing (`current_checkpoint` refuses it first). Only the run's writer may call this."""
    run_dir = Path(run_dir)
    current = current_checkpoint(run_dir)
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for entry in checkpoints.iterdir():
            if current is not None and entry == current.path:
                continue
            published = current is not None and current.step is not None  # a pointer names a folder
            if _TMP_NAME.fullmatch(entry.name) or (published and _CHECKPOINT_NAME.fullmatch(entry.name)):
                _remove_checkpoint_folder(entry)
    for name in (CONFIG_FILE, POINTER_FILE):  # only ours, of writers no longer running (`ctm viz` may be writing)
        _io.remove_stale_temps(run_dir / name)
    if current is not None and current.path != run_dir:
        for name in (MODEL_FILE, STATE_FILE, METRICS_FILE):
            _unlink_regular(run_dir / name)


def has_run_files(run_dir: Path) -> bool:
    """Whether `run_dir` holds a checkpoint of either layout, or anything that may be one (a checkpoint folder
    without its pointer, a linked checkpoints/ folder). A save killed before the first checkpoint was
    published leaves only a temp folder: the run can start again."""
    if any(os.path.lexists(run_dir / name) for name in (POINTER_FILE, MODEL_FILE, STATE_FILE)):
        return True
    checkpoints = run_dir / CHECKPOINTS_DIR
    return checkpoints.is_symlink() or bool(_step_folders(checkpoints))


# ----------------------------------------------------------------------------------------------------------
# One writer per run
# ----------------------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive `fcntl.flock` on RUN/.lock, holding the owner's PID. The kernel releases it when the
    process ends, however it ends, so a lock left by a killed process never blocks."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:  # never through a link: a .lock received in a tarball must not truncate a file elsewhere
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o666 & ~_UMASK)
        except OSError as e:
            if e.errno == errno.EISDIR:
                raise RunDirError(f"{self.path} is a folder; ctm keeps its lock file there. Move it out of the run "
                                  f"and try again") from None
            if e.errno != errno.ELOOP:
                raise
            raise RunDirError(f"{self.path} is a symbolic link; ctm does not follow links inside a run directory. "
                              f"Remove it (ctm makes its own lock file) and try again") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(info.st_mode) else \
                f"a hard link shared with {info.st_nlink - 1} other name(s)"
            raise RunDirError(f"{self.path} is {what}; ctm writes its PID there. Remove it (ctm makes its own "
                              f"lock file) and try again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            if holder.isdigit() and not _io.pid_running(int(holder)):
                raise RunLockedError(f"{self.path.parent} is locked by another process: the PID recorded in "
                                     f"{self.path} ({holder}) is no longer running, but a process it started may "
                                     f"still hold the lock (fuser {self.path} names it); stop that one, then "
                                     f"resume") from None
            who = f"PID {holder}" if holder.isdigit() else "another process"
            raise RunLockedError(f"{self.path.parent} is being trained by another ctm process ({who}); wait for "
                                 f"it to finish or stop it, then resume") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_being_trained(run_dir: str | os.PathLike[str]) -> bool:
    """Whether a process holds the run's lock now (is training it). Asks for a shared lock for an instant: never
    blocks, never writes, and leaves a lock file that is a link or not a regular file alone (False)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the shared lock
    return False


class Unfinished(NamedTuple):
    """A run that saved a checkpoint before its last step (`unfinished_runs`)."""

    run_dir: Path
    payload: dict[str, Any]  # its config.json
    step: int  # its checkpoint's
    steps: int  # TrainConfig.steps


def unfinished_runs(parent: str | os.PathLike[str]) -> list[Unfinished]:
    """The runs directly in `parent` (e.g. ./runs) that stopped after a checkpoint and before their last step,
    and that no process is training now: what `ctm train --resume` continues. The most recently saved first;
    folders that are not readable runs, links and runs that saved nothing yet are passed over."""
    try:
        folders = [p for p in Path(parent).iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    found = []
    for run_dir in folders:
        try:
            payload = read_config(run_dir)
            checkpoint = current_checkpoint(run_dir)
            if checkpoint is None:
                continue
            step = checkpoint.step if checkpoint.step is not None else weights_step(run_dir)
            steps = int(payload["train"]["steps"])
            if step >= steps or is_being_trained(run_dir):
                continue
            saved = checkpoint.path.stat().st_mtime
        except (RunDirError, OSError, KeyError, TypeError, ValueError):
            continue
        found.append((saved, Unfinished(run_dir, payload, step, steps)))
    return [run for _, run in sorted(found, key=lambda item: (-item[0], str(item[1].run_dir)))]
