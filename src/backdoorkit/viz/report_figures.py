"""Figures of experiment reports (matplotlib, ``Agg`` backend: no display needed).

* :func:`ba_asr_bars`: one column group of a report (a dataset x attack) as paired bars, BA and ASR
  in % per defense, with seed standard deviations as error bars and the ASR failure threshold drawn;
* :func:`skip_scan`: a defense's recorded skip scan (rows ``{skip, gamma, ba, asr}``) - drawn with
  :func:`backdoorkit.viz.curves.plot_skip_scan` when that module is available, else as one panel of
  BA / ASR curves per skip here.
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


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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
) -> Path:
    """Paired BA / ASR bars (values in %) per defense; returns the path written."""
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
    try:
        from backdoorkit.viz.curves import plot_skip_scan
    except ImportError:
        plot_skip_scan = None
    if plot_skip_scan is not None:
        return plot_skip_scan(list(rows), path, title=title, highlight=list(highlight))
    return _own_skip_scan(rows, path, title=title, highlight=highlight)


def _own_skip_scan(
    rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None, highlight: Sequence[str]
) -> Path:
    plt = _pyplot()
    names: list[str] = []
    for r in rows:
        if str(r["skip"]) not in names:
            names.append(str(r["skip"]))
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.4 * nrows), squeeze=False, sharey=True)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        mine = sorted((r for r in rows if str(r["skip"]) == name), key=lambda r: -float(r["gamma"]))
        g = [float(r["gamma"]) for r in mine]
        ax.plot(g, [100 * float(r["ba"]) for r in mine], "o-", ms=3, color=BA_COLOR, label="BA")
        if all(r.get("asr") is not None for r in mine):
            ax.plot(g, [100 * float(r["asr"]) for r in mine], "s-", ms=3, color=ASR_COLOR, label="ASR")
        ax.invert_xaxis()
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.set_title(f"{name} *" if name in highlight else name, fontsize=9)
        if i // cols == nrows - 1:
            ax.set_xlabel("gamma")
    for j in range(len(names), nrows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)
