"""Tasks as plug-ins: each brings its data, input encoder and output shape (as CTMConfig fields), loss,
metrics and pictures to the one CTM core (see `ctm.tasks.base`). Built in: "image" (classification of
MNIST-like images; the task of runs that record none) and "parity" (cumulative parity of +-1 sequences)."""

from .base import TASKS, Dataset, Sampler, Task, make_task, register_task, task_from_record
from .image.task import ImageTask
from .parity.task import ParityTask

__all__ = ["TASKS", "Dataset", "ImageTask", "ParityTask", "Sampler", "Task", "make_task", "register_task",
           "task_from_record"]
