"""The model registry, :func:`build_model`, and the wrapper registry that lets checkpoints rebuild
wrapped and composite models (:func:`register_wrapper`, :func:`model_spec`, :func:`build_from_spec`)."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from backdoorkit.errors import ConfigError, UnknownNameError, one_line
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

MAX_WIDTH = 4096
"""The largest ``width`` (base channel count; 64 = a full ResNet) any architecture is built with."""
MAX_PARAMETERS = 1_000_000_000
"""The most parameters a built model may have (4 GB in float32), counted before anything is allocated."""
ARG_BOUNDS: dict[str, tuple[type, float, float]] = {
    "num_classes": (int, 1, 100_000),
    "in_channels": (int, 1, 64),
    "width": (int, 1, MAX_WIDTH),
    "widen": (int, 1, 64),
    "depth": (int, 1, 1000),
    "dim": (int, 1, 16384),
    "heads": (int, 1, 1024),
    "patch": (int, 1, 4096),
    "image_size": (int, 4, 4096),
    "mlp_ratio": (float, 1e-3, 64.0),
    "dropout": (float, 0.0, 0.999),
}
"""Type and inclusive range of every architecture argument, checked before a model is built."""


def check_model_args(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse architecture arguments of the wrong type or out of :data:`ARG_BOUNDS` (and normalisation
    statistics that are not finite, of the wrong length or with a std <= 0) in one line, before any
    allocation.

    Raises:
        ConfigError: naming the model, the argument and its allowed range.
    """
    for key, value in kwargs.items():
        if key in ("mean", "std"):
            _check_stats(name, key, value, kwargs.get("in_channels", 3))
            continue
        if key not in ARG_BOUNDS or value is None:
            continue
        kind, low, high = ARG_BOUNDS[key]
        ok_type = isinstance(value, int | float) if kind is float else isinstance(value, int)
        if isinstance(value, bool) or not ok_type:
            raise ConfigError(
                f"model {name!r}: {key} must be {'a number' if kind is float else 'an integer'}, "
                f"got {value!r}"
            )
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"model {name!r}: {key} {value!r} is out of range [{low:g}, {high:g}]")


def _check_stats(name: str, key: str, value: Any, channels: Any) -> None:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"model {name!r}: {key} must be a list of numbers")
    if isinstance(channels, int) and len(value) not in (1, channels):
        raise ConfigError(f"model {name!r}: {key} has {len(value)} values for {channels} channels")
    if not all(math.isfinite(v) and abs(v) <= 1e6 for v in value):
        raise ConfigError(f"model {name!r}: {key} must be finite numbers")
    if key == "std" and not all(v > 1e-8 for v in value):
        raise ConfigError(f"model {name!r}: std values must be > 0 (got {list(value)})")


