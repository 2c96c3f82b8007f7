"""``backdoorkit defend`` (every defense kind), ``detect`` / ``inspect`` (its aliases for detectors and
inspectors) and ``backdoorkit scan-skips``.

``defend`` dispatches on the defense's kind, i.e. on the scenario it serves:

* model repair (S1): ``--model`` is a model file; the defender's clean samples are a stratified
  ``--clean-fraction`` of the dataset's *training* split; BA / ASR before and after;
* robust training (S2 / S3): ``--model`` is an architecture; the training split is poisoned with
  ``--attack`` (the untrusted set), ``--holdout`` of it is split off first as the defender's clean
  holdout (0: scenario S3); ``before`` is the same architecture trained normally on the same
  poisoned set; ``isolation`` {precision, recall} where the defense isolates rows;
* input detector (S1): detection metrics on clean vs triggered test images (``auroc``,
  ``tpr_at_1fpr``, ``tpr_at_5fpr``, ``threshold``), and with ``--reject`` the guarded model's BA / ASR;
* model inspector (S1): the verdict (``infected``, ``target``, ``anomaly_index``).

The evaluation attack, the test set and the poisoned mask are never passed to the defense.  ``--json``
prints one object: ``{"before": {"ba", "asr"}, "after": {...}, "defense", "kind", "params", "info",
"metrics", "seconds", ...}`` with BA / ASR as fractions in [0, 1] (``asr`` null without ``--attack``).

``scan-skips`` writes the skip scan of a model (BA and ASR as each skip is suppressed; SSFT's
Figure 1) as CSV, JSON and PNG into a folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import typer

from backdoorkit.cli.app import app
from backdoorkit.cli.common import (
    ArchOpt,
    DataRootOpt,
    DeviceOpt,
    JsonOpt,
    ParamOpt,
    check_output,
    console,
    emit_json,
    err_console,
    load_model_file,
    load_splits,
    parse_params,
    pct,
)
from backdoorkit.data import parse_amount
from backdoorkit.errors import ConfigError, ScenarioError
from backdoorkit.scenarios import needs_text

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _load_checked(path: Path, train: Any, device: str, arch: str | None = None) -> Any:
    """The model file, refused in one line when it does not fit ``train`` (channels, image size,
    classes, finite outputs on a probe batch)."""
    return load_model_file(path, train, arch=arch, device=device)


def recorded_attack(net: Any, name: str) -> dict[str, Any] | None:
    """The parameters of attack ``name`` as the model's sidecar records the attack that made it
    (``config.attack``), or ``None`` when it records none or another attack."""
    from backdoorkit.attacks import ATTACKS

    card = getattr(net, "card", None) or {}
    rec = (card.get("config") or {}).get("attack")
    if not isinstance(rec, dict) or not isinstance(rec.get("attack"), str):
        return None
    try:
        same = ATTACKS.entry(rec["attack"]).name == ATTACKS.entry(name).name
    except (KeyError, LookupError):
        return None
    return {k: v for k, v in rec.items() if k != "attack"} if same else None


def _eval_attack(
    name: str | None,
    target: int | None,
    params: list[str] | None,
    train: Any,
    seed: int,
    net: Any = None,
    used: dict[str, Any] | None = None,
) -> Any:
    """The attack to *evaluate* with (set up on the training split with the training seed).

    When the model's sidecar records the same attack (``train --attack ...`` writes it), its
    parameters are the defaults and the flags (``--target``, ``-p``) override them; a flag that
    contradicts the record gets a one-line warning.  ``used`` receives ``{"attack", "params",
    "from_sidecar", "from_flags"}``.
    """
    if name is None:
        if params:
            raise ConfigError("-p/--param sets attack parameters; give --attack too")
        return None
    from backdoorkit.attacks import build_attack

    given = parse_params(params)
    if target is not None:
        given["target"] = target
    rec = recorded_attack(net, name) if net is not None else None
    values = {**(rec or {}), **given}
    if rec:
        clash = [f"{k}={given[k]!r} (recorded {rec[k]!r})" for k in given if k in rec and given[k] != rec[k]]
        if clash:
            err_console.print(
                f"backdoorkit: warning: {', '.join(clash)} contradicts the attack the model's sidecar "
                "records; using the given value",
                highlight=False,
                soft_wrap=True,
            )
    try:
        atk = build_attack(name, **values)
    except ConfigError:
        if not rec:
            raise
        atk = build_attack(name, **given)  # a record from another version: fall back to the flags
        rec = None
    atk.setup(train, seed=seed)
    if used is not None:
        used.update(
            attack=atk.name,
            params={k: v for k, v in atk.describe().items() if k != "attack"},
            from_sidecar=sorted(k for k in (rec or {}) if k not in given),
            from_flags=sorted(given),
        )
    return atk


def _attack_seed(explicit: int | None, net: Any) -> int:
    if explicit is not None:
        return explicit
    card = getattr(net, "card", None) or {}
    seed = (card.get("config") or {}).get("seed")
    return int(seed) if isinstance(seed, int) else 0


def _metrics(net: Any, test: Any, atk: Any) -> dict[str, float | None]:
    from backdoorkit.metrics import attack_success_rate, benign_accuracy

    return {"ba": benign_accuracy(net, test), "asr": attack_success_rate(net, test, atk) if atk else None}


def _is_model_file(model: str) -> bool:
    return Path(model).suffix.lower() in MODEL_SUFFIXES or Path(model).is_file()


def _defense_for(name: str, params: list[str] | None, kinds: tuple[str, ...], command: str) -> Any:
    from backdoorkit.defenses import DEFENSES, build_defense

    names = [n for n in DEFENSES.names() if DEFENSES.get(n).kind in kinds]
    allowed = ", ".join(names)
    if name not in DEFENSES and command != "defend":
        close = difflib.get_close_matches(name.lower(), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {' / '.join(kinds)} {name!r}{hint}; {command} runs: {allowed or 'none'}")
    cls = DEFENSES.get(name)
    if cls.kind not in kinds:
        raise ConfigError(
            f"{command} runs {' / '.join(kinds)} methods; {name} is a {cls.kind} defense "
            f"(try: {allowed or 'none registered'})"
        )
    return build_defense(name, **parse_params(params))


@app.command()
def defend(
    defense: str = typer.Option(
        ..., "--defense", help="A registered defense of any kind (ssft, ft_all ...)."
    ),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Model file (repair, detector, inspector) or architecture (robust training).",
    ),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path."),
    clean_fraction: float = typer.Option(
        0.1, "--clean-fraction", help="S1 clean samples: fraction (<1) or count (>=1) of the train split."
    ),
    holdout: float = typer.Option(
        0.05, "--holdout", help="Robust training: clean holdout split off the train split (0: scenario S3)."
    ),
    defense_param: list[str] | None = typer.Option(
        None, "--defense-param", "-P", help="A defense parameter as key=value (repeatable), e.g. -P lr=0.05."
    ),
    attack: str | None = typer.Option(
        None, "--attack", "-a", help="Attack to evaluate ASR with (never given to the defense)."
    ),
    param: list[str] | None = ParamOpt,
    target: int | None = typer.Option(
        None, "--target", help="Target class of the evaluation attack (default: the sidecar's, else 0)."
    ),
    poison_rate: float | None = typer.Option(
        None, "--poison-rate", help="Robust training: poison rate, fraction (<1) or count (>=1)."
    ),
    attack_seed: int | None = typer.Option(
        None, "--attack-seed", help="Seed of the evaluation trigger (default: the model's seed, else 0)."
    ),
    width: int | None = typer.Option(None, "--width", help="Robust training: the architecture's width."),
    epochs: int | None = typer.Option(None, "--epochs", help="Robust training: epochs of the recipe."),
    reject: bool = typer.Option(False, "--reject", help="Detectors: report the guarded model's BA / ASR."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the defended model here (.safetensors)."),
    arch: str | None = ArchOpt,
    seed: int = typer.Option(0, "--seed", help="Seed of the clean-sample draw and of the defense."),
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run DEFENSE in the scenario it serves; print BA/ASR before and after (or its detection / verdict)."""
    d = _defense_for(defense, defense_param, ("repair", "training", "detector", "inspector"), "defend")
    if attack is None and (target is not None or attack_seed is not None):
        raise ConfigError("--target / --attack-seed set the evaluation attack; give --attack too")
    if epochs == 0:
        raise ConfigError("--epochs 0 would leave the models untrained; give at least 1")
    check_output(out, "--out")
    if out is not None and d.kind not in ("repair", "training"):
        raise ConfigError(f"--out saves a defended model; {d.name} ({d.kind}) produces none")
    common = {"dataset": dataset, "data_root": data_root, "seed": seed, "device": device}
    if d.kind == "training":
        if _is_model_file(model):
            raise ScenarioError(
                f"{d.name} is robust training: it needs {needs_text(d.scenarios)}, not a model file "
                f"(scenario S1); pass an architecture as --model (e.g. resnet18) and --attack"
            )
        if arch is not None:
            raise ConfigError(
                "--arch describes a model file; robust training takes the architecture as --model"
            )
        tgt = 0 if target is None else target
        summary = run_training(d, model, attack, param, tgt, poison_rate, holdout, width, epochs, **common)
    else:
        if not _is_model_file(model):
            raise ScenarioError(
                f"{d.name} is a {d.kind} defense for scenario S1 (a suspicious model and a small clean "
                f"set): --model must be a model file, not {model!r}"
            )
        summary = run_on_model(
            d, Path(model), attack, param, target, attack_seed, clean_fraction, arch=arch, **common
        )
    _finish(d, summary, out, reject, json_out, model, dataset)


