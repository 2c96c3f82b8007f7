"""Pixel-exact tests of the data-poisoning triggers (badnets variants, blended, sig, wanet,
l0_invisible, l2_invisible, refool): placement, amplitude, determinism, parameter validation,
rates as counts, clean-label capping, all-to-all targets, WaNet's noise mode and uint8 quantisation.
Fast: no training."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from backdoorkit.attacks import ATTACKS, build_attack
from backdoorkit.attacks.wanet import identity_grid, warp_field
from backdoorkit.data import ImageSet
from backdoorkit.data.imageset import quantize
from backdoorkit.errors import ConfigError

MINE = ["badnets", "blended", "sig", "wanet", "l0_invisible", "l2_invisible", "refool"]
DIRTY = ["badnets", "blended", "wanet", "l0_invisible", "l2_invisible"]
# attacks whose trigger is a fixed function of the image (no per-image random draws)
FIXED = ["badnets", "blended", "sig", "wanet", "l0_invisible", "l2_invisible"]


def make_set(channels: int = 3, size: int = 32, n_per_class: int = 20, classes: int = 10) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    n = n_per_class * classes
    x = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return ImageSet(x, y, tuple(str(i) for i in range(classes)), name="synthetic/train")


@pytest.fixture(scope="module")
def rgb() -> ImageSet:
    return make_set(3)


@pytest.fixture(scope="module")
def grey() -> ImageSet:
    return make_set(1)


def ready(name: str, data: ImageSet, **params: object):
    atk = build_attack(name, **params)
    atk.setup(data, seed=0)
    return atk


# ---------------------------------------------------------------------------- badnets variants
def test_badnets_white_square_bottom_right(rgb: ImageSet) -> None:
    x = rgb.pixels(slice(0, 4))
    out = build_attack("badnets").apply(x)
    assert torch.all(out[..., 29:32, 29:32] == 1.0)
    keep = torch.ones(32, 32, dtype=torch.bool)
    keep[29:, 29:] = False
    assert torch.equal(out[..., keep], x[..., keep])


def test_badnets_grid_values(rgb: ImageSet) -> None:
    x = torch.full((2, 3, 32, 32), 0.5)
    out = build_attack("badnets", variant="grid").apply(x)
    grid = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.equal(out[..., 29:32, 29:32], grid.expand(2, 3, 3, 3))
    # ABL / NAD layout: row 31 = [255, 0, 255], row 30 = [0, 255, 0], row 29 = [0, 0, 255] (cols 29-31)
    assert out[0, 0, 31, 29:32].mul(255).tolist() == [255, 0, 255]
    assert out[0, 0, 30, 29:32].mul(255).tolist() == [0, 255, 0]
    assert out[0, 0, 29, 29:32].mul(255).tolist() == [0, 0, 255]
    assert torch.all(out[..., :29, :] == 0.5) and torch.all(out[..., :, :29] == 0.5)


def test_badnets_margin_and_explicit_position() -> None:
    x = torch.zeros(1, 1, 32, 32)
    sq = build_attack("badnets", size=4, margin=1).apply(x)  # Trap-and-Replace / I-BAU: rows/cols 27-30
    assert sq[0, 0].nonzero().min(0).values.tolist() == [27, 27]
    assert sq[0, 0].nonzero().max(0).values.tolist() == [30, 30]
    assert int(sq.sum()) == 16
    rc = build_attack("badnets", size=2, row=0, col=5).apply(x)
    assert rc[0, 0].nonzero().tolist() == [[0, 5], [0, 6], [1, 5], [1, 6]]


def test_badnets_grid_other_size_has_white_corner() -> None:
    out = build_attack("badnets", variant="grid", size=4).apply(torch.full((1, 1, 32, 32), 0.5))
    patch = out[0, 0, 28:, 28:]
    assert patch[-1, -1] == 1.0 and set(patch.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(
    "params",
    [{"size": 40}, {"row": 31, "col": 0}, {"margin": 31}],
)
def test_badnets_patch_outside_image(params: dict, rgb: ImageSet) -> None:
    atk = build_attack("badnets", **params)
    with pytest.raises(ConfigError, match="does not fit"):
        atk.setup(rgb)


def test_unknown_variant_is_config_error() -> None:
    with pytest.raises(ConfigError, match="variant"):
        build_attack("badnets", variant="plaid")


# ---------------------------------------------------------------------------- blended
def test_blended_mixes_at_alpha(rgb: ImageSet) -> None:
    atk = build_attack("blended")
    x = rgb.pixels(slice(0, 8))
    t = atk.pattern((3, 32, 32))
    assert t.shape == (1, 3, 32, 32) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert torch.allclose(atk.apply(x), 0.8 * x + 0.2 * t, atol=1e-6)
    assert torch.allclose(build_attack("blended", alpha=0.5).apply(x), 0.5 * x + 0.5 * t, atol=1e-6)


def test_blended_pattern_seeded() -> None:
    a = build_attack("blended").pattern((3, 32, 32))
    b = build_attack("blended").pattern((3, 32, 32))
    c = build_attack("blended", pattern_seed=1).pattern((3, 32, 32))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.std()) > 0.2  # full-image noise, not a constant


@pytest.mark.parametrize("channels", [1, 3])
def test_blended_pattern_from_image_file(tmp_path: Path, channels: int) -> None:
    import numpy as np
    from PIL import Image

    arr = np.zeros((50, 40, 3), dtype=np.uint8)
    arr[:, :, 0] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
    arr[:, :, 2] = 200
    path = tmp_path / "pattern.png"
    Image.fromarray(arr).save(path)
    atk = build_attack("blended", pattern_path=str(path), alpha=1.0)
    out = atk.apply(torch.zeros(2, channels, 32, 32))
    ref = Image.fromarray(arr).convert("L" if channels == 1 else "RGB")
    ref = ref.resize((32, 32), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(ref, dtype=np.float32) / 255.0)
    expected = expected.unsqueeze(0) if channels == 1 else expected.permute(2, 0, 1)
    assert out.shape == (2, channels, 32, 32)
    assert torch.allclose(out[0], expected, atol=1e-6) and torch.equal(out[0], out[1])


def test_blended_clean_label_blends_target_rows_only(digits_train: ImageSet) -> None:
    """The PT paper's clean-label Blend: target-class rows carry the pattern, every label is kept."""
    atk = build_attack("blended", clean_label=True, rate=0.01, target=3)
    assert atk.label_mode == "clean" and ATTACKS.entry("blended").meta["label_mode"] == "dirty"
    ps = atk.poison(digits_train, seed=0)
    assert ps.count == round(0.01 * len(digits_train)) and torch.all(digits_train.y[ps.mask] == 3)
    assert torch.equal(ps.data.y, digits_train.y)
    assert not torch.equal(ps.data.x[ps.mask], digits_train.x[ps.mask])
    assert torch.equal(ps.data.x[~ps.mask], digits_train.x[~ps.mask])
    capped = build_attack("blended", clean_label=True, rate=0.5, target=3).poison(digits_train, seed=0)
    assert capped.count == int((digits_train.y == 3).sum()) and "capped" in capped.info
    with pytest.raises(ConfigError, match="clean-label"):
        build_attack("blended", clean_label=True, mode="all2all")


