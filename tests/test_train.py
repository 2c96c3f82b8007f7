"""The training loop: accuracy on digits, CPU determinism, restricted training, schedules, config
errors, prediction helpers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from backdoorkit.data import ImageSet, take_fraction
from backdoorkit.errors import ConfigError
from backdoorkit.pipeline import make_model, recipe_for
from backdoorkit.train import (
    TrainConfig,
    _lr_factor,
    evaluate,
    fit,
    fit_calls,
    parameters_of,
    predict,
    predict_labels,
    train_config,
)


@pytest.fixture(scope="module")
def small(digits_train: ImageSet) -> ImageSet:
    """256 stratified digits: enough for one-epoch mechanics tests."""
    return take_fraction(digits_train, 256, seed=1)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _quick(**kw: object) -> dict[str, object]:
    return {"epochs": 1, "batch_size": 64, "device": "cpu", **kw}


def test_clean_model_reaches_90_percent(clean_model: nn.Module, digits_test: ImageSet) -> None:
    assert evaluate(clean_model, digits_test) >= 0.90


def test_same_seed_gives_bit_identical_weights(small: ImageSet) -> None:
    states = []
    for _ in range(2):
        model = make_model("resnet18", small, width=4, seed=3)
        fit(model, small, recipe_for(small, **_quick(augment=True, seed=7)))  # kornia crops included
        states.append(_snapshot(model))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = make_model("resnet18", small, width=4, seed=3)
    fit(other, small, recipe_for(small, **_quick(augment=True, seed=8)))
    assert any(not torch.equal(states[0][k], v) for k, v in other.state_dict().items())


@pytest.mark.parametrize("part", ["fc", "layer4"])
def test_trainable_restricts_updates(small: ImageSet, part: str) -> None:
    model = make_model("resnet18", small, width=4, seed=0)
    before = _snapshot(model)
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    fit(model, small, recipe_for(small, **_quick()), trainable=parameters_of(model, part))
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved, "the trainable part did not move"
    assert all(k.startswith(part + ".") for k in moved), sorted(moved)[:5]
    if part == "layer4":  # batch norms inside the trained part keep updating their statistics
        assert "layer4.0.bn1.running_mean" in moved
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    assert all(m.training is False for m in model.modules())  # fit leaves the model in eval mode


def test_parameters_of_unknown_module(small: ImageSet) -> None:
    model = make_model("resnet18", small, width=4)
    with pytest.raises(ConfigError, match="no submodule 'layer9'"):
        parameters_of(model, ["fc", "layer9"])


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
def test_schedule_factors(schedule: str) -> None:
    cfg = TrainConfig(schedule=schedule)
    total = 100
    f = [_lr_factor(cfg, s, total) for s in range(total)]
    assert all(0.0 <= v <= 1.0 for v in f)
    if schedule == "constant":
        assert f == [1.0] * total
    elif schedule == "cosine":
        assert f[0] == 1.0 and f[-1] < 0.01
        assert all(a >= b for a, b in itertools.pairwise(f))
    elif schedule == "step":
        assert f[0] == 1.0 and f[49] == 1.0
        assert f[50] == pytest.approx(0.1) and f[74] == pytest.approx(0.1) and f[75] == pytest.approx(0.01)
    else:
        peak = f.index(max(f))
        assert f[0] == pytest.approx(0.04) and max(f) == pytest.approx(1.0, abs=0.01)
        assert peak == pytest.approx(cfg.warmup * total, abs=1)
        assert all(a <= b for a, b in itertools.pairwise(f[: peak + 1]))
        assert all(a >= b for a, b in itertools.pairwise(f[peak:]))
        assert f[-1] < 0.02


@pytest.mark.parametrize(
    "overrides",
    [
        {"schedule": "cosine"},
        {"schedule": "step", "milestones": (0.3,)},
        {"optimizer": "adam", "lr": 1e-3, "label_smoothing": 0.1},
        {"optimizer": "adamw", "lr": 1e-3, "drop_last": False},
        {"optimizer": "sgd", "momentum": 0.0, "nesterov": True},
    ],
)
def test_optimiser_paths_run(small: ImageSet, overrides: dict[str, object]) -> None:
    model = make_model("resnet18", small, width=4)
    before = _snapshot(model)
    result = fit(model, small, recipe_for(small, **_quick(steps=3)), **overrides)
    assert result.steps == 3 and all(math.isfinite(v) for v in result.losses)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_result_and_counts(small: ImageSet) -> None:
    model = make_model("resnet18", small, width=4)
    calls = fit_calls()
    result = fit(model, small, recipe_for(small, **_quick()))
    assert fit_calls() == calls + 1
    assert result.steps == 256 // 64 and result.images == 256
    assert len(result.losses) == len(result.accuracies) == 1
    assert result.seconds > 0 and result.images_per_second > 0
    assert fit(model, small, recipe_for(small, **_quick(epochs=0))).steps == 0
    assert fit_calls() == calls + 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"epochs": -2}, "epochs"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"milestones": (0.5, 1.5)}, "milestones"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_config_is_one_line(small: ImageSet, overrides: dict[str, object], field: str) -> None:
    model = make_model("resnet18", small, width=4)
    with pytest.raises(ConfigError) as info:
        fit(model, small, TrainConfig(), **overrides)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("training config") and (field in msg or "fractions" in msg)
    with pytest.raises(ConfigError) as info:
        train_config(**overrides)
    assert "\n" not in str(info.value)


def test_fit_refuses_empty_and_parameterless(small: ImageSet) -> None:
    empty = small.subset(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="empty"):
        fit(make_model("resnet18", small, width=4), empty, TrainConfig(device="cpu"))
    with pytest.raises(ConfigError, match="no parameters"):
        fit(make_model("resnet18", small, width=4), small, TrainConfig(device="cpu"), trainable=[])


def test_predict_uint8_and_float(clean_model: nn.Module, digits_test: ImageSet) -> None:
    x8 = digits_test.x[:50]
    logits = predict(clean_model, x8)
    assert logits.shape == (50, 10) and logits.dtype == torch.float32
    assert torch.equal(predict(clean_model, x8.float() / 255.0), logits)
    assert torch.allclose(predict(clean_model, x8, batch_size=7), logits, atol=1e-5)
    assert torch.equal(predict_labels(clean_model, x8), logits.argmax(1))
    shifted = predict(clean_model, x8, transform=lambda t: t.flip(-1))
    assert torch.equal(shifted, predict(clean_model, x8.flip(-1)))
    assert clean_model.training is False


def test_evaluate_on_empty_set(clean_model: nn.Module, digits_test: ImageSet) -> None:
    empty = digits_test.subset(torch.zeros(0, dtype=torch.long))
    assert math.isnan(evaluate(clean_model, empty))
    assert predict(clean_model, empty.x).numel() == 0


def test_predict_works_for_a_model_without_parameters() -> None:
    """A parameter-free model (a fixed preprocessing head, say) runs on the CPU without error."""
    net = nn.Sequential(nn.Flatten(), nn.Identity())
    x = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    out = predict(net, x)
    assert out.shape == (3, 4) and out.device.type == "cpu"
