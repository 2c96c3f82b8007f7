"""Safe model checkpoints: safetensors weights + a JSON sidecar; never unpickle.

``save_model(model, "m.safetensors")`` writes the weights and ``m.json`` next to them with the
architecture and its arguments (for wrapped and composite models - a TrojanNet around its host, a
stem with a new head, a split model - the registered wrapper's name and arguments and, under
``children``, the same for each child model, recursively), the class names, the input
normalisation, the skip gammas/betas and the config that produced the model.  ``load_model`` rebuilds
the model from the sidecar (or loads into a model you pass), checks every tensor is finite and
restores the skip settings; a sidecar that cannot be rebuilt is a one-line :class:`ModelFileError`.
Legacy ``.pt`` / ``.pth`` files are read with ``torch.load(weights_only=True)``; one that needs
pickle is refused.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backdoorkit.errors import BackdoorkitError, ModelFileError, one_line
from backdoorkit.jsonable import to_jsonable
from backdoorkit.models.base import ModelSpec, Normalize
from backdoorkit.models.registry import build_from_spec, model_spec
from backdoorkit.models.skips import get_betas, get_gammas, skips
from backdoorkit.sidecar import MAX_SIDECAR_BYTES, validate_sidecar

FORMAT = "backdoorkit.model"
FORMAT_VERSION = 2
"""2 added ``children`` (wrapped / composite models); version 1 files read the same."""
LEGACY_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_model(
    model: nn.Module,
    path: str | Path,
    *,
    classes: tuple[str, ...] | list[str] | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as ``path`` (.safetensors) plus its JSON sidecar; returns the weights path."""
    from safetensors.torch import save_file

    import backdoorkit

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(path.suffix + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"refusing to save non-finite weights in {bad[0]}")
    spec = model_spec(model)
    classes = classes if classes is not None else getattr(model, "classes", None)
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    card = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backdoorkit": backdoorkit.__version__,
        "arch": spec.arch if spec else None,
        "kwargs": to_jsonable(spec.kwargs) if spec else None,
        "children": to_jsonable(spec.to_dict().get("children", {})) if spec else {},
        "classes": list(classes) if classes is not None else None,
        "normalization": (
            {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist()}
            if norm is not None
            else None
        ),
        "skips": {"gammas": get_gammas(model), "betas": get_betas(model)},
        "config": to_jsonable(config or {}),
        "extra": to_jsonable(extra or {}),
    }
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(path)
    side = sidecar_path(path)
    side_tmp = side.with_suffix(".json.tmp")
    side_tmp.write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    side_tmp.replace(side)
    return path


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar of a weights file, validated by :func:`backdoorkit.sidecar.validate_sidecar`
    (types, finite numbers, ranges, size and nesting bounds), or ``None`` if there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    if side.stat().st_size > MAX_SIDECAR_BYTES:
        raise ModelFileError(
            f"{side}: sidecar of {side.stat().st_size:,} bytes is larger than {MAX_SIDECAR_BYTES:,}"
        )
    return validate_sidecar(side.read_bytes(), str(side))


