"""The `ctm` command line: a thin layer that parses flags, builds objects and prints.

Errors a user can cause (bad flags, missing data, foreign or malformed run directories, a full disk) print
one line on stderr and exit with code 2; a non-finite loss exits with 1. SIGINT (Ctrl-C), SIGTERM and SIGHUP
during training save a checkpoint and exit with 128 + the signal number (130, 143, 129); anywhere else they
exit at once with one line and the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

from .. import __version__
from .._malloc import retain_freed_memory
from .._signals import Interrupted, raise_on_stop_signals, restore
from .._text import printable, printable_lines
from .config_flags import OneLineParser, _parse, add_config_flags, given, shown, with_flag_names


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


# What `ctm train` draws in the run directory once training ends.
RUN_PICTURES = ("thinking.gif", "curves.png")
# `ctm viz` without --index and thinking.gif pick among this many first test images.
THOUGHTFUL_POOL = 500

EXAMPLES = {
    "train": """examples:
  ctm train                                  # MNIST with the default recipe, into runs/mnist-<time>
  ctm train --dataset fashion-mnist --steps 8000 --out runs/fashion
  ctm train --preset seed                    # the tutorial's model and recipe exactly
  ctm train --preset tutorial                # the tutorial's model, the best recipe we found for it
  ctm train --dataset folder:~/pictures/shapes --image-size 32   # your images: one subfolder per class
  ctm train --resume runs/fashion --steps 10000
  ctm train --task parity                    # cumulative parity of +-1 sequences of length 16
  ctm train --task parity --task-option length=8 --ticks 20 --steps 2000
  ctm train --task parity --model lstm       # the paper's LSTM baseline, as many parameters as the CTM
  ctm train --task sort                      # emit the order of 30 numbers over the ticks (CTC)
  ctm train --task sort --task-option n=8 --ticks 12 --steps 1500
  torchrun --nproc-per-node 2 -m ctm train --batch-size 256""",
    "eval": """examples:
  ctm eval runs/mnist-20261129-101500
  ctm eval RUN --json --plot                 # machine-readable; RUN/ticks.png
  ctm eval RUN --halt-certainty 0.9          # adaptive computation at one threshold
  ctm eval RUN --halt-sweep                  # several thresholds, RUN/halting.png
  ctm eval SORT_RUN --task-option std=2      # a sort run on numbers twice as spread
  ctm eval --pretrained mnist                # the bundled model (on its shipped test images without MNIST)""",
    "viz": """examples:
  ctm viz RUN                                # an image the model thinks about -> RUN/thinking-test-<index>.gif
  ctm viz --pretrained mnist                 # the bundled model, no data needed
  ctm viz RUN --index 0                      # test image 0
  ctm viz RUN --label 7 --out seven.gif""",
    "view": """examples:
  ctm view --pretrained mnist                # ./ctm-view-mnist.html, no data needed
  ctm view RUN --samples 200                 # RUN/viewer.html (an image run or a parity run)
  ctm view RUN --serve --port 8000           # also on http://127.0.0.1:8000/ until Ctrl-C""",
    "predict": """examples:
  ctm predict RUN digit.png photo.jpg        # an image run: image files
  ctm predict RUN *.png --halt-certainty 0.9 --json
  ctm predict --pretrained mnist seven.png --invert   # a dark digit on white paper: swap light and dark first
  ctm predict PARITY_RUN ++-+--+-            # a parity run: sequences of + and -, as long as its length
  ctm predict PARITY_RUN --sequence=-+-++--- --sequence-file sequences.txt
  ctm predict SORT_RUN --numbers 0.3 -1.2 2.5 0.1 --json   # a sort run: its N numbers -> order, waits
  ctm predict MAZE_RUN maze.png big.png --out routes/      # a maze run: the route, re-applied on large mazes
  ctm predict QAMNIST_RUN --digits 3.png 7.png --question "1 + 0 - 1"  # a qamnist run: the answer, its tick""",
    "pretrained": """examples:
  ctm pretrained                             # name, accuracy, size and the command that trained each
  ctm view --pretrained mnist""",
    "convert-official": """examples:
  ctm convert-official official.pt --args args.json --out runs/official --dataset mnist
  ctm eval runs/official --halt-certainty 0.9
  ctm convert-official sort.pt --args sort_args.json --out runs/official-sort --model sort
  ctm predict runs/official-sort --numbers 0.3,-1.2,...
  ctm convert-official logs/qamnist/checkpoint_300000.pt --out runs/official-qamnist  # its args inside: no --args
  ctm eval runs/official-qamnist --task-option operations=6 --task-option operations_delta=1
  ctm convert-official ctm-maze-large/ --out runs/maze-large  # the Hugging Face layout: config.json + model.safetensors
  ctm convert-official hf:SakanaAI/ctm-maze-large --out runs/maze-large  # downloaded (pip install 'torch-ctm[hub]')
  ctm convert-official my-maze/ --out runs/my-maze --pixel-range -1..1  # a maze model trained on [-1, 1]: as is
  ctm eval runs/maze-large --task-option cells=15""",
}


def _add_parser(sub, name: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=SUBCOMMANDS[name][0], description=description, epilog=EXAMPLES.get(name),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_task_flag(p) -> None:
    """--task on the commands that read a run: the task of a run trained with --task module:Class, which ctm
    imports only when asked."""
    p.add_argument("--task", metavar="MODULE:CLASS", default=None,
                   help="the task of a run trained with --task module:Class (ctm imports no code a run names; say "
                        "it here)")


def _add_runtime_flags(p) -> None:
    """--device and --threads, the same on every computing subcommand."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps "
                                                    "(default auto)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")


def _preset_defaults(cls: type, part: str) -> dict[str, str]:
    """Each field of `cls` (TrainConfig or CTMConfig) as the help shows its default: the default preset's value,
    then the other image presets' where they differ ("10; --preset tutorial, seed: 30")."""
    from ..training.loop import PRESETS

    image = [n for n, p in PRESETS.items() if p.task == PRESETS["default"].task]
    configs = {n: cls.from_dict(dict(getattr(PRESETS[n], part))) for n in image}
    texts = {}
    for f in dataclasses.fields(cls):
        base, differ = getattr(configs["default"], f.name), {}
        for name in (n for n in image if n != "default"):
            v = getattr(configs[name], f.name)
            if v != base:
                differ.setdefault(shown(v), []).append(name)
        if shown(base) or differ:  # an empty default (e.g. --image-size's) is explained by its help
            texts[f.name] = shown(base) + "".join(f"; --preset {', '.join(names)}: {v}" for v, names in differ.items())
    return texts


def _add_train_parser(sub) -> None:
    from ..config import CTMConfig
    from ..nn.kinds import MODEL_KINDS
    from ..tasks import DEFAULT_TASK, TASKS
    from ..training.loop import PRESETS, TrainConfig

    p = _add_parser(sub, "train", "Train a CTM on a task (image classification by default). Flags not given come "
                    "from the preset; the run directory records everything, so --resume needs no other flags.")
    p.add_argument("--task", metavar="NAME", default=None,
                   help=f"what to learn: {', '.join(sorted(TASKS))} (default {DEFAULT_TASK}), or a task of your own "
                        f"package as module:Class (a ctm.tasks.Task subclass); the run records it")
    p.add_argument("--task-option", metavar="KEY=VALUE", action="append", default=[], dest="task_option",
                   help="an option of the task, e.g. --task-option length=8; repeat for several. "
                        + "; ".join(_task_options_help(cls) for cls in sorted(TASKS.values(), key=lambda t: t.name)
                                    if dataclasses.fields(cls.Options)).replace("%", "%%"))
    p.add_argument("--model", choices=sorted(MODEL_KINDS), default=None, dest="model_kind",
                   help="the model: ctm (default) or lstm (the paper's LSTM baseline: the same tokens (or, for the "
                        "sort task, the same input at every tick; for qamnist, the same schedule), ticks and loss, its "
                        "width matched to the CTM's parameter count); the run records it")
    p.add_argument("--preset", metavar="NAME", default=None,
                   help="; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items()).replace("%", "%%")
                   + " (default: default, or the task's own, e.g. parity)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (a larger --steps extends it)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<dataset>-<timestamp>)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the four IDX files (used alone, no fallback)")
    g = p.add_argument_group("training (TrainConfig)")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the training set (converted to --steps)")
    add_config_flags(g, TrainConfig, _preset_defaults(TrainConfig, "train"), groups={"steps": length})
    g = p.add_argument_group("model (CTMConfig)")
    model_defaults = _preset_defaults(CTMConfig, "model")
    data_fields = TASKS[DEFAULT_TASK].fixed_fields  # the default task takes these from its data
    add_config_flags(g, CTMConfig, {name: "the data's" if name in data_fields else text
                                    for name, text in model_defaults.items()})
    g = p.add_argument_group("runtime")
    _add_runtime_flags(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar; print a line per evaluation")
    g = p.add_argument_group("distributed (torchrun --nproc-per-node N -m ctm train ...)")
    g.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto",
                   help="process group backend; auto: nccl on CUDA, gloo on CPU")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="SyncBatchNorm across ranks (default on with CUDA). PyTorch's SyncBatchNorm is GPU-only: "
                        "on CPU each rank normalises with its own batch statistics")
    g.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                   help="seconds a collective may wait before the job fails instead of hanging (default 600)")


