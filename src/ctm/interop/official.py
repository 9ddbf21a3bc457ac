"""Load weights of the official CTM implementation (SakanaAI/continuous-thought-machines).

`from_official_state_dict(state_dict, **kwargs)` takes the official `ContinuousThoughtMachine`'s
`state_dict()` and the arguments its constructor was called with, and returns a ctm model computing the same
function: the same predictions, certainties, synchronisation and gradients. The official names map to
`CTMConfig` fields as in `OFFICIAL_ARGUMENTS` (and the README's table).

`model=` names the official class (`OFFICIAL_MODELS`): "ctm", the default, is `models/ctm.py`
`ContinuousThoughtMachine`; "sort" is `models/ctm_sort.py` `ContinuousThoughtMachineSORT`, the sort model,
whose input (B, N) goes to the synapses at every tick: ctm's `input_reader="direct"` with backbone "none". It
takes the same arguments but fixes heads=0, n_synch_action=0, backbone 'none' and positional embedding 'none'
(`SORT_IGNORED`: accepted, whatever they say); its input width N is read from the synapses' weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import CTMConfig
from ..nn.model import ContinuousThoughtMachine, check_neuron_indices

#: official constructor argument -> CTMConfig field (None: read differently, see `config_from_official`)
OFFICIAL_ARGUMENTS = {
    "iterations": "iterations", "d_model": "d_model", "d_input": "d_input", "heads": "heads",
    "n_synch_out": "n_synch_out", "n_synch_action": "n_synch_action", "synapse_depth": "synapse_depth",
    "memory_length": "memory_length", "deep_nlms": "deep_nlms", "memory_hidden_dims": "memory_hidden_dims",
    "do_layernorm_nlm": "nlm_layernorm", "backbone_type": "backbone",
    "positional_embedding_type": "positional_embedding", "out_dims": "out_dims",
    "prediction_reshaper": "out_positions", "dropout": "dropout", "dropout_nlm": "nlm_dropout",
    "neuron_select_type": "neuron_selection", "n_random_pairing_self": "n_self_pairs",
}
#: the official classes conversion reads, by the name `model=` takes
OFFICIAL_MODELS = {"ctm": "models/ctm.py ContinuousThoughtMachine",
                   "sort": "models/ctm_sort.py ContinuousThoughtMachineSORT"}
#: the arguments ContinuousThoughtMachineSORT takes and ignores (it has no attention, backbone or positions)
SORT_IGNORED = ("heads", "n_synch_action", "backbone_type", "positional_embedding_type")
# The official constructor's defaults; the other arguments are required.
OFFICIAL_DEFAULTS = {"prediction_reshaper": [-1], "dropout": 0, "dropout_nlm": None,
                     "neuron_select_type": "random-pairing", "n_random_pairing_self": 0}

# official state-dict name -> ctm name, rewritten by each rule in turn
_RENAMES = [
    (r"^initial_rgb\.", "backbone.rgb."),
    (r"^backbone\.layers\.", "backbone."),  # shallow-wide
    (r"^positional_embedding\.embedders\.", "positional_embedding.scales."),
    (r"\.Wr\.", ".frequencies."),
    (r"^positional_embedding\.combination$", "positional_embedding.mix"),
    (r"^positional_embedding\.start_vector$", "positional_embedding.start"),
    (r"^positional_embedding\.projection\.0\.", "positional_embedding.projection."),
    (r"^attention\.in_proj_(weight|bias)$", r"attention.in_proj.\1"),
    (r"^synapses\.1\.", "synapses.0."),  # depth 1: [dropout, linear, glu, norm] -> [linear, glu, norm]
    (r"^synapses\.3\.", "synapses.2."),
    (r"^synapses\.first_projection\.", "synapses.first."),
    (r"^synapses\.down_projections\.", "synapses.down."),
    (r"^synapses\.up_projections\.", "synapses.up."),
    (r"^synapses\.skip_lns\.", "synapses.skip_norms."),
    (r"^trace_processor\.0\.0\.", "neuron_level_models.first."),
    (r"^trace_processor\.0\.2\.", "neuron_level_models.second."),
    (r"^(neuron_level_models\.\w+)\.T$", r"\1.temperature"),
    (r"^(neuron_level_models\.\w+)\.layernorm\.", r"\1.norm."),
    (r"^output_projector\.0\.", "output_projector."),
]
_SELECTIONS = re.compile(r"^(out|action)_neuron_indices_(left|right)$")


def ctm_name(official_name: str) -> str:
    """The ctm state-dict name of an official one (neuron selections excepted: see `from_official_state_dict`)."""
    for pattern, replacement in _RENAMES:
        official_name = re.sub(pattern, replacement, official_name)
    return official_name


def config_from_official(state_dict: Mapping[str, Tensor], model: str = "ctm", **kwargs: Any) -> CTMConfig:
    """The `CTMConfig` of the official model `model` ("ctm" or "sort", `OFFICIAL_MODELS`) built with `kwargs`;
    in_channels (sort: d_input) is read from the weights."""
    if model not in OFFICIAL_MODELS:
        raise ValueError(f"unknown official model {model!r}; choose "
                         + " or ".join(f"{k!r} ({v})" for k, v in OFFICIAL_MODELS.items()))
    unknown = sorted(set(kwargs) - set(OFFICIAL_ARGUMENTS))
    missing = sorted(set(OFFICIAL_ARGUMENTS) - set(OFFICIAL_DEFAULTS) - set(kwargs))
    if unknown or missing:
        raise ValueError("official CTM arguments: " + "; ".join(
            ([f"unknown {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])))
    a = {**OFFICIAL_DEFAULTS, **kwargs}
    if model == "ctm":
        unsupported = [f"{name}={a[name]!r}" for name in ("heads", "n_synch_action") if a[name] == 0]
        if unsupported:
            raise ValueError(f"official CTM arguments not supported by ctm: {', '.join(unsupported)} "
                             f"(a CTM without attention; the official sort model's weights convert with "
                             f"model='sort')")
        if state_dict and "attention.in_proj_weight" not in state_dict and any(
                k.startswith("synapses.") for k in state_dict):
            raise ValueError("official state dict has no attention weights (attention.in_proj_weight): the official "
                             "sort model's (ContinuousThoughtMachineSORT)? convert it with model='sort' "
                             "(ctm convert-official --model sort)")
    try:
        classes = torch.empty(a["out_dims"]).reshape(a["prediction_reshaper"]).shape[-1]
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"official CTM arguments: prediction_reshaper={a['prediction_reshaper']!r} does not "
                         f"reshape out_dims={a['out_dims']} ({e})") from None
    ignored = SORT_IGNORED if model == "sort" else ()
    fields = {OFFICIAL_ARGUMENTS[k]: a[k] for k in OFFICIAL_ARGUMENTS
              if k not in ("backbone_type", "prediction_reshaper", "dropout_nlm", *ignored)}
    fields.update(out_positions=a["out_dims"] // classes, nlm_temperature=True,
                  nlm_dropout=a["dropout"] if a["dropout_nlm"] is None else a["dropout_nlm"])
    if model == "sort":
        if "attention.in_proj_weight" in state_dict:
            raise ValueError("official state dict has attention weights (attention.in_proj_weight): an official "
                             "ContinuousThoughtMachine's, not the sort model's; convert it without model='sort'")
        fields.update(backbone="none", input_reader="direct", d_input=_sort_inputs(state_dict, a))
    else:
        backbone = "sign-embedding" if a["backbone_type"] == "parity_backbone" else a["backbone_type"]
        fields.update(backbone=backbone, in_channels=_in_channels(state_dict, backbone))
    try:
        return CTMConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"official CTM arguments not supported by ctm: {e}") from None


def official_arguments(config: CTMConfig) -> dict[str, Any]:
    """The official constructor's arguments for `config` (the reverse of `config_from_official`); for a config
    with input_reader "direct", those of the official sort model (`official_model(config)`: "sort"), with
    heads=0 and n_synch_action=0 as it fixes them. The official model always has NLM temperatures, has no
    tutorial backbone, and takes its input channels from its first batch; ValueError for a config it cannot
    build."""
    model = official_model(config)
    if config.backbone.startswith("tutorial"):
        raise ValueError(f"the official implementation has no {config.backbone!r} backbone; choose a ResNet, "
                         "shallow-wide, sign-embedding or none")
    a = {name: getattr(config, field) for name, field in OFFICIAL_ARGUMENTS.items()}
    a.update(backbone_type="parity_backbone" if config.backbone == "sign-embedding" else config.backbone,
             prediction_reshaper=[-1] if config.out_positions == 1 else
             [config.out_positions, config.out_dims // config.out_positions])
    if model == "sort":
        a.update(heads=0, n_synch_action=0, backbone_type="none", positional_embedding_type="none")
    return a


def official_model(config: CTMConfig) -> str:
    """The official class (`OFFICIAL_MODELS`) that builds `config`: "sort" for input_reader "direct", "ctm"
    for attention; ValueError for the schedule reader (the official QAMNIST model does not convert)."""
    if config.input_reader == "schedule":
        raise ValueError("the official QAMNIST model (input_reader 'schedule') does not convert; ctm converts the "
                         "official ContinuousThoughtMachine and ContinuousThoughtMachineSORT")
    return "sort" if config.input_reader == "direct" else "ctm"


def _sort_inputs(state_dict: Mapping[str, Tensor], arguments: Mapping[str, Any]) -> int:
    """The width N of the official sort model's input, read from its synapses' first layer (which takes the
    input and the d_model activations); it must be the d_input argument (the official script's out_dims - 1)."""
    first = "synapses.1.weight" if arguments["synapse_depth"] == 1 else "synapses.first_projection.0.weight"
    weight = state_dict.get(first)
    if weight is None:
        raise ValueError(f"official state dict: no {first} (expected an official ContinuousThoughtMachineSORT's "
                         f"state_dict() after one forward, which initialises its lazy layers, built with "
                         f"synapse_depth={arguments['synapse_depth']})")
    d_model = arguments["d_model"]
    width = int(weight.shape[1]) - d_model if weight.dim() == 2 else 0
    if width < 1:
        raise ValueError(f"official state dict: {first} has shape {tuple(weight.shape)}; the sort model's synapses "
                         f"read N inputs and d_model={d_model} activations")
    if width != arguments["d_input"]:
        raise ValueError(f"official sort arguments: d_input={arguments['d_input']!r}, but the weights read {width} "
                         f"numbers ({first} takes {weight.shape[1]} = N + d_model {d_model}); the official sort "
                         f"script passes d_input=out_dims-1, the N it sorts")
    return width


def _in_channels(state_dict: Mapping[str, Tensor], backbone: str) -> int:
    """The input channels the official model's first layer was built for (lazily, from its first batch)."""
    first = {"shallow-wide": "backbone.layers.0.weight", "none": "kv_proj.0.weight"}.get(
        backbone, "initial_rgb.weight" if backbone.startswith("resnet") else None)
    if first is None:
        return 1
    if first not in state_dict:
        raise ValueError(f"official state dict: no {first} (expected an official ContinuousThoughtMachine's "
                         f"state_dict() after one forward, which initialises its lazy layers)")
    return int(state_dict[first].shape[1])


def from_official_state_dict(state_dict: Mapping[str, Tensor], model: str = "ctm",
                             **kwargs: Any) -> ContinuousThoughtMachine:
    """A ctm model computing what the official model built with `kwargs` and holding `state_dict` computes.

    `model` names the official class: "ctm" (`ContinuousThoughtMachine`, the default) or "sort"
    (`ContinuousThoughtMachineSORT`: a ctm model with input_reader "direct", which takes (B, N) numbers).
    `kwargs` are the official constructor's arguments (`iterations=..., backbone_type=..., ...`); an
    argument ctm does not support, or a state dict that does not fit them, raises a one-line ValueError.
    """
    config = config_from_official(state_dict, model, **kwargs)
    net = ContinuousThoughtMachine(config)
    ours = net.state_dict()
    converted: dict[str, Tensor] = {}
    unexpected = []
    for name, tensor in state_dict.items():
        selection = _SELECTIONS.match(name)
        if selection:
            if config.neuron_selection != "first-last":
                converted.update(_pairs(state_dict, selection[1], config))
            else:  # first-last pairs follow from the sizes; the official buffers must be those neurons
                _check_first_last(name, tensor, selection[1], config)
            continue
        target = ctm_name(name)
        if target not in ours:
            unexpected.append(name)
            continue
        converted[target] = tensor.detach().clone()
    missing = sorted(set(ours) - set(converted))
    wrong = [f"{k} {tuple(v.shape)} (the arguments give {tuple(ours[k].shape)})"
             for k, v in converted.items() if k in ours and v.shape != ours[k].shape]
    if wrong:
        raise ValueError(f"official state dict does not fit its arguments: {', '.join(wrong)}")
    if unexpected or missing:
        raise ValueError("official state dict does not fit its arguments: "
                         + (f"unexpected keys {sorted(unexpected)}; " if unexpected else "")
                         + (f"missing keys {missing}" if missing else ""))
    with torch.no_grad():
        net.load_state_dict(converted)
    return net


def load_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in an official `.pt` file: a bare `state_dict()`, or a checkpoint dict holding it under
    `model_state_dict`. Loaded with `weights_only=True`: a file that needs arbitrary unpickling is refused."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):  # missing or unreadable (the command line names the file), or too large
        raise
    except Exception as e:  # anything else torch.load raises is the file's content
        text = str(e)
        # weights_only's refusal: the unpickler's reason follows this marker, after a paragraph of advice
        reason = text.partition("WeightsUnpickler error:")[2].strip() if "Weights only load failed" in text else ""
        if reason and not reason.startswith("Unsupported operand"):  # a pickle of more than tensors
            raise ValueError(f"{path} cannot be loaded with weights_only=True ({reason.splitlines()[0][:160]}); "
                             f"save the official model's state_dict() alone with torch.save") from None
        first = (reason or text).strip().splitlines()[0][:160] if (reason or text).strip() else ""
        raise ValueError(f"{path} is not a PyTorch state dict file (torch.load: {type(e).__name__}"
                         f"{': ' + first if first else ''}); give the official model's state_dict() saved with "
                         f"torch.save") from None
    if isinstance(payload, Mapping) and isinstance(payload.get("model_state_dict"), Mapping):
        payload = payload["model_state_dict"]
    if not isinstance(payload, Mapping) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(payload)


def _check_first_last(name: str, indices: Tensor, side: str, config: CTMConfig) -> None:
    """The official first-last selection `name` is the first n_synch_out (or last n_synch_action) neurons."""
    n = getattr(config, f"n_synch_{side}")
    first = 0 if side == "out" else config.d_model - n
    check_neuron_indices(indices, f"official state dict: {name}", config.d_model)
    if tuple(indices.shape) != (n,) or not torch.equal(indices.long(), torch.arange(first, first + n)):
        raise ValueError(f"official state dict: {name} is not the first-last selection of neurons {first}.."
                         f"{first + n - 1} that neuron_select_type 'first-last' with d_model={config.d_model}, "
                         f"n_synch_{side}={n} makes")


def _pairs(state_dict: Mapping[str, Tensor], side: str, config: CTMConfig) -> dict[str, Tensor]:
    """The pairs (left, right) of one synchronisation from the official neuron selections, checked: n_synch
    integer indices of the d_model neurons each (an index out of range would fail only in the forward)."""
    n = getattr(config, f"n_synch_{side}")
    selections = []
    for s in ("left", "right"):
        name = f"{side}_neuron_indices_{s}"
        if name not in state_dict:
            raise ValueError(f"official state dict: {name} is missing (its {config.neuron_selection!r} "
                             f"selection needs both {side}_neuron_indices_left and _right)")
        indices = state_dict[name]
        if tuple(indices.shape) != (n,):
            raise ValueError(f"official state dict: {name} has shape {tuple(indices.shape)}; n_synch_{side}={n} "
                             f"gives ({n},)")
        check_neuron_indices(indices, f"official state dict: {name}", config.d_model)
        selections.append(indices.long())
    left, right = selections
    if config.neuron_selection == "random":  # all pairs i <= j of the two selections
        i, j = torch.triu_indices(left.numel(), left.numel())
        left, right = left[i], right[j]
    return {f"synch_{side}.left": left.clone(), f"synch_{side}.right": right.clone()}


#: the input channels' convolution of a ResNet backbone, which `fold_pixel_range` rewrites
RGB_WEIGHT, RGB_BIAS = "backbone.rgb.weight", "backbone.rgb.bias"


def fold_pixel_range(target):
    """Make a model trained on pictures in [0, 1] read pictures in [-1, 1] and compute the same, exactly.

    The official ResNet backbones (ctm's resnet*) start with a 1x1 convolution without padding (`initial_rgb`,
    ctm's `backbone.rgb`): W x01 + b with x01 = (x + 1) / 2 is (W / 2) x + (b + (W / 2) summed over the input
    channels), so the weight is halved and the bias takes the rest. The published official maze checkpoints are
    legacy ones, trained on [0, 1] (`tasks/mazes/analysis/run.py --legacy_scaling`), and ctm's maze task feeds
    [-1, 1]. `target` is a ctm model (rewritten in place and returned) or its state dict (a new dict returned);
    a one-line ValueError where it has no such convolution."""
    if isinstance(target, torch.nn.Module):
        backbone = getattr(getattr(target, "config", None), "backbone", None)
        state = target.state_dict()
        if RGB_WEIGHT not in state or not str(backbone).startswith("resnet"):
            raise ValueError(f"the pixel range cannot be folded into a model with backbone {backbone!r}: only a "
                             f"ResNet backbone starts with the 1x1 convolution (backbone.rgb) it folds into")
        weight, bias = _folded(state[RGB_WEIGHT], state.get(RGB_BIAS))
        with torch.no_grad():
            target.get_parameter(RGB_WEIGHT).copy_(weight)
            target.get_parameter(RGB_BIAS).copy_(bias)
        return target
    if not isinstance(target, Mapping):
        raise ValueError(f"the pixel range folds into a ctm model or its state dict, not a {type(target).__name__}")
    if RGB_WEIGHT not in target:
        raise ValueError(f"the pixel range cannot be folded into this state dict: it has no {RGB_WEIGHT}, the 1x1 "
                         f"convolution only a ResNet backbone starts with")
    weight, bias = _folded(target[RGB_WEIGHT], target.get(RGB_BIAS))
    return {**target, RGB_WEIGHT: weight, RGB_BIAS: bias}


def _folded(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(W / 2, b + (W / 2) 1) of a 1x1 convolution's weight (out, in, 1, 1) and bias (out,)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1) or bias is None or tuple(bias.shape) != weight.shape[:1]:
        raise ValueError(f"the pixel range cannot be folded: {RGB_WEIGHT} {tuple(weight.shape)} with "
                         f"{'no bias' if bias is None else f'bias {tuple(bias.shape)}'} is not a 1x1 convolution "
                         f"with a bias")
    half = weight.detach() / 2
    return half.clone(), (bias.detach().double() + half.double().sum(dim=(1, 2, 3))).to(bias.dtype)
