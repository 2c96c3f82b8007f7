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


def test_read_only_folders_serve_misses_and_are_never_written(tmp_path: Path, tiny: nn.Module) -> None:
    """``ArtifactCache(root, read_only=[...])``: an entry copied from another cache is a hit (tensors,
    models, metadata); the root's own entry wins; every write goes to the root."""
    import shutil

    maker = ArtifactCache(tmp_path / "maker")
    maker.put_tensors("perturbed", "k1", {"x": torch.arange(6, dtype=torch.uint8)}, meta={"what": "pgd"})
    maker.put_model("attacker_models", "m1", tiny)
    shipped = tmp_path / "shipped"
    shutil.copytree(maker.root, shipped)
    before = sorted(p.relative_to(shipped) for p in shipped.rglob("*"))

    cache = ArtifactCache(tmp_path / "fresh", read_only=[tmp_path / "absent", shipped])
    calls = []
    got = cache.get_or_compute_tensors("perturbed", "k1", lambda: calls.append(1) or {"x": torch.zeros(1)})
    assert calls == [] and torch.equal(got["x"], torch.arange(6, dtype=torch.uint8))
    assert cache.has("perturbed", "k1") and cache.meta("perturbed", "k1") == {"what": "pgd"}
    model = cache.get_or_compute_model("attacker_models", "m1", lambda: calls.append(2) or tiny)
    assert calls == [] and model_digest(model) == model_digest(tiny)
    assert not cache.has("perturbed", "other") and cache.get_model("attacker_models", "other") is None
    cache.put_tensors("perturbed", "k1", {"x": torch.ones(2)})  # the root's own entry wins from now on
    assert torch.equal(cache.get_tensors("perturbed", "k1")["x"], torch.ones(2))  # type: ignore[index]
    cache.get_or_compute_tensors("perturbed", "k2", lambda: {"x": torch.ones(3)})
    assert (cache.root / "perturbed" / "k2.safetensors").is_file()
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*")) == before  # never written


def test_cache_list_and_copy_ship_entries_for_a_read_only_cache(
    tmp_path: Path, tiny: nn.Module, capsys: pytest.CaptureFixture[str]
) -> None:
    """``backdoorkit cache list`` shows the entries (JSON: kind, key, bytes, metadata; not the training
    snapshots); ``cache copy KIND/KEY --to DIR`` lays them out as a read-only cache reads them; bad names
    are one-line errors."""
    from hardening_helpers import cli_error, run_cli

    root = tmp_path / "cache"
    cache = ArtifactCache(root)
    cache.put_tensors("label_consistent", "k1", {"x": torch.zeros(4, dtype=torch.uint8)}, meta={"seed": 0})
    cache.put_model("attacker_models", "m1", tiny)
    cache.put_json("selection", "s1", {"layers": ["layer1.1"]})
    (cache.partial("m1") / "fit-0.pt").parent.mkdir(parents=True)
    (cache.partial("m1") / "fit-0.pt").write_bytes(b"snapshot")
    code, out, _ = run_cli(capsys, "cache", "list", "--cache-dir", str(root), "--json")
    listed = {(e["kind"], e["key"]): e for e in json.loads(out)["entries"]}
    assert code == 0 and set(listed) == {
        ("label_consistent", "k1"),
        ("attacker_models", "m1"),
        ("selection", "s1"),
    }
    assert (
        listed[("label_consistent", "k1")]["meta"] == {"seed": 0}
        and listed[("attacker_models", "m1")]["bytes"] > 0
    )
    assert listed[("selection", "s1")]["meta"] == {"layers": ["layer1.1"]}
    code, out, _ = run_cli(capsys, "cache", "list", "--cache-dir", str(root), "--kind", "label_consistent")
    assert code == 0 and "label_consistent/k1" in out and "attacker_models" not in out

    shipped = tmp_path / "shipped"
    args = (
        "cache",
        "copy",
        "label_consistent/k1",
        "attacker_models/m1",
        "--to",
        str(shipped),
        "--cache-dir",
        str(root),
    )
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and out.count("copied ") == 4
    reader = ArtifactCache(tmp_path / "elsewhere", read_only=[shipped])
    assert torch.equal(reader.get_tensors("label_consistent", "k1")["x"], torch.zeros(4, dtype=torch.uint8))  # type: ignore[index]
    assert model_digest(reader.get_model("attacker_models", "m1")) == model_digest(tiny)  # type: ignore[arg-type]
    for bad in ("k1", "../label_consistent/k1", "label_consistent/a/b", "../k1"):
        assert "KIND/KEY" in cli_error(
            capsys, "cache", "copy", bad, "--to", str(shipped), "--cache-dir", str(root)
        )
    assert "this cache itself" in cli_error(
        capsys, "cache", "copy", "label_consistent/k1", "--to", str(root), "--cache-dir", str(root)
    )
    assert "no cache entry label_consistent/k9" in cli_error(
        capsys, "cache", "copy", "label_consistent/k9", "--to", str(shipped), "--cache-dir", str(root)
    )
    assert "not a folder" in cli_error(capsys, "cache", "list", "--cache-dir", str(tmp_path / "nowhere"))
    assert "plain name" in cli_error(capsys, "cache", "list", "--kind", "../x", "--cache-dir", str(root))
    code, out, _ = run_cli(capsys, "cache", "list", "--kind", "nothing_here", "--cache-dir", str(root))
    assert code == 0 and out.strip().splitlines() == [f"no entries of kind nothing_here in {root}"]