def run_on_model(
    d: Any,
    model: Path,
    attack: str | None,
    param: list[str] | None,
    target: int | None,
    attack_seed: int | None,
    clean_fraction: float,
    *,
    dataset: str,
    data_root: Path | None,
    seed: int,
    device: str,
    arch: str | None = None,
) -> dict[str, Any]:
    """Scenario S1: a model file and clean training samples; ``before`` / ``after`` and the metrics.

    The evaluation attack takes its parameters from the model's sidecar when that records the same
    attack (flags override); ``summary["eval_attack"]`` says which were used."""
    from backdoorkit.data import split_holdout
    from backdoorkit.defenses import DefenseInputs

    train_set, test_set = load_splits(dataset, data_root)
    net = _load_checked(model, train_set, device, arch)
    amount = parse_amount(clean_fraction, "--clean-fraction", positive=True)
    _, clean = split_holdout(train_set, amount, seed, name="clean")
    used: dict[str, Any] = {}
    atk = _eval_attack(attack, target, param, train_set, _attack_seed(attack_seed, net), net, used)
    before = _metrics(net, test_set, atk)
    result = d.run(DefenseInputs("S1", model=net, clean=clean, seed=seed, device=device))
    scored = d.evaluate(result, test_set, atk)
    return {
        "before": before,
        "after": {"ba": scored.get("ba"), "asr": scored.get("asr")},
        "result": result,
        "metrics": scored,
        "clean_samples": len(clean),
        "source": str(model),
        "_evaluation": (test_set, atk),
        **({"eval_attack": used} if used else {}),
    }


