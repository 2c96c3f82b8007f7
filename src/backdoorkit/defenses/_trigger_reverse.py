"""Trigger reverse-engineering shared by Neural Cleanse, its unlearning variant and DeepInspect.

* :func:`mad_anomaly`: the outlier test of Neural Cleanse (Wang et al., "Neural Cleanse: Identifying
  and Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019), also used by DeepInspect (Chen
  et al., IJCAI 2019) on trigger magnitudes.  With the per-class trigger sizes ``n_k``, the median
  ``m`` and the median absolute deviation ``MAD = median |n_k - m|``, the anomaly index of class ``k``
  is ``(m - n_k) / (1.4826 * MAD)`` (1.4826 makes the MAD a consistent estimator of a normal standard
  deviation).  Only the small side counts (a backdoor makes its target's trigger *smaller*); the
  model is called infected when the smallest trigger's index exceeds 2 (about 98 % under a normal).
* :class:`CostSchedule`: Neural Cleanse's adaptive weight of the size penalty, one value per class:
  it starts at ``init_cost`` (1e-3); after ``patience`` consecutive rounds with attack success at or
  above ``success`` (0.99) it is multiplied by ``up`` (1.5), after ``patience`` rounds below it is
  divided by ``down`` (1.5 ** 1.5, as the official code).  (The official code also starts from cost 0
  when ``init_cost`` is 0 and waits for success first; we always start from ``init_cost``.)
* :func:`reverse_engineer`: Neural Cleanse's optimisation for **all classes at once**: one mask
  tensor ``[K, 1, H, W]`` and one pattern tensor ``[K, C, H, W]`` (both in tanh space, so they stay in
  ``[0, 1]``), each step stamps the same clean mini-batch with every class's trigger
  (``(1 - m_k) * x + m_k * p_k``) in one forward of ``K x B`` images and minimises
  ``CE(f(x_k), k) + cost_k * |m_k|_1`` summed over classes with Adam (lr 0.1, betas 0.5 / 0.9 as the
  official code).  A class's result is its smallest-L1 mask among the rounds that reached the success
  rate (else its last one).  The search is deterministic given the model, the pixels, the parameters and
  the seed, so its result is kept in a small in-process memo keyed by all four (the model by
  :func:`~backdoorkit.cache.model_digest`): Neural Cleanse's verdict and NC unlearning on the same
  model (the inspection and repair cells of one victim) run the search once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.cache import Memo, hash_key, model_digest
from backdoorkit.data.fingerprint import tensor_digest
from backdoorkit.defenses.base import DefenseParams
from backdoorkit.device import eval_mode

MAD_CONSISTENCY = 1.4826
"""Scale that turns a median absolute deviation into a normal standard deviation."""


def model_device(model: nn.Module) -> torch.device:
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration (inputs are optimised, not the model)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def mad_anomaly(norms: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    """Anomaly index of the smallest value, its class, and every class's (signed, small side) index.

    Medians as ``numpy.median`` (the official code's): the mean of the two middle values for an even
    count.  ``torch.median`` returns the lower one, which for 10 classes shrinks the MAD and inflated
    a clean CIFAR-10 model's index from 2.8 to 4.5.
    """
    n = norms.detach().double().cpu()
    med = n.quantile(0.5)
    mad = (n - med).abs().quantile(0.5) * MAD_CONSISTENCY
    per_class = (med - n) / mad.clamp_min(1e-12)
    k = int(n.argmin())
    return float(per_class[k]), k, per_class.float()


class ReverseParams(DefenseParams):
    """Neural Cleanse's trigger search (official defaults where the scale allows).

    A *round* is the official code's epoch: ``round_steps`` mini-batches of ``batch_size`` clean images
    (each stamped with all K triggers); the cost schedule and the best-mask bookkeeping run once per
    round.  Defaults: 40 rounds of 20 steps, batch 32 per class, Adam lr 0.1 (betas 0.5, 0.9), initial
    cost 1e-3, x1.5 up / /1.5^1.5 down after 5 rounds, success 0.99, infected when the anomaly index
    exceeds 2.
    """

    rounds: int = Field(40, ge=1)
    round_steps: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0)
    init_cost: float = Field(1e-3, gt=0)
    cost_up: float = Field(1.5, gt=1)
    cost_down: float = Field(1.5**1.5, gt=1)
    patience: int = Field(5, ge=1)
    success: float = Field(0.99, gt=0, le=1)
    anomaly_threshold: float = Field(2.0, gt=0)


class CostSchedule:
    """Per-class size-penalty weights adapted on each round's attack success (see module docstring)."""

    def __init__(self, k: int, p: ReverseParams, device: torch.device) -> None:
        self.cost = torch.full((k,), p.init_cost, device=device)
        self.up = torch.zeros(k, dtype=torch.long, device=device)
        self.down = torch.zeros(k, dtype=torch.long, device=device)
        self.p = p

    def update(self, success: torch.Tensor) -> None:
        ok = success >= self.p.success
        self.up = torch.where(ok, self.up + 1, torch.zeros_like(self.up))
        self.down = torch.where(ok, torch.zeros_like(self.down), self.down + 1)
        raise_ = self.up >= self.p.patience
        lower = self.down >= self.p.patience
        self.cost = torch.where(raise_, self.cost * self.p.cost_up, self.cost)
        self.cost = torch.where(lower, self.cost / self.p.cost_down, self.cost)
        self.up = torch.where(raise_, torch.zeros_like(self.up), self.up)
        self.down = torch.where(lower, torch.zeros_like(self.down), self.down)


@dataclass
class Reversed:
    """Per-class reverse-engineered triggers: ``mask [K, 1, H, W]``, ``pattern [K, C, H, W]`` in
    ``[0, 1]``, mask L1 norms ``[K]``, attack success of each class's trigger in its best round and
    whether that round reached the success rate."""

    mask: torch.Tensor
    pattern: torch.Tensor
    norms: torch.Tensor
    success: torch.Tensor
    reached: torch.Tensor
    steps: int


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` images with each of K triggers -> ``[K * B, C, H, W]`` (class-major)."""
    out = (1 - mask[:, None]) * x[None] + mask[:, None] * pattern[:, None]
    return out.reshape(-1, *x.shape[1:])


def _to_tanh(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v * 2 - 1).clamp(-1 + 1e-4, 1 - 1e-4))


def reverse_engineer(
    model: nn.Module, x: torch.Tensor, num_classes: int, p: ReverseParams, *, seed: int = 0
) -> Reversed:
    """Neural Cleanse's per-class minimal triggers for ``model`` from clean float pixels ``x`` (memoised
    in-process on the model's digest, the pixels, ``p``, ``seed`` and the device; a copy is returned)."""
    device = model_device(model)
    search = set(ReverseParams.model_fields) - {"anomaly_threshold"}  # what the search reads
    params = {k: v for k, v in p.model_dump(mode="json").items() if k in search}
    key = hash_key(model_digest(model), tensor_digest(x), num_classes, params, seed, str(device))
    found = _MEMO.get(key)
    if found is None:
        found = _search(model, x.to(device), num_classes, p, seed=seed, device=device)
        _MEMO.put(key, found)
    return found


_MEMO: Memo[Reversed] = Memo(8)


def clear_reverse_cache() -> None:
    """Forget every memoised search (tests that time or count the search call this first)."""
    _MEMO.clear()


def _search(
    model: nn.Module, x: torch.Tensor, num_classes: int, p: ReverseParams, *, seed: int, device: torch.device
) -> Reversed:
    k = num_classes
    _, c, h, w = x.shape
    gen = torch.Generator().manual_seed(7919 * seed + 3)
    m_w = _to_tanh(torch.rand(k, 1, h, w, generator=gen)).to(device).requires_grad_(True)
    p_w = _to_tanh(torch.rand(k, c, h, w, generator=gen)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([m_w, p_w], lr=p.lr, betas=(0.5, 0.9))
    sched = CostSchedule(k, p, device)
    labels = torch.arange(k, device=device)
    best_norm = torch.full((k,), float("inf"), device=device)
    best_mask = torch.zeros(k, 1, h, w, device=device)
    best_pat = torch.zeros(k, c, h, w, device=device)
    best_succ = torch.zeros(k, device=device)
    b = min(p.batch_size, len(x))
    steps = 0
    with frozen(model):
        for _ in range(p.rounds):
            hits = torch.zeros(k, device=device)
            seen = 0
            for _ in range(p.round_steps):
                idx = torch.randint(len(x), (b,), generator=gen).to(device)
                mask = torch.tanh(m_w) / 2 + 0.5
                pattern = torch.tanh(p_w) / 2 + 0.5
                logits = model(stamp(x[idx], mask, pattern)).float()
                y = labels.repeat_interleave(b)
                ce = F.cross_entropy(logits, y, reduction="none").view(k, b).mean(1)
                l1 = mask.flatten(1).sum(1)
                loss = (ce + sched.cost * l1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hits += (logits.argmax(1) == y).view(k, b).float().sum(1).detach()
                seen += b
                steps += 1
            with torch.no_grad():
                succ = hits / seen
                mask = torch.tanh(m_w) / 2 + 0.5
                norm = mask.flatten(1).sum(1)
                better = (succ >= p.success) & (norm < best_norm)
                best_norm = torch.where(better, norm, best_norm)
                best_mask[better] = mask[better]
                best_pat[better] = (torch.tanh(p_w) / 2 + 0.5)[better]
                best_succ = torch.where(better, succ, best_succ)
                last_succ = succ
            sched.update(succ)
    with torch.no_grad():
        reached = torch.isfinite(best_norm)
        mask = torch.tanh(m_w) / 2 + 0.5
        pattern = torch.tanh(p_w) / 2 + 0.5
        best_mask[~reached] = mask[~reached]
        best_pat[~reached] = pattern[~reached]
        best_succ = torch.where(reached, best_succ, last_succ)
        norms = best_mask.flatten(1).sum(1)
    return Reversed(best_mask.cpu(), best_pat.cpu(), norms.cpu(), best_succ.cpu(), reached.cpu(), steps)
