"""The artefact cache: the one model digest, get-or-compute (computes once), and a model entry that
cannot be rebuilt is an error, not a silent miss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from backdoorkit.cache import ArtifactCache, model_digest
from backdoorkit.checkpoint import sidecar_path
from backdoorkit.data import ImageSet
from backdoorkit.errors import ModelFileError
from backdoorkit.models.skips import get_betas, set_gamma, skips
from backdoorkit.pipeline import make_model


@pytest.fixture
def tiny(digits_train: ImageSet) -> nn.Module:
    return make_model("resnet18", digits_train, width=2, seed=0).eval()


# ---------------------------------------------------------------------------- model digest
def test_digest_is_stable_and_sees_weights_gammas_and_betas(digits_train: ImageSet, tiny: nn.Module) -> None:
    same = make_model("resnet18", digits_train, width=2, seed=0).eval()
    base = model_digest(tiny)
    assert len(base) == 16 and model_digest(same) == base == model_digest(tiny)
    set_gamma(same, "layer2.1", 0.5)  # not in the state dict: only the skip scale changes
    assert model_digest(same) != base
    set_gamma(same, "layer2.1", 1.0)
    assert model_digest(same) == base
    skips(same)["layer1.0"].beta = 0.5
    assert get_betas(same) == {"layer1.0": 0.5} and model_digest(same) != base
    with torch.no_grad():
        other = make_model("resnet18", digits_train, width=2, seed=0).eval()
        next(other.parameters()).add_(1e-3)
    assert model_digest(other) != base


# ---------------------------------------------------------------------------- get or compute
def test_get_or_compute_tensors_computes_once(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    calls: list[int] = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"a": torch.arange(4), "b": torch.ones(2, 2)}

    first = cache.get_or_compute_tensors("k", "key1", compute, meta=lambda: {"n": len(calls)})
    second = cache.get_or_compute_tensors("k", "key1", compute)
    assert len(calls) == 1 and torch.equal(first["a"], second["a"]) and torch.equal(first["b"], second["b"])
    assert cache.meta("k", "key1") == {"n": 1}  # a callable meta is evaluated after compute
    assert (tmp_path / "k" / "key1.safetensors").is_file()
    # a hit that fails the check is a miss and is overwritten
    cache.get_or_compute_tensors("k", "key1", compute, valid=lambda hit: "c" in hit)
    assert len(calls) == 2


def test_get_or_compute_model_computes_once(tmp_path: Path, tiny: nn.Module) -> None:
    cache = ArtifactCache(tmp_path)
    calls: list[int] = []

    def compute() -> nn.Module:
        calls.append(1)
        return tiny

    first = cache.get_or_compute_model("m", "key", compute, {"why": "test"})
    second = cache.get_or_compute_model("m", "key", compute)
    assert len(calls) == 1 and first is tiny and second is not tiny and not second.training
    assert model_digest(second) == model_digest(tiny)
    assert json.loads(sidecar_path(cache.model_path("m", "key")).read_text())["extra"] == {"why": "test"}


def test_missing_model_is_a_miss_but_a_broken_entry_raises(tmp_path: Path, tiny: nn.Module) -> None:
    cache = ArtifactCache(tmp_path)
    assert cache.get_model("m", "absent") is None
    path = cache.put_model("m", "key", tiny)
    sidecar_path(path).write_text("{not json")  # the architecture can no longer be rebuilt
    with pytest.raises(ModelFileError, match="sidecar"):
        cache.get_model("m", "key")
    with pytest.raises(ModelFileError):
        cache.get_or_compute_model("m", "key", lambda: pytest.fail("must not retrain"))
