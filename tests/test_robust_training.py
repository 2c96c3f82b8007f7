"""Robust training on an untrusted (BadNets-poisoned) digits training set: Trap-and-Replace, PT, ABL
and DP-SGD (issue 13), and the ``backdoorkit defend`` path for robust-training defenses.

Behaviour, never implementation: each defense gets the poisoned training set (and, for T&R, a clean
holdout split off *before* poisoning) and never the poisoned mask, the test set or the target; the
mask is only used here to score isolation.  Digits settings that differ from the papers' defaults,
and why:

* T&R uses a 10 % holdout (paper 5 %: 72 digits left BA 91-92.5 %, at the edge of the 8-point
  bound) and ``lambda_rec=100`` (paper: 10): digits are mostly black, so the per-pixel MSE is ~0.01 and
  lambda 10 leaves the reconstruction term too weak to keep the stem off the trigger in 8 epochs
  (ASR 68 % at lambda 10, 0 % at 100; without the reconstruction task 81 %).
* PT isolates 5 % (paper: 1/10) with M' trained 4 epochs at a constant lr 0.1.  With 10 % poison an
  isolation of 10 % can only be precise if the ranking is perfect; on digits clean rows are fitted as
  fast as the trigger, so the lowest 10 % were 44-70 % poisoned, the lowest 5 % 68-89 % depending on the
  CPU and 0-81 % across model seeds: the precision target is a ``known_failure``.
  PT's unlearning does NOT remove the digits backdoor in our runs: at the paper's rates (1e-3 / 1e-4)
  and at 3e-3 / 3e-4 ASR stays ~97 % after 10 epochs (110 steps), at 1e-2 / 1e-3 the ascent on the
  isolated rows diverges (BA 10 %).  Isolation is what fails, not the unlearning: given the poisoned
  mask itself as ``D_s`` (a diagnostic, never a defense), the paper's rates remove the backdoor in 40
  epochs (440 steps: BA 94.4 %, ASR 0 %; 10 epochs: ASR 97.5 %), but with PT's own isolation (precision
  22-48 % for model seeds 0-2) 40 epochs leave ASR at 98 %.  Per-epoch loss rankings swing between
  AUROC 0.02 and 0.99 from one epoch to the next on these 1,294 rows (measured 2026-12-05, ranking
  by the eval-mode loss after each of the 10 epochs of M_s and M', model seeds 0-2).  The test
  asserts what holds (isolation of a fixed share, BA kept) and not the ASR.
* DP-SGD: ResNet-18 at width 4, noise multiplier 0.5, lr 0.2, 10 epochs (noise 1.0 and 3 epochs, or 0.5
  and 6, stayed at chance).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from backdoorkit.attacks import build_attack
from backdoorkit.checkpoint import load_model, save_model
from backdoorkit.cli import main
from backdoorkit.data import split_holdout
from backdoorkit.defenses import build_defense
from backdoorkit.metrics import backdoor_metrics
from backdoorkit.pipeline import make_model, recipe_for
from backdoorkit.train import evaluate, predict

BA_SLACK = 0.08


@pytest.fixture(scope="module")
def untrusted(digits_train):
    """BadNets (attack defaults: 3x3 white patch, 10 %, target 0) on the training split minus a 10 %
    clean holdout; the attack and the mask stay on the evaluator's side."""
    rest, hold = split_holdout(digits_train, 0.1, 0)
    attack = build_attack("badnets", target=0)
    poisoned = attack.poison(rest, seed=0)
    cfg = recipe_for(poisoned.data, seed=0)

    def factory() -> torch.nn.Module:
        return make_model("resnet18", poisoned.data, width=8, seed=0)

    return {"poisoned": poisoned, "holdout": hold, "attack": attack, "config": cfg, "factory": factory}


def _train(name: str, u: dict, holdout: bool = False, **params: object):
    d = build_defense(name, **params)
    hold = u["holdout"] if holdout else None
    res = d.train(u["poisoned"].data, hold, model_factory=u["factory"], config=u["config"], seed=0)
    return d, res


