"""Conversion rules of the tracker's memory encoder (official `tracker.maskmem_backbone.*`, 40 tensors
at the released sizes, 1,384,608 elements).

Official module prefix (under `maskmem_backbone.`)   -> Flax path (under dst)       layout
  mask_downsampler.encoder.{0,3,6,9} (Conv2d 3x3 s2)  -> mask_downsampler/encoder/{0,3,6,9}   CONV
  mask_downsampler.encoder.{1,4,7,10} (LayerNorm2d)   -> mask_downsampler/encoder/{1,4,7,10}  LAYERNORM_2D
  mask_downsampler.encoder.12 (Conv2d 1x1)            -> mask_downsampler/encoder/12          CONV
  pix_feat_proj (Conv2d 1x1)                          -> pix_feat_proj                        CONV
  fuser.layers.{i}.dwconv (depthwise Conv2d, weight (C, 1, 7, 7) -> kernel (7, 7, 1, C))
                                                      -> fuser/layers_{i}/dwconv              CONV
  fuser.layers.{i}.norm (LayerNorm2d)                 -> fuser/layers_{i}/norm                LAYERNORM_2D
  fuser.layers.{i}.pwconv1, .pwconv2 (Linear)         -> fuser/layers_{i}/pwconv1, pwconv2    DENSE
  fuser.layers.{i}.gamma (C,)                         -> fuser/layers_{i}/gamma               PARAM
  out_proj (Conv2d 1x1; only when mem_dim != d_model) -> out_proj                             CONV

The position encoding has no tensors (the official `PositionEmbeddingSine` cache is not in the
state dict). Not wired into `image_model_rules`: the rest of the tracker comes later.
"""

from __future__ import annotations

from sam3_jax.convert.layouts import CONV, DENSE, LAYERNORM_2D, PARAM
from sam3_jax.convert.rule import Rule

# The official builder fixes these whatever the sizes: total stride 16 in stride-2 steps (4 convs,
# each followed by a LayerNorm2d and a GELU, then the 1x1 conv at index 12) and 2 fuser blocks.
MASK_DOWNSAMPLE_LAYERS = 4
FUSER_DEPTH = 2


def memory_encoder_rules(cfg, src: str = "tracker.maskmem_backbone",
                         dst: str = "tracker/maskmem_backbone") -> list[Rule]:
    """Rules for the official `SimpleMaskEncoder` at `src` -> `MemoryEncoder` params at `dst`
    (an empty dst puts the memory encoder's children at the root)."""
    d = f"{dst}/" if dst else ""
    rules: list[Rule] = []
    n = MASK_DOWNSAMPLE_LAYERS
    for k in range(n):
        rules += [
            Rule(f"{src}.mask_downsampler.encoder.{3 * k}", f"{d}mask_downsampler/encoder/{3 * k}", CONV),
            Rule(f"{src}.mask_downsampler.encoder.{3 * k + 1}", f"{d}mask_downsampler/encoder/{3 * k + 1}",
                 LAYERNORM_2D),
        ]
    rules.append(Rule(f"{src}.mask_downsampler.encoder.{3 * n}", f"{d}mask_downsampler/encoder/{3 * n}", CONV))
    rules.append(Rule(f"{src}.pix_feat_proj", f"{d}pix_feat_proj", CONV))
    for i in range(FUSER_DEPTH):
        s, t = f"{src}.fuser.layers.{i}", f"{d}fuser/layers_{i}"
        rules += [
            Rule(f"{s}.dwconv", f"{t}/dwconv", CONV),
            Rule(f"{s}.norm", f"{t}/norm", LAYERNORM_2D),
            Rule(f"{s}.pwconv1", f"{t}/pwconv1", DENSE),
            Rule(f"{s}.pwconv2", f"{t}/pwconv2", DENSE),
            Rule(f"{s}.gamma", f"{t}/gamma", PARAM),
        ]
    if cfg.tracker.mem_dim != cfg.tracker.d_model:
        rules.append(Rule(f"{src}.out_proj", f"{d}out_proj", CONV))
    return rules
