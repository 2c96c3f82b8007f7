"""Parameter sweeps found in a results database, for the report's sweep figures.

A spec that lists one attack several times with one numeric parameter changed (BadRes at alpha 0.2 /
0.5 / 0.8, at residual index 0 / 3 / 5, at poison rate 0.025 ... 0.2, at target 0 / 1 / 2 / 4 / 8) is
a sweep, whatever the rows are labelled: :func:`find_sweeps` reads the attack parameters each finished
cell stored in its identity (defaults included), so the reference row of the spec (``BadRes``,
alpha 0.5, index 0) is a point of every sweep it belongs to.  The same holds for a defense run at
several values of one parameter (SSFT's decay factor, sample count or epochs: its Figs. 3-5).  The
report draws each sweep as BA / ASR curves against the swept value: an attack sweep with a pair of
lines per defense (the shape of the BadRes paper's Table 3 and Figs. 8-9), a defense sweep with a pair
per attack.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from backdoorkit.experiment.spec import _flat_items

MIN_POINTS = 3
"""Distinct values of the swept parameter for a sweep (two points are a comparison, not a curve)."""


Side = Literal["attack", "defense"]


@dataclass
class Sweep:
    """One attack (or defense) method swept over one parameter in one (dataset, model) setting.

    ``points``: one dict per (value, line) with ``x``, ``line`` (the other side's row label: the
    defense for an attack sweep, the attack for a defense sweep), ``ba``, ``asr`` (fractions, the mean
    over seeds; ``None`` where a cell has no such metric) and ``labels`` (the swept side's row labels).
    ``fixed``: the method's other parameters, the same for every point.
    """

    dataset: str
    model: str
    side: Side
    method: str
    key: str
    points: list[dict[str, Any]] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> list[float]:
        return sorted({p["x"] for p in self.points})

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.model}: {self.method} vs {self.key}"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def _params(row: Mapping[str, Any], side: Side) -> dict[str, Any] | None:
    cell = row.get("cell")
    identity = cell.get("identity") if isinstance(cell, Mapping) else None
    method = identity.get(side) if isinstance(identity, Mapping) else None
    if not isinstance(method, Mapping) or not isinstance(method.get("params"), Mapping):
        return None
    return _flat_items(dict(method["params"]))


def _key(d: Mapping[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _mean(values: Iterable[Any]) -> float | None:
    got = [float(v) for v in values if v is not None]
    return sum(got) / len(got) if got else None


def find_sweeps(
    rows: Iterable[Mapping[str, Any]], *, side: Side = "attack", min_points: int = MIN_POINTS
) -> list[Sweep]:
    """The sweeps among finished rows: per (dataset, model, method of ``side``), each numeric parameter
    of that method that takes at least ``min_points`` values while every other parameter stays the same.

    Rows of model inspectors (no BA / ASR of their own), of the ``none`` attack or defense, and rows
    without stored parameters (databases written before identities were stored) are left out.
    """
    other = "defense" if side == "attack" else "attack"
    settings: dict[tuple[str, str, str], list[tuple[dict[str, Any], Mapping[str, Any]]]] = {}
    for r in rows:
        if r.get("status") != "done" or r.get("defense_kind") == "inspector":
            continue
        params = _params(r, side)
        method = r.get(f"{side}_name")
        if not params or not method or method == "none":
            continue
        settings.setdefault((str(r["dataset"]), str(r["model"]), str(method)), []).append((params, r))
    sweeps: list[Sweep] = []
    for (dataset, model, method), items in settings.items():
        keys = sorted({k for params, _ in items for k, v in params.items() if _number(v)})
        for key in keys:
            by_rest: dict[str, list[tuple[dict[str, Any], Mapping[str, Any]]]] = {}
            for params, r in items:
                if _number(params.get(key)):
                    rest = {k: v for k, v in params.items() if k != key}
                    by_rest.setdefault(_key(rest), []).append((params, r))
            for group in by_rest.values():
                if len({float(p[key]) for p, _ in group}) < min_points:
                    continue
                cells: dict[tuple[float, str], list[Mapping[str, Any]]] = {}
                for params, r in group:
                    cells.setdefault((float(params[key]), str(r[other])), []).append(r)
                points = [
                    {
                        "x": x,
                        "line": line,
                        "ba": _mean(r.get("ba") for r in rs),
                        "asr": _mean(r.get("asr") for r in rs),
                        "labels": sorted({str(r[side]) for r in rs}),
                    }
                    for (x, line), rs in cells.items()
                ]
                points.sort(key=lambda p: (p["line"], p["x"]))
                fixed = {k: v for k, v in group[0][0].items() if k != key}
                sweeps.append(Sweep(dataset, model, side, method, key, points, fixed))
    return sweeps
