"""DP-SGD: differentially private training as a backdoor defense (through opacus).

Du, Jia & Song, "Robust Anomaly Detection and Backdoor Attack Detection via Differential Privacy",
ICLR 2020 (the "DP" baseline of Trap-and-Replace, NeurIPS 2022, Appendix C); DP-SGD of Abadi et al.,
CCS 2016.  Scenario S3 (no clean data; it also runs in S2 and ignores the holdout).

Per-sample gradients are clipped to ``max_grad_norm`` (default 1.0) and Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm`` (default 1.0) is added to their sum, which bounds how much
any single (poisoned) row can move the model.  Opacus needs per-sample gradients, which batch norm does
not have, so every ``BatchNorm2d`` becomes a ``GroupNorm`` (``gcd(channels, norm_groups)`` groups,
``norm_groups`` default 32, as opacus' own fixer) through
:func:`~backdoorkit.models.taps.replace_modules`; the result is a :class:`GroupNormModel` that saves and
loads like any model.

Sampling.  The privacy analysis of DP-SGD (opacus' accountants) assumes Poisson sampling: every row
joins each batch independently with probability ``q = batch_size / N``.  This defense samples exactly
that way, so the reported ``dp_epsilon`` (at ``delta``, default 1e-5; opacus' RDP accountant, or
``accountant="prv"``) is the epsilon of the training that ran.  The batch is drawn inside the loss
function from the whole untrusted set (a Bernoulli mask per step), with :func:`backdoorkit.train.fit`
running its usual loop as the step clock (batches of one row that the loss ignores): ``fit``'s own
batches are shuffled fixed-size slices, for which the accountant's epsilon would not hold.  A training
run takes ``epochs * N / batch_size`` steps (the same expected number of sample visits as ``epochs``
epochs).  Training hyper-parameters are the scenario's recipe unless ``epochs`` / ``lr`` /
``batch_size`` are given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.data.batching import standard_augmentation
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.defenses import register_defense
from backdoorkit.defenses.base import DefenseParams, DefenseResult, RobustTraining
from backdoorkit.device import resolve_device
from backdoorkit.errors import ConfigError
from backdoorkit.models.registry import register_wrapper
from backdoorkit.models.taps import replace_modules
from backdoorkit.train import Batch, LossFn, TrainConfig, fit, make_optimizer, train_config

PAPER = (
    "Du, Jia & Song, Robust Anomaly Detection and Backdoor Attack Detection via Differential Privacy, "
    "ICLR 2020"
)


class DPSGDParams(DefenseParams):
    """DP-SGD parameters (defaults in the module docstring; ``None`` = the scenario's recipe)."""

    noise_multiplier: float = Field(1.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv"] = "rdp"
    norm_groups: int = Field(32, ge=1)
    epochs: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1, description="expected Poisson batch size")


@register_wrapper("group_norm", summary="a model with every BatchNorm2d replaced by GroupNorm (DP-SGD)")
class GroupNormModel(nn.Module):
    """``model`` with each ``BatchNorm2d`` replaced by ``GroupNorm(gcd(C, groups), C)`` (affine)."""

    def __init__(self, model: nn.Module, groups: int = 32) -> None:
        super().__init__()
        replace_modules(
            model,
            lambda _n, m: isinstance(m, nn.BatchNorm2d),
            lambda _n, m: nn.GroupNorm(math.gcd(m.num_features, groups), m.num_features),
        )
        self.model = model
        for attr in ("classes", "num_classes", "in_channels"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))
        inner = getattr(model, "head_name", None)
        if isinstance(inner, str):
            self.head_name = f"model.{inner}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def poisson_loss(data: ImageSet, rate: float, augment: nn.Module | None) -> LossFn:
    """Cross-entropy on a Poisson sample of ``data`` (each row kept with probability ``rate``), drawn
    afresh at every call from the (seeded) global RNG; the given batch only clocks the step."""

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        keep = torch.rand(len(data), device=data.device) < rate
        idx = torch.nonzero(keep).flatten()
        x = to_pixels(data.x[idx])
        if augment is not None and len(idx):
            x = augment(x)
        logits = model(x)
        # sum / count: an empty draw gives a finite zero loss (the step then only adds noise)
        return F.cross_entropy(logits.float(), data.y[idx], reduction="sum") / max(len(idx), 1)

    return loss


@register_defense
class DPSGD(RobustTraining):
    """DP-SGD: clipped, noised per-sample gradients on Poisson batches (opacus); reports epsilon."""

    name = "dp_sgd"
    paper = PAPER
    Params = DPSGDParams

    params: DPSGDParams

    def _train(
        self,
        untrusted: ImageSet,
        holdout: ImageSet | None,
        *,
        model_factory: Callable[[], nn.Module],
        config: TrainConfig,
        seed: int,
    ) -> DefenseResult:
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        p = self.params
        updates = {
            "seed": seed,
            **{k: getattr(p, k) for k in ("epochs", "lr", "batch_size") if getattr(p, k) is not None},
        }
        cfg = train_config(**{**config.model_dump(), **updates})
        n = len(untrusted)
        batch = min(cfg.batch_size, n)
        rate = batch / n
        steps = max(1, round(cfg.epochs * n / batch)) if cfg.steps is None else cfg.steps
        model = GroupNormModel(model_factory(), p.norm_groups)
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ConfigError(f"dp_sgd: opacus cannot train this model: {problems[0]}")
        accountant = create_accountant(p.accountant)

        def dp_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            opt = DPOptimizer(
                make_optimizer(params, cfg),
                noise_multiplier=p.noise_multiplier,
                max_grad_norm=p.max_grad_norm,
                expected_batch_size=batch,
                loss_reduction="mean",
            )
            opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=rate))
            return opt

        data = untrusted.to(resolve_device(cfg.device))
        augment = standard_augmentation(data) if cfg.augment else None
        wrapped = GradSampleModule(model, loss_reduction="mean")
        try:
            with warnings.catch_warnings():
                # opacus' per-sample-gradient hooks are full backward hooks; on the first layer the images
                # need no gradient, so PyTorch warns on every run.  The per-sample gradients of the weights
                # come from the hooked activations and output gradients, which that case does not affect.
                warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
                res = fit(
                    wrapped,
                    data,
                    cfg,
                    loss_fn=poisson_loss(data, rate, augment),
                    optimizer=dp_optimizer,
                    augmentation=None,
                    steps=steps,
                    batch_size=1,
                    drop_last=True,
                )
        finally:
            wrapped.remove_hooks()
            for q in model.parameters():
                q.grad_sample = None
        model.eval()
        epsilon = float(accountant.get_epsilon(delta=p.delta)) if p.noise_multiplier > 0 else math.inf
        info = {
            "sample_rate": rate,
            "expected_batch_size": batch,
            "steps": res.steps,
            "delta": p.delta,
            "accountant": p.accountant,
            "seconds": res.seconds,
        }
        return DefenseResult(model, info, metrics={"dp_epsilon": epsilon})


__all__ = ["DPSGD", "DPSGDParams", "GroupNormModel", "poisson_loss"]
