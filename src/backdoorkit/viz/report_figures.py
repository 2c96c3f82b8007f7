"""Figures of experiment reports (matplotlib, ``Agg`` backend: no display needed).

* :func:`ba_asr_bars`: one column group of a report (a dataset x attack) as paired bars, BA and ASR
  in % per defense, with seed standard deviations as error bars, the ASR failure threshold drawn and,
  when given, a paper's values as black markers on the bars;
* :func:`skip_scan`: a defense's recorded skip scan (rows ``{skip, gamma, ba, asr}``), checked and
  drawn with :func:`backdoorkit.viz.curves.plot_skip_scan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backdoorkit.viz.curves import ASR_COLOR, BA_COLOR, _pyplot, _save, plot_skip_scan


def ba_asr_bars(
    labels: Sequence[str],
    ba: Sequence[float],
    ba_err: Sequence[float],
    asr: Sequence[float],
    asr_err: Sequence[float],
    path: str | Path,
    *,
    title: str | None = None,
    asr_fail: float | None = 20.0,
    paper_ba: Sequence[float] | None = None,
    paper_asr: Sequence[float] | None = None,
) -> Path:
    """Paired BA / ASR bars (values in %) per defense; returns the path written.

    ``paper_ba`` / ``paper_asr``: the paper's values (in %, NaN where it gives none), drawn as black
    diamond (BA) and cross (ASR) markers centred on the matching bars.
    """
    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * n + 2.0), 3.4))
    xs = list(range(n))
    w = 0.38
    has_err = any(e > 0 for e in [*ba_err, *asr_err])  # one seed: no error bars
    ax.bar(
        [x - w / 2 for x in xs],
        ba,
        w,
        yerr=ba_err if has_err else None,
        color=BA_COLOR,
        label="BA",
        capsize=2,
    )
    asr_vals = [0.0 if math.isnan(v) else v for v in asr]
    ax.bar(
        [x + w / 2 for x in xs],
        asr_vals,
        w,
        yerr=asr_err if has_err else None,
        color=ASR_COLOR,
        label="ASR",
        capsize=2,
    )
    for values, shift, marker, label in (
        (paper_ba, -w / 2, "D", "paper BA"),
        (paper_asr, w / 2, "X", "paper ASR"),
    ):
        points = [(x + shift, v) for x, v in zip(xs, values or (), strict=False) if not math.isnan(v)]
        if points:
            px, py = zip(*points, strict=True)
            ax.scatter(px, py, marker=marker, s=28, color="black", zorder=3, label=label)
    if asr_fail is not None:
        ax.axhline(asr_fail, color=ASR_COLOR, ls=":", lw=1, alpha=0.7)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def skip_scan(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
    highlight: Sequence[str] = (),
) -> Path:
    """A skip scan (rows with ``skip, gamma, ba, asr``; fractions) as BA / ASR curves per skip."""
    if not rows:
        raise ValueError("no scan rows")
    for r in rows:
        if not {"skip", "gamma", "ba"} <= set(r):
            raise KeyError("scan rows need skip, gamma and ba")
    return plot_skip_scan(list(rows), path, title=title, highlight=list(highlight))
