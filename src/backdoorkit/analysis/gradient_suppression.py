"""The training-stage experiment of SSFT's section 2: train with every skip scaled by gamma.

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts" (ICASSP 2023), section 2, eq. (1):
``z_i = f(z_{i-1}) + gamma * z_{i-1}`` in *every* residual block during training, which scales the
gradient that flows through the shortcuts by gamma.  The paper reports that a small gamma has almost
no influence on BA or ASR: the backdoor is learned by the other layers as well (as it is in VGG).

:func:`gradient_suppression_experiment` trains one fresh model per gamma on the (poisoned) training
set, with all skips at that gamma from initialisation to the end, and evaluates it as trained (the
same gamma at test time - the network it learned).  Same seed, initialisation and recipe for every
gamma, so only gamma differs.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backdoorkit.analysis.skip_scan import check_gammas
from backdoorkit.data.imageset import ImageSet
from backdoorkit.metrics import Trigger, backdoor_metrics
from backdoorkit.models.skips import set_gamma, skips
from backdoorkit.train import TrainConfig, fit

TRAINING_GAMMAS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)


@dataclass
class GradientSuppression:
    """One row ``{gamma, ba, asr, asr_quantized, seconds}`` per training gamma."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]

    def to_csv(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.rows[0]) if self.rows else ["gamma", "ba", "asr"]
        with out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        return out

    def to_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1, default=str))
        return out

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        from backdoorkit.viz.curves import plot_sweep

        return plot_sweep(
            self.rows,
            "gamma",
            path,
            title=title or "all skips scaled during training",
            xlabel="training gamma (all skips)",
            reverse_x=True,
        )


def gradient_suppression_experiment(
    arch: str,
    poisoned_train: ImageSet,
    clean_test: ImageSet,
    attack: Trigger | None,
    gammas: Iterable[float] = TRAINING_GAMMAS,
    *,
    config: TrainConfig | None = None,
    width: int | None = None,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
) -> GradientSuppression:
    """Train ``arch`` on ``poisoned_train`` once per gamma (all skips scaled) and report BA / ASR.

    Args:
        arch: a registered architecture with skips (``resnet18`` ...).
        poisoned_train: the training set as the victim received it.
        clean_test: the clean test set; ``attack`` is the trigger whose ASR is measured.
        gammas: the training-time decay factors (default 1.0, 0.75, 0.5, 0.25, 0.0).
        config: the training recipe (default: the dataset's :func:`~backdoorkit.pipeline.recipe_for`).
        width, seed, model_kwargs: passed to :func:`~backdoorkit.pipeline.make_model` (same seed,
            hence the same initial weights, for every gamma).
    """
    from backdoorkit.errors import ConfigError
    from backdoorkit.pipeline import make_model, recipe_for

    grid = check_gammas(gammas)
    cfg = (config or recipe_for(poisoned_train)).model_copy(update={"seed": seed})
    rows: list[dict[str, Any]] = []
    for g in grid:
        model = make_model(arch, poisoned_train, width=width, seed=seed, **(model_kwargs or {}))
        if not skips(model):
            raise ConfigError(f"{arch} has no skip connections to scale")
        set_gamma(model, "all", g)
        start = time.perf_counter()
        fit(model, poisoned_train, cfg)
        seconds = time.perf_counter() - start
        m = backdoor_metrics(model, clean_test, attack)
        rows.append(
            {
                "gamma": g,
                "ba": m["ba"],
                "asr": m.get("asr", float("nan")),
                "asr_quantized": m.get("asr_quantized", float("nan")),
                "seconds": seconds,
            }
        )
    describe = getattr(attack, "describe", None)
    meta = {
        "arch": arch,
        "width": width,
        "seed": seed,
        "train": poisoned_train.name,
        "test": clean_test.name,
        "attack": describe() if callable(describe) else None,
        "config": cfg.model_dump(),
    }
    return GradientSuppression(rows=rows, meta=meta)
