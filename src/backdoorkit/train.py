"""The one training loop, used by attacks and defenses alike.

``fit(model, data, config)`` trains on a whole :class:`ImageSet` held on the device: batches are index
slices, augmentation (random crop + flip through kornia) runs on whole batches, channels_last and bf16
autocast are on for CUDA (opt-in on CPU, see :mod:`backdoorkit.device`), and a CPU run is seeded and
deterministic.  ``loss_fn`` lets a defense
replace the objective (reconstruction terms, attention distillation, loss flooding ...) without
another training loop; ``trainable`` restricts which parameters move (and freezes the batch-norm
statistics of every module that has nothing trainable, so frozen layers stay bit-identical).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from backdoorkit.data.batching import index_batches, standard_augmentation
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.device import autocast, eval_mode, resolve_device
from backdoorkit.errors import ConfigError

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]

_FIT_CALLS = 0


def fit_calls() -> int:
    """How many times :func:`fit` has run in this process (caching tests count trainings with it)."""
    return _FIT_CALLS


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run (validated; unknown keys are errors).

    Defaults: SGD (momentum 0.9, Nesterov), lr 0.1, weight decay 5e-4, one-cycle schedule,
    batch 128, 20 epochs, standard augmentation: a fast, robust recipe for CIFAR-sized data.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=0)
    steps: int | None = Field(None, ge=1, description="total optimiser steps; overrides epochs")
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    warmup: float = Field(0.15, ge=0, lt=1, description="one-cycle: fraction of steps rising to lr")
    milestones: tuple[float, ...] = Field((0.5, 0.75), description="step: fractions of training")
    step_factor: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = True
    drop_last: bool = True
    seed: int = 0
    device: str = "auto"
    channels_last: bool | None = Field(None, description="None: on for CUDA, off for CPU")
    amp: bool | None = Field(None, description="bf16 autocast; None: on for CUDA, off for CPU")
    compile: bool = False
    progress: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError("milestones are fractions of training in (0, 1)")
        return self


@dataclass
class FitResult:
    """What a training run did: per-epoch loss/accuracy, wall time and throughput."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def parameters_of(model: nn.Module, names: str | Sequence[str]) -> list[nn.Parameter]:
    """Parameters of the named submodules (``"fc"``, ``["layer3"]``, ``"layer3.1"`` ...)."""
    if isinstance(names, str):
        names = [names]
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"model has no submodule {name!r}") from None
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    t = step / max(total, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return cfg.step_factor ** sum(t >= m for m in cfg.milestones)
    # one-cycle: linear warm-up from lr/25 to lr, then linear decay to ~0
    w = cfg.warmup
    if w > 0 and t < w:
        return 0.04 + 0.96 * t / w
    return max(0.0, (1 - t) / (1 - w)) if w < 1 else 0.0


def default_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits

    return loss


def _freeze_others(model: nn.Module, trainable: list[nn.Parameter]) -> list[tuple[nn.Module, bool]]:
    """Put modules owning no trainable parameter or buffer-updating state into eval mode."""
    ids = {id(p) for p in trainable}
    changed = []
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        has_stats = any(True for _ in m.buffers(recurse=False))
        if has_stats and not any(id(p) in ids for p in own):
            changed.append((m, m.training))
            m.eval()
    return changed


def fit(
    model: nn.Module,
    data: ImageSet,
    config: TrainConfig | None = None,
    *,
    trainable: Iterable[nn.Parameter] | None = None,
    loss_fn: LossFn | None = None,
    augmentation: nn.Module | Literal["default"] | None = "default",
    **overrides: object,
) -> FitResult:
    """Train ``model`` on ``data`` in place and return what happened.

    Args:
        model: any module mapping ``[B, C, H, W]`` pixels in ``[0, 1]`` to logits.
        data: the training set (moved once to the training device).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        trainable: the parameters to optimise (default: all).  Modules without any of them are
            kept in eval mode, so their batch-norm statistics do not drift.
        loss_fn: ``loss_fn(model, x, y) -> loss`` or ``(loss, logits)``; default cross-entropy
            with the config's label smoothing.
        augmentation: a batched augmentation module, ``None`` for none, or ``"default"`` for the
            standard crop (+ flip where ``data.hflip``) when ``config.augment`` is true.
    """
    global _FIT_CALLS
    _FIT_CALLS += 1
    cfg = config or TrainConfig()
    if overrides:
        try:
            cfg = TrainConfig(**{**cfg.model_dump(), **overrides})
        except Exception as exc:  # pydantic ValidationError -> one line
            raise ConfigError(f"training config: {_first_error(exc)}") from None
    if len(data) == 0:
        raise ConfigError(f"cannot train on an empty set ({data.name})")
    device = resolve_device(cfg.device)
    model.to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    data = data.to(device)
    params = list(trainable) if trainable is not None else [p for p in model.parameters()]
    if not params:
        raise ConfigError("no parameters to train")
    saved_grad = {id(p): p.requires_grad for p in model.parameters()}
    train_ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in train_ids)
    augment = augmentation
    if augment == "default":
        augment = standard_augmentation(data) if cfg.augment else None
    loss_fn = loss_fn or default_loss(cfg.label_smoothing)
    step_model: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]

    bs = min(cfg.batch_size, len(data))
    per_epoch = len(data) // bs if cfg.drop_last else math.ceil(len(data) / bs)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    result = FitResult()
    if total == 0:
        return result
    opt = _make_optimizer(params, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(cfg.seed)

    progress = _progress(cfg.progress, total, data.name)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model.train()
        frozen = _freeze_others(model, params) if trainable is not None else []
        step = 0
        try:
            while step < total:
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device, dtype=torch.long)
                seen = 0
                for idx in index_batches(
                    len(data), bs, shuffle=True, generator=gen, drop_last=cfg.drop_last, device=device
                ):
                    if step >= total:
                        break
                    for g, lr0 in zip(opt.param_groups, base_lrs, strict=True):
                        g["lr"] = lr0 * _lr_factor(cfg, step, total)
                    x = to_pixels(data.x[idx])
                    if augment is not None:
                        x = augment(x)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = data.y[idx]
                    with autocast(device, cfg.amp, training=True):
                        out = loss_fn(step_model, x, y)
                    loss, logits = out if isinstance(out, tuple) else (out, None)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach() * len(idx)
                    if logits is not None:
                        correct += (logits.detach().argmax(1) == y).sum()
                    seen += len(idx)
                    step += 1
                    if progress is not None:
                        progress.advance()
                result.losses.append(float(loss_sum) / max(seen, 1))
                result.accuracies.append(float(correct) / max(seen, 1))
                result.images += seen
                if progress is not None:
                    progress.describe(result.losses[-1], result.accuracies[-1])
        finally:
            for m, mode in frozen:
                m.training = mode
            for p in model.parameters():
                p.requires_grad_(saved_grad[id(p)])
            if progress is not None:
                progress.close()
            if channels_last:
                model.to(memory_format=torch.contiguous_format)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    result.steps = step
    return result


