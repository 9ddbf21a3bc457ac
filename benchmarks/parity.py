"""Benchmark: CTM against the LSTM baseline on cumulative parity, at several tick counts (not a test).

    python benchmarks/parity.py                          # length 16, ticks 1 5 10 25, 240 s of training each
    python benchmarks/parity.py --budget-s 60 --ticks 1 10
    python benchmarks/parity.py --jobs 2                 # two runs at a time (one thread each on two cores)
    python benchmarks/parity.py --dry-run                # print the commands, run nothing
    python benchmarks/parity.py --length 64 --ticks 1 10 25 50 75 100 --device cuda   # the paper's setting

Every (model, ticks) pair gets the same wall-clock budget of training. A calibration first times two short
runs of `ctm train` (--calibration-steps K and 2K steps; the difference of their wall times removes start-up
and the final evaluation; a 2-step run before them absorbs one-off costs such as cold caches) to get the time
per step; the real run then gets steps = budget / step time, so its cosine schedule completes. Each run is a
fresh process:

    ctm train --task parity --model {ctm,lstm} --ticks T --task-option length=L --steps N --out OUT/<model>-T<T> ...
    ctm eval OUT/<model>-T<T> --json        # `accuracy` (per bit) and `sequence_accuracy`

It prints a table (model, ticks, parameters, steps, wall seconds, per-bit and whole-sequence accuracy),
writes OUT/results.json, OUT/results.md and OUT/accuracy_vs_ticks.png (both models against the tick count).
Flags after `--` go to every `ctm train` unchanged (e.g. `-- --batch-size 64`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CTM = [sys.executable, "-m", "ctm"]
MODELS = ("ctm", "lstm")
DEFAULT_TICKS = (1, 5, 10, 25)


def train_command(model: str, ticks: int, steps: int | str, out: Path, *, length: int = 16, seed: int = 0,
                  threads: int | None = 1, device: str | None = None, extra: list[str] = ()) -> list[str]:
    """The `ctm train` command of one run; `steps` may be a placeholder string in a dry run."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    cmd = [*CTM, "train", "--task", "parity", "--model", model, "--task-option", f"length={length}",
           "--ticks", str(ticks),
           "--steps", str(steps), "--eval-every", str(steps), "--seed", str(seed), "--out", str(out),
           "--no-progress"]
    if threads:
        cmd += ["--threads", str(threads)]
    if device:
        cmd += ["--device", device]
    return cmd + list(extra)


