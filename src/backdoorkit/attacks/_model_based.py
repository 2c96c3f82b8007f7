"""Shared machinery of the attacks that need an attacker model (``label_consistent``, ``trojan_sq``,
``trojan_wm``, ``smooth``).

* :class:`ModelBasedAttack` takes the attacker's model from ``poison(train, seed=..., model=m)`` /
  ``setup(..., model=m)`` or, without one, trains its own with the dataset's recipe
  (:func:`attacker_model`: ``attacker_arch``/``attacker_width``, optionally PGD adversarial training
  for ``attacker_adv_epochs`` epochs), and caches it in the attack's
  :class:`~backdoorkit.cache.ArtifactCache` (:attr:`Attack.cache`: the one passed as
  ``poison(..., cache=...)`` / ``setup(..., cache=...)``, else the default root).
* The model is only materialised when something has to be computed: a cached trigger or perturbation
  needs neither training nor loading.  The model's *identity* (:attr:`ModelBasedAttack.model_ident`)
  is :func:`backdoorkit.cache.model_digest` of the passed model (weights, buffers and skip scales),
  or the recipe of the self-trained one.
* :func:`pgd_linf` is the batched L-inf PGD used both for label-consistent perturbations and for
  adversarial training of the attacker model.
* :func:`compute_calls` counts the expensive computations (caching tests check that a second
  ``poison()`` with the same inputs runs none of them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from backdoorkit.attacks.base import Attack, AttackParams
from backdoorkit.cache import ArtifactCache, hash_key, model_digest
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.data.imageset import ImageSet
from backdoorkit.device import resolve_device
from backdoorkit.errors import BackdoorkitError, ConfigError

_CALLS: Counter[str] = Counter()

# PGD adversarial training of the attacker model (hkunzhe / BackdoorBench label-consistent recipe)
ADV_EPS = 8 / 255
ADV_STEP = 2 / 255
ADV_STEPS = 10

MODEL_KIND = "attacker_models"
#: training-config fields that do not change the trained model (left out of its cache key)
RECIPE_VOLATILE = {"device", "progress", "compile", "amp", "channels_last", "check_every"}


def compute_calls(name: str | None = None) -> int:
    """How many expensive computations ran in this process (all, or those called ``name``:
    ``"attacker_fit"``, ``"pgd_poison"``, ``"trojan_trigger"``, ``"smooth_uap"``)."""
    return sum(_CALLS.values()) if name is None else _CALLS[name]


def count_call(name: str) -> None:
    _CALLS[name] += 1


# ---------------------------------------------------------------------------- parameters
class ModelBasedParams(AttackParams):
    """Parameters shared by the attacks that use an attacker model (ignored when one is passed)."""

    attacker_arch: str = Field("resnet18", description="architecture of the self-trained attacker model")
    attacker_width: int | None = Field(16, ge=1, description="its width (None: the architecture's default)")
    attacker_epochs: int | None = Field(None, ge=1, description="its epochs (None: the dataset recipe's)")
    attacker_adv_epochs: int = Field(
        0, ge=0, description="if > 0: PGD adversarial training (eps 8/255, step 2/255, 10 steps), epochs"
    )
    attacker_amp: bool | None = Field(
        None,
        description="train it with bf16 autocast and channels_last (None: the device's default, on for "
        "CUDA, off for CPU; ~2.7x faster for a full-width ResNet-18 on an AMX CPU); not part of the "
        "attacker's cache key, so a cached attacker is reused whichever precision trained it",
    )

    @field_validator("attacker_arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from backdoorkit.models.registry import MODELS

        try:
            return MODELS.entry(value).name
        except BackdoorkitError as exc:
            raise ValueError(str(exc)) from None


# ---------------------------------------------------------------------------- model identity
def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------- PGD
def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    targeted: bool = False,
) -> torch.Tensor:
    """L-inf PGD on a whole batch: ``steps`` signed-gradient steps of size ``step`` that maximise the
    cross-entropy of ``y`` (minimise it when ``targeted``), projected onto ``||delta||_inf <= eps`` and
    the pixel range ``[0, 1]``.  The model's mode is left as it is (the caller decides eval/train).
    Returns the adversarial pixels (detached)."""
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
        delta = (noise.to(x.device) * 2 - 1) * eps
    else:
        delta = torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x).detach()
    sign = -1.0 if targeted else 1.0
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta).float(), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = delta + sign * step * grad.sign()
                delta = delta.clamp(-eps, eps)
                delta = (x + delta).clamp(0, 1) - x
            delta = delta.detach()
    return (x + delta).detach()


def adversarial_loss(
    eps: float = ADV_EPS, step: float = ADV_STEP, steps: int = ADV_STEPS
) -> Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]:
    """A ``fit`` loss (:data:`backdoorkit.train.LossFn`) for PGD adversarial training (Madry et al.
    2018): CE on PGD examples of ``batch.x``.

    The PGD examples are made with the model as ``fit`` holds it (training mode: batch-norm uses the
    batch's statistics)."""

    def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = pgd_linf(model, batch.x, batch.y, eps=eps, step=step, steps=steps, random_start=True)
        logits = model(x_adv)
        return F.cross_entropy(logits.float(), batch.y), logits

    return loss


# ---------------------------------------------------------------------------- attacker model
def attacker_recipe(params: ModelBasedParams, train: ImageSet, seed: int) -> dict[str, Any]:
    """Everything that determines the self-trained attacker model (its cache key)."""
    from backdoorkit.pipeline import recipe_for

    cfg = recipe_for(train, epochs=params.attacker_epochs)
    return {
        "arch": params.attacker_arch,
        "width": params.attacker_width,
        "adv_epochs": params.attacker_adv_epochs,
        "adv": [ADV_EPS, ADV_STEP, ADV_STEPS] if params.attacker_adv_epochs else None,
        "config": cfg.model_dump(exclude=RECIPE_VOLATILE),
        "seed": seed,
        "data": fingerprint(train),
    }


def attacker_model(params: ModelBasedParams, train: ImageSet, seed: int, cache: ArtifactCache) -> nn.Module:
    """The attacker's own model: loaded from the cache, or trained on ``train`` and cached.

    Clean training uses the dataset's recipe (``attacker_epochs`` overrides its epochs).  With
    ``attacker_adv_epochs > 0`` the model is trained from scratch with PGD adversarial training
    (eps 8/255, step 2/255, 10 steps, random start) for that many epochs instead, as the PyTorch ports
    of the label-consistent attack do.

    Clean training snapshots every epoch to ``<cache>/partial/<key>`` (:mod:`backdoorkit.resume`), so a
    long one (the SSFT preset's full-width attacker takes hours on a CPU) resumes after a stopped run
    instead of starting again; adversarial training has a custom loss and is not snapshotted.
    """
    from backdoorkit.pipeline import make_model, recipe_for
    from backdoorkit.resume import resumable_training
    from backdoorkit.train import fit
    from backdoorkit.train_report import training_role

    recipe = attacker_recipe(params, train, seed)
    key = hash_key("attacker", recipe)

    def train_attacker() -> nn.Module:
        count_call("attacker_fit")
        fast = params.attacker_amp
        cfg = recipe_for(train, epochs=params.attacker_epochs, amp=fast, channels_last=fast or None)
        cfg = cfg.model_copy(update={"seed": seed})
        model = make_model(params.attacker_arch, train, width=params.attacker_width, seed=seed)
        if params.attacker_adv_epochs > 0:
            adv_cfg = cfg.model_copy(update={"epochs": params.attacker_adv_epochs})
            with training_role("attacker model (adversarial training)"):
                fit(model, train, adv_cfg, loss_fn=adversarial_loss())
        else:
            with resumable_training(cache.partial(key)), training_role("attacker model"):
                fit(model, train, cfg)
        return model

    device = resolve_device("auto")
    return cache.get_or_compute_model(MODEL_KIND, key, train_attacker, {"recipe": recipe}, device=device)


def check_attacker(name: str, model: nn.Module, train: ImageSet, *, need_features: bool = False) -> None:
    """Reject a passed attacker model that does not fit the data (class count, channels)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name}: model must be a torch module, got {type(model).__name__}")
    if need_features and not callable(getattr(model, "features", None)):
        raise ConfigError(f"{name}: the attacker model needs a features(x) method (penultimate layer)")
    from backdoorkit.device import eval_mode

    probe = torch.zeros(1, *train.image_shape, device=model_device(model))
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(probe)
    except RuntimeError as exc:
        raise ConfigError(f"{name}: the attacker model rejects {train.image_shape} images: {exc}") from None
    if out.dim() != 2 or out.shape[1] != train.num_classes:
        raise ConfigError(
            f"{name}: the attacker model outputs {tuple(out.shape[1:])} logits, "
            f"the data has {train.num_classes} classes"
        )


# ---------------------------------------------------------------------------- base class
class ModelBasedAttack(Attack):
    """An attack whose trigger or perturbation is computed on an attacker model.

    Subclasses call :meth:`attacker` when (and only when) they must compute something; cache keys
    use :meth:`compute_key`, which combines the parameters listed in ``compute_fields``, the seed, the
    training-data fingerprint and :attr:`model_ident`.
    """

    #: the parameters that change what is computed (target/rate/mode usually do not)
    compute_fields: tuple[str, ...] = ()
    needs_features: bool = False

    params: ModelBasedParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.model_ident: str | None = None
        self._model: nn.Module | None = None
        self._train: ImageSet | None = None
        self._seed = 0

    def setup(
        self,
        train: ImageSet,
        *,
        seed: int = 0,
        cache: ArtifactCache | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> Attack:
        """As :meth:`Attack.setup`, plus ``model``: the attacker's model (default: train one, kept in
        the attack's cache)."""
        if model is not None:
            check_attacker(self.name, model, train, need_features=self.needs_features)
            ident = f"model:{model_digest(model)}"
        else:
            ident = "own:" + hash_key(attacker_recipe(self.params, train, seed))
        if ident != self.model_ident:
            self._ready_key = None  # a different attacker model: recompute
        self.model_ident = ident
        self._model = model
        self._train = train
        self._seed = seed
        return super().setup(train, seed=seed, cache=cache, **kwargs)

    def attacker(self) -> nn.Module:
        """The attacker model (the passed one, or the self-trained one, trained or loaded lazily)."""
        if self._model is None:
            if self._train is None:
                raise ConfigError(f"{self.name}: call setup(train) or poison(train) first")
            self._model = attacker_model(self.params, self._train, self._seed, self.cache)
        return self._model

    def compute_key(self, seed: int, *extra: Any) -> str:
        fields = {k: getattr(self.params, k) for k in self.compute_fields}
        data = fingerprint(self._train) if self._train is not None else None
        return hash_key(self.name, fields, seed, data, self.model_ident, *extra)
