"""Training throughput: ``backdoorkit.train.fit`` against the conventional per-sample pipeline.

The conventional pipeline is what most backdoor toolboxes run: a ``torch.utils.data.Dataset`` that
returns one image at a time, per-image random crop (zero padding 1/8 of the side) + horizontal flip
(where the dataset allows it) + to-tensor done in numpy inside ``__getitem__``, batched by a
``DataLoader`` with ``num_workers`` worker processes (2 by default, persistent, pinned memory on
CUDA), then ``.to(device)`` in the training loop.  ``fit`` keeps the whole set on the device as uint8
and crops / flips whole batches with kornia (plus bf16 autocast and channels_last on CUDA).

What is held equal, in one process, one after the other: the model (same architecture, width and
seeded initialisation; normalisation is the model's first layer in both, so neither pipeline
normalises per image), the data, the batch size, the number of timed optimiser steps, the optimiser
(SGD, momentum 0.9, Nesterov, weight decay 5e-4, constant lr 0.1 - ``schedule="constant"`` in
``fit``), the cross-entropy loss, and augmentation (crop + flip) on in both.  Each pipeline first runs
``--warmup`` steps that are not timed (``fit`` in a separate call; the conventional loop on the same
persistent ``DataLoader`` iterator, so worker start-up is excluded too); losses are accumulated on
the device and read once at the end in both.  On CUDA a third row, "conventional + amp", gives the
conventional loop ``fit``'s bf16 autocast and channels_last, separating the data-pipeline gain from
the numeric one.  The mean loss of the timed steps is reported as a sanity check.

Usage (never run by CI; measure on a quiet machine)::

    BACKDOORKIT_DATA=/work/shared/datasets python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --dataset cifar10 --widths 16 64 --steps 100 --device cuda
    python benchmarks/train_throughput.py --dataset digits --widths 8 --steps 5 --warmup 2  # smoke

Writes ``benchmarks/results/train_throughput.json`` (a list; each run appends its records) and
appends one Markdown table row per width to ``benchmarks/results/train_throughput.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from backdoorkit.data import ImageSet, load_dataset
from backdoorkit.device import autocast, resolve_device
from backdoorkit.pipeline import make_model
from backdoorkit.train import TrainConfig, fit

RESULTS = Path(__file__).resolve().parent / "results"
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


# ------------------------------------------------------------------------- conventional pipeline
class PerSampleImages(Dataset):
    """Images kept as an ``[N, H, W, C]`` uint8 numpy array (as CIFAR pickles load), transformed one
    at a time in ``__getitem__``: random crop with zero padding, optional horizontal flip, to-tensor."""

    def __init__(self, data: ImageSet, padding: int, hflip: bool, seed: int) -> None:
        self.images = data.x.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = data.y.numpy()
        self.padding = padding
        self.hflip = hflip
        self.seed = seed
        self.rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _rng(self) -> np.random.Generator:
        if self.rng is None:  # one generator per worker process
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng([self.seed, info.id if info is not None else 0])
        return self.rng

    def random_crop(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w, _ = img.shape
        p = self.padding
        padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="constant")
        top, left = rng.integers(0, 2 * p + 1, size=2)
        return padded[top : top + h, left : left + w]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = self._rng()
        img = self.random_crop(self.images[index], rng)
        if self.hflip and rng.random() < 0.5:
            img = img[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        return tensor, int(self.labels[index])


def conventional_throughput(
    model: nn.Module,
    data: ImageSet,
    *,
    device: torch.device,
    batch_size: int,
    steps: int,
    warmup: int,
    workers: int,
    seed: int,
    amp: bool,
) -> dict[str, float]:
    """Train ``model`` for ``warmup`` + ``steps`` steps through a DataLoader; time the last ``steps``."""
    padding = max(1, data.image_shape[1] // 8)
    dataset = PerSampleImages(data, padding, data.hflip, seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    model.to(device).train()
    channels_last = amp and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    loss_sum = torch.zeros((), device=device)
    batches = iter(loader)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:  # next epoch: the persistent workers are reused
            batches = iter(loader)
            x, y = next(batches)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device) if amp else contextlib.nullcontext():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            loss_sum += loss.detach()
    _sync(device)
    seconds = time.perf_counter() - start
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return {
        "seconds": seconds,
        "images_per_second": steps * batch_size / seconds,
        "loss": float(loss_sum) / steps,
    }


# --------------------------------------------------------------------------------- backdoorkit
def backdoorkit_throughput(
    model: nn.Module,
    data: ImageSet,
    *,
    device: torch.device,
    batch_size: int,
    steps: int,
    warmup: int,
    seed: int,
    amp: bool | None = None,
) -> dict[str, float]:
    """``fit`` for ``warmup`` steps (untimed), then a timed ``fit`` call of ``steps`` steps.

    ``amp=None`` is ``fit``'s device default (bf16 autocast on CUDA, off on CPU); ``True`` forces it."""
    cfg = TrainConfig(
        batch_size=batch_size,
        lr=LR,
        momentum=MOMENTUM,
        nesterov=True,
        weight_decay=WEIGHT_DECAY,
        schedule="constant",
        augment=True,
        drop_last=True,
        seed=seed,
        device=str(device),
        amp=amp,
    )
    if warmup:
        fit(model, data, cfg, steps=warmup)
    _sync(device)
    start = time.perf_counter()
    result = fit(model, data, cfg, steps=steps)  # default loss: cross-entropy on float logits
    _sync(device)
    seconds = time.perf_counter() - start
    loss = sum(result.losses) / max(len(result.losses), 1)  # mean of the per-epoch mean losses
    return {"seconds": seconds, "images_per_second": steps * batch_size / seconds, "loss": loss}


