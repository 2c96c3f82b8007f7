"""The embedded default dataset: scikit-learn's handwritten digits, resized to 32x32.

scikit-learn ships the 1,797 8x8 images (grey levels 0-16) of the UCI "optical recognition of
handwritten digits" set, so this needs no download.  We rescale them to 0-255, upsample bilinearly to
32x32 so the same models and triggers apply as for CIFAR, and split them once with a fixed seed into
1,438 training and 359 test images (stratified, 80/20).  Horizontal flips are not allowed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.sources import DatasetSource, LoadOptions, register_source
from backdoorkit.data.splits import stratified_indices

DIGITS_SEED = 20240613
DIGITS_TEST_FRACTION = 0.2


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 images (0-16) and labels.

    Read straight from the CSV scikit-learn ships (importing ``sklearn.datasets`` costs seconds);
    falls back to ``load_digits`` if the file is not where scikit-learn keeps it.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as fh:
                table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
            return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _digits_tensors(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _read_digits()
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).mul(255).round().to(torch.uint8)
    y = torch.as_tensor(labels, dtype=torch.int64)
    return x, y


def load_digits_split(split: str, options: LoadOptions) -> ImageSet:
    size = options.image_size or 32
    x, y = _digits_tensors(size)
    test_idx = stratified_indices(y, round(DIGITS_TEST_FRACTION * len(y)), DIGITS_SEED, 10)
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[test_idx] = True
    keep = mask if split == "test" else ~mask
    return ImageSet(
        x=x[keep].clone(),
        y=y[keep].clone(),
        classes=tuple(str(i) for i in range(10)),
        name=f"digits/{split}",
        hflip=False,
    )


DIGITS = register_source(
    DatasetSource(
        name="digits",
        description="scikit-learn handwritten digits (embedded), upsampled to 32x32, 1438/359 split",
        hflip=False,
        builtin=load_digits_split,
    )
)
