"""Adaptive computation: each sample thinks until it is certain enough, then answers.

`think(model, x, halt_certainty)` runs the model's ticks one at a time. A sample stops at its first tick t
with certainty >= halt_certainty (or at `max_ticks`) and answers with its prediction there. With several output
positions (e.g. the parity task's bits) a sample halts as a whole, when the model's certainty, the mean over
its positions (`model.certainty`, the certainty the loss's most-certain tick uses), reaches the threshold.
Halted samples leave the batch, so later ticks cost less. The ticks are the model's own: the fast engine's tick step
(`ctm.engine.Stepper`) where the engine applies, else the readable `model.tick` (`ReadableStepper`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from . import engine

if TYPE_CHECKING:
    from .model import ContinuousThoughtMachine


class ThinkOutput(NamedTuple):
    """What `think` returns, one entry per sample."""

    prediction: Tensor  # (B,) predicted class at the halting tick; (B, P) with P > 1 output positions
    ticks: Tensor  # (B,) ticks used, 1 .. max_ticks: the answer is forward's output at tick index ticks - 1
    certainty: Tensor  # (B,) certainty (1 - normalised entropy) at the halting tick
    logits: Tensor  # (B, C) logits at the halting tick


class ReadableStepper:
    """`model.tick` one tick at a time: `step()` returns the logits (b, C) of the rows still in the batch,
    `keep(rows)` drops the others."""

    def __init__(self, model: ContinuousThoughtMachine, x: Tensor) -> None:
        self.model, self.t = model, 0
        tokens, _ = model.reader.encode(x, model.compute_features)
        with model.full_precision(x):
            self.state, self.inputs = model.start(tokens)

    def step(self) -> Tensor:
        self.state, out = self.model.tick(self.state, self.inputs, self.t)
        self.t += 1
        return out.logits

    def keep(self, rows: Tensor) -> None:
        self.state = _rows(self.state, rows)  # the CTM's TickState, or another model's (the LSTM's)
        self.inputs = self.inputs.rows(rows)  # the CTM's TickInputs, or what the LSTM's reader prepared


def _rows(state, rows: Tensor):
    """`state` (a tensor, or NamedTuples of them, or None) with only the batch rows `rows`."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state[rows]
    return type(state)(*(_rows(s, rows) for s in state))


@torch.no_grad()
def think(model: ContinuousThoughtMachine, x: Tensor, halt_certainty: float,
          max_ticks: int | None = None) -> ThinkOutput:
    """Each sample of x (B, C, H, W) (or vectors (B, d_input) for input_reader direct) thinks until its
    certainty reaches `halt_certainty`.

    The result for each sample is the full forward's output at its halting tick: samples never see each
    other. In training mode the backbone's BatchNorm uses (and updates) batch statistics exactly as forward
    does, so call `model.eval()` first for per-sample answers and untouched running statistics.
    `halt_certainty` > 1 runs every tick; 0 stops every sample after the first.
    """
    c = model.config
    if c.input_reader == "schedule":
        raise ValueError("think halts a sample that reads one input at every tick; input_reader 'schedule' "
                         "changes its inputs over ticks: run the model's forward on the schedule")
    model.check_input(x)
    if isinstance(halt_certainty, bool) or not isinstance(halt_certainty, (int, float)) \
            or math.isnan(halt_certainty):
        raise ValueError(f"halt_certainty must be a number (a certainty in [0, 1]), got {halt_certainty!r}")
    T = c.iterations if max_ticks is None else max_ticks
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= c.iterations:
        raise ValueError(f"max_ticks must be an integer in [1, {c.iterations}] (CTMConfig.iterations), "
                         f"got {max_ticks!r}")
    B, device = x.shape[0], x.device
    stepper = engine.Stepper(model, x, T) if engine.applies(model) else ReadableStepper(model, x)
    positions = c.out_positions
    prediction = torch.empty(B, *(() if positions == 1 else (positions,)), dtype=torch.long, device=device)
    used = torch.empty(B, dtype=torch.long, device=device)
    dtype = next(model.parameters()).dtype
    certainty = torch.empty(B, dtype=dtype, device=device)
    logits_at = torch.empty(B, c.out_dims, dtype=dtype, device=device)
    rows = torch.arange(B, device=device)  # original index of each row of the stepper's state
    thinking = torch.ones(B, dtype=torch.bool, device=device)  # rows still without an answer
    n_thinking = B
    with model.full_precision(x):
        for t in range(T):
            logits = stepper.step()  # (b, C)
            cert = model.certainty(logits)[:, 1]
            if t < T - 1 and halt_certainty > 0:
                halt = (cert >= halt_certainty) & thinking
            else:  # last tick, or tau <= 0 (rounding can put a certainty a hair below 0)
                halt = thinking
            n_halt = int(halt.sum())
            if not n_halt:
                continue
            done = rows[halt]
            prediction[done] = logits[halt].unflatten(-1, (positions, -1)).argmax(-1).squeeze(-1)
            used[done] = t + 1
            certainty[done] = cert[halt]
            logits_at[done] = logits[halt]
            n_thinking -= n_halt
            if n_thinking == 0:
                break
            thinking = thinking & ~halt
            # Halted rows ride along (their results are taken, later ticks never read them) until they are
            # 1/8 of the batch: gathering every tick costs more than it saves.
            if 8 * (rows.shape[0] - n_thinking) >= rows.shape[0]:
                keep = thinking.nonzero().squeeze(1)
                stepper.keep(keep)
                rows = rows[keep]
                thinking = torch.ones(n_thinking, dtype=torch.bool, device=device)
    return ThinkOutput(prediction, used, certainty, logits_at)