def test_trap_replace_removes_badnets_and_needs_reconstruction(
    untrusted, clean_model, digits_test, tmp_path: Path
) -> None:
    clean_ba = evaluate(clean_model, digits_test)
    d, full = _train("trap_replace", untrusted, holdout=True, lambda_rec=100.0)
    scored = d.evaluate(full, digits_test, untrusted["attack"], mask=untrusted["poisoned"].mask)
    assert scored["asr"] <= 0.10, scored
    assert scored["ba"] >= clean_ba - BA_SLACK, (scored, clean_ba)
    assert full.info["stem_end"] == "layer4.0" and full.info["replaced"] is True
    assert math.isfinite(scored["recon_mse"])

    _, plain = _train("trap_replace", untrusted, holdout=True, reconstruct=False)
    plain_asr = backdoor_metrics(plain.model, digits_test, untrusted["attack"])["asr"]
    assert plain_asr >= scored["asr"] + 0.3, (plain_asr, scored["asr"])

    # stem + new head is one checkpoint
    path = save_model(full.model, tmp_path / "tr.safetensors")
    back = load_model(path)
    x = digits_test.x[:64]
    assert torch.allclose(predict(back, x), predict(full.model, x), atol=1e-5)

    from backdoorkit.viz.features import centroid_shares, stem_feature_pca

    shares = {
        name: centroid_shares(m.stem, digits_test, untrusted["attack"])
        for name, m in (("no reconstruction", plain.model), ("T&R", full.model))
    }
    # digits, seed 0: no reconstruction 7.7 % nearest the target, T&R 0.3 %; both ~85-90 % own class
    assert all(0.0 <= v <= 1.0 for got in shares.values() for v in got.values()), shares
    assert shares["T&R"]["target"] < shares["no reconstruction"]["target"], shares
    assert shares["T&R"]["own class"] >= 0.5, shares

    png = stem_feature_pca(
        {"no reconstruction": plain.model.stem, "T&R": full.model.stem},
        digits_test,
        untrusted["attack"],
        tmp_path / "fig2.png",
        per_group=60,
    )
    assert png.stat().st_size > 1000


PT_DIGITS = {"isolation": 0.05, "probe_epochs": 4, "probe_lr": 0.1, "probe_schedule": "constant"}


def test_partial_training_isolates_a_fixed_share_and_keeps_ba(untrusted, clean_model, digits_test) -> None:
    """PT isolates exactly its share of the rows and keeps BA; its isolation precision is not stable on
    digits (see :func:`test_partial_training_isolation_precision`), so it is not asserted here."""
    clean_ba = evaluate(clean_model, digits_test)
    d, res = _train("partial_training", untrusted, **PT_DIGITS)
    scored = d.evaluate(res, digits_test, untrusted["attack"], mask=untrusted["poisoned"].mask)
    print(f"PT on digits: {scored}")
    rows = len(untrusted["poisoned"].data)
    assert res.isolated is not None and int(res.isolated.sum()) == round(0.05 * rows)
    assert 0.0 <= scored["iso_precision"] <= 1.0 and 0.0 <= scored["iso_base_precision"] <= 1.0
    assert scored["ba"] >= clean_ba - BA_SLACK, (scored, clean_ba)
    # PT's premise, reported without the mask: how well M_s and the partially frozen M' fit D
    assert 0.5 <= scored["base_fit_acc"] <= 1.0 and 0.0 <= scored["probe_fit_acc"] <= 1.0, scored


@pytest.mark.known_failure
def test_partial_training_isolation_precision(untrusted, digits_test) -> None:
    """Known failure, outside the default suite (``make test-known``): the issue asks for PT isolation
    precision >= 80 % on BadNets.  On digits it depends on the run, not on the method's settings:
    with M' trained 4 epochs at a constant lr 0.1 and 5 % isolated, precision was 89 % on one CPU and
    68 % on another for the same seed; at 2 % isolated, model seeds 0 / 1 / 2 gave 81 / 0 / 0 %
    (M_s: 58 / 31 / 65 %); with M' trained like M_s (10 epochs, one-cycle) 43 / 20 / 40 % at 5 %.  The
    CIFAR-10 CPU reproduction shows the same (13.3 %,
    ``benchmarks/results/robust_training_cifar10_cpu.md``), and so does the paper's own MNIST BadNet
    setting at CPU scale (21.0 %, M' and M_s both fitting the training set to 100 %:
    ``benchmarks/results/pt_table2_mnist_cpu.md``)."""
    d, res = _train("partial_training", untrusted, **PT_DIGITS)
    scored = d.evaluate(res, digits_test, untrusted["attack"], mask=untrusted["poisoned"].mask)
    if scored["iso_precision"] < 0.8 or scored["iso_precision"] <= scored["iso_base_precision"]:
        pytest.xfail(f"PT isolation on digits: {scored}")


