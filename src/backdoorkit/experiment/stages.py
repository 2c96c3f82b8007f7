"""Computing one cell, stage by stage, every artefact cached by the hash of what determines it.

Stages and their cache entries (:class:`~backdoorkit.cache.ArtifactCache` kinds):

1. ``data``: the dataset's train/test splits (optionally a stratified ``subset``), then the
   defender's clean holdout split off the training set *before* poisoning (stratified, seeded with
   the cell's seed; none when ``clean_fraction`` is 0);
2. ``clean_model`` (kind ``clean_model``): a model trained on the rest of the training set, for the
   clean-BA reference; key = data fingerprint + model + training config + seed;
3. ``poison`` (kind ``poisoned``: tensors ``x``, ``y``, ``mask``): the attack applied to the rest;
   key = data fingerprint + attack (all parameters) + seed;
4. ``backdoor_model`` (kind ``backdoored_model``): the victim's model trained on the poisoned set;
   key = poisoned key + model + training config + seed.  With the model's ``finetune`` set, the victim
   is instead a copy of the clean reference model (stage 2) fine-tuned on the poisoned set with the
   training config + ``finetune``, as a pretrained model is (key = poisoned key + clean key + that
   config + seed); the attack's own victim training (a rewired residual, say) applies to the copy;
5. ``defense``: ``Defense.run(DefenseInputs)`` for every kind (cache kinds ``defended_model`` +
   ``defended_extra`` for repaired / retrained models and their isolated rows, ``verdict`` for
   inspectors; a fitted detector is cheap and is refitted); key = its inputs' keys + holdout
   fingerprint + defense (all parameters) + scenario + seed;
6. ``evaluate``: ``Defense.evaluate(result, test, attack, mask=poisoned mask)``, the evaluator's side.

With the spec's ``min_victim_asr`` set, a repair or training cell first scores its victim on the test
split (the evaluator's side, between stages 4 and 5; the defense never sees it) and, when the victim's
ASR is below the gate, stops there: the cell is recorded ``skipped`` with the victim's numbers as its
reason, and a later ``--resume`` checks the gate again (a changed gate, a retrained victim).

A defense receives only what its scenario gives it (:class:`~backdoorkit.defenses.base.DefenseInputs`):
S1 the backdoored model and the clean holdout, S2 the poisoned training set and the clean holdout, S3
the poisoned training set alone.  The test set, the trigger, the poisoned mask and the target are used
only in step 6, after the defense has run; what each kind reports is documented on its ``evaluate``
(:mod:`backdoorkit.defenses.base`).  There is no per-kind code here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backdoorkit.cache import ArtifactCache, hash_key
from backdoorkit.data import ImageSet, load_dataset, resolve_count, split_holdout, stratified_indices
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.defenses._shortcut import selections_stored_in
from backdoorkit.errors import one_line
from backdoorkit.experiment.spec import NO_ATTACK, NO_DEFENSE, Cell, DatasetRef
from backdoorkit.experiment.store import versions
from backdoorkit.jsonable import to_jsonable
from backdoorkit.resume import resumable_training
from backdoorkit.train_report import report_training


@functools.lru_cache(maxsize=8)
def load_data(ref: DatasetRef) -> tuple[ImageSet, ImageSet]:
    """``(train, test)`` of a dataset reference (cached per process)."""
    train = load_dataset(ref.name, "train", ref.data_root, image_size=ref.image_size)
    test = load_dataset(ref.name, "test", ref.data_root, image_size=ref.image_size)
    if ref.subset is not None:
        train = _sample(train, ref.subset, "subset")
    if ref.test_subset is not None:
        test = _sample(test, ref.test_subset, "test_subset")
    return train, test


def _sample(data: ImageSet, amount: int | float, what: str) -> ImageSet:
    count = resolve_count(amount, len(data), what)
    idx = stratified_indices(data.y, count, 0, data.num_classes)
    return data.subset(idx.to(data.device))


def _config_identity(cfg: Any) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    for key in ("device", "progress", "check_every"):
        d.pop(key, None)
    return d


GATED_KINDS = ("repair", "training")
"""Defense kinds the spec's ``min_victim_asr`` gate applies to (a detector's answer on a victim without a
backdoor is a result: it should say clean)."""


class VictimNotImplanted(Exception):
    """A gated cell's victim does not carry the backdoor: the cell is skipped, not failed."""


