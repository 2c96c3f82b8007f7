"""Device selection and the per-device speed settings.

* CUDA: bf16 autocast and channels_last by default.
* CPU: float32 and contiguous tensors by default.  ``channels_last=True`` is about 20 % faster for a
  width-16 ResNet-18 with oneDNN, but stays opt-in: with torch 2.13 on CPU the backward pass of a
  width-8 ResNet-18 in channels_last crashes the process (segmentation fault) for odd batch sizes
  such as 3, 9 or 129.
  ``amp=True`` turns on bf16 autocast for training, which is about 2.3x faster for a width-16
  ResNet-18 on processors with native bf16 units (AMX / AVX512-BF16, see :func:`cpu_has_native_bf16`)
  and slower where bf16 is emulated.  It stays opt-in on CPU because it changes results: on the
  8-epoch digits recipe, one of three BadNets-grid seeds failed to learn the backdoor in bf16
  (ASR 5.9 % vs 92.6 % in float32).  Evaluation on CPU is always float32.
* Inference batches (:func:`inference_batch`): 1,024 images on an accelerator, 128 on CPU, where
  large batches overflow the caches: a ResNet-18 (width 8, 32x32) classifies ~2x more images per
  second in batches of 128 than of 1,024 with oneDNN, with bit-identical logits (eval mode: every
  image is computed on its own).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")
"""Device types a command or spec may name (with ``auto``); anything else is a one-line error."""


def check_device(device: str | torch.device | None) -> str:
    """``device`` as a canonical string (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) after checking
    that it names a device type we run on and that this machine has it.

    Raises:
        ConfigError: an unknown device (``tpu``, ``meta`` ...), a malformed index, or CUDA / MPS / a CUDA
            index this machine lacks.
    """
    from backdoorkit.errors import ConfigError

    if device is None or str(device).strip().lower() == "auto":
        return "auto"
    text = str(device).strip().lower()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ConfigError(f"device {str(device)!r} is not a device here; use auto, cpu, cuda, cuda:1 or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r} was requested but no CUDA device is available")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {text!r}: this machine has {count} CUDA device(s) (cuda:0 ...)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {text!r} was requested but MPS is not available")
    return str(dev)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as given, once
    :func:`check_device` has accepted it."""
    if isinstance(device, torch.device) and device.type in DEVICE_TYPES and device.type != "cuda":
        return device
    name = check_device(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CPU_INFERENCE_BATCH = 128
ACCELERATOR_INFERENCE_BATCH = 1024


def inference_batch(device: torch.device, batch_size: int | None = None) -> int:
    """The batch size for inference on ``device``: ``batch_size`` when given, else 128 on CPU and 1,024
    on CUDA / MPS (see the module docstring)."""
    if batch_size is not None:
        return int(batch_size)
    return CPU_INFERENCE_BATCH if device.type == "cpu" else ACCELERATOR_INFERENCE_BATCH


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16)."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):
        return False


def default_amp(device: torch.device, training: bool) -> bool:
    """bf16 autocast by default on CUDA only (CPU: opt-in, see the module docstring)."""
    return device.type == "cuda"


def autocast(
    device: torch.device, enabled: bool | None = None, *, training: bool = False
) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` (``enabled=None``: :func:`default_amp`), else a no-op."""
    use = default_amp(device, training) if enabled is None else enabled
    if use and not training and device.type == "cpu":
        use = False  # evaluation on CPU is always float32
    if use and device.type == "cpu":
        _warn_if_cpu_lacks_bf16()
    if use and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def _warn_if_cpu_lacks_bf16() -> None:
    """Warn once: without native bf16 (AVX-512 BF16 / AMX) CPU autocast emulates it, and training runs
    many times slower than float32 (measured 14x at ResNet-18 width 16 on an AVX2-only EPYC)."""
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # no oneDNN in this build: nothing to say
        return
    if not native:
        warnings.warn(
            f"bf16 autocast on a CPU without native bf16 (capability "
            f"{torch.backends.cpu.get_cpu_capability()}): expect training to be much slower than "
            "float32; set amp to false",
            RuntimeWarning,
            stacklevel=3,
        )


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode and restore its previous modes afterwards (per module)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
