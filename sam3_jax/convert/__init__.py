"""Official SAM 3 checkpoint -> Flax params: declarative rules, strict checks, safe loading."""

from sam3_jax.convert.convert import (
    ConversionError,
    ConversionReport,
    DtypeError,
    KeySpec,
    MissingKeyError,
    ShapeMismatchError,
    UnexpectedKeyError,
    UnfilledParamError,
    backbone_target_shapes,
    convert,
    convert_backbone,
    convert_image_model,
)
from sam3_jax.convert.load import load_state_dict

__all__ = [
    "ConversionError", "ConversionReport", "DtypeError", "KeySpec", "MissingKeyError",
    "ShapeMismatchError", "UnexpectedKeyError", "UnfilledParamError", "backbone_target_shapes",
    "convert", "convert_backbone", "convert_image_model", "load_state_dict",
]
