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
   key = poisoned key + model + training config + seed;
5. ``defense`` (kind ``defended_model`` for repaired / retrained models, ``detector_scores`` for
   detectors, ``verdict`` for inspectors): key = its inputs' keys + holdout fingerprint + defense
   (all parameters) + scenario + seed;
6. ``evaluate``: BA / ASR on the clean test set, and the runner-side scores a defense never sees.

A defense receives only what its scenario gives it: S1 the backdoored model and the clean holdout,
S2 the poisoned training set and the clean holdout, S3 the poisoned training set alone.  The test set,
the trigger, the poisoned mask and the target are used only *here*, after the defense has run:

* isolation defenses (``info["isolated"]``) are scored against the poisoned mask
  (:func:`backdoorkit.metrics.isolation_metrics`);
* detectors are fitted on model + holdout, then score the clean test images and the triggered
  (ASR-eligible) test images: AUROC and TPR at 1 % / 5 % FPR.  Their BA / ASR are those of the model
  *behind* the detector at the detector's own threshold: a flagged input counts as rejected, so BA is
  the fraction of clean test images accepted and classified correctly, ASR the fraction of triggered
  images accepted and classified as the target;
* inspectors give a verdict that is recorded (with whether the named target is right); BA / ASR are
  the inspected model's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from backdoorkit.cache import ArtifactCache, hash_key
from backdoorkit.data import ImageSet, load_dataset, resolve_count, split_holdout, stratified_indices
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.data.imageset import to_pixels
from backdoorkit.errors import ModelFileError, one_line
from backdoorkit.experiment.spec import NO_ATTACK, NO_DEFENSE, Cell, DatasetRef
from backdoorkit.experiment.store import versions
from backdoorkit.jsonable import to_jsonable

SCORE_CHUNK = 512


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
    for key in ("device", "progress"):
        d.pop(key, None)
    return d


