"""The one training loop, used by attacks and defenses alike.

``fit(model, data, config)`` trains on a whole :class:`ImageSet` held on the device: batches are index
slices, augmentation (random crop + flip through kornia) runs on whole batches, channels_last and bf16
autocast are on for CUDA (opt-in on CPU, see :mod:`backdoorkit.device`), and a CPU run is seeded and
deterministic.

Extension points, so that a defense or attack never needs a training loop of its own:

* ``loss_fn(model, batch)`` replaces the objective (reconstruction terms, attention distillation,
  loss flooding, per-sample weights by ``batch.idx`` for isolation defenses such as ABL) and gets a
  :class:`Batch`: the augmented pixels, the labels, the row indices into the training set and the
  step / epoch counters;
* ``trainable`` restricts which parameters move (and freezes the batch-norm statistics of every
  module that has nothing trainable, so frozen layers stay bit-identical);
* ``optimizer`` is a factory ``params -> torch.optim.Optimizer`` (parameter groups, a DP optimiser)
  and ``lr_schedule(step, total) -> factor`` of every group's base rate (cyclic rates ...);
* ``callbacks`` (:class:`Callback`) see every step and every epoch and can stop the run;
* ``state`` (:class:`TrainState`, returned as ``FitResult.state``) continues a previous run's
  optimizer and step counter, so a multi-phase defense runs its phases on one optimizer.

Inside :func:`backdoorkit.resume.resumable_training`, a plain call (none of the extension points above)
saves a snapshot at each epoch's end and, made again after an interruption, resumes from the last one.

The loss is checked for finite values on the device and read back once per epoch (and every
``check_every`` steps when set), not once per step: a host sync each step costs throughput on CUDA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from backdoorkit.data.batching import augmentation_for, index_batches
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.device import autocast, eval_mode, inference_batch, resolve_device
from backdoorkit.errors import ConfigError, config_error
from backdoorkit.resume import is_plain, restore_rng, rng_states, snapshot_for
from backdoorkit.train_report import EpochLines

_FIT_CALLS = 0


def fit_calls() -> int:
    """How many times :func:`fit` has run in this process (caching tests count trainings with it)."""
    return _FIT_CALLS


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run (validated; unknown keys are errors).

    Defaults: SGD (momentum 0.9, Nesterov), lr 0.1, weight decay 5e-4, one-cycle schedule,
    batch 128, 20 epochs, standard augmentation: a fast, robust recipe for CIFAR-sized data.
    ``check_every`` (default ``None``: at each epoch end only) also checks the loss for NaN / inf every
    that many steps (each check is a host sync).
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
    augment: bool | Literal["crop_flip", "crop", "flip", "none"] = Field(
        True, description="True / crop_flip: crop + flip where allowed; crop; flip (only); False / none"
    )
    drop_last: bool = True
    seed: int = 0
    device: str = "auto"
    channels_last: bool | None = Field(None, description="None: on for CUDA, off for CPU")
    amp: bool | None = Field(None, description="bf16 autocast; None: on for CUDA, off for CPU")
    compile: bool = False
    progress: bool = False
    check_every: int | None = Field(None, ge=1, description="steps between finite-loss checks")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError("milestones are fractions of training in (0, 1)")
        return self


@dataclass
class Batch:
    """One training batch as a loss function sees it.

    ``x``: float pixels in ``[0, 1]`` after augmentation, on the training device (channels_last on
    CUDA); ``y``: int64 labels; ``idx``: int64 row indices of these samples in the training
    :class:`ImageSet` (on the device), so a loss can weight, split or record rows; ``step``: the global
    optimiser step (continued across calls by ``fit(..., state=...)``); ``epoch``: the global epoch.
    """

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    step: int
    epoch: int


LossOutput: TypeAlias = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
LossFn: TypeAlias = Callable[[nn.Module, Batch], LossOutput]
"""``loss_fn(model, batch) -> loss`` or ``(loss, logits)`` (the logits give the epoch accuracy)."""
OptimizerFactory: TypeAlias = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
"""Builds the optimiser from the trainable parameters (it may split them into groups)."""
LrSchedule: TypeAlias = Callable[[int, int], float]
"""``schedule(step, total) -> factor``: each group's lr is its base lr times the factor."""


