"""Sampling across ranks: seeds mixed from (seed, index) and index batches deterministic in (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["STREAM_EPOCH", "EpochSampler", "StreamSampler", "mix_seed"]

#: nominal samples per "epoch" of a generated training stream (it never repeats within a run)
STREAM_EPOCH = 2**40


def mix_seed(seed: int, epoch: int) -> int:
    """A well-spread 63-bit seed from (seed, epoch) (splitmix64 finaliser), so nearby pairs don't collide."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


class EpochSampler:
    """Index batches for each epoch, deterministic in (seed, epoch) and shardable across ranks.

    The permutation of epoch ``e`` is ``torch.randperm(N)`` drawn from a fresh generator seeded from
    (seed, e), so it does not depend on what came before: training resumes mid-epoch with
    ``batches(epoch, start=k)``, which yields exactly what ``batches(epoch)`` would from its k-th batch on.

    `batch_size` is the *global* batch size B. With ``world_size > 1`` each global batch (a contiguous
    run of B indices of the permutation) is split into world_size contiguous chunks of B // world_size,
    and rank r takes chunk r: the ranks' shards of one step are disjoint and together make the global
    batch, and every rank sees the same number of steps. B must be divisible by world_size. With
    ``drop_last=False`` the last, short global batch is split as evenly as possible (sizes differ by at
    most one; a rank may get an empty batch when fewer samples than ranks remain), so prefer
    ``drop_last=True`` for distributed training.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} must be divisible by world_size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size

    @property
    def local_batch_size(self) -> int:
        """Indices per rank in a full global batch: batch_size // world_size."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        """Steps (global batches) per epoch, the same on every rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The whole epoch's order, (N,) int64; the identity when shuffle is False."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """This rank's index tensors for epoch `epoch`, from global batch number `start` on."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        perm = self.permutation(epoch)  # (N,)
        b, local = self.batch_size, self.local_batch_size
        for step in range(start, len(self)):
            chunk = perm[step * b : (step + 1) * b]  # (<= B,)
            if chunk.numel() == b:
                yield chunk[self.rank * local : (self.rank + 1) * local]
            else:
                yield torch.tensor_split(chunk, self.world_size)[self.rank]

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Batches of epoch 0 (use `batches(epoch)` to choose the epoch)."""
        return self.batches(0)


class StreamSampler:
    """Consecutive indices of an endless stream: global batch s is indices s*B .. (s+1)*B - 1, rank r taking
    its contiguous share. Epochs are nominal (`STREAM_EPOCH` samples)."""

    def __init__(self, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} must be divisible by world_size {world_size}")
        self.batch_size, self.rank, self.local = batch_size, rank, batch_size // world_size

    def __len__(self) -> int:
        return STREAM_EPOCH // self.batch_size

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        first = epoch * len(self) + start
        for step in range(first, (epoch + 1) * len(self)):
            begin = step * self.batch_size + self.rank * self.local
            yield torch.arange(begin, begin + self.local)
