"""The defense interface: four kinds, each of which runs and scores itself.

Kinds (scenarios in :mod:`backdoorkit.scenarios`):

* :class:`ModelRepair` ``repair(model, clean) -> DefenseResult`` (a repaired copy; the input model
  is left untouched); scenario S1;
* :class:`RobustTraining` ``train(untrusted, holdout | None, model_factory, config) -> DefenseResult``
  (a model trained on the untrusted set, optionally with the rows it ``isolated``); S2, or S3 without
  a holdout;
* :class:`InputDetector` ``fit(model, clean)`` then ``score(x) -> suspicion`` (higher = more
  suspicious) with a ``threshold`` chosen from a false-rejection rate on clean data; S1;
* :class:`ModelInspector` ``inspect(model, clean) -> Verdict`` (infected?, target, trigger, anomaly
  index); S1.

Every kind has the same two entry points, so the experiment runner and the CLI never branch on kinds:

* ``run(inputs: DefenseInputs) -> DefenseResult`` takes what the scenario gives (and only that: never
  the test set, the attack's trigger, the poisoned mask or the target class) and calls the
  kind's method above;
* ``evaluate(result, test, attack, mask=None) -> dict[str, float]`` is the *evaluator's* side: BA / ASR
  of the defended (or guarded, or inspected) model, plus what the kind measures (AUROC and TPR at
  1 % / 5 % FPR for detectors, isolation precision / recall for robust training, the verdict for
  inspectors) and every number the defense put in ``result.metrics``.  Any metric name is fine:
  the results database stores metrics in a long table and the report shows them without code.
  (It is called ``evaluate``, not ``score``, because ``InputDetector.score(x)`` is a detector's
  per-input suspicion, the name the detection literature and our detectors use.)

Hyper-parameters are validated pydantic ``Params`` (unknown keys are errors).  ``run``, ``repair`` and
``train`` run the method with torch's global random generators seeded with the seed they are given
(:func:`backdoorkit.seeding.seeded`): its result depends on its inputs and that seed, not on what the
process did before.
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

from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.errors import ScenarioError, config_error
from backdoorkit.scenarios import Scenario, needs_text
from backdoorkit.seeding import seeded
from backdoorkit.train import TrainConfig

SCORE_CHUNK = 512
"""Images per batch when a detector scores a whole test set."""


class DefenseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Verdict:
    """An inspector's answer about a model.

    ``anomaly_index`` is the method's outlier statistic (Neural Cleanse: MAD-normalised deviation of
    the smallest trigger norm, infected when > 2); ``trigger`` / ``mask`` the recovered trigger of the
    suspected ``target`` (float ``[C, H, W]`` / ``[1, H, W]`` in ``[0, 1]``); ``scores`` per-class
    or method-specific numbers.
    """

    infected: bool
    target: int | None = None
    trigger: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    scores: dict[str, float] = field(default_factory=dict)
    anomaly_index: float | None = None


@dataclass
class DefenseInputs:
    """What a scenario hands a defense (and nothing more).

    S1: ``model`` (the suspicious model) and ``clean`` (the defender's clean samples).  S2:
    ``untrusted`` (the training set as received), ``clean`` (a clean holdout), ``model_factory`` and
    ``config`` (the architecture and recipe to train).  S3: as S2 without ``clean``.
    """

    scenario: Scenario | str
    model: nn.Module | None = None
    clean: ImageSet | None = None
    untrusted: ImageSet | None = None
    model_factory: Callable[[], nn.Module] | None = None
    config: TrainConfig | None = None
    seed: int = 0
    device: str = "auto"


@dataclass
class DefenseResult:
    """What a defense produced.

    Attributes:
        model: the repaired / trained model; for detectors the guarded model, for inspectors the
            inspected one (``None`` only for a result built outside :meth:`Defense.run`).
        info: anything worth recording (JSON-able: the chosen layers, a skip scan, settings ...).
        seconds: wall time of the defense itself.
        isolated: robust training: bool mask over the untrusted rows the defense set apart as poisoned.
        verdict: inspectors: the :class:`Verdict`.
        detector: detectors: the fitted detector (its ``score`` and ``threshold``).
        metrics: numbers the defense itself measured on its own data (DP epsilon, selection scores ...);
            :meth:`Defense.evaluate` reports them next to the evaluation metrics.
    """

    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    isolated: torch.Tensor | None = None
    verdict: Verdict | None = None
    detector: InputDetector | None = None
    metrics: dict[str, float] = field(default_factory=dict)


Kind = Literal["repair", "training", "detector", "inspector"]


class Defense(ABC):
    """Common parts: validated parameters, the scenarios served, ``run`` and ``evaluate``."""

    name: ClassVar[str] = "defense"
    paper: ClassVar[str] = ""
    kind: ClassVar[Kind]
    scenarios: ClassVar[tuple[Scenario, ...]] = ()
    Params: ClassVar[type[DefenseParams]] = DefenseParams
    revision: ClassVar[int] = 0
    """Bumped when a change makes the defense compute something else from the same inputs, so that the
    experiment cache does not hand back results of the older code (0 leaves the cache keys as they were)."""

    def __init__(self, **params: Any) -> None:
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            raise config_error(self.name, exc) from None

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, **self.params.model_dump()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ the two entry points
    def run(self, inputs: DefenseInputs) -> DefenseResult:
        """Run the defense on what the scenario gives (checks the scenario first)."""
        scenario = Scenario(inputs.scenario)
        if scenario not in self.scenarios:
            raise ScenarioError(f"{self.name} needs {needs_text(self.scenarios)}, not {scenario.value}")
        start = time.perf_counter()
        with seeded(inputs.seed):
            result = self._run(inputs)
        result.seconds = result.seconds or time.perf_counter() - start
        return result

    @abstractmethod
    def _run(self, inputs: DefenseInputs) -> DefenseResult: ...

    def evaluate(
        self,
        result: DefenseResult,
        test: ImageSet,
        attack: Any = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Evaluation metrics of ``result`` (the evaluator's side: test set, attack, poisoned mask).

        Default: BA / ASR (float and uint8-quantised trigger) of ``result.model`` and the defense's
        own ``result.metrics``.
        """
        from backdoorkit.metrics import backdoor_metrics

        if result.model is None:
            raise ScenarioError(f"{self.name}: the result holds no model to evaluate")
        return {**result.metrics, **backdoor_metrics(result.model, test, attack)}

    @staticmethod
    def _need(value: Any, what: str, name: str) -> Any:
        if value is None:
            raise ScenarioError(f"{name} needs {what}")
        return value


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
        with seeded(seed):
            result = self._repair(work, clean, seed=seed, device=device)
        result.seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult: ...

    def _run(self, inputs: DefenseInputs) -> DefenseResult:
        model = self._need(inputs.model, "a suspicious model (scenario S1)", self.name)
        clean = self._need(inputs.clean, "clean samples (scenario S1)", self.name)
        return self.repair(model, clean, seed=inputs.seed, device=inputs.device)


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
        with seeded(seed):
            result = self._train(untrusted, holdout, model_factory=model_factory, config=config, seed=seed)
        result.seconds = time.perf_counter() - start
        if result.isolated is not None:
            iso = torch.as_tensor(result.isolated).cpu()
            if iso.dtype != torch.bool:  # indices -> mask
                mask = torch.zeros(len(untrusted), dtype=torch.bool)
                mask[iso.long()] = True
                iso = mask
            result.isolated = iso
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

    def _run(self, inputs: DefenseInputs) -> DefenseResult:
        untrusted = self._need(inputs.untrusted, "an untrusted training set (scenario S2 / S3)", self.name)
        factory = self._need(inputs.model_factory, "a model factory", self.name)
        config = self._need(inputs.config, "a training config", self.name)
        holdout = inputs.clean if Scenario(inputs.scenario) == Scenario.S2 else None
        return self.train(untrusted, holdout, model_factory=factory, config=config, seed=inputs.seed)

    def evaluate(
        self, result: DefenseResult, test: ImageSet, attack: Any = None, *, mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """BA / ASR, and isolation precision / recall against the poisoned ``mask`` when both exist."""
        from backdoorkit.metrics import isolation_metrics

        out = super().evaluate(result, test, attack)
        if result.isolated is not None and mask is not None:
            iso = isolation_metrics(result.isolated, mask)
            out.update(iso_precision=iso["precision"], iso_recall=iso["recall"], isolated=iso["isolated"])
        return out


class InputDetector(Defense):
    """Flag triggered inputs at test time (scenario S1)."""

    kind = "detector"
    scenarios = (Scenario.S1,)
    threshold: float | None = None
    info: dict[str, Any]
    """What ``fit`` chose (JSON-able), copied into the result's ``info``."""
    fit_metrics: dict[str, float]
    """Numbers ``fit`` measured on the clean samples (e.g. the clean score spread), reported as metrics."""

    @abstractmethod
    def fit(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> InputDetector: ...

    @abstractmethod
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Suspicion per input (higher = more likely triggered); ``x`` float pixels ``[B, C, H, W]``."""

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise ScenarioError(f"{self.name}: fit() the detector before flagging inputs")
        return self.score(x) > self.threshold

    def scores(self, x: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """Suspicion of a whole uint8 or float set, in chunks on ``device``; a float CPU vector."""
        out = [
            self.score(to_pixels(x[i : i + SCORE_CHUNK]).to(device)).detach().float().cpu().reshape(-1)
            for i in range(0, len(x), SCORE_CHUNK)
        ]
        return torch.cat(out) if out else torch.empty(0)

    def _run(self, inputs: DefenseInputs) -> DefenseResult:
        model = self._need(inputs.model, "a model to guard (scenario S1)", self.name)
        clean = self._need(inputs.clean, "clean samples (scenario S1)", self.name)
        self.fit(model, clean, seed=inputs.seed)
        info = dict(getattr(self, "info", {}) or {})
        return DefenseResult(model, info, detector=self, metrics=dict(getattr(self, "fit_metrics", {}) or {}))

    def evaluate(
        self, result: DefenseResult, test: ImageSet, attack: Any = None, *, mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """AUROC and TPR at 1 % / 5 % FPR on clean vs triggered (ASR-eligible) test images, and the
        guarded model's BA / ASR at the detector's threshold: a flagged input is rejected, so BA is
        the fraction of clean test images accepted *and* classified correctly, ASR the fraction of
        triggered images accepted and classified as the target."""
        return guarded_metrics(result, test, attack)


class ModelInspector(Defense):
    """Decide whether a model is backdoored (scenario S1)."""

    kind = "inspector"
    scenarios = (Scenario.S1,)

    @abstractmethod
    def inspect(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> Verdict: ...

    def _run(self, inputs: DefenseInputs) -> DefenseResult:
        model = self._need(inputs.model, "a model to inspect (scenario S1)", self.name)
        clean = self._need(inputs.clean, "clean samples (scenario S1)", self.name)
        v = self.inspect(model, clean, seed=inputs.seed)
        return DefenseResult(model, {}, verdict=v)

    def evaluate(
        self, result: DefenseResult, test: ImageSet, attack: Any = None, *, mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """The inspected model's BA / ASR, ``infected`` (0 / 1), ``anomaly_index`` and, for an
        all-to-one attack and a named target, ``target_correct`` (0 / 1)."""
        out = super().evaluate(result, test, attack)
        v = result.verdict
        if v is None:
            return out
        out["infected"] = float(bool(v.infected))
        if v.anomaly_index is not None:
            out["anomaly_index"] = float(v.anomaly_index)
        if attack is not None and not attack.all2all and v.target is not None:
            out["target_correct"] = float(int(v.target) == attack.target)
        return out


def guarded_metrics(result: DefenseResult, test: ImageSet, attack: Any) -> dict[str, float]:
    """Detection metrics and the guarded model's BA / ASR (see :meth:`InputDetector.evaluate`)."""
    from backdoorkit.metrics import backdoor_metrics, detection_metrics
    from backdoorkit.train import predict_labels

    det = result.detector
    model = result.model
    if det is None or model is None:
        raise ScenarioError("a detector result needs the fitted detector and the guarded model")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    raw = backdoor_metrics(model, test, attack)
    out: dict[str, float] = {**result.metrics, "model_ba": raw["ba"]}
    if "asr" in raw:
        out["model_asr"], out["asr_quantized"] = raw["asr"], raw["asr_quantized"]
    s_clean = det.scores(test.x, device)
    xt = target = s_trig = None
    if attack is not None:
        eligible = attack.asr_mask(test.y.cpu())
        x = test.x.cpu()[eligible]
        target = attack.target_labels(test.y.cpu()[eligible])
        parts = [
            attack.apply(to_pixels(x[i : i + SCORE_CHUNK]).to(device)).cpu()
            for i in range(0, len(x), SCORE_CHUNK)
        ]
        xt = torch.cat(parts) if parts else torch.empty(0, *test.image_shape)
        s_trig = det.scores(xt, device)
        if len(s_trig) and len(s_clean):
            out.update(detection_metrics(s_clean, s_trig))
    if det.threshold is None:
        out["ba"] = raw["ba"]
        if "asr" in raw:
            out["asr"] = raw["asr"]
        return out
    out["threshold"] = float(det.threshold)
    flag_clean = s_clean > det.threshold
    out["false_rejection"] = float(flag_clean.float().mean())
    pred = predict_labels(model, test.x).cpu()
    out["ba"] = float(((pred == test.y.cpu()) & ~flag_clean).float().mean())
    if xt is not None and s_trig is not None and target is not None and len(xt):
        flag_trig = s_trig > det.threshold
        out["detected"] = float(flag_trig.float().mean())
        pred_t = predict_labels(model, xt.to(device)).cpu()
        out["asr"] = float(((pred_t == target) & ~flag_trig).float().mean())
    return out
