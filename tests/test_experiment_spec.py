"""Experiment specs: validation errors, matrix expansion, hash stability (no training here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from backdoorkit.errors import ConfigError
from backdoorkit.experiment.spec import choose_scenario, expand, load_spec, parse_spec

BASE: dict[str, Any] = {"datasets": "digits", "models": "resnet18", "attacks": "badnets"}


def spec_of(**kw: Any) -> Any:
    return parse_spec({**BASE, **kw})


def error_of(**kw: Any) -> str:
    with pytest.raises(ConfigError) as exc:
        expand(spec_of(**kw))
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("bad", "must"),
    [
        ({"foo": 1}, ["unknown key 'foo'", "allowed:", "datasets", "clean_fraction"]),
        ({"attacks": [{"name": "badnets", "parms": {}}]}, ["attacks[0]", "'parms'", "params, target, rate"]),
        (
            {"attacks": ["badnet"]},
            ["unknown attack 'badnet'", "did you mean 'badnets'", "available: none, badnets"],
        ),
        ({"defenses": ["nosuch"]}, ["unknown defense 'nosuch'", "available: none, *"]),
        ({"models": ["resnet"]}, ["unknown model 'resnet'", "resnet18"]),
        ({"datasets": ["nodata"]}, ["unknown dataset 'nodata'", "digits"]),
        (
            {"attacks": [{"name": "badnets", "params": {"sizee": 3}}]},
            ["'sizee'", "allowed:", "size", "margin"],
        ),
        ({"models": [{"arch": "resnet18", "kwargs": {"depth": 3}}]}, ["does not take 'depth'"]),
        ({"train": {"epoch": 3}}, ["unknown training key 'epoch'", "epochs"]),
        ({"scenarios": ["S4"]}, ["scenarios[0]", "'S1', 'S2' or 'S3'"]),
    ],
)
def test_unknown_names_and_keys_list_the_allowed_values(bad: dict[str, Any], must: list[str]) -> None:
    msg = error_of(**bad)
    for part in must:
        assert part in msg, (part, msg)


@pytest.mark.parametrize(
    ("bad", "must"),
    [
        ({"clean_fraction": 1.5}, "clean_fraction"),
        ({"clean_fraction": [0.1, -0.1]}, "clean_fraction"),
        ({"seeds": [-1]}, "seeds"),
        ({"attacks": [{"name": "badnets", "rate": 2.0}]}, "rate 2.0"),
        ({"attacks": [{"name": "badnets", "params": {"size": 0}}]}, "size"),
        ({"train": {"epochs": -1}}, "epochs"),
        ({"train": {"lr": [0.1, -1.0]}}, "lr"),
        ({"datasets": [{"name": "digits", "subset": 0}]}, "subset"),
        ({"device": "gpu-ish"}, "device"),
        ({"min_victim_asr": 1.5}, "min_victim_asr"),
    ],
)
def test_bad_ranges_are_one_line_errors(bad: dict[str, Any], must: str) -> None:
    assert must in error_of(**bad)


def test_load_spec_reports_file_and_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [digits\nmodels: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({**BASE, "seedz": [0]}))
    with pytest.raises(ConfigError, match=r"unknown\.yaml: spec: unknown key 'seedz'"):
        load_spec(unknown)


def test_lists_expand_into_the_matrix() -> None:
    plan = expand(
        spec_of(
            models=[{"arch": "resnet18", "width": [4, 8]}],
            attacks=["badnets", {"name": "badnets", "params": {"size": [2, 4]}}],
            seeds=[0, 1],
            defenses=["none"],
        )
    )
    assert len(plan.cells) == 2 * 3 * 2
    assert {c.model_label for c in plan.cells} == {"resnet18-w4", "resnet18-w8"}
    assert {c.attack_label for c in plan.cells} == {"badnets", "badnets size=2", "badnets size=4"}
    assert len({c.hash for c in plan.cells}) == len(plan.cells)


def test_repeated_methods_get_labels_naming_their_parameters() -> None:
    plan = expand(
        spec_of(
            attacks=[
                "badnets",
                {"name": "badnets", "rate": 0.2},
                {"name": "badnets", "params": {"size": 4}, "label": "big patch"},
            ]
        )
    )
    assert {c.attack_label for c in plan.cells} == {"badnets", "badnets rate=0.2", "big patch"}


def test_an_explicit_label_over_a_list_names_each_value() -> None:
    """A labelled entry that expands (a rate sweep) must not put its cells under one label: the report
    would show one of them and hide the rest."""
    plan = expand(
        spec_of(
            attacks=[
                {"name": "badnets", "label": "BadNets"},
                {"name": "badnets", "label": "BadNets poison", "rate": [0.05, 0.2]},
            ],
            models=[{"arch": "resnet18", "label": "r18", "width": [4, 8]}],
        )
    )
    assert {c.attack_label for c in plan.cells} == {
        "BadNets",
        "BadNets poison rate=0.05",
        "BadNets poison rate=0.2",
    }
    assert {c.model_label for c in plan.cells} == {"r18 width=4", "r18 width=8"}
    assert len({(c.model_label, c.attack_label) for c in plan.cells}) == len(plan.cells)


def test_parameters_that_take_lists_expand_only_from_lists_of_lists() -> None:
    fixed = expand(spec_of(train={"milestones": [0.5, 0.75]}))
    assert len(fixed.cells) == 1 and fixed.cells[0].train["milestones"] == [0.5, 0.75]
    swept = expand(spec_of(train={"milestones": [[0.5], [0.6]]}))
    assert len(swept.cells) == 2


def test_training_overrides_layer_in_order() -> None:
    plan = expand(
        spec_of(
            train={"epochs": 3, "lr": 0.1},
            datasets=[{"name": "digits", "train": {"epochs": 2, "batch_size": 64}}],
            models=[{"arch": "resnet18", "train": {"epochs": 1}}],
        )
    )
    assert plan.cells[0].train == {"epochs": 1, "lr": 0.1, "batch_size": 64}


def _hashes(spec: Any) -> dict[tuple[str, str, str, int], str]:
    return {(c.dataset.label, c.attack_label, c.defense_label, c.seed): c.hash for c in expand(spec).cells}


def test_hash_ignores_order_labels_device_and_location(tmp_path: Path) -> None:
    a = {
        "name": "one",
        "datasets": ["digits"],
        "models": [{"arch": "resnet18", "width": 4}],
        "train": {"epochs": 1, "lr": 0.05},
        "attacks": [
            {"name": "badnets", "params": {"size": 3, "margin": 1}},
            {"name": "badnets", "rate": 0.2},
        ],
        "defenses": ["none"],
        "seeds": [0, 1],
        "device": "cpu",
        "db": "a.db",
    }
    b = {
        "seeds": [1, 0],
        "defenses": ["none"],
        "attacks": [
            {"rate": 0.2, "name": "badnets"},
            {"params": {"margin": 1, "size": 3}, "name": "badnets"},
        ],
        "train": {"lr": 0.05, "epochs": 1},
        "models": [{"width": 4, "arch": "resnet18", "label": "small"}],
        "datasets": ["digits"],
        "device": "auto",
        "name": "two",
        "db": "elsewhere/b.db",
    }
    (tmp_path / "x").mkdir()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a, sort_keys=False))
    (tmp_path / "x" / "b.yaml").write_text(yaml.safe_dump(b, sort_keys=True))
    ha = sorted(c.hash for c in expand(load_spec(tmp_path / "a.yaml")).cells)
    hb = sorted(c.hash for c in expand(load_spec(tmp_path / "x" / "b.yaml")).cells)
    assert ha == hb and len(ha) == 4
    assert (
        expand(load_spec(tmp_path / "a.yaml")).spec_hash
        == expand(load_spec(tmp_path / "x" / "b.yaml")).spec_hash
    )


def test_hash_resolves_defaults_and_changes_with_parameters() -> None:
    from backdoorkit.attacks import ATTACKS

    default_size = ATTACKS.get("badnets").Params.model_fields["size"].default
    implicit = expand(spec_of()).cells[0].hash
    explicit = expand(spec_of(attacks=[{"name": "badnets", "params": {"size": default_size}}])).cells[0].hash
    other = expand(spec_of(attacks=[{"name": "badnets", "params": {"size": default_size + 1}}])).cells[0].hash
    assert implicit == explicit
    assert other != implicit
    assert expand(spec_of(seeds=[1])).cells[0].hash != implicit
    assert expand(spec_of(clean_fraction=0.2)).cells[0].hash != implicit
    assert expand(spec_of(train={"epochs": 2})).cells[0].hash != implicit
    assert expand(spec_of(models=[{"arch": "resnet18", "width": 4}])).cells[0].hash != implicit


def test_optional_methods_that_are_missing_are_skipped_with_a_reason() -> None:
    plan = expand(
        spec_of(
            attacks=["badnets", {"name": "not_an_attack", "optional": True}],
            defenses=["none", {"name": "not_a_defense", "optional": True}],
        )
    )
    reasons = {(c.attack, c.defense): c.skip_reason for c in plan.cells}
    assert reasons[("badnets", "none")] is None
    assert "not registered" in reasons[("not_an_attack", "none")]
    assert "not registered" in reasons[("badnets", "not_a_defense")]


def test_star_expands_to_every_registered_defense() -> None:
    from backdoorkit.defenses import DEFENSES

    plan = expand(spec_of(defenses=["none", "*"]))
    names = {c.defense for c in plan.cells}
    assert names == {"none", *DEFENSES.names()}
    if DEFENSES.names():
        left_out = DEFENSES.names()[0]
        plan = expand(spec_of(defenses=["none", {"name": "*", "exclude": [left_out]}]))
        assert left_out not in {c.defense for c in plan.cells}


def test_scenario_choice_and_reasons() -> None:
    assert choose_scenario("rt", ["S2", "S3"], ["S1", "S2", "S3"], None, 0.1) == ("S2", None)
    assert choose_scenario("rt", ["S2", "S3"], ["S1", "S2", "S3"], None, 0.0) == ("S3", None)
    sc, why = choose_scenario("rt", ["S2", "S3"], ["S1", "S2", "S3"], "S1", 0.1)
    assert sc is None and "asked to run in S1" in why and "S2" in why
    sc, why = choose_scenario("repair", ["S1"], ["S1", "S2", "S3"], None, 0.0)
    assert sc is None and "clean_fraction is 0" in why
    sc, why = choose_scenario("repair", ["S1"], ["S3"], None, 0.1)
    assert sc is None and "offers only S3" in why


def test_demo_spec_is_valid_and_has_three_attacks() -> None:
    from backdoorkit.experiment.demo import demo_spec

    spec = demo_spec()
    # attacks that implant on digits, data poisoning and one on the structure (WaNet's 6 % read as a
    # broken demo; tests/test_attacks_asr.py, tests/test_structure_attacks.py)
    assert [a.name for a in spec.attacks][:3] == ["badnets", "blended", "badres"]
    plan = expand(spec)
    assert any(c.defense == "none" and c.attack == "badnets" and c.runnable for c in plan.cells)


def test_a_renamed_label_reaches_cells_already_in_the_database(tmp_path: Path) -> None:
    from backdoorkit.experiment.store import ResultStore

    store = ResultStore(tmp_path / "r.db")
    first = expand(spec_of(attacks=[{"name": "badnets", "label": "old name"}]))
    store.register(first)
    renamed = expand(spec_of(attacks=[{"name": "badnets", "label": "new name"}]))
    assert [c.hash for c in renamed.cells] == [c.hash for c in first.cells]  # labels are not identity
    store.register(renamed)
    assert {r["attack"] for r in store.rows()} == {"new name"}
    store.close()
