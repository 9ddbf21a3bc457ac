"""Run directories: atomic writes of weights (safetensors), configs (JSON) and trainer state.

A run directory holds
  config.json          {"ctm_version", "model": CTMConfig, "train": TrainConfig, "dataset": {...}}
  model.safetensors    weights and buffers; metadata records the step
  trainer_state.pt     optimiser state, step, epoch (tensors and plain values: weights_only-loadable)
  metrics.jsonl        one JSON object per evaluation
Every file is written to a temporary file in the same folder and renamed over the old one, so a kill at
any moment leaves the previous complete file in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import __version__
from ._io import atomic_write
from .config import CTMConfig
from .model import ContinuousThoughtMachine

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"


class RunDirError(ValueError):
    """A run directory that is missing, incomplete or not a ctm run."""


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_config(run_dir: Path, model_config: CTMConfig, extra: dict[str, Any]) -> None:
    payload = {"ctm_version": __version__, "model": model_config.to_dict(), **extra}
    atomic_write_text(Path(run_dir) / CONFIG_FILE, json.dumps(payload, indent=2) + "\n")


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, checked to be a ctm run."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file; pass the run directory (the folder holding {CONFIG_FILE})")
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a ctm run directory: it has no {CONFIG_FILE}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(payload, dict) or "model" not in payload:
        raise RunDirError(f"{path} is not a ctm run config: it has no 'model' section")
    try:
        CTMConfig.from_dict(payload["model"])
    except (TypeError, ValueError) as e:
        raise RunDirError(f"{path}: invalid model config: {e}") from e
    return payload


def save_weights(run_dir: Path, model: ContinuousThoughtMachine, step: int) -> None:
    atomic_save_safetensors(Path(run_dir) / MODEL_FILE, model.state_dict(),
                            {"step": str(step), "ctm_version": __version__})


def load_model(run_dir: Path, device: str | torch.device = "cpu") -> tuple[ContinuousThoughtMachine, dict[str, Any]]:
    """Rebuild the model of a run directory from its config.json and model.safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    payload = read_config(run_dir)
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {MODEL_FILE} (training has not saved a checkpoint yet)")
    model = ContinuousThoughtMachine(CTMConfig.from_dict(payload["model"]))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise RunDirError(f"{path} could not be read: {e}") from e
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise RunDirError(f"{path} does not match config.json (missing {sorted(missing)}, "
                          f"unexpected {sorted(unexpected)})")
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (config.json implies {tuple(expected[k].shape)})"
             for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise RunDirError(f"{path} does not match the sizes in config.json: {wrong[0]}"
                          f"{f' and {len(wrong) - 1} more' if len(wrong) > 1 else ''}; was config.json edited? "
                          f"Restore it, or train a new run with the sizes you want")
    model.load_state_dict(state)
    return model.to(device), payload


def weights_step(run_dir: Path) -> int:
    """The step recorded in model.safetensors' metadata."""
    from safetensors import safe_open

    with safe_open(str(Path(run_dir) / MODEL_FILE), framework="pt") as f:
        return int((f.metadata() or {}).get("step", -1))


def save_trainer_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(Path(run_dir) / STATE_FILE, state)


def load_trainer_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {STATE_FILE}: it cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: torch raises many kinds, some with long advice
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]  # not torch's unpickling advice
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise RunDirError(f"{path} is corrupt or not a ctm trainer state ({reason}); the weights in "
                          f"{MODEL_FILE} are still usable for eval/viz, but the run cannot be resumed") from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RunDirError(f"{path} line {number} is not JSON ({e.msg}); fix or delete that line") from None
    return rows


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
