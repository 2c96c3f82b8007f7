"""Trigger gallery: for each attack, a block of three rows - clean training images, their poisoned
versions (what the victim receives, quantised to uint8) and the absolute difference amplified so its
largest value is white - drawn into one PNG with matplotlib's Agg canvas (no display needed).

:func:`attack_gallery` draws the gallery of a report's attacks (names + parameters as the results
database recorded them) on a stratified sample of the dataset's training split; attacks that need an
attacker model (label-consistent, TrojanNN, ...) are left out with a note rather than trained here.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from backdoorkit.attacks.base import Attack
from backdoorkit.data.imageset import ImageSet


def poisoned_examples(
    attack: Attack, train: ImageSet, n: int, *, seed: int = 0, **setup_kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean, poisoned)`` float images ``[k, C, H, W]`` of the first ``k <= n`` poisoned rows."""
    ps = attack.poison(train, seed=seed, **setup_kwargs)
    idx = ps.indices[:n].to(train.device)
    return train.pixels(idx).cpu(), ps.data.pixels(idx).cpu()


def amplified_difference(clean: torch.Tensor, poisoned: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``|poisoned - clean|`` scaled so its maximum is 1, and the factor used (1 when identical)."""
    diff = (poisoned - clean).abs()
    top = float(diff.max()) if diff.numel() else 0.0
    factor = 1.0 / top if top > 0 else 1.0
    return (diff * factor).clamp(0.0, 1.0), factor


def _as_image(x: torch.Tensor) -> Any:
    """``[C, H, W]`` float -> an array matplotlib shows (grey images as 2-D)."""
    arr = x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def draw_gallery(
    rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | Path,
    *,
    title: str | None = None,
    cell: float = 1.1,
    dpi: int = 100,
) -> Path:
    """Draw ``{attack name: (clean, poisoned)}`` as blocks of clean / poisoned / difference rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_cols = max((len(c) for c, _ in rows.values()), default=1) or 1
    n_rows = 3 * max(len(rows), 1)
    fig = Figure(
        figsize=(cell * n_cols + 1.6, cell * n_rows + (0.5 if title else 0.1)), dpi=dpi, layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for block, (name, (clean, poisoned)) in enumerate(rows.items()):
        diff, factor = amplified_difference(clean, poisoned)
        labels = (f"{name}\nclean", "poisoned", f"|diff| x{factor:.3g}")
        for r, (images, label) in enumerate(zip((clean, poisoned, diff), labels, strict=True)):
            ax_row = axes[3 * block + r]
            ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            for col in range(len(images)):
                ax_row[col].imshow(
                    _as_image(images[col]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest"
                )
        if len(clean) == 0:
            axes[3 * block][0].set_ylabel(f"{name}\n(nothing poisoned)", rotation=0, ha="right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, format="png")
    return path


def attack_gallery(
    dataset: str,
    attacks: Mapping[str, tuple[str, Mapping[str, Any]]],
    path: str | Path,
    *,
    n: int = 6,
    sample: int = 400,
    seed: int = 0,
) -> tuple[Path | None, list[str]]:
    """Gallery of ``{label: (attack name, parameters)}`` on ``sample`` stratified training images of
    ``dataset`` (a registered name or path, found as :func:`backdoorkit.data.load_dataset` finds it).

    Returns ``(path or None, notes)``: an attack that cannot be built or poisoned here, or that needs an
    attacker model, is a note, never an error (so is a dataset that cannot be loaded).
    """
    from backdoorkit.attacks import build_attack
    from backdoorkit.data import load_dataset, take_fraction
    from backdoorkit.errors import BackdoorkitError, one_line

    try:
        train = load_dataset(dataset, "train")
    except (BackdoorkitError, OSError) as exc:
        return None, [f"trigger gallery: {dataset} not loadable here ({one_line(exc)})"]
    small = take_fraction(train, min(sample, len(train)), seed) if len(train) > sample else train
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    notes: list[str] = []
    for label, (name, params) in attacks.items():
        try:
            atk = build_attack(name, **dict(params))
            if "model" in inspect.signature(atk.setup).parameters:
                notes.append(f"trigger gallery: {label} needs an attacker model (not drawn)")
                continue
            rows[label] = poisoned_examples(atk, small, n, seed=seed)
        except (BackdoorkitError, ValueError, TypeError, RuntimeError) as exc:
            notes.append(f"trigger gallery: {label} not drawn ({one_line(exc)})")
    if not rows:
        return None, notes
    title = f"triggers on {dataset} (training images the victim receives, seed {seed})"
    return draw_gallery(rows, path, title=title), notes