def gate_reason(ba: float, asr: float, gate: float) -> str:
    """The skip reason of a cell the ``min_victim_asr`` gate stops (the victim's no-defense numbers)."""
    return (
        f"the victim does not implant (BA {100 * ba:.1f} / ASR {100 * asr:.1f} % with no defense; "
        f"min_victim_asr {100 * gate:g} %)"
    )


_VICTIM_SCORES: dict[tuple[str, str, str], dict[str, float]] = {}
"""The no-defense scores of the victims this process has evaluated, by (cache folder, victim key, test
fingerprint): the ``none`` cell and every gated cell of one victim score it once (a minute at full
width on a CPU)."""


def _victim_score(model: nn.Module, test: ImageSet, attack: Any, where: Path, key: str) -> dict[str, float]:
    """:func:`~backdoorkit.metrics.backdoor_metrics` of a victim, memoised per process."""
    from backdoorkit.metrics import backdoor_metrics

    ident = (str(where), key, fingerprint(test))
    if ident not in _VICTIM_SCORES:
        if len(_VICTIM_SCORES) >= 64:
            _VICTIM_SCORES.clear()
        _VICTIM_SCORES[ident] = backdoor_metrics(model, test, attack)
    return dict(_VICTIM_SCORES[ident])


class CellWork:
    """The computation of one cell (and of the shared artefacts it needs)."""

    def __init__(self, cell: Cell, cache: ArtifactCache) -> None:
        from backdoorkit.device import resolve_device

        self.cell = cell
        self.cache = cache
        self.device = resolve_device(cell.device)
        self.stages: dict[str, float] = {}
        self.cached: list[str] = []
        self.resumed: list[str] = []  # artefacts whose training went on from a snapshot
        self._data: tuple[ImageSet, ImageSet | None, ImageSet] | None = None
        self._clean: tuple[nn.Module, str] | None = None  # the reference, and a fine-tuned victim's start

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start

    def data(self) -> tuple[ImageSet, ImageSet | None, ImageSet]:
        """``(rest, holdout or None, test)``: the training set minus the defender's clean holdout."""
        if self._data is None:
            with self.stage("data"):
                train, test = load_data(self.cell.dataset)
                if self.cell.clean_fraction > 0:
                    rest, holdout = split_holdout(train, self.cell.clean_fraction, self.cell.seed)
                    if len(holdout) == 0:
                        holdout = None
                else:
                    rest, holdout = train, None
                self._data = (rest, holdout, test)
        return self._data

    def config(self, data: ImageSet, **overrides: Any) -> Any:
        from backdoorkit.pipeline import recipe_for

        train = {**self.cell.train, **overrides}
        return recipe_for(data, **train, seed=self.cell.seed, device=self.cell.device)

    def build(self, data: ImageSet) -> nn.Module:
        """A fresh model of the cell's architecture for ``data`` (an attack's ``train_victim`` may change
        its structure)."""
        from backdoorkit.pipeline import make_model

        m = self.cell.model
        return make_model(m["arch"], data, width=m["width"], seed=self.cell.seed, **dict(m["kwargs"]))

    def _architecture(self) -> dict[str, Any]:
        """The cell's model without its fine-tuning setting: what the clean reference model depends on."""
        return {k: v for k, v in self.cell.model.items() if k != "finetune"}

    def _load(self, kind: str, key: str) -> nn.Module | None:
        """A cached model rebuilt from its sidecar; ``None`` only when there is none.  A cached file that
        cannot be rebuilt is an error (a silent miss would retrain and overwrite it)."""
        return self.cache.get_model(kind, key, device=self.device)

    def _train(
        self, key: str, data: Any, attack: Any = None, *, start: nn.Module | None = None, config: Any = None
    ) -> nn.Module:
        """Train the victim (``data`` a PoisonedSet, or the clean ImageSet) as its attack trains it,
        from a fresh model or from a copy of ``start`` (fine-tuning, with ``config``), snapshotting each
        epoch to ``<cache>/partial/<key>`` so that an interrupted run resumes there
        (:mod:`backdoorkit.resume`); :meth:`_stored` removes the folder once the model is cached."""
        from backdoorkit.pipeline import train_victim

        plain = data.data if hasattr(data, "mask") else data

        def factory() -> nn.Module:
            return self.build(plain) if start is None else copy.deepcopy(start).train()

        if any(self._partial(key).glob("fit-*.pt")):
            self.resumed.append("backdoor_model" if attack is not None else "clean_model")
        with resumable_training(self._partial(key), keep=True):
            model = train_victim(attack, factory, data, config or self.config(plain))
        return model.to(self.device).eval()

    def _partial(self, key: str) -> Path:
        return self.cache.partial(key)

    def _stored(self, kind: str, key: str, model: nn.Module, meta: dict[str, Any]) -> None:
        """Cache a freshly trained model, then drop its training snapshots."""
        self.cache.put_model(kind, key, model, meta=meta)
        shutil.rmtree(self._partial(key), ignore_errors=True)

    # ------------------------------------------------------------------ artefacts
    def clean_model(self) -> tuple[nn.Module, str]:
        """The clean reference model (trained on the rest of the training set)."""
        if self._clean is not None:
            return self._clean
        rest, _, _ = self.data()
        key = hash_key(
            "clean_model",
            fingerprint(rest),
            self._architecture(),
            _config_identity(self.config(rest)),
            self.cell.seed,
        )
        with self.stage("clean_model"):
            model = self._load("clean_model", key)
            if model is None:
                model = self._train(key, rest)
                self._stored("clean_model", key, model, {"cell": self.cell.hash, "stage": "clean"})
            else:
                self.cached.append("clean_model")
        self._clean = (model, key)
        return model, key

    def poisoned(self) -> tuple[Any, Any, str]:
        """``(PoisonedSet, attack or None, key)``; the attack is set up for test-time triggers."""
        from backdoorkit.attacks import PoisonedSet, build_attack

        rest, _, _ = self.data()
        if self.cell.attack == NO_ATTACK:
            mask = torch.zeros(len(rest), dtype=torch.bool)
            return PoisonedSet(rest, mask, NO_ATTACK), None, hash_key("clean-set", fingerprint(rest))
        seed = self.cell.seed
        key = hash_key("poisoned", fingerprint(rest), self.cell.attack, self.cell.attack_params, seed)
        with self.stage("poison"):
            attack = build_attack(self.cell.attack, **self.cell.attack_params)
            tensors = self.cache.get_tensors("poisoned", key)
            if tensors is not None and {"x", "y", "mask"} <= set(tensors):
                meta = self.cache.meta("poisoned", key) or {}
                attack.setup(rest, seed=seed, cache=self.cache)
                data = rest.with_data(
                    tensors["x"].to(rest.device),
                    tensors["y"].to(rest.device),
                    name=f"{rest.name}+{self.cell.attack}",
                )
                ps = PoisonedSet(
                    data,
                    tensors["mask"].bool(),
                    self.cell.attack,
                    attack.describe(),
                    dict(meta.get("info") or {}),
                )
                self.cached.append("poison")
            else:
                ps = attack.poison(rest, seed=seed, cache=self.cache)
                self.cache.put_tensors(
                    "poisoned",
                    key,
                    {"x": ps.data.x, "y": ps.data.y, "mask": ps.mask},
                    meta={
                        "attack": to_jsonable(attack.describe()),
                        "seed": seed,
                        "count": ps.count,
                        "info": to_jsonable(ps.info),
                    },
                )
        return ps, attack, key

    def backdoored_model(self) -> tuple[nn.Module, Any, Any, str]:
        """``(model, PoisonedSet, attack, key)``: the victim's model trained on the poisoned set."""
        ps, attack, pkey = self.poisoned()
        if attack is None:
            model, key = self.clean_model()
            return model, ps, None, key
        finetune = self.cell.model.get("finetune")
        config = self.config(ps.data, **(finetune or {}))
        ident = _config_identity(config)
        start: nn.Module | None = None
        if finetune is None:
            key = hash_key("backdoored_model", pkey, self.cell.model, ident, self.cell.seed)
        else:  # the victim is the clean reference model fine-tuned on the poisoned set
            start, ckey = self.clean_model()
            key = hash_key("finetuned_victim", pkey, ckey, ident, self.cell.seed)
        with self.stage("backdoor_model"):
            model = self._load("backdoored_model", key)
            if model is None:
                model = self._train(key, ps, attack, start=start, config=config)
                self._stored(
                    "backdoored_model",
                    key,
                    model,
                    {"cell": self.cell.hash, "attack": to_jsonable(attack.describe())},
                )
            else:
                self.cached.append("backdoor_model")
        return model, ps, attack, key

    # ------------------------------------------------------------------ the cell
    def run(self) -> dict[str, Any]:
        """Compute the cell: ``{"metrics": {...}, "info": {...}}``."""
        from backdoorkit.metrics import benign_accuracy

        cell = self.cell
        _rest, holdout, test = self.data()
        metrics: dict[str, Any] = {}
        info: dict[str, Any] = {}
        if cell.clean_model:
            clean, _ = self.clean_model()
            with self.stage("evaluate"):
                metrics["clean_ba"] = benign_accuracy(clean, test)
        model, ps, attack, bkey = self.backdoored_model()
        info["poisoned_rows"] = ps.count
        if cell.defense == NO_DEFENSE:
            with self.stage("evaluate"):
                metrics.update(_victim_score(model, test, attack, self.cache.root, bkey))
            return {"metrics": metrics, "info": info}
        if cell.min_victim_asr is not None and attack is not None and cell.defense_kind in GATED_KINDS:
            with self.stage("gate"):
                victim = _victim_score(model, test, attack, self.cache.root, bkey)
            if victim["asr"] < cell.min_victim_asr:
                raise VictimNotImplanted(gate_reason(victim["ba"], victim["asr"], cell.min_victim_asr))
        defense = self._defense()
        result = self._defended(defense, model, ps, holdout, bkey)
        with self.stage("evaluate"):
            scored = defense.evaluate(result, test, attack, mask=ps.mask)
        metrics.update(scored)
        info.update(to_jsonable(result.info))
        if result.verdict is not None:
            info["verdict"] = _verdict_json(result.verdict)
        for key in _INFO_MIRROR:  # a few evaluation numbers also read as part of the cell's story
            if key in scored:
                info[_INFO_MIRROR[key]] = bool(scored[key]) if key == "target_correct" else scored[key]
        return {"metrics": metrics, "info": info}

    # ------------------------------------------------------------------ defenses
    def _defense(self) -> Any:
        from backdoorkit.defenses import build_defense

        return build_defense(self.cell.defense, **self.cell.defense_params)

    def _defense_key(self, kind: str, *parts: Any) -> str:
        from backdoorkit.defenses import DEFENSES

        _, holdout, _ = self.data()
        revision = DEFENSES.get(self.cell.defense).revision
        return hash_key(
            kind,
            *parts,
            *((("revision", revision),) if revision else ()),
            fingerprint(holdout) if holdout is not None else None,
            self.cell.defense,
            self.cell.defense_params,
            self.cell.scenario,
            self.cell.seed,
        )

    def _defended(self, defense: Any, model: nn.Module, ps: Any, holdout: ImageSet | None, bkey: str) -> Any:
        """The defense's result for this cell: from the cache, or run on what the scenario gives."""
        from backdoorkit.defenses.base import DefenseInputs

        cell = self.cell
        inputs = DefenseInputs(cell.scenario or "S1", seed=cell.seed, device=cell.device)
        if defense.kind == "training":
            cfg = self.config(ps.data)
            given = holdout if cell.scenario == "S2" else None
            key = self._defense_key(
                "training",
                hash_key("poisoned-data", fingerprint(ps.data)),
                cell.model,
                _config_identity(cfg),
                fingerprint(given) if given is not None else None,
            )
            inputs.untrusted, inputs.clean, inputs.config = ps.data, given, cfg
            inputs.model_factory = lambda: self.build(ps.data)
        else:
            if holdout is None:  # the planner never schedules this; a guard for direct use
                raise RuntimeError(f"{cell.defense} needs a clean holdout (scenario S1)")
            key = self._defense_key(defense.kind, bkey)
            inputs.model, inputs.clean = model, holdout
        with self.stage("defense"):
            cached = self._load_result(defense.kind, key, model)
            if cached is not None:
                self.cached.append("defense")
                return cached
            result = defense.run(inputs)
            self._save_result(defense.kind, key, result)
        if result.model is not None:
            result.model = result.model.to(self.device).eval()
        return result

    def _save_result(self, kind: str, key: str, result: Any) -> None:
        meta = {
            "info": to_jsonable(result.info),
            "metrics": to_jsonable(result.metrics),
            "seconds": result.seconds,
            "cell": self.cell.hash,
        }
        if kind in ("repair", "training"):
            if result.isolated is not None:
                self.cache.put_tensors("defended_extra", key, {"isolated": result.isolated.cpu()})
            self.cache.put_model("defended_model", key, result.model, meta=meta)
        elif kind == "inspector" and result.verdict is not None:
            v = result.verdict
            tensors = {"infected": torch.tensor([int(v.infected)])}
            for name in ("trigger", "mask"):
                if getattr(v, name) is not None:
                    tensors[name] = getattr(v, name).detach().float().cpu()
            self.cache.put_tensors("verdict", key, tensors, meta={**meta, "verdict": _verdict_json(v)})

    def _load_result(self, kind: str, key: str, model: nn.Module) -> Any:
        from backdoorkit.defenses.base import DefenseResult, Verdict

        if kind in ("repair", "training"):
            loaded = self._load("defended_model", key)
            if loaded is None:
                return None
            meta = self.cache.meta("defended_model", key) or {}
            extra = self.cache.get_tensors("defended_extra", key) or {}
            isolated = extra.get("isolated")
            return DefenseResult(
                loaded.to(self.device).eval(),
                dict(meta.get("info") or {}),
                float(meta.get("seconds") or 0.0),
                isolated=isolated.bool() if isolated is not None else None,
                metrics=dict(meta.get("metrics") or {}),
            )
        if kind == "inspector":
            tensors = self.cache.get_tensors("verdict", key)
            meta = self.cache.meta("verdict", key)
            if tensors is None or meta is None:
                return None
            v = dict(meta.get("verdict") or {})
            verdict = Verdict(
                bool(v.get("infected")),
                v.get("target"),
                tensors.get("trigger"),
                tensors.get("mask"),
                dict(v.get("scores") or {}),
                v.get("anomaly_index"),
            )
            return DefenseResult(
                model,
                dict(meta.get("info") or {}),
                float(meta.get("seconds") or 0.0),
                verdict=verdict,
                metrics=dict(meta.get("metrics") or {}),
            )
        return None  # detectors are refitted (cheap, and their state is not a file)


