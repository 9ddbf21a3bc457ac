"""Benchmark: the CTM against the LSTM baseline on QAMNIST, the same wall-clock budget each (not a test; about 35
minutes with the defaults).

    python benchmarks/qamnist.py                     # the qamnist recipe, 1800 s each, side by side, a core each
    python benchmarks/qamnist.py --budget-s 300 --models ctm
    python benchmarks/qamnist.py --dry-run           # print the commands, run nothing

The CTM is the qamnist preset (`ctm train --task qamnist`: 1 to 4 digits, 1 to 4 operations, each input shown for
one tick); the LSTM (`--model lstm`) reads the same schedule through the same backbone and attention, its width
matched to the CTM's parameter count. First the seed tutorial's training step (its model, batch 64) is timed on
this machine, so the wall times compare across machines. Then each model is calibrated (two short runs of K and
2K steps; the difference of their wall times removes start-up and evaluation, benchmarks/parity.py) and trained
for the steps that fill the budget, so its cosine schedule completes:

    ctm train --task qamnist --model {ctm,lstm} --steps S --out OUT/<model> ...
    ctm eval OUT/<model> --json --plot                     # accuracy, by digits and by operations
    ctm eval OUT/<model> --json --task-option operations=7 --task-option operations_delta=2
                                                           # 5 to 8 operations: more than trained on

It prints a table and writes OUT/results.json and OUT/results.md (the test curves are each run's curves.png).
Flags after `--` go to every `ctm train` unchanged (e.g. `-- --lr 3e-3`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity import _run, calibrated_steps, last_json, parameters_from  # noqa: E402  (the same calibration)
from train_mnist import seed_step_ms  # noqa: E402

CTM = [sys.executable, "-m", "ctm"]
MODELS = ("ctm", "lstm")
#: operations evaluated beyond training: operations=7 with delta 2 draws 5 to 8 (the top excluded)
BEYOND = ("operations=7", "operations_delta=2")


def train_command(model: str, steps: int | str, out: Path, args: argparse.Namespace, evals: int = 1) -> list[str]:
    """One `ctm train` run of the qamnist preset, evaluating `evals` times (the calibration once, at its end: so the
    two calibration runs differ by their steps alone)."""
    every = max(1, int(steps) // evals) if str(steps).isdigit() else steps
    cmd = [*CTM, "train", "--task", "qamnist", "--model", model, "--steps", str(steps), "--eval-every", str(every),
           "--seed", str(args.seed), "--out", str(out), "--no-progress"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd + list(args.extra)


def eval_command(run_dir: Path, args: argparse.Namespace, *flags: str) -> list[str]:
    return [*CTM, "eval", str(run_dir), "--json", *flags] + (["--threads", str(args.threads)] if args.threads else [])


def beyond_command(run_dir: Path, args: argparse.Namespace) -> list[str]:
    return eval_command(run_dir, args, *(f for option in BEYOND for f in ("--task-option", option)))


def curriculum_cost(fraction: float, steps: int) -> float:
    """The mean ticks of a step of a run of `steps` steps whose curriculum takes `fraction` of them, as a share of
    a step's over the whole ranges (the qamnist preset's options): a step costs about its question's ticks."""
    from ctm.tasks import make_task
    from ctm.tasks.qamnist.data import block_shape, schedule_ticks

    o = make_task("qamnist").options
    grow = round(fraction * steps)

    def mean_ticks(curriculum: int) -> float:
        shapes = [block_shape(0, b, o.digit_range, o.operation_range, False, curriculum) for b in range(steps)]
        return sum(schedule_ticks(d, n, o.repeats, o.answer_ticks) for d, n in shapes) / steps

    return mean_ticks(grow) / mean_ticks(0)


def benchmark_one(model: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / model
    if args.steps:
        steps, step_s = args.steps, None
    else:
        # Calibrated on questions of the whole ranges (no curriculum); the curriculum's shorter questions early on
        # then buy the steps they save.
        full = ["--task-option", "curriculum=0"]
        steps, step_s = calibrated_steps(lambda n, out: train_command(model, n, out, args) + full,
                                         args.calibration_steps, args.budget_s, "qamnist-calibration-", warm_up=5)
        for _ in range(3):  # the cost depends on the steps: a few rounds settle it
            steps = int(args.budget_s / (step_s * curriculum_cost(args.curriculum, steps)))
    wall, output = _run(train_command(model, steps, run_dir, args, evals=args.evals))
    main = last_json(eval_command(run_dir, args, "--plot"))
    beyond = last_json(beyond_command(run_dir, args))
    return {"model": model, "parameters": parameters_from(output), "steps": steps, "step_s": step_s,
            "wall_s": round(wall, 1), "accuracy": main["accuracy"], "by_operations": main["by_operations"],
            "by_digits": main["by_digits"], "beyond_accuracy": beyond["accuracy"],
            "beyond_by_operations": beyond["by_operations"], "run_dir": str(run_dir)}


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(rows: list[dict]) -> str:
    ops = sorted({int(o) for r in rows for o in (*r["by_operations"], *r["beyond_by_operations"])})
    lines = ["| model | parameters | steps | wall s | accuracy % (1-4 digits, 1-4 operations) | "
             + " | ".join(f"{o} op. %" for o in ops) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(ops)]
    for r in rows:
        params = "-" if r["parameters"] is None else f"{r['parameters']:,}"
        by_o = {**r["beyond_by_operations"], **r["by_operations"]}
        lines.append(f"| {r['model']} | {params} | {r['steps']} | {r['wall_s']:.0f} | {_percent(r['accuracy'])} | "
                     + " | ".join(_percent(by_o.get(str(o))) for o in ops) + " |")
    return "\n".join(lines) + "\n\n(operations 5 and up: more than trained on, evaluated with --task-option " \
        + " --task-option ".join(BEYOND) + ")"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--budget-s", type=float, default=1800.0, help="seconds of training per model (default 1800)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead (no calibration)")
    parser.add_argument("--calibration-steps", type=int, default=50,
                        help="the calibration times K and 2K steps (default 50)")
    parser.add_argument("--evals", type=int, default=6, help="evaluations during each run (the test curve)")
    parser.add_argument("--curriculum", type=float, default=0.4,
                        help="the preset's curriculum (the fraction of the steps it takes), for the step count: "
                             "pass the same with -- --task-option curriculum=F when changing it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("runs/qamnist-benchmark"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: the CTM and the LSTM side by "
                                                              "side, a core each)")
    parser.add_argument("--no-seed", action="store_true", help="skip timing the tutorial's step")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    args.extra = extra
    for name in ("budget_s", "calibration_steps", "jobs", "evals"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for model in args.models:
            print(shlex.join(train_command(model, args.steps or "STEPS", args.out / model, args, args.evals)))
            print(shlex.join(eval_command(args.out / model, args, "--plot")))
            print(shlex.join(beyond_command(args.out / model, args)))
        return 0
    seed_ms = None if args.no_seed else seed_step_ms(args.threads or None)
    if seed_ms is not None:
        print(f"the tutorial's training step (batch 64) on this machine: {seed_ms:.1f} ms", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda m: benchmark_one(m, args), args.models))
    text = table(rows)
    print(text)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "threads": args.threads, "jobs": args.jobs, "budget_s": args.budget_s, "seed_step_ms": seed_ms,
            "command": shlex.join([sys.executable, *sys.argv])}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "results.md").write_text(f"{text}\n\nthe tutorial's training step: {seed_ms} ms; {meta}\n")
    print(f"wrote {args.out / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
