"""Answers of a maze model: the route of the most certain tick (`chosen_moves`) and re-application on mazes whose
routes the model does not finish in one go (`reapply`, as the official analysis does)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .mazes import maze_tensors, walk_batch

if TYPE_CHECKING:
    from ...nn.model import ContinuousThoughtMachine
    from ...nn.outputs import CTMOutput


def chosen_moves(output: CTMOutput) -> Tensor:
    """The moves (B, L) of each maze's most certain tick."""
    B, LC, T = output.predictions.shape
    tick = output.certainties[:, 1].argmax(-1)
    logits = output.predictions[torch.arange(B, device=tick.device), :, tick]  # (B, L x 5)
    return logits.reshape(B, LC // 5, 5).argmax(-1)


def reapply(model: ContinuousThoughtMachine, x: Tensor, times: int, output: CTMOutput | None = None) \
        -> tuple[Tensor, Tensor, list[list[Tensor]]]:
    """Solve the mazes x (B, 3, H, W) by applying the model up to `times` times, as the official analysis: walk the
    most certain tick's route from the start; where it does not end on the goal but got somewhere, move the start
    there and apply the model again, unless it ended where an earlier application started (the model is
    deterministic: from there it would go round the same loop). Returns solved (B,) bool, the applications made
    (B,), and each maze's routes (the moves taken, one tensor per application). `output` is the model's output on x,
    when already computed."""
    floor, start, goal = maze_tensors(x)
    B = x.shape[0]
    solved = torch.zeros(B, dtype=torch.bool, device=x.device)
    applications = torch.zeros(B, dtype=torch.long, device=x.device)
    routes: list[list[Tensor]] = [[] for _ in range(B)]
    active = (start >= 0).all(1) & (goal >= 0).all(1)
    starts = [{tuple(p)} for p in start.tolist()]  # where each maze's applications started
    x = x.clone()
    for attempt in range(times):
        rows = active.nonzero().squeeze(1)
        if len(rows) == 0:
            break
        if attempt == 0 and output is not None:
            moves = chosen_moves(output)[rows]
        else:
            with torch.no_grad():
                moves = chosen_moves(model(x[rows]))
        w = walk_batch(floor[rows], start[rows], goal[rows], moves)
        applications[rows] += 1
        for i, r in enumerate(rows.tolist()):
            routes[r].append(moves[i, :int(w.steps[i])].cpu())
        solved[rows] = w.solved
        ends = w.end.tolist()
        # got somewhere new, not to the goal: go on from there
        moved = torch.tensor([tuple(e) not in starts[r] for e, r in zip(ends, rows.tolist(), strict=True)],
                             dtype=torch.bool, device=x.device) & ~w.solved
        for i in moved.nonzero().squeeze(1).tolist():
            r = int(rows[i])
            starts[r].add(tuple(ends[i]))
            (y0, x0), (y1, x1) = start[r].tolist(), w.end[i].tolist()
            x[r, :, y0, x0] = 1.0  # the old start becomes floor
            x[r, :, y1, x1] = torch.tensor([1.0, -1.0, -1.0], dtype=x.dtype)  # the new start, red
            start[r] = w.end[i]
        active = torch.zeros_like(active)
        active[rows[moved]] = True
    return solved, applications, routes
