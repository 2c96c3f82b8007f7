"""Our registered models and their addressable skips (small widths, random weights, no training)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.errors import ConfigError, UnknownNameError
from backdoorkit.models import (
    MODELS,
    Skip,
    build_model,
    get_betas,
    get_gammas,
    scaled_skips,
    set_gamma,
    set_gammas,
    skips,
    stage_path,
)

VIT = {"dim": 32, "depth": 2, "heads": 2}
SMALL: dict[str, dict[str, object]] = {
    "resnet18": {"width": 4},
    "resnet34": {"width": 4},
    "resnet50": {"width": 4},
    "preact_resnet18": {"width": 4},
    "wrn16_1": {},
    "wrn": {"depth": 10},
    "vgg16_bn": {"width": 8},
    "vit_tiny": VIT,
    "vit_small": VIT,
}


def _resnet_names(depths: tuple[int, ...]) -> list[str]:
    return [f"layer{i + 1}.{j}" for i, d in enumerate(depths) for j in range(d)]


EXPECTED_SKIPS: dict[str, list[str]] = {
    "resnet18": _resnet_names((2, 2, 2, 2)),
    "resnet34": _resnet_names((3, 4, 6, 3)),
    "resnet50": _resnet_names((3, 4, 6, 3)),
    "preact_resnet18": _resnet_names((2, 2, 2, 2)),
    "wrn16_1": [f"block{g}.{j}" for g in (1, 2, 3) for j in range(2)],
    "wrn": [f"block{g}.0" for g in (1, 2, 3)],
    "vgg16_bn": [],
    "vit_tiny": [f"blocks.{i}.{k}" for i in range(2) for k in ("attn", "mlp")],
    "vit_small": [f"blocks.{i}.{k}" for i in range(2) for k in ("attn", "mlp")],
}
ARCHS = MODELS.names()


def make(arch: str, seed: int = 0, **kw: object) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=kw.pop("num_classes", 7), **{**SMALL.get(arch, {}), **kw})
    _randomize_bn(model)
    return model.eval()


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial batch-norm statistics and affine weights, so eval outputs depend on every layer."""
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


RESIDUAL = [a for a in ARCHS if skips(make(a))]


def images(n: int = 3, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, 32, 32, generator=torch.Generator().manual_seed(5))


# ------------------------------------------------------------------------------ shapes and names


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shape_features_and_stages(arch: str) -> None:
    model = make(arch)
    x = images()
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
    assert out.shape == (3, 7)
    assert feats.shape == (3, model.feature_dim)
    assert torch.isfinite(out).all()
    assert isinstance(model.head(), nn.Linear)
    for stage in model.stage_names:
        model.get_submodule(stage)


@pytest.mark.parametrize("arch", ARCHS)
def test_skip_names_and_counts(arch: str) -> None:
    model = make(arch)
    names = list(skips(model))
    if arch in EXPECTED_SKIPS:
        assert names == EXPECTED_SKIPS[arch]
    assert len(set(names)) == len(names)
    for name, module in skips(model).items():
        assert isinstance(module, Skip) and (module.gamma, module.beta) == (1.0, 1.0)
        # a skip's name is the module path of its block (ResNets) or of the branch it closes (ViT)
        model.get_submodule(name)
        model.get_submodule(stage_path(name))


def test_vit_default_depths() -> None:
    assert len(skips(build_model("vit_tiny", dim=16, heads=2))) == 24  # depth 12 by default
    assert build_model("vit_small", depth=1, dim=12).blocks[0].attn.heads == 6


# --------------------------------------------------------------------------------- gamma = 1, 0


def _plain_add(model: nn.Module) -> nn.Module:
    """A copy whose skips are replaced by a literal ``branch + shortcut``."""

    class PlainAdd(nn.Module):
        def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
            return branch + shortcut

    plain = copy.deepcopy(model)
    for path in [p for p, m in plain.named_modules() if isinstance(m, Skip)]:
        parent, _, field = path.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, field, PlainAdd())
    return plain


@pytest.mark.parametrize("arch", RESIDUAL)
def test_gamma_one_is_bit_identical(arch: str) -> None:
    model = make(arch)
    x = images()
    fresh = make(arch, seed=123)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        set_gamma(model, "all", 0.3)
        set_gamma(model, "all", 1.0)
        out = model(x)
        assert torch.equal(out, fresh(x))
        assert torch.equal(out, _plain_add(model)(x))


@pytest.mark.parametrize("arch", RESIDUAL)
def test_gamma_zero_changes_outputs(arch: str) -> None:
    model = make(arch)
    x = images()
    with torch.no_grad():
        ref = model(x)
        for name in (next(iter(skips(model))), "all"):
            with scaled_skips(model, name, 0.0):
                assert not torch.allclose(model(x), ref, atol=1e-4), name
        assert torch.equal(model(x), ref)


# hand-written blocks: (branch, shortcut, after-merge) computed from a block module and its input
Merge = Callable[[torch.Tensor], torch.Tensor]
Parts = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor, Merge]]


def _basic(b: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    branch = b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))
    return branch, b.shortcut(x), F.relu


def _bottleneck(b: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    out = F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x))))))
    return b.bn3(b.conv3(out)), b.shortcut(x), F.relu