def _add_eval_parser(sub) -> None:
    p = _add_parser(sub, "eval", "Test loss and accuracy of a run at the most-certain tick and the last tick, "
                                 "and accuracy per tick.")
    _add_model_source(p)
    p.add_argument("--dataset", help="evaluate on another dataset of the same shape (default: the run's), or on the "
                                     "run's image folder where it moved: folder:NEWPATH")
    _add_run_data_dir(p)
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split (default test)")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="images per forward (default 500)")
    _add_runtime_flags(p)
    _add_task_flag(p)
    p.add_argument("--task-option", metavar="KEY=VALUE", action="append", default=[], dest="task_option",
                   help="evaluate on the run's task with one option changed, e.g. --task-option std=2 (a sort run "
                        "on a wider spread); repeat for several. Options that fix the model must match the run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", action="store_true", help="write RUN_DIR/ticks.png (the task's figure of the "
                                                      "evaluation; for images accuracy and certainty per tick)")
    halt = p.add_mutually_exclusive_group()
    halt.add_argument("--halt-certainty", type=float, metavar="TAU",
                      help="adaptive computation: each sample stops at its first tick with certainty >= TAU (a sort "
                           "run: once its order is complete and that certain, read off one full forward); reports "
                           "accuracy, mean ticks and wall time against the full-T evaluation")
    halt.add_argument("--halt-sweep", type=float, nargs="*", metavar="TAU",
                      help="evaluate several thresholds (default: a built-in list), print a table and write "
                           "RUN_DIR/halting.png")
    p.add_argument("--max-ticks", type=_positive_int, help="with --halt-*: stop every sample by this tick")
    p.add_argument("--slice", action="store_true", help="with --pretrained: evaluate on the test images shipped "
                   "with the weights (the default when the dataset's files are not found)")


def _add_viz_parser(sub) -> None:
    p = _add_parser(sub, "viz", "The thinking GIF of one sample, a frame per tick: the task's panels (for "
                                "images: input, attention map, class probabilities), certainty, neuron traces.")
    _add_model_source(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, help="sample index in the split (default: the task picks one; for "
                       f"images, among the first {THOUGHTFUL_POOL} the one whose probabilities change most over the "
                       "ticks)")
    which.add_argument("--label", type=int, help="the first image with this label")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split (default test)")
    _add_run_data_dir(p)
    p.add_argument("--out", metavar="FILE.gif", help="where to write (default RUN_DIR/thinking-<split>-<index>.gif)")
    p.add_argument("--fps", type=float, default=5, help="frames per second, 0.1 to 100 (default 5)")
    _add_runtime_flags(p)
    _add_task_flag(p)


def _add_predict_parser(sub) -> None:
    p = _add_parser(sub, "predict", "The model's answers to your inputs: for an image run, PNG/JPEG/BMP files of "
                                    "any size (converted to the run's channels and input size) -> class, "
                                    "probability and the tick of the answer; for a parity run, sequences of + and - "
                                    "-> the parity at every position (0 even, 1 odd), with the tick and certainty "
                                    "of the answer (the most certain tick, or the halting tick); for a sort run, "
                                    "N numbers -> the order that sorts them and the ticks waited before each; for a "
                                    "maze run, official-format maze pictures of any size -> the route walked "
                                    "(re-applying the model), the cells visited and whether it solves the maze; "
                                    "for a qamnist run, digit images (--digits) and a question about them "
                                    "(--question) -> the answer, its certainty and tick, and the running values "
                                    "decoded.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by ctm train (with --pretrained "
                                                        "NAME: the first input)")
    p.add_argument("--pretrained", metavar="NAME", help="a model bundled with ctm instead of a run (see ctm "
                                                        "pretrained): ctm predict --pretrained mnist digit.png")
    p.add_argument("inputs", metavar="INPUT", nargs="*",
                   help="image files (an image run), sequences of + and - (a parity run; one that starts with "
                        "- goes in --sequence=...), or a sort run's numbers quoted as one argument (\"0.3 -1.2 ...\"; "
                        "or --numbers)")
    p.add_argument("--sequence", action="append", default=[], metavar="SEQ",
                   help="a parity run's input: + for +1 and - for -1, as many as the run's length (repeatable); "
                        "write --sequence=-+... for one that starts with -")
    p.add_argument("--sequence-file", metavar="FILE",
                   help="a text file of inputs, one per line: + and - sequences (parity), numbers (sort); blank "
                        "lines and lines starting with # skipped; - reads standard input")
    p.add_argument("--numbers", action="append", nargs="+", default=[], metavar="X",
                   help="a sort run's input: as many numbers as it sorts, e.g. --numbers 0.3 -1.2 2.5 0 "
                        "(repeatable, one sample each; quote a sample with negative e-notation: --numbers "
                        "\"0.3 -1e-3 2 0\")")
    p.add_argument("--digits", nargs="+", metavar="IMG",
                   help="a qamnist run's digit images, in order (files, folders or glob patterns; any size, read "
                        "greyscale at the run's image size, ink bright on dark as MNIST): --question's indices "
                        "name them, 0-based")
    p.add_argument("--question", action="append", metavar="Q",
                   help="a qamnist run's question about --digits: indices into them joined by + and -, worked left "
                        "to right modulo 10, e.g. --question \"1 + 0 - 1\" (repeatable: one answer each)")
    p.add_argument("--halt-certainty", type=float, metavar="TAU",
                   help="answer at the first tick whose certainty reaches TAU, a fraction in [0, 1] (default: the "
                        "most certain tick of all; a sort run: once its order is complete and that certain, by "
                        "default the order of all ticks)")
    p.add_argument("--invert", action="store_true",
                   help="an image run: swap light and dark of each picture (1 - x, pixels in [0, 1]) before "
                        "predicting, for dark drawings on a light background given to a model trained on light on "
                        "dark, as MNIST's (ctm predict says on stderr when a picture looks the opposite way round "
                        "from the training data); --json says \"inverted\" per file")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.add_argument("--out", metavar="FILE_OR_DIR",
                   help="write each answer drawn as a picture, for tasks that draw theirs (a maze run: the maze with "
                        "the route walked, in blue): a .png file for one input, else a folder (made when missing) "
                        "of INPUT-route.png files")
    _add_runtime_flags(p)
    _add_task_flag(p)


def _add_run_data_dir(p: argparse.ArgumentParser, more: str = "") -> None:
    """--data-dir of the commands that read a trained run's data."""
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"folder holding the IDX files (default: the run's, else the standard places{more})")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run directory written by ctm train (or use "
                                                                  "--pretrained)")
    p.add_argument("--pretrained", metavar="NAME",
                   help="a model bundled with ctm instead of a run (see ctm pretrained), or official weights in the "
                        "Hugging Face layout: hf:OWNER/NAME (e.g. hf:SakanaAI/ctm-maze-large; needs "
                        "pip install 'torch-ctm[hub]') or a folder of config.json and model.safetensors")


def _add_view_parser(sub) -> None:
    p = _add_parser(sub, "view", "Write one self-contained HTML page to step through the model's ticks on test "
                                 "samples: the input with its attention, the answers (class probabilities; for "
                                 "parity, the parity at every position against the truth), certainty, neuron "
                                 "traces, halting. No network needed to open it.")
    _add_model_source(p)
    p.add_argument("--out", metavar="FILE.html", help="default RUN_DIR/viewer.html, or ./ctm-view-NAME.html "
                   "for --pretrained")
    p.add_argument("--samples", type=_positive_int, default=100, help="test samples in the picker (default 100)")
    p.add_argument("--threshold", type=float, default=0.9, help="the halting threshold shown first (default 0.9)")
    _add_run_data_dir(p, "; with --pretrained: the shipped test images")
    p.add_argument("--serve", action="store_true", help="also serve the page on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000; 0: any free port)")
    _add_runtime_flags(p)
    _add_task_flag(p)


