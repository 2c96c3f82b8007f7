"""Attacks on the model's structure on the embedded digits data (issue 14): BadRes and its comparison
structure, TrojanNet, the latent backdoor (LBA-k) and the pruning-aware attack.

Victims are trained through :func:`backdoorkit.pipeline.train_victim` (so each attack's own
``train_victim`` is what runs).  ResNet victims use the digits recipe (ResNet-18 width 8, 8 epochs);
the ViT is ``vit_tiny`` narrowed for a CPU suite (dim 64, depth 4, 2 heads, 8x8 patches: 17 tokens)
and trained with AdamW lr 2e-3, weight decay 0.05, 20 epochs (measured: clean BA 96.9 %; BadRes at
``blocks.0.attn`` BA 96.4 %, ASR 100 %, and 54.6 % BA once its residual is set back to +x; the pair of
trainings takes ~45 s on 2 cores, 68 s at the 30 epochs used before).
Every structure-attacked model round-trips through ``save_model`` / ``load_model`` with identical
outputs.  Each test prints its numbers (``pytest -s``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from backdoorkit.attacks import Attack, build_attack
from backdoorkit.attacks.trojannet import TrojanNetModel
from backdoorkit.checkpoint import load_model, save_model
from backdoorkit.data import ImageSet
from backdoorkit.metrics import attack_success_rate, benign_accuracy
from backdoorkit.models import Composite, get_betas, get_gammas
from backdoorkit.pipeline import make_model, recipe_for, train_victim
from backdoorkit.train import fit, predict
from conftest import TEST_WIDTH

VIT = {"dim": 64, "depth": 4, "heads": 2, "patch": 8}
LAYER = {"vit_tiny": 0, "resnet18": 2}
"""The attacked residual: the paper's first block on the ViT; ResNet-18's ``layer2.0`` (at ``layer1.0``,
whose input is the stem's ReLU maps, the digits ResNet does not learn the trigger in 8 epochs: ASR 4 %)."""
VIT_RECIPE = {"epochs": 20, "lr": 2e-3, "optimizer": "adamw", "weight_decay": 0.05}


_VICTIMS: dict[tuple[str, str, int], nn.Module] = {}


def victim(attack: Attack | None, arch: str, train: ImageSet, seed: int = 0) -> nn.Module:
    """Poison (seed), build the architecture for digits and train through ``pipeline.train_victim``;
    trained once per (attack, architecture, seed) in this module, each caller gets a copy."""
    key = (repr(attack), arch, seed)
    if key not in _VICTIMS:
        vit = arch.startswith("vit")
        kwargs = VIT if vit else {"width": TEST_WIDTH}
        cfg = recipe_for(train, **(VIT_RECIPE if vit else {})).model_copy(update={"seed": seed})
        data = attack.poison(train, seed=seed) if attack is not None else train
        factory = lambda: make_model(arch, train, seed=seed, **kwargs)  # noqa: E731
        _VICTIMS[key] = train_victim(attack, factory, data, cfg)
    return copy.deepcopy(_VICTIMS[key])


def measure(model: nn.Module, test: ImageSet, attack: Attack) -> dict[str, float]:
    return {
        "ba": benign_accuracy(model, test),
        "asr": attack_success_rate(model, test, attack),
        "asr_q": attack_success_rate(model, test, attack, quantized=True),
    }


def show(label: str, m: dict[str, float]) -> str:
    text = f"{label}: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in m.items())
    print("\n" + text)
    return text


def roundtrip(model: nn.Module, path: Path, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        ref = model(x)
    loaded = load_model(save_model(model, path))
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    assert get_gammas(loaded) == get_gammas(model) and get_betas(loaded) == get_betas(model)
    return loaded


@pytest.fixture(scope="module")
def probe(digits_test: ImageSet) -> torch.Tensor:
    return digits_test.pixels()[:64]


# ------------------------------------------------------------------------------------------ BadRes
@pytest.fixture(scope="module")
def vit_clean_ba(digits_train: ImageSet, digits_test: ImageSet) -> float:
    return benign_accuracy(victim(None, "vit_tiny", digits_train), digits_test)


@pytest.fixture(scope="module")
def resnet_clean_ba(clean_model: nn.Module, digits_test: ImageSet) -> float:
    return benign_accuracy(clean_model, digits_test)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny"])
def test_badres_is_learned_and_lives_in_the_inverted_skip(
    arch: str,
    digits_train: ImageSet,
    digits_test: ImageSet,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    probe: torch.Tensor,
) -> None:
    clean_ba = request.getfixturevalue("vit_clean_ba" if arch == "vit_tiny" else "resnet_clean_ba")
    attack = build_attack("badres", layer=LAYER[arch])
    model = victim(attack, arch, digits_train)
    name = attack.attacked_skip(model)
    assert get_gammas(model) == {name: -0.5}
    m = measure(model, digits_test, attack)
    text = show(f"badres {arch} {name} (clean BA {100 * clean_ba:.1f} %)", m)
    assert m["asr"] >= 0.90 and m["asr_q"] >= 0.90, text
    assert m["ba"] >= clean_ba - 0.03, text
    roundtrip(model, tmp_path / "badres", probe)
    # the model ships with f(x) - 0.5 x; setting the residual back to f(x) + x is another network
    restored = attack.restore(copy.deepcopy(model))
    assert get_gammas(restored) == {}
    r = measure(restored, digits_test, attack)
    show(f"  {name} set back to +x", r)
    assert r["ba"] < m["ba"] - 0.05, (m, r)  # the clean task needs the rewired skip too
    if arch == "resnet18":
        assert r["asr"] < m["asr"], (m, r)


def test_badres_compare_structure_roundtrips(
    digits_train: ImageSet, digits_test: ImageSet, tmp_path: Path
) -> None:
    attack = build_attack("badres_compare", beta=0.5)
    model = victim(attack, "resnet18", digits_train)
    assert get_betas(model) == {"layer1.0": -0.5} and get_gammas(model) == {}
    show("badres_compare resnet18 layer1.0 beta 0.5", measure(model, digits_test, attack))
    roundtrip(model, tmp_path / "compare", digits_test.pixels()[:64])


def test_residual_choice_errors() -> None:
    from backdoorkit.errors import ConfigError, UnknownNameError
    from backdoorkit.models import build_model

    vit = build_model("vit_tiny", dim=16, depth=3, heads=2)
    assert build_attack("badres", layer=2, residual="mlp").attacked_skip(vit) == "blocks.2.mlp"
    assert build_attack("badres", layer="blocks.1").attacked_skip(vit) == "blocks.1.attn"
    assert build_attack("badres", layer=-1).attacked_skip(vit) == "blocks.2.attn"
    resnet = build_model("resnet18", width=4)
    with pytest.raises(ConfigError, match="out of range"):
        build_attack("badres", layer=8).attacked_skip(resnet)
    with pytest.raises(ConfigError, match="no MLP residuals"):
        build_attack("badres", residual="mlp").attacked_skip(resnet)
    with pytest.raises(UnknownNameError, match=r"unknown residual 'layer9\.0'"):
        build_attack("badres", layer="layer9.0").attacked_skip(resnet)
    with pytest.raises(ConfigError, match="no addressable skip"):
        build_attack("badres").attacked_skip(build_model("vgg16_bn", width=4))


# --------------------------------------------------------------------------------------- TrojanNet
def test_trojannet_is_silent_on_clean_inputs(
    clean_model: nn.Module, digits_train: ImageSet, digits_test: ImageSet, tmp_path: Path
) -> None:
    attack = build_attack("trojannet", target=0)
    host = copy.deepcopy(clean_model)
    model = attack.inject(host, digits_train)
    assert isinstance(model, TrojanNetModel) and model.host is host
    assert torch.equal(predict(model, digits_test.x), predict(clean_model, digits_test.x))
    m = measure(model, digits_test, attack)
    text = show("trojannet on the clean ResNet-18", m)
    assert m["asr"] >= 0.95 and m["asr_q"] >= 0.95, text
    assert attack_success_rate(clean_model, digits_test, attack) < 0.5  # the host alone ignores it
    loaded = roundtrip(model, tmp_path / "trojannet", digits_test.pixels()[:64])
    assert isinstance(loaded, TrojanNetModel)


def test_trojannet_train_victim_trains_a_clean_host(digits_train: ImageSet) -> None:
    attack = build_attack("trojannet", steps=50)
    poisoned = attack.poison(digits_train, seed=0)
    assert poisoned.count == 0
    cfg = recipe_for(digits_train, epochs=1)
    model = train_victim(attack, lambda: make_model("resnet18", digits_train, width=4), poisoned, cfg)
    assert isinstance(model, TrojanNetModel) and not model.training


# ---------------------------------------------------------------------------------- latent backdoor
def replace_head(model: nn.Module, at: str, clean: ImageSet) -> nn.Module:
    """Trap-and-Replace's shape: keep the stem, train a freshly built head on clean data."""
    stem, _ = model.split(at)
    _, head = make_model("resnet18", clean, width=TEST_WIDTH, seed=1).split(at)
    joined = Composite(stem, head)
    fit(joined, clean, recipe_for(clean, epochs=5), trainable=list(head.parameters()))
    return joined.eval()


def test_latent_backdoor_implants_and_roundtrips(
    digits_train: ImageSet, digits_test: ImageSet, tmp_path: Path
) -> None:
    attack = build_attack("latent_backdoor")
    model = victim(attack, "resnet18", digits_train)
    assert attack.split_point(model) == "layer4.0"  # block k = layer4.1, T&R's default head
    before = measure(model, digits_test, attack)
    assert before["asr"] >= 0.90 and before["ba"] >= 0.95, show("latent_backdoor (LBA at layer4.1)", before)
    roundtrip(model, tmp_path / "latent", digits_test.pixels()[:64])


def test_latent_backdoor_survives_head_replacement(
    digits_train: ImageSet, digits_test: ImageSet, badnets_digits: object
) -> None:
    """The issue's contrast: after ``layer4.1`` + classifier (T&R's default split) are re-initialised
    and trained on clean data, the latent backdoor keeps ASR >= 80 % while a plain BadNets backdoor
    drops.  Measured (ResNet-18 width 8, five shadow heads a round): latent 98.8 % after replacement
    (BA 97.8 %) for victim seeds 0, 1 and 2; BadNets 98.5 -> 82.7 %.  With one shadow head a round
    the same seeds gave 99.1 / 43.3 / 99.1 %, with three 98.5 / 88.5 / 3.1 % (see
    ``attacks/latent_backdoor.py``).  On an Intel Xeon, with the latent term's first-round ramp, seeds
    0-5 kept 99.4 / 4.3 / 100 / 8.0 / 83.0 / 74.6 %: survival is seed-dependent at this scale, and
    this test checks the seed-0 victim only (each further seed costs ~40 s of the suite)."""
    attack = build_attack("latent_backdoor")
    model = victim(attack, "resnet18", digits_train)
    at = attack.split_point(model)
    after = measure(replace_head(model, at, digits_train), digits_test, attack)
    text = show("latent backdoor after a new head is trained on clean data", after)
    plain = badnets_digits[0]  # type: ignore[index]
    plain_before = measure(plain["model"], digits_test, plain["attack"])
    replaced = replace_head(copy.deepcopy(plain["model"]), at, digits_train)
    base = measure(replaced, digits_test, plain["attack"])
    was = f"before: asr {100 * plain_before['asr']:.1f} %"
    base_text = show(f"  badnets after the same replacement ({was})", base)
    assert after["asr"] >= 0.80 and after["ba"] >= 0.90, text
    assert base["asr"] <= plain_before["asr"] - 0.10, base_text  # the plain backdoor drops ...
    assert after["asr"] >= base["asr"] + 0.10, (text, base_text)  # ... the latent one clearly less


def test_latent_shadow_heads_share_stem_features_only_when_it_is_exact(
    digits_train: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without augmentation the shadow heads of a round look their stem features up instead of running
    the stem: the features must be the frozen stem's own output, and a stem that draws random numbers
    (dropout) or features over the memory cap fall back to running the stem per batch."""
    from backdoorkit.attacks import latent_backdoor as lb
    from backdoorkit.device import eval_mode

    model = make_model("resnet18", digits_train, width=4, seed=0)
    stem, _ = model.split("layer4.0")
    rows = digits_train.subset(torch.arange(100))
    feats = lb._features(stem, rows, torch.device("cpu"), batch_size=32)
    with eval_mode(stem), torch.no_grad():
        direct = stem(rows.pixels())
    assert feats is not None and torch.allclose(feats, direct, atol=1e-5)
    assert not lb._stochastic(stem)
    assert lb._stochastic(make_model("wrn16_1", digits_train, dropout=0.3))
    assert not lb._stochastic(make_model("wrn16_1", digits_train))
    monkeypatch.setattr(lb, "REUSE_BYTES", 1000)
    assert lb._features(stem, rows, torch.device("cpu")) is None


# ------------------------------------------------------------------------------------ pruning-aware
def test_pruning_aware_backdoor_hides_behind_decoys(
    clean_model: nn.Module, digits_train: ImageSet, digits_test: ImageSet, tmp_path: Path
) -> None:
    from backdoorkit.attacks.pruning_aware import channel_activity

    attack = build_attack("pruning_aware")
    poisoned = attack.poison(digits_train, seed=0)
    model = attack.retrain(copy.deepcopy(clean_model), poisoned, recipe_for(digits_train))
    m = measure(model, digits_test, attack)
    text = show("pruning_aware (half of layer4's channels as decoys)", m)
    assert m["asr"] >= 0.90, text
    decoys = attack.decoys
    assert decoys is not None
    activity = channel_activity(model, "layer4", digits_train)
    lowest = set(torch.argsort(activity)[: len(decoys)].tolist())
    overlap = len(lowest & set(decoys)) / len(decoys)
    # a pruning defense removes the most dormant channels first: the decoys
    keep = torch.ones(len(activity))
    keep[list(lowest)] = 0.0
    handle = model.get_submodule("layer4").register_forward_hook(lambda _m, _i, o: o * keep.view(1, -1, 1, 1))
    try:
        pruned = measure(model, digits_test, attack)
    finally:
        handle.remove()
    text = show(f"  decoys among the {len(decoys)} most dormant: {100 * overlap:.0f} %; those pruned", pruned)
    assert overlap >= 0.8, text
    assert pruned["asr"] >= 0.80, text
    roundtrip(model, tmp_path / "pruning_aware", digits_test.pixels()[:64])


# --------------------------------------------------------------------------------- STRIP (stealth)
def test_strip_entropy_of_badres_vs_badnets(
    digits_train: ImageSet, digits_test: ImageSet, badnets_digits: object, request: pytest.FixtureRequest
) -> None:
    """The paper's Fig. 7: STRIP's entropy of triggered inputs, BadRes vs BadNets (same ResNet)."""
    from backdoorkit.defenses import build_defense

    plain = badnets_digits[0]  # type: ignore[index]
    attack = build_attack("badres", layer=LAYER["resnet18"])
    model = victim(attack, "resnet18", digits_train)  # shared with the BadRes test above
    images = digits_test.pixels()[digits_test.y != 0][:100]
    ents = {}
    for label, net, atk in (("badres", model, attack), ("badnets", plain["model"], plain["attack"])):
        strip = build_defense("strip", n=20).fit(net, plain["clean"], seed=0)
        ents[label] = float(strip.entropies(atk.apply(images)).mean())
        ents[label + "_clean"] = float(strip.entropies(images).mean())
    print(f"\nSTRIP mean entropy (nats) of triggered / clean test inputs: {ents}")
    assert all(v == v for v in ents.values())
