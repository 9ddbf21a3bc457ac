"""Data on disk and in memory: the IDX format, known datasets and their verified download, image datasets
(in memory, sampled across ranks, augmented) and folders of your own images."""
