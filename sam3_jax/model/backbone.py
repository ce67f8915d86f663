"""Vision-language backbone of SAM 3 (official: sam3/model/vl_combiner.py, `SAM3VLBackbone`).

Holds the vision backbone (ViT trunk + dual neck) and the text encoder, without fusion. Param tree:
  vision_backbone/{trunk, convs, sam2_convs}, language_backbone/{encoder, resizer}
matching the official `backbone.*` key prefixes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.config import validate_model_config
from sam3_jax.model.necks import VisionBackbone
from sam3_jax.model.text_encoder import text_encoder_from_config
from sam3_jax.model.vit import vit_from_config


class VLBackbone(nn.Module):
    """`forward_image` and `forward_text` can be applied separately (`method=`)."""

    config: Any  # model ConfigDict (sam3_jax.config.model_config)
    scalp: int = 1

    def setup(self):
        cfg = self.config
        validate_model_config(cfg)
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.vision_backbone = VisionBackbone(
            trunk=vit_from_config(cfg),
            d_model=cfg.neck.d_model,
            scale_factors=tuple(cfg.neck.scale_factors),
            add_sam2_neck=cfg.neck.add_sam2_neck,
            dtype=dtype,
            param_dtype=pdtype,
        )
        self.language_backbone = text_encoder_from_config(cfg)

    def forward_image(self, images: jax.Array, *, return_block_outputs: bool = False) -> dict[str, Any]:
        """images (B, S, S, 3) normalised ((x/255 - 0.5) / 0.5), channels-last.

        Official output names: `vision_features` (last kept level), `vision_pos_enc`, `backbone_fpn`
        (levels after dropping the last `scalp`), `sam2_backbone_out`; plus `trunk` and
        `all_levels` / `all_pos` (every neck level) for stage-by-stage parity.
        """
        v = self.vision_backbone(images, return_block_outputs=return_block_outputs)
        keep = slice(None, len(v["features"]) - self.scalp)
        out = {
            "trunk": v["trunk"],
            "trunk_intermediates": v["trunk_intermediates"],
            "all_levels": v["features"],
            "all_pos": v["pos"],
            "backbone_fpn": v["features"][keep],
            "vision_pos_enc": v["pos"][keep],
            "vision_features": v["features"][keep][-1],
            "sam2_backbone_out": None,
        }
        if "sam2_features" in v:
            out["sam2_all_levels"] = v["sam2_features"]
            out["sam2_all_pos"] = v["sam2_pos"]
            out["sam2_backbone_out"] = {
                "backbone_fpn": v["sam2_features"][keep],
                "vision_pos_enc": v["sam2_pos"][keep],
                "vision_features": v["sam2_features"][keep][-1],
            }
        return out

    def forward_text(self, tokens: jax.Array) -> dict[str, jax.Array]:
        """tokens (B, context) int32 -> language_features (B, T, d), language_mask (True = pad),
        language_embeds (B, T, width). Batch-first; the official tensors are sequence-first."""
        t = self.language_backbone(tokens)
        return {"language_features": t["features"], "language_mask": t["mask"], "language_embeds": t["embeds"]}

    def __call__(self, images: jax.Array, tokens: jax.Array) -> dict[str, Any]:
        out = self.forward_image(images)
        out.update(self.forward_text(tokens))
        return out