def header_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from a safetensors header, without reading any tensor data."""
    from safetensors import safe_open

    path = Path(path)
    with _malformed_safetensors(path), safe_open(str(path), framework="pt") as fh:
        out = {}
        for key in fh.keys():  # noqa: SIM118 (safe_open is not iterable)
            sl = fh.get_slice(key)
            out[key] = (tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
        return out


@contextlib.contextmanager
def _malformed_safetensors(path: Path) -> Iterator[None]:
    """Any failure of the safetensors reader inside the block becomes one :class:`ModelFileError`
    line (the Rust reader reports some corruptions as a ``PanicException``, a BaseException)."""
    try:
        yield
    except Exception as exc:  # SafetensorError, OSError, ... : the file is not what it claims
        raise ModelFileError(
            f"{path}: malformed safetensors file ({one_line(exc, with_type=False)})"
        ) from None
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise ModelFileError(
            f"{path}: malformed safetensors file ({one_line(exc, with_type=False)})"
        ) from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a legacy torch file (``weights_only``); never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        with _malformed_safetensors(path):
            state = load_file(str(path))
    elif path.suffix in LEGACY_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            needs = _pickled_global(exc)
            if needs is None:  # not a pickle at all (random bytes, a truncated stream ...)
                raise ModelFileError(f"{path}: unreadable torch file ({_first_line(exc)})") from None
            raise ModelFileError(
                f"{path}: refused - this file needs full unpickling ({needs}), which can run arbitrary "
                "code; convert it to safetensors where you trust it"
            ) from None
        except Exception as exc:  # a corrupt stream can fail anywhere in the (safe) unpickler
            raise ModelFileError(f"{path}: unreadable torch file ({_first_line(exc)})") from None
        state = _extract_state_dict(obj, path)
    else:
        raise ModelFileError(
            f"{path}: unsupported model file type {path.suffix!r} (use .safetensors, or .pt/.pth weights)"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise ModelFileError(f"{path}: entry {k!r} is not a tensor")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelFileError(f"{path}: non-finite values (NaN/inf) in weight {k!r}")
    return state


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k).removeprefix("module."): v for k, v in obj.items()}  # type: ignore[union-attr]
    raise ModelFileError(f"{path}: no state dict of tensors found")


def load_model(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    arch: str | None = None,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    in_channels: int | None = None,
    **arch_kwargs: Any,
) -> nn.Module:
    """Load a model file.

    Everything the file claims is checked before the model is built: the sidecar
    (:mod:`backdoorkit.sidecar`), the architecture arguments (bounded before allocation), and the
    shapes in the safetensors header against the model the sidecar describes (built on the meta
    device, so a mismatch costs no memory).  Then the weights are read (finite, same dtype as the
    model: no silent casts) and the skip settings restored.

    Args:
        path: ``.safetensors`` (with its sidecar) or a legacy ``.pt``/``.pth`` state dict (a
            ``module.`` prefix is stripped).
        model: load into this module instead of building one (for architectures we did not write).
        arch: the architecture when the file has no sidecar: a registered name, ``torchvision:NAME``,
            ``timm:NAME`` or ``package.module:factory`` (see :func:`~backdoorkit.models.registry.build_arch`).
        num_classes, in_channels: what ``arch`` is built for (default: the registry's defaults).
        arch_kwargs: more architecture arguments (override the sidecar's).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix not in (".safetensors", *LEGACY_SUFFIXES):
        read_weights(path)  # the one message for unsupported types
    card = read_sidecar(path) if path.suffix == ".safetensors" else None
    shapes = header_shapes(path) if path.suffix == ".safetensors" else None
    if model is None:
        if (
            card is not None
            and card.get("arch")
            and arch is not None
            and arch.lower() != card["arch"].lower()
        ):
            raise ModelFileError(f"{path}: holds a {card['arch']} model, not {arch}")
        spec = spec_from_card(card, sidecar_path(path)) if card is not None else None
        if spec is not None:
            spec = ModelSpec(spec.arch, {**spec.kwargs, **arch_kwargs}, spec.children)
            if shapes is not None:
                _check_header(path, spec, shapes)
            model = _rebuild(path, spec)
            state = read_weights(path)
        elif arch is not None:
            state = read_weights(path)
            model = _build_arch(path, arch, state, num_classes, in_channels, arch_kwargs)
        else:
            raise ModelFileError(
                f"{path}: no sidecar saying which architecture this is; pass --arch (or model=...)"
            )
    else:
        state = read_weights(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    problem = _fit_problem(model, {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()})
    if problem:
        arch_name = type(model).__name__
        raise ModelFileError(f"{path}: weights do not fit the architecture {arch_name} ({problem})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path}: weights do not fit the architecture ({one_line(exc, with_type=False)})"
        ) from None
    for norm in (m for m in model.modules() if isinstance(m, Normalize)):
        if not bool((norm.std > 1e-8).all()):
            raise ModelFileError(f"{path}: normalisation std must be > 0, got {norm.std.flatten().tolist()}")
    if card is not None:
        table = skips(model)
        for kind in ("gammas", "betas"):
            for name, value in (card.get("skips") or {}).get(kind, {}).items():
                if name not in table:
                    raise ModelFileError(f"{path}: sidecar names unknown skip {name!r}")
                setattr(table[name], kind[:-1], float(value))
        classes = card.get("classes")
        n = getattr(model, "num_classes", None)
        if classes and isinstance(n, int) and n != len(classes):
            raise ModelFileError(f"{path}: the sidecar names {len(classes)} classes, the model outputs {n}")
        if classes:
            model.classes = tuple(classes)
        model.card = card
    return model.to(device).eval()


def _rebuild(path: Path, spec: ModelSpec, *, meta: bool = False) -> nn.Module:
    try:
        if meta:
            with torch.device("meta"):
                return build_from_spec(spec)
        return build_from_spec(spec)
    except (BackdoorkitError, TypeError, ValueError) as exc:
        raise ModelFileError(
            f"{path}: cannot rebuild the model its sidecar describes ({one_line(exc, with_type=False)})"
        ) from None


def _check_header(path: Path, spec: ModelSpec, shapes: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Compare the header's names and shapes with the model the sidecar describes, built on meta."""
    problem = _fit_problem(_rebuild(path, spec, meta=True), shapes)
    if problem:
        raise ModelFileError(f"{path}: the weights do not match the sidecar's {spec.arch} ({problem})")


def _build_arch(
    path: Path,
    arch: str,
    state: dict[str, torch.Tensor],
    num_classes: int | None,
    in_channels: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    from backdoorkit.models.registry import build_arch

    shapes = {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return build_arch(arch, num_classes=num_classes, in_channels=in_channels, shapes=shapes, **kwargs)
        except BackdoorkitError as exc:
            raise ModelFileError(f"{path}: --arch {arch}: {one_line(exc, with_type=False)}") from None


def _fit_problem(model: nn.Module, state: dict[str, tuple[tuple[int, ...], str]]) -> str:
    """A short description of how weights with these ``{name: (shape, dtype)}`` fail to fit ``model``
    ('' when they fit).  Floating-point dtypes must match exactly (no silent casts)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k][0])]
    dtypes = [
        k
        for k in expected
        if k in state
        and expected[k].is_floating_point()
        and _dtype_name(state[k][1]) != _dtype_name(expected[k].dtype)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing weights such as {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights such as {unexpected[0]!r}")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} of another shape such as {k!r}: {list(state[k][0])} in the file, "
            f"{list(expected[k].shape)} in the model"
        )
    if dtypes and not shapes:
        k = dtypes[0]
        parts.append(
            f"{len(dtypes)} of another dtype such as {k!r}: {_dtype_name(state[k][1])} in the file, "
            f"{_dtype_name(expected[k].dtype)} in the model"
        )
    return "; ".join(parts)


_DTYPES = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
}


def _dtype_name(dtype: object) -> str:
    text = str(dtype)
    return _DTYPES.get(text, text.removeprefix("torch."))


def _pickled_global(exc: BaseException) -> str | None:
    """What a refused ``weights_only`` load wanted to import, or ``None`` if the file is no pickle
    that asks for code (then it is simply corrupt)."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    if found:
        return f"it imports {found.group(1)}"
    if "allowed global" in text or "Unsupported global" in text:
        return "it imports code"
    return None


def _first_line(exc: BaseException) -> str:
    """The most telling line of a long torch error (the line after ``WeightsUnpickler error:``)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:200]
    return one_line(exc, with_type=False)


def spec_from_card(card: dict[str, Any], where: str | Path = "sidecar") -> ModelSpec | None:
    """The :class:`ModelSpec` tree a sidecar describes (``None`` when it names no architecture).

    Raises:
        ModelFileError: ``arch`` / ``kwargs`` / ``children`` have the wrong JSON types.
    """
    arch = card.get("arch")
    if arch is None:
        return None
    kwargs = card.get("kwargs") or {}
    children = card.get("children") or {}
    if not isinstance(arch, str) or not isinstance(kwargs, dict) or not isinstance(children, dict):
        raise ModelFileError(f"{where}: malformed model description (arch, kwargs or children)")
    kids: dict[str, ModelSpec] = {}
    for name, child in children.items():
        if not isinstance(child, dict):
            raise ModelFileError(f"{where}: malformed description of child model {name!r}")
        spec = spec_from_card(child, where)
        if spec is None:
            raise ModelFileError(f"{where}: child model {name!r} names no architecture")
        kids[str(name)] = spec
    return ModelSpec(arch, dict(kwargs), kids)
