"""The skip scan: BA and ASR as one skip connection at a time is suppressed.

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts" (ICASSP 2023), Figure 1 / section 2
("inference stage"): multiply the shortcut of one residual block by a decay factor ``gamma`` (1 = the
trained network, 0 = the skip removed), sweep ``gamma`` over a grid and record benign accuracy and
attack success rate.  Skips whose ASR falls faster than their BA are the "critical layers" SSFT
suppresses (:mod:`backdoorkit.defenses.ssft`).

``scan_skips(model, clean_test, attack)`` evaluates every (skip, gamma) pair with
:func:`backdoorkit.metrics.benign_accuracy` and :func:`backdoorkit.metrics.attack_success_rate`
(whole batches), changing only that one skip through :func:`~backdoorkit.models.skips.scaled_skips`,
so the model's own gammas are restored afterwards even on error.  The numbers are exactly those of
setting the gamma by hand and evaluating.

:func:`critical_scores` turns a scan into one score per skip (two rules, see there); SSFT ranks
skips with it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.errors import ConfigError
from backdoorkit.metrics import Trigger, attack_success_rate, benign_accuracy
from backdoorkit.models.skips import scaled_skips, skips

DEFAULT_GAMMAS: tuple[float, ...] = tuple(round(1.0 - 0.1 * i, 1) for i in range(11))
"""1.0, 0.9, ..., 0.0 - the grid of the paper's Figure 1 and of the official layer search."""

ScoreKind = Literal["official", "previous", "margin"]
SCORE_KINDS: tuple[str, ...] = ("official", "previous", "margin")
FIELDS = ("skip", "gamma", "ba", "asr")


@dataclass(frozen=True)
class CriticalScore:
    """How strongly suppressing one skip removes the backdoor: ``score`` and the ``gamma`` attaining it."""

    skip: str
    score: float
    gamma: float
    ba: float
    asr: float


@dataclass
class SkipScan:
    """A tidy table of a skip scan: one row ``{skip, gamma, ba, asr}`` per (skip, gamma).

    Attributes:
        rows: the table, skips in model order, gammas in the order scanned.
        gammas: the grid.
        baseline: ``{"ba", "asr"}`` of the model as it was given (its own gammas).
        meta: what was scanned (test set name and size, attack description).
    """

    rows: list[dict[str, Any]]
    gammas: tuple[float, ...]
    baseline: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def skip_names(self) -> list[str]:
        out: list[str] = []
        for r in self.rows:
            if r["skip"] not in out:
                out.append(r["skip"])
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        """The table as a list of plain dicts (copies; JSON-ready)."""
        return [{k: r[k] for k in FIELDS} for r in self.rows]

    def curve(self, skip: str) -> list[dict[str, Any]]:
        """The rows of one skip, gamma decreasing."""
        mine = [r for r in self.to_rows() if r["skip"] == skip]
        if not mine:
            raise ConfigError(f"skip {skip!r} is not in this scan ({', '.join(self.skip_names)})")
        return sorted(mine, key=lambda r: -r["gamma"])

    def scores(self, kind: ScoreKind = "official") -> list[CriticalScore]:
        """:func:`critical_scores` of this scan, best first."""
        return critical_scores(self.to_rows(), kind)

    def to_csv(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(FIELDS))
            writer.writeheader()
            for r in self.to_rows():
                writer.writerow({k: ("" if _nan(r[k]) else r[k]) for k in FIELDS})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "gammas": list(self.gammas),
            "baseline": _finite(self.baseline),
            "meta": self.meta,
            "rows": [_finite(r) for r in self.to_rows()],
        }

    def to_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=1))
        return out

    def plot(self, path: str | Path, *, title: str | None = None, highlight: Sequence[str] = ()) -> Path:
        """The figure (one panel per skip, BA and ASR against gamma) as PNG."""
        from backdoorkit.viz.curves import plot_skip_scan

        return plot_skip_scan(self.to_rows(), path, title=title, highlight=highlight)

    def save(self, out_dir: str | Path, stem: str = "skip_scan", **plot_kw: Any) -> dict[str, Path]:
        """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` into ``out_dir``."""
        d = Path(out_dir)
        return {
            "csv": self.to_csv(d / f"{stem}.csv"),
            "json": self.to_json(d / f"{stem}.json"),
            "png": self.plot(d / f"{stem}.png", **plot_kw),
        }


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _finite(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if _nan(v) else v) for k, v in d.items()}


def check_gammas(gammas: Iterable[float]) -> tuple[float, ...]:
    out = tuple(float(g) for g in gammas)
    if not out:
        raise ConfigError("the gamma grid is empty")
    if any(not math.isfinite(g) for g in out):
        raise ConfigError(f"gammas must be finite, got {out}")
    return out


