"""Data on disk and in memory: the IDX format, known datasets and their verified download, image datasets
(in memory, sampled across ranks, augmented) and folders of your own images."""


def __getattr__(name: str):  # the names of the module ctm.data of earlier versions (ctm/_moved.py)
    from ctm._moved import moved_name

    return moved_name(__name__, name)
