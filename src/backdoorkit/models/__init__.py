"""Models with addressable skip connections, and the skip registry / surgery."""

from backdoorkit.models.base import ImageClassifier, ModelSpec, Normalize
from backdoorkit.models.fx_skips import attach_skips
from backdoorkit.models.registry import MODELS, build_model, model_args
from backdoorkit.models.skips import (
    Skip,
    block_path,
    get_betas,
    get_gammas,
    scaled_skips,
    set_gamma,
    set_gammas,
    skips,
    stage_path,
)

__all__ = [
    "MODELS",
    "ImageClassifier",
    "ModelSpec",
    "Normalize",
    "Skip",
    "attach_skips",
    "block_path",
    "build_model",
    "get_betas",
    "get_gammas",
    "model_args",
    "scaled_skips",
    "set_gamma",
    "set_gammas",
    "skips",
    "stage_path",
]
