"""Measuring speed and memory: step closures, alternating timed rounds, peak memory, the result table.

Pure measuring code, quiet and free of the command line: `make_step` wraps one train step or eval
forward of a model, `time_alternating` times several such steps in alternating rounds (so load from other
processes hits them alike), `measure_peak_inprocess`/`measure_peak_cuda` measure peak memory, and
`format_table` renders a benchmark result. `ctm bench` (ctm.cli.bench) builds the models, the seed
reference among them, and puts these together.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from .config import CTMConfig

__all__ = ["format_table", "make_step", "measure_peak_cuda", "measure_peak_inprocess", "peak_rss_growth",
           "speed_context", "synchronize", "time_alternating"]


# ------------------------------------------------------------------------------------------ steps


def speed_context(amp: bool, device_type: str = "cpu"):
    """bfloat16 autocast when `amp` (only the ctm backbone runs in bfloat16; the tick loop stays float32)."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def make_step(model: torch.nn.Module, mode: str, batch: int, loss_fn: Callable, *, amp: bool = False,
              image_size: tuple[int, int] = (28, 28), in_channels: int = 1, out_dims: int = 10,
              optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> Callable[[], None]:
    """A closure running one train step or one eval forward on a fixed random batch (on the model's device).
    `optimizer(params)` builds the training step's optimizer; by default torch's AdamW (lr 1e-4), as the seed
    tutorial trains (`ctm.train.make_optimizer` is how ctm trains)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, in_channels, *image_size, generator=g).to(device)
    y = torch.randint(0, out_dims, (batch,), generator=g).to(device)
    if mode == "eval":
        model.eval()

        def eval_step() -> None:
            with torch.inference_mode(), speed_context(amp, device.type):
                model(x)

        return eval_step
    model.train()
    opt = (optimizer or (lambda params: torch.optim.AdamW(params, lr=1e-4, eps=1e-8)))(model.parameters())

    def train_step() -> None:
        with speed_context(amp, device.type):
            predictions, certainties, _ = model(x)
        loss, _ = loss_fn(predictions.float(), certainties.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train_step


# ------------------------------------------------------------------------------------------ timing and memory


def synchronize(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(steps: dict[str, Callable[[], None]], repeats: int,
                     device: torch.device | None = None) -> dict[str, list[float]]:
    """Wall seconds of each step over `repeats` rounds, every step called once per round in turn."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for impl, step in steps.items():
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            times[impl].append(time.perf_counter() - t0)
    return times


def measure_peak_cuda(step: Callable[[], None], device: torch.device, calls: int = 2) -> float:
    """Peak CUDA memory (MB) allocated while running `step`, beyond what was allocated before."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    for _ in range(calls):
        step()
    synchronize(device)
    return max(0.0, (torch.cuda.max_memory_allocated(device) - before) / 2**20)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _max_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    return float("nan")


def measure_peak_inprocess(step: Callable[[], None], calls: int = 2) -> float | None:
    """Peak RSS growth (MB) over the current RSS while running `step`, in this process.

    Approximate: memory the allocator kept from earlier rows is reused without growing RSS, so this
    can under-count. None where the peak mark cannot be reset (not Linux).
    """
    if not _reset_peak_rss():
        return None
    before = _rss_mb()
    for _ in range(calls):
        step()
    return max(0.0, _vm_hwm_mb() - before)


def peak_rss_growth(step: Callable[[], None], calls: int = 3) -> float:
    """Peak RSS growth (MB) over the current RSS while running `step` `calls` times; meant for a fresh
    process, where nothing earlier holds reusable heap (after a peak-mark reset on Linux, else the
    lifetime peak, which the steps dominate)."""
    reset = _reset_peak_rss()
    before = _rss_mb()
    for _ in range(calls):
        step()
    peak = _vm_hwm_mb() if reset else _max_rss_mb()
    return max(0.0, peak - before)


# ------------------------------------------------------------------------------------------ table


def format_table(result: dict[str, Any]) -> str:
    """The rows of `run_benchmark` as an aligned text table; the ratios are to the reference implementation
    (the seed, or the official model)."""
    ref = result.get("reference") or "seed"
    head = ["mode", "batch", "impl", "samples/s", "best", f"x {ref}", f"x {ref} best", "ms/call", "peak MB",
            "compile s"]
    lines = []
    for r in result["results"]:
        if "error" in r:
            lines.append([r["mode"], str(r["batch"]), r["impl"], "error: " + r["error"], "", "", "", "", "", ""])
            continue

        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        lines.append([r["mode"], str(r["batch"]), r["impl"], fmt(r["samples_per_s"], ".0f"),
                      fmt(r["samples_per_s_best"], ".0f"), fmt(r["ratio_to_seed"], ".2f"),
                      fmt(r["ratio_to_seed_best"], ".2f"), fmt(r["ms_per_call"], ".1f"), fmt(r["peak_mb"], ".0f"),
                      fmt(r["compile_s"], ".1f")])
    ok = [row for row in lines if not row[3].startswith("error")]
    widths = [max(len(h), *(len(row[i]) for row in ok)) if ok else len(h) for i, h in enumerate(head)]

    def join(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in pairs)

    out = [join(head)]
    for row in lines:
        if row[3].startswith("error"):
            out.append(join(row[:3] + [""] * 7).rstrip() + "  " + row[3])
            continue
        out.append(join(row))
    where = result.get("device", "cpu")
    where = f"{result['threads']} threads, {result['machine']}" if where == "cpu" else f"{where} (CUDA)"
    defaults = CTMConfig().to_dict()
    changed = ", ".join(f"{k}={v!r}" for k, v in result["config"].items()
                        if k != "iterations" and k in defaults and v != defaults[k])
    official = result.get("official_reference")
    where_from = f"official: {official}" if official else f"seed: {result['seed_reference'] or 'not found'}"
    info = (f"CTMConfig({changed}) with {result['config']['iterations']} ticks; torch {result['torch']}, "
            f"{where}; {where_from}")
    foot = [info, f"samples/s and x {ref}: median of the alternating rounds; best: the fastest round",
            f"peak MB: {result['memory_method']}"]
    if result.get("device", "cpu") != "cpu":
        foot.append("timed rows keep torch's TF32 defaults; the check against the seed runs with TF32 off")
    for impl, r in (result.get("check") or {}).items():
        if "error" in r:
            foot.append(f"check {impl}: could not run: {r['error']}")
            continue
        verdict = {True: f"equal to the {ref} (outputs rtol 1e-4 atol 1e-5, input gradient 1e-4 relative)",
                   False: f"DIFFERS from the {ref}", None: "bfloat16, not compared"}[r["ok"]]
        detail = ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff"].items())
        rel = r.get("grad_rel_err")
        rel = "" if rel is None else f"; input gradient relative error {rel:.1e}"
        foot.append(f"check {impl}: {verdict}; max abs diff: {detail}{rel}")
    return "\n".join(out + [""] + foot + [f"note: {n}" for n in result["notes"]])
