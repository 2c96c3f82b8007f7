"""The JSON sidecar of a model file, validated completely before anything is built.

:func:`validate_sidecar` checks a sidecar's text against :class:`Sidecar` (pydantic) and returns the
parsed mapping unchanged.  Bounds, each a one-line :class:`~backdoorkit.errors.ModelFileError`:

* the text: at most :data:`MAX_SIDECAR_BYTES` (16 MiB) and :data:`MAX_DEPTH` (32) levels of nesting,
  checked before the JSON is parsed (so a deeply nested file costs no recursion);
* ``classes``: distinct strings of at most 1,000 characters, at most
  :data:`~backdoorkit.data.limits.MAX_CLASSES`; as many as the architecture's ``num_classes``;
* ``normalization``: finite ``mean``, ``std`` > 0, one value per input channel (at most 64);
* ``skips``: ``gammas`` / ``betas`` finite numbers within +-:data:`MAX_SKIP_SCALE` (100; the methods
  use 0, 0.5, -0.5, 1);
* ``arch`` / ``kwargs`` / ``children``: a name and a mapping of JSON values for each model of the tree;
  the architecture arguments themselves are bounded by
  :func:`~backdoorkit.models.registry.check_model_args` when the model is built.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from backdoorkit.data.limits import MAX_CLASSES
from backdoorkit.errors import ModelFileError, validation_message

FORMAT = "backdoorkit.model"
MAX_SIDECAR_BYTES = 16 << 20
MAX_DEPTH = 32
MAX_SKIP_SCALE = 100.0

Scale = Annotated[float, Strict(), Field(ge=-MAX_SKIP_SCALE, le=MAX_SKIP_SCALE, allow_inf_nan=False)]
Stat = Annotated[float, Strict(), Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Name = Annotated[str, Strict(), Field(max_length=1000)]


class _Checked(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Normalization(_Checked):
    """The first layer's per-channel statistics."""

    mean: list[Stat] = Field(min_length=1, max_length=64)
    std: list[Stat] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _std_positive(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"{len(self.mean)} mean values but {len(self.std)} std values")
        if any(s <= 1e-8 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        return self


class SkipSettings(_Checked):
    """Gammas and betas of the skip connections, by skip name."""

    gammas: dict[Name, Scale] = Field(default_factory=dict)
    betas: dict[Name, Scale] = Field(default_factory=dict)


class ModelDescription(_Checked):
    """One model of the tree: its architecture (or wrapper) name, arguments and children."""

    arch: Annotated[str, Strict(), Field(min_length=1, max_length=200)] | None = None
    kwargs: dict[Name, Any] | None = None
    children: dict[Name, ModelDescription] | None = None


class Sidecar(ModelDescription):
    """A whole sidecar (see :func:`backdoorkit.checkpoint.save_model` for how it is written)."""

    format: Literal["backdoorkit.model"]
    version: Annotated[int, Strict(), Field(ge=1, le=2)] = 1
    backdoorkit: Annotated[str, Strict()] | None = None
    classes: list[Name] | None = Field(None, max_length=MAX_CLASSES)
    normalization: Normalization | None = None
    skips: SkipSettings = Field(default_factory=SkipSettings)
    config: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("class names are not distinct")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Sidecar:
        kwargs = self.kwargs or {}
        n = kwargs.get("num_classes")
        if self.classes and isinstance(n, int) and not isinstance(n, bool) and n != len(self.classes):
            raise ValueError(f"{len(self.classes)} class names but the architecture has num_classes {n}")
        c = kwargs.get("in_channels")
        if self.normalization and isinstance(c, int) and len(self.normalization.mean) not in (1, c):
            raise ValueError(f"normalization has {len(self.normalization.mean)} channels, the model {c}")
        return self


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text, strings skipped; linear time, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def validate_sidecar(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse and validate a sidecar; returns the mapping as written.

    Raises:
        ModelFileError: one line naming ``where`` and the first problem.
    """
    if len(text) > MAX_SIDECAR_BYTES:
        raise ModelFileError(f"{where}: sidecar of {len(text):,} bytes is larger than {MAX_SIDECAR_BYTES:,}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{where}: malformed sidecar JSON (not UTF-8)") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise ModelFileError(f"{where}: sidecar nested deeper than {MAX_DEPTH} levels")
    try:
        card = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{where}: malformed sidecar JSON ({exc.__class__.__name__})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ModelFileError(f"{where}: not a backdoorkit model sidecar")
    try:
        Sidecar.model_validate(card)
    except ValidationError as exc:
        raise ModelFileError(f"{where}: invalid sidecar: {validation_message(exc)}") from None
    return card
