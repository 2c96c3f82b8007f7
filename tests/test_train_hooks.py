"""The extension points of the training loop: Batch (row indices for per-sample losses), callbacks,
continued TrainState, optimizer factories, callable lr schedules and the deferred finite-loss check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.data import ImageSet, take_fraction
from backdoorkit.data.imageset import to_pixels
from backdoorkit.errors import ConfigError
from backdoorkit.pipeline import make_model
from backdoorkit.train import Batch, Callback, TrainConfig, TrainState, fit, parameters_of


@pytest.fixture(scope="module")
def tiny(digits_train: ImageSet) -> ImageSet:
    """64 stratified digits."""
    return take_fraction(digits_train, 64, seed=2)


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "epochs": 1,
        "batch_size": 16,
        "device": "cpu",
        "augment": False,
        "schedule": "constant",
        "lr": 0.05,
    }
    return TrainConfig(**{**base, **kw})


def _linear(data: ImageSet, seed: int = 0) -> nn.Module:
    """A model without batch norm or randomness, so full-batch runs can be compared exactly."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(data.x[0].numel(), data.num_classes))


class _Recorder(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.lrs: list[list[float]] = []
        self.ends: list[int] = []

    def on_step_end(self, state: TrainState, batch: Batch, loss: torch.Tensor) -> None:
        assert batch.step == state.step - 1  # the step just taken
        self.steps.append(batch.step)
        self.epochs.append(batch.epoch)
        self.lrs.append([g["lr"] for g in state.optimizer.param_groups])

    def on_epoch_end(self, state: TrainState) -> bool | None:
        self.ends.append(state.epoch)
        return None


def test_batch_carries_the_rows_it_holds(tiny: ImageSet) -> None:
    seen: list[torch.Tensor] = []

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        assert batch.idx.dtype == torch.int64 and batch.idx.device == batch.x.device
        assert torch.equal(batch.x, to_pixels(tiny.x[batch.idx])) and torch.equal(batch.y, tiny.y[batch.idx])
        seen.append(batch.idx.clone())
        return F.cross_entropy(model(batch.x), batch.y)

    res = fit(make_model("resnet18", tiny, width=4), tiny, _cfg(epochs=2), loss_fn=loss)
    assert res.steps == 8 and len(seen) == 8
    for epoch in range(2):  # every row exactly once per epoch
        rows = torch.cat(seen[4 * epoch : 4 * epoch + 4]).sort().values
        assert torch.equal(rows, torch.arange(len(tiny)))
    assert res.accuracies == [0.0, 0.0]  # a bare loss gives no logits, hence no accuracy


def test_zero_weight_rows_train_like_removed_rows(tiny: ImageSet) -> None:
    dropped = torch.arange(len(tiny)) % 4 == 0
    weight = (~dropped).float()

    def weighted(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        w = weight[batch.idx]
        per_row = F.cross_entropy(logits, batch.y, reduction="none")
        return (per_row * w).sum() / w.sum(), logits

    a = _linear(tiny)
    fit(a, tiny, _cfg(epochs=3, batch_size=len(tiny)), loss_fn=weighted)
    kept = tiny.subset(torch.nonzero(~dropped).squeeze(1))
    b = _linear(tiny)
    fit(b, kept, _cfg(epochs=3, batch_size=len(kept)))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    c = _linear(tiny)
    fit(c, tiny, _cfg(epochs=3, batch_size=len(tiny)))  # the dropped rows do matter
    assert not torch.allclose(a[1].weight, c[1].weight, atol=1e-5)


def test_zero_weight_rows_get_no_gradient(tiny: ImageSet) -> None:
    """A loss that weights every row of the batch by 0 leaves the weights where they were."""
    model = make_model("resnet18", tiny, width=4)
    before = [p.detach().clone() for p in model.parameters()]

    def nothing(model: nn.Module, batch: Batch) -> torch.Tensor:
        per_row = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        return (per_row * torch.zeros_like(batch.idx, dtype=per_row.dtype)).mean()

    fit(model, tiny, _cfg(weight_decay=0.0), loss_fn=nothing)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_callback_stops_training(tiny: ImageSet) -> None:
    class StopAfterTwo(Callback):
        def on_epoch_end(self, state: TrainState) -> bool:
            return state.epoch >= 2

    rec = _Recorder()
    res = fit(make_model("resnet18", tiny, width=4), tiny, _cfg(epochs=5), callbacks=[rec, StopAfterTwo()])
    assert res.steps == 8 and len(res.losses) == 2 and res.images == 128
    assert res.state is not None and res.state.epoch == 2 and res.state.step == 8 and res.state.stop
    assert rec.steps == list(range(8)) and rec.epochs == [0] * 4 + [1] * 4 and rec.ends == [1, 2]

    class StopMidEpoch(Callback):
        def on_step_end(self, state: TrainState, batch: Batch, loss: torch.Tensor) -> None:
            state.stop = state.step >= 3

    res = fit(make_model("resnet18", tiny, width=4), tiny, _cfg(epochs=5), callbacks=[StopMidEpoch()])
    assert res.steps == 3 and len(res.losses) == 1 and res.images == 48


def test_state_continues_optimizer_and_steps(tiny: ImageSet) -> None:
    model = make_model("resnet18", tiny, width=4)
    first = fit(model, tiny, _cfg())
    state = first.state
    assert state is not None and state.step == 4 and state.epoch == 1 and state.model is model
    opt = state.optimizer
    p0 = next(model.parameters())
    buf = opt.state[p0]["momentum_buffer"].clone()
    rec = _Recorder()
    second = fit(model, tiny, _cfg(), state=state, callbacks=[rec])
    assert second.state is state and state.optimizer is opt and state.result is second
    assert rec.steps == [4, 5, 6, 7] and rec.epochs == [1] * 4 and second.steps == 4 and state.step == 8
    assert opt.state[p0]["momentum_buffer"] is not None and not torch.equal(
        opt.state[p0]["momentum_buffer"], buf
    )
    with pytest.raises(ConfigError, match="another model"):
        fit(make_model("resnet18", tiny, width=4), tiny, _cfg(), state=state)
    with pytest.raises(ConfigError, match="not both"):
        fit(model, tiny, _cfg(), state=state, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))


def test_state_split_equals_one_run(tiny: ImageSet) -> None:
    """Two continued calls are one run: momentum persists (full batches, no BN: order-free)."""
    cfg = _cfg(epochs=2, batch_size=len(tiny))
    one = _linear(tiny)
    fit(one, tiny, cfg.model_copy(update={"epochs": 4}))
    two = _linear(tiny)
    fit(two, tiny, cfg, state=fit(two, tiny, cfg).state)
    fresh = _linear(tiny)
    fit(fresh, tiny, cfg)
    fit(fresh, tiny, cfg)  # a new optimizer: momentum starts again from zero
    for pa, pb in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one[1].weight, fresh[1].weight, atol=1e-5)


