"""Device selection and the per-device speed settings (bf16 autocast and channels_last on CUDA)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from backdoorkit.errors import ConfigError

        raise ConfigError("device 'cuda' was requested but no CUDA device is available")
    return dev


def autocast(device: torch.device, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (by default), a no-op elsewhere."""
    use = device.type == "cuda" if enabled is None else enabled
    if use and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
