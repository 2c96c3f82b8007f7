"""Extension points: a new defense of each of the four kinds, written here and nowhere else, runs through
``backdoorkit run`` / ``report`` and ``backdoorkit defend`` / ``detect`` / ``inspect``, and the metric
it reports appears in the report without any code for that metric.

Budgets are tiny (ResNet-18 width 4, one epoch, 300 digits training images): these tests check the
machinery, not the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from backdoorkit.checkpoint import save_model
from backdoorkit.cli import main
from backdoorkit.data import ImageSet
from backdoorkit.defenses import DEFENSES, register_defense
from backdoorkit.defenses.base import (
    DefenseInputs,
    DefenseParams,
    DefenseResult,
    InputDetector,
    ModelInspector,
    ModelRepair,
    RobustTraining,
    Verdict,
)
from backdoorkit.errors import ScenarioError
from backdoorkit.pipeline import recipe_for
from backdoorkit.train import fit, parameters_of


class Steps(DefenseParams):
    steps: int = 2


class MetricRepair(ModelRepair):
    """Head fine-tuning for a few steps; reports how many parameters it moved."""

    name = "_ext_repair"
    Params = Steps

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        params = parameters_of(model, "fc")
        fit(model, clean, recipe_for(clean, seed=seed, device=device, batch_size=32), trainable=params,
            steps=self.params.steps)  # fmt: skip
        return DefenseResult(
            model, {"tuned": "fc"}, metrics={"ext_tuned_params": sum(p.numel() for p in params)}
        )


class MetricTraining(RobustTraining):
    """A short training run that "isolates" the rows of the most frequent label; reports a fake epsilon."""

    name = "_ext_training"
    Params = Steps

    def _train(
        self, untrusted: ImageSet, holdout: ImageSet | None, *, model_factory: Any, config: Any, seed: int
    ) -> DefenseResult:
        model = model_factory()
        fit(model, untrusted, config, steps=self.params.steps)
        top = int(torch.bincount(untrusted.y.cpu()).argmax())
        return DefenseResult(model, {}, isolated=untrusted.y.cpu() == top, metrics={"ext_epsilon": 8.0})


class MetricDetector(InputDetector):
    """Mean brightness; threshold at the clean 95th percentile; reports the clean score spread."""

    name = "_ext_detector"

    def fit(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> MetricDetector:
        s = self.score(clean.pixels())
        self.threshold = float(torch.quantile(s, 0.95))
        self.info = {"rule": "95th percentile of clean scores"}
        self.fit_metrics = {"ext_clean_spread": float(s.std())}
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1)


class MetricInspector(ModelInspector):
    """Says infected with target 0 and an anomaly index of 3."""

    name = "_ext_inspector"

    def inspect(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> Verdict:
        return Verdict(True, 0, anomaly_index=3.0, scores={"ext_norm": 1.5})


EXT = (MetricRepair, MetricTraining, MetricDetector, MetricInspector)


@pytest.fixture(scope="module")
def ext() -> Iterator[list[str]]:
    for cls in EXT:
        register_defense(cls)
    try:
        yield [c.name for c in EXT]
    finally:
        for c in EXT:
            DEFENSES._entries.pop(c.name, None)


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_new_kinds_run_and_report_with_their_metrics(
    tmp_path: Path, ext: list[str], capsys: pytest.CaptureFixture
) -> None:
    spec = {
        "name": "ext",
        "datasets": [{"name": "digits", "subset": 300, "test_subset": 100}],
        "models": [{"arch": "resnet18", "width": 4}],
        "train": {"epochs": 1, "batch_size": 64},
        "attacks": ["badnets"],
        "defenses": ["none", *ext],
        "seeds": [0],
        "clean_fraction": 0.1,
        "device": "cpu",
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    db, cache, out = tmp_path / "r.db", tmp_path / "cache", tmp_path / "report"
    code, _, err = cli(["run", str(path), "--db", str(db), "--cache-dir", str(cache), "--quiet"], capsys)
    assert code == 0, err
    code, _, err = cli(["report", str(db), "--format", "md", "--format", "csv", "--out", str(out)], capsys)
    assert code == 0, err
    md = (out / "report.md").read_text()
    csv = (out / "report.csv").read_text()
    for metric in ("ext_tuned_params", "ext_epsilon", "ext_clean_spread", "anomaly_index", "iso_precision"):
        assert metric in csv, metric
    for shown in (
        "ext_tuned_params",
        "ext_epsilon",
        "ext_clean_spread",
        "anomaly_index",
        "isolation precision",
    ):
        assert shown in md, shown
    for name in ext:
        assert name in md


def test_defend_dispatches_on_the_kind(
    tmp_path: Path, ext: list[str], clean_model: nn.Module, capsys: pytest.CaptureFixture
) -> None:
    model = save_model(clean_model, tmp_path / "m.safetensors", config={"seed": 0})
    base = ["--dataset", "digits", "--attack", "badnets", "--json"]
    code, out, err = cli(["defend", "--defense", "_ext_repair", "--model", str(model), *base], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert (
        res["kind"] == "repair"
        and res["metrics"]["ext_tuned_params"] > 0
        and set(res["after"]) == {"ba", "asr"}
    )

    argv = ["defend", "--defense", "_ext_training", "--model", "resnet18", "--width", "4", "--epochs", "1"]
    code, out, err = cli([*argv, *base], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["scenario"] == "S2" and res["holdout"] == 72 and res["poisoned"] > 0
    assert 0 <= res["isolation"]["precision"] <= 1 and res["metrics"]["ext_epsilon"] == 8.0
    assert res["before"]["asr"] is not None and res["after"]["ba"] is not None

    # a robust-training defense given a model file is refused with the scenario it needs
    code, _, err = cli(["defend", "--defense", "_ext_training", "--model", str(model), *base], capsys)
    assert code == 2 and "S2" in err and "model file" in err and len(err.strip().splitlines()) == 1

    code, out, err = cli(
        [
            "detect",
            "--detector",
            "_ext_detector",
            "--model",
            str(model),
            *base,
            "--reject",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert {"auroc", "tpr_at_1fpr", "tpr_at_5fpr", "threshold", "guarded"} <= set(res)
    assert Path(res["files"]["scores"]).is_file()  # clean vs triggered score histograms
    assert 0.0 <= res["auroc"] <= 1.0 and res["metrics"]["ext_clean_spread"] > 0

    code, out, err = cli(
        ["inspect", "--inspector", "_ext_inspector", "--model", str(model), "--json"], capsys
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["infected"] is True and res["target"] == 0 and res["anomaly_index"] == 3.0

    # detect refuses a method of another kind in one line
    code, _, err = cli(["detect", "--detector", "_ext_repair", "--model", str(model)], capsys)
    assert code == 2 and "repair" in err and len(err.strip().splitlines()) == 1


def test_run_checks_the_scenario(ext: list[str], clean_model: nn.Module, digits_train: ImageSet) -> None:
    with pytest.raises(ScenarioError, match="S1"):
        MetricRepair().run(DefenseInputs("S2", model=clean_model, clean=digits_train))
    with pytest.raises(ScenarioError, match="clean samples"):
        MetricInspector().run(DefenseInputs("S1", model=clean_model))
