"""The attack interface.

An attack is a small object with validated parameters (a pydantic ``Params`` model) that

* ``setup(train, seed=...)`` computes whatever its trigger needs from the attacker's clean data
  (a seeded pattern, an attacker model, an adversarial perturbation ...), cached by parameters + seed;
* ``poison(train, seed=...)`` returns a :class:`PoisonedSet`: the training set with poisoned images
  quantised to uint8 (as an attacker would ship image files), relabelled for dirty-label attacks,
  plus the boolean mask of poisoned rows so isolation defenses can be scored;
* ``apply(x)`` adds the trigger to a float batch ``[B, C, H, W]`` in ``[0, 1]`` on its device;
* ``target_labels(y)`` / ``asr_mask(y)`` define the all-to-one (``target``) or all-to-all
  (``(y + 1) mod C``) mapping and which test images count for ASR;
* ``prepare_model(model)`` changes the model itself for attacks on the structure (identity here);
* ``train_victim(model_factory, poisoned, config)`` trains the victim's model on the poisoned set.
  The default builds ``prepare_model(model_factory())``, runs :func:`backdoorkit.train.fit` on
  ``poisoned.data`` with ``config`` and returns the model in eval mode.  Attacks that control the
  victim's training (TrojanNet, latent backdoors, pruning-aware attacks, on-the-fly WaNet) override
  it; :func:`backdoorkit.pipeline.train_victim` is the one entry point the CLI, the benchmarks and the
  experiment runner call, so an override is used everywhere.

``setup`` and ``poison`` take ``cache=``: the :class:`~backdoorkit.cache.ArtifactCache` where computed
artefacts (attacker models, triggers, perturbations) are read and written.  It is stored on the
attack (:attr:`Attack.cache`), so later calls keep using it; never given, it is the default root
(``$BACKDOORKIT_CACHE`` or ``~/.cache/backdoorkit``).

A new data-poisoning attack is usually just ``Params`` plus ``apply`` (and ``_setup`` if the trigger
needs data).  Poisoned rows are chosen at random (seeded) among non-target images for dirty-label
attacks and among target-class images for clean-label ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from backdoorkit.data.imageset import ImageSet, quantize, to_pixels
from backdoorkit.data.splits import check_amount
from backdoorkit.errors import ConfigError

if TYPE_CHECKING:
    from backdoorkit.cache import ArtifactCache
    from backdoorkit.train import TrainConfig

CHUNK = 2048  # images per batch when poisoning a whole set


class AttackParams(BaseModel):
    """Parameters every attack takes.

    Attributes:
        target: the target class (all-to-one) - ignored for all-to-all.
        mode: ``all2one`` or ``all2all`` (target = (y + 1) mod C).
        rate: poison rate, a fraction of the training set (float) or a count (int); ``None`` takes
            the attack's default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: int = Field(0, ge=0)
    mode: Literal["all2one", "all2all"] = "all2one"
    rate: float | int | None = None