@dataclass(eq=False)
class FitResult:
    """What a training run did: per-epoch loss/accuracy, steps and images of this call, wall time and
    throughput, and the :class:`TrainState` to continue from (``fit(..., state=result.state)``)."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    state: TrainState | None = field(default=None, repr=False)
    resumed_epochs: int = 0
    """Epochs loaded from a snapshot (:mod:`backdoorkit.resume`); the other fields then cover the whole
    run, those epochs included."""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass(eq=False)
class TrainState:
    """The running state of training, shared by every phase that continues it.

    ``step`` and ``epoch`` count optimiser steps and epochs over all calls that continued this state;
    ``result`` is the current call's :class:`FitResult`; setting ``stop`` (from a callback) ends the
    call after the current step.  The optimizer keeps each group's base rate in ``"initial_lr"``.
    """

    model: nn.Module = field(repr=False)
    optimizer: torch.optim.Optimizer = field(repr=False)
    step: int = 0
    epoch: int = 0
    result: FitResult = field(default_factory=FitResult, repr=False)
    stop: bool = False


class Callback:
    """Hooks into :func:`fit`; subclass and override what you need (both are no-ops here).

    ``on_step_end`` runs after each optimiser step with the detached loss (still on the device: read
    it only when you must, a read is a host sync); ``on_epoch_end`` runs after each (possibly partial)
    epoch, once ``state.result`` holds its loss and accuracy, and returns ``True`` to stop training.
    """

    def on_step_end(self, state: TrainState, batch: Batch, loss: torch.Tensor) -> None:
        return None

    def on_epoch_end(self, state: TrainState) -> bool | None:
        return None


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


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimiser (SGD with momentum / Nesterov, Adam or AdamW) over ``params``."""
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


def config_schedule(cfg: TrainConfig) -> LrSchedule:
    """The config's learning-rate schedule (``schedule``, ``warmup``, ``milestones``, ``step_factor``)."""
    return partial(_lr_factor, cfg)


def default_loss(label_smoothing: float = 0.0) -> LossFn:
    """Cross-entropy on float logits (with ``label_smoothing``); returns ``(loss, logits)``."""

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        return F.cross_entropy(logits.float(), batch.y, label_smoothing=label_smoothing), logits

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


