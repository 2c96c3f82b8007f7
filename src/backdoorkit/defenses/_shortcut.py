"""What SSFT and its baselines share: critical-layer selection on a surrogate backdoor, suppression and
the scope of the restricted fine-tuning (the fine-tuning itself is :mod:`backdoorkit.defenses.finetune`).

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts" (ICASSP 2023).  The defenses built
from these parts (one file each): ``ssft`` (select, suppress, fine-tune the critical block / stage),
``ss`` (select, suppress), ``ft_critical`` (select, fine-tune without suppressing), ``ft_fc`` (fine-tune
the classifier head) and ``ft_all`` (fine-tune everything).

Critical-layer selection (:func:`select_critical`) sees only the defender's clean samples:

1. split them (stratified, seeded) into a surrogate-train part and a surrogate-eval part
   (``surrogate_eval``, default 30 %);
2. poison the surrogate-train part with a registered attack chosen by the defender
   (``surrogate_attack``, BadNets by default, ``surrogate_params``), at rate ``surrogate_rate``, with a
   surrogate target class the defender picks (``surrogate_target``; default a seeded random class);
3. fine-tune a *copy* of the suspicious model on it (all layers, SGD lr ``surrogate_lr``, momentum
   0.9, constant rate) in one run checked every ``surrogate_check`` epochs (a
   :class:`~backdoorkit.train.Callback`) until the surrogate backdoor works (on the surrogate-eval
   part its ASR reaches ``surrogate_min_asr`` while its BA is at most ``surrogate_ba_drop`` below the
   suspicious model's), ``surrogate_patience`` checks in a row have not bettered the best one, or
   ``surrogate_epochs`` have run, keeping the checked state with the highest ASR + BA - checks the
   defender makes on its own data, needed because on ~100 images a few-shot surrogate backdoor may
   take only briefly (the copy then memorises the poisoned rows), not at all (the scan is then
   noise), or only by damaging the copy's clean accuracy;
4. scan its skips (:func:`backdoorkit.analysis.scan_skips`) on the surrogate-eval part with the
   surrogate trigger, and rank them with :func:`backdoorkit.analysis.critical_scores` (``score``);
5. keep the ``k`` best.

Nothing here can see the evaluation attack, the test set, the poisoned mask or the true target:
:class:`ModelRepair` gives a defense only the model and the clean samples.  Selections are memoised
in-process by content (model weights and gammas, clean-sample fingerprint, parameters, seed), so
SSFT, SS and FT-Critical on the same model and data select once; ``info["selection"]["cached"]`` says
when a result was reused (its ``seconds`` are those of the original run).  Inside
:func:`selections_stored_in` (the experiment runner wraps every cell in it) a selection is also kept as
JSON in the artefact cache (kind ``selection``, keyed by the same content), so cells run by other
processes or in later sessions reuse it: at full width on a CPU the surrogate fine-tuning and scan took
about two hours before the patience rule (about 50 minutes with it).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from backdoorkit.analysis.skip_scan import DEFAULT_GAMMAS, critical_scores, scan_skips
from backdoorkit.cache import ArtifactCache, Memo, hash_key, model_digest
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.splits import split_holdout
from backdoorkit.defenses.base import DefenseParams
from backdoorkit.defenses.finetune import TuneParams, tune_config
from backdoorkit.errors import ConfigError
from backdoorkit.metrics import attack_success_rate, benign_accuracy
from backdoorkit.models.skips import block_path, set_gamma, skips, stage_path
from backdoorkit.train import Callback, TrainState, fit

PAPER = "Yang et al., Backdoor Defense via Suppressing Model Shortcuts, ICASSP 2023"
SURROGATE_PARAMS: dict[str, Any] = {"variant": "white", "row": 1, "col": 1}
"""The default surrogate trigger: a 3x3 white BadNets patch one pixel from the top-left corner."""


# ---------------------------------------------------------------------------------------- parameters
class SelectParams(DefenseParams):
    """Critical-layer selection on a surrogate backdoor (see the module docstring).

    Defaults: ``k = 1`` skip, ``score = "previous"`` (the rule this defense has always used, our
    earlier reading of ``chooselayer.py``; ``"official"`` is the official rule, see
    :func:`backdoorkit.analysis.skip_scan.critical_scores`, set by the ``ssft_paper`` preset: as the
    default it removed the digits backdoor on one BadNets seed of three, its ties at a surrogate ASR
    of 0 going to the first skip in model order), gamma grid 1.0, 0.9, ..., 0.0; surrogate BadNets
    with a 3x3 white patch one pixel from the *top-left* corner (``surrogate_params=None`` means
    ``{"variant": "white", "row": 1, "col": 1}`` for BadNets and ``{}`` for any other surrogate attack:
    a defender's choice that deliberately does not coincide with the usual bottom-right evaluation
    triggers; the paper's black-and-white grid barely shows on dark digits and did not implant there),
    rate 0.3 (0.1 and 0.2 did not implant reliably into a trained digits model from ~100 images), a
    seeded random surrogate target, 30 % of the clean samples kept for the surrogate scan, surrogate
    fine-tuning at lr 0.01, checked every 5 epochs, until its ASR reaches 0.9 with its BA at most 0.05
    below the suspicious model's (at most 50 epochs), or until 2 checks in a row (10 epochs) have not
    bettered the best one (``surrogate_patience``: the state kept is the best check's either way; on
    the full-width BadNets victim of ``ssft_scale_full`` the best check was epoch 10 of 50, so the rule
    stops at 20 with the same surrogate, ~65 of the selection's 113 CPU minutes sooner).
    ``layers`` names the critical skip(s) instead of selecting (e.g. the official ``layer3.1``);
    ``candidates`` restricts the skips considered.
    """

    k: int = Field(1, ge=1)
    score: Literal["official", "previous", "margin"] = "previous"
    layers: tuple[str, ...] | None = None
    candidates: tuple[str, ...] | None = None
    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    surrogate_attack: str = "badnets"
    surrogate_params: dict[str, Any] | None = None
    surrogate_target: int | None = Field(None, ge=0)
    surrogate_rate: float = Field(0.3, gt=0, le=1)
    surrogate_eval: float = Field(0.3, gt=0, lt=1)
    surrogate_epochs: int = Field(50, ge=1, description="most surrogate fine-tuning epochs")
    surrogate_check: int = Field(5, ge=1, description="epochs between checks of the surrogate ASR")
    surrogate_min_asr: float = Field(0.9, ge=0, le=1, description="stop once the surrogate ASR reaches this")
    surrogate_ba_drop: float = Field(0.05, ge=0, le=1, description="... and its BA is at most this far down")
    surrogate_patience: int | None = Field(
        2, ge=1, description="stop after this many checks without a better surrogate (None: never)"
    )
    surrogate_lr: float = Field(0.01, gt=0)

    @field_validator("layers", "candidates", "gammas", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """Accept ``"layer3.1"`` or ``"layer2.1,layer3.1"`` (as ``-p layers=...`` gives) for a tuple."""
        if isinstance(v, str):
            return tuple(part.strip() for part in v.split(",") if part.strip())
        if isinstance(v, (int, float)):
            return (v,)
        return v

    @field_validator("surrogate_params")
    @classmethod
    def _no_target(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v and ("target" in v or "rate" in v):
            raise ValueError("set the surrogate target / rate with surrogate_target / surrogate_rate")
        return v

    @field_validator("gammas")
    @classmethod
    def _grid(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) < 2 or max(v) != 1.0:
            raise ValueError("the gamma grid needs at least two values and must contain 1.0")
        return v


class SuppressParams(DefenseParams):
    """How the chosen skips are suppressed.

    ``mode="standard"`` sets gamma = 0 (the skip removed; the paper's SSFT); ``mode="optimized"`` uses,
    per chosen skip, the gamma at which its surrogate score is attained (SSFT*: for the default
    ``official`` score the gamma just after the sharpest surrogate-ASR drop; for ``margin`` the largest
    gamma maximising ASR drop minus BA drop).  ``gamma`` sets
    an explicit value instead (the sweep of the paper's Figure 3).
    """

    mode: Literal["standard", "optimized"] = "standard"
    gamma: float | None = None


class TuneScope(DefenseParams):
    """``tune="stage"`` (default) fine-tunes the enclosing stage of each critical skip (``layer3`` for
    ``layer3.1``), as the official code does; ``"block"`` only the critical block itself."""

    tune: Literal["block", "stage"] = "stage"


# ---------------------------------------------------------------------------------------- selection
@dataclass
class Selection:
    """The critical skips chosen on the surrogate backdoor and the evidence for the choice."""

    layers: list[str]
    optimal_gammas: dict[str, float]
    scores: list[dict[str, Any]] = field(default_factory=list)
    scan: list[dict[str, Any]] = field(default_factory=list)
    surrogate: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False

    def info(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("scan")
        return d


_MEMO: Memo[Selection] = Memo(16)
_STORE: ArtifactCache | None = None


@contextlib.contextmanager
def selections_stored_in(cache: ArtifactCache | None) -> Iterator[None]:
    """Within the block, :func:`select_critical` also reads and writes its results as JSON entries of
    ``cache`` (kind ``selection``); ``None`` keeps them in-process only (the default)."""
    global _STORE
    previous, _STORE = _STORE, cache
    try:
        yield
    finally:
        _STORE = previous


def _stored_selection(key: str) -> Selection | None:
    if _STORE is None:
        return None
    entry = _STORE.meta("selection", hash_key(key))
    if entry is None:
        return None
    try:
        return Selection(**entry)
    except TypeError:  # written by another version of Selection: recompute
        return None


def surrogate_target(params: SelectParams, num_classes: int, seed: int) -> int:
    """The defender's surrogate target: ``surrogate_target`` or a class drawn with ``seed``."""
    if params.surrogate_target is not None:
        if params.surrogate_target >= num_classes:
            raise ConfigError(
                f"surrogate_target {params.surrogate_target} out of range for {num_classes} classes"
            )
        return params.surrogate_target
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    return int(torch.randint(num_classes, (1,), generator=gen))


def build_surrogate_attack(params: SelectParams, num_classes: int, seed: int) -> Any:
    """The surrogate attack object (a registered attack built from the defender's parameters only)."""
    from backdoorkit.attacks import build_attack

    target = surrogate_target(params, num_classes, seed)
    extra = params.surrogate_params
    if extra is None:
        extra = dict(SURROGATE_PARAMS) if params.surrogate_attack == "badnets" else {}
    return build_attack(params.surrogate_attack, target=target, rate=params.surrogate_rate, **extra)


class _SurrogateCheck(Callback):
    """Every ``surrogate_check`` epochs (and after the last) of the surrogate fine-tuning: measure the
    surrogate's ASR and BA on the surrogate-eval part, keep the best state (highest ASR + BA), and stop
    once the surrogate backdoor works (ASR >= ``surrogate_min_asr``, BA at most ``surrogate_ba_drop``
    below the suspicious model's ``ba0``) or ``surrogate_patience`` checks in a row have not bettered
    the best one."""

    def __init__(self, params: SelectParams, attack: Any, sur_eval: ImageSet, ba0: float) -> None:
        self.params, self.attack, self.sur_eval, self.ba0 = params, attack, sur_eval, ba0
        self.history: list[dict[str, Any]] = []
        self.epochs = 0
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.stale = 0  # checks in a row that did not better the best one
        self.stopped: str | None = None  # why it stopped early: "implanted" or "patience"

    def on_epoch_end(self, state: TrainState) -> bool:
        p, epochs = self.params, state.epoch
        self.epochs = epochs
        if epochs % p.surrogate_check and epochs < p.surrogate_epochs:
            return False
        model = state.model
        asr, ba = (
            attack_success_rate(model, self.sur_eval, self.attack),
            benign_accuracy(model, self.sur_eval),
        )
        self.history.append({"epochs": epochs, "asr": asr, "ba": ba})
        if self.best is None or asr + ba > self.best[0]:
            self.best = (asr + ba, epochs, copy.deepcopy(model.state_dict()))
            self.stale = 0
        else:
            self.stale += 1
        if asr >= p.surrogate_min_asr and ba >= self.ba0 - p.surrogate_ba_drop:
            self.stopped = "implanted"
        elif p.surrogate_patience is not None and self.stale >= p.surrogate_patience:
            self.stopped = "patience"
        return self.stopped is not None


def select_critical(
    model: nn.Module,
    clean: ImageSet,
    params: SelectParams,
    *,
    seed: int,
    device: str = "auto",
    need_scan: bool = True,
) -> Selection:
    """Choose the critical skip(s) of ``model`` from the clean samples only (module docstring).

    With ``params.layers`` given, those are the critical skips; the surrogate scan then runs (on them
    only) just when ``need_scan`` (the optimised mode needs its gamma).
    """
    table = skips(model)
    if not table:
        raise ConfigError(
            f"model {type(model).__name__} has no addressable skip connections (try attach_skips)"
        )
    for group in (params.layers or ()), (params.candidates or ()):
        for n in group:
            if n not in table:
                raise ConfigError(f"unknown skip {n!r}; this model has: {', '.join(table)}")
    if params.layers and not need_scan:
        return Selection(layers=list(params.layers), optimal_gammas={}, surrogate={"skipped": "layers given"})
    candidates = list(params.layers or params.candidates or table)
    k = len(params.layers) if params.layers else params.k
    if k > len(candidates):
        raise ConfigError(f"k={k} but only {len(candidates)} candidate skips")

    relevant = {k: v for k, v in params.model_dump(mode="json").items() if k in SelectParams.model_fields}
    key = json.dumps(
        [model_digest(model), fingerprint(clean), relevant, seed, candidates, k, str(device)],
        sort_keys=True,
        default=str,
    )
    hit = _MEMO.get(key)
    if hit is None and (hit := _stored_selection(key)) is not None:
        _MEMO.put(key, hit)
    if hit is not None:
        hit.cached = True
        return hit

    start = time.perf_counter()
    sur_train, sur_eval = split_holdout(clean, params.surrogate_eval, seed, name="surrogate-eval")
    if len(sur_train) == 0 or len(sur_eval) == 0:
        raise ConfigError(f"{len(clean)} clean samples are too few to split for the surrogate scan")
    attack = build_surrogate_attack(params, clean.num_classes, seed)
    poisoned = attack.poison(sur_train, seed=seed)
    surrogate = copy.deepcopy(model)
    check = _SurrogateCheck(params, attack, sur_eval, benign_accuracy(surrogate, sur_eval))
    cfg = tune_config(
        clean,
        TuneParams(epochs=params.surrogate_epochs, lr=params.surrogate_lr, min_steps=None),
        seed=seed,
        device=device,
    )
    fit(surrogate, poisoned.data, cfg, callbacks=[check])
    epochs, best = check.epochs, check.best
    if best is not None and best[1] != epochs:  # an earlier check had the better surrogate: use it
        surrogate.load_state_dict(best[2])
    scan = scan_skips(surrogate, sur_eval, attack, params.gammas, candidates)
    ranked = critical_scores(scan.to_rows(), params.score)
    chosen = [c.skip for c in ranked[:k]]
    sel = Selection(
        layers=chosen,
        optimal_gammas={c.skip: c.gamma for c in ranked[:k]},
        scores=[asdict(c) for c in ranked],
        scan=scan.to_rows(),
        surrogate={
            **attack.describe(),
            "train": len(sur_train),
            "eval": len(sur_eval),
            "poisoned": poisoned.count,
            "epochs": best[1] if best is not None else epochs,
            "epochs_run": epochs,
            "stopped": check.stopped or "epochs",
            "asr_history": check.history,
            "implanted": bool(scan.baseline["asr"] >= params.surrogate_min_asr),
            "ba_before": check.ba0,
            "lr": params.surrogate_lr,
            "ba": scan.baseline["ba"],
            "asr": scan.baseline["asr"],
        },
    )
    sel.seconds = time.perf_counter() - start
    _MEMO.put(key, sel)
    if _STORE is not None:
        _STORE.put_json("selection", hash_key(key), asdict(sel))
    return sel


def clear_selection_cache() -> None:
    _MEMO.clear()


# ---------------------------------------------------------------------------------------- suppression
def suppression_gammas(sel: Selection, params: SuppressParams) -> dict[str, float]:
    """``{skip: gamma}`` to set: explicit ``gamma``, 0 (standard) or the surrogate optimum (optimized)."""
    if params.gamma is not None:
        return dict.fromkeys(sel.layers, float(params.gamma))
    if params.mode == "standard":
        return dict.fromkeys(sel.layers, 0.0)
    return {n: float(sel.optimal_gammas[n]) for n in sel.layers}


def needs_scan(params: SuppressParams | None) -> bool:
    return params is not None and params.gamma is None and params.mode == "optimized"


def suppress(model: nn.Module, gammas: dict[str, float]) -> None:
    for name, g in gammas.items():
        set_gamma(model, name, g)


class SelectSuppressParams(SelectParams, SuppressParams):
    """Selection + suppression parameters (SS; SSFT adds fine-tuning)."""


def select_and_suppress(
    model: nn.Module, clean: ImageSet, p: SelectSuppressParams, *, seed: int, device: str
) -> tuple[Selection, dict[str, Any]]:
    """Steps 1 and 2 of SS / SSFT: select the critical skip(s) on the defender's surrogate and set
    their gammas on ``model``.  Returns the selection and the result info both defenses report."""
    sel = select_critical(model, clean, p, seed=seed, device=device, need_scan=needs_scan(p) or not p.layers)
    gammas = suppression_gammas(sel, p)
    suppress(model, gammas)
    info = {
        "layers": sel.layers,
        "gammas": gammas,
        "mode": "explicit" if p.gamma is not None else p.mode,
        "scan": sel.scan,
        "selection": sel.info(),
        "selection_seconds": sel.seconds,
    }
    return sel, info


# ---------------------------------------------------------------------------------------- fine-tuning scope
def critical_modules(layers: Sequence[str], tune: str) -> list[str]:
    """Module paths to fine-tune for the critical skips: the blocks or their enclosing stages."""
    out: list[str] = []
    for name in layers:
        path = block_path(name) if tune == "block" else stage_path(name)
        if path not in out:
            out.append(path)
    return out
