"""Dual SimpleFPN neck of SAM 3 (official: sam3/model/necks.py, `Sam3DualViTDetNeck`).

From the single (B, g, g, C) trunk map, each neck builds one branch per scale factor:
  4x:   ConvT(C->C/2, k2 s2) -> GELU -> ConvT(C/2->C/4, k2 s2) -> 1x1 -> 3x3
  2x:   ConvT(C->C/2, k2 s2) -> 1x1 -> 3x3
  1x:   1x1 -> 3x3
  0.5x: MaxPool 2x2 -> 1x1 -> 3x3
Every level gets a sine position map. `convs` feeds the detector, `sam2_convs` (same structure,
own weights) the tracker. Branch submodule names follow the official ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Conv, ConvTranspose, gelu, max_pool_2x2
from sam3_jax.layers.position import sine_position_map

Dtype = Any


class FPNBranch(nn.Module):
    scale: float
    d_model: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        if self.scale == 4.0:
            x = ConvTranspose(c // 2, stride=2, name="dconv_2x2_0", **kw)(x)
            x = gelu(x)
            x = ConvTranspose(c // 4, stride=2, name="dconv_2x2_1", **kw)(x)
        elif self.scale == 2.0:
            x = ConvTranspose(c // 2, stride=2, name="dconv_2x2", **kw)(x)
        elif self.scale == 1.0:
            pass
        elif self.scale == 0.5:
            x = max_pool_2x2(x)
        else:
            raise ValueError(f"unsupported neck scale factor {self.scale}; expected 4, 2, 1 or 0.5")
        x = Conv(self.d_model, 1, name="conv_1x1", **kw)(x)
        x = Conv(self.d_model, 3, padding=1, name="conv_3x3", **kw)(x)
        return P.constrain(x, (P.BATCH, P.HEIGHT, P.WIDTH, P.ACT_EMBED))


class FPNNeck(nn.Module):
    """One SimpleFPN neck: a list of branches named '0', '1', ... like the official ModuleList."""

    d_model: int
    scale_factors: Sequence[float]
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        return [
            FPNBranch(float(s), self.d_model, self.dtype, self.param_dtype, name=str(i))(x)
            for i, s in enumerate(self.scale_factors)
        ]


def position_maps(features: Sequence[jax.Array], num_pos_feats: int) -> list[jax.Array]:
    """Sine position maps (B, H, W, num_pos_feats) for each feature level (no parameters)."""
    out = []
    for f in features:
        b, h, w, _ = f.shape
        pos = sine_position_map(h, w, num_pos_feats).astype(f.dtype)
        out.append(jnp.broadcast_to(pos[None], (b, h, w, num_pos_feats)))
    return out


class VisionBackbone(nn.Module):
    """Trunk + detector neck `convs` + tracker neck `sam2_convs` (official `Sam3DualViTDetNeck`).

    Returns every level (the 0.5x one included); `scalp` is applied by the VL backbone.
    """

    trunk: nn.Module
    d_model: int
    scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5)
    add_sam2_neck: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, return_block_outputs: bool = False) -> dict[str, Any]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, trunk_inter = self.trunk(images, return_block_outputs=return_block_outputs)
        feats = FPNNeck(self.d_model, tuple(self.scale_factors), name="convs", **kw)(x)
        out: dict[str, Any] = {
            "trunk": x,
            "trunk_intermediates": trunk_inter,
            "features": feats,
            "pos": position_maps(feats, self.d_model),
        }
        if self.add_sam2_neck:
            sam2 = FPNNeck(self.d_model, tuple(self.scale_factors), name="sam2_convs", **kw)(x)
            out["sam2_features"] = sam2
            out["sam2_pos"] = position_maps(sam2, self.d_model)
        return out
