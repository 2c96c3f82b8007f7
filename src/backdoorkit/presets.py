"""Paper presets: one name that sets what a paper's experiments ran with.

A :class:`Preset` fixes, for one paper, the victims' triggers (attack parameters per attack name), the
poison rate and target, the victim training (augmentation, precision and two schedules: ``paper``, the
paper's own epochs and rates, and ``fast``, :data:`backdoorkit.pipeline.FAST_SCHEDULE`, a short
schedule to the same clean accuracy), the defenses' parameters and the defender's data split.  Every
field is a default: whatever a spec, the CLI or a caller gives explicitly wins.

Registered presets (:data:`PRESETS`):

* ``ssft_paper`` - Yang et al., "Backdoor Defense via Suppressing Model Shortcuts", ICASSP 2023, and
  its official code (``train_backdoormodel.py``, ``SSFT.py``): BadNets a 3x3 white square at the
  bottom-right; Blended that same patch blended at alpha 0.2; WaNet static without noise mode
  (``cross_ratio=0``); label-consistent eps 8/255, 5 % of the target class, corners mirrored
  left-right, a full-width attacker model; rate 5 %, target 1.  Victims: 200 epochs, SGD lr 0.1
  (momentum 0.9, no Nesterov, weight decay 5e-4), x0.1 at epochs 150 and 180, batch 128, horizontal
  flip only, fp32.  Defenses: 10 % clean samples never seen by the victim (5,000 on CIFAR-10; the
  official code took test images, we split them off the training set before poisoning), the official
  layer score (``score="official"``), fine-tuning without augmentation with the whole model in train
  mode (``frozen_bn="train"``).
* ``trap_replace_paper`` - Wang et al., "Trap and Replace", NeurIPS 2022: BadNets the 3x3 grid, rate
  10 %, target 0, 5 % clean holdout excluded from training; victims 200 epochs Adam lr 1e-3, cosine,
  batch 256, crop + flip.
* ``badres_paper`` - BadRes (arXiv 2209.07125): backdoor rate 0.2, target 0, 20 epochs AdamW lr 5e-5,
  batch 32 (its ViT fine-tuning setting).

Augmentation names are those of ``TrainConfig.augment``: ``crop_flip`` (the trainer's standard crop +
flip), ``crop``, ``flip`` (horizontal flip only, the SSFT victims') and ``none``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backdoorkit.errors import ConfigError

Augmentation = Literal["crop_flip", "flip", "none"]
ScheduleName = Literal["paper", "fast"]
SCHEDULE_NAMES: tuple[str, ...] = ("paper", "fast")


class Preset(BaseModel):
    """One paper's setting (see the module docstring); every value is a default a caller may override."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    paper: str
    target: int = Field(0, ge=0)
    rate: float = Field(0.1, gt=0, le=1)
    attacks: dict[str, dict[str, Any]] = Field(default_factory=dict, description="attack -> params")
    schedules: dict[str, dict[str, Any]] = Field(default_factory=dict, description="TrainConfig fields")
    augmentation: dict[str, Augmentation] = Field(default_factory=dict, description="per schedule")
    defenses: dict[str, dict[str, Any]] = Field(default_factory=dict, description="defense -> params")
    clean_fraction: float = Field(0.1, gt=0, lt=1, description="defender's clean split (never trained on)")
    notes: str = ""

    def schedule(self, name: str) -> dict[str, Any]:
        if name not in SCHEDULE_NAMES:
            raise ConfigError(f"preset {self.name}: unknown schedule {name!r} ({', '.join(SCHEDULE_NAMES)})")
        from backdoorkit.pipeline import FAST_SCHEDULE

        base = dict(FAST_SCHEDULE) if name == "fast" else {}
        base.update(self.schedules.get(name, {}))
        return base

    def augmentation_of(self, schedule: str = "paper") -> Augmentation:
        return self.augmentation.get(schedule, "crop_flip")

    def train(self, schedule: str = "paper", **overrides: Any) -> dict[str, Any]:
        """TrainConfig overrides of the victim training for ``schedule`` (``paper`` / ``fast``)."""
        out = self.schedule(schedule)
        out["augment"] = self.augmentation_of(schedule)
        out.update({k: v for k, v in overrides.items() if v is not None})
        return out

    def attack(self, name: str, **overrides: Any) -> dict[str, Any]:
        """Parameters of attack ``name`` (``target`` and ``rate`` included) with ``overrides`` on top."""
        params = {"target": self.target, "rate": self.rate, **copy.deepcopy(self.attacks.get(name, {}))}
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    def defense(self, name: str, **overrides: Any) -> dict[str, Any]:
        """Parameters of defense ``name`` (``{}`` for defenses the paper does not set)."""
        params = copy.deepcopy(self.defenses.get(name, {}))
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params


_SSFT_TUNE: dict[str, Any] = {"augment": False, "frozen_bn": "train"}
_SSFT_SELECT: dict[str, Any] = {"score": "official"}

