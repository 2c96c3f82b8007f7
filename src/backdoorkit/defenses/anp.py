"""ANP: adversarial neuron pruning.

Wu & Wang, "Adversarial Neuron Perturbation Exposes Backdoors in Pretrained Models" (ANP), NeurIPS
2021 (official code: csdongxian/ANP_backdoor).  Scenario S1.

The neurons are the channels of every batch-norm layer.  Each ``BatchNorm2d`` is replaced (with
:func:`backdoorkit.models.taps.replace_modules`) by a perturbable one whose output is the normal
batch norm with the scale multiplied by ``mask + delta`` and the shift by ``1 + xi`` (``delta``,
``xi`` in ``[-eps, eps]`` when perturbed, 0 otherwise; running statistics are the suspicious model's
and stay fixed).  Then, for ``steps`` iterations on batches of the clean samples:

1. draw ``delta, xi ~ U(-eps, eps)`` and take one signed-gradient ascent step of size ``eps`` on the
   cross-entropy (the perturbation that hurts the model most), clipped to ``[-eps, eps]``;
2. update the masks with ``alpha * CE(unperturbed) + (1 - alpha) * CE(perturbed)`` by SGD (lr 0.2,
   momentum 0.9) and clip them to ``[0, 1]``.

Defaults (official): ``eps`` 0.4, ``alpha`` 0.2, mask lr 0.2, ``steps`` 2,000, batch 128.  On CPU
2,000 iterations take tens of minutes even on the digits data (three forward / backward passes of
the whole network per iteration); the tests and the CPU demo pass fewer (``steps=``); on an
accelerator the default runs in a minute or two.

**Pruning, without test ASR.**  A neuron is pruned (its batch-norm scale set to 0, as the official
pruning does) when its mask is below a threshold.  ``threshold=None`` (default) chooses it on the
defender's data: the clean samples are split (stratified, seeded) into an optimisation part and a
held-out part (``val_fraction`` 0.2); the masks are learnt on the first, and the threshold is the
largest of ``0, 0.05, ..., 0.9`` (the official sweep) whose held-out accuracy stays within
``tolerance`` (0.05) of the unpruned model's.  ``threshold=<float>`` fixes it (0.2 is the value the
ANP paper's figures centre on).  ``prune_by="number"`` is the official code's other mode: rank every
neuron by its mask and prune the ``k`` smallest, ``k`` swept over ``0, 20, 40, ...`` up to 1,000 (the
official step and bound; ``number_step``, ``max_number``), chosen by the same held-out rule, or fixed
with ``prune_count=<int>``.  It is finer where many masks sit at the same low value: a threshold then
prunes all of them at once, a count can stop part-way.  The result is the original architecture with
plain batch norm, so it saves and loads like the input model.

**Narrow models.**  At the official ``eps`` 0.4 the perturbation overwhelms narrow CIFAR-10 models and
the rule then prunes nothing: on WRN-16-1 (``repair_tar_table1_cpu``, 2,000 iterations) the final mixed
loss was 2.38 (chance is 2.30), 124 of 464 masks ended below 0.05, and pruning them left 10.5 %
held-out accuracy; ResNet-18 at width 16 behaved the same at 500 iterations.  The T&R paper tuned
``alpha`` for WRN-16-1 (its appendix B); a smaller ``eps`` or larger ``alpha`` is the defender-side
knob to try, judged on the held-out accuracy of the sweep (``info["sweep"]``), never on ASR.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from backdoorkit.data import split_holdout
from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune
from backdoorkit.errors import ConfigError
from backdoorkit.models.taps import replace_modules
from backdoorkit.train import Batch, Callback, LossFn, TrainState, evaluate

PAPER = "Wu & Wang, Adversarial Neuron Perturbation Exposes Backdoors in Pretrained Models, NeurIPS 2021"


class ANPParams(TuneParams):
    """Mask optimisation (the TuneParams fields, ANP's defaults) and the pruning rule."""

    steps: int | None = Field(2000, ge=1, description="mask-optimisation iterations")
    min_steps: int | None = Field(None, ge=1)
    lr: float = Field(0.2, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(0.4, ge=0)
    alpha: float = Field(0.2, ge=0, le=1)
    prune_by: Literal["threshold", "number"] = "threshold"
    threshold: float | None = Field(None, ge=0, le=1)
    max_threshold: float = Field(0.9, gt=0, le=1)
    threshold_step: float = Field(0.05, gt=0, le=1)
    tolerance: float = Field(0.05, ge=0, le=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    prune_count: int | None = Field(None, ge=0, description="prune_by=number: a fixed count")
    number_step: int = Field(20, ge=1)
    max_number: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _one_rule(self) -> ANPParams:
        if self.prune_by == "threshold" and self.prune_count is not None:
            raise ValueError("prune_count needs prune_by=number (the threshold rule uses threshold=)")
        if self.prune_by == "number" and self.threshold is not None:
            raise ValueError("threshold needs prune_by=threshold (the number rule uses prune_count=)")
        return self


class _Gate(nn.Module):
    """The mask of one batch-norm layer (its own module, so fine-tuning can train only the masks)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mask = nn.Parameter(torch.ones(channels))


class PerturbableBatchNorm2d(nn.BatchNorm2d):
    """Batch norm with a neuron mask and a bounded multiplicative perturbation (eval statistics)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.gate = _Gate(bn.num_features)
        self.register_buffer("delta", torch.zeros(bn.num_features), persistent=False)
        self.register_buffer("xi", torch.zeros(bn.num_features), persistent=False)
        self.perturbed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.gate.mask, 1.0
        if self.perturbed:
            scale, shift = scale + self.delta, 1.0 + self.xi
        weight = self.weight * scale if self.weight is not None else scale
        bias = self.bias * shift if self.bias is not None else None
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps)


def _noisy(model: nn.Module) -> list[PerturbableBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, PerturbableBatchNorm2d)]


def anp_loss(eps: float, alpha: float) -> LossFn:
    """One ANP iteration's objective: the worst-case perturbation step, then the mixed loss."""

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        layers = _noisy(model)
        if eps > 0:
            noise = [t for m in layers for t in (m.delta, m.xi)]
            with torch.no_grad():
                for t in noise:
                    t.uniform_(-eps, eps)
            for m in layers:
                m.perturbed = True
            for t in noise:
                t.requires_grad_(True)
            grads = torch.autograd.grad(F.cross_entropy(model(batch.x).float(), batch.y), noise)
            with torch.no_grad():
                for t, g in zip(noise, grads, strict=True):
                    t.add_(eps * g.sign()).clamp_(-eps, eps)
            for t in noise:
                t.requires_grad_(False)
            robust = F.cross_entropy(model(batch.x).float(), batch.y)
            for m in layers:
                m.perturbed = False
        logits = model(batch.x)
        natural = F.cross_entropy(logits.float(), batch.y)
        total = alpha * natural + (1 - alpha) * robust if eps > 0 else natural
        return total, logits

    return loss


class _ClipMasks(Callback):
    def __init__(self, layers: list[PerturbableBatchNorm2d]) -> None:
        self.layers = layers

    def on_step_end(self, state: TrainState, batch: Batch, loss: torch.Tensor) -> None:
        with torch.no_grad():
            for m in self.layers:
                m.gate.mask.clamp_(0.0, 1.0)


def _set_masks(layers: list[PerturbableBatchNorm2d], keep: list[torch.Tensor] | None) -> None:
    """Binary masks (1 where ``keep`` is true) or, with ``keep=None``, all ones."""
    with torch.no_grad():
        for i, m in enumerate(layers):
            m.gate.mask.copy_(torch.ones_like(m.gate.mask) if keep is None else keep[i].to(m.gate.mask.dtype))


def _keep_above(masks: list[torch.Tensor], threshold: float) -> list[torch.Tensor]:
    return [v >= threshold for v in masks]


def _keep_all_but_lowest(masks: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Prune the ``count`` neurons with the smallest masks over the whole network (ties: network order)."""
    flat = torch.cat(masks)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:count]] = False
    return list(keep.split([len(v) for v in masks]))


def _plain(bn: PerturbableBatchNorm2d) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out.load_state_dict(bn.state_dict(), strict=False)
    if out.weight is not None:
        with torch.no_grad():
            out.weight.mul_(bn.gate.mask)
    return out


@register_defense
class ANP(ModelRepair):
    """ANP: learn batch-norm neuron masks under adversarial neuron perturbation, prune low masks."""

    name = "anp"
    paper = PAPER
    Params = ANPParams

    params: ANPParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        opt_part, held_out = split_holdout(clean, p.val_fraction, seed, name="anp-val")
        names = replace_modules(
            model,
            lambda _n, m: type(m) is nn.BatchNorm2d,
            lambda _n, m: PerturbableBatchNorm2d(m),
        )
        if not names:
            raise ConfigError(f"anp needs BatchNorm2d layers; {type(model).__name__} has none")
        layers = _noisy(model)
        neurons = sum(m.num_features for m in layers)
        if p.prune_count is not None and p.prune_count > neurons:
            raise ConfigError(f"anp: prune_count={p.prune_count} is more than the model's {neurons} neurons")
        gates = [f"{n}.gate" for n in names]
        _, tuned = finetune(
            model,
            opt_part,
            p,
            gates,
            seed=seed,
            device=device,
            loss_fn=anp_loss(p.eps, p.alpha),
            callbacks=[_ClipMasks(layers)],
        )
        masks = [m.gate.mask.detach().clone() for m in layers]
        total = sum(len(v) for v in masks)
        _set_masks(layers, None)
        base = evaluate(model, held_out)
        if p.prune_by == "threshold":
            key, fixed = "threshold", p.threshold
            steps = round(p.max_threshold / p.threshold_step)
            grid: list[float | int] = [round(i * p.threshold_step, 6) for i in range(steps + 1)]
        else:
            key, fixed = "count", p.prune_count
            grid = list(range(0, min(p.max_number, total) + 1, p.number_step))

        def keeps(value: float | int) -> list[torch.Tensor]:
            if p.prune_by == "threshold":
                return _keep_above(masks, float(value))
            return _keep_all_but_lowest(masks, int(value))

        sweep: list[dict[str, Any]] = []
        for value in grid if fixed is None else [fixed]:
            keep = keeps(value)
            _set_masks(layers, keep)
            pruned = sum(int((~k).sum()) for k in keep)
            sweep.append({key: value, "pruned": pruned, "held_out_accuracy": evaluate(model, held_out)})
        if fixed is not None:
            chosen = sweep[0]
        else:  # the first grid point prunes nothing, so at least that one qualifies
            ok = [r for r in sweep if r["held_out_accuracy"] >= base - p.tolerance]
            chosen = max(ok, key=lambda r: r[key])
        keep = keeps(chosen[key])
        _set_masks(layers, keep)
        replace_modules(model, lambda _n, m: isinstance(m, PerturbableBatchNorm2d), lambda _n, m: _plain(m))
        threshold = chosen.get("threshold")
        return DefenseResult(
            model,
            {
                "prune_by": p.prune_by,
                "threshold": threshold,
                "pruned": chosen["pruned"],
                "neurons": total,
                "held_out_accuracy_before": base,
                "sweep": sweep,
                "pruned_per_layer": {n: int((~k).sum()) for n, k in zip(names, keep, strict=True)},
                "finetune": tuned,
            },
            metrics={
                **({"threshold": threshold} if threshold is not None else {}),
                "pruned_ratio": chosen["pruned"] / max(total, 1),
            },
        )
