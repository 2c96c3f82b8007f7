"""I-BAU: implicit backdoor adversarial unlearning.

Zeng et al., "Adversarial Unlearning of Backdoors via Implicit Hypergradient", ICLR 2022 (official
code: YiZeng623/I-BAU).  Scenario S1.  A minimax problem on the defender's clean samples: the inner
player finds one universal perturbation ``delta`` (the shape of an image) that makes the model err
most, the outer player trains the model to classify correctly even with ``delta`` added.

Each of the ``rounds`` (5) rounds:

1. **Inner** (the model fixed, eval mode): ``delta`` starts at 0 and takes SGD steps (lr
   ``inner_lr`` 10) on ``-CE(f(x + delta), f(x)) + penalty * ||delta||^2`` (``penalty`` 1e-3, labels
   = the model's own predictions), one step per batch of the clean samples; optionally projected onto
   the L2 ball of ``radius`` (the official script leaves this off: ``radius=None``).
2. **Outer**: the model is trained (through :func:`backdoorkit.defenses.finetune.finetune`, Adam lr
   1e-3, batch 100) on ``CE(f(x'), y)`` where ``x'`` adds ``delta`` to a random ``portion`` (1 %, at
   least one image) of each batch, with the *implicit hypergradient*: ``delta`` is treated as the
   fixed point of the inner map ``Phi(delta) = delta - fp_lr * grad_delta L_in(delta, w)`` (``fp_lr``
   0.1, ``L_in`` the penalised inner loss on the batch with its true labels), and the outer
   gradient gets the term ``(d Phi / d w)^T v`` with ``v`` the ``K``-term (``K`` = 5) Neumann
   approximation of ``(I - d Phi / d delta)^-T grad_delta L_out``.  The loss handed to
   :func:`backdoorkit.train.fit` has the outer loss's value and this full gradient.  Batch-norm running
   statistics are not updated by the extra forward passes of the hypergradient.

Scale.  One round in the paper is one pass over 5,000 clean images at batch 100, i.e. 50 inner and
50 outer steps; ``min_steps`` (per round, default 50) keeps that amount of optimisation on small
clean sets (on 144 digits a pass is 2 steps).  The rule depends only on the defender's data size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.data.batching import index_batches
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.defenses import register_defense
from backdoorkit.defenses.base import DefenseParams, DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune
from backdoorkit.device import eval_mode, resolve_device
from backdoorkit.train import Batch, LossFn, TrainState

PAPER = "Zeng et al., Adversarial Unlearning of Backdoors via Implicit Hypergradient, ICLR 2022"


class IBAUParams(DefenseParams):
    """I-BAU parameters (official defaults; see the module docstring)."""

    rounds: int = Field(5, ge=1)
    K: int = Field(5, ge=1, description="fixed-point (Neumann) iterations of the hypergradient")
    batch_size: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0, description="outer Adam learning rate")
    weight_decay: float = Field(0.0, ge=0)
    inner_lr: float = Field(10.0, gt=0)
    fp_lr: float = Field(0.1, gt=0, description="step of the inner fixed-point map")
    penalty: float = Field(1e-3, ge=0)
    portion: float = Field(0.01, gt=0, le=1, description="share of each batch that gets delta")
    radius: float | None = Field(None, gt=0, description="L2 ball for delta; None: no projection")
    min_steps: int | None = Field(50, ge=1, description="at least this many inner / outer steps per round")
    augment: bool | None = None


@contextlib.contextmanager
def frozen_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norm in training mode normalises by the batch but leaves its running statistics alone."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


def _inner_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, penalty: float):  # type: ignore[no-untyped-def]
    return -F.cross_entropy(model(x + delta).float(), y) + penalty * delta.pow(2).sum()


def find_perturbation(
    model: nn.Module, clean: ImageSet, p: IBAUParams, steps: int, *, seed: int, device: torch.device
) -> torch.Tensor:
    """The inner maximisation: a universal ``[1, C, H, W]`` perturbation (detached)."""
    data = clean.to(device)
    delta = torch.zeros(1, *clean.image_shape, device=device, requires_grad=True)
    opt = torch.optim.SGD([delta], lr=p.inner_lr)
    gen = torch.Generator().manual_seed(seed)
    bs = min(p.batch_size, len(data))
    done = 0
    with eval_mode(model):
        while done < steps:
            for idx in index_batches(
                len(data), bs, shuffle=True, generator=gen, drop_last=False, device=device
            ):
                if done >= steps:
                    break
                x = to_pixels(data.x[idx])
                with torch.no_grad():
                    own = model(x).argmax(1)
                loss = _inner_loss(model, x, own, delta, p.penalty)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
    out = delta.detach()
    if p.radius is not None:
        out = out * torch.clamp(p.radius / (out.norm() + 1e-12), max=1.0)
    return out


def unlearning_loss(delta: torch.Tensor, p: IBAUParams) -> LossFn:
    """The outer loss with the implicit hypergradient (value: the outer loss)."""

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch.x, batch.y
        d = delta.detach().to(x.device).requires_grad_(True)
        n = max(1, int(len(x) * p.portion))
        rows = torch.zeros(len(x), 1, 1, 1, device=x.device, dtype=x.dtype)
        rows[torch.randperm(len(x), device=x.device)[:n]] = 1
        logits = model(x + rows * d)
        outer = F.cross_entropy(logits.float(), y)
        params = [q for q in model.parameters() if q.requires_grad]
        grad_d = torch.autograd.grad(outer, d, retain_graph=True)[0]
        with frozen_statistics(model):
            inner = _inner_loss(model, x, y, d, p.penalty)
            mapped = d - p.fp_lr * torch.autograd.grad(inner, d, create_graph=True)[0]
        v = torch.zeros_like(grad_d)
        for _ in range(p.K):
            v = torch.autograd.grad(mapped, d, grad_outputs=v, retain_graph=True)[0] + grad_d
        implicit = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
        extra = sum(
            ((g.detach() * q).sum() for g, q in zip(implicit, params, strict=True) if g is not None),
            torch.zeros((), device=x.device),
        )
        return outer + extra - extra.detach(), logits

    return loss


@register_defense
class IBAU(ModelRepair):
    """I-BAU: adversarial unlearning of a universal perturbation with the implicit hypergradient."""

    name = "ibau"
    paper = PAPER
    Params = IBAUParams

    params: IBAUParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        dev = resolve_device(device)
        model.to(dev)
        per_pass = -(-len(clean) // min(p.batch_size, len(clean)))
        steps = max(per_pass, p.min_steps or 0)
        tp = TuneParams(
            epochs=1,
            steps=steps,
            min_steps=None,
            lr=p.lr,
            momentum=0.0,
            weight_decay=p.weight_decay,
            batch_size=p.batch_size,
            schedule="constant",
            augment=p.augment,
        )
        state: TrainState | None = None
        rounds: list[dict[str, Any]] = []
        for r in range(p.rounds):
            delta = find_perturbation(model, clean, p, steps, seed=seed + r, device=dev)
            kw: dict[str, Any] = {"state": state} if state is not None else {"optimizer": "adam"}
            res, tuned = finetune(
                model, clean, tp, None, seed=seed + r, device=device, loss_fn=unlearning_loss(delta, p), **kw
            )
            state = res.state
            rounds.append({"delta_norm": float(delta.norm()), "final_loss": tuned["final_loss"]})
        return DefenseResult(model, {"rounds": rounds, "steps_per_round": steps})
