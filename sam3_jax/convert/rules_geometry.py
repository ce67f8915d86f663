"""Conversion rules of the geometry / exemplar encoder (official prefix `geometry_encoder.`).

Every official tensor maps 1:1 onto a Flax leaf of `sam3_jax.model.geometry_encoder.GeometryEncoder`
placed at `geometry_encoder/` under the model root; the `encode.{i}` layers are stacked on the
leading axis of the scanned `encode` module. 76 tensors at the released sizes
(20 + 3 layers x 18 + 2).
"""

from __future__ import annotations

from sam3_jax.convert.layouts import CONV, DENSE, EMBED, LAYERNORM, TORCH_MHA
from sam3_jax.convert.rule import Rule

_TOP = (
    ("label_embed", EMBED),
    ("cls_embed", EMBED),
    ("points_direct_project", DENSE),
    ("points_pool_project", DENSE),
    ("points_pos_enc_project", DENSE),
    ("boxes_direct_project", DENSE),
    ("boxes_pool_project", CONV),
    ("boxes_pos_enc_project", DENSE),
    ("final_proj", DENSE),
    ("norm", LAYERNORM),
    ("img_pre_norm", LAYERNORM),
    ("encode_norm", LAYERNORM),
)

_LAYER = (
    ("self_attn", TORCH_MHA),
    ("cross_attn_image", TORCH_MHA),
    ("linear1", DENSE),
    ("linear2", DENSE),
    ("norm1", LAYERNORM),
    ("norm2", LAYERNORM),
    ("norm3", LAYERNORM),
)


def geometry_encoder_rules(cfg=None, *, src: str = "geometry_encoder", dst: str = "geometry_encoder") -> list[Rule]:
    """Rules for `geometry_encoder.*` (image-model layout) -> Flax `geometry_encoder/...`.

    `cfg` is accepted for symmetry with the other rule builders; the key set does not depend on
    the sizes (the number of stacked layers comes from the target tree).
    """
    del cfg
    rules = [Rule(f"{src}.{name}", f"{dst}/{name}", layout) for name, layout in _TOP]
    rules += [Rule(f"{src}.encode.{{i}}.{name}", f"{dst}/encode/{name}", layout) for name, layout in _LAYER]
    return rules