def run_training(
    d: Any,
    arch: str,
    attack: str | None,
    param: list[str] | None,
    target: int,
    poison_rate: float | None,
    holdout: float,
    width: int | None,
    epochs: int | None,
    *,
    dataset: str,
    data_root: Path | None,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """Scenarios S2 / S3: poison the training split, train normally (``before``) and with the defense."""
    from backdoorkit.attacks import build_attack
    from backdoorkit.data import split_holdout
    from backdoorkit.defenses import DefenseInputs
    from backdoorkit.pipeline import make_model, recipe_for, train_victim

    train_set, test_set = load_splits(dataset, data_root)
    hold = None
    if holdout > 0:
        rest, hold = split_holdout(train_set, parse_amount(holdout, "--holdout", positive=True), seed)
    else:
        rest = train_set
    atk = None
    if attack is not None:
        params = parse_params(param)
        if poison_rate is not None:
            params["rate"] = parse_amount(poison_rate, "--poison-rate")
        atk = build_attack(attack, target=target, **params)
        poisoned = atk.poison(rest, seed=seed)
    elif param or poison_rate is not None:
        raise ConfigError("-p/--param and --poison-rate set the attack; give --attack too")
    else:
        import torch

        from backdoorkit.attacks import PoisonedSet

        poisoned = PoisonedSet(rest, torch.zeros(len(rest), dtype=torch.bool), "none")
    cfg = recipe_for(poisoned.data, epochs=epochs, seed=seed, device=device)

    def factory() -> Any:
        return make_model(arch, poisoned.data, width=width, seed=seed)

    plain = train_victim(atk, factory, poisoned, cfg)
    before = _metrics(plain, test_set, atk)
    scenario = "S2" if hold is not None else "S3"
    inputs = DefenseInputs(
        scenario,
        untrusted=poisoned.data,
        clean=hold,
        model_factory=factory,
        config=cfg,
        seed=seed,
        device=device,
    )
    result = d.run(inputs)
    scored = d.evaluate(result, test_set, atk, mask=poisoned.mask)
    summary: dict[str, Any] = {
        "before": before,
        "after": {"ba": scored.get("ba"), "asr": scored.get("asr")},
        "result": result,
        "metrics": scored,
        "scenario": scenario,
        "holdout": len(hold) if hold is not None else 0,
        "poisoned": poisoned.count,
        "source": arch,
    }
    if "iso_precision" in scored:
        summary["isolation"] = {"precision": scored["iso_precision"], "recall": scored["iso_recall"]}
    return summary


def _finish(
    d: Any, summary: dict[str, Any], out: Path | None, reject: bool, json_out: bool, model: str, dataset: str
) -> None:
    """Save, then print the summary as JSON or as lines."""
    from backdoorkit.checkpoint import save_model

    result = summary.pop("result")
    metrics = summary["metrics"]
    if d.kind == "detector":
        summary.update({k: metrics.get(k) for k in ("auroc", "tpr_at_1fpr", "tpr_at_5fpr", "threshold")})
        if reject:
            summary["guarded"] = {"ba": metrics.get("ba"), "asr": metrics.get("asr")}
        summary["after"] = summary["before"]  # a detector does not change the model
    if d.kind == "inspector":
        v = result.verdict
        summary.update(infected=bool(v.infected), target=v.target, anomaly_index=v.anomaly_index)
        summary["after"] = summary["before"]
    summary.update(
        defense=d.name,
        kind=d.kind,
        params=d.params.model_dump(mode="json"),
        info=result.info,
        seconds=result.seconds,
    )
    evaluation = summary.pop("_evaluation", None)
    if out is not None and d.kind in ("detector", "inspector"):
        summary["files"] = {k: str(v) for k, v in _write_evidence(d, result, evaluation, out).items()}
    elif out is not None:
        config = {"command": "defend", "defense": d.describe(), "source": model, "dataset": dataset}
        summary["out"] = str(save_model(result.model, out, config=config))
    if json_out:
        emit_json(summary)
        return
    _print(d, summary)


def _write_evidence(d: Any, result: Any, evaluation: Any, out: Path) -> dict[str, Path]:
    """Detectors: clean vs triggered score histograms (``scores.png``); inspectors: the recovered
    trigger of the suspected target (``trigger.png``), when there is one."""
    from backdoorkit.viz.detection import plot_score_histograms, save_recovered_trigger

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if d.kind == "inspector":
        v = result.verdict
        if v is not None and v.trigger is not None and v.mask is not None:
            title = f"{d.name}: suspected target {v.target}"
            files["trigger"] = save_recovered_trigger(v.trigger, v.mask, out / "trigger.png", title=title)
        return files
    test, attack = evaluation if evaluation is not None else (None, None)
    if test is None or attack is None:
        raise ConfigError("--out draws clean vs triggered score histograms: give --attack too")
    det = result.detector
    device = next((p.device for p in result.model.parameters()), "cpu")
    from backdoorkit.data.imageset import to_pixels

    eligible = attack.asr_mask(test.y.cpu())
    x = test.x.cpu()[eligible]
    triggered = torch.cat(
        [attack.apply(to_pixels(x[i : i + 512]).to(device)).cpu() for i in range(0, len(x), 512)]
    )
    files["scores"] = plot_score_histograms(
        det.scores(test.x, device),
        det.scores(triggered, device),
        out / "scores.png",
        threshold=det.threshold,
        title=f"{d.name}: clean vs {attack.name}-triggered test images",
    )
    return files


def _print(d: Any, summary: dict[str, Any]) -> None:
    before, after = summary["before"], summary["after"]
    console.print(f"[bold]{d.name}[/] ({d.kind}) on {summary['source']}: {summary['seconds']:.1f}s")
    if "eval_attack" in summary:
        console.print(eval_attack_line(summary["eval_attack"]), highlight=False, soft_wrap=True)
    for key in ("layers", "gammas"):
        if summary["info"].get(key):
            console.print(f"{key}: {summary['info'][key]}")
    if d.kind == "detector":
        console.print(
            f"AUROC {summary.get('auroc')}  TPR@1%FPR {summary.get('tpr_at_1fpr')}  "
            f"TPR@5%FPR {summary.get('tpr_at_5fpr')}  threshold {summary.get('threshold')}"
        )
        if "guarded" in summary:
            g = summary["guarded"]
            console.print(f"guarded: BA {pct(g['ba'])} %, ASR {pct(g['asr'])} % (rejected inputs removed)")
        return
    if d.kind == "inspector":
        console.print(
            f"infected {summary['infected']}  target {summary['target']}  "
            f"anomaly index {summary['anomaly_index']}"
        )
        return
    console.print(f"BA  {pct(before['ba'])} % -> {pct(after['ba'])} %")
    if before.get("asr") is not None:
        console.print(f"ASR {pct(before['asr'])} % -> {pct(after['asr'])} %")
    if "isolation" in summary:
        iso = summary["isolation"]
        console.print(f"isolation precision {pct(iso['precision'])} %, recall {pct(iso['recall'])} %")
    if "out" in summary:
        console.print(f"saved {summary['out']}")


def eval_attack_line(used: dict[str, Any]) -> str:
    """``evaluation attack badnets: target=1, rate=0.1 (from the model's sidecar: rate, target)``."""
    shown = {k: v for k, v in used["params"].items() if k in ("target", "rate") or k in used["from_flags"]}
    text = ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))
    where = []
    if used["from_sidecar"]:
        where.append(f"from the model's sidecar: {', '.join(used['from_sidecar'])}")
    if used["from_flags"]:
        where.append(f"from flags: {', '.join(used['from_flags'])}")
    return f"evaluation attack {used['attack']}: {text} ({'; '.join(where) or 'defaults'})"


