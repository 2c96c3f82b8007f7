"""Who holds what: the three defense scenarios, their text and the one rule that matches a defense
to a scenario (used by the experiment planner, the CLI and the defense kinds alike).

* ``S1``: a suspicious model and a small clean set (model repair, input detectors, inspectors);
* ``S2``: an untrusted training set and a small clean holdout (robust training);
* ``S3``: an untrusted training set and no clean data at all (robust training without a holdout).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Scenario(StrEnum):
    S1 = "S1"
    S2 = "S2"
    S3 = "S3"


SCENARIOS: tuple[str, ...] = tuple(s.value for s in Scenario)
SCENARIO_TEXT: dict[str, str] = {
    "S1": "a suspicious model and a small clean set",
    "S2": "an untrusted training set and a clean holdout",
    "S3": "an untrusted training set without clean data",
}
NEEDS_CLEAN: frozenset[str] = frozenset({"S1", "S2"})
"""Scenarios in which the defender holds clean samples."""


def needs_text(serves: Iterable[str]) -> str:
    """``"S2 (an untrusted training set and a clean holdout); or S3 (...)"``."""
    return "; or ".join(f"{s} ({SCENARIO_TEXT[str(s)]})" for s in serves) or "no scenario"


def choose_scenario(
    defense: str, serves: list[str], offered: list[str], pinned: str | None, clean_fraction: float
) -> tuple[str | None, str | None]:
    """``(scenario, None)`` for the first scenario ``defense`` serves that the experiment offers, or
    ``(None, reason)`` when there is none."""
    serves = [str(s) for s in serves]
    needs = needs_text(serves)
    if pinned is not None and pinned not in serves:
        return (
            None,
            f"{defense} needs {needs}, but it was asked to run in {pinned}, "
            f"which gives {SCENARIO_TEXT[pinned]}",
        )
    wanted = [pinned] if pinned is not None else offered
    available = [s for s in wanted if s in offered and not (s in NEEDS_CLEAN and clean_fraction <= 0)]
    for s in serves:
        if s in available:
            return s, None
    if clean_fraction <= 0 and any(s in NEEDS_CLEAN for s in serves):
        return None, f"{defense} needs {needs}, but clean_fraction is 0: the defender holds no clean data"
    gives = ", ".join(f"{s} ({SCENARIO_TEXT[s]})" for s in wanted)
    return None, f"{defense} needs {needs}, but this experiment offers only {gives}"
