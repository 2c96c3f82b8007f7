"""Deterministic, stratified splits (train -> train + clean holdout, surrogate sets, ...)."""

from __future__ import annotations

import torch

from backdoorkit.data.imageset import ImageSet
from backdoorkit.errors import ConfigError


def check_amount(amount: object, what: str = "amount", *, positive: bool = False) -> float | int:
    """Validate "a fraction or a count": a float in ``[0, 1]`` or an int ``>= 0`` (``> 0`` when
    ``positive``); returns it unchanged.  The one rule for poison rates, holdout sizes and subsets."""
    if isinstance(amount, bool) or not isinstance(amount, float | int):
        raise ConfigError(f"{what} must be a fraction or a count, got {amount!r}")
    if isinstance(amount, float):
        if not (0.0 < amount <= 1.0 if positive else 0.0 <= amount <= 1.0):
            span = "(0, 1]" if positive else "[0, 1]"
            raise ConfigError(f"{what} {amount} is not a fraction in {span} (pass an int for a count)")
    elif amount < (1 if positive else 0):
        raise ConfigError(f"{what} {amount} is not a count >= {1 if positive else 0}")
    return amount


def parse_amount(value: float, what: str = "amount", *, positive: bool = False) -> float | int:
    """A number typed on the command line: below 1 a fraction, from 1 up a whole count."""
    if value >= 1:
        if value != int(value):
            raise ConfigError(f"{what} {value}: a fraction is below 1, a count a whole number")
        return check_amount(int(value), what, positive=positive)
    return check_amount(float(value), what, positive=positive)


def resolve_count(amount: float | int, total: int, what: str = "amount") -> int:
    """A fraction in ``[0, 1]`` (float) or an absolute count (int) -> a count in ``[0, total]``."""
    check_amount(amount, what)
    if isinstance(amount, float):
        return round(amount * total)
    if amount > total:
        raise ConfigError(f"{what} {amount} is not a count in [0, {total}]")
    return int(amount)


def stratified_indices(y: torch.Tensor, count: int, seed: int, num_classes: int) -> torch.Tensor:
    """``count`` indices drawn so that every class keeps its share (largest-remainder rounding).

    The draw depends only on ``(y, count, seed)``, never on the device.
    """
    y = y.cpu()
    n = y.numel()
    if count >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(y, minlength=num_classes).double()
    quota = counts * count / max(n, 1)
    take = quota.floor().long()
    remainder = int(count - take.sum())
    if remainder > 0:
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:remainder]] += 1
    perm = torch.randperm(n, generator=gen)
    chosen = []
    ys = y[perm]
    for c in range(num_classes):
        chosen.append(perm[ys == c][: int(take[c])])
    return torch.sort(torch.cat(chosen)).values


def split_holdout(
    data: ImageSet, amount: float | int, seed: int = 0, *, name: str = "holdout"
) -> tuple[ImageSet, ImageSet]:
    """Split ``data`` into ``(rest, holdout)``; the holdout is stratified and ``amount`` big."""
    count = resolve_count(amount, len(data), "holdout size")
    hold = stratified_indices(data.y, count, seed, data.num_classes).to(data.device)
    mask = torch.zeros(len(data), dtype=torch.bool, device=data.device)
    mask[hold] = True
    base = data.name.split("/")[0]
    return data.subset(~mask, name=f"{base}/train-rest"), data.subset(mask, name=f"{base}/{name}")


def take_fraction(data: ImageSet, amount: float | int, seed: int = 0) -> ImageSet:
    """A stratified sample of ``data`` of the given fraction or count."""
    return split_holdout(data, amount, seed)[1]
