"""Paper presets (issue 11): each preset builds what it says - trigger pixels, label counts, schedule,
defense settings - and every field stays overridable (Python API, specs, CLI helpers)."""

from __future__ import annotations

import pytest
import torch

from backdoorkit.attacks import build_attack
from backdoorkit.data import ImageSet
from backdoorkit.defenses import build_defense
from backdoorkit.errors import ConfigError
from backdoorkit.experiment.spec import parse_spec
from backdoorkit.pipeline import FAST_SCHEDULE, recipe_for
from backdoorkit.presets import PRESETS, get_preset, preset_attack, preset_train

SSFT = get_preset("ssft_paper")


def test_ssft_badnets_is_a_white_3x3_square_at_5_percent_target_1(digits_train: ImageSet) -> None:
    atk = build_attack("badnets", **SSFT.attack("badnets"))
    ps = atk.poison(digits_train, seed=0)
    out = atk.apply(torch.zeros(2, 1, 32, 32))
    assert torch.all(out[..., 29:, 29:] == 1) and int((out != 0).sum()) == 2 * 9
    assert ps.count == round(0.05 * len(digits_train)) and torch.all(ps.data.y[ps.mask] == 1)


def test_ssft_blended_is_that_patch_blended_at_0_2() -> None:
    atk = build_attack("blended", **SSFT.attack("blended"))
    atk.setup(
        ImageSet(
            torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(10).repeat(2), tuple("0123456789")
        )
    )
    x = torch.full((2, 3, 32, 32), 0.5)
    out = atk.apply(x)
    assert torch.allclose(out[..., 29:, 29:], torch.full((2, 3, 3, 3), 0.5 * 0.8 + 0.2))
    assert torch.equal(out[..., :29, :], x[..., :29, :]) and torch.equal(out[..., :, :29], x[..., :, :29])


def test_ssft_label_consistent_poisons_5_percent_of_the_target_class(digits_train: ImageSet) -> None:
    params = SSFT.attack("label_consistent", steps=0)  # no PGD: the counts and the trigger only
    assert params["eps"] == pytest.approx(8 / 255) and params["corners"] == "all_lr"
    atk = build_attack("label_consistent", **params)
    ps = atk.poison(digits_train, seed=0)
    assert ps.count == round(0.05 * int((digits_train.y == 1).sum()))
    assert torch.all(digits_train.y[ps.mask] == 1) and torch.equal(ps.data.y, digits_train.y)


def test_ssft_schedules_paper_and_fast(digits_train: ImageSet) -> None:
    paper = recipe_for(digits_train, **SSFT.train("paper"))
    assert (paper.epochs, paper.batch_size, paper.lr, paper.schedule, paper.milestones) == (
        200,
        128,
        0.1,
        "step",
        (0.75, 0.9),
    )
    assert (paper.momentum, paper.nesterov, paper.weight_decay, paper.amp, paper.label_smoothing) == (
        0.9,
        False,
        5e-4,
        False,
        0.0,
    )
    assert SSFT.augmentation_of("paper") == "flip" and SSFT.train("paper")["augment"] == "flip"
    fast = recipe_for(digits_train, **SSFT.train("fast"))
    assert (fast.epochs, fast.batch_size, fast.lr, fast.nesterov, fast.warmup, fast.schedule) == (
        26,
        500,
        0.2,
        True,
        0.2,
        "onecycle",
    )
    assert fast.augment and fast.label_smoothing == 0.0
    assert recipe_for(digits_train, recipe="fast").epochs == FAST_SCHEDULE["epochs"]
    with pytest.raises(ConfigError, match="schedule"):
        SSFT.train("slow")


def test_ssft_defenses_fine_tune_like_the_official_code() -> None:
    for name in ("ssft", "ft_critical", "ft_fc", "ft_all"):
        p = build_defense(name, **SSFT.defense(name)).params
        assert (p.augment, p.frozen_bn, p.lr, p.epochs) == (False, "train", 0.01, 10)
    for name in ("ssft", "ss", "ft_critical"):
        assert build_defense(name, **SSFT.defense(name)).params.score == "official"
    assert SSFT.clean_fraction == 0.1


def test_every_field_is_overridable_and_presets_are_known() -> None:
    assert SSFT.attack("badnets", rate=0.1, target=3)[("rate")] == 0.1
    assert SSFT.train("paper", epochs=12)["epochs"] == 12
    assert SSFT.defense("ssft", frozen_bn="eval")["frozen_bn"] == "eval"
    assert set(PRESETS) >= {"ssft_paper", "trap_replace_paper", "badres_paper"}
    assert get_preset("trap_replace_paper").attack("badnets")["variant"] == "grid"
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")
    # the CLI helpers: explicit options win, no preset keeps the old defaults
    assert preset_attack("ssft_paper", "badnets", None, {})["target"] == 1
    assert preset_attack("ssft_paper", "badnets", 4, {"rate": 0.2}) | {} == {
        "target": 4,
        "rate": 0.2,
        "variant": "white",
        "size": 3,
        "margin": 0,
    }
    assert preset_attack(None, "badnets", None, {}) == {"target": 0}
    assert preset_train("ssft_paper:fast", epochs=3, lr=None)["epochs"] == 3
    assert preset_train("ssft_paper:fast", lr=None)["batch_size"] == 500
    assert preset_train(None, epochs=None, lr=0.1) == {"lr": 0.1}


def test_spec_preset_fills_what_the_spec_leaves_open() -> None:
    spec = parse_spec(
        {
            "preset": {"name": "ssft_paper", "schedule": "fast"},
            "datasets": ["digits"],
            "models": [{"arch": "resnet18", "width": 4}],
            "train": {"epochs": 2},
            "attacks": [
                "badnets",
                {"name": "blended", "params": {"alpha": 0.3}},
                {"name": "wanet", "rate": 0.1},
            ],
            "defenses": ["none", "ssft", {"name": "ft_all", "params": {"frozen_bn": "eval"}}],
        }
    )
    assert spec.train["epochs"] == 2 and spec.train["batch_size"] == 500
    bad, blend, wanet = spec.attacks
    assert (bad.target, bad.rate, bad.params["variant"]) == (1, 0.05, "white")
    assert blend.params == {"pattern": "patch", "patch_size": 3, "alpha": 0.3}
    assert wanet.rate == 0.1 and wanet.params["cross_ratio"] == 0.0
    ssft, ft_all = spec.defenses[1:]
    assert ssft.params == {"score": "official", "augment": False, "frozen_bn": "train"}
    assert ft_all.params["frozen_bn"] == "eval"
    assert spec.clean_fraction == 0.1
    with pytest.raises(ConfigError, match="preset"):
        parse_spec({"preset": "nope", "datasets": ["digits"], "models": ["resnet18"], "attacks": ["badnets"]})


def test_flip_only_augmentation_is_a_training_setting(digits_train) -> None:
    from dataclasses import replace

    import kornia.augmentation as K

    from backdoorkit.data.batching import augmentation_for
    from backdoorkit.train import TrainConfig

    flippable = replace(digits_train.subset(torch.arange(8)), hflip=True)
    ops = list(augmentation_for(flippable, "flip").children())
    assert len(ops) == 1 and isinstance(ops[0], K.RandomHorizontalFlip)
    assert augmentation_for(digits_train, "flip") is None  # digits never flip
    kinds = [type(m) for m in augmentation_for(flippable, "crop_flip").children()]
    assert kinds == [K.RandomCrop, K.RandomHorizontalFlip]
    assert TrainConfig(augment="flip").augment == "flip"
