"""Sorting: emit the indices that sort N numbers over the ticks, trained with CTC; the data, the loss and
decoding, the task and its pictures."""

from .ctc import Decoded, ctc_loss_over_ticks, decode, sort_loss
from .task import SortNumbers, SortResult, SortTask, sort_inputs

__all__ = ["Decoded", "SortNumbers", "SortResult", "SortTask", "ctc_loss_over_ticks", "decode", "sort_inputs",
           "sort_loss"]
