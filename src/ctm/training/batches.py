"""Batches as training and evaluation handle them, whatever their structure, and the eval-mode switch.

A task's `Dataset.batch(idx)` returns (inputs, targets), each a tensor or a tuple/list/dict of tensors (a
sequence task may give a schedule of inputs, a structured target); `to_device` moves every tensor in it and
`batch_size` reads how many samples it holds. `eval_mode(model)` runs a block with the model in eval mode and
puts back the mode it had, however the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """`batch` with every tensor in it (nested tuples, lists and dicts) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        moved = [to_device(v, device, non_blocking) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def batch_size(batch: Any) -> int:
    """The number of samples in `batch`: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    for v in values:
        try:
            return batch_size(v)
        except ValueError:
            continue
    raise ValueError(f"a batch holds no tensor: {type(batch).__name__}")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`with eval_mode(model):` the block runs with `model.eval()`; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
