"""One-command GPU reproduction of the SSFT Table 1 (called by ``benchmarks/gpu/reproduce.sh``).

Runs ``benchmarks/gpu/ssft_table1.yaml`` (4 attacks x No Defense, FT-FC, FT-All, SSFT, SSFT* on
CIFAR-10, full-width ResNet-18, the ``ssft_paper`` preset on its ``fast`` schedule, bf16 +
channels_last, data resident on the GPU) through the experiment runner (cached and resumable: a second
call finishes what is missing), then writes into the output folder (``--out``, else ``$OUT``, else
``runs/gpu``):

* ``results.db`` - the results database;
* ``report.md``, ``report.csv``, ``report.html`` (+ figures) - with the paper's numbers beside ours
  when a paper-numbers file is given (``--paper``) or ``benchmarks/specs/ssft_table1.paper.yaml``
  exists and reads;
* ``results.json`` - device, versions, wall seconds against the 9-minute target, the run summary and
  every row (coordinates, status, metrics, stage seconds);
* ``spec.yaml`` - the spec as run (after the tiny overrides).

CIFAR-10 is found as everywhere (``$BACKDOORKIT_DATA``; reproduce.sh defaults it to
``../shared/datasets``).  ``--tiny`` (or ``BDK_TINY=1``) is the CPU smoke setting of the same script:
digits (300 train / 100 test images), width 4, one epoch, batch 64, fp32 on the CPU, fine-tuning
budgets of a few steps; it checks the plumbing, not the numbers (tests/test_gpu_script.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SPEC = HERE / "ssft_table1.yaml"
PAPER = ROOT / "benchmarks" / "specs" / "ssft_table1.paper.yaml"
TARGET_SECONDS = 9 * 60
TINY_TRAIN = {"epochs": 1, "batch_size": 64, "amp": False, "channels_last": False}
TINY_TUNE = {"epochs": 1, "min_steps": 4}
TINY_SSFT = {**TINY_TUNE, "surrogate_epochs": 2, "surrogate_check": 1, "surrogate_min_asr": 0.0}


def _fields(kind: str, name: str) -> set[str]:
    """Parameter names of a registered attack / defense (empty when it is not registered)."""
    if kind == "attack":
        from backdoorkit.attacks import ATTACKS as registry
    else:
        from backdoorkit.defenses import DEFENSES as registry
    if name not in registry:
        return set()
    cls = registry.get(name)
    params = getattr(cls, "Params", None) or getattr(cls, "params_model", None)
    return set(getattr(params, "model_fields", {}) or {})


def tiny(data: dict[str, Any]) -> dict[str, Any]:
    """The CPU smoke setting of a spec mapping (see the module docstring)."""
    out = copy.deepcopy(data)
    out["datasets"] = [{"name": "digits", "subset": 300, "test_subset": 100}]
    out["models"] = [{"arch": "resnet18", "width": 4}]
    out["train"] = {**(out.get("train") or {}), **TINY_TRAIN}
    out["device"] = "cpu"
    attacks = []
    for entry in out.get("attacks") or []:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        if entry["name"] == "label_consistent":  # a small attacker model, a few PGD steps
            names = _fields("attack", "label_consistent")
            small = {"steps": 2, "attacker_width": 4, "attacker_epochs": 1}
            small = {k: v for k, v in small.items() if k in names}
            entry["params"] = {**(entry.get("params") or {}), **small}
        attacks.append(entry)
    out["attacks"] = attacks
    defenses = []
    for entry in out.get("defenses") or []:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        names = _fields("defense", entry["name"])
        small = TINY_SSFT if entry["name"] == "ssft" else TINY_TUNE
        entry["params"] = {**(entry.get("params") or {}), **{k: v for k, v in small.items() if k in names}}
        defenses.append(entry)
    out["defenses"] = defenses
    return out


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else runs/gpu)")
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--paper", type=Path, default=None, help="paper-numbers file beside ours")
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("BDK_TINY") == "1")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from backdoorkit.errors import BackdoorkitError, one_line
    from backdoorkit.experiment.report import load_paper, load_rows, write_report
    from backdoorkit.experiment.runner import run_experiment
    from backdoorkit.experiment.spec import parse_spec
    from backdoorkit.experiment.store import versions
    from backdoorkit.jsonable import to_jsonable

    out = (args.out or Path(os.environ.get("OUT") or "runs/gpu")).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        data = yaml.safe_load(args.spec.read_text())
        if args.tiny:
            data = tiny(data)
        data["db"] = None
        spec = parse_spec(data, base_dir=args.spec.resolve().parent)
        if spec.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                print("reproduce: no CUDA device here (use --tiny for the CPU smoke run)", file=sys.stderr)
                return 2
        (out / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        paper_path = args.paper or (PAPER if PAPER.is_file() else None)
        paper = None
        if paper_path is not None:
            try:
                paper = load_paper(paper_path)
            except BackdoorkitError as exc:
                if args.paper is not None:
                    raise
                print(
                    f"reproduce: paper numbers not shown ({one_line(exc, with_type=False)})", file=sys.stderr
                )
        cache = os.environ.get("BACKDOORKIT_CACHE") or str(out / "cache")
        summary = run_experiment(
            spec,
            db=out / "results.db",
            resume=True,
            jobs=max(1, args.jobs),
            quiet=args.quiet,
            live=False,
            cache_dir=cache,
            argv=["run", str(args.spec.resolve()), *(["--tiny"] if args.tiny else [])],
        )
        written = write_report(
            out / "results.db",
            out,
            formats=("md", "csv", "html"),
            spec_hash=summary.spec_hash,
            title=f"SSFT Table 1 ({'tiny CPU smoke run' if args.tiny else device_name(spec.device)})",
            paper=paper,
            auto_paper=False,
        )
        seconds = time.perf_counter() - start
        rows = load_rows(out / "results.db", summary.spec_hash)
    except BackdoorkitError as exc:
        print(f"reproduce: {one_line(exc, with_type=False)}", file=sys.stderr)
        return 2
    keep = ("dataset", "model", "attack", "defense", "seed", "status", "metrics", "stage_seconds")
    result = {
        "spec": spec.name,
        "tiny": args.tiny,
        "device": device_name(spec.device),
        "versions": versions(),
        "seconds": round(seconds, 1),
        "target_seconds": TARGET_SECONDS,
        "within_target": seconds <= TARGET_SECONDS,
        "summary": {k: getattr(summary, k) for k in ("planned", "done", "failed", "already", "skipped")},
        "paper": paper.source if paper is not None else None,
        "report": {k: str(v) for k, v in written.items() if not k.startswith("figure")},
        "rows": [{k: r.get(k) for k in keep} | {"wall_seconds": r.get("wall_seconds")} for r in rows],
    }
    (out / "results.json").write_text(json.dumps(to_jsonable(result), indent=1) + "\n")
    print(
        f"reproduce: {summary.done + summary.already} cells done, {summary.failed} failed in {seconds:.0f}s "
        f"(target {TARGET_SECONDS}s) on {result['device']}; report {written['html']}, "
        f"json {out / 'results.json'}"
    )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
