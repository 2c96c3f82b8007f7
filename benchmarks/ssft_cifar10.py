"""Reproduce SSFT (Yang et al., "Backdoor Defense via Suppressing Model Shortcuts", ICASSP 2023) on
CIFAR-10: Table 1 (No Defense, FT-FC, FT-All, SSFT, SSFT*), Table 2 (SS, FT-Critical, SSFT), the
BadNets sweeps of Figures 3-5 (decay factor, clean sample size, tuning epochs) and the skip scan of
Figure 1, with the paper's numbers beside ours.

Setting (the paper's): ResNet-18, attacks BadNets (3x3 black-and-white grid, ``badnets`` variant
``grid``), Blended, Label-consistent and WaNet at 5 % poison, target 1; defenses get 10 % of the
training set as clean samples and fine-tune 10 epochs at lr 0.01.  The victim is trained with our
CIFAR recipe (one-cycle SGD, ``--epochs``, crop + flip), not the paper's 200 epochs, at ``--width``
(64 = the standard ResNet-18).  Attacks other than BadNets / Blended / WaNet / Label-consistent are
looked up in the attack registry at run time (``--attacks``).

Outputs (``--out``, default ``benchmarks/results``; ``--prefix`` default ``ssft``):
``<prefix>_cifar10.md`` (tables), ``<prefix>_cifar10.json`` (every number and the defenses' info),
``<prefix>_scan_<attack>.png|csv`` (skip scan on the test set, for analysis only),
``<prefix>_fig3_gamma.png``, ``<prefix>_fig4_samples.png``, ``<prefix>_fig5_epochs.png`` and, with
``--gradient-suppression``,
``<prefix>_training_gamma.png`` (section 2: train with all skips scaled).

Usage::

    BACKDOORKIT_DATA=/work/shared/datasets python benchmarks/ssft_cifar10.py --width 64 --epochs 30
    python benchmarks/ssft_cifar10.py --smoke          # digits, tiny budgets, writes to /tmp

Trained victims are cached (``$BACKDOORKIT_CACHE``) by attack, seed, data and recipe.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from backdoorkit.analysis import gradient_suppression_experiment, scan_skips
from backdoorkit.attacks import ATTACKS, build_attack
from backdoorkit.cache import ArtifactCache, hash_key
from backdoorkit.data import ImageSet, load_dataset, split_holdout
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.defenses import build_defense
from backdoorkit.metrics import attack_success_rate, benign_accuracy
from backdoorkit.pipeline import recipe_for, train_model
from backdoorkit.viz.curves import plot_sweep

# ------------------------------------------------------------------------------------------ paper
ATTACK_TITLES = {
    "badnets": "BadNets",
    "blended": "Blended",
    "label_consistent": "Label-consistent",
    "wanet": "WaNet",
}
# Table 1 and Table 2 of the paper, (BA, ASR) in %, keyed by dataset -> row -> attack.
PAPER: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "cifar10": {
        "No Defense": {
            "badnets": (92.02, 96.96),
            "blended": (90.89, 83.11),
            "label_consistent": (92.17, 100.0),
            "wanet": (91.48, 96.82),
        },
        "FT-FC": {
            "badnets": (92.08, 97.41),
            "blended": (91.34, 83.17),
            "label_consistent": (92.42, 100.0),
            "wanet": (91.26, 98.26),
        },
        "FT-All": {
            "badnets": (91.66, 96.31),
            "blended": (91.76, 0.81),
            "label_consistent": (91.80, 86.79),
            "wanet": (90.98, 62.18),
        },
        "MCR": {
            "badnets": (84.00, 0.80),
            "blended": (82.51, 0.71),
            "label_consistent": (84.13, 6.15),
            "wanet": (87.77, 14.28),
        },
        "NAD": {
            "badnets": (90.66, 0.94),
            "blended": (90.00, 0.86),
            "label_consistent": (90.20, 17.72),
            "wanet": (90.09, 11.34),
        },
        "SSFT": {
            "badnets": (89.08, 0.31),
            "blended": (88.64, 0.31),
            "label_consistent": (89.86, 4.63),
            "wanet": (88.76, 0.40),
        },
        "SSFT*": {
            "badnets": (90.04, 0.37),
            "blended": (89.22, 0.32),
            "label_consistent": (90.26, 6.44),
            "wanet": (88.80, 1.38),
        },
        "SS": {
            "badnets": (14.30, 0.00),
            "blended": (21.57, 0.00),
            "label_consistent": (18.65, 0.00),
            "wanet": (12.78, 0.00),
        },
        "FT-Critical": {
            "badnets": (91.82, 96.73),
            "blended": (91.74, 55.86),
            "label_consistent": (92.12, 99.30),
            "wanet": (91.06, 93.46),
        },
    },
    "gtsrb": {
        "No Defense": {
            "badnets": (98.25, 95.38),
            "blended": (98.65, 87.48),
            "label_consistent": (96.83, 66.40),
            "wanet": (96.37, 77.53),
        },
        "FT-FC": {
            "badnets": (98.62, 95.63),
            "blended": (91.34, 83.17),
            "label_consistent": (97.62, 77.19),
            "wanet": (97.35, 67.93),
        },
        "FT-All": {
            "badnets": (99.78, 22.11),
            "blended": (99.62, 2.74),
            "label_consistent": (99.68, 57.22),
            "wanet": (99.60, 11.32),
        },
        "MCR": {
            "badnets": (98.50, 0.16),
            "blended": (98.38, 0.11),
            "label_consistent": (95.85, 0.03),
            "wanet": (96.78, 0.00),
        },
        "NAD": {
            "badnets": (96.91, 0.46),
            "blended": (97.09, 0.21),
            "label_consistent": (96.58, 0.00),
            "wanet": (97.12, 37.88),
        },
        "SSFT": {
            "badnets": (99.62, 0.33),
            "blended": (99.46, 0.24),
            "label_consistent": (99.60, 6.00),
            "wanet": (99.43, 9.69),
        },
        "SSFT*": {
            "badnets": (99.68, 0.82),
            "blended": (99.45, 0.41),
            "label_consistent": (99.60, 6.06),
            "wanet": (99.44, 12.83),
        },
        "SS": {
            "badnets": (97.61, 0.65),
            "blended": (87.99, 25.13),
            "label_consistent": (88.44, 6.39),
            "wanet": (22.41, 0.00),
        },
        "FT-Critical": {
            "badnets": (98.32, 95.10),
            "blended": (99.47, 59.68),
            "label_consistent": (99.53, 88.42),
            "wanet": (99.23, 45.09),
        },
    },
}
TABLE1 = ("No Defense", "FT-FC", "FT-All", "SSFT", "SSFT*")
TABLE2 = ("No Defense", "SS", "FT-Critical", "SSFT")
# our defense (registry name, extra parameters) behind each row
ROWS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "No Defense": None,
    "FT-FC": ("ft_fc", {}),
    "FT-All": ("ft_all", {}),
    "SSFT": ("ssft", {}),
    "SSFT*": ("ssft", {"mode": "optimized"}),
    "SS": ("ss", {}),
    "FT-Critical": ("ft_critical", {}),
}
# attack parameters of the paper's setting (5 % poison and target 1 are added for every attack)
PAPER_ATTACK_PARAMS: dict[str, dict[str, Any]] = {"badnets": {"variant": "grid", "size": 3}}
SWEEP_GAMMAS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
SWEEP_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)
SWEEP_EPOCHS = (1, 2, 4, 6, 8, 10)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ pieces
def victim(
    args: argparse.Namespace, train: ImageSet, attack_name: str, seed: int, cache: ArtifactCache
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Poison ``train`` with ``attack_name`` (paper setting) and train (or load) the victim model."""
    params = {**PAPER_ATTACK_PARAMS.get(attack_name, {}), **args.attack_params.get(attack_name, {})}
    attack = build_attack(attack_name, target=args.target, rate=args.rate, **params)
    cfg = recipe_for(train, epochs=args.epochs, device=args.device, amp=args.amp or None)
    key = hash_key(
        "ssft-victim", attack.describe(), seed, fingerprint(train), args.arch, args.width, cfg.model_dump()
    )
    info: dict[str, Any] = {}

    def train_victim() -> torch.nn.Module:
        poisoned = attack.poison(train, seed=seed, cache=cache)  # also sets up the trigger for evaluation
        info.update({"attack": attack.describe(), "poisoned": poisoned.count, **poisoned.info})
        log(f"training {args.arch} (width {args.width}, {cfg.epochs} epochs) on {attack_name}, seed {seed}")
        net, info["train_seconds"] = train_model(
            args.arch, poisoned, cfg, seed=seed, width=args.width, attack=attack
        )
        return net

    model = cache.get_or_compute_model("ssft_victims", key, train_victim, lambda: info, device="cpu")
    if not info:  # loaded from the cache: set up the test-time trigger only (no poisoning)
        attack.setup(train, seed=seed, cache=cache)
        info = (cache.meta("ssft_victims", key) or {}).get("extra", {})
        log(f"victim {attack_name} seed {seed} from cache")
    return model, attack, info


