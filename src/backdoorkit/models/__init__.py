"""Models with addressable skip connections, the skip registry / surgery, taps into activations,
stages / blocks / splits, and the wrapper registry for composite models."""

from backdoorkit.models.base import ImageClassifier, ModelSpec, Normalize
from backdoorkit.models.fx_skips import attach_skips
from backdoorkit.models.registry import (
    MODELS,
    WRAPPERS,
    build_from_spec,
    build_model,
    model_args,
    model_spec,
    register_wrapper,
)
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
from backdoorkit.models.stages import Composite, block_names, forward_stages, split, stage_names
from backdoorkit.models.taps import capture, replace_modules

__all__ = [
    "MODELS",
    "WRAPPERS",
    "Composite",
    "ImageClassifier",
    "ModelSpec",
    "Normalize",
    "Skip",
    "attach_skips",
    "block_names",
    "block_path",
    "build_from_spec",
    "build_model",
    "capture",
    "forward_stages",
    "get_betas",
    "get_gammas",
    "model_args",
    "model_spec",
    "register_wrapper",
    "replace_modules",
    "scaled_skips",
    "set_gamma",
    "set_gammas",
    "skips",
    "split",
    "stage_names",
    "stage_path",
]
