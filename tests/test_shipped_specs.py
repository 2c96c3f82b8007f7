"""Every spec shipped in ``benchmarks/specs`` loads, passes the runner's checks and expands into cells, and
the paper-numbers file it names parses: a reproduction that is only run across sessions must not fail
on a typo hours into its first run (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backdoorkit.experiment.report import _paper_next_to, load_paper
from backdoorkit.experiment.spec import check_spec, expand, load_spec

SPECS = Path(__file__).resolve().parents[1] / "benchmarks" / "specs"
SHIPPED = sorted(p for p in SPECS.glob("*.yaml") if not p.name.endswith(".paper.yaml"))


def test_specs_are_shipped() -> None:
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spec_loads_and_expands(path: Path) -> None:
    spec = load_spec(path)
    check_spec(spec)
    assert len(expand(spec).cells) > 0
    paper = _paper_next_to(path)
    if paper is not None:
        numbers = load_paper(paper)
        assert numbers.rows, paper
