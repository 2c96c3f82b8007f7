"""Skip scan and critical-layer scores (SSFT, Yang et al. 2023, Figure 1) and the training-stage
gradient-suppression experiment, on the embedded digits data."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from backdoorkit.analysis import (
    DEFAULT_GAMMAS,
    critical_scores,
    gradient_suppression_experiment,
    scan_skips,
)
from backdoorkit.errors import ConfigError
from backdoorkit.metrics import attack_success_rate, benign_accuracy
from backdoorkit.models import get_gammas, set_gamma, skips


def test_default_grid() -> None:
    assert DEFAULT_GAMMAS == (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)


def test_scan_equals_hand_evaluation_and_restores_gammas(badnets_digits, digits_test, tmp_path) -> None:
    case = badnets_digits[0]
    model, attack = case["model"], case["attack"]
    set_gamma(model, "layer2.0", 0.5)  # a gamma the model already had must survive the scan
    try:
        names = ["layer1.0", "layer2.0", "layer3.1"]
        grid = (1.0, 0.4, 0.0)
        scan = scan_skips(model, digits_test, attack, grid, names)
        assert get_gammas(model) == {"layer2.0": 0.5}
        rows = scan.to_rows()
        assert [(r["skip"], r["gamma"]) for r in rows] == [(n, g) for n in names for g in grid]
        for r in rows:
            before = skips(model)[r["skip"]].gamma
            set_gamma(model, r["skip"], r["gamma"])
            ba, asr = benign_accuracy(model, digits_test), attack_success_rate(model, digits_test, attack)
            set_gamma(model, r["skip"], before)
            assert (r["ba"], r["asr"]) == (ba, asr), r
        assert scan.baseline == {
            "ba": benign_accuracy(model, digits_test),
            "asr": attack_success_rate(model, digits_test, attack),
        }
        # a trained backdoor is there at gamma 1, and removing a skip changes the network
        assert scan.curve("layer1.0")[0]["asr"] > 0.9
        assert scan.curve("layer1.0")[-1]["ba"] < scan.curve("layer1.0")[0]["ba"]

        files = scan.save(tmp_path, highlight=["layer3.1"])
        with files["csv"].open() as fh:
            table = list(csv.DictReader(fh))
        assert len(table) == len(rows) and set(table[0]) == {"skip", "gamma", "ba", "asr"}
        assert float(table[4]["asr"]) == rows[4]["asr"]
        blob = json.loads(files["json"].read_text())
        assert blob["rows"] == rows and blob["gammas"] == list(grid)
        assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        set_gamma(model, "all", 1.0)


@pytest.fixture()
def untrained(digits_test):  # type: ignore[no-untyped-def]
    from backdoorkit.pipeline import make_model

    return make_model("resnet18", digits_test, width=4, seed=0)


def test_scan_restores_gammas_on_error(untrained, digits_test) -> None:
    class Broken:
        def apply(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

        def target_labels(self, y: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(y)

        def asr_mask(self, y: torch.Tensor) -> torch.Tensor:
            return y != 0

    with pytest.raises(RuntimeError, match="boom"):
        scan_skips(untrained, digits_test, Broken(), (1.0, 0.0))
    assert get_gammas(untrained) == {}


def test_scan_without_attack_and_bad_names(untrained, digits_test) -> None:
    scan = scan_skips(untrained, digits_test.subset(torch.arange(64)), None, (1.0, 0.0), ["layer4.1"])
    assert len(scan.rows) == 2 and all(math.isnan(r["asr"]) for r in scan.rows)
    with pytest.raises(ConfigError, match="unknown skip"):
        scan_skips(untrained, digits_test, None, (1.0,), ["layer9.9"])
    with pytest.raises(ConfigError):
        scan_skips(untrained, digits_test, None, ())


def _rows(table: dict[str, list[tuple[float, float, float]]]) -> list[dict[str, float | str]]:
    return [{"skip": s, "gamma": g, "ba": ba, "asr": asr} for s, pts in table.items() for g, ba, asr in pts]


def test_critical_scores_margin_and_official() -> None:
    rows = _rows(
        {
            # suppressing "a" destroys everything (BA and ASR fall together)
            "a": [(1.0, 0.99, 1.0), (0.5, 0.60, 0.6), (0.0, 0.10, 0.05)],
            # suppressing "b" removes the backdoor and keeps the clean task
            "b": [(1.0, 0.99, 1.0), (0.5, 0.97, 0.9), (0.0, 0.90, 0.2)],
            # "c" does nothing
            "c": [(1.0, 0.99, 1.0), (0.5, 0.99, 1.0), (0.0, 0.98, 0.99)],
        }
    )
    margin = critical_scores(rows, "margin")
    assert [c.skip for c in margin] == ["b", "a", "c"]
    assert margin[0].score == pytest.approx((1.0 - 0.2) - (0.99 - 0.90))
    assert margin[0].gamma == 0.0
    # our earlier rule, now "previous" (exponent at the larger gamma, ASR as a fraction)
    previous = critical_scores(rows, "previous")
    # "a": the steps are 0.4/e^1 and 0.55/e^0.6; "b": 0.1/e^1 and 0.7/e^0.9 -> "a" wins (BA ignored)
    assert [c.skip for c in previous][:2] == ["a", "b"]
    assert previous[0].score == pytest.approx(0.55 / math.exp(0.6))
    # the official rule (percent, exponent at the smaller gamma): "a" 55 / e^5, "b" 70 / e^20
    official = critical_scores(rows, "official")
    assert [c.skip for c in official][:2] == ["a", "b"]
    assert official[0].score == pytest.approx(55 / math.exp(5))
    assert official[1].score == pytest.approx(max(10 / math.exp(90), 70 / math.exp(20)))
    with pytest.raises(ConfigError):
        critical_scores(rows, "nope")  # type: ignore[arg-type]


def test_critical_scores_ties_prefer_larger_gamma_and_model_order() -> None:
    rows = _rows(
        {
            "x": [(1.0, 1.0, 1.0), (0.5, 1.0, 0.0), (0.0, 1.0, 0.0)],
            "y": [(1.0, 1.0, 1.0), (0.5, 1.0, 0.0), (0.0, 1.0, 0.0)],
        }
    )
    best = critical_scores(rows, "margin")
    assert [c.skip for c in best] == ["x", "y"] and best[0].gamma == 0.5


def test_gradient_suppression_trains_with_all_skips_scaled(digits_train, digits_test, monkeypatch) -> None:
    from backdoorkit.analysis import gradient_suppression as gs
    from backdoorkit.attacks import build_attack
    from backdoorkit.pipeline import recipe_for

    attack = build_attack("badnets", target=0)
    poisoned = attack.poison(digits_train, seed=0).data
    seen: list[dict[str, float]] = []
    real_fit = gs.fit

    def spy(model, data, cfg, **kw):  # type: ignore[no-untyped-def]
        seen.append({n: s.gamma for n, s in skips(model).items()})
        return real_fit(model, data, cfg, **kw)

    monkeypatch.setattr(gs, "fit", spy)
    res = gradient_suppression_experiment(
        "resnet18", poisoned, digits_test, attack, (1.0, 0.0), config=recipe_for(poisoned, steps=3), width=4
    )
    assert [set(s.values()) for s in seen] == [{1.0}, {0.0}]
    assert [r["gamma"] for r in res.rows] == [1.0, 0.0]
    assert all(0.0 <= r["ba"] <= 1.0 and 0.0 <= r["asr"] <= 1.0 for r in res.to_rows())
