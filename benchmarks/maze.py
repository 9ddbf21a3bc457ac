"""Benchmark: the CTM against the LSTM baseline on mazes, the same wall-clock budget each (not a test; about 35
minutes with the defaults).

    python benchmarks/maze.py                        # 7x7-cell mazes, the maze recipe, 1800 s each, side by side
    python benchmarks/maze.py --budget-s 300 --models ctm
    python benchmarks/maze.py --larger 11 15         # the CTM also on 11x11 and 15x15-cell mazes (re-applied)
    python benchmarks/maze.py --dry-run              # print the commands, run nothing

The CTM is the maze preset (`ctm train --task maze`: 30 ticks, resnet18-1 backbone, no positional embedding); the
LSTM (`--model lstm`) reads the picture through the same backbone and attention for the same ticks, its width
matched to the CTM's parameter count. First the seed tutorial's training step is timed (`ctm bench --quick`;
none where the seed reference is not found), so the wall times compare across machines. Then each model is
calibrated (two short runs of K and 2K steps; the difference of their wall times removes start-up and evaluation,
benchmarks/parity.py) and trained for the steps that fill the budget, so its cosine schedule completes:

    ctm train --task maze --model {ctm,lstm} --task-option cells=C --steps S --out OUT/<model> ...
    ctm eval OUT/<model> --json                            # solve rate, route accuracy (re-applied up to 20 times)
    ctm eval OUT/ctm --json --task-option cells=15         # larger mazes than trained on, by re-application

It prints a table and writes OUT/results.json and OUT/results.md (the test curves are each run's curves.png).
Flags after `--` go to every `ctm train` unchanged (e.g. `-- --batch-size 32`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity import _run, calibrated_steps, last_json, parameters_from  # noqa: E402  (the same calibration)

CTM = [sys.executable, "-m", "ctm"]
MODELS = ("ctm", "lstm")
KEYS = ("solve_rate", "reapplied_solve_rate", "route_accuracy", "accuracy", "mean_correct_prefix", "wall_rate",
        "mean_applications")


def train_command(model: str, steps: int | str, out: Path, args: argparse.Namespace, evals: int = 1) -> list[str]:
    """One `ctm train` run of the maze preset, evaluating `evals` times (the calibration once, at its end: so the
    two calibration runs differ by their steps alone)."""
    every = max(1, int(steps) // evals) if str(steps).isdigit() else steps
    cmd = [*CTM, "train", "--task", "maze", "--model", model, "--task-option", f"cells={args.cells}",
           "--steps", str(steps), "--eval-every", str(every), "--seed", str(args.seed), "--out", str(out),
           "--no-progress"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd + list(args.extra)


def eval_command(run_dir: Path, args: argparse.Namespace, *flags: str) -> list[str]:
    return [*CTM, "eval", str(run_dir), "--json", *flags] + (["--threads", str(args.threads)] if args.threads else [])


def larger_command(run_dir: Path, cells: int, args: argparse.Namespace) -> list[str]:
    """Mazes of `cells` a side, solved by re-applying the model up to --reapply times."""
    return eval_command(run_dir, args, "--task-option", f"cells={cells}", "--task-option", f"reapply={args.reapply}")


def seed_command(threads: int | None) -> list[str]:
    return [*CTM, "bench", "--quick", "--modes", "train", "--memory", "none", "--no-check", "--json"] + (
        ["--threads", str(threads)] if threads else [])


def seed_step_ms(threads: int | None) -> dict | None:
    """The seed tutorial's training step on this machine (`ctm bench --quick`, its largest batch): {"batch",
    "ms"}; None when the seed reference ($CTM_SEED_REFERENCE) is not found."""
    cmd = seed_command(threads)
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr}")
    rows = [r for r in json.loads(proc.stdout)["results"] if r["impl"] == "seed" and "ms_per_call" in r]
    if not rows:
        return None
    row = max(rows, key=lambda r: r["batch"])
    return {"batch": row["batch"], "ms": row["ms_per_call"]}


def benchmark_one(model: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / model
    if args.steps:
        steps, step_s = args.steps, None
    else:
        steps, step_s = calibrated_steps(lambda n, out: train_command(model, n, out, args), args.calibration_steps,
                                         args.budget_s, "maze-calibration-", warm_up=2)
    wall, output = _run(train_command(model, steps, run_dir, args, evals=args.evals))
    main = last_json(eval_command(run_dir, args))
    larger = [{"cells": c, **{k: v for k, v in last_json(larger_command(run_dir, c, args)).items() if k in KEYS}}
              for c in args.larger] if model in args.larger_models else []
    return {"model": model, "cells": args.cells, "parameters": parameters_from(output), "steps": steps,
            "step_s": step_s, "wall_s": round(wall, 1), **{k: main[k] for k in KEYS},
            "ticks": len(main["per_tick_accuracy"]), "larger": larger, "run_dir": str(run_dir)}


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table(rows: list[dict], larger: list[int]) -> str:
    end = " |" if larger else ""
    lines = ["| model | cells | parameters | steps | wall s | solved % | solved, re-applied % | route steps % | "
             "into a wall % | " + " | ".join(f"{c}x{c} solved, re-applied %" for c in larger) + end,
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(larger)]
    for r in rows:
        params = "-" if r["parameters"] is None else f"{r['parameters']:,}"
        by_cells = {e["cells"]: e for e in r["larger"]}
        big = " | ".join(_percent(by_cells[c]["reapplied_solve_rate"]) if c in by_cells else "-" for c in larger)
        lines.append(f"| {r['model']} | {r['cells']} | {params} | {r['steps']} | {r['wall_s']:.0f} | "
                     f"{_percent(r['solve_rate'])} | {_percent(r['reapplied_solve_rate'])} | "
                     f"{_percent(r['route_accuracy'])} | {_percent(r['wall_rate'])} | " + big + end)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--cells", type=int, default=7, help="cells a side of the training mazes (default 7: the "
                                                             "official small 15x15 pictures)")
    parser.add_argument("--larger", type=int, nargs="*", default=[15],
                        help="cells a side of the larger mazes evaluated by re-application (default 15)")
    parser.add_argument("--larger-models", nargs="*", choices=MODELS, default=["ctm"],
                        help="the models evaluated on the larger mazes (default ctm)")
    parser.add_argument("--reapply", type=int, default=20, help="the most applications per larger maze (default 20)")
    parser.add_argument("--budget-s", type=float, default=1800.0, help="seconds of training per model (default 1800)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead (no calibration)")
    parser.add_argument("--calibration-steps", type=int, default=20,
                        help="the calibration times K and 2K steps (default 20)")
    parser.add_argument("--evals", type=int, default=4, help="evaluations during each run (the test curve)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("runs/maze-benchmark"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: the CTM and the LSTM side by "
                                                              "side, a core each)")
    parser.add_argument("--no-seed", action="store_true", help="skip timing the tutorial's step")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    args.extra = extra
    for name in ("budget_s", "calibration_steps", "jobs", "evals", "reapply"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.cells < 2 or any(c < 2 for c in args.larger):
        parser.error("a maze has at least 2 cells a side")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        if not args.no_seed:
            print(shlex.join(seed_command(args.threads or None)))
        for model in args.models:
            print(shlex.join(train_command(model, args.steps or "STEPS", args.out / model, args, args.evals)))
            print(shlex.join(eval_command(args.out / model, args)))
            if model in args.larger_models:
                for c in args.larger:
                    print(shlex.join(larger_command(args.out / model, c, args)))
        return 0
    seed = None if args.no_seed else seed_step_ms(args.threads or None)
    if seed is not None:
        print(f"the tutorial's training step (batch {seed['batch']}, ctm bench --quick) on this machine: "
              f"{seed['ms']:.1f} ms", flush=True)
    elif not args.no_seed:
        print("the tutorial's training step: not timed (ctm bench found no seed reference; set $CTM_SEED_REFERENCE)",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda m: benchmark_one(m, args), args.models))
    text = table(rows, args.larger)
    print(text)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "threads": args.threads, "jobs": args.jobs, "budget_s": args.budget_s, "seed_step": seed,
            "command": shlex.join([sys.executable, *sys.argv])}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "results.md").write_text(f"{text}\n\nthe tutorial's training step: {seed}; {meta}\n")
    print(f"wrote {args.out / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
