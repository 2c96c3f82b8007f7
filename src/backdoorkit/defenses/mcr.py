"""MCR: mode connectivity repair.

Zhao et al., "Bridging Mode Connectivity in Loss Landscapes and Adversarial Robustness", ICLR 2020
(official code: IBM/model-sanitization).  Scenario S1.

1. **Endpoints**: ``w0`` = the suspicious model, ``w1`` = a copy of it fine-tuned on the defender's
   clean samples (:func:`backdoorkit.defenses.finetune.finetune` with the
   :class:`~backdoorkit.defenses.finetune.TuneParams` fields: 10 epochs, SGD lr 0.01, at least 400
   steps).
2. **Curve**: the quadratic Bezier curve ``phi(t) = (1-t)^2 w0 + 2t(1-t) theta + t^2 w1`` (three
   bends, endpoints fixed), ``theta`` initialised at the midpoint of the endpoints and trained on the
   clean samples with ``t ~ U(0, 1)`` drawn afresh for every batch: ``curve_epochs`` 100, SGD
   ``curve_lr`` 0.01, momentum 0.9, weight decay 1e-4, batch 128; the rate is constant for the first
   half, decays linearly to 1 % of the base by 90 %, then stays there (the official schedule).  Every
   weight tensor of the model lies on the curve (batch-norm affine parameters included); batch-norm
   running statistics are recomputed on the clean samples at the chosen point (``update_bn``).
3. **Choice of t, on defender-side data only** (never test ASR): the clean samples are split
   (stratified, seeded) into a training part and a held-out part (``val_fraction`` 0.2); the endpoint
   and the curve are trained on the training part, and every grid point ``t = 0, 0.1, ..., 1`` is
   scored by its held-out accuracy.  With ``t=None`` (default) the rule is: among the grid points whose
   held-out accuracy is at least the better endpoint's minus ``tolerance`` (0.05), take the one
   farthest from both endpoints (largest ``min(t, 1 - t)``; ties: the higher accuracy, then the
   smaller t).  The backdoor lives near the suspicious endpoint and plain fine-tuning often keeps it,
   so the repair is the point of the low-loss path that is farthest from both, as long as the
   defender's data says it still classifies well.  ``t=<float>`` fixes it (BackdoorBench uses 0.1).

The returned model is a plain copy of the architecture with the weights ``phi(t)``; it saves and
loads like the input model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call
from torch.optim.swa_utils import update_bn

from backdoorkit.data import split_holdout
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.defenses import register_defense
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune
from backdoorkit.device import resolve_device
from backdoorkit.train import evaluate

PAPER = "Zhao et al., Bridging Mode Connectivity in Loss Landscapes and Adversarial Robustness, ICLR 2020"


class MCRParams(TuneParams):
    """Endpoint fine-tuning (the TuneParams fields), curve training and the choice of t."""

    curve_epochs: int = Field(100, ge=1)
    curve_lr: float = Field(0.01, gt=0)
    curve_weight_decay: float = Field(1e-4, ge=0)
    curve_min_steps: int | None = Field(None, ge=1)
    t: float | None = Field(None, ge=0, le=1, description="fixed curve point; None: the rule above")
    grid: int = Field(11, ge=3, description="points t = 0 .. 1 scored on held-out clean data")
    tolerance: float = Field(0.05, ge=0, le=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)


def _key(name: str) -> str:
    return name.replace(".", "__")


class BezierCurve(nn.Module):
    """A quadratic Bezier curve through weight space between two models of one architecture.

    The bend is the only set of parameters; the endpoints and the base model's buffers are buffers.
    In training mode every forward draws ``t ~ U(0, 1)``; in eval mode it uses :attr:`t`.
    """

    def __init__(self, start: nn.Module, end: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_base", start)  # structure only: its own tensors are never read
        self.names = [n for n, _ in start.named_parameters()]
        ends = dict(end.named_parameters())
        for n, w in start.named_parameters():
            self.register_buffer("start_" + _key(n), w.detach().clone())
            self.register_buffer("end_" + _key(n), ends[n].detach().clone())
            self.register_parameter("bend_" + _key(n), nn.Parameter(0.5 * (w.detach() + ends[n].detach())))
        self.buffer_names = [n for n, _ in start.named_buffers()]
        for n, b in start.named_buffers():
            self.register_buffer("base_" + _key(n), b.detach().clone())
        self.t = 0.5

    def weights(self, t: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """``{parameter name: phi(t)}``."""
        out = {}
        for n in self.names:
            k = _key(n)
            w0, w1, theta = getattr(self, "start_" + k), getattr(self, "end_" + k), getattr(self, "bend_" + k)
            out[n] = (1 - t) ** 2 * w0 + 2 * t * (1 - t) * theta + t**2 * w1
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.rand((), device=x.device) if self.training else self.t
        self._base.train(self.training)  # batch statistics along the curve while it trains
        tensors = {**self.weights(t), **{n: getattr(self, "base_" + _key(n)) for n in self.buffer_names}}
        return functional_call(self._base, tensors, (x,))

    @torch.no_grad()
    def model_at(self, t: float, clean: ImageSet, batch_size: int = 256) -> nn.Module:
        """A plain copy of the architecture with the weights ``phi(t)`` and batch-norm statistics
        recomputed on ``clean``."""
        model = copy.deepcopy(self._base)
        params = dict(model.named_parameters())
        for n, w in self.weights(float(t)).items():
            params[n].copy_(w)
        dev = next(iter(self.buffers())).device
        model.to(dev)
        batches = [to_pixels(clean.x[i : i + batch_size].to(dev)) for i in range(0, len(clean), batch_size)]
        update_bn(batches, model, device=dev)
        return model.eval()


def linear_decay(step: int, total: int) -> float:
    """The official curve schedule: 1 for the first half, linear to 0.01 at 90 %, then 0.01."""
    t = step / max(total, 1)
    if t <= 0.5:
        return 1.0
    if t <= 0.9:
        return 1.0 - 0.99 * (t - 0.5) / 0.4
    return 0.01


def choose_t(grid: list[float], accs: list[float], tolerance: float) -> float:
    """The rule of the module docstring: farthest from both endpoints within ``tolerance``."""
    floor = max(accs[0], accs[-1]) - tolerance
    ok = [(min(t, 1 - t), a, -t) for t, a in zip(grid, accs, strict=True) if a >= floor]
    return -max(ok)[2]


@register_defense
class MCR(ModelRepair):
    """MCR: the point of a Bezier curve to a clean-fine-tuned copy farthest from both endpoints."""

    name = "mcr"
    paper = PAPER
    Params = MCRParams

    params: MCRParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        train_part, held_out = split_holdout(clean, p.val_fraction, seed, name="mcr-val")
        end = copy.deepcopy(model)
        _, tuned = finetune(end, train_part, p, None, seed=seed, device=device)
        curve = BezierCurve(model.to(resolve_device(device)), end.to(resolve_device(device)))
        cp = TuneParams(
            **{
                **p.model_dump(include=set(TuneParams.model_fields)),
                "epochs": p.curve_epochs,
                "steps": None,
                "min_steps": p.curve_min_steps,
                "lr": p.curve_lr,
                "weight_decay": p.curve_weight_decay,
                "schedule": "constant",
            }
        )
        _, curved = finetune(curve, train_part, cp, None, seed=seed, device=device, lr_schedule=linear_decay)
        grid = [i / (p.grid - 1) for i in range(p.grid)]
        scan: list[dict[str, Any]] = []
        for t in grid:
            scan.append({"t": t, "held_out_accuracy": evaluate(curve.model_at(t, train_part), held_out)})
        chosen = (
            p.t if p.t is not None else choose_t(grid, [r["held_out_accuracy"] for r in scan], p.tolerance)
        )
        repaired = curve.model_at(chosen, train_part)
        return DefenseResult(
            repaired,
            {"t": chosen, "scan": scan, "endpoint": tuned, "curve": curved, "held_out": len(held_out)},
            metrics={"t": chosen},
        )
