"""Trap-and-Replace (T&R): bait the backdoor into a small head, then replace that head.

Wang et al., "Trap and Replace: Defending Backdoor Attacks by Trapping Them into an Easy-to-Replace
Subnetwork", NeurIPS 2022 (official code: VITA-Group/Trap-and-Replace-Backdoor-Defense).  Scenario S2:
an untrusted training set and a small clean holdout (5 % of the training set in the paper, never seen
by stage 1).

1. **Bait and trap.**  The model is split at a block into a *stem* (most of the parameters) and a light
   *head* (:meth:`~backdoorkit.models.base.ImageClassifier.split`).  A decoder of transposed
   convolutions (kernel 4, stride 2: one doubling each, ReLU between, a sigmoid at the end) reconstructs
   the input pixels from the stem output.  Stem, head and decoder are trained together on the untrusted
   set with ``CE + lambda_rec * MSE(recon, x) + lambda_tv * TV(recon)``; lambda 10, lambda_tv 1; the TV
   term is the sum of squared differences of neighbouring pixels divided by ``B*C*H*W`` (the official
   code's form); ``reconstruction="l1"`` takes the mean absolute error instead.  The reconstruction task
   keeps the stem on the image content, so the easy trigger -> target shortcut is learnt by the head.
2. **Replace.**  Decoder and head are discarded; a freshly initialised head of the same shape is
   trained alone on the clean holdout with the stem frozen (batch-norm statistics included): Adam lr
   0.03, weight decay 5e-4, cosine schedule, batch 64, 100 epochs (the official CIFAR defaults),
   dropout 0.5 on the head's feature map after its residual blocks, CutMix (beta 1, every batch, one
   box per image) and label smoothing 0.1.

Split point (``stem_end``): a block name (``block3.0``, ``layer4.0``) or a 1-based block count; default
the second-to-last block: WRN-16-1's block 5 of 6 (``block3.0``, the paper's default: the head is
``block3.1`` + BN + pooling + FC), ResNet-18's ``layer4.0`` and ResNet-34's ``layer4.1`` (the paper's
ImageNet split, "stem 31").

Stage 1 trains with the scenario's recipe (``config``); ``epochs`` / ``lr`` / ``optimizer`` /
``schedule`` / ``batch_size`` / ``weight_decay`` override it (the paper: 200 epochs, batch 256, Adam lr
1e-3, weight decay 5e-4, cosine).  The paper's ablations are parameters: ``reconstruct=False`` (no
reconstruction task, Table 4 row 1), ``replace=False`` (keep the stage-1 head, row 2), ``stem_end``
(Table 5), ``lambda_rec`` / ``lambda_tv``; the holdout size and clean training data are inputs of the
scenario (``--holdout``, an experiment without attack).

The defended model is ``Composite(stem, new_head)`` and saves and loads as one checkpoint
(:func:`backdoorkit.checkpoint.save_model`); ``result.model.stem`` is the stem (for
:func:`backdoorkit.viz.features.stem_feature_pca`, the paper's Figure 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses.base import DefenseParams, DefenseResult, RobustTraining
from backdoorkit.device import eval_mode
from backdoorkit.errors import ConfigError
from backdoorkit.models.skips import Skip
from backdoorkit.models.stages import Composite, block_names, split
from backdoorkit.scenarios import Scenario
from backdoorkit.train import Batch, LossFn, TrainConfig, fit, predict

PAPER = (
    "Wang et al., Trap and Replace: Defending Backdoor Attacks by Trapping Them into an "
    "Easy-to-Replace Subnetwork, NeurIPS 2022"
)


class TrapReplaceParams(DefenseParams):
    """T&R parameters (defaults in the module docstring; ``None`` = the scenario's recipe)."""

    stem_end: str | int | None = None
    reconstruct: bool = True
    replace: bool = True
    lambda_rec: float = Field(10.0, ge=0)
    lambda_tv: float = Field(1.0, ge=0)
    reconstruction: Literal["mse", "l1"] = "mse"
    epochs: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] | None = None
    schedule: Literal["onecycle", "cosine", "step", "constant"] | None = None
    batch_size: int | None = Field(None, ge=1)
    weight_decay: float | None = Field(None, ge=0)
    head_epochs: int = Field(100, ge=0)
    head_steps: int | None = Field(None, ge=1)
    head_lr: float = Field(0.03, gt=0)
    head_optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    head_weight_decay: float = Field(5e-4, ge=0)
    head_batch_size: int = Field(64, ge=1)
    head_schedule: Literal["onecycle", "cosine", "step", "constant"] = "cosine"
    dropout: float = Field(0.5, ge=0, lt=1)
    cutmix: float = Field(1.0, ge=0, le=1, description="probability of CutMix per batch")
    cutmix_beta: float = Field(1.0, gt=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


# ------------------------------------------------------------------------------------- pieces
def stem_block(model: nn.Module, stem_end: str | int | None) -> str:
    """The block after which the stem ends: a name, a 1-based block count, or the second-to-last block."""
    names = block_names(model)
    if len(names) < 2:
        raise ConfigError(
            f"trap_replace needs a model with at least two blocks; {type(model).__name__} has {len(names)}"
        )
    if stem_end is None:
        return names[-2]
    if isinstance(stem_end, int):
        if not 1 <= stem_end <= len(names) - 1:
            raise ConfigError(
                f"trap_replace: stem_end {stem_end} is not in 1..{len(names) - 1} "
                f"(blocks: {', '.join(names)})"
            )
        return names[stem_end - 1]
    return stem_end


class Decoder(nn.Module):
    """Transposed convolutions (kernel 4, stride 2) from stem features back to an image in ``[0, 1]``.

    Channels halve at each doubling of the side (not below 16); the last layer outputs the image's
    channels; a non power-of-two size ratio is finished by bilinear resizing.
    """

    def __init__(self, channels: int, side: int, out_channels: int, out_side: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, s = channels, side
        while s < out_side:
            last = s * 2 >= out_side
            nxt = out_channels if last else max(c // 2, 16)
            layers.append(nn.ConvTranspose2d(c, nxt, 4, 2, 1))
            if not last:
                layers.append(nn.ReLU(inplace=True))
            c, s = nxt, s * 2
        if not layers:
            layers.append(nn.Conv2d(c, out_channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        self.out_side = out_side

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.net(feats)
        if out.shape[-1] != self.out_side:
            out = F.interpolate(
                out, size=(self.out_side, self.out_side), mode="bilinear", align_corners=False
            )
        return torch.sigmoid(out)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences of vertical and horizontal neighbours, divided by ``x.numel()``."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).sum()
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).sum()
    return (dh + dw) / x.numel()


class _Trap(nn.Module):
    """Stage 1: stem + head + decoder, trained together (the stem and head share the model's modules)."""

    def __init__(self, stem: nn.Module, head: nn.Module, decoder: nn.Module | None) -> None:
        super().__init__()
        self.stem, self.head, self.decoder = stem, head, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


def trap_loss(p: TrapReplaceParams, label_smoothing: float = 0.0) -> LossFn:
    """Stage 1 objective: ``CE + lambda_rec * rec(decoder(stem(x)), x) + lambda_tv * TV(recon)``."""
    rec = F.mse_loss if p.reconstruction == "mse" else F.l1_loss

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        feats = model.stem(batch.x)
        logits = model.head(feats)
        out = F.cross_entropy(logits.float(), batch.y, label_smoothing=label_smoothing)
        if model.decoder is not None:
            recon = model.decoder(feats).float()
            out = out + p.lambda_rec * rec(recon, batch.x.float()) + p.lambda_tv * total_variation(recon)
        return out, logits

    return loss


def head_with_dropout(head: nn.Module, p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``head``'s forward with dropout after its residual blocks (on the head input when it has none)."""
    if not isinstance(head, nn.Sequential):
        return lambda feats: head(F.dropout(feats, p, training=True))
    children = list(head.children())
    cut = next((i for i, m in enumerate(children) if not any(isinstance(s, Skip) for s in m.modules())), 0)

    def forward(feats: torch.Tensor) -> torch.Tensor:
        x = feats
        for i, module in enumerate(children):
            if i == cut:
                x = F.dropout(x, p, training=True)
            x = module(x)
        return x

    return forward


def cutmix(x: torch.Tensor, y: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., ICCV 2019) on a whole batch: each image gets a box from a partner image.

    Returns ``(mixed, partner_labels, lam)`` with ``lam`` per image the kept area fraction.
    """
    b, _, h, w = x.shape
    dev = x.device
    perm = torch.randperm(b, device=dev)
    lam = torch.distributions.Beta(beta, beta).sample((b,)).to(dev)
    cut = (1 - lam).sqrt()
    ch, cw = (cut * h).long(), (cut * w).long()
    cy, cx = (torch.rand(b, device=dev) * h).long(), (torch.rand(b, device=dev) * w).long()
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    box = (
        (rows >= y0.view(b, 1, 1))
        & (rows < y1.view(b, 1, 1))
        & (cols >= x0.view(b, 1, 1))
        & (cols < x1.view(b, 1, 1))
    )
    mixed = torch.where(box.unsqueeze(1), x[perm], x)
    kept = 1 - box.flatten(1).float().mean(1)
    return mixed, y[perm], kept


def replace_loss(p: TrapReplaceParams) -> LossFn:
    """Stage 2 objective: label-smoothed CE of the dropout head on CutMix batches."""

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch.x, batch.y
        forward = head_with_dropout(model.head, p.dropout) if p.dropout > 0 else model.head
        feats_of = model.stem
        if p.cutmix > 0 and float(torch.rand(())) < p.cutmix:
            mixed, y2, lam = cutmix(x, y, p.cutmix_beta)
            logits = forward(feats_of(mixed)).float()
            ls = p.label_smoothing
            ce1 = F.cross_entropy(logits, y, reduction="none", label_smoothing=ls)
            ce2 = F.cross_entropy(logits, y2, reduction="none", label_smoothing=ls)
            return (lam * ce1 + (1 - lam) * ce2).mean(), logits
        logits = forward(feats_of(x)).float()
        return F.cross_entropy(logits, y, label_smoothing=p.label_smoothing), logits

    return loss


def _stem_shape(stem: nn.Module, image_shape: tuple[int, int, int]) -> torch.Size:
    ref = next((t for t in (*stem.parameters(), *stem.buffers())), None)
    dev = ref.device if ref is not None else torch.device("cpu")
    with torch.no_grad(), eval_mode(stem):
        out = stem(torch.zeros(2, *image_shape, device=dev))
    if out.dim() != 4:
        raise ConfigError(
            f"trap_replace needs convolutional stem features [B, C, H, W]; this stem gives {tuple(out.shape)}"
        )
    return out.shape


def _overrides(p: TrapReplaceParams) -> dict[str, object]:
    keys = ("epochs", "lr", "optimizer", "schedule", "batch_size", "weight_decay")
    return {k: getattr(p, k) for k in keys if getattr(p, k) is not None}


# ------------------------------------------------------------------------------------ defense
@register_defense
class TrapReplace(RobustTraining):
    """Trap-and-Replace: train with a decoder on the stem, then retrain a new head on clean data."""

    name = "trap_replace"
    paper = PAPER
    scenarios = (Scenario.S2,)
    Params = TrapReplaceParams

    params: TrapReplaceParams

    def _train(
        self,
        untrusted: ImageSet,
        holdout: ImageSet | None,
        *,
        model_factory: Callable[[], nn.Module],
        config: TrainConfig,
        seed: int,
    ) -> DefenseResult:
        p = self.params
        holdout = self._need(holdout, "a clean holdout set (scenario S2)", self.name)
        model = model_factory()
        at = stem_block(model, p.stem_end)
        stem, head = split(model, at)
        decoder = None
        if p.reconstruct and (p.lambda_rec > 0 or p.lambda_tv > 0):
            _, c, s, _ = _stem_shape(stem, untrusted.image_shape)
            decoder = Decoder(c, s, untrusted.channels, untrusted.image_shape[1])
        trap = _Trap(stem, head, decoder)
        cfg = config.model_copy(update={"seed": seed})
        trapped = fit(trap, untrusted, cfg, loss_fn=trap_loss(p, cfg.label_smoothing), **_overrides(p))
        info: dict[str, object] = {
            "stem_end": at,
            "stem_parameters": sum(q.numel() for q in stem.parameters()),
            "head_parameters": sum(q.numel() for q in head.parameters()),
            "decoder_parameters": sum(q.numel() for q in decoder.parameters()) if decoder else 0,
            "stage1": {
                "steps": trapped.steps,
                "final_loss": trapped.losses[-1] if trapped.losses else None,
                "seconds": trapped.seconds,
            },
        }
        metrics: dict[str, float] = {}
        if decoder is not None:
            metrics["recon_mse"] = self._recon_error(stem, decoder, holdout)
        if not p.replace:
            info["replaced"] = False
            return DefenseResult(model, info, metrics=metrics)
        _, new_head = split(model_factory(), at)
        defended = Composite(stem, new_head)
        for attr in ("classes",):
            if hasattr(model, attr):
                setattr(defended, attr, getattr(model, attr))
        steps = p.head_steps
        replaced = fit(
            defended,
            holdout,
            cfg,
            trainable=list(new_head.parameters()),
            loss_fn=replace_loss(p),
            epochs=p.head_epochs,
            steps=steps,
            lr=p.head_lr,
            optimizer=p.head_optimizer,
            weight_decay=p.head_weight_decay,
            batch_size=p.head_batch_size,
            schedule=p.head_schedule,
            drop_last=False,
        )
        info["replaced"] = True
        info["stage2"] = {
            "steps": replaced.steps,
            "final_loss": replaced.losses[-1] if replaced.losses else None,
            "seconds": replaced.seconds,
            "holdout": len(holdout),
        }
        defended.eval()
        return DefenseResult(defended, info, metrics=metrics)

    @staticmethod
    @torch.no_grad()
    def _recon_error(stem: nn.Module, decoder: nn.Module, data: ImageSet) -> float:
        """Mean squared reconstruction error of the trained decoder on the defender's holdout."""
        trap = nn.Sequential(stem, decoder)
        recon = predict(trap, data.x)
        from backdoorkit.data.imageset import to_pixels

        return float(F.mse_loss(recon.cpu(), to_pixels(data.x.cpu())))


__all__ = ["Decoder", "TrapReplace", "TrapReplaceParams", "cutmix", "stem_block", "total_variation"]
