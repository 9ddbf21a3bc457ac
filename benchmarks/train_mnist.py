"""Benchmark: wall time and final MNIST test accuracy of `ctm train` (not a test; minutes long).

    python benchmarks/train_mnist.py                    # the default recipe
    python benchmarks/train_mnist.py --preset seed      # the tutorial's recipe through ctm
    python benchmarks/train_mnist.py --json             # one JSON object per run

Each run is a fresh `ctm train` process writing a run directory under --out-root; wall time covers the
whole process (start-up, data loading, training, every evaluation, checkpoints). Figures are read back
from the run's metrics.jsonl.
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


def run(preset: str, out_root: Path, extra: list[str]) -> dict:
    run_dir = out_root / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "ctm", "train", "--preset", preset, "--dataset", "mnist", "--out", str(run_dir),
           "--no-progress", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = rows[-1]
    return {"preset": preset, "command": " ".join(cmd[1:]), "wall_s": round(wall, 1),
            "train_s": final["elapsed_s"], "steps": final["step"], "epochs": final["epoch"],
            "test_accuracy": final["test_accuracy"], "test_accuracy_last_tick": final["test_accuracy_last_tick"],
            "test_loss": final["test_loss"], "best_test_accuracy": max(r["test_accuracy"] for r in rows),
            "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=["default", "seed"],
                        help="recipe(s) to run, in order (default: default)")
    parser.add_argument("--out-root", type=Path, default=Path(tempfile.gettempdir()) / "ctm-bench-runs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("extra", nargs="*", help="more ctm train flags, after --")
    args = parser.parse_args()
    results = [run(p, args.out_root, args.extra) for p in (args.preset or ["default"])]
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':8} {'steps':>6} {'epochs':>6} {'wall s':>7} {'test acc':>9} {'last tick':>9} {'loss':>7}")
    for r in results:
        print(f"{r['preset']:8} {r['steps']:6d} {r['epochs']:6.2f} {r['wall_s']:7.1f} {r['test_accuracy']:9.4f} "
              f"{r['test_accuracy_last_tick']:9.4f} {r['test_loss']:7.4f}")
    for r in results:
        print(f"run: {r['command']}")


if __name__ == "__main__":
    main()
