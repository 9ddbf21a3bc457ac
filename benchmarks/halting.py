"""Benchmark: adaptive computation (certainty-based halting) on a trained run (not a test).

    python benchmarks/halting.py RUN_DIR                 # sweep the default thresholds
    python benchmarks/halting.py RUN_DIR --taus 0.8 0.9  # chosen thresholds
    python benchmarks/halting.py RUN_DIR --json

For each threshold: accuracy of `model.think` (each sample answers at its first tick with certainty >= tau),
mean ticks used, and wall time against the full-T evaluation (every tick, most-certain answer). Wall times
are medians over --repeats passes over the test set, full and halted passes alternating in one process, so
both see the same machine. The target of issue #6: accuracy within 0.1 pp of the full run with mean ticks
<= T/4 and wall time <= 40% of the full run's. Writes RUN_DIR/halting.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from ctm.data.images import load_dataset
from ctm.pictures.figures import save_halting_plot
from ctm.runs.checkpoint import load_model
from ctm.training.evaluate import DEFAULT_HALT_SWEEP, evaluate_halting, timed_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--taus", type=float, nargs="+", default=list(DEFAULT_HALT_SWEEP))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="folder holding the IDX files (default: the usual lookup)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, payload = load_model(args.run_dir)
    model.eval()
    dataset = payload.get("dataset", {}).get("name") or payload.get("train", {}).get("dataset", "mnist")
    data = load_dataset(dataset, "test", data_dir=args.data_dir)
    T = model.config.iterations

    full, _ = timed_evaluate(model, data, args.batch_size)  # warm-up, and the full-T accuracy
    full_walls, rows = [], {tau: [] for tau in args.taus}
    for _ in range(args.repeats):
        full_walls.append(timed_evaluate(model, data, args.batch_size)[1])
        for tau in args.taus:
            rows[tau].append(evaluate_halting(model, data, tau, args.batch_size))
    wall_full = statistics.median(full_walls)
    results = []
    for runs in rows.values():
        r = runs[0]
        r.wall_s = statistics.median(x.wall_s for x in runs)
        results.append(r)
    save_halting_plot(results, full, wall_full, args.run_dir / "halting.png")

    def meets(r) -> bool:
        return (full.accuracy - r.accuracy <= 0.001 + 1e-12 and r.mean_ticks <= T / 4
                and r.wall_s <= 0.4 * wall_full)

    if args.json:
        print(json.dumps({"run_dir": str(args.run_dir), "dataset": dataset, "ticks": T, "accuracy_full": full.accuracy,
                          "wall_s_full": wall_full, "sweep": [{**r.to_dict(), "meets_target": meets(r)}
                                                               for r in results]}))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.run_dir}, {dataset} test, "
          f"n={full.n}, batch {args.batch_size}, median of {args.repeats}")
    print(f"full run: {T} ticks, accuracy (most certain) {full.accuracy * 100:.2f}%, {wall_full:.2f} s")
    print(f"{'tau':>7} {'accuracy':>9} {'vs full':>8} {'mean ticks':>10} {'wall s':>7} {'wall/full':>9}  target")
    for r in results:
        print(f"{r.halt_certainty:7.4g} {r.accuracy * 100:8.2f}% {100 * (r.accuracy - full.accuracy):+7.2f}pp "
              f"{r.mean_ticks:10.2f} {r.wall_s:7.2f} {r.wall_s / wall_full:9.2f}  {'yes' if meets(r) else 'no'}")
    print(f"Wrote {args.run_dir / 'halting.png'}")


if __name__ == "__main__":
    main()
