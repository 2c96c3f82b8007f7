"""Datasets: the in-memory :class:`ImageSet`, loaders for the standard on-disk formats, splits, batching.

Importing this package registers every source and path format: ``digits`` (embedded), ``cifar10``
and ``cifar100`` (:mod:`.cifar`), ``mnist`` and ``fashion_mnist`` (:mod:`.idx`), ``gtsrb``
(:mod:`.gtsrb`), plus the path-only formats npz files (:mod:`.npz`) and image folders
(:mod:`.folder`).  See :mod:`.loading` for how names and paths are resolved.
"""

from backdoorkit.data import cifar as _cifar  # noqa: F401  (registers cifar10, cifar100)
from backdoorkit.data import digits as _digits  # noqa: F401  (registers the embedded dataset)
from backdoorkit.data import folder as _folder  # noqa: F401  (registers image folders)
from backdoorkit.data import gtsrb as _gtsrb  # noqa: F401  (registers gtsrb)
from backdoorkit.data import idx as _idx  # noqa: F401  (registers mnist, fashion_mnist)
from backdoorkit.data.batching import index_batches, standard_augmentation
from backdoorkit.data.imageset import ImageSet, concat, quantize, to_pixels
from backdoorkit.data.loading import (
    PATH_FORMATS,
    PathFormat,
    available,
    data_roots,
    load_dataset,
    register_path_format,
)
from backdoorkit.data.sources import DATASETS, DatasetSource, LoadOptions, register_source
from backdoorkit.data.splits import (
    check_amount,
    parse_amount,
    resolve_count,
    split_holdout,
    stratified_indices,
    take_fraction,
)

__all__ = [
    "DATASETS",
    "PATH_FORMATS",
    "DatasetSource",
    "ImageSet",
    "LoadOptions",
    "PathFormat",
    "available",
    "check_amount",
    "concat",
    "data_roots",
    "index_batches",
    "load_dataset",
    "parse_amount",
    "quantize",
    "register_path_format",
    "register_source",
    "resolve_count",
    "split_holdout",
    "standard_augmentation",
    "stratified_indices",
    "take_fraction",
    "to_pixels",
]