def metrics(model: torch.nn.Module, test: ImageSet, attack: Any) -> dict[str, float]:
    return {"ba": benign_accuracy(model, test), "asr": attack_success_rate(model, test, attack)}


def run_defense(
    name: str,
    kw: dict[str, Any],
    model: torch.nn.Module,
    clean: ImageSet,
    test: ImageSet,
    attack: Any,
    seed: int,
    device: str,
) -> dict[str, Any]:
    d = build_defense(name, **kw)
    res = d.repair(model, clean, seed=seed, device=device)
    out = {"defense": name, "params": kw, **metrics(res.model, test, attack), "seconds": res.seconds}
    out["layers"] = res.info.get("layers")
    out["gammas"] = res.info.get("gammas")
    out["info"] = {k: v for k, v in res.info.items() if k != "scan"}
    out["surrogate_scan"] = res.info.get("scan")
    return out


def fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def table_md(
    title: str,
    rows: tuple[str, ...],
    attacks: list[str],
    ours: dict[str, dict[str, dict[str, Any]]],
    paper: dict[str, dict[str, tuple[float, float]]],
) -> str:
    head = "| defense | " + " | ".join(f"{ATTACK_TITLES.get(a, a)} BA | ASR" for a in attacks) + " |"
    sep = "|---|" + "---|---|" * len(attacks)
    lines = [f"### {title}", "", "ours (paper) in %", "", head, sep]
    for row in rows:
        cells = []
        for a in attacks:
            got = ours.get(row, {}).get(a)
            ref = paper.get(row, {}).get(a)
            for i, k in enumerate(("ba", "asr")):
                mine = fmt(got[k]) if got else "-"
                cells.append(f"{mine} ({ref[i]:.2f})" if ref else mine)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64 = standard)")
    ap.add_argument("--epochs", type=int, default=30, help="victim training epochs (our one-cycle recipe)")
    ap.add_argument("--attacks", default="badnets,blended,label_consistent,wanet")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--target", type=int, default=1)
    ap.add_argument("--clean-fraction", type=float, default=0.1)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--ft-epochs", type=int, default=None, help="override the defenses' 10 epochs")
    ap.add_argument("--ft-lr", type=float, default=None, help="override the defenses' lr 0.01")
    ap.add_argument(
        "--defense-param",
        "-P",
        action="append",
        default=[],
        help="extra parameter for the selection-based defenses, key=value (repeatable)",
    )
    ap.add_argument(
        "--attack-param",
        "-A",
        action="append",
        default=[],
        help="attack parameter, attack:key=value (repeatable), e.g. label_consistent:attacker_epochs=4",
    )
    ap.add_argument("--no-sweeps", action="store_true", help="skip Figures 3-5")
    ap.add_argument(
        "--rows", default=None, help="comma-separated defense rows, run in this order (default: all)"
    )
    ap.add_argument("--no-scan", action="store_true", help="skip the test-set skip scan (analysis only)")
    ap.add_argument("--gradient-suppression", action="store_true", help="also train with all skips scaled")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--amp", action="store_true", help="bf16 autocast when training the victims (opt-in on CPU)"
    )
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--prefix", default="ssft")
    ap.add_argument("--smoke", action="store_true", help="digits, width 8, tiny budgets, output to /tmp")
    args = ap.parse_args(argv)
    args.attack_params = {}
    for item in args.attack_param:
        name, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            ap.error(f"--attack-param wants attack:key=value, got {item!r}")
        from backdoorkit.cli.common import parse_params

        args.attack_params.setdefault(name, {}).update(parse_params([kv]))
    if args.smoke:
        args.dataset, args.width, args.epochs = "digits", 8, 2
        args.out = args.out if args.out != "benchmarks/results" else "/tmp/ssft_smoke"
        args.ft_epochs = args.ft_epochs or 1
        args.attack_params = {"label_consistent": {"steps": 2, "attacker_epochs": 1, "attacker_width": 4}}
    return args


