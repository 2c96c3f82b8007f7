"""Neural Cleanse mitigation by unlearning: fine-tune with the recovered trigger and the true labels.

Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", IEEE
S&P 2019, section VI-C ("patching via unlearning").  Scenario S1 (a model repair).

1. Run Neural Cleanse (:mod:`backdoorkit.defenses.neural_cleanse`) on the clean samples: the mask and
   pattern of the suspected target (the class with the smallest trigger).
2. Build the unlearning set: the clean samples with the recovered trigger stamped on a seeded
   ``fraction`` of them (20 %, the paper's choice) **keeping their true labels**.
3. Fine-tune the whole model on it (:func:`backdoorkit.defenses.finetune.finetune`, SSFT's fine-tuning
   defaults: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, 10 epochs, at least 400 steps).

``only_if_infected`` (default False) returns the model unchanged when Neural Cleanse does not flag it;
by default the smallest trigger is unlearned either way (on a clean model it is a universal
adversarial patch, and unlearning it costs little).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from backdoorkit.data.imageset import ImageSet, quantize
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._trigger_reverse import ReverseParams, reverse_engineer
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune
from backdoorkit.defenses.neural_cleanse import PAPER, nc_verdict
from backdoorkit.jsonable import to_jsonable


class NCUnlearnParams(TuneParams):
    """The fine-tuning (its ``lr``, ``batch_size``, ``steps`` ...), the stamped fraction, and the Neural
    Cleanse search as a nested mapping ``nc`` (its own ``lr`` / ``batch_size``; defaults in
    :class:`~backdoorkit.defenses._trigger_reverse.ReverseParams`)."""

    nc: ReverseParams = Field(default_factory=ReverseParams)
    fraction: float = Field(0.2, gt=0, le=1)
    only_if_infected: bool = False


def stamped_set(
    clean: ImageSet, mask: torch.Tensor, pattern: torch.Tensor, fraction: float, seed: int
) -> ImageSet:
    """``clean`` with ``(1 - mask) * x + mask * pattern`` on a seeded ``fraction`` of rows, labels kept."""
    n = len(clean)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 29)
    rows = torch.randperm(n, generator=gen)[: max(1, round(fraction * n))].to(clean.x.device)
    x = clean.x.clone()
    px = clean.pixels(rows)
    m, p = mask.to(px.device), pattern.to(px.device)
    x[rows] = quantize((1 - m) * px + m * p)
    return clean.with_data(x, name=f"{clean.name}+nc_trigger")


@register_defense
class NCUnlearn(ModelRepair):
    """Neural Cleanse + unlearning: fine-tune on clean samples, 20 % carrying the recovered trigger."""

    name = "nc_unlearn"
    revision = 1  # numpy-style medians in the anomaly index (2026-12-05)
    paper = PAPER
    Params = NCUnlearnParams

    params: NCUnlearnParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        rev = reverse_engineer(model, clean.pixels(), clean.num_classes, p.nc, seed=seed)
        v = nc_verdict(rev, p.nc.anomaly_threshold)
        suspect = int(v.scores["suspect"])
        info = {"infected": v.infected, "suspect": suspect, "anomaly_index": v.anomaly_index}
        metrics = {"nc_anomaly_index": float(v.anomaly_index or 0.0), "nc_infected": float(v.infected)}
        if p.only_if_infected and not v.infected:
            return DefenseResult(model, {**info, "unlearned": False}, verdict=v, metrics=metrics)
        data = stamped_set(clean, rev.mask[suspect], rev.pattern[suspect], p.fraction, seed)
        _, tuned = finetune(model, data, p, None, seed=seed, device=device)
        info = {**info, "unlearned": True, "finetune": to_jsonable(tuned)}
        return DefenseResult(model, info, verdict=v, metrics=metrics)
