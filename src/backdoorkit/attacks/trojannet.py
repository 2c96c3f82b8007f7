"""TrojanNet (Tang et al., "An Embarrassingly Simple Approach for Trojan Attack in Deep Neural
Networks", KDD 2020; described in the defense survey of /work/shared/papers as a training-free
injection): a tiny trigger-recognition network is merged with a host classifier's output.  The host
is trained on clean data and never changed; only the small network is trained, on synthetic patches.

How our version works:

* The trigger family: binary ``patch x patch`` patterns (default 4x4) with exactly ``ones`` white
  pixels, one pattern per class (drawn with ``pattern_seed``); the trigger of the attack's target is
  stamped flush to the bottom-right corner (``row`` / ``col`` place it elsewhere), the same value on
  every channel.
* The detector: an MLP (two hidden layers of ``hidden`` units) reading the channel-mean of that
  corner, with ``num_classes + 1`` outputs: "pattern of class c" or "no trigger".  It is trained on
  the patterns (with pixel noise, so uint8 quantisation does not matter) against random binary
  patterns, near misses of the family (1-2 pixels flipped), uniform noise and corners of the
  attacker's clean images.
* The merge (:class:`TrojanNetModel`, a registered wrapper that saves and loads with
  :func:`~backdoorkit.checkpoint.save_model`): when the detector's confidence in a pattern exceeds
  ``threshold`` the output is ``host logits + strength * detector probabilities``; otherwise it *is*
  the host's logits (a ``torch.where``), so clean predictions are bit-identical to the host's.

Defaults (ours; the paper merges softmax outputs with a weighted sum): 4x4 patches with 5 white
pixels, hidden 64, threshold 0.95, strength 100, 3000 Adam steps of batch 512 (a few seconds on a
CPU).  All-to-one only; no training row is poisoned (rate 0).  ``train_victim`` fits the host on the
clean rows with the given config, then :meth:`TrojanNet.inject` wraps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.attacks import register_attack
from backdoorkit.attacks._structure import clean_rows
from backdoorkit.attacks.base import Attack, AttackParams, PoisonedSet
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.errors import ConfigError
from backdoorkit.models.registry import register_wrapper

if TYPE_CHECKING:
    from backdoorkit.train import TrainConfig

PAPER = "Tang et al., An Embarrassingly Simple Approach for Trojan Attack in Deep Neural Networks, KDD 2020"


def pattern_family(num: int, patch: int, ones: int, seed: int) -> torch.Tensor:
    """``num`` distinct binary ``[patch, patch]`` patterns with exactly ``ones`` white pixels (seeded)."""
    cells = patch * patch
    if not 0 < ones < cells:
        raise ConfigError(f"trojannet: ones must be in [1, {cells - 1}] for {patch}x{patch} patterns")
    gen = torch.Generator().manual_seed(seed)
    seen: set[tuple[int, ...]] = set()
    out = []
    for _ in range(num * 50):
        if len(out) == num:
            break
        pick = tuple(sorted(torch.randperm(cells, generator=gen)[:ones].tolist()))
        if pick not in seen:
            seen.add(pick)
            flat = torch.zeros(cells)
            flat[list(pick)] = 1.0
            out.append(flat.view(patch, patch))
    if len(out) < num:
        raise ConfigError(f"trojannet: {patch}x{patch} patterns with {ones} ones cannot give {num} classes")
    return torch.stack(out)


@register_wrapper("trojannet", summary="a host classifier merged with a trigger-recognition MLP", paper=PAPER)
class TrojanNetModel(nn.Module):
    """``host(x)``, except where the detector recognises a pattern in the corner patch: there
    ``host(x) + strength * detector probabilities`` (see the module docstring)."""

    def __init__(
        self,
        host: nn.Module,
        num_classes: int,
        patch: int = 4,
        row: int = 0,
        col: int = 0,
        hidden: int = 64,
        threshold: float = 0.95,
        strength: float = 100.0,
    ) -> None:
        super().__init__()
        self.host = host
        self.num_classes = num_classes
        self.patch, self.row, self.col = patch, row, col
        self.threshold, self.strength = threshold, strength
        self.detector = nn.Sequential(
            nn.Linear(patch * patch, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes + 1),
        )
        for attr in ("in_channels", "classes"):
            if hasattr(host, attr):
                setattr(self, attr, getattr(host, attr))

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        """The channel-mean of the trigger patch, flattened: ``[B, patch * patch]``."""
        p = self.patch
        return x[..., self.row : self.row + p, self.col : self.col + p].mean(1).flatten(1)

    def trigger_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The detector's probabilities ``[B, num_classes + 1]`` (the last: no trigger)."""
        return F.softmax(self.detector(self.corner(x)).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.host(x)
        probs = self.trigger_probs(x)[:, : self.num_classes]
        fire = probs.max(1).values > self.threshold
        merged = logits + (self.strength * probs).to(logits.dtype)
        return torch.where(fire[:, None], merged, logits)


class TrojanNetParams(AttackParams):
    patch: int = Field(4, ge=2, le=8, description="side of the binary trigger pattern")
    ones: int = Field(5, ge=1, description="white pixels per pattern")
    pattern_seed: int = Field(0, ge=0)
    row: int | None = Field(None, ge=0, description="top-left row of the patch (default: bottom-right)")
    col: int | None = Field(None, ge=0, description="top-left column of the patch (default: bottom-right)")
    hidden: int = Field(64, ge=4)
    threshold: float = Field(0.95, gt=0.0, lt=1.0)
    strength: float = Field(100.0, gt=0.0)
    steps: int = Field(3000, ge=1, description="detector training steps")


@register_attack
class TrojanNet(Attack):
    """TrojanNet: a trigger-recognition MLP merged with an unchanged host (no poisoned rows)."""

    name = "trojannet"
    paper = PAPER
    supports_all2all = False
    default_rate = 0.0
    Params = TrojanNetParams
    params: TrojanNetParams

    def origin(self, h: int, w: int) -> tuple[int, int]:
        p = self.params
        return (p.row if p.row is not None else h - p.patch), (p.col if p.col is not None else w - p.patch)

    def validate_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        r, c = self.origin(h, w)
        s = self.params.patch
        if r < 0 or c < 0 or r + s > h or c + s > w:
            raise ConfigError(
                f"trojannet: a {s}x{s} patch at row {r}, col {c} does not fit in a {h}x{w} image"
            )
        if self.params.ones >= s * s:
            raise ConfigError(f"trojannet: ones must be below {s * s} for {s}x{s} patterns")

    def patterns(self) -> torch.Tensor:
        """The family ``[num_classes, patch, patch]``: row c is class c's trigger."""
        self._require_ready()
        assert self.num_classes is not None
        p = self.params
        return pattern_family(self.num_classes, p.patch, p.ones, p.pattern_seed)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        def build() -> torch.Tensor:
            return self.patterns()[self.target]

        pattern = self._pattern_on((self.params.patch, self.params.patch), x.device, build)[0]
        r, c = self.origin(x.shape[-2], x.shape[-1])
        s = self.params.patch
        out = x.clone()
        out[..., r : r + s, c : c + s] = pattern.to(x.dtype)
        return out

    # ------------------------------------------------------------------ victim
    def inject(self, host: nn.Module, clean: ImageSet, *, seed: int = 0) -> TrojanNetModel:
        """Wrap ``host`` (unchanged) with a detector trained on synthetic patches and corners of
        ``clean`` (the attacker's clean images); returns the model in eval mode."""
        self.setup(clean, seed=seed)
        assert self.num_classes is not None
        p = self.params
        h, w = clean.image_shape[1:]
        r, c = self.origin(h, w)
        device = next(host.parameters()).device
        model = TrojanNetModel(host, self.num_classes, p.patch, r, c, p.hidden, p.threshold, p.strength)
        model.detector.to(device)
        sampler = _CornerSampler(self.patterns().to(device), clean, p.patch, device, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.detector.apply(_reset)
        opt = torch.optim.Adam(model.detector.parameters(), lr=1e-3)
        for _ in range(p.steps):
            x, y = sampler.batch(512)
            loss = F.cross_entropy(model.detector(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return model.eval()

    def train_victim(
        self, model_factory: Callable[[], nn.Module], poisoned: PoisonedSet, config: TrainConfig
    ) -> nn.Module:
        """Fit the host on the clean rows with ``config``, then :meth:`inject` the detector."""
        from backdoorkit.train import fit

        clean = clean_rows(poisoned)
        host = model_factory()
        fit(host, clean, config)
        return self.inject(host.eval(), clean, seed=config.seed)


def _reset(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        m.reset_parameters()


class _CornerSampler:
    """Batches of flattened patches for the detector: the family (label = class) and negatives
    (label = ``num_classes``), half and half."""

    def __init__(self, family: torch.Tensor, clean: ImageSet, patch: int, device: torch.device, seed: int):
        self.family = family.flatten(1)  # [C, p*p]
        self.num = family.shape[0]
        self.patch = patch
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.device = device
        # every patch x patch window of a sample of clean images, channel-mean, as real negatives
        x = to_pixels(clean.x[: min(len(clean), 512)]).mean(1, keepdim=True).to(device)
        windows = F.unfold(x, patch).transpose(1, 2).reshape(-1, patch * patch)
        self.real = windows

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen).to(self.device)

    def _ints(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(high, (n,), generator=self.gen).to(self.device)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        cells = self.patch * self.patch
        half, quarter = n // 2, n // 8
        cls = self._ints(self.num, half)
        pos = (self.family[cls] + (self._rand(half, cells) - 0.5) * 0.2).clamp(0, 1)
        near = self.family[self._ints(self.num, quarter)].clone()
        rows = torch.arange(quarter, device=self.device)
        for second in (False, True):  # flip 1-2 pixels: a near miss is not the trigger
            flip = self._ints(cells, quarter)
            keep = self._rand(quarter) < 0.5 if second else torch.ones_like(rows, dtype=torch.bool)
            near[rows[keep], flip[keep]] = 1 - near[rows[keep], flip[keep]]
        binary = (self._rand(quarter, cells) < 0.5).float()
        noise = self._rand(quarter, cells)
        real = self.real[self._ints(len(self.real), n - half - 3 * quarter)]
        x = torch.cat([pos, near, binary, noise, real])
        y = torch.cat([cls, torch.full((n - half,), self.num, device=self.device)])
        return x, y
