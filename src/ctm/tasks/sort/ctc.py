"""CTC over ticks: the sort model emits one class per tick (an index of the input, or the blank), and the loss
sums over every way of spreading the target order over the ticks (Graves et al. 2006), so the model decides
when to emit.

Shapes: predictions (B, C, T) logits over C = N + 1 classes (the N indices, then the blank, class N) at each
of T ticks; targets (B, N), the indices that sort each input.

Decoding is greedy (best path): the most likely class at each tick; a tick emits its class unless it is the
blank or the same class as the last one emitted. (That last rule is the official decoder's, `tasks/sort/utils.py`:
it compares with the last *emitted* class, so "3, blank, 3" emits 3 once, where textbook CTC would emit it
twice. A sorted order never repeats an index, so the rule only drops repeats that are wrong anyway.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def ctc_loss_over_ticks(predictions: Tensor, targets: Tensor) -> Tensor:
    """The CTC loss of each sample, (B,): -log p(targets | predictions), every tick an input frame and the
    last class the blank. Divide by the target length and average for the official `sort_loss`
    (torch's reduction 'mean')."""
    B, C, T = predictions.shape
    log_probs = F.log_softmax(predictions.float(), dim=1).permute(2, 0, 1)  # (T, B, C)
    ticks = torch.full((B,), T, dtype=torch.long, device=predictions.device)
    lengths = torch.full((B,), targets.shape[1], dtype=torch.long, device=predictions.device)
    # (T >= N always fits a permutation; the sort task refuses fewer ticks than numbers)
    return F.ctc_loss(log_probs, targets, ticks, lengths, blank=C - 1, reduction="none")


def sort_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """The official training loss: the CTC loss per sample divided by the target length, averaged over the
    batch (scalar)."""
    return (ctc_loss_over_ticks(predictions, targets) / targets.shape[1]).mean()


class Decoded(NamedTuple):
    """Greedy decoding of a batch, in tensors (samples emit different counts, so lists are padded).

    `emitted` (B, T) bool: whether tick t emits; `best` (B, T): the most likely class at each tick;
    `order` (B, N') the emitted classes in order, padded with -1 (N' the most any sample emitted, at least the
    target length when decoding is asked for one); `ticks` (B, N') the tick (0-based) each was emitted at,
    padded with -1; `count` (B,) how many each sample emitted."""

    emitted: Tensor
    best: Tensor
    order: Tensor
    ticks: Tensor
    count: Tensor

    def waits(self) -> Tensor:
        """(B, N') ticks waited before each emitted element: the gap since the previous emission (for the
        first, the ticks before it), as the official `decode_predictions(..., return_wait_times=True)`;
        -1 where nothing was emitted."""
        before = torch.cat([self.ticks.new_full((self.ticks.shape[0], 1), -1), self.ticks[:, :-1]], dim=1)
        return torch.where(self.ticks >= 0, self.ticks - before - 1, -1)


def decode(predictions: Tensor, width: int = 0) -> Decoded:
    """Greedy (best-path) decoding of predictions (B, C, T), the blank last (module docstring). The order is
    padded to at least `width` columns."""
    B, C, T = predictions.shape
    best = predictions.argmax(1)  # (B, T)
    blank = best == C - 1
    # The last emitted class before tick t is the last non-blank best class before t: a non-blank class is
    # skipped only when it equals the last emitted one, which it then stays.
    ticks = torch.arange(T, device=best.device).expand(B, T)
    last_seen = torch.where(blank, -1, ticks).cummax(1).values  # (B, T): last non-blank tick <= t
    previous = torch.cat([best.new_full((B, 1), -1), last_seen[:, :-1]], dim=1)  # last non-blank tick < t
    previous_class = torch.where(previous >= 0, best.gather(1, previous.clamp(min=0)), -1)
    emitted = ~blank & (best != previous_class)
    count = emitted.sum(1)
    width = max(int(count.max()) if B else 0, width)
    # Emitted ticks first, in order (a stable sort of "not emitted"), then padding.
    rank = torch.argsort((~emitted).to(torch.int8), dim=1, stable=True)[:, :width]  # (B, width) if T >= width
    if rank.shape[1] < width:
        rank = torch.cat([rank, rank.new_zeros(B, width - rank.shape[1])], dim=1)
    valid = torch.arange(width, device=best.device) < count[:, None]
    order = torch.where(valid, best.gather(1, rank), -1)
    at = torch.where(valid, rank, -1)
    return Decoded(emitted, best, order, at, count)


def element_hits(order: Tensor, targets: Tensor) -> Tensor:
    """(B, N) whether each position of the decoded `order` (B, >= N, padded -1) holds the target's index there.
    A sample that emitted too few elements misses the rest; elements beyond N are not counted here (a sequence
    with them is not whole, `sequence_hits`)."""
    return order[:, :targets.shape[1]] == targets


def sequence_hits(order: Tensor, count: Tensor, targets: Tensor) -> Tensor:
    """(B,) whether the decoded order is exactly the target (N elements, each right)."""
    return element_hits(order, targets).all(1) & (count == targets.shape[1])