class _FiniteCheck:
    """Remembers, on the device, the first step whose loss was not finite; reads it back on demand."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss.float(), self.value)

    def check(self, epoch: int) -> None:
        step = int(self.step)
        if step >= 0:
            raise FloatingPointError(
                f"training loss became {float(self.value)} at step {step} (epoch {epoch})"
            )


def _trainable_params(
    model: nn.Module, trainable: Iterable[nn.Parameter] | None, state: TrainState | None
) -> list[nn.Parameter]:
    if state is None:
        return list(trainable) if trainable is not None else list(model.parameters())
    if state.model is not model:
        raise ConfigError("fit(state=...) continues the training of another model")
    owned = [p for g in state.optimizer.param_groups for p in g["params"]]
    if trainable is None:
        return owned
    params = list(trainable)
    ids = {id(p) for p in owned}
    if any(id(p) not in ids for p in params):
        raise ConfigError("fit(state=...): trainable parameters must be among the continued optimizer's")
    return params


def fit(
    model: nn.Module,
    data: ImageSet,
    config: TrainConfig | None = None,
    *,
    trainable: Iterable[nn.Parameter] | None = None,
    loss_fn: LossFn | None = None,
    augmentation: nn.Module | Literal["default"] | None = "default",
    callbacks: Sequence[Callback] = (),
    state: TrainState | None = None,
    optimizer: OptimizerFactory | str | None = None,
    lr_schedule: LrSchedule | None = None,
    **overrides: object,
) -> FitResult:
    """Train ``model`` on ``data`` in place and return what happened.

    Args:
        model: any module mapping ``[B, C, H, W]`` pixels in ``[0, 1]`` to logits.
        data: the training set (moved once to the training device).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.  This call runs
            ``config.steps`` steps, else ``config.epochs`` epochs.
        trainable: the parameters to optimise (default: all, or the continued optimizer's).  Modules
            without any of them are kept in eval mode, so their batch-norm statistics do not drift.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, logits)`` for a :class:`Batch`; default
            cross-entropy with the config's label smoothing.
        augmentation: a batched augmentation module, ``None`` for none, or ``"default"`` for the
            one ``config.augment`` names (:func:`backdoorkit.data.batching.augmentation_for`).
        callbacks: :class:`Callback` objects called after every step and every epoch.
        state: a previous call's ``result.state``: continue with its optimizer (momentum / Adam
            moments and base rates) and its step and epoch counters instead of building new ones.
        optimizer: ``factory(params) -> Optimizer`` (default: the config's SGD / Adam / AdamW); not
            with ``state``.  The rate each group has when built is its base rate.  A string is the
            config field ``optimizer`` (``"sgd"``, ``"adam"``, ``"adamw"``) given as an override.
        lr_schedule: ``schedule(step, total) -> factor`` of each group's base rate, with ``step``
            counted from 0 within this call and ``total`` this call's steps (default: the config's
            schedule).

    Raises:
        ConfigError: invalid overrides, an empty training set, no parameters to train, a ``state`` of
            another model.
        FloatingPointError: the loss became NaN or infinite (one line with the first such step; the
            check runs at each epoch end and every ``check_every`` steps, so the weights may already
            have taken a few non-finite updates).
    """
    global _FIT_CALLS
    _FIT_CALLS += 1
    cfg = config or TrainConfig()
    if isinstance(optimizer, str):  # the TrainConfig field, passed as an override
        overrides["optimizer"], optimizer = optimizer, None
    plain = is_plain(
        trainable=trainable,
        loss_fn=loss_fn,
        augmentation=augmentation,
        callbacks=tuple(callbacks),
        state=state,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
    )
    if overrides:
        try:
            cfg = TrainConfig(**{**cfg.model_dump(), **overrides})
        except ValidationError as exc:
            raise config_error("training config", exc) from None
    if len(data) == 0:
        raise ConfigError(f"cannot train on an empty set ({data.name})")
    if state is not None and optimizer is not None:
        raise ConfigError("fit: pass either state= (continue its optimizer) or optimizer=, not both")
    device = resolve_device(cfg.device)
    model.to(device)
    data = data.to(device)
    params = _trainable_params(model, trainable, state)
    if not params:
        raise ConfigError("no parameters to train")
    if state is None:
        state = TrainState(model=model, optimizer=(optimizer or partial(make_optimizer, cfg=cfg))(params))
    opt = state.optimizer
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    bs = min(cfg.batch_size, len(data))
    per_epoch = len(data) // bs if cfg.drop_last else math.ceil(len(data) / bs)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    result = FitResult(state=state)
    state.result, state.stop = result, False
    if total == 0:
        return result
    identity = {
        "config": cfg.model_dump(exclude={"progress", "check_every"}),
        "total": total,
        "batch": bs,
        "optimizer": type(opt).__qualname__,
    }
    snapshot = snapshot_for(model, data, identity) if plain else None

    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    saved_grad = {id(p): p.requires_grad for p in model.parameters()}
    train_ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in train_ids)
    augment = augmentation
    if augment == "default":
        augment = augmentation_for(data, cfg.augment)
    loss_fn = loss_fn or default_loss(cfg.label_smoothing)
    schedule = lr_schedule or config_schedule(cfg)
    step_model: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(cfg.seed)
    finite = _FiniteCheck(device)

    progress = _progress(cfg.progress, total, data.name)
    lines = EpochLines(model, data.name, len(data), math.ceil(total / per_epoch))
    start = time.perf_counter()
    earlier = 0.0  # seconds spent on the epochs a snapshot restored
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model.train()
        frozen = _freeze_others(model, params) if trainable is not None else []
        step = 0
        saved = snapshot.load() if snapshot is not None else None
        if saved is not None:
            step, earlier = _restore(saved, state, result, gen, device)
            lines.resumed(len(result.losses))
            if progress is not None:
                progress.advance(step)
        try:
            while step < total and not state.stop:
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device, dtype=torch.long)
                scored = False  # a loss that returns logits: the epoch has an accuracy
                seen = 0
                for idx in index_batches(
                    len(data), bs, shuffle=True, generator=gen, drop_last=cfg.drop_last, device=device
                ):
                    if step >= total or state.stop:
                        break
                    factor = schedule(step, total)
                    for g in opt.param_groups:
                        g["lr"] = g["initial_lr"] * factor
                    x = to_pixels(data.x[idx])
                    if augment is not None:
                        x = augment(x)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    batch = Batch(x=x, y=data.y[idx], idx=idx, step=state.step, epoch=state.epoch)
                    with autocast(device, cfg.amp, training=True):
                        out = loss_fn(step_model, batch)
                    loss, logits = out if isinstance(out, tuple) else (out, None)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss = loss.detach()
                    finite.record(loss, state.step)
                    loss_sum += loss * len(idx)
                    if logits is not None:
                        scored = True
                        correct += (logits.detach().argmax(1) == batch.y).sum()
                    seen += len(idx)
                    step += 1
                    state.step += 1
                    if progress is not None:
                        progress.advance()
                    for cb in callbacks:
                        cb.on_step_end(state, batch, loss)
                    if cfg.check_every is not None and step % cfg.check_every == 0:
                        finite.check(state.epoch)
                finite.check(state.epoch)
                result.losses.append(float(loss_sum) / max(seen, 1))
                result.accuracies.append(float(correct) / max(seen, 1))
                result.images += seen
                result.steps = step
                if progress is not None:
                    progress.describe(result.losses[-1], result.accuracies[-1])
                accuracy = result.accuracies[-1] if scored else None
                lines.epoch_end(len(result.losses), result.losses[-1], accuracy)
                state.epoch += 1
                stops = [bool(cb.on_epoch_end(state)) for cb in callbacks]
                state.stop = state.stop or any(stops)
                if snapshot is not None and step < total:
                    snapshot.save(
                        _snapshot_state(
                            state, result, step, gen, device, earlier + time.perf_counter() - start
                        )
                    )
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
    result.seconds = earlier + time.perf_counter() - start
    result.steps = step
    if snapshot is not None:
        snapshot.finish()
    return result


def _snapshot_state(
    state: TrainState,
    result: FitResult,
    step: int,
    gen: torch.Generator,
    device: torch.device,
    seconds: float,
) -> dict[str, object]:
    """What a resumed call needs to go on exactly where this one is (:mod:`backdoorkit.resume`)."""
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": step,
        "state_step": state.step,
        "state_epoch": state.epoch,
        "losses": torch.tensor(result.losses, dtype=torch.float64),
        "accuracies": torch.tensor(result.accuracies, dtype=torch.float64),
        "images": result.images,
        "seconds": seconds,
        "generator": gen.get_state(),
        **rng_states(device),
    }


def _restore(
    saved: dict[str, object], state: TrainState, result: FitResult, gen: torch.Generator, device: torch.device
) -> tuple[int, float]:
    """Load a snapshot into the model, optimizer, counters and RNGs; ``(step, seconds so far)``."""
    state.model.load_state_dict(saved["model"])  # type: ignore[arg-type]
    state.optimizer.load_state_dict(saved["optimizer"])  # type: ignore[arg-type]
    state.step = int(saved["state_step"])  # type: ignore[call-overload]
    state.epoch = int(saved["state_epoch"])  # type: ignore[call-overload]
    result.losses = [float(v) for v in saved["losses"]]  # type: ignore[attr-defined]
    result.accuracies = [float(v) for v in saved["accuracies"]]  # type: ignore[attr-defined]
    result.images = int(saved["images"])  # type: ignore[call-overload]
    result.resumed_epochs = len(result.losses)
    gen.set_state(saved["generator"])  # type: ignore[arg-type]
    restore_rng(saved, device)
    return int(saved["step"]), float(saved["seconds"])  # type: ignore[call-overload, arg-type]


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

    def advance(self, steps: int = 1) -> None:
        self._p.advance(self._task, steps)

    def describe(self, loss: float, acc: float) -> None:
        self._p.update(self._task, description=f"{self._name} loss {loss:.3f} acc {acc:.3f}")

    def close(self) -> None:
        self._p.stop()


def _progress(enabled: bool, total: int, name: str) -> _Progress | None:
    return _Progress(total, name) if enabled else None


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits for a uint8 or float ``[N, C, H, W]`` tensor, in eval mode, batch by batch.

    ``transform`` (a batched trigger, say) is applied to float pixels before the model.
    ``batch_size``: default :func:`~backdoorkit.device.inference_batch` (128 on CPU, 1,024 on CUDA).
    """
    if device is None:
        dev = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    else:
        dev = resolve_device(device)
    model.to(dev)
    batch_size = inference_batch(dev, batch_size)
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


def forward_in_batches(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """``model(x)`` computed in inference batches (:func:`~backdoorkit.device.inference_batch` for
    ``x``'s device), for callers that already hold eval mode, ``no_grad`` and autocast; per-sample
    outputs are the same as one large forward."""
    size = inference_batch(x.device, batch_size)
    if len(x) <= size:
        return model(x)
    return torch.cat([model(part) for part in x.split(size)])


def predict_labels(model: nn.Module, x: torch.Tensor, **kw: object) -> torch.Tensor:
    return predict(model, x, **kw).argmax(1)  # type: ignore[arg-type]


def evaluate(model: nn.Module, data: ImageSet, batch_size: int | None = None) -> float:
    """Accuracy of ``model`` on ``data`` (the BA when ``data`` is the clean test set)."""
    if len(data) == 0:
        return float("nan")
    pred = predict_labels(model, data.x, batch_size=batch_size)
    return float((pred.cpu() == data.y.cpu()).float().mean())


def train_config(**kw: object) -> TrainConfig:
    """Build a :class:`TrainConfig`, turning validation errors into one-line :class:`ConfigError`."""
    try:
        return TrainConfig(**kw)
    except ValidationError as exc:
        raise config_error("training config", exc) from None
