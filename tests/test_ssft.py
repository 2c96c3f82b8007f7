"""SSFT (Yang et al., ICASSP 2023) and its baselines SS, FT-Critical, FT-FC, FT-All on digits.

Behaviour checked: the selection sees only the defender's clean samples; fine-tuning moves only the
parameters it should (all others, batch-norm statistics included, bit-identical); the chosen gammas
travel through checkpoints; and what each defense does to a BadNets digits model over three seeds.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.cache import ArtifactCache
from backdoorkit.checkpoint import load_model, read_sidecar, save_model
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.defenses import DEFENSES, ModelRepair, build_defense
from backdoorkit.defenses import _shortcut as sc
from backdoorkit.errors import ConfigError
from backdoorkit.metrics import attack_success_rate, benign_accuracy
from backdoorkit.models import get_gammas, skips

NAMES = ("ssft", "ss", "ft_critical", "ft_fc", "ft_all")


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> set[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def test_registered_as_s1_model_repairs_with_paper_defaults() -> None:
    for name in NAMES:
        entry = DEFENSES.entry(name)
        assert issubclass(entry.obj, ModelRepair) and entry.meta["scenarios"] == ("S1",)
        assert "Suppressing Model Shortcuts" in entry.paper
    p = build_defense("ssft").params
    assert (p.lr, p.epochs, p.momentum, p.weight_decay, p.batch_size, p.schedule) == (
        0.01,
        10,
        0.9,
        5e-4,
        128,
        "constant",
    )
    # "previous": the rule the defaults always used (issue 11 renamed it; "official" is the published one)
    assert (p.k, p.score, p.mode, p.tune, p.surrogate_attack, p.surrogate_target) == (
        1,
        "previous",
        "standard",
        "stage",
        "badnets",
        None,
    )
    with pytest.raises(ConfigError):
        build_defense("ssft", surrogate_params={"target": 3})
    with pytest.raises(ConfigError):
        build_defense("ssft", tune="everything")


def test_layer_lists_accept_the_strings_the_command_line_gives() -> None:
    # `-p layers=layer3.1` and `-p layers=layer2.1,layer3.1` reach the parameters as strings
    assert build_defense("ssft", layers="layer3.1").params.layers == ("layer3.1",)
    p = build_defense("ss", layers="layer2.1, layer3.1", candidates="layer1.0,layer2.1,layer3.1")
    assert p.params.layers == ("layer2.1", "layer3.1")
    assert p.params.candidates == ("layer1.0", "layer2.1", "layer3.1")
    assert build_defense("ssft", gammas="1.0,0.5,0").params.gammas == (1.0, 0.5, 0.0)
    with pytest.raises(ConfigError):
        build_defense("ssft", gammas="0.5,0")  # the grid must contain 1.0


def test_defense_api_gives_no_attack_test_set_or_mask() -> None:
    """By construction: ``repair`` takes the model, the clean samples, a seed and a device - nothing else."""
    for name in NAMES:
        sig = inspect.signature(DEFENSES.get(name).repair)
        assert list(sig.parameters) == ["self", "model", "clean", "seed", "device"]
        fields = set(DEFENSES.get(name).Params.model_fields)
        assert not fields & {"target", "attack", "trigger", "mask", "test"}


def test_selection_sees_only_clean_samples_and_its_own_surrogate(
    badnets_digits, digits_test, monkeypatch
) -> None:
    case = badnets_digits[0]
    clean = case["clean"]
    clean_rows = {bytes(x.numpy().tobytes()) for x in clean.x}
    built: list[dict[str, object]] = []
    poisoned_inputs: list[object] = []
    scanned: list[object] = []
    real_build, real_scan = sc.build_surrogate_attack, sc.scan_skips

    def spy_build(params, num_classes, seed):  # type: ignore[no-untyped-def]
        atk = real_build(params, num_classes, seed)
        built.append(atk.describe())
        real_poison = atk.poison

        def poison(train, **kw):  # type: ignore[no-untyped-def]
            poisoned_inputs.append(train)
            return real_poison(train, **kw)

        atk.poison = poison  # type: ignore[method-assign]
        return atk

    def spy_scan(model, data, attack, *a, **kw):  # type: ignore[no-untyped-def]
        scanned.append(data)
        return real_scan(model, data, attack, *a, **kw)

    monkeypatch.setattr(sc, "build_surrogate_attack", spy_build)
    monkeypatch.setattr(sc, "scan_skips", spy_scan)
    sc.clear_selection_cache()
    d = build_defense("ss", surrogate_epochs=2)
    res = d.repair(case["model"], clean, seed=5)

    # the surrogate attack is BadNets with default parameters and a target drawn from the seed alone
    assert len(built) == 1
    assert built[0]["attack"] == "badnets" and built[0]["target"] == sc.surrogate_target(d.params, 10, 5)
    assert built[0]["rate"] == 0.3 and (built[0]["variant"], built[0]["row"], built[0]["col"]) == (
        "white",
        1,
        1,
    )
    assert [sc.surrogate_target(d.params, 10, s) for s in range(6)] != [0] * 6  # not the true target
    # it poisons only part of the clean samples and scans only the rest; never the test set
    (train_part,), (eval_part,) = poisoned_inputs, scanned
    assert len(train_part) + len(eval_part) == len(clean)
    for part in (train_part, eval_part):
        assert {bytes(x.numpy().tobytes()) for x in part.x} <= clean_rows
        assert fingerprint(part) != fingerprint(digits_test)
    assert res.info["selection"]["surrogate"]["target"] == built[0]["target"]


def test_selection_is_deterministic_and_cached(badnets_digits) -> None:
    case = badnets_digits[1]
    sc.clear_selection_cache()
    p = build_defense("ss", surrogate_epochs=2).params
    a = sc.select_critical(case["model"], case["clean"], p, seed=1, device="cpu")
    sc.clear_selection_cache()
    b = sc.select_critical(case["model"], case["clean"], p, seed=1, device="cpu")
    c = sc.select_critical(case["model"], case["clean"], p, seed=1, device="cpu")
    assert (a.layers, a.scan, a.scores) == (b.layers, b.scan, b.scores) == (c.layers, c.scan, c.scores)
    assert not b.cached and c.cached


def test_selection_persists_in_the_artefact_cache_only_when_asked(badnets_digits, tmp_path) -> None:
    """Inside ``selections_stored_in`` (the runner's cells) a selection survives the in-process memo
    (another process, a later session) and comes back identical; outside it nothing is written."""
    case = badnets_digits[1]
    p = build_defense("ss", surrogate_epochs=2).params
    store = ArtifactCache(tmp_path / "cache")
    sc.clear_selection_cache()
    with sc.selections_stored_in(store):
        a = sc.select_critical(case["model"], case["clean"], p, seed=2, device="cpu")
        sc.clear_selection_cache()  # as a fresh process would start
        b = sc.select_critical(case["model"], case["clean"], p, seed=2, device="cpu")
    assert not a.cached and b.cached
    assert (a.layers, a.optimal_gammas, a.scan, a.scores, a.seconds) == (
        b.layers,
        b.optimal_gammas,
        b.scan,
        b.scores,
        b.seconds,
    )
    assert len(list((tmp_path / "cache" / "selection").glob("*.json"))) == 1
    sc.clear_selection_cache()
    c = sc.select_critical(case["model"], case["clean"], p, seed=2, device="cpu")  # no store: recomputed
    assert not c.cached and c.layers == a.layers
    assert len(list((tmp_path / "cache" / "selection").glob("*.json"))) == 1  # the docstring's "nothing"


def test_ssft_tunes_only_the_critical_stage_and_gammas_survive_checkpoints(badnets_digits, tmp_path) -> None:
    case = badnets_digits[0]
    model = case["model"]
    original = copy.deepcopy(model)
    res = build_defense("ssft", layers=("layer3.1",), epochs=2, min_steps=None).repair(
        model, case["clean"], seed=0
    )
    assert _changed(model, original) == set() and get_gammas(model) == {}  # the input is untouched
    out = res.model
    assert res.info["layers"] == ["layer3.1"] and res.info["gammas"] == {"layer3.1": 0.0}
    assert res.info["finetune"]["tuned"] == ["layer3"]
    assert get_gammas(out) == {"layer3.1": 0.0}
    changed = _changed(out, original)
    assert changed and all(k.startswith("layer3.") for k in changed)
    # BN statistics of layer3 move (it is trained), those of every other stage are bit-identical
    assert any(k.endswith("running_mean") for k in changed)

    path = save_model(out, tmp_path / "ssft.safetensors")
    assert read_sidecar(path)["skips"]["gammas"] == {"layer3.1": 0.0}
    back = load_model(path)
    assert get_gammas(back) == {"layer3.1": 0.0}
    x = case["clean"].pixels()[:32]
    with torch.no_grad():
        assert torch.equal(back(x), out.eval()(x))


@pytest.mark.parametrize(
    ("name", "kw", "prefixes"),
    [
        # one epoch is enough to see which parameters move
        (
            "ft_critical",
            {"layers": ("layer2.0",), "tune": "block", "epochs": 1, "min_steps": None},
            ("layer2.0.",),
        ),
        ("ft_fc", {"epochs": 1, "min_steps": None}, ("fc.",)),
        ("ss", {"layers": ("layer4.0",), "mode": "standard"}, ()),
    ],
)
def test_baselines_touch_only_their_parameters(badnets_digits, name, kw, prefixes) -> None:
    case = badnets_digits[0]
    original = case["model"]
    res = build_defense(name, **kw).repair(original, case["clean"], seed=0)
    changed = _changed(res.model, original)
    assert all(k.startswith(prefixes) for k in changed) if prefixes else changed == set()
    if prefixes:
        assert changed
    assert get_gammas(res.model) == ({"layer4.0": 0.0} if name == "ss" else {})


def test_ft_all_moves_everything(badnets_digits) -> None:
    case = badnets_digits[0]
    res = build_defense("ft_all", epochs=1, min_steps=None).repair(case["model"], case["clean"], seed=0)
    changed = _changed(res.model, case["model"])
    assert {k.split(".")[0] for k in changed} >= {"conv1", "layer1", "layer2", "layer3", "layer4", "fc"}


def test_optimized_mode_uses_the_surrogate_gamma(badnets_digits) -> None:
    # the model, seed and selection parameters of the artefact-cache test above: its selection is
    # memoised (the mode is not part of a selection's key), so in a full run this checks the suppression
    # without another surrogate fine-tuning
    case = badnets_digits[1]
    res = build_defense("ss", mode="optimized", surrogate_epochs=2).repair(
        case["model"], case["clean"], seed=2
    )
    (layer,) = res.info["layers"]
    best = res.info["selection"]["scores"][0]
    assert best["skip"] == layer and res.info["gammas"] == {layer: best["gamma"]}
    assert skips(res.model)[layer].gamma == best["gamma"]
    explicit = build_defense("ss", layers=(layer,), gamma=0.3).repair(case["model"], case["clean"], seed=2)
    assert explicit.info["gammas"] == {layer: 0.3}


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.conv(x)))


class _ForeignResNet(nn.Module):
    """A residual model we did not write (plain additions, no Skip modules, no head_name)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.stage = nn.Sequential(_Block(8), _Block(8))
        self.classifier = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(F.relu(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


def test_works_on_models_made_addressable_with_attach_skips(badnets_digits, tmp_path) -> None:
    fx_skips = pytest.importorskip("backdoorkit.models.fx_skips")
    case = badnets_digits[0]
    torch.manual_seed(0)
    model = fx_skips.attach_skips(_ForeignResNet())
    assert list(skips(model)) == ["stage.0", "stage.1"]
    original = copy.deepcopy(model)

    res = build_defense("ssft", tune="block", surrogate_epochs=2, epochs=2, min_steps=None).repair(
        model, case["clean"], seed=0
    )
    (layer,) = res.info["layers"]
    assert layer in ("stage.0", "stage.1") and get_gammas(res.model) == {layer: 0.0}
    changed = _changed(res.model, original)
    assert changed and all(k.startswith(layer + ".") for k in changed)

    fc = build_defense("ft_fc", epochs=1, min_steps=None).repair(model, case["clean"], seed=0)
    assert {k.split(".")[0] for k in _changed(fc.model, original)} == {"classifier"}

    path = save_model(res.model, tmp_path / "foreign.safetensors")
    back = load_model(path, model=fx_skips.attach_skips(_ForeignResNet()))
    assert get_gammas(back) == {layer: 0.0}


# ---- effect on BadNets digits models, three seeds ----
SEEDS = (0, 1, 2)
EFFECT_BUDGET = {"min_steps": 100, "batch_size": 48}
"""Every fine-tuning defense runs with its defaults except the budget, the same for all of them: 10
epochs, at least 100 optimiser steps and batches of 48 (the defaults, 400 steps of 128, are the paper's
10 epochs on 5,000 CIFAR-10 images; 10 epochs on 144 digits would be 20 steps).  100 steps of 48 (33
passes over the 144 clean digits) keep every conclusion below; the table took 339 s at 400 x 128, 210 s
at 150 x 128, 131 s at 150 x 48 on 2 cores, and 100 x 48 saves another third of the fine-tuning.
Measured (BA/ASR %, seeds 0/1/2) at 100 x 48 on an Intel Xeon: SSFT 98.6/1.2, 97.5/0.0, 98.1/4.3;
FT-Critical 99.2/98.5, 98.6/98.8, 99.2/98.5; FT-FC 98.9/98.5, 99.4/99.4, 99.2/98.5; FT-All 99.2/98.1,
98.1/100, 98.9/98.8; SS (no fine-tuning) BA 70.5, 19.2, 11.7.  At 150 x 48 (AVX-512): SSFT 98.1/0.6,
97.5/0.9, 98.1/4.0; FT-Critical 98.9/97.8, 98.9/98.1, 98.3/97.5; FT-FC 98.9/98.5, 98.9/97.8, 98.6/97.5;
FT-All 98.9/96.0, 99.2/99.7, 98.3/97.5.  At 400 x 128: SSFT 98.9/0.6, 98.1/0.3, 98.3/3.4; SS BA 14.2,
19.8, 46.0."""


@pytest.fixture(scope="module")
def outcomes(badnets_digits, digits_test) -> dict[int, dict[str, dict[str, object]]]:
    table: dict[int, dict[str, dict[str, object]]] = {}
    for seed in SEEDS:
        case = badnets_digits[seed]
        model, attack, clean = case["model"], case["attack"], case["clean"]
        row = {
            "none": {
                "ba": benign_accuracy(model, digits_test),
                "asr": attack_success_rate(model, digits_test, attack),
            }
        }
        for name in NAMES:
            budget = {} if name == "ss" else EFFECT_BUDGET
            res = build_defense(name, **budget).repair(model, clean, seed=seed)
            row[name] = {
                "ba": benign_accuracy(res.model, digits_test),
                "asr": attack_success_rate(res.model, digits_test, attack),
                "seconds": res.seconds,
                "layers": res.info.get("layers"),
            }
        table[seed] = row
    lines = [f"{'seed':>4} {'defense':>12} {'BA':>6} {'ASR':>6} {'s':>6}  layers"]
    for seed, row in table.items():
        for name, r in row.items():
            lines.append(
                f"{seed:>4} {name:>12} {100 * r['ba']:6.1f} {100 * r['asr']:6.1f} "
                f"{r.get('seconds', 0.0):6.1f}  {r.get('layers') or ''}"
            )
    print("\n" + "\n".join(lines))
    return table


def test_effect_table(outcomes) -> None:
    for row in outcomes.values():
        assert row["none"]["ba"] > 0.97 and row["none"]["asr"] > 0.95


def test_fine_tuning_without_suppression_leaves_the_backdoor(outcomes) -> None:
    """Paper Table 1/2: FT-FC and FT-Critical keep ASR high; FT-All (same budget) lowers it at most
    partly (FT-All ASR measured at the 100-step budget: 98.1 / 100 / 98.8 %)."""
    for row in outcomes.values():
        assert row["ft_fc"]["asr"] >= 0.9 and row["ft_fc"]["ba"] >= 0.95
        assert row["ft_critical"]["asr"] >= 0.9 and row["ft_critical"]["ba"] >= 0.95
        assert row["ft_all"]["asr"] >= 0.6


def test_suppression_alone_collapses_ba_and_fine_tuning_restores_it(outcomes) -> None:
    """Paper Table 2: SS drops BA far below every fine-tuning defense; SSFT gets it back.  How far
    depends on the skip selected (measured, seeds 0 / 1 / 2, here and in the CI of 2026-12-07: SS BA
    76.3 / 20.6 / 10.3 at ``layer1.0`` / ``layer1.1`` / ``layer1.1``, SSFT 98.3 / 97.2 / 93.9; another
    CI machine's CPU gave SSFT >= 95 on each), so each seed asserts a 20-point gap and at least 90 % BA,
    and the means the collapse and a recovery to within 5 points of the undefended model."""
    for row in outcomes.values():
        assert row["ss"]["ba"] < row["ft_all"]["ba"] - 0.2
        assert row["ssft"]["ba"] >= 0.9 and row["ssft"]["ba"] > row["ss"]["ba"] + 0.2
    n = len(outcomes)
    assert sum(row["ss"]["ba"] for row in outcomes.values()) / n < 0.6
    mean_ssft = sum(row["ssft"]["ba"] for row in outcomes.values()) / n
    assert mean_ssft >= sum(row["none"]["ba"] for row in outcomes.values()) / n - 0.05


def test_ssft_removes_the_backdoor_that_fine_tuning_leaves(outcomes) -> None:
    """Paper Table 1: SSFT has the lowest ASR of the fine-tuning defenses.  Per seed the result
    depends on the selected skip (measured: 0.9 / 16.7 / 61.0 % on seeds 0 / 1 / 2; on models trained
    with another thread count seed 1 once kept 75 %), so: low ASR on at least two of three seeds, and
    a mean ASR far below every baseline's."""
    ssft = [row["ssft"]["asr"] for row in outcomes.values()]
    assert sum(a < 0.2 for a in ssft) >= 2
    mean = sum(ssft) / len(ssft)
    for name in ("ft_fc", "ft_all", "ft_critical"):
        assert mean < sum(row[name]["asr"] for row in outcomes.values()) / len(ssft) - 0.3, name


def test_surrogate_fine_tuning_stops_when_checks_stop_improving(monkeypatch: pytest.MonkeyPatch) -> None:
    """``surrogate_patience``: two checks in a row without a better surrogate end the fine-tuning (the
    best check's state is what is kept); a surrogate that implants ends it at once; None never stops."""
    from types import SimpleNamespace

    scripted: list[tuple[float, float]] = []
    monkeypatch.setattr(sc, "attack_success_rate", lambda *a, **k: scripted[0][0])
    monkeypatch.setattr(sc, "benign_accuracy", lambda *a, **k: scripted.pop(0)[1])
    model = nn.Linear(2, 2)

    def run(checks: list[tuple[float, float]], **params: object) -> tuple[sc._SurrogateCheck, int]:
        scripted[:] = checks
        check = sc._SurrogateCheck(build_defense("ss", **params).params, None, None, ba0=0.9)
        for epoch in range(1, 51):
            if check.on_epoch_end(SimpleNamespace(epoch=epoch, model=model)):  # type: ignore[arg-type]
                return check, epoch
        return check, 50

    stale = [(0.5, 0.8), (0.6, 0.8), (0.55, 0.8), (0.6, 0.75), (0.9, 0.9)]
    check, stop = run(list(stale))
    assert (stop, check.stopped, check.best[1]) == (20, "patience", 10)  # type: ignore[index]
    check, stop = run(list(stale), surrogate_patience=None)
    assert (stop, check.stopped, check.best[1]) == (25, "implanted", 25)  # type: ignore[index]
    check, stop = run([(0.95, 0.88)])
    assert (stop, check.stopped) == (5, "implanted")
    with pytest.raises(ConfigError):
        build_defense("ss", surrogate_patience=0)
