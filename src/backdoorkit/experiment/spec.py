"""Experiment specs: a YAML file, validated, expanded into the matrix of cells.

A spec names datasets, models (with width), training budgets, attacks and defenses with their
parameters, the clean-data fraction, seeds and where things go::

    name: example
    datasets: [digits]                 # registered names or paths; {name, subset, test_subset, ...}
    models: [{arch: resnet18, width: 8}]   # + finetune: {epochs: 3, lr: 1e-4}: victims fine-tuned
                                           #   from the clean model instead of trained from scratch
    train: {epochs: 4}                 # TrainConfig fields over the dataset's recipe
    attacks:
      - badnets
      - {name: blended, params: {alpha: [0.1, 0.2]}}   # lists expand
    defenses: [none, "*"]              # "*" = every registered defense the scenarios allow
    clean_fraction: 0.1                # the defender's clean holdout, split off before poisoning
    seeds: [0, 1]
    device: auto
    min_victim_asr: 0.5                # optional: repair / training cells run only on a victim whose
                                       #   no-defense test ASR reaches this (else: skipped, with why)
    db: results.db                     # relative paths resolve against the spec file's folder

Every list expands into the matrix dataset x model x attack x defense x seed (x clean fraction);
lists inside parameters expand too, except for parameters that take a list themselves, which
expand only when given a list of lists.  A defense runs in the first scenario it declares that the
experiment offers (``scenarios``, S1/S2/S3; S1 and S2 need ``clean_fraction > 0``); a combination no
offered scenario allows is kept as a *skipped* cell with the reason.

A cell's hash is the hash of the canonical JSON (sorted keys) of what determines its result: the
dataset's identity (name, or the content digest of a path), the model, the training overrides, the
attack and defense with every parameter resolved (defaults included), the scenario, the seed and the
clean fraction.  It does not depend on key order, list position, labels, the device, the
``min_victim_asr`` gate or the spec file's location.  A finished cell whose identity lacks only
parameters a method gained since, each at its default, stands for the new cell (:func:`stands_for`;
the store hands it the new hash).  Validation errors are one-line
:class:`~backdoorkit.errors.ConfigError` naming the
key and the allowed values.
"""

from __future__ import annotations

import collections.abc
import functools
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backdoorkit.cache import hash_key
from backdoorkit.errors import BackdoorkitError, ConfigError
from backdoorkit.scenarios import SCENARIOS, choose_scenario

NO_ATTACK = "none"
NO_DEFENSE = "none"
ALL_DEFENSES = "*"


# ---------------------------------------------------------------------------------------- the schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                info = cls.model_fields.get(key) if isinstance(key, str) else None
                if info is not None and bool_misplaced(value, info.annotation):
                    raise ValueError(f"{key}: {value!r} is a boolean where a number or name is expected")
        return data


def _allows_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_allows_bool(a) for a in typing.get_args(annotation))