def _defense_kw(args: argparse.Namespace, name: str) -> dict[str, Any]:
    from backdoorkit.cli.common import parse_params

    kw: dict[str, Any] = {}
    if args.ft_epochs is not None and name != "ss":
        kw["epochs"] = args.ft_epochs
    if args.ft_lr is not None and name != "ss":
        kw["lr"] = args.ft_lr
    if name in ("ssft", "ss", "ft_critical"):
        kw.update(parse_params(args.defense_param))
        if args.smoke:
            kw.setdefault("surrogate_epochs", 2)
    return kw


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 16)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ArtifactCache()
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for a in attacks:
        ATTACKS.entry(a)  # unknown names fail now, with the registry's suggestion
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ROWS)
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"error: unknown rows {unknown}; choose from {list(ROWS)}")
    train = load_dataset(args.dataset, "train", args.data_root)
    test = load_dataset(args.dataset, "test", args.data_root)
    report: dict[str, Any] = {"setting": {k: v for k, v in vars(args).items()}, "runs": [], "sweeps": {}}
    started = time.perf_counter()

    for seed in seeds:
        _, clean = split_holdout(train, args.clean_fraction, seed, name="clean")
        for attack_name in attacks:
            model, attack, vinfo = victim(args, train, attack_name, seed, cache)
            base = metrics(model, test, attack)
            log(f"{attack_name} seed {seed}: no defense BA {fmt(base['ba'])} ASR {fmt(base['asr'])}")
            run: dict[str, Any] = {
                "attack": attack_name,
                "seed": seed,
                "victim": vinfo,
                "rows": {"No Defense": {**base, "seconds": 0.0}},
            }
            report["runs"].append(run)  # written after every row: a stopped run keeps what it has
            for row in rows:  # in the order asked for
                spec = ROWS[row]
                if spec is None:
                    continue
                name, extra = spec
                kw = {**_defense_kw(args, name), **extra}
                r = run_defense(name, kw, model, clean, test, attack, seed, args.device)
                run["rows"][row] = r
                log(
                    f"  {row:12s} BA {fmt(r['ba'])} ASR {fmt(r['asr'])} layers {r['layers']} "
                    f"gammas {r['gammas']} ({r['seconds']:.1f}s)"
                )
                write_report(args, report, seeds, attacks, out_dir, started)
            if seed == seeds[0] and not args.no_scan:
                scan = scan_skips(model, test, attack)
                chosen = run["rows"].get("SSFT", {}).get("layers") or []
                scan.to_csv(out_dir / f"{args.prefix}_scan_{attack_name}.csv")
                scan.plot(
                    out_dir / f"{args.prefix}_scan_{attack_name}.png",
                    highlight=chosen,
                    title=f"{ATTACK_TITLES.get(attack_name, attack_name)} on {args.dataset}: test-set skip "
                    f"scan (analysis only; * = SSFT's choice)",
                )
                run["test_scan"] = scan.to_rows()
            write_report(args, report, seeds, attacks, out_dir, started)
            if attack_name == "badnets" and seed == seeds[0] and not args.no_sweeps:
                chosen = run["rows"].get("SSFT", {}).get("layers")
                report["sweeps"] = sweeps(args, model, train, test, attack, seed, out_dir, chosen)
            if attack_name == "badnets" and seed == seeds[0] and args.gradient_suppression:
                poisoned = attack.poison(train, seed=seed).data
                gs = gradient_suppression_experiment(
                    args.arch,
                    poisoned,
                    test,
                    attack,
                    config=recipe_for(train, epochs=args.epochs, device=args.device, amp=args.amp or None),
                    width=args.width,
                    seed=seed,
                )
                gs.plot(out_dir / f"{args.prefix}_training_gamma.png")
                report["gradient_suppression"] = gs.to_rows()

    write_report(args, report, seeds, attacks, out_dir, started)
    return report


