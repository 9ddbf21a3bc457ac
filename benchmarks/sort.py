"""Benchmark: the CTM against the LSTM baseline on sorting N numbers, the same wall-clock budget each (not a test;
about 35 minutes with the defaults).

    python benchmarks/sort.py                        # N = 30, the sort recipe, 1800 s each, side by side, a core each
    python benchmarks/sort.py --budget-s 300 --models ctm
    python benchmarks/sort.py --jobs 1 --threads 2   # one after the other, two threads each (slower for this model)
    python benchmarks/sort.py --dry-run              # print the commands, run nothing

First the tutorial's own training step (its model, batch 64, `ctm bench`) is timed on this machine, so the wall
times compare across machines. Then each model is calibrated (two short runs of K and 2K steps; the difference of
their wall times removes start-up and evaluation) and trained for the steps that fill the budget, so its cosine
schedule completes:

    ctm train --task sort --model {ctm,lstm} --task-option n=N --steps S --out OUT/<model> ...
    ctm eval OUT/<model> --json --plot                          # accuracy, sequence_accuracy, the wait-time figure
    ctm eval OUT/<model> --json --task-option std=S ...         # other spreads (the paper's generalisation)
    ctm eval OUT/<model> --json --halt-certainty 0.9            # stopping once the order is complete and certain

It prints a table and writes OUT/results.json and OUT/results.md (the test curves are each run's curves.png, the
wait-time figure its ticks.png). Flags after `--` go to every `ctm train` unchanged (e.g. `-- --lr 3e-3`).
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
SPREADS = ((0.0, 0.5), (0.0, 2.0), (1.0, 1.0))  # (mean, std) evaluated besides the training spread N(0, 1)


def train_command(model: str, steps: int | str, out: Path, args: argparse.Namespace, evals: int = 1) -> list[str]:
    """One `ctm train` run, evaluating `evals` times (the calibration once, at its end: so the two calibration
    runs differ by their steps alone)."""
    every = max(1, int(steps) // evals) if str(steps).isdigit() else steps
    cmd = [*CTM, "train", "--task", "sort", "--model", model, "--task-option", f"n={args.n}", "--steps", str(steps),
           "--eval-every", str(every), "--seed", str(args.seed), "--out", str(out), "--no-progress"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd + list(args.extra)


def eval_command(run_dir: Path, args: argparse.Namespace, *flags: str) -> list[str]:
    return [*CTM, "eval", str(run_dir), "--json", *flags] + (["--threads", str(args.threads)] if args.threads else [])


def benchmark_one(model: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / model
    if args.steps:
        steps, step_s = args.steps, None
    else:
        steps, step_s = calibrated_steps(lambda n, out: train_command(model, n, out, args), args.calibration_steps,
                                         args.budget_s, "sort-calibration-", warm_up=5)
    wall, output = _run(train_command(model, steps, run_dir, args, evals=args.evals))
    main = last_json(eval_command(run_dir, args, "--plot"))
    spreads = [{"mean": m, "std": s, **{k: v for k, v in last_json(eval_command(
        run_dir, args, "--task-option", f"mean={m}", "--task-option", f"std={s}")).items()
        if k in ("accuracy", "sequence_accuracy", "complete")}} for m, s in SPREADS]
    halted = last_json(eval_command(run_dir, args, "--halt-certainty", str(args.halt_certainty)))
    return {"model": model, "n": args.n, "parameters": parameters_from(output), "steps": steps, "step_s": step_s,
            "wall_s": round(wall, 1), "accuracy": main["accuracy"], "sequence_accuracy": main["sequence_accuracy"],
            "complete": main["complete"], "mean_last_emission": main["mean_last_emission"],
            "ticks": len(main["per_tick_certainty"]), "wait_by_gap": main["wait_by_gap"], "spreads": spreads,
            "halting": {k: halted[k] for k in ("halt_certainty", "accuracy", "sequence_accuracy", "mean_ticks")},
            "run_dir": str(run_dir)}


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| model | N | parameters | steps | wall s | per element % | whole sequences % | halting at tau: per "
             "element % / sequences % / mean ticks | " + " | ".join(f"N({m:g}, {s:g}^2) elem / seq %"
                                                                   for m, s in SPREADS) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---|" + "---|" * len(SPREADS)]
    for r in rows:
        params = "-" if r["parameters"] is None else f"{r['parameters']:,}"
        h = r["halting"]
        spread = " | ".join(f"{_percent(s['accuracy'])} / {_percent(s['sequence_accuracy'])}" for s in r["spreads"])
        lines.append(f"| {r['model']} | {r['n']} | {params} | {r['steps']} | {r['wall_s']:.0f} | "
                     f"{_percent(r['accuracy'])} | {_percent(r['sequence_accuracy'])} | {h['halt_certainty']:g}: "
                     f"{_percent(h['accuracy'])} / {_percent(h['sequence_accuracy'])} / {h['mean_ticks']:.1f} of "
                     f"{r['ticks']} | {spread} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--n", type=int, default=30, help="numbers to sort (default 30, the official N)")
    parser.add_argument("--budget-s", type=float, default=1800.0, help="seconds of training per model (default 1800)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead (no calibration)")
    parser.add_argument("--calibration-steps", type=int, default=100,
                        help="the calibration times K and 2K steps (default 100: fewer are dominated by the first "
                             "steps' start-up)")
    parser.add_argument("--evals", type=int, default=6, help="evaluations during each run (the test curve)")
    parser.add_argument("--halt-certainty", type=float, default=0.9, help="the halting threshold evaluated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each run (0: torch's default); one is faster than two for the sort "
                             "model on a 2-core CPU (0.27 against 0.51 s a step)")
    parser.add_argument("--out", type=Path, default=Path("runs/sort-benchmark"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: the CTM and the LSTM side by "
                                                              "side, a core each)")
    parser.add_argument("--no-seed", action="store_true", help="skip timing the tutorial's step")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    args.extra = extra
    for name in ("n", "budget_s", "calibration_steps", "jobs", "evals"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for model in args.models:
            print(shlex.join(train_command(model, args.steps or "STEPS", args.out / model, args, args.evals)))
            print(shlex.join(eval_command(args.out / model, args, "--plot")))
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
