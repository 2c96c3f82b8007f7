"""Channel pruning of the last feature maps: the part the ``pruning`` and ``fine_pruning`` defenses share.

Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID 2018.  The neurons pruned are the channels of the last convolutional feature maps
(for a residual network: the output of the last block, which the head reads after global average
pooling).  The procedure, on the defender's clean samples only:

1. split the clean samples (stratified, seeded) into a *ranking* part and a *held-out* part
   (``val_fraction``, default 0.3);
2. rank the channels by their mean activation on the ranking part (captured at the pooling layer with
   :func:`backdoorkit.models.taps.capture`: the spatial mean of each channel, averaged over images);
3. prune in increasing order of activation; for every prune count the held-out accuracy is computed
   at once (the pooled features are computed once, the head is re-applied with each channel mask);
   pruning stops before the first count whose held-out accuracy is more than ``max_drop`` (default
   0.10, BackdoorBench's and backdoor-toolbox's threshold) below the unpruned model's; at most
   ``max_ratio`` (default 0.95) of the channels are pruned.
4. a pruned channel is removed by zeroing its column of the linear head, so the model keeps its
   architecture (it saves and loads as the original one); :class:`KeepPruned` keeps the columns at
   zero while fine-pruning fine-tunes.

Never the test set, the trigger or the target: the choice uses only the held-out clean samples.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from backdoorkit.data import split_holdout
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.defenses.base import DefenseParams
from backdoorkit.defenses.finetune import head_name
from backdoorkit.device import autocast, eval_mode, resolve_device
from backdoorkit.errors import ConfigError
from backdoorkit.models.taps import capture
from backdoorkit.train import Batch, Callback, TrainState

PAPER = (
    "Liu, Dolan-Gavitt & Garg, Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural "
    "Networks, RAID 2018"
)
_CHUNK = 1 << 24
"""Elements per chunk when the head is applied to every prune count at once."""


class PruneParams(DefenseParams):
    """Pruning parameters (defaults in the module docstring)."""

    max_drop: float = Field(0.10, ge=0, le=1, description="allowed held-out accuracy drop")
    max_ratio: float = Field(0.95, gt=0, lt=1, description="most channels pruned, as a fraction")
    val_fraction: float = Field(0.3, gt=0, lt=1, description="held-out part of the clean samples")
    pool: str | None = Field(None, description="module whose output is the pooled feature vector")


def _pool_name(model: nn.Module, p: PruneParams) -> str:
    name = p.pool or getattr(model, "pool_name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{type(model).__name__}: name the pooling module with pool=")
    return name


def linear_head(model: nn.Module) -> nn.Linear:
    head = model.get_submodule(head_name(model))
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"pruning needs a linear head, {type(model).__name__} has {type(head).__name__}")
    return head


@torch.no_grad()
def pooled_features(
    model: nn.Module, data: ImageSet, pool: str, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """``[N, C]`` float: the pooled last feature maps (per-channel spatial means) of ``data``."""
    model.to(device)
    out = []
    with eval_mode(model), capture(model, [pool], detach=True) as acts:
        for start in range(0, len(data), batch_size):
            x = to_pixels(data.x[start : start + batch_size].to(device))
            with autocast(device):
                model(x)
            out.append(acts[pool].float().flatten(1))
    return torch.cat(out)


@torch.no_grad()
def pruned_accuracies(
    head: nn.Linear, feats: torch.Tensor, y: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """Accuracy with the first ``k`` channels of ``order`` pruned, for ``k = 0 .. C`` (``[C + 1]``)."""
    c = feats.shape[1]
    rank = torch.empty(c, dtype=torch.long, device=feats.device)
    rank[order] = torch.arange(c, device=feats.device)
    counts = torch.arange(c + 1, device=feats.device)
    keep = (rank[None, :] >= counts[:, None]).to(feats.dtype)  # [C + 1, C]
    w, b = head.weight.float(), head.bias.float() if head.bias is not None else None
    step = max(1, _CHUNK // max(1, feats.shape[0] * c))
    accs = []
    for start in range(0, c + 1, step):
        masked = feats[None] * keep[start : start + step, None, :]  # [k, N, C]
        logits = masked @ w.T + (b if b is not None else 0.0)
        accs.append((logits.argmax(-1) == y[None]).float().mean(1))
    return torch.cat(accs)


def zero_columns(head: nn.Linear, channels: torch.Tensor) -> None:
    """Remove ``channels`` from the head's input (their weight columns set to zero)."""
    with torch.no_grad():
        head.weight[:, channels.to(head.weight.device)] = 0


class KeepPruned(Callback):
    """Keeps the pruned channels' head columns at zero after every optimiser step."""

    def __init__(self, head: nn.Linear, channels: torch.Tensor) -> None:
        self.head, self.channels = head, channels

    def on_step_end(self, state: TrainState, batch: Batch, loss: torch.Tensor) -> None:
        zero_columns(self.head, self.channels)


def prune_last_channels(
    model: nn.Module, clean: ImageSet, p: PruneParams, *, seed: int, device: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Prune ``model`` in place (see the module docstring); returns the pruned channels and a summary."""
    dev = resolve_device(device)
    head = linear_head(model)
    pool = _pool_name(model, p)
    rank_part, held_out = split_holdout(clean, p.val_fraction, seed, name="prune-val")
    feats = pooled_features(model, rank_part, pool, dev)
    if feats.shape[1] != head.in_features:
        raise ConfigError(
            f"the output of {pool!r} has {feats.shape[1]} values per image, the head reads {head.in_features}"
        )
    activation = feats.mean(0)
    order = torch.argsort(activation)  # least active first
    val_feats = pooled_features(model, held_out, pool, dev)
    accs = pruned_accuracies(head, val_feats, held_out.y.to(dev), order)
    limit = int(p.max_ratio * len(order))
    too_low = (accs < accs[0] - p.max_drop).nonzero().flatten()
    first_bad = int(too_low[0]) if len(too_low) else len(accs)
    count = max(0, min(first_bad - 1, limit))
    channels = order[:count].cpu()
    zero_columns(head, channels)
    info = {
        "pruned": count,
        "channels": len(order),
        "pruned_ratio": count / len(order),
        "held_out": len(held_out),
        "held_out_accuracy_before": float(accs[0]),
        "held_out_accuracy_after": float(accs[count]),
        "pruned_channels": channels.tolist(),
    }
    return channels, info
