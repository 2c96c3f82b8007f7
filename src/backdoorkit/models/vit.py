"""Vision Transformers for small images (Dosovitskiy et al., ICLR 2021), patch size 4 for 32x32 inputs.

Pre-norm blocks with two residual connections each:
``x = x + attn(norm1 x)`` (skip ``blocks.i.attn``) and ``x = x + mlp(norm2 x)`` (skip ``blocks.i.mlp``).
BadRes (Wang et al. 2022) rewires the first of these in one block to ``attn(norm1 x) - 0.5 x``, i.e.
``gamma = -0.5`` on ``blocks.i.attn``.  ``vit_tiny``: dim 192, 12 blocks, 3 heads;
``vit_small``: dim 384, 12 blocks, 6 heads; both with a class token and learned position embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.errors import ConfigError
from backdoorkit.models.base import ImageClassifier
from backdoorkit.models.skips import Skip


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.attn_skip = Skip()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.mlp_skip = Skip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_skip(self.attn(self.norm1(x)), x)
        return self.mlp_skip(self.mlp(self.norm2(x)), x)


class Embed(nn.Module):
    """Patch embedding, class token and position embeddings: normalised pixels -> tokens.

    Holds the ViT's own ``patch_embed``, ``cls_token`` and ``pos_embed`` (shared, not copied); the ViT
    builds one per call of :meth:`ViT.chain`, so the model's ``state_dict`` keeps its keys.
    """

    def __init__(
        self, patch_embed: nn.Module, cls_token: nn.Parameter, pos_embed: nn.Parameter, image_size: int
    ) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.cls_token = cls_token
        self.pos_embed = pos_embed
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"this ViT takes {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}"
            )
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed


class ClassToken(nn.Module):
    """The class token of a token sequence: ``x[:, 0]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class ViT(ImageClassifier):
    pool_name = "cls"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, mean, std)
        if image_size % patch:
            raise ConfigError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.image_size = image_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.cls = ClassToken()
        self.fc = nn.Linear(dim, num_classes)
        self.feature_dim = dim
        self.stage_names = tuple(f"blocks.{i}" for i in range(depth))

    def chain(self) -> list[tuple[str, nn.Module]]:
        embed = Embed(self.patch_embed, self.cls_token, self.pos_embed, self.image_size)
        return [
            ("normalize", self.normalize),
            ("embed", embed),
            *[(n, getattr(self, n)) for n in ("blocks", "norm", "cls", "fc")],
        ]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token sequence after the last block (before the final norm)."""
        return self._run(x, "norm")


def vit_tiny(**kw: object) -> ViT:
    """ViT-Tiny/4 for 32x32 images (dim 192, depth 12, 3 heads)."""
    kw = {"dim": 192, "depth": 12, "heads": 3, **kw}
    return ViT(**kw)  # type: ignore[arg-type]


def vit_small(**kw: object) -> ViT:
    """ViT-Small/4 for 32x32 images (dim 384, depth 12, 6 heads)."""
    kw = {"dim": 384, "depth": 12, "heads": 6, **kw}
    return ViT(**kw)  # type: ignore[arg-type]
