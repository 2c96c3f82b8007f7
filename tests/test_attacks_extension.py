"""Attack extension points: ``Attack.train_victim`` (an override is what ``pipeline.train_victim`` and
``train_model`` use) and the caller's artefact cache (``poison(..., cache=...)``), which model-based
attacks write their attacker model into."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from backdoorkit.attacks import build_attack
from backdoorkit.attacks.badnets import BadNets
from backdoorkit.attacks.base import PoisonedSet
from backdoorkit.cache import ArtifactCache
from backdoorkit.data import ImageSet, take_fraction
from backdoorkit.pipeline import make_model, recipe_for, train_model, train_victim
from backdoorkit.train import TrainConfig, fit_calls


@pytest.fixture(scope="module")
def small(digits_train: ImageSet) -> ImageSet:
    return take_fraction(digits_train, 200, seed=0)


def one_step(data: ImageSet) -> TrainConfig:
    return recipe_for(data, steps=1, device="cpu")


class _SelfTrainingBadNets(BadNets):
    """A test-only attack that controls the victim's training, as TrojanNet or latent-backdoor attacks
    will (here: it marks the model, trains only its classifier head and records the call)."""

    name = "_self_training_badnets"
    calls: list[tuple[int, str]]

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.calls = []

    def train_victim(
        self, model_factory: Callable[[], nn.Module], poisoned: PoisonedSet, config: TrainConfig
    ) -> nn.Module:
        from backdoorkit.train import fit

        model = model_factory()
        model.marked_by_attack = True
        fit(model, poisoned.data, config, trainable=model.fc.parameters())
        self.calls.append((len(poisoned.data), poisoned.attack))
        return model.eval()


def test_pipeline_train_victim_uses_the_attacks_override(small: ImageSet) -> None:
    attack = _SelfTrainingBadNets(target=0)
    ps = attack.poison(small, seed=0)
    cfg = one_step(ps.data)
    model = train_victim(attack, lambda: make_model("resnet18", small, width=2, seed=0), ps, cfg)
    assert attack.calls == [(len(small), attack.name)]
    assert getattr(model, "marked_by_attack", False) and not model.training
    # the convenience wrapper goes through it too (the CLI and benchmarks use that one)
    wrapped, seconds = train_model("resnet18", ps, cfg, width=2, attack=attack)
    assert len(attack.calls) == 2 and getattr(wrapped, "marked_by_attack", False) and seconds > 0


def test_default_train_victim_prepares_and_fits(small: ImageSet, monkeypatch: pytest.MonkeyPatch) -> None:
    attack = build_attack("badnets", target=0)
    ps = attack.poison(small, seed=0)
    prepared: list[nn.Module] = []

    def prepare(model: nn.Module) -> nn.Module:
        prepared.append(model)
        return model

    monkeypatch.setattr(attack, "prepare_model", prepare)
    fits = fit_calls()
    model = train_victim(
        attack, lambda: make_model("resnet18", small, width=2, seed=0), ps, one_step(ps.data)
    )
    assert prepared == [model] and fit_calls() == fits + 1 and not model.training


def test_without_an_attack_or_with_a_plain_set_training_is_clean(small: ImageSet) -> None:
    attack = _SelfTrainingBadNets(target=0)
    ps = attack.poison(small, seed=0)
    cfg = one_step(small)

    def factory() -> nn.Module:
        return make_model("resnet18", small, width=2, seed=0)

    fits = fit_calls()
    a = train_victim(None, factory, small, cfg)
    b = train_victim(attack, factory, small, cfg)  # a plain ImageSet: clean training
    c = train_victim(None, factory, ps, cfg)  # no attack: ps.data trained as it is
    assert fit_calls() == fits + 3 and attack.calls == []
    assert not (a.training or b.training or c.training)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)  # same seed, same data: same model


# ---------------------------------------------------------------------------- the caller's cache
def test_poison_writes_the_attacker_model_into_the_callers_cache(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_root = tmp_path / "default"
    monkeypatch.setenv("BACKDOORKIT_CACHE", str(default_root))
    mine = ArtifactCache(tmp_path / "mine")
    params = {"attacker_width": 2, "attacker_epochs": 1, "steps": 2}
    attack = build_attack("trojan_sq", **params)
    first = attack.poison(small, seed=0, cache=mine)
    assert attack.cache is mine
    written = sorted(p.relative_to(mine.root).parts[0] for p in mine.root.rglob("*.safetensors"))
    assert written == ["attacker_models", "trojan_triggers"]
    assert not default_root.exists()
    # later calls on the same attack keep that cache; a new attack with it computes nothing
    attack.setup(small, seed=1)
    assert not default_root.exists()
    fits = fit_calls()
    second = build_attack("trojan_sq", **params).poison(small, seed=0, cache=mine)
    assert fit_calls() == fits and torch.equal(first.data.x, second.data.x)
    assert not default_root.exists()