def _add_pretrained_parser(sub) -> None:
    _add_parser(sub, "pretrained", "The trained models shipped inside the package, with the command that made "
                                   "each and its accuracy.")


def _add_convert_official_parser(sub) -> None:
    p = _add_parser(sub, "convert-official", "Convert a state dict of the official CTM implementation "
                    "(SakanaAI/continuous-thought-machines) and its constructor's arguments into a ctm run directory "
                    "that ctm eval, viz and predict read.")
    p.add_argument("state_dict", metavar="STATE_DICT.pt",
                   help="the official model's state_dict() (or a checkpoint holding it as model_state_dict); or a "
                        "folder in the Hugging Face layout (config.json of the constructor's arguments + "
                        "model.safetensors), or hf:OWNER/NAME to download one (pip install 'torch-ctm[hub]'): no "
                        "--args then. A maze model (prediction_reshaper [L, 5], 3 channels) becomes a maze task "
                        "run, the official QAMNIST model a qamnist task run")
    p.add_argument("--args", metavar="ARGS.json",
                   help="a JSON object of the official constructor's arguments (needed for a .pt state dict; for the "
                        "QAMNIST model also the training script's arguments, which an official checkpoint holds as "
                        "its 'args' and which are read from there without --args)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write (new or empty)")
    p.add_argument("--dataset", help="the dataset the run evaluates on by default (e.g. mnist)")
    p.add_argument("--model", choices=("ctm", "sort", "qamnist"), default=None,
                   help="the official class the weights are from: ctm (models/ctm.py ContinuousThoughtMachine, the "
                        "default), sort (models/ctm_sort.py ContinuousThoughtMachineSORT: the run is a sort task "
                        "run of N = out_dims - 1 numbers from N(0, 1)) or qamnist (models/ctm_qamnist.py "
                        "ContinuousThoughtMachineQAMNIST: a qamnist task run; recognised from its weights without "
                        "--model)")
    p.add_argument("--pixel-range", choices=("0..1", "-1..1"), default=None,
                   help="for a maze model in the Hugging Face layout: the range of the pictures it was trained on. "
                        "0..1 (the default: the published official maze checkpoints' legacy range) is folded into "
                        "its first 1x1 convolution so that the run reads the maze task's pictures in [-1, 1]; "
                        "-1..1 converts as is")


def _add_bench_parser(sub) -> None:
    # Listed for `ctm --help`; main() hands everything after `bench` to ctm.bench, which parses its own flags.
    sub.add_parser("bench", help="speed of ctm against the seed reference (ctm bench --help)", add_help=False)


# Subcommand -> (one-line help, the function that adds its flags). Flags are added only for the command being
# run (building train's imports torch), so `ctm --help` answers at once.
SUBCOMMANDS = {
    "train": ("train a CTM", lambda sub: _add_train_parser(sub)),
    "eval": ("evaluate a trained run", lambda sub: _add_eval_parser(sub)),
    "viz": ("render the thinking GIF of one sample", lambda sub: _add_viz_parser(sub)),
    "predict": ("classify image files with a trained run", lambda sub: _add_predict_parser(sub)),
    "view": ("an interactive tick viewer (one HTML file)", lambda sub: _add_view_parser(sub)),
    "pretrained": ("list the models bundled with ctm", lambda sub: _add_pretrained_parser(sub)),
    "convert-official": ("a run directory from the official CTM code's weights",
                         lambda sub: _add_convert_official_parser(sub)),
    "bench": ("speed of ctm against the seed reference (ctm bench --help)", lambda sub: _add_bench_parser(sub)),
}


