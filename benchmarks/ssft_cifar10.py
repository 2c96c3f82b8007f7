"""What the experiment runner cannot express for the SSFT reproduction (Yang et al., "Backdoor Defense
via Suppressing Model Shortcuts", ICASSP 2023): the test-set skip scan of each victim of a spec
(Figure 1) and the per-scale diagnostic of the CPU study (issue 11, section 3): does removing one
skip remove the backdoor?

The tables themselves are specs run by ``backdoorkit run`` (``benchmarks/specs/ssft_table1.yaml``,
``ssft_table2.yaml``, ``ssft_scale*.yaml``, ``ssft_toggles.yaml``, with the paper's numbers in the
``.paper.yaml`` file next to each).  This script takes such a spec, gets each victim (attack !=
``none``) from the runner's cache through the runner's own stages (training it when it is not there
yet, exactly as ``backdoorkit run`` would), scans every skip at gamma 1.0, 0.9, ..., 0.0 on the
*test set* (analysis only: no defender can compute this) and writes, per victim, the scan
(``<out>/<spec>_<victim>.csv|json|png``) and a Markdown summary (``<out>/<spec>_skip_scan.md``): BA /
ASR of the victim, and the best single-skip suppression (the skip whose gamma = 0 leaves the lowest
ASR, with its BA; and the skip with the largest ASR-minus-BA fall over the grid).

Usage::

    BACKDOORKIT_DATA=/work/shared/datasets python benchmarks/ssft_cifar10.py benchmarks/specs/ssft_scale.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from backdoorkit.analysis.skip_scan import critical_scores, scan_skips
from backdoorkit.cache import ArtifactCache
from backdoorkit.experiment.runner import plan_of
from backdoorkit.experiment.stages import CellWork
from backdoorkit.metrics import attack_success_rate, benign_accuracy


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def victim_rows(spec: str, out: Path, cache_dir: str | None) -> list[dict[str, Any]]:
    plan = plan_of(spec)
    cache = ArtifactCache(cache_dir) if cache_dir else ArtifactCache()
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for cell in plan.runnable:
        if cell.attack == "none":
            continue
        epochs = cell.train.get("epochs")
        label = f"{cell.dataset.label}_{cell.model_label}_e{epochs}_{cell.attack_label}_s{cell.seed}"
        if label in seen:
            continue
        seen.add(label)
        log(f"victim {label}")
        work = CellWork(cell, cache)
        model, _, attack, _ = work.backdoored_model()
        test = work.data()[2]
        scan = scan_skips(model, test, attack)
        scan.save(out, stem=f"{Path(spec).stem}_{label}", title=label)
        zero = [r for r in scan.to_rows() if r["gamma"] == 0.0]
        best = min(zero, key=lambda r: (r["asr"], -r["ba"]))
        margin = critical_scores(scan.to_rows(), "margin")[0]
        rows.append(
            {
                "victim": label,
                "ba": benign_accuracy(model, test),
                "asr": attack_success_rate(model, test, attack),
                "best_zero": best,
                "margin": margin,
            }
        )
    return rows


def summary_md(spec: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# Test-set skip scan of the victims of `{spec}` (analysis only)",
        "",
        "| victim | BA | ASR | lowest ASR at gamma 0 (skip: BA / ASR) "
        "| largest ASR - BA fall (skip, gamma: BA / ASR) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        b, m = r["best_zero"], r["margin"]
        lines.append(
            f"| {r['victim']} | {100 * r['ba']:.2f} | {100 * r['asr']:.2f} | "
            f"{b['skip']}: {100 * b['ba']:.2f} / {100 * b['asr']:.2f} | "
            f"{m.skip}, {m.gamma}: {100 * m.ba:.2f} / {100 * m.asr:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="a spec under benchmarks/specs (its victims are scanned)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cache-dir", default=None, help="the runner's artefact cache (default: as the runner)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = victim_rows(args.spec, out, args.cache_dir)
    path = out / f"{Path(args.spec).stem}_skip_scan.md"
    path.write_text(summary_md(args.spec, rows))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
