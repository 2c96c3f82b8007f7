"""Figures for detectors and inspectors, written as PNG files.

* :func:`plot_score_histograms`: a detector's suspicion scores on clean vs triggered inputs (STRIP's
  Figure 5 style: two overlaid histograms, the detection threshold as a dashed line);
* :func:`save_recovered_trigger`: an inspector's recovered trigger (Neural Cleanse's Figure 6 style:
  the mask, the pattern and mask x pattern side by side).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backdoorkit.viz.curves import ASR_COLOR, BA_COLOR, _pyplot


def plot_score_histograms(
    clean: torch.Tensor,
    triggered: torch.Tensor,
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str | None = None,
    xlabel: str = "suspicion (higher = flagged)",
    bins: int = 40,
) -> Path:
    """Overlaid histograms of ``clean`` and ``triggered`` scores (1-D tensors); returns the path."""
    plt = _pyplot()
    a = torch.as_tensor(clean).detach().float().cpu().reshape(-1)
    b = torch.as_tensor(triggered).detach().float().cpu().reshape(-1)
    both = torch.cat([a, b])
    if both.numel() == 0:
        raise ValueError("no scores to plot")
    lo, hi = float(both.min()), float(both.max())
    edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1).tolist()
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.hist(a.numpy(), bins=edges, alpha=0.6, color=BA_COLOR, label=f"clean (n={len(a)})", density=True)
    if len(b):
        ax.hist(
            b.numpy(), bins=edges, alpha=0.6, color=ASR_COLOR, label=f"triggered (n={len(b)})", density=True
        )
    if threshold is not None:
        ax.axvline(float(threshold), color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, plt, path)


def save_recovered_trigger(
    trigger: torch.Tensor, mask: torch.Tensor | None, path: str | Path, *, title: str | None = None
) -> Path:
    """Mask, pattern and mask x pattern (``[C, H, W]`` / ``[1, H, W]`` in ``[0, 1]``) as one PNG."""
    plt = _pyplot()
    panels: list[tuple[str, Any]] = []
    pat = trigger.detach().float().cpu().clamp(0, 1)
    if mask is not None:
        m = mask.detach().float().cpu().clamp(0, 1)
        panels.append(("mask", m))
    panels.append(("pattern", pat))
    if mask is not None:
        panels.append(("mask x pattern", m * pat))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.6), squeeze=False)
    for ax, (name, img) in zip(axes[0], panels, strict=True):
        arr = img.permute(1, 2, 0).numpy()
        if arr.shape[2] == 1:
            ax.imshow(arr[:, :, 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(arr)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