def test_abl_isolation_precision(untrusted, digits_test) -> None:
    d, res = _train("abl", untrusted, finetune_epochs=0)
    scored = d.evaluate(res, digits_test, untrusted["attack"], mask=untrusted["poisoned"].mask)
    assert res.isolated is not None and int(res.isolated.sum()) == round(
        0.01 * len(untrusted["poisoned"].data)
    )
    assert scored["iso_precision"] >= 0.8, scored


def test_dp_sgd_reports_epsilon_and_learns(untrusted, digits_test, tmp_path: Path) -> None:
    """At width 4 (opacus' per-sample gradients make every step ~0.4 s): 40 s and BA 37.3 %, eps 35.1
    (width 8: 63 s in the suite)."""
    data = untrusted["poisoned"].data
    narrow = {**untrusted, "factory": lambda: make_model("resnet18", data, width=4, seed=0)}
    _, res = _train("dp_sgd", narrow, epochs=10, noise_multiplier=0.5, lr=0.2)
    eps = res.metrics["dp_epsilon"]
    assert math.isfinite(eps) and eps > 0
    assert evaluate(res.model, digits_test) > 0.2  # chance is 0.1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in res.model.modules())
    back = load_model(save_model(res.model, tmp_path / "dp.safetensors"))
    assert torch.allclose(
        predict(back, digits_test.x[:32]), predict(res.model, digits_test.x[:32]), atol=1e-5
    )


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def test_defend_refuses_model_file_for_robust_training(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, err = _cli(
        [
            "defend",
            "--defense",
            "trap_replace",
            "--model",
            str(tmp_path / "some.safetensors"),
            "--attack",
            "badnets",
        ],
        capsys,
    )
    text = (out + err).strip()
    assert code == 2 and len(text.splitlines()) == 1 and "S2" in text and "S1" in text, text


def test_defend_partial_training_json(capsys: pytest.CaptureFixture) -> None:
    argv = [
        "defend", "--defense", "partial_training", "--model", "resnet18", "--width", "8",
        "--attack", "badnets", "--json", "--epochs", "1", "-P", "unlearn_epochs=1",
    ]  # fmt: skip
    code, out, _ = _cli(argv, capsys)
    assert code == 0
    res = json.loads(out)
    assert set(res) >= {"before", "after", "isolation", "defense", "kind"}
    assert res["kind"] == "training" and set(res["isolation"]) == {"precision", "recall"}
    assert all(0.0 <= res[w]["ba"] <= 1.0 for w in ("before", "after"))


def test_a_defense_result_does_not_depend_on_what_ran_before(untrusted) -> None:
    """Trap-and-Replace draws its decoder's initial weights outside ``fit``; under the defense's seeded
    block (:func:`backdoorkit.seeding.seeded`) the trained model is the same whatever the process's
    random stream was before (unseeded, the digits demo cell gave ASR 10-84 % for one cell hash), and
    the caller's stream goes on as if the defense had not run."""
    from backdoorkit.seeding import seeded

    cfg = untrusted["config"].model_copy(update={"epochs": 1})
    u = {**untrusted, "config": cfg}
    states = []
    for before in (0, 1):
        torch.manual_seed(before)
        _, res = _train("trap_replace", u, holdout=True, head_epochs=1)
        states.append(res.model.state_dict())
        torch.manual_seed(before)
        expected = torch.rand(3)
        torch.manual_seed(before)
        with seeded(7):
            torch.rand(5)
        assert torch.equal(torch.rand(3), expected)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
