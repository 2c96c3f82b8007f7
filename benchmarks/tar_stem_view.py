"""Where do Trap-and-Replace's stems put the poisoned images?  (Analysis of a finished T&R run.)

Trap-and-Replace (Wang et al., NeurIPS 2022) works only if its stem, trained with the reconstruction
task, keeps triggered images with their own class, so that the new head, trained on clean data alone,
has no reason to send them to the target (the paper's Figure 2).  For every attack of a robust-training
spec whose victim is cached, this script loads the victim (the architecture trained normally on the
poisoned set) and whichever of the ``T&R`` and ``T&R no reconstruction`` models are cached, and
measures, on the cell's own test split:

* where the triggered non-target test images land among the class centroids of the clean test images
  (:func:`backdoorkit.viz.features.centroid_shares`): the share nearest the *target* centroid (near 1:
  the stem itself maps the trigger onto the target, and no head trained on clean data can undo it) and
  the share nearest *their own class* (near 1: the stem keeps poisoned images with their class, the
  paper's claim for the reconstruction-trained stem).  Chance is about 1 / classes for each.
* the feature view of the paper's Figure 2: one PCA panel per stem (clean target class, clean source
  class, the source class with the trigger), a PNG per attack.

The stem is everything before the T&R split block (WRN-16-1: ``block3.0``, the default); the victim's
stem is the same cut of the plain backdoored model.  This is an evaluation tool: it uses the attack
and the test set, which no defense sees.  Nothing is trained: a cell whose defended model is not in the
artefact cache is reported as missing.

Usage::

    BACKDOORKIT_DATA=/work/shared/datasets python benchmarks/tar_stem_view.py \\
        benchmarks/specs/robust_training_cifar10_cpu.yaml --out benchmarks/results/tar_stem_view

Writes ``<out>.md`` (the table: one row per attack and stem) and ``<out>_<attack>.png`` (the feature views).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torch import nn

from backdoorkit.cache import ArtifactCache
from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses.trap_replace import stem_block
from backdoorkit.experiment.runner import plan_of
from backdoorkit.experiment.spec import Plan
from backdoorkit.experiment.stages import CellWork
from backdoorkit.models.stages import split
from backdoorkit.viz.features import centroid_shares, stem_feature_pca

STEMS = {"T&R no reconstruction": "no reconstruction", "T&R": "T&R"}


def _refuse(*_: Any, **__: Any) -> Any:
    raise LookupError("not in the artefact cache")


def stems_of(plan: Plan, attack_label: str) -> tuple[dict[str, nn.Module], ImageSet, Any, list[str]]:
    """``({panel: stem}, test split, attack, missing)`` for one attack, from cached artefacts only;
    ``missing`` names the panels whose model is not cached (or whose cell the spec lacks)."""
    cells = {
        c.defense_label: c
        for c in plan.runnable
        if c.attack_label == attack_label and c.defense_label in STEMS
    }
    cache = ArtifactCache()
    stems: dict[str, nn.Module] = {}
    missing: list[str] = []
    test: ImageSet | None = None
    attack: Any = None
    for label, panel in STEMS.items():
        if label not in cells:
            missing.append(panel)
            continue
        work = CellWork(cells[label], cache)
        work._train = _refuse  # type: ignore[method-assign]  # never train here
        try:
            model, ps, attack, bkey = work.backdoored_model()
        except LookupError:
            return {}, work.data()[2], None, ["victim", *STEMS.values()]
        _, holdout, test = work.data()
        defense = work._defense()
        if "victim" not in stems:
            stem, _ = split(model, stem_block(model, defense.params.stem_end))
            stems["victim"] = stem.eval()
        defense.run = _refuse  # type: ignore[method-assign]
        try:
            result = work._defended(defense, model, ps, holdout, bkey)
        except LookupError:
            missing.append(panel)
            continue
        stems[panel] = result.model.stem.eval()
    assert test is not None
    return stems, test, attack, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("--attacks", nargs="*", help="attack labels (default: every attack of the spec)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tar_stem_view"))
    ap.add_argument("--per-group", type=int, default=200, help="images per group in the PCA panels")
    args = ap.parse_args(argv)
    plan = plan_of(args.spec)
    labels = args.attacks or sorted({c.attack_label for c in plan.runnable if c.attack != "none"})
    rows = []
    for label in labels:
        stems, test, attack, missing = stems_of(plan, label)
        if missing:
            print(f"{label}: not cached: {', '.join(missing)}", file=sys.stderr)
        if not stems:
            continue
        rates = {name: centroid_shares(stem, test, attack) for name, stem in stems.items()}
        png = stem_feature_pca(
            stems,
            test,
            attack,
            args.out.parent / f"{args.out.name}_{label}.png",
            per_group=args.per_group,
            title=f"{label}: stem features (PCA)",
        )
        rows.append((label, rates, png.name))
        print(label, rates, png, flush=True)
    if not rows:
        print("no attack had a cached victim", file=sys.stderr)
        return 1
    names = ["victim", *STEMS.values()]
    lines = [
        f"# Trap-and-Replace stem view: {args.spec.name} (analysis only: uses the trigger and the test set)",
        "",
        f"`python benchmarks/tar_stem_view.py {args.spec}`; the stem is the model before the T&R split "
        "block; triggered non-target test images against the clean class centroids of the test split. "
        "T&R without reconstruction trains its stage 1 as the victim was trained (same seed and recipe), "
        "so its stem can equal the victim's.",
        "",
        "| attack | stem | nearest the target (%) | nearest their own class (%) | feature view |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for label, rates, png_name in rows:
        for n in names:
            got = rates.get(n)
            shares = f"{100 * got['target']:.1f} | {100 * got['own class']:.1f}" if got else "not cached | –"
            lines.append(f"| {label} | {n} | {shares} | {png_name} |")
    md = args.out.with_suffix(".md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