PRESETS: dict[str, Preset] = {
    "ssft_paper": Preset(
        name="ssft_paper",
        paper="Yang et al., Backdoor Defense via Suppressing Model Shortcuts, ICASSP 2023",
        target=1,
        rate=0.05,
        attacks={
            "badnets": {"variant": "white", "size": 3, "margin": 0},
            "blended": {"pattern": "patch", "patch_size": 3, "alpha": 0.2},
            "wanet": {"cross_ratio": 0.0, "poisoning": "static"},
            "label_consistent": {
                "eps": 8 / 255,
                "class_fraction": 0.05,
                "corners": "all_lr",
                "attacker_width": None,
            },
        },
        schedules={
            "paper": {
                "epochs": 200,
                "batch_size": 128,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "nesterov": False,
                "weight_decay": 5e-4,
                "schedule": "step",
                "milestones": (0.75, 0.9),
                "step_factor": 0.1,
                "label_smoothing": 0.0,
                "amp": False,
                "channels_last": None,
            },
            "fast": {"amp": None},
        },
        augmentation={"paper": "flip", "fast": "crop_flip"},
        defenses={
            "ssft": {**_SSFT_SELECT, **_SSFT_TUNE},
            "ft_critical": {**_SSFT_SELECT, **_SSFT_TUNE},
            "ss": dict(_SSFT_SELECT),
            "ft_fc": dict(_SSFT_TUNE),
            "ft_all": dict(_SSFT_TUNE),
        },
        clean_fraction=0.1,
        notes="fine-tuning defenses: lr 0.01, 10 epochs, batch 128 (the TuneParams defaults)",
    ),
    "trap_replace_paper": Preset(
        name="trap_replace_paper",
        paper="Wang et al., Training with More Confidence: Mitigating Injected and Natural Backdoors "
        "During Training (Trap and Replace), NeurIPS 2022",
        target=0,
        rate=0.1,
        attacks={"badnets": {"variant": "grid", "size": 3, "margin": 0}},
        schedules={
            "paper": {
                "epochs": 200,
                "batch_size": 256,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 5e-4,
                "schedule": "cosine",
                "label_smoothing": 0.0,
            },
        },
        augmentation={"paper": "crop_flip", "fast": "crop_flip"},
        clean_fraction=0.05,
    ),
    "badres_paper": Preset(
        name="badres_paper",
        paper="Reveal the Backdoors through Residual Connection (BadRes), arXiv:2209.07125",
        target=0,
        rate=0.2,
        schedules={
            "paper": {
                "epochs": 20,
                "batch_size": 32,
                "optimizer": "adamw",
                "lr": 5e-5,
                "schedule": "constant",
            },
        },
        augmentation={"paper": "none", "fast": "crop_flip"},
        clean_fraction=0.1,
    ),
}


def get_preset(name: str) -> Preset:
    """The registered preset ``name`` (one-line :class:`ConfigError` naming the choices otherwise)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_ref(value: Any) -> tuple[Preset, str]:
    """``"ssft_paper"`` or ``{"name": "ssft_paper", "schedule": "fast"}`` -> (preset, schedule)."""
    if isinstance(value, str):
        return get_preset(value), "paper"
    if isinstance(value, dict) and set(value) <= {"name", "schedule"} and isinstance(value.get("name"), str):
        schedule = str(value.get("schedule", "paper"))
        if schedule not in SCHEDULE_NAMES:
            raise ConfigError(f"preset: unknown schedule {schedule!r} ({', '.join(SCHEDULE_NAMES)})")
        return get_preset(value["name"]), schedule
    raise ConfigError("preset: give a name or {name: ..., schedule: paper|fast}")


def _entry(value: Any, key: str) -> Any:
    return {key: value} if isinstance(value, str) else value


def apply_to_spec(data: dict[str, Any]) -> dict[str, Any]:
    """A spec mapping with its ``preset:`` applied (a new mapping; no ``preset`` key: unchanged).

    The preset fills what the spec leaves open: the training config (``train``), each attack entry's
    ``params`` / ``target`` / ``rate``, the parameters of the defenses it knows and ``clean_fraction``.
    Explicit values in the spec always win.
    """
    if data.get("preset") is None:
        return data
    preset, schedule = preset_ref(data["preset"])
    out = dict(data)
    train = data.get("train") or {}
    if not isinstance(train, dict):
        return out  # the schema reports the malformed key
    out["train"] = {**preset.train(schedule), **train}
    out.setdefault("clean_fraction", preset.clean_fraction)
    attacks = data.get("attacks")
    if isinstance(attacks, (list, str, dict)):
        items = attacks if isinstance(attacks, list) else [attacks]
        new = []
        for item in items:
            entry = _entry(item, "name")
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"] != "none":
                entry = dict(entry)
                base = preset.attack(entry["name"])
                entry.setdefault("target", base.pop("target"))
                entry.setdefault("rate", base.pop("rate"))
                base.pop("target", None), base.pop("rate", None)
                entry["params"] = {**base, **(entry.get("params") or {})}
            new.append(entry)
        out["attacks"] = new
    defenses = data.get("defenses")
    if isinstance(defenses, (list, str, dict)):
        items = defenses if isinstance(defenses, list) else [defenses]
        new = []
        for item in items:
            entry = _entry(item, "name")
            if isinstance(entry, dict) and entry.get("name") in preset.defenses:
                entry = dict(entry)
                entry["params"] = {**preset.defense(entry["name"]), **(entry.get("params") or {})}
            new.append(entry)
        out["defenses"] = new
    return out


def parse_cli(value: str) -> tuple[Preset, str]:
    """``--preset NAME`` or ``--preset NAME:fast`` -> (preset, schedule)."""
    name, _, schedule = value.partition(":")
    return preset_ref({"name": name, "schedule": schedule or "paper"})


def preset_attack(
    preset: str | None, attack: str, target: int | None, params: dict[str, Any]
) -> dict[str, Any]:
    """``build_attack`` keyword arguments for the CLI: the preset's parameters under explicit ones
    (``target=None``: the preset's target, or 0 without a preset)."""
    if preset is None:
        return {"target": 0 if target is None else target, **params}
    return parse_cli(preset)[0].attack(attack, target=target, **params)


def preset_train(preset: str | None, **explicit: Any) -> dict[str, Any]:
    """``recipe_for`` overrides for the CLI: the preset's schedule under the explicit options (``None``:
    not given)."""
    given = {k: v for k, v in explicit.items() if v is not None}
    if preset is None:
        return given
    p, schedule = parse_cli(preset)
    return p.train(schedule, **given)
