"""The LSTM baseline on mazes (`ctm train --task maze --model lstm`: the CTM's backbone and attention, an LSTM
core) and benchmarks/maze.py's commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import eval_json, run_cli

import ctm

TINY_MAZE = ["--task", "maze", "--task-option", "cells=3", "--ticks", "3", "--d-model", "32", "--d-input", "16",
             "--heads", "2", "--memory-length", "3", "--n-synch-out", "8", "--n-synch-action", "8",
             "--memory-hidden-dims", "2", "--batch-size", "8", "--threads", "1", "--no-progress"]


def test_a_tiny_lstm_maze_run_trains_and_evaluates(tmp_path, capsys):
    run = tmp_path / "lstm"
    assert run_cli("train", *TINY_MAZE, "--model", "lstm", "--steps", "4", "--eval-every", "4", "--out", run) == 0
    out = capsys.readouterr().out
    assert "LSTM baseline" in out and "Test solve rate" in out
    payload = json.loads((run / "config.json").read_text())
    assert payload["model_kind"] == "lstm" and payload["task"]["name"] == "maze"
    assert payload["model"]["backbone"] == "resnet18-1" and payload["model"]["input_reader"] == "attention"
    model = ctm.load_pretrained(run)
    assert type(model).__name__ == "LSTMBaseline" and model.config.out_positions == 16  # 2 (3^2 - 1) route steps
    result = eval_json(run, "--task-option", "reapply=3", capsys=capsys)  # re-application runs the LSTM again
    assert result["n"] == 1000 and result["reapply"] == 3 and len(result["per_tick_accuracy"]) == 3
    assert 0 <= result["solve_rate"] <= result["reapplied_solve_rate"] <= 1
    larger = eval_json(run, "--task-option", "cells=4", "--task-option", "reapply=2", capsys=capsys)
    assert larger["n"] == 1000 and 1 <= larger["mean_applications"] <= 2


def test_the_benchmark_script_runs_the_maze_task_for_both_models():
    """benchmarks/maze.py --dry-run: the commands it would run (the benchmark itself takes an hour)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "maze.py"
    proc = subprocess.run([sys.executable, str(script), "--dry-run", "--steps", "600", "--cells", "5", "--larger",
                           "9", "15"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert " bench --quick " in lines[0]
    trains = [line for line in lines if " -m ctm train " in line]
    assert len(trains) == 2 and all("--task maze" in t and "--task-option cells=5" in t and "--steps 600" in t
                                    and "--eval-every 150" in t and "--threads 1" in t for t in trains)
    assert "--model ctm" in trains[0] and "--model lstm" in trains[1]
    assert "--preset" not in trains[0] and "--ticks" not in trains[0]  # the maze preset, as `ctm train --task maze`
    evals = [line for line in lines if " -m ctm eval " in line]
    larger = [line for line in evals if "cells=" in line]
    assert len(evals) == 4 and all("/ctm " in line and "--task-option reapply=20" in line for line in larger)
    assert ["cells=9" in larger[0], "cells=15" in larger[1]] == [True, True]
    bad = subprocess.run([sys.executable, str(script), "--dry-run", "--budget-s", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--budget-s must be positive" in bad.stderr
