"""The model registry and :func:`build_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from backdoorkit.errors import ConfigError
from backdoorkit.models import preact_resnet, resnet, vgg, vit, wrn
from backdoorkit.models.base import ModelSpec
from backdoorkit.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

_PAPERS = {
    "resnet": "He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
    "preact": "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016",
    "wrn": "Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016",
    "vgg": "Simonyan & Zisserman, Very Deep Convolutional Networks, ICLR 2015",
    "vit": "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021",
}

# name, factory, paper key, the arguments a factory accepts besides num_classes/in_channels/mean/std
_TABLE: list[tuple[str, Callable[..., nn.Module], str, tuple[str, ...]]] = [
    ("resnet18", resnet.resnet18, "resnet", ("width",)),
    ("resnet34", resnet.resnet34, "resnet", ("width",)),
    ("resnet50", resnet.resnet50, "resnet", ("width",)),
    ("preact_resnet18", preact_resnet.preact_resnet18, "preact", ("width",)),
    ("wrn16_1", wrn.wrn16_1, "wrn", ("depth", "widen", "dropout")),
    ("wrn", wrn.wrn, "wrn", ("depth", "widen", "dropout")),
    ("vgg16_bn", vgg.vgg16_bn, "vgg", ("width",)),
    ("vit_tiny", vit.vit_tiny, "vit", ("image_size", "patch", "dim", "depth", "heads", "mlp_ratio")),
    ("vit_small", vit.vit_small, "vit", ("image_size", "patch", "dim", "depth", "heads", "mlp_ratio")),
]
for _name, _factory, _paper, _args in _TABLE:
    MODELS.add(_name, _factory, paper=_PAPERS[_paper], args=_args)

COMMON_ARGS = ("num_classes", "in_channels", "mean", "std")


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` are checked against what the architecture accepts.

    The returned model carries ``model.spec`` (a :class:`ModelSpec`) so checkpoints can rebuild it.
    ``width=None`` (and other ``None`` values) mean "the architecture's default".
    """
    entry = MODELS.entry(name)
    allowed = entry.meta["args"]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    bad = sorted(set(kwargs) - set(allowed) - set(COMMON_ARGS))
    if bad:
        raise ConfigError(
            f"model {entry.name!r} does not take {', '.join(bad)}; it takes {', '.join(allowed) or 'nothing'}"
        )
    for key in ("mean", "std"):
        if key in kwargs:
            kwargs[key] = [float(v) for v in kwargs[key]]
    try:
        model = entry.obj(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model {entry.name!r}: {exc}") from None
    model.spec = ModelSpec(entry.name, {"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    return model


def model_args(name: str) -> tuple[str, ...]:
    return tuple(MODELS.entry(name).meta["args"])


def signature_defaults(name: str) -> dict[str, Any]:
    fn = MODELS.get(name)
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
