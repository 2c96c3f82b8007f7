"""Line plots of BA / ASR against a swept quantity, written as PNG files.

* :func:`plot_skip_scan`: the skip-scan figure (SSFT, Yang et al. 2023, Figure 1) - one panel per skip
  connection, BA and ASR (in %) against the decay factor gamma, gamma decreasing to the right as in
  the paper;
* :func:`plot_sweep`: one panel of BA / ASR curves against any swept value (decay factor, clean sample
  size, tuning epochs - the paper's Figures 3-5 - or the training-stage gamma of its section 2).

Both take plain rows (``list[dict]``) so any table of results can be drawn, and use the
non-interactive ``Agg`` backend (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BA_COLOR = "tab:blue"
ASR_COLOR = "tab:red"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _pct(v: Any) -> float:
    return float("nan") if v is None else 100.0 * float(v)


def plot_skip_scan(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
    columns: int = 4,
    highlight: Sequence[str] = (),
) -> Path:
    """Draw a skip scan (rows with ``skip, gamma, ba, asr``) as one panel per skip; returns the path.

    ``highlight`` names skips whose panel title is marked (e.g. the critical layers SSFT chose).
    """
    plt = _pyplot()
    names: list[str] = []
    for r in rows:
        if r["skip"] not in names:
            names.append(str(r["skip"]))
    if not names:
        raise ValueError("no rows to plot")
    cols = max(1, min(columns, len(names)))
    nrows = math.ceil(len(names) / cols)
    width, height = 3.0 * cols, 2.5 * nrows
    fig, axes = plt.subplots(nrows, cols, figsize=(width, height), squeeze=False, sharex=True, sharey=True)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        mine = sorted((r for r in rows if r["skip"] == name), key=lambda r: -float(r["gamma"]))
        g = [float(r["gamma"]) for r in mine]
        ax.plot(g, [_pct(r["ba"]) for r in mine], "o-", color=BA_COLOR, ms=3, label="BA")
        ax.plot(g, [_pct(r.get("asr")) for r in mine], "s-", color=ASR_COLOR, ms=3, label="ASR")
        ax.set_xlim(max(g) + 0.05, min(g) - 0.05)  # gamma decreases to the right, as in the paper
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.set_title(
            f"{name} *" if name in highlight else name,
            fontsize=9,
            fontweight="bold" if name in highlight else "normal",
        )
        if i % cols == 0:
            ax.set_ylabel("%")
        if i // cols == nrows - 1:
            ax.set_xlabel("gamma")
    for j in range(len(names), nrows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins in inches instead of tight_layout: with 16 panels tight_layout's extra draw pass was
    # ~40 % of the figure's time, and every panel has the same labels, so the margins are known
    top = 0.7 if title else 0.35
    fig.subplots_adjust(
        left=0.7 / width,
        right=1 - 0.1 / width,
        bottom=0.5 / height,
        top=1 - top / height,
        wspace=0.08,
        hspace=0.3,
    )
    return _save(fig, plt, path)


def plot_sweep(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    path: str | Path,
    *,
    series: Sequence[str] = ("ba", "asr"),
    group: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    reverse_x: bool = False,
    log_x: bool = False,
) -> Path:
    """One panel of ``series`` (fractions, drawn in %) against column ``x``; one line per ``group`` value
    and series (a colour per group; BA solid with circles, ASR dashed with squares)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    groups: list[Any] = []
    for r in rows:
        key = r.get(group) if group else None
        if key not in groups:
            groups.append(key)
    styles = {"ba": ("o-", BA_COLOR), "asr": ("s--", ASR_COLOR)}
    for gi, key in enumerate(groups):
        mine = [r for r in rows if (r.get(group) if group else None) == key]
        mine.sort(key=lambda r: float(r[x]))
        xs = [float(r[x]) for r in mine]
        for s in series:
            marker, color = styles.get(s, ("^-", None))
            label = s.upper() if key is None else f"{s.upper()} {key}"
            alpha = 1.0 if len(groups) == 1 else 0.85
            ax.plot(
                xs,
                [_pct(r.get(s)) for r in mine],
                marker,
                ms=3,
                label=label,
                color=color if len(groups) == 1 else f"C{gi % 10}",
                alpha=alpha,
            )
    if reverse_x:
        ax.invert_xaxis()
    if log_x:
        ax.set_xscale("log")
    ax.set_ylim(-3, 103)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
