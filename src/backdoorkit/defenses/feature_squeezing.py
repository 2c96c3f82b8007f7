"""Feature squeezing: flag inputs whose prediction moves when the input is squeezed.

Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS
2018 (reviewed for backdoors in the survey of our founding papers, which reports it as weak on them).
Scenario S1: the suspicious model and the defender's clean samples.

Squeezers (each optional; defaults: the paper's best joint CIFAR-10 detector "5-bit, 2x2, 11-3-4"):

* ``bits`` (1-8): bit-depth reduction ``round(x * (2^b - 1)) / (2^b - 1)``;
* ``median`` (sizes, e.g. 2 and 3): median smoothing over a ``k x k`` window.  Odd sizes use
  ``kornia.filters.median_blur`` (reflect padding); even sizes are done on the batch with ``unfold``
  (window anchored as ``scipy.ndimage.median_filter``: padding one more pixel after than before, and
  the upper of the two middle values, rank ``k*k // 2``);
* ``nlm`` ``(search, patch, h)``: non-local means.  Neither kornia nor torchvision has it and
  scikit-image (not a dependency) works image by image, so it is done here on the whole batch: for
  every offset of the ``search x search`` window, the mean squared difference of the ``patch x patch``
  patches (an average pool of the squared difference of the image and its shifted copy) gives the
  weight ``exp(-d^2 / h^2)`` of the shifted pixel; the output is the weighted mean.  ``h`` is in grey
  levels of 0-255 (as OpenCV's ``h``), borders are reflect-padded.  One loop over offsets (121 for
  11), each a whole-batch tensor operation.

Score: the largest L1 distance between the softmax of the original input and of each squeezed input.
Threshold: the ``1 - fpr`` quantile of the clean samples' scores (``fpr`` default 5 %, the paper's
choice on legitimate examples).
"""

from __future__ import annotations

from typing import Any

import kornia
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._trigger_reverse import model_device
from backdoorkit.defenses.base import SCORE_CHUNK, DefenseParams, InputDetector
from backdoorkit.device import autocast, eval_mode
from backdoorkit.errors import ScenarioError
from backdoorkit.train import forward_in_batches

PAPER = "Xu et al., Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks, NDSS 2018"


def _numbers(v: Any) -> Any:
    if isinstance(v, str):
        return tuple(float(t) for t in v.replace(",", " ").split()) if v.strip() else ()
    if isinstance(v, (int, float)):
        return (v,)
    return v


class SqueezeParams(DefenseParams):
    """Squeezers and false-positive rate (see module docstring); an empty value disables a squeezer."""

    bits: tuple[int, ...] = (5,)
    median: tuple[int, ...] = (2,)
    nlm: tuple[int, int, float] | None = (11, 3, 4.0)
    fpr: float = Field(0.05, gt=0, lt=1)

    @field_validator("bits", "median", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        return _numbers(v)

    @field_validator("nlm", mode="before")
    @classmethod
    def _nlm_text(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("", "none", "off"):
            return None
        return _numbers(v) or None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= b <= 8 for b in v):
            raise ValueError("bit depths are 1 to 8")
        return v

    @field_validator("median")
    @classmethod
    def _median(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 2 for k in v):
            raise ValueError("median window sizes are at least 2")
        return v

    @field_validator("nlm")
    @classmethod
    def _nlm(cls, v: tuple[int, int, float] | None) -> tuple[int, int, float] | None:
        if v is not None and (v[0] < 1 or v[1] < 1 or v[0] % 2 == 0 or v[1] % 2 == 0 or v[2] <= 0):
            raise ValueError("nlm is (search, patch, h): odd window sizes and h > 0")
        return v


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Median over a ``k x k`` window of a ``[B, C, H, W]`` batch (see module docstring for even k)."""
    if k % 2 == 1:
        return kornia.filters.median_blur(x, (k, k))
    before, after = (k - 1) // 2, k // 2
    b, c, h, w = x.shape
    padded = F.pad(x, (before, after, before, after), mode="reflect")
    cols = F.unfold(padded, k).view(b, c, k * k, h * w)
    return cols.sort(dim=2).values[:, :, (k * k) // 2].view(b, c, h, w)


def non_local_means(x: torch.Tensor, search: int, patch: int, h: float) -> torch.Tensor:
    """Batched non-local means (``h`` in 0-255 grey levels; see module docstring)."""
    rs, rp = search // 2, patch // 2
    padded = F.pad(x, (rs, rs, rs, rs), mode="reflect")
    hh = (h / 255.0) ** 2
    _, _, height, width = x.shape
    num = torch.zeros_like(x)
    den = torch.zeros_like(x)
    for dy in range(search):
        for dx in range(search):
            shifted = padded[:, :, dy : dy + height, dx : dx + width]
            d2 = (x - shifted).pow(2).mean(1, keepdim=True)
            d2 = F.avg_pool2d(F.pad(d2, (rp, rp, rp, rp), mode="reflect"), patch, stride=1)
            wgt = torch.exp(-d2 / hh)
            num += wgt * shifted
            den += wgt
    return num / den


@register_defense
class FeatureSqueezing(InputDetector):
    """Feature squeezing: max L1 distance between the softmax of the input and of its squeezed copies."""

    name = "feature_squeezing"
    paper = PAPER
    Params = SqueezeParams

    params: SqueezeParams

    def squeezed(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.params
        out = [bit_depth(x, b) for b in p.bits]
        out += [median_filter(x, k) for k in p.median]
        if p.nlm is not None:
            out.append(non_local_means(x, int(p.nlm[0]), int(p.nlm[1]), float(p.nlm[2])))
        return out

    def fit(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> FeatureSqueezing:
        p = self.params
        if not (p.bits or p.median or p.nlm):
            raise ScenarioError("feature_squeezing needs at least one squeezer (bits, median or nlm)")
        if len(clean) == 0:
            raise ScenarioError("feature_squeezing needs at least one clean sample")
        self.model = model
        self.device = model_device(model)
        s = self.scores(clean.x, self.device)
        self.threshold = float(torch.quantile(s.double(), 1 - p.fpr))
        self.info = {"squeezers": self.names(), "fpr": p.fpr}
        self.fit_metrics = {"clean_squeeze_mean": float(s.mean())}
        return self

    def names(self) -> list[str]:
        p = self.params
        out = [f"{b}-bit" for b in p.bits] + [f"median {k}x{k}" for k in p.median]
        if p.nlm is not None:
            out.append("nlm {}-{}-{:g}".format(*p.nlm))
        return out

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "model"):
            raise ScenarioError("feature_squeezing: fit() the detector before scoring inputs")
        out = []
        with eval_mode(self.model), autocast(self.device):
            for start in range(0, len(x), SCORE_CHUNK):
                xb = x[start : start + SCORE_CHUNK].to(self.device).float()
                views = [xb, *self.squeezed(xb)]
                logits = forward_in_batches(self.model, torch.cat(views)).float()
                probs = logits.softmax(1).view(len(views), len(xb), -1)
                out.append((probs[1:] - probs[:1]).abs().sum(2).amax(0))
        return torch.cat(out) if out else torch.empty(0, device=self.device)