def write_report(
    args: argparse.Namespace,
    report: dict[str, Any],
    seeds: list[int],
    attacks: list[str],
    out_dir: Path,
    started: float,
) -> None:
    """Write ``<prefix>_<dataset>.md`` and ``.json`` from the runs so far (called after every run)."""
    stem = f"{args.prefix}_{args.dataset}"
    done = [a for a in attacks if any(r["attack"] == a for r in report["runs"])]
    attacks = done or attacks
    ours = _averaged(report["runs"])
    paper = PAPER.get(args.dataset, PAPER["cifar10"])
    md = [
        f"# SSFT reproduction on {args.dataset}",
        "",
        f"ResNet-18 width {args.width}, {args.epochs} training epochs (one-cycle SGD), "
        f"poison rate {args.rate}, "
        f"target {args.target}, clean samples {args.clean_fraction:g} of the training split, seeds {seeds}. "
        "Paper numbers (CIFAR-10, full ResNet-18, 200 epochs) in parentheses.",
        "",
        f"Defense settings: fine-tuning lr {args.ft_lr or 'default (0.01)'}, "
        f"epochs {args.ft_epochs or 'default (10)'}, extra selection parameters "
        f"{args.defense_param or 'none'}, rows {args.rows or 'all'}.",
        "",
        table_md("Table 1", TABLE1, attacks, ours, paper),
        table_md("Table 2 (ablation)", TABLE2, attacks, ours, paper),
        "### Critical layers chosen (SSFT, per attack and seed)",
        "",
    ]
    for run in report["runs"]:
        r = run["rows"].get("SSFT")
        if r is None:
            continue
        sur = r["info"].get("selection", {}).get("surrogate", {})
        md.append(
            f"- {run['attack']} seed {run['seed']}: {r['layers']} (surrogate backdoor on the defender's "
            f"held-out clean samples: BA {fmt(sur.get('ba'))}, ASR {fmt(sur.get('asr'))})"
        )
    report["seconds"] = time.perf_counter() - started
    md.append(f"\nTotal time {report['seconds']:.0f}s.\n")
    (out_dir / f"{stem}.md").write_text("\n".join(md))
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    log(f"wrote {out_dir / (stem + '.md')}")


