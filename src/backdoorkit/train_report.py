"""Epoch lines from long trainings: what a log shows while a model trains for hours.

A full-width ResNet-18 trains for hours on a CPU, and a run whose output goes to a file (``nohup``, a CI
log, a batch job) would otherwise say nothing between "started" and the cell's result.  Inside ``with
report_training(label):`` every :func:`~backdoorkit.train.fit` call writes one line to standard error at
the end of an epoch once ``every`` seconds have passed since the block began or since its last line, over
all the calls in the block (so a job of short trainings says nothing), plus a line for a start resumed
from a snapshot and one for the end of a call that has written a line before, for example::

    [train] label_consistent model cifar10 resnet18-w16 seed 0: attacker model, ResNet 11.2M params on
    cifar10 (45,000 images), epoch 3/30, loss 1.234, acc 56.7 %, 0:13:45 in this run, ~2:04:00 left

(``attacker model, ``: :func:`training_role` names what trains where it is not the job's own model.)

"left" extrapolates the pace of the latest three epochs trained in this process (of all of them before
the fourth; never of epochs a snapshot restored), so a slow start stops skewing it.  With
``status=path`` the block also keeps the latest epoch's short form ("epoch 3/30, ~2:04:00 left") in that
file, rewritten at every epoch end: the experiment runner's live terminal view shows it beside each running
job, whichever process runs it.  The runner writes the lines for every job when its progress goes to a file
(``backdoorkit run --epoch-lines SECONDS``; 0 turns them off) and the status files when it shows a live
view.  Neither carries a metric of the test set: a training loss and accuracy on the data the call trains
on.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from torch import nn

DEFAULT_EVERY = 300.0
"""Seconds between two lines of one training (the runner's default)."""

_PACE_EPOCHS = 3
"""How many of the latest epochs give the pace behind "left"."""


def _clock() -> float:
    return time.monotonic()


@dataclass
class _Reporter:
    label: str
    every: float | None  # None: no lines, only the status file
    stream: TextIO | None = None
    status: Path | None = None
    last: float = field(default_factory=lambda: _clock())  # the block's start: short trainings stay silent

    def write(self, text: str) -> None:
        if self.every is None:
            return
        stream = self.stream or sys.stderr
        print(f"[train] {self.label}: {text}", file=stream, flush=True)
        self.last = _clock()

    def due(self) -> bool:
        return self.every is not None and _clock() - self.last >= self.every

    def set_status(self, text: str) -> None:
        if self.status is None:
            return
        # a status line is never worth failing a training for; a folder that is gone (the run ended) is
        # not made again
        with contextlib.suppress(OSError):
            tmp = self.status.with_name(self.status.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.status)


_ACTIVE: contextvars.ContextVar[_Reporter | None] = contextvars.ContextVar(
    "backdoorkit_train_report", default=None
)
_ROLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("backdoorkit_train_role", default=None)


@contextlib.contextmanager
def training_role(role: str) -> Iterator[None]:
    """Inside the block, epoch lines and the status name what trains (``"attacker model"``).

    A job's label names its cell, and the model training in it is often not the cell's own: an attack's
    full-width attacker model trains inside the job of a width-16 victim, for instance.
    """
    token = _ROLE.set(role)
    try:
        yield
    finally:
        _ROLE.reset(token)


@contextlib.contextmanager
def report_training(
    label: str,
    every: float | None = DEFAULT_EVERY,
    stream: TextIO | None = None,
    status: str | Path | None = None,
) -> Iterator[None]:
    """Inside the block, every ``fit`` writes epoch lines labelled ``label`` (``every`` ``None``: none) and
    keeps its latest epoch in the file ``status``, in a folder that exists (see the module docstring)."""
    if every is not None and every < 0:
        raise ValueError(f"report_training: every must be >= 0 seconds, got {every}")
    where = Path(status) if status else None
    reporter = _Reporter(label, None if every is None else float(every), stream, where)
    token = _ACTIVE.set(reporter)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _size(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.1f}M params" if n >= 1e5 else f"{n / 1e3:.1f}k params"


class EpochLines:
    """One ``fit`` call's reporter (a no-op outside :func:`report_training`)."""

    def __init__(self, model: nn.Module, data_name: str, images: int, epochs: int) -> None:
        self._reporter = _ACTIVE.get()
        self.epochs = epochs
        role = _ROLE.get()
        self._role = f"{role} " if role else ""
        if self._reporter is not None:
            what = f"{type(model).__name__} {_size(model)} on {data_name} ({images:,} images)"
            self._what = f"{role}, {what}" if role else what
        self._start = _clock()
        self._first_epoch = 0
        self._spoke = False
        # (epoch, time) of the latest epoch ends: "left" follows the recent pace, so a slow start (a
        # contended machine, a warm-up) stops skewing it after a few epochs.
        self._ends: deque[tuple[int, float]] = deque(maxlen=_PACE_EPOCHS + 1)

    def resumed(self, epoch: int) -> None:
        """The call goes on from a snapshot taken after ``epoch`` epochs."""
        self._first_epoch = epoch
        self._ends.clear()
        if self._reporter is not None:
            self._reporter.set_status(f"{self._role}resumed after epoch {epoch}/{self.epochs}")
            self._reporter.write(f"{self._what}, resumed after epoch {epoch}/{self.epochs} from its snapshot")
            self._spoke = True

    def epoch_end(self, epoch: int, loss: float, accuracy: float | None) -> None:
        """Epoch ``epoch`` (1-based, counting restored epochs) has ended (``accuracy`` ``None``: the loss
        gave no logits)."""
        r = self._reporter
        if r is None:
            return
        last = epoch >= self.epochs
        now = _clock()
        ran = now - self._start
        self._ends.append((epoch, now))
        if len(self._ends) > _PACE_EPOCHS:
            first, then = self._ends[0]
            pace = (now - then) / (epoch - first)
        else:
            pace = ran / max(1, epoch - self._first_epoch)
        left = "done" if last else f"~{_duration(pace * (self.epochs - epoch))} left"
        r.set_status(f"{self._role}epoch {epoch}/{self.epochs}, {left}")
        if not (r.due() or (last and self._spoke)):
            return
        self._spoke = True
        r.write(
            f"{self._what}, epoch {epoch}/{self.epochs}, loss {loss:.3f}"
            + ("" if accuracy is None else f", acc {100 * accuracy:.1f} %")
            + f", {_duration(ran)} in this run, {left}"
        )
