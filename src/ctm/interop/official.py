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
"qamnist" is `models/ctm_qamnist.py` `ContinuousThoughtMachineQAMNIST`: ctm's `input_reader="schedule"` with
the tutorial backbone (the official MNISTBackbone, `backbone_digit`), `input_tokens` 52 and `fixed_tokens` 50 (the
official index embeddings, a buffer checked equal to ctm's sinusoids, then the operator embeddings: its row 0 '+'
(encoded -1), row 1 '-' (-2) become `token_table.learned`). Its arguments are the constructor's
(`QAMNIST_ARGUMENTS`, with iterations_per_digit = iterations_per_question_part, ctm's `repeats`) or the official
training script's (`tasks/qamnist/train.py`, a checkpoint's 'args': `QAMNIST_SCRIPT`, `QAMNIST_TASK`), which also
give the task's digits and operations (`qamnist_options`); CTMConfig.iterations is the longest question's ticks
(the official forward takes its ticks from its input; its `iterations` argument is ignored).
`detect_official_model` tells the QAMNIST model's weights and arguments from the others'.

`load_official_checkpoint(path)` reads a bare state dict or an official training checkpoint (`model_state_dict`,
and its `args`, an argparse.Namespace, allowed through `weights_only=True` with the numpy RNG state beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
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
                   "sort": "models/ctm_sort.py ContinuousThoughtMachineSORT",
                   "qamnist": "models/ctm_qamnist.py ContinuousThoughtMachineQAMNIST"}
#: the arguments ContinuousThoughtMachineSORT takes and ignores (it has no attention, backbone or positions)
SORT_IGNORED = ("heads", "n_synch_action", "backbone_type", "positional_embedding_type")
# The official constructor's defaults; the other arguments are required.
OFFICIAL_DEFAULTS = {"prediction_reshaper": [-1], "dropout": 0, "dropout_nlm": None,
                     "neuron_select_type": "random-pairing", "n_random_pairing_self": 0}

#: ContinuousThoughtMachineQAMNIST's constructor arguments: the CTM's less the backbone, positional embedding and
#: dropout_nlm (it fixes them: backbone 'none' with its own digit backbone, no positions, the NLMs take dropout),
#: plus its schedule; its `iterations` is ignored (its forward takes the ticks from its input)
QAMNIST_ARGUMENTS = (*(k for k in OFFICIAL_ARGUMENTS if k not in ("backbone_type", "positional_embedding_type",
                                                                  "dropout_nlm")),
                     "iterations_per_digit", "iterations_per_question_part", "iterations_for_answering")
QAMNIST_DEFAULTS = {"prediction_reshaper": [-1], "dropout": 0, "neuron_select_type": "first-last",
                    "n_random_pairing_self": 256}
#: the official QAMNIST training script's model arguments (tasks/qamnist/train.py; a checkpoint's 'args') ->
#: the constructor's (q_num_repeats_per_input gives iterations_per_digit and iterations_per_question_part)
QAMNIST_SCRIPT = {"iterations": "iterations", "d_model": "d_model", "d_input": "d_input", "heads": "heads",
                  "n_synch_out": "n_synch_out", "n_synch_action": "n_synch_action", "synapse_depth": "synapse_depth",
                  "memory_length": "memory_length", "deep_memory": "deep_nlms",
                  "memory_hidden_dims": "memory_hidden_dims", "do_normalisation": "do_layernorm_nlm",
                  "out_dims": "out_dims", "dropout": "dropout", "neuron_select_type": "neuron_select_type",
                  "n_random_pairing_self": "n_random_pairing_self",
                  "q_num_answer_steps": "iterations_for_answering"}
#: the script's task arguments -> ctm's qamnist task options
QAMNIST_TASK = {"q_num_images": "digits", "q_num_images_delta": "digits_delta", "q_num_operations": "operations",
                "q_num_operations_delta": "operations_delta", "q_num_repeats_per_input": "repeats",
                "q_num_answer_steps": "answer_ticks"}
