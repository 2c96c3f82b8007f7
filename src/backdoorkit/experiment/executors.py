"""Where jobs run: in this process, in N worker processes, or as Ray tasks.

Every executor takes a job payload (see :func:`backdoorkit.experiment.stages.execute`) and returns a
:class:`concurrent.futures.Future` of its result, so the scheduler waits on all of them alike.

* :class:`InlineExecutor`: one job at a time in the calling process (``--jobs 1``);
* :class:`ProcessExecutor`: ``N`` worker processes started with the *spawn* method (no forked torch
  state); each worker sets its torch thread count to its share of the CPU cores and exits when the
  run's process dies (even by ``kill -9``), so no worker outlives it;
* :class:`RayExecutor`: one remote task per job with ``num_cpus`` / ``num_gpus`` requests, on a running
  Ray cluster (``address``) or a local instance.  Ray is the optional extra ``backdoorkit[ray]`` and is
  imported only here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

from backdoorkit.errors import ConfigError
from backdoorkit.experiment.stages import execute


class Executor(Protocol):
    slots: int
    name: str

    def submit(self, payload: dict[str, Any]) -> Future: ...

    def shutdown(self) -> None: ...


class InlineExecutor:
    """Runs each job immediately in this process (sequential)."""

    name = "local"

    def __init__(self) -> None:
        self.slots = 1

    def submit(self, payload: dict[str, Any]) -> Future:
        fut: Future = Future()
        fut.set_result(execute(payload))
        return fut

    def shutdown(self) -> None:
        return None


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """End this worker process as soon as its parent is gone (``kill -9`` of ``backdoorkit run``):
    a daemon thread polls the parent pid, so no worker outlives the run."""
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="backdoorkit-parent-watch", daemon=True).start()


def _init_worker(threads: int, parent: int | None = None) -> None:
    if parent is not None:
        _exit_with_parent(parent)
    import torch

    torch.set_num_threads(max(1, threads))
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads)))


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: an equal share of the cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


class ProcessExecutor:
    """``jobs`` spawned worker processes."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        self.slots = jobs
        self.threads = worker_threads(jobs)
        self._pool = self._make()

    def _make(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        )

    def submit(self, payload: dict[str, Any]) -> Future:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(execute, {**payload, "threads": self.threads})
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._make()
            return self._pool.submit(execute, {**payload, "threads": self.threads})

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray executor needs Ray: pip install 'backdoorkit[ray]' (or use --executor local)"
        ) from None
    return ray


class RayExecutor:
    """One Ray task per job with CPU/GPU resource requests."""

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        jobs: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        ray = import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **(init_kwargs or {}))
            self._started = True
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(execute)
        self.threads = max(1, int(num_cpus))
        if jobs is None or jobs < 1:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            by_cpu = int(cpus // num_cpus) if num_cpus > 0 else 1
            if num_gpus > 0:
                gpus = float(ray.cluster_resources().get("GPU", 0.0))
                by_cpu = min(by_cpu, int(gpus // num_gpus))
            jobs = max(1, by_cpu)
        self.slots = jobs

    def submit(self, payload: dict[str, Any]) -> Future:
        ref = self._remote.remote({**payload, "threads": self.threads})
        return ref.future()

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_executor(kind: str, jobs: int, ray_settings: Any = None) -> Executor:
    """The executor for ``--executor`` / ``--jobs``."""
    if kind == "local":
        return InlineExecutor() if jobs <= 1 else ProcessExecutor(jobs)
    if kind == "ray":
        rs = ray_settings
        return RayExecutor(
            address=getattr(rs, "address", None),
            num_cpus=getattr(rs, "num_cpus", 1.0),
            num_gpus=getattr(rs, "num_gpus", 0.0),
            jobs=jobs if jobs > 1 else None,
        )
    raise ConfigError(f"unknown executor {kind!r}; allowed: local, ray")
