"""End to end: a BadNets-poisoned digits model learns the backdoor and keeps its benign accuracy."""

from __future__ import annotations

import torch
from torch import nn

from backdoorkit.attacks import build_attack
from backdoorkit.data import ImageSet
from backdoorkit.metrics import backdoor_metrics, benign_accuracy
from conftest import train_digits


def test_badnets_digits_asr_and_ba(
    digits_train: ImageSet, digits_test: ImageSet, clean_model: nn.Module
) -> None:
    attack = build_attack("badnets")  # defaults: 3x3 white patch bottom-right, rate 0.1, target 0
    poisoned = attack.poison(digits_train, seed=0)
    assert poisoned.count == round(0.1 * len(digits_train))
    assert bool((poisoned.data.y[poisoned.mask] == 0).all())
    assert not bool((digits_train.y[poisoned.mask] == 0).any())  # dirty label: non-target rows only
    # the patch is in the shipped uint8 images
    assert bool((poisoned.data.x[poisoned.mask][..., -3:, -3:] == 255).all())

    # the digits recipe at width 8, exactly as the clean_model fixture (conftest) is trained
    model = train_digits(poisoned.data, seed=0)  # shared with every test asking for the same model
    metrics = backdoor_metrics(model, digits_test, attack)
    clean_ba = benign_accuracy(clean_model, digits_test)
    assert metrics["asr"] >= 0.90, metrics
    assert metrics["asr_quantized"] >= 0.90, metrics
    assert abs(metrics["ba"] - clean_ba) <= 0.03, (metrics, clean_ba)
    # the clean model does not respond to the patch
    clean = backdoor_metrics(clean_model, digits_test, attack)
    assert clean["asr"] < 0.5, clean
    assert torch.isfinite(torch.tensor(list(metrics.values()))).all()
