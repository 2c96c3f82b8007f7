"""Shared fixtures: the embedded digits data and models trained once per test session (content-keyed:
the same data + recipe + seed is trained once, whichever test file asks first).

Training recipe used across the suite (11-14 s on 2 AVX-512 CPU cores): ResNet-18 at width 8, 10 epochs,
one-cycle SGD lr 0.05, batch 128, no augmentation (the digits recipe of ``backdoorkit.pipeline``).
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("BACKDOORKIT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "test"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import backdoorkit  # noqa: E402
from backdoorkit.cache import ArtifactCache, hash_key  # noqa: E402
from backdoorkit.data import ImageSet, load_dataset  # noqa: E402
from backdoorkit.data.fingerprint import fingerprint  # noqa: E402
from backdoorkit.pipeline import recipe_for, train_model  # noqa: E402

TEST_ARCH = "resnet18"
TEST_WIDTH = 8


@pytest.fixture(scope="session")
def digits() -> tuple[ImageSet, ImageSet]:
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="session")
def digits_train(digits: tuple[ImageSet, ImageSet]) -> ImageSet:
    return digits[0]


@pytest.fixture(scope="session")
def digits_test(digits: tuple[ImageSet, ImageSet]) -> ImageSet:
    return digits[1]


_TRAINED: dict[str, torch.nn.Module] = {}
"""Models trained in this test process, keyed by what determines them (see :func:`train_digits`)."""


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """The source of what a trained model depends on (training loop, models, data): a changed file is a
    different key, so a model stored by an older checkout is never reused."""
    root = Path(backdoorkit.__file__).parent
    h = hashlib.sha256()
    for path in sorted(
        [root / "train.py", root / "pipeline.py", *root.glob("models/*.py"), *root.glob("data/*.py")]
    ):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def train_digits(data: ImageSet, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """ResNet-18 (width 8) trained with the digits recipe, once for the same content.

    The key is the training data's content fingerprint, the full training config, the seed, the
    architecture and the code it depends on, so every test (in any file, in any worker process) asking
    for the same model shares one training run: the first trains it under a file lock and stores it in
    the test artefact cache (``$BACKDOORKIT_CACHE``), the others load it.  Each caller gets its own
    copy, free to modify.
    """
    cfg = recipe_for(data, **overrides)
    key = hash_key(
        fingerprint(data), cfg.model_dump(mode="json"), seed, TEST_ARCH, TEST_WIDTH, _code_digest()
    )
    if key not in _TRAINED:
        cache = ArtifactCache()
        lock = cache.root / "locks" / f"{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            model = cache.get_model("test_models", key)
            if model is None:
                model, _ = train_model(TEST_ARCH, data, cfg, seed=seed, width=TEST_WIDTH)
                cache.put_model("test_models", key, model)
        _TRAINED[key] = model.cpu().eval()
    return copy.deepcopy(_TRAINED[key])


@pytest.fixture(scope="session")
def clean_model(digits_train: ImageSet) -> torch.nn.Module:
    """A clean digits model (BA about 99 %)."""
    return train_digits(digits_train, seed=0)


# ---- SSFT / skip-scan fixtures (issue 5): BadNets digits models for three seeds, trained once ----
BADNETS_SEEDS = (0, 1, 2)


class _BadNetsDigits:
    """Lazily trained BadNets digits models, one per seed (only the seeds a test asks for are trained)."""

    def __init__(self, train: ImageSet) -> None:
        self._train = train
        self._done: dict[int, dict[str, object]] = {}

    def __getitem__(self, seed: int) -> dict[str, object]:
        if seed not in self._done:
            from backdoorkit.attacks import build_attack
            from backdoorkit.data import split_holdout

            attack = build_attack("badnets", target=0)
            poisoned = attack.poison(self._train, seed=seed)
            self._done[seed] = {
                "model": train_digits(poisoned.data, seed=seed),
                "attack": attack,
                "clean": split_holdout(self._train, 0.1, seed, name="clean")[1],
            }
        return self._done[seed]


@pytest.fixture(scope="session")
def badnets_digits(digits_train: ImageSet) -> _BadNetsDigits:
    """``badnets_digits[seed]`` -> ``{"model", "attack", "clean"}``: ResNet-18 (width 8) trained on
    digits poisoned by BadNets (3x3 white patch bottom-right, rate 0.1, target 0) with that seed, and
    the defender's clean samples (a stratified 10 % of the clean training split drawn with that seed).
    Models are trained on first use and shared by the whole session; never modify them in place."""
    return _BadNetsDigits(digits_train)