def test_optimizer_factory_groups_and_lr_schedule(tiny: ImageSet) -> None:
    model = make_model("resnet18", tiny, width=4)
    head = parameters_of(model, "fc")
    head_ids = {id(p) for p in head}
    got: list[list[nn.Parameter]] = []

    def factory(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        got.append(params)
        body = [p for p in params if id(p) not in head_ids]
        return torch.optim.SGD(
            [{"params": head, "lr": 0.2}, {"params": body, "lr": 0.0}], lr=0.1, momentum=0.9
        )

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = _Recorder()
    res = fit(
        model,
        tiny,
        _cfg(epochs=2),
        optimizer=factory,
        lr_schedule=lambda step, total: (step + 1) / total,
        callbacks=[rec],
    )
    assert len(got) == 1 and len(got[0]) == len(before)
    assert isinstance(res.state.optimizer, torch.optim.SGD) and len(res.state.optimizer.param_groups) == 2  # type: ignore[union-attr]
    assert rec.lrs == [pytest.approx([0.2 * (s + 1) / 8, 0.0]) for s in range(8)]
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved == {"fc.weight", "fc.bias"}


def test_default_schedule_restarts_per_call(tiny: ImageSet) -> None:
    """The schedule's step counts within the call (the Batch's step is global)."""
    model = make_model("resnet18", tiny, width=4)
    rec1, rec2 = _Recorder(), _Recorder()
    res = fit(model, tiny, _cfg(schedule="cosine"), callbacks=[rec1])
    fit(model, tiny, _cfg(schedule="cosine"), state=res.state, callbacks=[rec2])
    assert rec1.lrs == rec2.lrs and rec1.lrs[0] == [pytest.approx(0.05)] and rec2.steps == [4, 5, 6, 7]


def _nan_at(step: int):  # type: ignore[no-untyped-def]
    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        out = F.cross_entropy(model(batch.x), batch.y)
        return out * float("nan") if batch.step == step else out

    return loss


def test_non_finite_loss_raises_one_line_at_epoch_end(tiny: ImageSet) -> None:
    rec = _Recorder()
    model = make_model("resnet18", tiny, width=4)
    with pytest.raises(FloatingPointError) as info:
        fit(model, tiny, _cfg(epochs=3), loss_fn=_nan_at(5), callbacks=[rec])
    msg = str(info.value)
    assert "\n" not in msg and "nan" in msg and "at step 5 (epoch 1)" in msg
    assert rec.steps == list(range(8))  # checked once per epoch: the epoch ran to its end
    assert all(p.requires_grad for p in model.parameters())  # restored after the error
    rec = _Recorder()
    with pytest.raises(FloatingPointError, match=r"at step 5 \(epoch 1\)"):
        fit(
            make_model("resnet18", tiny, width=4),
            tiny,
            _cfg(epochs=3, check_every=1),
            loss_fn=_nan_at(5),
            callbacks=[rec],
        )
    assert rec.steps == list(range(6))
    with pytest.raises(ConfigError, match="check_every"):
        fit(model, tiny, _cfg(), check_every=0)


def test_zero_steps_still_return_a_state(tiny: ImageSet) -> None:
    model = make_model("resnet18", tiny, width=4)
    res = fit(model, tiny, _cfg(epochs=0))
    assert res.steps == 0 and res.state is not None and res.state.step == 0
    assert all(p.requires_grad for p in model.parameters())


def test_finetune_module_registers_nothing() -> None:
    from backdoorkit.defenses import DEFENSES
    from backdoorkit.defenses import finetune as ft

    assert "finetune" not in DEFENSES and not any(e.obj.__module__ == ft.__name__ for e in DEFENSES.entries())
    assert (
        ft.tune_steps(144, ft.TuneParams()) == 400
        and ft.tune_steps(144, ft.TuneParams(min_steps=None)) is None
    )
