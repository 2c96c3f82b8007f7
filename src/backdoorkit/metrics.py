"""Metrics, exactly as the design defines them.

* BA: accuracy on the clean test set (:func:`benign_accuracy`).
* ASR: among test images whose true class is not the target, the fraction classified as the target
  after the trigger is applied; for all-to-all attacks every image counts and the target is its
  mapped class (:func:`attack_success_rate`).  Triggered images are evaluated in float and, as an
  image file would carry them, quantised to uint8.
* Detection: AUROC and TPR at fixed FPR (1 %, 5 %) of suspicion scores on clean vs triggered inputs.
* Isolation: precision / recall of an isolated set against the poisoned mask.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from backdoorkit.data.imageset import ImageSet, quantize
from backdoorkit.train import evaluate, predict_labels


class Trigger(Protocol):
    """What ASR needs from an attack: a batched trigger and the target mapping."""

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...

    def target_labels(self, y: torch.Tensor) -> torch.Tensor: ...

    def asr_mask(self, y: torch.Tensor) -> torch.Tensor: ...


def benign_accuracy(model: nn.Module, test: ImageSet) -> float:
    """BA: accuracy on the clean test set."""
    return evaluate(model, test)


def attack_success_rate(
    model: nn.Module,
    test: ImageSet,
    attack: Trigger,
    *,
    quantized: bool = False,
    batch_size: int | None = None,
) -> float:
    """ASR of ``attack`` against ``model`` on the eligible images of ``test``."""
    eligible = attack.asr_mask(test.y)
    x, y = test.x[eligible.to(test.x.device)], test.y[eligible.to(test.y.device)]
    if len(y) == 0:
        return float("nan")
    target = attack.target_labels(y)

    def trig(xb: torch.Tensor) -> torch.Tensor:
        out = attack.apply(xb)
        return quantize(out).float().div_(255.0) if quantized else out

    pred = predict_labels(model, x, batch_size=batch_size, transform=trig)
    return float((pred.cpu() == target.cpu()).float().mean())


def backdoor_metrics(model: nn.Module, test: ImageSet, attack: Trigger | None) -> dict[str, float]:
    """``{"ba", "asr", "asr_quantized"}`` (ASR keys only when an attack is given)."""
    out = {"ba": benign_accuracy(model, test)}
    if attack is not None:
        out["asr"] = attack_success_rate(model, test, attack)
        out["asr_quantized"] = attack_success_rate(model, test, attack, quantized=True)
    return out


def auroc(clean_scores: torch.Tensor | np.ndarray, poisoned_scores: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve, poisoned = positive, higher score = more suspicious."""
    from sklearn.metrics import roc_auc_score

    c, p = _np(clean_scores), _np(poisoned_scores)
    labels = np.concatenate([np.zeros(len(c)), np.ones(len(p))])
    return float(roc_auc_score(labels, np.concatenate([c, p])))


def tpr_at_fpr(
    clean_scores: torch.Tensor | np.ndarray, poisoned_scores: torch.Tensor | np.ndarray, fpr: float
) -> float:
    """Fraction of poisoned inputs flagged when the threshold lets ``fpr`` of clean inputs through.

    The threshold is the ``1 - fpr`` quantile of the clean scores ("higher" interpolation), and an
    input is flagged when its score is strictly above it.
    """
    c, p = _np(clean_scores), _np(poisoned_scores)
    threshold = np.quantile(c, 1 - fpr, method="higher")
    return float((p > threshold).mean())


def detection_metrics(clean_scores: torch.Tensor, poisoned_scores: torch.Tensor) -> dict[str, float]:
    return {
        "auroc": auroc(clean_scores, poisoned_scores),
        "tpr_at_1fpr": tpr_at_fpr(clean_scores, poisoned_scores, 0.01),
        "tpr_at_5fpr": tpr_at_fpr(clean_scores, poisoned_scores, 0.05),
    }


def isolation_metrics(isolated: torch.Tensor, poisoned_mask: torch.Tensor) -> dict[str, float]:
    """Precision and recall of an isolated index set (or boolean mask) against the poisoned mask."""
    mask = poisoned_mask.cpu().bool()
    iso = torch.zeros_like(mask)
    iso_idx = isolated.cpu()
    if iso_idx.dtype == torch.bool:
        iso = iso_idx
    else:
        iso[iso_idx.long()] = True
    tp = int((iso & mask).sum())
    precision = tp / max(int(iso.sum()), 1)
    recall = tp / max(int(mask.sum()), 1)
    return {"precision": precision, "recall": recall, "isolated": int(iso.sum())}


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().reshape(-1)
    return np.asarray(x, dtype=np.float64).reshape(-1)


@dataclass
class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    seconds: float = 0.0
    _start: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    with Timer() as t:
        out = fn()
    return out, t.seconds
