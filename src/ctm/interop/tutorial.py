"""Load weights saved from the seed tutorial's model (`model.state_dict()`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..config import CTMConfig
from ..nn.model import ContinuousThoughtMachine

# seed name -> ctm name, where they differ.
_RENAMES = {
    "attention.in_proj_weight": "attention.in_proj.weight",
    "attention.in_proj_bias": "attention.in_proj.bias",
    "trace_processor.0.w1": "neuron_level_models.first.w1",
    "trace_processor.0.b1": "neuron_level_models.first.b1",
    "trace_processor.2.w1": "neuron_level_models.second.w1",
    "trace_processor.2.b1": "neuron_level_models.second.b1",
    "output_projector.0.weight": "output_projector.weight",
    "output_projector.0.bias": "output_projector.bias",
}
# Buffers the seed saves that ctm derives from the config.
_DERIVED = {
    "out_neuron_indices_left", "out_neuron_indices_right",
    "action_neuron_indices_left", "action_neuron_indices_right",
}


def _pairs_to_neurons(n_pairs: int, name: str) -> int:
    """Invert P = n (n + 1) / 2."""
    n = int(round(((8 * n_pairs + 1) ** 0.5 - 1) / 2))
    if n * (n + 1) // 2 != n_pairs:
        raise ValueError(f"seed state dict: {name} has {n_pairs} entries, which is not n(n+1)/2 for any n")
    return n


def config_from_seed_state_dict(state_dict: Mapping[str, Tensor], *, iterations: int, heads: int) -> CTMConfig:
    """Infer every size but iterations and heads from the tensors of a seed model."""
    required = ["backbone.0.weight", "start_trace", "trace_processor.0.w1", "decay_params_out",
                "decay_params_action", "output_projector.0.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(
            f"not a seed-tutorial CTM state dict: missing {missing} (expected the keys of "
            "ContinuousThoughtMachine.state_dict() from the tutorial, with its lazy layers initialised)"
        )
    try:
        conv = state_dict["backbone.0.weight"]  # (d_input, in_channels, 3, 3)
        d_model, memory_length = state_dict["start_trace"].shape
        hidden2 = state_dict["trace_processor.0.w1"].shape[1]  # (M, 2 * hidden, D)
        return CTMConfig(
            iterations=iterations,
            d_model=d_model,
            d_input=conv.shape[0],
            memory_length=memory_length,
            heads=heads,
            n_synch_out=_pairs_to_neurons(state_dict["decay_params_out"].numel(), "decay_params_out"),
            n_synch_action=_pairs_to_neurons(state_dict["decay_params_action"].numel(), "decay_params_action"),
            memory_hidden_dims=hidden2 // 2,
            out_dims=state_dict["output_projector.0.weight"].shape[0],
            in_channels=conv.shape[1],
        )
    except (ValueError, IndexError) as e:  # malformed shapes
        raise ValueError(f"seed state dict has unexpected tensor shapes: {e}") from e


def from_seed_state_dict(state_dict: Mapping[str, Tensor], *, iterations: int, heads: int
                         ) -> ContinuousThoughtMachine:
    """A ctm model that computes what the seed-tutorial model with these weights computes.

    iterations and heads are not recorded in the seed's tensors, so they are asked for; every other
    size is inferred. A dict that does not fit raises a ValueError saying which tensors disagree.
    """
    config = config_from_seed_state_dict(state_dict, iterations=iterations, heads=heads)
    model = ContinuousThoughtMachine(config)
    ours = model.state_dict()
    converted: dict[str, Tensor] = {}
    unexpected = []
    for name, tensor in state_dict.items():
        if name in _DERIVED:
            continue
        target = _RENAMES.get(name, name)
        if target not in ours:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != tuple(ours[target].shape):
            raise ValueError(
                f"seed state dict: {name} has shape {tuple(tensor.shape)} but a model with {config} "
                f"needs {tuple(ours[target].shape)}"
            )
        converted[target] = tensor.detach().clone()
    missing = sorted(set(ours) - set(converted))
    if unexpected or missing:
        inverse = {v: k for k, v in _RENAMES.items()}
        raise ValueError(
            "seed state dict does not fit a CTM: "
            + (f"unexpected keys {sorted(unexpected)}; " if unexpected else "")
            + (f"missing keys {[inverse.get(m, m) for m in missing]}" if missing else "")
        )
    with torch.no_grad():
        model.load_state_dict(converted)
    return model