def eval_command(run_dir: Path, *, threads: int | None = 1, device: str | None = None) -> list[str]:
    """The `ctm eval --json` command of a finished run."""
    cmd = [*CTM, "eval", str(run_dir), "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    if device:
        cmd += ["--device", device]
    return cmd


def steps_for(budget_s: float, step_s: float) -> int:
    """Steps that fill `budget_s` seconds at `step_s` seconds a step (at least one)."""
    if not step_s > 0:
        raise ValueError(f"the time per step must be positive, got {step_s}")
    return max(1, math.floor(budget_s / step_s))


def step_time(short: tuple[int, float], long: tuple[int, float]) -> float:
    """Seconds per step from two runs (steps, wall seconds) that differ only in their step count."""
    (k1, t1), (k2, t2) = short, long
    if k2 <= k1:
        raise ValueError(f"the second calibration run must have more steps, got {k1} and {k2}")
    # Noise on a shared machine can make the difference tiny or negative: never below a tenth of the
    # longer run's average.
    return max((t2 - t1) / (k2 - k1), 0.1 * t2 / k2)


PARAMETERS = re.compile(r"([\d,]+) parameters")


def parameters_from(text: str) -> int | None:
    """The first "N parameters" in `ctm train`'s output (the model line, or the LSTM's matching line)."""
    found = PARAMETERS.search(text)
    return int(found.group(1).replace(",", "")) if found else None


def _run(cmd: list[str]) -> tuple[float, str]:
    """Run a command, return its wall time and output; exit with its output when it fails."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{shlex.join(cmd)} failed with exit code {proc.returncode}")
    return wall, proc.stdout + proc.stderr


def calibrated_steps(command, k: int, budget_s: float, prefix: str, warm_up: int = 2) -> tuple[int, float]:
    """(the steps that fill `budget_s`, seconds a step): a warm-up run of `warm_up` steps takes the one-off costs
    (caches, the C++ build), then runs of k and 2k steps are timed (`step_time`). `command(steps, out)` is the
    `ctm train` line of a run of that many steps into folder `out`."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        _run(command(warm_up, Path(tmp) / "warm-up"))
        timed = [(n, _run(command(n, Path(tmp) / f"k{n}"))[0]) for n in (k, 2 * k)]
    step_s = step_time(*timed)
    return steps_for(budget_s, step_s), step_s


def last_json(cmd: list[str]) -> dict:
    """The JSON object a command prints on its last line (`ctm eval --json`)."""
    return json.loads(_run(cmd)[1].strip().splitlines()[-1])


def benchmark_one(model: str, ticks: int, args: argparse.Namespace) -> dict:
    """Calibrate, train within the budget, evaluate: one row of the table."""
    common = dict(length=args.length, seed=args.seed, threads=args.threads, device=args.device, extra=args.extra)
    run_dir = args.out / f"{model}-T{ticks}"
    if args.steps:
        steps, step_s = args.steps, None
    else:
        steps, step_s = calibrated_steps(lambda n, out: train_command(model, ticks, n, out, **common),
                                         args.calibration_steps, args.budget_s, "parity-calibration-")
    wall, output = _run(train_command(model, ticks, steps, run_dir, **common))
    result = last_json(eval_command(run_dir, threads=args.threads, device=args.device))
    return {"model": model, "ticks": ticks, "length": args.length, "parameters": parameters_from(output),
            "steps": steps, "step_s": step_s, "wall_s": round(wall, 1), "accuracy": result["accuracy"],
            "sequence_accuracy": result.get("sequence_accuracy"), "run_dir": str(run_dir)}


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table(rows: list[dict]) -> str:
    """A Markdown table of the results."""
    lines = ["| model | ticks | parameters | steps | wall s | per-bit acc % | sequence acc % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        params = "-" if r["parameters"] is None else f"{r['parameters']:,}"
        lines.append(f"| {r['model']} | {r['ticks']} | {params} | {r['steps']} | {r['wall_s']:.0f} | "
                     f"{_percent(r['accuracy'])} | {_percent(r['sequence_accuracy'])} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Accuracy (per bit solid, whole sequence dashed) against ticks, one colour per model."""
    from ctm.pictures.figures import CERTAINTY_COLOUR, TEST_COLOUR, _new_figure, _style_axes, save_figure

    fig = _new_figure((7.5, 4.8), 100)
    ax = fig.subplots()
    colours = {"ctm": CERTAINTY_COLOUR, "lstm": TEST_COLOUR}
    for model in MODELS:
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["ticks"])
        if not mine:
            continue
        ticks = [r["ticks"] for r in mine]
        ax.plot(ticks, [100 * r["accuracy"] for r in mine], color=colours[model], marker="o", linewidth=2,
                label=f"{model.upper()} per bit")
        if all(r["sequence_accuracy"] is not None for r in mine):
            ax.plot(ticks, [100 * r["sequence_accuracy"] for r in mine], color=colours[model], marker="s",
                    linestyle="--", linewidth=1.5, label=f"{model.upper()} whole sequence")
    ax.set_xscale("log")
    all_ticks = sorted({r["ticks"] for r in rows})
    ax.set_xticks(all_ticks)
    ax.set_xticklabels([str(t) for t in all_ticks])
    ax.minorticks_off()
    ax.set_ylim(-2, 102)
    ax.set_xlabel("internal ticks T (log scale)", fontsize=10)
    ax.set_ylabel("test accuracy (%)", fontsize=10)
    length, budget = rows[0]["length"], rows[0].get("budget_s")
    ax.set_title(f"Parity, length {length}" + (f": {budget:g} s of training each" if budget else ""), fontsize=12)
    _style_axes(ax)
    ax.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, nargs="+", default=list(DEFAULT_TICKS), help="tick counts T")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--length", type=int, default=16, help="sequence length L")
    parser.add_argument("--budget-s", type=float, default=240.0, help="seconds of training per run")
    parser.add_argument("--steps", type=int, default=None,
                        help="train every run this many steps instead (no calibration, no budget)")
    parser.add_argument("--calibration-steps", type=int, default=20,
                        help="the calibration times K and 2K steps (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (0: torch's default)")
    parser.add_argument("--device", default=None, help="passed to ctm train and ctm eval (e.g. cuda)")
    parser.add_argument("--out", type=Path, default=Path("runs/parity-benchmark"))
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (e.g. 2 on two cores with --threads 1: the CTM and the LSTM of a tick "
                             "count side by side)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    args.extra = extra
    for name in ("length", "budget_s", "calibration_steps", "jobs"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.length < 2:
        parser.error(f"--length must be at least 2, got {args.length}")
    if min(args.ticks) < 1:
        parser.error(f"--ticks must all be at least 1, got {args.ticks}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def dry_run(args: argparse.Namespace) -> list[str]:
    """The commands a run would execute, one line each (steps N: set by the calibration)."""
    common = dict(length=args.length, seed=args.seed, threads=args.threads, device=args.device, extra=args.extra)
    lines = []
    for model in args.models:
        for ticks in args.ticks:
            run_dir = args.out / f"{model}-T{ticks}"
            if not args.steps:
                k = args.calibration_steps
                lines += [shlex.join(train_command(model, ticks, n, Path("CALIBRATION") / f"k{n}", **common))
                          for n in (k, 2 * k)]
            lines.append(shlex.join(train_command(model, ticks, args.steps or "N", run_dir, **common)))
            lines.append(shlex.join(eval_command(run_dir, threads=args.threads, device=args.device)))
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        print("\n".join(dry_run(args)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    # The models side by side at each tick count: with --jobs 2 (two cores, one thread each) the CTM and the
    # LSTM of one T train at the same time, so both see the same machine.
    pairs = [(model, ticks) for ticks in args.ticks for model in args.models]

    def one(pair: tuple[str, int]) -> dict:
        row = benchmark_one(*pair, args)
        row["budget_s"] = None if args.steps else args.budget_s
        print(f"{row['model']} T={row['ticks']}: {row['steps']} steps, {row['wall_s']} s, per bit "
              f"{_percent(row['accuracy'])}%, sequence {_percent(row['sequence_accuracy'])}%", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each job is a `ctm` subprocess
        for row in pool.map(one, pairs):
            rows.append(row)
            rows.sort(key=lambda r: (MODELS.index(r["model"]), r["ticks"]))
            (args.out / "results.json").write_text(json.dumps(
                {"machine": platform.platform(), "processor": platform.processor(), "jobs": args.jobs,
                 "rows": rows}, indent=2))
    text = table(rows)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    print(f"plot: {plot(rows, args.out / 'accuracy_vs_ticks.png')}")


if __name__ == "__main__":
    main()