def scan_skips(
    model: nn.Module,
    clean_test: ImageSet,
    attack: Trigger | None,
    gammas: Iterable[float] = DEFAULT_GAMMAS,
    skip_names: Sequence[str] | None = None,
    *,
    quantized: bool = False,
    batch_size: int | None = None,
) -> SkipScan:
    """BA and ASR for every skip alone at every gamma.

    Args:
        model: a model with addressable skips (ours, or one passed through ``attach_skips``).
        clean_test: the clean images to evaluate on (the test set for analysis; SSFT passes its own
            surrogate-evaluation split).
        attack: a set-up attack (anything with ``apply`` / ``target_labels`` / ``asr_mask``); ``None``
            scans BA only (ASR is NaN).
        gammas: the grid (default 1.0, 0.9, ..., 0.0).
        skip_names: the skips to scan (default: all, in model order).
        quantized: evaluate ASR on triggered images quantised to uint8.
    """
    grid = check_gammas(gammas)
    table = skips(model)
    if not table:
        raise ConfigError(
            f"model {type(model).__name__} has no addressable skip connections (try attach_skips)"
        )
    names = list(table) if skip_names is None else list(skip_names)
    for n in names:
        if n not in table:
            raise ConfigError(f"unknown skip {n!r}; this model has: {', '.join(table)}")

    def measure() -> tuple[float, float]:
        ba = benign_accuracy(model, clean_test)
        asr = (
            attack_success_rate(model, clean_test, attack, quantized=quantized, batch_size=batch_size)
            if attack is not None
            else float("nan")
        )
        return ba, asr

    ba0, asr0 = measure()
    rows: list[dict[str, Any]] = []
    for name in names:
        for g in grid:
            with scaled_skips(model, name, g):
                ba, asr = measure()
            rows.append({"skip": name, "gamma": g, "ba": ba, "asr": asr})
    describe = getattr(attack, "describe", None)
    meta = {
        "data": clean_test.name,
        "images": len(clean_test),
        "attack": describe() if callable(describe) else None,
        "quantized": quantized,
    }
    return SkipScan(rows=rows, gammas=grid, baseline={"ba": ba0, "asr": asr0}, meta=meta)


def official_step(asr_larger_gamma: float, asr_smaller_gamma: float) -> float:
    """One step of the official layer score: ``(A - B) / exp(B)`` with ``A``, ``B`` the ASR in percent
    at the larger and the smaller gamma (inputs are fractions).  ``exp`` of a percentage overflows
    nowhere below ~709 %, so the value is always finite for ASR in [0, 1]."""
    a, b = 100.0 * float(asr_larger_gamma), 100.0 * float(asr_smaller_gamma)
    return (a - b) / math.exp(b)


def critical_scores(rows: Iterable[Mapping[str, Any]], kind: ScoreKind = "official") -> list[CriticalScore]:
    """Score every skip of a scan by how sharply its ASR falls relative to its BA; best first.

    For one skip, take its rows with gamma decreasing: ``g_0 > g_1 > ... > g_n`` (``g_0`` is 1.0 on
    the default grid), with accuracies ``BA_i`` and attack success rates ``ASR_i`` (fractions).

    * ``"official"`` (default): the rule of the official ``chooselayer.py``: ``max_i (ASR_{i-1} -
      ASR_i) / exp(ASR_i)`` over consecutive grid points, with ASR in **percent** and the exponent
      taken at the *smaller* gamma ``g_i``.  With percentages, ``exp(ASR_i)`` makes every step that
      does not end near ASR 0 negligible: the rule picks the skip whose suppression completes the
      removal of the backdoor, and among those the largest final step.  It ignores BA (SSFT's
      fine-tuning is there to restore it).  The gamma reported is ``g_i`` after the winning step.
    * ``"previous"``: our earlier reading, ``max_i (ASR_{i-1} - ASR_i) / exp(ASR_{i-1})`` with ASR as
      a fraction and the exponent at the *larger* gamma: the sharpest fall, mildly weighted towards
      falls that start from a working backdoor.  Gamma as for ``official``.
    * ``"margin"``: ``max_i [(ASR_0 - ASR_i) - (BA_0 - BA_i)]`` over ``i >= 1`` - the largest amount
      by which the ASR has fallen *more* than the BA, relative to the unsuppressed skip; the gamma
      reported is the (largest) ``g_i`` attaining it.  A skip whose removal destroys the whole
      network scores about 0.  On digits (three BadNets seeds) it kept BA only when the fine-tuning
      budget was too small to remove anything, and with a budget that can (200 steps) it chose skips
      whose suppression did not transfer to the real backdoor, so it is not the default.

    Ties are broken by model order (the first skip wins).  Rows whose ASR is NaN score NaN (last).
    """
    if kind not in SCORE_KINDS:
        raise ConfigError(f"unknown critical-layer score {kind!r} ({', '.join(SCORE_KINDS)})")
    by_skip: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_skip.setdefault(str(r["skip"]), []).append(r)
    out: list[CriticalScore] = []
    for name, mine in by_skip.items():
        curve = sorted(mine, key=lambda r: -float(r["gamma"]))
        best: CriticalScore | None = None
        for i in range(1, len(curve)):
            cur = curve[i]
            if kind == "margin":
                ref = curve[0]
                s = (ref["asr"] - cur["asr"]) - (ref["ba"] - cur["ba"])
            elif kind == "previous":
                prev = curve[i - 1]
                s = (prev["asr"] - cur["asr"]) / math.exp(prev["asr"])
            else:
                s = official_step(curve[i - 1]["asr"], cur["asr"])
            if math.isnan(s):
                continue
            if best is None or s > best.score + 1e-12:
                best = CriticalScore(name, float(s), float(cur["gamma"]), float(cur["ba"]), float(cur["asr"]))
        if best is None:
            g = float(curve[-1]["gamma"]) if curve else float("nan")
            best = CriticalScore(name, float("nan"), g, float("nan"), float("nan"))
        out.append(best)
    order = {n: i for i, n in enumerate(by_skip)}

    def rank(c: CriticalScore) -> tuple[bool, float, int]:
        return (math.isnan(c.score), 0.0 if math.isnan(c.score) else -c.score, order[c.skip])

    return sorted(out, key=rank)
