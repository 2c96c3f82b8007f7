"""The model registry, :func:`build_model`, and the wrapper registry that lets checkpoints rebuild
wrapped and composite models (:func:`register_wrapper`, :func:`model_spec`, :func:`build_from_spec`)."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

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
