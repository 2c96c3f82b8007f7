"""Datasets: the in-memory :class:`ImageSet`, loaders for the standard on-disk formats, splits, batching."""

from backdoorkit.data import digits as _digits  # noqa: F401  (registers the embedded dataset)
from backdoorkit.data.batching import index_batches, iterate, standard_augmentation
from backdoorkit.data.imageset import ImageSet, concat, quantize, to_pixels
from backdoorkit.data.loading import available, data_roots, load_dataset
from backdoorkit.data.sources import DATASETS, DatasetSource, LoadOptions
from backdoorkit.data.splits import resolve_count, split_holdout, stratified_indices, take_fraction

__all__ = [
    "DATASETS",
    "DatasetSource",
    "ImageSet",
    "LoadOptions",
    "available",
    "concat",
    "data_roots",
    "index_batches",
    "iterate",
    "load_dataset",
    "quantize",
    "resolve_count",
    "split_holdout",
    "standard_augmentation",
    "stratified_indices",
    "take_fraction",
    "to_pixels",
]