# ------------------------------------------------------------------------------------- running
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _commit() -> str:
    """The short commit, with ``+dirty`` when tracked files differ from it."""
    try:
        git = {"capture_output": True, "text": True, "cwd": RESULTS.parent, "timeout": 10}
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip()
        return (head + ("+dirty" if dirty else "")) if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, "train", args.data_root)
    need = (args.steps + args.warmup) * args.batch_size
    if args.max_images and len(data) > max(args.max_images, args.batch_size):
        data = data.subset(torch.arange(max(args.max_images, args.batch_size)))
    if len(data) < args.batch_size:
        raise SystemExit(f"{data.name} has {len(data)} images, fewer than one batch of {args.batch_size}")
    records = []
    for width in args.widths:
        row: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": _commit(),
            "device": _device_name(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "dataset": data.name,
            "images": len(data),
            "arch": args.arch,
            "width": width,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "workers": args.workers,
            "epochs_covered": round(need / len(data), 2),
        }
        pipelines: dict[str, dict[str, float]] = {}
        model = make_model(args.arch, data, width=width, seed=args.seed)
        pipelines["backdoorkit"] = backdoorkit_throughput(
            model, data, device=device, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
            seed=args.seed,
        )  # fmt: skip
        if device.type == "cpu":  # bf16 autocast is opt-in on CPU (numerics): measured as its own row
            model = make_model(args.arch, data, width=width, seed=args.seed)
            pipelines["backdoorkit_amp"] = backdoorkit_throughput(
                model, data, device=device, batch_size=args.batch_size, steps=args.steps,
                warmup=args.warmup, seed=args.seed, amp=True,
            )  # fmt: skip
        variants = [("conventional", False)] + ([("conventional_amp", True)] if device.type == "cuda" else [])
        for name, amp in variants:
            model = make_model(args.arch, data, width=width, seed=args.seed)
            pipelines[name] = conventional_throughput(
                model, data, device=device, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                workers=args.workers, seed=args.seed, amp=amp,
            )  # fmt: skip
        row["pipelines"] = pipelines
        ours, theirs = pipelines["backdoorkit"], pipelines["conventional"]
        row["speedup"] = ours["images_per_second"] / theirs["images_per_second"]
        records.append(row)
        summary = ", ".join(f"{k} {v['images_per_second']:.0f} img/s" for k, v in pipelines.items())
        print(f"{args.arch} width {width} on {row['device']}: {summary}; speedup x{row['speedup']:.2f}")
    return records


def write(records: list[dict[str, Any]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "train_throughput.json"
    old: list[dict[str, Any]] = []
    if json_path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            loaded = json.loads(json_path.read_text())
            old = loaded if isinstance(loaded, list) else [loaded]
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(old + records, indent=2))
    tmp.replace(json_path)
    md_path = out_dir / "train_throughput.md"
    lines = []
    if not md_path.is_file():
        lines += [
            "# Training throughput: backdoorkit.fit vs a per-sample DataLoader pipeline",
            "",
            "Images/s over the timed steps (warm-up excluded); see benchmarks/train_throughput.py.",
            "",
            "| date (UTC) | commit | device | dataset | model | batch | steps | backdoorkit img/s "
            "| backdoorkit+amp img/s (CPU opt-in) | conventional img/s | conventional+amp img/s | speedup "
            "| speedup with amp |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for r in records:
        p = r["pipelines"]
        amp = f"{p['conventional_amp']['images_per_second']:.0f}" if "conventional_amp" in p else "-"
        ours_amp = p.get("backdoorkit_amp")
        amp_ips = f"{ours_amp['images_per_second']:.0f}" if ours_amp else "-"
        conv_ips = p["conventional"]["images_per_second"]
        amp_ratio = f"x{ours_amp['images_per_second'] / conv_ips:.2f}" if ours_amp else "-"
        lines.append(
            f"| {r['date']} | {r['commit']} | {r['device']} | {r['dataset']} | {r['arch']} w{r['width']} "
            f"| {r['batch_size']} | {r['steps']} | {p['backdoorkit']['images_per_second']:.0f} | {amp_ips} "
            f"| {p['conventional']['images_per_second']:.0f} | {amp} | x{r['speedup']:.2f} | {amp_ratio} |"
        )
    with md_path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10", help="registered name or path (BACKDOORKIT_DATA)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=100, help="timed optimiser steps per pipeline")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N training images")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    write(run(args), args.out_dir)


if __name__ == "__main__":
    main()