_INFO_MIRROR = {
    "threshold": "threshold",
    "false_rejection": "false_rejection",
    "detected": "detected",
    "model_ba": "model_ba",
    "model_asr": "model_asr",
    "isolated": "isolated_count",
    "target_correct": "target_correct",
}


def _verdict_json(v: Any) -> dict[str, Any]:
    return to_jsonable(
        {
            "infected": bool(v.infected),
            "target": v.target,
            "anomaly_index": v.anomaly_index,
            "scores": v.scores,
        }
    )


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (a cell, or a shared ``clean`` / ``backdoor`` artefact) and return its outcome.

    Never raises for a failure inside the job: the result has ``status`` ``failed``, the error line and
    the traceback (``skipped`` and the reason for a cell stopped by the ``min_victim_asr`` gate).  Runs
    in the caller's process or in a worker (process pool, Ray task).
    """
    threads = job.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    work: CellWork | None = None
    out: dict[str, Any] = {}
    # {"label", "every", "status"}: epoch lines of long trainings to stderr, the latest epoch to a file
    lines = job.get("epoch_lines")
    report = (
        report_training(lines["label"], lines["every"], status=lines.get("status"))
        if lines
        else contextlib.nullcontext()
    )
    try:
        work = CellWork(job["cell"], ArtifactCache(job["cache"], job.get("read_only", ())))
        with report:
            if job["kind"] == "clean":
                work.clean_model()
            elif job["kind"] == "backdoor":
                work.backdoored_model()
            else:
                with selections_stored_in(work.cache):  # SSFT-family selections outlive the process
                    out.update(work.run())
        out["status"] = "done"
    except VictimNotImplanted as gate:
        out = {"status": "skipped", "skip_reason": str(gate)}
    except Exception as exc:
        out = {"status": "failed", "error": one_line(exc), "traceback": traceback.format_exc()}
    stages = {k: round(v, 4) for k, v in (work.stages if work else {}).items()}
    if work is not None and work.cached:
        stages["cached"] = sorted(set(work.cached))  # type: ignore[assignment]
    if work is not None and work.resumed:
        stages["resumed"] = sorted(set(work.resumed))  # type: ignore[assignment]
    out.update(
        seconds=time.perf_counter() - start,
        stages=stages,
        device=str(work.device) if work is not None else None,
        versions=versions(),
        pid=os.getpid(),
    )
    return out
