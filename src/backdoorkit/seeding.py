"""Seeded blocks: a method's result depends on its inputs and its seed, not on what ran before it.

:func:`backdoorkit.train.fit` seeds its own training loop, but methods also draw random numbers
outside it (Trap-and-Replace's decoder initialisation, a trigger search's starting mask, a shadow
model's head).  Drawn from torch's global generator, those numbers depend on everything the process
did before: in the experiment runner, on whether the earlier artefacts came from the cache or were
computed, so one cell gave different results in a warm and in a cold cache (Trap-and-Replace on the
digits demo: ASR 10-84 % for one cell hash).  :func:`seeded` runs a block with the global generators
(CPU and every initialised CUDA device) seeded, and restores their state afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global random generators seeded with ``seed``; their state before
    the block is restored after it (the caller's random stream is left as it was)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
