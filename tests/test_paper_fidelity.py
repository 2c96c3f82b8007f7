"""Paper fidelity (issue 11): the official SSFT layer score, batch-norm train mode of frozen modules,
WaNet poisoned on the fly, Refool's gamma-space blend and dirty-label variant, the label-consistent
left-right corner layout.  Digits and synthetic data only; models come from the shared fixtures."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from backdoorkit.analysis.skip_scan import critical_scores, official_step
from backdoorkit.attacks import build_attack
from backdoorkit.attacks.badnets import GRID3
from backdoorkit.attacks.label_consistent import corner_trigger
from backdoorkit.data import ImageSet, split_holdout
from backdoorkit.defenses.finetune import TuneParams, finetune
from backdoorkit.metrics import backdoor_metrics
from backdoorkit.pipeline import recipe_for, train_model


# ---------------------------------------------------------------------------- the official layer score
def test_official_layer_score_matches_a_hand_computed_example() -> None:
    rows = [
        # "a": ASR 100 -> 90 -> 2 (%): steps 10 / e^90 and 88 / e^2
        {"skip": "a", "gamma": 1.0, "ba": 0.9, "asr": 1.00},
        {"skip": "a", "gamma": 0.5, "ba": 0.8, "asr": 0.90},
        {"skip": "a", "gamma": 0.0, "ba": 0.2, "asr": 0.02},
        # "b": ASR 100 -> 40 -> 1 (%): steps 60 / e^40 and 39 / e^1
        {"skip": "b", "gamma": 1.0, "ba": 0.9, "asr": 1.00},
        {"skip": "b", "gamma": 0.5, "ba": 0.9, "asr": 0.40},
        {"skip": "b", "gamma": 0.0, "ba": 0.5, "asr": 0.01},
    ]
    official = critical_scores(rows, "official")
    # by hand: a = max(10 / e^90, 88 / e^2) = 11.909...; b = max(60 / e^40, 39 / e^1) = 14.347...
    assert [c.skip for c in official] == ["b", "a"]
    assert official[0].score == pytest.approx(39 / math.e)
    assert official[1].score == pytest.approx(88 / math.exp(2))
    assert official[0].gamma == 0.0
    assert official_step(1.0, 0.9) == pytest.approx(10 / math.exp(90))
    # the earlier rule (exponent at the larger gamma, fractions) ranks them the other way round
    previous = critical_scores(rows, "previous")
    assert previous[0].skip == "a"
    assert previous[0].score == pytest.approx(0.88 / math.exp(0.9))


# ---------------------------------------------------------------------------- batch-norm train mode
def _bn_state(model: nn.Module, outside: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    stats, weights = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and not name.startswith(outside):
            stats[name] = torch.cat([m.running_mean, m.running_var]).clone()
            weights[name] = torch.cat([m.weight, m.bias]).detach().clone()
    return stats, weights


def test_frozen_bn_train_changes_only_running_statistics(clean_model, digits_train: ImageSet) -> None:
    _, clean = split_holdout(digits_train, 0.1, 0, name="clean")
    before = copy.deepcopy(clean_model)
    outside = {k: v.clone() for k, v in before.named_parameters() if not k.startswith("layer3")}
    stats0, _ = _bn_state(before, "layer3")
    results = {}
    for mode in ("eval", "train"):
        model = copy.deepcopy(before)
        finetune(
            model,
            clean,
            TuneParams(steps=3, min_steps=None, frozen_bn=mode),
            ["layer3"],
            seed=0,
            device="cpu",
        )
        results[mode] = model
        # no frozen parameter moves (BN weights and biases included), the tuned stage does
        for k, v in model.named_parameters():
            if k in outside:
                assert torch.equal(v, outside[k]), (mode, k)
        assert any(
            not torch.equal(v, dict(before.named_parameters())[k])
            for k, v in model.named_parameters()
            if k.startswith("layer3")
        )
        assert all(p.grad is None for k, p in model.named_parameters() if k in outside)
    stats_eval, _ = _bn_state(results["eval"], "layer3")
    stats_train, _ = _bn_state(results["train"], "layer3")
    assert all(torch.equal(stats_eval[k], stats0[k]) for k in stats0)  # eval: bit-identical statistics
    changed = [k for k in stats0 if not torch.equal(stats_train[k], stats0[k])]
    assert "layer4.0.bn1" in changed and "bn1" in changed  # train: frozen BN layers re-estimate


# ---------------------------------------------------------------------------- WaNet on the fly
def test_wanet_on_the_fly_poisons_every_batch_and_leaves_the_set_clean(digits_train: ImageSet) -> None:
    atk = build_attack("wanet", poisoning="on_the_fly", s=2.0)
    ps = atk.poison(digits_train, seed=0)
    assert ps.count == 0 and ps.info["on_the_fly"] and torch.equal(ps.data.x, digits_train.x)
    from backdoorkit.train import Batch

    x = digits_train.pixels(slice(0, 100))
    y = digits_train.y[:100]
    poison = atk.batch_poisoner(digits_train, None)
    torch.manual_seed(0)
    out = poison(Batch(x=x, y=y, idx=torch.arange(100), step=0, epoch=0))
    relabelled = (out.y != y).nonzero().flatten()
    changed = (out.x != x).flatten(1).any(1)
    # 10 % warped and relabelled (never target rows), 20 % noise mode (labels kept), the rest clean
    assert len(relabelled) == 10 and torch.all(out.y[relabelled] == 0) and torch.all(y[relabelled] != 0)
    assert torch.allclose(out.x[relabelled], atk.apply(x[relabelled]))
    assert int(changed.sum()) == 30


@pytest.mark.slow
def test_wanet_on_the_fly_implants_and_noise_mode_is_what_holds_wanet_back(
    digits_train: ImageSet, digits_test: ImageSet
) -> None:
    """Same budget (the digits recipe cut to 6 epochs to keep the suite short), s = 2 (the digits are
    8x8 images upsampled 4x).

    Measured at 6 epochs: without noise mode, static 99.7 % and on the fly 100 % ASR (BA 98.9 / 99.4 %);
    with noise mode (cross_ratio 2) static 31.6 % (BA 97.5 %).  At a longer budget: static 99.7 %, on the fly
    100 %, noise mode static 38 % and on the fly 18 %.  So on-the-fly poisoning does not beat static
    poisoning here: what holds WaNet back at a small budget is the noise mode (a jitter about three
    times the warp, drawn afresh every step on the fly, so the exact warp must be learnt; fixed per
    row when poisoned statically, so those rows can be memorised).  The SSFT victims ran without it.
    """
    from conftest import TEST_ARCH, TEST_WIDTH, train_digits

    EPOCHS = 6

    def static(**params: object) -> dict[str, float]:
        atk = build_attack("wanet", s=2.0, **params)
        return backdoor_metrics(
            train_digits(atk.poison(digits_train, seed=0).data, seed=0, epochs=EPOCHS), digits_test, atk
        )

    fly = build_attack("wanet", s=2.0, cross_ratio=0.0, poisoning="on_the_fly")
    ps = fly.poison(digits_train, seed=0)
    recipe = recipe_for(digits_train, epochs=EPOCHS)
    model, _ = train_model(TEST_ARCH, ps, recipe, seed=0, width=TEST_WIDTH, attack=fly)
    m_fly = backdoor_metrics(model, digits_test, fly)
    m_static, m_noise = static(cross_ratio=0.0), static()  # static() is noise mode, cross_ratio 2
    note = f"on the fly {m_fly}, static {m_static}, static noise mode {m_noise}"
    print(note)
    assert m_fly["asr"] >= 0.9 and m_fly["asr"] >= m_static["asr"] - 0.02, note
    assert m_fly["ba"] >= m_static["ba"] - 0.03, note
    assert m_noise["asr"] <= m_static["asr"] - 0.3, note


# ---------------------------------------------------------------------------- refool
def _rgb(n: int = 200) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    y = torch.arange(10).repeat_interleave(n // 10)
    return ImageSet(x, y, tuple(str(i) for i in range(10)), name="synthetic/train")


def test_refool_gamma_blend_and_dirty_alpha() -> None:
    data = _rgb()
    dirty = build_attack("refool", dirty=True, n_reflections=30, ghost_rate=1.0, ghost_alpha=(0.5, 0.5))
    dirty.setup(data, seed=0)
    assert dirty.params.blend == "gamma"
    gen = torch.Generator().manual_seed(0)
    assert torch.all(dirty.transmission(8, gen) == 0.4)  # BackdoorBench's dirty-label alpha_t
    x = data.pixels(slice(0, 32))
    out = dirty.apply(x)
    pool = dirty.reflections()
    # the top-left 3x3 is not reached by the shifted copy: out = (0.6 * 0.5 r^2.2 + 0.4 x^2.2)^(1/2.2)
    want = (0.3 * pool[None, :, :, :3, :3] ** 2.2 + 0.4 * x[:, None, :, :3, :3] ** 2.2) ** (1 / 2.2)
    err = (out[:, None, :, :3, :3] - want.clamp(0, 1)).abs().amax(dim=(2, 3, 4)).min(1).values
    assert float(err.max()) < 1e-4
    clean = build_attack("refool", n_reflections=30)
    clean.setup(data, seed=0)
    a = clean.transmission(1000, torch.Generator().manual_seed(0))
    assert float(a.min()) >= 0.55 and float(a.max()) <= 0.95  # the official 1 - U(0.05, 0.45)
    blur = build_attack("refool", n_reflections=30, ghost_rate=0.0)
    blur.setup(data, seed=0)
    dark = blur.apply(torch.zeros(16, 3, 32, 32))
    # focal blur with the vignette: the centre carries more of the reflection than the corners
    assert float(dark[..., 12:20, 12:20].mean()) > 2 * float(dark[..., :4, :4].mean())


# ---------------------------------------------------------------------------- label-consistent layout
def test_label_consistent_corners_mirrored_left_right_only() -> None:
    _, pattern = corner_trigger((3, 32, 32), corners="all_lr")
    g = GRID3
    assert torch.equal(pattern[0, :, 29:, 29:], g.expand(3, 3, 3))
    assert torch.equal(pattern[0, :, 29:, :3], g.flip(1).expand(3, 3, 3))
    assert torch.equal(pattern[0, :, :3, 29:], g.expand(3, 3, 3))
    assert torch.equal(pattern[0, :, :3, :3], g.flip(1).expand(3, 3, 3))


def test_wanet_noise_free_default_under_the_ssft_preset(digits_train: ImageSet) -> None:
    from backdoorkit.presets import get_preset

    atk = build_attack("wanet", **get_preset("ssft_paper").attack("wanet"))
    ps = atk.poison(digits_train, seed=0)
    assert ps.info["noise_count"] == 0 and atk.target == 1
