"""Model-repair baselines (issue 16): pruning, fine-pruning, NAD, MCR, ANP, I-BAU, super-fine-tuning.

Behaviour on the shared BadNets digits model (``badnets_digits[0]``: ResNet-18 width 8, ASR ~99 %)
and its 144 clean samples: what each defense does to BA / ASR, that each result saves and loads with
identical outputs, that no defense can receive the test set, and one run through ``backdoorkit
defend``.  Budgets are cut for the shared CPU (each test budget is named in ``BUDGETS``; the
defaults are the papers').  Measured (BA / ASR %, before 98.9 / 98.8) in ``MEASURED``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from backdoorkit.checkpoint import load_model, save_model
from backdoorkit.cli import main
from backdoorkit.defenses import DEFENSES, ModelRepair, build_defense
from backdoorkit.metrics import attack_success_rate, benign_accuracy

NAMES = ("pruning", "fine_pruning", "nad", "mcr", "anp", "ibau", "super_fine_tuning")
BUDGETS: dict[str, dict[str, object]] = {
    "pruning": {},
    "fine_pruning": {"min_steps": 40},
    "nad": {"min_steps": 100, "lr": 0.2, "warm_fraction": 0.0},
    "mcr": {"min_steps": 60, "curve_epochs": 50, "curve_lr": 0.05, "tolerance": 0.1},
    "anp": {"steps": 30, "eps": 0.1},
    "ibau": {"min_steps": 4, "batch_size": 48},
    "super_fine_tuning": {"peak_lr": 1.0},
}
MEASURED = """(BA / ASR %, seconds on the shared 2-core CPU; before 98.9 / 98.8)
pruning 88.3 / 0.0 (0.5 s): 36 of 64 channels pruned, the held-out rule allows a 10-point drop;
fine_pruning 98.3 / 96.6 (4 s): fine-tuning brings the backdoor back (as FT-All keeps it on digits); mcr
98.1 / 100 (15 s, 50 curve epochs; 100: 98.3 / 100 in 28 s): the fine-tuned endpoint keeps the backdoor
and so does the whole curve; anp 92.2 / 34.7 (8.5 s, eps 0.1, 30 iterations; 60: 93.3 / 21.1 in 20 s);
ibau 96.1 / 1.5 (29 s, 4 steps per round of 48; batches of 100: 95.5 / 0.0 in 39 s; 6 steps: 89.1 / 0.9 in
43 s; 3 rounds of 6: BA 52.9, so the round count stays the paper's 5); super_fine_tuning 92.8 / 0.0 (18 s,
peak lr 1.0; 50 epochs: BA 88.0); nad 94.2 / 0.6 (17 s, constant lr 0.2, 100 steps; 60 and 80 steps: BA
90.5 and 90.0)."""


def test_registered_as_s1_model_repairs_with_paper_defaults() -> None:
    for name in NAMES:
        entry = DEFENSES.entry(name)
        assert issubclass(entry.obj, ModelRepair) and entry.meta["scenarios"] == ("S1",) and entry.paper
    nad = build_defense("nad").params
    assert (nad.betas, nad.power, nad.epochs, nad.lr, nad.batch_size) == (
        (500.0, 1000.0, 1000.0),
        2.0,
        20,
        0.1,
        64,
    )
    anp = build_defense("anp").params
    assert (anp.eps, anp.alpha, anp.lr, anp.steps, anp.batch_size) == (0.4, 0.2, 0.2, 2000, 128)
    ibau = build_defense("ibau").params
    assert (ibau.K, ibau.rounds, ibau.lr, ibau.inner_lr) == (5, 5, 1e-3, 10.0)
    mcr = build_defense("mcr").params
    assert (mcr.curve_epochs, mcr.curve_lr, mcr.grid, mcr.t) == (100, 0.01, 11, None)
    assert build_defense("fine_pruning").params.max_drop == 0.10
    sft = build_defense("super_fine_tuning").params
    assert (sft.lr, sft.peak_lr, sft.final_peak_lr, sft.epochs) == (0.03, 2.5, 0.05, 100)


def test_no_defense_can_receive_the_test_set_or_the_attack() -> None:
    """By construction: ``repair`` takes the model, the clean samples, a seed and a device - nothing else."""
    for name in NAMES:
        cls = DEFENSES.get(name)
        assert list(inspect.signature(cls.repair).parameters) == ["self", "model", "clean", "seed", "device"]
        assert not set(cls.Params.model_fields) & {"target", "attack", "trigger", "mask", "test", "poisoned"}


@pytest.fixture(scope="module")
def outcomes(badnets_digits, digits_test, tmp_path_factory) -> dict[str, dict[str, float]]:
    case = badnets_digits[0]
    model, attack, clean = case["model"], case["attack"], case["clean"]
    table = {
        "none": {
            "ba": benign_accuracy(model, digits_test),
            "asr": attack_success_rate(model, digits_test, attack),
        }
    }
    folder = tmp_path_factory.mktemp("repair")
    x = clean.pixels()[:32]
    for name in NAMES:
        res = build_defense(name, **BUDGETS[name]).repair(model, clean, seed=0)
        out = res.model.eval()
        path = save_model(out, folder / f"{name}.safetensors")
        back = load_model(path)
        with torch.no_grad():
            same = torch.equal(back(x), out.cpu()(x))
        table[name] = {
            "ba": benign_accuracy(out, digits_test),
            "asr": attack_success_rate(out, digits_test, attack),
            "seconds": res.seconds,
            "reloads_identically": float(same),
        }
    print(
        "\n"
        + "\n".join(
            f"{n:>18} BA {100 * r['ba']:5.1f} ASR {100 * r['asr']:5.1f} {r.get('seconds', 0):5.1f}s"
            for n, r in table.items()
        )
    )
    return table


def test_every_result_saves_and_loads_with_identical_outputs(outcomes) -> None:
    assert outcomes["none"]["asr"] > 0.95
    for name in NAMES:
        assert outcomes[name]["reloads_identically"] == 1.0, name


@pytest.mark.parametrize("name", ["nad", "anp", "ibau", "super_fine_tuning"])
def test_defense_removes_the_backdoor_and_keeps_accuracy(outcomes, name) -> None:
    before, after = outcomes["none"], outcomes[name]
    assert after["asr"] <= before["asr"] - 0.5, after
    assert after["ba"] >= before["ba"] - 0.10, after


def test_pruning_removes_the_backdoor_and_fine_tuning_brings_it_back(outcomes) -> None:
    """On digits, pruning the dormant last-layer channels removes the backdoor at the accuracy cost the
    held-out rule allows (10 points on 43 held-out images; measured 10.6 on the test set), and the
    fine-tuning step of fine-pruning restores the accuracy *and* the backdoor (the RAID paper reports
    fine-pruning removing it; here fine-tuning alone keeps BadNets, see tests/test_ssft.py)."""
    before, pruned, fine = outcomes["none"], outcomes["pruning"], outcomes["fine_pruning"]
    assert pruned["asr"] <= before["asr"] - 0.5 and pruned["ba"] >= before["ba"] - 0.12
    assert fine["ba"] >= before["ba"] - 0.03 and fine["ba"] > pruned["ba"]
    assert fine["asr"] >= 0.5


def test_mcr_keeps_the_backdoor_when_the_fine_tuned_endpoint_keeps_it(outcomes) -> None:
    """MCR's curve joins the suspicious model and its fine-tuned copy; on digits fine-tuning keeps the
    BadNets backdoor (FT-All in tests/test_ssft.py), and so does every point of the curve: the failure
    that holds here (the SSFT paper's CIFAR-10 row has MCR at 0.8 % ASR).  Accuracy is kept."""
    before, after = outcomes["none"], outcomes["mcr"]
    assert after["ba"] >= before["ba"] - 0.03
    assert after["asr"] >= 0.5


def test_defend_command_runs_a_repair_baseline(badnets_digits, tmp_path: Path, capsys) -> None:
    model_file = save_model(badnets_digits[0]["model"], tmp_path / "bd.safetensors", config={"seed": 0})
    argv = [
        "defend",
        "--defense",
        "pruning",
        "--model",
        str(model_file),
        "--dataset",
        "digits",
        "--attack",
        "badnets",
        "--json",
        "-P",
        "max_drop=0.1",
        "--out",
        str(tmp_path / "p.safetensors"),
    ]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert int(done.value.code or 0) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["defense"] == "pruning" and res["clean_samples"] == 144
    assert res["before"]["asr"] > 0.9 and res["info"]["pruning"]["pruned"] > 0
    assert load_model(res["out"]) is not None
