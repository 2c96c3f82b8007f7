"""STRIP: flag inputs whose prediction survives strong superimposition (low entropy = triggered).

Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks", ACSAC 2019 (official
Keras notebook: garrisongys/STRIP).  Scenario S1: the suspicious model and the defender's clean samples.

* **Perturbation.** Each input is superimposed with ``n`` (100) images drawn at random from the
  defender's clean samples: ``clamp(alpha * x + beta * x_overlay, 0, 1)``.  Default ``alpha = beta =
  1`` (the official saturating addition); TrojanZoo / BackdoorBench / ART average instead (``alpha =
  beta = 0.5``, or ``beta = 0.5`` with ``alpha = 1``): set the two weights.
* **Score.** The Shannon entropy (nats) of the model's softmax on each superimposed copy, averaged over
  the ``n`` copies.  A trigger that dominates the prediction keeps the entropy low, so the detector's
  suspicion is the *negative* mean entropy (higher = more suspicious).
* **Threshold.** Fitted on the clean samples only: ``rule="normal"`` (default, official) fits a normal
  distribution to the clean entropies and takes its ``frr`` (1 %) quantile
  (``torch.distributions.Normal.icdf``); ``rule="quantile"`` takes the empirical ``frr`` quantile.
  The clean entropies come from at most ``fit_samples`` (2,000: the number of clean inputs Gao et al.
  evaluate) of the clean samples, a seeded draw; the overlays still come from all of them.  With the
  defender's 5,000 CIFAR-10 images the fit costs 200,000 forward passes instead of 500,000 (a ViT
  cell of ``badres_cifar10_cpu`` spent 21 minutes in STRIP with the whole pool).
  An input is flagged when its entropy is below that value.  Where the normal fit puts the boundary at
  or below 0 (a confident model: clean entropies pile up near 0 with a long tail), that threshold could
  never fire, so the empirical quantile is used and ``info["rule_used"]`` says so.

Batched: a chunk of ``chunk`` inputs and all their ``n`` overlays go through the model together
(``chunk x n`` images, in inference batches: 128 on CPU); no per-image Python.  Overlays come from a
generator seeded at ``fit``, so scoring is reproducible.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._trigger_reverse import model_device
from backdoorkit.defenses.base import DefenseParams, InputDetector
from backdoorkit.device import autocast, eval_mode
from backdoorkit.errors import ScenarioError
from backdoorkit.train import forward_in_batches

PAPER = "Gao et al., STRIP: A Defence Against Trojan Attacks on Deep Neural Networks, ACSAC 2019"


class StripParams(DefenseParams):
    """Overlays per input, blend weights, threshold rule and false-rejection rate (see module docstring)."""

    n: int = Field(100, ge=1)
    alpha: float = Field(1.0, gt=0)
    beta: float = Field(1.0, gt=0)
    frr: float = Field(0.01, gt=0, lt=1)
    rule: Literal["normal", "quantile"] = "normal"
    chunk: int = Field(32, ge=1)
    fit_samples: int | None = Field(2000, ge=2, description="clean inputs whose entropies set the threshold")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax of each row."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def entropy_boundary(ent: torch.Tensor, rule: str, frr: float) -> tuple[float, str]:
    """The entropy below which an input is flagged, fitted on clean entropies ``ent``, and the rule
    that produced it.

    ``rule="normal"`` takes the ``frr`` quantile of a normal fitted to ``ent``.  Entropy is bounded
    below by 0 and, for a confident model, piles up near 0 with a long right tail; the normal fit then
    puts its 1 % quantile at or below 0, a threshold that can never fire.  In that case (boundary
    <= 0) the empirical ``frr`` quantile is used instead and the returned rule says so
    (``"quantile (normal fit <= 0)"``).  ``rule="quantile"`` always takes the empirical quantile.
    """
    ent = ent.double()
    if rule == "normal":
        dist = torch.distributions.Normal(ent.mean(), ent.std().clamp_min(1e-12) if len(ent) > 1 else 1e-12)
        boundary = float(dist.icdf(torch.tensor(frr, dtype=torch.float64)))
        if boundary > 0:
            return boundary, "normal"
        return float(torch.quantile(ent, frr)), "quantile (normal fit <= 0)"
    return float(torch.quantile(ent, frr)), "quantile"


@register_defense
class Strip(InputDetector):
    """STRIP: mean prediction entropy under ``n`` clean overlays; low entropy is flagged."""

    name = "strip"
    paper = PAPER
    Params = StripParams

    params: StripParams

    def fit(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> Strip:
        if len(clean) == 0:
            raise ScenarioError("strip needs at least one clean sample")
        self.model = model
        self.device = model_device(model)
        self.pool = clean.pixels().to(self.device)
        self.gen = torch.Generator().manual_seed(104_729 * seed + 11)
        p = self.params
        fitted = self.pool
        if p.fit_samples is not None and len(fitted) > p.fit_samples:
            fitted = fitted[torch.randperm(len(fitted), generator=self.gen)[: p.fit_samples].to(self.device)]
        ent = self.entropies(fitted)
        boundary, used = entropy_boundary(ent, p.rule, p.frr)
        self.threshold = -boundary
        self.info = {
            "rule": p.rule,
            "rule_used": used,
            "entropy_boundary": boundary,
            "overlays": p.n,
            "pool": len(clean),
            "fit_samples": len(fitted),
        }
        self.fit_metrics = {
            "clean_entropy_mean": float(ent.mean()),
            "clean_entropy_std": float(ent.std()) if len(ent) > 1 else 0.0,
        }
        return self

    @torch.no_grad()
    def entropies(self, x: torch.Tensor) -> torch.Tensor:
        """Mean entropy over ``n`` clean overlays of each float image in ``x`` (on the model's device)."""
        p = self.params
        x = x.to(self.device)
        out = []
        with eval_mode(self.model), autocast(self.device):
            for start in range(0, len(x), p.chunk):
                xb = x[start : start + p.chunk]
                idx = torch.randint(len(self.pool), (len(xb), p.n), generator=self.gen).to(self.device)
                mixed = (p.alpha * xb[:, None] + p.beta * self.pool[idx]).clamp_(0, 1)
                logits = forward_in_batches(self.model, mixed.flatten(0, 1))
                out.append(entropy(logits).view(len(xb), p.n).mean(1))
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "pool"):
            raise ScenarioError("strip: fit() the detector before scoring inputs")
        return -self.entropies(x)