def build_parser(command: str | None = "all") -> argparse.ArgumentParser:
    """The `ctm` parser with the flags of `command` ("all": every subcommand; None: names and help only)."""
    parser = OneLineParser(prog="ctm", description="Continuous Thought Machines: train, evaluate, watch.")
    parser.add_argument("--version", action="version", version=f"ctm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, (help_text, add) in SUBCOMMANDS.items():
        if command in ("all", name):
            add(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _is_main_process() -> bool:
    """False on the ranks other than 0 under torchrun: they neither print nor write."""
    return int(os.environ.get("RANK", "0")) == 0


def _build_native_announced() -> None:
    """Build the C++ tick loops (`ctm.native`) before training starts, saying so on a terminal: it happens once
    per machine and takes ~20 s, which would otherwise look like a hang before the first step."""
    from ..nn import native

    if native.enabled() and not native.is_built():
        if sys.stderr.isatty():
            print("building ctm's C++ tick loop (once per machine, about 20 s)...", file=sys.stderr, flush=True)
        native.ops()


def _set_threads(threads: int | None) -> None:
    if threads:
        limit = max(64, 4 * (os.cpu_count() or 1))  # far more threads than cores hangs or crashes OpenMP
        if threads > limit:
            raise CLIError(f"--threads {threads} is far more than this machine's {os.cpu_count()} CPUs; "
                           f"use at most {limit} (usually the number of cores)")
        import torch

        torch.set_num_threads(threads)


def _data_dir_for(run_dir: str | Path, payload: dict, data_dir: str | None, dataset: str | None = None) -> str | None:
    """The data folder for a run: --data-dir when given; else the --data-dir the run was trained with (so a
    run trained on other files than the standard ones never silently continues or evaluates on those)."""
    if data_dir is not None or dataset is not None:
        return data_dir
    record = payload.get("dataset") or {}
    recorded = record.get("data_dir")
    if recorded and not Path(recorded).is_dir():
        if record.get("data_dir_from") == "CTM_DATA_DIR":  # found through the variable, not chosen: look again
            return None
        raise CLIError(f"{run_dir} was trained on the files in --data-dir {recorded}, which is gone; pass "
                       f"--data-dir with the same data")
    return recorded


def _steps_from_epochs(epochs: float, task, train_config, data_dir: str | None) -> int:
    from ..data.folders import folder_path, split_size

    if not math.isfinite(epochs) or epochs <= 0:
        raise CLIError(f"--epochs must be a positive number, got {epochs}")
    if task.endless_data:
        raise CLIError(f"--epochs counts passes over a training set; the {task.name} task's training data are an "
                       f"endless stream: use --steps")
    folder = folder_path(train_config.dataset)  # a folder is counted, not read
    n = split_size(folder, "train", train_config.holdout) if folder else len(task.load("train", train_config, data_dir))
    return max(1, math.ceil(epochs * (n // train_config.batch_size)))


def _task_options_help(cls) -> str:
    return f"{cls.name}: " + ", ".join(f"{f.name} ({f.metadata.get('help', '')}; default {shown(f.default)})"
                                       for f in dataclasses.fields(cls.Options))


def _task_options(cls, pairs: list[str]) -> dict:
    """--task-option KEY=VALUE pairs as the values of task class `cls`'s options (each parsed by its type)."""
    from ..config import field_types

    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    kinds = field_types(cls.Options)
    options: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CLIError(f"--task-option {pair!r}: expected KEY=VALUE, e.g. --task-option length=8")
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise CLIError(f"--task-option {key}: the {cls.name} task has no such option (its options: {known})")
        if key in options:
            raise CLIError(f"--task-option {key} is given twice")
        kind = kinds[key]
        if kind is bool:
            if text.lower() not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                raise CLIError(f"--task-option {key}={text}: expected true or false")
            options[key] = text.lower() in ("true", "on", "1", "yes")
            continue
        try:
            options[key] = _parse(fields[key], kind)(text)
        except argparse.ArgumentTypeError as e:
            raise CLIError(f"--task-option {key}={text}: {e}") from None
    return options


def _check_path_text(flag: str, text: str | None) -> None:
    """A path that is not valid UTF-8 (undecodable bytes from the shell) would be written into config.json
    and never found again: refuse it before anything is written."""
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CLIError(f"{flag} {text.encode('utf-8', 'backslashreplace').decode()}: the path is not valid "
                           f"UTF-8; choose a name in UTF-8") from None


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import CTMConfig
    from ..data.folders import FOLDER_PREFIX, folder_path
    from ..runs.checkpoint import RunFinishedError
    from ..training import loop as tr

    _set_threads(args.threads)
    _build_native_announced()
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise CLIError(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
    for flag, value in (("--out", args.out), ("--resume", args.resume), ("--data-dir", args.data_dir)):
        _check_path_text(flag, value)
    if args.out is not None and not args.out.strip():
        raise CLIError("--out is empty; give a folder for the run (or leave --out out for runs/<dataset>-<time>)")
    from ..tasks import DEFAULT_TASK, resolve_task, task_from_record

    model_changes, train_changes = given(args, CTMConfig), given(args, tr.TrainConfig)
    folder = folder_path(train_changes.get("dataset", ""))
    if folder is not None:  # recorded absolute, so eval and --resume find it from anywhere
        _check_path_text("--dataset", str(folder))
        train_changes["dataset"] = FOLDER_PREFIX + str(folder.resolve())
    task_class = resolve_task(args.task) if args.task is not None else None
    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise CLIError("--out cannot be combined with --resume (the run stays in its directory)")
        if args.preset:
            raise CLIError("--preset cannot be combined with --resume (the run keeps its recipe)")
        model_config, train_config, payload = tr.resume_configs(run_dir)
        task = task_from_record(payload)
        if task_class is not None and task_class is not type(task):
            raise CLIError(f"cannot resume with --task {args.task}: {args.resume} is a {task.name} run (the task "
                           f"comes from the run)")
        for name, value in _task_options(type(task), args.task_option).items():
            if getattr(task.options, name) != value:
                raise CLIError(f"cannot resume with --task-option {name}={value}: the run's {task.name} task has "
                               f"{name}={getattr(task.options, name)} (the task comes from the run)")
        if args.model_kind is not None and args.model_kind != payload.get("model_kind", "ctm"):
            raise CLIError(f"cannot resume with --model {args.model_kind}: the run's model is "
                           f"{payload.get('model_kind', 'ctm')} (the model comes from the run)")
        args.data_dir = _data_dir_for(run_dir, payload, args.data_dir)
        if args.epochs is not None:
            train_changes["steps"] = _steps_from_epochs(args.epochs, task, train_config, args.data_dir)
        # train() checks the new length and records it once the checkpoint has loaded.
        train_config = tr.resumed_train_config(model_config, train_config, model_changes, train_changes)
    else:
        task_class = task_class or resolve_task(DEFAULT_TASK)
        task = task_class(**_task_options(task_class, args.task_option))
        reader = model_changes.get("input_reader", "attention")
        if reader != "attention" and "input_reader" not in task.fixed_fields:
            raise CLIError(f"--input-reader {reader}: the {task.name} task feeds its inputs to the attention reader "
                           f"(leave it out; the sort task chooses 'direct' itself)")
        preset = args.preset or task.default_preset
        if preset not in tr.PRESETS:  # a task's own (--task module:Class) are known once it is imported
            known = ", ".join(tr.PRESETS)
            raise CLIError(f"--preset {preset}: no such recipe (these are: {known})" if args.preset else
                           f"the {task.name} task's default recipe {preset!r} is not among its presets ({known}); "
                           f"give --preset")
        if tr.PRESETS[preset].task != task.name:
            raise CLIError(f"--preset {preset} is a recipe for the {tr.PRESETS[preset].task} task, not for "
                           f"{task.name}; leave --preset out for {task.name}'s own ({task.default_preset})")
        if tr.PRESETS[preset].task_options:  # the recipe's task options, under those given
            task = task_class(**{**tr.PRESETS[preset].task_options, **_task_options(task_class, args.task_option)})
        train_config = tr.make_train_config(preset, **train_changes)
        if args.epochs is not None:
            train_config = tr.TrainConfig.from_dict({**train_config.to_dict(), "steps": _steps_from_epochs(
                args.epochs, task, train_config, args.data_dir)})
        if set(model_changes) & set(task.fixed_fields):
            tr.check_data_fields(model_changes, task.load("train", train_config, args.data_dir), task)
        model_config = tr.make_model_config(preset, **model_changes)
        folder = folder_path(train_config.dataset)
        run_name = task.dataset_name(train_config) if folder is None else folder.name
        run_dir = Path(args.out) if args.out else _new_run_dir(run_name)
        if not args.out and _is_main_process():
            _name_unfinished_run(run_dir, task, train_config, args.model_kind or "ctm")
    if not args.resume and "warmup_steps" in train_changes and train_config.warmup_steps > train_config.steps:
        raise CLIError(f"--warmup-steps {train_config.warmup_steps} exceeds the {train_config.steps} steps of the "
                       f"run: the learning rate would never reach --lr; give at most {train_config.steps} warm-up "
                       f"steps")
    started = time.perf_counter()
    try:
        result = tr.train(run_dir, model_config, train_config, task=task, model_kind=args.model_kind or "ctm",
                          data_dir=args.data_dir, device=args.device,
                          resume=bool(args.resume), progress=not args.no_progress,
                          log=lambda line: print(printable(line), flush=True), backend=args.backend,
                          sync_bn=args.sync_bn, dist_timeout_s=args.dist_timeout)
    except RunFinishedError as e:  # stopped after its last checkpoint, before its pictures: finish those
        missing = [name for name in RUN_PICTURES if not os.path.lexists(run_dir / name)]
        if not missing or not _is_main_process():
            raise
        print(printable(f"{run_dir} already ran all {e.step} steps; drawing what it stopped before: "
                        f"{', '.join(missing)}"), flush=True)
        return _write_run_pictures(run_dir, args.data_dir, e.step)
    code = 128 + (result.stop_signal or signal.SIGINT)
    if not _is_main_process():
        return code if result.interrupted else 0
    if result.interrupted:
        by = f" by {signal.Signals(result.stop_signal).name}" if result.stop_signal else ""
        print(f"Stopped at step {result.step}{by}; checkpoint saved. Resume with: ctm train --resume "
              f"{printable(shlex.quote(str(run_dir)))}",
              file=sys.stderr)
        return code
    ev = result.final_eval
    stopped = _write_run_pictures(run_dir, args.data_dir, result.step)
    if stopped:
        return stopped
    print(printable(f"Finished {result.step} steps in {time.perf_counter() - started:.0f} s. ") + ev.summary()
          + printable(f". Run: {run_dir}"))
    return 0


def _name_unfinished_run(run_dir: Path, task, train_config, model_kind: str) -> None:
    """Before a new run in runs/ (no --out: what `make train` starts), name the latest run there of the same task,
    data and model that stopped before its last step, and the command that continues it instead."""
    from ..runs.checkpoint import unfinished_runs
    from ..tasks import DEFAULT_TASK, make_task

    default = make_task(DEFAULT_TASK).record()  # runs of versions that recorded no task
    dataset = task.dataset_name(train_config)
    same = [r for r in unfinished_runs(run_dir.parent)
            if (r.payload.get("task") or default) == task.record() and r.payload["train"].get("dataset") == dataset
            and r.payload.get("model_kind", "ctm") == model_kind]
    if not same:
        return
    last = same[0]
    latest = f" (the latest of {len(same)} unfinished {dataset} runs there)" if len(same) > 1 else ""
    print(printable(f"note: starting a new run in {run_dir}. {last.run_dir} stopped at step {last.step} of "
                    f"{last.steps}{latest}; to continue that one instead, stop this one (Ctrl-C) and run: ctm train "
                    f"--resume {shlex.quote(str(last.run_dir))}"), flush=True)


def _new_run_dir(name: str) -> Path:
    """runs/NAME-<date>-<time>, with -2, -3, ... when a run started in the same second has that name."""
    base = Path(f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir, n = base, 1
    while os.path.lexists(run_dir):
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _hub_source(args: argparse.Namespace) -> bool:
    """Whether --pretrained names official weights in the Hugging Face layout (hf:OWNER/NAME or such a folder)
    rather than a model bundled with ctm."""
    from ..interop.hub import HF_PREFIX, is_hub_folder

    name = getattr(args, "pretrained", None)
    return name is not None and (name.startswith(HF_PREFIX) or is_hub_folder(name))


def _bundled(args: argparse.Namespace) -> bool:
    """Whether --pretrained names a model bundled with ctm (which ships its test slice)."""
    return args.pretrained is not None and not _hub_source(args)


def _source_label(args: argparse.Namespace) -> str:
    """--pretrained as a file-name part: hf:SakanaAI/ctm-maze-large -> ctm-maze-large."""
    return re.sub(r"[^\w.-]+", "-", Path(args.pretrained.removeprefix("hf:")).name or "model")


def _load_source(args: argparse.Namespace, device="cpu"):
    """(model, config payload) of RUN_DIR or of --pretrained NAME."""
    if (args.run_dir is None) == (args.pretrained is None):
        raise CLIError("give a run directory or --pretrained NAME (one of them; ctm pretrained lists the names)")
    if _hub_source(args):
        from ..interop.hub import load_hub_model

        return load_hub_model(args.pretrained, device)
    if args.pretrained is not None:
        from ..pretrained import load_pretrained, pretrained_config

        return load_pretrained(args.pretrained, device), pretrained_config(args.pretrained)
    from ..runs.checkpoint import load_model

    return load_model(args.run_dir, device)


def _samples_for(args: argparse.Namespace, payload: dict, split: str = "test"):
    """The data a command shows: for --pretrained without --data-dir the test slice shipped with the weights,
    else the run's task's `split` (`Task.load`, read as the run recorded its data)."""
    from ..tasks import task_from_record

    if _bundled(args) and args.data_dir is None and split == "test":
        from ..pretrained import pretrained_test_slice

        return pretrained_test_slice(args.pretrained)
    task = task_from_record(payload)
    data_dir = args.data_dir if args.pretrained is not None else _data_dir_for(args.run_dir, payload, args.data_dir)
    return task.eval_data(split, _recorded_train_config(args, payload), data_dir, recorded=payload.get("dataset"),
                          progress=True)


def _recorded_train_config(args: argparse.Namespace, payload: dict):
    """The TrainConfig a run (or bundle) records; a run written without one (ctm convert-official) gets the
    defaults with its dataset."""
    from ..training.loop import TrainConfig

    train = payload.get("train")
    if isinstance(train, dict):
        try:
            return TrainConfig.from_dict(train)
        except (TypeError, ValueError) as e:
            raise CLIError(f"{args.run_dir or args.pretrained}: config.json 'train': {e}") from None
    return TrainConfig(dataset=_run_dataset(args.run_dir or args.pretrained, payload))


def _write_run_pictures(run_dir: Path, data_dir: str | None, step: int) -> int:
    """thinking.gif (a test image the model thinks about) and curves.png in the run directory; skipped
    without matplotlib. A stop signal now lets the picture being written finish (each is written whole or not
    at all), then stops with one line: 0, or 128 + the signal's number."""
    try:
        from ..pictures import figures as viz
        from ..runs.checkpoint import load_model, read_metrics

        viz._require_matplotlib()
    except ImportError:
        print("note: install matplotlib and pillow (pip install 'torch-ctm[viz]') for thinking.gif and "
              "curves.png", file=sys.stderr)
        return 0
    from .._signals import StopFlag
    from ..tasks import task_from_record
    from ..training.loop import resume_configs

    # Raised at any instant, a signal would land inside numpy or a garbage-collector callback (which swallows
    # it): here the first one only sets a flag, checked between the pictures; a second stops at once.
    with StopFlag() as flag:
        model, payload = load_model(run_dir)
        task = task_from_record(payload)
        data = task.load("test", resume_configs(run_dir)[1], data_dir, recorded=payload.get("dataset"))
        if not flag.set:
            viz.save_curves(read_metrics(run_dir), run_dir / "curves.png")
        what = None if flag.set else task.thinking_gif(model, data, run_dir / "thinking.gif")
    if flag.set:
        missing = [name for name in RUN_PICTURES if not os.path.lexists(run_dir / name)]
        todo = f"`ctm train --resume {run_dir}` draws {' and '.join(missing)}" if missing else \
            "so are its pictures"
        print(printable(f"ctm train: stopped by {signal.Signals(flag.signum).name} while drawing the run's pictures; "
                        f"the checkpoint of step {step} is saved; {todo}"), file=sys.stderr)
        return 128 + flag.signum
    gif = f"{run_dir / 'thinking.gif'} ({what}) and " if what is not None else ""
    print(printable(f"Wrote {gif}{run_dir / 'curves.png'}"))
    return 0


def _run_dataset(run_dir: str | Path, payload: dict) -> str:
    from ..runs.checkpoint import CONFIG_FILE, run_dataset_name

    name = run_dataset_name(payload)
    if name is None:
        raise CLIError(f"{Path(run_dir) / CONFIG_FILE} records no dataset (no 'dataset' or 'train' section); "
                       f"restore it")
    return name


def _check_out_file(out: str | None, suffixes: tuple[str, ...]) -> None:
    """An --out file name: the right kind, not a folder, in a folder that exists."""
    if out is None:
        return
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise CLIError(f"--out {path}: the file name must end in {suffixes[0]}")
    if path.is_dir():
        raise CLIError(f"--out {path} is a folder; give a file name ending in {suffixes[0]}")
    if not path.parent.is_dir():
        raise CLIError(f"--out {path}: folder {path.parent} does not exist")
    _check_path_text("--out", out)




def cmd_viz(args: argparse.Namespace) -> int:
    """The task's thinking GIF of one sample: `Task.pick_example` (or --index, or for images --label), then
    `Task.thinking_gif`."""
    from ..pictures import figures as viz

    if not 0.1 <= args.fps <= 100:
        raise CLIError(f"--fps must be between 0.1 and 100 frames per second, got {args.fps}")
    _check_out_file(args.out, (".gif",))
    viz._require_matplotlib()
    from ..training.loop import resolve_device

    _set_threads(args.threads)
    model, payload = _load_source(args, resolve_device(args.device))
    from ..tasks import task_from_record

    task = task_from_record(payload)
    data = _samples_for(args, payload, args.split)
    example = task.pick_example(model, data, args.index, label=args.label)
    started = time.perf_counter()
    if args.pretrained is None:
        out = Path(args.out or Path(args.run_dir) / f"thinking-{args.split}-{example.index}.gif")
    else:
        out = Path(args.out or f"thinking-{_source_label(args)}-{example.index}.gif")
    what = task.thinking_gif(model, data, out, fps=args.fps, example=example)
    if what is None:
        raise CLIError(f"the {task.name} task draws no thinking GIF yet")
    frames = _gif_frames(out) or model.config.iterations  # a QAMNIST question runs its own schedule's ticks
    print(printable(f"Wrote {out}: {frames} frames ({what}) in {time.perf_counter() - started:.1f} s"))
    return 0


def _gif_frames(path: Path) -> int | None:
    """The frames of the GIF at `path` (None when Pillow cannot say)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except Exception:  # the count is only for the line printed
        return None


def cmd_view(args: argparse.Namespace) -> int:
    from ..pictures import viewer as view
    from ..tasks import task_from_record
    from ..training.loop import resolve_device

    if not (math.isfinite(args.threshold) and 0 <= args.threshold <= 1):
        raise CLIError(f"--threshold is a certainty in [0, 1], got {args.threshold}")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    _check_out_file(args.out, (".html", ".htm"))
    _set_threads(args.threads)
    model, payload = _load_source(args, resolve_device(args.device))
    task = task_from_record(payload)
    data = _samples_for(args, payload)
    started = time.perf_counter()
    page = task.viewer_data(model, data, args.samples, threshold=args.threshold)
    page["title"] = f"ctm view: {args.pretrained or Path(args.run_dir).name}"
    if data.split == "test-slice":
        from ..pretrained import slice_description

        page["source"] = slice_description(args.pretrained, task)
    out = Path(args.out) if args.out else (Path(args.run_dir) / "viewer.html" if args.pretrained is None
                                           else Path(f"ctm-view-{_source_label(args)}.html"))
    view.write_viewer(page, out, task.viewer_script())
    n, source = len(page["samples"]), page.get("source") or task.name
    print(printable(f"Wrote {out} ({out.stat().st_size / 1024:.0f} KB, {n} samples of {source}) in "
                    f"{time.perf_counter() - started:.1f} s. Open it in a browser: {out.resolve().as_uri()}"))
    if not args.serve:
        return 0
    server = _serve(view, out, args.port)
    print(f"Serving on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Stopped.")
    finally:
        server.server_close()
    return 0


def _serve(view, out: Path, port: int):
    """view.serve, with a port that is taken or needs privileges said as such (not as a path problem)."""
    try:
        return view.serve(out, port)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None)):
            why = "is in use"
        elif e.errno == errno.EACCES:
            why = "needs privileges here"
        else:
            raise
        raise CLIError(f"port {port} on 127.0.0.1 {why} ({printable(out)} is written); serve on another with "
                       f"--port N, or --port 0 for any free one") from None


def cmd_pretrained(args: argparse.Namespace) -> int:
    from ..pretrained import SLICE_FILE, list_pretrained, pretrained_config
    from ..tasks import task_from_record

    infos = list_pretrained()
    if not infos:
        print("No bundled models in this installation.")
        return 0
    for info in infos:
        r = info.record
        size = sum(info.files.values()) / 1024
        task = task_from_record(pretrained_config(info.name))
        whole = (f", {r['test_sequence_accuracy']:.4f} whole sequences" if "test_sequence_accuracy" in r else "")
        if isinstance(r.get("test_solve_rate"), float):  # a maze: the solve rate, and the route steps right
            headline = (f"solve rate {r['test_solve_rate']:.4f}, route steps {r.get('test_route_accuracy', 0.0):.4f}")
            on_slice = r.get("slice_solve_rate", r["slice_accuracy"])
        else:
            headline, on_slice = f"test accuracy {r['test_accuracy']:.4f}{whole}", r["slice_accuracy"]
        print(printable(f"{info.name}: {info.dataset}, {r.get('parameters', '?')} parameters, {headline} "
                        f"(n={r['test_n']}), {on_slice:.4f} on the "
                        f"{'shipped slice of' if SLICE_FILE in info.files else 'first'} {r['slice_n']} test "
                        f"{task.sample_noun}; {size:.0f} KB"))
        print(f"  trained with: {r['command']}")
        print(f"  use: ctm view --pretrained {info.name} | ctm viz --pretrained {info.name} | "
              f"ctm eval --pretrained {info.name} | ctm.load_pretrained({info.name!r})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..training.evaluate import evaluate
    from ..training.loop import resolve_device

    halting = args.halt_certainty is not None or args.halt_sweep is not None
    if args.max_ticks is not None and not halting:
        raise CLIError("--max-ticks only applies with --halt-certainty or --halt-sweep")
    if args.plot and halting:
        raise CLIError("--plot draws the full evaluation's ticks.png; it does not combine with --halt-certainty or "
                       "--halt-sweep (the sweep writes halting.png itself)")
    _set_threads(args.threads)
    device = resolve_device(args.device)
    model, payload = _load_source(args, device)
    if args.max_ticks is not None and args.max_ticks > model.config.iterations:
        raise CLIError(f"--max-ticks {args.max_ticks} exceeds the model's {model.config.iterations} ticks")
    from ..tasks import task_from_record

    task = _with_task_options(task_from_record(payload), args.task_option)
    data, dataset_name = _eval_data(args, payload, task, model.config)
    data = data.to(device)
    if args.halt_certainty is not None or args.halt_sweep is not None:
        return _eval_halting(args, model, data, dataset_name, task)
    result = evaluate(model, data, args.batch_size, task=task, progress=sys.stderr.isatty())
    plot = Path(args.run_dir or ".") / "ticks.png" if args.plot else None
    if plot is not None:
        task.plot_eval(result, plot)
    if args.json:
        print(_json_line({"dataset": dataset_name, "split": data.split, "task": task.record(), **result.to_dict(),
                          **({"plot": str(plot)} if plot is not None else {})}))
        return 0
    print(printable(f"{dataset_name} {data.split}: n={result.n}"))
    for line in result.lines():
        print(line)
    if plot is not None:
        print(printable(f"Wrote {plot}"))
    return 0


def _with_task_options(task, pairs: list[str]):
    """The run's task with `--task-option` pairs changed (ctm eval on another spread, size, ...)."""
    if not pairs:
        return task
    record = {k: v for k, v in task.record().items() if k not in ("name", "import")}
    try:
        return type(task)(**{**record, **_task_options(type(task), pairs)})
    except (TypeError, ValueError) as e:
        raise CLIError(f"--task-option: {e}") from None


def _eval_data(args: argparse.Namespace, payload: dict, task, model_config):
    """(data, dataset name) `ctm eval` reads: the task's data of the run's recipe (--dataset and --data-dir as
    the task reads them), or for a bundled model without its files the test slice shipped with it."""
    from ..runs.checkpoint import run_dataset_name

    if args.slice and not _bundled(args):
        raise CLIError("--slice needs --pretrained NAME of a bundled model (and the test split)")
    dataset_name = args.dataset or run_dataset_name(payload) or task.name
    if _bundled(args) and args.dataset is None and args.split == "test":
        from ..pretrained import pretrained_test_slice, shipped_data_found

        if args.slice or (args.data_dir is None and not shipped_data_found(args.pretrained)):
            data = pretrained_test_slice(args.pretrained)
            if not args.slice:
                print(printable(f"note: no {dataset_name} files found here; evaluating on the {len(data)} test "
                                f"{task.sample_noun} shipped with --pretrained {args.pretrained}"), file=sys.stderr)
            return data, dataset_name
    data_dir = (args.data_dir if args.pretrained is not None
                else _data_dir_for(args.run_dir, payload, args.data_dir, args.dataset))
    data = task.eval_data(args.split, _recorded_train_config(args, payload), data_dir, recorded=payload.get("dataset"),
                          dataset=args.dataset, progress=not args.json)
    if not args.json:
        for note in getattr(data, "notes", ()):
            print(printable(f"note: {note}"), file=sys.stderr)
    task.check_eval_data(model_config, data, dataset_name)
    return data, dataset_name


def _json_line(payload: dict) -> str:
    """Valid JSON always: a NaN or infinite number (a model with NaN weights) becomes null."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(payload), allow_nan=False)


def _eval_halting(args: argparse.Namespace, model, data, dataset_name: str, task) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..tasks import Task
    from ..training.evaluate import DEFAULT_HALT_SWEEP, timed_evaluate

    taus = [args.halt_certainty] if args.halt_certainty is not None else list(args.halt_sweep or DEFAULT_HALT_SWEEP)
    if args.halt_certainty is not None:
        _check_halt_certainty(args.halt_certainty)
    for tau in taus:
        if not math.isfinite(tau) or tau < 0:
            raise CLIError(f"halting thresholds are certainties in [0, 1] (above 1 never halts), got {tau}")
    # Warm up both paths on one batch so neither timing pays first-call costs.
    model.eval()
    with torch.inference_mode():
        x, _ = data.batch(torch.arange(min(args.batch_size, len(data))))
        model(x)
        own_halting = type(task).halting is not Task.halting  # a task's own rule (sorting) times a full pass
        if not own_halting:
            model.think(x, taus[0], args.max_ticks)
    full, wall_full = timed_evaluate(model, data, args.batch_size, task=task)
    results = []
    bar = tqdm(taus, desc="halting thresholds", disable=args.json or len(taus) == 1, leave=False)
    for tau in bar:
        results.append(task.halting(model, data, tau, args.batch_size, max_ticks=args.max_ticks))
    if args.halt_sweep is not None:
        from ..pictures.figures import save_halting_plot

        plot_path = Path(args.run_dir or ".") / "halting.png"
        replaced = " (replacing the earlier one)" if plot_path.exists() else ""
        save_halting_plot(results, full, None if own_halting else wall_full, plot_path)  # no wall panel: not saved
    if args.json:
        if args.halt_certainty is not None:
            r = results[0]
            payload = {"dataset": dataset_name, "split": args.split, **full.to_dict(),
                       **{f"{k}_full": v for k, v in full.scalars().items() if k != "loss"}, **r.to_dict(),
                       "wall_s_full": wall_full}
        else:
            payload = {"dataset": dataset_name, "split": args.split, "full": {**full.to_dict(), "wall_s": wall_full},
                       "sweep": [r.to_dict() for r in results]}
        print(_json_line(payload))
        return 0
    head = results[0].header(full, wall_full)
    print(printable(f"{dataset_name} {args.split}: ") + head[0])
    for line in head[1:]:
        print(line)
    for r in results:
        print(r.row(full, wall_full))
    if args.halt_certainty is not None:
        hist = results[0].ticks_histogram
        print("  ticks used: " + ", ".join(f"{t + 1}: {h}" for t, h in enumerate(hist) if h))
    else:
        print(f"Wrote {printable(plot_path)}{replaced}")
    return 0


def _check_halt_certainty(tau: float) -> None:
    if not (math.isfinite(tau) and 0 <= tau <= 1):
        raise CLIError(f"--halt-certainty {tau:g}: halting thresholds are certainties in [0, 1], a fraction, "
                       f"e.g. 0.8")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inference import load_run
    from ..runs.checkpoint import CONFIG_FILE, read_config
    from ..tasks import task_from_record
    from ..training.loop import resolve_device

    if args.halt_certainty is not None:
        _check_halt_certainty(args.halt_certainty)
    inputs = list(args.inputs)
    if args.pretrained is not None:  # the positional RUN_DIR is then the first input
        from ..pretrained import BUNDLE_DIR, pretrained_config

        pretrained_config(args.pretrained)  # a bundled model's name (one line naming the bundled ones if not)
        inputs.insert(0, args.run_dir)
        args.run_dir = str(BUNDLE_DIR / args.pretrained)
    texts = [*inputs, *args.sequence, *(" ".join(numbers) for numbers in args.numbers),
             *(_read_lines(args.sequence_file) if args.sequence_file else [])]
    flags = {name: getattr(args, name) for name in ("digits", "question") if getattr(args, name) is not None}
    if not texts and not flags:
        raise CLIError("nothing to predict: give image files (an image run), sequences (a parity run: as "
                       "arguments, --sequence SEQ or --sequence-file FILE), numbers (a sort run: --numbers X X "
                       "...), maze pictures (a maze run) or digit images and a question (a qamnist run: --digits "
                       "IMG ... --question \"0 + 1\")")
    run_path = Path(args.run_dir)
    if run_path.is_file() and any(Path(t, CONFIG_FILE).is_file() for t in texts):  # `ctm predict x.png RUN`
        raise CLIError(f"{args.run_dir} is a file and a run directory comes after it: the run directory comes first, "
                       f"ctm predict RUN_DIR INPUT ...")
    task = task_from_record(read_config(args.run_dir))
    if args.invert and not task.invertible:
        which = f"the bundled model {args.pretrained}" if args.pretrained is not None else args.run_dir
        raise CLIError(f"--invert swaps light and dark of an image classifier's pictures; {which} is a {task.name} "
                       f"run, whose inputs are not such pictures: drop --invert")
    task.check_predict_flags(flags)  # --digits for a sort run: refused before the model is loaded
    if args.out is not None:
        _check_path_text("--out", args.out)
    _set_threads(args.threads)
    run = load_run(args.run_dir, resolve_device(args.device))
    predictions = task.predict(run, texts, halt_certainty=args.halt_certainty, **flags,
                               **({"invert": True} if args.invert else {}))
    outs = _prediction_outs(args.out, predictions, task.name, texts) if args.out is not None else {}
    for row, p in enumerate(predictions):
        where = outs.get(row)
        if where is not None:
            _write_picture(p.picture, where)
        if args.json:
            print(_json_line({**p.record, "out": str(where)} if where is not None else p.record))
        else:
            print(printable(p.line))
            if where is not None:
                print(printable(f"  wrote {where}"))
    _print_warnings([p.warning for p in predictions if getattr(p, "warning", None)])
    return 0


# ctm predict prints this many of its inputs' warnings in full, then how many more there are.
MAX_WARNINGS = 3


def _print_warnings(warnings: list[str]) -> None:
    """The inputs' warnings (a picture that looks inverted) on stderr, after the answers: all of them, or of more
    than MAX_WARNINGS + 1, the first MAX_WARNINGS and one line for the rest."""
    sys.stdout.flush()
    shown = warnings if len(warnings) <= MAX_WARNINGS + 1 else warnings[:MAX_WARNINGS]
    for warning in shown:
        print(printable(warning), file=sys.stderr)
    if len(shown) < len(warnings):
        print(f"... and {len(warnings) - len(shown)} more inputs with the same warning", file=sys.stderr)


def _prediction_outs(out: str, predictions: list, task_name: str, inputs: list[str]) -> dict[int, Path]:
    """Where `ctm predict --out OUT` writes each answer's picture: OUT itself for one input when it ends in .png,
    else OUT/<input's stem>-route.png (a folder, made when missing); never over an input."""
    if any(p.picture is None for p in predictions):
        raise CLIError(f"--out writes the answers drawn as pictures; the {task_name} task draws none")
    path = Path(out)
    if path.suffix.lower() == ".png" and not path.is_dir():
        if len(predictions) != 1:
            raise CLIError(f"--out {path} is one file, for one input; give a folder for {len(predictions)}")
        if not path.parent.is_dir():
            raise CLIError(f"--out {path}: folder {path.parent} does not exist")
        places = {0: path}
    else:
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out {path} is a file; give a folder (or a .png file name for one input)")
        path.mkdir(parents=True, exist_ok=True)
        places, taken = {}, set()
        for row, p in enumerate(predictions):
            stem = Path(p.name).stem or "answer"
            name, k = f"{stem}-route.png", 2
            while name in taken:
                name, k = f"{stem}-route-{k}.png", k + 1
            taken.add(name)
            places[row] = path / name
    given = {Path(i).resolve() for i in inputs if Path(i).exists()}
    for where in places.values():
        if where.resolve() in given:
            raise CLIError(f"--out {where} is one of the inputs; give another name")
    return places


def _write_picture(picture, path: Path) -> None:
    """An RGB uint8 picture (H, W, 3) as a PNG file, atomically."""
    import numpy as np

    from .._io import atomic_write
    from ..data.folders import _require_pillow

    Image = _require_pillow()
    image = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8), "RGB")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _read_lines(path: str) -> list[str]:
    """The sequences of a --sequence-file (- : standard input): its lines, without blank and # lines."""
    if path == "-":
        text = sys.stdin.read()
    else:
        if os.path.isdir(path):
            raise CLIError(f"--sequence-file {path} is a folder; give a text file of sequences, one per line")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_SEQUENCE_FILE + 1)
        except FileNotFoundError:
            raise CLIError(f"--sequence-file {path}: no such file") from None
        except UnicodeDecodeError:
            raise CLIError(f"--sequence-file {path} is not UTF-8 text; write one sequence of + and - per line") \
                from None
        if len(text) > MAX_SEQUENCE_FILE:
            raise CLIError(f"--sequence-file {path} holds more than {MAX_SEQUENCE_FILE:,} characters; split it")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


# The most characters ctm predict reads from one --sequence-file (the sequences go through the model at once).
MAX_SEQUENCE_FILE = 16 * 2**20


def cmd_convert_official(args: argparse.Namespace) -> int:
    from ..interop.official import detect_official_model, from_official_state_dict, load_official_checkpoint
    from ..runs.checkpoint import save_weights, write_config

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"--out {out} exists and is not an empty folder; give a new run directory")
    from ..interop.hub import HF_PREFIX

    if args.state_dict.startswith(HF_PREFIX) or Path(args.state_dict).is_dir():
        return _convert_hub(args, out)
    if args.pixel_range is not None:
        raise CLIError(f"--pixel-range applies to official maze models in the Hugging Face layout (config.json + "
                       f"model.safetensors); {args.state_dict} is a .pt state dict, converted as is")
    if args.args is not None:
        from .._io import read_json

        try:
            arguments = read_json(args.args, error=CLIError)  # bounded: --args /dev/zero is refused, not read whole
        except CLIError as e:
            raise CLIError(f"--args {e}") from None
        except OSError as e:  # missing, a folder, unreadable
            raise CLIError(f"--args {args.args}: {e.strerror or e}") from None
        if not isinstance(arguments, dict):
            raise CLIError(f"--args {args.args} must hold a JSON object of the official constructor's arguments")
    needs_args = (f"{args.state_dict}: a .pt state dict needs --args ARGS.json (the official constructor's "
                  f"arguments), unless it is an official checkpoint holding its 'args'; a folder in the Hugging Face "
                  f"layout (config.json + model.safetensors) needs none")
    if args.args is None and not Path(args.state_dict).is_file():
        raise CLIError(needs_args)
    state_dict, recorded = load_official_checkpoint(args.state_dict)
    source = "checkpoint" if args.args is None else str(Path(args.args).resolve())
    if args.args is None:
        if recorded is None:
            raise CLIError(needs_args)
        arguments = recorded
    detected = detect_official_model(state_dict, arguments)
    kind = args.model or detected
    if source == "checkpoint" and detected != "qamnist":  # (QAMNIST weights under another --model: refused below)
        raise CLIError(f"{args.state_dict} holds the official training script's 'args', which ctm reads for the "
                       f"QAMNIST model only; give the {kind} model's constructor arguments with --args ARGS.json")
    if kind in ("sort", "qamnist") and args.dataset:
        raise CLIError(f"--dataset does not apply to --model {kind}: the {kind} task generates its "
                       f"{'numbers' if kind == 'sort' else 'questions'}")
    model = from_official_state_dict(state_dict, kind, **arguments)
    extra: dict = {"official": {"arguments": _jsonable(arguments), "state_dict": str(Path(args.state_dict).resolve())}}
    if kind != "ctm":
        extra["official"]["model"] = kind
    if source == "checkpoint":
        extra["official"]["arguments_from"] = "checkpoint"
    if kind == "sort":
        extra.update(_official_sort_records(model.config))
    elif kind == "qamnist":
        from ..interop.official import qamnist_records

        try:
            extra.update(qamnist_records(model.config, arguments))
        except ValueError as e:
            raise CLIError(f"{args.state_dict}: {e}") from None
    elif args.dataset:
        extra["dataset"] = {"name": args.dataset}
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, model.config, extra)
    save_weights(out, model, step=0)
    c = model.config
    if kind == "qamnist":
        from ..tasks.qamnist.task import QAMNISTOptions

        o = QAMNISTOptions(**{k: v for k, v in extra["task"].items() if k != "name"})
        (d0, d1), (o0, o1) = o.digit_range, o.operation_range
        what = (f"qamnist task: {d0} to {d1} digits, {o0} to {o1} operations, each input shown {o.repeats} tick(s), "
                f"{o.answer_ticks} answer tick(s)")
    else:
        what = f"sorts {c.d_input} numbers" if kind == "sort" else f"backbone {c.backbone}"
    print(printable(f"Wrote {out}: {model.num_parameters():,} parameters, {c.iterations} ticks "
                    f"({what}, {c.neuron_selection} synchronisation)"))
    if kind == "qamnist":
        print("note: the official script trained it on MNIST resized to 32x32 and normalised ((x - 0.1307) / 0.3081); "
              "ctm's qamnist task feeds the 28x28 digits in [0, 1]")
    return 0


def _jsonable(value):
    """`value` (arguments, e.g. a checkpoint's argparse values) with what JSON cannot hold written as text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return repr(value)


def _convert_hub(args: argparse.Namespace, out: Path) -> int:
    """ctm convert-official of a folder in the Hugging Face layout or hf:OWNER/NAME (`ctm.interop.hub`)."""
    from ..interop.hub import convert_hub, is_hub_folder, is_run_config
    from ..runs.checkpoint import save_weights, write_config

    if args.model not in (None, "ctm"):
        raise CLIError(f"--model {args.model}: the Hugging Face layout holds an official ContinuousThoughtMachine "
                       f"(models/ctm.py); convert other official models from their .pt state dict with --args")
    if args.args is not None:
        raise CLIError(f"--args does not apply to {args.state_dict}: its config.json holds the arguments")
    folder = Path(args.state_dict)
    if folder.is_dir() and not is_hub_folder(folder):
        from .._io import read_json

        config = folder / "config.json"
        if config.is_file() and is_run_config(read_json(config, error=CLIError)):
            raise CLIError(f"{folder} is a ctm run directory already (its config.json has a 'model' section); ctm "
                           f"eval, viz and predict read it as it is")
        if not (folder / "model.safetensors").is_file() or not config.is_file():
            raise CLIError(f"{folder} is a folder but not an official model in the Hugging Face layout "
                           f"(config.json of the constructor's arguments + model.safetensors)")
    model, extra = convert_hub(args.state_dict, args.pixel_range)
    if args.dataset:
        if "task" in extra:
            raise CLIError("--dataset does not apply to a maze model: the maze task generates its mazes (evaluate "
                           "official pictures with ctm eval RUN --dataset folder:PATH)")
        extra["dataset"] = {"name": args.dataset}
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, model.config, extra)
    save_weights(out, model, step=0)
    c = model.config
    task = extra.get("task")
    folded = ", pixel range 0..1 folded to read -1..1" if extra["official"].get("folded") else ""
    what = (f"maze task: routes of {c.out_positions} steps, mazes of {task['cells']}x{task['cells']} cells{folded}"
            if task else f"backbone {c.backbone}")
    print(printable(f"Wrote {out}: {model.num_parameters():,} parameters, {c.iterations} ticks ({what}, "
                    f"{c.neuron_selection} synchronisation)"))
    return 0


def _official_sort_records(config) -> dict:
    """config.json's "task" and "dataset" of a converted official sort model: the sort task of N = d_input
    numbers from N(0, 1), the official data, which the model must emit N + 1 classes for."""
    from ..tasks.sort import SortTask
    from ..training.loop import TrainConfig

    n = config.d_input
    if config.out_dims != n + 1 or config.out_positions != 1:
        given = f"out_dims={config.out_dims}" + (f" in {config.out_positions} positions" if config.out_positions > 1
                                                  else "")
        raise CLIError(f"--model sort: the official sort model of N={n} numbers emits out_dims={n + 1} classes (the "
                       f"N indices and the blank) at one position; the arguments give {given}")
    task = SortTask(n=n, mean=0.0, std=1.0)
    try:
        task.check_ticks(config)
    except ValueError as e:
        raise CLIError(f"--model sort: {e}") from None
    test = task.load("test", TrainConfig(dataset="sort"))  # nothing drawn until read
    return {"task": task.record(), "dataset": task.dataset_record(test, None)}


#: the commands besides train that run a model (and so may first build the C++ tick loops)
MODEL_COMMANDS = ("eval", "viz", "predict", "view")
COMMANDS = {"train": cmd_train, "eval": cmd_eval, "viz": cmd_viz, "predict": cmd_predict, "view": cmd_view,
            "pretrained": cmd_pretrained, "convert-official": cmd_convert_official}


def _joined_pixel_range(argv: list[str]) -> list[str]:
    """argv with `--pixel-range -1..1` written `--pixel-range=-1..1`: argparse takes a value starting with "-"
    that is not a plain number for an option."""
    out: list[str] = []
    for a in argv:
        if out and out[-1] == "--pixel-range" and a == "-1..1":
            out[-1] = f"--pixel-range={a}"
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _joined_pixel_range(list(sys.argv[1:] if argv is None else argv))
    retain_freed_memory()  # steps reuse their pages instead of faulting them in again (ctm._malloc)
    if argv[:1] == ["bench"]:  # the benchmark parses its own flags (the same as benchmarks/speed.py)
        from .bench import main as bench_main

        return bench_main(argv[1:], prog="ctm bench")
    previous = raise_on_stop_signals()  # until training sets its own handlers: stop at once, with one line
    command = "ctm"
    try:
        parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the subcommand's parser, so the hint names its help
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            (sub.choices[args.command] if args.command else parser).error(
                f"unrecognized arguments: {' '.join(unknown)}")
        if args.command is None:
            parser.print_help()
            return 0
        command = f"ctm {args.command}"
        return _run(args)
    except KeyboardInterrupt as e:  # also while torch is still being imported
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"{command}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    finally:
        restore(previous)


def _in_flags(command: str, e: Exception) -> str:
    """The message of a library error; for `ctm train`, whose flags set the configs, with the config fields
    it names written as those flags (TrainConfig.batch_size -> --batch-size)."""
    return with_flag_names(str(e)) if command == "train" else str(e)


def _run(args: argparse.Namespace) -> int:
    """Run one command; the errors users cause become one line on stderr and an exit code."""
    from ..data.idx import DataError
    from ..runs.checkpoint import RunDirError
    from ..training.loop import NonFiniteLossError

    try:
        if args.command != "train" and getattr(args, "task", None) is not None:
            from ..tasks import resolve_task

            resolve_task(args.task)  # registered: the run's record of it is then found
        if args.command in MODEL_COMMANDS:  # the first command after install builds the C++ loops: say so
            _build_native_announced()
        return COMMANDS[args.command](args)
    except (CLIError, RunDirError, DataError, ValueError) as e:
        if os.environ.get("CTM_DEBUG"):
            raise
        print(f"ctm {args.command}: error: {printable_lines(_in_flags(args.command, e))}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency: ctm.viz says which extra brings it
        if os.environ.get("CTM_DEBUG") or "pip install" not in str(e):
            raise
        print(f"ctm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"ctm {args.command}: {printable_lines(_in_flags(args.command, e))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of our output went away (`ctm eval RUN | head`): stop quietly
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (nothing more reaches the closed pipe at exit)
        except OSError:
            pass
        return 141  # 128 + SIGPIPE, as a shell reports a process its pipe stopped
    except OSError as e:  # a path that cannot be written or read: unwritable, read-only, a file for a folder
        if os.environ.get("CTM_DEBUG"):
            raise
        where = f" ({printable(e.filename)})" if getattr(e, "filename", None) else ""
        print(f"ctm {args.command}: error: {e.strerror or e}{where}; check the path and its permissions",
              file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        from ..runs.checkpoint import is_out_of_memory

        if os.environ.get("CTM_DEBUG") or not is_out_of_memory(e):
            raise
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        # Models and data too large to load say so themselves (ValueError); this is the computation's memory.
        hint = "use a smaller --batch-size, fewer --ticks or a smaller model" if args.command != "viz" else \
            "the model is too large for this machine"
        print(f"ctm {args.command}: error: out of memory ({detail}); {hint}", file=sys.stderr)
        return 2
