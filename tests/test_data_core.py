"""Core data types: ImageSet validation, splits, fingerprints, batching, augmentation, `datasets` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoorkit.data import ImageSet, index_batches, split_holdout, standard_augmentation
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.data.transforms import resize_uint8, stack_images
from backdoorkit.errors import DataError


def _toy(n: int = 40, classes: int = 4, hflip: bool = True, size: int = 8) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageSet(x, y, tuple(f"c{i}" for i in range(classes)), "toy/train", hflip=hflip)


# ------------------------------------------------------------------------------------------ ImageSet
def test_imageset_validation() -> None:
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    y = torch.tensor([0, 1, 1])
    with pytest.raises(DataError, match=r"t: images must be uint8, got torch\.float32"):
        ImageSet(x.float(), y, ("a", "b"), "t")
    with pytest.raises(DataError, match=r"images must be \[N, C, H, W\], got shape \(3, 4, 4\)"):
        ImageSet(x[:, 0], y, ("a", "b"), "t")
    with pytest.raises(DataError, match="1 or 3 channels, got 2"):
        ImageSet(torch.zeros(3, 2, 4, 4, dtype=torch.uint8), y, ("a", "b"), "t")
    with pytest.raises(DataError, match=r"labels must be \[N\] with N=3, got shape \(2,\)"):
        ImageSet(x, y[:2], ("a", "b"), "t")
    with pytest.raises(DataError, match=r"label 2 out of range \[0, 2\)"):
        ImageSet(x, torch.tensor([0, 2, 1]), ("a", "b"), "t")
    with pytest.raises(DataError, match=r"label -1 out of range"):
        ImageSet(x, torch.tensor([0, -1, 1]), ("a", "b"), "t")
    ok = ImageSet(x, y.to(torch.int32), ("a", "b"), "t")
    assert ok.y.dtype == torch.int64 and ok.image_shape == (1, 4, 4) and len(ok) == 3


# ---------------------------------------------------------------------------------------------- splits
def test_split_holdout_stratified_and_deterministic() -> None:
    data = _toy(n=40, classes=4)
    rest, hold = split_holdout(data, 0.25, seed=3)
    assert len(hold) == 10 and len(rest) == 30
    assert (hold.class_counts() - 2.5).abs().max() <= 0.5  # every class keeps its share
    again = split_holdout(data, 0.25, seed=3)[1]
    assert torch.equal(again.x, hold.x) and torch.equal(again.y, hold.y)
    other = split_holdout(data, 0.25, seed=4)[1]
    assert not torch.equal(other.x, hold.x)
    # disjoint and complete: every image of data is in exactly one part
    rows = {bytes(r.numpy()) for r in torch.cat([rest.x, hold.x]).flatten(1)}
    assert len(rows) == 40 == len({bytes(r.numpy()) for r in data.x.flatten(1)})
    assert len(split_holdout(data, 8, seed=0)[1]) == 8  # an int is a count
    assert hold.name == "toy/holdout" and rest.name == "toy/train-rest"


# ------------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_tracks_content() -> None:
    a, b = _toy(), _toy()
    assert fingerprint(a) == fingerprint(b) and len(fingerprint(a)) == 16
    x = b.x.clone()
    x[5, 1, 2, 3] ^= 1
    assert fingerprint(b.with_data(x)) != fingerprint(a)
    y = a.y.clone()
    y[0] = (y[0] + 1) % a.num_classes
    assert fingerprint(a.with_data(a.x, y)) != fingerprint(a)
    renamed = ImageSet(a.x, a.y, tuple(c.upper() for c in a.classes), "toy")
    assert fingerprint(renamed) != fingerprint(a)


# ---------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("shuffle", [False, True])
def test_index_batches_cover_every_index_once(shuffle: bool) -> None:
    g = torch.Generator().manual_seed(1)
    batches = list(index_batches(23, 5, shuffle=shuffle, generator=g))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).tolist()) == list(range(23))
    dropped = list(index_batches(23, 5, shuffle=shuffle, generator=g, drop_last=True))
    assert [len(b) for b in dropped] == [5, 5, 5, 5] and len(set(torch.cat(dropped).tolist())) == 20


def test_standard_augmentation_shape_and_flip_flag() -> None:
    torch.manual_seed(0)
    x = _toy(n=16).pixels()
    for hflip in (True, False):
        aug = standard_augmentation(_toy(n=16, hflip=hflip))
        assert aug(x).shape == x.shape
    # without padding the crop is the identity: what remains is the flip (or nothing)
    assert torch.equal(standard_augmentation(_toy(hflip=False), padding=0)(x), x)
    flipped = standard_augmentation(_toy(hflip=True), padding=0)(x)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 16


# ---------------------------------------------------------------------------------------------- resizing
def test_resize_and_stack_images() -> None:
    x = torch.full((2, 3, 5, 7), 200, dtype=torch.uint8)
    assert torch.equal(resize_uint8(x, 9), torch.full((2, 3, 9, 9), 200, dtype=torch.uint8))
    assert resize_uint8(x[:0], 4).shape == (0, 3, 4, 4)
    imgs = [np.full((h, w, 1), v, np.uint8) for h, w, v in ((4, 4, 1), (6, 3, 2), (4, 4, 3))]
    out = stack_images(imgs, 5)
    assert out.shape == (3, 1, 5, 5) and out[:, 0, 2, 2].tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="different sizes"):
        stack_images(imgs, None)


# ---------------------------------------------------------------------------------------------- CLI
def _write_npz(root: Path) -> None:
    x = np.zeros((5, 28, 28), np.uint8)
    np.savez(root / "mnist.npz", x_train=x, y_train=np.arange(5), x_test=x[:3], y_test=np.arange(3))


def test_datasets_cli_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from backdoorkit.cli import main

    monkeypatch.delenv("BACKDOORKIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "datasets"
    root.mkdir()
    _write_npz(root)
    (root / "gtsrb.npz").write_bytes(b"not an npz")
    with pytest.raises(SystemExit) as done:
        main(["datasets", "--json", "--data-root", str(root)])
    assert done.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["roots"][0] == str(root.resolve())
    rows = {d["name"]: d for d in out["datasets"]}
    assert rows["mnist"] == {
        "name": "mnist",
        "where": str(root.resolve() / "mnist.npz"),
        "train": 5,
        "test": 3,
    }
    assert rows["digits"]["where"] == "built in" and rows["digits"]["train"] > 1000
    assert "unreadable" in rows["gtsrb"]["where"] and rows["gtsrb"]["train"] is None
    assert "cifar10" not in rows
    with pytest.raises(SystemExit) as done:
        main(["datasets", "--data-root", str(root)])
    assert done.value.code in (0, None)
    table = capsys.readouterr().out
    assert "mnist" in table and "searched:" in table
