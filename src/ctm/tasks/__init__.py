"""Tasks as plug-ins: each brings its data, input encoder and output shape (as CTMConfig fields), loss,
metrics, pictures and viewer panel to the one CTM core (see `ctm.tasks.base`). Built in, one folder each:
"image" (classification of MNIST-like images; the task of runs that record none) and "parity" (cumulative
parity of +-1 sequences), "sort" (the indices that sort N numbers, emitted over the ticks with CTC), "maze"
(the route through a maze picture, as moves) and "qamnist" (arithmetic over MNIST digits seen one by one).
A task of your own package is `ctm train --task mypackage.tasks:MyTask`."""

from .base import (
    DEFAULT_TASK,
    TASKS,
    Dataset,
    Example,
    Metrics,
    Prediction,
    Preset,
    Sampler,
    Task,
    make_task,
    model_preset,
    register_task,
    resolve_task,
    task_from_record,
)
from .image.task import ImageTask
from .maze.task import MazeTask
from .parity.task import ParityTask
from .qamnist.task import QAMNISTTask
from .sort.task import SortTask

__all__ = ["DEFAULT_TASK", "TASKS", "Dataset", "Example", "ImageTask", "MazeTask", "Metrics", "ParityTask",
           "Prediction", "Preset", "QAMNISTTask", "Sampler", "SortTask", "Task", "make_task", "model_preset",
           "register_task", "resolve_task", "task_from_record"]