def parse_gammas(text: str | None) -> tuple[float, ...]:
    """``"1,0.5,0"`` (commas or spaces) -> ``(1.0, 0.5, 0.0)``; ``None`` -> the default grid."""
    from backdoorkit.analysis import DEFAULT_GAMMAS

    if text is None:
        return DEFAULT_GAMMAS
    try:
        out = tuple(float(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise ConfigError(f"--gammas {text!r}: give numbers separated by commas") from None
    if not out:
        raise ConfigError("--gammas is empty")
    return out


@app.command("scan-skips")
def scan_skips_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="The model (.safetensors + sidecar)."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path."),
    attack: str = typer.Option(..., "--attack", "-a", help="The attack whose ASR is scanned."),
    param: list[str] | None = ParamOpt,
    target: int | None = typer.Option(
        None, "--target", help="Target class (default: the sidecar's, else 0)."
    ),
    attack_seed: int | None = typer.Option(None, "--attack-seed", help="Trigger seed (default: model's)."),
    gammas: str | None = typer.Option(None, "--gammas", help="Comma-separated grid (default 1.0,0.9,...,0)."),
    skip: list[str] | None = typer.Option(None, "--skip", help="Scan only these skips (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for skip_scan.csv / .json / .png."),
    arch: str | None = ArchOpt,
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """BA and ASR of MODEL as each skip connection alone is scaled by gamma (CSV, JSON and PNG)."""
    from backdoorkit.analysis import scan_skips

    check_output(out, "--out", folder=True)
    train_set, test_set = load_splits(dataset, data_root)
    net = _load_checked(model, train_set, device, arch)
    used: dict[str, Any] = {}
    atk = _eval_attack(attack, target, param, train_set, _attack_seed(attack_seed, net), net, used)
    if not json_out:
        console.print(eval_attack_line(used), highlight=False, soft_wrap=True)
    scan = scan_skips(net, test_set, atk, parse_gammas(gammas), list(skip) if skip else None)
    scores = scan.scores("official")
    files = scan.save(out, title=f"{model.stem}: {attack} on {test_set.name}", highlight=[scores[0].skip])
    if json_out:
        emit_json(
            {
                **scan.to_dict(),
                "eval_attack": used,
                "scores": [s.__dict__ for s in scores],
                "files": {k: str(v) for k, v in files.items()},
            }
        )
        return
    console.print(f"baseline BA {pct(scan.baseline['ba'])} %, ASR {pct(scan.baseline['asr'])} %")
    for s in scores:
        console.print(
            f"{s.skip:>14}  critical score {s.score:+.3f} at gamma {s.gamma:g} "
            f"(BA {pct(s.ba)} %, ASR {pct(s.asr)} %)"
        )
    for kind, path in files.items():
        console.print(f"wrote {kind}: {path}")