def _preact(b: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    pre = F.relu(b.bn1(x))
    short = b.shortcut(pre) if b.shortcut is not None else x
    return b.conv2(F.relu(b.bn2(b.conv1(pre)))), short, lambda t: t


def _vit_attn(b: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    def after(h: torch.Tensor) -> torch.Tensor:
        return h + b.mlp(b.norm2(h))

    return b.attn(b.norm1(x)), x, after


HAND: dict[str, tuple[str, str, Parts]] = {
    # arch: (skip name, block module path, parts)
    "resnet18": ("layer2.0", "layer2.0", _basic),
    "resnet34": ("layer3.1", "layer3.1", _basic),
    "resnet50": ("layer2.0", "layer2.0", _bottleneck),
    "preact_resnet18": ("layer3.0", "layer3.0", _preact),
    "wrn16_1": ("block2.0", "block2.0", _preact),
    "wrn": ("block1.0", "block1.0", _preact),
    "vit_tiny": ("blocks.1.attn", "blocks.1", _vit_attn),
    "vit_small": ("blocks.0.attn", "blocks.0", _vit_attn),
}


@pytest.mark.parametrize("arch", sorted(HAND))
@pytest.mark.parametrize(("gamma", "beta"), [(0.0, 1.0), (-0.5, 1.0), (1.0, 0.5), (0.3, -1.0)])
def test_block_matches_hand_written(arch: str, gamma: float, beta: float) -> None:
    skip_name, block_path, parts = HAND[arch]
    model = make(arch)
    block = model.get_submodule(block_path)
    seen: dict[str, torch.Tensor] = {}
    handle = block.register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
    table = skips(model)
    table[skip_name].gamma, table[skip_name].beta = gamma, beta
    assert get_gammas(model) == ({skip_name: gamma} if gamma != 1 else {})
    assert get_betas(model) == ({skip_name: beta} if beta != 1 else {})
    with torch.no_grad():
        model(images())
        branch, shortcut, after = parts(block, seen["x"])
        expected = after(beta * branch + gamma * shortcut)
    handle.remove()
    assert torch.allclose(seen["out"], expected, atol=1e-5, rtol=1e-5)


def test_skip_module_arithmetic() -> None:
    a, b = torch.randn(5), torch.randn(5)
    assert torch.equal(Skip()(a, b), a + b)
    assert torch.equal(Skip(gamma=0.0)(a, b), a)
    assert torch.allclose(Skip(gamma=-0.5)(a, b), a - 0.5 * b)
    assert torch.allclose(Skip(beta=2.0, gamma=0.5)(a, b), 2 * a + 0.5 * b)


# -------------------------------------------------------------------------- addressing errors


def test_set_gamma_unknown_name_lists_names() -> None:
    model = make("resnet18")
    with pytest.raises(UnknownNameError) as info:
        set_gamma(model, "layer9.0", 0.0)
    msg = str(info.value)
    assert "layer9.0" in msg and "layer1.0" in msg and "layer4.1" in msg
    with pytest.raises(UnknownNameError, match="no addressable skip connections"):
        set_gamma(make("vgg16_bn"), "layer1.0", 0.0)
    with pytest.raises(ConfigError, match="finite"):
        set_gamma(model, "layer1.0", float("nan"))
    with pytest.raises(UnknownNameError):
        set_gammas(model, {"layer1.0": 0.5, "nope": 0.0})


def test_scaled_skips_restores_even_on_exceptions() -> None:
    model = make("preact_resnet18")
    set_gamma(model, "layer1.1", 0.7)
    with scaled_skips(model, ["layer1.0", "layer1.1"], 0.0):
        assert get_gammas(model) == {"layer1.0": 0.0, "layer1.1": 0.0}
    assert get_gammas(model) == {"layer1.1": 0.7}
    with pytest.raises(ValueError, match="inside"), scaled_skips(model, {"layer2.0": -1.0, "layer4.1": 0.0}):
        assert get_gammas(model)["layer2.0"] == -1.0
        raise ValueError("inside")
    assert get_gammas(model) == {"layer1.1": 0.7}
    # an unknown name changes nothing
    with pytest.raises(UnknownNameError), scaled_skips(model, {"layer2.0": 0.0, "nope": 0.0}):
        pass
    assert get_gammas(model) == {"layer1.1": 0.7}
    with pytest.raises(ConfigError, match="needs a gamma"), scaled_skips(model, "all"):
        pass


# ------------------------------------------------------------------------------- build_model


def test_build_model_errors() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet19'.*did you mean"):
        build_model("resnet19")
    with pytest.raises(ConfigError, match="does not take depth; it takes width"):
        build_model("resnet18", depth=3)
    with pytest.raises(ConfigError, match="vit_tiny"):
        build_model("vit_tiny", dim=30, heads=4)  # not divisible
    with pytest.raises(ConfigError):
        build_model("resnet18", num_classes=1)
    with pytest.raises(ConfigError):
        build_model("resnet18", in_channels=2)
    model = build_model("RESNET18", width=4, num_classes=3)
    assert model.spec.arch == "resnet18"
    assert model.spec.kwargs == {"num_classes": 3, "in_channels": 3, "width": 4}


@pytest.mark.parametrize("arch", ARCHS)
def test_one_input_channel(arch: str) -> None:
    model = make(arch, in_channels=1)
    with torch.no_grad():
        assert model(images(2, channels=1)).shape == (2, 7)


@pytest.mark.parametrize("arch", ARCHS)
def test_normalisation_is_the_first_layer(arch: str) -> None:
    mean, std = (0.2, 0.4, 0.6), (0.3, 0.2, 0.25)
    model = make(arch, mean=mean, std=std)
    identity = make(arch, seed=9, mean=(0.0,) * 3, std=(1.0,) * 3)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    missing, unexpected = identity.load_state_dict(state, strict=False)
    assert sorted(missing) == ["normalize.mean", "normalize.std"] and not unexpected
    x = images()
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), identity(manual), atol=1e-5)
    assert next(iter(model.named_children()))[0] == "normalize"


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_matches_contiguous(arch: str) -> None:
    model = make(arch)
    x = images()
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