def bool_misplaced(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (or an item of a list ``value``) is a boolean and ``annotation`` takes none
    (pydantic would quietly read ``true`` as ``1``)."""
    if _allows_bool(annotation):
        return False
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and any(isinstance(v, bool) for v in value)


def refuse_bools(values: dict[str, Any], model: type[BaseModel], owner: str) -> None:
    """A one-line :class:`ConfigError` for a boolean given to a field of ``model`` that takes none."""
    for key, value in values.items():
        info = model.model_fields.get(key)
        if info is not None and bool_misplaced(value, info.annotation):
            raise ConfigError(f"{owner}: {key}: {value!r} is a boolean where a number or name is expected")


def _as_entry(value: Any, key: str) -> Any:
    return {key: value} if isinstance(value, str) else value


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


class DatasetEntry(_Strict):
    """One dataset: a registered name or a path, optionally reduced (``subset``) for quick runs."""

    name: str
    label: str | None = None
    subset: int | float | None = Field(None, description="stratified sample of the train split (seed 0)")
    test_subset: int | float | None = Field(None, description="stratified sample of the test split")
    image_size: int | None = Field(None, ge=4)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for this dataset")


class ModelEntry(_Strict):
    """One architecture; ``width`` and ``kwargs`` values may be lists (they expand)."""

    arch: str
    width: int | list[int] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for this model")
    finetune: dict[str, Any] | None = Field(
        None,
        description="victims start from the clean reference model and are fine-tuned on the poisoned set "
        "with these TrainConfig overrides over the training config (a pretrained model, as BadRes's "
        "paper); None: victims train from scratch",
    )
    label: str | None = None


class AttackEntry(_Strict):
    """One attack (``none`` = no poisoning) with parameters; ``target``/``rate`` are shorthands."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    target: int | list[int] | None = None
    rate: float | int | list[float | int] | None = None
    label: str | None = None
    optional: bool = Field(False, description="skip (with a reason) when the attack is not registered")


class DefenseEntry(_Strict):
    """One defense (``none`` = no defense, ``*`` = every registered one) with parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    scenario: Literal["S1", "S2", "S3"] | None = None
    label: str | None = None
    optional: bool = Field(False, description="skip (with a reason) when the defense is not registered")
    exclude: list[str] = Field(default_factory=list, description='with name "*": defenses to leave out')


class RaySettings(_Strict):
    """Resources requested per cell by the Ray executor."""

    address: str | None = None
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class Spec(_Strict):
    """A validated experiment spec (see the module docstring)."""

    name: str = "experiment"
    datasets: list[DatasetEntry]
    data_root: str | None = None
    models: list[ModelEntry]
    train: dict[str, Any] = Field(default_factory=dict)
    attacks: list[AttackEntry]
    defenses: list[DefenseEntry] = Field(default_factory=lambda: [DefenseEntry(name=NO_DEFENSE)])
    clean_fraction: float | list[float] = 0.1
    scenarios: list[Literal["S1", "S2", "S3"]] = Field(default_factory=lambda: list(SCENARIOS))
    seeds: int | list[int] = 0
    device: str = "auto"
    clean_model: bool = Field(True, description="train a clean reference model per dataset x model x seed")
    min_victim_asr: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="run a repair or training defense only on a victim whose no-defense ASR on the test "
        "split reaches this fraction; below it the cell is recorded as skipped with the victim's numbers "
        "(there is no backdoor to remove); a finished no-defense cell of the victim decides from its "
        "record.  Detectors and inspectors always run.  An evaluator-side gate: the defenses never see "
        "the test split",
    )
    cache_dir: str | None = None
    read_only_caches: list[str] = Field(
        default_factory=list,
        description="folders of cache entries (the cache's <kind>/<key> layout) read where the cache "
        "misses and never written: artefacts shipped with a reproduction (relative to the spec)",
    )
    db: str | None = None
    ray: RaySettings = Field(default_factory=RaySettings)
    base_dir: str | None = Field(
        None, description="where relative paths resolve (default: the spec's folder)"
    )
    preset: str | dict[str, str] | None = Field(None, description="paper preset applied at load (presets.py)")
    paper: str | None = Field(
        None,
        description="the paper-numbers file the report shows beside ours (relative to the spec's folder; "
        "default: <spec file stem>.paper.yaml next to the spec)",
    )

    @field_validator("datasets", mode="before")
    @classmethod
    def _datasets(cls, v: Any) -> Any:
        return [_as_entry(x, "name") for x in _as_list(v)]

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        return [_as_entry(x, "arch") for x in _as_list(v)]

    @field_validator("attacks", "defenses", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        return [_as_entry(x, "name") for x in _as_list(v)]

    @field_validator("scenarios", mode="before")
    @classmethod
    def _scenarios(cls, v: Any) -> Any:
        return [str(x).upper() for x in _as_list(v)]

    @field_validator("clean_fraction")
    @classmethod
    def _fractions(cls, v: float | list[float]) -> float | list[float]:
        for f in _as_list(v):
            if not 0.0 <= float(f) < 1.0:
                raise ValueError(f"clean_fraction {f} is not a fraction in [0, 1)")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        values = _as_list(v)
        if not values:
            raise ValueError("seeds is empty")
        if any(s < 0 for s in values):
            raise ValueError("seeds must be >= 0")
        return v

    # -------------------------------------------------------------------- conveniences
    @property
    def seed_list(self) -> list[int]:
        return [int(s) for s in _as_list(self.seeds)]

    @property
    def fraction_list(self) -> list[float]:
        return [float(f) for f in _as_list(self.clean_fraction)]

    def resolve(self, path: str | None) -> Path | None:
        """A path from the spec, made absolute against ``base_dir``."""
        if path is None:
            return None
        p = Path(path).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = Path(self.base_dir) / p
        return p


# ---------------------------------------------------------------------------------------- loading
def parse_spec(data: dict[str, Any], *, base_dir: str | Path | None = None) -> Spec:
    """Validate a spec given as a mapping; errors are one-line :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"spec: expected a mapping of keys, got {type(data).__name__}")
    data = dict(data)
    if data.get("preset") is not None:  # paper presets fill what the spec leaves open (backdoorkit.presets)
        from backdoorkit.presets import apply_to_spec

        data = apply_to_spec(data)
    if base_dir is not None and data.get("base_dir") is None:
        data["base_dir"] = str(Path(base_dir).resolve())
    try:
        spec = Spec(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Spec, "spec")) from None
    check_spec(spec)
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec file (relative paths resolve against its folder)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such spec file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise ConfigError(f"{path}: spec of {path.stat().st_size:,} bytes is larger than {MAX_SPEC_BYTES:,}")
    try:
        data = read_yaml(path.read_bytes())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return parse_spec(data or {}, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


MAX_SPEC_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000
"""Bounds of a spec file: its size, its nesting, and its number of values once aliases are expanded
(so a "billion laughs" file is refused before anything expands it)."""


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys, nesting deeper than :data:`MAX_YAML_DEPTH` and
    documents of more than :data:`MAX_YAML_NODES` values after alias expansion."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(f"nested deeper than {MAX_YAML_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable keys are refused by the constructor itself
                if duplicate:
                    raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
        return super().construct_mapping(node, deep)


def _check_expanded_size(root: Any) -> None:
    """Count the values of a composed YAML document as if every alias were copied (memoised, linear)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            kids = _children(node)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[key] > MAX_YAML_NODES:
                raise ConfigError(f"more than {MAX_YAML_NODES:,} values once its aliases are expanded")
            continue
        if key in sizes:
            continue
        if key in active:
            raise ConfigError("a recursive alias")
        active.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in sizes)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def read_yaml(text: str | bytes) -> Any:
    """A YAML document through :class:`_SpecLoader` (safe tags only, the bounds above)."""
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (through lists, unions, optionals)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, root: type[BaseModel], owner: str) -> str:
    """The first pydantic error as one line naming the key and, for unknown keys, the allowed ones."""
    err = exc.errors()[0]
    loc = list(err.get("loc", ()))
    where = _loc_text(loc)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden" and loc:
        cls: type[BaseModel] | None = root
        for part in loc[:-1]:
            if isinstance(part, int) or cls is None:
                continue
            info = cls.model_fields.get(str(part))
            cls = _model_class(info.annotation) if info is not None else None
        allowed = ", ".join(cls.model_fields) if cls is not None else "?"
        parent = _loc_text(loc[:-1])
        return f"{owner}: {parent + ': ' if parent else ''}unknown key {loc[-1]!r}; allowed: {allowed}"
    if err.get("type") == "literal_error":
        return f"{owner}: {where}: {msg}"
    return f"{owner}: {where + ': ' if where else ''}{msg}"


def _loc_text(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# ---------------------------------------------------------------------------------------- semantic checks
def _registries() -> tuple[Any, Any, Any, Any]:
    from backdoorkit.attacks import ATTACKS
    from backdoorkit.data import DATASETS
    from backdoorkit.defenses import DEFENSES
    from backdoorkit.models.registry import MODELS

    return DATASETS, MODELS, ATTACKS, DEFENSES


def _train_fields() -> list[str]:
    from backdoorkit.train import TrainConfig

    return list(TrainConfig.model_fields)


def _check_train(where: str, overrides: dict[str, Any]) -> None:
    from backdoorkit.train import TrainConfig

    allowed = _train_fields()
    for key in overrides:
        if key not in allowed:
            raise ConfigError(f"spec: {where}: unknown training key {key!r}; allowed: {', '.join(allowed)}")
    refuse_bools(overrides, TrainConfig, f"spec: {where}")


def _check_model_values(i: int, m: ModelEntry) -> None:
    """Width and architecture arguments in their bounds (every value of a list), before any cell."""
    from backdoorkit.models.registry import check_model_args

    values = {"width": m.width, **m.kwargs}
    for key, value in values.items():
        for v in value if isinstance(value, list) and key not in ("mean", "std") else [value]:
            try:
                check_model_args(m.arch.lower(), {key: v})
            except ConfigError as exc:
                raise ConfigError(f"spec: models[{i}]: {exc}") from None


def check_spec(spec: Spec) -> None:
    """Names, keys and ranges that pydantic alone cannot check (registries, training keys).

    Method parameters are checked where the matrix is expanded, by building each attack / defense
    once (:func:`build_method`): their ``Params`` models forbid unknown keys.
    """
    datasets, models, attacks, defenses = _registries()
    for key in ("datasets", "models", "attacks", "defenses"):
        if not getattr(spec, key):
            raise ConfigError(f"spec: {key} is empty, so the matrix has no cells")
    for i, ds in enumerate(spec.datasets):
        if ds.name.lower() not in datasets and not _dataset_path(spec, ds.name).exists():
            raise ConfigError(
                f"spec: datasets[{i}]: unknown dataset {ds.name!r}; "
                f"registered: {', '.join(datasets.names())} "
                "(or give a path to a dataset file or folder)"
            )
        for key in ("subset", "test_subset"):
            value = getattr(ds, key)
            if value is not None and (value <= 0 or (isinstance(value, float) and value > 1)):
                raise ConfigError(
                    f"spec: datasets[{i}].{key}: {value} is neither a fraction in (0, 1] nor a count >= 1"
                )
        _check_train(f"datasets[{i}].train", ds.train)
    _check_train("train", spec.train)
    for i, m in enumerate(spec.models):
        if m.arch.lower() not in models:
            raise ConfigError(
                f"spec: models[{i}]: unknown model {m.arch!r}; available: {', '.join(models.names())}"
            )
        accepted = models.entry(m.arch).meta["args"]
        if m.width is not None and "width" not in accepted:
            raise ConfigError(
                f"spec: models[{i}]: {m.arch} takes no width; it takes {', '.join(accepted) or 'nothing'}"
            )
        for key in m.kwargs:
            if key not in accepted or key == "width":
                raise ConfigError(
                    f"spec: models[{i}].kwargs: {m.arch} does not take {key!r}; allowed: "
                    + (", ".join(a for a in accepted if a != "width") or "nothing besides width")
                )
        _check_model_values(i, m)
        _check_train(f"models[{i}].train", m.train)
        if m.finetune is not None:
            _check_train(f"models[{i}].finetune", m.finetune)
    for i, a in enumerate(spec.attacks):
        if a.name.lower() == NO_ATTACK:
            continue
        if a.name.lower() not in attacks:
            if a.optional:
                continue
            known = ", ".join([NO_ATTACK, *attacks.names()])
            raise ConfigError(
                f"spec: attacks[{i}]: unknown attack {a.name!r}{_hint(a.name, attacks.names())}; "
                f"available: {known}"
            )
    for i, d in enumerate(spec.defenses):
        name = d.name.lower()
        if name == ALL_DEFENSES:
            for key, value in d.params.items():
                if key in defenses and isinstance(value, dict):
                    continue
                if key in defenses:
                    raise ConfigError(f"spec: defenses[{i}].params.{key}: expected a mapping of parameters")
                if key not in defenses:
                    raise ConfigError(
                        f'spec: defenses[{i}].params: with name "*" the keys are defense names; '
                        f"{key!r} is not "
                        f"registered (available: {', '.join(defenses.names()) or 'none'})"
                    )
            continue
        if d.exclude:
            raise ConfigError(f'spec: defenses[{i}].exclude: only allowed with name "*"')
        if name == NO_DEFENSE:
            if d.params:
                raise ConfigError(f"spec: defenses[{i}]: the 'none' defense takes no params")
            continue
        if name not in defenses:
            if d.optional:
                continue
            known = ", ".join([NO_DEFENSE, ALL_DEFENSES, *defenses.names()])
            raise ConfigError(
                f"spec: defenses[{i}]: unknown defense {d.name!r}{_hint(d.name, defenses.names())}; "
                f"available: {known}"
            )
    if not spec.scenarios:
        raise ConfigError(f"spec: scenarios is empty; allowed: {', '.join(SCENARIOS)}")
    if spec.device != "auto":
        import torch

        from backdoorkit.device import DEVICE_TYPES

        try:
            kind = torch.device(spec.device).type
        except (RuntimeError, ValueError):
            kind = None
        if kind not in DEVICE_TYPES:
            raise ConfigError(
                f"spec: device: {spec.device!r} is not a device (auto, cpu, cuda, cuda:1, mps)"
            ) from None


def _hint(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name.lower(), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dataset_path(spec: Spec, name: str) -> Path:
    return spec.resolve(name) or Path(name)


# ---------------------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class DatasetRef:
    """How a cell loads its data (hashable, so workers can cache loaded sets by it)."""

    name: str
    label: str
    subset: int | float | None = None
    test_subset: int | float | None = None
    image_size: int | None = None
    data_root: str | None = None
    identity: str = ""

    def identity_dict(self) -> dict[str, Any]:
        return {
            "source": self.identity,
            "subset": self.subset,
            "test_subset": self.test_subset,
            "image_size": self.image_size,
        }


@dataclass
class Cell:
    """One cell of the matrix: everything a worker needs to compute one result row."""

    dataset: DatasetRef
    model: dict[str, Any]
    model_label: str
    train: dict[str, Any]
    attack: str
    attack_params: dict[str, Any]
    attack_label: str
    defense: str
    defense_params: dict[str, Any]
    defense_label: str
    defense_kind: str
    scenario: str | None
    seed: int
    clean_fraction: float
    clean_model: bool = True
    device: str = "auto"
    skip_reason: str | None = None
    requested_scenario: str | None = None
    min_victim_asr: float | None = None
    """The spec's gate (not part of the identity: it decides whether the cell runs, not its result)."""
    hash: str = ""

    # identity ------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What determines this cell's result (hashed canonically)."""
        return {
            "dataset": self.dataset.identity_dict(),
            "model": self.model,
            "train": self.train,
            "attack": {"name": self.attack, "params": self.attack_params},
            "defense": {
                "name": self.defense,
                "params": self.defense_params,
                # a skipped cell has no scenario; the one it asked for tells skips apart
                "scenario": self.scenario
                if self.skip_reason is None
                else {"requested": self.requested_scenario},
            },
            "seed": self.seed,
            "clean_fraction": self.clean_fraction,
        }

    def clean_group(self) -> str:
        """Cells sharing the clean reference model."""
        ident = self.identity()
        return hash_key(
            "clean", ident["dataset"], ident["model"], ident["train"], self.seed, self.clean_fraction
        )

    def trunk(self) -> str:
        """Cells sharing the poisoned set and the backdoored model."""
        return hash_key("trunk", self.clean_group(), self.attack, self.attack_params)

    @property
    def runnable(self) -> bool:
        return self.skip_reason is None

    def coordinates(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset.label,
            "model": self.model_label,
            "attack": self.attack_label,
            "defense": self.defense_label,
            "seed": self.seed,
            "clean_fraction": self.clean_fraction,
        }


def canonical(obj: Any) -> Any:
    """JSON-normalised copy (tuples -> lists, sorted keys when dumped, non-JSON -> str)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def cell_hash(identity: dict[str, Any]) -> str:
    return hash_key(canonical(identity))


def stands_for(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a result stored under identity ``old`` is the result of identity ``new``: equal, or equal
    but for attack / defense parameters added to the method since, each at its default.

    A new parameter whose default keeps the method's old behaviour (Blended's ``clean_label``, say)
    changes every cell hash of that method; without this, ``--resume`` would rerun hours of finished
    cells whose result it cannot change.  A parameter whose *value* changed, or one added at a value other
    than its default, still makes a new cell.
    """
    old, new = canonical(old), canonical(new)
    if old == new:
        return True
    from backdoorkit.attacks import ATTACKS
    from backdoorkit.defenses import DEFENSES

    trimmed = new  # canonical() made it a fresh copy
    for kind, registry in (("attack", ATTACKS), ("defense", DEFENSES)):
        mine, theirs = trimmed.get(kind), old.get(kind)
        if not (isinstance(mine, dict) and isinstance(theirs, dict)):
            continue
        if mine.get("name") != theirs.get("name"):
            return False
        params, before = mine.get("params"), theirs.get("params")
        if not isinstance(params, dict) or not isinstance(before, dict) or not (set(params) - set(before)):
            continue
        try:
            fields = registry.get(str(mine["name"])).Params.model_fields
        except BackdoorkitError:  # an unregistered name: nothing to compare against
            return False
        for key in set(params) - set(before):
            field = fields.get(key)
            if field is None or field.is_required():
                return False
            if canonical(field.get_default(call_default_factory=True)) != params[key]:
                return False
            del params[key]
    return trimmed == old


# ---------------------------------------------------------------------------------------- expansion
def _takes_sequence(annotation: Any) -> bool:
    """Whether a parameter annotation accepts a list/tuple value (so a plain list does not expand)."""
    if annotation in (list, tuple, set, frozenset):
        return True
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        return True
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_takes_sequence(a) for a in typing.get_args(annotation))
    return False


def expand_values(
    values: dict[str, Any], sequence_keys: set[str] | frozenset[str] = frozenset()
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Cartesian product over list values; returns ``[(values, varied)]``.

    ``varied`` holds the keys that took several values (for labels).  A key in ``sequence_keys``
    (a parameter that takes a list itself) expands only when given a list of lists.
    """
    axes: list[tuple[str, list[Any]]] = []
    for key in sorted(values):
        v = values[key]
        if isinstance(v, list) and (key not in sequence_keys or (v and all(isinstance(x, list) for x in v))):
            if not v:
                raise ConfigError(f"spec: {key}: empty list")
            axes.append((key, v))
        else:
            axes.append((key, [v]))
    out = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        chosen = {k: c for (k, _), c in zip(axes, combo, strict=True)}
        varied = {k: c for (k, vals), c in zip(axes, combo, strict=True) if len(vals) > 1}
        out.append((chosen, varied))
    return out


def _flatten(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in d.items()}


def _unflatten(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def _label(base: str, varied: dict[str, Any]) -> str:
    if not varied:
        return base
    return base + " " + ",".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in sorted(varied.items()))


def _train_sequence_keys(prefix: str) -> set[str]:
    from backdoorkit.train import TrainConfig

    return {f"{prefix}{k}" for k, f in TrainConfig.model_fields.items() if _takes_sequence(f.annotation)}


def _param_sequence_keys(params_cls: type[BaseModel]) -> set[str]:
    return {k for k, f in params_cls.model_fields.items() if _takes_sequence(f.annotation)}


@dataclass
class _Variant:
    kind: str
    name: str
    label: str
    params: dict[str, Any]
    identity: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None


def _disambiguate(variants: list[_Variant]) -> None:
    """Give different variants that ended up with the same label distinct labels: the parameters
    that differ within the group are appended, to an explicit ``label:`` too (an entry such as
    ``{label: "BadRes rate", rate: [0.025, 0.05]}`` expands into one label per rate; without this the
    cells would share one report column and all but one would be hidden)."""
    by_label: dict[str, list[_Variant]] = {}
    for v in variants:
        by_label.setdefault(v.label, []).append(v)
    for label, group in by_label.items():
        idents = {json.dumps(canonical(v.identity), sort_keys=True) for v in group}
        if len(idents) < 2:
            continue
        keys = sorted({k for v in group for k in _flat_items(v.params)})
        differ = [k for k in keys if len({_fmt(_flat_items(v.params).get(k)) for v in group}) > 1]
        for v in group:
            flat = _flat_items(v.params)
            v.label = _label(label, {k: flat.get(k) for k in differ}) if differ else label


def _flat_items(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _dataset_variants(spec: Spec) -> list[_Variant]:
    datasets = _registries()[0]
    out = []
    for ds in spec.datasets:
        registered = ds.name.lower() in datasets
        if registered:
            source = {"name": ds.name.lower()}
            name = ds.name.lower()
            base = ds.label or name
        else:
            path = _dataset_path(spec, ds.name).resolve()
            source = {"content": content_digest(path)}
            name = str(path)
            base = ds.label or path.stem
        flat = _flatten("train.", ds.train)
        for values, varied in expand_values(flat, _train_sequence_keys("train.")):
            train = _unflatten(values, "train.")
            ref = DatasetRef(
                name=name,
                label=_label(base, varied) if not ds.label else ds.label,
                subset=ds.subset,
                test_subset=ds.test_subset,
                image_size=ds.image_size,
                data_root=str(spec.resolve(spec.data_root)) if spec.data_root else None,
                identity=json.dumps(source, sort_keys=True),
            )
            ident = {"ref": ref.identity_dict(), "train": train}
            out.append(
                _Variant(
                    "dataset",
                    name,
                    ref.label,
                    {"train": train},
                    ident,
                    {"ref": ref, "train": train},
                )
            )
    _disambiguate(out)
    for v in out:
        v.extra["ref"] = replace(v.extra["ref"], label=v.label)
    return out


def _model_variants(spec: Spec) -> list[_Variant]:
    out = []
    for m in spec.models:
        arch = m.arch.lower()
        flat: dict[str, Any] = {"width": m.width}
        flat.update(_flatten("kwargs.", m.kwargs))
        flat.update(_flatten("train.", spec.train))
        flat.update(_flatten("mtrain.", m.train))
        seq = _train_sequence_keys("train.") | _train_sequence_keys("mtrain.")
        for values, varied in expand_values(flat, seq):
            width = values["width"]
            kwargs = _unflatten(values, "kwargs.")
            spec_train = _unflatten(values, "train.")
            model_train = _unflatten(values, "mtrain.")
            train = {**spec_train, **model_train}
            base = m.label or (f"{arch}-w{width}" if width is not None else arch)
            if m.label is None and m.finetune is not None:
                base += " finetuned"
            model = {"arch": arch, "width": width, "kwargs": kwargs}
            if m.finetune is not None:  # only when set: scratch-trained cells keep their hashes
                model["finetune"] = canonical(m.finetune)
            varied = {k: v for k, v in varied.items() if k != "width"} if m.label is None else {}
            label = _label(base, varied) if m.label is None else m.label
            ident = {"model": model, "train": train}
            out.append(
                _Variant(
                    "model",
                    arch,
                    label,
                    {"width": width, "kwargs": kwargs, "train": train},
                    ident,
                    {"model": model, "train": spec_train, "model_train": model_train},
                )
            )
    _disambiguate(out)
    return out


def _attack_variants(spec: Spec) -> list[_Variant]:
    attacks = _registries()[2]
    out = []
    repeated = collections.Counter(a.name.lower() for a in spec.attacks)
    for i, a in enumerate(spec.attacks):
        name = a.name.lower()
        params = dict(a.params)
        if a.target is not None:
            params["target"] = a.target
        if a.rate is not None:
            params["rate"] = a.rate
        if name == NO_ATTACK:
            out.append(
                _Variant(
                    "attack",
                    NO_ATTACK,
                    a.label or NO_ATTACK,
                    {},
                    {"name": NO_ATTACK, "params": {}},
                )
            )
            continue
        if name not in attacks:  # optional and missing
            label = a.label or name
            out.append(
                _Variant(
                    "attack",
                    name,
                    label,
                    params,
                    {"name": name, "params": canonical(params)},
                    skip=f"attack {name!r} is not registered in this installation",
                )
            )
            continue
        cls = attacks.get(name)
        for values, varied in expand_values(params, _param_sequence_keys(cls.Params)):
            attack = build_method(cls, values, f"attacks[{i}].params")
            described = canonical({k: v for k, v in attack.describe().items() if k != "attack"})
            # an attack listed in several entries names the parameters each entry gives
            shown = values if repeated[name] > 1 else varied
            label = a.label or _label(name, shown)
            out.append(
                _Variant(
                    "attack",
                    name,
                    label,
                    values,
                    {"name": name, "params": described},
                    {"params": described},
                )
            )
    _disambiguate(out)
    return out


def _defense_variants(spec: Spec) -> list[_Variant]:
    defenses = _registries()[3]
    out: list[_Variant] = []
    explicit = {d.name.lower() for d in spec.defenses}
    counts = collections.Counter(d.name.lower() for d in spec.defenses)
    for i, d in enumerate(spec.defenses):
        name = d.name.lower()
        if name == NO_DEFENSE:
            out.append(
                _Variant(
                    "defense",
                    NO_DEFENSE,
                    d.label or NO_DEFENSE,
                    {},
                    {"name": NO_DEFENSE, "params": {}},
                    {"kind": "none", "scenario": d.scenario},
                )
            )
            continue
        if name == ALL_DEFENSES:
            excluded = {x.lower() for x in d.exclude}
            for entry in defenses.entries():
                if entry.name in explicit or entry.name in excluded:
                    continue
                given = dict(d.params.get(entry.name) or {})
                out.extend(
                    _one_defense(
                        entry.name,
                        given,
                        None,
                        d.scenario,
                        where=f"defenses[{i}].params.{entry.name}",
                        lenient=not given,
                    )
                )
            continue
        if name not in defenses:  # optional and missing
            out.append(
                _Variant(
                    "defense",
                    name,
                    d.label or name,
                    d.params,
                    {"name": name, "params": canonical(d.params)},
                    {"kind": "?", "scenario": d.scenario},
                    skip=f"defense {name!r} is not registered in this installation",
                )
            )
            continue
        out.extend(
            _one_defense(
                name,
                dict(d.params),
                d.label,
                d.scenario,
                where=f"defenses[{i}].params",
                lenient=False,
                repeated=counts[name] > 1,
            )
        )
    _disambiguate(out)
    return out


def _one_defense(
    name: str,
    params: dict[str, Any],
    label: str | None,
    scenario: str | None,
    *,
    where: str,
    lenient: bool,
    repeated: bool = False,
) -> list[_Variant]:
    """Variants of one registered defense; ``lenient``: a defense that cannot be built with its defaults
    becomes a skipped variant instead of an error (for ``"*"``)."""
    defenses = _registries()[3]
    cls = defenses.get(name)
    out = []
    for values, varied in expand_values(params, _param_sequence_keys(cls.Params)):
        try:
            defense = build_method(cls, values, where)
        except ConfigError as exc:
            if not lenient:
                raise
            out.append(
                _Variant(
                    "defense",
                    name,
                    label or name,
                    values,
                    {"name": name, "params": canonical(values)},
                    {"kind": cls.kind, "scenario": scenario, "scenarios": _scenarios_of(cls)},
                    skip=f"{name} cannot run with default parameters ({exc})",
                )
            )
            continue
        described = canonical({k: v for k, v in defense.describe().items() if k != "defense"})
        out.append(
            _Variant(
                "defense",
                name,
                label or _label(name, values if repeated else varied),
                values,
                {"name": name, "params": described},
                {
                    "kind": cls.kind,
                    "scenario": scenario,
                    "scenarios": _scenarios_of(cls),
                    "params": described,
                },
            )
        )
    return out


def build_method(cls: Any, values: dict[str, Any], where: str) -> Any:
    """``cls(**values)`` for an attack or defense class, ``where`` its parameters in the spec; a bad
    parameter is a one-line :class:`ConfigError` ``"spec: <where> (<name>): ..."`` (an unknown key lists
    the allowed ones, through :func:`format_validation_error` on the class's ``Params``)."""
    owner = f"spec: {where}" + ("" if where.endswith(f".{cls.name}") else f" ({cls.name})")
    refuse_bools(values, cls.Params, owner)
    try:
        cls.Params.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, cls.Params, owner)) from None
    try:
        return cls(**values)
    except BackdoorkitError as exc:
        raise ConfigError(f"{owner}: {str(exc).removeprefix(cls.name + ': ')}") from None


def _scenarios_of(cls: Any) -> list[str]:
    return [str(getattr(s, "value", s)) for s in cls.scenarios]


@dataclass
class Plan:
    """The expanded matrix: every cell (runnable and skipped) and the spec hash."""

    spec: Spec
    cells: list[Cell]
    spec_hash: str

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if c.runnable]

    @property
    def skipped(self) -> list[Cell]:
        return [c for c in self.cells if not c.runnable]


