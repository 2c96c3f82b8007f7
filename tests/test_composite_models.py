"""Blocks, stages and splits of our classifiers, and wrapped / composite models through checkpoints
(tiny widths, random weights, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from backdoorkit.checkpoint import load_model, save_model, sidecar_path
from backdoorkit.errors import ConfigError, ModelFileError
from backdoorkit.models import (
    Composite,
    ModelSpec,
    build_from_spec,
    build_model,
    get_gammas,
    model_spec,
    register_wrapper,
    set_gamma,
    skips,
)

VIT = {"dim": 16, "depth": 3, "heads": 2}
SMALL: dict[str, dict[str, object]] = {
    "resnet18": {"width": 4},
    "preact_resnet18": {"width": 4},
    "wrn16_1": {},
    "vgg16_bn": {"width": 4},
    "vit_tiny": VIT,
}
SPLITS = {
    "resnet18": ["layer1.0", "layer2.1", "layer3.0", "layer4.1"],
    "preact_resnet18": ["layer1.1", "layer3.0", "layer4.1"],
    "wrn16_1": ["block1.0", "block2.1", "block3.1"],
    "vgg16_bn": ["stage1", "stage3", "stage5"],
    "vit_tiny": ["blocks.0", "blocks.2"],
}
BLOCKS = {
    "resnet18": [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)],
    "preact_resnet18": [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)],
    "wrn16_1": [f"block{g}.{j}" for g in (1, 2, 3) for j in range(2)],
    "vgg16_bn": [f"stage{i}" for i in range(1, 6)],
    "vit_tiny": ["blocks.0", "blocks.1", "blocks.2"],
}


def make(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=5, **SMALL[arch])
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():  # non-trivial statistics, so every buffer matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


# ------------------------------------------------------------------------------ blocks and split


@pytest.mark.parametrize("arch", list(SMALL))
def test_block_names_and_forward_stages(arch: str, x: torch.Tensor) -> None:
    model = make(arch)
    assert model.block_names() == BLOCKS[arch]
    with torch.no_grad():
        stages = model.forward_stages(x)
        blocks = model.forward_stages(x, model.block_names())
    assert list(stages) == list(model.stage_names)
    assert all(t.shape[0] == 3 for t in stages.values())
    assert list(blocks) == BLOCKS[arch]
    last = BLOCKS[arch][-1]
    stem, _ = model.split(last)
    with torch.no_grad():
        assert torch.equal(blocks[last], stem(x))


@pytest.mark.parametrize("arch", list(SMALL))
def test_split_reproduces_the_model_bit_for_bit(arch: str, x: torch.Tensor) -> None:
    model = make(arch)
    with torch.no_grad():
        ref = model(x)
        for at in SPLITS[arch]:
            stem, head = model.split(at)
            assert torch.equal(head(stem(x)), ref), at
            assert torch.equal(Composite(stem, head)(x), ref), at
    stem, head = model.split(SPLITS[arch][0])
    # stem and head share the model's parameters, and between them hold all of them
    own = {id(p) for p in model.parameters()}
    pieces = [id(p) for p in (*stem.parameters(), *head.parameters())]
    assert set(pieces) == own and len(pieces) == len(own)


def test_training_the_stem_trains_the_model(x: torch.Tensor) -> None:
    model = make("resnet18")
    stem, head = model.split("layer2.0")
    stem(x).sum().backward()
    assert model.conv1.weight.grad is not None and model.layer3[0].conv1.weight.grad is None
    assert head.num_classes == 5 and stem.in_channels == 3


def test_bad_split_point_is_one_line() -> None:
    model = make("resnet18")
    for bad in ("layer5.0", "layer2.7", "fc", "layer2.0.conv1"):
        with pytest.raises(ConfigError, match=r"cannot split ResNet at .*split points: layer1\.0, ") as info:
            model.split(bad)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- checkpoints


@register_wrapper("test_scaled_host")
class ScaledHost(nn.Module):
    """A user-defined wrapper: a host classifier whose logits are scaled (TrojanNet-like shape)."""

    def __init__(self, host: nn.Module, scale: float = 2.0) -> None:
        super().__init__()
        self.host = host
        self.scale = scale
        self.bias = nn.Parameter(torch.linspace(-1, 1, host.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.host(x) * self.scale + self.bias


def _roundtrip(model: nn.Module, path: Path, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        ref = model(x)
    saved = save_model(model, path, classes=tuple("abcde"))
    loaded = load_model(saved)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    assert type(loaded) is type(model) and loaded.classes == tuple("abcde")
    return loaded


def test_split_model_roundtrips(tmp_path: Path, x: torch.Tensor) -> None:
    model = make("resnet18")
    set_gamma(model, "layer3.1", 0.25)
    composite = Composite(*model.split("layer2.1"))
    loaded = _roundtrip(composite, tmp_path / "split", x)
    assert get_gammas(loaded) == {"head.layer3.1": 0.25}
    card = json.loads(sidecar_path(tmp_path / "split.safetensors").read_text())
    assert card["arch"] == "composite" and set(card["children"]) == {"stem", "head"}
    assert card["children"]["stem"]["kwargs"] == {"at": "layer2.1", "part": "stem"}
    assert card["children"]["stem"]["children"]["model"]["arch"] == "resnet18"
    # a piece alone is a model file too
    stem = _roundtrip_piece(composite.stem, tmp_path / "stem", x)
    assert isinstance(stem, nn.Sequential)


def _roundtrip_piece(piece: nn.Module, path: Path, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        ref = piece(x)
    loaded = load_model(save_model(piece, path))
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    return loaded


def test_stem_with_new_head_roundtrips(tmp_path: Path, x: torch.Tensor) -> None:
    """Trap-and-Replace's shape: the stem of one model with the head of a freshly built one."""
    stem, _ = make("wrn16_1", seed=0).split("block2.1")
    _, head = make("wrn16_1", seed=7).split("block2.1")
    _roundtrip(Composite(stem, head), tmp_path / "tar", x)


