"""Copy a trained run into the package as a bundled model (src/ctm/pretrained/NAME).

    python tools/bundle_pretrained.py RUN_DIR NAME --command "ctm train ..." [--slice 500]

Measures the model's accuracy on the full test set and on the shipped slice and records both, with the
command that trained it, in record.json (the test suite re-measures the slice accuracy against it).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import ctm
from ctm.pretrained import BUNDLE_DIR, RECORD_FILE, load_pretrained, pretrained_test_slice, save_bundle, write_json
from ctm.runs.checkpoint import load_model, read_metrics
from ctm.tasks import task_from_record
from ctm.training.evaluate import evaluate
from ctm.training.loop import TrainConfig

#: figures recorded beside accuracy where the task's evaluation has them
EXTRA = ("accuracy_last_tick", "sequence_accuracy", "solve_rate", "route_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--command", required=True, help="the command that trained the run, as typed")
    parser.add_argument("--slice", type=int, default=500, help="test samples shipped with the weights")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, payload = load_model(args.run_dir)
    task = task_from_record(payload)
    test = task.eval_data("test", TrainConfig.from_dict(payload["train"]), recorded=payload.get("dataset"))
    full = evaluate(model, test, task=task)
    metrics = read_metrics(args.run_dir)
    record = {
        "name": args.name,
        "command": args.command,
        "dataset": payload["dataset"]["name"],
        "steps": payload["train"]["steps"],
        "parameters": model.num_parameters(),
        "train_wall_s": metrics[-1].get("elapsed_s") if metrics else None,
        "machine": f"{platform.machine()}, torch {torch.__version__}, ctm {ctm.__version__}",
        "test_accuracy": full.accuracy,
        "test_n": full.n,
        "slice_n": args.slice,
        # the task's other headline figures (classification: the last tick's; parity: whole sequences; a maze:
        # solve rate and route accuracy)
        **{f"test_{key}": getattr(full, key) for key in EXTRA if getattr(full, key, None) is not None},
    }
    # a task whose test data are files ships a slice of them; one that generates its data ships none
    shipped = test if hasattr(test, "images") else None
    out = save_bundle(args.run_dir, BUNDLE_DIR / args.name, shipped, args.slice, record)
    bundled = evaluate(load_pretrained(args.name), pretrained_test_slice(args.name), task=task)
    record |= {"slice_accuracy": bundled.accuracy,
               **{f"slice_{key}": getattr(bundled, key) for key in EXTRA if getattr(bundled, key, None) is not None}}
    write_json(out / RECORD_FILE, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
