"""The defense interface: four kinds, each declaring the scenarios it serves.

Scenarios (who holds what) are defined in :mod:`backdoorkit.scenarios`.

Kinds:

* :class:`ModelRepair` ``repair(model, clean) -> DefenseResult`` (a repaired copy; the input model
  is left untouched);
* :class:`RobustTraining` ``train(untrusted, holdout | None, model_factory, config) -> DefenseResult``;
* :class:`InputDetector` ``fit(model, clean)`` then ``score(x) -> suspicion`` (higher = more
  suspicious) with a threshold chosen from a false-rejection rate on clean data;
* :class:`ModelInspector` ``inspect(model, clean) -> Verdict`` (infected?, target, trigger).

A defense only ever receives what its scenario gives it: never the test set, the attack's trigger,
the poisoned mask or the target class.  Its hyper-parameters are validated pydantic ``Params``.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from backdoorkit.attacks.base import params_error
from backdoorkit.data.imageset import ImageSet
from backdoorkit.errors import ScenarioError
from backdoorkit.scenarios import Scenario
from backdoorkit.train import TrainConfig


class DefenseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class DefenseResult:
    """A defended model (``None`` for detectors/inspectors) and what the defense found or chose."""

    model: nn.Module | None
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Verdict:
    """An inspector's answer about a model."""

    infected: bool
    target: int | None = None
    trigger: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    scores: dict[str, float] = field(default_factory=dict)


class Defense(ABC):
    """Common parts: validated parameters, identity for caches, scenario checks."""

    name: ClassVar[str] = "defense"
    paper: ClassVar[str] = ""
    kind: ClassVar[Literal["repair", "training", "detector", "inspector"]]
    scenarios: ClassVar[tuple[Scenario, ...]] = ()
    Params: ClassVar[type[DefenseParams]] = DefenseParams

    def __init__(self, **params: Any) -> None:
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            raise params_error(self.name, exc) from None

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, **self.params.model_dump()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"


class ModelRepair(Defense):
    """Repair a suspicious model with a small clean set (scenario S1)."""

    kind = "repair"
    scenarios = (Scenario.S1,)

    def repair(
        self, model: nn.Module, clean: ImageSet, *, seed: int = 0, device: str = "auto"
    ) -> DefenseResult:
        """Return a repaired copy of ``model`` (the argument is not modified)."""
        start = time.perf_counter()
        work = copy.deepcopy(model)
        result = self._repair(work, clean, seed=seed, device=device)
        result.seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult: ...


class RobustTraining(Defense):
    """Train a model on an untrusted set (scenario S2 with a clean holdout, S3 without)."""

    kind = "training"
    scenarios = (Scenario.S2, Scenario.S3)

    def train(
        self,
        untrusted: ImageSet,
        holdout: ImageSet | None,
        *,
        model_factory: Callable[[], nn.Module],
        config: TrainConfig,
        seed: int = 0,
    ) -> DefenseResult:
        if holdout is None and Scenario.S3 not in self.scenarios:
            raise ScenarioError(f"{self.name} needs a clean holdout set (scenario S2)")
        start = time.perf_counter()
        result = self._train(untrusted, holdout, model_factory=model_factory, config=config, seed=seed)
        result.seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _train(
        self,
        untrusted: ImageSet,
        holdout: ImageSet | None,
        *,
        model_factory: Callable[[], nn.Module],
        config: TrainConfig,
        seed: int,
    ) -> DefenseResult: ...


class InputDetector(Defense):
    """Flag triggered inputs at test time (scenario S1)."""

    kind = "detector"
    scenarios = (Scenario.S1,)
    threshold: float | None = None

    @abstractmethod
    def fit(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> InputDetector: ...

    @abstractmethod
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Suspicion per input (higher = more likely triggered); ``x`` float pixels ``[B, C, H, W]``."""

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise ScenarioError(f"{self.name}: fit() the detector before flagging inputs")
        return self.score(x) > self.threshold


class ModelInspector(Defense):
    """Decide whether a model is backdoored (scenario S1)."""

    kind = "inspector"
    scenarios = (Scenario.S1,)

    @abstractmethod
    def inspect(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> Verdict: ...
