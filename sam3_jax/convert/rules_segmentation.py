"""Conversion rules for the detector's segmentation head (official `segmentation_head.*`).

Official module prefix (image-model layout)          -> Flax path under the model root
  segmentation_head.pixel_decoder.conv_layers.{k}     -> segmentation_head/pixel_decoder/conv_layers_{k}
  segmentation_head.pixel_decoder.norms.{k}           -> segmentation_head/pixel_decoder/norms_{k}
  segmentation_head.mask_predictor.mask_embed.layers.{k}
                                                      -> segmentation_head/mask_predictor/mask_embed/layers/{k}
  segmentation_head.cross_attend_prompt               -> segmentation_head/cross_attend_prompt (packed MHA)
  segmentation_head.cross_attn_norm                   -> segmentation_head/cross_attn_norm
  segmentation_head.instance_seg_head / semantic_seg_head (1x1 convs) -> same names

The pixel-decoder stages are applied at different resolutions, so they are separate modules (not a
scanned stack); the third stage is never used by the official forward but is carried all the same.
"""

from __future__ import annotations

from sam3_jax.convert.layouts import CONV, LAYERNORM, TORCH_MHA, Layout
from sam3_jax.convert.rule import Rule
from sam3_jax.convert.rules_transformer import mlp_rules

# torch nn.GroupNorm holds weight/bias exactly like nn.LayerNorm; Flax calls them scale/bias.
GROUPNORM = Layout("GroupNorm", LAYERNORM.leaves)

# Sizes of the released head (`_create_segmentation_head`); not part of the model config.
NUM_PIXEL_DECODER_STAGES = 3
NUM_MASK_EMBED_LAYERS = 3


def segmentation_rules(cfg) -> list[Rule]:
    """Rules covering every official `segmentation_head.*` tensor (28 in the released model)."""
    del cfg  # the head's structure does not depend on the configurable sizes
    s = d = "segmentation_head"
    rules: list[Rule] = []
    for k in range(NUM_PIXEL_DECODER_STAGES):
        rules.append(Rule(f"{s}.pixel_decoder.conv_layers.{k}", f"{d}/pixel_decoder/conv_layers_{k}", CONV))
        rules.append(Rule(f"{s}.pixel_decoder.norms.{k}", f"{d}/pixel_decoder/norms_{k}", GROUPNORM))
    rules += mlp_rules(f"{s}.mask_predictor.mask_embed", f"{d}/mask_predictor/mask_embed", NUM_MASK_EMBED_LAYERS)
    rules += [
        Rule(f"{s}.cross_attend_prompt", f"{d}/cross_attend_prompt", TORCH_MHA),
        Rule(f"{s}.cross_attn_norm", f"{d}/cross_attn_norm", LAYERNORM),
        Rule(f"{s}.instance_seg_head", f"{d}/instance_seg_head", CONV),
        Rule(f"{s}.semantic_seg_head", f"{d}/semantic_seg_head", CONV),
    ]
    return rules