@dataclass
class PoisonedSet:
    """A poisoned training set and where the poison is.

    Attributes:
        data: the training set as the victim receives it (uint8 images).
        mask: bool ``[N]``, True for rows that carry the backdoor (trigger + target relation).
        attack: the attack's registered name.
        params: the attack's parameters.
        info: anything else worth recording (e.g. WaNet's noise-mode rows, clean-label capping).
    """

    data: ImageSet
    mask: torch.Tensor
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def indices(self) -> torch.Tensor:
        return self.mask.nonzero().flatten()

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def params_error(owner: str, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return ConfigError(f"{owner}: {loc + ': ' if loc else ''}{msg}")


class LabelModeSwitch:
    """A ``label_mode`` that a boolean parameter flips per instance.

    On the class (and so in the registry) it is ``default``; on an instance it is the other mode when
    ``params.<field>`` is true.  Refool's ``dirty`` and Blended's ``clean_label`` use it.
    """

    def __init__(self, field: str, default: Literal["dirty", "clean"]) -> None:
        self.field = field
        self.default = default

    def __get__(self, obj: object, owner: type | None = None) -> str:
        params = getattr(obj, "params", None) if obj is not None else None
        if params is not None and getattr(params, self.field):
            return "clean" if self.default == "dirty" else "dirty"
        return self.default


class Attack(ABC):
    """Base class of all attacks (see the module docstring for the life cycle)."""

    name: ClassVar[str] = "attack"
    paper: ClassVar[str] = ""
    label_mode: ClassVar[Literal["dirty", "clean"]] = "dirty"
    supports_all2all: ClassVar[bool] = True
    default_rate: ClassVar[float] = 0.1
    Params: ClassVar[type[AttackParams]] = AttackParams

    def __init__(self, **params: Any) -> None:
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            raise params_error(self.name, exc) from None
        if self.params.mode == "all2all" and not self.supports_all2all:
            raise ConfigError(f"{self.name}: all-to-all mode is not supported by this attack")
        if self.label_mode == "clean" and self.params.mode == "all2all":
            raise ConfigError(f"{self.name}: a clean-label attack is all-to-one")
        rate = self.params.rate if self.params.rate is not None else self.default_rate
        self.rate: float | int = check_amount(rate, f"{self.name}: rate")
        self._ready_key: str | None = None
        self._cache: ArtifactCache | None = None
        self.num_classes: int | None = None
        self.image_shape: tuple[int, int, int] | None = None
        self._patterns: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}

    def _pattern_on(
        self, shape: tuple[int, ...], device: torch.device | str, build: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """A fixed pattern for images of ``shape``, ``[1, *shape]`` on ``device``: built once by
        ``build()`` (``[*shape]``, any device) and kept per (shape, device) so batches reuse it."""
        dev = torch.device(device)
        key = (tuple(shape), str(dev))
        if key not in self._patterns:
            self._patterns[key] = build().unsqueeze(0).to(dev)
        return self._patterns[key]

    # ------------------------------------------------------------------ identity
    @property
    def target(self) -> int:
        return self.params.target

    @property
    def all2all(self) -> bool:
        return self.params.mode == "all2all"

    def describe(self) -> dict[str, Any]:
        """Name + every parameter (defaults resolved): what determines this attack."""
        return {"attack": self.name, **self.params.model_dump(), "rate": self.rate}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "attack")
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ target mapping
    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label the attacker wants for inputs of true class ``y``."""
        if self.all2all:
            if self.num_classes is None:
                raise ConfigError(f"{self.name}: call setup() or poison() before using all-to-all targets")
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target)

    def asr_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Which test images count for ASR: non-target ones (all-to-one) or all (all-to-all)."""
        if self.all2all:
            return torch.ones_like(y, dtype=torch.bool)
        return y != self.target

    # ------------------------------------------------------------------ set-up
    @property
    def cache(self) -> ArtifactCache:
        """Where this attack's computed artefacts live: the cache last passed to ``setup`` /
        ``poison``, else the default root (resolved at each use)."""
        if self._cache is not None:
            return self._cache
        from backdoorkit.cache import ArtifactCache

        return ArtifactCache()

    def setup(
        self, train: ImageSet, *, seed: int = 0, cache: ArtifactCache | None = None, **kwargs: Any
    ) -> Attack:
        """Prepare the trigger from the attacker's clean training data (idempotent per data/seed).

        ``cache``: where computed artefacts are read and written (kept for later calls; ``None``
        keeps the one given before, else the default root)."""
        if cache is not None:
            self._cache = cache
        if not self.all2all and self.target >= train.num_classes:
            raise ConfigError(
                f"{self.name}: target {self.target} out of range for {train.num_classes} classes"
            )
        from backdoorkit.data.fingerprint import fingerprint

        key = f"{fingerprint(train)}:{seed}"
        if self._ready_key == key:
            return self
        self.num_classes = train.num_classes
        self.image_shape = train.image_shape
        self.validate_shape(train.image_shape)
        self._setup(train, seed=seed, **kwargs)
        self._ready_key = key
        return self

    def _setup(self, train: ImageSet, *, seed: int, **kwargs: Any) -> None:  # noqa: B027 (optional hook)
        """Override to compute data-dependent trigger parts (default: nothing)."""

    def validate_shape(self, shape: tuple[int, int, int]) -> None:  # noqa: B027 (optional hook)
        """Override to reject image shapes the trigger does not fit (patch outside the image ...)."""

    def _require_ready(self) -> None:
        if self._ready_key is None:
            raise ConfigError(f"{self.name}: call setup(train) or poison(train) before apply()")

    # ------------------------------------------------------------------ trigger
    @abstractmethod
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Add the trigger to float pixels ``[B, C, H, W]`` in ``[0, 1]`` (same device and shape)."""

    def apply_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Trigger uint8 images and quantise the result back to uint8, in chunks."""
        out = torch.empty_like(x)
        for start in range(0, x.shape[0], CHUNK):
            out[start : start + CHUNK] = quantize(self.apply(to_pixels(x[start : start + CHUNK])))
        return out

    def poison_images(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """Float pixels of the rows chosen for poisoning -> their poisoned version.

        Default: the test-time trigger.  Clean-label attacks override it (adversarial perturbation
        before the trigger, reduced amplitude ...).
        """
        return self.apply(x)

    # ------------------------------------------------------------------ poisoning
    def poison_count(self, train: ImageSet) -> int:
        n = len(train)
        if isinstance(self.rate, int):
            if self.rate > n:
                raise ConfigError(f"{self.name}: poison count {self.rate} exceeds the {n} training images")
            return self.rate
        return round(self.rate * n)

    def candidates(self, train: ImageSet) -> torch.Tensor:
        """Rows that may be poisoned: non-target rows (dirty, all-to-one), target rows (clean), all."""
        y = train.y.cpu()
        if self.label_mode == "clean":
            return (y == self.target).nonzero().flatten()
        if self.all2all:
            return torch.arange(len(y))
        return (y != self.target).nonzero().flatten()

    def select(self, train: ImageSet, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded random choice of the rows to poison; returns ``(indices, info)``."""
        cand = self.candidates(train)
        want = self.poison_count(train)
        info: dict[str, Any] = {"requested": want}
        if want > len(cand):
            what = "target-class" if self.label_mode == "clean" else "eligible"
            info["capped"] = (
                f"rate asks for {want} rows but only {len(cand)} {what} images exist; poisoning all"
            )
            want = len(cand)
        gen = torch.Generator().manual_seed(seed)
        pick = cand[torch.randperm(len(cand), generator=gen)[:want]]
        return torch.sort(pick).values, info

    def poison(
        self, train: ImageSet, *, seed: int = 0, cache: ArtifactCache | None = None, **setup_kwargs: Any
    ) -> PoisonedSet:
        """Poison ``train`` (a new set; the input is unchanged); ``cache`` as in :meth:`setup`."""
        self.setup(train, seed=seed, cache=cache, **setup_kwargs)
        idx, info = self.select(train, seed)
        x = train.x.clone()
        y = train.y.clone()
        dev_idx = idx.to(train.device)
        for start in range(0, len(idx), CHUNK):
            part = dev_idx[start : start + CHUNK]
            px = self.poison_images(to_pixels(train.x[part]), train.y[part], seed)
            x[part] = quantize(px)
        if self.label_mode == "dirty":
            y[dev_idx] = self.target_labels(train.y[dev_idx])
        mask = torch.zeros(len(train), dtype=torch.bool)
        mask[idx] = True
        poisoned = train.with_data(x, y, name=f"{train.name}+{self.name}")
        ps = PoisonedSet(poisoned, mask, self.name, self.describe(), info)
        return self.finish_poison(ps, train, seed)

    def finish_poison(self, poisoned: PoisonedSet, clean: ImageSet, seed: int) -> PoisonedSet:
        """Hook for attacks that modify extra rows (WaNet's noise mode); default: unchanged."""
        return poisoned

    # ------------------------------------------------------------------ structure attacks
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Change the model's structure before training (BadRes, TrojanNet ...); identity here."""
        return model

    def train_victim(
        self, model_factory: Callable[[], nn.Module], poisoned: PoisonedSet, config: TrainConfig
    ) -> nn.Module:
        """Train the victim's model on ``poisoned`` and return it in eval mode.

        Default: ``prepare_model(model_factory())`` trained by :func:`backdoorkit.train.fit` on
        ``poisoned.data`` with ``config`` (its seed included).  Override for attacks that control
        the victim's training; call it through :func:`backdoorkit.pipeline.train_victim`.
        """
        from backdoorkit.train import fit

        model = self.prepare_model(model_factory())
        fit(model, poisoned.data, config)
        return model.eval()
