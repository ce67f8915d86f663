"""The declarative key table: official module prefixes -> Flax module paths + layout.

Keys are in the image-model layout (the `detector.` prefix of `sam3.pt` is removed first).
A `{i}` in a prefix marks repeated layers; they are stacked into the leading 'layers' axis of the
scanned Flax module (its size, from the target tree, says how many official layers must exist).
"""

from __future__ import annotations

import dataclasses

from sam3_jax.convert.layouts import (
    CONV,
    CONV_TRANSPOSE,
    DENSE,
    EMBED,
    LAYERNORM,
    PARAM,
    TORCH_MHA,
    VIT_ATTENTION,
    Layout,
)


@dataclasses.dataclass(frozen=True)
class Rule:
    src: str  # official module prefix (dot-separated), may contain '{i}'
    dst: str  # Flax module path ('/'-separated), relative to the model root
    layout: Layout

    @property
    def stacked(self) -> bool:
        return "{i}" in self.src


# Official top-level prefixes of the detector parts after the backbone, and what they are.
DETECTOR_HEAD_PARTS = {
    "geometry_encoder.": "geometry / exemplar encoder",
    "transformer.encoder.": "fusion encoder",
    "transformer.decoder.": "DETR decoder",
    "dot_prod_scoring.": "dot-product scoring head",
    "segmentation_head.": "segmentation head",
}
# Official parts that sam3_jax does not build yet.
TRACKER_PARTS = {
    "tracker.": "tracker (video)",
    "inst_interactive_predictor.model.": "tracker (instance interactivity)",
}
# What a conversion may leave unconverted, per target: keys under these prefixes are reported by
# part instead of being rejected.
PENDING_FOR_BACKBONE = {**DETECTOR_HEAD_PARTS, **TRACKER_PARTS}
PENDING_FOR_IMAGE_MODEL = dict(TRACKER_PARTS)

_NECK_BRANCH_MODULES = {
    4.0: (("dconv_2x2_0", CONV_TRANSPOSE), ("dconv_2x2_1", CONV_TRANSPOSE)),
    2.0: (("dconv_2x2", CONV_TRANSPOSE),),
    1.0: (),
    0.5: (),
}


def backbone_rules(cfg) -> list[Rule]:
    """Rules for the vision backbone (trunk + necks) and the text encoder."""
    vb, vd = "backbone.vision_backbone", "backbone/vision_backbone"
    rules = [
        Rule(f"{vb}.trunk.pos_embed", f"{vd}/trunk/pos_embed", PARAM),
        Rule(f"{vb}.trunk.patch_embed.proj", f"{vd}/trunk/patch_embed", CONV),
        Rule(f"{vb}.trunk.ln_pre", f"{vd}/trunk/ln_pre", LAYERNORM),
        Rule(f"{vb}.trunk.blocks.{{i}}.norm1", f"{vd}/trunk/blocks/norm1", LAYERNORM),
        Rule(f"{vb}.trunk.blocks.{{i}}.attn", f"{vd}/trunk/blocks/attn", VIT_ATTENTION),
        Rule(f"{vb}.trunk.blocks.{{i}}.norm2", f"{vd}/trunk/blocks/norm2", LAYERNORM),
        Rule(f"{vb}.trunk.blocks.{{i}}.mlp.fc1", f"{vd}/trunk/blocks/mlp/fc1", DENSE),
        Rule(f"{vb}.trunk.blocks.{{i}}.mlp.fc2", f"{vd}/trunk/blocks/mlp/fc2", DENSE),
    ]
    necks = ["convs"] + (["sam2_convs"] if cfg.neck.add_sam2_neck else [])
    for neck in necks:
        for j, scale in enumerate(cfg.neck.scale_factors):
            src, dst = f"{vb}.{neck}.{j}", f"{vd}/{neck}/{j}"
            for name, layout in _NECK_BRANCH_MODULES[float(scale)]:
                rules.append(Rule(f"{src}.{name}", f"{dst}/{name}", layout))
            rules.append(Rule(f"{src}.conv_1x1", f"{dst}/conv_1x1", CONV))
            rules.append(Rule(f"{src}.conv_3x3", f"{dst}/conv_3x3", CONV))
    lb, ld = "backbone.language_backbone", "backbone/language_backbone"
    blk, blkd = f"{lb}.encoder.transformer.resblocks.{{i}}", f"{ld}/encoder/transformer"
    rules += [
        Rule(f"{lb}.encoder.token_embedding", f"{ld}/encoder/token_embedding", EMBED),
        Rule(f"{lb}.encoder.positional_embedding", f"{ld}/encoder/positional_embedding", PARAM),
        Rule(f"{lb}.encoder.text_projection", f"{ld}/encoder/text_projection", PARAM),
        Rule(f"{blk}.ln_1", f"{blkd}/ln_1", LAYERNORM),
        Rule(f"{blk}.attn", f"{blkd}/attn", TORCH_MHA),
        Rule(f"{blk}.ln_2", f"{blkd}/ln_2", LAYERNORM),
        Rule(f"{blk}.mlp.c_fc", f"{blkd}/mlp/c_fc", DENSE),
        Rule(f"{blk}.mlp.c_proj", f"{blkd}/mlp/c_proj", DENSE),
        Rule(f"{lb}.encoder.ln_final", f"{ld}/encoder/ln_final", LAYERNORM),
        Rule(f"{lb}.resizer", f"{ld}/resizer", DENSE),
    ]
    return rules


def image_model_rules(cfg) -> list[Rule]:
    """Rules for the whole image detector: backbone, geometry encoder, fusion encoder, decoder,
    dot-product scoring and segmentation head (each part's table lives in its own module)."""
    from sam3_jax.convert.rules_geometry import geometry_encoder_rules
    from sam3_jax.convert.rules_segmentation import segmentation_rules
    from sam3_jax.convert.rules_transformer import transformer_rules

    return backbone_rules(cfg) + geometry_encoder_rules(cfg) + transformer_rules(cfg) + segmentation_rules(cfg)