def expand(spec: Spec) -> Plan:
    """Expand a spec into its cells (dataset x model x attack x defense x seed x clean fraction)."""
    datasets = _dataset_variants(spec)
    models = _model_variants(spec)
    attacks = _attack_variants(spec)
    defenses = _defense_variants(spec)
    cells: list[Cell] = []
    seen: set[str] = set()
    for ds, mo, atk, dfn, seed, frac in itertools.product(
        datasets, models, attacks, defenses, spec.seed_list, spec.fraction_list
    ):
        # recipe_for(dataset) < spec train < dataset train < model train
        train = {**mo.extra["train"], **ds.extra["train"], **mo.extra["model_train"]}
        _validate_train(train)
        if "finetune" in mo.extra["model"]:
            _validate_train({**train, **mo.extra["model"]["finetune"]}, where=f"{mo.label}: finetune")
        scenario: str | None = None
        reason = atk.skip or dfn.skip
        if reason is None and dfn.name != NO_DEFENSE:
            scenario, reason = choose_scenario(
                dfn.name,
                dfn.extra.get("scenarios", []),
                list(spec.scenarios),
                dfn.extra.get("scenario"),
                frac,
            )
        cell = Cell(
            dataset=ds.extra["ref"],
            model=mo.extra["model"],
            model_label=mo.label,
            train=canonical(train),
            attack=atk.name,
            attack_params=atk.identity["params"],
            attack_label=atk.label,
            defense=dfn.name,
            defense_params=dfn.identity["params"],
            defense_label=dfn.label,
            defense_kind=dfn.extra.get("kind", "none"),
            scenario=scenario,
            seed=seed,
            clean_fraction=frac,
            clean_model=spec.clean_model,
            device=spec.device,
            skip_reason=reason,
            requested_scenario=dfn.extra.get("scenario"),
            min_victim_asr=spec.min_victim_asr,
        )
        cell.hash = cell_hash(cell.identity())
        if cell.hash in seen:
            continue
        seen.add(cell.hash)
        cells.append(cell)
    spec_hash = hash_key(sorted(c.hash for c in cells))
    return Plan(spec, cells, spec_hash)


@functools.lru_cache(maxsize=256)
def _validate_train_json(blob: str, where: str = "train") -> None:
    from backdoorkit.train import train_config

    try:
        train_config(**json.loads(blob))
    except ConfigError as exc:
        raise ConfigError(f"spec: {where}: {str(exc).removeprefix('training config: ')}") from None


def _validate_train(train: dict[str, Any], where: str = "train") -> None:
    """Check a cell's training overrides against :class:`~backdoorkit.train.TrainConfig`."""
    _validate_train_json(json.dumps(canonical(train), sort_keys=True), where)


def content_digest(path: Path) -> str:
    """A digest of a dataset file's bytes, or of a folder's file names and sizes."""
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:20]
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:20]
