"""Benchmark: wall time and final MNIST test accuracy of `ctm train` (not a test; minutes long).

    python benchmarks/train_mnist.py                                  # the default recipe
    python benchmarks/train_mnist.py --preset tutorial --preset seed  # the tutorial's architecture
    python benchmarks/train_mnist.py --dataset fashion-mnist          # the default on Fashion-MNIST
    python benchmarks/train_mnist.py --json                           # one JSON object per run

Each run is a fresh `ctm train` process writing a run directory under --out-root; wall time covers the
whole process (start-up, data loading, training, every evaluation, checkpoints). Figures are read back
from the run's metrics (its current checkpoint's metrics.jsonl). Machines differ, so first the seed
tutorial's own training step (its model, batch 64, through `ctm bench`) is timed on this machine and printed
beside the runs; a wall time compares across machines as a multiple of it. Run it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 600  # the wall-clock budget the default recipe is chosen for (ten minutes)


def seed_step_ms(threads: int | None) -> float | None:
    """Median ms of one training step of the seed tutorial's model (batch 64) on this machine, via `ctm bench`
    (None when the seed reference, $CTM_SEED_REFERENCE, is not found)."""
    cmd = [sys.executable, "-m", "ctm", "bench", "--batch-sizes", "64", "--modes", "train", "--memory", "none",
           "--no-check", "--repeats", "5", "--json"] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    rows = [r for r in json.loads(proc.stdout)["results"] if r["impl"] == "seed" and "ms_per_call" in r]
    return rows[0]["ms_per_call"] if rows else None


def run(preset: str, dataset: str, out_root: Path, extra: list[str]) -> dict:
    run_dir = out_root / f"{preset}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "ctm", "train", "--preset", preset, "--dataset", dataset, "--out", str(run_dir),
           "--no-progress", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    from ctm.runs.checkpoint import read_metrics

    rows = read_metrics(run_dir)  # the current checkpoint's metrics.jsonl
    final = rows[-1]
    return {"preset": preset, "dataset": dataset, "command": " ".join(cmd[1:]), "wall_s": round(wall, 1),
            "train_s": final["elapsed_s"], "steps": final["step"], "epochs": final["epoch"],
            "test_accuracy": final["test_accuracy"], "test_accuracy_last_tick": final["test_accuracy_last_tick"],
            "test_loss": final["test_loss"], "best_test_accuracy": max(r["test_accuracy"] for r in rows),
            "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="recipe(s) to run, in order (default: default)")
    parser.add_argument("--dataset", default="mnist", help="mnist (default) or fashion-mnist")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out-root", type=Path, default=Path(tempfile.gettempdir()) / "ctm-bench-runs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("extra", nargs="*", help="more ctm train flags, after --")
    args = parser.parse_args()
    extra = args.extra + (["--threads", str(args.threads)] if args.threads else [])
    seed_ms = seed_step_ms(args.threads)
    results = [run(p, args.dataset, args.out_root, extra) for p in (args.preset or ["default"])]
    if args.json:
        for r in results:
            print(json.dumps({**r, "seed_step_ms": seed_ms}))
        return
    import torch

    threads = args.threads or torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {threads} threads")
    print("seed tutorial's training step (batch 64) on this machine: "
          + (f"{seed_ms:.1f} ms" if seed_ms else "not measured (set CTM_SEED_REFERENCE to seed_ctm.py)"))
    print(f"{'preset':9} {'dataset':13} {'steps':>6} {'epochs':>6} {'wall s':>7} {'in 10 min':>9} "
          f"{'test acc':>9} {'last tick':>9} {'loss':>7}")
    for r in results:
        within = "yes" if r["wall_s"] <= BUDGET_S else "no"
        print(f"{r['preset']:9} {r['dataset']:13} {r['steps']:6d} {r['epochs']:6.2f} {r['wall_s']:7.1f} {within:>9} "
              f"{r['test_accuracy']:9.4f} {r['test_accuracy_last_tick']:9.4f} {r['test_loss']:7.4f}")
        if seed_ms:
            print(f"{'':9} wall time = {r['wall_s'] * 1000 / seed_ms:,.0f} seed steps")
    for r in results:
        print(f"run: {r['command']}")


if __name__ == "__main__":
    main()