def parameter_count(factory: Callable[..., nn.Module], **kwargs: Any) -> int:
    """How many parameters ``factory(**kwargs)`` would have, built on the meta device (no memory)."""
    with torch.device("meta"):
        probe = factory(**kwargs)
    return sum(p.numel() for p in probe.parameters())


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
    check_model_args(entry.name, {"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    for key in ("mean", "std"):
        if key in kwargs:
            kwargs[key] = [float(v) for v in kwargs[key]]
    try:
        count = parameter_count(entry.obj, num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"model {entry.name!r}: {str(exc).removeprefix(f'model {entry.name!r}: ')}"
        ) from None
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"model {entry.name!r}: {count:,} parameters is more than the limit of {MAX_PARAMETERS:,}"
        )
    model = entry.obj(num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.spec = ModelSpec(entry.name, {"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    return model


def model_args(name: str) -> tuple[str, ...]:
    return tuple(MODELS.entry(name).meta["args"])


# ------------------------------------------------------------------------------------ wrappers
WRAPPERS: Registry[Callable[..., nn.Module]] = Registry("model wrapper")
"""Wrapper and composite model classes (TrojanNet around a host, a stem with a new head, a split model)
that checkpoints rebuild from a :class:`ModelSpec` with ``children``."""

_W = TypeVar("_W", bound=Callable[..., nn.Module])
_CALL = "_wrapper_call"


def register_wrapper(name: str, *, summary: str = "", paper: str = "") -> Callable[[_W], _W]:
    """Register a wrapper / composite model under ``name`` so that checkpoints can rebuild it.

    Decorate an ``nn.Module`` class: each instance records the arguments it was built with.  The
    arguments that are ``nn.Module``s are its *children* (the class must keep each one as an attribute
    of the same name, e.g. ``self.host = host``; at save time the attribute's current module and its
    own spec are written, so a replaced child is saved as it is now), the others are its keyword
    arguments (JSON values).  :func:`build_from_spec` rebuilds it as ``cls(**children, **kwargs)``.
    A decorated plain function is called the same way; the modules it returns must carry ``.spec``.
    """

    def deco(obj: _W) -> _W:
        if name.lower() in MODELS:
            raise ValueError(f"wrapper name {name!r} is already a model architecture")
        WRAPPERS.add(name, obj, summary=summary, paper=paper)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            _record_init_arguments(obj, name.lower())
        return obj

    return deco


def _record_init_arguments(cls: type[nn.Module], name: str) -> None:
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is not cls:  # an unregistered subclass is not rebuilt as this class
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        children: list[str] = []
        values: dict[str, Any] = {}
        for i, (arg, value) in enumerate(bound.arguments.items()):
            kind = signature.parameters[arg].kind
            if i == 0:
                continue  # self
            if kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    object.__setattr__(self, _CALL, None)  # cannot be rebuilt by keyword
                    return
            elif kind is inspect.Parameter.VAR_KEYWORD:
                values.update(value)
            elif isinstance(value, nn.Module):
                children.append(arg)
            else:
                values[arg] = value
        object.__setattr__(self, _CALL, (name, tuple(children), values))

    cls.__init__ = __init__  # type: ignore[method-assign]


def model_spec(model: nn.Module) -> ModelSpec | None:
    """The spec that rebuilds ``model`` (children included), or ``None`` when some part of it was not
    built by :func:`build_model`, a registered wrapper or :func:`~backdoorkit.models.stages.split`.

    Raises:
        ConfigError: a registered wrapper does not keep a child module under its argument's name.
    """
    call = model.__dict__.get(_CALL, False)
    if call is False:
        spec = getattr(model, "spec", None)
        return spec if isinstance(spec, ModelSpec) else None
    if call is None:
        return None
    name, child_names, kwargs = call
    children: dict[str, ModelSpec] = {}
    for child_name in child_names:
        child = getattr(model, child_name, None)
        if not isinstance(child, nn.Module):
            raise ConfigError(
                f"wrapper {name!r} got the module {child_name!r} but does not keep it as self.{child_name}"
            )
        child_spec = model_spec(child)
        if child_spec is None:
            return None
        children[child_name] = child_spec
    return ModelSpec(name, dict(kwargs), children)


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Build the model a spec describes, children first (the inverse of :func:`model_spec`).

    Raises:
        UnknownNameError: the name is neither a model architecture nor a registered wrapper.
        ConfigError: the arguments do not fit the constructor.
    """
    key = str(spec.arch).lower()
    if key in WRAPPERS:
        children = {k: build_from_spec(v) for k, v in spec.children.items()}
        clash = sorted(set(children) & set(spec.kwargs))
        if clash:
            raise ConfigError(f"wrapper {key!r}: {clash[0]!r} is given both as a child and as an argument")
        try:
            return WRAPPERS.get(key)(**children, **spec.kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"wrapper {key!r}: {one_line(exc, with_type=False)}") from None
    if key in MODELS:
        if spec.children:
            raise ConfigError(
                f"model {key!r} has no child models, yet the spec names {', '.join(spec.children)}"
            )
        return build_model(key, **spec.kwargs)
    known = [*MODELS.names(), *WRAPPERS.names()]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownNameError(
        f"unknown model or wrapper {spec.arch!r}{hint}; models: {', '.join(MODELS.names())}; "
        f"wrappers: {', '.join(WRAPPERS.names()) or 'none'}"
    )


# ------------------------------------------------------------------------------------ --arch
def build_arch(
    arch: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the architecture ``--arch`` names, for weights that come without a sidecar.

    ``arch`` is one of:

    * a registered name (``resnet18`` ...); ``width`` is read off ``shapes`` (the file's tensor shapes)
      when not given, so a width-8 ResNet-18 state dict needs only ``--arch resnet18``;
    * ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None)``) or ``timm:NAME``
      (``timm.create_model(NAME, pretrained=False)``), where those packages are installed;
    * ``package.module:factory``: the user's own constructor, called with ``num_classes`` /
      ``in_channels`` when its signature takes them (``package`` is imported: it is the user's code,
      named by the user on the command line, never by a file).

    Models we did not write are made addressable with
    :func:`~backdoorkit.models.fx_skips.attach_skips` (a model without residual additions is returned
    unchanged).

    Raises:
        ConfigError / UnknownNameError: one line naming what is missing or wrong.
    """
    from backdoorkit.models.fx_skips import attach_skips

    arch = arch.strip()
    if ":" not in arch:
        extra = dict(kwargs)
        if "width" in model_args(arch) and "width" not in extra and shapes:
            width = _infer_width(arch, shapes, num_classes or 10, in_channels or 3)
            if width is not None:
                extra["width"] = width
        return build_model(arch, num_classes=num_classes or 10, in_channels=in_channels or 3, **extra)
    source, _, name = arch.partition(":")
    if not name:
        raise ConfigError(f"--arch {arch!r}: give torchvision:NAME, timm:NAME or package.module:factory")
    if source == "torchvision":
        tv = _optional_import("torchvision", arch)
        try:
            model = tv.models.get_model(name, weights=None, **_counts(num_classes, None), **kwargs)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--arch {arch!r}: {one_line(exc, with_type=False)}") from None
    elif source == "timm":
        timm = _optional_import("timm", arch)
        try:
            extra = {"num_classes": num_classes} if num_classes else {}
            if in_channels:
                extra["in_chans"] = in_channels
            model = timm.create_model(name, pretrained=False, **extra, **kwargs)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--arch {arch!r}: {one_line(exc, with_type=False)}") from None
    else:
        model = _user_factory(arch, source, name, num_classes, in_channels, kwargs)
    return attach_skips(model, missing_ok=True)


def _counts(num_classes: int | None, in_channels: int | None) -> dict[str, int]:
    out = {}
    if num_classes:
        out["num_classes"] = num_classes
    if in_channels:
        out["in_channels"] = in_channels
    return out


def _optional_import(package: str, arch: str) -> Any:
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"--arch {arch!r}: {package} is not installed (pip install {package})") from None


def _user_factory(
    arch: str,
    module_name: str,
    attr: str,
    num_classes: int | None,
    in_channels: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    import importlib
    import sys

    cwd_added = "" not in sys.path and "." not in sys.path
    if cwd_added:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--arch {arch!r}: cannot import {module_name} ({one_line(exc, with_type=False)})"
        ) from None
    finally:
        if cwd_added:
            sys.path.remove("")
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--arch {arch!r}: {module_name} has no callable {attr!r}")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call = {k: v for k, v in _counts(num_classes, in_channels).items() if takes_all or k in params}
    try:
        model = factory(**call, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--arch {arch!r}: {one_line(exc, with_type=False)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--arch {arch!r}: the factory returned {type(model).__name__}, not a torch module")
    return model


def _infer_width(
    name: str, shapes: dict[str, tuple[int, ...]], num_classes: int, in_channels: int
) -> int | None:
    """The ``width`` whose stem matches the file: the first convolution's output channels, scaled."""
    entry = MODELS.entry(name)
    base = 64
    with torch.device("meta"):
        probe = entry.obj(num_classes=num_classes, in_channels=in_channels, width=base)
    for key, tensor in probe.named_parameters():
        if tensor.dim() == 4 and key in shapes and len(shapes[key]) == 4:
            width = shapes[key][0] * base // max(1, tensor.shape[0])
            return width if 1 <= width <= MAX_WIDTH else None
    return None