@pytest.mark.parametrize("params", [{"alpha": 1.5}, {"alpha": -0.1}, {"pattern_path": "/no/such/file.png"}])
def test_blended_validation(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_attack("blended", **params)


# ---------------------------------------------------------------------------- sig
def test_sig_sinusoid_amplitude_and_placement() -> None:
    x = torch.full((2, 3, 32, 32), 0.5)
    atk = build_attack("sig")
    out = atk.apply(x)
    j = torch.arange(32, dtype=torch.float32)
    v = 20 / 255 * torch.sin(2 * math.pi * j * 6 / 32)
    assert torch.allclose(out - x, v.expand_as(x), atol=1e-6)  # same on every row and channel
    assert math.isclose(float((out - x).abs().max()), float(v.abs().max()), rel_tol=1e-5)
    assert float(v.abs().max()) > 0.95 * 20 / 255
    clipped = atk.apply(torch.zeros(1, 1, 32, 32))
    assert torch.allclose(clipped[0, 0], v.clamp(min=0).expand(32, 32), atol=1e-6)


def test_sig_test_delta_and_training_delta(grey: ImageSet) -> None:
    atk = build_attack("sig", delta=40, test_delta=60)
    x = torch.full((1, 1, 32, 32), 0.5)
    train_amp = float((atk.poison_images(x, torch.zeros(1, dtype=torch.long), 0) - x).abs().max())
    test_amp = float((atk.apply(x) - x).abs().max())
    assert math.isclose(test_amp / train_amp, 1.5, rel_tol=1e-4)
    ps = atk.poison(grey, seed=0)
    rows = ps.indices
    j = torch.arange(32, dtype=torch.float32)
    v = 40 / 255 * torch.sin(2 * math.pi * j * 6 / 32)
    assert torch.equal(ps.data.x[rows], quantize(grey.pixels(rows) + v))


def test_sig_clean_label_capped_at_target_class(digits_train: ImageSet) -> None:
    target = int(digits_train.class_counts().argmin())  # a class smaller than 10 % of the set
    n_target = int((digits_train.y == target).sum())
    ps = build_attack("sig", target=target).poison(digits_train, seed=0)
    assert ps.count == n_target < round(0.1 * len(digits_train))
    assert torch.all(digits_train.y[ps.mask] == target)
    assert torch.equal(ps.data.y, digits_train.y)  # labels untouched
    assert "capped" in ps.info and ps.info["requested"] == round(0.1 * len(digits_train))
    big = build_attack("sig", target=3, rate=0.2).poison(digits_train, seed=0)
    assert big.count == int((digits_train.y == 3).sum()) and "capped" in big.info


@pytest.mark.parametrize(
    "params",
    [{"delta": 300}, {"delta": 0}, {"f": -1}, {"mode": "all2all"}, {"rate": 1.5}, {"test_delta": -3}],
)
def test_sig_validation(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_attack("sig", **params)


# ---------------------------------------------------------------------------- wanet
def test_wanet_field_normalised_and_bounded() -> None:
    field = warp_field(4, 4, 4, seed=0)  # bicubic with align_corners at the control size is the identity
    assert math.isclose(float(field.abs().mean()), 1.0, rel_tol=1e-5)
    atk = build_attack("wanet")
    grid = atk.grid(32, 32)
    full = warp_field(4, 32, 32, seed=0)
    inside = grid.abs() < 1.0  # not clamped
    assert torch.allclose((grid - identity_grid(32, 32))[inside], (0.5 * full / 32)[inside], atol=1e-6)
    assert float(grid.abs().max()) <= 1.0


def test_wanet_zero_strength_is_identity(rgb: ImageSet) -> None:
    x = rgb.pixels(slice(0, 4))
    assert torch.allclose(build_attack("wanet", s=0.0).apply(x), x, atol=1e-5)
    out = build_attack("wanet").apply(x)
    assert out.shape == x.shape and not torch.allclose(out, x, atol=1e-3)


def test_wanet_seeded() -> None:
    x = make_set(3, n_per_class=1).pixels()
    a = build_attack("wanet").apply(x)
    assert torch.equal(a, build_attack("wanet").apply(x))
    assert not torch.allclose(a, build_attack("wanet", pattern_seed=1).apply(x), atol=1e-4)


def test_wanet_noise_mode_rows(rgb: ImageSet) -> None:
    atk = build_attack("wanet")
    ps = atk.poison(rgb, seed=0)
    noise = torch.tensor(ps.info["noise_indices"])
    assert ps.count == 20 and len(noise) == ps.info["noise_count"] == 40  # cross_ratio 2
    assert not ps.mask[noise].any()  # disjoint from the poisoned rows
    assert torch.equal(ps.data.y[noise], rgb.y[noise])  # noise-mode rows keep their labels
    assert torch.all(ps.data.y[ps.mask] == 0)
    # noise rows carry the warp plus jitter: they differ from the clean image and from the plain warp
    warped = quantize(atk.apply(rgb.pixels(noise)))
    assert not torch.equal(ps.data.x[noise], rgb.x[noise]) and not torch.equal(ps.data.x[noise], warped)
    untouched = ~ps.mask
    untouched[noise] = False
    assert torch.equal(ps.data.x[untouched], rgb.x[untouched])
    again = build_attack("wanet").poison(rgb, seed=0)
    assert again.info["noise_indices"] == ps.info["noise_indices"] and torch.equal(again.data.x, ps.data.x)
    other = build_attack("wanet").poison(rgb, seed=1)
    assert other.info["noise_indices"] != ps.info["noise_indices"]


def test_wanet_no_noise_mode_and_capping(rgb: ImageSet) -> None:
    ps = build_attack("wanet", cross_ratio=0).poison(rgb, seed=0)
    assert ps.info["noise_count"] == 0
    big = build_attack("wanet", rate=0.5, cross_ratio=2).poison(rgb, seed=0)
    assert big.info["noise_count"] == 100 and "noise_capped" in big.info


@pytest.mark.parametrize("params", [{"k": 1}, {"s": -1}, {"grid_rescale": 0}, {"cross_ratio": -1}])
def test_wanet_validation(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_attack("wanet", **params)


# ---------------------------------------------------------------------------- l0 / l2 invisible
def test_l0_invisible_placement() -> None:
    atk = build_attack("l0_invisible")
    out = atk.apply(torch.zeros(1, 3, 32, 32))
    nz = out[0].abs().sum(0).nonzero()
    assert nz[:, 0].eq(31).all() and set(nz[:, 1].tolist()) <= set(range(24, 32))
    assert len(nz) >= 6  # eight random colours, at most a couple of (near-)black ones
    ones = atk.apply(torch.ones(1, 3, 32, 32))
    assert torch.all(ones[0, :, 31, 23] == 0.0)  # masked, no pattern pixel
    assert torch.equal(ones[0, :, 31, 24:], out[0, :, 31, 24:])  # x * (1 - mask) + pattern
    assert torch.all(ones[0, :, :31] == 1.0) and torch.all(ones[0, :, 31, :23] == 1.0)
    colours = out[0, :, 31, 24:].mul(255)
    assert torch.equal(colours, colours.round())  # whole grey levels


def test_l0_invisible_scaled_layout() -> None:
    out = build_attack("l0_invisible").apply(torch.ones(1, 1, 64, 64))
    changed = (out[0, 0] != 1.0).nonzero()
    assert changed[:, 0].eq(63).all()
    assert int(changed[:, 1].min()) >= 47
    mask_cols = set(range(47, 64)) - {49, 51, 53, 55, 57, 59, 61, 63}
    assert torch.all(out[0, 0, 63, sorted(mask_cols)] == 0.0)
    with pytest.raises(ConfigError, match="columns"):
        build_attack("l0_invisible").setup(make_set(1, size=8, n_per_class=2))


def test_l0_invisible_seeded() -> None:
    x = torch.zeros(1, 3, 32, 32)
    a = build_attack("l0_invisible").apply(x)
    assert torch.equal(a, build_attack("l0_invisible").apply(x))
    assert not torch.equal(a, build_attack("l0_invisible", pattern_seed=5).apply(x))


def test_l2_invisible_amplitude_and_density() -> None:
    atk = build_attack("l2_invisible")
    pat = atk.apply(torch.zeros(1, 3, 32, 32))[0]
    assert math.isclose(float(pat.max()), 68 / 255, rel_tol=1e-6)
    assert int((pat.abs().sum(0) > 0).sum()) == round(0.88 * 1024) == 901  # about 900 of 1,024 pixels
    assert torch.allclose(pat * 255, (pat * 255).round(), atol=1e-4)
    x = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(atk.apply(x), (x + pat).clamp(0, 1), atol=1e-6)
    assert torch.all(atk.apply(torch.ones(1, 3, 32, 32)) == 1.0)  # clipped
    other = build_attack("l2_invisible", pattern_seed=1).apply(torch.zeros(1, 3, 32, 32))[0]
    assert not torch.equal(pat, other)


@pytest.mark.parametrize("params", [{"amplitude": 300}, {"density": 0}, {"density": 1.2}])
def test_l2_invisible_validation(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_attack("l2_invisible", **params)


# ---------------------------------------------------------------------------- refool
def test_refool_clean_label_rows_and_reflections(digits_train: ImageSet) -> None:
    atk = build_attack("refool")
    assert atk.label_mode == "clean" and ATTACKS.entry("refool").meta["label_mode"] == "clean"
    ps = atk.poison(digits_train, seed=0)
    refl = torch.tensor(ps.info["reflection_rows"])
    assert len(refl) == 200 and torch.all(digits_train.y[refl] != 0)
    assert not ps.mask[refl].any()
    assert torch.all(digits_train.y[ps.mask] == 0)
    assert ps.count == min(int((digits_train.y == 0).sum()), round(0.1 * len(digits_train)))
    assert torch.equal(ps.data.y, digits_train.y)
    assert not torch.equal(ps.data.x[ps.mask], digits_train.x[ps.mask])
    assert torch.equal(ps.data.x[~ps.mask], digits_train.x[~ps.mask])


def test_refool_dirty_and_all2all(rgb: ImageSet) -> None:
    atk = build_attack("refool", dirty=True, n_reflections=50)
    assert atk.label_mode == "dirty"
    ps = atk.poison(rgb, seed=0)
    refl = torch.tensor(ps.info["reflection_rows"])
    assert ps.count == 20 and torch.all(rgb.y[ps.mask] != 0) and torch.all(ps.data.y[ps.mask] == 0)
    assert not ps.mask[refl].any()
    a2a = build_attack("refool", dirty=True, mode="all2all", n_reflections=50).poison(rgb, seed=0)
    assert torch.equal(a2a.data.y[a2a.mask], (rgb.y[a2a.mask] + 1) % 10)
    with pytest.raises(ConfigError, match="clean-label"):
        build_attack("refool", mode="all2all")


def test_refool_apply_deterministic_blend(rgb: ImageSet) -> None:
    # the linear blend (blend="gamma", the default, is checked in tests/test_paper_fidelity.py)
    atk = ready("refool", rgb, n_reflections=30, blend="linear")
    x = rgb.pixels(slice(0, 64))
    out = atk.apply(x)
    assert torch.equal(out, atk.apply(x.clone()))  # same batch, same reflections
    assert not torch.equal(out, ready("refool", rgb, n_reflections=30, test_seed=3, blend="linear").apply(x))
    # a convex blend with reflection weight at most 0.45: from black images, at most 0.45
    dark = atk.apply(torch.zeros(64, 3, 32, 32))
    assert float(dark.max()) <= 0.45 + 1e-6 and float(dark.amax(dim=(1, 2, 3)).min()) > 0.0
    # all reflection weights fixed at 0.3: out = 0.7 x + 0.3 R with R in [0, 1]
    fixed = ready("refool", rgb, n_reflections=30, reflection_weight=(0.3, 0.3), blend="linear").apply(x)
    r = (fixed - 0.7 * x) / 0.3
    assert float(r.min()) >= -1e-5 and float(r.max()) <= 1 + 1e-5


def test_refool_models_ghost_and_blur(rgb: ImageSet) -> None:
    x = torch.zeros(16, 3, 32, 32)
    lin = {"blend": "linear", "reflection_weight": (1.0, 1.0)}
    ghost = ready("refool", rgb, ghost_rate=1.0, ghost_alpha=(0.5, 0.5), **lin)
    blur = ready("refool", rgb, ghost_rate=0.0, blur_sigma=(3.0, 3.0), **lin)
    g, b = ghost.apply(x), blur.apply(x)
    pool = ghost.reflections()
    # ghost: half the reflection plus half of a copy shifted by 3-8 px (zero fill): top-left rows keep
    # exactly half of some pool image
    top = g[:, :, :3, :3] * 2
    match = (top[:, None] - pool[None, :, :, :3, :3]).abs().amax(dim=(2, 3, 4)).min(1).values
    assert float(match.max()) < 1e-4
    # blur: smoother than any pool image
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    assert float(tv(b)) < 0.5 * float(tv(pool))


def test_refool_reflection_source_dataset(rgb: ImageSet) -> None:
    atk = ready("refool", rgb, reflection_source="digits", n_reflections=20)
    pool = atk.reflections()
    assert pool.shape == (20, 3, 32, 32)
    assert torch.equal(pool[:, 0], pool[:, 1])  # grey digits repeated over the channels
    ps = atk.poison(rgb, seed=0)
    assert "reflection_rows" not in ps.info and ps.info["reflection_source"] == "digits"


@pytest.mark.parametrize(
    "params",
    [
        {"reflection_weight": (0.5, 0.2)},
        {"ghost_rate": 1.5},
        {"ghost_alpha": (0.1, 2.0)},
        {"n_reflections": 0},
    ],
)
def test_refool_validation(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_attack("refool", **params)


def test_refool_apply_before_setup() -> None:
    with pytest.raises(ConfigError, match="setup"):
        build_attack("refool").apply(torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------------------- common behaviour
@pytest.mark.parametrize("name", [n for n in MINE if n != "badnets"])
def test_registered_with_documented_defaults(name: str) -> None:
    entry = ATTACKS.entry(name)
    assert entry.paper and entry.meta["default_rate"] == 0.1
    doc = sys.modules[entry.obj.__module__].__doc__
    assert doc and "Defaults" in doc and "differ" in doc


@pytest.mark.parametrize("name", DIRTY)
def test_rate_as_count(name: str, rgb: ImageSet) -> None:
    ps = build_attack(name, rate=37).poison(rgb, seed=0)
    assert ps.count == 37 and torch.all(rgb.y[ps.mask] != 0) and torch.all(ps.data.y[ps.mask] == 0)
    with pytest.raises(ConfigError, match="exceeds"):
        build_attack(name, rate=10_000).poison(rgb, seed=0)


@pytest.mark.parametrize("name", MINE)
def test_rate_and_target_validation(name: str, rgb: ImageSet) -> None:
    with pytest.raises(ConfigError, match="rate"):
        build_attack(name, rate=1.5)
    with pytest.raises(ConfigError, match="out of range"):
        build_attack(name, target=10).poison(rgb, seed=0)
    with pytest.raises(ConfigError):
        build_attack(name, no_such_param=1)


@pytest.mark.parametrize("name", DIRTY)
def test_all2all_targets(name: str, rgb: ImageSet) -> None:
    ps = build_attack(name, mode="all2all").poison(rgb, seed=0)
    assert ps.count == 20
    assert torch.equal(ps.data.y[ps.mask], (rgb.y[ps.mask] + 1) % 10)
    assert torch.equal(ps.data.y[~ps.mask], rgb.y[~ps.mask])


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "l0_invisible", "l2_invisible"])
@pytest.mark.parametrize("channels", [1, 3])
def test_poisoned_rows_are_quantised_triggers(name: str, channels: int) -> None:
    data = make_set(channels)
    atk = build_attack(name)
    ps = atk.poison(data, seed=0)
    assert ps.data.x.dtype == torch.uint8
    rows = ps.indices
    assert torch.equal(ps.data.x[rows], quantize(atk.apply(data.pixels(rows))))
    assert torch.equal(ps.data.x[rows], atk.apply_uint8(data.x[rows]))


@pytest.mark.parametrize("name", MINE)
def test_poison_deterministic_per_seed(name: str, rgb: ImageSet) -> None:
    rate = 10 if name in ("sig", "refool") else None  # leave a choice among the 20 target-class rows
    a = build_attack(name, rate=rate).poison(rgb, seed=0)
    b = build_attack(name, rate=rate).poison(rgb, seed=0)
    c = build_attack(name, rate=rate).poison(rgb, seed=1)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.data.x, b.data.x) and torch.equal(a.data.y, b.data.y)
    assert not torch.equal(a.mask, c.mask)


@pytest.mark.parametrize("name", FIXED)
def test_apply_is_batched_and_per_image(name: str, rgb: ImageSet) -> None:
    atk = ready(name, rgb)
    x = rgb.pixels(slice(0, 6))
    out = atk.apply(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    single = torch.cat([atk.apply(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(out, single, atol=1e-6)
    assert torch.equal(x, rgb.pixels(slice(0, 6)))  # input untouched