class CellWork:
    """The computation of one cell (and of the shared artefacts it needs)."""

    def __init__(self, cell: Cell, cache: ArtifactCache) -> None:
        from backdoorkit.device import resolve_device

        self.cell = cell
        self.cache = cache
        self.device = resolve_device(cell.device)
        self.stages: dict[str, float] = {}
        self.cached: list[str] = []
        self._data: tuple[ImageSet, ImageSet | None, ImageSet] | None = None

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

    def config(self, data: ImageSet) -> Any:
        from backdoorkit.pipeline import recipe_for

        return recipe_for(data, **self.cell.train, seed=self.cell.seed, device=self.cell.device)

    def build(self, data: ImageSet, attack: Any = None) -> nn.Module:
        from backdoorkit.pipeline import make_model

        m = self.cell.model
        model = make_model(m["arch"], data, width=m["width"], seed=self.cell.seed, **dict(m["kwargs"]))
        if attack is not None:
            model = attack.prepare_model(model)
        return model

    def _load(self, kind: str, key: str, data: ImageSet, attack: Any = None) -> nn.Module | None:
        from backdoorkit.checkpoint import load_model

        path = self.cache.model_path(kind, key)
        if not path.is_file():
            return None
        try:
            return load_model(path, model=self.build(data, attack), device=self.device)
        except ModelFileError:
            try:
                return load_model(path, device=self.device)
            except ModelFileError:
                return None

    def _train(self, data: ImageSet, attack: Any = None) -> nn.Module:
        from backdoorkit.train import fit

        model = self.build(data, attack)
        fit(model, data, self.config(data))
        return model.to(self.device).eval()

    # ------------------------------------------------------------------ artefacts
    def clean_model(self) -> tuple[nn.Module, str]:
        """The clean reference model (trained on the rest of the training set)."""
        rest, _, _ = self.data()
        key = hash_key(
            "clean_model",
            fingerprint(rest),
            self.cell.model,
            _config_identity(self.config(rest)),
            self.cell.seed,
        )
        with self.stage("clean_model"):
            model = self._load("clean_model", key, rest)
            if model is None:
                model = self._train(rest)
                self.cache.put_model(
                    "clean_model", key, model, meta={"cell": self.cell.hash, "stage": "clean"}
                )
            else:
                self.cached.append("clean_model")
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
                attack.setup(rest, seed=seed)
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
                ps = attack.poison(rest, seed=seed)
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
        key = hash_key(
            "backdoored_model", pkey, self.cell.model, _config_identity(self.config(ps.data)), self.cell.seed
        )
        with self.stage("backdoor_model"):
            model = self._load("backdoored_model", key, ps.data, attack)
            if model is None:
                model = self._train(ps.data, attack)
                self.cache.put_model(
                    "backdoored_model",
                    key,
                    model,
                    meta={"cell": self.cell.hash, "attack": to_jsonable(attack.describe())},
                )
            else:
                self.cached.append("backdoor_model")
        return model, ps, attack, key

    # ------------------------------------------------------------------ the cell
    def run(self) -> dict[str, Any]:
        """Compute the cell: ``{"metrics": {...}, "info": {...}}``."""
        from backdoorkit.metrics import backdoor_metrics, benign_accuracy

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
        kind = cell.defense_kind
        if cell.defense == NO_DEFENSE:
            with self.stage("evaluate"):
                metrics.update(backdoor_metrics(model, test, attack))
        elif kind == "repair":
            defended, dinfo = self._repair(model, ps.data, holdout, bkey, attack)
            info.update(dinfo)
            with self.stage("evaluate"):
                metrics.update(backdoor_metrics(defended, test, attack))
        elif kind == "training":
            defended, dinfo = self._robust_train(ps, holdout)
            isolated = dinfo.pop("isolated", None)
            info.update(dinfo)
            with self.stage("evaluate"):
                metrics.update(backdoor_metrics(defended, test, attack))
                if isolated is not None:
                    from backdoorkit.metrics import isolation_metrics

                    iso = isolation_metrics(torch.as_tensor(isolated), ps.mask)
                    metrics["iso_precision"], metrics["iso_recall"] = iso["precision"], iso["recall"]
                    info["isolated_count"] = iso["isolated"]
        elif kind == "detector":
            m, dinfo = self._detect(model, holdout, test, attack, bkey)
            metrics.update(m)
            info.update(dinfo)
        elif kind == "inspector":
            dinfo = self._inspect(model, holdout, bkey)
            info.update(dinfo)
            with self.stage("evaluate"):
                metrics.update(backdoor_metrics(model, test, attack))
                verdict = info.get("verdict", {})
                if attack is not None and not attack.all2all and verdict.get("target") is not None:
                    info["target_correct"] = int(verdict["target"]) == attack.target
        else:  # pragma: no cover - the spec only produces the kinds above
            raise RuntimeError(f"unknown defense kind {kind!r}")
        return {"metrics": metrics, "info": info}

    # ------------------------------------------------------------------ defenses
    def _defense(self) -> Any:
        from backdoorkit.defenses import build_defense

        return build_defense(self.cell.defense, **self.cell.defense_params)

    def _defense_key(self, kind: str, *parts: Any) -> str:
        _, holdout, _ = self.data()
        return hash_key(
            kind,
            *parts,
            fingerprint(holdout) if holdout is not None else None,
            self.cell.defense,
            self.cell.defense_params,
            self.cell.scenario,
            self.cell.seed,
        )

    def _repair(
        self, model: nn.Module, ps_data: ImageSet, holdout: ImageSet | None, bkey: str, attack: Any
    ) -> tuple[nn.Module, dict]:
        key = self._defense_key("repair", bkey)
        with self.stage("defense"):
            cached = self._load("defended_model", key, ps_data, attack)
            if cached is not None:
                self.cached.append("defense")
                return cached, dict((self.cache.meta("defended_model", key) or {}).get("info") or {})
            if holdout is None:  # the spec never plans this; a guard for direct use
                raise RuntimeError(f"{self.cell.defense} needs a clean holdout (scenario S1)")
            result = self._defense().repair(model, holdout, seed=self.cell.seed, device=self.cell.device)
            info = to_jsonable(dict(result.info))
            self.cache.put_model(
                "defended_model",
                key,
                result.model,
                meta={"info": info, "seconds": result.seconds, "cell": self.cell.hash},
            )
        return result.model.to(self.device).eval(), info

    def _robust_train(self, ps: Any, holdout: ImageSet | None) -> tuple[nn.Module, dict]:
        given = holdout if self.cell.scenario == "S2" else None
        cfg = self.config(ps.data)
        pkey = hash_key("poisoned-data", fingerprint(ps.data))
        key = self._defense_key(
            "training",
            pkey,
            self.cell.model,
            _config_identity(cfg),
            fingerprint(given) if given is not None else None,
        )
        with self.stage("defense"):
            cached = self._load("defended_model", key, ps.data)
            if cached is not None:
                self.cached.append("defense")
                info = dict((self.cache.meta("defended_model", key) or {}).get("info") or {})
                extra = self.cache.get_tensors("defended_extra", key)
                if extra is not None and "isolated" in extra:
                    info["isolated"] = extra["isolated"]
                return cached, info
            result = self._defense().train(
                ps.data, given, model_factory=lambda: self.build(ps.data), config=cfg, seed=self.cell.seed
            )
            raw = dict(result.info)
            isolated = raw.pop("isolated", None)
            info = to_jsonable(raw)
            if isolated is not None:
                self.cache.put_tensors("defended_extra", key, {"isolated": torch.as_tensor(isolated).cpu()})
            self.cache.put_model(
                "defended_model",
                key,
                result.model,
                meta={"info": info, "seconds": result.seconds, "cell": self.cell.hash},
            )
        if isolated is not None:
            info = {**info, "isolated": isolated}
        return result.model.to(self.device).eval(), info

    def _triggered(self, test: ImageSet, attack: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Float triggered images of the ASR-eligible test rows, and their attacker targets."""
        eligible = attack.asr_mask(test.y.cpu())
        x = test.x.cpu()[eligible]
        y = test.y.cpu()[eligible]
        parts = [
            attack.apply(to_pixels(x[i : i + SCORE_CHUNK]).to(self.device)).cpu()
            for i in range(0, len(x), SCORE_CHUNK)
        ]
        xt = torch.cat(parts) if parts else torch.empty(0, *test.image_shape)
        return xt, attack.target_labels(y)

    def _scores(self, detector: Any, x: torch.Tensor) -> torch.Tensor:
        out = [
            detector.score(to_pixels(x[i : i + SCORE_CHUNK]).to(self.device))
            .detach()
            .float()
            .cpu()
            .reshape(-1)
            for i in range(0, len(x), SCORE_CHUNK)
        ]
        return torch.cat(out) if out else torch.empty(0)

    def _detect(
        self, model: nn.Module, holdout: ImageSet | None, test: ImageSet, attack: Any, bkey: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        from backdoorkit.metrics import backdoor_metrics, detection_metrics
        from backdoorkit.train import predict_labels

        key = self._defense_key("detector", bkey, fingerprint(test))
        xt, target = self._triggered(test, attack) if attack is not None else (None, None)
        with self.stage("defense"):
            tensors = self.cache.get_tensors("detector_scores", key)
            meta = self.cache.meta("detector_scores", key) or {}
            if tensors is not None and "clean" in tensors:
                self.cached.append("defense")
                s_clean, s_trig = tensors["clean"], tensors.get("triggered")
                threshold = meta.get("threshold")
                info = dict(meta.get("info") or {})
            else:
                if holdout is None:
                    raise RuntimeError(f"{self.cell.defense} needs a clean holdout (scenario S1)")
                detector = self._defense().fit(model, holdout, seed=self.cell.seed)
                s_clean = self._scores(detector, test.x)
                s_trig = self._scores(detector, xt) if xt is not None else None
                threshold = None if detector.threshold is None else float(detector.threshold)
                info = to_jsonable(dict(getattr(detector, "info", {}) or {}))
                store = {"clean": s_clean} | ({"triggered": s_trig} if s_trig is not None else {})
                self.cache.put_tensors(
                    "detector_scores",
                    key,
                    store,
                    meta={"threshold": threshold, "info": info, "cell": self.cell.hash},
                )
        with self.stage("evaluate"):
            raw = backdoor_metrics(model, test, attack)
            info["model_ba"], info["model_asr"] = raw["ba"], raw.get("asr")
            metrics: dict[str, Any] = {"asr_quantized": raw.get("asr_quantized")}
            if s_trig is not None and len(s_trig) and len(s_clean):
                metrics.update(detection_metrics(s_clean, s_trig))
            if threshold is None:
                info["note"] = "the detector set no threshold: BA/ASR are the model's"
                metrics["ba"], metrics["asr"] = raw["ba"], raw.get("asr")
            else:
                info["threshold"] = threshold
                flag_clean = s_clean > threshold
                info["false_rejection"] = float(flag_clean.float().mean())
                pred = predict_labels(model, test.x).cpu()
                metrics["ba"] = float(((pred == test.y.cpu()) & ~flag_clean).float().mean())
                if xt is not None and s_trig is not None and len(xt):
                    flag_trig = s_trig > threshold
                    info["detected"] = float(flag_trig.float().mean())
                    pred_t = predict_labels(model, xt.to(self.device)).cpu()
                    metrics["asr"] = float(((pred_t == target.cpu()) & ~flag_trig).float().mean())
        return metrics, info

    def _inspect(self, model: nn.Module, holdout: ImageSet | None, bkey: str) -> dict[str, Any]:
        key = self._defense_key("inspector", bkey)
        with self.stage("defense"):
            meta = self.cache.meta("verdict", key)
            if meta is not None and self.cache.has("verdict", key):
                self.cached.append("defense")
                return {"verdict": meta.get("verdict", {}), **(meta.get("info") or {})}
            if holdout is None:
                raise RuntimeError(f"{self.cell.defense} needs a clean holdout (scenario S1)")
            v = self._defense().inspect(model, holdout, seed=self.cell.seed)
            verdict = to_jsonable({"infected": bool(v.infected), "target": v.target, "scores": dict(v.scores)})
            tensors = {"infected": torch.tensor([int(v.infected)])}
            if v.trigger is not None:
                tensors["trigger"] = v.trigger.detach().float().cpu()
            if v.mask is not None:
                tensors["mask"] = v.mask.detach().float().cpu()
            self.cache.put_tensors("verdict", key, tensors, meta={"verdict": verdict, "cell": self.cell.hash})
        return {"verdict": verdict}


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (a cell, or a shared ``clean`` / ``backdoor`` artefact) and return its outcome.

    Never raises for a failure inside the job: the result has ``status`` ``failed``, the error line and
    the traceback.  Runs in the caller's process or in a worker (process pool, Ray task).
    """
    threads = job.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    work: CellWork | None = None
    out: dict[str, Any] = {}
    try:
        work = CellWork(job["cell"], ArtifactCache(job["cache"]))
        if job["kind"] == "clean":
            work.clean_model()
        elif job["kind"] == "backdoor":
            work.backdoored_model()
        else:
            out.update(work.run())
        out["status"] = "done"
    except Exception as exc:
        out = {"status": "failed", "error": one_line(exc), "traceback": traceback.format_exc()}
    stages = {k: round(v, 4) for k, v in (work.stages if work else {}).items()}
    if work is not None and work.cached:
        stages["cached"] = sorted(set(work.cached))  # type: ignore[assignment]
    out.update(
        seconds=time.perf_counter() - start,
        stages=stages,
        device=str(work.device) if work is not None else None,
        versions=versions(),
        pid=os.getpid(),
    )
    return out
