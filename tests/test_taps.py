"""Taps: capture named activations, replace submodules in place (tiny models, random inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoorkit.errors import ConfigError
from backdoorkit.models import build_model, capture, replace_modules


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=5, width=4).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_capture_returns_named_activations_and_removes_hooks(resnet: nn.Module, x: torch.Tensor) -> None:
    names = ["layer1", "layer2.1", "layer4", "pool", "fc"]
    with capture(resnet, names) as acts:
        assert _hooks(resnet) == len(names)
        out = resnet(x)
    assert _hooks(resnet) == 0
    assert list(acts) == names  # in call order, which is the order given here
    assert acts["layer1"].shape == (2, 4, 32, 32)
    assert acts["layer2.1"].shape == (2, 8, 16, 16)
    assert acts["layer4"].shape == (2, 32, 4, 4)
    assert acts["pool"].shape == (2, 32, 1, 1)
    assert torch.equal(acts["fc"], out)


def test_capture_keeps_the_graph_unless_detached(resnet: nn.Module, x: torch.Tensor) -> None:
    with capture(resnet, "layer3") as acts:
        resnet(x)
    assert acts["layer3"].requires_grad
    acts["layer3"].pow(2).mean().backward()  # NAD-style loss on an intermediate activation
    assert resnet.layer1[0].conv1.weight.grad is not None
    with capture(resnet, "layer3", detach=True) as acts:
        resnet(x)
    assert not acts["layer3"].requires_grad


def test_capture_unknown_name_is_one_line_with_close_names(resnet: nn.Module) -> None:
    match = r"no submodule 'layer2\.3'.*close names: .*layer2\.1"
    with pytest.raises(ConfigError, match=match) as info, capture(resnet, ["layer1", "layer2.3"]):
        pass
    assert "\n" not in str(info.value)
    assert _hooks(resnet) == 0


def test_capture_removes_hooks_on_error(resnet: nn.Module) -> None:
    with pytest.raises(RuntimeError), capture(resnet, ["layer1", "fc"]):
        resnet(torch.rand(2, 5, 32, 32))  # wrong channel count
    assert _hooks(resnet) == 0


def test_replace_batchnorm_by_groupnorm(resnet: nn.Module, x: torch.Tensor) -> None:
    expected = [n for n, m in resnet.named_modules() if isinstance(m, nn.BatchNorm2d)]
    replaced = replace_modules(
        resnet,
        lambda _name, m: isinstance(m, nn.BatchNorm2d),
        lambda _name, m: nn.GroupNorm(1, m.num_features),
    )
    assert replaced == expected and "layer2.0.shortcut.1" in replaced
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert isinstance(resnet.get_submodule("layer2.0.shortcut.1"), nn.GroupNorm)
    assert not resnet.get_submodule("bn1").training  # keeps the replaced module's mode
    with torch.no_grad():
        out = resnet(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_replace_does_not_descend_into_replaced_modules(resnet: nn.Module) -> None:
    seen: list[str] = []

    def factory(name: str, module: nn.Module) -> nn.Module:
        seen.append(name)
        return module  # keep it; only the visiting order matters here

    replaced = replace_modules(resnet, lambda name, _m: name.startswith("layer1"), factory)
    assert replaced == seen == ["layer1"]
    with pytest.raises(ConfigError, match="factory returned int"):
        replace_modules(resnet, lambda name, _m: name == "fc", lambda _n, _m: 3)  # type: ignore[arg-type,return-value]
