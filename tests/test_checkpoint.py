"""Safe checkpoints: safetensors + JSON sidecar, legacy ``weights_only`` files, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from backdoorkit.checkpoint import load_model, read_sidecar, read_weights, save_model, sidecar_path
from backdoorkit.errors import ModelFileError
from backdoorkit.models import attach_skips, build_model, get_betas, get_gammas, set_gamma, skips

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
CLASSES = ("a", "b", "c", "d")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=4, width=4, mean=MEAN, std=STD)
    for m in model.modules():  # non-default statistics, so buffers matter for the outputs
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_safetensors_roundtrip_with_sidecar(tmp_path: Path, x: torch.Tensor) -> None:
    model = _model()
    set_gamma(model, "layer3.1", -0.5)
    skips(model)["layer2.0"].beta = 0.25
    path = save_model(model, tmp_path / "m", classes=CLASSES, config={"lr": 0.1, "where": tmp_path})
    assert path == tmp_path / "m.safetensors" and sidecar_path(path).is_file()
    card = json.loads(sidecar_path(path).read_text())
    assert card["arch"] == "resnet18"
    assert card["kwargs"] == {
        "num_classes": 4,
        "in_channels": 3,
        "width": 4,
        "mean": list(MEAN),
        "std": list(STD),
    }
    assert card["classes"] == list(CLASSES)
    assert card["normalization"]["mean"] == pytest.approx(MEAN)
    assert card["normalization"]["std"] == pytest.approx(STD)
    assert card["config"] == {"lr": 0.1, "where": str(tmp_path)}
    assert card["skips"] == {"gammas": {"layer3.1": -0.5}, "betas": {"layer2.0": 0.25}}
    assert read_sidecar(path) == card

    loaded = load_model(path)
    assert get_gammas(loaded) == {"layer3.1": -0.5} and get_betas(loaded) == {"layer2.0": 0.25}
    assert loaded.classes == CLASSES and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert set(read_weights(path)) == set(model.state_dict())


def test_legacy_pt_is_read_weights_only(
    tmp_path: Path, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model()
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pth"
    torch.save(model.state_dict(), plain)
    # a training checkpoint as other toolboxes write it: DataParallel prefixes inside a dict
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    calls: list[dict[str, object]] = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", spy)
    for path in (plain, wrapped):
        loaded = load_model(path, arch="resnet18", num_classes=4, width=4)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))  # normalisation buffers come from the file
    assert len(calls) == 2 and all(c.get("weights_only") is True for c in calls)


class Evil:
    """Unpickling this runs ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickle_needing_file_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(2), "payload": Evil(marker)}, path)
    with pytest.raises(ModelFileError) as info:
        load_model(path, arch="resnet18")
    msg = _one_line(info)
    assert "refused" in msg and "arbitrary code" in msg and "io.open" in msg
    assert not marker.exists()
    with pytest.raises(ModelFileError, match="refused"):
        read_weights(path)
    assert not marker.exists()
    # the payload is real: a full unpickle (what we never do) would have run it
    control = tmp_path / "control.pt"
    torch.save(Evil(tmp_path / "RAN"), control)
    torch.load(control, weights_only=False).close()
    assert (tmp_path / "RAN").exists()


def test_nan_weights_refused_on_save_and_load(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(ModelFileError, match="non-finite"):
        save_model(model, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()

    good = save_model(_model(), tmp_path / "good.safetensors")
    state = read_weights(good)
    state["layer1.0.bn1.running_var"][0] = float("inf")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    sidecar_path(bad).write_text(sidecar_path(good).read_text())
    with pytest.raises(ModelFileError) as info:
        load_model(bad)
    assert "non-finite" in _one_line(info) and "layer1.0.bn1.running_var" in str(info.value)
    state["layer1.0.bn1.running_var"][0] = float("nan")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="non-finite"):
        load_model(tmp_path / "bad.pt", arch="resnet18", num_classes=4, width=4)


def test_malformed_files(tmp_path: Path) -> None:
    noise = os.urandom(4096)
    for name in ("noise.safetensors", "noise.pt"):
        (tmp_path / name).write_bytes(noise)
        with pytest.raises(ModelFileError) as info:
            load_model(tmp_path / name, arch="resnet18")
        msg = _one_line(info)
        assert "malformed safetensors" in msg or "unreadable torch file" in msg
        assert "refused" not in msg  # corrupt is not the same as dangerous
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match="malformed safetensors"):
        load_model(tmp_path / "empty.safetensors")
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unsupported model file type"):
        load_model(tmp_path / "m.onnx")
    good = save_model(_model(), tmp_path / "good.safetensors")
    sidecar_path(good).write_text("{not json")
    with pytest.raises(ModelFileError, match="malformed sidecar"):
        load_model(good)
    sidecar_path(good).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a backdoorkit model sidecar"):
        load_model(good)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelFileError, match="no state dict"):
        load_model(tmp_path / "list.pt", arch="resnet18")


def test_wrong_architecture_is_one_line(tmp_path: Path) -> None:
    model = _model()
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ModelFileError) as info:
        load_model(tmp_path / "r18.pt", arch="vgg16_bn", num_classes=4, width=4)
    assert "weights do not fit the architecture" in _one_line(info)
    with pytest.raises(ModelFileError) as info:  # same architecture, other width
        load_model(tmp_path / "r18.pt", arch="resnet18", num_classes=4, width=8)
    assert "do not fit" in _one_line(info)
    path = save_model(model, tmp_path / "r18.safetensors")
    with pytest.raises(ModelFileError, match="holds a resnet18 model, not vgg16_bn"):
        load_model(path, arch="vgg16_bn")
    assert isinstance(load_model(path, arch="resnet18"), nn.Module)


def test_missing_sidecar_needs_arch(tmp_path: Path, x: torch.Tensor) -> None:
    model = _model()
    path = save_model(model, tmp_path / "m.safetensors")
    sidecar_path(path).unlink()
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert "no sidecar" in _one_line(info) and "arch" in str(info.value)
    loaded = load_model(path, arch="resnet18", num_classes=4, width=4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class Foreign(nn.Module):
    """A user model we did not write: ``relu(x + conv2(relu(conv1 x)))`` and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 4)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(inp))
        h = torch.relu(h + self.conv2(torch.relu(self.conv1(h))))
        return self.head(h.mean((2, 3)))


def test_foreign_model_roundtrip(tmp_path: Path, x: torch.Tensor) -> None:
    torch.manual_seed(1)
    foreign = attach_skips(Foreign().eval())
    assert list(skips(foreign)) == ["conv1"]  # a root-level branch is named after its first big child
    name = "conv1"
    set_gamma(foreign, name, 0.5)
    path = save_model(foreign, tmp_path / "foreign.safetensors", classes=CLASSES)
    card = read_sidecar(path)
    assert card is not None and card["arch"] is None and card["normalization"] is None
    with pytest.raises(ModelFileError, match="no sidecar saying which architecture"):
        load_model(path)
    torch.manual_seed(2)
    target = attach_skips(Foreign())
    loaded = load_model(path, model=target)
    assert loaded is target and get_gammas(loaded) == {name: 0.5} and loaded.classes == CLASSES
    with torch.no_grad():
        assert torch.equal(loaded(x), foreign(x))
    # plain weights of the unwrapped class load too
    torch.save(Foreign().state_dict(), tmp_path / "foreign.pt")
    assert isinstance(load_model(tmp_path / "foreign.pt", model=attach_skips(Foreign())), nn.Module)