def test_vit_split_roundtrips(tmp_path: Path, x: torch.Tensor) -> None:
    model = make("vit_tiny")
    set_gamma(model, "blocks.1.attn", -0.5)  # BadRes' rewiring
    _roundtrip(Composite(*model.split("blocks.1")), tmp_path / "vit", x)


def test_user_wrapper_with_changed_skips_roundtrips(tmp_path: Path, x: torch.Tensor) -> None:
    host = make("preact_resnet18")
    wrapped = ScaledHost(host, scale=3.0)
    set_gamma(wrapped, "host.layer2.1", -0.5)
    skips(wrapped)["host.layer1.0"].beta = 0.5
    spec = model_spec(wrapped)
    assert spec == ModelSpec("test_scaled_host", {"scale": 3.0}, {"host": host.spec})
    loaded = _roundtrip(wrapped, tmp_path / "wrapped", x)
    assert loaded.scale == 3.0 and get_gammas(loaded) == {"host.layer2.1": -0.5}
    assert skips(loaded)["host.layer1.0"].beta == 0.5
    # a replaced child is saved as it is now
    wrapped.host = make("resnet18")
    assert model_spec(wrapped).children["host"].arch == "resnet18"  # type: ignore[union-attr]
    _roundtrip(wrapped, tmp_path / "replaced", x)


def test_build_from_spec_errors() -> None:
    with pytest.raises(ConfigError, match=r"test_scaled_host.*unexpected keyword argument 'nope'"):
        build_from_spec(ModelSpec("test_scaled_host", {"nope": 1}, {"host": ModelSpec("resnet18")}))
    with pytest.raises(ConfigError, match="has no child models"):
        build_from_spec(ModelSpec("resnet18", {}, {"x": ModelSpec("resnet18")}))
    with pytest.raises(ValueError, match="already a model architecture"):
        register_wrapper("resnet18")(ScaledHost)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(arch="resnet19"), "unknown model or wrapper 'resnet19'"),
        (
            lambda c: c["children"]["host"].update(arch="no_such_net"),
            "unknown model or wrapper 'no_such_net'",
        ),
        (lambda c: c.update(arch="no_such_wrapper"), "unknown model or wrapper"),
        (lambda c: c["kwargs"].update(scale="x", colour=1), "unexpected keyword argument 'colour'"),
        (lambda c: c["children"]["host"]["kwargs"].update(width=-3), "width -3 is out of range"),
        (lambda c: c["children"]["host"]["kwargs"].update(depth=3), "does not take depth"),
        (lambda c: c.update(children={"host": 5}), "invalid sidecar: children.host"),
        (lambda c: c.update(kwargs=[1]), "invalid sidecar: kwargs"),
    ],
)
def test_unrebuildable_sidecar_is_one_line_model_file_error(
    tmp_path: Path, edit: object, needle: str
) -> None:
    path = save_model(ScaledHost(make("resnet18")), tmp_path / "m")
    side = sidecar_path(path)
    card = json.loads(side.read_text())
    edit(card)  # type: ignore[operator]
    side.write_text(json.dumps(card))
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and len(msg) < 400, msg
