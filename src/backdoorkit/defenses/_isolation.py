"""Loss-based isolation of suspicious training rows, shared by ABL and PT.

Both defenses rank the rows of the untrusted training set by the per-sample cross-entropy of a
model trained on it and set the lowest-loss fraction apart: backdoor samples are learnt faster and
more completely than clean ones (Li et al., "Anti-Backdoor Learning", NeurIPS 2021; Li & Gao,
"Partial train and isolate, mitigate backdoor attack", 2024).  Then both train on the rest while
ascending the loss on the isolated rows; :func:`split_loss` is that objective, for
:func:`backdoorkit.train.fit`'s ``loss_fn`` (rows are told apart by ``Batch.idx``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.train import Batch, LossFn, predict


@torch.no_grad()
def per_sample_loss(model: nn.Module, data: ImageSet, batch_size: int | None = None) -> torch.Tensor:
    """Cross-entropy of every row of ``data`` under ``model`` (eval mode, no augmentation), computed in
    float64 so that near-zero losses still rank (in float32 many round to exactly 0); CPU."""
    logits = predict(model, data.x, batch_size=batch_size)
    return F.cross_entropy(logits.double(), data.y.to(logits.device), reduction="none").cpu()


def lowest_fraction(losses: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the ``fraction`` of rows with the lowest loss (at least one row); ties by index."""
    n = len(losses)
    k = min(n, max(1, round(fraction * n)))
    order = torch.argsort(losses, stable=True)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def split_loss(isolated: torch.Tensor, ascent_weight: float, label_smoothing: float = 0.0) -> LossFn:
    """``CE(kept rows) - ascent_weight * CE(isolated rows)``, each term a mean over its rows in the batch.

    ``isolated`` is a bool mask over the training rows (moved to the batch's device on first use).
    A batch without rows of one kind simply lacks that term.
    """
    cache: dict[torch.device, torch.Tensor] = {}

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        dev = batch.idx.device
        if dev not in cache:
            cache[dev] = isolated.to(dev)
        iso = cache[dev][batch.idx].float()
        logits = model(batch.x)
        ce = F.cross_entropy(logits.float(), batch.y, reduction="none", label_smoothing=label_smoothing)
        kept = 1.0 - iso
        keep_term = (ce * kept).sum() / kept.sum().clamp_min(1.0)
        iso_term = (ce * iso).sum() / iso.sum().clamp_min(1.0)
        return keep_term - ascent_weight * iso_term, logits

    return loss


__all__ = ["lowest_fraction", "per_sample_loss", "split_loss"]
