"""Hostile model files and sidecars, each crafted here: every one ends with exit code 2 and one line on
stderr, never a traceback, and the absurd ones within a peak-memory and time bound.  Also: legacy state
dicts through ``--arch`` (registered names, the user's own ``package.module:factory``), and the evaluation
attack of ``scan-skips`` taken from the sidecar's record (the silent wrong result of issue 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from backdoorkit.checkpoint import load_model, save_model, sidecar_path
from backdoorkit.data import load_dataset
from backdoorkit.errors import ConfigError, ModelFileError
from backdoorkit.models import build_model
from backdoorkit.pipeline import make_model
from hardening_helpers import cli_error, isolate, run_cli
from hardening_helpers import refused_within_bounds as refused_within

PEAK_MB = 64  # refusing an absurd sidecar stays under this much Python memory
SECONDS = 10.0  # and this much time (a loaded 2-core CPU)


def refused_within_bounds(load: Any, error: type[Exception], match: str) -> None:
    refused_within(load, match, error=error, peak_mb=PEAK_MB, seconds=SECONDS)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_dataset("digits", "train")


@pytest.fixture()
def model_file(tmp_path: Path, digits: Any) -> Path:
    """An untrained width-2 ResNet-18 for digits, with a sidecar recording BadNets target 1."""
    net = make_model("resnet18", digits, width=2, seed=0)
    config = {"seed": 0, "attack": {"attack": "badnets", "target": 1, "rate": 0.1}}
    return save_model(net, tmp_path / "m.safetensors", classes=digits.classes, config=config)


def scan_error(capsys: pytest.CaptureFixture, path: Path, *needles: str, extra: tuple[str, ...] = ()) -> str:
    line = cli_error(
        capsys, "scan-skips", "-m", str(path), "-a", "badnets", "--skip", "layer1.0", "--gammas", "1",
        "-o", "scan", *extra,
    )  # fmt: skip
    for needle in needles:
        assert needle in line, line
    return line


def edit_card(path: Path, **changes: Any) -> None:
    card = json.loads(sidecar_path(path).read_text())
    for key, value in changes.items():
        parts = key.split("__")
        target = card
        for part in parts[:-1]:
            target = target[part]
        target[parts[-1]] = value
    sidecar_path(path).write_text(json.dumps(card))


# --------------------------------------------------------------------------------------- sidecars
@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"classes": "0123456789"}, "classes"),
        ({"classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, "classes"),
        ({"classes": ["a"] * 10}, "distinct"),
        ({"classes": ["a", "b"]}, "num_classes"),
        ({"skips": {"gammas": {"layer1.0": "x"}}}, "gammas"),
        ({"skips": {"gammas": {"layer1.0": float("nan")}}}, "gammas"),
        ({"skips": {"gammas": {"layer1.0": float("inf")}}}, "gammas"),
        ({"skips": {"betas": {"layer1.0": 1e300}}}, "betas"),
        ({"skips": {"gammas": {"layer1.0": True}}}, "gammas"),
        ({"skips": {"gammas": {"nope": 0.5}}}, "unknown skip"),
        ({"skips": "all"}, "skips"),
        ({"kwargs": [1, 2]}, "kwargs"),
        ({"kwargs__width": "wide"}, "width"),
        ({"kwargs__width": -3}, "width"),
        ({"kwargs__width": True}, "width"),
        ({"normalization__std": [0.0]}, "std"),
        ({"normalization__mean": "x"}, "mean"),
        ({"normalization__mean": [float("nan")]}, "mean"),
        ({"version": "2"}, "version"),
        ({"arch": 7}, "arch"),
        ({"arch": "resnet9000"}, "unknown model"),
        ({"children": {"host": 3}}, "children"),
        ({"config": json.loads("[" * 40 + "]" * 40)}, "nested deeper"),
    ],
)
def test_malformed_sidecars_are_one_line(
    capsys: pytest.CaptureFixture, model_file: Path, changes: dict[str, Any], needle: str
) -> None:
    edit_card(model_file, **changes)
    scan_error(capsys, model_file, needle)


def test_deeply_nested_sidecar_within_bounds(model_file: Path) -> None:
    sidecar_path(model_file).write_text(
        '{"format": "backdoorkit.model", "config": ' + "[" * 200_000 + "]" * 200_000 + "}"
    )
    refused_within_bounds(lambda: load_model(model_file), ModelFileError, "nested deeper")


def test_absurd_width_refused_before_allocation(model_file: Path) -> None:
    """A width of 200,000 would allocate about 1.4 TB; it is refused from the sidecar alone."""
    edit_card(model_file, kwargs__width=200_000)
    refused_within_bounds(lambda: load_model(model_file), ModelFileError, "width 200000 is out of range")
    edit_card(model_file, kwargs__width=4000)  # in range, but ~10^10 parameters: counted on meta
    refused_within_bounds(lambda: load_model(model_file), ModelFileError, "parameters is more than")


def test_header_shapes_compared_with_sidecar_before_building(model_file: Path) -> None:
    edit_card(model_file, kwargs__width=4)
    refused_within_bounds(lambda: load_model(model_file), ModelFileError, "do not match the sidecar")


def test_dtype_mismatch_is_an_error(capsys: pytest.CaptureFixture, tmp_path: Path, model_file: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = {k: (v.double() if v.is_floating_point() else v) for k, v in load_file(str(model_file)).items()}
    save_file(state, str(model_file))
    scan_error(capsys, model_file, "dtype", "float64")


def test_finite_but_overflowing_weights_are_refused(capsys: pytest.CaptureFixture, model_file: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_file))
    state = {k: (v * 1e30 if k.endswith("conv1.weight") or k == "fc.weight" else v) for k, v in state.items()}
    save_file(state, str(model_file))
    scan_error(capsys, model_file, "not finite")


def test_model_that_does_not_fit_the_dataset(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    net = build_model(
        "resnet18", width=2, in_channels=3 if load_dataset("digits", "test").channels == 1 else 1
    )
    path = save_model(net, tmp_path / "c.safetensors")
    scan_error(capsys, path, "channel")
    vit = build_model(
        "vit_tiny", image_size=16, depth=1, dim=12, heads=3, in_channels=load_dataset("digits").channels
    )
    path = save_model(vit, tmp_path / "v.safetensors")
    line = cli_error(capsys, "defend", "--defense", "ft_fc", "-m", str(path), "--clean-fraction", "20")
    assert "16x16" in line


def test_vit_image_size_not_multiple_of_patch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a multiple of patch"):
        build_model("vit_tiny", image_size=30, patch=4, depth=1)


# --------------------------------------------------------------------------------------- legacy files
def test_legacy_state_dict_needs_and_takes_arch(
    capsys: pytest.CaptureFixture, tmp_path: Path, digits: Any
) -> None:
    net = make_model("resnet18", digits, width=2, seed=0)
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, legacy)
    assert "--arch" in scan_error(capsys, legacy, "no sidecar")
    code, out, err = run_cli(
        capsys, "scan-skips", "-m", str(legacy), "--arch", "resnet18", "-a", "badnets",
        "--skip", "layer1.0", "--gammas", "1", "-o", "scan", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert {r["skip"] for r in json.loads(out)["rows"]} == {"layer1.0"} and not err.strip()


def test_pickled_legacy_file_is_refused_without_torch_advice(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    bad = tmp_path / "evil.pth"
    torch.save({"net": Path("x")}, bad)  # a pickled class: needs full unpickling
    line = scan_error(capsys, bad, "refused", "unpickling", extra=("--arch", "resnet18"))
    assert "weights_only" not in line


def test_user_factory_arch_made_addressable(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Block(nn.Module):\n"
        "    def __init__(self, c):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(c, c, 3, padding=1)\n"
        "    def forward(self, x):\n        return x + self.conv(x)\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=3):\n"
        "        super().__init__()\n        self.stem = nn.Conv2d(in_channels, 4, 3, padding=1)\n"
        "        self.block = Block(4)\n        self.fc = nn.Linear(4, num_classes)\n"
        "    def forward(self, x):\n        return self.fc(self.block(self.stem(x)).mean((2, 3)))\n\n"
        "def make(num_classes=10, in_channels=3):\n    return Net(num_classes, in_channels)\n"
    )
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        channels = load_dataset("digits", "test").channels
        net = importlib.import_module("my_models").make(10, channels)
        torch.save(net.state_dict(), tmp_path / "mine.pt")
        code, out, err = run_cli(
            capsys, "scan-skips", "-m", "mine.pt", "--arch", "my_models:make", "-a", "badnets",
            "--gammas", "1,0", "-o", "scan", "--json",
        )  # fmt: skip
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_models", None)
    assert code == 0, err
    names = {r["skip"] for r in json.loads(out)["rows"]}
    assert len(names) == 1 and next(iter(names)).startswith("block"), names
    line = cli_error(
        capsys, "scan-skips", "-m", "mine.pt", "--arch", "no_such_mod:make", "-a", "badnets", "-o", "s"
    )
    assert "cannot import" in line


def test_foreign_arch_without_package_is_one_line(capsys: pytest.CaptureFixture, model_file: Path) -> None:
    pytest.importorskip("torch")
    legacy = model_file.with_suffix(".pt")
    torch.save(load_model(model_file).state_dict(), legacy)
    for source in ("torchvision", "timm"):
        try:
            __import__(source)
        except ImportError:
            assert f"{source} is not installed" in scan_error(
                capsys, legacy, extra=("--arch", f"{source}:resnet18")
            )


# --------------------------------------------------------------------------------------- evaluation attack
def test_evaluation_attack_taken_from_the_sidecar(capsys: pytest.CaptureFixture, model_file: Path) -> None:
    """The model records BadNets target 1: without --target the scan evaluates target 1, not 0."""
    args = ("scan-skips", "-m", str(model_file), "-a", "badnets", "--skip", "layer1.0", "--gammas", "1",
            "-o", "scan", "--json")  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    used = json.loads(out)["eval_attack"]
    assert used["params"]["target"] == 1 and "target" in used["from_sidecar"] and not err.strip()
    code, out, err = run_cli(capsys, *args, "--target", "2")
    assert code == 0, err
    assert json.loads(out)["eval_attack"]["params"]["target"] == 2
    warnings = [ln for ln in err.splitlines() if ln.strip()]
    assert len(warnings) == 1 and "contradicts" in warnings[0] and "recorded 1" in warnings[0]