class _Progress:
    def __init__(self, total: int, name: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("[bold]train[/] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._name = name
        self._task = self._p.add_task(name, total=total)
        self._p.start()

    def advance(self) -> None:
        self._p.advance(self._task)

    def describe(self, loss: float, acc: float) -> None:
        self._p.update(self._task, description=f"{self._name} loss {loss:.3f} acc {acc:.3f}")

    def close(self) -> None:
        self._p.stop()


def _progress(enabled: bool, total: int, name: str) -> _Progress | None:
    return _Progress(total, name) if enabled else None


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))
    return str(exc)


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits for a uint8 or float ``[N, C, H, W]`` tensor, in eval mode, batch by batch.

    ``transform`` (a batched trigger, say) is applied to float pixels before the model.
    """
    if device is None:
        dev = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    else:
        dev = resolve_device(device)
    model.to(dev)
    outs = []
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb = to_pixels(x[start : start + batch_size].to(dev))
            if transform is not None:
                xb = transform(xb)
            with autocast(dev):
                outs.append(model(xb).float())
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs)


def predict_labels(model: nn.Module, x: torch.Tensor, **kw: object) -> torch.Tensor:
    return predict(model, x, **kw).argmax(1)  # type: ignore[arg-type]


def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``data`` (the BA when ``data`` is the clean test set)."""
    if len(data) == 0:
        return float("nan")
    pred = predict_labels(model, data.x, batch_size=batch_size)
    return float((pred.cpu() == data.y.cpu()).float().mean())


def train_config(**kw: object) -> TrainConfig:
    """Build a :class:`TrainConfig`, turning validation errors into one-line :class:`ConfigError`."""
    try:
        return TrainConfig(**kw)
    except Exception as exc:
        raise ConfigError(f"training config: {_first_error(exc)}") from None
