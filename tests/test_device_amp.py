"""bf16 autocast on CPU: off by default, float32 for evaluation, and a warning when the CPU has no
native bf16 (there it runs many times slower than float32)."""

from __future__ import annotations

import warnings

import pytest
import torch

from backdoorkit import device as dev


def test_cpu_autocast_is_opt_in_and_never_for_evaluation() -> None:
    cpu = torch.device("cpu")
    x = torch.randn(2, 4)
    lin = torch.nn.Linear(4, 3)
    with dev.autocast(cpu, None, training=True):
        assert lin(x).dtype == torch.float32
    with dev.autocast(cpu, True, training=False):
        assert lin(x).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_warns_once_when_the_cpu_lacks_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native, raising=False)
    dev._warn_if_cpu_lacks_bf16.cache_clear()
    lin = torch.nn.Linear(4, 3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            with dev.autocast(torch.device("cpu"), True, training=True):
                assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    slow = [w for w in seen if "without native bf16" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    dev._warn_if_cpu_lacks_bf16.cache_clear()


def test_inference_batches_follow_the_device_and_do_not_change_logits() -> None:
    """128 images per forward on CPU (large batches overflow the caches there), 1,024 on CUDA; in eval
    mode every image is computed on its own, so the logits are the same as in one large batch."""
    from backdoorkit.models import build_model
    from backdoorkit.train import forward_in_batches, predict

    assert dev.inference_batch(torch.device("cpu")) == 128
    assert dev.inference_batch(torch.device("cuda")) == 1024
    assert dev.inference_batch(torch.device("cpu"), 7) == 7
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=1, width=4).eval()
    x = torch.randint(0, 256, (300, 1, 32, 32), dtype=torch.uint8)
    default = predict(model, x)
    one = predict(model, x, batch_size=300)
    assert default.shape == (300, 10)
    assert torch.allclose(default, one, atol=1e-5) and torch.equal(default.argmax(1), one.argmax(1))
    with torch.no_grad():
        pix = x.float() / 255
        assert torch.allclose(forward_in_batches(model, pix), model(pix), atol=1e-5)
