"""The feature view of Trap-and-Replace (Wang et al., NeurIPS 2022, Figure 2): where a stem maps clean
target-class images, clean images of another class and the *poisoned* images of that other class.

A stem that learnt the backdoor puts the poisoned images next to the target class; a stem trained with
the reconstruction task keeps them with their own class.  :func:`stem_features` computes flattened stem
outputs, :func:`feature_groups` builds the three groups from a clean (test) set and an attack,
:func:`centroid_shares` puts the picture in numbers (the shares of triggered images nearest the target
class's clean centroid and nearest their own class's), and :func:`stem_feature_pca` draws one panel
per stem (e.g. "no reconstruction" / "T&R"): a 2-D PCA (scikit-learn) fitted on that stem's three
groups together, written as a PNG with matplotlib's ``Agg`` canvas.  This is an evaluation tool: it
uses the attack, which a defense never sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.errors import ConfigError
from backdoorkit.train import predict

GROUP_COLOURS = {"clean target": "tab:red", "clean source": "tab:blue", "poisoned source": "tab:orange"}


@torch.no_grad()
def stem_features(stem: nn.Module, x: torch.Tensor, transform: Any = None) -> torch.Tensor:
    """Flattened stem outputs ``[N, D]`` (float, CPU) of uint8 or float images ``x``; ``transform`` (a
    batched trigger) is applied to the float pixels first."""
    return predict(stem, x, transform=transform).flatten(1).cpu()


def feature_groups(
    stem: nn.Module,
    data: ImageSet,
    attack: Any,
    *,
    source: int | None = None,
    per_group: int = 200,
) -> dict[str, torch.Tensor]:
    """Stem features of the three groups of Figure 2.

    ``clean target``: clean images of the attack's target class; ``clean source``: clean images of
    ``source`` (default: the lowest class that is not the target); ``poisoned source``: the same source
    images with the trigger.  At most ``per_group`` images each (the first ones).
    """
    target = int(attack.target)
    if source is None:
        source = next(c for c in range(data.num_classes) if c != target)
    if source == target:
        raise ConfigError("feature view: the source class must differ from the target class")
    y = data.y.cpu()
    x = data.x.cpu()
    tgt = x[y == target][:per_group]
    src = x[y == source][:per_group]
    if not len(tgt) or not len(src):
        raise ConfigError(
            f"feature view: {data.name} has no images of class {target if not len(tgt) else source}"
        )
    return {
        "clean target": stem_features(stem, tgt),
        "clean source": stem_features(stem, src),
        "poisoned source": stem_features(stem, to_pixels(src), transform=attack.apply),
    }


def centroid_shares(stem: nn.Module, data: ImageSet, attack: Any) -> dict[str, float]:
    """Where a stem puts triggered images, in numbers (the quantity Figure 2 shows).

    The centroids are the mean stem features of each class's clean images of ``data``; every image not
    of the attack's target class gets the trigger, and its nearest centroid (Euclidean) is counted:
    ``target`` is the share nearest the target class (near 1: the stem itself maps the trigger onto the
    target, so no head trained on clean data can undo it), ``own class`` the share nearest its true
    class (near 1: the stem keeps poisoned images with their class, the paper's claim for the
    reconstruction-trained stem).  Chance is about ``1 / classes`` for each.
    """
    clean = stem_features(stem, data.x)
    y = data.y.cpu()
    present = [c for c in range(data.num_classes) if bool((y == c).any())]
    target = int(attack.target)
    if target not in present:
        raise ConfigError(f"feature view: {data.name} has no images of the target class {target}")
    keep = y != target
    if not bool(keep.any()):
        raise ConfigError(f"feature view: {data.name} has no images outside the target class {target}")
    centroids = torch.stack([clean[y == c].mean(0) for c in present])
    classes = torch.tensor(present)
    poisoned = stem_features(stem, to_pixels(data.x[keep.to(data.x.device)]), transform=attack.apply)
    nearest = classes[torch.cdist(poisoned, centroids).argmin(1)]
    return {
        "target": float((nearest == target).float().mean()),
        "own class": float((nearest == y[keep]).float().mean()),
    }


def stem_feature_pca(
    stems: Mapping[str, nn.Module],
    data: ImageSet,
    attack: Any,
    path: str | Path,
    *,
    source: int | None = None,
    per_group: int = 200,
    title: str | None = None,
) -> Path:
    """One PCA scatter panel per named stem (Figure 2 of Trap-and-Replace) written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    if not stems:
        raise ConfigError("feature view: give at least one stem")
    classes = list(getattr(data, "classes", []) or [])
    target = int(attack.target)
    src = source if source is not None else next(c for c in range(data.num_classes) if c != target)
    names = {
        "clean target": f"clean {classes[target] if classes else target} (target)",
        "clean source": f"clean {classes[src] if classes else src}",
        "poisoned source": f"poisoned {classes[src] if classes else src}",
    }
    fig = Figure(figsize=(4.2 * len(stems), 4.0))
    axes = fig.subplots(1, len(stems), squeeze=False)[0]
    for ax, (label, stem) in zip(axes, stems.items(), strict=True):
        groups = feature_groups(stem, data, attack, source=src, per_group=per_group)
        stacked = torch.cat(list(groups.values())).double().numpy()
        points = PCA(n_components=2, random_state=0).fit_transform(stacked)
        start = 0
        for key, feats in groups.items():
            part = points[start : start + len(feats)]
            start += len(feats)
            ax.scatter(part[:, 0], part[:, 1], s=8, alpha=0.6, c=GROUP_COLOURS[key], label=names[key])
        ax.set_title(label)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


__all__ = ["centroid_shares", "feature_groups", "stem_feature_pca", "stem_features"]
