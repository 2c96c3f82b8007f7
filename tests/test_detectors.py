"""Input detectors STRIP (Gao et al., ACSAC 2019) and feature squeezing (Xu et al., NDSS 2018) on digits.

Behaviour checked on the shared BadNets digits model (``badnets_digits[0]``): STRIP separates triggered
from clean inputs (AUROC >= 0.95), feature squeezing beats chance, the threshold is fitted on the clean
samples only at the chosen false-rejection rate, both run through ``backdoorkit detect``, and the score
histogram is written as a PNG.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from backdoorkit.checkpoint import save_model
from backdoorkit.cli import main
from backdoorkit.data import ImageSet
from backdoorkit.defenses import DEFENSES, InputDetector, build_defense
from backdoorkit.defenses.base import DefenseInputs
from backdoorkit.defenses.feature_squeezing import median_filter, non_local_means
from backdoorkit.defenses.strip import entropy_boundary
from backdoorkit.errors import ConfigError
from backdoorkit.viz.detection import plot_score_histograms


def _run(name: str, bd: dict, test: ImageSet, **params: object) -> tuple[object, dict[str, float], float]:
    d = build_defense(name, **params)
    start = time.perf_counter()
    res = d.run(DefenseInputs("S1", model=bd["model"], clean=bd["clean"]))
    out = d.evaluate(res, test, bd["attack"])
    return res, out, time.perf_counter() - start


def test_registered_as_detectors_with_documented_defaults() -> None:
    for name in ("strip", "feature_squeezing"):
        assert issubclass(DEFENSES.get(name), InputDetector)
        assert DEFENSES.entry(name).meta["scenarios"] == ("S1",)
    p = build_defense("strip").params
    assert (p.n, p.alpha, p.beta, p.frr, p.rule) == (100, 1.0, 1.0, 0.01, "normal")
    q = build_defense("feature_squeezing", bits="1", median="2,3", nlm="none").params
    assert (q.bits, q.median, q.nlm) == ((1,), (2, 3), None)
    with pytest.raises(ConfigError):
        build_defense("feature_squeezing", bits=9)
    with pytest.raises(ConfigError):
        build_defense("strip", n=0)


def test_strip_threshold_can_always_fire() -> None:
    """A confident model's clean entropies pile up near 0: the normal fit's 1 % quantile falls below 0
    (no input could ever be flagged), so the empirical quantile takes over and says so."""
    skewed = torch.tensor([0.001] * 95 + [2.0] * 5)
    boundary, used = entropy_boundary(skewed, "normal", 0.01)
    assert used == "quantile (normal fit <= 0)" and boundary == pytest.approx(0.001)
    spread = torch.linspace(1.0, 2.0, 101)
    boundary, used = entropy_boundary(spread, "normal", 0.01)
    normal = torch.distributions.Normal(spread.double().mean(), spread.double().std())
    assert used == "normal" and boundary == pytest.approx(float(normal.icdf(torch.tensor(0.01).double())))
    assert entropy_boundary(spread, "quantile", 0.01) == (pytest.approx(1.01), "quantile")


def test_strip_fits_its_threshold_on_a_capped_sample() -> None:
    """The clean entropies come from at most ``fit_samples`` inputs (a seeded draw); the overlays from
    the whole pool; the draw is the same for the same seed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    pixels = (torch.rand(50, 3, 8, 8) * 255).to(torch.uint8)
    pool = ImageSet(pixels, torch.arange(50) % 4, ("a", "b", "c", "d"))
    capped = build_defense("strip", n=4, fit_samples=20).fit(model, pool, seed=3)
    assert capped.info["fit_samples"] == 20 and capped.info["pool"] == 50 and len(capped.pool) == 50
    again = build_defense("strip", n=4, fit_samples=20).fit(model, pool, seed=3)
    assert again.threshold == capped.threshold
    whole = build_defense("strip", n=4, fit_samples=None).fit(model, pool, seed=3)
    assert whole.info["fit_samples"] == 50
    with pytest.raises(ConfigError):
        build_defense("strip", fit_samples=1)


def test_squeezers_work_on_whole_batches() -> None:
    x = torch.rand(4, 3, 9, 9)
    med2 = median_filter(x, 2)
    # 2x2 window anchored at the pixel (scipy's convention), upper middle of the 4 values
    window = torch.stack([x[..., 0, 0], x[..., 0, 1], x[..., 1, 0], x[..., 1, 1]], -1)
    assert torch.allclose(med2[..., 0, 0], window.sort(-1).values[..., 2])
    assert median_filter(x, 3).shape == x.shape
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(non_local_means(flat, 5, 3, 4.0), flat)
    noisy = (flat + 0.01 * torch.randn_like(flat)).clamp(0, 1)
    assert (non_local_means(noisy, 5, 3, 10.0) - 0.3).abs().mean() < (noisy - 0.3).abs().mean()


def test_strip_detects_badnets(badnets_digits: object, digits_test: ImageSet, tmp_path: Path) -> None:
    bd = badnets_digits[0]
    res, out, secs = _run("strip", bd, digits_test, n=20)
    print(f"STRIP n=20: {out} ({secs:.1f}s)")
    assert out["auroc"] >= 0.95
    assert out["tpr_at_5fpr"] >= 0.8 and out["detected"] >= 0.8
    assert out["asr"] < 0.2 * out["model_asr"]  # guarded: rejected triggered inputs are not attacks
    # the threshold comes from the clean samples at the 1 % false-rejection rate of a normal fit
    det = res.detector
    clean_scores = det.scores(bd["clean"].x)
    assert float((clean_scores > det.threshold).float().mean()) < 0.1
    png = plot_score_histograms(
        det.scores(digits_test.x[:100]),
        det.scores(bd["attack"].apply(digits_test.pixels(slice(0, 100)))),
        tmp_path / "strip_hist.png",
        threshold=det.threshold,
        title="STRIP on BadNets digits",
    )
    assert png.stat().st_size > 1000


def test_feature_squeezing_beats_chance(badnets_digits: object, digits_test: ImageSet) -> None:
    bd = badnets_digits[0]
    _, out, secs = _run("feature_squeezing", bd, digits_test)
    print(f"feature squeezing (5-bit, 2x2, nlm 11-3-4): {out} ({secs:.1f}s)")
    assert out["auroc"] > 0.5
    assert 0.0 < out["false_rejection"] < 0.2


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_detect_command_runs_both(
    badnets_digits: object, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = save_model(badnets_digits[0]["model"], tmp_path / "m.safetensors", config={"seed": 0})
    for name, params in (("strip", ["-P", "n=8"]), ("feature_squeezing", ["-P", "nlm=none"])):
        argv = ["detect", "--detector", name, "--model", str(model), "--attack", "badnets", "--json"]
        code, out, err = _cli([*argv, *params, "--reject"], capsys)
        assert code == 0, err
        res = json.loads(out)
        assert {"auroc", "tpr_at_1fpr", "tpr_at_5fpr", "threshold", "guarded"} <= set(res)
        assert 0.5 < res["auroc"] <= 1.0
