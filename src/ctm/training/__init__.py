"""Training and evaluation: `TrainConfig` and the loop, the certainty loss, evaluation (full and
halted), DistributedDataParallel helpers."""