def _averaged(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean BA / ASR over seeds per (row, attack)."""
    acc: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for run in runs:
        for row, r in run["rows"].items():
            acc.setdefault(row, {}).setdefault(run["attack"], []).append((r["ba"], r["asr"]))
    return {
        row: {
            a: {"ba": sum(v[0] for v in vals) / len(vals), "asr": sum(v[1] for v in vals) / len(vals)}
            for a, vals in per.items()
        }
        for row, per in acc.items()
    }


def sweeps(
    args: argparse.Namespace,
    model: torch.nn.Module,
    train: ImageSet,
    test: ImageSet,
    attack: Any,
    seed: int,
    out_dir: Path,
    layers: list[str] | None = None,
) -> dict[str, Any]:
    """Figures 3-5 for BadNets: SSFT against the decay factor, the clean sample size, the tuning epochs.

    The decay-factor and epoch sweeps keep the clean set of the main run, so they reuse the skip SSFT
    chose there (``layers``) instead of repeating the same selection; the sample-size sweep selects
    anew on each clean subset.  The epoch sweep disables ``min_steps`` so that the x axis is what it
    says (the paper's Figure 5)."""
    _, clean = split_holdout(train, args.clean_fraction, seed, name="clean")
    base = _defense_kw(args, "ssft")
    fixed = {**base, "layers": layers} if layers else base
    out: dict[str, Any] = {"gamma": [], "samples": [], "epochs": []}
    for g in SWEEP_GAMMAS:
        r = run_defense("ssft", {**fixed, "gamma": g}, model, clean, test, attack, seed, args.device)
        out["gamma"].append({"gamma": g, "ba": r["ba"], "asr": r["asr"], "layers": r["layers"]})
        log(f"  fig3 gamma {g}: BA {fmt(r['ba'])} ASR {fmt(r['asr'])}")
    for frac in SWEEP_FRACTIONS:
        _, part = split_holdout(train, frac, seed, name="clean")
        r = run_defense("ssft", base, model, part, test, attack, seed, args.device)
        out["samples"].append(
            {"fraction": frac, "samples": len(part), "ba": r["ba"], "asr": r["asr"], "layers": r["layers"]}
        )
        log(f"  fig4 {len(part)} samples: BA {fmt(r['ba'])} ASR {fmt(r['asr'])} layers {r['layers']}")
    epochs = SWEEP_EPOCHS if not args.smoke else (1, 2)
    for e in epochs:
        r = run_defense(
            "ssft", {**fixed, "epochs": e, "min_steps": None}, model, clean, test, attack, seed, args.device
        )
        out["epochs"].append({"epochs": e, "ba": r["ba"], "asr": r["asr"]})
        log(f"  fig5 {e} epochs: BA {fmt(r['ba'])} ASR {fmt(r['asr'])}")
    p = args.prefix
    plot_sweep(
        out["gamma"],
        "gamma",
        out_dir / f"{p}_fig3_gamma.png",
        title="SSFT vs decay factor (BadNets)",
        xlabel="decay factor gamma",
    )
    plot_sweep(
        out["samples"],
        "samples",
        out_dir / f"{p}_fig4_samples.png",
        title="SSFT vs clean sample size (BadNets)",
        xlabel="clean samples",
        log_x=True,
    )
    plot_sweep(
        out["epochs"],
        "epochs",
        out_dir / f"{p}_fig5_epochs.png",
        title="SSFT vs tuning epochs (BadNets)",
        xlabel="tuning epochs",
    )
    return out


if __name__ == "__main__":
    main()