#: the script's defaults (its parse_args; out_dims is set to its 10 classes), for what script arguments omit
QAMNIST_SCRIPT_DEFAULTS = {
    "q_num_images": 3, "q_num_images_delta": 2, "q_num_repeats_per_input": 10, "q_num_operations": 3,
    "q_num_operations_delta": 2, "q_num_answer_steps": 10, "model_type": "ctm", "d_model": 1024, "d_input": 64,
    "synapse_depth": 1, "heads": 4, "n_synch_out": 32, "n_synch_action": 32, "neuron_select_type": "random",
    "n_random_pairing_self": 256, "iterations": 50, "memory_length": 30, "deep_memory": True,
    "memory_hidden_dims": 4, "dropout": 0.0, "do_normalisation": False, "out_dims": 10}
#: the QAMNIST model's index embeddings (a buffer: the sinusoids ctm's token table computes) and operators
QAMNIST_INDEX, QAMNIST_OPERATORS = "index_backbone.embedding", "operator_backbone.embedding.weight"

# official state-dict name -> ctm name, rewritten by each rule in turn
_RENAMES = [
    (r"^backbone_digit\.layers\.", "backbone."),  # the QAMNIST model's MNISTBackbone: ctm's tutorial backbone
    (r"^operator_backbone\.embedding\.weight$", "token_table.learned"),
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
    """The `CTMConfig` of the official model `model` ("ctm", "sort" or "qamnist", `OFFICIAL_MODELS`) built with
    `kwargs` (qamnist: the constructor's or the training script's arguments, `qamnist_arguments`); in_channels
    (sort: d_input) is read from the weights."""
    if model not in OFFICIAL_MODELS:
        raise ValueError(f"unknown official model {model!r}; choose "
                         + " or ".join(f"{k!r} ({v})" for k, v in OFFICIAL_MODELS.items()))
    if model == "qamnist":
        return _qamnist_config(state_dict, kwargs)
    if QAMNIST_OPERATORS in state_dict:
        raise ValueError(f"official state dict has the QAMNIST model's operator embeddings ({QAMNIST_OPERATORS}): "
                         f"convert it with model='qamnist' (ctm convert-official detects it)")
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


def detect_official_model(state_dict: Mapping[str, Tensor], arguments: Mapping[str, Any] | None = None) -> str:
    """"qamnist" for the official QAMNIST model's weights (its operator or index embeddings) or arguments (its
    schedule's, or the QAMNIST training script's q_num_*), else "ctm". The sort model is not told apart: its
    weights under "ctm" are refused with a one-line hint to convert them with model='sort'."""
    arguments = arguments or {}
    if QAMNIST_OPERATORS in state_dict or QAMNIST_INDEX in state_dict or any(
            k in arguments for k in (*QAMNIST_TASK, "iterations_per_digit", "iterations_per_question_part",
                                     "iterations_for_answering")):
        return "qamnist"
    return "ctm"


def _script_form(arguments: Mapping[str, Any]) -> bool:
    """Whether QAMNIST arguments are the training script's (a checkpoint's 'args') rather than the constructor's."""
    return any(k in arguments for k in (*QAMNIST_TASK, "model_type", "deep_memory", "do_normalisation"))


def qamnist_arguments(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the constructor's arguments, ctm's qamnist task options) of the official QAMNIST model's `arguments`:

    * the constructor's (`QAMNIST_ARGUMENTS`; `QAMNIST_DEFAULTS` for those it defaults): repeats is
      iterations_per_digit, which must equal iterations_per_question_part (ctm's schedule shows digits and
      question tokens alike), answer_ticks iterations_for_answering; digits and operations keep the task's
      defaults (3 +- 2 each, the training script's too);
    * the training script's (tasks/qamnist/train.py, as a checkpoint's 'args' holds them: `QAMNIST_SCRIPT` for
      the model, `QAMNIST_TASK` for the task; `QAMNIST_SCRIPT_DEFAULTS` for what they omit; its training and
      housekeeping arguments are ignored). model_type must be 'ctm'.
    A one-line ValueError names what is wrong."""
    if _script_form(arguments):
        mixed = sorted(set(arguments) & {"deep_nlms", "do_layernorm_nlm", "iterations_per_digit",
                                         "iterations_per_question_part", "iterations_for_answering"})
        if mixed:
            raise ValueError(f"official QAMNIST arguments mix the training script's (q_num_*, deep_memory, ...) with "
                             f"the constructor's {mixed}; give one or the other")
        a = {**QAMNIST_SCRIPT_DEFAULTS, **arguments}
        if a["model_type"] != "ctm":
            raise ValueError(f"official QAMNIST arguments: model_type {a['model_type']!r}: ctm converts the official "
                             f"QAMNIST CTM (model_type 'ctm'), not its LSTM baseline; train ctm's own with ctm train "
                             f"--task qamnist --model lstm")
        constructor = {QAMNIST_SCRIPT[k]: a[k] for k in QAMNIST_SCRIPT}
        constructor.update(iterations_per_digit=a["q_num_repeats_per_input"], prediction_reshaper=[-1],
                           iterations_per_question_part=a["q_num_repeats_per_input"])
        return constructor, {QAMNIST_TASK[k]: a[k] for k in QAMNIST_TASK}
    unknown = sorted(set(arguments) - set(QAMNIST_ARGUMENTS))
    missing = sorted(set(QAMNIST_ARGUMENTS) - set(QAMNIST_DEFAULTS) - set(arguments))
    if unknown or missing:
        raise ValueError("official QAMNIST arguments: " + "; ".join(
            ([f"unknown {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])))
    a = {**QAMNIST_DEFAULTS, **arguments}
    if a["iterations_per_digit"] != a["iterations_per_question_part"]:
        raise ValueError(f"official QAMNIST arguments: iterations_per_digit={a['iterations_per_digit']!r} and "
                         f"iterations_per_question_part={a['iterations_per_question_part']!r} differ; ctm's qamnist "
                         f"schedule shows digits and question tokens for the same ticks (repeats), as the official "
                         f"script does")
    return a, {"repeats": a["iterations_per_digit"], "answer_ticks": a["iterations_for_answering"]}


def qamnist_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """ctm's qamnist task options of the official QAMNIST model's arguments (`qamnist_arguments`), checked."""
    return dataclasses.asdict(_qamnist_task(qamnist_arguments(arguments)[1]).options)


def _qamnist_task(options: Mapping[str, Any]):
    from ..tasks.qamnist.task import QAMNISTTask

    try:
        return QAMNISTTask(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"official QAMNIST arguments: {e}") from None


def _qamnist_config(state_dict: Mapping[str, Tensor], arguments: Mapping[str, Any]) -> CTMConfig:
    """The CTMConfig of ContinuousThoughtMachineQAMNIST (module docstring)."""
    from ..tasks.qamnist.data import MAX_DIGITS, N_TOKENS

    if "lstm_cell.weight_ih" in state_dict:
        raise ValueError("official state dict has lstm_cell weights: the official QAMNIST LSTM baseline's, which do "
                         "not convert (ctm converts the QAMNIST CTM); train ctm's own with ctm train --task qamnist "
                         "--model lstm")
    if state_dict and QAMNIST_OPERATORS not in state_dict:
        raise ValueError(f"official state dict has no {QAMNIST_OPERATORS}: not the QAMNIST model's "
                         f"(ContinuousThoughtMachineQAMNIST); convert an official ContinuousThoughtMachine without "
                         f"model='qamnist' (the sort model's with model='sort')")
    a, options = qamnist_arguments(arguments)
    task = _qamnist_task(options)
    try:
        classes = torch.empty(a["out_dims"]).reshape(a["prediction_reshaper"]).shape[-1]
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"official QAMNIST arguments: prediction_reshaper={a['prediction_reshaper']!r} does not "
                         f"reshape out_dims={a['out_dims']} ({e})") from None
    first = "backbone_digit.layers.0.weight"
    if state_dict and first not in state_dict:
        raise ValueError(f"official state dict: no {first} (expected an official ContinuousThoughtMachineQAMNIST's "
                         f"state_dict() after one forward, which initialises its lazy layers)")
    selection = a["neuron_select_type"]
    fields = {OFFICIAL_ARGUMENTS[k]: a[k] for k in QAMNIST_ARGUMENTS if k in OFFICIAL_ARGUMENTS and k not in (
        "iterations", "prediction_reshaper", "n_random_pairing_self")}
    fields.update(iterations=task.options.longest, out_positions=a["out_dims"] // classes, nlm_temperature=True,
                  nlm_dropout=a["dropout"], n_self_pairs=a["n_random_pairing_self"] if selection == "random-pairing"
                  else 0,  # the official model reads n_random_pairing_self with random-pairing only
                  backbone="tutorial", positional_embedding="none", input_reader="schedule", input_tokens=N_TOKENS,
                  fixed_tokens=MAX_DIGITS, in_channels=int(state_dict[first].shape[1]) if state_dict else 1)
    try:
        return CTMConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"official QAMNIST arguments not supported by ctm: {e}") from None


def qamnist_records(config: CTMConfig, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """config.json's "task" and "dataset" of a converted official QAMNIST model: the qamnist task with the
    options its arguments give (`qamnist_arguments`), questions over MNIST. ValueError where the model cannot
    answer them (the task feeds 1-channel digits and reads 10 answers)."""
    from ..tasks.qamnist.task import IMAGES

    task = _qamnist_task(qamnist_arguments(arguments)[1])
    if config.out_dims != 10 or config.out_positions != 1 or config.in_channels != 1:
        raise ValueError(f"the qamnist task feeds 1-channel MNIST digits and reads 10 answers; the official model "
                         f"reads {config.in_channels} channel(s) and gives out_dims={config.out_dims}"
                         + (f" in {config.out_positions} positions" if config.out_positions > 1 else ""))
    return {"task": task.record(), "dataset": {"name": "qamnist", "images": IMAGES, "num_classes": 10}}


def official_arguments(config: CTMConfig) -> dict[str, Any]:
    """The official constructor's arguments for `config` (the reverse of `config_from_official`); for a config
    with input_reader "direct", those of the official sort model (`official_model(config)`: "sort"), with
    heads=0 and n_synch_action=0 as it fixes them. The official model always has NLM temperatures, has no
    tutorial backbone, and takes its input channels from its first batch; ValueError for a config it cannot
    build."""
    model = official_model(config)
    if model == "qamnist":
        raise ValueError("the official QAMNIST model's arguments hold its schedule (iterations_per_digit, "
                         "iterations_per_question_part, iterations_for_answering), which the qamnist task's options "
                         "give, not the config; official_arguments builds ContinuousThoughtMachine and "
                         "ContinuousThoughtMachineSORT arguments")
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
    for attention, "qamnist" for QAMNIST's schedule (the tutorial backbone, 52 tokens of which 50 fixed);
    ValueError for another schedule (no official model reads it)."""
    if config.input_reader == "schedule":
        from ..tasks.qamnist.data import MAX_DIGITS, N_TOKENS

        if (config.backbone, config.positional_embedding, config.input_tokens, config.fixed_tokens) != (
                "tutorial", "none", N_TOKENS, MAX_DIGITS):
            raise ValueError(f"no official model reads this schedule: the official QAMNIST model "
                             f"(ContinuousThoughtMachineQAMNIST) has the tutorial backbone, no positional embedding "
                             f"and {N_TOKENS} tokens of which {MAX_DIGITS} fixed")
        return "qamnist"
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

    `model` names the official class: "ctm" (`ContinuousThoughtMachine`, the default), "sort"
    (`ContinuousThoughtMachineSORT`: a ctm model with input_reader "direct", which takes (B, N) numbers) or
    "qamnist" (`ContinuousThoughtMachineQAMNIST`: input_reader "schedule", which takes the schedule
    `ctm.tasks.qamnist.data.schedule` makes; `detect_official_model` recognises its weights).
    `kwargs` are the official constructor's arguments (`iterations=..., backbone_type=..., ...`; qamnist: also
    the training script's, `qamnist_arguments`); an argument ctm does not support, or a state dict that does not
    fit them, raises a one-line ValueError.
    """
    config = config_from_official(state_dict, model, **kwargs)
    net = ContinuousThoughtMachine(config)
    ours = net.state_dict()
    converted: dict[str, Tensor] = {}
    unexpected = []
    for name, tensor in state_dict.items():
        if name == QAMNIST_INDEX and model == "qamnist":
            _check_index_embeddings(tensor, config)  # ctm computes them (token_table.fixed, not saved)
            continue
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
    missing = sorted(set(ours) - set(converted)) + ([QAMNIST_INDEX] if model == "qamnist" and QAMNIST_INDEX not in
                                                   state_dict else [])
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
    `model_state_dict` (`load_official_checkpoint`)."""
    return load_official_checkpoint(path)[0]


def load_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(the state dict, the arguments) in an official `.pt` file: a bare `state_dict()` (no arguments), or a
    checkpoint dict holding it under `model_state_dict` and the training script's arguments under `args` (an
    argparse.Namespace, as the official training scripts save it, or a dict; None where it holds neither).
    Loaded with `weights_only=True`, allowing only argparse.Namespace and the numpy arrays of the RNG state the
    official checkpoints hold beside the weights: a file that needs other unpickling is refused."""
    try:
        with _checkpoint_globals():
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
    arguments = None
    if isinstance(payload, Mapping) and isinstance(payload.get("model_state_dict"), Mapping):
        recorded = payload.get("args")
        if isinstance(recorded, argparse.Namespace):
            arguments = dict(vars(recorded))
        elif isinstance(recorded, Mapping) and all(isinstance(k, str) for k in recorded):
            arguments = dict(recorded)
        payload = payload["model_state_dict"]
    if not isinstance(payload, Mapping) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(payload), arguments


def _checkpoint_globals():
    """A context allowing `weights_only` loading of what an official training checkpoint holds besides tensors:
    its `args` (argparse.Namespace) and numpy's RNG state (a uint32 array). torch before 2.5 has no such
    context: nothing is allowed there (a bare state dict still loads)."""
    import contextlib

    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return contextlib.nullcontext()
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np

        multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
        allowed += [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
        if tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 6):
            # a checkpoint written under numpy 1.x names numpy.core.multiarray._reconstruct
            allowed.append((multiarray._reconstruct, "numpy.core.multiarray._reconstruct"))
    except ImportError:  # no numpy: a checkpoint holding arrays is refused, naming them
        pass
    return safe_globals(allowed)


def _check_index_embeddings(embedding: Tensor, config: CTMConfig) -> None:
    """The official QAMNIST index embeddings (a buffer) must be the sinusoids ctm's fixed tokens compute."""
    from ..nn.readers import sinusoids

    expected = sinusoids(config.fixed_tokens, config.d_input)
    if tuple(embedding.shape) != tuple(expected.shape):
        raise ValueError(f"official state dict: {QAMNIST_INDEX} has shape {tuple(embedding.shape)}; the official "
                         f"QAMNIST model's {config.fixed_tokens} index embeddings of d_input={config.d_input} are "
                         f"{tuple(expected.shape)}")
    diff = float((embedding.detach().float().cpu() - expected).abs().max())
    if not diff <= 1e-5:
        raise ValueError(f"official state dict: {QAMNIST_INDEX} is not the sinusoidal index embeddings (max "
                         f"difference {diff:.3g}); ctm's fixed index tokens are those sinusoids and cannot hold "
                         f"other values")


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
