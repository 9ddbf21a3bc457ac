"""Cumulative parity: say at every position of a +-1 sequence whether the -1s so far are odd; the data, the
task and its pictures."""

from .task import ParitySequences, ParityTask, parity_sequences, parity_targets

__all__ = ["ParitySequences", "ParityTask", "parity_sequences", "parity_targets"]
