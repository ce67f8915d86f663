"""The declarative key table: official module prefixes -> Flax module paths + layout.

Keys are in the image-model layout (the `detector.` prefix of `sam3.pt` is removed first).
A `{i}` in a prefix marks repeated layers; they are stacked into the leading 'layers' axis of the
scanned Flax module (its size, from the target tree, says how many official layers must exist).
"""

from __future__ import annotations

from sam3_jax.convert.rule import Rule
from sam3_jax.convert.rules_backbone import backbone_rules
from sam3_jax.convert.rules_geometry import geometry_encoder_rules
from sam3_jax.convert.rules_segmentation import segmentation_rules
from sam3_jax.convert.rules_transformer import transformer_rules

__all__ = ["DETECTOR_HEAD_PARTS", "PENDING_FOR_BACKBONE", "PENDING_FOR_IMAGE_MODEL", "TRACKER_PARTS", "backbone_rules",
           "image_model_rules"]


# Official top-level prefixes of the detector parts after the backbone, and what they are.
DETECTOR_HEAD_PARTS = {
    "geometry_encoder.": "geometry / exemplar encoder",
    "transformer.encoder.": "fusion encoder",
    "transformer.decoder.": "DETR decoder",
    "dot_prod_scoring.": "dot-product scoring head",
    "segmentation_head.": "segmentation head",
}
# The tracker, reported by part when a conversion leaves it out (`convert_image_model(tracker=False)`).
TRACKER_PARTS = {
    "tracker.": "tracker (video)",
    "inst_interactive_predictor.model.": "tracker (instance interactivity)",
}
# What a conversion may leave unconverted, per target: keys under these prefixes are reported by
# part instead of being rejected.
PENDING_FOR_BACKBONE = {**DETECTOR_HEAD_PARTS, **TRACKER_PARTS}
PENDING_FOR_IMAGE_MODEL = dict(TRACKER_PARTS)


def image_model_rules(cfg) -> list[Rule]:
    """Rules for the whole image detector: backbone, geometry encoder, fusion encoder, decoder,
    dot-product scoring and segmentation head (each part's table lives in its own module)."""
    return backbone_rules(cfg) + geometry_encoder_rules(cfg) + transformer_rules(cfg) + segmentation_rules(cfg)
