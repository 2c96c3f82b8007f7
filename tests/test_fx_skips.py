"""attach_skips on models we did not write: a torchvision-style ResNet and a timm-style ViT, both
written here from their published structure (torchvision / timm do not import in CI)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from backdoorkit.attacks import build_attack
from backdoorkit.data import ImageSet
from backdoorkit.errors import ConfigError
from backdoorkit.metrics import attack_success_rate, benign_accuracy
from backdoorkit.models import (
    Composite,
    attach_skips,
    block_names,
    build_model,
    forward_stages,
    get_betas,
    get_gammas,
    scaled_skips,
    set_gamma,
    skips,
    split,
    stage_names,
)
from backdoorkit.pipeline import recipe_for, train_victim

# ------------------------------------------------------------------------- torchvision-style ResNet


class TVBasicBlock(nn.Module):
    """torchvision's BasicBlock layout: ``out += identity`` with ``identity = downsample(x)``."""

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVResNet(nn.Module):
    """torchvision's ResNet skeleton (small stem for 32x32 inputs, 4 stages of 2 blocks)."""

    def __init__(self, width: int = 8, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        for i in range(4):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = nn.Sequential(TVBasicBlock(cin, planes, stride), TVBasicBlock(planes, planes))
            self.add_module(f"layer{i + 1}", blocks)
            cin = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        self.register_buffer("calls", torch.zeros(1), persistent=False)  # never used in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# ------------------------------------------------------------------------------- timm-style ViT


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class TimmMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = TimmMlp(dim, dim * 4)
        self.ls2 = LayerScale(dim)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class TimmViT(nn.Module):
    def __init__(
        self, dim: int = 32, depth: int = 2, heads: int = 2, num_classes: int = 10, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(4, 3, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 65, dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(*[TimmBlock(dim, heads, drop_path) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


# ------------------------------------------------------------------------------------- helpers


def _randomize_bn(model: nn.Module) -> None:
    """Give batch norms non-trivial statistics so eval-mode outputs depend on every layer."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.fixture
def resnet() -> TVResNet:
    torch.manual_seed(0)
    model = TVResNet()
    _randomize_bn(model)
    return model.eval()


@pytest.fixture
def vit() -> TimmViT:
    torch.manual_seed(0)
    return TimmViT().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


RESNET_SKIPS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
VIT_SKIPS = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]


# --------------------------------------------------------------------------------------- tests


def test_resnet_names_counts_and_paths(resnet: TVResNet) -> None:
    gm = attach_skips(resnet)
    assert isinstance(gm, fx.GraphModule)
    assert list(skips(gm)) == RESNET_SKIPS
    assert gm.get_submodule("layer2.0.skip") is skips(gm)["layer2.0"]
    # the projection shortcut is the shortcut operand: gamma scales downsample(x), not the branch
    code = gm.code
    assert "layer2_0_skip = self.layer2.0.skip(layer2_0_bn2, layer2_0_downsample_1)" in code.replace(
        'getattr(self.layer2, "0").skip', "self.layer2.0.skip"
    )


def test_vit_names_counts_and_paths(vit: TimmViT) -> None:
    gm = attach_skips(vit)
    assert list(skips(gm)) == VIT_SKIPS
    assert gm.get_submodule("blocks.1.attn_skip") is skips(gm)["blocks.1.attn"]
    assert gm.get_submodule("blocks.1.mlp_skip") is skips(gm)["blocks.1.mlp"]


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_gamma_one_bit_identical_and_gamma_zero_changes(
    which: str, resnet: TVResNet, vit: TimmViT, x: torch.Tensor
) -> None:
    model = resnet if which == "resnet" else vit
    with torch.no_grad():
        ref = model(x)
        gm = attach_skips(model)
        assert torch.equal(gm(x), ref)
        for name in skips(gm):
            with scaled_skips(gm, name, 0.0):
                assert not torch.allclose(gm(x), ref), name
        assert torch.equal(gm(x), ref)


def test_state_dict_keys_equal_and_foreign_weights_load(
    resnet: TVResNet, vit: TimmViT, x: torch.Tensor
) -> None:
    for model, fresh in ((resnet, TVResNet()), (vit, TimmViT())):
        gm = attach_skips(model)
        assert list(gm.state_dict()) == list(model.state_dict())
        # weights of the original class load into a freshly wrapped model and give the same outputs
        wrapped = attach_skips(fresh.eval())
        wrapped.load_state_dict(model.state_dict(), strict=True)
        with torch.no_grad():
            assert torch.equal(wrapped(x), model(x))
    gm = attach_skips(resnet)
    assert "calls" in dict(gm.named_buffers())  # unused non-persistent buffer kept, still not saved
    assert "calls" not in gm.state_dict()


def test_resnet_gamma_zero_matches_hand_written_block(resnet: TVResNet, x: torch.Tensor) -> None:
    gm = attach_skips(copy.deepcopy(resnet))
    block = resnet.layer2[0]

    def no_shortcut(self: TVBasicBlock, inp: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(inp)))))
        return self.relu(out)

    block.forward = no_shortcut.__get__(block)
    with torch.no_grad():
        expected = resnet(x)
        set_gamma(gm, "layer2.0", 0.0)
        assert torch.allclose(gm(x), expected, atol=1e-6)
        # half a shortcut: relu(branch + 0.5 * downsample(x))
        set_gamma(gm, "layer2.0", 0.5)
        block.forward = lambda inp: block.relu(
            block.bn2(block.conv2(block.relu(block.bn1(block.conv1(inp))))) + 0.5 * block.downsample(inp)
        )
        assert torch.allclose(gm(x), resnet(x), atol=1e-6)


def test_vit_gamma_zero_matches_hand_written_block(vit: TimmViT, x: torch.Tensor) -> None:
    gm = attach_skips(copy.deepcopy(vit))
    block = vit.blocks[1]

    def no_attn_shortcut(inp: torch.Tensor) -> torch.Tensor:
        h = block.ls1(block.attn(block.norm1(inp)))  # the attention shortcut removed
        return h + block.ls2(block.mlp(block.norm2(h)))

    block.forward = no_attn_shortcut
    with torch.no_grad():
        set_gamma(gm, "blocks.1.attn", 0.0)
        assert torch.allclose(gm(x), vit(x), atol=1e-5)
        assert get_gammas(gm) == {"blocks.1.attn": 0.0}


def test_negative_gamma_and_scaled_skips(resnet: TVResNet, x: torch.Tensor) -> None:
    gm = attach_skips(resnet)
    with torch.no_grad():
        ref = gm(x)
        with scaled_skips(gm, {"layer3.1": -0.5, "layer4.0": 0.0}):
            assert get_gammas(gm) == {"layer3.1": -0.5, "layer4.0": 0.0}
            changed = gm(x)
        assert get_gammas(gm) == {}
        assert torch.equal(gm(x), ref)
        assert not torch.allclose(changed, ref)
        with pytest.raises(RuntimeError), scaled_skips(gm, "all", 0.0):
            raise RuntimeError("boom")
        assert get_gammas(gm) == {}


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_result_trains_one_step(which: str, resnet: TVResNet, vit: TimmViT, x: torch.Tensor) -> None:
    gm = attach_skips(resnet if which == "resnet" else vit)
    gm.train()
    set_gamma(gm, next(iter(skips(gm))), 0.5)
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    opt = torch.optim.SGD(gm.parameters(), lr=0.1)
    loss = F.cross_entropy(gm(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in gm.parameters())
    after = gm.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_shares_parameters_with_original(resnet: TVResNet) -> None:
    gm = attach_skips(resnet)
    assert gm.get_parameter("layer1.0.conv1.weight") is resnet.layer1[0].conv1.weight
    assert attach_skips(gm) is gm  # already has skips: returned unchanged


def test_own_models_are_returned_unchanged() -> None:
    model = build_model("resnet18", width=4)
    assert attach_skips(model) is model


def test_small_user_models() -> None:
    class Plain(nn.Module):  # no residual add at all; position-embedding and constant adds
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bias = nn.Parameter(torch.zeros(1, 4, 1, 1))

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return (self.conv(inp) + self.bias + 1.0).flatten(1)

    with pytest.raises(ConfigError, match="no residual additions in Plain"):
        attach_skips(Plain())
    plain = Plain()
    with pytest.warns(UserWarning, match="no residual"):
        assert attach_skips(plain, missing_ok=True) is plain

    class OneConv(nn.Module):  # x + conv(x) at the root, torch.add spelling
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.head = nn.Linear(3, 2)
            self.other = nn.Linear(3, 2)

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            h = torch.add(inp, self.conv(inp)).mean((2, 3))
            return self.head(h) + self.other(h)  # two parallel heads: not a residual

    gm = attach_skips(OneConv())
    assert list(skips(gm)) == ["conv"]
    assert isinstance(gm.get_submodule("conv_skip"), nn.Module)


def test_training_dependent_graph_warns() -> None:
    with pytest.warns(UserWarning, match="fixed to eval mode"):
        attach_skips(TimmViT(drop_path=0.1).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach_skips(TimmViT().eval())


def test_untraceable_model_gives_one_line_config_error() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            if inp.mean() > 0.5:
                return inp + self.conv(inp)
            return self.conv(inp)

    with pytest.raises(ConfigError) as info:
        attach_skips(DataDependent())
    msg = str(info.value)
    assert "\n" not in msg
    assert "cannot trace DataDependent" in msg and "control flow" in msg
    with pytest.raises(ConfigError, match=r"needs a torch\.nn\.Module"):
        attach_skips("resnet18")  # type: ignore[arg-type]


# ------------------------------------------------------------------- stages, blocks and splits


def test_traced_resnet_has_block_and_stage_names(resnet: TVResNet) -> None:
    gm = attach_skips(resnet)
    assert block_names(gm) == RESNET_SKIPS
    assert stage_names(gm) == ["layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("at", ["layer1.0", "layer2.1", "layer3.0", "layer4.1"])
def test_split_traced_resnet_is_bit_identical(resnet: TVResNet, x: torch.Tensor, at: str) -> None:
    gm = attach_skips(resnet)
    stem, head = split(gm, at)
    with torch.no_grad():
        ref = gm(x)
        assert torch.equal(head(stem(x)), ref)
        assert torch.equal(Composite(stem, head)(x), ref)
        assert torch.equal(stem(x), forward_stages(gm, x, [at])[at])
    # the pieces share the model's parameters
    assert stem.get_parameter("conv1.weight") is resnet.conv1.weight
    assert head.get_parameter("fc.weight") is resnet.fc.weight


def test_forward_stages_of_traced_resnet(resnet: TVResNet, x: torch.Tensor) -> None:
    gm = attach_skips(resnet)
    with torch.no_grad():
        outs = forward_stages(gm, x)
    assert list(outs) == ["layer1", "layer2", "layer3", "layer4"]
    assert outs["layer3"].shape == (4, 32, 8, 8)


def test_split_traced_vit_and_bad_split_points(vit: TimmViT, x: torch.Tensor) -> None:
    gm = attach_skips(vit)
    assert block_names(gm) == ["blocks.0", "blocks.1"]
    stem, head = split(gm, "blocks.0")
    with torch.no_grad():
        assert torch.equal(head(stem(x)), gm(x))
    with pytest.raises(
        ConfigError, match=r"cannot split .* at 'blocks\.7'; split points: blocks\.0, blocks\.1"
    ):
        split(gm, "blocks.7")
    with pytest.raises(ConfigError, match="attach_skips"):
        split(vit, "blocks.0")  # not traced: no chain, no graph


def test_split_with_torchvision_when_importable(x: torch.Tensor) -> None:
    torchvision = pytest.importorskip("torchvision")
    gm = attach_skips(torchvision.models.resnet18(num_classes=3).eval())
    stem, head = split(gm, "layer3.1")
    with torch.no_grad():
        assert torch.equal(head(stem(x)), gm(x))


# ------------------------------------------------------------- structure attacks on traced models


@pytest.mark.parametrize(
    ("which", "name", "params", "skip"),
    [
        ("resnet", "badres", {"layer": 2}, "layer2.0"),
        ("resnet", "badres", {"layer": -1, "alpha": 0.8}, "layer4.1"),
        ("resnet", "badres_compare", {"layer": "layer3.1"}, "layer3.1"),
        ("vit", "badres", {}, "blocks.0.attn"),
        ("vit", "badres", {"layer": 1, "residual": "mlp"}, "blocks.1.mlp"),
        ("vit", "badres_compare", {"layer": "blocks.1", "beta": 0.2}, "blocks.1.attn"),
    ],
)
def test_badres_rewires_the_named_residual_of_a_traced_model(
    which: str, name: str, params: dict, skip: str, resnet: TVResNet, vit: TimmViT, x: torch.Tensor
) -> None:
    """BadRes and its comparison structure address a model made addressable with ``attach_skips`` as
    they address ours: the index counts its residuals (the attention ones of a transformer unless
    ``residual="mlp"``), only that skip is rewired, and ``restore`` gives the traced model back."""
    gm = attach_skips(resnet if which == "resnet" else vit)
    attack = build_attack(name, **params)
    with torch.no_grad():
        ref = gm(x)
    assert attack.attacked_skip(gm) == skip
    attack.prepare_model(gm)
    if name == "badres":
        assert get_gammas(gm) == {skip: -params.get("alpha", 0.5)} and get_betas(gm) == {}
    else:
        assert get_betas(gm) == {skip: -params.get("beta", 0.5)} and get_gammas(gm) == {}
    with torch.no_grad():
        assert not torch.allclose(gm(x), ref)
        attack.restore(gm)
        assert get_gammas(gm) == {} and get_betas(gm) == {}
        assert torch.equal(gm(x), ref)
    with pytest.raises(ConfigError, match="no MLP residuals"):
        build_attack("badres", residual="mlp").attacked_skip(attach_skips(copy.deepcopy(resnet)))


def test_badres_implants_in_a_traced_resnet(digits_train: ImageSet, digits_test: ImageSet) -> None:
    """BadRes trained into a torchvision-style ResNet made addressable with ``attach_skips`` (width 8,
    the digits recipe shortened to 5 epochs, ``layer2.0`` as in tests/test_structure_attacks.py) reaches
    the issue's ASR."""
    attack = build_attack("badres", layer=2)
    cfg = recipe_for(digits_train, epochs=5).model_copy(update={"seed": 0})

    def factory() -> nn.Module:
        torch.manual_seed(0)
        return attach_skips(TVResNet(width=8, in_channels=1).eval())

    model = train_victim(attack, factory, attack.poison(digits_train, seed=0), cfg)
    assert get_gammas(model) == {"layer2.0": -0.5}
    ba, asr = benign_accuracy(model, digits_test), attack_success_rate(model, digits_test, attack)
    print(f"\nbadres traced TVResNet layer2.0: BA {100 * ba:.1f} %, ASR {100 * asr:.1f} %")
    assert asr >= 0.9 and ba >= 0.9, (ba, asr)
